//! The pod: its id and hostname, DNS, pod-wide storages, and the IPC and UTS namespaces
//! every container of the pod shares (created once, kept alive by bind mounts).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use hull_protocols::agent::CreateSandboxRequest;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

use crate::config::{AgentConfig, Mode};
use crate::container::spec::validate_id;
use crate::error::{AgentError, Result, invalid};
use crate::storage;

struct State {
    id: String,
    ns_files: Vec<PathBuf>,
    storages: Vec<PathBuf>,
}

pub struct Sandbox {
    cfg: AgentConfig,
    state: Mutex<Option<State>>,
}

impl Sandbox {
    pub fn new(cfg: AgentConfig) -> Self {
        Sandbox {
            cfg,
            state: Mutex::new(None),
        }
    }

    /// Whether this agent is PID 1 of a pod VM (not a test agent on a host).
    pub fn is_guest(&self) -> bool {
        self.cfg.mode == Mode::Guest
    }

    pub fn id(&self) -> Option<String> {
        self.state
            .lock()
            .expect("sandbox lock")
            .as_ref()
            .map(|s| s.id.clone())
    }

    /// The ipc and uts namespace files, once the sandbox exists.
    pub fn namespaces(&self) -> (Option<PathBuf>, Option<PathBuf>) {
        match self.state.lock().expect("sandbox lock").as_ref() {
            Some(_) => {
                let d = self.cfg.sandbox_ns_dir();
                (Some(d.join("ipc")), Some(d.join("uts")))
            }
            None => (None, None),
        }
    }

    pub fn create(&self, req: &CreateSandboxRequest) -> Result<()> {
        let mut state = self.state.lock().expect("sandbox lock");
        if let Some(s) = state.as_ref() {
            return Err(AgentError::AlreadyExists(format!(
                "sandbox {} already exists",
                s.id
            )));
        }
        validate_id("sandbox", &req.sandbox_id)?;
        validate_hostname(&req.hostname)?;
        for line in &req.dns {
            if line.contains('\n') {
                return Err(invalid("a dns line must not contain a newline"));
            }
        }

        let mut storages = Vec::new();
        let allowed = [self.cfg.shared_dir.as_path(), self.cfg.state_dir.as_path()];
        for s in &req.storages {
            match storage::mount_storage(s, &allowed) {
                Ok(p) => storages.push(p),
                Err(e) => {
                    storage::unmount_all(&storages);
                    return Err(e);
                }
            }
        }
        let ns_files = match create_pod_namespaces(&self.cfg.sandbox_ns_dir(), &req.hostname) {
            Ok(f) => f,
            Err(e) => {
                storage::unmount_all(&storages);
                return Err(AgentError::Internal(e));
            }
        };
        if self.cfg.mode == Mode::Guest {
            // The VM is the pod: its own hostname and resolver are the pod's.
            if !req.hostname.is_empty() {
                nix::unistd::sethostname(&req.hostname).context("setting the guest hostname")?;
            }
            if !req.dns.is_empty() {
                std::fs::write("/etc/resolv.conf", req.dns.join("\n") + "\n")
                    .context("writing /etc/resolv.conf")?;
            }
        }
        tracing::info!(sandbox = %req.sandbox_id, hostname = %req.hostname, "sandbox created");
        *state = Some(State {
            id: req.sandbox_id.clone(),
            ns_files,
            storages,
        });
        Ok(())
    }

    /// Releases the pod namespaces and storages. Containers must be gone first.
    pub fn destroy(&self) {
        if let Some(s) = self.state.lock().expect("sandbox lock").take() {
            storage::unmount_all(&s.ns_files);
            for f in &s.ns_files {
                let _ = std::fs::remove_file(f);
            }
            storage::unmount_all(&s.storages);
            tracing::info!(sandbox = %s.id, "sandbox destroyed");
        }
    }
}

fn validate_hostname(h: &str) -> Result<()> {
    if h.len() > 64
        || !h
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(invalid(format!("hostname {h:?} is not a valid host name")));
    }
    Ok(())
}

/// Unshares ipc+uts on a throwaway thread (both are per-thread), sets the hostname there
/// and bind-mounts the namespace files so they outlive the thread.
fn create_pod_namespaces(dir: &Path, hostname: &str) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.to_path_buf();
    let hostname = hostname.to_string();
    std::thread::spawn(move || -> anyhow::Result<Vec<PathBuf>> {
        unshare(CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS)
            .context("unsharing ipc and uts")?;
        if !hostname.is_empty() {
            nix::unistd::sethostname(&hostname).context("setting the pod hostname")?;
        }
        let tid = nix::unistd::gettid();
        let mut made = Vec::new();
        for ns in ["ipc", "uts"] {
            let target = dir.join(ns);
            std::fs::File::create(&target)
                .with_context(|| format!("creating {}", target.display()))?;
            let src = format!("/proc/self/task/{tid}/ns/{ns}");
            if let Err(e) = mount(
                Some(src.as_str()),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            ) {
                for m in &made {
                    let _ = umount2(m, MntFlags::MNT_DETACH);
                }
                return Err(
                    anyhow::Error::new(e).context(format!("bind-mounting the pod {ns} namespace"))
                );
            }
            made.push(target);
        }
        Ok(made)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        assert!(validate_hostname("pod-1.example").is_ok());
        assert!(validate_hostname("").is_ok());
        assert!(validate_hostname("bad host").is_err());
        assert!(validate_hostname(&"a".repeat(65)).is_err());
    }
}
