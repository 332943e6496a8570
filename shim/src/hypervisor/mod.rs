//! Hypervisor backends that boot a pod VM, behind one trait: the pod needs a hybrid
//! vsock socket to reach the agent, the VM's processes (to clean up after a dead shim),
//! its exit, and its console. Two backends: `builtin` (hull-vmm, on hardware KVM) and
//! `qemu` (KVM or TCG); `auto` picks hull-vmm wherever KVM can run a stock guest.

pub mod accel;
pub mod builtin;
pub mod qemu;
pub mod vmm_api;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::Once;
use std::time::Duration;

use crate::config::{HullConfig, HypervisorKind};
use crate::daemon::{Daemon, Role, join_cgroup};
use crate::vm_cgroup::{Limits, VmCgroup};

/// The VM's hybrid-vsock socket in its run directory (`<pod dir>/vm/`), on both backends.
pub const VSOCK_SOCKET: &str = "vm.vsock";
use accel::Accel;
use builtin::{BuiltinConfig, BuiltinVm};
use qemu::{QemuConfig, QemuVm};

/// virtio-fs tag of the pod's share directory; the agent mounts it at its shared dir.
pub const SHARED_FS_TAG: &str = "hullShared";
/// The guest's vsock context id (any value ≥ 3; each VM has its own vsock device).
pub const GUEST_CID: u32 = 3;
/// virtiofsd's vhost-user socket in the VM's run directory.
pub const VIRTIOFSD_SOCKET: &str = "fs.vhost";

const DAEMON_SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// A running pod VM, whatever boots it.
pub trait Vm: Send {
    /// The host end of the VM's hybrid vsock (`CONNECT <port>` protocol).
    fn vsock_uds(&self) -> PathBuf;
    /// Every host process of the VM (VMM and its device daemons).
    fn pids(&self) -> Vec<u32>;
    /// Waits up to `timeout` (zero: only checks) for the VMM to exit.
    fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>>;
    /// The guest's serial console so far.
    fn console(&self) -> String;
    /// Console and process logs, for a failure report.
    fn diagnostics(&self) -> String;
}

/// A pod VM to boot, in the backends' common terms.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Appended to hull's kernel parameters.
    pub cmdline_extra: String,
    /// Sockets and logs; must exist.
    pub run_dir: PathBuf,
    /// Exported to the guest over virtio-fs.
    pub shared_dir: PathBuf,
    /// Bytes each log of the VM (console, VMM, daemons) may hold.
    pub log_max_bytes: u64,
    /// The pod's NICs (see `network`); empty: loopback only.
    pub nics: Vec<crate::network::Nic>,
}

static BACKEND_NOTICE: Once = Once::new();

/// The backend `kind` resolves to on this host, with the reason for `auto`'s choice.
pub fn resolve(kind: HypervisorKind) -> (HypervisorKind, Accel, &'static str) {
    let (accel, why) = Accel::detect();
    match kind {
        HypervisorKind::Auto if accel == Accel::Kvm => (
            HypervisorKind::Builtin,
            accel,
            "KVM runs stock guests: hull-vmm",
        ),
        HypervisorKind::Auto => (HypervisorKind::Qemu, accel, why),
        other => (other, accel, why),
    }
}

/// Boots `spec` with the backend `cfg` selects. Blocks until the VMM runs.
pub fn boot(cfg: &HullConfig, spec: VmSpec) -> anyhow::Result<Box<dyn Vm>> {
    boot_with(cfg, spec, None)
}

