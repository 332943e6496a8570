//! Builds the agent's services and serves them over ttrpc until DestroySandbox (or, on a
//! host, SIGTERM/SIGINT), then tears everything down.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hull_protocols::{agent_ttrpc, health_ttrpc};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Mutex, Notify};

use crate::cgroups::OomWatcher;
use crate::config::AgentConfig;
use crate::container::Containers;
use crate::reaper::Reaper;
use crate::rpc::agent::AgentService;
use crate::rpc::health::HealthService;
use crate::sandbox::Sandbox;

pub async fn serve(cfg: AgentConfig) -> anyhow::Result<()> {
    let reaper = Reaper::start().context("installing the SIGCHLD handler")?;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    std::fs::create_dir_all(&cfg.shared_dir)
        .with_context(|| format!("creating {}", cfg.shared_dir.display()))?;
    let sandbox = Arc::new(Sandbox::new(cfg.clone()));
    let (oom, oom_events) = OomWatcher::start();
    if cfg.debug_console && cfg.mode == crate::config::Mode::Guest {
        let busybox = cfg.shared_dir.join(crate::debug_console::TOOLS_IN_SHARE);
        if let Err(e) = crate::debug_console::start(reaper.clone(), busybox) {
            tracing::error!(error = %format!("{e:#}"), "cannot serve the debug console");
        }
    }
    let containers = Arc::new(Containers::new(cfg.clone(), reaper, sandbox.clone(), oom)?);
    let shutdown = Arc::new(Notify::new());
    let agent = Arc::new(AgentService {
        containers: containers.clone(),
        sandbox: sandbox.clone(),
        oom_events: Mutex::new(oom_events),
        shutdown: shutdown.clone(),
        fault: cfg.fault,
        shared_dir: cfg.shared_dir.clone(),
    });
    if let Some(f) = cfg.fault {
        tracing::warn!(fault = ?f, "misbehaving on purpose (hull.fault)");
    }
    if cfg.fault == Some(crate::config::Fault::SilentFirstBoot) && cfg.boot_attempt <= 1 {
        tracing::warn!("hull.fault silent-first-boot: this boot never answers");
        std::future::pending::<()>().await;
    }

    if let Some(path) = cfg.listen.strip_prefix("unix://") {
        let _ = std::fs::remove_file(path);
    }
    let mut server = ttrpc::r#async::Server::new()
        .bind(&cfg.listen)
        .with_context(|| format!("binding {}", cfg.listen))?
        .register_service(agent_ttrpc::create_agent_service(agent))
        .register_service(health_ttrpc::create_health(Arc::new(HealthService)));
    server.start().await.context("starting the ttrpc server")?;
    tracing::info!(listen = %cfg.listen, mode = ?cfg.mode, "hull-agent ready");
    if cfg.mode == crate::config::Mode::Guest {
        crate::init::signal_boot_timer();
        crate::init::report_boot_clock();
        // A blocking connect, off the runtime's threads.
        tokio::task::spawn_blocking(crate::init::announce_ready);
    }

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = shutdown.notified() => {
            // Let the DestroySandbox reply reach the shim before the listener goes.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    containers.remove_all().await;
    sandbox.destroy();
    // A graceful shutdown waits for the clients to hang up, and the shim keeps its
    // connection until the VM has ended: waiting here only delays that end (by the whole
    // timeout, every pod). The replies were sent above.
    let _ = tokio::time::timeout(Duration::from_millis(100), server.shutdown()).await;
    if let Some(path) = cfg.listen.strip_prefix("unix://") {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}
