//! Path operations on a pod's directory that a guest cannot redirect. The shim runs as
//! root in the host's mount namespace, and parts of a pod directory are writable from the
//! guest through virtio-fs, so every lookup below a pod directory is resolved beneath an
//! open directory with no symlinks (openat2 `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`),
//! mounts are made on the opened file (`/proc/self/fd/N`), unmounts never follow a
//! symlink, and removal stays inside one mount: it fails loudly at a mount point instead
//! of descending into somebody else's data.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, CWD, Mode, OFlags, ResolveFlags, StatxFlags, openat2, statx};
use rustix::mount::{MoveMountFlags, OpenTreeFlags, UnmountFlags, move_mount, open_tree, unmount};

/// Refuse symlinks and magic links anywhere on the way, and never climb out of the root.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// A directory every later operation is resolved beneath.
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

/// The relative path `rel`, refusing anything but plain names (no `..`, no root).
fn plain(rel: &Path) -> io::Result<&Path> {
    if rel.as_os_str().is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a plain relative path", rel.display()),
        ));
    }
    Ok(rel)
}

fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

impl Root {
    /// Opens `path` (a directory the host made; a symlink as its last part is refused).
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| with_path(e.into(), "opening", path))?;
        Ok(Root {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `rel` beneath the root with `flags` (O_CLOEXEC added).
    pub fn open_beneath(&self, rel: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let rel = plain(rel)?;
        openat2(&self.fd, rel, flags | OFlags::CLOEXEC, mode, RESOLVE)
            .map_err(|e| with_path(e.into(), "resolving", &self.path.join(rel)))
    }

    /// Creates every missing directory of `rel` (mode `mode`) beneath the root and returns
    /// the last one opened `O_PATH`.
    pub fn mkdir_all(&self, rel: &Path, mode: u32) -> io::Result<OwnedFd> {
        let rel = plain(rel)?;
        let mut dir = rustix::io::fcntl_dupfd_cloexec(&self.fd, 0)?;
        for part in rel.components() {
            let name = part.as_os_str();
            match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(mode)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(with_path(e.into(), "creating", &self.path.join(rel))),
            }
            dir = openat2(
                &dir,
                name,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                RESOLVE,
            )
            .map_err(|e| with_path(e.into(), "resolving", &self.path.join(rel)))?;
        }
        Ok(dir)
    }

    /// Creates the empty file `rel` (and its directories) beneath the root, or opens the
    /// regular file already there; returned `O_PATH`, to mount a file on.
    pub fn create_file(&self, rel: &Path, mode: u32) -> io::Result<OwnedFd> {
        let rel = plain(rel)?;
        if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.mkdir_all(parent, 0o700)?;
        }
        let f = self.open_beneath(
            rel,
            OFlags::CREATE | OFlags::WRONLY | OFlags::NOFOLLOW,
            Mode::from_raw_mode(mode),
        )?;
        drop(f);
        self.open_beneath(rel, OFlags::PATH | OFlags::NOFOLLOW, Mode::empty())
    }
}

/// The path through which a syscall that takes only paths (mount) reaches an open file.
pub fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Sets `nosuid,nodev` (and `ro` when asked) on the mount at `fd` and every mount below
/// it, atomically (mount_setattr with AT_RECURSIVE): a submount of a read-only volume is
/// read-only too.
pub fn lock_down_mounts(fd: BorrowedFd<'_>, readonly: bool) -> io::Result<()> {
    let mut set = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
    if readonly {
        set |= libc::MOUNT_ATTR_RDONLY;
    }
    let attr = libc::mount_attr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let empty = c"";
    // SAFETY: mount_setattr reads `attr` (size given) and the empty path; `fd` is open for
    // the duration of the call; nothing is written to our memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            empty.as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Binds `src` (with the mounts below it) onto the opened mount point `target`, with
/// `nosuid,nodev` (and `ro`) set on the detached copy before it is attached: mounts that
/// propagate from `target` (to the guest's view and virtiofsd) carry the same flags.
pub fn attach_bind(src: &Path, target: BorrowedFd<'_>, readonly: bool) -> io::Result<()> {
    let tree = open_tree(
        CWD,
        src,
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_RECURSIVE,
    )
    .map_err(|e| with_path(e.into(), "cloning the mount at", src))?;
    lock_down_mounts(tree.as_fd(), readonly)
        .map_err(|e| with_path(e, "setting mount flags on", src))?;
    move_mount(
        &tree,
        "",
        target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(|e| with_path(e.into(), "attaching", src))
}

/// Mount points at or under `dir`, deepest first, from /proc/self/mountinfo (fields split
/// by procfs, the kernel's octal escapes such as `\040` decoded here).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let infos = match procfs::process::Process::myself().and_then(|p| p.mountinfo()) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(error = %e, "reading mountinfo");
            return Vec::new();
        }
    };
    let mut points: Vec<PathBuf> = infos
        .into_iter()
        .map(|m| unescape_mountinfo(&m.mount_point))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
}