/// `boot`, where hull-vmm may write snapshots into `snapshot_dir` (in its run directory).
pub fn boot_with(
    cfg: &HullConfig,
    spec: VmSpec,
    snapshot_dir: Option<PathBuf>,
) -> anyhow::Result<Box<dyn Vm>> {
    let (kind, accel, why) = resolve(cfg.hypervisor);
    BACKEND_NOTICE.call_once(|| {
        if kind == HypervisorKind::Qemu && accel == Accel::Tcg {
            tracing::info!(
                reason = why,
                "no usable KVM: pod VMs run under QEMU TCG (slow)"
            );
        } else {
            tracing::info!(backend = ?kind, reason = why, "pod VM backend");
        }
    });
    let cgroup = vm_cgroup_for(&spec, accel);
    match kind {
        HypervisorKind::Builtin => {
            if accel != Accel::Kvm {
                anyhow::bail!("hypervisor \"builtin\" needs hardware KVM, and {why}");
            }
            let mut bc = builtin_config(cfg, spec);
            bc.snapshot_dir = snapshot_dir;
            Ok(Box::new(BuiltinVm::start(bc, cgroup)?))
        }
        HypervisorKind::Auto | HypervisorKind::Qemu => {
            let mut qc = QemuConfig::new(spec.kernel, spec.initrd, spec.run_dir, accel);
            use_configured_tools([
                (&mut qc.qemu, &cfg.qemu),
                (&mut qc.virtiofsd, &cfg.virtiofsd),
                (&mut qc.vhost_vsock, &cfg.vhost_device_vsock),
            ]);
            qc.vcpus = spec.vcpus;
            qc.memory_mib = spec.memory_mib;
            qc.cmdline_extra = spec.cmdline_extra;
            qc.shared_dir = Some(spec.shared_dir);
            qc.log_max_bytes = spec.log_max_bytes;
            qc.nics = spec.nics;
            qc.vhost_net = cfg.vhost_net;
            Ok(Box::new(QemuVm::start(qc, cgroup)?))
        }
    }
}

/// Restores `spec`'s VM from the template snapshot in `snapshot` (hull-vmm only: see
/// `template`). Blocks until the VMM runs.
pub fn restore(cfg: &HullConfig, spec: VmSpec, snapshot: &Path) -> anyhow::Result<Box<dyn Vm>> {
    let (kind, accel, why) = resolve(cfg.hypervisor);
    if kind != HypervisorKind::Builtin || accel != Accel::Kvm {
        anyhow::bail!("pod VM templates need hull-vmm on hardware KVM, and {why}");
    }
    let cgroup = vm_cgroup_for(&spec, accel);
    let mut bc = builtin_config(cfg, spec);
    bc.restore_from = Some(snapshot.to_path_buf());
    Ok(Box::new(BuiltinVm::start(bc, cgroup)?))
}

/// hull-vmm's settings for `spec` from hull.toml.
pub fn builtin_config(cfg: &HullConfig, spec: VmSpec) -> BuiltinConfig {
    let mut bc = BuiltinConfig::new(spec);
    bc.jail = cfg.jail_vmm.then_some((cfg.vmm_uid, cfg.vmm_gid));
    bc.vhost_net = cfg.vhost_net;
    use_configured_tools([
        (&mut bc.hull_vmm, &cfg.hull_vmm),
        (&mut bc.virtiofsd, &cfg.virtiofsd),
    ]);
    bc
}

/// The VM's cgroup (see `vm_cgroup`), named for its pod directory (the run dir's parent).
/// A host where it cannot be made (no cgroup fs, no memory controller) runs the VM without
/// one, and says so once.
fn vm_cgroup_for(spec: &VmSpec, accel: Accel) -> Option<VmCgroup> {
    static WARNED: Once = Once::new();
    let pod_dir = spec.run_dir.parent().unwrap_or(&spec.run_dir);
    let limits = Limits {
        memory_bytes: crate::vm_cgroup::memory_limit(spec.memory_mib, accel == Accel::Tcg),
        pids: crate::vm_cgroup::PIDS_MAX,
    };
    match VmCgroup::create(&crate::vm_cgroup::name_for(pod_dir), limits) {
        Ok(c) => Some(c),
        Err(e) => {
            WARNED.call_once(|| {
                tracing::warn!(error = %format!("{e:#}"), "pod VMs run without a cgroup of their own");
            });
            None
        }
    }
}

/// Replaces each looked-up tool path with the configured one, where the config names one.
fn use_configured_tools<const N: usize>(tools: [(&mut PathBuf, &PathBuf); N]) {
    for (slot, configured) in tools {
        if !configured.as_os_str().is_empty() {
            *slot = configured.clone();
        }
    }
}

