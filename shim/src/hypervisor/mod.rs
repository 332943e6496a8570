//! Hypervisor backends that boot a pod VM, behind one trait: the pod needs a hybrid
//! vsock socket to reach the agent, the VM's processes (to clean up after a dead shim),
//! its exit, and its console. QEMU is the backend today; hull-vmm joins as `builtin`.

pub mod accel;
pub mod qemu;

use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Once;
use std::time::Duration;

use crate::config::{HullConfig, HypervisorKind};
use accel::Accel;
use qemu::{QemuConfig, QemuVm};

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
}

static TCG_NOTICE: Once = Once::new();

/// Boots `spec` with the backend `cfg` selects. Blocks until the VMM runs.
pub fn boot(cfg: &HullConfig, spec: VmSpec) -> anyhow::Result<Box<dyn Vm>> {
    match cfg.hypervisor {
        // `auto` will pick hull-vmm where KVM can run a stock guest once it lands.
        HypervisorKind::Auto | HypervisorKind::Qemu => {
            let (accel, why) = Accel::detect();
            if accel == Accel::Tcg {
                TCG_NOTICE.call_once(|| {
                    tracing::info!(
                        reason = why,
                        "no usable KVM: pod VMs run under QEMU TCG (slow)"
                    )
                });
            }
            let mut qc = QemuConfig::new(spec.kernel, spec.initrd, spec.run_dir, accel);
            for (slot, configured) in [
                (&mut qc.qemu, &cfg.qemu),
                (&mut qc.virtiofsd, &cfg.virtiofsd),
                (&mut qc.vhost_vsock, &cfg.vhost_device_vsock),
            ] {
                if !configured.as_os_str().is_empty() {
                    *slot = configured.clone();
                }
            }
            qc.vcpus = spec.vcpus;
            qc.memory_mib = spec.memory_mib;
            qc.cmdline_extra = spec.cmdline_extra;
            qc.shared_dir = Some(spec.shared_dir);
            Ok(Box::new(QemuVm::start(qc)?))
        }
    }
}