/// Decodes the kernel's `\NNN` octal escapes (space, tab, newline, backslash) in a
/// mountinfo path.
fn unescape_mountinfo(raw: &Path) -> PathBuf {
    let b = raw.as_os_str().as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Detaches every mount at or under `dir`, never following a symlink to do it; what
/// cannot be unmounted is left for `remove_within_mount` to refuse.
pub fn unmount_under(dir: &Path) {
    for p in mounts_under(dir) {
        match unmount(&p, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW) {
            // Gone already: a propagated copy of a mount unmounted before it.
            Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => tracing::warn!(path = %p.display(), error = %e, "unmount failed"),
        }
    }
}

fn mount_id(dirfd: BorrowedFd<'_>, name: &Path) -> io::Result<u64> {
    let flags = if name.as_os_str().is_empty() {
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW
    } else {
        AtFlags::SYMLINK_NOFOLLOW
    };
    let st = statx(dirfd, name, flags, StatxFlags::MNT_ID | StatxFlags::TYPE)?;
    Ok(st.stx_mnt_id)
}

/// Removes `dir` and everything in it, provided all of it lies on the mount `dir` is on:
/// a mount point anywhere below (a bind that failed to unmount, a volume) stops the
/// removal with an error before anything in it is touched.
pub fn remove_within_mount(dir: &Path) -> io::Result<()> {
    let fd = match rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(with_path(e.into(), "opening", dir)),
    };
    let mnt = mount_id(fd.as_fd(), Path::new(""))?;
    remove_children(fd, dir, mnt)?;
    std::fs::remove_dir(dir).map_err(|e| with_path(e, "removing", dir))
}

fn remove_children(dirfd: OwnedFd, path: &Path, mnt: u64) -> io::Result<()> {
    let mut names = Vec::new();
    let mut entries = rustix::fs::Dir::read_from(&dirfd)?;
    while let Some(entry) = entries.read() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(std::ffi::OsStr::from_bytes(name).to_owned());
        }
    }
    for name in names {
        let child = path.join(&name);
        let st = statx(
            &dirfd,
            name.as_os_str(),
            AtFlags::SYMLINK_NOFOLLOW,
            StatxFlags::MNT_ID | StatxFlags::TYPE,
        )?;
        if st.stx_mnt_id != mnt {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!(
                    "{} is a mount point; not removing through it",
                    child.display()
                ),
            ));
        }
        let is_dir = u32::from(st.stx_mode) & libc::S_IFMT == libc::S_IFDIR;
        if is_dir {
            let sub = rustix::fs::openat(
                &dirfd,
                name.as_os_str(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            remove_children(sub, &child, mnt)?;
        }
        let flags = if is_dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        rustix::fs::unlinkat(&dirfd, name.as_os_str(), flags)
            .map_err(|e| with_path(e.into(), "removing", &child))?;
    }
    Ok(())
}

/// Creates `path` (and parents) if missing and sets its mode, whatever the umask: the
/// run directory and pod directories must not be readable by other host users.
pub fn ensure_dir_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|e| with_path(e, "creating", path))?;
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory",
            path.display()
        )));
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::mount::{MsFlags, mount};

    fn root_or_skip() -> bool {
        let root = nix::unistd::geteuid().is_root();
        if !root {
            eprintln!("skipped: mounting needs root (make test runs it as root)");
        }
        root
    }

    #[test]
    fn paths_must_be_plain() {
        let d = tempfile::tempdir().unwrap();
        let r = Root::open(d.path()).unwrap();
        for bad in ["", "/etc", "../x", "a/../../b"] {
            assert!(r.mkdir_all(Path::new(bad), 0o700).is_err(), "{bad}");
        }
        r.mkdir_all(Path::new("a/b"), 0o700).unwrap();
        std::os::unix::fs::symlink("/tmp", d.path().join("a/link")).unwrap();
        assert!(r.mkdir_all(Path::new("a/link/x"), 0o700).is_err());
        assert!(r.create_file(Path::new("a/link"), 0o600).is_err());
        assert!(!Path::new("/tmp/x").exists() || Path::new("/tmp/x").is_dir());
    }

    /// An unmount that did not happen must not turn removal into deleting what is
    /// mounted there (host data behind a bind).
    #[test]
    fn removal_stops_at_a_mount_point() {
        if !root_or_skip() {
            return;
        }
        let data = tempfile::tempdir_in("/tmp").unwrap();
        std::fs::write(data.path().join("precious"), b"keep").unwrap();
        let pod = tempfile::tempdir_in("/tmp").unwrap();
        let target = pod.path().join("mounts/c1/vol");
        std::fs::create_dir_all(&target).unwrap();
        std::fs::write(pod.path().join("mounts/c1/other"), b"x").unwrap();
        mount(
            Some(data.path()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();

        let e = remove_within_mount(pod.path()).unwrap_err();
        assert!(e.to_string().contains("mount point"), "{e}");
        assert_eq!(
            std::fs::read(data.path().join("precious")).unwrap(),
            b"keep"
        );

        unmount_under(pod.path());
        remove_within_mount(pod.path()).unwrap();
        assert!(!pod.path().exists());
        assert!(data.path().join("precious").exists());
    }

    /// mountinfo writes a space as `\040`: a mount point with one is still found and
    /// unmounted.
    #[test]
    fn mount_points_with_escaped_names_are_unmounted() {
        if !root_or_skip() {
            return;
        }
        let pod = tempfile::tempdir_in("/tmp").unwrap();
        let odd = pod.path().join("a b\tc");
        std::fs::create_dir_all(&odd).unwrap();
        mount(
            Some("tmpfs"),
            &odd,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        assert_eq!(mounts_under(pod.path()), vec![odd.clone()]);
        unmount_under(pod.path());
        assert!(mounts_under(pod.path()).is_empty());
        remove_within_mount(pod.path()).unwrap();
    }
}
