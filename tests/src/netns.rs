//! Network namespaces for tests, wired as CNI leaves a pod's: an "outer" namespace for
//! the bridge's side and a "pod" one whose eth0 (a veth) has addresses, a default route
//! and a permanent neighbour. Set up with `ip`/`tc` (test code only; hull speaks netlink).

use std::process::Command;

/// Runs `ip`/`tc` (test set-up only; hull itself speaks netlink).
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().expect(program);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace, deleted on drop.
pub struct Ns(pub String);

impl Ns {
    pub fn new(tag: &str) -> Ns {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("hull-{tag}-{}-{n}", std::process::id());
        run("ip", &["netns", "add", &name]);
        run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Ns(name)
    }

    pub fn path(&self) -> std::path::PathBuf {
        format!("/run/netns/{}", self.0).into()
    }

    pub fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", self.0.as_str()];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    pub fn tc(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", self.0.as_str()];
        a.extend_from_slice(args);
        run("tc", &a)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

pub fn rx_packets(ns: &Ns, link: &str) -> u64 {
    let j: serde_json::Value =
        serde_json::from_str(&ns.ip(&["-j", "-s", "link", "show", link])).unwrap();
    j[0]["stats64"]["rx"]["packets"].as_u64().unwrap()
}

/// A pod namespace wired as CNI's bridge plugin leaves it: eth0 (veth) with v4 and v6
/// addresses, a default route and a permanent neighbour; its peer in `outer`.
pub fn cni_like_pair() -> (Ns, Ns) {
    let (outer, pod) = (Ns::new("nt-outer"), Ns::new("nt-pod"));
    outer.ip(&[
        "link",
        "add",
        "peer0",
        "address",
        "02:00:00:00:00:01",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &pod.0,
    ]);
    outer.ip(&["addr", "add", "198.19.0.1/24", "dev", "peer0"]);
    outer.ip(&["link", "set", "peer0", "up"]);
    pod.ip(&["link", "set", "eth0", "mtu", "1400", "up"]);
    pod.ip(&["addr", "add", "198.19.0.2/24", "dev", "eth0"]);
    pod.ip(&["addr", "add", "fd43::2/64", "dev", "eth0", "nodad"]);
    pod.ip(&[
        "route",
        "add",
        "default",
        "via",
        "198.19.0.1",
        "dev",
        "eth0",
    ]);
    pod.ip(&[
        "neigh",
        "add",
        "198.19.0.1",
        "lladdr",
        "02:00:00:00:00:01",
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    (outer, pod)
}
