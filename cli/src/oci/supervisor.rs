//! The supervisor: the host process that stands for one OCI container. `hull create`
//! starts it and hands its pid to the caller (`--pid-file`), as runc hands over the
//! container's init: it holds the container's stdio (the descriptors the caller gave
//! `create`), boots the container's own pod VM through the shim's code, creates the
//! container there, answers the CLI on its control socket, and exits with the
//! container's exit status once the container has ended and its VM is gone. For a spec
//! that asks for a new network namespace it makes one and sits in it, and runs the
//! createRuntime hooks there before the VM boots (see `own_netns`).
//!
//! It runs in a session of its own (a terminal's Ctrl-C reaches the CLI, which forwards
//! it), logs only into its pod directory (its stderr is the container's), and a SIGTERM,
//! SIGINT or SIGHUP sent to it ends the VM before it exits, so nothing is left behind.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use hull_protocols::agent as pb;
use hull_shim::config::HullConfig;
use hull_shim::pod::{Pod, PodOptions};
use hull_shim::task::io::{Bridge, Endpoints};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use super::control::{self, Request, Response, Status};
use super::state;

/// The containerd-style namespace the CLI's pod directories live in
/// (`<run_dir>/hull-oci/<id>`), apart from every containerd namespace's pods.
pub const OCI_NAMESPACE: &str = "hull-oci";

/// What `create` passes to the supervisor it starts.
pub struct Args {
    pub root: PathBuf,
    pub id: String,
    pub bundle: PathBuf,
    /// The write end of the pipe `create` waits on: "ok", or the error, then EOF.
    pub ready_fd: i32,
    /// Where the master of a terminal container's pty goes.
    pub console_socket: Option<PathBuf>,
    /// Set when the supervisor made the container's network namespace (`own_netns`):
    /// the host's, which it left.
    pub host_netns: Option<PathBuf>,
}

/// Runs the supervisor to its end; never returns.
pub fn run(mut args: Args) -> ! {
    let mut ready = detach_from_caller(args.ready_fd);
    // Read once; a bad spec is reported by `setup`, with the rest of its checks.
    let spec = super::load_spec(&args.bundle);
    // Still one thread: the namespace then holds every thread and child to come.
    if let Ok(spec) = &spec
        && let Err(e) = own_netns(&mut args, spec)
    {
        let _ = writeln!(ready, "{e:#}");
        std::process::exit(1);
    }
    block_on_and_exit(supervise(args, spec, ready))
}

/// A spec asking for a new network namespace without naming one (Docker's, runc's
/// default) gets one here, held by the supervisor: its pid is the container's pid, so
/// the caller's hooks configure `/proc/<pid>/ns/net` (Docker's libnetwork moves the
/// container's veth in), and the VM's network is then taken from it as from a CNI
/// namespace. A spec that names its namespace (Podman's) is left to that one.
fn own_netns(args: &mut Args, spec: &oci_spec::runtime::Spec) -> anyhow::Result<()> {
    if hull_shim::network::mode(spec) != hull_shim::network::Mode::Loopback {
        return Ok(());
    }
    // Kept open for the supervisor's life: the namespace the VM must not take over.
    let host =
        std::fs::File::open("/proc/self/ns/net").context("opening the host's network namespace")?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .context("making the container's network namespace")?;
    use std::os::fd::IntoRawFd;
    args.host_netns = Some(PathBuf::from(format!(
        "/proc/self/fd/{}",
        host.into_raw_fd()
    )));
    Ok(())
}

/// What every helper process (a supervisor, an exec's holder) does first: drops the
/// descriptors it inherited but its stdio and the ready pipe (reopened by path, so no
/// raw descriptor number is adopted), leaves the caller's session (a terminal's signals
/// are the caller's to forward), and survives a reader closing its output. Exits when
/// the ready pipe is not there: nobody would hear why.
pub(super) fn detach_from_caller(ready_fd: i32) -> std::fs::File {
    close_inherited(ready_fd);
    let _ = nix::unistd::setsid();
    // A reader that closes the container's stdout must cost an EPIPE on that stream,
    // not the helper's life (and with it the teardown of the VM).
    {
        use nix::sys::signal::{SigHandler, Signal, signal};
        // SAFETY: SIG_IGN installs no handler code, and no thread has started yet.
        let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) };
    }
    let ready = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/self/fd/{ready_fd}"));
    let _ = nix::unistd::close(ready_fd);
    ready.unwrap_or_else(|_| std::process::exit(1))
}

