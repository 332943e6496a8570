//! The containerd task service (shim v2 task API) for one pod: every container of the pod
//! is a task here, every exec a process of it. Requests become agent calls over the pod
//! VM's vsock; exits come back as TaskExit events and answers to Wait.

mod events;
pub mod io;
pub mod metrics;
mod process;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim_protos::api::*;
use containerd_shim_protos::events::task::*;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::topics::*;
use containerd_shim_protos::types::task::Status;
use hull_protocols::agent as pb;
use oci_spec::runtime::Spec;
use ttrpc::r#async::TtrpcContext;
use ttrpc::{Code, get_status};

use crate::config::HullConfig;
use crate::pod::{Pod, PodOptions};
use crate::sandbox_id;
use crate::share::ContainerShare;

use events::Events;
use io::StdioPaths;
use process::Process;

type TResult<T> = ttrpc::Result<T>;

fn err(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(get_status(code, msg.into()))
}

fn internal(e: impl std::fmt::Display) -> ttrpc::Error {
    err(Code::INTERNAL, e.to_string())
}

/// A call that waits for an event (a process exit, an OOM kill) for as long as it takes;
/// it is cancelled when the pod VM dies.
fn wait_ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(0)
}

fn invalid_id(e: crate::ids::InvalidId) -> ttrpc::Error {
    err(Code::INVALID_ARGUMENT, e.to_string())
}

/// OOM events forwarded per second at most: a guest can report as many as it likes.
const OOM_EVENTS_PER_SECOND: u32 = 10;

struct Container {
    id: String,
    bundle: String,
    share: ContainerShare,
    init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    /// Exec specs between Exec and Start (the agent starts an exec as soon as it hears of it).
    pending_execs: Mutex<HashMap<String, Vec<u8>>>,
}

pub struct TaskService {
    cfg: HullConfig,
    namespace: String,
    events: Arc<Events>,
    exit: Arc<ExitSignal>,
    pod: tokio::sync::Mutex<Option<Arc<Pod>>>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Ids of the containers created here, for checking what the guest reports.
    known_ids: Arc<Mutex<std::collections::HashSet<String>>>,
}

impl TaskService {
    pub fn new(
        cfg: HullConfig,
        namespace: &str,
        publisher: RemotePublisher,
        exit: Arc<ExitSignal>,
    ) -> TaskService {
        TaskService {
            cfg,
            namespace: namespace.to_string(),
            events: Arc::new(Events::new(publisher, namespace)),
            exit,
            pod: tokio::sync::Mutex::new(None),
            containers: Mutex::default(),
            known_ids: Arc::default(),
        }
    }

    /// Every request/answer agent call gets this deadline: a guest that stops answering
    /// fails the call instead of hanging the task API.
    fn actx(&self) -> ttrpc::context::Context {
        crate::agent_client::deadline(Duration::from_secs(self.cfg.agent_timeout_s))
    }

    fn container(&self, id: &str) -> TResult<Arc<Container>> {
        self.containers
            .lock()
            .expect("containers lock")
            .get(id)
            .cloned()
            .ok_or_else(|| err(Code::NOT_FOUND, format!("container {id} not found")))
    }

    fn process(&self, id: &str, exec_id: &str) -> TResult<(Arc<Container>, Arc<Process>)> {
        let c = self.container(id)?;
        if exec_id.is_empty() {
            let p = c.init.clone();
            return Ok((c, p));
        }
        let p = c.execs.lock().expect("execs lock").get(exec_id).cloned();
        match p {
            Some(p) => Ok((c, p)),
            None => Err(err(
                Code::NOT_FOUND,
                format!("exec {exec_id} not found in {id}"),
            )),
        }
    }

    async fn pod(&self) -> TResult<Arc<Pod>> {
        self.pod
            .lock()
            .await
            .clone()
            .ok_or_else(|| err(Code::FAILED_PRECONDITION, "the pod VM is not running"))
    }

