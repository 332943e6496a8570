//! The pod's share, exported to the guest over virtio-fs, laid out as Kata lays it out so
//! that the guest can never change a path the shim later works on:
//!
//! - `mounts/` is the host's working tree: each container's rootfs (containerd's mounts)
//!   at `mounts/<cid>/rootfs` and the host files and directories its spec binds (CRI's
//!   /etc/hosts, resolv.conf, volumes) at `mounts/<cid>/mounts/<n>-<name>`. The guest
//!   never sees it directly.
//! - `shared/` is a read-only bind of `mounts/` that receives every mount made there by
//!   propagation; virtiofsd exports it. The guest can write inside a rootfs or a
//!   read-write volume (each its own mount, with its own flags, always `nosuid,nodev`),
//!   but cannot create, remove or swap the directories the shim mounts on.
//!
//! Every path below `mounts/` is resolved beneath it without following symlinks
//! (`pod_fs`), so even a planted symlink leads nowhere. The spec is rewritten to the
//! guest's view of the same paths.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::Context;
use containerd_shim_protos::api::Mount;
use nix::mount::{MsFlags, mount};
use oci_spec::runtime::Spec;

use crate::pod_fs::{self, Root};

/// Where the agent mounts the share inside the guest.
pub const GUEST_SHARED: &str = "/run/hull/shared";

/// The two trees of a pod's share.
pub struct PodShare {
    /// Host-only working tree.
    pub mounts: PathBuf,
    /// The guest's read-only view of it, exported by virtiofsd.
    pub shared: PathBuf,
}

impl PodShare {
    /// The share of the pod whose directory is `pod_dir` (paths only; see `create`).
    pub fn at(pod_dir: &Path) -> PodShare {
        PodShare {
            mounts: pod_dir.join("mounts"),
            shared: pod_dir.join("shared"),
        }
    }

    /// Makes both trees: `mounts/` a mount point with its own shared peer group, `shared/`
    /// a read-only, nosuid, nodev bind of it that is a slave of `mounts/` (it receives
    /// mounts, never sends any) and shared in turn, so that virtiofsd's own mount
    /// namespace receives them too.
    pub fn create(pod_dir: &Path) -> anyhow::Result<PodShare> {
        let s = PodShare::at(pod_dir);
        for d in [&s.mounts, &s.shared] {
            pod_fs::ensure_dir_mode(d, 0o700)?;
        }
        let none = None::<&str>;
        let m = &s.mounts;
        mount(Some(m), m, none, MsFlags::MS_BIND, none)
            .with_context(|| format!("bind-mounting {}", m.display()))?;
        // Private first: a fresh peer group, not the one of the mount run_dir is on.
        for flag in [MsFlags::MS_PRIVATE, MsFlags::MS_SHARED] {
            mount(none, m, none, flag, none)
                .with_context(|| format!("setting propagation of {}", m.display()))?;
        }
        let v = &s.shared;
        mount(Some(m), v, none, MsFlags::MS_BIND, none)
            .with_context(|| format!("binding {} to {}", m.display(), v.display()))?;
        let ro = MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV;
        mount(none, v, none, ro, none)
            .with_context(|| format!("making {} read-only", v.display()))?;
        for flag in [MsFlags::MS_SLAVE, MsFlags::MS_SHARED] {
            mount(none, v, none, flag, none)
                .with_context(|| format!("setting propagation of {}", v.display()))?;
        }
        Ok(s)
    }

    /// Puts a copy of the static `busybox` at `mounts/.debug/busybox` (a name no container
    /// id can have), where the agent's debug console takes its tools from.
    pub fn add_debug_tools(&self, busybox: &Path) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        check_static_executable(busybox).with_context(|| {
            format!(
                "debug_console = true needs a static busybox at {}",
                busybox.display()
            )
        })?;
        let dir = self.mounts.join(".debug");
        pod_fs::ensure_dir_mode(&dir, 0o755)?;
        let to = dir.join("busybox");
        std::fs::copy(busybox, &to).with_context(|| format!("copying {}", busybox.display()))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))?;
        Ok(())
    }

    pub fn container(&self, id: &str) -> ContainerShare {
        ContainerShare {
            mounts: self.mounts.clone(),
            id: id.to_string(),
            guest_dir: Path::new(GUEST_SHARED).join(id),
        }
    }
}

