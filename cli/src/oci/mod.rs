//! hull as an OCI runtime: runc's command line (create, start, run, exec, state, kill,
//! delete, list, pause, resume, ps, events, update, spec, features) for callers that
//! speak only that, such as Podman's conmon and containerd-shim-runc-v2 under Docker.
//! Each container gets a pod VM of its own, held by a supervisor process (`supervisor`)
//! whose pid the caller waits on; each exec a holder (`exec`). The other commands reach
//! the supervisor through its control socket (`control`) in the container's state
//! directory under `--root` (`state`). Host-side hooks are `hooks`, a terminal's host pty
//! `tty`. Errors go to stderr and, with `--log`, to that file in runc's text or JSON
//! form; the exit status is 1, as runc's.

pub mod control;
mod events;
mod exec;
mod features;
mod hooks;
pub mod state;
pub mod supervisor;
mod tty;
mod update;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use oci_spec::runtime::Spec;

use control::{Request, Status};
use state::Saved;

pub const DEFAULT_ROOT: &str = "/run/hull-oci";

/// runc's global options.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Where containers' state is kept.
    #[arg(long, global = true, default_value = DEFAULT_ROOT)]
    pub root: PathBuf,
    /// Where errors (and, with --debug, progress) are written, besides stderr.
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// More detail in the log.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Accepted for runc compatibility: the container's cgroups are the guest's.
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Options of `create` and `run` that say how the container is made.
#[derive(Args, Debug, Clone)]
pub struct CreateArgs {
    /// The bundle: config.json and, by default, the rootfs.
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// Where the supervisor's pid (the process to wait on) is written.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// A socket to receive the terminal's master from (terminal containers).
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Accepted: the rootfs is switched to inside the VM.
    #[arg(long)]
    pub no_pivot: bool,
    /// Accepted: keyrings are the guest kernel's.
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Descriptors past stdio to hand to the container: none can cross into a VM.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    pub id: String,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// OCI runtime: create a container (its VM booted, its process not yet started).
    Create(CreateArgs),
    /// OCI runtime: start a created container's process.
    Start { id: String },
    /// OCI runtime: create and start a container, and wait for it unless --detach.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        /// Return once it has started.
        #[arg(short, long)]
        detach: bool,
        /// Keep the container's state after it exits (no delete).
        #[arg(long)]
        keep: bool,
    },
    /// OCI runtime: run another process in a running container.
    Exec(exec::ExecArgs),
    /// OCI runtime: the container's cgroup figures (in its VM) as JSON lines.
    Events {
        /// One figure, then exit.
        #[arg(long)]
        stats: bool,
        /// Between figures.
        #[arg(long, default_value = "5s", value_parser = events::parse_interval)]
        interval: Duration,
        id: String,
    },
    /// OCI runtime: new cgroup limits for a running container.
    Update(update::UpdateArgs),
    /// OCI runtime: a container's state as JSON.
    State { id: String },
    /// OCI runtime: send a signal (default SIGTERM) to a container's process.
    Kill {
        /// Every process of the container, not only its init.
        #[arg(short, long)]
        all: bool,
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// OCI runtime: remove a container (and its VM); a running one only with --force.
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// OCI runtime: the containers under --root.
    List {
        #[arg(short, long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
        /// Only the ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// OCI runtime: freeze a container's processes.
    Pause { id: String },
    /// OCI runtime: thaw a paused container.
    Resume { id: String },
    /// OCI runtime: the container's processes (pids inside its VM).
    Ps {
        #[arg(short, long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
        id: String,
    },
    /// OCI runtime: write a default config.json into the bundle.
    Spec {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        /// Accepted; the spec is the same.
        #[arg(long)]
        rootless: bool,
    },
    /// OCI runtime: what this runtime supports, as JSON.
    Features,
    /// The supervisor of one container (started by `create`; not for people).
    #[command(hide = true)]
    Supervise {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long)]
        ready_fd: i32,
        #[arg(long)]
        console_socket: Option<PathBuf>,
        id: String,
    },
    /// The holder of one exec (started by `exec`; not for people).
    #[command(hide = true)]
    ExecHold {
        #[arg(long)]
        ready_fd: i32,
        #[arg(long)]
        exec_id: String,
        #[arg(long)]
        console_socket: Option<PathBuf>,
        id: String,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListFormat {
    Table,
    Json,
}

/// Runs one OCI command; an error is reported as runc reports it (stderr, `--log`).
pub fn run(g: &Global, cmd: Command) -> ExitCode {
    let r = match cmd {
        Command::Create(a) => create(g, &a).map(|_| ExitCode::SUCCESS),
        Command::Start { id } => start(g, &id).map(|()| ExitCode::SUCCESS),
        Command::Run {
            create: a,
            detach,
            keep,
        } => run_container(g, &a, detach, keep),
        Command::Exec(a) => exec::exec(g, &a),
        Command::Events {
            stats,
            interval,
            id,
        } => events::run(g, &id, stats, interval).map(|()| ExitCode::SUCCESS),
        Command::Update(a) => update::run(g, &a).map(|()| ExitCode::SUCCESS),
        Command::ExecHold {
            ready_fd,
            exec_id,
            console_socket,
            id,
        } => exec::hold(exec::HoldArgs {
            root: g.root.clone(),
            id,
            exec_id,
            ready_fd,
            console_socket,
        }),
        Command::State { id } => print_state(g, &id).map(|()| ExitCode::SUCCESS),
        Command::Kill { all, id, signal } => kill(g, &id, &signal, all).map(|()| ExitCode::SUCCESS),
        Command::Delete { force, id } => delete(g, &id, force).map(|()| ExitCode::SUCCESS),
        Command::List { format, quiet } => list(g, format, quiet).map(|()| ExitCode::SUCCESS),
        Command::Pause { id } => simple(g, &id, Request::Pause).map(|()| ExitCode::SUCCESS),
        Command::Resume { id } => simple(g, &id, Request::Resume).map(|()| ExitCode::SUCCESS),
        Command::Ps { format, id } => ps(g, &id, format).map(|()| ExitCode::SUCCESS),
        Command::Spec { bundle, .. } => features::write_spec(&bundle).map(|()| ExitCode::SUCCESS),
        Command::Features => features::print().map(|()| ExitCode::SUCCESS),
        Command::Supervise {
            bundle,
            ready_fd,
            console_socket,
            id,
        } => supervisor::run(supervisor::Args {
            root: g.root.clone(),
            id,
            bundle,
            ready_fd,
            console_socket,
            host_netns: None,
        }),
    };
    r.unwrap_or_else(|e| {
        report(g, &format!("{e:#}"));
        ExitCode::FAILURE
    })
}

/// An error on stderr, and in `--log` as runc writes it (go-runc reads the last line).
fn report(g: &Global, msg: &str) {
    eprintln!("hull: {msg}");
    let Some(path) = &g.log else { return };
    let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let line = match g.log_format {
        LogFormat::Json => {
            serde_json::json!({"level": "error", "msg": msg, "time": time}).to_string()
        }
        LogFormat::Text => format!("time={time:?} level=error msg={msg:?}"),
    };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// The bundle's config.json, checked as far as hull can before a VM boots.
pub fn load_spec(bundle: &Path) -> anyhow::Result<Spec> {
    let path = bundle.join("config.json");
    let spec =
        Spec::load(&path).with_context(|| format!("reading the OCI spec {}", path.display()))?;
    if spec.process().is_none() {
        anyhow::bail!("{}: no process to run", path.display());
    }
    Ok(spec)
}

/// `create`: the state directory, then the supervisor (which boots the VM and creates
/// the container); the pid file once the container exists. Anything half made is removed.
fn create(g: &Global, a: &CreateArgs) -> anyhow::Result<i32> {
    let bundle = std::fs::canonicalize(&a.bundle)
        .with_context(|| format!("the bundle {}", a.bundle.display()))?;
    let spec = load_spec(&bundle)?;
    hooks::check(&spec)?;
    if a.preserve_fds > 0 {
        anyhow::bail!("--preserve-fds: descriptors cannot be handed into a container's VM");
    }
    let terminal = spec
        .process()
        .as_ref()
        .is_some_and(|p| p.terminal() == Some(true));
    let console_socket = tty::console_socket(a.console_socket.as_deref(), terminal)?;
    let entry = state::create(&g.root, &a.id)?;
    let undo = |entry: state::Locked, e: anyhow::Error| {
        remove_leftovers(&a.id);
        let _ = entry.remove();
        Err(e)
    };
    let pid = match spawn_supervisor(g, &entry, &bundle, console_socket.as_deref()) {
        Ok(pid) => pid,
        Err(e) => return undo(entry, e),
    };
    let saved = record(&a.id, &bundle, &spec, pid);
    let recorded = entry.save(&saved).and_then(|()| match &a.pid_file {
        Some(p) => state::write_atomic(p, pid.to_string().as_bytes())
            .with_context(|| format!("writing the pid file {}", p.display())),
        None => Ok(()),
    });
    if let Err(e) = recorded {
        // The supervisor ends its VM on SIGTERM; it is this process's child to reap.
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = nix::sys::wait::waitpid(pid, None);
        return undo(entry, e);
    }
    Ok(pid)
}

/// What is recorded of a container whose supervisor is `pid`.
fn record(id: &str, bundle: &Path, spec: &Spec, pid: i32) -> Saved {
    Saved {
        id: id.to_string(),
        bundle: bundle.to_path_buf(),
        pid,
        pid_start: hull_shim::daemon::start_time(pid).unwrap_or(0),
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        rootfs: spec
            .root()
            .as_ref()
            .map_or_else(|| bundle.join("rootfs"), |r| bundle.join(r.path())),
        annotations: spec
            .annotations()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
    }
}

/// Starts the supervisor with the caller's stdio and waits for its word: the container
/// is created, or why not (then it has exited and cleaned up after itself).
fn spawn_supervisor(
    g: &Global,
    entry: &state::Locked,
    bundle: &Path,
    console_socket: Option<&Path>,
) -> anyhow::Result<i32> {
    let args = ["--bundle".into(), bundle.into()];
    spawn_helper(g, "supervise", &args, console_socket, &entry.id)
}

/// Starts `hull <sub> --ready-fd N <args> [--console-socket S] -- <id>` (a supervisor,
/// or an exec's holder) with this process's stdio, and waits for its first line: "ok"
/// (its pid is returned) or why it failed (it has then exited, and is reaped here).
fn spawn_helper(
    g: &Global,
    sub: &str,
    args: &[std::ffi::OsString],
    console_socket: Option<&Path>,
    id: &str,
) -> anyhow::Result<i32> {
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
    let mut cmd = std::process::Command::new(std::env::current_exe().context("hull's own path")?);
    cmd.arg("--root")
        .arg(&g.root)
        .arg(sub)
        .arg("--ready-fd")
        .arg(hull_shim::daemon::PASSED_FD_BASE.to_string())
        .args(args);
    if let Some(p) = console_socket {
        cmd.arg("--console-socket").arg(p);
    }
    cmd.arg("--").arg(id);
    use std::os::fd::AsRawFd;
    hull_shim::daemon::pass_fds(&mut cmd, &[wr.as_raw_fd()])?;
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting hull {sub}"))?;
    drop(wr);
    let word = control::read_line(std::fs::File::from(rd)).unwrap_or_default();
    match word.as_deref().map(str::trim_end) {
        Some("ok") => Ok(child.id() as i32),
        other => {
            let _ = child.wait();
            match other {
                Some(why) if !why.is_empty() => Err(anyhow::anyhow!("{why}")),
                _ => Err(anyhow::anyhow!("hull {sub} exited without a word")),
            }
        }
    }
}

/// What a supervisor that died (or a create that crashed) can leave: the pod directory
/// with its VM processes.
fn remove_leftovers(id: &str) {
    let Ok(cfg) = hull_shim::config::HullConfig::load() else {
        return;
    };
    if let Ok(dir) = hull_shim::pod_dir::pod_dir(&cfg, supervisor::OCI_NAMESPACE, id)
        && dir.exists()
    {
        hull_shim::pod_dir::cleanup_dir(&dir);
    }
}

/// Whether the supervisor recorded in `saved` still runs (not another process that got
/// its pid, not a zombie waiting for its parent).
fn supervisor_alive(saved: &Saved) -> bool {
    if saved.pid <= 0 || hull_shim::daemon::start_time(saved.pid) != Some(saved.pid_start) {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", saved.pid)).unwrap_or_default();
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    !matches!(state, None | Some('Z') | Some('X'))
}

/// The container's status, asked of its supervisor.
fn status(entry: &state::Locked, saved: Option<&Saved>) -> Status {
    let Some(saved) = saved else {
        return Status::Creating;
    };
    if !supervisor_alive(saved) {
        return Status::Stopped;
    }
    match control::call(
        &entry.control_socket(),
        &Request::State,
        Duration::from_secs(10),
    ) {
        Ok(r) => r.status.unwrap_or(Status::Stopped),
        // Alive but not answering: it is ending the container.
        Err(_) => Status::Stopped,
    }
}

/// A created container and its record, or runc's "does not exist".
fn opened(g: &Global, id: &str) -> anyhow::Result<(state::Locked, Saved)> {
    let entry = state::open(&g.root, id)?;
    let saved = entry
        .load()?
        .ok_or_else(|| anyhow::anyhow!("container {id} is still being created"))?;
    Ok((entry, saved))
}

fn start(g: &Global, id: &str) -> anyhow::Result<()> {
    let (entry, saved) = opened(g, id)?;
    match status(&entry, Some(&saved)) {
        Status::Created => {}
        Status::Stopped => anyhow::bail!("cannot start a container that has stopped"),
        _ => anyhow::bail!("cannot start an already running container"),
    }
    control::call(&entry.control_socket(), &Request::Start, agent_timeout())?;
    if let Ok(spec) = load_spec(&saved.bundle) {
        hooks::run_warning(
            &hooks::of(&spec, oci_spec::runtime::Hooks::poststart),
            &state_json(&saved, Status::Running),
        );
    }
    Ok(())
}

fn agent_timeout() -> Duration {
    let s = hull_shim::config::HullConfig::load().map_or(30, |c| c.agent_timeout_s);
    Duration::from_secs(s + 5)
}

fn simple(g: &Global, id: &str, req: Request) -> anyhow::Result<()> {
    let (entry, saved) = opened(g, id)?;
    if status(&entry, Some(&saved)) == Status::Stopped {
        anyhow::bail!("container not running");
    }
    control::call(&entry.control_socket(), &req, agent_timeout())?;
    Ok(())
}

/// A signal as runc takes it: `9`, `KILL` or `SIGKILL`.
pub fn parse_signal(s: &str) -> anyhow::Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        anyhow::bail!("invalid signal {s}");
    }
    let name = s.to_ascii_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|sig| sig as i32)
        .map_err(|_| anyhow::anyhow!("invalid signal {s}"))
}

