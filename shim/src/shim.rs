//! The shim process's life: `start` (find or spawn the pod's shim: one per pod, grouped
//! by sandbox id), serving the task API, and `delete` (clean up after a shim that died).

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{ExitSignal, Shim, spawn};
use containerd_shim::{Config, Error, Flags, StartOpts};
use containerd_shim_protos::api::DeleteResponse;
use protobuf::well_known_types::timestamp::Timestamp;

use crate::config::HullConfig;
use crate::ids;
use crate::pod_dir::{cleanup_dir, pod_dir};
use crate::share::PodShare;
use crate::task::{TaskService, bundle_spec};
use crate::{is_sandbox_container, sandbox_id};

pub const RUNTIME_ID: &str = "io.containerd.hull.v2";

pub struct HullShim {
    id: String,
    namespace: String,
    exit: Arc<ExitSignal>,
    cfg: Result<HullConfig, String>,
}

/// How the shim library runs this shim; `main` must hand it over, as the library sets up
/// its signal handling (and would reap every child on SIGCHLD) before `Shim::new` runs.
/// The shim reaps its own children (the VMM and daemons) through their handles, so that
/// their exit statuses reach it; and logs through `logging`.
pub fn shim_config() -> Config {
    Config {
        no_setup_logger: true,
        no_reaper: true,
        no_sub_reaper: true,
        ..Config::default()
    }
}

/// The shim serves no requests until its configuration is right.
fn config_error(e: &str) -> Error {
    Error::InvalidArgument(format!("hull configuration: {e}"))
}

#[async_trait]
impl Shim for HullShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, config: &mut Config) -> Self {
        *config = shim_config();
        let cfg = HullConfig::load().map_err(|e| format!("{e:#}"));
        // The first task of a shim is its pod's sandbox (CRI) or a pod of its own (ctr):
        // its id names the pod directory.
        let pod_log = cfg.as_ref().ok().and_then(|c| {
            Some(crate::logging::PodLog {
                dir: pod_dir(c, &args.namespace, &args.id).ok()?,
                max_bytes: c.log_max_kib.saturating_mul(1024),
            })
        });
        crate::logging::init(
            cfg.as_ref().map(|c| c.log_level.as_str()).unwrap_or("info"),
            &args.namespace,
            &args.id,
            pod_log,
        );
        HullShim {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            exit: Arc::new(ExitSignal::default()),
            cfg,
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        self.cfg.as_ref().map_err(|e| config_error(e))?;
        // containerd runs `start` in the container's bundle.
        let grouping = bundle_spec(Path::new("."))
            .and_then(|s| sandbox_id(&s))
            .unwrap_or_else(|| opts.id.clone());
        // The grouping id names the shim's socket, and later the pod's directory.
        for (what, id) in [("container id", &opts.id), ("sandbox id", &grouping)] {
            ids::validate(what, id).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        }
        let address = spawn(opts, &grouping, Vec::new()).await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        let cfg = self.cfg.as_ref().map_err(|e| config_error(e))?;
        let spec = bundle_spec(Path::new("."));
        let sandbox = spec
            .as_ref()
            .and_then(sandbox_id)
            .unwrap_or_else(|| self.id.clone());
        ids::validate("container id", &self.id)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let dir = pod_dir(cfg, &self.namespace, &sandbox)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let owns_pod = sandbox == self.id || spec.as_ref().is_some_and(is_sandbox_container);
        if owns_pod {
            tracing::warn!(sandbox = %sandbox, "cleaning up after a dead shim: VM, mounts, pod directory");
            cleanup_dir(&dir);
        } else {
            PodShare::at(&dir).container(&self.id).remove();
        }
        let mut resp = DeleteResponse::new();
        resp.exit_status = 128 + libc::SIGKILL as u32;
        resp.exited_at = Some(Timestamp::now()).into();
        Ok(resp)
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let cfg = self.cfg.clone().unwrap_or_default();
        TaskService::new(cfg, &self.namespace, publisher, self.exit.clone())
    }
}
