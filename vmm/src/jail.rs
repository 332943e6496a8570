//! The jail hull-vmm puts itself in (`--jail DIR --uid U --gid G`), after Firecracker's
//! jailer, in two steps:
//!
//! 1. `enter_namespaces`, first thing in `main` while the process has one thread: new
//!    mount, pid, ipc and uts namespaces. The process forks; the parent stays outside as a
//!    small waiter that exits with the VMM's status (the pid the caller knows and kills),
//!    the child is PID 1 of the new pid namespace and dies with the waiter
//!    (`PR_SET_PDEATHSIG` with a handled SIGTERM: PID 1 ignores unhandled signals, the
//!    parent-death SIGKILL included). Its working directory is the jail directory.
//! 2. `confine`, once the kernel and initrd are loaded and every device, socket and log is
//!    open, before any guest code runs: pivot_root into the jail directory (re-mounted
//!    read-only, nosuid, nodev, noexec; only a `writable` subdirectory, where the API
//!    writes snapshots, stays writable), no capabilities in the bounding set, gid and uid
//!    dropped (all threads, and with them every capability), no_new_privs, not dumpable,
//!    rlimits on open files and file size.
//!
//! The VM's sockets and logs live in the jail directory, so relative paths to them keep
//! working after the pivot. The per-thread seccomp filters come on top.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::CloneFlags;
use nix::sys::resource::{Resource, setrlimit};
use nix::unistd::{ForkResult, Gid, Uid};

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailConfig {
    /// The per-VM directory that becomes the VMM's root.
    pub root: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// A directory inside `root` that stays writable in the jail (for snapshots).
    #[serde(default)]
    pub writable: Option<PathBuf>,
}

/// The read end of the pipe whose write end the waiter holds.
static WAITER_PIPE: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the jail's uid and gid must not be 0")]
    RootIds,
    #[error("the jail's waiter died during start-up")]
    WaiterGone,
    #[error("still able to be root after dropping privileges")]
    StillRoot,
    #[error("{step}: {source}")]
    Step {
        step: String,
        #[source]
        source: std::io::Error,
    },
}

/// Names the step that failed with a system error.
fn at<E: Into<std::io::Error>>(step: impl Into<String>) -> impl FnOnce(E) -> Error {
    let step = step.into();
    move |e| Error::Step {
        step,
        source: e.into(),
    }
}

/// Open files the jailed VMM may hold (vsock connections are capped at 1024).
const MAX_OPEN_FILES: u64 = 4096;

/// Unshares the namespaces and forks (see the module doc). Returns in the child only; the
/// parent waits for it and exits with its status. Must run before any thread starts.
pub fn enter_namespaces(cfg: &JailConfig) -> Result<(), Error> {
    if cfg.uid == 0 || cfg.gid == 0 {
        return Err(Error::RootIds);
    }
    std::env::set_current_dir(&cfg.root).map_err(at(format!(
        "entering the jail directory {}",
        cfg.root.display()
    )))?;
    nix::sched::unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS,
    )
    .map_err(at("unsharing namespaces (needs root)"))?;
    // The waiter holds the write end: the child sees it close if the waiter is gone.
    let (alive_r, alive_w) = nix::unistd::pipe().map_err(at("pipe"))?;
    // SAFETY: the process has a single thread here (the caller's contract), so the child
    // may run any code after fork.
    match unsafe { nix::unistd::fork() }.map_err(at("fork"))? {
        ForkResult::Parent { child } => {
            drop(alive_r);
            let code = wait_for(child);
            drop(alive_w);
            std::process::exit(code);
        }
        ForkResult::Child => {
            drop(alive_w);
            // PID 1 of a pid namespace ignores a signal it has no handler for, even the
            // kernel's parent-death SIGKILL: so the death signal is SIGTERM, handled.
            // SAFETY: the handler only calls _exit, which is async-signal-safe.
            unsafe {
                nix::sys::signal::signal(
                    nix::sys::signal::Signal::SIGTERM,
                    nix::sys::signal::SigHandler::Handler(exit_on_signal),
                )
            }
            .map_err(at("installing the SIGTERM handler"))?;
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                .map_err(at("PR_SET_PDEATHSIG"))?;
            if waiter_gone(&alive_r) {
                return Err(Error::WaiterGone);
            }
            // Kept for the VMM's life: `confine` checks it once more.
            let _ = WAITER_PIPE.set(alive_r);
            nix::unistd::sethostname("hull-vmm").map_err(at("sethostname"))?;
            // Nothing mounted in here reaches the host's namespace.
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .map_err(at("making the mount namespace private"))?;
            Ok(())
        }
    }
}

extern "C" fn exit_on_signal(sig: libc::c_int) {
    // SAFETY: _exit is async-signal-safe and ends the process at once.
    unsafe { libc::_exit(128 + sig) }
}

