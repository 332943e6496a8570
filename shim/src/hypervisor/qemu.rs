//! Boots a pod VM with QEMU: `-M microvm`, memfd-backed guest RAM (shared with the
//! vhost-user daemons), the guest kernel (PVH vmlinux) and initrd, serial console to a
//! log, vsock through vhost-device-vsock (hybrid unix socket on the host) and the pod's
//! share directory through virtiofsd as virtio-fs tag `hullShared`.
//! The three processes live and die together: dropping the VM kills and reaps them all.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::{Context, bail};

use super::accel::{Accel, host_tsc_khz};
use super::{
    DAEMON_SOCKET_TIMEOUT, VIRTIOFSD_SOCKET, Vm, diagnostics_report, find_tool, spawn_virtiofsd,
};
use crate::config::VhostNet;
use crate::daemon::{CONSOLE_LOG, Daemon, PASSED_FD_BASE, Role, join_cgroup, pass_fds};
use crate::network::Nic;
use crate::vm_cgroup::VmCgroup;

pub use super::{GUEST_CID, SHARED_FS_TAG};

#[derive(Debug, Clone)]
pub struct QemuConfig {
    pub qemu: PathBuf,
    pub vhost_vsock: PathBuf,
    pub virtiofsd: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Appended to hull's own kernel parameters.
    pub cmdline_extra: String,
    pub accel: Accel,
    /// Sockets and logs of this VM; must exist.
    pub run_dir: PathBuf,
    /// Exported to the guest over virtio-fs, if set.
    pub shared_dir: Option<PathBuf>,
    /// Bytes each log (console, QEMU, daemons) may hold.
    pub log_max_bytes: u64,
    /// The pod's NICs: taps whose fds QEMU inherits.
    pub nics: Vec<Nic>,
    pub vhost_net: VhostNet,
}

impl QemuConfig {
    /// Defaults for the tools' locations (`PATH`, then ~/.cargo/bin) and a 1-vCPU,
    /// 256 MiB VM on `accel` (see `Accel::detect`).
    pub fn new(kernel: PathBuf, initrd: PathBuf, run_dir: PathBuf, accel: Accel) -> QemuConfig {
        QemuConfig {
            qemu: find_tool("qemu-system-x86_64"),
            vhost_vsock: find_tool("vhost-device-vsock"),
            virtiofsd: find_tool("virtiofsd"),
            kernel,
            initrd,
            vcpus: 1,
            memory_mib: 256,
            cmdline_extra: String::new(),
            accel,
            run_dir,
            shared_dir: None,
            log_max_bytes: crate::config::DEFAULT_LOG_MAX_KIB * 1024,
            nics: Vec::new(),
            vhost_net: VhostNet::Auto,
        }
    }

    pub fn vsock_uds(&self) -> PathBuf {
        self.run_dir.join(super::VSOCK_SOCKET)
    }

    pub fn serial_log(&self) -> PathBuf {
        self.run_dir.join(CONSOLE_LOG)
    }

    /// hull's kernel command line for this VM.
    pub fn kernel_cmdline(&self) -> String {
        // reboot=t: microvm has no i8042; a triple fault resets at once, and the reset
        // ends QEMU (-no-reboot).
        let mut c = String::from("console=ttyS0 reboot=t panic=-1 quiet");
        if self.accel == Accel::Tcg
            && let Some(khz) = host_tsc_khz()
        {
            c.push_str(&format!(" tsc_early_khz={khz}"));
        }
        if !self.cmdline_extra.is_empty() {
            c.push(' ');
            c.push_str(&self.cmdline_extra);
        }
        c
    }

