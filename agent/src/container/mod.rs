//! The containers of this pod: create, start, exec, signal, wait, pause, resume, update,
//! stats and remove, over libcontainer (through the runtime helper) and the cgroup. Owns
//! the table of containers and their processes; every RPC that names a container or
//! process resolves it here.

pub mod runtime;
pub mod spec;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use hull_protocols::agent as pb;
use libcontainer::container::Container as LcContainer;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxResources, Spec};

use crate::cgroups::{self, OomWatcher};
use crate::config::AgentConfig;
use crate::error::{AgentError, Result, invalid, not_found, precondition};
use crate::process::Process;
use crate::reaper::Reaper;
use crate::sandbox::Sandbox;
use crate::storage;
use runtime::{Launch, RuntimeHelper};
use spec::{PodNamespaces, validate_id};

/// How long RemoveContainer waits for a killed container when the request gives no timeout.
const DEFAULT_REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

pub struct Container {
    pub id: String,
    bundle: PathBuf,
    cgroup: PathBuf,
    is_sandbox: bool,
    pub init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    status: Mutex<Status>,
    storages: Vec<PathBuf>,
}

impl Container {
    pub fn status(&self) -> Status {
        *self.status.lock().expect("status lock")
    }

    fn set_status(&self, s: Status) {
        *self.status.lock().expect("status lock") = s;
    }

    /// The init process (empty exec id) or one exec.
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs
            .lock()
            .expect("execs lock")
            .get(exec_id)
            .cloned()
            .ok_or_else(|| {
                not_found(format!(
                    "exec {exec_id:?} not found in container {}",
                    self.id
                ))
            })
    }
}

pub struct Containers {
    cfg: AgentConfig,
    helper: RuntimeHelper,
    reaper: Arc<Reaper>,
    sandbox: Arc<Sandbox>,
    oom: OomWatcher,
    table: Mutex<HashMap<String, Arc<Container>>>,
    /// Ids being created or exec ids being started, so a duplicate is refused at once.
    reserved: Mutex<HashSet<String>>,
}

impl Containers {
    pub fn new(
        cfg: AgentConfig,
        reaper: Arc<Reaper>,
        sandbox: Arc<Sandbox>,
        oom: OomWatcher,
    ) -> anyhow::Result<Self> {
        let helper = RuntimeHelper::new(
            cfg.runtime_root(),
            cfg.state_dir.join("console"),
            reaper.clone(),
        )?;
        std::fs::create_dir_all(cfg.bundles_dir()).context("creating the bundles directory")?;
        Ok(Containers {
            cfg,
            helper,
            reaper,
            sandbox,
            oom,
            table: Mutex::default(),
            reserved: Mutex::default(),
        })
    }

