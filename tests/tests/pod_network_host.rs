//! The shim's host side of pod networking, without a VM: on network namespaces the test
//! makes (an "outer" one standing for the CNI bridge's side and a "pod" one with a veth,
//! as CNI leaves it), `PodNetwork::attach` reads the pod's link, routes and neighbours,
//! makes a tap, and joins tap and veth with tc redirects that really carry frames both
//! ways; `detach` leaves nothing of hull's behind. The host's own namespace is refused.

use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use hull_shim::network::{self, PodNetwork};
use hull_tests::netns::{Ns, cni_like_pair, run, rx_packets};

/// Size of the virtio-net header that a tap made with IFF_VNET_HDR puts before each frame.
const VNET_HDR: usize = 10;

/// Reads frames from the tap until one has `ethertype`, or the deadline passes.
fn read_frame_with(tap: i32, ethertype: u16, timeout: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        // SAFETY: reads into a local buffer of the stated size from an fd the test owns.
        let n = unsafe { libc::read(tap, buf.as_mut_ptr().cast(), buf.len()) };
        if n > (VNET_HDR + 14) as isize {
            let f = &buf[VNET_HDR..n as usize];
            if u16::from_be_bytes([f[12], f[13]]) == ethertype {
                return Some(f.to_vec());
            }
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    None
}

#[test]
fn attach_carries_a_veth_through_a_tap_and_detach_removes_everything() {
    hull_tests::require_root();
    let (outer, pod) = cni_like_pair();
    let dir = tempfile::tempdir().unwrap();
    let net = PodNetwork::attach(dir.path(), &pod.path()).expect("attach");

    assert_eq!(net.nics.len(), 1, "{net:?}");
    let nic = &net.nics[0];
    assert_eq!(nic.link.name, "eth0");
    assert_eq!(nic.link.mtu, 1400);
    let link: serde_json::Value =
        serde_json::from_str(&pod.ip(&["-j", "link", "show", "eth0"])).unwrap();
    assert_eq!(link[0]["address"].as_str().unwrap(), nic.link.mac_string());
    assert!(
        nic.link.addresses.contains(&"198.19.0.2/24".to_string()),
        "{:?}",
        nic.link
    );
    assert!(
        nic.link.addresses.contains(&"fd43::2/64".to_string()),
        "{:?}",
        nic.link
    );
    assert!(
        net.routes
            .iter()
            .any(|r| r.gateway == "198.19.0.1" && (r.dest.is_empty() || r.dest == "0.0.0.0/0")),
        "no default route: {:?}",
        net.routes
    );
    assert!(
        net.routes.iter().all(|r| r.device == "eth0"),
        "{:?}",
        net.routes
    );
    assert!(
        net.neighbors
            .iter()
            .any(|n| n.to_ip == "198.19.0.1" && n.ll_addr == "02:00:00:00:00:01"),
        "{:?}",
        net.neighbors
    );
    let tap: serde_json::Value =
        serde_json::from_str(&pod.ip(&["-j", "-d", "link", "show", "tap0_hull"])).unwrap();
    assert_eq!(tap[0]["mtu"].as_u64(), Some(1400));
    let filters = pod.tc(&["filter", "show", "dev", "eth0", "ingress"]);
    assert!(
        filters.contains("protocol all") && filters.contains("Egress Redirect to device tap0_hull"),
        "{filters}"
    );
    assert!(dir.path().join(network::RECORD_FILE).exists());

    // veth -> tap: the outer side's ARP for the pod's address comes out of the tap fd.
    let fd = nic.tap.as_raw_fd();
    // SAFETY: fcntl on an fd the PodNetwork owns; only adds O_NONBLOCK.
    unsafe {
        libc::fcntl(
            fd,
            libc::F_SETFL,
            libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK,
        )
    };
    let mut ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            &outer.0,
            "busybox",
            "ping",
            "-c",
            "3",
            "198.19.0.2",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let arp = read_frame_with(fd, 0x0806, Duration::from_secs(5));
    let _ = ping.kill();
    let _ = ping.wait();
    let arp = arp.expect("no ARP request reached the tap from the veth");
    assert_eq!(&arp[0..6], &[0xff; 6], "an ARP request is broadcast");

    // tap -> veth: a frame the "guest" writes leaves through the veth to the outer side.
    let before = rx_packets(&outer, "peer0");
    let mut frame = vec![0u8; VNET_HDR];
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&nic.link.mac);
    frame.extend_from_slice(&[0x88, 0xb5]); // local experimental ethertype
    frame.extend_from_slice(&[0u8; 46]);
    // SAFETY: writes a local buffer of the stated size to an fd the test owns.
    let n = unsafe { libc::write(fd, frame.as_ptr().cast(), frame.len()) };
    assert_eq!(n, frame.len() as isize);
    assert!(
        hull_tests::wait_until(Duration::from_secs(5), || rx_packets(&outer, "peer0")
            > before),
        "a frame written to the tap never reached the outer side"
    );

    drop(net);
    network::detach(dir.path());
    let links = pod.ip(&["link", "show"]);
    assert!(!links.contains("tap0_hull"), "tap left behind:\n{links}");
    let qdiscs = pod.tc(&["qdisc", "show", "dev", "eth0"]);
    assert!(
        !qdiscs.contains("ingress"),
        "ingress qdisc left behind:\n{qdiscs}"
    );
    assert!(!dir.path().join(network::RECORD_FILE).exists());
    // Detaching twice (shim delete after a shutdown) is harmless.
    network::detach(dir.path());
}

#[test]
fn detach_after_a_crash_removes_what_the_record_names() {
    hull_tests::require_root();
    let (_outer, pod) = cni_like_pair();
    let dir = tempfile::tempdir().unwrap();
    let net = PodNetwork::attach(dir.path(), &pod.path()).expect("attach");
    // A shim killed now leaves its record; the tap lives as long as some fd holds it.
    let held = net.nics[0].tap.clone();
    std::mem::forget(net);
    network::detach(dir.path());
    let links = pod.ip(&["link", "show"]);
    assert!(!links.contains("tap0_hull"), "tap left behind:\n{links}");
    assert!(
        !pod.tc(&["qdisc", "show", "dev", "eth0"])
            .contains("ingress")
    );
    drop(held);
}

#[test]
fn a_namespace_without_a_usable_link_gives_loopback_only() {
    hull_tests::require_root();
    let pod = Ns::new("nt-empty");
    let dir = tempfile::tempdir().unwrap();
    let net = PodNetwork::attach(dir.path(), &pod.path()).expect("attach");
    assert!(net.nics.is_empty() && net.routes.is_empty(), "{net:?}");
    assert!(!dir.path().join(network::RECORD_FILE).exists());
}

#[test]
fn the_hosts_namespace_and_non_namespaces_are_refused() {
    hull_tests::require_root();
    let dir = tempfile::tempdir().unwrap();
    let e = PodNetwork::attach(dir.path(), "/proc/self/ns/net".as_ref()).unwrap_err();
    assert!(
        format!("{e:#}").contains("host's network namespace"),
        "{e:#}"
    );
    let e = PodNetwork::attach(dir.path(), "/etc/hostname".as_ref()).unwrap_err();
    assert!(format!("{e:#}").contains("not a namespace"), "{e:#}");
    assert!(PodNetwork::attach(dir.path(), "/nonexistent/netns".as_ref()).is_err());
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    let links = run("ip", &["link", "show"]);
    assert!(!links.contains("_hull"), "{links}");
}
