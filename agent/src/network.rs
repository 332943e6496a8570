//! The pod's network inside the VM: the shim describes the pod's interfaces, routes and
//! neighbours as the host's network namespace had them, and this module applies them to
//! the guest's links over rtnetlink (no `ip` binary in the guest).
//!
//! Every request is validated whole before anything is changed, so a bad value (a prefix
//! past /32 or /128, a malformed MAC, an unknown link) is refused with InvalidArgument and
//! leaves the guest's network as it was.

use std::net::IpAddr;

use futures_util::TryStreamExt;
use hull_protocols::agent::{ARPNeighbor, Interface, Route};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourFlags, NeighbourState};
use rtnetlink::packet_route::route::{RouteProtocol, RouteScope};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::error::{AgentError, Result, invalid};

/// Linux's IFNAMSIZ less the terminating NUL.
const MAX_IFNAME: usize = 15;
/// The smallest MTU IPv4 allows and the largest a link may have.
const MTU_RANGE: std::ops::RangeInclusive<u64> = 68..=65535;

/// An address with its prefix length, checked against its family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| invalid(format!("{s:?} is not an address/prefix")))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| invalid(format!("{a:?} is not an IP address")))?;
        let prefix: u8 = p
            .parse()
            .map_err(|_| invalid(format!("{p:?} is not a prefix length")))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(invalid(format!(
                "prefix /{prefix} is longer than /{max} in {s:?}"
            )));
        }
        Ok(Cidr { addr, prefix })
    }
}

pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let bad = || invalid(format!("{s:?} is not a MAC address"));
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
}

fn parse_ip(what: &str, s: &str) -> Result<IpAddr> {
    s.parse()
        .map_err(|_| invalid(format!("{what} {s:?} is not an IP address")))
}

fn validate_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IFNAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!("{name:?} is not a valid link name")))
    }
}

/// An interface request, validated.
struct IfacePlan {
    name: String,
    mac: [u8; 6],
    /// The link's MAC now (`device_hw_addr`, else `mac`).
    current: [u8; 6],
    addrs: Vec<Cidr>,
    mtu: Option<u32>,
}

fn plan_interface(i: &Interface) -> Result<IfacePlan> {
    validate_ifname(&i.name)?;
    let mac = parse_mac(&i.hw_addr)?;
    let current = if i.device_hw_addr.is_empty() {
        mac
    } else {
        parse_mac(&i.device_hw_addr)?
    };
    let addrs = i
        .ip_addresses
        .iter()
        .map(|a| Cidr::parse(a))
        .collect::<Result<Vec<_>>>()?;
    let mtu = match i.mtu {
        0 => None,
        m if MTU_RANGE.contains(&m) => Some(m as u32),
        m => return Err(invalid(format!("MTU {m} is outside {MTU_RANGE:?}"))),
    };
    Ok(IfacePlan {
        name: i.name.clone(),
        mac,
        current,
        addrs,
        mtu,
    })
}

/// A route request, validated (the link is resolved when it is applied).
struct RoutePlan {
    dest: Option<Cidr>,
    gateway: Option<IpAddr>,
    device: String,
    source: Option<IpAddr>,
    scope: u8,
}

impl RoutePlan {
    fn family_is_v4(&self) -> bool {
        self.dest
            .map(|d| d.addr.is_ipv4())
            .or(self.gateway.map(|g| g.is_ipv4()))
            .unwrap_or(true)
    }
}

fn plan_route(r: &Route) -> Result<RoutePlan> {
    let dest = (!r.dest.is_empty())
        .then(|| Cidr::parse(&r.dest))
        .transpose()?;
    let gateway = (!r.gateway.is_empty())
        .then(|| parse_ip("gateway", &r.gateway))
        .transpose()?;
    let source = (!r.source.is_empty())
        .then(|| parse_ip("source", &r.source))
        .transpose()?;
    if dest.is_none() && gateway.is_none() {
        return Err(invalid("a route needs a destination or a gateway"));
    }
    let plan = RoutePlan {
        dest,
        gateway,
        device: r.device.clone(),
        source,
        scope: u8::try_from(r.scope)
            .map_err(|_| invalid(format!("route scope {} is not a scope", r.scope)))?,
    };
    validate_ifname(&plan.device)?;
    let v4 = plan.family_is_v4();
    for ip in [plan.dest.map(|d| d.addr), plan.gateway, plan.source]
        .into_iter()
        .flatten()
    {
        if ip.is_ipv4() != v4 {
            return Err(invalid(format!(
                "route to {:?} mixes IPv4 and IPv6 addresses",
                r.dest
            )));
        }
    }
    Ok(plan)
}

