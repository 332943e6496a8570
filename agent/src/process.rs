//! One process the agent started in a container (the init or an exec): its pid, its
//! standard streams and its exit status, which waiters observe through a watch channel.

use std::sync::OnceLock;

use tokio::sync::{Mutex, watch};

use crate::error::{AgentError, Result, precondition};
use crate::reaper::Exit;
use crate::stdio::{self, FdStream};

/// The agent's side of a process's stdio.
pub enum Stdio {
    Pipes {
        stdin: FdStream,
        stdout: FdStream,
        stderr: FdStream,
    },
    /// stdin and stdout share the pty; there is no separate stderr.
    Tty { master: FdStream, input: FdStream },
}

pub struct Process {
    pub exec_id: String,
    pub terminal: bool,
    pid: OnceLock<i32>,
    stdin: Mutex<Option<FdStream>>,
    stdout: Option<Mutex<FdStream>>,
    stderr: Option<Mutex<FdStream>>,
    /// Kept for window resizes; the read side lives in `stdout`.
    pty_fd: Option<i32>,
    exit: watch::Sender<Option<Exit>>,
}

impl Process {
    pub fn new(exec_id: &str, stdio: Stdio) -> Process {
        let (terminal, stdin, stdout, stderr, pty_fd) = match stdio {
            Stdio::Pipes {
                stdin,
                stdout,
                stderr,
            } => (false, stdin, stdout, Some(Mutex::new(stderr)), None),
            Stdio::Tty { master, input } => {
                let fd = master.raw_fd();
                (true, input, master, None, Some(fd))
            }
        };
        Process {
            exec_id: exec_id.to_string(),
            terminal,
            pid: OnceLock::new(),
            stdin: Mutex::new(Some(stdin)),
            stdout: Some(Mutex::new(stdout)),
            stderr,
            pty_fd,
            exit: watch::channel(None).0,
        }
    }

    pub fn set_pid(&self, pid: i32) {
        let _ = self.pid.set(pid);
    }

    pub fn pid(&self) -> Option<i32> {
        self.pid.get().copied()
    }

    pub fn set_exit(&self, exit: Exit) {
        self.exit.send_replace(Some(exit));
    }

    pub fn exit(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    pub async fn wait(&self) -> Exit {
        let mut rx = self.exit.subscribe();
        let exit = rx
            .wait_for(|e| e.is_some())
            .await
            .expect("sender lives in self");
        exit.expect("waited for Some")
    }

    pub async fn read_stdout(&self, max: usize) -> Result<Vec<u8>> {
        read(self.stdout.as_ref(), max, "stdout").await
    }

    pub async fn read_stderr(&self, max: usize) -> Result<Vec<u8>> {
        read(self.stderr.as_ref(), max, "stderr (a tty process has none)").await
    }

    pub async fn write_stdin(&self, data: &[u8]) -> Result<usize> {
        let stdin = self.stdin.lock().await;
        let stdin = stdin
            .as_ref()
            .ok_or_else(|| precondition("stdin is closed"))?;
        stdin
            .write_all(data)
            .await
            .map_err(|e| AgentError::Internal(anyhow::Error::new(e).context("writing stdin")))
    }

    /// Closes stdin: the pipe's write end, or an end-of-file character on a tty.
    pub async fn close_stdin(&self) -> Result<()> {
        let mut stdin = self.stdin.lock().await;
        if self.terminal
            && let Some(input) = stdin.as_ref()
        {
            input
                .write_all(&[4])
                .await
                .map_err(|e| AgentError::Internal(e.into()))?;
        }
        stdin.take();
        Ok(())
    }

    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        let fd = self
            .pty_fd
            .ok_or_else(|| precondition("the process has no terminal"))?;
        stdio::resize_pty(fd, rows, cols)
            .map_err(|e| AgentError::Internal(anyhow::Error::new(e).context("resizing the pty")))
    }
}

async fn read(stream: Option<&Mutex<FdStream>>, max: usize, what: &str) -> Result<Vec<u8>> {
    let stream = stream.ok_or_else(|| precondition(format!("no {what}")))?;
    let stream = stream.lock().await;
    stream
        .read(max)
        .await
        .map_err(|e| AgentError::Internal(anyhow::Error::new(e).context("reading output")))
}
