//! A cgroup per pod VM for its host processes (the VMM and its device daemons), as
//! Firecracker's jailer makes one per microVM: `hull/<vm>` under the cgroup root (cgroup
//! v2), or under the memory and pids hierarchies (v1). It caps what a VM's processes may
//! take together whatever the guest makes them do: memory (guest RAM plus the VMM's
//! overhead) and tasks.
//!
//! Each child joins the cgroup itself, before it execs (see `daemon`), so whatever it forks
//! later (a jailed VMM behind its waiter, virtiofsd's sandbox) is inside from the start.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

const ROOT: &str = "/sys/fs/cgroup";
/// The parent of every VM cgroup.
const PARENT: &str = "hull";
/// Tasks (processes and threads) a VM's processes may have together.
pub const PIDS_MAX: u64 = 1024;

/// What a VM's processes may use together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub pids: u64,
}

/// The cgroup directories of one VM: one under cgroup v2, one per controller under v1.
#[derive(Debug)]
pub struct VmCgroup {
    dirs: Vec<PathBuf>,
}

fn v2() -> bool {
    Path::new(ROOT).join("cgroup.controllers").exists()
}

/// The directories a VM named `name` has (whether or not they exist).
fn dirs_for(name: &str) -> Vec<PathBuf> {
    if v2() {
        vec![Path::new(ROOT).join(PARENT).join(name)]
    } else {
        ["memory", "pids"]
            .iter()
            .map(|c| Path::new(ROOT).join(c).join(PARENT).join(name))
            .collect()
    }
}

fn write(path: &Path, value: &str) -> anyhow::Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {value:?} to {}", path.display()))
}

impl VmCgroup {
    /// Makes the VM's cgroup (replacing a stale one of the same name) with `limits`.
    pub fn create(name: &str, limits: Limits) -> anyhow::Result<VmCgroup> {
        remove_named(name);
        if v2() {
            let parent = Path::new(ROOT).join(PARENT);
            std::fs::create_dir_all(&parent)
                .with_context(|| format!("creating {}", parent.display()))?;
            // Controllers flow down from the root; `hull` itself holds no process.
            write(
                &Path::new(ROOT).join("cgroup.subtree_control"),
                "+memory +pids",
            )?;
            write(&parent.join("cgroup.subtree_control"), "+memory +pids")?;
            let dir = parent.join(name);
            std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let cg = VmCgroup {
                dirs: vec![dir.clone()],
            };
            write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
            write(&dir.join("memory.swap.max"), "0").ok();
            write(&dir.join("pids.max"), &limits.pids.to_string())?;
            Ok(cg)
        } else {
            let cg = VmCgroup {
                dirs: dirs_for(name),
            };
            for d in &cg.dirs {
                std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            }
            write(
                &cg.dirs[0].join("memory.limit_in_bytes"),
                &limits.memory_bytes.to_string(),
            )?;
            write(&cg.dirs[1].join("pids.max"), &limits.pids.to_string())?;
            Ok(cg)
        }
    }

    /// The `cgroup.procs` files a child writes itself into before it execs.
    pub fn procs_files(&self) -> Vec<CString> {
        self.dirs
            .iter()
            .map(|d| {
                CString::new(d.join("cgroup.procs").as_os_str().as_bytes())
                    .expect("cgroup paths hold no NUL")
            })
            .collect()
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }
}

impl Drop for VmCgroup {
    /// Removes the cgroup; its owner drops it after the VM's processes are gone.
    fn drop(&mut self) {
        if let Some(name) = self.dirs.first().and_then(|d| d.file_name()) {
            remove_named(&name.to_string_lossy());
        }
    }
}

/// Kills whatever is still in VM cgroup `name` (a process that left its process group
/// included) and removes the cgroup. A cgroup still busy after a second is left and logged.
pub fn remove_named(name: &str) {
    for d in dirs_for(name) {
        if !d.exists() {
            continue;
        }
        kill_all(&d);
        let mut last = None;
        for _ in 0..100 {
            match std::fs::remove_dir(&d) {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    last = None;
                    break;
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(e) = last {
            tracing::warn!(cgroup = %d.display(), error = %e, "removing a VM cgroup");
        }
    }
}

/// SIGKILLs every process in the cgroup at `dir` (`cgroup.kill` where the kernel has it).
fn kill_all(dir: &Path) {
    if std::fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The cgroup name of the pod at `pod_dir`: its directory name plus a hash of the whole
/// path, so pods of different run directories (two hull installs, tests) never share one.
pub fn name_for(pod_dir: &Path) -> String {
    let hash = crate::ids::stable_hash(pod_dir.as_os_str().as_bytes());
    let base = pod_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{base}-{:08x}", hash as u32)
}

/// Memory a VM's processes may use: guest RAM, plus what the VMM and daemons need (QEMU
/// under TCG keeps a translation cache; hull-vmm needs little).
pub fn memory_limit(guest_mib: u32, tcg: bool) -> u64 {
    let overhead_mib: u64 = if tcg { 1536 } else { 512 };
    (u64::from(guest_mib) + overhead_mib) << 20
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_distinct_per_run_dir() {
        let a = name_for(Path::new("/run/hull/k8s.io/pod1"));
        assert_eq!(a, name_for(Path::new("/run/hull/k8s.io/pod1")));
        assert!(a.starts_with("pod1-"));
        assert_ne!(a, name_for(Path::new("/tmp/x/run/k8s.io/pod1")));
    }

    #[test]
    fn memory_limits_cover_guest_ram() {
        assert!(memory_limit(256, false) > 256 << 20);
        assert!(memory_limit(256, true) > memory_limit(256, false));
    }
}
