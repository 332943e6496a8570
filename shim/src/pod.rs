//! One pod, one VM: booting it (the VMM, its daemons, the agent's sandbox), watching it
//! die, shutting it down in order, and killing it when the agent stops answering. Its
//! directory (and the removal of what a killed shim left there) is `pod_dir`'s.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use hull_protocols::agent::{
    AddARPNeighborsRequest, CreateContainerRequest, CreateSandboxRequest, DestroySandboxRequest,
    Storage, UpdateInterfaceRequest, UpdateRoutesRequest,
};
use tokio::sync::watch;

use crate::agent_client::{AgentClient, connect_when_ready, deadline};
use crate::config::HullConfig;
use crate::hypervisor::qemu::SHARED_FS_TAG;
use crate::hypervisor::{self, Vm, VmSpec};
use crate::network::scan::format_mac;
use crate::network::{self, PodNetwork};
use crate::pod_dir::{PodIdentity, cleanup_dir, pod_dir};
use crate::pod_events::{self, Event};
use crate::pod_fs;
use crate::share::{ContainerShare, GUEST_SHARED, PodShare};
use crate::sizing::PodSize;

pub struct Pod {
    pub id: String,
    pub namespace: String,
    pub dir: PathBuf,
    pub agent: AgentClient,
    pub metrics: crate::pod_metrics::PodMetrics,
    vm: Mutex<Option<Box<dyn Vm>>>,
    dead: watch::Receiver<bool>,
    /// Set when an orderly shutdown begins: the VM's exit is then no death.
    shutting_down: std::sync::atomic::AtomicBool,
    /// Holds the taps' fds while the pod lives.
    _network: PodNetwork,
}

/// What a pod VM is made of, beyond hull.toml.
pub struct PodOptions {
    pub hostname: String,
    pub size: PodSize,
    pub network: network::Mode,
    /// Lines of the pod's resolv.conf.
    pub dns: Vec<String>,
}

impl Pod {
    pub fn share(&self) -> PodShare {
        PodShare::at(&self.dir)
    }

