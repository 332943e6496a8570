//! `hull exec`: a process run in a running container, as `runc exec` runs one. Its
//! process spec is `--process FILE`, or the container's own `process` with the command
//! and the `--cwd`, `--env`, `--user` and `--tty` given. Each exec gets a **holder**: a
//! helper process (as the container has its supervisor) that carries the exec's stdio
//! (the caller's descriptors, or a pty sent to `--console-socket`), talks to the guest
//! agent over the VM's hybrid vsock socket, forwards SIGINT/SIGTERM/SIGHUP to the
//! process in the guest, and exits with its exit status. With `--detach` its pid goes to
//! `--pid-file` and `exec` returns, for a subreaper (conmon, containerd-shim-runc-v2) to
//! reap; without, `exec` waits for it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use hull_protocols::agent as pb;
use hull_shim::agent_client::AgentClient;
use hull_shim::config::HullConfig;
use hull_shim::task::io::Bridge;
use oci_spec::runtime::Process;

use super::control::Status;
use super::supervisor::{self, OCI_NAMESPACE};
use super::{Global, state};

/// `hull exec`'s options, as runc's.
#[derive(Args, Debug, Clone)]
pub struct ExecArgs {
    /// The process to run, as an OCI `process` JSON (the other options are then ignored).
    #[arg(short, long)]
    pub process: Option<PathBuf>,
    /// Give the process a terminal (needs --console-socket).
    #[arg(short, long)]
    pub tty: bool,
    /// Return once the process has started; its holder's pid goes to --pid-file.
    #[arg(short, long)]
    pub detach: bool,
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Where the master of the process's pty is sent.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// The working directory in the container.
    #[arg(long)]
    pub cwd: Option<String>,
    /// KEY=VALUE, added to (or replacing in) the container's environment.
    #[arg(short, long)]
    pub env: Vec<String>,
    /// UID[:GID] in the container.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Descriptors past stdio to hand to the process: none can cross into a VM.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    pub id: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// What `exec` hands its holder besides the process spec (which goes in a file).
pub struct HoldArgs {
    pub root: PathBuf,
    pub id: String,
    pub exec_id: String,
    pub ready_fd: i32,
    pub console_socket: Option<PathBuf>,
}

/// `hull exec`: checks, writes the process spec where only the holder reads it (the
/// container's 0700 state directory: an environment can hold secrets, a command line
/// is world-readable), starts the holder and, unless --detach, waits for it.
pub fn exec(g: &Global, a: &ExecArgs) -> anyhow::Result<ExitCode> {
    if a.preserve_fds > 0 {
        anyhow::bail!("--preserve-fds: descriptors cannot be handed into a container's VM");
    }
    let (entry, saved) = super::opened(g, &a.id)?;
    match super::status(&entry, Some(&saved)) {
        Status::Running => {}
        Status::Paused => anyhow::bail!("cannot exec in a paused container"),
        _ => anyhow::bail!("cannot exec in a stopped container"),
    }
    let process = process_spec(a, &saved.bundle)?;
    let terminal = process.terminal() == Some(true);
    let console_socket = super::tty::console_socket(a.console_socket.as_deref(), terminal)?;
    let exec_id = format!(
        "exec-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
    );
    let spec_file = spec_path(&entry.dir, &exec_id);
    state::write_atomic(&spec_file, &serde_json::to_vec(&process)?)?;
    let args = ["--exec-id".into(), exec_id.into()];
    // The container's lock is not held while the process runs: delete must not wait.
    drop(entry);
    let pid = super::spawn_helper(g, "exec-hold", &args, console_socket.as_deref(), &a.id);
    let _ = std::fs::remove_file(&spec_file);
    let pid = pid?;
    if let Some(p) = &a.pid_file {
        state::write_atomic(p, pid.to_string().as_bytes())
            .with_context(|| format!("writing the pid file {}", p.display()))?;
    }
    if a.detach {
        return Ok(ExitCode::SUCCESS);
    }
    let code = super::wait_forwarding(pid, move |signal| {
        if let Ok(sig) = nix::sys::signal::Signal::try_from(signal) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
        }
    })?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(255)))
}

fn spec_path(dir: &Path, exec_id: &str) -> PathBuf {
    dir.join(format!("{exec_id}.process.json"))
}

/// The process to exec: `--process FILE`, or the container's process with the command
/// line's changes.
fn process_spec(a: &ExecArgs, bundle: &Path) -> anyhow::Result<Process> {
    if let Some(path) = &a.process {
        let text = std::fs::read(path)
            .with_context(|| format!("reading the process spec {}", path.display()))?;
        let p: Process = serde_json::from_slice(&text)
            .with_context(|| format!("parsing the process spec {}", path.display()))?;
        if p.args().as_ref().is_none_or(|a| a.is_empty()) {
            anyhow::bail!("{}: args must not be empty", path.display());
        }
        return Ok(p);
    }
    if a.command.is_empty() {
        anyhow::bail!("exec: no command given (the arguments after the container id)");
    }
    let spec = super::load_spec(bundle)?;
    let mut p = spec.process().clone().unwrap_or_default();
    p.set_args(Some(a.command.clone()));
    p.set_terminal(Some(a.tty));
    if let Some(cwd) = &a.cwd {
        p.set_cwd(PathBuf::from(cwd));
    }
    if !a.env.is_empty() {
        let mut env = p.env().clone().unwrap_or_default();
        for kv in &a.env {
            let key = kv.split('=').next().unwrap_or_default();
            if key.is_empty() || !kv.contains('=') {
                anyhow::bail!("--env {kv:?}: not KEY=VALUE");
            }
            env.retain(|e| e.split('=').next() != Some(key));
            env.push(kv.clone());
        }
        p.set_env(Some(env));
    }
    if let Some(user) = &a.user {
        let (uid, gid) = parse_user(user)?;
        let mut u = p.user().clone();
        u.set_uid(uid);
        u.set_gid(gid);
        u.set_additional_gids(None);
        p.set_user(u);
    }
    Ok(p)
}

