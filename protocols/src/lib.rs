//! The hull agent API: protobuf messages and ttrpc services shared by the shim (client)
//! and the guest agent (server). Generated from `protos/` at build time.

/// Agent API version; bump the major on an incompatible change to `agent.proto`.
pub const API_VERSION: &str = "1.0.0";

/// The vsock port the agent's ttrpc server listens on inside the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;

#[allow(warnings, clippy::all, clippy::undocumented_unsafe_blocks)]
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}
#[allow(warnings, clippy::all, clippy::undocumented_unsafe_blocks)]
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
}
#[allow(warnings, clippy::all, clippy::undocumented_unsafe_blocks)]
pub mod health {
    include!(concat!(env!("OUT_DIR"), "/health.rs"));
}
#[allow(warnings, clippy::all, clippy::undocumented_unsafe_blocks)]
pub mod health_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/health_ttrpc.rs"));
}
