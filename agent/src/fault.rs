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
