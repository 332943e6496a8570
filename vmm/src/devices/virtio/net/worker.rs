//! The net device's event loop (hull-vmm's own data path): moves frames between the tap
//! and the guest's queues.
//!
//! TX: each chain the guest offers is gathered (readable descriptors only, header plus
//! frame, at most `MAX_FRAME` bytes), its header checked against what was negotiated, and
//! written to the tap straight from guest memory (`writev`: the kernel's copy is the only
//! one). RX: enough RX chains to hold the largest frame the tap may deliver are collected
//! and the tap reads straight into them (`readv`); the chains a frame did not need go
//! back to the ring. With no room in the guest, the tap is taken off the loop until
//! the guest adds buffers, so a full guest costs nothing.
//!
//! Everything the guest wrote is data to check: a chain with the wrong descriptor kinds,
//! too short or too long, or a header that asks for offloads not negotiated, is returned
//! used with nothing sent, and counted.

use std::io::ErrorKind;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::tap::{Tap, VNET_HDR_LEN};
use crate::devices::virtio::Interrupt;
use crate::devices::virtio::event_loop::{self, Backend, Inbox, Request};
use crate::log_budget::LogBudget;
use crate::seccomp::ThreadKind;

/// The largest frame with its header: a 64 KiB GSO packet, Ethernet and VLAN headers.
pub const MAX_FRAME: usize = VNET_HDR_LEN + 65550;
/// Descriptors one frame may span (Linux uses at most MAX_SKB_FRAGS + 2).
const MAX_SEGMENTS: usize = 256;
/// Frames moved per wake-up before the other direction gets its turn.
const BUDGET: usize = 64;
const NUM_BUFFERS_OFFSET: usize = 10;

/// What the device hands the thread when the driver is ready.
pub struct Active {
    pub mem: GuestMemoryMmap,
    pub rx: Queue,
    pub tx: Queue,
    pub interrupt: Interrupt,
    /// Every feature the driver accepted.
    pub acked: u64,
    pub mergeable: bool,
    /// `TUN_F_*` for the tap: what the guest accepts on RX.
    pub offload: u32,
    pub host_tso4: bool,
    pub host_tso6: bool,
    pub mtu: u16,
}

/// Frame counters (tests, fuzzing, metrics).
#[derive(Clone, Default)]
pub struct NetStats(Arc<[AtomicU64; 4]>);

impl NetStats {
    fn bump(&self, i: usize) {
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }
    pub fn rx_frames(&self) -> u64 {
        self.0[0].load(Ordering::Relaxed)
    }
    pub fn tx_frames(&self) -> u64 {
        self.0[1].load(Ordering::Relaxed)
    }
    pub fn rx_dropped(&self) -> u64 {
        self.0[2].load(Ordering::Relaxed)
    }
    pub fn tx_dropped(&self) -> u64 {
        self.0[3].load(Ordering::Relaxed)
    }
}

const RX_FRAMES: usize = 0;
const TX_FRAMES: usize = 1;
const RX_DROPPED: usize = 2;
const TX_DROPPED: usize = 3;

const TOKEN_CONTROL: u32 = 0;
const TOKEN_RX_QUEUE: u32 = 1;
const TOKEN_TX_QUEUE: u32 = 2;
const TOKEN_TAP: u32 = 3;

/// One descriptor's worth of a frame: where it is in the guest and in this process.
#[derive(Clone, Copy)]
struct Segment {
    addr: GuestAddress,
    len: usize,
    iov: libc::iovec,
}

/// A chain popped from the RX ring and how much it holds.
struct RxChain {
    head: u16,
    first: usize,
    capacity: usize,
}

/// Per-frame working space, reused for every frame: no allocation per packet.
struct Scratch {
    segments: Vec<Segment>,
    iovs: Vec<libc::iovec>,
    chains: Vec<RxChain>,
    /// A TX frame's header, copied out of the guest before it is checked: what is sent is
    /// what was checked, whatever the guest writes there meanwhile.
    tx_header: [u8; VNET_HDR_LEN],
}

impl Scratch {
    fn iovecs(&mut self) -> &[libc::iovec] {
        self.iovs.clear();
        self.iovs.extend(self.segments.iter().map(|s| s.iov));
        &self.iovs
    }