    pub async fn boot(
        cfg: &HullConfig,
        namespace: &str,
        id: &str,
        opts: PodOptions,
    ) -> anyhow::Result<std::sync::Arc<Pod>> {
        let dir = pod_dir(cfg, namespace, id)?;
        if opts.network == network::Mode::Host {
            anyhow::bail!(network::HOST_NETWORK_REFUSED);
        }
        if dir.exists() {
            tracing::warn!(sandbox = %id, dir = %dir.display(), "removing a stale pod directory");
            cleanup_dir(&dir);
        }
        // Other host users may pass through run_dir, never list or read it.
        for d in [&cfg.run_dir, &cfg.run_dir.join(namespace)] {
            pod_fs::ensure_dir_mode(d, 0o711)?;
        }
        let run = dir.join("vm");
        // vm/ is a jailed VMM's whole filesystem: it must pass through it (0711) to reach
        // the agent's ready socket; its files stay the shim's (0600).
        for (d, mode) in [(&dir, 0o700), (&run, 0o711)] {
            pod_fs::ensure_dir_mode(d, mode)
                .with_context(|| format!("creating {}", d.display()))?;
        }
        let identity = PodIdentity {
            namespace: namespace.to_string(),
            sandbox: id.to_string(),
        };
        if let Err(e) = identity.write(&dir) {
            cleanup_dir(&dir);
            return Err(e);
        }
        let who = pod_events::PodRef {
            dir: &dir,
            namespace,
            sandbox: id,
        };
        pod_events::record(&who, Event::Boot, "", "");
        let share = PodShare::create(&dir).and_then(|s| {
            if cfg.debug_console {
                s.add_debug_tools(&cfg.debug_console_busybox)?;
            }
            Ok(s)
        });
        let shared = match share {
            Ok(s) => s.shared,
            Err(e) => {
                cleanup_dir(&dir);
                return Err(e);
            }
        };

        // The namespace whose links the VM takes, and the one it must not be.
        let attach = match &opts.network {
            network::Mode::Netns(p) => Some((p.clone(), None)),
            network::Mode::Made { netns, host } => Some((netns.clone(), Some(host.clone()))),
            network::Mode::Host | network::Mode::Loopback => None,
        };
        let net = match attach {
            Some((netns, host)) => {
                let d = dir.clone();
                let attached = tokio::task::spawn_blocking(move || {
                    PodNetwork::attach_refusing(&d, &netns, host.as_deref())
                });
                match attached.await? {
                    Ok(n) => n,
                    Err(e) => {
                        cleanup_dir(&dir);
                        return Err(e.context("connecting the pod's network"));
                    }
                }
            }
            None => PodNetwork::default(),
        };
        let size = opts.size;
        let mut cmdline_extra = cfg.kernel_params.clone();
        if cfg.debug_console {
            tracing::warn!(sandbox = %id, "debug console on: `hull console` runs commands as root in this pod's VM");
            cmdline_extra.push_str(" hull.debug_console=1");
        }
        let spec = VmSpec {
            kernel: cfg.kernel.clone(),
            initrd: cfg.initrd.clone(),
            vcpus: size.vcpus,
            memory_mib: size.memory_mib,
            cmdline_extra,
            run_dir: run,
            shared_dir: shared,
            log_max_bytes: cfg.log_max_kib * 1024,
            nics: net.nics.clone(),
        };
        // Every line of the boot (slot waits, progress, the retry) names the pod.
        let span = tracing::info_span!("boot", sandbox = %id);
        let boot_started = std::time::Instant::now();
        let started = start_vm(cfg, spec, &opts.hostname);
        let (vm, agent, restored) = match tracing::Instrument::instrument(started, span).await {
            Ok(v) => v,
            Err(e) => {
                cleanup_dir(&dir);
                return Err(e);
            }
        };
        let mut req = CreateSandboxRequest::new();
        req.sandbox_id = id.to_string();
        req.hostname = opts.hostname;
        req.dns = opts.dns;
        let mut fs = Storage::new();
        fs.driver = "virtiofs".into();
        fs.source = SHARED_FS_TAG.into();
        fs.fstype = "virtiofs".into();
        fs.mount_point = GUEST_SHARED.into();
        req.storages.push(fs);
        let metrics = crate::pod_metrics::PodMetrics::default();
        let timeout = Duration::from_secs(cfg.agent_timeout_s);
        let call = agent.agent.create_sandbox(deadline(timeout), &req);
        let set_up = async {
            metrics
                .rpc("CreateSandbox", call)
                .await
                .map_err(|e| anyhow::anyhow!("CreateSandbox: {e}"))?;
            configure_guest_network(&agent, &net, timeout, restored).await
        };
        if let Err(e) = set_up.await {
            // The VM booted, so why it failed is in the guest: its console carries the
            // agent's log lines.
            let report = tear_down(vm)
                .await
                .unwrap_or_else(|e| format!("(tearing the VM down failed: {e})"));
            cleanup_dir(&dir);
            anyhow::bail!("the pod VM booted but its sandbox was not set up: {e:#}\n{report}");
        }

        metrics.set_boot(boot_started.elapsed());
        let (dead_tx, dead) = watch::channel(false);
        let pod = std::sync::Arc::new(Pod {
            id: id.to_string(),
            namespace: namespace.to_string(),
            dir,
            agent,
            metrics,
            vm: Mutex::new(Some(vm)),
            dead,
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            _network: net,
        });
        let watched = std::sync::Arc::downgrade(&pod);
        std::thread::spawn(move || watch_vm(watched, dead_tx));
        pod.event(Event::Ready, "", "");
        tracing::info!(
            sandbox = %id,
            ms = boot_started.elapsed().as_millis(),
            "pod VM ready"
        );
        Ok(pod)
    }

