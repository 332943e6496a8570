//! What a pod's network namespace holds, as CNI left it, turned into what the guest needs:
//! the links to carry into the VM (each with its MAC, MTU and addresses), the routes the
//! guest must add (not the kernel's own subnet routes, which the guest makes itself), and
//! the permanent neighbour entries.

use std::net::IpAddr;

use futures_util::TryStreamExt;
use hull_protocols::agent::{ARPNeighbor, Interface, Route};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteVia,
};
use rtnetlink::{Handle, RouteMessageBuilder};

/// Everything read from the namespace in one pass.
#[derive(Debug, Default)]
pub struct Dump {
    pub links: Vec<LinkMessage>,
    pub addresses: Vec<AddressMessage>,
    pub routes: Vec<RouteMessage>,
    pub neighbours: Vec<NeighbourMessage>,
}

pub async fn dump(h: &Handle) -> anyhow::Result<Dump> {
    let e = |what: &'static str| move |e: rtnetlink::Error| anyhow::anyhow!("listing {what}: {e}");
    let mut routes: Vec<RouteMessage> = h
        .route()
        .get(RouteMessageBuilder::<std::net::Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(e("IPv4 routes"))?;
    let v6: Vec<RouteMessage> = h
        .route()
        .get(RouteMessageBuilder::<std::net::Ipv6Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(e("IPv6 routes"))?;
    routes.extend(v6);
    let mut neighbours: Vec<NeighbourMessage> = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let n: Vec<NeighbourMessage> = h
            .neighbours()
            .get()
            .set_address_family(family)
            .execute()
            .try_collect()
            .await
            .map_err(e("neighbours"))?;
        neighbours.extend(n);
    }
    Ok(Dump {
        links: h
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(e("links"))?,
        addresses: h
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(e("addresses"))?,
        routes,
        neighbours,
    })
}

/// A link of the namespace that the VM takes over.
#[derive(Debug, Clone, PartialEq)]
pub struct PodLink {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// CIDR strings, as the agent takes them.
    pub addresses: Vec<String>,
}

impl PodLink {
    pub fn mac_string(&self) -> String {
        format_mac(&self.mac)
    }

    pub fn interface(&self) -> Interface {
        let mut i = Interface::new();
        i.name = self.name.clone();
        i.hw_addr = self.mac_string();
        i.ip_addresses = self.addresses.clone();
        i.mtu = u64::from(self.mtu);
        i
    }
}

pub fn format_mac(m: &[u8]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The namespace's network, in the agent's terms.
#[derive(Debug, Default, PartialEq)]
pub struct PodNet {
    pub links: Vec<PodLink>,
    pub routes: Vec<Route>,
    pub neighbors: Vec<ARPNeighbor>,
}

fn link_name(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

pub fn is_tun(l: &LinkMessage) -> bool {
    l.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Tun))),
        _ => false,
    })
}

fn address_of(a: &AddressMessage) -> Option<IpAddr> {
    // IFA_LOCAL is the interface's own address on a point-to-point link; IFA_ADDRESS the
    // peer's there, and the same as IFA_LOCAL elsewhere.
    let local = a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some((*v4).into()),
        RouteAddress::Inet6(v6) => Some((*v6).into()),
        _ => None,
    }
}

/// Chooses the links to carry (every link with a global address and an Ethernet MAC that
/// is neither loopback nor a tap: a namespace without one keeps the VM on loopback) and
/// translates the routes and neighbours that use them.
pub fn plan(d: &Dump) -> PodNet {
    let mut net = PodNet::default();
    for l in &d.links {
        if l.header.flags.contains(LinkFlags::Loopback) || is_tun(l) {
            continue;
        }
        let Some(name) = link_name(l) else { continue };
        let mac = l.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(m) => <[u8; 6]>::try_from(m.as_slice()).ok(),
            _ => None,
        });
        let Some(mac) = mac else { continue };
        let addresses: Vec<String> = d
            .addresses
            .iter()
            .filter(|a| {
                a.header.index == l.header.index && a.header.scope == AddressScope::Universe
            })
            .filter_map(|a| address_of(a).map(|ip| format!("{ip}/{}", a.header.prefix_len)))
            .collect();
        if addresses.is_empty() {
            continue;
        }
        let mtu = l
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
            .unwrap_or(1500);
        net.links.push(PodLink {
            index: l.header.index,
            name: name.to_string(),
            mac,
            mtu,
            addresses,
        });
    }
    let carried = |index: u32| {
        net.links
            .iter()
            .find(|l| l.index == index)
            .map(|l| l.name.clone())
    };

    for r in &d.routes {
        let h = &r.header;
        if h.table != RouteHeader::RT_TABLE_MAIN || h.protocol == RouteProtocol::Kernel {
            continue;
        }
        let oif = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        });
        let Some(device) = oif.and_then(carried) else {
            continue;
        };
        let mut route = Route::new();
        route.device = device;
        route.scope = u32::from(u8::from(h.scope));
        for a in &r.attributes {
            match a {
                RouteAttribute::Destination(x) => {
                    if let Some(ip) = route_ip(x) {
                        route.dest = format!("{ip}/{}", h.destination_prefix_length);
                    }
                }
                RouteAttribute::Gateway(x) => {
                    if let Some(ip) = route_ip(x) {
                        route.gateway = ip.to_string();
                    }
                }
                RouteAttribute::Via(RouteVia::Inet6(v6)) => route.gateway = v6.to_string(),
                RouteAttribute::Via(RouteVia::Inet(v4)) => route.gateway = v4.to_string(),
                RouteAttribute::PrefSource(x) => {
                    if let Some(ip) = route_ip(x) {
                        route.source = ip.to_string();
                    }
                }
                _ => {}
            }
        }
        if route.dest.is_empty() && route.gateway.is_empty() {
            continue;
        }
        net.routes.push(route);
    }

    for n in &d.neighbours {
        if n.header.state != NeighbourState::Permanent {
            continue;
        }
        let Some(device) = carried(n.header.ifindex) else {
            continue;
        };
        let ip = n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::from(*v4)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::from(*v6)),
            _ => None,
        });
        let mac = n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(m) if m.len() == 6 => Some(format_mac(m)),
            _ => None,
        });
        if let (Some(ip), Some(mac)) = (ip, mac) {
            let mut a = ARPNeighbor::new();
            a.to_ip = ip.to_string();
            a.device = device;
            a.ll_addr = mac;
            net.neighbors.push(a);
        }
    }
    net
}