    /// The pod VM, booted by the first container of the pod.
    async fn ensure_pod(&self, sandbox: &str, spec: &Spec) -> TResult<Arc<Pod>> {
        let mut slot = self.pod.lock().await;
        if let Some(p) = slot.as_ref() {
            if p.is_dead() {
                return Err(err(Code::FAILED_PRECONDITION, "the pod VM has died"));
            }
            return Ok(p.clone());
        }
        let network = crate::network::mode(spec);
        if network == crate::network::Mode::Host {
            return Err(err(
                Code::FAILED_PRECONDITION,
                crate::network::HOST_NETWORK_REFUSED,
            ));
        }
        let dns = crate::network::dns_lines(spec).map_err(|e| internal(format!("{e:#}")))?;
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let size = crate::sizing::pod_size(&self.cfg, spec.annotations().as_ref(), cpus);
        tracing::info!(
            sandbox,
            vcpus = size.vcpus,
            memory_mib = size.memory_mib,
            network = ?network,
            "booting the pod VM"
        );
        let opts = PodOptions {
            hostname: spec.hostname().clone().unwrap_or_default(),
            size,
            network,
            dns,
        };
        let pod = Pod::boot(&self.cfg, &self.namespace, sandbox, opts)
            .await
            .map_err(|e| internal(format!("{e:#}")))?;
        self.spawn_oom_forwarder(pod.clone());
        if let Err(e) = crate::pod_metrics::serve(&pod, self.known_ids.clone()) {
            tracing::warn!(sandbox, error = %format!("{e:#}"), "no metrics socket for this pod");
        }
        *slot = Some(pod.clone());
        Ok(pod)
    }

    /// Forwards the guest's OOM kills as TaskOOM events: only for containers this shim
    /// created, and at most `OOM_EVENTS_PER_SECOND`, whatever the guest sends.
    fn spawn_oom_forwarder(&self, pod: Arc<Pod>) {
        let events = self.events.clone();
        let known = self.known_ids.clone();
        tokio::spawn(async move {
            let req = pb::GetOOMEventRequest::new();
            let mut window = (std::time::Instant::now(), 0u32);
            loop {
                let r = tokio::select! {
                    r = pod.agent.agent.get_oom_event(wait_ctx(), &req) => r,
                    _ = pod.died() => return,
                };
                match r {
                    Ok(ev) => {
                        if !known.lock().expect("ids lock").contains(&ev.container_id) {
                            tracing::debug!(sandbox = %pod.id, "OOM event for an unknown container dropped");
                            continue;
                        }
                        if window.0.elapsed() >= Duration::from_secs(1) {
                            window = (std::time::Instant::now(), 0);
                        }
                        window.1 += 1;
                        if window.1 > OOM_EVENTS_PER_SECOND {
                            if window.1 == OOM_EVENTS_PER_SECOND + 1 {
                                tracing::warn!(sandbox = %pod.id, "OOM events above the rate limit dropped");
                            }
                            continue;
                        }
                        tracing::info!(sandbox = %pod.id, container = %ev.container_id, "OOM kill");
                        pod.metrics.oom_kill();
                        pod.event(crate::pod_events::Event::Oom, &ev.container_id, "");
                        let mut e = TaskOOM::new();
                        e.container_id = ev.container_id;
                        events.send(TASK_OOM_EVENT_TOPIC, Box::new(e)).await;
                    }
                    Err(_) => return,
                }
            }
        });
    }

    /// Waits for a started process to exit (or the VM to die), drains its output, records
    /// the exit and tells containerd.
    fn watch_exit(&self, pod: Arc<Pod>, cid: String, p: Arc<Process>) {
        let events = self.events.clone();
        tokio::spawn(async move {
            let mut req = pb::WaitProcessRequest::new();
            req.container_id = cid.clone();
            req.exec_id = p.exec_id.clone();
            let status = tokio::select! {
                r = pod.agent.agent.wait_process(wait_ctx(), &req) => r.map(|r| r.status).unwrap_or(255),
                _ = pod.died() => 255,
            };
            if tokio::time::timeout(Duration::from_secs(5), p.drain_output())
                .await
                .is_err()
            {
                tracing::warn!(container = %cid, exec = %p.exec_id, "output still open 5 s after exit; closing it");
                p.abort_io();
            }
            let exited_at = p.set_exited(status);
            tracing::info!(container = %cid, exec = %p.exec_id, status, "process exited");
            let mut e = TaskExit::new();
            e.container_id = cid.clone();
            e.id = if p.exec_id.is_empty() {
                cid
            } else {
                p.exec_id.clone()
            };
            e.pid = p.pid;
            e.exit_status = status as u32;
            e.exited_at = Some(exited_at).into();
            events.send(TASK_EXIT_EVENT_TOPIC, Box::new(e)).await;
        });
    }