fn kill(g: &Global, id: &str, signal: &str, all: bool) -> anyhow::Result<()> {
    let signal = parse_signal(signal)?;
    simple(g, id, Request::Kill { signal, all })
}

/// `delete`: a running (or paused) container only with --force; the supervisor ends the
/// container and its VM and exits; whatever a dead supervisor left is removed.
fn delete(g: &Global, id: &str, force: bool) -> anyhow::Result<()> {
    let entry = state::open(&g.root, id)?;
    let saved = entry.load()?;
    let st = status(&entry, saved.as_ref());
    if matches!(st, Status::Running | Status::Paused) && !force {
        anyhow::bail!(
            "cannot delete container {id} that is not stopped: {}",
            st.as_str()
        );
    }
    if let Some(saved) = &saved
        && supervisor_alive(saved)
    {
        let shutdown = hull_shim::config::HullConfig::load().map_or(10, |c| c.shutdown_timeout_s);
        // An error here is a supervisor already ending the container: waited for below.
        let _ = control::call(&entry.control_socket(), &Request::Delete, agent_timeout());
        let deadline = std::time::Instant::now() + Duration::from_secs(shutdown + 10);
        while supervisor_alive(saved) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if supervisor_alive(saved) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(saved.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    remove_leftovers(id);
    if let Some(saved) = &saved
        && let Ok(spec) = load_spec(&saved.bundle)
    {
        hooks::run_warning(
            &hooks::of(&spec, oci_spec::runtime::Hooks::poststop),
            &state_json(saved, Status::Stopped),
        );
    }
    entry.remove()
}

/// runc's state JSON.
fn state_json(saved: &Saved, st: Status) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": features::OCI_VERSION,
        "id": saved.id,
        "pid": if st == Status::Stopped { 0 } else { saved.pid },
        "status": st.as_str(),
        "bundle": saved.bundle,
        "rootfs": saved.rootfs,
        "created": saved.created,
        "owner": "",
        "annotations": saved.annotations,
    })
}

