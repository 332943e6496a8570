//! The CRI path as the kubelet uses it: containerd's CRI plugin with a `hull` runtime
//! handler, driven by PyPI's CRI client (scripts in tests/cri).

use std::path::PathBuf;
use std::process::Command;

use hull_tests::containerd::Containerd;

/// Runs a CRI client script from tests/cri with the set-up script's Python; returns stdout.
fn run_script(c: &Containerd, name: &str, extra: &[&std::ffi::OsStr]) -> String {
    let python = std::env::var("HULL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/hull"))
        .join("venv/bin/python");
    let logs = c.dir.path().join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let script = hull_tests::repo_root().join("tests/cri").join(name);
    let out = Command::new(&python)
        .arg(&script)
        .arg(c.socket())
        .arg(&logs)
        .args(extra)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running {} with {} (run scripts/setup.sh): {e}",
                script.display(),
                python.display()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}\n{}\n--- containerd ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.tail_log()
    );
    stdout
}

#[test]
fn pod_with_two_containers_in_one_vm() {
    let c = Containerd::start(true);
    let out = run_script(&c, "pod_lifecycle.py", &[c.dir.path().as_os_str()]);
    assert!(out.contains("pod lifecycle ok"));
    c.assert_clean();
}

/// Host-side veths (ptp's) present now.
fn veths() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("veth"))
        .collect()
}

#[test]
fn pod_with_a_cni_network_starts_with_loopback_only() {
    let before = veths();
    let c = Containerd::start_with_cni();
    let out = run_script(&c, "pod_network.py", &[]);
    assert!(out.contains("pod network ok"));
    let warnings = c
        .log()
        .lines()
        .filter(|l| l.contains("pod network is not connected"))
        .count();
    assert_eq!(
        warnings,
        1,
        "the shim should warn exactly once:\n{}",
        c.tail_log()
    );
    c.assert_clean();
    let left: Vec<String> = veths()
        .into_iter()
        .filter(|v| !before.contains(v))
        .collect();
    assert!(left.is_empty(), "veth left behind: {left:?}");
}
