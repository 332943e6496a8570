//! `hull pods`: the pod VMs on this node, read from the run directory the shims keep
//! (`<run_dir>/<namespace>/<sandbox>/`: the VM's pid file under `vm/`, one directory per
//! container under `mounts/`) and from /proc, without asking containerd.

use std::path::Path;

use hull_shim::config::HullConfig;
use hull_shim::daemon::{PID_FILE, PidRecord};
use hull_shim::pod_dir::{PodIdentity, pod_dirs, subdirs};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Pod {
    pub namespace: String,
    pub sandbox: String,
    /// `builtin` (hull-vmm) or `qemu`.
    pub backend: String,
    pub vmm_pid: i32,
    /// Whether the recorded VMM process is still the one that was started.
    pub running: bool,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u32>,
    pub uptime_s: Option<u64>,
    pub containers: Vec<String>,
}

pub fn run(json: bool) -> anyhow::Result<()> {
    let cfg = HullConfig::load()?;
    let pods = scan(&cfg.run_dir);
    if json {
        println!("{}", serde_json::to_string_pretty(&pods)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<24} {:<8} {:>8} {:>5} {:>7} {:>8}  CONTAINERS",
        "NAMESPACE", "SANDBOX", "BACKEND", "VMM PID", "VCPUS", "MEM MiB", "UPTIME"
    );
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    for p in &pods {
        println!(
            "{:<16} {:<24} {:<8} {:>8} {:>5} {:>7} {:>8}  {}",
            p.namespace,
            p.sandbox,
            p.backend,
            if p.running {
                p.vmm_pid.to_string()
            } else {
                format!("{} (gone)", p.vmm_pid)
            },
            opt(p.vcpus.map(u64::from)),
            opt(p.memory_mib.map(u64::from)),
            p.uptime_s.map_or("-".into(), human_duration),
            p.containers.join(",")
        );
    }
    Ok(())
}

/// Every pod directory under `run_dir` with a recorded VMM, sorted by namespace and id.
pub fn scan(run_dir: &Path) -> Vec<Pod> {
    let mut pods: Vec<Pod> = pod_dirs(run_dir)
        .iter()
        .filter_map(|dir| pod(dir.parent()?, dir))
        .collect();
    pods.sort_by(|a, b| (&a.namespace, &a.sandbox).cmp(&(&b.namespace, &b.sandbox)));
    pods
}

fn name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn pod(ns: &Path, dir: &Path) -> Option<Pod> {
    let pids = std::fs::read_to_string(dir.join("vm").join(PID_FILE)).ok()?;
    let vmm = PidRecord::parse_file(&pids)
        .into_iter()
        .find(|r| r.role == "vmm")?;
    let running = vmm.is_alive();
    let args: Vec<String> = if running {
        std::fs::read(format!("/proc/{}/cmdline", vmm.pid))
            .map(|b| {
                b.split(|c| *c == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let (backend, vcpus_flag, memory_flag) = if vmm.name == "hull-vmm" {
        ("builtin", "--vcpus", "--memory")
    } else {
        ("qemu", "-smp", "-m")
    };
    // Container ids never start with a dot; `.debug` holds the debug console's tools.
    let mut containers: Vec<String> = subdirs(&dir.join("mounts"))
        .iter()
        .map(|d| name(d))
        .filter(|n| !n.starts_with('.'))
        .collect();
    containers.sort();
    // The directory's name is a shortened one for long ids (CRI's 64 characters).
    let sandbox = PodIdentity::read(dir).map_or_else(|| name(dir), |i| i.sandbox);
    Some(Pod {
        namespace: name(ns),
        sandbox,
        backend: backend.into(),
        vmm_pid: vmm.pid,
        running,
        vcpus: flag_value(&args, vcpus_flag),
        memory_mib: flag_value(&args, memory_flag),
        uptime_s: running.then(|| uptime_s(vmm.start)).flatten(),
        containers,
    })
}

/// The number after `flag` in `args` (QEMU's `-smp 2,...` and `-m 256M` included).
fn flag_value(args: &[String], flag: &str) -> Option<u32> {
    let v = args.iter().skip_while(|a| *a != flag).nth(1)?;
    let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Seconds since a process started `start_ticks` clock ticks after boot.
fn uptime_s(start_ticks: u64) -> Option<u64> {
    // SAFETY: sysconf only reads a configuration value.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    // Whole seconds since boot: the fraction does not matter for an uptime.
    let up: u64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split(['.', ' '])
        .next()?
        .parse()
        .ok()?;
    Some(up.saturating_sub(start_ticks.checked_div(hz)?))
}

fn human_duration(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_are_read_from_the_run_directory() {
        let run = tempfile::tempdir().unwrap();
        let pod = run.path().join("k8s.io/web-1");
        std::fs::create_dir_all(pod.join("vm")).unwrap();
        std::fs::create_dir_all(pod.join("mounts/web-1")).unwrap();
        std::fs::create_dir_all(pod.join("mounts/nginx")).unwrap();
        std::fs::create_dir_all(pod.join("mounts/.debug")).unwrap();
        // This test process stands for the VMM: its own pid and start time.
        let me = std::process::id().cast_signed();
        let start = hull_shim::daemon::start_time(me).unwrap();
        std::fs::write(
            pod.join("vm/pids"),
            format!("{me} {start} vmm hull-vmm\n{me} {start} backend virtiofsd\n"),
        )
        .unwrap();
        // A directory without a VM is no pod.
        std::fs::create_dir_all(run.path().join("k8s.io/half-made")).unwrap();
        let pods = scan(run.path());
        assert_eq!(pods.len(), 1, "{pods:?}");
        let p = &pods[0];
        assert_eq!(
            (p.namespace.as_str(), p.sandbox.as_str()),
            ("k8s.io", "web-1")
        );
        assert_eq!(p.backend, "builtin");
        assert!(p.running);
        assert_eq!(p.containers, ["nginx", "web-1"]);
        assert!(p.uptime_s.is_some());
        // A VMM that is gone (another start time) is shown as such.
        std::fs::write(pod.join("vm/pids"), format!("{me} 1 vmm qemu\n")).unwrap();
        let p = &scan(run.path())[0];
        assert!(!p.running);
        assert_eq!(p.backend, "qemu");
    }

    #[test]
    fn vcpus_and_memory_come_from_the_vmm_command_line() {
        let args: Vec<String> = ["hull-vmm", "--memory", "512", "--vcpus", "2"]
            .map(String::from)
            .to_vec();
        assert_eq!(flag_value(&args, "--vcpus"), Some(2));
        assert_eq!(flag_value(&args, "--memory"), Some(512));
        let q: Vec<String> = ["qemu", "-smp", "4,sockets=1", "-m", "256M"]
            .map(String::from)
            .to_vec();
        assert_eq!(flag_value(&q, "-smp"), Some(4));
        assert_eq!(flag_value(&q, "-m"), Some(256));
        assert_eq!(flag_value(&q, "-nothing"), None);
    }
}
