//! Helpers shared by hull's integration tests: a busybox root filesystem, OCI specs like
//! the ones containerd sends, a hull-agent running on a unix socket, and the paths of the
//! build outputs (`build/`, `target/`).

pub mod agent;
pub mod agent_ops;
pub mod bundle;
pub mod containerd;
pub mod nested;
pub mod netns;
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
