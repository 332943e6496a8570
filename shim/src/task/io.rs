//! Bridges one process's stdio between containerd's FIFOs and the agent: stdin FIFO →
//! WriteStdin (CloseStdin at its end), ReadStdout/ReadStderr → stdout/stderr FIFOs until
//! the agent reports end of stream. Output keeps flowing after the process exits until
//! the agent's pipe is drained, so no tail is lost.

use hull_protocols::agent::{CloseStdinRequest, ReadStreamRequest, WriteStreamRequest};
use hull_protocols::agent_ttrpc::AgentServiceClient;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

const CHUNK: u32 = 64 * 1024;

#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// The copy tasks of one process.
pub struct Bridge {
    stdin: Option<JoinHandle<()>>,
    outputs: Vec<JoinHandle<()>>,
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(0)
}

/// Where a process's stdio goes on the host: containerd's FIFOs, or (for hull's OCI
/// CLI) the descriptors its caller gave. `None`: nothing to read or write.
#[derive(Default)]
pub struct Endpoints {
    pub stdin: Option<Box<dyn AsyncRead + Unpin + Send>>,
    pub stdout: Option<Box<dyn AsyncWrite + Unpin + Send>>,
    pub stderr: Option<Box<dyn AsyncWrite + Unpin + Send>>,
    /// A terminal has one output stream (stdout).
    pub terminal: bool,
}

impl Endpoints {
    /// Opens containerd's FIFOs. A FIFO that cannot be opened is left out (and logged): its
    /// stream is still drained, or the process would block once its pipe fills.
    pub fn fifos(cid: &str, exec_id: &str, paths: &StdioPaths) -> Endpoints {
        // Non-blocking read-only open: it never waits for a writer, and epoll reports
        // nothing on a FIFO that never had one, so this waits for data, or for EOF once a
        // writer has come and gone. (A blocking open would hang forever for a client that
        // never attaches.)
        let stdin = (!paths.stdin.is_empty())
            .then(|| pipe::OpenOptions::new().open_receiver(&paths.stdin))
            .and_then(|r| {
                r.inspect_err(|e| tracing::warn!(container = cid, exec = exec_id, path = %paths.stdin, error = %e, "opening the stdin FIFO"))
                    .ok()
            });
        // Read-write: the open never waits for a reader (a detached `ctr run -d` is gone by
        // now) and writes never fail with EPIPE; the reader sees EOF when we close.
        let open_out = |path: &str| -> Option<Box<dyn AsyncWrite + Unpin + Send>> {
            if path.is_empty() {
                return None;
            }
            match pipe::OpenOptions::new().read_write(true).open_sender(path) {
                Ok(t) => Some(Box::new(t)),
                Err(e) => {
                    tracing::warn!(container = cid, exec = exec_id, path, error = %e, "opening an output FIFO");
                    None
                }
            }
        };
        Endpoints {
            stdin: stdin.map(|r| Box::new(r) as Box<dyn AsyncRead + Unpin + Send>),
            stdout: open_out(&paths.stdout),
            stderr: if paths.terminal {
                None
            } else {
                open_out(&paths.stderr)
            },
            terminal: paths.terminal,
        }
    }
}

impl Bridge {
    /// Starts copying between containerd's FIFOs and the agent; the agent must already
    /// know the process.
    pub fn start(
        agent: &AgentServiceClient,
        cid: &str,
        exec_id: &str,
        paths: &StdioPaths,
    ) -> Bridge {
        Bridge::connect(agent, cid, exec_id, Endpoints::fifos(cid, exec_id, paths))
    }

    /// Starts copying between `ends` and the agent; the agent must already know the process.
    pub fn connect(
        agent: &AgentServiceClient,
        cid: &str,
        exec_id: &str,
        ends: Endpoints,
    ) -> Bridge {
        let (a, c, e) = (agent.clone(), cid.to_string(), exec_id.to_string());
        let stdin = match ends.stdin {
            // Nothing will ever write: the process gets end of file at once.
            None => {
                tokio::spawn(async move { close_stdin(&a, &c, &e).await });
                None
            }
            Some(rx) => Some(tokio::spawn(copy_stdin(a, c, e, rx))),
        };
        let mut outputs = vec![tokio::spawn(copy_out(
            agent.clone(),
            cid.into(),
            exec_id.into(),
            ends.stdout,
            false,
        ))];
        if !ends.terminal {
            outputs.push(tokio::spawn(copy_out(
                agent.clone(),
                cid.into(),
                exec_id.into(),
                ends.stderr,
                true,
            )));
        }
        Bridge { stdin, outputs }
    }

    /// Waits until stdout and stderr have reached end of stream.
    pub async fn drained(&mut self) {
        for h in self.outputs.drain(..) {
            let _ = h.await;
        }
    }

    /// Stops forwarding stdin (CloseIO); the agent closes the process's stdin.
    pub async fn close_stdin(&mut self, agent: &AgentServiceClient, cid: &str, exec_id: &str) {
        if let Some(h) = self.stdin.take() {
            h.abort();
        }
        close_stdin(agent, cid, exec_id).await;
    }

    pub fn abort(&mut self) {
        if let Some(h) = self.stdin.take() {
            h.abort();
        }
        for h in self.outputs.drain(..) {
            h.abort();
        }
    }
}

async fn close_stdin(agent: &AgentServiceClient, cid: &str, exec_id: &str) {
    let mut req = CloseStdinRequest::new();
    req.container_id = cid.to_string();
    req.exec_id = exec_id.to_string();
    if let Err(e) = agent.close_stdin(ctx(), &req).await {
        tracing::debug!(container = cid, exec = exec_id, error = %e, "CloseStdin");
    }
}

async fn copy_stdin(
    agent: AgentServiceClient,
    cid: String,
    exec_id: String,
    mut rx: Box<dyn AsyncRead + Unpin + Send>,
) {
    let mut buf = vec![0u8; CHUNK as usize];
    loop {
        let n = match rx.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut req = WriteStreamRequest::new();
        req.container_id = cid.clone();
        req.exec_id = exec_id.clone();
        req.data = buf[..n].to_vec();
        if agent.write_stdin(ctx(), &req).await.is_err() {
            break;
        }
    }
    close_stdin(&agent, &cid, &exec_id).await;
}

async fn copy_out(
    agent: AgentServiceClient,
    cid: String,
    exec_id: String,
    // None (no FIFO, e.g. a detached task without output): the agent's pipe is still
    // drained, or the process blocks once it fills.
    mut tx: Option<Box<dyn AsyncWrite + Unpin + Send>>,
    stderr: bool,
) {
    loop {
        let mut req = ReadStreamRequest::new();
        req.container_id = cid.clone();
        req.exec_id = exec_id.clone();
        req.len = CHUNK;
        let r = if stderr {
            agent.read_stderr(ctx(), &req).await
        } else {
            agent.read_stdout(ctx(), &req).await
        };
        let data = match r {
            Ok(r) if !r.data.is_empty() => r.data,
            _ => break,
        };
        if let Some(t) = tx.as_mut()
            && (t.write_all(&data).await.is_err() || t.flush().await.is_err())
        {
            tx = None;
        }
    }
}
