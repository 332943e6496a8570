//! ttrpc clients for the guest agent over a hybrid-vsock stream, and the agent's "ready"
//! announcement that comes before them.

use std::path::Path;
use std::time::Duration;

use hull_protocols::agent_ttrpc::AgentServiceClient;
use hull_protocols::health_ttrpc::HealthClient;
use hull_protocols::{AGENT_READY_PORT, AGENT_VSOCK_PORT};

use crate::hybrid_vsock;

/// A ttrpc context that fails the agent call after `d`: a guest that stops answering
/// must not hang its caller.
pub fn deadline(d: Duration) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

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

/// Where the agent's ready announcement arrives: the VMM turns a guest connection to host
/// port P into a connection to `<hybrid vsock socket>_P`.
pub struct ReadySignal {
    listener: tokio::net::UnixListener,
    path: std::path::PathBuf,
}

impl ReadySignal {
    /// Listens for the announcement of the VM whose hybrid vsock socket is `uds`. Bind it
    /// before the guest can boot that far (right after the VMM starts).
    pub fn bind(uds: &Path) -> anyhow::Result<ReadySignal> {
        use std::os::unix::fs::PermissionsExt;
        let path = std::path::PathBuf::from(format!("{}_{AGENT_READY_PORT}", uds.display()));
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)
            .map_err(|e| anyhow::anyhow!("binding {}: {e}", path.display()))?;
        // A jailed VMM connects as an unprivileged user; the directory keeps others out.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
        Ok(ReadySignal { listener, path })
    }

    /// Waits until the agent announces itself. The guest only opens a connection (what
    /// it sends is never read), so it can make the shim wait no longer than `timeout`.
    pub async fn wait(&self, timeout: Duration) -> anyhow::Result<()> {
        match tokio::time::timeout(timeout, self.listener.accept()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => anyhow::bail!("waiting for the agent's ready announcement: {e}"),
            Err(_) => anyhow::bail!("the agent did not announce itself within {timeout:?}"),
        }
    }
}

impl Drop for ReadySignal {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Connects to the agent of a VM that is booting: waits for its ready announcement (at
/// most `timeout`; a VMM that exits meanwhile fails at once), then connects.
pub async fn connect_when_ready(
    vm: &mut Box<dyn crate::hypervisor::Vm>,
    timeout: Duration,
) -> anyhow::Result<AgentClient> {
    let ready = ReadySignal::bind(&vm.vsock_uds())?;
    let uds = vm.vsock_uds();
    let started = std::time::Instant::now();
    tokio::select! {
        r = ready.wait(timeout) => r?,
        e = vmm_exit(vm) => anyhow::bail!("the VMM exited during boot ({e})"),
    }
    AgentClient::connect(
        &uds,
        timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_secs(1)),
    )
    .await
}

/// How often a boot that takes long says how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Resolves when the VMM has exited, with its status; meanwhile logs the boot's progress
/// (console lines so far) every `PROGRESS_EVERY`, so a slow boot is not a silent one.
pub async fn vmm_exit(vm: &mut Box<dyn crate::hypervisor::Vm>) -> String {
    let started = std::time::Instant::now();
    let mut next_report = PROGRESS_EVERY;
    loop {
        match vm.wait_exit(Duration::ZERO) {
            Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
            Ok(Some(status)) => return status.to_string(),
            Err(e) => return format!("{e:#}"),
        }
        if started.elapsed() >= next_report {
            let console = vm.console();
            tracing::info!(
                elapsed_s = started.elapsed().as_secs(),
                console_lines = console.lines().count(),
                last_line = %crate::hypervisor::clip_line(console.lines().last().unwrap_or("")),
                "pod VM still booting (VMM alive)"
            );
            next_report += PROGRESS_EVERY;
        }
    }
}
