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
    hull_tests::oci::hull_config(dir, extra)
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
    // The initrd records the API version of the agent it holds: this build's.
    assert!(
        line("agent API:").starts_with("✓")
            && line("agent API:").contains(hull_protocols::API_VERSION),
        "{said}"
    );
    assert!(!said.contains("debug console"), "off by default:\n{said}");
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
    // The console is off: refused, saying how to turn it on; and a config that turns it
    // on later does not reach a pod booted without it (the guest serves no console).
    let off = hull(&cfg, &["console", "cli-pod", "--", "uname", "-r"]);
    assert!(!off.status.success());
    assert!(
        text(&off).contains("debug console is off"),
        "{}",
        text(&off)
    );
    let on_later = c.dir.path().join("on-later.toml");
    std::fs::write(
        &on_later,
        std::fs::read_to_string(&cfg).unwrap() + "debug_console = true\n",
    )
    .unwrap();
    let not_booted_with_it = hull(&on_later, &["console", "cli-pod", "--", "uname", "-r"]);
    assert!(!not_booted_with_it.status.success());
    assert!(
        text(&not_booted_with_it).contains("does not serve a debug console"),
        "{}",
        text(&not_booted_with_it)
    );
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

/// With `debug_console = true`, `hull console` runs commands as root in the pod's VM,
/// outside the containers (PID 1 there is the agent), piped or on a terminal.
#[test]
fn console_runs_commands_in_the_guest_outside_the_containers() {
    hull_tests::require_root();
    let c = Containerd::start_with_hull_config("debug_console = true\n");
    let cfg = c.hull_config();
    let check = text(&hull(&cfg, &["check"]));
    assert!(
        check.lines().any(|l| l.starts_with("! debug console: on")),
        "{check}"
    );
    c.run_sleeper("dbg", &[]);
    // (exit status, stdout, stderr) of a command run through the console, fed `input`.
    let console = |args: &[&str], input: &str| {
        let mut child = Command::new(hull_tests::target_bin_dir().join("hull"))
            .args(["console", "dbg", "--"])
            .args(args)
            .env("HULL_CONFIG", &cfg)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        // Dropped after writing: the command sees the end of its input.
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )
    };
    let ok = |args: &[&str], input: &str| {
        let (status, out, err) = console(args, input);
        assert_eq!(status, Some(0), "{args:?}: {out}\n{err}");
        out
    };
    let in_container = c.ctr_ok(&["task", "exec", "--exec-id", "u", "dbg", "uname", "-r"]);
    assert_eq!(ok(&["uname", "-r"], ""), in_container.trim());
    assert_eq!(
        ok(&["cat", "/proc/1/comm"], ""),
        "init",
        "PID 1 of the guest, not of the container"
    );
    // stdin, to its end; stdout and stderr apart; the command's exit status.
    assert_eq!(ok(&["cat"], "line one\nline two\n"), "line one\nline two");
    assert_eq!(
        console(&["sh", "-c", "echo out; echo err >&2; exit 3"], ""),
        (Some(3), "out".into(), "err".into())
    );
    let (status, _, err) = console(&["no-such-tool"], "");
    assert_eq!(status, Some(127), "{err}");
    assert!(err.contains("no-such-tool"), "{err}");
    // On a terminal (script(1) gives hull one), the command gets a pty in the guest.
    let tty = Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "{} console dbg -- tty",
            hull_tests::target_bin_dir().join("hull").display()
        ))
        .arg("/dev/null")
        .env("HULL_CONFIG", &cfg)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&tty.stdout).contains("/dev/pts/"),
        "{}",
        text(&tty)
    );
    c.kill_and_remove("dbg");
    c.assert_clean();
}
