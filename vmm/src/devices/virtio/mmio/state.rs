//! The transport's part of a snapshot: its registers and, for each queue, where the
//! driver put it and how far the device got. An active device's queues live with its
//! backend, which hands them over when its loop is parked.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{MmioTransport, Registers, STATUS_FEATURES_OK};
use crate::devices::virtio::event_loop::Parked;
use crate::devices::virtio::{Error, Interrupt, VirtioDevice};

/// One virtio-mmio device as a snapshot holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransportState {
    pub device_type: u32,
    registers: Registers,
    interrupt_status: u32,
    activated: bool,
    queues: Vec<QueueSnapshot>,
}

/// `virtio_queue::QueueState`, which has no serde of its own.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct QueueSnapshot {
    max_size: u16,
    next_avail: u16,
    next_used: u16,
    event_idx_enabled: bool,
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
}

impl From<QueueState> for QueueSnapshot {
    fn from(q: QueueState) -> Self {
        QueueSnapshot {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

impl From<&QueueSnapshot> for QueueState {
    fn from(q: &QueueSnapshot) -> Self {
        QueueState {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

impl MmioTransport {
    /// Raises the device's interrupt again if its status says one is pending: one raised
    /// while the VM was being restored (the vsock reset event) is lost when the
    /// snapshot's IOAPIC state is written over it.
    pub fn reassert_interrupt(&self) {
        if self.interrupt.status.load(Ordering::SeqCst) != 0 {
            let _ = self.interrupt.evt.write(1);
        }
    }

    /// The device's type (what a restore must find in the same slot).
    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// The device's event loop, to park it.
    pub fn pacer(&self) -> Option<crate::devices::virtio::event_loop::Pacer> {
        self.device.pacer()
    }

    /// This transport's state; `parked` is its device's parked loop (needed once the
    /// device is active: the backend holds the queues then).
    pub fn save(&self, parked: Option<&Parked>) -> Result<TransportState, Error> {
        let queues: Vec<QueueSnapshot> = if self.activated {
            let handed_over = match parked.and_then(|p| p.queues.clone()) {
                Some(q) => Some(q),
                None => self.device.snapshot_queues()?,
            };
            handed_over
                .ok_or_else(|| {
                    Error::Config(format!(
                        "virtio device type {} cannot be snapshotted yet",
                        self.device.device_type()
                    ))
                })?
                .into_iter()
                .map(QueueSnapshot::from)
                .collect()
        } else {
            self.queues.iter().map(|q| q.state().into()).collect()
        };
        Ok(TransportState {
            device_type: self.device.device_type(),
            registers: self.regs.clone(),
            interrupt_status: self.interrupt.status.load(Ordering::SeqCst),
            activated: self.activated,
            queues,
        })
    }

    /// A transport for `device` as `state` left it; an active device gets its queues
    /// back where they were. Nothing in `state` is trusted: queues are checked as the
    /// driver's own setup would be.
    pub fn restore(
        mut device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Interrupt,
        state: &TransportState,
    ) -> Result<Self, Error> {
        if device.device_type() != state.device_type {
            return Err(Error::Config(format!(
                "the snapshot has virtio device type {} where this VM has type {}",
                state.device_type,
                device.device_type()
            )));
        }
        let sizes = device.queue_max_sizes();
        if sizes.len() != state.queues.len()
            || sizes
                .iter()
                .zip(&state.queues)
                .any(|(s, q)| *s != q.max_size)
        {
            return Err(Error::Config(format!(
                "the snapshot's queues of virtio device type {} do not match the device's",
                state.device_type
            )));
        }
        let queues = state
            .queues
            .iter()
            .map(|q| Queue::try_from(QueueState::from(q)).map_err(|_| Error::InvalidQueue))
            .collect::<Result<Vec<_>, _>>()?;
        if state.registers.status & STATUS_FEATURES_OK != 0 {
            device.ack_features(state.registers.driver_features);
        }
        interrupt
            .status
            .store(state.interrupt_status, Ordering::SeqCst);
        let mut t = MmioTransport::new(device, mem.clone(), interrupt.clone())?;
        t.regs = state.registers.clone();
        if state.activated {
            if !queues.iter().all(|q| q.is_valid(&mem)) {
                return Err(Error::InvalidQueue);
            }
            t.device.restore_activated(mem, queues, interrupt)?;
            t.activated = true;
            t.queues = Vec::new();
        } else {
            t.queues = queues;
        }
        Ok(t)
    }
}
