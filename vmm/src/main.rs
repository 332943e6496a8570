//! `hull-vmm`: boots one microVM from a kernel and initrd (or restores one from a
//! snapshot, `--restore DIR`) and runs it until the guest resets or powers off (exit 0),
//! the API asks it to stop (exit 0), it triple-faults (exit 2), a thread breaks its
//! seccomp filter (exit 3), or it fails (exit 1).

// Guest values are u32/u64 and land in narrower fields: every narrowing is checked.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_lossless
)]

use std::fs::OpenOptions;
use std::io::{LineWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hull_vmm::boot::DEFAULT_CMDLINE;
use hull_vmm::config::{DEFAULT_MEMORY_MIB, DEFAULT_SERIAL_LOG_MAX, VmConfig};
use hull_vmm::devices::serial::BoundedWriter;
use hull_vmm::devices::virtio::block::DiskConfig;
use hull_vmm::devices::virtio::fs::FsConfig;
use hull_vmm::devices::virtio::net::NetConfig;
use hull_vmm::jail::{self, JailConfig};
use hull_vmm::machine::{
    Boot, DEFAULT_CID, Devices, ExitReason, Machine, MachineConfig, RestoreConfig, VsockConfig,
};

#[derive(Debug, Parser)]
#[command(name = "hull-vmm", version, about = "hull's KVM microVM monitor")]
struct Cli {
    /// The whole VM as JSON (same fields as the flags); excludes the other VM flags.
    #[arg(long, conflicts_with_all = ["kernel", "initrd", "cmdline", "memory", "vcpus",
        "vsock_uds", "disk", "fs_socket", "net", "serial_log", "api_sock"])]
    config: Option<PathBuf>,
    /// Guest kernel: ELF vmlinux or bzImage.
    #[arg(long, required_unless_present_any = ["config", "restore"])]
    kernel: Option<PathBuf>,
    /// Restore the VM from this snapshot directory (written by the API's `snapshot`)
    /// instead of booting: memory size, vCPUs and device state come from it; the host
    /// side of its devices (--vsock-uds, ...) from these flags.
    #[arg(long, conflicts_with_all = ["config", "kernel", "initrd", "cmdline", "memory", "vcpus"])]
    restore: Option<PathBuf>,
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel parameters, appended to hull's defaults.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = DEFAULT_MEMORY_MIB)]
    memory: u32,
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Serial console output file (default: stdout).
    #[arg(long)]
    serial_log: Option<PathBuf>,
    /// Bytes of console output kept in the serial log; the rest is discarded.
    #[arg(long, default_value_t = DEFAULT_SERIAL_LOG_MAX)]
    serial_log_max: u64,
    /// virtio-vsock's hybrid unix socket (host side of the guest's vsock).
    #[arg(long)]
    vsock_uds: Option<PathBuf>,
    /// The guest's vsock context id.
    #[arg(long, default_value_t = DEFAULT_CID)]
    vsock_cid: u64,
    /// A virtio-blk disk: PATH[,ro]. Repeatable; the guest sees vda, vdb, ...
    #[arg(long)]
    disk: Vec<DiskConfig>,
    /// A virtio-fs device served by a vhost-user daemon: SOCKET,TAG. Repeatable.
    #[arg(long)]
    fs_socket: Vec<FsConfig>,
    /// A virtio-net device on an inherited tap fd: tap-fd=N[,mac=MAC][,mtu=N][,vhost=auto|on|off]
    /// (auto: through /dev/vhost-net where it opens). Repeatable.
    #[arg(long)]
    net: Vec<NetConfig>,
    /// The API socket (JSON lines; `{"action":"shutdown"}` stops the VM).
    #[arg(long)]
    api_sock: Option<PathBuf>,
    /// Jail the VMM in this directory (new namespaces, pivot_root, --uid/--gid, no
    /// capabilities); its sockets and serial log must lie inside it.
    #[arg(long)]
    jail: Option<PathBuf>,
    /// A directory inside the jail that stays writable there (the jail is read-only
    /// otherwise): where the API can write snapshots.
    #[arg(long, requires = "jail")]
    jail_writable: Option<PathBuf>,
    /// The unprivileged uid the jailed VMM runs as.
    #[arg(long, default_value_t = 65534, requires = "jail")]
    uid: u32,
    /// The unprivileged gid the jailed VMM runs as.
    #[arg(long, default_value_t = 65534, requires = "jail")]
    gid: u32,
    /// Run without seccomp filters (debugging only).
    #[arg(long)]
    no_seccomp: bool,
}

impl Cli {
    fn vm_config(self) -> anyhow::Result<VmConfig> {
        if let Some(path) = &self.config {
            return Ok(VmConfig::from_file(path)?);
        }
        Ok(VmConfig {
            // A restore has no kernel to load (clap requires one otherwise).
            kernel: self.kernel.unwrap_or_default(),
            initrd: self.initrd,
            cmdline: self.cmdline,
            memory_mib: self.memory,
            vcpus: self.vcpus,
            vsock: self.vsock_uds.map(|uds| VsockConfig {
                uds,
                cid: self.vsock_cid,
            }),
            disks: self.disk,
            fs: self.fs_socket,
            net: self.net,
            serial_log: self.serial_log,
            serial_log_max: self.serial_log_max,
            jail: self.jail.map(|root| JailConfig {
                root,
                uid: self.uid,
                gid: self.gid,
                writable: self.jail_writable,
            }),
            api_sock: self.api_sock,
        })
    }
}