    /// Creates a container in the VM: its rootfs (containerd's `rootfs` mounts, or
    /// `<bundle>/rootfs`) and host bind mounts go into the share, the spec is rewritten
    /// to the guest's paths (host hooks dropped: they do not run inside the VM), then
    /// CreateContainer. A step that fails undoes the share. Errors keep the ttrpc code
    /// (a bad spec is INVALID_ARGUMENT).
    pub async fn create_container(
        &self,
        id: &str,
        bundle: &Path,
        rootfs: &[containerd_shim_protos::api::Mount],
        mut spec: oci_spec::runtime::Spec,
        ctx: ttrpc::context::Context,
    ) -> Result<ContainerShare, ttrpc::Error> {
        let share = self.share().container(id);
        let prepared = share
            .mount_rootfs(rootfs, bundle, &spec)
            .and_then(|_| share.rewrite_spec(&mut spec))
            .and_then(|_| {
                if spec.hooks().is_some() {
                    tracing::warn!(sandbox = %self.id, container = %id, "OCI hooks run on the host's side and are not run inside the VM");
                    spec.set_hooks(None);
                }
                Ok(serde_json::to_vec(&spec)?)
            });
        let spec_json = match prepared {
            Ok(j) => j,
            Err(e) => {
                share.remove();
                return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                    ttrpc::Code::INVALID_ARGUMENT,
                    format!("{e:#}"),
                )));
            }
        };
        let mut creq = CreateContainerRequest::new();
        creq.container_id = id.to_string();
        creq.oci_spec = spec_json;
        let call = self.agent.agent.create_container(ctx, &creq);
        if let Err(e) = self.call("CreateContainer", call).await {
            share.remove();
            return Err(e);
        }
        Ok(share)
    }

    /// One agent request, counted in the pod's metrics. A request that ran past its
    /// deadline says so in words, with the end of the guest's console: that is where a
    /// wedged or slow guest shows what it was doing.
    pub async fn call<T>(
        &self,
        method: &'static str,
        call: impl std::future::Future<Output = ttrpc::Result<T>>,
    ) -> ttrpc::Result<T> {
        self.metrics.rpc(method, call).await.map_err(|e| {
            if !is_deadline(&e) {
                return e;
            }
            let console = self
                .vm
                .lock()
                .expect("vm lock")
                .as_ref()
                .map(|vm| crate::hypervisor::last_lines(&vm.console(), 15))
                .unwrap_or_default();
            tracing::warn!(sandbox = %self.id, rpc = method, "the guest's agent did not answer in time");
            ttrpc::Error::RpcStatus(ttrpc::get_status(
                ttrpc::Code::DEADLINE_EXCEEDED,
                format!(
                    "{UNANSWERED} {method} within its deadline \
                     (agent_timeout_s); the guest console ends:\n{console}"
                ),
            ))
        })
    }

    /// Records a lifecycle event in the pod directory (see `pod_events`).
    pub fn event(&self, event: Event, container: &str, detail: &str) {
        let who = pod_events::PodRef {
            dir: &self.dir,
            namespace: &self.namespace,
            sandbox: &self.id,
        };
        pod_events::record(&who, event, container, detail);
    }

    /// Resolves when the VM has died (or was shut down).
    pub async fn died(&self) {
        let mut rx = self.dead.clone();
        let _ = rx.wait_for(|d| *d).await;
    }

    pub fn is_dead(&self) -> bool {
        *self.dead.borrow()
    }

    /// Kills the VM at once (an agent that stops answering must not make a pod
    /// unkillable); its tasks then end as the VM's death is noticed.
    pub fn kill_vm(&self, why: &str) {
        let vm = self.vm.lock().expect("vm lock").take();
        if vm.is_some() {
            tracing::warn!(sandbox = %self.id, reason = why, "killing the pod VM");
        }
        drop(vm);
    }

    /// Orderly: DestroySandbox, wait for the VM to end, then kill whatever remains and
    /// remove the pod directory.
    pub async fn shutdown(&self, timeout: Duration) {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.event(Event::Shutdown, "", "");
        if !self.is_dead() {
            let req = DestroySandboxRequest::new();
            let call = self.metrics.rpc(
                "DestroySandbox",
                self.agent.agent.destroy_sandbox(deadline(timeout), &req),
            );
            match tokio::time::timeout(timeout, call).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(sandbox = %self.id, error = %e, "DestroySandbox failed; killing the VM");
                }
                Err(_) => {
                    tracing::warn!(sandbox = %self.id, "DestroySandbox did not answer; killing the VM");
                }
            }
            let _ = tokio::time::timeout(timeout, self.died()).await;
        }
        let vm = self.vm.lock().expect("vm lock").take();
        drop(vm);
        cleanup_dir(&self.dir);
        tracing::info!(sandbox = %self.id, "pod VM gone");
    }
}

