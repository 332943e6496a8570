//! The host side of a terminal container (`process.terminal` with `--console-socket`):
//! a pty whose master goes to the caller over its console socket, as runc sends it
//! (SCM_RIGHTS, the pty's name as the payload), and whose slave the supervisor keeps as
//! the container's stdio, in raw mode (the guest's own pty does the line discipline, so
//! the host's must pass bytes through unchanged) and as its controlling terminal, so
//! that a resize on the master reaches it as SIGWINCH.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};

nix::ioctl_write_int_bad!(tiocsctty, libc::TIOCSCTTY);
nix::ioctl_read_bad!(tiocgwinsz, libc::TIOCGWINSZ, libc::winsize);

/// The console socket a process gets, as runc rules it: one exactly when the process has
/// a terminal (made absolute: the helper that connects to it runs elsewhere).
pub fn console_socket(given: Option<&Path>, terminal: bool) -> anyhow::Result<Option<PathBuf>> {
    match (given, terminal) {
        (Some(p), true) => {
            Ok(Some(std::path::absolute(p).with_context(|| {
                format!("the console socket {}", p.display())
            })?))
        }
        (None, false) => Ok(None),
        (None, true) => {
            anyhow::bail!("cannot allocate tty if runc will detach without setting console socket")
        }
        (Some(_), false) => {
            anyhow::bail!("cannot use console socket if runc will not detach or allocate tty")
        }
    }
}

/// Makes the pty, sends its master to `console_socket` and keeps the slave; the slave
/// becomes this process's controlling terminal (it must lead a session without one).
pub fn open(console_socket: &Path) -> anyhow::Result<OwnedFd> {
    let pty = nix::pty::openpty(None, None).context("opening a pty")?;
    let mut t = tcgetattr(&pty.slave).context("reading the pty's modes")?;
    cfmakeraw(&mut t);
    tcsetattr(&pty.slave, SetArg::TCSANOW, &t).context("setting the pty to raw mode")?;
    // SAFETY: TIOCSCTTY takes an int argument (0: do not steal another session's
    // terminal) and touches no memory of ours; the slave descriptor is open.
    unsafe { tiocsctty(pty.slave.as_raw_fd(), 0) }
        .context("taking the pty as controlling terminal")?;
    send_master(console_socket, pty.master)?;
    Ok(pty.slave)
}

/// Hands `master` to whoever listens on `path` (conmon, containerd-shim-runc-v2,
/// `recvtty`) and closes our copy.
fn send_master(path: &Path, master: OwnedFd) -> anyhow::Result<()> {
    let sock = UnixStream::connect(path)
        .with_context(|| format!("connecting to the console socket {}", path.display()))?;
    let name = b"/dev/ptmx";
    let fds = [master.as_raw_fd()];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(name)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .with_context(|| format!("sending the pty to the console socket {}", path.display()))?;
    Ok(())
}

/// The terminal's size now (rows, columns); `None` while nobody has set one.
pub fn size(slave: &OwnedFd) -> Option<(u32, u32)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into `ws`, which lives across the call.
    unsafe { tiocgwinsz(slave.as_raw_fd(), &mut ws) }.ok()?;
    (ws.ws_row > 0 && ws.ws_col > 0).then(|| (u32::from(ws.ws_row), u32::from(ws.ws_col)))
}

/// The agent request that gives the guest's pty of `container_id`/`exec_id` the host
/// pty's size; `None` while the host pty has none.
pub fn resize_request(
    slave: &OwnedFd,
    container_id: &str,
    exec_id: &str,
) -> Option<hull_protocols::agent::TtyWinResizeRequest> {
    let (rows, columns) = size(slave)?;
    let mut req = hull_protocols::agent::TtyWinResizeRequest::new();
    req.container_id = container_id.to_string();
    req.exec_id = exec_id.to_string();
    req.rows = rows;
    req.columns = columns;
    Some(req)
}

/// SIGWINCH, for a helper that holds a terminal; a helper without one never sees it.
pub struct WindowChanges(Option<tokio::signal::unix::Signal>);

impl WindowChanges {
    pub fn new(tty: Option<&OwnedFd>) -> WindowChanges {
        use tokio::signal::unix::{SignalKind, signal};
        WindowChanges(tty.and_then(|_| signal(SignalKind::window_change()).ok()))
    }

    pub async fn next(&mut self) {
        match self.0.as_mut() {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
}
