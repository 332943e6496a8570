//! vsock packets as the device handles them: a parsed header plus an owned payload, read
//! from a TX descriptor chain or written into an RX one (via the virtio-vsock crate,
//! which checks every descriptor and length the guest gives).

use virtio_queue::DescriptorChain;
use virtio_vsock::packet::{PKT_HEADER_SIZE, VsockPacket};
use vm_memory::GuestMemoryMmap;

pub const TYPE_STREAM: u16 = 1;
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

/// The largest payload the device accepts in one TX packet (Linux sends at most 64 KiB).
pub const MAX_PKT_DATA: u32 = 64 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Packet {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
    pub data: Vec<u8>,
}

type Chain<'m> = DescriptorChain<&'m GuestMemoryMmap>;

impl Packet {
    /// One debug line per packet, `direction` being "to the guest" or "from the guest".
    pub fn trace(&self, direction: &str) {
        tracing::debug!(
            op = self.op,
            src = self.src_port,
            dst = self.dst_port,
            len = self.data.len(),
            "vsock packet {direction}"
        );
    }

    /// Parses a guest TX chain; `None` for a malformed one (the caller drops it).
    pub fn from_tx(mem: &GuestMemoryMmap, chain: &mut Chain<'_>) -> Option<Packet> {
        let pkt = VsockPacket::from_tx_virtq_chain(mem, chain, MAX_PKT_DATA).ok()?;
        let mut data = vec![0u8; pkt.len() as usize];
        if !data.is_empty() {
            let slice = pkt.data_slice()?;
            if slice.len() < data.len() {
                return None;
            }
            slice.copy_to(&mut data[..]);
        }
        Some(Packet {
            src_cid: pkt.src_cid(),
            dst_cid: pkt.dst_cid(),
            src_port: pkt.src_port(),
            dst_port: pkt.dst_port(),
            type_: pkt.type_(),
            op: pkt.op(),
            flags: pkt.flags(),
            buf_alloc: pkt.buf_alloc(),
            fwd_cnt: pkt.fwd_cnt(),
            data,
        })
    }

    /// How much payload an RX chain can take; `None` if it can't even hold a header.
    pub fn rx_capacity(mem: &GuestMemoryMmap, chain: &mut Chain<'_>) -> Option<usize> {
        let pkt = VsockPacket::from_rx_virtq_chain(mem, chain, MAX_PKT_DATA).ok()?;
        Some(pkt.data_slice().map(|s| s.len()).unwrap_or(0))
    }

    /// Writes the packet into an RX chain; returns the bytes used, or `None` if the chain
    /// is unusable or too small for the payload.
    pub fn write_rx(&self, mem: &GuestMemoryMmap, chain: &mut Chain<'_>) -> Option<u32> {
        let mut pkt = VsockPacket::from_rx_virtq_chain(mem, chain, MAX_PKT_DATA).ok()?;
        if !self.data.is_empty() {
            let slice = pkt.data_slice()?;
            if slice.len() < self.data.len() {
                return None;
            }
            slice.copy_from(&self.data[..]);
        }
        pkt.set_src_cid(self.src_cid)
            .set_dst_cid(self.dst_cid)
            .set_src_port(self.src_port)
            .set_dst_port(self.dst_port)
            .set_type(self.type_)
            .set_op(self.op)
            .set_flags(self.flags)
            .set_buf_alloc(self.buf_alloc)
            .set_fwd_cnt(self.fwd_cnt)
            .set_len(u32::try_from(self.data.len()).ok()?);
        u32::try_from(PKT_HEADER_SIZE + self.data.len()).ok()
    }
}