/// Gives the guest's NICs the pod links' names and addresses (and MACs, in a VM
/// `restored` from a template, whose NICs have the template's), then the routes and
/// neighbours.
async fn configure_guest_network(
    agent: &AgentClient,
    net: &PodNetwork,
    timeout: Duration,
    restored: bool,
) -> anyhow::Result<()> {
    for (i, nic) in net.nics.iter().enumerate() {
        let mut iface = nic.link.interface();
        if restored {
            iface.device_hw_addr = format_mac(&crate::template::template_mac(i));
        }
        let mut req = UpdateInterfaceRequest::new();
        req.interface = Some(iface).into();
        agent
            .agent
            .update_interface(deadline(timeout), &req)
            .await
            .with_context(|| format!("UpdateInterface {}", nic.link.name))?;
    }
    if !net.routes.is_empty() {
        let mut req = UpdateRoutesRequest::new();
        req.routes = net.routes.clone();
        agent
            .agent
            .update_routes(deadline(timeout), &req)
            .await
            .context("UpdateRoutes")?;
    }
    if !net.neighbors.is_empty() {
        let mut req = AddARPNeighborsRequest::new();
        req.neighbors = net.neighbors.clone();
        agent
            .agent
            .add_arp_neighbors(deadline(timeout), &req)
            .await
            .context("AddARPNeighbors")?;
    }
    Ok(())
}

/// Kills and reaps a VM that failed (off the runtime's threads: it blocks) and returns
/// its failure report, taken before its processes went.
async fn tear_down(vm: Box<dyn Vm>) -> anyhow::Result<String> {
    let report = vm.diagnostics();
    tokio::task::spawn_blocking(move || drop(vm)).await?;
    Ok(report)
}

/// Starts the pod's VM: from a template where hull.toml asks for one, else (or if that
/// fails) by booting it. True: restored from a template.
async fn start_vm(
    cfg: &HullConfig,
    spec: VmSpec,
    hostname: &str,
) -> anyhow::Result<(Box<dyn Vm>, AgentClient, bool)> {
    if cfg.template {
        match crate::template::start(cfg, spec.clone(), hostname).await {
            Ok((vm, agent)) => return Ok((vm, agent, true)),
            Err(e) => tracing::warn!(
                error = %format!("{e:#}"),
                "the pod VM did not start from a template; booting it"
            ),
        }
    }
    let (vm, agent) = boot_vm(cfg, spec).await?;
    Ok((vm, agent, false))
}

/// How many times a VM whose agent stays silent is booted before the pod fails.
const BOOT_ATTEMPTS: u32 = 2;

/// Boots the VM and connects to its agent once the agent has announced itself (see
/// `ReadySignal`: the shim must not knock on the guest's vsock while the guest is still
/// setting the device up).
///
/// Each attempt first takes a host-wide boot slot (`admission`), held until the agent
/// answers or the attempt is over. The deadline fits the accelerator (`boot_timeout_s`).
/// A VMM that exits during boot fails the attempt at once; an agent that stays silent
/// until the deadline gets its VM torn down (every process of the attempt killed and
/// reaped) before the one retry boots a fresh one. The guest learns which attempt it is
/// (`hull.boot_attempt=`), so that its log says so.
async fn boot_vm(cfg: &HullConfig, spec: VmSpec) -> anyhow::Result<(Box<dyn Vm>, AgentClient)> {
    let tcg = hypervisor::resolve(cfg.hypervisor).1 == hypervisor::accel::Accel::Tcg;
    let deadline = cfg.boot_timeout(tcg);
    let mut attempt = 1;
    loop {
        let _slot = crate::admission::acquire(
            &cfg.run_dir,
            cfg.parallel_boots(tcg),
            Duration::from_secs(cfg.admission_timeout_s),
        )
        .await?;
        let (boot_cfg, mut boot_spec) = (cfg.clone(), spec.clone());
        boot_spec.cmdline_extra = format!("{} hull.boot_attempt={attempt}", spec.cmdline_extra)
            .trim_start()
            .to_string();
        let mut vm =
            tokio::task::spawn_blocking(move || hypervisor::boot(&boot_cfg, boot_spec)).await??;
        match connect_when_ready(&mut vm, deadline).await {
            Ok(agent) => return Ok((vm, agent)),
            Err(e) => {
                let report = tear_down(vm).await?;
                if attempt >= BOOT_ATTEMPTS {
                    anyhow::bail!("the pod VM's agent did not answer: {e:#}\n{report}");
                }
                tracing::warn!(error = %format!("{e:#}"), attempt, report, "the pod VM's agent did not answer; booting it again");
                attempt += 1;
            }
        }
    }
}

