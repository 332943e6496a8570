//! Tier 3 with containerd: a private containerd 1.6 runs busybox containers with
//! `--runtime io.containerd.hull.v2`, each pod in its own hull VM (QEMU TCG here).
//! Every test ends by checking that no VM, daemon, mount or pod directory is left.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use hull_tests::containerd::{Containerd, IMAGE};
use hull_tests::wait_until;

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

    // A pod whose network namespace has no usable link (no CNI) gets loopback only.
    let empty = hull_tests::netns::Ns::new("ctr-empty");
    let netns = format!("network:{}", empty.path().display());
    let out = c.ctr_ok(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--with-ns",
        &netns,
        IMAGE,
        "lo1",
        "ls",
        "/sys/class/net",
    ]);
    let links: Vec<&str> = out.split_whitespace().collect();
    assert!(links.contains(&"lo"), "{links:?}");
    assert!(!links.iter().any(|l| l.starts_with("eth")), "{links:?}");

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
    let stopped = wait_until(Duration::from_secs(10), || {
        c.ctr_ok(&["task", "ls"]).contains("STOPPED")
    });
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

#[test]
fn tty_run() {
    let c = Containerd::start(false);
    // ctr -t needs a terminal on its own stdin: give it one with script(1). `timeout
    // --foreground` keeps ctr in the terminal's foreground process group.
    let line = format!(
        "timeout --foreground 120 ctr --address {} -n {} run --rm -t --runtime {RUNTIME} {IMAGE} tty1 sh -c 'tty; stty size; echo tty-ok'",
        c.socket().display(),
        hull_tests::containerd::NAMESPACE
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", c.tail_log());
    assert!(text.contains("/dev/pts/0"), "{text}");
    assert!(text.contains("tty-ok"), "{text}");
    c.assert_clean();
}

/// Runs `id` detached (`sleep 600`), then SIGKILLs `pid_of(c, id)`: the shim, or the VMM
/// (QEMU or hull-vmm: whichever backend the host runs, read from the pod's pid file).
fn run_detached_then_kill(c: &Containerd, id: &str, pid_of: fn(&Containerd, &str) -> i32) {
    c.run_sleeper(id, &[]);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid_of(c, id)),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

fn the_shim(c: &Containerd, _id: &str) -> i32 {
    let pids = c.shim_pids();
    assert_eq!(
        pids.len(),
        1,
        "one shim expected: {:?}",
        c.leftover_processes()
    );
    pids[0]
}

fn the_vmm(c: &Containerd, id: &str) -> i32 {
    c.vmm_pid(id).expect("the pod's pid file names its VMM")
}

#[test]
fn killed_shim_is_cleaned_up() {
    let c = Containerd::start(false);
    run_detached_then_kill(&c, "victim", the_shim);
    // containerd notices, runs `containerd-shim-hull-v2 delete`, and the task is gone.
    let gone = wait_until(Duration::from_secs(10), || {
        !c.ctr_ok(&["task", "ls"]).contains("victim")
    });
    assert!(gone, "task still listed after its shim died");
    c.ctr_ok(&["containers", "rm", "victim"]);
    c.assert_clean();
}

#[test]
fn dead_vm_ends_its_tasks() {
    let c = Containerd::start(false);
    run_detached_then_kill(&c, "doomed", the_vmm);
    let stopped = wait_until(Duration::from_secs(10), || {
        c.ctr_ok(&["task", "ls"]).contains("STOPPED")
    });
    assert!(
        stopped,
        "task not stopped after its VM died:\n{}",
        c.tail_log()
    );
    // The pod's event log (what `hull monitor` prints) says the VM died: the shim's VM
    // watcher writes it, which may come a moment after the task's exit.
    let events_file = c
        .pod_dir(hull_tests::containerd::NAMESPACE, "doomed")
        .join(hull_shim::pod_events::FILE);
    let died = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&events_file)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("\"event\":\"vm_died\""))
    });
    assert!(
        died,
        "{}",
        std::fs::read_to_string(&events_file).unwrap_or_default()
    );
    let del = c.ctr(&["task", "delete", "doomed"]);
    assert!(
        String::from_utf8_lossy(&del.stderr).contains("exit code 255"),
        "{}",
        String::from_utf8_lossy(&del.stderr)
    );
    c.ctr_ok(&["containers", "rm", "doomed"]);
    c.assert_clean();
}

/// Eight pods started at once on this small host: boots queue for host-wide boot slots
/// (one per core under TCG, by default), so every pod starts and prints its output instead
/// of the later ones running past their boot deadline; nothing is left afterwards.
#[test]
fn eight_pods_started_at_once_all_run() {
    let c = Containerd::start(false);
    c.run_at_once(8, "load");
    c.assert_clean();
}
