//! `hull-vmm`: boots one microVM from a kernel and initrd and runs it until the guest
//! resets (exit 0), triple-faults (exit 2) or fails (exit 1).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hull_vmm::boot::DEFAULT_CMDLINE;
use hull_vmm::machine::{Boot, ExitReason, Machine, MachineConfig, VsockConfig};

#[derive(Debug, Parser)]
#[command(name = "hull-vmm", version, about = "hull's KVM microVM monitor")]
struct Cli {
    /// Guest kernel: ELF vmlinux or bzImage.
    #[arg(long)]
    kernel: PathBuf,
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel parameters, appended to hull's defaults.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    memory: u32,
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Serial console output file (default: stdout).
    #[arg(long)]
    serial_log: Option<PathBuf>,
    /// virtio-vsock's hybrid unix socket (host side of the guest's vsock).
    #[arg(long)]
    vsock_uds: Option<PathBuf>,
    /// The guest's vsock context id.
    #[arg(long, default_value_t = 3)]
    vsock_cid: u64,
}

fn main() -> ExitCode {
    hull_vmm::machine::process_start();
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("HULL_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let serial_out: Box<dyn Write + Send> = match &cli.serial_log {
        Some(p) => match OpenOptions::new().create(true).append(true).open(p) {
            Ok(f) => Box::new(f),
            Err(e) => {
                eprintln!("hull-vmm: opening {}: {e}", p.display());
                return ExitCode::FAILURE;
            }
        },
        None => Box::new(std::io::stdout()),
    };
    let cmdline = if cli.cmdline.is_empty() {
        DEFAULT_CMDLINE.to_string()
    } else {
        format!("{DEFAULT_CMDLINE} {}", cli.cmdline)
    };
    let cfg = MachineConfig {
        memory_mib: cli.memory,
        vcpus: cli.vcpus,
        boot: Boot::Linux {
            kernel: cli.kernel,
            initrd: cli.initrd,
            cmdline,
        },
        serial_out,
        vsock: cli.vsock_uds.map(|uds| VsockConfig {
            cid: cli.vsock_cid,
            uds,
        }),
    };
    match Machine::new(cfg).and_then(Machine::run) {
        Ok(ExitReason::Reset) => {
            eprintln!("hull-vmm: guest reset: VM ended");
            ExitCode::SUCCESS
        }
        Ok(ExitReason::Shutdown) => {
            eprintln!("hull-vmm: guest shut down (triple fault)");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("hull-vmm: {e:#}");
            ExitCode::FAILURE
        }
    }
}