/// Runs a helper's work on a small runtime and exits with the status it returns.
pub(super) fn block_on_and_exit(work: impl std::future::Future<Output = i32>) -> ! {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    match rt {
        // Exit without dropping the runtime: a drop waits for blocking reads (the
        // container's stdin, a pty nobody writes to) that may never end.
        Ok(rt) => std::process::exit(rt.block_on(work)),
        Err(_) => std::process::exit(1),
    }
}

/// Closes every descriptor the caller left open past stdio (but `keep`): a pipe held
/// here for the container's whole life would keep its reader from seeing EOF.
fn close_inherited(keep: i32) {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2 && fd != keep)
        .collect();
    for fd in fds {
        // The directory's own descriptor is among them, already closed: EBADF is fine.
        let _ = nix::unistd::close(fd);
    }
}

/// The container as the supervisor holds it.
struct Held {
    id: String,
    cfg: HullConfig,
    pod: Arc<Pod>,
    share: hull_shim::share::ContainerShare,
    status: Mutex<Status>,
    /// The container's exit status, once it has exited.
    exit: watch::Sender<Option<i32>>,
    bridge: tokio::sync::Mutex<Bridge>,
    /// A terminal container's host pty (its slave side).
    tty: Option<std::os::fd::OwnedFd>,
}

async fn supervise(
    args: Args,
    spec: anyhow::Result<oci_spec::runtime::Spec>,
    mut ready: std::fs::File,
) -> i32 {
    // Before anything else: a signal that comes while the VM boots, or just after the
    // caller heard "ok" (create undoing itself), is then kept until the loop below.
    let mut signals = Signals::new();
    let held = match setup(&args, spec).await {
        Ok(h) => Arc::new(h),
        Err(e) => {
            let _ = writeln!(ready, "{}", format!("{e:#}").replace('\n', " "));
            return 1;
        }
    };
    let dir = args.root.join(&args.id);
    let listener = match listen(&dir.join(state::CONTROL_SOCKET)) {
        Ok(l) => l,
        Err(e) => {
            let _ = writeln!(ready, "{e:#}");
            held.end().await;
            return 1;
        }
    };
    let _ = writeln!(ready, "ok");
    drop(ready);
    tracing::info!(container = %held.id, "container created");

    tokio::spawn(held.clone().wait_exit());
    let mut exited = held.exit.subscribe();
    let mut winch = super::tty::WindowChanges::new(held.tty.as_ref());
    loop {
        tokio::select! {
            () = winch.next() => held.resize().await,
            conn = listener.accept() => {
                if let Ok((conn, _)) = conn {
                    tokio::spawn(held.clone().serve(conn));
                }
            }
            r = exited.wait_for(|e| e.is_some()) => {
                let status = r.map(|s| s.unwrap_or(255)).unwrap_or(255);
                held.end().await;
                return status.clamp(0, 255);
            }
            sig = signals.next() => {
                tracing::warn!(container = %held.id, signal = sig, "supervisor signalled; ending the container and its VM");
                held.end().await;
                return 128 + sig;
            }
        }
    }
}

/// Boots the pod VM and creates the container in it; the stdio bridge starts at once
/// (output written before `start` is kept).
async fn setup(args: &Args, spec: anyhow::Result<oci_spec::runtime::Spec>) -> anyhow::Result<Held> {
    let cfg = HullConfig::load()?;
    let mut spec = spec?;
    let pod_dir = hull_shim::pod_dir::pod_dir(&cfg, OCI_NAMESPACE, &args.id)?;
    hull_shim::logging::init_pod_only(
        &cfg.log_level,
        OCI_NAMESPACE,
        &args.id,
        hull_shim::logging::PodLog {
            dir: pod_dir,
            max_bytes: cfg.log_max_kib.saturating_mul(1024),
        },
    );
    // The runtime's environment exists (the supervisor, its namespace): the hooks that
    // prepare it run now, before the VM takes its network from it.
    let pid = i32::try_from(std::process::id()).context("pid")?;
    let state = super::state_json(
        &super::record(&args.id, &args.bundle, &spec, pid),
        Status::Creating,
    );
    super::hooks::run(&super::hooks::create_runtime(&spec), &state)?;
    let network = match &args.host_netns {
        Some(host) => {
            let netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
            // The container is in that namespace now, which the VM stands for: named,
            // so the agent puts it in the VM's network instead of a new, empty one.
            name_network_namespace(&mut spec, &netns);
            hull_shim::network::Mode::Made {
                netns,
                host: host.clone(),
            }
        }
        None => hull_shim::network::mode(&spec),
    };
    // `create` gave a console socket exactly when the process has a terminal.
    let (ends, tty) = match &args.console_socket {
        Some(socket) => {
            let slave = super::tty::open(socket)?;
            (pty_stdio(&slave)?, Some(slave))
        }
        None => (caller_stdio()?, None),
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let opts = PodOptions {
        hostname: spec.hostname().clone().unwrap_or_default(),
        size: hull_shim::sizing::container_size(
            &cfg,
            spec.linux().as_ref().and_then(|l| l.resources().as_ref()),
            cpus,
        ),
        network,
        dns: hull_shim::network::dns_lines(&spec)?,
    };
    let pod = Pod::boot(&cfg, OCI_NAMESPACE, &args.id, opts).await?;
    let ctx = agent_ctx(&cfg);
    let share = match pod
        .create_container(&args.id, &args.bundle, &[], spec, ctx)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            pod.shutdown(Duration::from_secs(cfg.shutdown_timeout_s))
                .await;
            return Err(anyhow::anyhow!("creating the container: {}", rpc_text(&e)));
        }
    };
    let bridge = Bridge::connect(&pod.agent.agent, &args.id, "", ends);
    Ok(Held {
        id: args.id.clone(),
        cfg,
        pod,
        share,
        status: Mutex::new(Status::Created),
        exit: watch::channel(None).0,
        bridge: tokio::sync::Mutex::new(bridge),
        tty,
    })
}

