//! A pod VM for tests, booted by either backend (QEMU here; hull-vmm inside the nested
//! test host) from `build/vmlinux` + `build/initrd.img` with a private share directory
//! over virtio-fs, and the agent's clients over hybrid vsock.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use hull_protocols::agent::{CreateSandboxRequest, Storage};
use hull_shim::agent_client::{AgentClient, connect_when_ready};
use hull_shim::config::{HullConfig, HypervisorKind};
use hull_shim::hypervisor::{SHARED_FS_TAG, Vm, VmSpec};
use tempfile::TempDir;

use crate::agent_ops::ctx;

/// Where the agent mounts the pod's share inside the guest.
pub const GUEST_SHARED: &str = "/run/hull/shared";
const AGENT_TIMEOUT: Duration = Duration::from_secs(90);

pub struct TestVm {
    pub vm: Box<dyn Vm>,
    pub client: AgentClient,
    /// Time from starting QEMU to the agent answering.
    pub boot_time: Duration,
    // Last: the directory goes after the VM and its daemons.
    pub dir: TempDir,
}

impl TestVm {
    pub async fn boot(kind: HypervisorKind, memory_mib: u32) -> anyhow::Result<TestVm> {
        crate::require_root();
        let dir = tempfile::Builder::new()
            .prefix("hull-vm")
            .tempdir_in("/tmp")?;
        let run = dir.path().join("run");
        let shared = dir.path().join("shared");
        std::fs::create_dir_all(&run)?;
        std::fs::create_dir_all(&shared)?;
        let build = crate::repo_root().join("build");
        let cfg = HullConfig {
            hypervisor: kind,
            hull_vmm: crate::target_bin_dir().join("hull-vmm"),
            ..HullConfig::default()
        };
        let spec = VmSpec {
            kernel: build.join("vmlinux"),
            initrd: build.join("initrd.img"),
            vcpus: 1,
            memory_mib,
            cmdline_extra: "hull.log=info".into(),
            run_dir: run,
            shared_dir: shared,
            log_max_bytes: 1 << 20,
            nics: Vec::new(),
        };
        let started = Instant::now();
        let mut vm = hull_shim::hypervisor::boot(&cfg, spec)?;
        let client = match connect_when_ready(&mut vm, AGENT_TIMEOUT).await {
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