/// Fails unless `path` is a 64-bit ELF executable without a program interpreter: the
/// guest has no libraries to load.
pub fn check_static_executable(path: &Path) -> anyhow::Result<()> {
    const PT_INTERP: u32 = 3;
    let bytes = std::fs::read(path)?;
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    anyhow::ensure!(
        bytes.starts_with(b"\x7fELF\x02\x01"),
        "not a 64-bit little-endian ELF file"
    );
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        anyhow::bail!("truncated ELF header");
    };
    for i in 0..usize::from(phnum) {
        let at = usize::try_from(phoff)? + i * usize::from(phentsize);
        let Some(kind) = u32_at(at) else {
            anyhow::bail!("truncated program headers");
        };
        anyhow::ensure!(
            kind != PT_INTERP,
            "dynamically linked (it names a program interpreter)"
        );
    }
    Ok(())
}

/// A container's part of the share.
pub struct ContainerShare {
    /// The pod's `mounts/`, every path below which is resolved beneath it.
    mounts: PathBuf,
    /// The container id (validated by the caller), its directory's name.
    id: String,
    /// `<GUEST_SHARED>/<container id>`, as the guest sees it.
    pub guest_dir: PathBuf,
}

impl ContainerShare {
    fn root(&self) -> anyhow::Result<Root> {
        Ok(Root::open(&self.mounts)?)
    }

    /// The container's host directory (`mounts/<cid>`).
    pub fn host_dir(&self) -> PathBuf {
        self.mounts.join(&self.id)
    }

