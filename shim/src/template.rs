//! Pod VM templates (`template = true` in hull.toml; hull-vmm only). The first pod of a
//! shape boots a VM to its agent and snapshots it before anything of a pod reaches it (no
//! share mounted, no container, no network); later pods of that shape restore the
//! snapshot instead of booting a kernel, and get fresh entropy, their hostname and the
//! host's clock (ReseedGuest) before their share is mounted. A template has as many NICs
//! as its pods, on taps of its own that carry nothing, with MACs of its own
//! (`template_mac`): a restored guest keeps them until the agent gives each NIC its pod's
//! MAC (UpdateInterface's `device_hw_addr`).
//!
//! A shape is what the guest was made from: hull-vmm, the kernel and the initrd (path,
//! size, mtime, inode), vCPUs, memory, NICs and the kernel command line. Its SHA-256 names the
//! template's directory, `<run_dir>/.templates/<key>/` (root's, 0700): `state` and
//! `memory` as hull-vmm wrote them, and `shape` (the text hashed). A template is built in
//! a directory of its own and renamed into place whole. Builds run one at a time on the
//! host (a flock); a build removes the templates whose files have changed since. A
//! template holds only hull's own guest booted from hull's own files: no tenant data.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use hull_protocols::agent::ReseedGuestRequest;
use hull_protocols::health::CheckRequest;
use sha2::{Digest, Sha256};

use crate::agent_client::{AgentClient, connect_when_ready, deadline, vmm_exit};
use crate::config::{HullConfig, HypervisorKind, VhostNet};
use crate::hypervisor::{self, Vm, VmSpec, vmm_api};
use crate::network::Nic;
use crate::network::scan::PodLink;
use crate::{admission, pod_fs};

/// Under run_dir; a name no containerd namespace can have.
pub const TEMPLATES_DIR: &str = ".templates";
const SHAPE_FILE: &str = "shape";
const LOCK_FILE: &str = ".lock";
/// The snapshot's directory inside the building VM's run directory (its jail).
const SNAPSHOT_DIR: &str = "snapshot";
/// The MAC of a template's NIC `index` (locally administered), which its restored VMs'
/// guests have until the agent gives each NIC its pod's.
pub fn template_mac(index: usize) -> [u8; 6] {
    let low = u8::try_from(index).unwrap_or(u8::MAX);
    [0x02, 0x68, 0x75, 0x6c, 0x6c, low]
}

/// Bytes of fresh entropy each restored VM gets.
const ENTROPY_BYTES: usize = 64;
/// How long the paused template VM may take to write its snapshot.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// What a template's guest is made from, as text; equal text, equal guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    text: String,
}

impl Shape {
    /// The shape of `spec`'s VM as hull-vmm at `hull_vmm` would boot it.
    pub fn of(spec: &VmSpec, hull_vmm: &Path) -> anyhow::Result<Shape> {
        let mut text = String::from("hull template 1\n");
        for (what, path) in [
            ("hull-vmm", hull_vmm),
            ("kernel", spec.kernel.as_path()),
            ("initrd", spec.initrd.as_path()),
        ] {
            let m =
                std::fs::metadata(path).with_context(|| format!("{what} {}", path.display()))?;
            text += &format!(
                "file {what} {} size={} mtime={}.{:09} ino={}\n",
                path.display(),
                m.len(),
                m.mtime(),
                m.mtime_nsec(),
                m.ino()
            );
        }
        text += &format!(
            "vcpus {}\nmemory_mib {}\nnics {}\ncmdline {}\n",
            spec.vcpus,
            spec.memory_mib,
            spec.nics.len(),
            spec.cmdline_extra
        );
        Ok(Shape { text })
    }