    /// The checked header copy, then the frame from guest memory past the guest's header.
    fn tx_iovecs(&mut self) -> &[libc::iovec] {
        self.iovs.clear();
        self.iovs.push(libc::iovec {
            iov_base: self.tx_header.as_mut_ptr().cast(),
            iov_len: VNET_HDR_LEN,
        });
        let mut skip = VNET_HDR_LEN;
        for s in &self.segments {
            if skip >= s.len {
                skip -= s.len;
                continue;
            }
            self.iovs.push(libc::iovec {
                // SAFETY: `skip < s.len`, so the pointer stays inside the segment.
                iov_base: unsafe { s.iov.iov_base.cast::<u8>().add(skip) }.cast(),
                iov_len: s.len - skip,
            });
            skip = 0;
        }
        &self.iovs
    }
}

pub struct Worker {
    tap: Tap,
    rx_evt: Arc<EventFd>,
    tx_evt: Arc<EventFd>,
    inbox: Inbox<Box<Active>>,
    stats: NetStats,
    active: Option<Box<Active>>,
    /// Whether the tap is on the loop now, and whether RX wants it there.
    tap_armed: bool,
    want_tap: bool,
    scratch: Scratch,
}

// SAFETY: the iovecs in `scratch` are rebuilt from guest memory for each frame and used
// only on the worker's own thread; everything else in Worker is Send.
unsafe impl Send for Worker {}