/// Polls the VM's processes; when QEMU exits, the rest are killed and `dead` is set.
fn watch_vm(pod: std::sync::Weak<Pod>, dead: watch::Sender<bool>) {
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let Some(pod) = pod.upgrade() else { return };
        let mut guard = pod.vm.lock().expect("vm lock");
        // (clean exit, status) once the VMM has exited.
        let exit = match guard.as_mut() {
            None => Some((true, "gone".to_string())),
            Some(vm) => match vm.wait_exit(Duration::ZERO) {
                Ok(None) => None,
                Ok(Some(status)) => Some((status.success(), status.to_string())),
                Err(e) => Some((false, format!("unknown ({e:#})"))),
            },
        };
        if let Some((clean, status)) = exit {
            if let Some(vm) = guard.take() {
                if clean {
                    let console = vm.console();
                    let last = console
                        .lines()
                        .rev()
                        .take(5)
                        .map(crate::hypervisor::clip_line)
                        .collect::<Vec<_>>()
                        .join(" | ");
                    tracing::info!(sandbox = %pod.id, %status, console = %last, "pod VM exited");
                } else {
                    // Why it failed is in the VMM's own log (its error, a triple fault, a
                    // seccomp report) as much as on the console: both go to the shim log.
                    tracing::warn!(sandbox = %pod.id, %status, report = %vm.diagnostics(), "pod VM failed");
                }
                if !pod.shutting_down.load(std::sync::atomic::Ordering::SeqCst) {
                    pod.event(Event::VmDied, "", &status);
                }
            }
            let _ = dead.send(true);
            return;
        }
    }
}

/// How `Pod::call`'s deadline error begins.
const UNANSWERED: &str = "the pod VM's agent did not answer";

/// Whether the agent answered a request that failed: false when the request never got an
/// answer (its deadline passed, or the connection broke), so nothing is known of what the
/// guest did.
pub fn agent_answered(e: &ttrpc::Error) -> bool {
    match e {
        ttrpc::Error::RpcStatus(s) => {
            !(s.code() == ttrpc::Code::DEADLINE_EXCEEDED && s.message.starts_with(UNANSWERED))
        }
        _ => false,
    }
}

/// Whether an agent request failed on its own deadline. ttrpc reports that only as text
/// (its client wraps tokio's `Elapsed` as `Others("Receive packet timeout …")`).
fn is_deadline(e: &ttrpc::Error) -> bool {
    matches!(e, ttrpc::Error::Others(m) if m.starts_with("Receive packet timeout"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ttrpc client whose server never answers: the error it gives at the deadline
    /// is the one `is_deadline` knows (a ttrpc upgrade that reworded it fails here).
    #[tokio::test]
    async fn a_request_past_its_deadline_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("silent.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        // Accepts and holds the connection, never answering.
        let held = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
        let client = ttrpc::asynchronous::Client::connect(&format!("unix://{}", path.display()))
            .await
            .unwrap();
        let agent = hull_protocols::agent_ttrpc::AgentServiceClient::new(client);
        let req = hull_protocols::agent::DestroySandboxRequest::new();
        let e = agent
            .destroy_sandbox(deadline(Duration::from_millis(100)), &req)
            .await
            .unwrap_err();
        assert!(is_deadline(&e), "{e:?}");
        assert!(!agent_answered(&e));
        let explained = ttrpc::Error::RpcStatus(ttrpc::get_status(
            ttrpc::Code::DEADLINE_EXCEEDED,
            format!("{UNANSWERED} SignalProcess within its deadline"),
        ));
        assert!(
            !agent_answered(&explained),
            "Pod::call's own deadline error"
        );
        let refused =
            ttrpc::Error::RpcStatus(ttrpc::get_status(ttrpc::Code::NOT_FOUND, "no such process"));
        assert!(agent_answered(&refused));
        assert!(!is_deadline(&ttrpc::Error::Others(
            "Receive packet from Receiver error".into()
        )));
        drop(held);
    }
}
