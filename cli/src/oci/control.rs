//! The supervisor's control socket: one JSON request and one JSON answer per connection,
//! each a line of at most `MAX_LINE` bytes. The socket is in the container's state
//! directory (0700, root's), so only the CLI's caller reaches it; the bound and the
//! deadline still keep a stuck or confused peer from hanging either side.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

pub const MAX_LINE: u64 = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    State,
    Start,
    Kill {
        signal: i32,
        all: bool,
    },
    Pause,
    Resume,
    Ps,
    /// New cgroup limits: OCI `LinuxResources`, JSON.
    Update {
        resources: serde_json::Value,
    },
    /// The container's cgroup figures, as runc's `events --stats` gives them.
    Stats,
    /// End the container (SIGKILL if it runs) and its VM; the supervisor then exits.
    Delete,
}

/// The container's status as the supervisor sees it (runc's words).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Response {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// Guest pids of the container's processes (`ps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<Vec<u32>>,
    /// runc's stats object (`Stats`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<serde_json::Value>,
}

impl Response {
    pub fn error(e: impl std::fmt::Display) -> Response {
        Response {
            error: Some(e.to_string()),
            ..Default::default()
        }
    }
}

/// Reads one bounded line; None at end of stream.
pub fn read_line(r: impl Read) -> std::io::Result<Option<String>> {
    let mut line = String::new();
    let n = BufReader::new(r.take(MAX_LINE)).read_line(&mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if !line.ends_with('\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "control line too long or cut short",
        ));
    }
    Ok(Some(line))
}

/// Sends `req` to the supervisor at `socket` and returns its answer (an `error` in the
/// answer becomes an Err). `timeout` bounds the whole exchange.
/// `path` as a unix socket address that fits `sun_path` (108 bytes) however deep its
/// directory is (Docker's state root plus a 64-character id is past it): the directory,
/// opened `O_PATH`, named through `/proc/self/fd`. The returned descriptor must stay open
/// while the address is used.
pub fn short_address(path: &Path) -> anyhow::Result<(std::fs::File, std::path::PathBuf)> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        anyhow::bail!("{}: not a socket path", path.display());
    };
    let dir_fd = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(dir)
        .with_context(|| format!("opening {}", dir.display()))?;
    let short = Path::new("/proc/self/fd")
        .join(dir_fd.as_raw_fd().to_string())
        .join(name);
    Ok((dir_fd, short))
}

pub fn call(socket: &Path, req: &Request, timeout: Duration) -> anyhow::Result<Response> {
    let (_dir, address) = short_address(socket)?;
    let mut s = UnixStream::connect(&address).with_context(|| {
        format!(
            "connecting to the container's supervisor ({})",
            socket.display()
        )
    })?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line)?;
    let answer = read_line(&mut s)
        .context("reading the supervisor's answer")?
        .context("the supervisor closed the connection without answering")?;
    let r: Response = serde_json::from_str(&answer).context("the supervisor's answer")?;
    match r.error {
        Some(e) => Err(anyhow::anyhow!(e)),
        None => Ok(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_json_and_lines_are_bounded() {
        let j = serde_json::to_string(&Request::Kill {
            signal: 9,
            all: true,
        })
        .unwrap();
        assert_eq!(j, r#"{"op":"kill","signal":9,"all":true}"#);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"state"}"#).unwrap(),
            Request::State
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"exec"}"#).is_err());
        let long = vec![b'a'; MAX_LINE as usize + 10];
        assert!(read_line(&long[..]).is_err());
        assert!(read_line(&b"abc"[..]).is_err());
        assert_eq!(read_line(&b""[..]).unwrap(), None);
        assert_eq!(read_line(&b"x\ny"[..]).unwrap().as_deref(), Some("x\n"));
    }
}
