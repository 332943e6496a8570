//! The AgentService: container lifecycle, process IO, resources, sandbox and guest facts.

use std::sync::Arc;

use async_trait::async_trait;
use hull_protocols::agent::*;
use hull_protocols::agent_ttrpc;
use tokio::sync::{Mutex, Notify, mpsc};
use tracing::Instrument;
use ttrpc::r#async::TtrpcContext;

use crate::config::Fault;
use crate::container::{self, Containers, Status};
use crate::error::{AgentError, Result};
use crate::sandbox::Sandbox;

/// Largest single ReadStdout/ReadStderr reply.
const MAX_READ: usize = 1 << 20;

pub struct AgentService {
    pub containers: Arc<Containers>,
    pub sandbox: Arc<Sandbox>,
    pub oom_events: Mutex<mpsc::UnboundedReceiver<String>>,
    /// Notified once DestroySandbox has cleaned up; main then stops the agent.
    pub shutdown: Arc<Notify>,
    /// Deliberate misbehaviour for host-side tests (`hull.fault=`).
    pub fault: Option<Fault>,
    /// Where the pod's share is mounted (for `hull.fault=plant-share`).
    pub shared_dir: std::path::PathBuf,
}

impl AgentService {
    fn span(&self, rpc: &'static str, container: &str, exec: &str) -> tracing::Span {
        let sandbox = self.sandbox.id().unwrap_or_default();
        tracing::info_span!("rpc", rpc, sandbox = %sandbox, container = %container, exec = %exec)
    }

    async fn run<T>(
        &self,
        span: tracing::Span,
        fut: impl Future<Output = Result<T>>,
    ) -> ttrpc::Result<T> {
        async {
            let r = fut.await;
            if let Err(e) = &r {
                match e {
                    AgentError::Internal(_) => tracing::error!(error = %e, "request failed"),
                    _ => tracing::info!(error = %e, "request refused"),
                }
            }
            r.map_err(ttrpc::Error::from)
        }
        .instrument(span)
        .await
    }
}

impl AgentService {
    /// Network changes are for the pod VM's own links: an agent serving on a host
    /// (`--listen unix://`, for tests) must not touch the host's network.
    fn guest_network(&self) -> Result<()> {
        if self.sandbox.is_guest() {
            Ok(())
        } else {
            Err(AgentError::FailedPrecondition(
                "network changes are refused outside a pod VM".into(),
            ))
        }
    }
}

fn empty() -> Empty {
    Empty::new()
}

#[async_trait]
impl agent_ttrpc::AgentService for AgentService {
    async fn create_sandbox(
        &self,
        _c: &TtrpcContext,
        req: CreateSandboxRequest,
    ) -> ttrpc::Result<Empty> {
        let span = tracing::info_span!("rpc", rpc = "CreateSandbox", sandbox = %req.sandbox_id);
        self.run(span, async {
            if let Some(Fault::HangSandbox) = self.fault {
                tracing::warn!("fault: CreateSandbox never answers");
                std::future::pending::<()>().await;
            }
            self.sandbox.create(&req).map(|_| empty())
        })
        .await
    }

    async fn destroy_sandbox(
        &self,
        _c: &TtrpcContext,
        _req: DestroySandboxRequest,
    ) -> ttrpc::Result<Empty> {
        self.run(self.span("DestroySandbox", "", ""), async {
            self.containers.remove_all().await;
            self.sandbox.destroy();
            self.shutdown.notify_one();
            Ok(empty())
        })
        .await
    }

    async fn create_container(
        &self,
        _c: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.run(self.span("CreateContainer", &req.container_id, ""), async {
            match self.fault {
                Some(Fault::PlantShare) => {
                    crate::fault::plant_in_share(&self.shared_dir, &req.container_id)
                }
                Some(Fault::VsockFlood) => crate::fault::start_vsock_flood(),
                Some(Fault::HangCreate) => {
                    tracing::warn!("fault: CreateContainer never answers");
                    std::future::pending::<()>().await;
                }
                _ => {}
            }
            self.containers.create(&req).await.map(|_| empty())
        })
        .await
    }

    async fn start_container(
        &self,
        _c: &TtrpcContext,
        req: StartContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.run(self.span("StartContainer", &req.container_id, ""), async {
            self.containers
                .start(&req.container_id)
                .await
                .map(|_| empty())
        })
        .await
    }

    async fn remove_container(
        &self,
        _c: &TtrpcContext,
        req: RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.run(self.span("RemoveContainer", &req.container_id, ""), async {
            let t = container::remove_timeout(req.timeout);
            self.containers
                .remove(&req.container_id, t)
                .await
                .map(|_| empty())
        })
        .await
    }

