//! A pod's directory, `<run_dir>/<namespace>/<sandbox id>` (mode 0700): where it is (ids
//! validated, long ids shortened to a stable name), what it says about the pod
//! (`pod.json`), how to walk all of them, and how to remove one whole, killing what it
//! recorded, even when half made or left by a killed shim. It holds `vm/` (sockets, logs,
//! and `pids`: the VM's processes), `mounts/` (the host's working tree of the share) and
//! `shared/` (its read-only view the guest gets over virtio-fs; see `share`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::config::HullConfig;
use crate::daemon::{PID_FILE, PidRecord};
use crate::ids::{self, InvalidId};
use crate::{network, pod_fs};

/// `<run_dir>/<namespace>/<sandbox id>`, for a namespace and id that pass containerd's
/// identifier rules (so the result is always a direct grandchild of run_dir).
pub fn pod_dir(cfg: &HullConfig, namespace: &str, sandbox_id: &str) -> Result<PathBuf, InvalidId> {
    ids::validate("namespace", namespace)?;
    ids::validate("sandbox id", sandbox_id)?;
    let dir = cfg.run_dir.join(namespace).join(dir_name(sandbox_id));
    assert!(
        dir.parent().and_then(Path::parent) == Some(cfg.run_dir.as_path()),
        "pod directory {} escapes run_dir",
        dir.display()
    );
    Ok(dir)
}

/// Unix socket paths (`<pod dir>/vm/vsock.vhost`) must stay under 108 bytes, and CRI ids
/// are 64 characters: a long id becomes a prefix plus a hash of the whole id.
fn dir_name(id: &str) -> String {
    const MAX: usize = 32;
    if id.len() <= MAX {
        return id.to_string();
    }
    // Stable across builds, which a pod directory must be (shim delete finds it).
    let hash = ids::stable_hash(id.as_bytes());
    let prefix: String = id.chars().take(MAX - 17).collect();
    format!("{prefix}-{hash:016x}")
}

/// The directories directly under `dir`.
pub fn subdirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// Every pod directory under `run_dir` (`<run_dir>/<namespace>/<pod>`), in no order. A
/// name starting with `.` is no namespace (containerd's names start with a letter or
/// digit) but hull's own (`.templates`).
pub fn pod_dirs(run_dir: &Path) -> Vec<PathBuf> {
    subdirs(run_dir)
        .iter()
        .filter(|ns| {
            ns.file_name()
                .is_some_and(|n| !n.as_encoded_bytes().starts_with(b"."))
        })
        .flat_map(|ns| subdirs(ns))
        .collect()
}

/// `<pod dir>/pod.json`: the pod's namespace and whole sandbox id (the directory's name is
/// shortened for long ids), for `hull pods`.
pub const IDENTITY_FILE: &str = "pod.json";

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct PodIdentity {
    pub namespace: String,
    pub sandbox: String,
}

impl PodIdentity {
    /// The identity recorded in pod directory `dir`, if any.
    pub fn read(dir: &Path) -> Option<PodIdentity> {
        serde_json::from_slice(&std::fs::read(dir.join(IDENTITY_FILE)).ok()?).ok()
    }

    pub(crate) fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::write(dir.join(IDENTITY_FILE), serde_json::to_vec(self)?)
            .with_context(|| format!("writing {IDENTITY_FILE}"))
    }
}

/// Kills the VM processes recorded in `<dir>/vm/pids` (only those that are still the
/// processes recorded: same pid and start time), unmounts everything under `dir` and
/// removes it, never through a mount that is still there. Safe on a half-made pod.
pub fn cleanup_dir(dir: &Path) {
    let pids = std::fs::read_to_string(dir.join("vm").join(PID_FILE)).unwrap_or_default();
    for p in PidRecord::parse_file(&pids) {
        if p.is_alive() {
            // Each VM process leads its own process group (see `daemon`): its helpers go too.
            let _ = nix::sys::signal::killpg(Pid::from_raw(p.pid), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
            wait_gone(p.pid);
            crate::daemon::wait_group_gone(Pid::from_raw(p.pid));
        }
    }
    network::detach(dir);
    crate::vm_cgroup::remove_named(&crate::vm_cgroup::name_for(dir));
    pod_fs::unmount_under(dir);
    if let Err(e) = pod_fs::remove_within_mount(dir) {
        tracing::error!(dir = %dir.display(), error = %e, "removing the pod directory");
    }
}

fn wait_gone(pid: i32) {
    for _ in 0..200 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        // Our own child: reap it; someone else's: wait for its parent to.
        let _ = nix::sys::wait::waitpid(
            Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_dirs_stay_under_run_dir() {
        let cfg = HullConfig::default();
        assert_eq!(
            pod_dir(&cfg, "k8s.io", "pod1").unwrap(),
            Path::new("/run/hull/k8s.io/pod1")
        );
        for (ns, id) in [
            ("default", "/etc"),
            ("default", ".."),
            ("default", "a/../../x"),
            ("..", "pod"),
            ("a/b", "pod"),
            ("default", ""),
        ] {
            assert!(pod_dir(&cfg, ns, id).is_err(), "{ns} {id}");
        }
    }

    #[test]
    fn long_ids_get_short_stable_names() {
        assert_eq!(dir_name("pod1"), "pod1");
        let a = "a".repeat(64);
        let b = format!("{}b", "a".repeat(63));
        assert_eq!(dir_name(&a).len(), 32);
        assert_eq!(dir_name(&a), dir_name(&a));
        assert_ne!(dir_name(&a), dir_name(&b));
    }
}
