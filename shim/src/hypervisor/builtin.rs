//! Boots a pod VM with hull-vmm, hull's own VMM: guest RAM in a memfd shared with
//! virtiofsd (the pod's share as virtio-fs tag `hullShared`), vsock through hull-vmm's own
//! hybrid unix socket, serial console to a log, and an API socket to stop it. Two
//! processes instead of QEMU's three; dropping the VM kills and reaps both. The same VM
//! can instead be restored from a template's snapshot (`restore_from`): then the snapshot
//! gives the guest, and these devices only their host side.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::{Context, bail};

use super::{
    GUEST_CID, SHARED_FS_TAG, VIRTIOFSD_SOCKET, Vm, VmSpec, diagnostics_report, find_tool,
    spawn_virtiofsd,
};
use crate::config::VhostNet;
use crate::daemon::{CONSOLE_LOG, Daemon, PASSED_FD_BASE, Role, join_cgroup, pass_fds};
use crate::vm_cgroup::VmCgroup;

#[derive(Debug, Clone)]
pub struct BuiltinConfig {
    pub hull_vmm: PathBuf,
    pub virtiofsd: PathBuf,
    pub spec: VmSpec,
    /// uid and gid of the jailed VMM; none: not jailed.
    pub jail: Option<(u32, u32)>,
    pub vhost_net: VhostNet,
    /// Restore this snapshot directory instead of booting the kernel.
    pub restore_from: Option<PathBuf>,
    /// A directory of the run directory that the jailed VMM may write snapshots into.
    pub snapshot_dir: Option<PathBuf>,
}

impl BuiltinConfig {
    /// The tools from their usual places (see `find_tool`).
    pub fn new(spec: VmSpec) -> BuiltinConfig {
        BuiltinConfig {
            hull_vmm: find_tool("hull-vmm"),
            virtiofsd: find_tool("virtiofsd"),
            spec,
            jail: Some((65534, 65534)),
            vhost_net: VhostNet::Auto,
            restore_from: None,
            snapshot_dir: None,
        }
    }

    pub fn vsock_uds(&self) -> PathBuf {
        self.spec.run_dir.join(super::VSOCK_SOCKET)
    }

    pub fn serial_log(&self) -> PathBuf {
        self.spec.run_dir.join(CONSOLE_LOG)
    }

    pub fn api_sock(&self) -> PathBuf {
        self.spec.run_dir.join("api.sock")
    }

    pub fn vmm_args(&self) -> Vec<String> {
        let s = &self.spec;
        let mut cmdline = String::from("quiet");
        if !s.cmdline_extra.is_empty() {
            cmdline.push(' ');
            cmdline.push_str(&s.cmdline_extra);
        }
        let path = |p: PathBuf| p.to_string_lossy().into_owned();
        let mut args: Vec<String> = match &self.restore_from {
            Some(dir) => vec!["--restore".into(), path(dir.clone())],
            None => vec![
                "--kernel".into(),
                path(s.kernel.clone()),
                "--initrd".into(),
                path(s.initrd.clone()),
                "--memory".into(),
                s.memory_mib.to_string(),
                "--vcpus".into(),
                s.vcpus.to_string(),
                "--cmdline".into(),
                cmdline,
            ],
        };
        args.extend([
            "--vsock-uds".into(),
            path(self.vsock_uds()),
            "--vsock-cid".into(),
            GUEST_CID.to_string(),
            "--fs-socket".into(),
            format!(
                "{},{SHARED_FS_TAG}",
                s.run_dir.join(VIRTIOFSD_SOCKET).display()
            ),
            "--serial-log".into(),
            path(self.serial_log()),
            "--serial-log-max".into(),
            s.log_max_bytes.to_string(),
            "--api-sock".into(),
            path(self.api_sock()),
        ]);
        for (i, nic) in s.nics.iter().enumerate() {
            args.extend([
                "--net".into(),
                format!(
                    "tap-fd={},mac={},mtu={},vhost={}",
                    PASSED_FD_BASE + i as i32,
                    nic.link.mac_string(),
                    nic.link.mtu,
                    self.vhost_net.as_str()
                ),
            ]);
        }
        if let Some((uid, gid)) = self.jail {
            // The jail is the VM's run directory, which holds its sockets and logs.
            args.extend([
                "--jail".into(),
                path(s.run_dir.clone()),
                "--uid".into(),
                uid.to_string(),
                "--gid".into(),
                gid.to_string(),
            ]);
            if let Some(d) = &self.snapshot_dir {
                args.extend(["--jail-writable".into(), path(d.clone())]);
            }
        }
        args
    }
}