/// Why a frame was not moved (the guest's doing; counted and rate-limited in the log).
#[derive(Debug, thiserror::Error)]
enum Bad {
    #[error("malformed chain: {0}")]
    Layout(&'static str),
    #[error("a descriptor points outside guest memory")]
    Memory,
    #[error("bad virtio-net header: {0}")]
    Header(&'static str),
}

enum RxOutcome {
    Delivered,
    Dropped,
    TapEmpty,
    NoBuffers,
}

impl Worker {
    pub fn spawn(
        tap: Tap,
        rx_evt: Arc<EventFd>,
        tx_evt: Arc<EventFd>,
        inbox: Inbox<Box<Active>>,
        stats: NetStats,
    ) -> std::io::Result<event_loop::Pacer> {
        let w = Worker {
            tap,
            rx_evt,
            tx_evt,
            inbox,
            stats,
            active: None,
            tap_armed: false,
            want_tap: false,
            scratch: Scratch {
                segments: Vec::with_capacity(MAX_SEGMENTS),
                iovs: Vec::with_capacity(MAX_SEGMENTS),
                chains: Vec::with_capacity(usize::from(super::QUEUE_SIZES[super::RX])),
                tx_header: [0; VNET_HDR_LEN],
            },
        };
        event_loop::spawn("net", ThreadKind::Device, w)
    }

    fn handle_control(&mut self) {
        for c in self.inbox.take() {
            match c {
                Request::Activate(a, reply) => {
                    if let Err(e) = self.tap.set_offload(a.offload) {
                        tracing::warn!(error = %e, offload = a.offload, "TUNSETOFFLOAD");
                    }
                    let _ = reply.send(Ok(()));
                    self.active = Some(a);
                    self.process_tx();
                    self.process_rx();
                }
                Request::Reset(done) => {
                    self.active = None;
                    self.want_tap = false;
                    let _ = done.send(());
                }
            }
        }
    }

    /// Puts the tap on the loop or takes it off, as RX last wanted: with no room in the
    /// guest a readable tap would wake the loop for nothing.
    fn sync_tap(&mut self, ops: &mut EventOps) {
        if self.want_tap == self.tap_armed {
            return;
        }
        let events = Events::with_data(&self.tap, TOKEN_TAP, EventSet::IN);
        let result = if self.want_tap {
            ops.add(events)
        } else {
            ops.remove(events)
        };
        match result {
            Ok(()) => self.tap_armed = self.want_tap,
            Err(e) => tracing::error!(error = %e, "changing the tap's place on the loop"),
        }
    }

    fn process_tx(&mut self) {
        let Some(mut a) = self.active.take() else {
            return;
        };
        let mut sent = 0;
        let mut used = false;
        'ring: loop {
            let _ = a.tx.disable_notification(&a.mem);
            let mut progress = false;
            while let Some(chain) = a.tx.pop_descriptor_chain(&a.mem) {
                progress = true;
                let head = chain.head_index();
                match tx_frame(&self.tap, &mut self.scratch, &a, chain) {
                    Ok(()) => self.stats.bump(TX_FRAMES),
                    Err(e) => {
                        self.stats.bump(TX_DROPPED);
                        static LOG: LogBudget = LogBudget::new(8);
                        if LOG.spend() {
                            tracing::debug!(reason = %e, "TX frame dropped");
                        }
                    }
                }
                let _ = a.tx.add_used(&a.mem, head, 0);
                used = true;
                sent += 1;
                if sent >= BUDGET * 4 {
                    // Let RX have a turn; come back through our own eventfd.
                    let _ = self.tx_evt.write(1);
                    break 'ring;
                }
            }
            // More published meanwhile: go on; but a ring that claims more than it gives
            // (a broken avail index) waits for the next kick instead of spinning.
            let more = a.tx.enable_notification(&a.mem).unwrap_or(false);
            if !(more && progress) {
                break;
            }
        }
        if used && a.tx.needs_notification(&a.mem).unwrap_or(true) {
            a.interrupt.signal_used();
        }
        self.active = Some(a);
    }

    fn process_rx(&mut self) {
        let Some(mut a) = self.active.take() else {
            self.want_tap = false;
            return;
        };
        let mut used = false;
        let mut wait_for_buffers = false;
        let mut rechecked = false;
        for _ in 0..BUDGET {
            match rx_frame(&self.tap, &mut self.scratch, &mut a) {
                RxOutcome::Delivered => {
                    used = true;
                    self.stats.bump(RX_FRAMES);
                }
                RxOutcome::Dropped => self.stats.bump(RX_DROPPED),
                RxOutcome::TapEmpty => break,
                RxOutcome::NoBuffers => {
                    if kick_on_next_publish(&mut a.rx, &a.mem) && !rechecked {
                        // Buffers came in meanwhile: look once more (a ring whose index
                        // claims buffers it does not have must not keep the thread
                        // spinning; its next publish kicks us).
                        rechecked = true;
                        continue;
                    }
                    wait_for_buffers = true;
                    break;
                }
            }
        }
        // The guest's kick (RX queue eventfd) re-arms the tap once it has made room.
        self.want_tap = !wait_for_buffers;
        if used && a.rx.needs_notification(&a.mem).unwrap_or(true) {
            a.interrupt.signal_used();
        }
        self.active = Some(a);
    }
}

impl MutEventSubscriber for Worker {
    fn init(&mut self, ops: &mut EventOps) {
        self.inbox.watch(ops, TOKEN_CONTROL);
        event_loop::watch(
            ops,
            self.rx_evt.as_ref(),
            TOKEN_RX_QUEUE,
            "the RX queue's kick",
        );
        event_loop::watch(
            ops,
            self.tx_evt.as_ref(),
            TOKEN_TX_QUEUE,
            "the TX queue's kick",
        );
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TOKEN_CONTROL => self.handle_control(),
            TOKEN_RX_QUEUE => {
                let _ = self.rx_evt.read();
                self.process_rx();
            }
            TOKEN_TX_QUEUE => {
                let _ = self.tx_evt.read();
                self.process_tx();
            }
            TOKEN_TAP => self.process_rx(),
            _ => {}
        }
        self.sync_tap(ops);
    }
}

impl Backend for Worker {
    fn finished(&self) -> bool {
        self.inbox.stopped()
    }

    /// RX then TX, as the device orders them. Parked between two events, the worker
    /// holds no chain half used (an RX frame without room goes back on the queue).
    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        self.active
            .as_ref()
            .map(|a| vec![a.rx.state(), a.tx.state()])
    }
}

/// Makes the driver kick at its next publish, and says whether it published meanwhile.
///
/// `enable_notification` sets EVENT_IDX's avail_event to the device's position, which is
/// right when the device has used everything before it. RX may stop short of that: the
/// buffers published are too few for a frame and go back to the ring. A driver that has
/// published past avail_event never crosses it again and never kicks: RX would stall for
/// good (the nested bulk-transfer test saw it). So avail_event becomes the driver's avail
/// index itself, written until it holds still (a driver publishing all along gets looked at
/// again by the caller rather than waited for).
fn kick_on_next_publish(q: &mut Queue, mem: &GuestMemoryMmap) -> bool {
    let ours = q.next_avail();
    let mut moved = false;
    for _ in 0..4 {
        let Ok(theirs) = q.avail_idx(mem, Ordering::Acquire) else {
            break;
        };
        q.set_next_avail(theirs.0);
        // True when the index moved after avail_event was written.
        moved = q.enable_notification(mem).unwrap_or(false);
        if !moved {
            break;
        }
    }
    q.set_next_avail(ours);
    moved
}

