//! Busybox root filesystems and OCI specs for test containers.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxNamespaceBuilder, LinuxNamespaceType, ProcessBuilder, RootBuilder, Spec, UserBuilder,
};

const BUSYBOX: &str = "/bin/busybox";

/// Makes a minimal busybox root filesystem at `dir` (Debian's busybox-static).
pub fn busybox_rootfs(dir: &Path) -> std::io::Result<()> {
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::copy(BUSYBOX, dir.join("bin/busybox"))?;
    let out = std::process::Command::new(BUSYBOX).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let link = dir.join("bin").join(applet);
        if applet != "busybox" && !link.exists() {
            std::os::unix::fs::symlink("busybox", link)?;
        }
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
    )?;
    std::fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    Ok(())
}

/// A spec like `runc spec` / containerd's defaults, running `args` in `rootfs`.
pub fn spec(rootfs: &Path, args: &[&str]) -> Spec {
    let mut s = Spec::default();
    s.set_hostname(None);
    s.set_root(Some(
        RootBuilder::default()
            .path(rootfs)
            .readonly(false)
            .build()
            .expect("root"),
    ));
    let process = ProcessBuilder::default()
        .args(args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
        .env(vec!["PATH=/bin".to_string(), "HOME=/root".to_string()])
        .cwd("/")
        .user(
            UserBuilder::default()
                .uid(0u32)
                .gid(0u32)
                .build()
                .expect("user"),
        )
        .terminal(false)
        .build()
        .expect("process");
    let mut process = process;
    process.set_capabilities(s.process().as_ref().and_then(|p| p.capabilities().clone()));
    process.set_rlimits(s.process().as_ref().and_then(|p| p.rlimits().clone()));
    s.set_process(Some(process));
    let mut linux = s.linux().clone().expect("linux");
    linux.set_namespaces(Some(
        [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Network,
        ]
        .into_iter()
        .map(|t| LinuxNamespaceBuilder::default().typ(t).build().expect("ns"))
        .collect(),
    ));
    s.set_linux(Some(linux));
    s
}

pub fn to_json(spec: &Spec) -> Vec<u8> {
    serde_json::to_vec(spec).expect("spec serializes")
}

/// `<shared>/<name>/rootfs`, populated with busybox.
pub fn rootfs_in(shared: &Path, name: &str) -> PathBuf {
    let rootfs = shared.join(name).join("rootfs");
    busybox_rootfs(&rootfs).expect("building the busybox rootfs");
    rootfs
}

/// A seccomp profile that allows everything but makes `mkdir`/`mkdirat` fail with EPERM.
pub fn seccomp_denying_mkdir() -> oci_spec::runtime::LinuxSeccomp {
    serde_json::from_value(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    }))
    .expect("seccomp profile")
}

/// Cgroup directories named `id` under any hierarchy (v1 controllers or v2).
pub fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut found = Vec::new();
    let mut roots = vec![root.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(root) {
        roots.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for r in roots {
        let p = r.join("hull").join(id);
        if p.exists() {
            found.push(p);
        }
    }
    found
}
