//! virtio-net's in-kernel data path: `/dev/vhost-net` moves frames between the tap and the
//! guest's rings in a kernel worker, with no copy or wake-up in hull-vmm per frame.
//!
//! hull-vmm keeps the virtio-mmio transport, the config space and feature negotiation. When
//! the driver is ready, this module's thread hands the kernel the guest memory table, the
//! rings, the queues' kick eventfds (the ones KVM signals on a notify write, so a kick goes
//! from the guest to the kernel worker without leaving KVM) and one call eventfd per queue,
//! then attaches the tap. virtio-mmio has one interrupt line and a status register that the
//! guest's handler reads first, so a call cannot go straight to the irqfd: the thread sets
//! INT_VRING and raises the line, one wake-up per interrupt (and EVENT_IDX keeps those
//! rare under load).
//!
//! The kernel validates the rings against the memory table it was given; hull-vmm checks
//! them against guest memory first (the `vhost` crate's `set_vring_addr`), so a guest
//! pointing a ring outside its RAM gets a failed device, not a kernel error.

use std::io::ErrorKind;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vhost::net::VhostNet as _;
use vhost::vhost_kern::net::Net as VhostNetHandle;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::tap::Tap;
use super::worker::Active;
use super::{RX, TX, bit};
use crate::devices::virtio::event_loop::Request;
use crate::devices::virtio::event_loop::{self, Backend, Inbox};
use crate::log_budget::LogBudget;
use crate::seccomp::ThreadKind;

/// The transport features the kernel acts on; the offloads (CSUM, TSO) are the tap's, set
/// with TUNSETOFFLOAD, and vhost passes the headers through.
const KERNEL_FEATURES: u64 =
    bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_EVENT_IDX) | bit(VIRTIO_NET_F_MRG_RXBUF);

const TOKEN_CONTROL: u32 = 0;
const TOKEN_CALL_RX: u32 = 1;
const TOKEN_CALL_TX: u32 = 2;
const TOKEN_ERR: u32 = 3;

/// Bounds the log lines a guest can cause by breaking its rings again and again.
static RING_ERRORS: LogBudget = LogBudget::new(20);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening /dev/vhost-net: {0}")]
    Open(#[source] vhost::Error),
    #[error("vhost-net {op}: {source}")]
    Ioctl {
        op: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("guest memory is not file-backed, vhost-net cannot map it")]
    Memory,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Whether the host simply has no usable vhost-net (the caller may fall back).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Open(vhost::Error::VhostOpen(e)) => {
                matches!(e.kind(), ErrorKind::NotFound | ErrorKind::PermissionDenied)
            }
            _ => false,
        }
    }
}

fn ioctl(op: &'static str) -> impl FnOnce(vhost::Error) -> Error {
    move |source| Error::Ioctl { op, source }
}

/// An open, owned vhost-net instance that knows the guest's memory.
pub struct Kernel {
    handle: VhostNetHandle<Arc<GuestMemoryMmap>>,
    /// What the kernel offers of `KERNEL_FEATURES`.
    features: u64,
}

impl Kernel {
    /// Opens `/dev/vhost-net`, makes this process its owner and gives it the memory table.
    /// Runs before the jail and seccomp (it opens a device node).
    pub fn open(mem: &GuestMemoryMmap) -> Result<Kernel, Error> {
        let handle = VhostNetHandle::new(Arc::new(mem.clone())).map_err(Error::Open)?;
        handle.set_owner().map_err(ioctl("SET_OWNER"))?;
        let features = handle.get_features().map_err(ioctl("GET_FEATURES"))? & KERNEL_FEATURES;
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| Error::Memory)?;
        handle
            .set_mem_table(&regions)
            .map_err(ioctl("SET_MEM_TABLE"))?;
        Ok(Kernel { handle, features })
    }

    /// Hands the kernel the rings and the tap. On an error the caller detaches.
    fn attach(&self, a: &Active, tap: &Tap, evts: &Eventfds) -> Result<(), Error> {
        let h = &self.handle;
        h.set_features(a.acked & self.features)
            .map_err(ioctl("SET_FEATURES"))?;
        for (index, q) in [(RX, &a.rx), (TX, &a.tx)] {
            h.set_vring_num(index, q.size())
                .map_err(ioctl("SET_VRING_NUM"))?;
            h.set_vring_addr(index, &ring_config(q))
                .map_err(ioctl("SET_VRING_ADDR"))?;
            h.set_vring_base(index, q.next_avail())
                .map_err(ioctl("SET_VRING_BASE"))?;
            h.set_vring_call(index, &evts.call[index])
                .map_err(ioctl("SET_VRING_CALL"))?;
            h.set_vring_kick(index, &evts.kick[index])
                .map_err(ioctl("SET_VRING_KICK"))?;
            h.set_vring_err(index, &evts.err)
                .map_err(ioctl("SET_VRING_ERR"))?;
        }
        tap.set_offload(a.offload)?;
        for index in [RX, TX] {
            h.set_backend(index, Some(tap.file()))
                .map_err(ioctl("NET_SET_BACKEND"))?;
        }
        Ok(())
    }

    /// Takes the tap away from both rings: the kernel stops touching guest memory.
    fn detach(&self) {
        for index in [RX, TX] {
            if let Err(e) = self.handle.set_backend(index, None) {
                tracing::warn!(error = %e, index, "vhost-net: detaching the tap");
            }
        }
    }
}

