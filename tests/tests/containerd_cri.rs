//! The CRI path as the kubelet uses it: containerd's CRI plugin with a `hull` runtime
//! handler, driven by PyPI's CRI client (tests/cri/pod_lifecycle.py).

use std::process::Command;

use hull_tests::containerd::Containerd;

#[test]
fn pod_with_two_containers_in_one_vm() {
    let c = Containerd::start(true);
    let venv = std::env::var("HULL_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/hull")
        })
        .join("venv/bin/python");
    let logs = c.dir.path().join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let script = hull_tests::repo_root().join("tests/cri/pod_lifecycle.py");
    let out = Command::new(&venv)
        .arg(&script)
        .arg(c.socket())
        .arg(&logs)
        .arg(c.dir.path())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running {} with {} (run scripts/setup.sh): {e}",
                script.display(),
                venv.display()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}\n{}\n--- containerd ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.tail_log()
    );
    assert!(stdout.contains("pod lifecycle ok"));
    c.assert_clean();
}
