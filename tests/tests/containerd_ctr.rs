//! Tier 3 with containerd: a private containerd 1.6 runs busybox containers with
//! `--runtime io.containerd.hull.v2`, each pod in its own hull VM (QEMU TCG here).
//! Every test ends by checking that no VM, daemon, mount or pod directory is left.

use std::io::Write;
use std::process::Stdio;

use hull_tests::containerd::{Containerd, IMAGE};

const RUNTIME: &str = "io.containerd.hull.v2";

#[test]
fn run_rm_output_exit_code_and_guest_kernel() {
    let c = Containerd::start(false);
    let host = nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .into_owned();
    let out = c.ctr_ok(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        "echo1",
        "sh",
        "-c",
        "echo hello from hull; uname -r",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "hello from hull");
    assert!(lines[1].starts_with("6.12."), "{out}");
    assert_ne!(lines[1], host);

    let r = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        "exit3",
        "sh",
        "-c",
        "exit 3",
    ]);
    assert_eq!(
        r.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    c.assert_clean();
}

#[test]
fn stdin_is_piped_through_cat() {
    let c = Containerd::start(false);
    let mut child = c
        .ctr_cmd(&["run", "--rm", "--runtime", RUNTIME, IMAGE, "cat1", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"line one\nline two\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "line one\nline two\n");
    c.assert_clean();
}

#[test]
fn detached_exec_kill_metrics_pause_delete() {
    let c = Containerd::start(false);
    c.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "svc",
        "sleep",
        "600",
    ]);
    let exec = c.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "svc",
        "sh",
        "-c",
        "echo exec says hi; hostname",
    ]);
    assert!(exec.starts_with("exec says hi\n"), "{exec}");

    let metrics = c.ctr_ok(&["task", "metrics", "svc"]);
    assert!(
        metrics.contains("memory.usage_in_bytes") || metrics.contains("memory"),
        "{metrics}"
    );
    assert!(metrics.contains("pids.current"), "{metrics}");

    c.ctr_ok(&["task", "pause", "svc"]);
    assert!(c.ctr_ok(&["task", "ls"]).contains("PAUSED"));
    c.ctr_ok(&["task", "resume", "svc"]);
    assert!(c.ctr_ok(&["task", "ls"]).contains("RUNNING"));
    let ps = c.ctr_ok(&["task", "ps", "svc"]);
    assert!(ps.lines().count() >= 2, "{ps}");

    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", "svc"]);
    let mut stopped = false;
    for _ in 0..100 {
        if c.ctr_ok(&["task", "ls"]).contains("STOPPED") {
            stopped = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(stopped, "task did not stop after SIGKILL");
    let del = c.ctr(&["task", "delete", "svc"]);
    assert!(
        del.status.success(),
        "{}",
        String::from_utf8_lossy(&del.stderr)
    );
    assert!(
        String::from_utf8_lossy(&del.stderr).contains("exit code 137"),
        "status {:?} stdout {:?} stderr {:?}",
        del.status,
        String::from_utf8_lossy(&del.stdout),
        String::from_utf8_lossy(&del.stderr)
    );
    c.ctr_ok(&["containers", "rm", "svc"]);
    c.assert_clean();
}