    async fn do_create(&self, req: &CreateTaskRequest) -> TResult<CreateTaskResponse> {
        if self
            .containers
            .lock()
            .expect("containers lock")
            .contains_key(&req.id)
        {
            return Err(err(
                Code::ALREADY_EXISTS,
                format!("container {} already exists", req.id),
            ));
        }
        crate::ids::validate("container id", &req.id).map_err(invalid_id)?;
        let bundle = PathBuf::from(&req.bundle);
        let spec = Spec::load(bundle.join("config.json"))
            .map_err(|e| err(Code::INVALID_ARGUMENT, format!("reading the OCI spec: {e}")))?;
        let sandbox = sandbox_id(&spec).unwrap_or_else(|| req.id.clone());
        crate::ids::validate("sandbox id", &sandbox).map_err(invalid_id)?;
        let pod = self.ensure_pod(&sandbox, &spec).await?;

        let share = pod
            .create_container(&req.id, &bundle, &req.rootfs, spec, self.actx())
            .await?;
        self.known_ids
            .lock()
            .expect("ids lock")
            .insert(req.id.clone());
        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let init = Arc::new(Process::new("", paths));
        init.start_io(&pod.agent.agent, &req.id);
        let c = Arc::new(Container {
            id: req.id.clone(),
            bundle: req.bundle.clone(),
            share,
            init: init.clone(),
            execs: Mutex::default(),
            pending_execs: Mutex::default(),
        });
        self.containers
            .lock()
            .expect("containers lock")
            .insert(req.id.clone(), c);
        tracing::info!(sandbox = %pod.id, container = %req.id, "container created");

        let mut e = TaskCreate::new();
        e.container_id = req.id.clone();
        e.bundle = req.bundle.clone();
        e.rootfs = req.rootfs.clone();
        let mut io = TaskIO::new();
        io.stdin = req.stdin.clone();
        io.stdout = req.stdout.clone();
        io.stderr = req.stderr.clone();
        io.terminal = req.terminal;
        e.io = Some(io).into();
        e.pid = init.pid;
        self.events.send(TASK_CREATE_EVENT_TOPIC, Box::new(e)).await;
        let mut resp = CreateTaskResponse::new();
        resp.pid = init.pid;
        Ok(resp)
    }

    async fn do_start(&self, req: &StartRequest) -> TResult<StartResponse> {
        let pod = self.pod().await?;
        let c = self.container(&req.id)?;
        let p = if req.exec_id.is_empty() {
            let mut sreq = pb::StartContainerRequest::new();
            sreq.container_id = req.id.clone();
            pod.call(
                "StartContainer",
                pod.agent.agent.start_container(self.actx(), &sreq),
            )
            .await?;
            c.init.set_running();
            c.init.clone()
        } else {
            let (spec, paths) = {
                let spec = c
                    .pending_execs
                    .lock()
                    .expect("pending lock")
                    .remove(&req.exec_id);
                let p = c
                    .execs
                    .lock()
                    .expect("execs lock")
                    .get(&req.exec_id)
                    .cloned();
                match (spec, p) {
                    (Some(s), Some(p)) => (s, p),
                    _ => {
                        return Err(err(
                            Code::FAILED_PRECONDITION,
                            format!("exec {} is not waiting to start", req.exec_id),
                        ));
                    }
                }
            };
            let mut ereq = pb::ExecProcessRequest::new();
            ereq.container_id = req.id.clone();
            ereq.exec_id = req.exec_id.clone();
            ereq.process = spec;
            if let Err(e) = pod
                .call(
                    "ExecProcess",
                    pod.agent.agent.exec_process(self.actx(), &ereq),
                )
                .await
            {
                c.execs.lock().expect("execs lock").remove(&req.exec_id);
                return Err(e);
            }
            paths.start_io(&pod.agent.agent, &req.id);
            paths.set_running();
            paths
        };
        self.watch_exit(pod, req.id.clone(), p.clone());
        if req.exec_id.is_empty() {
            let mut e = TaskStart::new();
            e.container_id = req.id.clone();
            e.pid = p.pid;
            self.events.send(TASK_START_EVENT_TOPIC, Box::new(e)).await;
        } else {
            let mut e = TaskExecStarted::new();
            e.container_id = req.id.clone();
            e.exec_id = req.exec_id.clone();
            e.pid = p.pid;
            self.events
                .send(TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(e))
                .await;
        }
        let mut resp = StartResponse::new();
        resp.pid = p.pid;
        Ok(resp)
    }

