//! The misbehaviour `hull.fault=` asks for (see `config::Fault`): what a compromised agent
//! would try against the host through the pod's share, done on purpose so that the attack
//! tier can check the host's answer. Each attempt's outcome is logged at warn level, which
//! reaches the console log the test reads.

use std::path::Path;

/// Tries to plant entries where the shim works and to swap a container's rootfs: the
/// share's tree must be read-only to the guest, so each attempt should fail with EROFS.
pub fn plant_in_share(shared: &Path, cid: &str) {
    let c = shared.join(cid);
    let attempts: [(&str, std::io::Result<()>); 5] = [
        ("mkdir planted", std::fs::create_dir(shared.join("planted"))),
        (
            "symlink planted-link",
            std::os::unix::fs::symlink("/etc/cron.d", shared.join("planted-link")),
        ),
        (
            "symlink mounts-link",
            std::os::unix::fs::symlink("/etc", c.join("mounts-link")),
        ),
        (
            "rename rootfs",
            std::fs::rename(c.join("rootfs"), c.join("moved")),
        ),
        (
            "replace rootfs by a symlink",
            std::fs::remove_dir(c.join("rootfs"))
                .and_then(|_| std::os::unix::fs::symlink("/", c.join("rootfs"))),
        ),
    ];
    for (what, r) in attempts {
        match r {
            Ok(()) => tracing::warn!(attempt = what, "hull.fault plant-share: succeeded"),
            Err(e) => tracing::warn!(attempt = what, error = %e, "hull.fault plant-share: refused"),
        }
    }
}

/// The host port the vsock flood connects to (a test listens there and never reads).
pub const FLOOD_PORT: u32 = 2000;
/// Connections the flood tries to hold: more than a VMM allows one VM.
const FLOOD_CONNECTIONS: usize = 1200;

/// Starts `flood_vsock` on its own thread, once per agent.
pub fn start_vsock_flood() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        std::thread::spawn(flood_vsock);
    });
}

/// Opens up to `FLOOD_CONNECTIONS` connections to the host's `FLOOD_PORT` (retrying for
/// 60 s while nothing listens there) and writes into each until the guest kernel stops
/// it (the host's credit, or a reset), then keeps them open. Logs what it got.
fn flood_vsock() {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, VsockAddr, connect, socket};
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 8192, 8192);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let chunk = vec![0x5au8; 64 * 1024];
    let (mut held, mut refused, mut written) = (Vec::new(), 0usize, 0usize);
    while held.len() < FLOOD_CONNECTIONS && std::time::Instant::now() < deadline {
        let Ok(fd) = socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        ) else {
            break;
        };
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        if connect(raw, &VsockAddr::new(2, FLOOD_PORT)).is_err() {
            refused += 1;
            if held.is_empty() {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            continue;
        }
        let _ = nix::fcntl::fcntl(
            raw,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
        while let Ok(n) = nix::unistd::write(&fd, &chunk) {
            written += n;
            if n == 0 {
                break;
            }
        }
        held.push(fd);
    }
    tracing::warn!(
        connections = held.len(),
        refused,
        written,
        "hull.fault vsock-flood: done"
    );
    // Hold the connections for as long as the VM lives.
    std::mem::forget(held);
}
