//! Pod networking, host side. CNI gave the pod a network namespace with a veth (its
//! address, routes, neighbours); the VM cannot sit in that namespace, so for each such
//! link the shim makes a tap there, joins the two with tc redirects (`tc`), hands the
//! tap to the VMM as the VM's NIC (with the veth's MAC and MTU) and asks the agent to
//! give the guest's NIC the veth's name, addresses and routes (`scan`).
//!
//! What the shim made is written to `<pod dir>/network` before it is made, so teardown
//! (orderly, or `shim delete` after a crash) removes exactly that and nothing else.

pub mod netns;
pub mod scan;
pub mod tap;
pub mod tc;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use hull_protocols::agent::{ARPNeighbor, Route};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use rtnetlink::Handle;
use rtnetlink::packet_route::link::LinkMessage;
use serde::{Deserialize, Serialize};

use netns::Netns;
use scan::PodLink;

/// The record of what the shim made in a pod's network namespace, in the pod dir.
pub const RECORD_FILE: &str = "network";

/// Why a host-network pod is refused.
pub const HOST_NETWORK_REFUSED: &str = "the pod uses the host's network (hostNetwork: true, or no \
     network namespace in its spec), and a pod VM cannot share the host's network stack: \
     run it with a runc runtime class, or give it a pod network";

/// Largest resolv.conf read for the guest.
const MAX_RESOLV_CONF: u64 = 64 * 1024;

/// The lines of the file the spec mounts at `/etc/resolv.conf` (CRI writes the pod's
/// DNSConfig there), for the guest's own resolv.conf; none if it mounts none.
pub fn dns_lines(spec: &Spec) -> anyhow::Result<Vec<String>> {
    use std::io::Read;
    let Some(m) = spec.mounts().as_ref().and_then(|ms| {
        ms.iter()
            .find(|m| m.destination() == Path::new("/etc/resolv.conf"))
    }) else {
        return Ok(Vec::new());
    };
    let Some(src) = m.source() else {
        return Ok(Vec::new());
    };
    let mut text = String::new();
    std::fs::File::open(src)
        .with_context(|| format!("opening the pod's resolv.conf {}", src.display()))?
        .take(MAX_RESOLV_CONF)
        .read_to_string(&mut text)
        .with_context(|| format!("reading {}", src.display()))?;
    Ok(text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// Where a pod's containers say their network is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// No network namespace of its own: the host's network (`hostNetwork: true`).
    Host,
    /// A new, empty namespace (e.g. `ctr run` without CNI): the VM gets loopback only.
    Loopback,
    /// A namespace that CNI (or a caller) prepared, to be carried into the VM.
    Netns(PathBuf),
    /// A namespace hull's OCI runtime made for a container and sits in, which the
    /// caller's hooks prepared (Docker's libnetwork); `host` is the namespace it left,
    /// which a VM must never take over.
    Made { netns: PathBuf, host: PathBuf },
}

pub fn mode(spec: &Spec) -> Mode {
    let ns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|ns| ns.iter().find(|n| n.typ() == LinuxNamespaceType::Network));
    match ns {
        None => Mode::Host,
        Some(n) => match n.path() {
            Some(p) => Mode::Netns(p.clone()),
            None => Mode::Loopback,
        },
    }
}

/// A pod NIC: the tap (its fd goes to the VMM) and the link it stands in for.
#[derive(Debug, Clone)]
pub struct Nic {
    pub tap: Arc<OwnedFd>,
    pub tap_name: String,
    pub link: PodLink,
}

/// The pod's network as the VM gets it.
#[derive(Debug, Default)]
pub struct PodNetwork {
    pub nics: Vec<Nic>,
    pub routes: Vec<Route>,
    pub neighbors: Vec<ARPNeighbor>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    netns: PathBuf,
    /// (veth, tap) name pairs.
    links: Vec<(String, String)>,
}

fn tap_name(i: usize) -> String {
    format!("tap{i}_hull")
}

impl PodNetwork {
    /// Connects the links of `netns_path` to new taps (blocking; run it off the async
    /// runtime). A namespace without a usable link gives an empty network. Refuses the
    /// shim's own namespace: a VM never takes over the host's links.
    pub fn attach(pod_dir: &Path, netns_path: &Path) -> anyhow::Result<PodNetwork> {
        Self::attach_refusing(pod_dir, netns_path, None)
    }

    /// As `attach`, refusing `host` instead of this thread's own namespace when given
    /// (`Mode::Made`: the namespace is this process's own, `host` the one it left).
    pub fn attach_refusing(
        pod_dir: &Path,
        netns_path: &Path,
        host: Option<&Path>,
    ) -> anyhow::Result<PodNetwork> {
        let ns = Netns::open(netns_path)?;
        let is_host = match host {
            Some(h) => ns.is_same(&Netns::open(h)?)?,
            None => ns.is_own()?,
        };
        if is_host {
            bail!(
                "{} is the host's network namespace: a pod VM cannot use the host network",
                netns_path.display()
            );
        }
        let record_path = pod_dir.join(RECORD_FILE);
        let made = ns.run(async || {
            let h = connect()?;
            let plan = scan::plan(&scan::dump(&h).await?);
            let record = Record {
                netns: netns_path.to_path_buf(),
                links: plan
                    .links
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (l.name.clone(), tap_name(i)))
                    .collect(),
            };
            if record.links.is_empty() {
                return Ok(PodNetwork::default());
            }
            write_record(&record_path, &record)?;
            let mut nics = Vec::new();
            for (i, link) in plan.links.into_iter().enumerate() {
                match plumb(&h, &link, &tap_name(i)).await {
                    Ok(tap) => nics.push(Nic {
                        tap: Arc::new(tap),
                        tap_name: tap_name(i),
                        link,
                    }),
                    Err(e) => {
                        remove_recorded(&h, &record).await;
                        return Err(e);
                    }
                }
            }
            Ok(PodNetwork {
                nics,
                routes: plan.routes,
                neighbors: plan.neighbors,
            })
        });
        if made.is_err() {
            let _ = std::fs::remove_file(&record_path);
        }
        made
    }
}

