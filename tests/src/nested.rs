//! The nested test host (tests/nested/test-host.sh) from Rust tests: run a shell script in
//! it, or run one of the calling test binary's own tests in it. The test host shares this
//! machine's tree, so the same binary and build outputs are there at the same paths.
//!
//! Tests that only make sense inside (hull-vmm needs real KVM) are `#[ignore]`d and call
//! `require_inside()`; an outer test runs them there with `run_own_test`.

use std::process::Command;
use std::sync::Mutex;

/// Set in the test host's environment for tests run with `run_own_test`.
pub const INSIDE_ENV: &str = "HULL_IN_TEST_HOST";

/// One test host at a time: two TCG VMs on two cores would starve each other's guests.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The test host's memory unless a test asks for more (test-host.sh's default).
pub const DEFAULT_MEMORY_MIB: u32 = 2048;

/// Runs `script` (sh) inside the test host; its exit status and what it printed.
pub fn run_script(script: &str, timeout_s: u32) -> (i32, String) {
    run_script_with_memory(script, timeout_s, DEFAULT_MEMORY_MIB)
}

/// `run_script` in a test host of `memory_mib` (many pod VMs at once need more).
pub fn run_script_with_memory(script: &str, timeout_s: u32, memory_mib: u32) -> (i32, String) {
    crate::require_root();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(crate::repo_root().join("tests/nested/test-host.sh"))
        .args(["--timeout", &timeout_s.to_string()])
        .args(["--memory", &memory_mib.to_string()])
        .arg("--")
        .arg(script)
        .current_dir(crate::repo_root())
        .output()
        .expect("running the nested test host");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// Runs the calling binary's test `name` (usually `#[ignore]`d) inside the test host and
/// fails unless it passed there.
pub fn run_own_test(name: &str, timeout_s: u32) {
    run_own_test_with_memory(name, timeout_s, DEFAULT_MEMORY_MIB);
}

/// `run_own_test` in a test host of `memory_mib`.
pub fn run_own_test_with_memory(name: &str, timeout_s: u32, memory_mib: u32) {
    let exe = std::env::current_exe().expect("test binary path");
    let script = format!(
        "{INSIDE_ENV}=1 RUST_BACKTRACE=1 {} --exact {name} --include-ignored --nocapture --test-threads=1",
        exe.display()
    );
    let (rc, out) = run_script_with_memory(&script, timeout_s, memory_mib);
    assert_eq!(rc, 0, "{name} failed inside the test host");
    assert!(
        out.contains("test result: ok. 1 passed"),
        "{name} did not run inside the test host:\n{out}"
    );
}

/// For tests meant to run only inside the test host.
pub fn require_inside() {
    assert!(
        std::env::var_os(INSIDE_ENV).is_some(),
        "this test runs inside the nested test host: run the test that calls run_own_test"
    );
}
