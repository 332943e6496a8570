//! The debug console: an operator's shell or command in the guest, outside every
//! container, as the guest's root. Served on vsock port `DEBUG_CONSOLE_PORT` only when the
//! kernel command line says `hull.debug_console=1` (the shim's `debug_console = true`).
//!
//! One connection runs one command. The host first sends one line of JSON, at most
//! `MAX_HEADER` bytes: `{"argv": [...], "tty": true, "rows": 24, "cols": 80}` (an empty
//! argv is `sh`); after it, both sides send `hull_protocols::console` frames: stdin, its
//! end and terminal resizes one way; stdout, stderr (without a terminal) and, last, the
//! exit status the other. With `tty` the command runs on a pty. The connection ends with
//! the command.
//!
//! The initrd holds no shell: the tools come from the shim, which puts a static busybox
//! in the pod's share when the console is on; the agent installs its applets under
//! `TOOLS_DIR` on the first connection.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use hull_protocols::console::Frame;

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, VsockAddr, accept4, bind, listen, socket,
};
use serde::Deserialize;

use crate::reaper::Reaper;

/// The longest header line taken; anything longer ends the connection.
const MAX_HEADER: usize = 4096;
/// Where the busybox applets are linked; first on the console's PATH.
const TOOLS_DIR: &str = "/run/hull/debug/bin";
const VMADDR_CID_ANY: u32 = u32::MAX;
/// The busybox the shim places in the pod's share, relative to the share's root.
pub const TOOLS_IN_SHARE: &str = ".debug/busybox";

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Request {
    #[serde(default)]
    pub argv: Vec<String>,
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub rows: u16,
    #[serde(default)]
    pub cols: u16,
}

/// Listens on the console port and serves each connection on a thread of its own.
pub fn start(reaper: Arc<Reaper>, busybox: std::path::PathBuf) -> anyhow::Result<()> {
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(
        fd.as_raw_fd(),
        &VsockAddr::new(VMADDR_CID_ANY, hull_protocols::DEBUG_CONSOLE_PORT),
    )?;
    listen(&fd, Backlog::new(4)?)?;
    tracing::warn!(
        port = hull_protocols::DEBUG_CONSOLE_PORT,
        "debug console on: the host can run commands in this VM as root"
    );
    let rt = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("debug-console".into())
        .spawn(move || {
            loop {
                match accept4(fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                    Ok(c) => {
                        // SAFETY: accept4 returned a new descriptor that nothing else owns.
                        let conn = unsafe { OwnedFd::from_raw_fd(c) };
                        let (reaper, busybox, rt) = (reaper.clone(), busybox.clone(), rt.clone());
                        let _ = std::thread::Builder::new()
                            .name("debug-session".into())
                            .spawn(move || {
                                if let Err(e) = session(conn, &reaper, &busybox, &rt) {
                                    tracing::warn!(error = %format!("{e:#}"), "debug console session failed");
                                }
                            });
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "debug console accept failed");
                        return;
                    }
                }
            }
        })?;
    Ok(())
}

/// How long a refused session waits for the host to hang up.
const LINGER: std::time::Duration = std::time::Duration::from_secs(5);

/// Ends a session whose answer is written: no more writes, then whatever the host still
/// sends is read and dropped until it hangs up (or `LINGER` passes). Closing at once
/// would answer the host's next packet (its end of stdin) with a reset, and a reset can
/// overtake the answer on its way out of the host's vsock backend: the host would see
/// the console close with no exit status.
fn linger(conn: &mut std::fs::File) {
    use nix::sys::socket::{Shutdown, setsockopt, shutdown, sockopt::ReceiveTimeout};
    let _ = shutdown(conn.as_raw_fd(), Shutdown::Write);
    let _ = setsockopt(&*conn, ReceiveTimeout, &nix::sys::time::TimeVal::new(1, 0));
    let until = std::time::Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    while std::time::Instant::now() < until {
        match conn.read(&mut sink) {
            Ok(1..) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            _ => return,
        }
    }
}