/// Collects the chain's descriptors (all readable for TX, all writable for RX) onto
/// `segs`, each checked against guest memory; returns the bytes they span.
fn gather(
    segs: &mut Vec<Segment>,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    writable: bool,
) -> Result<usize, Bad> {
    let mut total = 0usize;
    for d in chain {
        if d.is_write_only() != writable {
            return Err(Bad::Layout("descriptor direction"));
        }
        if segs.len() == MAX_SEGMENTS {
            return Err(Bad::Layout("too many descriptors"));
        }
        let mut len = d.len() as usize;
        if writable {
            // RX: room past the largest frame is never written; a big buffer is fine.
            len = len.min(MAX_FRAME - total);
        }
        if len == 0 {
            if total == MAX_FRAME {
                break;
            }
            continue;
        }
        let slice = mem.get_slice(d.addr(), len).map_err(|_| Bad::Memory)?;
        let iov = libc::iovec {
            iov_base: slice.ptr_guard_mut().as_ptr().cast(),
            iov_len: len,
        };
        segs.push(Segment {
            addr: d.addr(),
            len,
            iov,
        });
        total += len;
        if total > MAX_FRAME {
            return Err(Bad::Layout("longer than the largest frame"));
        }
    }
    Ok(total)
}

/// Copies the first `out.len()` bytes of the buffer `segs` spans out of guest memory.
fn read_at(mem: &GuestMemoryMmap, segs: &[Segment], out: &mut [u8]) -> Result<(), Bad> {
    let mut done = 0;
    for s in segs {
        if done == out.len() {
            break;
        }
        let n = s.len.min(out.len() - done);
        mem.read_slice(&mut out[done..done + n], s.addr)
            .map_err(|_| Bad::Memory)?;
        done += n;
    }
    if done < out.len() {
        return Err(Bad::Layout("shorter than its header"));
    }
    Ok(())
}

/// Writes `bytes` at byte `offset` of the buffer `segs` spans, in guest memory.
fn write_at(
    mem: &GuestMemoryMmap,
    segs: &[Segment],
    offset: usize,
    bytes: &[u8],
) -> Result<(), Bad> {
    for (i, b) in bytes.iter().enumerate() {
        let mut pos = offset + i;
        let seg = segs.iter().find(|s| {
            if pos < s.len {
                true
            } else {
                pos -= s.len;
                false
            }
        });
        let s = seg.ok_or(Bad::Layout("shorter than its header"))?;
        mem.write_obj(*b, s.addr.unchecked_add(pos as u64))
            .map_err(|_| Bad::Memory)?;
    }
    Ok(())
}

fn check_tx_header(a: &Active, h: &[u8; VNET_HDR_LEN], frame_len: usize) -> Result<(), Bad> {
    let flags = u32::from(h[0]);
    let gso = u32::from(h[1]);
    let hdr_len = usize::from(u16::from_le_bytes([h[2], h[3]]));
    let gso_size = u16::from_le_bytes([h[4], h[5]]);
    let csum_start = usize::from(u16::from_le_bytes([h[6], h[7]]));
    let csum_offset = usize::from(u16::from_le_bytes([h[8], h[9]]));
    if flags & !VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
        return Err(Bad::Header("flags"));
    }
    if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 && csum_start + csum_offset + 2 > frame_len {
        return Err(Bad::Header("checksum position past the frame"));
    }
    let kind = gso & !VIRTIO_NET_HDR_GSO_ECN;
    match kind {
        VIRTIO_NET_HDR_GSO_NONE => {}
        VIRTIO_NET_HDR_GSO_TCPV4 if a.host_tso4 => {}
        VIRTIO_NET_HDR_GSO_TCPV6 if a.host_tso6 => {}
        _ => return Err(Bad::Header("segmentation offload not negotiated")),
    }
    if kind != VIRTIO_NET_HDR_GSO_NONE && (gso_size == 0 || hdr_len > frame_len) {
        return Err(Bad::Header("segmentation sizes"));
    }
    Ok(())
}

