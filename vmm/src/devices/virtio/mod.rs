//! virtio devices over the MMIO transport. A device sees its queues and guest memory once
//! the driver has set it up (DRIVER_OK), and signals used buffers through an interrupt.

pub mod block;
pub mod event_loop;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod vsock;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1 as VERSION_1_BIT;
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub const VIRTIO_F_VERSION_1: u64 = 1 << VERSION_1_BIT;
/// Interrupt status bit: the device used buffers.
pub const INT_VRING: u32 = VIRTIO_MMIO_INT_VRING;

/// What making or activating a virtio device can fail on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operator's description of the device is wrong.
    #[error("{0}")]
    Config(String),
    #[error("{device} needs {expected} queues, not {got}")]
    QueueCount {
        device: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("the driver set up an invalid queue")]
    InvalidQueue,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("vhost-user {op}: {source}")]
    VhostUser {
        op: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("vhost-user daemon at {socket}: {source}", socket = .socket.display())]
    Daemon {
        socket: std::path::PathBuf,
        #[source]
        source: Box<Error>,
    },
    #[error(transparent)]
    VhostNet(#[from] net::VhostNetError),
    /// The device's own thread refused or did not answer.
    #[error("{0}")]
    Backend(String),
}

/// Names the operation that failed with an I/O error.
pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Checks the number of queues the transport hands a device.
pub fn expect_queues(device: &'static str, expected: usize, got: usize) -> Result<(), Error> {
    if got == expected {
        Ok(())
    } else {
        Err(Error::QueueCount {
            device,
            expected,
            got,
        })
    }
}

/// Descriptor flags as the descriptor's 16-bit field holds them (the bindings' are u32).
#[cfg(test)]
pub const DESC_F_WRITE: u16 = desc_flag(virtio_bindings::virtio_ring::VRING_DESC_F_WRITE);
#[cfg(test)]
pub const DESC_F_NEXT: u16 = desc_flag(virtio_bindings::virtio_ring::VRING_DESC_F_NEXT);

#[cfg(test)]
const fn desc_flag(flag: u32) -> u16 {
    let [lo, hi, 0, 0] = flag.to_le_bytes() else {
        panic!("descriptor flags have 16 bits");
    };
    u16::from_le_bytes([lo, hi])
}

/// A device's interrupt line: the status register bit plus the irqfd.
#[derive(Clone)]
pub struct Interrupt {
    pub status: Arc<AtomicU32>,
    pub evt: Arc<EventFd>,
}

impl Interrupt {
    pub fn new(evt: EventFd) -> Interrupt {
        Interrupt {
            status: Arc::new(AtomicU32::new(0)),
            evt: Arc::new(evt),
        }
    }

    pub fn signal_used(&self) {
        self.status.fetch_or(INT_VRING, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            tracing::warn!(error = %e, "raising a virtio interrupt");
        }
    }
}

/// Fills `buf` from the host kernel's CRNG (waiting for it only in the host's first
/// moments of boot); false if it failed, leaving `buf` as it was.
pub fn random_fill(buf: &mut [u8]) -> bool {
    // SAFETY: getrandom writes at most buf.len() bytes into the buffer we own.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    usize::try_from(n).is_ok_and(|n| n == buf.len())
}

/// Copies a device's config space at `offset` into `data`; bytes past its end read as 0.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}

pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    fn queue_max_sizes(&self) -> &[u16];
    fn features(&self) -> u64;
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The features the driver accepted (a subset of `features()` plus VERSION_1).
    fn ack_features(&mut self, _features: u64) {}
    /// The driver finished setup: the device may use its queues from now on.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), Error>;
    /// Eventfds that KVM may signal directly for the driver's queue notifications (one
    /// per queue, in order; registered as ioeventfds on the notify register), so a kick
    /// costs no exit to userspace. None: notifications arrive through `notify`.
    fn queue_events(&self) -> std::io::Result<Vec<EventFd>> {
        Ok(Vec::new())
    }
    /// Activation of a device restored from a snapshot, its queues where the snapshot
    /// left them; what the old VMM's host side held (connections) is gone.
    fn restore_activated(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), Error> {
        self.activate(mem, queues, interrupt)
    }
    /// The device's event loop, when it can be parked for a pause (and, if its backend
    /// hands over its queues, snapshotted).
    fn pacer(&self) -> Option<event_loop::Pacer> {
        None
    }
    /// The queues of an active device whose backend is not a loop of hull-vmm's (so has
    /// no `pacer` to hand them over), for a snapshot of the paused VM; an error when the
    /// device is in a state a snapshot cannot carry. None: the device cannot say.
    fn snapshot_queues(&self) -> Result<Option<Vec<virtio_queue::QueueState>>, Error> {
        Ok(None)
    }
    /// The driver notified queue `index`.
    fn notify(&mut self, index: u16);
    /// The driver reset the device: forget queues and connections.
    fn reset(&mut self);
}