    /// The template directory's name: 32 hex digits of the text's SHA-256.
    pub fn key(&self) -> String {
        Sha256::digest(self.text.as_bytes())
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The lines naming files: a template whose files differ is stale.
    fn files(&self) -> Vec<&str> {
        self.text
            .lines()
            .filter(|l| l.starts_with("file "))
            .collect()
    }

    /// Whether `dir` holds a whole template of this shape.
    fn is_built_in(&self, dir: &Path) -> bool {
        std::fs::read_to_string(dir.join(SHAPE_FILE)).is_ok_and(|t| t == self.text)
            && ["state", "memory"].iter().all(|f| dir.join(f).is_file())
    }
}

/// Starts `spec`'s VM from the template of its shape (built first if there is none) and
/// readies the guest for its pod: fresh entropy, `hostname` and the host's clock.
pub async fn start(
    cfg: &HullConfig,
    spec: VmSpec,
    hostname: &str,
) -> anyhow::Result<(Box<dyn Vm>, AgentClient)> {
    let (kind, _, why) = hypervisor::resolve(cfg.hypervisor);
    if kind != HypervisorKind::Builtin {
        anyhow::bail!("templates need hull-vmm, and {why}");
    }
    let dir = ensure(cfg, &spec)
        .await
        .context("making the pod VM template")?;
    let (c, s, d) = (cfg.clone(), spec.clone(), dir.clone());
    let started = Instant::now();
    let mut vm = tokio::task::spawn_blocking(move || hypervisor::restore(&c, s, &d)).await??;
    match ready_restored(&mut vm, hostname, cfg.boot_timeout(false)).await {
        Ok(agent) => {
            tracing::info!(
                ms = started.elapsed().as_millis(),
                "restored VM reseeded: its agent answers"
            );
            Ok((vm, agent))
        }
        Err(e) => {
            let report = vm.diagnostics();
            tokio::task::spawn_blocking(move || drop(vm)).await?;
            // A template that does not restore is not tried again: the next pod builds
            // a new one.
            tracing::warn!(template = %dir.display(), "removing a template that did not restore");
            let _ = std::fs::remove_dir_all(&dir);
            Err(e.context(report))
        }
    }
}

/// The directory of the template for `spec`'s shape, built now if there is none.
pub async fn ensure(cfg: &HullConfig, spec: &VmSpec) -> anyhow::Result<PathBuf> {
    let hull_vmm = hypervisor::builtin_config(cfg, spec.clone()).hull_vmm;
    let shape = Shape::of(spec, &hull_vmm)?;
    let root = cfg.run_dir.join(TEMPLATES_DIR);
    pod_fs::ensure_dir_mode(&cfg.run_dir, 0o711)?;
    pod_fs::ensure_dir_mode(&root, 0o700)
        .with_context(|| format!("creating {}", root.display()))?;
    let dir = root.join(shape.key());
    if shape.is_built_in(&dir) {
        return Ok(dir);
    }
    // Another pod may be building it: one build at a time, each within its boot deadline.
    let wait = cfg.boot_timeout(false) * 2 + SNAPSHOT_TIMEOUT;
    let _lock = lock(&root.join(LOCK_FILE), wait).await?;
    if shape.is_built_in(&dir) {
        return Ok(dir);
    }
    remove_stale(&root, &shape);
    let started = Instant::now();
    build(cfg, spec, &shape, &root, &dir).await?;
    tracing::info!(
        template = %dir.display(),
        ms = started.elapsed().as_millis(),
        "pod VM template built"
    );
    Ok(dir)
}

async fn lock(path: &Path, wait: Duration) -> anyhow::Result<std::fs::File> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(f) = admission::try_lock(path)? {
            return Ok(f);
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "another pod's template build held {} for {wait:?}",
                path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Removes the templates whose files have changed, and builds that never finished (the
/// caller holds the lock, so none is running).
fn remove_stale(root: &Path, current: &Shape) {
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let path = entry.path();
        if name == LOCK_FILE || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let stale = name.as_encoded_bytes().starts_with(b".")
            || std::fs::read_to_string(path.join(SHAPE_FILE))
                .map_or(true, |t| Shape { text: t }.files() != current.files());
        if stale {
            tracing::info!(template = %path.display(), "removing a stale pod VM template");
            if let Err(e) = std::fs::remove_dir_all(&path) {
                tracing::warn!(error = %e, template = %path.display(), "removing a stale template");
            }
        }
    }
}

/// Boots a VM of `shape` with an empty share and no NICs, waits for its agent, pauses and
/// snapshots it, and moves the snapshot to `dir`.
async fn build(
    cfg: &HullConfig,
    spec: &VmSpec,
    shape: &Shape,
    root: &Path,
    dir: &Path,
) -> anyhow::Result<()> {
    let work = root.join(format!(".build-{}", shape.key()));
    let run = work.join("vm");
    let share = work.join("share");
    let snapshot = run.join(SNAPSHOT_DIR);
    for (d, mode) in [
        (&work, 0o700),
        (&run, 0o711),
        (&share, 0o700),
        (&snapshot, 0o700),
    ] {
        pod_fs::ensure_dir_mode(d, mode).with_context(|| format!("creating {}", d.display()))?;
    }
    // A jailed VMM writes the snapshot as its own user, and sees its run directory as /.
    let snapshot_arg = if cfg.jail_vmm {
        std::os::unix::fs::chown(&snapshot, Some(cfg.vmm_uid), Some(cfg.vmm_gid))?;
        PathBuf::from("/").join(SNAPSHOT_DIR)
    } else {
        snapshot.clone()
    };
    let mut tspec = spec.clone();
    tspec.run_dir = run.clone();
    tspec.shared_dir = share;
    tspec.nics = (0..spec.nics.len())
        .map(template_nic)
        .collect::<anyhow::Result<_>>()?;
    // hull-vmm's own data path: its rings can be snapshotted (vhost-net's cannot). The
    // pods restored from it may use either.
    let mut build_cfg = cfg.clone();
    build_cfg.vhost_net = VhostNet::Off;
    let boot_deadline = cfg.boot_timeout(false);
    let result = async {
        let _slot = admission::acquire(
            &cfg.run_dir,
            cfg.parallel_boots(false),
            Duration::from_secs(cfg.admission_timeout_s),
        )
        .await?;
        let (c, writable) = (build_cfg, snapshot.clone());
        let mut vm =
            tokio::task::spawn_blocking(move || hypervisor::boot_with(&c, tspec, Some(writable)))
                .await??;
        let api = run.join("api.sock");
        let made = async {
            let agent = connect_when_ready(&mut vm, boot_deadline).await?;
            agent
                .health
                .check(deadline(boot_deadline), &CheckRequest::new())
                .await
                .context("the template VM's agent")?;
            let call = |body: serde_json::Value, t| {
                let api = api.clone();
                async move { vmm_api::call(&api, &body, t).await }
            };
            call(serde_json::json!({"action": "pause"}), API_TIMEOUT).await?;
            call(
                serde_json::json!({"action": "snapshot", "dir": snapshot_arg}),
                SNAPSHOT_TIMEOUT,
            )
            .await
        }
        .await;
        let report = made.is_err().then(|| vm.diagnostics());
        let _ = vmm_api::call(
            &api,
            &serde_json::json!({"action": "shutdown"}),
            API_TIMEOUT,
        )
        .await;
        tokio::task::spawn_blocking(move || drop(vm)).await?;
        made.map_err(|e| e.context(report.unwrap_or_default()))
    }
    .await;
    let result = result.and_then(|()| seal(&snapshot, shape, dir));
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// NIC `index` of a template VM: a tap of its own in the shim's network namespace, up
/// nowhere and gone with its last descriptor.
fn template_nic(index: usize) -> anyhow::Result<Nic> {
    let tap_name = format!("hulltpl{}x{index}", std::process::id() % 100_000);
    let tap = crate::network::tap::create(&tap_name)?;
    Ok(Nic {
        tap: std::sync::Arc::new(tap),
        tap_name,
        link: PodLink {
            index: 0,
            name: format!("eth{index}"),
            mac: template_mac(index),
            mtu: 1500,
            addresses: Vec::new(),
        },
    })
}

/// Makes the snapshot in `snapshot` the shim's own (root's, 0600), records its shape and
/// renames it to `dir`. The directory was the jailed VMM's to write (it has exited by
/// now): it must hold exactly `state` and `memory`, plain files, and nothing is followed
/// through it.
fn seal(snapshot: &Path, shape: &Shape, dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut found: Vec<String> = std::fs::read_dir(snapshot)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    found.sort();
    if found != ["memory", "state"] {
        anyhow::bail!("the template VM's snapshot holds {found:?}, not just memory and state");
    }
    for f in ["state", "memory"] {
        let p = snapshot.join(f);
        let m = std::fs::symlink_metadata(&p).with_context(|| format!("{}", p.display()))?;
        if !m.is_file() {
            anyhow::bail!("{} is not a plain file", p.display());
        }
        std::os::unix::fs::lchown(&p, Some(0), Some(0))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
    }
    std::os::unix::fs::chown(snapshot, Some(0), Some(0))?;
    let mut shape_file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(snapshot.join(SHAPE_FILE))?;
    std::io::Write::write_all(&mut shape_file, shape.text.as_bytes())?;
    std::fs::rename(snapshot, dir)
        .with_context(|| format!("moving the template to {}", dir.display()))
}

/// Connects to a restored VM's agent and gives the guest what must differ between VMs
/// restored from one template.
async fn ready_restored(
    vm: &mut Box<dyn Vm>,
    hostname: &str,
    timeout: Duration,
) -> anyhow::Result<AgentClient> {
    let uds = vm.vsock_uds();
    let agent = tokio::select! {
        a = AgentClient::connect(&uds, timeout) => a?,
        e = vmm_exit(vm) => anyhow::bail!("the restored VMM exited ({e})"),
    };
    let mut req = ReseedGuestRequest::new();
    req.entropy = vec![0; ENTROPY_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut req.entropy))
        .context("reading entropy for the restored VM")?;
    if valid_hostname(hostname) {
        req.hostname = hostname.to_string();
    }
    req.realtime_ns = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_nanos()).ok())
        .unwrap_or(0);
    agent
        .agent
        .reseed_guest(deadline(timeout), &req)
        .await
        .context("ReseedGuest")?;
    Ok(agent)
}

