//! `hull check`: whether this host can start a pod VM, one requirement a line, each failed
//! or qualified one with what to do. It reads the host the way the shim does (the same
//! config loader, accelerator probe, backend choice and tool lookup), so its answer is
//! the shim's.

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use hull_shim::config::{HullConfig, HypervisorKind, Source};
use hull_shim::hypervisor::accel::Accel;
use hull_shim::hypervisor::{resolve, tools_for};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Met.
    Ok,
    /// Pods start, with a caveat (slower, fewer features).
    Warn,
    /// No pod can start until this is fixed.
    Fail,
}

/// One requirement and how this host meets it.
#[derive(Debug, Serialize)]
pub struct Finding {
    pub status: Status,
    pub what: &'static str,
    pub detail: String,
    /// What to do, for a warning or failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn ok(what: &'static str, detail: impl Into<String>) -> Finding {
    Finding {
        status: Status::Ok,
        what,
        detail: detail.into(),
        fix: None,
    }
}

fn not_ok(
    status: Status,
    what: &'static str,
    detail: impl Into<String>,
    fix: impl Into<String>,
) -> Finding {
    Finding {
        status,
        what,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

/// Prints the findings; the exit status is 0 only when a pod can start (and, with
/// `strict`, nothing is qualified either).
pub fn run(strict: bool, json: bool) -> ExitCode {
    let found = findings(HullConfig::load().map_err(|e| format!("{e:#}")));
    for f in &found {
        if json {
            println!("{}", serde_json::to_string(f).expect("findings serialize"));
        } else {
            let mark = match f.status {
                Status::Ok => "✓",
                Status::Warn => "!",
                Status::Fail => "✗",
            };
            println!("{mark} {}: {}", f.what, f.detail);
            if let Some(fix) = &f.fix {
                println!("    → {fix}");
            }
        }
    }
    let failed = found
        .iter()
        .any(|f| f.status == Status::Fail || (strict && f.status == Status::Warn));
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Every requirement, given the loaded config (or why it did not load: the other checks
/// then use the defaults, and the config itself fails).
pub fn findings(config: Result<HullConfig, String>) -> Vec<Finding> {
    let mut out = Vec::new();
    let cfg = match config {
        Ok(c) => {
            out.push(ok("config", config_source()));
            c
        }
        Err(e) => {
            out.push(not_ok(
                Status::Fail,
                "config",
                e,
                "fix the file (config/hull.toml in hull's sources is the commented reference)",
            ));
            HullConfig::default()
        }
    };
    let (kind, accel, why) = resolve(cfg.hypervisor);
    out.push(accelerator(accel, why));
    out.push(backend(cfg.hypervisor, kind, accel, why));
    for (name, path) in tools_for(&cfg, kind) {
        out.push(tool(name, &path));
    }
    out.push(guest_file("kernel", &cfg.kernel));
    out.push(guest_file("initrd", &cfg.initrd));
    out.push(agent_api(&cfg.initrd));
    if cfg.debug_console {
        out.push(debug_console(&cfg.debug_console_busybox));
    }
    if cfg.template {
        out.push(templates(kind, why, &cfg.run_dir));
    }
    if kind == HypervisorKind::Builtin {
        out.push(guest_ram_pages(Path::new(SHMEM_THP)));
    }
    out.push(cgroups(Path::new("/sys/fs/cgroup")));
    out.push(tun());
    out.push(tc_support());
    out.push(vhost_net());
    out.push(run_dir(&cfg.run_dir));
    out
}

fn config_source() -> String {
    match Source::current() {
        Source::Defaults => format!("no {}: the defaults apply", hull_shim::config::DEFAULT_PATH),
        file => format!("{file} parses"),
    }
}

fn accelerator(accel: Accel, why: &str) -> Finding {
    let nested = std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| {
        c.lines()
            .any(|l| l.starts_with("flags") && l.contains(" hypervisor"))
    });
    let host = if nested {
        " (this host is itself a VM: nested virtualisation)"
    } else {
        ""
    };
    match accel {
        Accel::Kvm => ok(
            "accelerator",
            format!("hardware KVM: /dev/kvm runs stock guests{host}"),
        ),
        Accel::Tcg => not_ok(
            Status::Warn,
            "accelerator",
            format!("no usable KVM ({why}){host}: pod VMs run under QEMU TCG"),
            "pods work, but boot in tens of seconds and run many times slower; a host with \
             VT-x or AMD-V (and kvm_intel or kvm_amd loaded) runs them on hull-vmm",
        ),
    }
}

fn backend(configured: HypervisorKind, kind: HypervisorKind, accel: Accel, why: &str) -> Finding {
    let name = |k: HypervisorKind| match k {
        HypervisorKind::Builtin => "hull-vmm",
        HypervisorKind::Auto | HypervisorKind::Qemu => "QEMU",
    };
    if kind == HypervisorKind::Builtin && accel != Accel::Kvm {
        return not_ok(
            Status::Fail,
            "backend",
            format!("hypervisor = \"builtin\" needs hardware KVM, and {why}"),
            "set hypervisor = \"auto\" (or \"qemu\") in the config",
        );
    }
    let how = match (configured, accel) {
        (HypervisorKind::Auto, _) => "picked by `auto`",
        _ => "as configured",
    };
    ok(
        "backend",
        format!(
            "{} on {} ({how})",
            name(kind),
            match accel {
                Accel::Kvm => "KVM",
                Accel::Tcg => "TCG",
            }
        ),
    )
}

/// A tool is there and runs: its `--version` answers within a few seconds.
fn tool(name: &'static str, path: &Path) -> Finding {
    let fix = format!(
        "install it (`make install` puts hull's own next to the shim) or set its path in the config ({})",
        config_key(name)
    );
    if !path.is_file() {
        return not_ok(Status::Fail, name, "not found", fix);
    }
    match version(path) {
        Some(v) => ok(name, format!("{} ({v})", path.display())),
        None => not_ok(
            Status::Fail,
            name,
            format!("{} does not run (`--version` failed)", path.display()),
            fix,
        ),
    }
}

fn config_key(tool: &str) -> &'static str {
    match tool {
        "hull-vmm" => "hull_vmm",
        "qemu-system-x86_64" => "qemu",
        "virtiofsd" => "virtiofsd",
        _ => "vhost_device_vsock",
    }
}

/// The first line of `path --version`, if it answers within 5 s.
fn version(path: &Path) -> Option<String> {
    let mut child = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait().ok()? {
            Some(status) if status.success() => break,
            Some(_) => return None,
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let out = child.wait_with_output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.lines().next().unwrap_or("").trim().to_string())
}

fn guest_file(what: &'static str, path: &Path) -> Finding {
    match std::fs::File::open(path).and_then(|f| f.metadata()) {
        Ok(m) if m.is_file() && m.len() > 0 => {
            ok(what, format!("{} ({} KiB)", path.display(), m.len() / 1024))
        }
        Ok(_) => not_ok(
            Status::Fail,
            what,
            format!("{} is empty or not a file", path.display()),
            "rebuild it: `make guest` then `make install`",
        ),
        Err(e) => not_ok(
            Status::Fail,
            what,
            format!("{}: {e}", path.display()),
            format!(
                "build and install it (`make guest` then `make install`), or set `{what}` in the config"
            ),
        ),
    }
}

/// The agent API version recorded in the initrd's first, uncompressed cpio archive
/// (`rootfs/build.sh` puts it there), without unpacking the agent.
pub fn initrd_api_version(initrd: &Path) -> anyhow::Result<String> {
    use std::io::Read;
    const WANTED: &str = hull_protocols::INITRD_API_VERSION_PATH;
    // Header, names and the version file: far less than this.
    let mut r = std::io::BufReader::new(std::fs::File::open(initrd)?).take(64 * 1024);
    loop {
        let mut entry = cpio::NewcReader::new(r)
            .map_err(|e| anyhow::anyhow!("no uncompressed cpio archive first ({e})"))?;
        if entry.entry().is_trailer() {
            anyhow::bail!("no {WANTED} in the first archive");
        }
        if entry.entry().name().trim_start_matches("./") == WANTED {
            let mut v = String::new();
            (&mut entry).take(64).read_to_string(&mut v)?;
            return Ok(v.trim().to_string());
        }
        r = entry.finish()?;
    }
}

/// Whether the initrd's agent speaks the shim's API: same major version, and a minor
/// at least the shim's (an older agent lacks calls the shim makes).
fn agent_api(initrd: &Path) -> Finding {
    const WHAT: &str = "agent API";
    let shim = hull_protocols::API_VERSION;
    let Ok(found) = initrd_api_version(initrd) else {
        if !initrd.exists() {
            return not_ok(
                Status::Fail,
                WHAT,
                "no initrd to read it from",
                "see the initrd line",
            );
        }
        return not_ok(
            Status::Warn,
            WHAT,
            format!(
                "{} records no agent API version (built by an older hull)",
                initrd.display()
            ),
            "rebuild the initrd with this hull: `make guest` then `make install`",
        );
    };
    let parts = |v: &str| -> (String, u32) {
        let mut it = v.split('.');
        let major = it.next().unwrap_or_default().to_string();
        let minor = it.next().and_then(|m| m.parse().ok()).unwrap_or(0);
        (major, minor)
    };
    let ((a_major, a_minor), (s_major, s_minor)) = (parts(&found), parts(shim));
    let detail = format!("initrd's agent {found}, shim {shim}");
    if a_major != s_major {
        not_ok(
            Status::Fail,
            WHAT,
            detail,
            "the shim cannot talk to this agent: install the initrd built with this hull",
        )
    } else if a_minor < s_minor {
        not_ok(
            Status::Warn,
            WHAT,
            detail,
            "an older agent: pods start, newer features (metrics of the guest) are missing; rebuild the initrd",
        )
    } else {
        ok(WHAT, detail)
    }
}

/// With `debug_console = true`, the busybox the console's tools come from.
fn debug_console(busybox: &Path) -> Finding {
    const WHAT: &str = "debug console";
    match hull_shim::share::check_static_executable(busybox) {
        Ok(()) => not_ok(
            Status::Warn,
            WHAT,
            format!(
                "on (tools from {}): root on this host gets a root shell in every pod VM",
                busybox.display()
            ),
            "turn `debug_console` off outside debugging",
        ),
        Err(e) => not_ok(
            Status::Fail,
            WHAT,
            format!("on, but {}: {e:#}", busybox.display()),
            "install busybox-static, or point `debug_console_busybox` at a static busybox",
        ),
    }
}

/// The controllers a pod VM's cgroup uses (see the shim's `vm_cgroup`): under cgroup v2,
/// or as v1 hierarchies.
const CONTROLLERS: [&str; 2] = ["memory", "pids"];

/// `template = true`: whether pods here can start from templates at all.
fn templates(kind: HypervisorKind, why: &str, run_dir: &Path) -> Finding {
    if kind == HypervisorKind::Builtin {
        ok(
            "templates",
            format!(
                "pods start from a template of their shape ({})",
                run_dir.join(hull_shim::template::TEMPLATES_DIR).display()
            ),
        )
    } else {
        not_ok(
            Status::Warn,
            "templates",
            format!("template = true, but every pod boots: templates need hull-vmm, and {why}"),
            "run on a host with hardware KVM, or set template = false",
        )
    }
}

const SHMEM_THP: &str = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";

/// hull-vmm pods: whether their guest RAM (a memfd hull-vmm advises for huge pages) can sit
/// in 2 MiB pages. A choice, not a fault: faster boots for more resident memory, so it is
/// reported, never warned about.
fn guest_ram_pages(shmem_enabled: &Path) -> Finding {
    // No file (a kernel without THP) reads as no choice.
    let text = std::fs::read_to_string(shmem_enabled).unwrap_or_default();
    let detail = match selected_mode(&text) {
        Some(m @ ("advise" | "within_size" | "always" | "force")) => format!(
            "2 MiB pages (shmem THP `{m}`): faster boots, guest memory resident in 2 MiB steps"
        ),
        Some(m) => format!(
            "4 KiB pages (shmem THP `{m}`); `advise` boots pods faster for more memory \
             (docs/operations.md)"
        ),
        None => "4 KiB pages (this kernel has no transparent huge pages)".to_owned(),
    };
    ok("guest RAM pages", detail)
}

/// The bracketed word of a sysfs choice file ("always [advise] never" -> "advise").
fn selected_mode(text: &str) -> Option<&str> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
}

fn cgroups(root: &Path) -> Finding {
    let fix = "pod VMs then run without a cgroup of their own (no memory or task bound per \
               VM): enable the memory and pids controllers (cgroup v2 preferred)";
    if let Ok(text) = std::fs::read_to_string(root.join("cgroup.controllers")) {
        let have: Vec<&str> = text.split_whitespace().collect();
        let missing: Vec<&str> = CONTROLLERS
            .into_iter()
            .filter(|c| !have.contains(c))
            .collect();
        return if missing.is_empty() {
            ok("cgroups", format!("v2, controllers: {}", have.join(" ")))
        } else {
            not_ok(
                Status::Warn,
                "cgroups",
                format!("v2 without the {} controller(s)", missing.join(", ")),
                fix,
            )
        };
    }
    let missing: Vec<&str> = CONTROLLERS
        .into_iter()
        .filter(|c| !root.join(c).join("cgroup.procs").exists())
        .collect();
    if missing.is_empty() {
        ok("cgroups", "v1 memory and pids hierarchies (v2 preferred)")
    } else {
        not_ok(
            Status::Warn,
            "cgroups",
            format!(
                "no cgroup v2 at {}, and no v1 {} hierarchy",
                root.display(),
                missing.join(", ")
            ),
            fix,
        )
    }
}

fn tun() -> Finding {
    if Path::new("/dev/net/tun").exists() {
        ok("/dev/net/tun", "present: pods get their network")
    } else {
        not_ok(
            Status::Warn,
            "/dev/net/tun",
            "missing: a pod with a network namespace from CNI cannot start",
            "load the tun module (`modprobe tun`)",
        )
    }
}

/// The traffic-control pieces the shim's tap ↔ veth redirect uses, tried for real.
fn tc_support() -> Finding {
    match hull_shim::network::probe_redirect() {
        Ok(()) => ok(
            "tc redirect",
            "ingress qdisc, u32 filter and mirred action work (tried in a throwaway namespace)",
        ),
        Err(e) => not_ok(
            Status::Warn,
            "tc redirect",
            format!("{e:#}"),
            "pods with a network cannot start: run as root, on a kernel with \
             NET_SCH_INGRESS, NET_CLS_U32 and NET_ACT_MIRRED",
        ),
    }
}

fn vhost_net() -> Finding {
    if Path::new("/dev/vhost-net").exists() {
        ok("/dev/vhost-net", "present: frames move in the kernel")
    } else {
        not_ok(
            Status::Warn,
            "/dev/vhost-net",
            "missing: the VMM moves pod network frames itself (slower)",
            "load vhost_net (`modprobe vhost_net`)",
        )
    }
}

fn run_dir(dir: &Path) -> Finding {
    let existing = dir
        .ancestors()
        .find(|d| d.exists())
        .unwrap_or(Path::new("/"));
    let c = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes()).unwrap_or_default();
    // SAFETY: access() reads the NUL-terminated path it is given and nothing else.
    let writable = unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0;
    if writable {
        ok("run_dir", format!("{} is writable", dir.display()))
    } else {
        not_ok(
            Status::Fail,
            "run_dir",
            format!("{} cannot be written here", existing.display()),
            "run containerd (and so the shim) as root, or set run_dir to a writable place",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_config_fails_and_the_rest_is_still_checked() {
        let f = findings(Err("parsing /x.toml: unknown field `memroy_mib`".into()));
        assert_eq!(f[0].what, "config");
        assert_eq!(f[0].status, Status::Fail);
        assert!(f[0].detail.contains("memroy_mib"));
        assert!(f.iter().any(|f| f.what == "accelerator"));
        assert!(f.iter().any(|f| f.what == "kernel"));
    }

    #[test]
    fn a_missing_kernel_fails_with_what_to_do() {
        let f = guest_file("kernel", Path::new("/nonexistent/vmlinux"));
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.contains("/nonexistent/vmlinux"), "{}", f.detail);
        assert!(f.fix.unwrap().contains("make guest"));
    }

    #[test]
    fn a_missing_or_broken_tool_fails() {
        assert_eq!(
            tool("virtiofsd", Path::new("/nonexistent/virtiofsd")).status,
            Status::Fail
        );
        // A file that is no program does not answer --version.
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("hull-vmm");
        std::fs::write(&fake, b"not a program").unwrap();
        let f = tool("hull-vmm", &fake);
        assert_eq!(f.status, Status::Fail);
        assert!(f.fix.unwrap().contains("hull_vmm"));
    }

    #[test]
    fn guest_ram_pages_follow_the_hosts_shmem_thp() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("shmem_enabled");
        std::fs::write(&file, "always within_size [advise] never deny force\n").unwrap();
        let f = guest_ram_pages(&file);
        assert_eq!(f.status, Status::Ok);
        assert!(
            f.detail.starts_with("2 MiB pages (shmem THP `advise`)"),
            "{f:?}"
        );
        std::fs::write(&file, "always within_size advise [never] deny force\n").unwrap();
        assert!(
            guest_ram_pages(&file)
                .detail
                .starts_with("4 KiB pages (shmem THP `never`)")
        );
        let none = guest_ram_pages(&dir.path().join("absent"));
        assert_eq!(none.status, Status::Ok);
        assert!(
            none.detail.contains("no transparent huge pages"),
            "{none:?}"
        );
        assert_eq!(selected_mode("[deny]"), Some("deny"));
        assert_eq!(selected_mode("always advise"), None);
    }

    #[test]
    fn cgroup_controllers_are_read_v2_or_v1() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(cgroups(dir.path()).status, Status::Warn);
        for c in CONTROLLERS {
            std::fs::create_dir(dir.path().join(c)).unwrap();
            std::fs::write(dir.path().join(c).join("cgroup.procs"), "").unwrap();
        }
        assert!(cgroups(dir.path()).detail.starts_with("v1"));
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu io memory\n").unwrap();
        let f = cgroups(dir.path());
        assert_eq!(f.status, Status::Warn);
        assert!(f.detail.contains("pids"));
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        assert_eq!(cgroups(dir.path()).status, Status::Ok);
    }

    /// The shim's pod network needs them, and this project's hosts have them.
    #[test]
    fn the_tc_redirect_is_tried_for_real() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert_eq!(tc_support().status, Status::Warn);
            return;
        }
        let f = tc_support();
        assert_eq!(f.status, Status::Ok, "{f:?}");
    }

    #[test]
    fn builtin_without_kvm_fails() {
        let f = backend(
            HypervisorKind::Builtin,
            HypervisorKind::Builtin,
            Accel::Tcg,
            "/dev/kvm does not exist",
        );
        assert_eq!(f.status, Status::Fail);
        assert!(f.fix.unwrap().contains("auto"));
        let f = backend(HypervisorKind::Auto, HypervisorKind::Qemu, Accel::Tcg, "");
        assert_eq!(f.status, Status::Ok);
        assert!(f.detail.contains("QEMU on TCG"));
    }

    #[test]
    fn templates_on_a_host_that_boots_qemu_warn() {
        let run = Path::new("/run/hull");
        let f = templates(HypervisorKind::Qemu, "/dev/kvm is PVM", run);
        assert_eq!(f.status, Status::Warn);
        assert!(f.detail.contains("/dev/kvm is PVM"), "{}", f.detail);
        let f = templates(HypervisorKind::Builtin, "", run);
        assert_eq!(f.status, Status::Ok);
        assert!(f.detail.contains("/run/hull/.templates"), "{}", f.detail);
    }
}
