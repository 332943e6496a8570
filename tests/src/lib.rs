//! Helpers shared by hull's integration tests: a busybox root filesystem, OCI specs like
//! the ones containerd sends, a hull-agent running on a unix socket, and the paths of the
//! build outputs (`build/`, `target/`).

pub mod agent;
pub mod agent_ops;
pub mod bundle;
pub mod containerd;
pub mod nested;
pub mod netns;
pub mod oci;
pub mod scenarios;
pub mod vm;

use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Directory holding the workspace's binaries for the profile the tests were built with.
pub fn target_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test>-<hash>
    exe.parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>")
        .to_path_buf()
}

/// Polls `cond` every 100 ms for up to `timeout`; whether it became true.
pub fn wait_until(timeout: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Fails the test with a clear message unless we run as root (the suite's tiers 2-3 need it).
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root: run it through `make test`"
    );
}

/// Ends the test process with a report if it is still armed after `timeout`: for steps
/// that can hang (a pod's teardown in the nested test host), so that the report says
/// where, instead of an outer timeout killing everything silently.
pub struct Watchdog {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Watchdog {
    pub fn arm(
        what: &str,
        timeout: std::time::Duration,
        report: impl FnOnce() -> String + Send + 'static,
    ) -> Watchdog {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, what) = (done.clone(), what.to_string());
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + timeout;
            while std::time::Instant::now() < deadline {
                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            eprintln!(
                "WATCHDOG: {what} still running after {timeout:?}\n{}",
                report()
            );
            std::process::exit(3);
        });
        Watchdog { done }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Kernel stacks and states of every thread of `pid` (and of its `vhost-<pid>` kernel
/// workers), for a report on a hang.
pub fn thread_stacks(pid: i32) -> String {
    let mut out = String::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|r| r.flatten().map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default();
    let workers = std::fs::read_dir("/proc")
        .map(|r| {
            r.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    std::fs::read_to_string(p.join("comm"))
                        .is_ok_and(|c| c.trim() == format!("vhost-{pid}"))
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    for t in tasks.iter().chain(&workers) {
        let read = |f: &str| std::fs::read_to_string(t.join(f)).unwrap_or_default();
        out += &format!(
            "-- {} {} state {} wchan {}\n{}",
            t.display(),
            read("comm").trim(),
            read("stat")
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next()
                .unwrap_or("?"),
            read("wchan"),
            read("stack")
        );
    }
    out
}
