//! hull-agent: PID 1 of a hull pod VM, serving the agent API over vsock; or, with
//! `--listen unix://…`, the same service on a host (for tests and development).
//! `hull-agent runtime …` is the internal helper that runs libcontainer.

mod cgroups;
mod config;
mod container;
mod debug_console;
mod error;
mod fault;
mod guest_stats;
mod helper;
mod init;
mod logging;
mod network;
mod process;
mod reaper;
mod reseed;
mod rpc;
mod sandbox;
mod server;
mod stdio;
mod storage;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use config::{AgentConfig, Mode};

#[derive(Debug, Parser)]
#[command(name = "hull-agent", version, about = "hull guest agent")]
struct Cli {
    /// ttrpc listen address: unix:///path/agent.sock or vsock://-1:1024.
    #[arg(long, default_value = "vsock://-1:1024")]
    listen: String,
    /// Container rootfs and bind sources must lie under this directory.
    #[arg(long, default_value = "/run/hull/shared")]
    shared_dir: PathBuf,
    /// Where the agent keeps bundles and runtime state.
    #[arg(long, default_value = "/run/hull/state")]
    state_dir: PathBuf,
    /// Log filter (tracing EnvFilter syntax); HULL_LOG overrides it.
    #[arg(long, default_value = "warn")]
    log: String,
    /// Print the agent API version this agent speaks and exit (the initrd build records
    /// it for `hull check`).
    #[arg(long)]
    api_version: bool,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Internal: run libcontainer for one create or exec.
    #[command(subcommand, hide = true)]
    Runtime(helper::RuntimeCmd),
}

fn main() -> ExitCode {
    if nix::unistd::getpid().as_raw() == 1 {
        guest_main()
    } else {
        let cli = Cli::parse();
        if cli.api_version {
            println!("{}", hull_protocols::API_VERSION);
            return ExitCode::SUCCESS;
        }
        if let Some(Cmd::Runtime(cmd)) = cli.command {
            return helper::run(cmd);
        }
        let cfg = AgentConfig {
            mode: Mode::Host,
            listen: cli.listen,
            shared_dir: cli.shared_dir,
            state_dir: cli.state_dir,
            log: cli.log,
            fault: None,
            boot_attempt: 1,
            debug_console: false,
        };
        logging::init(&cfg.log);
        // Containers outlive the helper that creates them; they must come back to us.
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            tracing::error!(error = %e, "cannot become a child subreaper");
            return ExitCode::FAILURE;
        }
        match run(cfg) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "hull-agent failed");
                ExitCode::FAILURE
            }
        }
    }
}

/// PID 1: any failure or panic ends the VM rather than leaving it hung.
fn guest_main() -> ! {
    // Not eprintln!: it panics when the write fails, and a panic in here aborts.
    std::panic::set_hook(Box::new(|info| {
        let _ = writeln!(std::io::stderr(), "hull-agent: panic: {info}");
        init::end_vm();
    }));
    let outcome = (|| -> anyhow::Result<()> {
        init::switch_root_once()?;
        init::mount_base_filesystems()?;
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        let cfg = AgentConfig::guest(&cmdline);
        logging::init(&cfg.log);
        if let Err(e) = init::enable_cgroup_controllers() {
            tracing::warn!(error = %format!("{e:#}"), "cgroup controllers not enabled");
        }
        if let Err(e) = init::loopback_up() {
            tracing::warn!(error = %format!("{e:#}"), "loopback not up");
        }
        run(cfg)
    })();
    if let Err(e) = outcome {
        let _ = writeln!(std::io::stderr(), "hull-agent: fatal: {e:#}");
    }
    init::end_vm()
}

fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(server::serve(cfg))
}
