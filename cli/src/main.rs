//! `hull`: the node operator's tool, and an OCI runtime. The operator's commands read
//! what the shim reads (the config, the host, the run directory) and talk to no daemon:
//! they work when containerd does not. The runc command set (create, start, run, exec,
//! state, kill, delete, list, pause, resume, ps, spec, features) is hull as an OCI runtime for
//! Podman and Docker (`oci`).

mod check;
mod console;
mod env;
mod logs;
mod monitor;
mod oci;
mod pods;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "hull",
    version,
    about = "Operate hull, the VM-isolated container runtime, on this node",
    after_help = "Examples:\n  hull check            can this host start pod VMs, and why not\n  hull check --strict   ... and fail on warnings too\n  hull env --json       the effective configuration and the backend `auto` picks\n  hull pods             the pod VMs running on this node\n  hull logs -f web-1    follow pod web-1's shim log\n  hull logs --console web-1   its VM's serial console\n  hull console web-1    a root shell in pod web-1's VM (needs debug_console = true)\n  hull console web-1 -- uname -r\n  hull monitor          every pod's metrics on http://127.0.0.1:8090/metrics, events on stdout"
)]
struct Cli {
    #[command(flatten)]
    global: oci::Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Checks each requirement for starting a pod VM: ✓, ! (works, with a caveat) or ✗
    /// with what to do. Exit status 0 only when a pod can start.
    Check {
        /// Fail on warnings too.
        #[arg(long)]
        strict: bool,
        /// One JSON object per requirement instead of lines of text.
        #[arg(long)]
        json: bool,
    },
    /// The effective configuration (file, defaults, environment) with the tools and the
    /// backend it resolves to here.
    Env {
        /// JSON instead of TOML.
        #[arg(long)]
        json: bool,
    },
    /// A pod's shim log, or its VM's serial console (guest kernel and agent).
    Logs {
        /// The pod's sandbox id (for `ctr run`, the container id).
        sandbox: String,
        /// The containerd namespace; by default the one that has the pod.
        #[arg(short, long)]
        namespace: Option<String>,
        /// The VM's serial console instead of the shim's log.
        #[arg(long)]
        console: bool,
        /// Keep printing what is appended, until the pod is removed.
        #[arg(short, long)]
        follow: bool,
    },
    /// The pod VMs in the run directory, read without containerd.
    Pods {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A shell, or the command after `--`, as root in a pod's VM (outside every
    /// container), through the agent's debug console. Only for pods booted with
    /// `debug_console = true`; the guest writes to this terminal unfiltered.
    Console {
        /// The pod's sandbox id (for `ctr run`, the container id).
        sandbox: String,
        /// The containerd namespace; by default the one that has the pod.
        #[arg(short, long)]
        namespace: Option<String>,
        /// The command and its arguments; a shell when empty.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Serves every pod's metrics, merged, as one Prometheus endpoint, and prints the
    /// pods' lifecycle events (boot, ready, oom, vm_died, shutdown, removed) as JSON lines.
    Monitor {
        /// Address of the HTTP endpoint (`GET /metrics`).
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: std::net::SocketAddr,
    },
    #[command(flatten)]
    Oci(oci::Command),
}

fn main() -> ExitCode {
    restore_default_sigpipe();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { strict, json } => Ok(check::run(strict, json)),
        Command::Env { json } => env::run(json).map(|()| ExitCode::SUCCESS),
        Command::Pods { json } => pods::run(json).map(|()| ExitCode::SUCCESS),
        Command::Logs {
            sandbox,
            namespace,
            console,
            follow,
        } => logs::run(&sandbox, namespace.as_deref(), console, follow).map(|()| ExitCode::SUCCESS),
        Command::Console {
            sandbox,
            namespace,
            command,
        } => console::run(&sandbox, namespace.as_deref(), &command),
        Command::Monitor { listen } => monitor::run(listen).map(|()| ExitCode::SUCCESS),
        Command::Oci(cmd) => return oci::run(&cli.global, cmd),
    };
    result.unwrap_or_else(|e| {
        eprintln!("hull: {e:#}");
        ExitCode::FAILURE
    })
}

/// Rust ignores SIGPIPE, so `hull features | head` would panic on the closed pipe;
/// a command-line tool should end quietly there, as runc and coreutils do.
fn restore_default_sigpipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: SIG_DFL installs no Rust handler, and this runs before any thread starts.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}
