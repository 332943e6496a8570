//! The pod's share directory, exported to the guest over virtio-fs: each container's
//! rootfs (containerd's mounts, mounted here) and the host files and directories its spec
//! bind-mounts (CRI's /etc/hosts, resolv.conf, termination-log, volumes). The spec is
//! rewritten to the guest's view of the same paths.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use containerd_shim_protos::api::Mount;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use oci_spec::runtime::Spec;

/// Where the agent mounts the share inside the guest.
pub const GUEST_SHARED: &str = "/run/hull/shared";

/// A container's part of the share.
pub struct ContainerShare {
    /// `<share>/<container id>` on the host.
    pub host_dir: PathBuf,
    /// The same directory in the guest.
    pub guest_dir: PathBuf,
}

impl ContainerShare {
    pub fn new(share: &Path, id: &str) -> ContainerShare {
        ContainerShare {
            host_dir: share.join(id),
            guest_dir: Path::new(GUEST_SHARED).join(id),
        }
    }

    /// Mounts the rootfs containerd prepared (its `rootfs` mounts, or `<bundle>/rootfs`)
    /// at `<dir>/rootfs`.
    pub fn mount_rootfs(&self, mounts: &[Mount], bundle: &Path) -> anyhow::Result<()> {
        let target = self.host_dir.join("rootfs");
        std::fs::create_dir_all(&target)
            .with_context(|| format!("creating {}", target.display()))?;
        if mounts.is_empty() {
            let src = bundle.join("rootfs");
            bind(&src, &target, false).with_context(|| format!("binding {}", src.display()))?;
            return Ok(());
        }
        for m in mounts {
            let fs_type = (!m.type_.is_empty()).then_some(m.type_.as_str());
            containerd_shim::mount::mount_rootfs(
                fs_type,
                Some(m.source.as_str()),
                &m.options,
                &target,
            )
            .map_err(|e| anyhow::anyhow!("mounting the rootfs ({} {}): {e}", m.type_, m.source))?;
        }
        Ok(())
    }

    /// Makes the spec's rootfs and host bind mounts point into the share, as the guest sees it.
    pub fn rewrite_spec(&self, spec: &mut Spec) -> anyhow::Result<()> {
        let mut root = spec.root().clone().unwrap_or_default();
        root.set_path(self.guest_dir.join("rootfs"));
        spec.set_root(Some(root));

        let mut mounts = spec.mounts().clone().unwrap_or_default();
        for (i, m) in mounts.iter_mut().enumerate() {
            let opts = m.options().clone().unwrap_or_default();
            let is_bind = m.typ().as_deref() == Some("bind")
                || opts.iter().any(|o| o == "bind" || o == "rbind");
            let Some(src) = m.source().clone().filter(|_| is_bind) else {
                continue;
            };
            if !src.exists() {
                bail!(
                    "bind mount source {} (for {}) does not exist",
                    src.display(),
                    m.destination().display()
                );
            }
            let name = format!(
                "{i}-{}",
                src.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            );
            let host = self.host_dir.join("mounts").join(&name);
            std::fs::create_dir_all(host.parent().expect("has a parent"))?;
            if src.is_dir() {
                std::fs::create_dir_all(&host)?;
            } else {
                std::fs::File::create(&host)?;
            }
            bind(&src, &host, opts.iter().any(|o| o == "ro"))
                .with_context(|| format!("sharing {}", src.display()))?;
            m.set_source(Some(self.guest_dir.join("mounts").join(&name)));
        }
        spec.set_mounts(Some(mounts));
        Ok(())
    }

    /// Unmounts everything under the container's directory and removes it.
    pub fn remove(&self) {
        unmount_under(&self.host_dir);
        if let Err(e) = std::fs::remove_dir_all(&self.host_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.host_dir.display(), error = %e, "removing container share");
        }
    }
}

/// Turns `dir` into a mount point with shared propagation, so that rootfs and bind mounts
/// made under it later reach virtiofsd's own mount namespace.
pub fn make_shared_mount(dir: &Path) -> anyhow::Result<()> {
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .with_context(|| format!("bind-mounting {}", dir.display()))?;
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .with_context(|| format!("making {} shared", dir.display()))?;
    Ok(())
}

fn bind(src: &Path, target: &Path, readonly: bool) -> anyhow::Result<()> {
    mount(
        Some(src),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )?;
    if readonly {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(None::<&str>, target, None::<&str>, flags, None::<&str>)?;
    }
    Ok(())
}

/// Mount points at or under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
}

pub fn unmount_under(dir: &Path) {
    for p in mounts_under(dir) {
        if let Err(e) = umount2(&p, MntFlags::MNT_DETACH) {
            tracing::warn!(path = %p.display(), error = %e, "unmount failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_paths_become_guest_paths() {
        let share = ContainerShare::new(Path::new("/run/hull/k8s.io/pod/shared"), "c1");
        assert_eq!(share.guest_dir, Path::new("/run/hull/shared/c1"));
        let mut spec = Spec::default();
        // The default spec's mounts are proc, tmpfs, devpts, ...: none is a bind.
        share.rewrite_spec(&mut spec).unwrap();
        assert_eq!(
            spec.root().as_ref().unwrap().path(),
            Path::new("/run/hull/shared/c1/rootfs")
        );
        assert!(spec.mounts().as_ref().unwrap().iter().all(|m| {
            !m.source()
                .as_ref()
                .is_some_and(|s| s.starts_with("/run/hull/shared"))
        }));
    }

    #[test]
    fn missing_bind_source_is_an_error() {
        let share = ContainerShare::new(Path::new("/nonexistent"), "c1");
        let mut spec = Spec::default();
        let mut mounts = spec.mounts().clone().unwrap();
        mounts.push(
            oci_spec::runtime::MountBuilder::default()
                .destination("/data")
                .typ("bind")
                .source("/definitely/not/here")
                .options(vec!["rbind".into()])
                .build()
                .unwrap(),
        );
        spec.set_mounts(Some(mounts));
        assert!(
            share
                .rewrite_spec(&mut spec)
                .unwrap_err()
                .to_string()
                .contains("does not exist")
        );
    }
}
