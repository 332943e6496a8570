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

    bad_network_requests_change_nothing(a, &guest_rootfs).await;

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

/// The agent refuses malformed network requests whole (InvalidArgument) and applies none
/// of a batch with one bad entry; what a container in the pod's network sees proves it.
async fn bad_network_requests_change_nothing(
    a: &hull_protocols::agent_ttrpc::AgentServiceClient,
    guest_rootfs: &std::path::Path,
) {
    fn invalid<T>(r: ttrpc::Result<T>, what: &str) {
        match r {
            Err(ttrpc::Error::RpcStatus(s)) => assert_eq!(
                s.code(),
                ttrpc::Code::INVALID_ARGUMENT,
                "{what}: {}",
                s.message()
            ),
            Err(e) => panic!("{what}: {e}"),
            Ok(_) => panic!("{what} was accepted"),
        }
    }
    let iface = |mac: &str, addr: &str| {
        let mut i = Interface::new();
        i.name = "eth0".into();
        i.hw_addr = mac.into();
        i.ip_addresses = vec![addr.into()];
        i.mtu = 1500;
        let mut r = UpdateInterfaceRequest::new();
        r.interface = Some(i).into();
        r
    };
    let lo_mac = "00:00:00:00:00:00";
    invalid(
        a.update_interface(ctx(), &iface("02:00:00:00:00:09", "10.9.0.2/24"))
            .await,
        "a MAC no guest link has",
    );
    invalid(
        a.update_interface(ctx(), &iface(lo_mac, "10.9.0.2/33"))
            .await,
        "an IPv4 prefix past /32",
    );
    invalid(
        a.update_interface(ctx(), &iface(lo_mac, "fd00::2/129"))
            .await,
        "an IPv6 prefix past /128",
    );
    invalid(
        a.update_interface(ctx(), &iface("02:00:00:00:0009", "10.9.0.2/24"))
            .await,
        "a malformed MAC",
    );
    let route = |dest: &str, dev: &str| {
        let mut r = Route::new();
        r.dest = dest.into();
        r.device = dev.into();
        r.scope = 253;
        r
    };
    let mut req = UpdateRoutesRequest::new();
    req.routes = vec![route("10.9.0.0/16", "lo"), route("10.8.0.0/16", "eth9")];
    invalid(
        a.update_routes(ctx(), &req).await,
        "a route on an unknown link",
    );
    req.routes = vec![route("10.9.0.0/16", "lo"), route("10.8.0.0/40", "lo")];
    invalid(
        a.update_routes(ctx(), &req).await,
        "a route with a bad prefix",
    );

    // A container in the pod's network (its spec joins a network namespace by path, as
    // CRI's do) sees the VM's links and routes: none of the above was applied.
    let mut s = spec(guest_rootfs, &["sh", "-c", "ip route; ip addr show lo"]);
    let mut linux = s.linux().clone().unwrap();
    let mut nss = linux.namespaces().clone().unwrap_or_default();
    nss.retain(|n| n.typ() != oci_spec::runtime::LinuxNamespaceType::Network);
    nss.push(
        oci_spec::runtime::LinuxNamespaceBuilder::default()
            .typ(oci_spec::runtime::LinuxNamespaceType::Network)
            .path("/var/run/netns/pod")
            .build()
            .unwrap(),
    );
    linux.set_namespaces(Some(nss));
    s.set_linux(Some(linux));
    let r = run(a, "netcheck", &s).await;
    assert!(
        !r.stdout.contains("10.9.") && !r.stdout.contains("10.8."),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("127.0.0.1/8"), "{}", r.stdout);
    remove(a, "netcheck").await.unwrap();
}
