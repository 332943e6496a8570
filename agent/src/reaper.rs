//! Reaps every child the agent inherits or starts (it is PID 1 in the guest and a child
//! subreaper on a host) and hands each exit status to whoever waits for that pid.
//!
//! Exits can be reaped before anyone asks for them (a container that exits at once, the
//! runtime helper), so unclaimed statuses are kept for a while instead of dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

/// Orphans nobody claims (processes of a dead pid namespace) are forgotten after this.
const UNCLAIMED_TTL: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, or 128 + signal number for a process killed by a signal.
    pub code: i32,
    pub at: SystemTime,
}

#[derive(Default)]
pub struct Reaper {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    waiters: HashMap<i32, oneshot::Sender<Exit>>,
    unclaimed: HashMap<i32, (Exit, Instant)>,
}

impl Reaper {
    /// Starts reaping on SIGCHLD. Must run inside the tokio runtime, before any child is
    /// started.
    pub fn start() -> std::io::Result<Arc<Reaper>> {
        let reaper = Arc::new(Reaper::default());
        let mut sigchld = signal(SignalKind::child())?;
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                r.reap_all();
                if sigchld.recv().await.is_none() {
                    return;
                }
            }
        });
        Ok(reaper)
    }

    /// A receiver that resolves when `pid` exits (immediately if it already did).
    pub fn watch(&self, pid: i32) -> oneshot::Receiver<Exit> {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.inner.lock().expect("reaper lock");
        if let Some((exit, _)) = inner.unclaimed.remove(&pid) {
            let _ = tx.send(exit);
        } else {
            inner.waiters.insert(pid, tx);
        }
        rx
    }

    fn reap_all(&self) {
        loop {
            let (pid, code) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, 128 + sig as i32),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid failed");
                    return;
                }
            };
            self.deliver(pid.as_raw(), code);
        }
    }

    fn deliver(&self, pid: i32, code: i32) {
        let exit = Exit {
            code,
            at: SystemTime::now(),
        };
        let mut inner = self.inner.lock().expect("reaper lock");
        if let Some(tx) = inner.waiters.remove(&pid) {
            let _ = tx.send(exit);
            return;
        }
        let now = Instant::now();
        inner
            .unclaimed
            .retain(|_, (_, t)| now.duration_since(*t) < UNCLAIMED_TTL);
        inner.unclaimed.insert(pid, (exit, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exit_before_watch_is_kept() {
        let r = Reaper::default();
        r.deliver(4242, 3);
        let exit = r.watch(4242).await.unwrap();
        assert_eq!(exit.code, 3);
    }

    #[tokio::test]
    async fn watch_before_exit_is_delivered() {
        let r = Reaper::default();
        let rx = r.watch(77);
        r.deliver(77, 137);
        assert_eq!(rx.await.unwrap().code, 137);
    }
}