/// Reads the header line byte by byte, so that nothing after it is consumed.
fn read_header(conn: &mut std::fs::File) -> anyhow::Result<Request> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        if conn.read(&mut b)? == 0 {
            anyhow::bail!("connection closed before the header ended");
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
        if line.len() > MAX_HEADER {
            anyhow::bail!("header longer than {MAX_HEADER} bytes");
        }
    }
    Ok(serde_json::from_slice(&line)?)
}

/// Links busybox's applets into `TOOLS_DIR` once.
fn install_tools(busybox: &Path) -> anyhow::Result<()> {
    if Path::new(TOOLS_DIR).join("sh").exists() {
        return Ok(());
    }
    if !busybox.exists() {
        anyhow::bail!(
            "no busybox at {}: the pod's share has no console tools",
            busybox.display()
        );
    }
    std::fs::create_dir_all(TOOLS_DIR)?;
    let status = std::process::Command::new(busybox)
        .args(["--install", "-s", TOOLS_DIR])
        .status()?;
    anyhow::ensure!(status.success(), "busybox --install: {status}");
    Ok(())
}

fn session(
    conn: OwnedFd,
    reaper: &Reaper,
    busybox: &Path,
    rt: &tokio::runtime::Handle,
) -> anyhow::Result<()> {
    let mut conn = std::fs::File::from(conn);
    let req = read_header(&mut conn)?;
    let out = Arc::new(Mutex::new(conn.try_clone()?));
    let refuse = |e: anyhow::Error| {
        let mut w = out.lock().expect("console writer");
        let _ =
            Frame::Stderr(format!("hull debug console: {e:#}\n").into_bytes()).write_to(&mut *w);
        let _ = Frame::Exit(127).write_to(&mut *w);
        linger(&mut w);
        e
    };
    install_tools(busybox).map_err(refuse)?;
    let argv = if req.argv.is_empty() {
        vec!["sh".to_string()]
    } else {
        req.argv.clone()
    };
    tracing::warn!(argv = ?argv, tty = req.tty, "debug console command");
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", format!("{TOOLS_DIR}:/usr/sbin:/usr/bin:/sbin:/bin"))
        .env("HOME", "/")
        .env("TERM", "xterm")
        .current_dir("/");
    let started = if req.tty {
        start_on_pty(&mut cmd, &req)
    } else {
        start_on_pipes(&mut cmd)
    };
    let Started {
        pid,
        stdin,
        outputs,
        pty,
    } = started.map_err(refuse)?;

    // Host → command: stdin, its end, resizes. A host that leaves hangs the session up;
    // once the command is reaped its pid may belong to another process: no signal then.
    let reaped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut input = conn;
    let reaped_seen = reaped.clone();
    std::thread::spawn(move || {
        let mut stdin = Some(stdin);
        while let Ok(Some(frame)) = Frame::read_from(&mut input) {
            match frame {
                Frame::Stdin(d) => {
                    if let Some(s) = stdin.as_mut()
                        && s.write_all(&d).is_err()
                    {
                        stdin = None;
                    }
                }
                // A terminal's input has no end of its own: the command sees ^D as typed.
                Frame::StdinEnd if pty.is_none() => stdin = None,
                Frame::Resize { rows, cols } => {
                    if let Some(master) = &pty {
                        let _ = crate::stdio::resize_pty(master.as_raw_fd(), rows, cols);
                    }
                }
                _ => {}
            }
        }
        if !reaped_seen.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGHUP,
            );
        }
    });

    // Command → host, until every writer of its output is gone.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let n_outputs = outputs.len();
    for (mut source, stderr) in outputs {
        let (out, done) = (out.clone(), done_tx.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 16 * 1024];
            // A pty's master reads EIO once the last slave holder is gone.
            while let Ok(n @ 1..) = source.read(&mut buf) {
                let d = buf[..n].to_vec();
                let frame = if stderr {
                    Frame::Stderr(d)
                } else {
                    Frame::Stdout(d)
                };
                if frame
                    .write_to(&mut *out.lock().expect("console writer"))
                    .is_err()
                {
                    break;
                }
            }
            let _ = done.send(());
        });
    }
    let exit = rt.block_on(reaper.watch(pid));
    reaped.store(true, std::sync::atomic::Ordering::SeqCst);
    // Output a background child of the command still holds is not waited for long.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    for _ in 0..n_outputs {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    let code = exit.map_or(255, |e| e.code);
    let w = &mut *out.lock().expect("console writer");
    Frame::Exit(code).write_to(w)?;
    // Half-closed only, as `linger` does for a refused session: the input thread keeps
    // reading until the host hangs up, so nothing the host still sends is answered with
    // a reset that could overtake the exit status.
    let _ = nix::sys::socket::shutdown(w.as_raw_fd(), nix::sys::socket::Shutdown::Write);
    Ok(())
}