/// One link: its tap (same MTU, up) and the redirects both ways.
async fn plumb(h: &Handle, link: &PodLink, name: &str) -> anyhow::Result<OwnedFd> {
    let tap = tap::create(name)?;
    let tap_index = find_link(h, name)
        .await?
        .with_context(|| format!("tap {name} vanished"))?
        .header
        .index;
    h.link()
        .set(
            rtnetlink::LinkUnspec::new_with_index(tap_index)
                .mtu(link.mtu)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(|e| anyhow::anyhow!("setting tap {name} up: {e}"))?;
    tc::redirect(h, link.index, tap_index).await?;
    tc::redirect(h, tap_index, link.index).await?;
    tracing::info!(link = %link.name, tap = name, mac = %link.mac_string(), "pod link carried into the VM");
    Ok(tap)
}

/// Whether this kernel has what `tc::redirect` uses (the ingress qdisc, the u32
/// classifier, the mirred action; modules load on demand): the redirect is made on the
/// loopback of a throwaway network namespace, on a thread of its own that ends with it.
/// Needs CAP_SYS_ADMIN and CAP_NET_ADMIN, as the shim has.
pub fn probe_redirect() -> anyhow::Result<()> {
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .context("making a throwaway network namespace")?;
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a netlink runtime")?
            .block_on(async {
                let h = connect()?;
                tc::redirect(&h, LOOPBACK_INDEX, LOOPBACK_INDEX).await
            })
    })
    .join()
    .unwrap_or_else(|_| Err(anyhow::anyhow!("the probe thread panicked")))
}

/// `lo` is the first link of every network namespace.
const LOOPBACK_INDEX: u32 = 1;

fn connect() -> anyhow::Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn find_link(h: &Handle, name: &str) -> anyhow::Result<Option<LinkMessage>> {
    use futures_util::TryStreamExt;
    let links: Vec<LinkMessage> = h
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| anyhow::anyhow!("listing links: {e}"))?;
    Ok(links.into_iter().find(|l| {
        l.attributes.iter().any(
            |a| matches!(a, rtnetlink::packet_route::link::LinkAttribute::IfName(n) if n == name),
        )
    }))
}

fn write_record(path: &Path, r: &Record) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(&serde_json::to_vec(r)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Removes the redirects (with the veths' ingress qdiscs) and the taps of `r`; what is
/// already gone is skipped. Only a tun/tap device with a recorded name is deleted.
async fn remove_recorded(h: &Handle, r: &Record) {
    for (veth, tap) in &r.links {
        if let Ok(Some(l)) = find_link(h, veth).await
            && let Err(e) = tc::remove_ingress(h, l.header.index).await
        {
            tracing::debug!(link = %veth, error = %e, "no ingress qdisc to remove");
        }
        if let Ok(Some(l)) = find_link(h, tap).await
            && scan::is_tun(&l)
            && let Err(e) = h.link().del(l.header.index).execute().await
        {
            tracing::warn!(tap = %tap, error = %e, "removing the tap");
        }
    }
}

/// Undoes what `<pod_dir>/network` records, if the namespace still exists, and removes
/// the record. Safe to call on any pod dir, any number of times.
pub fn detach(pod_dir: &Path) {
    let path = pod_dir.join(RECORD_FILE);
    let Ok(text) = std::fs::read(&path) else {
        return;
    };
    match serde_json::from_slice::<Record>(&text) {
        Ok(r) => match Netns::open(&r.netns) {
            Ok(ns) => {
                let done = ns.run(async || {
                    remove_recorded(&connect()?, &r).await;
                    Ok(())
                });
                if let Err(e) = done {
                    tracing::warn!(netns = %r.netns.display(), error = %format!("{e:#}"), "removing the pod's taps");
                }
            }
            // CNI removed the namespace first: the taps went with it.
            Err(e) => tracing::debug!(error = %format!("{e:#}"), "pod network namespace gone"),
        },
        Err(e) => tracing::warn!(file = %path.display(), error = %e, "unreadable network record"),
    }
    let _ = std::fs::remove_file(&path);
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder, SpecBuilder};

    fn spec_with(ns: Vec<oci_spec::runtime::LinuxNamespace>) -> Spec {
        SpecBuilder::default()
            .linux(LinuxBuilder::default().namespaces(ns).build().unwrap())
            .build()
            .unwrap()
    }

    #[test]
    fn the_spec_says_which_network() {
        let net = |p: Option<&str>| {
            let mut b = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network);
            if let Some(p) = p {
                b = b.path(p);
            }
            b.build().unwrap()
        };
        let pid = LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Pid)
            .build()
            .unwrap();
        assert_eq!(mode(&spec_with(vec![pid.clone()])), Mode::Host);
        assert_eq!(
            mode(&spec_with(vec![pid.clone(), net(None)])),
            Mode::Loopback
        );
        assert_eq!(
            mode(&spec_with(vec![pid, net(Some("/var/run/netns/cni-1"))])),
            Mode::Netns("/var/run/netns/cni-1".into())
        );
    }
}
