//! The tc plumbing between a pod's veth and its VM's tap (Kata's "tcfilter" model): an
//! ingress qdisc on each and a u32 match-all filter whose `mirred egress redirect` action
//! sends every frame that arrives on one out of the other. The veth keeps its MAC and
//! addresses on the host side but carries no traffic of its own: the VM's NIC, with the
//! veth's MAC, is the pod's end of the link.

use rtnetlink::Handle;
use rtnetlink::packet_route::tc::TcHandle;

/// `ETH_P_ALL`: the filter matches every protocol. tc takes it in network byte order.
const ETH_P_ALL: u16 = 0x0003;
/// The ingress qdisc's handle, `ffff:`.
const INGRESS_HANDLE: u32 = 0xffff_0000;

/// Redirects everything arriving on `from` out of `to`.
pub async fn redirect(h: &Handle, from: u32, to: u32) -> anyhow::Result<()> {
    h.qdisc()
        .add(from as i32)
        .ingress()
        .execute()
        .await
        .map_err(|e| anyhow::anyhow!("adding an ingress qdisc to link {from}: {e}"))?;
    h.traffic_filter(from as i32)
        .add()
        .parent(INGRESS_HANDLE)
        .protocol(ETH_P_ALL.to_be())
        .redirect(to)
        .map_err(|e| anyhow::anyhow!("building the redirect {from} -> {to}: {e}"))?
        .execute()
        .await
        .map_err(|e| anyhow::anyhow!("adding the redirect {from} -> {to}: {e}"))
}

/// Removes `link`'s ingress qdisc, and with it the redirect filter.
pub async fn remove_ingress(h: &Handle, link: u32) -> anyhow::Result<()> {
    let mut del = h.qdisc().del(link as i32);
    del.message_mut().header.parent = TcHandle::INGRESS;
    del.message_mut().header.handle = INGRESS_HANDLE.into();
    del.execute()
        .await
        .map_err(|e| anyhow::anyhow!("removing link {link}'s ingress qdisc: {e}"))
}