    async fn exec_process(
        &self,
        _c: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> ttrpc::Result<Empty> {
        self.run(
            self.span("ExecProcess", &req.container_id, &req.exec_id),
            async { self.containers.exec(&req).await.map(|_| empty()) },
        )
        .await
    }

    async fn signal_process(
        &self,
        _c: &TtrpcContext,
        req: SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        self.run(
            self.span("SignalProcess", &req.container_id, &req.exec_id),
            async {
                match self.fault {
                    Some(Fault::HangSignals) => std::future::pending().await,
                    Some(Fault::IgnoreSignals) => Ok(empty()),
                    _ => self.containers.signal(&req).await.map(|_| empty()),
                }
            },
        )
        .await
    }

    async fn wait_process(
        &self,
        _c: &TtrpcContext,
        req: WaitProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        self.run(
            self.span("WaitProcess", &req.container_id, &req.exec_id),
            async {
                let p = self.containers.process(&req.container_id, &req.exec_id)?;
                let exit = p.wait().await;
                let mut r = WaitProcessResponse::new();
                r.status = exit.code;
                r.exited_at_ns = exit
                    .at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as i64)
                    .unwrap_or(0);
                Ok(r)
            },
        )
        .await
    }

    async fn list_processes(
        &self,
        _c: &TtrpcContext,
        req: ListProcessesRequest,
    ) -> ttrpc::Result<ListProcessesResponse> {
        self.run(self.span("ListProcesses", &req.container_id, ""), async {
            self.containers.list_processes(&req.container_id).await
        })
        .await
    }

    async fn container_state(
        &self,
        _c: &TtrpcContext,
        req: ContainerStateRequest,
    ) -> ttrpc::Result<ContainerStateResponse> {
        self.run(
            self.span("ContainerState", &req.container_id, &req.exec_id),
            async {
                use container_state_response::Status as S;
                let c = self.containers.get(&req.container_id)?;
                let p = c.process(&req.exec_id)?;
                let mut r = ContainerStateResponse::new();
                let exit = p.exit();
                r.status = match (exit, c.status()) {
                    (Some(_), _) => S::STOPPED,
                    (None, Status::Created) if req.exec_id.is_empty() => S::CREATED,
                    (None, Status::Paused) => S::PAUSED,
                    (None, Status::Stopped) => S::STOPPED,
                    (None, _) => S::RUNNING,
                }
                .into();
                r.pid = p.pid().unwrap_or(0) as u32;
                r.exit_status = exit.map(|e| e.code).unwrap_or(0);
                r.terminal = p.terminal;
                Ok(r)
            },
        )
        .await
    }

    async fn read_stdout(
        &self,
        _c: &TtrpcContext,
        req: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        self.run(
            self.span("ReadStdout", &req.container_id, &req.exec_id),
            async {
                let p = self.containers.process(&req.container_id, &req.exec_id)?;
                let mut r = ReadStreamResponse::new();
                r.data = p.read_stdout((req.len as usize).clamp(1, MAX_READ)).await?;
                Ok(r)
            },
        )
        .await
    }

    async fn read_stderr(
        &self,
        _c: &TtrpcContext,
        req: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        self.run(
            self.span("ReadStderr", &req.container_id, &req.exec_id),
            async {
                let p = self.containers.process(&req.container_id, &req.exec_id)?;
                let mut r = ReadStreamResponse::new();
                r.data = p.read_stderr((req.len as usize).clamp(1, MAX_READ)).await?;
                Ok(r)
            },
        )
        .await
    }

    async fn write_stdin(
        &self,
        _c: &TtrpcContext,
        req: WriteStreamRequest,
    ) -> ttrpc::Result<WriteStreamResponse> {
        self.run(
            self.span("WriteStdin", &req.container_id, &req.exec_id),
            async {
                let p = self.containers.process(&req.container_id, &req.exec_id)?;
                let mut r = WriteStreamResponse::new();
                r.len = p.write_stdin(&req.data).await? as u32;
                Ok(r)
            },
        )
        .await
    }

    async fn close_stdin(&self, _c: &TtrpcContext, req: CloseStdinRequest) -> ttrpc::Result<Empty> {
        self.run(
            self.span("CloseStdin", &req.container_id, &req.exec_id),
            async {
                let p = self.containers.process(&req.container_id, &req.exec_id)?;
                p.close_stdin().await.map(|_| empty())
            },
        )
        .await
    }

    async fn tty_win_resize(
        &self,
        _c: &TtrpcContext,
        req: TtyWinResizeRequest,
    ) -> ttrpc::Result<Empty> {
        self.run(
            self.span("TtyWinResize", &req.container_id, &req.exec_id),
            async {
                let p = self.containers.process(&req.container_id, &req.exec_id)?;
                let clamp = |v: u32| v.min(u16::MAX as u32) as u16;
                p.resize(clamp(req.rows), clamp(req.columns))
                    .map(|_| empty())
            },
        )
        .await
    }