/// One rtnetlink connection, driven on this runtime for as long as the handle lives.
fn connect() -> Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection()
        .map_err(|e| AgentError::Internal(anyhow::anyhow!("opening rtnetlink: {e}")))?;
    tokio::spawn(conn);
    Ok(handle)
}

fn netlink_err(what: String) -> impl FnOnce(rtnetlink::Error) -> AgentError {
    move |e| AgentError::Internal(anyhow::anyhow!("{what}: {e}"))
}

async fn links(h: &Handle) -> Result<Vec<LinkMessage>> {
    h.link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink_err("listing links".into()))
}

fn link_mac(l: &LinkMessage) -> Option<&[u8]> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) => Some(m.as_slice()),
        _ => None,
    })
}

fn link_name(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

async fn index_by_name(h: &Handle, name: &str) -> Result<u32> {
    links(h)
        .await?
        .iter()
        .find(|l| link_name(l) == Some(name))
        .map(|l| l.header.index)
        .ok_or_else(|| invalid(format!("no link named {name:?} in the guest")))
}

/// Finds the guest NIC with the interface's MAC, names it, sets its MTU and addresses
/// (replacing any it had) and brings it up.
pub async fn update_interface(req: &Interface) -> Result<Interface> {
    let plan = plan_interface(req)?;
    let h = connect()?;
    let all = links(&h).await?;
    let link = all
        .iter()
        .find(|l| link_mac(l) == Some(&plan.current[..]))
        .ok_or_else(|| {
            let mac = if req.device_hw_addr.is_empty() {
                &req.hw_addr
            } else {
                &req.device_hw_addr
            };
            invalid(format!("no guest link has MAC {mac}"))
        })?;
    let index = link.header.index;
    if let Some(other) = all
        .iter()
        .find(|l| l.header.index != index && link_name(l) == Some(plan.name.as_str()))
    {
        return Err(invalid(format!(
            "the name {:?} is taken by guest link {}",
            plan.name, other.header.index
        )));
    }
    let what = format!("configuring link {index} as {}", plan.name);
    // A link must be down to be renamed.
    h.link()
        .set(LinkUnspec::new_with_index(index).down().build())
        .execute()
        .await
        .map_err(netlink_err(what.clone()))?;
    let mut set = LinkUnspec::new_with_index(index).name(plan.name.clone());
    if let Some(mtu) = plan.mtu {
        set = set.mtu(mtu);
    }
    if plan.current != plan.mac {
        set = set.address(plan.mac.to_vec());
    }
    h.link()
        .set(set.build())
        .execute()
        .await
        .map_err(netlink_err(what.clone()))?;
    let old: Vec<_> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(netlink_err(what.clone()))?;
    for a in old {
        h.address()
            .del(a)
            .execute()
            .await
            .map_err(netlink_err(what.clone()))?;
    }
    for a in &plan.addrs {
        h.address()
            .add(index, a.addr, a.prefix)
            .replace()
            .execute()
            .await
            .map_err(netlink_err(format!(
                "adding {}/{} to {}",
                a.addr, a.prefix, plan.name
            )))?;
    }
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(netlink_err(what))?;
    tracing::info!(link = %plan.name, mac = %req.hw_addr, addresses = ?req.ip_addresses, "pod interface up");
    Ok(req.clone())
}

/// Adds the routes, directly connected ones first (a gateway must be reachable before a
/// route through it can be added).
pub async fn update_routes(routes: &[Route]) -> Result<Vec<Route>> {
    let plans = routes.iter().map(plan_route).collect::<Result<Vec<_>>>()?;
    let h = connect()?;
    let mut resolved = Vec::with_capacity(plans.len());
    for p in &plans {
        resolved.push(index_by_name(&h, &p.device).await?);
    }
    let mut order: Vec<usize> = (0..plans.len()).collect();
    order.sort_by_key(|&i| plans[i].gateway.is_some());
    for i in order {
        let p = &plans[i];
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .output_interface(resolved[i])
            .protocol(RouteProtocol::Static)
            .scope(RouteScope::from(p.scope));
        let bad = |e| invalid(format!("route {:?}: {e}", routes[i].dest));
        b = match p.dest {
            Some(d) => b.destination_prefix(d.addr, d.prefix).map_err(bad)?,
            None => {
                let any: IpAddr = if p.family_is_v4() {
                    std::net::Ipv4Addr::UNSPECIFIED.into()
                } else {
                    std::net::Ipv6Addr::UNSPECIFIED.into()
                };
                b.destination_prefix(any, 0).map_err(bad)?
            }
        };
        if let Some(g) = p.gateway {
            b = b.gateway(g).map_err(bad)?;
        }
        if let Some(s) = p.source {
            b = b.pref_source(s).map_err(bad)?;
        }
        h.route()
            .add(b.build())
            .replace()
            .execute()
            .await
            .map_err(netlink_err(format!(
                "adding the route to {:?} via {:?} on {}",
                routes[i].dest, routes[i].gateway, p.device
            )))?;
    }
    tracing::info!(routes = routes.len(), "pod routes added");
    Ok(routes.to_vec())
}

/// Adds permanent neighbour entries.
pub async fn add_neighbors(neighbors: &[ARPNeighbor]) -> Result<()> {
    let mut plans = Vec::with_capacity(neighbors.len());
    for n in neighbors {
        validate_ifname(&n.device)?;
        plans.push((
            parse_ip("neighbour", &n.to_ip)?,
            parse_mac(&n.ll_addr)?,
            n.device.as_str(),
        ));
    }
    let h = connect()?;
    let mut resolved = Vec::with_capacity(plans.len());
    for (_, _, dev) in &plans {
        resolved.push(index_by_name(&h, dev).await?);
    }
    for ((ip, mac, dev), index) in plans.iter().zip(resolved) {
        h.neighbours()
            .add(index, *ip)
            .link_layer_address(mac)
            .state(NeighbourState::Permanent)
            .flags(NeighbourFlags::empty())
            .replace()
            .execute()
            .await
            .map_err(netlink_err(format!("adding neighbour {ip} on {dev}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_are_checked_against_their_family() {
        assert_eq!(Cidr::parse("10.0.0.2/24").unwrap().prefix, 24);
        assert!(Cidr::parse("fd00::2/64").unwrap().addr.is_ipv6());
        for bad in [
            "10.0.0.2/33",
            "fd00::2/129",
            "10.0.0.2",
            "x/24",
            "10.0.0.2/-1",
            "10.0.0.2/",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn macs_are_six_hex_octets() {
        assert_eq!(
            parse_mac("02:42:ac:11:00:02").unwrap(),
            [2, 0x42, 0xac, 0x11, 0, 2]
        );
        for bad in [
            "02:42:ac:11:00",
            "02:42:ac:11:00:02:03",
            "2:42:ac:11:00:02",
            "zz:42:ac:11:00:02",
            "",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn interface_requests_are_validated_whole() {
        let mut i = Interface::new();
        i.name = "eth0".into();
        i.hw_addr = "02:00:00:00:00:01".into();
        i.ip_addresses = vec!["10.1.0.2/24".into(), "fd00::2/64".into()];
        i.mtu = 1500;
        assert!(plan_interface(&i).is_ok());
        for (field, f) in [
            (
                "name",
                &(|i: &mut Interface| i.name = "a/b".into()) as &dyn Fn(&mut Interface),
            ),
            ("long name", &|i| i.name = "a".repeat(16)),
            ("mtu", &|i| i.mtu = 70000),
            ("address", &|i| i.ip_addresses.push("10.0.0.1/40".into())),
            ("mac", &|i| i.hw_addr = "nope".into()),
            ("device mac", &|i| i.device_hw_addr = "02:00".into()),
        ] {
            let mut bad = i.clone();
            f(&mut bad);
            assert!(
                matches!(plan_interface(&bad), Err(AgentError::InvalidArgument(_))),
                "{field}"
            );
        }
    }

    #[test]
    fn routes_are_validated() {
        let mut r = Route::new();
        r.device = "eth0".into();
        r.gateway = "10.1.0.1".into();
        assert!(plan_route(&r).is_ok(), "default route");
        r.dest = "fd00::/64".into();
        assert!(plan_route(&r).is_err(), "mixed families");
        r.gateway.clear();
        assert!(plan_route(&r).is_ok(), "link route");
        r.dest.clear();
        assert!(plan_route(&r).is_err(), "neither destination nor gateway");
        r.dest = "10.2.0.0/16".into();
        r.scope = 300;
        assert!(plan_route(&r).is_err(), "scope");
    }
}
