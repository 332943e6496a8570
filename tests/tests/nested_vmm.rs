//! Tier 4: hull-vmm on real (nested) KVM. The test host (tests/nested/test-host.sh) is a
//! QEMU TCG VM with emulated AMD SVM and kvm-amd; inside it hull-vmm boots the project's
//! guest kernel and initrd.

use std::process::Command;

fn in_test_host(script: &str) -> (i32, String) {
    hull_tests::require_root();
    let root = hull_tests::repo_root();
    let bin = root.join("target/x86_64-unknown-linux-gnu/release");
    let (vmm, probe) = (bin.join("hull-vmm"), bin.join("hull-agent-probe"));
    for b in [&vmm, &probe] {
        assert!(
            b.exists(),
            "{} is missing: run `make vmm-static`",
            b.display()
        );
    }
    let mut files = Vec::new();
    for f in [
        vmm,
        probe,
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
fn hull_vmm_boots_the_guest_and_its_agent_answers_over_hybrid_vsock() {
    let script = r#"
# 1. A kernel without an init panics; panic=-1 reboots through the i8042: hull-vmm exits 0.
#    Two vCPUs: the MP table must bring both up first.
./hull-vmm --kernel vmlinux --initrd initrd.img --memory 128 --vcpus 2 --cmdline "rdinit=/none" --serial-log /tmp/panic.log
echo "panic-boot-exit=$?"
grep -c "Kernel panic" /tmp/panic.log | sed 's/^/panics=/'
grep -o "Brought up 1 node, 2 CPUs" /tmp/panic.log
# 2. The real boot (one vCPU: a busy 2-vCPU guest starves this 2-vCPU TCG test host): the
#    agent answers over hull-vmm's hybrid vsock socket, and
#    DestroySandbox ends the VM (the guest resets, hull-vmm exits 0).
HULL_LOG=info timeout 300 ./hull-vmm --kernel vmlinux --initrd initrd.img --memory 256 --vsock-uds /tmp/v.sock --cmdline "hull.log=info" --serial-log /tmp/guest.log 2>/tmp/vmm.err &
vmm=$!
./hull-agent-probe --vsock-uds /tmp/v.sock --timeout 240 --destroy
echo "probe-exit=$?"
wait $vmm
echo "vmm-exit=$?"
grep -E "Run /init|hull-agent ready" /tmp/guest.log
grep -o "guest agent ready ms=[0-9]*" /tmp/vmm.err
"#;
    let (rc, out) = in_test_host(script);
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("panic-boot-exit=0"), "{out}");
    assert!(out.contains("panics=1"), "{out}");
    assert!(out.contains("health SERVING"), "{out}");
    assert!(out.contains("guest kernel 6.12."), "{out}");
    assert!(
        out.contains("Brought up 1 node, 2 CPUs"),
        "SMP guest: {out}"
    );
    assert!(out.contains("destroyed\nprobe-exit=0"), "{out}");
    assert!(out.contains("vmm-exit=0"), "{out}");
    assert!(out.contains("Run /init as init process"), "{out}");
    assert!(out.contains("hull-agent ready"), "{out}");
    // The agent wrote the boot-timer port; hull-vmm timed it.
    assert!(out.contains("guest agent ready ms="), "{out}");
}