    pub fn qemu_args(&self) -> Vec<String> {
        let mem = format!("{}M", self.memory_mib);
        let cpu = match self.accel {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        };
        let mut a: Vec<String> = [
            // acpi=off: this kernel can't load microvm's ACPI tables; without ACPI QEMU
            // lists the virtio-mmio devices on the kernel cmdline instead.
            "-M",
            "microvm,memory-backend=mem,rtc=on,acpi=off",
            "-accel",
            self.accel.qemu_name(),
            "-cpu",
            cpu,
            "-smp",
            &self.vcpus.to_string(),
            "-m",
            &mem,
            "-object",
            &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            // The console is QEMU's stdout, which the shim copies into a bounded log.
            "-serial",
            "stdio",
            "-kernel",
            &self.kernel.to_string_lossy(),
            "-initrd",
            &self.initrd.to_string_lossy(),
            "-append",
            &self.kernel_cmdline(),
            // vhost-user devices on microvm need modern virtio-mmio.
            "-global",
            "virtio-mmio.force-legacy=off",
            "-chardev",
            &format!(
                "socket,id=vsock,path={}",
                self.run_dir.join("vsock.vhost").display()
            ),
            "-device",
            "vhost-user-vsock-device,chardev=vsock",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if self.shared_dir.is_some() {
            a.extend([
                "-chardev".to_string(),
                format!(
                    "socket,id=fs,path={}",
                    self.run_dir.join(VIRTIOFSD_SOCKET).display()
                ),
                "-device".to_string(),
                format!("vhost-user-fs-device,chardev=fs,tag={SHARED_FS_TAG}"),
            ]);
        }
        // The in-kernel data path needs KVM's ioeventfds; under TCG QEMU moves the frames.
        let vhost = match self.vhost_net {
            VhostNet::Auto => {
                self.accel == Accel::Kvm && std::path::Path::new("/dev/vhost-net").exists()
            }
            VhostNet::On => true,
            VhostNet::Off => false,
        };
        for (i, nic) in self.nics.iter().enumerate() {
            a.extend([
                "-netdev".to_string(),
                format!(
                    "tap,id=net{i},fd={}{}",
                    PASSED_FD_BASE + i as i32,
                    if vhost { ",vhost=on" } else { "" }
                ),
                "-device".to_string(),
                format!(
                    "virtio-net-device,netdev=net{i},mac={},host_mtu={}",
                    nic.link.mac_string(),
                    nic.link.mtu
                ),
            ]);
        }
        a
    }
}

pub struct QemuVm {
    pub config: QemuConfig,
    // Field order is drop order: QEMU goes first, then its backends.
    qemu: Daemon,
    _fs: Option<Daemon>,
    _vsock: Daemon,
    /// Last: removed once the processes in it are gone.
    _cgroup: Option<VmCgroup>,
}

impl QemuVm {
    pub fn start(config: QemuConfig, cgroup: Option<VmCgroup>) -> anyhow::Result<QemuVm> {
        for (what, p) in [("kernel", &config.kernel), ("initrd", &config.initrd)] {
            if !p.is_file() {
                bail!("{what} {} does not exist (run `make guest`)", p.display());
            }
        }
        let run = &config.run_dir;
        let vhost_vsock = run.join("vsock.vhost");
        let mut vsock_cmd = Command::new(&config.vhost_vsock);
        vsock_cmd
            .arg("--guest-cid")
            .arg(GUEST_CID.to_string())
            .arg("--socket")
            .arg(&vhost_vsock)
            .arg("--uds-path")
            .arg(config.vsock_uds());
        let log_max = config.log_max_bytes;
        if let Some(cg) = &cgroup {
            join_cgroup(&mut vsock_cmd, cg);
        }
        let mut vsock =
            Daemon::spawn("vhost-device-vsock", Role::Backend, vsock_cmd, run, log_max)?;
        vsock.wait_for_socket(&vhost_vsock, DAEMON_SOCKET_TIMEOUT)?;

        let fs = match &config.shared_dir {
            Some(dir) => Some(spawn_virtiofsd(
                &config.virtiofsd,
                dir,
                run,
                log_max,
                cgroup.as_ref(),
            )?),
            None => None,
        };

        let mut cmd = Command::new(&config.qemu);
        cmd.args(config.qemu_args());
        let taps: Vec<_> = config.nics.iter().map(|n| n.tap.as_raw_fd()).collect();
        pass_fds(&mut cmd, &taps)?;
        if let Some(cg) = &cgroup {
            join_cgroup(&mut cmd, cg);
        }
        let qemu = Daemon::spawn_with_console("qemu", Role::Vmm, cmd, run, log_max)
            .context("starting the VM")?;
        tracing::info!(accel = ?config.accel, pid = qemu.pid(), "pod VM started");
        Ok(QemuVm {
            config,
            qemu,
            _fs: fs,
            _vsock: vsock,
            _cgroup: cgroup,
        })
    }

    pub fn qemu_pid(&self) -> Option<u32> {
        self.qemu.pid()
    }

    pub fn qemu_log(&self) -> String {
        self.qemu.log_tail()
    }
}

impl Vm for QemuVm {
    fn vsock_uds(&self) -> PathBuf {
        self.config.vsock_uds()
    }

    fn pids(&self) -> Vec<u32> {
        [
            self.qemu.pid(),
            self._fs.as_ref().and_then(Daemon::pid),
            self._vsock.pid(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        self.qemu.wait_timeout(timeout)
    }

    fn console(&self) -> String {
        super::read_lossy(&self.config.serial_log())
    }

    fn diagnostics(&self) -> String {
        diagnostics_report(
            &self.console(),
            &[
                ("qemu", self.qemu.log_tail()),
                ("vhost-device-vsock", self._vsock.log_tail()),
                (
                    "virtiofsd",
                    self._fs.as_ref().map(Daemon::log_tail).unwrap_or_default(),
                ),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcg_cmdline_and_shared_fs_args() {
        let mut c = QemuConfig::new("/k".into(), "/i".into(), "/run/x".into(), Accel::Tcg);
        c.cmdline_extra = "hull.log=debug".into();
        c.shared_dir = Some("/srv/share".into());
        let cmdline = c.kernel_cmdline();
        assert!(cmdline.starts_with("console=ttyS0"));
        assert!(cmdline.ends_with("hull.log=debug"));
        let args = c.qemu_args();
        assert!(
            args.iter()
                .any(|a| a == "vhost-user-fs-device,chardev=fs,tag=hullShared")
        );
        assert!(args.windows(2).any(|w| w[0] == "-accel" && w[1] == "tcg"));
        assert!(
            args.iter()
                .any(|a| a.starts_with("memory-backend-memfd") && a.ends_with("share=on"))
        );
    }
}