/// `UID[:GID]` (numbers: names would be looked up in the container's image, which is
/// in the guest).
fn parse_user(s: &str) -> anyhow::Result<(u32, u32)> {
    let bad = || anyhow::anyhow!("--user {s:?}: expected UID[:GID], numeric");
    let (u, g) = s.split_once(':').unwrap_or((s, "0"));
    Ok((u.parse().map_err(|_| bad())?, g.parse().map_err(|_| bad())?))
}

/// The holder: runs the exec and exits with its status; never returns.
pub fn hold(args: HoldArgs) -> ! {
    let ready = supervisor::detach_from_caller(args.ready_fd);
    supervisor::block_on_and_exit(run_held(args, ready))
}

/// The exec's process as the holder runs it.
struct Held {
    agent: AgentClient,
    cfg: HullConfig,
    id: String,
    exec_id: String,
    tty: Option<std::os::fd::OwnedFd>,
}

async fn run_held(args: HoldArgs, mut ready: std::fs::File) -> i32 {
    use std::io::Write;
    // Before "ok": a signal the caller sends as soon as it has the pid is not lost.
    let mut signals = supervisor::Signals::new();
    let (held, mut bridge) = match start(&args).await {
        Ok(h) => h,
        Err(e) => {
            let _ = writeln!(ready, "{}", format!("{e:#}").replace('\n', " "));
            return 1;
        }
    };
    let _ = writeln!(ready, "ok");
    drop(ready);

    let mut winch = super::tty::WindowChanges::new(held.tty.as_ref());
    let mut req = pb::WaitProcessRequest::new();
    req.container_id = held.id.clone();
    req.exec_id = held.exec_id.clone();
    let wait = held
        .agent
        .agent
        .wait_process(ttrpc::context::with_timeout(0), &req);
    tokio::pin!(wait);
    let status = loop {
        tokio::select! {
            // An error is a VM that died or a container that ended, taking the exec along.
            r = &mut wait => break r.map_or(255, |r| r.status),
            n = signals.next() => held.signal(n).await,
            () = winch.next() => held.resize().await,
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), bridge.drained())
        .await
        .is_err()
    {
        bridge.abort();
    }
    status.clamp(0, 255)
}

/// Connects to the container's agent and starts the process, its stdio bridged.
async fn start(args: &HoldArgs) -> anyhow::Result<(Held, Bridge)> {
    let spec_file = spec_path(&args.root.join(&args.id), &args.exec_id);
    let process =
        std::fs::read(&spec_file).with_context(|| format!("reading {}", spec_file.display()))?;
    let _ = std::fs::remove_file(&spec_file);
    let cfg = HullConfig::load()?;
    let pod_dir = hull_shim::pod_dir::pod_dir(&cfg, OCI_NAMESPACE, &args.id)?;
    let uds = pod_dir.join("vm").join(hull_shim::hypervisor::VSOCK_SOCKET);
    let agent = AgentClient::connect(&uds, Duration::from_secs(cfg.agent_timeout_s))
        .await
        .context("reaching the container's VM")?;
    let (ends, tty) = match &args.console_socket {
        Some(socket) => {
            let slave = super::tty::open(socket)?;
            (supervisor::pty_stdio(&slave)?, Some(slave))
        }
        None => (supervisor::caller_stdio()?, None),
    };
    let held = Held {
        agent,
        cfg,
        id: args.id.clone(),
        exec_id: args.exec_id.clone(),
        tty,
    };
    let mut req = pb::ExecProcessRequest::new();
    req.container_id = held.id.clone();
    req.exec_id = held.exec_id.clone();
    req.process = process;
    held.agent
        .agent
        .exec_process(supervisor::agent_ctx(&held.cfg), &req)
        .await
        .map_err(|e| anyhow::anyhow!("starting the process: {}", supervisor::rpc_text(&e)))?;
    held.resize().await;
    let bridge = Bridge::connect(&held.agent.agent, &held.id, &held.exec_id, ends);
    Ok((held, bridge))
}

impl Held {
    async fn signal(&self, signal: i32) {
        let mut req = pb::SignalProcessRequest::new();
        req.container_id = self.id.clone();
        req.exec_id = self.exec_id.clone();
        req.signal = signal.unsigned_abs();
        let _ = self
            .agent
            .agent
            .signal_process(supervisor::agent_ctx(&self.cfg), &req)
            .await;
    }

    async fn resize(&self) {
        if let Some(req) = self
            .tty
            .as_ref()
            .and_then(|t| super::tty::resize_request(t, &self.id, &self.exec_id))
        {
            let _ = self
                .agent
                .agent
                .tty_win_resize(supervisor::agent_ctx(&self.cfg), &req)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_numeric_uid_and_gid() {
        assert_eq!(parse_user("1000").unwrap(), (1000, 0));
        assert_eq!(parse_user("1000:100").unwrap(), (1000, 100));
        assert!(parse_user("nobody").is_err());
        assert!(parse_user("1:x").is_err());
    }
}
