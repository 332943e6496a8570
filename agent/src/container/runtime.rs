//! The agent's side of the runtime helper (see `helper.rs`): starts `hull-agent runtime
//! create|exec` with the container's stdio as the helper's, receives the pty master when
//! the process has a terminal, and reports the new pid or libcontainer's error.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio as StdStdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;

use crate::error::{AgentError, Result};
use crate::helper::HelperResult;
use crate::process::Stdio;
use crate::reaper::Reaper;
use crate::stdio::{self, FdStream};

const PTY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct RuntimeHelper {
    exe: PathBuf,
    root: PathBuf,
    console_dir: PathBuf,
    reaper: Arc<Reaper>,
    seq: AtomicU64,
}

pub enum Launch<'a> {
    Create { bundle: &'a Path },
    Exec { process_json: &'a Path },
}

impl RuntimeHelper {
    pub fn new(root: PathBuf, console_dir: PathBuf, reaper: Arc<Reaper>) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        std::fs::create_dir_all(&console_dir)
            .with_context(|| format!("creating {}", console_dir.display()))?;
        let exe = std::env::current_exe().context("locating the agent binary")?;
        Ok(RuntimeHelper {
            exe,
            root,
            console_dir,
            reaper,
            seq: AtomicU64::new(0),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Runs the helper; returns the new process's pid and the agent's ends of its stdio.
    pub async fn launch(
        &self,
        id: &str,
        what: Launch<'_>,
        terminal: bool,
        scratch: &Path,
    ) -> Result<(i32, Stdio)> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let result_file = scratch.join(format!("helper-{n}.json"));
        let mut args: Vec<OsString> = vec!["runtime".into()];
        match what {
            Launch::Create { bundle } => {
                args.extend(["create".into(), "--bundle".into(), bundle.into()]);
            }
            Launch::Exec { process_json } => {
                args.extend(["exec".into(), "--process".into(), process_json.into()]);
            }
        }
        args.extend([
            "--root".into(),
            self.root.clone().into(),
            "--id".into(),
            id.into(),
        ]);
        args.extend(["--result".into(), result_file.clone().into()]);

        let mut cmd = Command::new(&self.exe);
        let (agent_side, pty) = if terminal {
            // Kept short: unix socket paths are limited to 108 bytes.
            let sock = self.console_dir.join(format!("{n}.sock"));
            let listener = stdio::console_listener(&sock).context("console socket")?;
            args.extend(["--console-socket".into(), sock.clone().into()]);
            cmd.stdin(StdStdio::null())
                .stdout(StdStdio::null())
                .stderr(StdStdio::null());
            let task = tokio::spawn(stdio::receive_pty_master(listener, PTY_TIMEOUT));
            (None, Some((task, sock)))
        } else {
            let (in_r, in_w) = stdio::pipe().context("stdin pipe")?;
            let (out_r, out_w) = stdio::pipe().context("stdout pipe")?;
            let (err_r, err_w) = stdio::pipe().context("stderr pipe")?;
            cmd.stdin(StdStdio::from(in_r))
                .stdout(StdStdio::from(out_w))
                .stderr(StdStdio::from(err_w));
            (Some((in_w, out_r, err_r)), None)
        };
        cmd.args(&args).env("HULL_HELPER", "1");

        let child = cmd.spawn().context("starting the runtime helper")?;
        let exit = self.reaper.watch(child.id() as i32);
        // The helper's copies of the pipe ends are gone with `cmd`; ours stay.
        drop(cmd);
        let status = exit.await.map_err(|_| anyhow::anyhow!("reaper stopped"))?;
        let outcome = read_result(&result_file);
        let _ = std::fs::remove_file(&result_file);

        let pid = match outcome {
            Some(HelperResult::Pid(pid)) if status.code == 0 => pid,
            Some(HelperResult::Error(msg)) => return Err(AgentError::FailedPrecondition(msg)),
            _ => {
                return Err(AgentError::Internal(anyhow::anyhow!(
                    "runtime helper exited with status {}",
                    status.code
                )));
            }
        };

        let stdio = match (agent_side, pty) {
            (Some((stdin, stdout, stderr)), _) => Stdio::Pipes {
                stdin: stream(stdin)?,
                stdout: stream(stdout)?,
                stderr: stream(stderr)?,
            },
            (None, Some((task, sock))) => {
                let master = task.await.map_err(|e| anyhow::anyhow!(e))?;
                let _ = std::fs::remove_file(sock);
                let master = master?;
                let input = master.try_clone().context("duplicating the pty master")?;
                Stdio::Tty {
                    master: stream(master)?,
                    input: stream(input)?,
                }
            }
            (None, None) => unreachable!("either pipes or a pty"),
        };
        Ok((pid, stdio))
    }
}

fn stream(fd: OwnedFd) -> Result<FdStream> {
    FdStream::new(fd)
        .map_err(|e| AgentError::Internal(anyhow::Error::new(e).context("registering stdio")))
}

fn read_result(path: &Path) -> Option<HelperResult> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}
