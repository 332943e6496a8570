//! The debug console: an operator's shell or command in the guest, outside every
//! container, as the guest's root. Served on vsock port `DEBUG_CONSOLE_PORT` only when the
//! kernel command line says `hull.debug_console=1` (the shim's `debug_console = true`).
//!
//! One connection runs one command. The host first sends one line of JSON, at most
//! `MAX_HEADER` bytes: `{"argv": [...], "tty": true, "rows": 24, "cols": 80}` (an empty
//! argv is `sh`); after it, bytes go both ways unchanged: the command's terminal (a pty)
//! with `tty`, else its stdin and its stdout + stderr. The connection ends with the
//! command.
//!
//! The initrd holds no shell: the tools come from the shim, which puts a static busybox
//! in the pod's share when the console is on; the agent installs its applets under
//! `TOOLS_DIR` on the first connection.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::Arc;

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
    if let Err(e) = install_tools(busybox) {
        let _ = writeln!(conn, "hull debug console: {e:#}");
        return Err(e);
    }
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
    if req.tty {
        tty_session(conn, cmd, &req, reaper, rt)
    } else {
        cmd.stdin(conn.try_clone()?)
            .stdout(conn.try_clone()?)
            .stderr(conn.try_clone()?);
        let child = spawn(&mut cmd, &mut conn)?;
        drop(conn);
        let _ = rt.block_on(reaper.watch(child));
        Ok(())
    }
}

fn spawn(cmd: &mut std::process::Command, conn: &mut std::fs::File) -> anyhow::Result<i32> {
    match cmd.spawn() {
        // The reaper owns every exit: the Child is never waited for.
        Ok(child) => Ok(i32::try_from(child.id())?),
        Err(e) => {
            let _ = writeln!(conn, "hull debug console: {:?}: {e}", cmd.get_program());
            Err(e.into())
        }
    }
}

fn tty_session(
    mut conn: std::fs::File,
    mut cmd: std::process::Command,
    req: &Request,
    reaper: &Reaper,
    rt: &tokio::runtime::Handle,
) -> anyhow::Result<()> {
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
        .stderr(slave.try_clone()?);
    // SAFETY: between fork and exec only async-signal-safe calls: setsid and an ioctl on
    // fd 0, which is the pty's slave by then.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = spawn(&mut cmd, &mut conn)?;
    drop(cmd);
    drop(slave);
    let mut master_out = std::fs::File::from(pty.master);
    let mut master_in = master_out.try_clone()?;
    let mut conn_in = conn.try_clone()?;
    // Host → terminal ends when the host closes or the terminal is gone; a host that
    // leaves hangs the session up, as closing a terminal does.
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut conn_in, &mut master_in);
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(child),
            nix::sys::signal::Signal::SIGHUP,
        );
    });
    // Terminal → host ends with EIO once the command and all holders of the slave exit.
    let _ = std::io::copy(&mut master_out, &mut conn);
    let _ = rt.block_on(reaper.watch(child));
    let _ = nix::sys::socket::shutdown(conn.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    Ok(())
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
