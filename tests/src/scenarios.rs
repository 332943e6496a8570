//! Test scenarios shared by the tiers that run them on different backends (QEMU here,
//! hull-vmm inside the nested test host).

use std::time::Duration;

use hull_protocols::agent::*;
use hull_protocols::health::CheckRequest;
use hull_protocols::health::health_check_response::ServingStatus;
use hull_shim::config::HypervisorKind;
use oci_spec::runtime::{LinuxMemoryBuilder, LinuxResourcesBuilder};

use crate::agent_ops::*;
use crate::bundle::{rootfs_in, seccomp_denying_mkdir, spec};
use crate::vm::TestVm;

/// Boots a pod VM with `kind` and checks what a pod needs of it: Health, guest details,
/// containers from the virtio-fs share (output, exit code, hostname), seccomp, a memory
/// limit with its OOM event, and DestroySandbox ending the VM cleanly.
pub async fn containers_over_vsock_and_virtiofs(kind: HypervisorKind) {
    let mut t = TestVm::boot(kind, 256).await.expect("booting the pod VM");
    eprintln!("{kind:?}: guest boot to agent answering: {:?}", t.boot_time);
    let a = &t.client.agent;

    let health = t
        .client
        .health
        .check(ctx(), &CheckRequest::new())
        .await
        .unwrap();
    assert_eq!(
        health.status.enum_value_or_default(),
        ServingStatus::SERVING
    );
    let details = a
        .get_guest_details(ctx(), &GetGuestDetailsRequest::new())
        .await
        .unwrap();
    let host_release = nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .into_owned();
    assert!(
        details.kernel_release.starts_with("6.12."),
        "{}",
        details.kernel_release
    );
    // The nested test host runs a build of the same kernel source; anywhere else the
    // guest's kernel differs from the host's.
    if std::env::var_os(crate::nested::INSIDE_ENV).is_none() {
        assert_ne!(details.kernel_release, host_release);
    }

    t.create_sandbox("pod-vm", "vm-pod").await.unwrap();
    let rootfs = rootfs_in(&t.shared(), "c1");
    let guest_rootfs = t.guest_path(&rootfs);

    // A container: output, guest kernel, pod hostname, exit code.
    let r = run(
        a,
        "hello",
        &spec(
            &guest_rootfs,
            &[
                "sh",
                "-c",
                "echo hello from $(uname -r) on $(hostname); exit 3",
            ],
        ),
    )
    .await;
    assert_eq!(
        r.stdout,
        format!("hello from {} on vm-pod\n", details.kernel_release),
        "{}",
        t.vm.console()
    );
    assert_eq!(r.status, 3);
    remove(a, "hello").await.unwrap();

    // Seccomp works in the guest (the agent links libseccomp statically).
    let mut s = spec(&guest_rootfs, &["sh", "-c", "mkdir /tmp/d || echo denied"]);
    let mut linux = s.linux().clone().unwrap();
    linux.set_seccomp(Some(seccomp_denying_mkdir()));
    s.set_linux(Some(linux));
    let r = run(a, "seccomp", &s).await;
    assert_eq!(r.stdout, "denied\n", "{}", r.stderr);
    assert!(r.stderr.contains("Operation not permitted"), "{}", r.stderr);
    remove(a, "seccomp").await.unwrap();

    // The memory limit is enforced in the guest's cgroup v2 and its OOM kill is reported.
    let mut s = spec(&guest_rootfs, &["tail", "/dev/zero"]);
    let mem = LinuxMemoryBuilder::default()
        .limit(32 * 1024 * 1024i64)
        .build()
        .unwrap();
    let mut linux = s.linux().clone().unwrap();
    linux.set_resources(Some(
        LinuxResourcesBuilder::default()
            .memory(mem)
            .build()
            .unwrap(),
    ));
    s.set_linux(Some(linux));
    create(a, "hog", &s).await.unwrap();
    start(a, "hog").await.unwrap();
    let oom = tokio::time::timeout(
        Duration::from_secs(120),
        a.get_oom_event(ctx(), &GetOOMEventRequest::new()),
    )
    .await
    .expect("no OOM event within 120 s")
    .unwrap();
    assert_eq!(oom.container_id, "hog");
    assert_eq!(wait(a, "hog", "").await, 137);
    let mut sr = StatsContainerRequest::new();
    sr.container_id = "hog".into();
    let stats = a.stats_container(ctx(), &sr).await.unwrap();
    assert_eq!(stats.memory.limit, 32 * 1024 * 1024);
    assert!(stats.memory.oom_kill >= 1);
    remove(a, "hog").await.unwrap();

    // DestroySandbox ends the VM: QEMU exits by itself, cleanly.
    let left = spec(&guest_rootfs, &["sleep", "600"]);
    create(a, "left", &left).await.unwrap();
    start(a, "left").await.unwrap();
    a.destroy_sandbox(ctx(), &DestroySandboxRequest::new())
        .await
        .unwrap();
    let status = t.vm.wait_exit(Duration::from_secs(60)).unwrap();
    let status = status
        .unwrap_or_else(|| panic!("VM still running after DestroySandbox\n{}", t.vm.console()));
    assert!(status.success(), "the VMM exited with {status}");
}