fn run(cfg: VmConfig, restore: Option<PathBuf>) -> anyhow::Result<ExitReason> {
    // The guest decides how much it prints: only the first serial_log_max bytes are kept.
    // The UART hands over one byte per guest exit; a line at a time reaches the file, so a
    // console line costs one write(2), not eighty.
    let serial_out: Box<dyn Write + Send> = match &cfg.serial_log {
        Some(p) => Box::new(LineWriter::new(BoundedWriter::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(p)
                .map_err(|e| anyhow::anyhow!("opening {}: {e}", p.display()))?,
            cfg.serial_log_max,
        ))),
        None => Box::new(LineWriter::new(BoundedWriter::new(
            std::io::stdout(),
            cfg.serial_log_max,
        ))),
    };
    let cmdline = if cfg.cmdline.is_empty() {
        DEFAULT_CMDLINE.to_string()
    } else {
        format!("{DEFAULT_CMDLINE} {}", cfg.cmdline)
    };
    let devices = Devices {
        vsock: cfg.vsock.clone(),
        disks: cfg.disks.clone(),
        fs: cfg.fs.clone(),
        nets: cfg.net.clone(),
    };
    let machine = match restore {
        Some(dir) => Machine::restore(RestoreConfig {
            dir,
            serial_out,
            devices,
        })?,
        None => Machine::new(MachineConfig {
            memory_mib: cfg.memory_mib,
            vcpus: cfg.vcpus,
            boot: Boot::Linux {
                kernel: cfg.kernel.clone(),
                initrd: cfg.initrd.clone(),
                cmdline,
            },
            serial_out,
            devices,
        })?,
    };
    if let Some(p) = &cfg.api_sock {
        hull_vmm::api::serve(p, machine.exit_sender(), Some(machine.control()))?;
    }
    if let Some(j) = &cfg.jail {
        // Everything is open; nothing of the host is needed from here on. The files it
        // may still write: the console log, and snapshots where a directory allows them.
        let mut max_file = cfg.serial_log_max;
        if j.writable.is_some() {
            max_file = max_file.max(machine.memory_bytes());
        }
        jail::confine(j, max_file.saturating_add(1 << 20))?;
    }
    Ok(machine.run()?)
}

/// Enters the jail's namespaces (forking: only the VMM child returns) and makes the
/// paths inside the jail relative to it, so they hold after the pivot.
fn enter_jail(mut cfg: VmConfig) -> anyhow::Result<VmConfig> {
    if let Some(w) = cfg.jail.as_mut().and_then(|j| j.writable.as_mut()) {
        *w = std::path::absolute(&*w)?;
    }
    let Some(j) = cfg.jail.clone() else {
        return Ok(cfg);
    };
    // The jail changes the working directory: paths given relative to the caller's first.
    if !cfg.kernel.as_os_str().is_empty() {
        // (A restore has none.)
        cfg.kernel = std::path::absolute(&cfg.kernel)?;
    }
    if let Some(i) = cfg.initrd.as_mut() {
        *i = std::path::absolute(&*i)?;
    }
    for d in &mut cfg.disks {
        d.path = std::path::absolute(&d.path)?;
    }
    jail::enter_namespaces(&j)?;
    if let Some(v) = cfg.vsock.as_mut() {
        v.uds = jail::inside(&j, &v.uds);
    }
    for p in [&mut cfg.api_sock, &mut cfg.serial_log]
        .into_iter()
        .flatten()
    {
        *p = jail::inside(&j, p);
    }
    Ok(cfg)
}

fn main() -> ExitCode {
    hull_vmm::machine::process_start();
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("HULL_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    if cli.no_seccomp {
        hull_vmm::seccomp::disable();
    } else if let Err(e) = hull_vmm::seccomp::install_sigsys_handler() {
        eprintln!("hull-vmm: installing the SIGSYS handler: {e}");
        return ExitCode::FAILURE;
    }
    // Before the jail changes the working directory.
    let restore = match cli.restore.as_deref().map(std::path::absolute).transpose() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hull-vmm: --restore: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli
        .vm_config()
        .and_then(enter_jail)
        .and_then(|cfg| run(cfg, restore))
    {
        Ok(ExitReason::Reset) => {
            eprintln!("hull-vmm: guest reset: VM ended");
            ExitCode::SUCCESS
        }
        Ok(ExitReason::ApiShutdown) => {
            eprintln!("hull-vmm: shut down through the API");
            ExitCode::SUCCESS
        }
        Ok(ExitReason::Shutdown) => {
            eprintln!("hull-vmm: guest shut down (triple fault)");
            ExitCode::from(2)
        }
        Err(e) => {
            // hull-vmm's errors carry their causes in their messages.
            eprintln!("hull-vmm: {e}");
            ExitCode::FAILURE
        }
    }
}
