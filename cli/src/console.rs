//! `hull console SANDBOX [-- CMD...]`: a shell or command as root in a pod's VM, outside
//! every container, through the agent's debug console (vsock port `DEBUG_CONSOLE_PORT`,
//! reached over the VM's hybrid-vsock socket). The pod must have been booted with
//! `debug_console = true`; otherwise it is refused, with why.
//!
//! The command's stdin is this one's, but its end is not passed on (hybrid vsock has no
//! half-close): a command that reads until end of input waits, as over a terminal.
//!
//! With a terminal on stdin the command gets a pty in the guest and this terminal goes
//! raw; bytes from the guest are written to it unchanged, escape sequences included: the
//! guest controls them, so use the console on pods you are debugging, not as a routine.

use std::io::{Read, Write};
use std::os::fd::AsFd;

use anyhow::Context;
use hull_protocols::DEBUG_CONSOLE_PORT;
use hull_shim::config::HullConfig;
use hull_shim::hypervisor::VSOCK_SOCKET;
use serde::Serialize;

#[derive(Serialize)]
struct Request<'a> {
    argv: &'a [String],
    tty: bool,
    rows: u16,
    cols: u16,
}

pub fn run(sandbox: &str, namespace: Option<&str>, argv: &[String]) -> anyhow::Result<()> {
    let cfg = HullConfig::load()?;
    let dir = crate::logs::find_pod(&cfg, sandbox, namespace)?;
    let uds = dir.join("vm").join(VSOCK_SOCKET);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let stream = rt
        .block_on(hull_shim::hybrid_vsock::connect(&uds, DEBUG_CONSOLE_PORT))
        .map_err(|e| refused(&cfg, sandbox, e))?;
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;

    let tty = std::io::IsTerminal::is_terminal(&std::io::stdin());
    let (rows, cols) = if tty { window_size() } else { (0, 0) };
    let mut header = serde_json::to_vec(&Request {
        argv,
        tty,
        rows,
        cols,
    })?;
    header.push(b'\n');
    (&stream).write_all(&header)?;

    let _raw = if tty {
        Some(RawTerminal::enter()?)
    } else {
        None
    };
    let mut to_guest = stream.try_clone()?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut input = std::io::stdin().lock();
        while let Ok(n) = input.read(&mut buf) {
            if n == 0 || to_guest.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        // No half-close: hybrid vsock has none (the VMM's side ends the whole connection
        // on a host EOF), so the end of this input is not passed on.
    });
    let mut from_guest = stream;
    let mut out = std::io::stdout().lock();
    let mut buf = [0u8; 4096];
    loop {
        let n = from_guest
            .read(&mut buf)
            .context("reading from the guest")?;
        if n == 0 {
            return Ok(());
        }
        out.write_all(&buf[..n])?;
        out.flush()?;
    }
}

/// Why the console could not be reached, and what to do.
fn refused(cfg: &HullConfig, sandbox: &str, e: anyhow::Error) -> anyhow::Error {
    if cfg.debug_console {
        anyhow::anyhow!(
            "pod {sandbox}'s VM does not serve a debug console ({e:#}): it was booted while \
             debug_console was off, or its VM is gone; restart the pod"
        )
    } else {
        anyhow::anyhow!(
            "the debug console is off: set `debug_console = true` in {} and restart the pod \
             (read the trust notes in docs/operations.md first)",
            hull_shim::config::Source::current()
        )
    }
}

fn window_size() -> (u16, u16) {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct we own.
    let r = unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) };
    if r == 0 {
        (ws.ws_row, ws.ws_col)
    } else {
        (0, 0)
    }
}

/// The local terminal in raw mode (keys go to the guest as typed, ^C included) until
/// dropped.
struct RawTerminal(nix::sys::termios::Termios);

impl RawTerminal {
    fn enter() -> anyhow::Result<RawTerminal> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let saved = tcgetattr(stdin.as_fd())?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)?;
        Ok(RawTerminal(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin().as_fd(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.0,
        );
    }
}
