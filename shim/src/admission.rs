//! Admission of pod VM boots, host-wide: at most `slots` VMs boot at once, whichever shim
//! (one process per pod) starts them, so that one more pod does not push every booting VM
//! past its deadline. A boot slot is an exclusive `flock` on one of the files
//! `<run_dir>/boot-slots/<i>`; the kernel drops it when the shim exits or dies, so a
//! crashed shim never keeps a slot. Shims waiting for a slot hold a ticket the same way
//! (`<run_dir>/boot-queue/<i>`); when every ticket is taken the pod fails at once, with
//! an error that says why, instead of queueing without bound.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How often a waiting shim tries the slots again.
const POLL: Duration = Duration::from_millis(100);
/// Waiting tickets per boot slot: pods beyond slots × this fail fast.
pub const QUEUE_PER_SLOT: usize = 16;

/// A held boot slot; dropping it lets the next VM boot.
#[derive(Debug)]
pub struct BootSlot {
    _lock: File,
    pub index: usize,
}

/// Takes a free boot slot among `slots`, waiting up to `wait` while all are taken.
/// Fails at once when `slots × QUEUE_PER_SLOT` shims are already waiting.
pub async fn acquire(run_dir: &Path, slots: usize, wait: Duration) -> anyhow::Result<BootSlot> {
    let slots = slots.max(1);
    let (slot_dir, queue_dir) = (run_dir.join("boot-slots"), run_dir.join("boot-queue"));
    for dir in [&slot_dir, &queue_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if let Some(slot) = try_any(&slot_dir, slots)? {
        return Ok(slot);
    }
    let queue = slots * QUEUE_PER_SLOT;
    let Some(_ticket) = try_any(&queue_dir, queue)? else {
        bail!(
            "the host is busy: {slots} pod VMs are booting and {queue} more are waiting \
             (max_parallel_boots = {slots}); try again later"
        );
    };
    tracing::info!(slots, "every boot slot is taken: waiting for one");
    let deadline = Instant::now() + wait;
    loop {
        tokio::time::sleep(POLL).await;
        if let Some(slot) = try_any(&slot_dir, slots)? {
            return Ok(slot);
        }
        if Instant::now() >= deadline {
            bail!(
                "the host is busy: no boot slot of {slots} came free within {}s \
                 (max_parallel_boots, admission_timeout_s)",
                wait.as_secs()
            );
        }
    }
}

/// The first of `<dir>/0..n` (an existing directory) this process can lock, or None.
fn try_any(dir: &Path, n: usize) -> anyhow::Result<Option<BootSlot>> {
    for index in 0..n {
        if let Some(lock) = try_lock(&dir.join(index.to_string()))? {
            return Ok(Some(BootSlot { _lock: lock, index }));
        }
    }
    Ok(None)
}

/// An exclusive `flock` on `path` (made if missing, never through a symlink), or None
/// while another process holds it. The lock lasts as long as the returned file.
pub fn try_lock(path: &Path) -> anyhow::Result<Option<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a descriptor this function owns; it touches no memory.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(Some(file));
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
        return Err(err).with_context(|| format!("locking {}", path.display()));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_are_exclusive_and_come_back_on_drop() {
        let d = tempfile::tempdir().unwrap();
        let a = acquire(d.path(), 2, Duration::ZERO).await.unwrap();
        let b = acquire(d.path(), 2, Duration::ZERO).await.unwrap();
        assert_ne!(a.index, b.index);
        let err = acquire(d.path(), 2, Duration::from_millis(250))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("no boot slot of 2 came free"), "{err}");
        drop(a);
        let c = acquire(d.path(), 2, Duration::ZERO).await.unwrap();
        assert_eq!(c.index, 0);
    }

    #[tokio::test]
    async fn a_full_queue_fails_at_once() {
        let d = tempfile::tempdir().unwrap();
        let _slot = acquire(d.path(), 1, Duration::ZERO).await.unwrap();
        // Every waiting ticket taken, as by QUEUE_PER_SLOT other shims.
        let tickets: Vec<_> = (0..QUEUE_PER_SLOT)
            .map(|_| {
                try_any(&d.path().join("boot-queue"), QUEUE_PER_SLOT)
                    .unwrap()
                    .unwrap()
            })
            .collect();
        let started = Instant::now();
        let err = acquire(d.path(), 1, Duration::from_secs(30))
            .await
            .unwrap_err()
            .to_string();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(err.contains("more are waiting"), "{err}");
        drop(tickets);
    }
}