fn waiter_gone(alive_r: &OwnedFd) -> bool {
    let mut fds = [nix::poll::PollFd::new(
        alive_r.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    matches!(nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO), Ok(n) if n > 0)
}

/// The waiter: the VMM's exit code, or 128 + the signal that killed it.
fn wait_for(child: nix::unistd::Pid) -> i32 {
    use nix::sys::wait::{WaitStatus, waitpid};
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 1,
        }
    }
}

/// Pivots into the jail and drops every privilege (see the module doc). `max_file_size`
/// bounds any file the VMM writes (its console log).
pub fn confine(cfg: &JailConfig, max_file_size: u64) -> Result<(), Error> {
    pivot_into(&cfg.root, cfg.writable.as_deref())?;
    // A write past the file-size limit fails with EFBIG instead of killing the VMM.
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code.
    unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGXFSZ,
            nix::sys::signal::SigHandler::SigIgn,
        )
    }
    .map_err(at("ignoring SIGXFSZ"))?;
    setrlimit(Resource::RLIMIT_NOFILE, MAX_OPEN_FILES, MAX_OPEN_FILES)
        .map_err(at("RLIMIT_NOFILE"))?;
    setrlimit(Resource::RLIMIT_FSIZE, max_file_size, max_file_size).map_err(at("RLIMIT_FSIZE"))?;
    drop_bounding_set()?;
    nix::unistd::setgroups(&[]).map_err(at("setgroups"))?;
    let (gid, uid) = (Gid::from_raw(cfg.gid), Uid::from_raw(cfg.uid));
    // glibc applies these to every thread of the process.
    nix::unistd::setresgid(gid, gid, gid).map_err(at("setresgid"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(at("setresuid"))?;
    // A change of uid clears the parent-death signal: set it again, then make sure the
    // waiter did not die in between.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
        .map_err(at("PR_SET_PDEATHSIG"))?;
    if WAITER_PIPE.get().is_some_and(waiter_gone) {
        return Err(Error::WaiterGone);
    }
    nix::sys::prctl::set_no_new_privs().map_err(at("PR_SET_NO_NEW_PRIVS"))?;
    nix::sys::prctl::set_dumpable(false).map_err(at("PR_SET_DUMPABLE"))?;
    let root = Uid::from_raw(0);
    if nix::unistd::geteuid().is_root() || nix::unistd::setresuid(root, root, root).is_ok() {
        return Err(Error::StillRoot);
    }
    Ok(())
}

fn pivot_into(root: &Path, writable: Option<&Path>) -> Result<(), Error> {
    let none = None::<&str>;
    mount(
        Some(root),
        root,
        none,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none,
    )
    .map_err(at(format!("bind-mounting {}", root.display())))?;
    let locked = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    if let Some(w) = writable {
        // A mount of its own, so that making the root read-only leaves it writable.
        if !w.starts_with(root) || w == root {
            return Err(at(format!("{} is not inside the jail", w.display()))(
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            ));
        }
        mount(Some(w), w, none, MsFlags::MS_BIND, none)
            .map_err(at(format!("bind-mounting {}", w.display())))?;
        mount(none, w, none, locked, none).map_err(at("locking the writable directory"))?;
    }
    mount(none, root, none, locked | MsFlags::MS_RDONLY, none)
        .map_err(at("making the jail read-only"))?;
    std::env::set_current_dir(root).map_err(at("entering the jail"))?;
    // pivot_root(".", "."): the old root ends up stacked on the new one, then detached.
    nix::unistd::pivot_root(".", ".").map_err(at("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(at("detaching the old root"))?;
    std::env::set_current_dir("/").map_err(at("chdir /"))?;
    Ok(())
}

fn drop_bounding_set() -> Result<(), Error> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<libc::c_ulong>().ok())
        .unwrap_or(40);
    for cap in 0..=last {
        // SAFETY: prctl(PR_CAPBSET_DROP, cap) takes plain integers and touches no memory.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if r != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return Err(at(format!("dropping capability {cap}"))(
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

/// `path` relative to the jail root when it lies inside it (so it stays valid after the
/// pivot, the working directory being the root before and after); unchanged otherwise.
pub fn inside(cfg: &JailConfig, path: &Path) -> PathBuf {
    path.strip_prefix(&cfg.root)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jail_paths_become_relative() {
        let cfg = JailConfig {
            root: "/run/hull/ns/pod/vm".into(),
            uid: 1000,
            gid: 1000,
            writable: None,
        };
        assert_eq!(
            inside(&cfg, Path::new("/run/hull/ns/pod/vm/vm.vsock")),
            Path::new("vm.vsock")
        );
        assert_eq!(
            inside(&cfg, Path::new("/elsewhere/k")),
            Path::new("/elsewhere/k")
        );
    }

    #[test]
    fn root_ids_are_refused() {
        let cfg = JailConfig {
            root: "/nonexistent".into(),
            uid: 0,
            gid: 1,
            writable: None,
        };
        assert!(enter_namespaces(&cfg).is_err());
    }
}
