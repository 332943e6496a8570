//! `/etc/hull/config.toml` (or `$HULL_CONFIG`): what the shim boots and how. Every key is
//! optional; `config/hull.toml` in the repository is the commented reference.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

pub const DEFAULT_PATH: &str = "/etc/hull/config.toml";
/// Default bound of each pod log (console, VMM, daemons), in KiB.
pub const DEFAULT_LOG_MAX_KIB: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HypervisorKind {
    /// hull-vmm where /dev/kvm runs a stock guest, QEMU otherwise.
    Auto,
    /// hull-vmm (needs hardware KVM).
    Builtin,
    /// QEMU, with KVM where usable and TCG otherwise.
    Qemu,
}

/// Whether pod NICs move frames through the kernel's `/dev/vhost-net`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VhostNet {
    /// Where `/dev/vhost-net` opens (QEMU: and KVM runs the VM); the VMM's own otherwise.
    #[default]
    Auto,
    /// Always; a host without it cannot start pods with a network.
    On,
    /// Never: the VMM moves the frames.
    Off,
}

impl VhostNet {
    pub fn as_str(self) -> &'static str {
        match self {
            VhostNet::Auto => "auto",
            VhostNet::On => "on",
            VhostNet::Off => "off",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HullConfig {
    pub hypervisor: HypervisorKind,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Appended to hull's kernel command line.
    pub kernel_params: String,
    /// Empty: looked up beside the shim, on PATH, and in ~/.cargo/bin.
    pub hull_vmm: PathBuf,
    pub qemu: PathBuf,
    pub virtiofsd: PathBuf,
    pub vhost_device_vsock: PathBuf,
    /// tracing filter for the shim; the agent's comes from `kernel_params` (`hull.log=`).
    pub log_level: String,
    /// Seconds a new VM's agent may take to answer, counted from its VMM's start;
    /// 0: by accelerator (`BOOT_TIMEOUT_KVM_S` or `BOOT_TIMEOUT_TCG_S`).
    pub boot_timeout_s: u64,
    /// Pod VMs booting at once on this host, all shims together; 0: by accelerator
    /// (per core: `BOOTS_PER_CORE_KVM` or `BOOTS_PER_CORE_TCG`).
    pub max_parallel_boots: u32,
    /// Seconds a pod may wait for a boot slot before it fails.
    pub admission_timeout_s: u64,
    /// Seconds any request/answer agent call may take before it fails; a process that
    /// outlives a SIGKILL by this long gets its pod VM killed.
    pub agent_timeout_s: u64,
    /// Seconds DestroySandbox and the VM's exit may take before the VM is killed.
    pub shutdown_timeout_s: u64,
    /// Per-pod directories (sockets, logs, the virtio-fs share).
    pub run_dir: PathBuf,
    /// Jail hull-vmm (own namespaces, pivot_root into the VM's run directory, no
    /// capabilities) as `vmm_uid`:`vmm_gid`. Only for the builtin backend.
    pub jail_vmm: bool,
    pub vmm_uid: u32,
    pub vmm_gid: u32,
    /// The NICs' data path.
    pub vhost_net: VhostNet,
    /// KiB each pod log (console, VMM, daemons) may hold; output past it is discarded.
    pub log_max_kib: u64,
    /// Serve the agent's debug console (`hull console`): a root shell in every pod VM
    /// for whoever is root on this host. Off in production.
    pub debug_console: bool,
    /// The static busybox the console's tools come from (copied into each pod's share).
    pub debug_console_busybox: PathBuf,
    /// Start pods from pre-booted VM templates (hull-vmm only; see `template`).
    pub template: bool,
}

impl Default for HullConfig {
    fn default() -> Self {
        HullConfig {
            hypervisor: HypervisorKind::Auto,
            kernel: PathBuf::from("/usr/local/share/hull/vmlinux"),
            initrd: PathBuf::from("/usr/local/share/hull/initrd.img"),
            vcpus: 1,
            memory_mib: 256,
            kernel_params: String::new(),
            hull_vmm: PathBuf::new(),
            qemu: PathBuf::new(),
            virtiofsd: PathBuf::new(),
            vhost_device_vsock: PathBuf::new(),
            log_level: "info".into(),
            boot_timeout_s: 0,
            max_parallel_boots: 0,
            admission_timeout_s: 300,
            agent_timeout_s: 30,
            shutdown_timeout_s: 10,
            run_dir: PathBuf::from("/run/hull"),
            log_max_kib: DEFAULT_LOG_MAX_KIB,
            jail_vmm: true,
            vmm_uid: 65534,
            vmm_gid: 65534,
            vhost_net: VhostNet::Auto,
            debug_console: false,
            debug_console_busybox: PathBuf::from("/bin/busybox"),
            template: false,
        }
    }
}

/// Boot deadlines when `boot_timeout_s` is 0. A KVM guest is at its agent in well under a
/// second; TCG emulates every instruction, tens of times slower, and slower still on a
/// loaded host.
pub const BOOT_TIMEOUT_KVM_S: u64 = 30;
pub const BOOT_TIMEOUT_TCG_S: u64 = 120;
/// Boot slots per host core when `max_parallel_boots` is 0: a TCG boot keeps a core busy
/// throughout, a KVM boot mostly waits.
pub const BOOTS_PER_CORE_KVM: usize = 4;
pub const BOOTS_PER_CORE_TCG: usize = 1;

impl HullConfig {
    /// The boot deadline for a VM on `accel` (see `boot_timeout_s`).
    pub fn boot_timeout(&self, tcg: bool) -> std::time::Duration {
        let s = match (self.boot_timeout_s, tcg) {
            (0, false) => BOOT_TIMEOUT_KVM_S,
            (0, true) => BOOT_TIMEOUT_TCG_S,
            (s, _) => s,
        };
        std::time::Duration::from_secs(s)
    }

    /// How many VMs may boot at once on this host (see `max_parallel_boots`).
    pub fn parallel_boots(&self, tcg: bool) -> usize {
        if self.max_parallel_boots > 0 {
            return self.max_parallel_boots as usize;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        cores
            * if tcg {
                BOOTS_PER_CORE_TCG
            } else {
                BOOTS_PER_CORE_KVM
            }
    }

    /// `$HULL_CONFIG`, else `/etc/hull/config.toml`; a missing default file means defaults.
    pub fn load() -> anyhow::Result<HullConfig> {
        match Source::current() {
            Source::Env(p) | Source::File(p) => Self::from_file(&p),
            Source::Defaults => Ok(HullConfig::default()),
        }
    }

    pub fn from_file(path: &Path) -> anyhow::Result<HullConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let c: HullConfig =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if c.vcpus == 0 || c.memory_mib < 64 {
            anyhow::bail!("{}: vcpus must be ≥ 1 and memory_mib ≥ 64", path.display());
        }
        if c.jail_vmm && (c.vmm_uid == 0 || c.vmm_gid == 0) {
            anyhow::bail!("{}: vmm_uid and vmm_gid must not be 0", path.display());
        }
        if c.agent_timeout_s == 0 {
            anyhow::bail!("{}: agent_timeout_s must be ≥ 1", path.display());
        }
        if c.template && c.hypervisor == HypervisorKind::Qemu {
            anyhow::bail!(
                "{}: template = true needs hull-vmm (hypervisor \"builtin\" or \"auto\" on a host \
                 with KVM), not QEMU",
                path.display()
            );
        }
        Ok(c)
    }
}

/// Where `HullConfig::load` reads the configuration from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The file `$HULL_CONFIG` names.
    Env(PathBuf),
    /// `/etc/hull/config.toml`.
    File(PathBuf),
    /// No file: the defaults.
    Defaults,
}

impl Source {
    pub fn current() -> Source {
        match std::env::var_os("HULL_CONFIG") {
            Some(p) => Source::Env(p.into()),
            None if Path::new(DEFAULT_PATH).exists() => Source::File(DEFAULT_PATH.into()),
            None => Source::Defaults,
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Env(p) => write!(f, "{} ($HULL_CONFIG)", p.display()),
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Defaults => write!(f, "the defaults (no {DEFAULT_PATH})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_config_parses_and_typos_are_refused() {
        let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/hull.toml");
        let c = HullConfig::from_file(&reference).unwrap();
        assert_eq!(c.hypervisor, HypervisorKind::Auto);
        let d = tempfile::tempdir().unwrap();
        let bad = d.path().join("c.toml");
        std::fs::write(&bad, "memroy_mib = 512\n").unwrap();
        assert!(
            HullConfig::from_file(&bad)
                .unwrap_err()
                .to_string()
                .contains("parsing")
        );
        std::fs::write(&bad, "vcpus = 0\n").unwrap();
        assert!(HullConfig::from_file(&bad).is_err());
        std::fs::write(&bad, "hypervisor = \"qemu\"\ntemplate = true\n").unwrap();
        let e = HullConfig::from_file(&bad).unwrap_err().to_string();
        assert!(e.contains("template = true needs hull-vmm"), "{e}");
    }
}