/// Sends one TX chain to the tap.
fn tx_frame(
    tap: &Tap,
    scratch: &mut Scratch,
    a: &Active,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<(), Bad> {
    scratch.segments.clear();
    let total = gather(&mut scratch.segments, &a.mem, chain, false)?;
    if total < VNET_HDR_LEN + 14 {
        return Err(Bad::Layout("shorter than a header and an Ethernet frame"));
    }
    let mut h = [0u8; VNET_HDR_LEN];
    read_at(&a.mem, &scratch.segments, &mut h)?;
    check_tx_header(a, &h, total - VNET_HDR_LEN)?;
    scratch.tx_header = h;
    // A tap whose queue is full, or that is down, drops the frame as a NIC would.
    tap.writev(scratch.tx_iovecs())
        .map(|_| ())
        .map_err(|_| Bad::Layout("the tap refused the frame"))
}

/// The most bytes one RX frame may need: 64 KiB when the guest takes TSO, else an
/// MTU-sized frame with its Ethernet, VLAN and virtio headers.
fn rx_need(a: &Active) -> usize {
    if a.offload & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0 {
        MAX_FRAME
    } else {
        VNET_HDR_LEN + 18 + usize::from(a.mtu)
    }
}

/// Collects RX chains until they can hold `rx_need` bytes (one chain unless mergeable),
/// reads one frame into them, and returns to the ring the chains it did not fill.
fn rx_frame(tap: &Tap, scratch: &mut Scratch, a: &mut Active) -> RxOutcome {
    let need = rx_need(a);
    scratch.segments.clear();
    scratch.chains.clear();
    let mut capacity = 0usize;
    while capacity < need && (a.mergeable || scratch.chains.is_empty()) {
        let Some(chain) = a.rx.pop_descriptor_chain(&a.mem) else {
            break;
        };
        let head = chain.head_index();
        let first = scratch.segments.len();
        match gather(&mut scratch.segments, &a.mem, chain, true) {
            Ok(n) if n >= VNET_HDR_LEN => {
                capacity += n;
                scratch.chains.push(RxChain {
                    head,
                    first,
                    capacity: n,
                });
            }
            _ => {
                // Unusable: returned empty; its segments forgotten.
                scratch.segments.truncate(first);
                let _ = a.rx.add_used(&a.mem, head, 0);
            }
        }
        if capacity > MAX_FRAME * 2 {
            break;
        }
    }
    let popped = scratch.chains.len();
    let enough = capacity >= need || (!a.mergeable && popped == 1);
    if !enough {
        unpop(&mut a.rx, popped);
        return RxOutcome::NoBuffers;
    }
    let n = match tap.readv(scratch.iovecs()) {
        Ok(n) if n >= VNET_HDR_LEN => n,
        // Nothing a tap would deliver: drop it, keep the buffers.
        Ok(_) => {
            unpop(&mut a.rx, popped);
            return RxOutcome::Dropped;
        }
        Err(e) => {
            unpop(&mut a.rx, popped);
            // WouldBlock: nothing waiting. Anything else: the frame did not fit (or the tap
            // failed) and is gone; the buffers stay the guest's.
            return if e.kind() == ErrorKind::WouldBlock {
                RxOutcome::TapEmpty
            } else {
                RxOutcome::Dropped
            };
        }
    };
    let mut left = n;
    let mut filled = 0usize;
    for c in &scratch.chains {
        if left == 0 {
            break;
        }
        let take = left.min(c.capacity);
        // take <= the frame's length, which the tap bounds far below 4 GiB.
        let _ =
            a.rx.add_used(&a.mem, c.head, u32::try_from(take).unwrap_or(u32::MAX));
        left -= take;
        filled += 1;
    }
    // num_buffers, in the first chain's header: the tap leaves it unwritten.
    let first = &scratch.segments[scratch.chains[0].first..];
    let _ = write_at(
        &a.mem,
        first,
        NUM_BUFFERS_OFFSET,
        // filled <= the buffers popped, at most the queue's size.
        &u16::try_from(filled).unwrap_or(u16::MAX).to_le_bytes(),
    );
    unpop(&mut a.rx, popped - filled);
    RxOutcome::Delivered
}

/// Returns the last `k` popped chains to the ring, as if never taken.
fn unpop(q: &mut Queue, k: usize) {
    for _ in 0..k {
        q.go_to_previous_position();
    }
}