fn print_state(g: &Global, id: &str) -> anyhow::Result<()> {
    // No lock: state is read while other commands run, as runc's is.
    let entry = state::peek(&g.root, id)?;
    let saved = entry.load()?;
    let st = status(&entry, saved.as_ref());
    let saved = saved.unwrap_or_else(|| Saved {
        id: id.to_string(),
        bundle: PathBuf::new(),
        pid: 0,
        pid_start: 0,
        created: String::new(),
        rootfs: PathBuf::new(),
        annotations: Default::default(),
    });
    println!("{}", serde_json::to_string_pretty(&state_json(&saved, st))?);
    Ok(())
}

fn list(g: &Global, format: ListFormat, quiet: bool) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for id in state::list(&g.root) {
        let Ok(entry) = state::peek(&g.root, &id) else {
            continue;
        };
        let Ok(Some(saved)) = entry.load() else {
            continue;
        };
        let st = status(&entry, Some(&saved));
        rows.push(state_json(&saved, st));
    }
    if quiet {
        for r in &rows {
            println!("{}", r["id"].as_str().unwrap_or_default());
        }
        return Ok(());
    }
    match format {
        ListFormat::Json => println!("{}", serde_json::to_string(&rows)?),
        ListFormat::Table => {
            println!(
                "{:<24}{:<10}{:<10}{:<40}{:<32}OWNER",
                "ID", "PID", "STATUS", "BUNDLE", "CREATED"
            );
            for r in &rows {
                println!(
                    "{:<24}{:<10}{:<10}{:<40}{:<32}root",
                    r["id"].as_str().unwrap_or_default(),
                    r["pid"].to_string(),
                    r["status"].as_str().unwrap_or_default(),
                    r["bundle"].as_str().unwrap_or_default(),
                    r["created"].as_str().unwrap_or_default(),
                );
            }
        }
    }
    Ok(())
}