    async fn update_container(
        &self,
        _c: &TtrpcContext,
        req: UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.run(self.span("UpdateContainer", &req.container_id, ""), async {
            self.containers.update(&req).await.map(|_| empty())
        })
        .await
    }

    async fn stats_container(
        &self,
        _c: &TtrpcContext,
        req: StatsContainerRequest,
    ) -> ttrpc::Result<StatsContainerResponse> {
        self.run(self.span("StatsContainer", &req.container_id, ""), async {
            self.containers.stats(&req.container_id).await
        })
        .await
    }

    async fn pause_container(
        &self,
        _c: &TtrpcContext,
        req: PauseContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.run(self.span("PauseContainer", &req.container_id, ""), async {
            self.containers
                .pause(&req.container_id)
                .await
                .map(|_| empty())
        })
        .await
    }

    async fn resume_container(
        &self,
        _c: &TtrpcContext,
        req: ResumeContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.run(self.span("ResumeContainer", &req.container_id, ""), async {
            self.containers
                .resume(&req.container_id)
                .await
                .map(|_| empty())
        })
        .await
    }

    async fn get_oom_event(
        &self,
        _c: &TtrpcContext,
        _req: GetOOMEventRequest,
    ) -> ttrpc::Result<OOMEvent> {
        self.run(self.span("GetOOMEvent", "", ""), async {
            let id = self.oom_events.lock().await.recv().await;
            let id =
                id.ok_or_else(|| AgentError::Internal(anyhow::anyhow!("OOM watcher stopped")))?;
            let mut ev = OOMEvent::new();
            ev.container_id = id;
            Ok(ev)
        })
        .await
    }

    async fn update_interface(
        &self,
        _c: &TtrpcContext,
        req: UpdateInterfaceRequest,
    ) -> ttrpc::Result<Interface> {
        self.run(self.span("UpdateInterface", "", ""), async {
            self.guest_network()?;
            crate::network::update_interface(&req.interface).await
        })
        .await
    }

    async fn update_routes(
        &self,
        _c: &TtrpcContext,
        req: UpdateRoutesRequest,
    ) -> ttrpc::Result<Routes> {
        self.run(self.span("UpdateRoutes", "", ""), async {
            self.guest_network()?;
            let mut r = Routes::new();
            r.routes = crate::network::update_routes(&req.routes).await?;
            Ok(r)
        })
        .await
    }

    async fn add_arp_neighbors(
        &self,
        _c: &TtrpcContext,
        req: AddARPNeighborsRequest,
    ) -> ttrpc::Result<Empty> {
        self.run(self.span("AddARPNeighbors", "", ""), async {
            self.guest_network()?;
            crate::network::add_neighbors(&req.neighbors)
                .await
                .map(|_| empty())
        })
        .await
    }

    async fn get_guest_details(
        &self,
        _c: &TtrpcContext,
        _req: GetGuestDetailsRequest,
    ) -> ttrpc::Result<GuestDetailsResponse> {
        self.run(self.span("GetGuestDetails", "", ""), async {
            let mut r = GuestDetailsResponse::new();
            r.kernel_release = nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default();
            let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
            r.mem_total_bytes =
                crate::guest_stats::meminfo_bytes(&meminfo, "MemTotal").unwrap_or(0);
            r.online_cpus = std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1);
            r.agent_version = env!("CARGO_PKG_VERSION").to_string();
            r.api_version = hull_protocols::API_VERSION.to_string();
            r.random_uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid")
                .map(|u| u.trim().to_string())
                .unwrap_or_default();
            r.hostname = nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok(r)
        })
        .await
    }

    async fn get_guest_stats(
        &self,
        _c: &TtrpcContext,
        _req: GetGuestStatsRequest,
    ) -> ttrpc::Result<GuestStatsResponse> {
        self.run(self.span("GetGuestStats", "", ""), async {
            Ok(crate::guest_stats::read())
        })
        .await
    }

    async fn reseed_guest(
        &self,
        _c: &TtrpcContext,
        req: ReseedGuestRequest,
    ) -> ttrpc::Result<Empty> {
        self.run(self.span("ReseedGuest", "", ""), async {
            crate::reseed::check(&req.entropy, &req.hostname, req.realtime_ns)?;
            if !self.sandbox.is_guest() {
                return Err(AgentError::FailedPrecondition(
                    "the kernel's randomness is reseeded only inside a pod VM".into(),
                ));
            }
            crate::reseed::apply(&req.entropy, &req.hostname, req.realtime_ns).map(|_| empty())
        })
        .await
    }
}
