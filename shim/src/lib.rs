//! containerd-shim-hull-v2, library part. What exists so far is what the shim's QEMU
//! backend and agent client are built from: launching the pod VM (QEMU with vhost-user
//! vsock and virtio-fs daemons) and connecting to the agent over hybrid vsock. The task
//! service and the shim binary arrive with the shim issue.

pub mod agent_client;
pub mod daemon;
pub mod hybrid_vsock;
pub mod hypervisor;