pub struct BuiltinVm {
    config: BuiltinConfig,
    // Field order is drop order: the VMM goes first, then virtiofsd.
    vmm: Daemon,
    fs: Daemon,
    /// Last: removed once the processes in it are gone.
    _cgroup: Option<VmCgroup>,
}

impl BuiltinVm {
    pub fn start(config: BuiltinConfig, cgroup: Option<VmCgroup>) -> anyhow::Result<BuiltinVm> {
        let s = &config.spec;
        let inputs = match &config.restore_from {
            Some(dir) => vec![
                ("snapshot", dir.join("state")),
                ("snapshot", dir.join("memory")),
            ],
            None => vec![("kernel", s.kernel.clone()), ("initrd", s.initrd.clone())],
        };
        for (what, p) in inputs {
            if !p.is_file() {
                bail!("{what} {} does not exist (run `make guest`)", p.display());
            }
        }
        if s.vcpus == 0 || s.vcpus > u32::from(u8::MAX) {
            bail!("hull-vmm takes 1 to 255 vCPUs, not {}", s.vcpus);
        }
        let fs = spawn_virtiofsd(
            &config.virtiofsd,
            &s.shared_dir,
            &s.run_dir,
            s.log_max_bytes,
            cgroup.as_ref(),
        )?;
        let mut cmd = Command::new(&config.hull_vmm);
        if let Some(cg) = &cgroup {
            join_cgroup(&mut cmd, cg);
        }
        cmd.args(config.vmm_args()).env("HULL_LOG", "info");
        let taps: Vec<_> = s.nics.iter().map(|n| n.tap.as_raw_fd()).collect();
        pass_fds(&mut cmd, &taps)?;
        let vmm = Daemon::spawn("hull-vmm", Role::Vmm, cmd, &s.run_dir, s.log_max_bytes)
            .context("starting the VM")?;
        match &config.restore_from {
            Some(dir) => {
                tracing::info!(pid = vmm.pid(), template = %dir.display(), "pod VM restored (hull-vmm)");
            }
            None => tracing::info!(pid = vmm.pid(), "pod VM started (hull-vmm)"),
        }
        Ok(BuiltinVm {
            config,
            vmm,
            fs,
            _cgroup: cgroup,
        })
    }
}

impl Vm for BuiltinVm {
    fn vsock_uds(&self) -> PathBuf {
        self.config.vsock_uds()
    }

    fn pids(&self) -> Vec<u32> {
        [self.vmm.pid(), self.fs.pid()]
            .into_iter()
            .flatten()
            .collect()
    }

    fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        self.vmm.wait_timeout(timeout)
    }

    fn console(&self) -> String {
        super::read_lossy(&self.config.serial_log())
    }

    fn diagnostics(&self) -> String {
        diagnostics_report(
            &self.console(),
            &[
                ("hull-vmm", self.vmm.log_tail()),
                ("virtiofsd", self.fs.log_tail()),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmm_command_line() {
        let c = BuiltinConfig::new(VmSpec {
            kernel: "/k".into(),
            initrd: "/i".into(),
            vcpus: 2,
            memory_mib: 512,
            cmdline_extra: "hull.log=debug".into(),
            run_dir: "/run/hull/p".into(),
            shared_dir: "/run/hull/p/shared".into(),
            log_max_bytes: 4096,
            nics: Vec::new(),
        });
        let a = c.vmm_args().join(" ");
        assert!(a.contains("--memory 512 --vcpus 2"), "{a}");
        assert!(a.contains("--cmdline quiet hull.log=debug"), "{a}");
        assert!(
            a.contains("--vsock-uds /run/hull/p/vm.vsock --vsock-cid 3"),
            "{a}"
        );
        assert!(
            a.contains("--fs-socket /run/hull/p/fs.vhost,hullShared"),
            "{a}"
        );
        assert!(a.contains("--api-sock /run/hull/p/api.sock"), "{a}");
        assert!(a.contains("--serial-log-max 4096"), "{a}");
        assert!(
            a.ends_with("--jail /run/hull/p --uid 65534 --gid 65534"),
            "{a}"
        );
        let mut r = c.clone();
        r.restore_from = Some("/run/hull/.templates/k".into());
        let a = r.vmm_args().join(" ");
        assert!(
            a.starts_with("--restore /run/hull/.templates/k --vsock-uds"),
            "{a}"
        );
        assert!(!a.contains("--kernel") && !a.contains("--memory"), "{a}");
    }
}
