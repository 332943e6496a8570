//! A pod VM for tests: QEMU (TCG here) booting `build/vmlinux` + `build/initrd.img` with
//! a private share directory over virtio-fs, and the agent's clients over hybrid vsock.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use hull_protocols::agent::{CreateSandboxRequest, Storage};
use hull_shim::agent_client::AgentClient;
use hull_shim::hypervisor::Vm;
use hull_shim::hypervisor::accel::Accel;
use hull_shim::hypervisor::qemu::{QemuConfig, QemuVm, SHARED_FS_TAG};
use tempfile::TempDir;

use crate::agent_ops::ctx;

/// Where the agent mounts the pod's share inside the guest.
pub const GUEST_SHARED: &str = "/run/hull/shared";
const AGENT_TIMEOUT: Duration = Duration::from_secs(90);

pub struct TestVm {
    pub vm: QemuVm,
    pub client: AgentClient,
    /// Time from starting QEMU to the agent answering.
    pub boot_time: Duration,
    // Last: the directory goes after the VM and its daemons.
    pub dir: TempDir,
}

impl TestVm {
    pub async fn boot(memory_mib: u32) -> anyhow::Result<TestVm> {
        crate::require_root();
        let dir = tempfile::Builder::new()
            .prefix("hull-vm")
            .tempdir_in("/tmp")?;
        let run = dir.path().join("run");
        let shared = dir.path().join("shared");
        std::fs::create_dir_all(&run)?;
        std::fs::create_dir_all(&shared)?;
        let build = crate::repo_root().join("build");
        let mut cfg = QemuConfig::new(
            build.join("vmlinux"),
            build.join("initrd.img"),
            run,
            Accel::detect().0,
        );
        cfg.memory_mib = memory_mib;
        cfg.shared_dir = Some(shared);
        cfg.cmdline_extra = "hull.log=info".into();
        let started = Instant::now();
        let vm = QemuVm::start(cfg)?;
        let client = match AgentClient::connect(&vm.vsock_uds(), AGENT_TIMEOUT).await {
            Ok(c) => c,
            Err(e) => anyhow::bail!("{e:#}\n{}", vm.diagnostics()),
        };
        Ok(TestVm {
            vm,
            client,
            boot_time: started.elapsed(),
            dir,
        })
    }

    /// The host side of the guest's shared directory.
    pub fn shared(&self) -> PathBuf {
        self.dir.path().join("shared")
    }

    /// A host path under `shared()` as the guest sees it.
    pub fn guest_path(&self, host: &Path) -> PathBuf {
        Path::new(GUEST_SHARED).join(
            host.strip_prefix(self.shared())
                .expect("path under the share"),
        )
    }

    /// CreateSandbox with the virtio-fs share mounted where the agent expects it.
    pub async fn create_sandbox(&self, id: &str, hostname: &str) -> anyhow::Result<()> {
        let mut fs = Storage::new();
        fs.driver = "virtiofs".into();
        fs.source = SHARED_FS_TAG.into();
        fs.fstype = "virtiofs".into();
        fs.mount_point = GUEST_SHARED.into();
        let mut req = CreateSandboxRequest::new();
        req.sandbox_id = id.into();
        req.hostname = hostname.into();
        req.storages.push(fs);
        self.client
            .agent
            .create_sandbox(ctx(), &req)
            .await
            .context("CreateSandbox")?;
        Ok(())
    }
}