fn name_network_namespace(spec: &mut oci_spec::runtime::Spec, path: &Path) {
    use oci_spec::runtime::LinuxNamespaceType;
    let Some(mut linux) = spec.linux().clone() else {
        return;
    };
    if let Some(mut nss) = linux.namespaces().clone() {
        for ns in nss.iter_mut() {
            if ns.typ() == LinuxNamespaceType::Network {
                ns.set_path(Some(path.to_path_buf()));
            }
        }
        linux.set_namespaces(Some(nss));
    }
    spec.set_linux(Some(linux));
}

/// The descriptors the caller gave `create` become the container's stdio; the
/// supervisor's own 0, 1 and 2 then point at /dev/null, so that nothing of its own can
/// reach the container's streams.
pub(super) fn caller_stdio() -> anyhow::Result<Endpoints> {
    let dup = |fd: std::os::fd::BorrowedFd<'_>| -> anyhow::Result<tokio::fs::File> {
        let owned = fd
            .try_clone_to_owned()
            .context("duplicating the caller's stdio")?;
        Ok(tokio::fs::File::from_std(std::fs::File::from(owned)))
    };
    let stdin = dup(std::io::stdin().as_fd())?;
    let stdout = dup(std::io::stdout().as_fd())?;
    let stderr = dup(std::io::stderr().as_fd())?;
    null_stdio()?;
    Ok(Endpoints {
        stdin: Some(Box::new(stdin)),
        stdout: Some(Box::new(stdout)),
        stderr: Some(Box::new(stderr)),
        terminal: false,
    })
}

/// A terminal container's stdio: the host pty's slave, both ways; the caller's own
/// descriptors are not used (they are conmon's, not the container's).
pub(super) fn pty_stdio(slave: &std::os::fd::OwnedFd) -> anyhow::Result<Endpoints> {
    let dup = || -> anyhow::Result<tokio::fs::File> {
        let fd = slave.try_clone().context("duplicating the pty")?;
        Ok(tokio::fs::File::from_std(std::fs::File::from(fd)))
    };
    let ends = Endpoints {
        stdin: Some(Box::new(dup()?)),
        stdout: Some(Box::new(dup()?)),
        stderr: None,
        terminal: true,
    };
    null_stdio()?;
    Ok(ends)
}

fn null_stdio() -> anyhow::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for fd in 0..=2 {
        nix::unistd::dup2(null.as_raw_fd(), fd)
            .context("pointing the supervisor's stdio at /dev/null")?;
    }
    Ok(())
}