    async fn do_delete(&self, req: &DeleteRequest) -> TResult<DeleteResponse> {
        let (c, p) = self.process(&req.id, &req.exec_id)?;
        if p.status() == Status::RUNNING || p.status() == Status::PAUSED {
            return Err(err(
                Code::FAILED_PRECONDITION,
                format!("{} is still running; kill it first", req.id),
            ));
        }
        let (status, at) = p.exit_info();
        if !req.exec_id.is_empty() {
            c.execs.lock().expect("execs lock").remove(&req.exec_id);
            c.pending_execs
                .lock()
                .expect("pending lock")
                .remove(&req.exec_id);
        } else {
            let pod = self.pod().await?;
            if !pod.is_dead() {
                let mut rreq = pb::RemoveContainerRequest::new();
                rreq.container_id = req.id.clone();
                if let Err(e) = pod
                    .call(
                        "RemoveContainer",
                        pod.agent.agent.remove_container(self.actx(), &rreq),
                    )
                    .await
                {
                    tracing::warn!(container = %req.id, error = %e, "RemoveContainer");
                }
            }
            p.abort_io();
            c.share.remove();
            self.containers
                .lock()
                .expect("containers lock")
                .remove(&req.id);
            self.known_ids.lock().expect("ids lock").remove(&req.id);
            tracing::info!(container = %req.id, "container deleted");
            let mut e = TaskDelete::new();
            e.container_id = req.id.clone();
            e.id = req.id.clone();
            e.pid = p.pid;
            e.exit_status = status;
            e.exited_at = Some(at.clone()).into();
            self.events.send(TASK_DELETE_EVENT_TOPIC, Box::new(e)).await;
        }
        let mut resp = DeleteResponse::new();
        resp.pid = p.pid;
        resp.exit_status = status;
        resp.exited_at = Some(at).into();
        Ok(resp)
    }

    async fn do_exec(&self, req: &ExecProcessRequest) -> TResult<()> {
        crate::ids::validate("exec id", &req.exec_id).map_err(invalid_id)?;
        let c = self.container(&req.id)?;
        if c.init.status() != Status::RUNNING {
            return Err(err(
                Code::FAILED_PRECONDITION,
                format!("container {} is not running", req.id),
            ));
        }
        let mut execs = c.execs.lock().expect("execs lock");
        if execs.contains_key(&req.exec_id) {
            return Err(err(
                Code::ALREADY_EXISTS,
                format!("exec {} already exists", req.exec_id),
            ));
        }
        let spec = req
            .spec
            .as_ref()
            .map(|a| a.value.clone())
            .ok_or_else(|| err(Code::INVALID_ARGUMENT, "exec without a process spec"))?;
        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        execs.insert(
            req.exec_id.clone(),
            Arc::new(Process::new(&req.exec_id, paths)),
        );
        c.pending_execs
            .lock()
            .expect("pending lock")
            .insert(req.exec_id.clone(), spec);
        Ok(())
    }