/// `ps`: the table lists the container's processes inside its VM. The JSON form is what
/// callers (`docker top`, `podman top`) read as *host* pids and look up in the host's
/// process table: it names the one host process that stands for the container, its
/// supervisor, never a guest pid that would name an unrelated host process.
fn ps(g: &Global, id: &str, format: ListFormat) -> anyhow::Result<()> {
    let (entry, saved) = opened(g, id)?;
    if status(&entry, Some(&saved)) == Status::Stopped {
        anyhow::bail!("container not running");
    }
    match format {
        ListFormat::Json => println!("{}", serde_json::to_string(&[saved.pid])?),
        ListFormat::Table => {
            let r = control::call(&entry.control_socket(), &Request::Ps, agent_timeout())?;
            println!("PID (in the container's VM)");
            for p in r.pids.unwrap_or_default() {
                println!("{p}");
            }
        }
    }
    Ok(())
}

/// `run`: create and start; then wait for the container (forwarding SIGINT, SIGTERM and
/// SIGHUP to it), exit with its status and delete it, unless --detach.
fn run_container(g: &Global, a: &CreateArgs, detach: bool, keep: bool) -> anyhow::Result<ExitCode> {
    let pid = create(g, a)?;
    if let Err(e) = start(g, &a.id) {
        let _ = delete(g, &a.id, true);
        return Err(e);
    }
    if detach {
        return Ok(ExitCode::SUCCESS);
    }
    let socket = g.root.join(&a.id).join(state::CONTROL_SOCKET);
    let code = wait_forwarding(pid, move |signal| {
        let _ = control::call(
            &socket,
            &Request::Kill { signal, all: false },
            Duration::from_secs(35),
        );
    })?;
    if !keep {
        delete(g, &a.id, true)?;
    }
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(255)))
}

/// Waits for the child `pid` (a supervisor or an exec's holder), passing each SIGINT,
/// SIGTERM and SIGHUP this process gets to `forward`; its exit status, as a shell gives it.
fn wait_forwarding(
    pid: i32,
    forward: impl Fn(i32) + Clone + Send + 'static,
) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(async {
        let mut signals = supervisor::Signals::new();
        let mut waited = tokio::task::spawn_blocking(move || {
            nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None)
        });
        loop {
            tokio::select! {
                r = &mut waited => {
                    return match r {
                        Ok(Ok(nix::sys::wait::WaitStatus::Exited(_, c))) => c,
                        Ok(Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _))) => 128 + s as i32,
                        _ => 255,
                    };
                }
                n = signals.next() => {
                    let forward = forward.clone();
                    let _ = tokio::task::spawn_blocking(move || forward(n)).await;
                }
            }
        }
    }))
}
