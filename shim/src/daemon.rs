//! A child process the shim owns (the VMM, virtiofsd, vhost-device-vsock): started with
//! its output in a bounded log file, recorded in the pod's pid file the moment it exists,
//! optionally awaited until its socket appears, and killed and reaped when dropped, so
//! none outlives the pod. Each child also dies with the shim (`PR_SET_PDEATHSIG`), so a
//! shim SIGKILLed in the middle of a boot leaves no VM running.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The pid file of a VM's processes, in its run directory: one `pid start-time role name`
/// line per process, appended as each one starts, for `shim delete` after a crash.
pub const PID_FILE: &str = "pids";

/// What a recorded process is to the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The VMM: the VM lives as long as it does.
    Vmm,
    /// A device backend (virtiofsd, vhost-device-vsock).
    Backend,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Vmm => "vmm",
            Role::Backend => "backend",
        }
    }
}

/// One line of a pid file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PidRecord {
    pub pid: i32,
    /// Start time in clock ticks since boot (/proc/PID/stat field 22): with the pid, it
    /// names one process even after the pid is reused.
    pub start: u64,
    pub role: String,
    pub name: String,
}

impl PidRecord {
    pub fn parse_file(text: &str) -> Vec<PidRecord> {
        text.lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some(PidRecord {
                    pid: f.next()?.parse().ok()?,
                    start: f.next()?.parse().ok()?,
                    role: f.next()?.to_string(),
                    name: f.next()?.to_string(),
                })
            })
            .collect()
    }

    /// Whether the process is still the one recorded (same pid, same start time).
    pub fn is_alive(&self) -> bool {
        start_time(self.pid) == Some(self.start)
    }
}

/// A process's start time (field 22 of /proc/PID/stat), if it exists.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The serial console's log in a VM's run directory.
pub const CONSOLE_LOG: &str = "console.log";

fn create_log(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))
}

/// What ends a log that reached its bound.
fn truncation_marker(max: u64) -> String {
    format!("\n[hull: log truncated at {max} bytes; further output discarded]\n")
}

/// Writes what it can of `buf` to a log that already holds `*written` bytes, never past
/// `max`; the write that reaches the bound also writes the marker.
fn write_bounded(file: &mut File, written: &mut u64, max: u64, buf: &[u8]) {
    if *written >= max {
        return;
    }
    let room = (max - *written).min(buf.len() as u64) as usize;
    let _ = file.write_all(&buf[..room]);
    *written += room as u64;
    if *written >= max {
        let _ = file.write_all(truncation_marker(max).as_bytes());
    }
}

/// Copies `from` into `file` until end of file, keeping at most `max` bytes; the rest is
/// read and discarded, so the writer never blocks on a full pipe.
fn copy_bounded(from: impl Read + Send + 'static, file: File, max: u64) {
    copy_bounded_shared(from, Arc::new(Mutex::new((file, 0))), max);
}

/// As `copy_bounded`, for several streams into one file and one bound.
fn copy_bounded_shared(
    mut from: impl Read + Send + 'static,
    to: Arc<Mutex<(File, u64)>>,
    max: u64,
) {
    let spawned = std::thread::Builder::new()
        .name("log-copier".into())
        .spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match from.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        let mut g = to.lock().expect("log lock");
                        let (file, written) = &mut *g;
                        write_bounded(file, written, max, &buf[..n]);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "starting a log copier");
    }
}

/// Requests to the thread that forks every child.
type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// `PR_SET_PDEATHSIG` fires when the *thread* that forked a child exits, and tokio's
/// blocking threads come and go: so every child is forked by one thread that lives as
/// long as the shim.
fn spawn_on_keeper(cmd: Command) -> std::io::Result<Child> {
    static KEEPER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("child-keeper".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("starting the child-keeper thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    keeper
        .lock()
        .expect("keeper lock")
        .send((cmd, reply_tx))
        .map_err(|_| std::io::Error::other("the child-keeper thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("the child-keeper thread is gone"))?
}

/// Makes `cmd`'s child receive SIGKILL when the shim dies, also if it died while forking,
/// and lead a process group of its own: whatever it forks (virtiofsd's sandbox, the
/// jailed VMM behind its waiter) is killed with it.
fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and calls only prctl,
    // setpgid and getppid, which are async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))?;
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other(
                    "the shim died while starting a child",
                ));
            }
            Ok(())
        });
    }
}

