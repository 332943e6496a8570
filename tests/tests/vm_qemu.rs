//! Tier 3: the real guest (build/vmlinux + build/initrd.img) under QEMU (TCG here); the
//! agent answers over hybrid vsock (vhost-device-vsock) and runs busybox containers whose
//! rootfs comes from the host through virtiofsd.

use hull_shim::config::HypervisorKind;

#[tokio::test]
async fn guest_runs_containers_over_vsock_and_virtiofs() {
    hull_tests::scenarios::containers_over_vsock_and_virtiofs(HypervisorKind::Qemu).await;
}

/// `HULL_BOOT_LOOP=N` boots (default 20) of the real guest under QEMU, one after another,
/// each until its agent answers (90 s at most). Prints min/median/max and the failures,
/// with the failed boots' logs. Not in the suite (minutes): `make boot-loop`.
#[tokio::test]
#[ignore = "a long loop: make boot-loop"]
async fn qemu_boot_loop() {
    use std::time::Duration;
    let n: usize = std::env::var("HULL_BOOT_LOOP")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut times = Vec::new();
    let mut failures = Vec::new();
    for i in 0..n {
        let boot = tokio::time::timeout(
            Duration::from_secs(100),
            hull_tests::vm::TestVm::boot(HypervisorKind::Qemu, 256),
        )
        .await;
        match boot {
            Ok(Ok(vm)) => times.push(vm.boot_time),
            Ok(Err(e)) => failures.push(format!("boot {i}: {e:#}")),
            Err(_) => failures.push(format!("boot {i}: no answer within 100 s")),
        }
    }
    times.sort();
    if !times.is_empty() {
        println!(
            "qemu boot to agent: {} boots, min {:?} median {:?} max {:?}",
            times.len(),
            times[0],
            times[times.len() / 2],
            times[times.len() - 1]
        );
    }
    println!("failures: {} of {n}", failures.len());
    for f in &failures {
        println!("{f}");
    }
    assert!(failures.is_empty());
}