/// The programs backend `kind` runs, by name, from where the shim takes them (the
/// config's path, else `find_tool`): what `hull check` and `hull env` report.
pub fn tools_for(cfg: &HullConfig, kind: HypervisorKind) -> Vec<(&'static str, PathBuf)> {
    let pick = |configured: &PathBuf, name: &'static str| {
        let path = if configured.as_os_str().is_empty() {
            find_tool(name)
        } else {
            configured.clone()
        };
        (name, path)
    };
    match kind {
        HypervisorKind::Builtin => vec![
            pick(&cfg.hull_vmm, "hull-vmm"),
            pick(&cfg.virtiofsd, "virtiofsd"),
        ],
        HypervisorKind::Auto | HypervisorKind::Qemu => vec![
            pick(&cfg.qemu, "qemu-system-x86_64"),
            pick(&cfg.virtiofsd, "virtiofsd"),
            pick(&cfg.vhost_device_vsock, "vhost-device-vsock"),
        ],
    }
}

/// A tool's path: beside this executable (an installed hull keeps its binaries together),
/// on PATH, or in ~/.cargo/bin; the bare name if none has it.
pub fn find_tool(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(dir);
    }
    if let Some(p) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// A failure report: the console's last 40 lines, then each process log by name (already
/// cut to its tail, `Daemon::log_tail`). The guest writes the console: each line is
/// clipped (`clip_line`), so what it puts in a report, a log line or an error stays small.
pub fn diagnostics_report(console: &str, logs: &[(&str, String)]) -> String {
    let mut out = format!("--- console ---\n{}", last_lines(console, 40));
    for (name, log) in logs {
        out.push_str(&format!("\n--- {name} ---\n{log}"));
    }
    out
}

/// A log the guest can write into (its console, a daemon's output) as text: bytes that
/// are not UTF-8 are replaced rather than making the whole log unreadable.
pub fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `n` lines of `text`, each clipped.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| clip_line(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Longest line of guest output quoted in a report or a log line.
pub const MAX_QUOTED_LINE: usize = 240;

/// `line` cut to `MAX_QUOTED_LINE` bytes (at a character boundary), marked when cut.
pub fn clip_line(line: &str) -> std::borrow::Cow<'_, str> {
    if line.len() <= MAX_QUOTED_LINE {
        return line.into();
    }
    let mut end = MAX_QUOTED_LINE;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end]).into()
}

/// Starts virtiofsd exporting `dir` on `run_dir`/fs.vhost and waits for its socket.
pub fn spawn_virtiofsd(
    bin: &Path,
    dir: &Path,
    run_dir: &Path,
    log_max: u64,
    cgroup: Option<&VmCgroup>,
) -> anyhow::Result<Daemon> {
    let sock = run_dir.join(VIRTIOFSD_SOCKET);
    let mut cmd = Command::new(bin);
    cmd.arg("--socket-path")
        .arg(&sock)
        .arg("--shared-dir")
        .arg(dir)
        .args([
            "--cache",
            "never",
            "--announce-submounts",
            "--log-level",
            "error",
        ]);
    if let Some(cg) = cgroup {
        join_cgroup(&mut cmd, cg);
    }
    let mut d = Daemon::spawn("virtiofsd", Role::Backend, cmd, run_dir, log_max)?;
    d.wait_for_socket(&sock, DAEMON_SOCKET_TIMEOUT)?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the guest writes on its console reaches a report bounded: 40 lines of at
    /// most `MAX_QUOTED_LINE` bytes each, however long its lines.
    #[test]
    fn a_report_quotes_the_guest_bounded() {
        let long = "é".repeat(10_000);
        let console = format!("{long}\n").repeat(100);
        let report = diagnostics_report(&console, &[("vmm", last_lines(&long, 20))]);
        assert!(
            report.len() < 41 * (MAX_QUOTED_LINE + 8) + 200,
            "{}",
            report.len()
        );
        assert_eq!(report.lines().filter(|l| l.ends_with('…')).count(), 41);
        assert_eq!(clip_line("short"), "short");
    }

    /// A console with bytes that are not UTF-8 still reads: its other lines stay.
    #[test]
    fn a_console_that_is_not_utf8_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        std::fs::write(&path, b"booting\n\xff\xfe junk\nagent ready\n").unwrap();
        let text = read_lossy(&path);
        assert!(text.starts_with("booting\n") && text.ends_with("agent ready\n"));
    }
}
