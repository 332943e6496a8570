//! The OCI CLI's state directory: `<root>/<id>/` per container (mode 0700), holding
//! `state.json` (written once the container is created, through a rename) and the
//! supervisor's control socket.
//! Every command that changes a container holds an exclusive `flock` on its directory, so
//! concurrent calls on one id queue instead of racing; a directory without `state.json`
//! is a create that has not finished (or crashed) and only `delete` touches it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

pub const STATE_FILE: &str = "state.json";
pub const CONTROL_SOCKET: &str = "control.sock";

/// What `create` records about a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    pub id: String,
    pub bundle: PathBuf,
    /// The supervisor: the pid the caller waits on.
    pub pid: i32,
    /// Its start time (clock ticks since boot), so a reused pid is not taken for it.
    pub pid_start: u64,
    /// RFC 3339.
    pub created: String,
    pub rootfs: PathBuf,
    pub annotations: BTreeMap<String, String>,
}

/// Why a container cannot be opened, in runc's words (callers match on them).
#[derive(Debug, thiserror::Error)]
pub enum Missing {
    #[error("container does not exist")]
    NotFound,
    #[error("container with given ID already exists")]
    Exists,
}

/// One container's directory, locked while this lives (unless `peek`ed).
pub struct Locked {
    pub id: String,
    pub dir: PathBuf,
    _lock: Option<Flock<File>>,
}

fn lock(dir: &Path) -> anyhow::Result<Flock<File>> {
    let f = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    Flock::lock(f, FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", dir.display()))
}

/// A new container's directory; fails with `Missing::Exists` when the id is taken.
pub fn create(root: &Path, id: &str) -> anyhow::Result<Locked> {
    validate(id)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .with_context(|| format!("creating the state root {}", root.display()))?;
    let dir = root.join(id);
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Missing::Exists.into());
        }
        Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
    }
    let lock = lock(&dir)?;
    Ok(Locked {
        id: id.to_string(),
        dir,
        _lock: Some(lock),
    })
}

/// An existing container's directory, not locked: for reading its state while another
/// command may hold it (as `runc state` does).
pub fn peek(root: &Path, id: &str) -> anyhow::Result<Locked> {
    validate(id)?;
    let dir = root.join(id);
    if !dir.is_dir() {
        return Err(Missing::NotFound.into());
    }
    Ok(Locked {
        id: id.to_string(),
        dir,
        _lock: None,
    })
}

/// An existing container's directory, locked.
pub fn open(root: &Path, id: &str) -> anyhow::Result<Locked> {
    validate(id)?;
    let dir = root.join(id);
    if !dir.is_dir() {
        return Err(Missing::NotFound.into());
    }
    let lock = lock(&dir)?;
    // Deleted while this waited for the lock.
    if !dir.is_dir() {
        return Err(Missing::NotFound.into());
    }
    Ok(Locked {
        id: id.to_string(),
        dir,
        _lock: Some(lock),
    })
}

/// Container ids as containerd and runc take them; they name a directory and a pod.
fn validate(id: &str) -> anyhow::Result<()> {
    hull_shim::ids::validate("container id", id)?;
    Ok(())
}

/// The ids under `root`, sorted.
pub fn list(root: &Path) -> Vec<String> {
    let mut ids: Vec<String> = hull_shim::pod_dir::subdirs(root)
        .iter()
        .filter_map(|d| d.file_name()?.to_str().map(str::to_string))
        .collect();
    ids.sort();
    ids
}

impl Locked {
    pub fn control_socket(&self) -> PathBuf {
        self.dir.join(CONTROL_SOCKET)
    }

    pub fn load(&self) -> anyhow::Result<Option<Saved>> {
        match std::fs::read(self.dir.join(STATE_FILE)) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
                format!("reading {}", self.dir.join(STATE_FILE).display())
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("reading the container's state"),
        }
    }

    pub fn save(&self, saved: &Saved) -> anyhow::Result<()> {
        write_atomic(&self.dir.join(STATE_FILE), &serde_json::to_vec(saved)?)
    }

    /// Removes the directory (the lock goes with it).
    pub fn remove(self) -> anyhow::Result<()> {
        std::fs::remove_dir_all(&self.dir)
            .with_context(|| format!("removing {}", self.dir.display()))
    }
}

/// Writes through a temporary file and a rename: a reader sees the old file or the new
/// one, never half of it (runc's `--pid-file` promise too).
pub fn write_atomic(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}", std::process::id()));
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_checked_and_locked() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let c = create(&root, "c1").unwrap();
        let e = create(&root, "c1").err().unwrap();
        assert!(e.to_string().contains("already exists"), "{e}");
        assert!(create(&root, "../x").is_err());
        assert!(create(&root, "").is_err());
        assert!(c.load().unwrap().is_none());
        c.save(&Saved {
            id: "c1".into(),
            bundle: "/b".into(),
            pid: 7,
            pid_start: 1,
            created: "now".into(),
            rootfs: "/b/rootfs".into(),
            annotations: BTreeMap::new(),
        })
        .unwrap();
        assert_eq!(c.load().unwrap().unwrap().pid, 7);
        assert_eq!(list(&root), vec!["c1".to_string()]);

        // A second opener waits for the lock.
        let (tx, rx) = std::sync::mpsc::channel();
        let r2 = root.clone();
        let h = std::thread::spawn(move || {
            let l = open(&r2, "c1");
            tx.send(()).unwrap();
            l.map(|_| ())
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(200))
                .is_err()
        );
        c.remove().unwrap();
        rx.recv().unwrap();
        let e = h.join().unwrap().unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert!(open(&root, "nope").is_err());
    }
}