fn ring_config(q: &Queue) -> VringConfigData {
    VringConfigData {
        queue_max_size: q.max_size(),
        queue_size: q.size(),
        flags: 0,
        desc_table_addr: q.desc_table(),
        used_ring_addr: q.used_ring(),
        avail_ring_addr: q.avail_ring(),
        log_addr: None,
    }
}

struct Eventfds {
    /// The queues' notify eventfds (KVM ioeventfds): the kernel worker waits on them.
    kick: [Arc<EventFd>; 2],
    /// Signalled by the kernel worker when it used buffers.
    call: [EventFd; 2],
    /// Signalled when the kernel worker finds a ring it cannot use.
    err: EventFd,
}

/// The loop that attaches the kernel data path on activation and turns its calls into
/// virtio-mmio interrupts.
struct Attacher {
    kernel: Kernel,
    tap: Tap,
    evts: Eventfds,
    inbox: Inbox<Box<Active>>,
    active: Option<Box<Active>>,
}

/// Starts the device's loop (`net-vhost`, under the vhost-net seccomp filter).
pub fn spawn(
    kernel: Kernel,
    tap: Tap,
    kick: [Arc<EventFd>; 2],
    inbox: Inbox<Box<Active>>,
) -> std::io::Result<()> {
    let evts = Eventfds {
        kick,
        call: [
            EventFd::new(libc::EFD_NONBLOCK)?,
            EventFd::new(libc::EFD_NONBLOCK)?,
        ],
        err: EventFd::new(libc::EFD_NONBLOCK)?,
    };
    let attacher = Attacher {
        kernel,
        tap,
        evts,
        inbox,
        active: None,
    };
    event_loop::spawn("net-vhost", ThreadKind::VhostNet, attacher).map(drop)
}

impl Attacher {
    fn handle_control(&mut self) {
        for c in self.inbox.take() {
            match c {
                Request::Activate(a, reply) => {
                    let result = self.kernel.attach(&a, &self.tap, &self.evts);
                    if result.is_err() {
                        self.kernel.detach();
                    } else {
                        self.active = Some(a);
                    }
                    let _ = reply.send(result.map_err(|e| e.to_string()));
                }
                Request::Reset(done) => {
                    self.kernel.detach();
                    self.active = None;
                    let _ = done.send(());
                }
            }
        }
    }
}

impl MutEventSubscriber for Attacher {
    fn init(&mut self, ops: &mut EventOps) {
        self.inbox.watch(ops, TOKEN_CONTROL);
        event_loop::watch(
            ops,
            &self.evts.call[RX],
            TOKEN_CALL_RX,
            "vhost-net's RX call",
        );
        event_loop::watch(
            ops,
            &self.evts.call[TX],
            TOKEN_CALL_TX,
            "vhost-net's TX call",
        );
        event_loop::watch(ops, &self.evts.err, TOKEN_ERR, "vhost-net's error eventfd");
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            TOKEN_CONTROL => self.handle_control(),
            token @ (TOKEN_CALL_RX | TOKEN_CALL_TX) => {
                let index = if token == TOKEN_CALL_RX { RX } else { TX };
                let _ = self.evts.call[index].read();
                if let Some(a) = &self.active {
                    a.interrupt.signal_used();
                }
            }
            TOKEN_ERR => {
                let _ = self.evts.err.read();
                if RING_ERRORS.spend() {
                    tracing::warn!("vhost-net: the kernel found a ring it cannot use");
                }
            }
            _ => {}
        }
    }
}

impl Drop for Attacher {
    /// The loop is over (the device is gone): the kernel lets go of the tap and the rings.
    fn drop(&mut self) {
        self.kernel.detach();
    }
}

impl Backend for Attacher {
    fn finished(&self) -> bool {
        self.inbox.stopped()
    }
}