fn listen(path: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let (_dir, address) = control::short_address(path)?;
    let l = UnixListener::bind(&address)
        .with_context(|| format!("binding the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

pub(super) fn agent_ctx(cfg: &HullConfig) -> ttrpc::context::Context {
    hull_shim::agent_client::deadline(Duration::from_secs(cfg.agent_timeout_s))
}

/// An agent error as a person reads it: the status message, not the debug dump.
pub(super) fn rpc_text(e: &ttrpc::Error) -> String {
    match e {
        ttrpc::Error::RpcStatus(s) => s.message().to_string(),
        other => other.to_string(),
    }
}

impl Held {
    fn status(&self) -> Status {
        *self.status.lock().expect("status lock")
    }

    fn set_status(&self, s: Status) {
        let mut cur = self.status.lock().expect("status lock");
        if *cur != Status::Stopped {
            *cur = s;
        }
    }

    /// Waits for the container's init to exit (or the VM to die), lets its output drain,
    /// and publishes the status.
    async fn wait_exit(self: Arc<Self>) {
        let mut req = pb::WaitProcessRequest::new();
        req.container_id = self.id.clone();
        let status = tokio::select! {
            r = self.pod.agent.agent.wait_process(ttrpc::context::with_timeout(0), &req) => {
                r.map_or(255, |r| r.status)
            }
            _ = self.pod.died() => 255,
        };
        let mut bridge = self.bridge.lock().await;
        if tokio::time::timeout(Duration::from_secs(5), bridge.drained())
            .await
            .is_err()
        {
            tracing::warn!(container = %self.id, "output still open 5 s after exit; closing it");
            bridge.abort();
        }
        *self.status.lock().expect("status lock") = Status::Stopped;
        tracing::info!(container = %self.id, status, "container exited");
        self.exit.send_replace(Some(status));
    }

    /// Removes the container's share and shuts the pod VM down (killing it past the
    /// configured timeout).
    async fn end(&self) {
        self.bridge.lock().await.abort();
        self.share.remove();
        self.pod
            .shutdown(Duration::from_secs(self.cfg.shutdown_timeout_s))
            .await;
    }

    async fn serve(self: Arc<Self>, mut conn: UnixStream) {
        use tokio::io::AsyncWriteExt;
        let (rd, mut wr) = conn.split();
        let line = {
            use tokio::io::{AsyncBufReadExt, AsyncReadExt};
            let mut line = String::new();
            let mut r = tokio::io::BufReader::new(rd.take(control::MAX_LINE));
            match tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut line)).await {
                Ok(Ok(n)) if n > 0 && line.ends_with('\n') => line,
                _ => return,
            }
        };
        let answer = match serde_json::from_str::<Request>(&line) {
            Ok(req) => self.handle(req).await,
            Err(e) => Response::error(format!("bad control request: {e}")),
        };
        let mut out = serde_json::to_vec(&answer).unwrap_or_default();
        out.push(b'\n');
        let _ = wr.write_all(&out).await;
    }

    async fn handle(&self, req: Request) -> Response {
        let r = match req {
            Request::State => Ok(Response::default()),
            Request::Start => self.start().await,
            Request::Kill { signal, all } => self.kill(signal, all).await,
            Request::Pause => self.pause(true).await,
            Request::Resume => self.pause(false).await,
            Request::Ps => self.ps().await,
            Request::Update { resources } => self.update(resources).await,
            Request::Stats => self.stats().await,
            Request::Delete => self.delete().await,
        };
        let mut r = r.unwrap_or_else(|e| Response::error(format!("{e:#}")));
        r.status = Some(self.status());
        r
    }

    /// An agent call, counted in the pod's metrics; its error as a person reads it,
    /// after `what`.
    async fn rpc<T>(
        &self,
        method: &'static str,
        what: &str,
        call: impl std::future::Future<Output = ttrpc::Result<T>>,
    ) -> anyhow::Result<T> {
        self.pod
            .metrics
            .rpc(method, call)
            .await
            .map_err(|e| anyhow::anyhow!("{what}{}", rpc_text(&e)))
    }

    fn agent(&self) -> &hull_protocols::agent_ttrpc::AgentServiceClient {
        &self.pod.agent.agent
    }

    async fn start(&self) -> anyhow::Result<Response> {
        match self.status() {
            Status::Created => {}
            Status::Stopped => anyhow::bail!("cannot start a container that has stopped"),
            _ => anyhow::bail!("cannot start an already running container"),
        }
        // The caller may have sized the terminal before start: no SIGWINCH reports that.
        self.resize().await;
        let mut req = pb::StartContainerRequest::new();
        req.container_id = self.id.clone();
        let call = self.agent().start_container(agent_ctx(&self.cfg), &req);
        self.rpc("StartContainer", "starting the container: ", call)
            .await?;
        self.set_status(Status::Running);
        Ok(Response::default())
    }

    /// Passes the host pty's size on to the container's pty in the guest.
    async fn resize(&self) {
        let Some(req) = self
            .tty
            .as_ref()
            .and_then(|t| super::tty::resize_request(t, &self.id, ""))
        else {
            return;
        };
        let call = self.agent().tty_win_resize(agent_ctx(&self.cfg), &req);
        if let Err(e) = self.rpc("TtyWinResize", "", call).await {
            tracing::warn!(container = %self.id, error = %e, "resizing the terminal");
        }
    }

    async fn kill(&self, signal: i32, all: bool) -> anyhow::Result<Response> {
        if self.status() == Status::Stopped {
            anyhow::bail!("container not running");
        }
        let mut req = pb::SignalProcessRequest::new();
        req.container_id = self.id.clone();
        req.signal = u32::try_from(signal).context("signal")?;
        req.all = all;
        let call = self.agent().signal_process(agent_ctx(&self.cfg), &req);
        let r = self
            .rpc("SignalProcess", "signalling the container: ", call)
            .await;
        if signal == libc::SIGKILL {
            // A SIGKILL must work: a container the agent does not end in time loses its VM.
            let deadline = Duration::from_secs(self.cfg.agent_timeout_s);
            let (pod, mut exit) = (self.pod.clone(), self.exit.subscribe());
            tokio::spawn(async move {
                if tokio::time::timeout(deadline, exit.wait_for(|e| e.is_some()))
                    .await
                    .is_err()
                {
                    pod.kill_vm("the container still runs after SIGKILL");
                }
            });
        }
        r?;
        Ok(Response::default())
    }

    async fn pause(&self, pause: bool) -> anyhow::Result<Response> {
        let (want, now) = if pause {
            (Status::Running, Status::Paused)
        } else {
            (Status::Paused, Status::Running)
        };
        if self.status() != want {
            anyhow::bail!("container not {}", want.as_str());
        }
        let ctx = agent_ctx(&self.cfg);
        if pause {
            let mut req = pb::PauseContainerRequest::new();
            req.container_id = self.id.clone();
            let call = self.agent().pause_container(ctx, &req);
            self.rpc("PauseContainer", "", call).await?;
        } else {
            let mut req = pb::ResumeContainerRequest::new();
            req.container_id = self.id.clone();
            let call = self.agent().resume_container(ctx, &req);
            self.rpc("ResumeContainer", "", call).await?;
        }
        self.set_status(now);
        Ok(Response::default())
    }

    async fn ps(&self) -> anyhow::Result<Response> {
        let mut req = pb::ListProcessesRequest::new();
        req.container_id = self.id.clone();
        let call = self.agent().list_processes(agent_ctx(&self.cfg), &req);
        let list = self.rpc("ListProcesses", "", call).await?;
        Ok(Response {
            pids: Some(list.processes.iter().map(|p| p.pid).collect()),
            ..Default::default()
        })
    }

    async fn update(&self, resources: serde_json::Value) -> anyhow::Result<Response> {
        if self.status() == Status::Stopped {
            anyhow::bail!("container not running");
        }
        let mut req = pb::UpdateContainerRequest::new();
        req.container_id = self.id.clone();
        req.resources = serde_json::to_vec(&resources)?;
        let call = self.agent().update_container(agent_ctx(&self.cfg), &req);
        self.rpc("UpdateContainer", "updating the container: ", call)
            .await?;
        Ok(Response::default())
    }

    async fn stats(&self) -> anyhow::Result<Response> {
        let mut req = pb::StatsContainerRequest::new();
        req.container_id = self.id.clone();
        let call = self.agent().stats_container(agent_ctx(&self.cfg), &req);
        let s = self.rpc("StatsContainer", "", call).await?;
        Ok(Response {
            stats: Some(super::events::runc_stats(&s)),
            ..Default::default()
        })
    }

    /// Ends the container: a running one gets SIGKILL (the CLI has checked `--force`),
    /// a created one is never started; the exit then ends the supervisor as usual.
    async fn delete(&self) -> anyhow::Result<Response> {
        if self.status() == Status::Stopped {
            return Ok(Response::default());
        }
        if self.status() == Status::Paused {
            let _ = self.pause(false).await;
        }
        self.kill(libc::SIGKILL, true).await
    }
}

/// The signals that end the supervisor (and, first, the container's VM).
pub(super) struct Signals(Vec<(i32, tokio::signal::unix::Signal)>);

impl Signals {
    pub(super) fn new() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        Signals(
            [libc::SIGTERM, libc::SIGINT, libc::SIGHUP]
                .into_iter()
                .filter_map(|n| signal(SignalKind::from_raw(n)).ok().map(|s| (n, s)))
                .collect(),
        )
    }

    pub(super) async fn next(&mut self) -> i32 {
        if self.0.is_empty() {
            return std::future::pending().await;
        }
        let waits = self.0.iter_mut().map(|(n, s)| {
            let n = *n;
            Box::pin(async move {
                s.recv().await;
                n
            })
        });
        futures_util::future::select_all(waits).await.0
    }
}
