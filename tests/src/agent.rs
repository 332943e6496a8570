//! A hull-agent on a unix socket in a private directory, with ttrpc clients for it.
//! Dropping it stops the agent (SIGTERM, then SIGKILL) and checks it left no mounts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use hull_protocols::agent_ttrpc::AgentServiceClient;
use hull_protocols::health_ttrpc::HealthClient;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

pub struct HostAgent {
    pub dir: TempDir,
    child: Option<Child>,
    pub agent: AgentServiceClient,
    pub health: HealthClient,
}

impl HostAgent {
    pub async fn start() -> HostAgent {
        crate::require_root();
        let dir = tempfile::Builder::new()
            .prefix("hull-agent-test")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let sock = dir.path().join("agent.sock");
        let bin = crate::target_bin_dir().join("hull-agent");
        assert!(
            bin.exists(),
            "{} is missing: build the workspace first",
            bin.display()
        );
        let child = Command::new(&bin)
            .arg("--listen")
            .arg(format!("unix://{}", sock.display()))
            .arg("--shared-dir")
            .arg(dir.path().join("shared"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--log")
            .arg("info")
            .spawn()
            .expect("starting hull-agent");
        // The socket file appears at bind(), a moment before the agent listens on it: a
        // refused connection is retried until the deadline.
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = loop {
            match ttrpc::r#async::Client::connect(&format!("unix://{}", sock.display())).await {
                Ok(c) => break c,
                Err(e) => {
                    assert!(Instant::now() < deadline, "connecting to the agent: {e:?}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        HostAgent {
            dir,
            child: Some(child),
            agent: AgentServiceClient::new(client.clone()),
            health: HealthClient::new(client),
        }
    }

    pub fn shared(&self) -> PathBuf {
        self.dir.path().join("shared")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Waits for the agent to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Mount points under `dir` in this mount namespace.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    hull_shim::share::mounts_under(dir)
}

impl Drop for HostAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let left = mounts_under(self.dir.path());
        if !left.is_empty() {
            for m in &left {
                let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
            }
            if !std::thread::panicking() {
                panic!("agent left mounts behind: {left:?}");
            }
        }
    }
}
