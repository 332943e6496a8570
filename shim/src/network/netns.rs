//! Running code inside a pod's network namespace. `setns(CLONE_NEWNET)` changes only the
//! calling thread, so the work runs on a thread of its own that enters the namespace,
//! does it (netlink sockets and tap devices belong to the namespace they are made in) and
//! ends; no other thread of the shim ever changes namespace.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, bail};
use nix::sched::{CloneFlags, setns};

/// A network namespace, opened by path and checked to be one.
pub struct Netns {
    file: File,
}

impl Netns {
    pub fn open(path: &Path) -> anyhow::Result<Netns> {
        let file = File::open(path)
            .with_context(|| format!("opening the pod's network namespace {}", path.display()))?;
        // A netns file is an nsfs inode; a regular file or directory there is a mistake.
        let fs = nix::sys::statfs::fstatfs(&file)
            .with_context(|| format!("statfs {}", path.display()))?;
        if fs.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
            bail!("{} is not a namespace file", path.display());
        }
        Ok(Netns { file })
    }

    /// Whether this is the shim's own network namespace (the host's, for a host-network
    /// pod or a spec that names `/proc/1/ns/net`): a VM must never take over those links.
    pub fn is_own(&self) -> anyhow::Result<bool> {
        let own = std::fs::metadata("/proc/thread-self/ns/net")
            .context("reading the shim's network namespace")?;
        let this = self.file.metadata()?;
        Ok(own.dev() == this.dev() && own.ino() == this.ino())
    }

    /// Whether `other` is the same namespace.
    pub fn is_same(&self, other: &Netns) -> anyhow::Result<bool> {
        let (a, b) = (self.file.metadata()?, other.file.metadata()?);
        Ok(a.dev() == b.dev() && a.ino() == b.ino())
    }

    /// Runs `f` on a new thread inside this namespace, with a current-thread tokio
    /// runtime for netlink, and returns its result.
    pub fn run<T: Send>(
        &self,
        f: impl AsyncFnOnce() -> anyhow::Result<T> + Send,
    ) -> anyhow::Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(&self.file, CloneFlags::CLONE_NEWNET)
                    .context("entering the pod's network namespace")?;
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("starting a netlink runtime")?
                    .block_on(f())
            })
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the network namespace thread panicked")))
        })
    }
}
