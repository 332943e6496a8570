//! Tier 3: the real guest (build/vmlinux + build/initrd.img) under QEMU (TCG here); the
//! agent answers over hybrid vsock (vhost-device-vsock) and runs busybox containers whose
//! rootfs comes from the host through virtiofsd.

use hull_shim::config::HypervisorKind;

#[tokio::test]
async fn guest_runs_containers_over_vsock_and_virtiofs() {
    hull_tests::scenarios::containers_over_vsock_and_virtiofs(HypervisorKind::Qemu).await;
}