/// Makes `cmd`'s child move itself into `cg` before it execs, so everything it ever forks
/// is inside too.
pub fn join_cgroup(cmd: &mut Command, cg: &crate::vm_cgroup::VmCgroup) {
    let files = cg.procs_files();
    // SAFETY: the closure runs in the forked child before exec; it calls only open, write
    // and close (async-signal-safe) on paths made before the fork, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            for f in &files {
                let fd = libc::open(f.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0": the writing process itself.
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if n != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// The fd number the first fd passed to a child gets (`pass_fds`); the next ones follow.
/// High, so it lands past whatever the child's own setup holds open.
pub const PASSED_FD_BASE: i32 = 100;
/// At most this many fds are passed to one child.
const MAX_PASSED_FDS: usize = 16;

/// Makes `fds` appear in `cmd`'s child as `PASSED_FD_BASE`, `PASSED_FD_BASE + 1`, …,
/// open across exec (the shim's own fds stay close-on-exec, so nothing else leaks into
/// the child). A target number already open in the child fails the spawn instead of
/// replacing what is there.
pub fn pass_fds(cmd: &mut Command, fds: &[std::os::fd::RawFd]) -> anyhow::Result<()> {
    if fds.len() > MAX_PASSED_FDS {
        bail!("{} fds to pass, at most {MAX_PASSED_FDS}", fds.len());
    }
    let mut src = [-1; MAX_PASSED_FDS];
    src[..fds.len()].copy_from_slice(fds);
    let n = fds.len();
    // SAFETY: the closure runs in the forked child before exec; it calls only fcntl and
    // dup2 (async-signal-safe) on a fixed-size array, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let mut parked = [-1; MAX_PASSED_FDS];
            let end = PASSED_FD_BASE + n as i32;
            for i in 0..n {
                if libc::fcntl(PASSED_FD_BASE + i as i32, libc::F_GETFD) != -1 {
                    return Err(std::io::Error::other("a passed fd's number is in use"));
                }
                // Parked above every target, so no dup2 below replaces a source.
                parked[i] = libc::fcntl(src[i], libc::F_DUPFD_CLOEXEC, end);
                if parked[i] < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, p) in parked.iter().enumerate().take(n) {
                // dup2 leaves the new fd without FD_CLOEXEC: it survives exec.
                if libc::dup2(*p, PASSED_FD_BASE + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(())
}

pub struct Daemon {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Starts `cmd` as `name`, its output in `<run_dir>/<name>.log` (mode 0600, at most
    /// `log_max` bytes), and records it in `<run_dir>/pids` before returning.
    pub fn spawn(
        name: &str,
        role: Role,
        cmd: Command,
        run_dir: &Path,
        log_max: u64,
    ) -> anyhow::Result<Daemon> {
        Self::start(name, role, cmd, run_dir, log_max, false)
    }

    /// As `spawn`, with the process's stdout (a VMM's serial console) going to
    /// `<run_dir>/console.log` instead, bounded the same way.
    pub fn spawn_with_console(
        name: &str,
        role: Role,
        cmd: Command,
        run_dir: &Path,
        log_max: u64,
    ) -> anyhow::Result<Daemon> {
        Self::start(name, role, cmd, run_dir, log_max, true)
    }

    fn start(
        name: &str,
        role: Role,
        mut cmd: Command,
        run_dir: &Path,
        log_max: u64,
        console: bool,
    ) -> anyhow::Result<Daemon> {
        let log = run_dir.join(format!("{name}.log"));
        // Output reaches its file through a pipe and a copier that stops at `log_max`: what
        // a guest makes a VMM or daemon print must not fill the host's disk.
        let log_file = create_log(&log)?;
        let console_file = console
            .then(|| create_log(&run_dir.join(CONSOLE_LOG)))
            .transpose()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let program = cmd.get_program().to_owned();
        let mut child =
            spawn_on_keeper(cmd).with_context(|| format!("starting {name} ({program:?})"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        match console_file {
            Some(console) => {
                copy_bounded(stdout, console, log_max);
                copy_bounded(stderr, log_file, log_max);
            }
            None => {
                let shared = Arc::new(Mutex::new((log_file, 0u64)));
                copy_bounded_shared(stdout, shared.clone(), log_max);
                copy_bounded_shared(stderr, shared, log_max);
            }
        }
        let mut d = Daemon {
            name: name.to_string(),
            child: Some(child),
            log,
        };
        let pid = d.pid().unwrap_or_default() as i32;
        if let Err(e) = record_pid(run_dir, pid, role, name) {
            d.kill();
            return Err(e.context(format!("recording {name}'s pid")));
        }
        tracing::debug!(name, pid, "started");
        Ok(d)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits until `socket` exists, failing early (with the daemon's log) if it exits.
    pub fn wait_for_socket(&mut self, socket: &Path, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !socket.exists() {
            if let Some(status) = self.try_wait()? {
                bail!(
                    "{} exited ({status}) before creating {}: {}",
                    self.name,
                    socket.display(),
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not create {} within {timeout:?}",
                    self.name,
                    socket.display()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => bail!("{} was already reaped", self.name),
        }
    }

    /// Waits up to `timeout` for the daemon to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(Some(s));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log_tail(&self) -> String {
        crate::hypervisor::last_lines(&crate::hypervisor::read_lossy(&self.log), 20)
    }

    /// Kills the daemon's whole process group and returns once every process of it is
    /// gone: nothing of this daemon (a lock, a socket, a forked helper) outlives the call.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let group = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            let _ = c.kill();
            let _ = c.wait();
            wait_group_gone(group);
            tracing::debug!(name = %self.name, "stopped");
        }
    }
}

/// Waits (2 s at most) until no process of `group` is left, SIGKILLing stragglers.
pub fn wait_group_gone(group: nix::unistd::Pid) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while nix::sys::signal::killpg(group, None).is_ok() && Instant::now() < deadline {
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Appends the process to `<run_dir>/pids` (mode 0600) and syncs it: a shim killed right
/// after this line leaves a file that `shim delete` can act on.
fn record_pid(run_dir: &Path, pid: i32, role: Role, name: &str) -> anyhow::Result<()> {
    let start = start_time(pid).context("reading the start time")?;
    let path = run_dir.join(PID_FILE);
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(f, "{pid} {start} {} {name}", role.as_str())?;
    f.sync_data()?;
    Ok(())
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_records_round_trip_and_spot_reuse() {
        let me = std::process::id() as i32;
        let start = start_time(me).unwrap();
        let text = format!(
            "{me} {start} vmm qemu\n{me} {} backend virtiofsd\nbad line\n",
            start + 1
        );
        let recs = PidRecord::parse_file(&text);
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].role, "vmm");
        assert!(recs[0].is_alive());
        assert!(!recs[1].is_alive(), "same pid, other start time: not ours");
    }

    #[test]
    fn daemon_output_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "head -c 100000 /dev/zero | tr '\\0' x; echo err >&2"]);
        let mut d = Daemon::spawn("chatty", Role::Backend, cmd, dir.path(), 1000).unwrap();
        assert!(d.wait_timeout(Duration::from_secs(10)).unwrap().is_some());
        std::thread::sleep(Duration::from_millis(200));
        let log = std::fs::read_to_string(dir.path().join("chatty.log")).unwrap();
        assert!(log.len() < 1200, "{}", log.len());
        assert!(log.contains("truncated at 1000 bytes"));
        let pids = std::fs::read_to_string(dir.path().join(PID_FILE)).unwrap();
        assert!(pids.contains(" backend chatty"), "{pids}");
    }
}
