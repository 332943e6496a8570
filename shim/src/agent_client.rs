//! ttrpc clients for the guest agent over a hybrid-vsock stream.

use std::path::Path;
use std::time::Duration;

use hull_protocols::AGENT_VSOCK_PORT;
use hull_protocols::agent_ttrpc::AgentServiceClient;
use hull_protocols::health_ttrpc::HealthClient;

use crate::hybrid_vsock;

#[derive(Clone)]
pub struct AgentClient {
    pub agent: AgentServiceClient,
    pub health: HealthClient,
}

impl AgentClient {
    /// Connects to the agent of the VM whose hybrid vsock socket is `uds`, waiting up to
    /// `timeout` for it to boot and listen.
    pub async fn connect(uds: &Path, timeout: Duration) -> anyhow::Result<AgentClient> {
        let stream = hybrid_vsock::connect_retry(uds, AGENT_VSOCK_PORT, timeout).await?;
        let client = ttrpc::r#async::Client::new(ttrpc::r#async::transport::Socket::from(stream));
        Ok(AgentClient {
            agent: AgentServiceClient::new(client.clone()),
            health: HealthClient::new(client),
        })
    }
}
