//! The API socket: a unix socket taking one JSON request per line and answering one JSON
//! line each. Requests:
//! - `{"action":"ping"}` answers `{"ok":true}`;
//! - `{"action":"stats"}` answers `{"ok":true,"exits":{"io_in":N,...}}` (VM exits by
//!   reason, `exit_stats`);
//! - `{"action":"pause"}` and `{"action":"resume"}` stop and restart the vCPUs and the
//!   devices (`vm_control`); `{"action":"snapshot","dir":"DIR"}` writes a snapshot of
//!   the paused VM into the existing directory DIR (a path as hull-vmm sees it: inside
//!   its jail when jailed);
//! - `{"action":"shutdown"}` answers, then ends the VM (hull-vmm exits 0).
//!
//! Anything else, or a request that fails, gets `{"ok":false,"error":...}` and changes
//! nothing.
//!
//!   echo '{"action":"shutdown"}' | socat - UNIX-CONNECT:/run/vm/api.sock

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::machine::{ExitReason, ExitSender};
use crate::seccomp::{self, ThreadKind};
use crate::vm_control::Control;

/// What one connection may send in all; a client can't make the VMM buffer more.
const MAX_CONNECTION_BYTES: u64 = 256 * 1024;

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Request {
    Ping,
    Stats,
    Pause,
    Resume,
    Snapshot,
    Shutdown,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    action: Request,
    /// The snapshot's directory.
    #[serde(default)]
    dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path}: {source}", path = .path.display())]
    Socket {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("spawning the API thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Binds `path` (replacing a stale socket) and serves it on its own thread; `control`
/// is the VM's (None: pause, resume and snapshot are refused).
pub fn serve(path: &Path, exit: ExitSender, control: Option<Arc<Control>>) -> Result<(), Error> {
    let socket = |what| {
        move |source| Error::Socket {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    if path.exists() {
        std::fs::remove_file(path).map_err(socket("removing the stale API socket"))?;
    }
    let listener = UnixListener::bind(path).map_err(socket("binding the API socket"))?;
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            seccomp::apply_or_exit(ThreadKind::Api);
            for conn in listener.incoming() {
                match conn {
                    Ok(c) => {
                        if let Err(e) = handle(c, &exit, control.as_deref()) {
                            tracing::warn!(error = %e, "API connection");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "API accept"),
                }
            }
        })
        .map_err(Error::Thread)?;
    Ok(())
}

fn handle(conn: UnixStream, exit: &ExitSender, control: Option<&Control>) -> std::io::Result<()> {
    let mut out = conn.try_clone()?;
    let mut reader = BufReader::new(std::io::Read::take(conn, MAX_CONNECTION_BYTES));
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let (reply, request) = answer(&line, control);
        out.write_all(reply.as_bytes())?;
        if request == Some(Request::Shutdown) {
            tracing::info!("shutdown requested through the API");
            let _ = exit.send(Ok(ExitReason::ApiShutdown));
            return Ok(());
        }
    }
}

fn refusal(error: String) -> String {
    format!("{}\n", serde_json::json!({"ok": false, "error": error}))
}

/// The reply line for one request line, and the request if it was valid and done.
fn answer(line: &str, control: Option<&Control>) -> (String, Option<Request>) {
    let envelope = match serde_json::from_str::<Envelope>(line.trim()) {
        Ok(e) => e,
        Err(e) => return (refusal(format!("bad request: {e}")), None),
    };
    let needs_control = matches!(
        envelope.action,
        Request::Pause | Request::Resume | Request::Snapshot
    );
    let outcome = match (&envelope.action, control) {
        (Request::Stats, _) => {
            return (
                format!(
                    "{}\n",
                    serde_json::json!({"ok": true, "exits": crate::exit_stats::snapshot()})
                ),
                Some(Request::Stats),
            );
        }
        (_, None) if needs_control => Err("this VM cannot be paused".to_string()),
        (Request::Pause, Some(c)) => c.pause().map_err(|e| e.to_string()),
        (Request::Resume, Some(c)) => c.resume().map_err(|e| e.to_string()),
        (Request::Snapshot, Some(c)) => match &envelope.dir {
            Some(dir) => c.snapshot(dir).map_err(|e| format!("{e:#}")),
            None => Err("a snapshot needs \"dir\"".to_string()),
        },
        _ => Ok(()),
    };
    match outcome {
        Ok(()) => ("{\"ok\":true}\n".into(), Some(envelope.action)),
        Err(e) => (refusal(e), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_errors() {
        assert_eq!(
            answer("{\"action\":\"shutdown\"}\n", None),
            ("{\"ok\":true}\n".into(), Some(Request::Shutdown))
        );
        assert_eq!(
            answer(" {\"action\":\"ping\"} ", None).1,
            Some(Request::Ping)
        );
        let (stats, req) = answer("{\"action\":\"stats\"}", None);
        assert_eq!(req, Some(Request::Stats));
        let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
        assert!(v["exits"]["mmio_write"].is_u64(), "{stats}");
        for bad in [
            "",
            "{}",
            "{\"action\":\"reboot\"}",
            "not json",
            "{\"action\":\"ping\",\"x\":1}",
            "{\"action\":\"pause\"}",
            "{\"action\":\"snapshot\",\"dir\":\"/tmp\"}",
        ] {
            let (reply, req) = answer(bad, None);
            assert!(
                req.is_none() && reply.contains("\"ok\":false"),
                "{bad}: {reply}"
            );
        }
    }

    #[test]
    fn shutdown_over_the_socket_reaches_the_vm() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        std::fs::write(&path, "stale").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        serve(&path, tx, None).unwrap();
        let mut c = UnixStream::connect(&path).unwrap();
        c.write_all(b"{\"action\":\"ping\"}\nbogus\n{\"action\":\"shutdown\"}\n")
            .unwrap();
        let mut lines = BufReader::new(c).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "{\"ok\":true}");
        assert!(lines.next().unwrap().unwrap().contains("bad request"));
        assert_eq!(lines.next().unwrap().unwrap(), "{\"ok\":true}");
        assert_eq!(rx.recv().unwrap().unwrap(), ExitReason::ApiShutdown);
    }
}
