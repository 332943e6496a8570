//! The `hull` operator tool, run as a program the way an operator runs it: `check` answers
//! for this host (on a PVM host, QEMU TCG), fails on a broken config or a missing kernel,
//! `env --json` is the effective configuration, `pods` lists a pod that containerd started
//! on hull (a real VM) and forgets it once it is removed, and `logs` shows that pod's shim
//! log and console.

use std::path::Path;
use std::process::{Command, Output};

use hull_shim::config::HypervisorKind;
use hull_shim::hypervisor::accel::Accel;
use hull_tests::containerd::{Containerd, NAMESPACE};

fn hull(config: &Path, args: &[&str]) -> Output {
    Command::new(hull_tests::target_bin_dir().join("hull"))
        .args(args)
        .env("HULL_CONFIG", config)
        .output()
        .expect("running hull")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A config naming this tree's guest kernel and initrd and a private run directory.
fn config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let build = hull_tests::repo_root().join("build");
    let path = dir.join("hull.toml");
    std::fs::write(
        &path,
        format!(
            "kernel = \"{}\"\ninitrd = \"{}\"\nrun_dir = \"{}\"\n{extra}",
            build.join("vmlinux").display(),
            build.join("initrd.img").display(),
            dir.join("run").display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn check_answers_for_this_host() {
    hull_tests::require_root();
    let dir = tempfile::tempdir().unwrap();
    let out = hull(&config(dir.path(), ""), &["check"]);
    let said = text(&out);
    assert!(out.status.success(), "a pod can start here:\n{said}");
    let line = |what: &str| {
        said.lines()
            .find(|l| l[l.find(' ').map_or(0, |i| i + 1)..].starts_with(what))
            .unwrap_or_else(|| panic!("no {what} line:\n{said}"))
            .to_string()
    };
    match Accel::detect().0 {
        Accel::Kvm => {
            assert!(line("accelerator:").starts_with("✓"), "{said}");
            assert!(line("backend:").contains("hull-vmm on KVM"), "{said}");
        }
        Accel::Tcg => {
            assert!(line("accelerator:").starts_with('!'), "{said}");
            assert!(line("accelerator:").contains("QEMU TCG"), "{said}");
            assert!(line("backend:").contains("QEMU on TCG"), "{said}");
        }
    }
    assert!(line("kernel:").starts_with("✓"), "{said}");
    assert!(line("tc redirect:").starts_with("✓"), "{said}");
    // --strict fails exactly when something is qualified.
    let strict = hull(&config(dir.path(), ""), &["check", "--strict"]);
    let warned = said.lines().any(|l| l.starts_with('!'));
    assert_eq!(strict.status.success(), !warned, "{}", text(&strict));
    // --json: one object per requirement.
    let json = hull(&config(dir.path(), ""), &["check", "--json"]);
    for l in String::from_utf8_lossy(&json.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(
            matches!(v["status"].as_str(), Some("ok" | "warn" | "fail")),
            "{l}"
        );
    }
}

#[test]
fn check_fails_on_a_broken_config_or_a_missing_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "memroy_mib = 512\n").unwrap();
    let out = hull(&bad, &["check"]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("✗ config:") && said.contains("memroy_mib"),
        "{said}"
    );

    let no_kernel = config(dir.path(), "");
    let text_cfg = std::fs::read_to_string(&no_kernel)
        .unwrap()
        .replace("build/vmlinux", "build/no-such-vmlinux");
    std::fs::write(&no_kernel, text_cfg).unwrap();
    let out = hull(&no_kernel, &["check"]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    let kernel = said
        .lines()
        .find(|l| l.starts_with("✗ kernel:"))
        .unwrap_or_else(|| panic!("{said}"));
    assert!(kernel.contains("no-such-vmlinux"), "{said}");
}

#[test]
fn env_is_the_effective_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let out = hull(
        &config(dir.path(), "memory_mib = 384\n"),
        &["env", "--json"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["config"]["memory_mib"], 384);
    assert_eq!(
        v["config"]["vcpus"], 1,
        "a default fills what the file leaves out"
    );
    let (backend, _, _) = hull_shim::hypervisor::resolve(HypervisorKind::Auto);
    assert_eq!(
        v["resolved"]["backend"],
        serde_json::to_value(backend).unwrap()
    );
    // The TOML form is a config file hull reads back.
    let toml_out = hull(&config(dir.path(), ""), &["env"]);
    assert!(toml_out.status.success());
    assert!(String::from_utf8_lossy(&toml_out.stdout).contains("[config]"));
}

#[test]
fn pods_lists_a_running_pod_and_forgets_it_once_removed() {
    hull_tests::require_root();
    let c = Containerd::start_with_hull_config("");
    let cfg = c.hull_config();
    c.run_sleeper("cli-pod", &[]);
    let out = hull(&cfg, &["pods", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let pods: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pods = pods.as_array().unwrap();
    assert_eq!(pods.len(), 1, "{pods:?}");
    let p = &pods[0];
    assert_eq!(p["namespace"], NAMESPACE);
    assert_eq!(p["sandbox"], "cli-pod");
    assert_eq!(p["running"], true);
    assert_eq!(p["vmm_pid"], c.vmm_pid("cli-pod").unwrap());
    assert_eq!(p["vcpus"], 1);
    assert_eq!(p["memory_mib"], 256);
    assert_eq!(p["containers"], serde_json::json!(["cli-pod"]));
    let table = text(&hull(&cfg, &["pods"]));
    assert!(
        table
            .lines()
            .any(|l| l.contains("cli-pod") && l.contains(NAMESPACE)),
        "{table}"
    );
    // The pod's own logs: the shim's lines and the guest's console.
    let shim_log = text(&hull(&cfg, &["logs", "cli-pod"]));
    assert!(shim_log.contains("pod VM ready"), "{shim_log}");
    assert!(
        shim_log.contains("sandbox=cli-pod") || shim_log.contains("sandbox=\"cli-pod\""),
        "lines name their pod: {shim_log}"
    );
    let console = text(&hull(
        &cfg,
        &["logs", "--console", "-n", NAMESPACE, "cli-pod"],
    ));
    assert!(console.contains("hull-agent ready"), "{console}");
    let missing = hull(&cfg, &["logs", "no-such-pod"]);
    assert!(!missing.status.success());
    assert!(
        text(&missing).contains("no pod no-such-pod"),
        "{}",
        text(&missing)
    );
    // Following ends once the pod is removed.
    let follower = Command::new(hull_tests::target_bin_dir().join("hull"))
        .args(["logs", "--follow", "cli-pod"])
        .env("HULL_CONFIG", &cfg)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    c.kill_and_remove("cli-pod");
    let mut follower = follower;
    let ended = hull_tests::wait_until(std::time::Duration::from_secs(10), || {
        follower.try_wait().unwrap().is_some()
    });
    if !ended {
        let _ = follower.kill();
    }
    assert!(ended, "hull logs --follow outlived its pod");
    let out = hull(&cfg, &["pods", "--json"]);
    let pods: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pods, serde_json::json!([]), "the removed pod is gone");
    c.assert_clean();
}
