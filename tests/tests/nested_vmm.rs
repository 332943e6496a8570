//! Tier 4: hull-vmm on real (nested) KVM. The test host (tests/nested/test-host.sh) is a
//! QEMU TCG VM with emulated AMD SVM and kvm-amd; inside it hull-vmm boots the project's
//! guest kernel and initrd.

use std::process::Command;

fn in_test_host(script: &str) -> (i32, String) {
    hull_tests::require_root();
    let root = hull_tests::repo_root();
    let vmm = root.join("target/x86_64-unknown-linux-gnu/release/hull-vmm");
    assert!(
        vmm.exists(),
        "{} is missing: run `make vmm-static`",
        vmm.display()
    );
    let mut files = Vec::new();
    for f in [
        vmm,
        root.join("build/vmlinux"),
        root.join("build/initrd.img"),
    ] {
        files.push("--file".to_string());
        files.push(f.display().to_string());
    }
    let out = Command::new(root.join("tests/nested/test-host.sh"))
        .args(["--timeout", "400"])
        .args(&files)
        .arg("--")
        .arg(script)
        .output()
        .expect("running the nested test host");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn hull_vmm_boots_the_guest_kernel_to_the_agent_and_ends_on_guest_reset() {
    let script = r#"
# 1. A kernel without an init panics; panic=-1 reboots through the i8042: hull-vmm exits 0.
./hull-vmm --kernel vmlinux --initrd initrd.img --memory 128 --cmdline "rdinit=/none quiet" --serial-log /tmp/panic.log
echo "panic-boot-exit=$?"
grep -c "Kernel panic" /tmp/panic.log | sed 's/^/panics=/'
# 2. The real boot: the agent comes up as PID 1.
start=$(cut -d' ' -f1 /proc/uptime)
./hull-vmm --kernel vmlinux --initrd initrd.img --memory 256 --cmdline "hull.log=info" --serial-log /tmp/guest.log &
vmm=$!
for i in $(seq 1 1500); do grep -q "hull-agent ready" /tmp/guest.log 2>/dev/null && break; sleep 0.1; done
echo "agent-after-s=$(awk -v s=$start '{print $1 - s}' /proc/uptime)"
grep -E "Run /init|hull-agent ready" /tmp/guest.log
kill $vmm
"#;
    let (rc, out) = in_test_host(script);
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("panic-boot-exit=0"), "{out}");
    assert!(out.contains("panics=1"), "{out}");
    assert!(out.contains("Run /init as init process"), "{out}");
    assert!(out.contains("hull-agent ready"), "{out}");
}