/// A hostname the agent takes for the guest's kernel (the container gets the pod's own
/// through CreateSandbox either way).
fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 64
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path) -> VmSpec {
        std::fs::write(dir.join("vmlinux"), "k").unwrap();
        std::fs::write(dir.join("initrd"), "i").unwrap();
        std::fs::write(dir.join("hull-vmm"), "v").unwrap();
        VmSpec {
            kernel: dir.join("vmlinux"),
            initrd: dir.join("initrd"),
            vcpus: 1,
            memory_mib: 256,
            cmdline_extra: String::new(),
            run_dir: dir.join("run"),
            shared_dir: dir.join("share"),
            log_max_bytes: 4096,
            nics: Vec::new(),
        }
    }

    #[test]
    fn the_shape_changes_with_any_input() {
        let d = tempfile::tempdir().unwrap();
        let s = spec(d.path());
        let vmm = d.path().join("hull-vmm");
        let a = Shape::of(&s, &vmm).unwrap();
        assert_eq!(a, Shape::of(&s, &vmm).unwrap());
        assert_eq!(a.key().len(), 32);
        // Per-pod paths are not part of it.
        let mut other_pod = s.clone();
        other_pod.run_dir = d.path().join("elsewhere");
        assert_eq!(a, Shape::of(&other_pod, &vmm).unwrap());
        let mut bigger = s.clone();
        bigger.memory_mib = 512;
        assert_ne!(a.key(), Shape::of(&bigger, &vmm).unwrap().key());
        let mut params = s.clone();
        params.cmdline_extra = "hull.log=debug".into();
        assert_ne!(a.key(), Shape::of(&params, &vmm).unwrap().key());
        let mut networked = s.clone();
        let fd: std::os::fd::OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        networked.nics.push(Nic {
            tap: std::sync::Arc::new(fd),
            tap_name: "t".into(),
            link: PodLink {
                index: 1,
                name: "eth0".into(),
                mac: [2, 0, 0, 0, 0, 1],
                mtu: 1500,
                addresses: Vec::new(),
            },
        });
        assert_ne!(a.key(), Shape::of(&networked, &vmm).unwrap().key());
        // A rebuilt kernel: same path, new file.
        std::fs::remove_file(&s.kernel).unwrap();
        std::fs::write(&s.kernel, "kernel 2").unwrap();
        let rebuilt = Shape::of(&s, &vmm).unwrap();
        assert_ne!(a.key(), rebuilt.key());
        assert_ne!(a.files(), rebuilt.files());
        assert!(Shape::of(&s, &d.path().join("none")).is_err());
    }

    #[test]
    fn stale_and_unfinished_templates_are_removed_others_kept() {
        let d = tempfile::tempdir().unwrap();
        let s = spec(d.path());
        let vmm = d.path().join("hull-vmm");
        let current = Shape::of(&s, &vmm).unwrap();
        let mut bigger = s.clone();
        bigger.memory_mib = 512;
        let other_size = Shape::of(&bigger, &vmm).unwrap();
        let root = d.path().join(TEMPLATES_DIR);
        let put = |name: &str, shape: Option<&Shape>| {
            let dir = root.join(name);
            std::fs::create_dir_all(&dir).unwrap();
            for f in ["state", "memory"] {
                std::fs::write(dir.join(f), "x").unwrap();
            }
            if let Some(sh) = shape {
                std::fs::write(dir.join(SHAPE_FILE), &sh.text).unwrap();
            }
            dir
        };
        let same_files = put(&other_size.key(), Some(&other_size));
        let unfinished = put(".build-x", None);
        let no_shape = put("k2", None);
        std::fs::remove_file(&s.kernel).unwrap();
        std::fs::write(&s.kernel, "kernel 2").unwrap();
        let old_kernel = put("k3", Some(&current));
        let now = Shape::of(&s, &vmm).unwrap();
        std::fs::write(root.join(LOCK_FILE), "").unwrap();
        remove_stale(&root, &now);
        assert!(!unfinished.exists() && !no_shape.exists() && !old_kernel.exists());
        // Its files changed too: same_files was made with the old kernel.
        assert!(!same_files.exists());
        let kept = put(
            &Shape::of(&bigger, &vmm).unwrap().key(),
            Some(&Shape::of(&bigger, &vmm).unwrap()),
        );
        remove_stale(&root, &now);
        assert!(kept.exists() && root.join(LOCK_FILE).exists());
        assert!(Shape::of(&bigger, &vmm).unwrap().is_built_in(&kept));
        assert!(!now.is_built_in(&kept));
    }

    #[test]
    fn a_snapshot_with_anything_but_its_two_files_is_not_sealed() {
        let d = tempfile::tempdir().unwrap();
        let s = spec(d.path());
        let shape = Shape::of(&s, &d.path().join("hull-vmm")).unwrap();
        let snap = d.path().join("snap");
        std::fs::create_dir(&snap).unwrap();
        std::fs::write(snap.join("state"), "s").unwrap();
        std::fs::write(snap.join("memory"), "m").unwrap();
        // What a compromised VMM could leave: a link through which the shim would write.
        std::os::unix::fs::symlink(d.path().join("victim"), snap.join(SHAPE_FILE)).unwrap();
        let e = seal(&snap, &shape, &d.path().join("t"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not just memory and state"), "{e}");
        assert!(!d.path().join("victim").exists() && !d.path().join("t").exists());
        std::fs::remove_file(snap.join(SHAPE_FILE)).unwrap();
        std::fs::remove_file(snap.join("memory")).unwrap();
        std::os::unix::fs::symlink(d.path().join("victim"), snap.join("memory")).unwrap();
        let e = seal(&snap, &shape, &d.path().join("t"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a plain file"), "{e}");
        std::fs::remove_file(snap.join("memory")).unwrap();
        std::fs::write(snap.join("memory"), "m").unwrap();
        seal(&snap, &shape, &d.path().join("t")).unwrap();
        assert!(shape.is_built_in(&d.path().join("t")));
    }

    #[test]
    fn hostnames_the_agent_would_refuse_are_not_sent() {
        assert!(valid_hostname("web-1.example"));
        assert!(!valid_hostname(""));
        assert!(!valid_hostname("a b"));
        assert!(!valid_hostname(&"x".repeat(65)));
    }
}
