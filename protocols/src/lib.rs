//! The hull agent API: protobuf messages and ttrpc services shared by the shim (client)
//! and the guest agent (server). Generated from `protos/` at build time.

pub mod console;

/// Agent API version; bump the major on an incompatible change to `agent.proto`.
pub const API_VERSION: &str = "1.4.0";

/// The vsock port the agent's ttrpc server listens on inside the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// The host vsock port the agent connects to once its server listens ("I am ready"): the
/// host connects to the agent only after that, when the guest has shown its vsock device
/// works both ways. (vhost-device-vsock 0.3 loses its worker thread for good if a host
/// connection arrives while the guest is still setting the device's rings up.)
pub const AGENT_READY_PORT: u32 = 1025;

/// The vsock port of the agent's debug console (a shell or command outside every
/// container, on a pty), served only when the kernel command line has
/// `hull.debug_console=1`, which the shim sets only for `debug_console = true`.
pub const DEBUG_CONSOLE_PORT: u32 = 1026;

/// The path, inside the initrd's first (uncompressed) cpio archive, of a file holding the
/// agent API version the initrd's agent speaks: `hull check` reads it without unpacking
/// the agent.
pub const INITRD_API_VERSION_PATH: &str = "etc/hull-agent-api";

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