    async fn do_kill(&self, req: &KillRequest) -> TResult<()> {
        let (_, p) = self.process(&req.id, &req.exec_id)?;
        if p.status() == Status::STOPPED {
            return Err(err(
                Code::NOT_FOUND,
                format!("process {} has already finished", p.display_id(&req.id)),
            ));
        }
        if p.status() == Status::CREATED && !req.exec_id.is_empty() {
            return Err(err(Code::FAILED_PRECONDITION, "exec has not been started"));
        }
        let pod = self.pod().await?;
        let mut sreq = pb::SignalProcessRequest::new();
        sreq.container_id = req.id.clone();
        sreq.exec_id = req.exec_id.clone();
        sreq.signal = req.signal;
        sreq.all = req.all;
        let r = pod
            .call(
                "SignalProcess",
                pod.agent.agent.signal_process(self.actx(), &sreq),
            )
            .await;
        if req.signal == libc::SIGKILL as u32 {
            // A SIGKILL must always work: a process the agent does not end in time (it is
            // wedged, gone, or says it did and did not) gets its VM killed, which ends
            // every task of the pod.
            let deadline = Duration::from_secs(self.cfg.agent_timeout_s);
            let what = p.display_id(&req.id);
            tokio::spawn(async move {
                if tokio::time::timeout(deadline, p.wait()).await.is_err() {
                    pod.kill_vm(&format!("{what} still runs {deadline:?} after SIGKILL"));
                }
            });
            if let Err(e) = &r
                && !crate::pod::agent_answered(e)
            {
                tracing::warn!(container = %req.id, error = %e, "the agent did not answer a SIGKILL; the VM goes if the process does not");
                return Ok(());
            }
        }
        r.map(|_| ())
    }
}

fn state_response(c: &Container, p: &Process) -> StateResponse {
    let mut r = StateResponse::new();
    r.id = c.id.clone();
    r.bundle = c.bundle.clone();
    r.pid = p.pid;
    r.status = p.status().into();
    r.stdin = p.paths.stdin.clone();
    r.stdout = p.paths.stdout.clone();
    r.stderr = p.paths.stderr.clone();
    r.terminal = p.paths.terminal;
    let (status, at) = p.exit_info();
    r.exit_status = status;
    r.exited_at = Some(at).into();
    r.exec_id = p.exec_id.clone();
    r
}

fn log_result<T>(rpc: &str, id: &str, exec_id: &str, r: &TResult<T>) {
    if let Err(e) = r {
        tracing::info!(rpc, container = id, exec = exec_id, error = %e, "task request failed");
    }
}