    pub fn get(&self, id: &str) -> Result<Arc<Container>> {
        self.table
            .lock()
            .expect("table lock")
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(format!("container {id:?} not found")))
    }

    pub fn process(&self, id: &str, exec_id: &str) -> Result<Arc<Process>> {
        self.get(id)?.process(exec_id)
    }

    fn reserve(&self, key: String) -> Result<Reservation<'_>> {
        if !self
            .reserved
            .lock()
            .expect("reserved lock")
            .insert(key.clone())
        {
            return Err(AgentError::AlreadyExists(format!(
                "{key} is already being created"
            )));
        }
        Ok(Reservation {
            set: &self.reserved,
            key,
        })
    }

    pub async fn create(&self, req: &pb::CreateContainerRequest) -> Result<()> {
        let id = req.container_id.as_str();
        validate_id("container", id)?;
        let _r = self.reserve(format!("container {id}"))?;
        if self.table.lock().expect("table lock").contains_key(id) {
            return Err(AgentError::AlreadyExists(format!(
                "container {id} already exists"
            )));
        }
        let mut spec = spec::parse_spec(&req.oci_spec)?;
        let is_sandbox = spec::is_sandbox_container(&spec);
        let pod = self.pod_namespaces(is_sandbox);
        let cgroup = spec::prepare(&mut spec, id, &self.cfg.shared_dir, &pod)?;
        spec::apply_pod_sysctls(&spec::take_pod_sysctls(&mut spec)?)?;
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);

        let bundle = self.cfg.bundles_dir().join(id);
        let mut storages = Vec::new();
        let result = self
            .create_in(id, &spec, &bundle, terminal, &req.storages, &mut storages)
            .await;
        let (pid, stdio) = match result {
            Ok(v) => v,
            Err(e) => {
                self.discard(id, &bundle, &storages).await;
                return Err(e);
            }
        };
        let init = Arc::new(Process::new("", stdio));
        init.set_pid(pid);
        let container = Arc::new(Container {
            id: id.to_string(),
            bundle,
            cgroup: cgroup.clone(),
            is_sandbox,
            init: init.clone(),
            execs: Mutex::default(),
            status: Mutex::new(Status::Created),
            storages,
        });
        self.watch_exit(&container, init);
        if let Err(e) = self.oom.watch(id, &cgroup) {
            tracing::warn!(container = %id, error = %format!("{e:#}"), "no OOM notifications for this container");
        }
        self.table
            .lock()
            .expect("table lock")
            .insert(id.to_string(), container);
        tracing::info!(container = %id, pid, "container created");
        Ok(())
    }

    fn pod_namespaces(&self, is_sandbox: bool) -> PodNamespaces {
        let (ipc, uts) = self.sandbox.namespaces();
        let sandbox_pid = if is_sandbox {
            None
        } else {
            let t = self.table.lock().expect("table lock");
            t.values().find(|c| c.is_sandbox).and_then(|c| c.init.pid())
        };
        PodNamespaces {
            ipc,
            uts,
            sandbox_pid,
        }
    }

    async fn create_in(
        &self,
        id: &str,
        spec: &Spec,
        bundle: &Path,
        terminal: bool,
        storages: &[pb::Storage],
        mounted: &mut Vec<PathBuf>,
    ) -> Result<(i32, crate::process::Stdio)> {
        std::fs::create_dir_all(bundle)
            .with_context(|| format!("creating {}", bundle.display()))?;
        let allowed = [self.cfg.shared_dir.as_path(), self.cfg.state_dir.as_path()];
        for s in storages {
            mounted.push(storage::mount_storage(s, &allowed)?);
        }
        spec.save(bundle.join("config.json"))
            .context("writing config.json")?;
        self.helper
            .launch(id, Launch::Create { bundle }, terminal, bundle)
            .await
    }

    /// Undoes a failed create: libcontainer state, cgroup, storages and the bundle.
    async fn discard(&self, id: &str, bundle: &Path, storages: &[PathBuf]) {
        let dir = self.helper.root().join(id);
        if dir.exists() {
            let r = tokio::task::spawn_blocking(move || {
                LcContainer::load(dir).and_then(|mut c| c.delete(true))
            })
            .await;
            if let Ok(Err(e)) = r {
                tracing::warn!(container = %id, error = %e, "cleaning up a failed create");
            }
        }
        storage::unmount_all(storages);
        let _ = std::fs::remove_dir_all(bundle);
    }

    fn watch_exit(&self, container: &Arc<Container>, process: Arc<Process>) {
        let pid = process.pid().expect("pid is set before watching");
        let rx = self.reaper.watch(pid);
        let c = container.clone();
        tokio::spawn(async move {
            if let Ok(exit) = rx.await {
                tracing::info!(container = %c.id, exec = %process.exec_id, pid, status = exit.code, "process exited");
                process.set_exit(exit);
                if process.exec_id.is_empty() {
                    c.set_status(Status::Stopped);
                }
            }
        });
    }

    async fn with_libcontainer<T: Send + 'static>(
        &self,
        id: &str,
        what: &'static str,
        f: impl FnOnce(
            &mut LcContainer,
        ) -> std::result::Result<T, libcontainer::error::LibcontainerError>
        + Send
        + 'static,
    ) -> Result<T> {
        let dir = self.helper.root().join(id);
        tokio::task::spawn_blocking(move || {
            let mut c = LcContainer::load(dir)
                .map_err(|e| anyhow::anyhow!("loading container state: {e}"))?;
            f(&mut c).map_err(|e| anyhow::anyhow!("{what}: {e}"))
        })
        .await
        .map_err(|e| anyhow::anyhow!(e))?
        .map_err(AgentError::Internal)
    }

    pub async fn start(&self, id: &str) -> Result<()> {
        let c = self.get(id)?;
        match c.status() {
            Status::Created => {}
            Status::Stopped => {
                return Err(precondition(format!(
                    "container {id} has already run and stopped"
                )));
            }
            _ => return Err(precondition(format!("container {id} is already started"))),
        }
        c.set_status(Status::Running);
        if let Err(e) = self
            .with_libcontainer(id, "starting container", |lc| lc.start())
            .await
        {
            c.set_status(Status::Created);
            return Err(e);
        }
        tracing::info!(container = %id, "container started");
        Ok(())
    }

    pub async fn exec(&self, req: &pb::ExecProcessRequest) -> Result<()> {
        let id = req.container_id.as_str();
        validate_id("exec", &req.exec_id)?;
        let c = self.get(id)?;
        let _r = self.reserve(format!("exec {id}/{}", req.exec_id))?;
        if c.execs
            .lock()
            .expect("execs lock")
            .contains_key(&req.exec_id)
        {
            return Err(AgentError::AlreadyExists(format!(
                "exec {} already exists in container {id}",
                req.exec_id
            )));
        }
        if c.status() != Status::Running {
            return Err(precondition(format!(
                "container {id} is not running ({:?})",
                c.status()
            )));
        }
        let process = spec::parse_process(&req.process)?;
        let terminal = process.terminal().unwrap_or(false);
        let file = c.bundle.join(format!("exec-{}.json", req.exec_id));
        std::fs::write(&file, &req.process).context("writing the exec process spec")?;
        let launched = self
            .helper
            .launch(
                id,
                Launch::Exec {
                    process_json: &file,
                },
                terminal,
                &c.bundle,
            )
            .await;
        let _ = std::fs::remove_file(&file);
        let (pid, stdio) = launched?;
        let p = Arc::new(Process::new(&req.exec_id, stdio));
        p.set_pid(pid);
        c.execs
            .lock()
            .expect("execs lock")
            .insert(req.exec_id.clone(), p.clone());
        self.watch_exit(&c, p);
        tracing::info!(container = %id, exec = %req.exec_id, pid, "exec started");
        Ok(())
    }

    pub async fn signal(&self, req: &pb::SignalProcessRequest) -> Result<()> {
        let id = req.container_id.as_str();
        let c = self.get(id)?;
        let p = c.process(&req.exec_id)?;
        let sig = Signal::try_from(req.signal as i32)
            .map_err(|_| invalid(format!("unknown signal {}", req.signal)))?;
        if p.exit().is_some() {
            return Err(not_found(format!(
                "process {:?} of container {id} has already exited",
                req.exec_id
            )));
        }
        if req.all && req.exec_id.is_empty() {
            return self
                .with_libcontainer(id, "signalling all processes", move |lc| lc.kill(sig, true))
                .await;
        }
        let pid = p
            .pid()
            .ok_or_else(|| precondition("process has no pid yet"))?;
        kill(Pid::from_raw(pid), sig)
            .map_err(|e| AgentError::Internal(anyhow::anyhow!("kill({pid}, {sig}): {e}")))
    }

    pub async fn pause(&self, id: &str) -> Result<()> {
        let c = self.get(id)?;
        if c.status() != Status::Running {
            return Err(precondition(format!(
                "container {id} is not running ({:?})",
                c.status()
            )));
        }
        self.with_libcontainer(id, "pausing", |lc| lc.pause())
            .await?;
        c.set_status(Status::Paused);
        Ok(())
    }

    pub async fn resume(&self, id: &str) -> Result<()> {
        let c = self.get(id)?;
        if c.status() != Status::Paused {
            return Err(precondition(format!(
                "container {id} is not paused ({:?})",
                c.status()
            )));
        }
        self.with_libcontainer(id, "resuming", |lc| lc.resume())
            .await?;
        c.set_status(Status::Running);
        Ok(())
    }

    pub async fn update(&self, req: &pb::UpdateContainerRequest) -> Result<()> {
        let c = self.get(&req.container_id)?;
        let res: LinuxResources = serde_json::from_slice(&req.resources)
            .map_err(|e| invalid(format!("malformed OCI resources: {e}")))?;
        let (cg, id) = (c.cgroup.clone(), c.id.clone());
        tokio::task::spawn_blocking(move || cgroups::update(&cg, &id, &res))
            .await
            .map_err(|e| anyhow::anyhow!(e))??;
        Ok(())
    }

    pub async fn stats(&self, id: &str) -> Result<pb::StatsContainerResponse> {
        let c = self.get(id)?;
        let (cg, id) = (c.cgroup.clone(), c.id.clone());
        Ok(
            tokio::task::spawn_blocking(move || cgroups::stats(&cg, &id))
                .await
                .map_err(|e| anyhow::anyhow!(e))??,
        )
    }

    pub async fn list_processes(&self, id: &str) -> Result<pb::ListProcessesResponse> {
        let c = self.get(id)?;
        let known: HashMap<i32, String> = std::iter::once(&c.init)
            .chain(c.execs.lock().expect("execs lock").values())
            .filter_map(|p| p.pid().map(|pid| (pid, p.exec_id.clone())))
            .collect();
        let (cg, cid) = (c.cgroup.clone(), c.id.clone());
        let pids = tokio::task::spawn_blocking(move || cgroups::pids(&cg, &cid))
            .await
            .map_err(|e| anyhow::anyhow!(e))??;
        let mut out = pb::ListProcessesResponse::new();
        for pid in pids {
            let mut info = pb::ProcessInfo::new();
            info.pid = pid as u32;
            info.exec_id = known.get(&pid).cloned().unwrap_or_default();
            out.processes.push(info);
        }
        Ok(out)
    }

    /// Kills what still runs, then removes the container and everything made for it.
    pub async fn remove(&self, id: &str, timeout: Duration) -> Result<()> {
        let c = self.get(id)?;
        if c.init.exit().is_none() && c.status() != Status::Created {
            if c.status() == Status::Paused {
                let _ = self
                    .with_libcontainer(id, "resuming", |lc| lc.resume())
                    .await;
            }
            let _ = self
                .with_libcontainer(id, "killing", |lc| lc.kill(Signal::SIGKILL, true))
                .await;
            if tokio::time::timeout(timeout, c.init.wait()).await.is_err() {
                return Err(AgentError::Internal(anyhow::anyhow!(
                    "container {id} did not stop within {timeout:?}"
                )));
            }
        }
        self.with_libcontainer(id, "deleting", |lc| lc.delete(true))
            .await?;
        // A created-but-never-started init is killed by delete; collect its exit too.
        let _ = tokio::time::timeout(Duration::from_secs(5), c.init.wait()).await;
        self.oom.unwatch(id);
        storage::unmount_all(&c.storages);
        let _ = std::fs::remove_dir_all(&c.bundle);
        self.table.lock().expect("table lock").remove(id);
        tracing::info!(container = %id, "container removed");
        Ok(())
    }

    /// Removes every container (sandbox last); used when the pod goes away.
    pub async fn remove_all(&self) {
        let mut all: Vec<Arc<Container>> = self
            .table
            .lock()
            .expect("table lock")
            .values()
            .cloned()
            .collect();
        all.sort_by_key(|c| c.is_sandbox);
        for c in all {
            if let Err(e) = self.remove(&c.id, DEFAULT_REMOVE_TIMEOUT).await {
                tracing::warn!(container = %c.id, error = %e, "removing container at teardown");
            }
        }
    }
}

pub fn remove_timeout(seconds: u32) -> Duration {
    if seconds == 0 {
        DEFAULT_REMOVE_TIMEOUT
    } else {
        Duration::from_secs(seconds.into())
    }
}

/// Holds an id in the reserved set for the duration of a create or exec.
struct Reservation<'a> {
    set: &'a Mutex<HashSet<String>>,
    key: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.set.lock().expect("reserved lock").remove(&self.key);
    }
}
