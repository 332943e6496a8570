//! `hull console SANDBOX [-- CMD...]`: a shell or command as root in a pod's VM, outside
//! every container, through the agent's debug console (vsock port `DEBUG_CONSOLE_PORT`,
//! reached over the VM's hybrid-vsock socket). The pod must have been booted with
//! `debug_console = true`; otherwise it is refused, with why.
//!
//! The command's stdin, stdout and stderr are this one's, and `hull console` exits with
//! the command's status; the terminal's size follows this one's.
//!
//! With a terminal on stdin the command gets a pty in the guest and this terminal goes
//! raw; bytes from the guest are written to it unchanged, escape sequences included: the
//! guest controls them, so use the console on pods you are debugging, not as a routine.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use hull_protocols::DEBUG_CONSOLE_PORT;
use hull_protocols::console::Frame;
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

pub fn run(sandbox: &str, namespace: Option<&str>, argv: &[String]) -> anyhow::Result<ExitCode> {
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
    let to_guest = Arc::new(Mutex::new(stream.try_clone()?));
    let send = {
        let to_guest = to_guest.clone();
        move |f: Frame| f.write_to(&mut *to_guest.lock().expect("console writer"))
    };
    let input = send.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut stdin = std::io::stdin().lock();
        while let Ok(n @ 1..) = stdin.read(&mut buf) {
            if input(Frame::Stdin(buf[..n].to_vec())).is_err() {
                return;
            }
        }
        let _ = input(Frame::StdinEnd);
    });
    if tty {
        // The terminal's size, whenever it changes (polled: no signal handler needed).
        std::thread::spawn(move || {
            let mut last = (rows, cols);
            loop {
                std::thread::sleep(std::time::Duration::from_millis(250));
                let now = window_size();
                if now != last {
                    last = now;
                    if send(Frame::Resize {
                        rows: now.0,
                        cols: now.1,
                    })
                    .is_err()
                    {
                        return;
                    }
                }
            }
        });
    }
    let mut from_guest = std::io::BufReader::new(stream);
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr());
    loop {
        match Frame::read_from(&mut from_guest).context("reading from the guest")? {
            Some(Frame::Stdout(d)) => {
                out.write_all(&d)?;
                out.flush()?;
            }
            Some(Frame::Stderr(d)) => err.write_all(&d)?,
            // Exit codes are 0..=255, or 128 + signal.
            Some(Frame::Exit(code)) => {
                return Ok(ExitCode::from(u8::try_from(code).unwrap_or(255)));
            }
            Some(_) => {}
            None => anyhow::bail!(
                "the guest closed the console without an exit status (did the VM die?)"
            ),
        }
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
