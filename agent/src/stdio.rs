//! A process's standard streams as the agent holds them: the far ends of pipes, or the
//! master of the pty that the container's init sends back over a console socket.
//! Reads and writes are non-blocking on the tokio reactor, so a ReadStdout that waits for
//! output never ties up a thread.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow};
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use tokio::io::unix::AsyncFd;
use tokio::net::UnixListener;

/// One end of a pipe or a pty master, registered with the reactor.
pub struct FdStream {
    fd: AsyncFd<OwnedFd>,
}

impl FdStream {
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        // SAFETY: `fd` is an OwnedFd moved into the AsyncFd: it stays open and names the
        // same file description until the AsyncFd drops it.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| io::Error::other(e.to_string()))?;
        Ok(FdStream { fd })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.get_ref().as_raw_fd()
    }

    /// Up to `max` bytes; empty at end of stream. A pty master reports EIO once every
    /// slave is closed, which is its end of stream.
    pub async fn read(&self, max: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; max.max(1)];
        loop {
            let mut guard = self.fd.readable().await?;
            match guard
                .try_io(|fd| nix::unistd::read(fd.as_raw_fd(), &mut buf).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(Vec::new()),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data` (waits while the pipe is full).
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<usize> {
        let total = data.len();
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| {
                nix::unistd::write(fd.get_ref().as_fd(), data).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(total)
    }
}

/// A pipe whose both ends are close-on-exec; the child gets its end through Command's
/// stdio, which clears the flag on the duplicated descriptor only.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(OFlag::O_CLOEXEC)?)
}

/// Waits for the container init to connect to `listener` and send its pty master.
pub async fn receive_pty_master(
    listener: UnixListener,
    timeout: Duration,
) -> anyhow::Result<OwnedFd> {
    let (stream, _) = tokio::time::timeout(timeout, listener.accept())
        .await
        .context("timed out waiting for the container's pty")?
        .context("accepting on the console socket")?;
    let stream: UnixStream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(timeout))?;
    tokio::task::spawn_blocking(move || recv_fd(&stream)).await?
}

fn recv_fd(stream: &UnixStream) -> anyhow::Result<OwnedFd> {
    let mut name = [0u8; 4096];
    let mut iov = [io::IoSliceMut::new(&mut name)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .context("receiving the pty master")?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c
            && let Some(&fd) = fds.first()
        {
            // SAFETY: the kernel just installed `fd` in our table for this message and
            // nothing else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    Err(anyhow!(
        "the console socket message carried no file descriptor"
    ))
}

/// Sets the window size of the pty whose master is `fd`.
pub fn resize_pty(fd: RawFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize struct from the pointer, which is valid for
    // the duration of the call; a non-pty fd makes the ioctl fail, not misbehave.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A unix listener for a console socket, replacing any stale socket file.
pub fn console_listener(path: &Path) -> io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pipe_round_trip_and_eof() {
        let (r, w) = pipe().unwrap();
        let reader = FdStream::new(r).unwrap();
        let writer = FdStream::new(w).unwrap();
        assert_eq!(writer.write_all(b"hello").await.unwrap(), 5);
        drop(writer);
        assert_eq!(reader.read(64).await.unwrap(), b"hello");
        assert!(reader.read(64).await.unwrap().is_empty());
    }
}