    /// Mounts the rootfs containerd prepared (its `rootfs` mounts, or else the spec's
    /// `root.path`, relative to the bundle or absolute as Podman gives it) at
    /// `mounts/<cid>/rootfs`, `nosuid,nodev`.
    pub fn mount_rootfs(&self, mounts: &[Mount], bundle: &Path, spec: &Spec) -> anyhow::Result<()> {
        let root = self.root()?;
        let rel = Path::new(&self.id).join("rootfs");
        let target = root.mkdir_all(&rel, 0o755)?;
        if mounts.is_empty() {
            let path = spec
                .root()
                .as_ref()
                .map_or_else(|| PathBuf::from("rootfs"), |r| r.path().clone());
            let src = bundle.join(path);
            pod_fs::attach_bind(&src, target.as_fd(), false)
                .with_context(|| format!("binding {}", src.display()))?;
            return Ok(());
        }
        let target_path = pod_fs::fd_path(target.as_fd());
        for m in mounts {
            let fs_type = (!m.type_.is_empty()).then_some(m.type_.as_str());
            let mut options = m.options.clone();
            options.extend(["nosuid".to_string(), "nodev".to_string()]);
            containerd_shim::mount::mount_rootfs(
                fs_type,
                Some(m.source.as_str()),
                &options,
                &target_path,
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
        let mut share_root = None;
        for (i, m) in mounts.iter_mut().enumerate() {
            let opts = m.options().clone().unwrap_or_default();
            let is_bind = m.typ().as_deref() == Some("bind")
                || opts.iter().any(|o| o == "bind" || o == "rbind");
            let Some(src) = m.source().clone().filter(|_| is_bind) else {
                continue;
            };
            let meta = std::fs::metadata(&src).with_context(|| {
                format!(
                    "bind mount source {} (for {}) does not exist",
                    src.display(),
                    m.destination().display()
                )
            })?;
            let name = format!(
                "{i}-{}",
                src.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            );
            let rel = Path::new(&self.id).join("mounts").join(&name);
            let root = match &share_root {
                Some(r) => r,
                None => share_root.insert(self.root()?),
            };
            let target = if meta.is_dir() {
                root.mkdir_all(&rel, 0o755)?
            } else {
                root.create_file(&rel, 0o644)?
            };
            let readonly = opts.iter().any(|o| o == "ro");
            pod_fs::attach_bind(&src, target.as_fd(), readonly)
                .with_context(|| format!("sharing {}", src.display()))?;
            m.set_source(Some(self.guest_dir.join("mounts").join(&name)));
        }
        spec.set_mounts(Some(mounts));
        Ok(())
    }

    /// Unmounts everything under the container's directory and removes it, refusing to
    /// remove through a mount that is still there.
    pub fn remove(&self) {
        let dir = self.host_dir();
        pod_fs::unmount_under(&dir);
        if let Err(e) = pod_fs::remove_within_mount(&dir) {
            tracing::error!(container = %self.id, dir = %dir.display(), error = %e, "removing the container's share");
        }
    }
}

/// Mount points at or under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    pod_fs::mounts_under(dir)
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_static_elf_passes_as_a_guest_tool() {
        let me = std::env::current_exe().unwrap();
        // Test binaries are dynamically linked.
        let e = super::check_static_executable(&me).unwrap_err();
        assert!(e.to_string().contains("dynamically linked"), "{e}");
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("x");
        std::fs::write(&f, b"#!/bin/sh\n").unwrap();
        assert!(super::check_static_executable(&f).is_err());
        std::fs::write(&f, b"\x7fELF\x02\x01\x01").unwrap();
        assert!(
            super::check_static_executable(&f)
                .unwrap_err()
                .to_string()
                .contains("truncated")
        );
        // Debian's busybox-static, which scripts/setup.sh installs.
        super::check_static_executable(std::path::Path::new("/bin/busybox")).unwrap();
    }

    use super::*;
    use std::io::ErrorKind;

    fn bind_mount(src: &str, dst: &str, opts: &[&str]) -> oci_spec::runtime::Mount {
        oci_spec::runtime::MountBuilder::default()
            .destination(dst)
            .typ("bind")
            .source(src)
            .options(opts.iter().map(|o| o.to_string()).collect::<Vec<_>>())
            .build()
            .unwrap()
    }

    #[test]
    fn spec_paths_become_guest_paths() {
        let share = PodShare::at(Path::new("/run/hull/k8s.io/pod")).container("c1");
        assert_eq!(share.guest_dir, Path::new("/run/hull/shared/c1"));
        assert_eq!(
            share.host_dir(),
            Path::new("/run/hull/k8s.io/pod/mounts/c1")
        );
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
        let share = PodShare::at(Path::new("/nonexistent")).container("c1");
        let mut spec = Spec::default();
        let mut mounts = spec.mounts().clone().unwrap();
        mounts.push(bind_mount("/definitely/not/here", "/data", &["rbind"]));
        spec.set_mounts(Some(mounts));
        let e = share.rewrite_spec(&mut spec).unwrap_err();
        assert!(format!("{e:#}").contains("does not exist"), "{e:#}");
    }

    /// A pod directory with its share made, torn down (and checked) on drop.
    struct TestPod {
        dir: tempfile::TempDir,
        share: PodShare,
    }

    impl TestPod {
        fn new() -> Option<TestPod> {
            if !nix::unistd::geteuid().is_root() {
                eprintln!("skipped: mounting needs root (make test runs it as root)");
                return None;
            }
            let dir = tempfile::Builder::new()
                .prefix("hull-share")
                .tempdir_in("/tmp")
                .unwrap();
            let share = PodShare::create(dir.path()).unwrap();
            Some(TestPod { dir, share })
        }

        fn pod(&self) -> &Path {
            self.dir.path()
        }
    }

    impl Drop for TestPod {
        fn drop(&mut self) {
            pod_fs::unmount_under(self.dir.path());
            assert!(pod_fs::mounts_under(self.dir.path()).is_empty());
        }
    }

    fn write_err(path: &Path) -> Option<std::io::ErrorKind> {
        std::fs::write(path, b"x").err().map(|e| e.kind())
    }

    fn mount_flags(path: &Path) -> nix::sys::statvfs::FsFlags {
        nix::sys::statvfs::statvfs(path).unwrap().flags()
    }

    /// What the guest sees (through virtiofsd, which serves `shared/`): no new entries at
    /// the top or in a container's directory, its rootfs and rw volumes writable, ro
    /// volumes read-only down to their submounts, and nosuid/nodev everywhere.
    #[test]
    fn guest_view_is_read_only_except_rootfs_and_rw_volumes() {
        let Some(t) = TestPod::new() else { return };
        let host = tempfile::tempdir_in("/tmp").unwrap();
        let bundle = host.path().join("bundle");
        std::fs::create_dir_all(bundle.join("rootfs/bin")).unwrap();
        let ro = host.path().join("ro-vol");
        std::fs::create_dir_all(ro.join("sub")).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &ro.join("sub"),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        let rw = host.path().join("rw-vol");
        std::fs::create_dir_all(&rw).unwrap();

        let c = t.share.container("c1");
        c.mount_rootfs(&[], &bundle, &Spec::default()).unwrap();
        let mut spec = Spec::default();
        let mut mounts = spec.mounts().clone().unwrap();
        let n = mounts.len();
        mounts.push(bind_mount(ro.to_str().unwrap(), "/ro", &["rbind", "ro"]));
        mounts.push(bind_mount(rw.to_str().unwrap(), "/rw", &["rbind", "rw"]));
        spec.set_mounts(Some(mounts));
        c.rewrite_spec(&mut spec).unwrap();
        assert_eq!(
            spec.mounts().as_ref().unwrap()[n].source().as_deref(),
            Some(Path::new(&format!("/run/hull/shared/c1/mounts/{n}-ro-vol")))
        );

        let view = &t.share.shared;
        let erofs = Some(ErrorKind::ReadOnlyFilesystem);
        assert_eq!(write_err(&view.join("planted")), erofs);
        assert_eq!(write_err(&view.join("c1/planted")), erofs);
        assert_eq!(
            std::os::unix::fs::symlink("/etc", view.join("c1/mounts/x"))
                .unwrap_err()
                .kind(),
            ErrorKind::ReadOnlyFilesystem
        );
        assert_eq!(
            std::fs::remove_dir(view.join("c1/rootfs"))
                .unwrap_err()
                .kind(),
            ErrorKind::ReadOnlyFilesystem
        );

        assert_eq!(write_err(&view.join("c1/rootfs/bin/new")), None);
        assert!(bundle.join("rootfs/bin/new").exists());
        let ro_view = view.join(format!("c1/mounts/{n}-ro-vol"));
        assert_eq!(write_err(&ro_view.join("f")), erofs);
        assert_eq!(
            write_err(&ro_view.join("sub/f")),
            erofs,
            "a submount of a ro volume"
        );
        let rw_view = view.join(format!("c1/mounts/{}-rw-vol", n + 1));
        assert_eq!(write_err(&rw_view.join("f")), None);
        assert!(rw.join("f").exists());

        use nix::sys::statvfs::FsFlags;
        for p in [
            view.join("c1/rootfs"),
            ro_view.clone(),
            ro_view.join("sub"),
            rw_view.clone(),
        ] {
            let f = mount_flags(&p);
            assert!(
                f.contains(FsFlags::ST_NOSUID | FsFlags::ST_NODEV),
                "{}: {f:?}",
                p.display()
            );
        }

        c.remove();
        assert!(!t.pod().join("mounts/c1").exists());
        assert!(
            rw.join("f").exists() && ro.join("sub").exists(),
            "host data untouched"
        );
        nix::mount::umount(&ro.join("sub")).unwrap();
    }

    /// A symlink planted where the shim works (as a guest with write access to the share
    /// would) is refused, and nothing appears where it points.
    #[test]
    fn planted_symlinks_are_refused() {
        let Some(t) = TestPod::new() else { return };
        let outside = tempfile::tempdir_in("/tmp").unwrap();
        let bundle = tempfile::tempdir_in("/tmp").unwrap();
        std::fs::create_dir_all(bundle.path().join("rootfs")).unwrap();
        let vol = tempfile::tempdir_in("/tmp").unwrap();

        std::os::unix::fs::symlink(outside.path(), t.share.mounts.join("c1")).unwrap();
        let c = t.share.container("c1");
        let e = c
            .mount_rootfs(&[], bundle.path(), &Spec::default())
            .unwrap_err();
        assert!(format!("{e:#}").contains("resolving"), "{e:#}");

        std::fs::create_dir(t.share.mounts.join("c2")).unwrap();
        std::os::unix::fs::symlink(outside.path(), t.share.mounts.join("c2/mounts")).unwrap();
        let mut spec = Spec::default();
        spec.set_mounts(Some(vec![bind_mount(
            vol.path().to_str().unwrap(),
            "/v",
            &["rbind"],
        )]));
        assert!(t.share.container("c2").rewrite_spec(&mut spec).is_err());

        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        assert!(pod_fs::mounts_under(outside.path()).is_empty());
        assert!(
            pod_fs::mounts_under(t.pod())
                .iter()
                .all(|m| !m.starts_with(t.share.mounts.join("c1")))
        );
    }
}
