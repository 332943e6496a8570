//! Task events to containerd (`TTRPC_ADDRESS`): a failure to publish is logged, never
//! fatal to the task.

use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim_protos::protobuf::MessageDyn;

pub struct Events {
    publisher: RemotePublisher,
    namespace: String,
}

impl Events {
    pub fn new(publisher: RemotePublisher, namespace: &str) -> Events {
        Events {
            publisher,
            namespace: namespace.to_string(),
        }
    }

    pub async fn send(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let ctx = ttrpc::context::with_timeout(5_000_000_000);
        if let Err(e) = self
            .publisher
            .publish(ctx, topic, &self.namespace, event)
            .await
        {
            tracing::warn!(topic, error = %e, "publishing event");
        }
    }
}