/// A started command: its pid, where its input goes, what it outputs (`true`: stderr),
/// and its terminal's master when it has one.
struct Started {
    pid: i32,
    stdin: Box<dyn Write + Send>,
    outputs: Vec<(Box<dyn Read + Send>, bool)>,
    pty: Option<std::fs::File>,
}

/// Starts the command in a session of its own (so that a hang-up reaches all it starts).
/// The returned Child is never waited for: the reaper owns every exit.
fn spawn(cmd: &mut std::process::Command) -> anyhow::Result<std::process::Child> {
    // SAFETY: between fork and exec only async-signal-safe calls: setsid, and an ioctl on
    // fd 0 (the pty's slave when there is one; failing harmlessly on a pipe).
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            libc::ioctl(0, libc::TIOCSCTTY, 0);
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|e| anyhow::anyhow!("{:?}: {e}", cmd.get_program()))
}

fn start_on_pipes(cmd: &mut std::process::Command) -> anyhow::Result<Started> {
    use std::process::Stdio;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn(cmd)?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        anyhow::bail!("the command's pipes are missing");
    };
    Ok(Started {
        pid: i32::try_from(child.id())?,
        stdin: Box::new(stdin),
        outputs: vec![(Box::new(stdout), false), (Box::new(stderr), true)],
        pty: None,
    })
}

fn start_on_pty(cmd: &mut std::process::Command, req: &Request) -> anyhow::Result<Started> {
    use std::process::Stdio;
    let size = nix::pty::Winsize {
        ws_row: if req.rows == 0 { 24 } else { req.rows },
        ws_col: if req.cols == 0 { 80 } else { req.cols },
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None)?;
    let slave = std::fs::File::from(pty.slave);
    cmd.stdin(slave.try_clone()?)
        .stdout(slave.try_clone()?)
        .stderr(slave);
    let child = spawn(cmd);
    // The command's copies of the slave only: its end then shows as EIO on the master.
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let pid = i32::try_from(child?.id())?;
    let master = std::fs::File::from(pty.master);
    Ok(Started {
        pid,
        stdin: Box::new(master.try_clone()?),
        outputs: vec![(Box::new(master.try_clone()?), false)],
        pty: Some(master),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_one_bounded_json_line_and_nothing_after_it_is_read() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut w = a;
        w.write_all(b"{\"argv\":[\"uname\",\"-r\"],\"tty\":false}\nrest")
            .unwrap();
        let mut r = std::fs::File::from(OwnedFd::from(b));
        let req = read_header(&mut r).unwrap();
        assert_eq!(req.argv, ["uname", "-r"]);
        assert!(!req.tty);
        let mut rest = [0u8; 4];
        r.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"rest");

        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut w = a;
        std::thread::spawn(move || {
            let _ = w.write_all(&vec![b'x'; MAX_HEADER + 10]);
        });
        let mut r = std::fs::File::from(OwnedFd::from(b));
        assert!(read_header(&mut r).is_err());
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<Request>(r#"{"argv":[],"evil":1}"#).is_err());
    }
}