#[async_trait]
impl Task for TaskService {
    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TResult<StateResponse> {
        let (c, p) = self.process(&req.id, &req.exec_id)?;
        Ok(state_response(&c, &p))
    }

    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TResult<CreateTaskResponse> {
        let r = self.do_create(&req).await;
        log_result("Create", &req.id, "", &r);
        r
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TResult<StartResponse> {
        let r = self.do_start(&req).await;
        log_result("Start", &req.id, &req.exec_id, &r);
        r
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TResult<DeleteResponse> {
        let r = self.do_delete(&req).await;
        log_result("Delete", &req.id, &req.exec_id, &r);
        r
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TResult<PidsResponse> {
        let pod = self.pod().await?;
        self.container(&req.id)?;
        let mut lreq = pb::ListProcessesRequest::new();
        lreq.container_id = req.id.clone();
        let list = pod
            .call(
                "ListProcesses",
                pod.agent.agent.list_processes(self.actx(), &lreq),
            )
            .await?;
        let mut resp = PidsResponse::new();
        resp.processes = list
            .processes
            .iter()
            .map(|p| {
                let mut info = containerd_shim_protos::types::task::ProcessInfo::new();
                info.pid = p.pid;
                info
            })
            .collect();
        Ok(resp)
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TResult<Empty> {
        let pod = self.pod().await?;
        let c = self.container(&req.id)?;
        let mut preq = pb::PauseContainerRequest::new();
        preq.container_id = req.id.clone();
        pod.call(
            "PauseContainer",
            pod.agent.agent.pause_container(self.actx(), &preq),
        )
        .await?;
        c.init.set_paused(true);
        let mut e = TaskPaused::new();
        e.container_id = req.id.clone();
        self.events.send(TASK_PAUSED_EVENT_TOPIC, Box::new(e)).await;
        Ok(Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TResult<Empty> {
        let pod = self.pod().await?;
        let c = self.container(&req.id)?;
        let mut rreq = pb::ResumeContainerRequest::new();
        rreq.container_id = req.id.clone();
        pod.call(
            "ResumeContainer",
            pod.agent.agent.resume_container(self.actx(), &rreq),
        )
        .await?;
        c.init.set_paused(false);
        let mut e = TaskResumed::new();
        e.container_id = req.id.clone();
        self.events
            .send(TASK_RESUMED_EVENT_TOPIC, Box::new(e))
            .await;
        Ok(Empty::new())
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TResult<Empty> {
        let r = self.do_kill(&req).await;
        log_result("Kill", &req.id, &req.exec_id, &r);
        r.map(|_| Empty::new())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TResult<Empty> {
        let r = self.do_exec(&req).await;
        log_result("Exec", &req.id, &req.exec_id, &r);
        r?;
        let mut e = TaskExecAdded::new();
        e.container_id = req.id.clone();
        e.exec_id = req.exec_id.clone();
        self.events
            .send(TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(e))
            .await;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TResult<Empty> {
        let pod = self.pod().await?;
        self.process(&req.id, &req.exec_id)?;
        let mut rreq = pb::TtyWinResizeRequest::new();
        rreq.container_id = req.id.clone();
        rreq.exec_id = req.exec_id.clone();
        rreq.rows = req.height;
        rreq.columns = req.width;
        pod.call(
            "TtyWinResize",
            pod.agent.agent.tty_win_resize(self.actx(), &rreq),
        )
        .await?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TResult<Empty> {
        let pod = self.pod().await?;
        let (_, p) = self.process(&req.id, &req.exec_id)?;
        if req.stdin {
            p.close_stdin(&pod.agent.agent, &req.id).await;
        }
        Ok(Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TResult<Empty> {
        let pod = self.pod().await?;
        self.container(&req.id)?;
        let resources = req
            .resources
            .as_ref()
            .map(|a| a.value.clone())
            .ok_or_else(|| err(Code::INVALID_ARGUMENT, "update without resources"))?;
        let mut ureq = pb::UpdateContainerRequest::new();
        ureq.container_id = req.id.clone();
        ureq.resources = resources;
        pod.call(
            "UpdateContainer",
            pod.agent.agent.update_container(self.actx(), &ureq),
        )
        .await?;
        Ok(Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TResult<WaitResponse> {
        let (_, p) = self.process(&req.id, &req.exec_id)?;
        let (status, at) = p.wait().await;
        let mut resp = WaitResponse::new();
        resp.exit_status = status;
        resp.exited_at = Some(at).into();
        Ok(resp)
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TResult<StatsResponse> {
        let pod = self.pod().await?;
        self.container(&req.id)?;
        let mut sreq = pb::StatsContainerRequest::new();
        sreq.container_id = req.id.clone();
        let stats = pod
            .call(
                "StatsContainer",
                pod.agent.agent.stats_container(self.actx(), &sreq),
            )
            .await?;
        let mut resp = StatsResponse::new();
        resp.stats = Some(metrics::to_any(&metrics::to_metrics(&stats)).map_err(internal)?).into();
        Ok(resp)
    }

    async fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> TResult<ConnectResponse> {
        let c = self.container(&req.id)?;
        let mut resp = ConnectResponse::new();
        resp.shim_pid = std::process::id();
        resp.task_pid = c.init.pid;
        resp.version = env!("CARGO_PKG_VERSION").to_string();
        Ok(resp)
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TResult<Empty> {
        if !self.containers.lock().expect("containers lock").is_empty() {
            return Ok(Empty::new());
        }
        let pod = self.pod.lock().await.take();
        let exit = self.exit.clone();
        let timeout = Duration::from_secs(self.cfg.shutdown_timeout_s);
        // containerd's deadline for this call can run out first on a loaded host (ttrpc
        // then drops the handler): the teardown and the shim's exit must happen anyway,
        // or the VM's end is left half done and this shim lives on with nothing to do.
        let teardown = tokio::spawn(async move {
            if let Some(pod) = pod {
                pod.shutdown(timeout).await;
            }
            exit.signal();
        });
        let _ = teardown.await;
        Ok(Empty::new())
    }
}

/// The bundle of a container the shim is asked to clean up after (`shim delete`).
pub fn bundle_spec(bundle: &Path) -> Option<Spec> {
    Spec::load(bundle.join("config.json")).ok()
}
