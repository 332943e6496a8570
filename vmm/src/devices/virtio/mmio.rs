//! The virtio-mmio transport, version 2 (virtio 1.x, "modern"): the register file the
//! driver uses to discover the device, negotiate features, place the queues, and notify.
//! Every value the guest writes is checked; a bad setup fails the device, never the VMM.

use crate::log_budget::LogBudget;
use std::sync::atomic::Ordering;

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK,
};
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{Error, Interrupt, VIRTIO_F_VERSION_1, VirtioDevice};

mod state;
pub use state::TransportState;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x6c6c_7568; // "hull"

const STATUS_ACKNOWLEDGE: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const STATUS_DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
const STATUS_DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
const STATUS_FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
const STATUS_FAILED: u32 = VIRTIO_CONFIG_S_FAILED;

/// The queue notify register's offset in the window.
pub const QUEUE_NOTIFY: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;
/// Size of one device's MMIO window.
pub const MMIO_LEN: u64 = 0x1000;

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Interrupt,
    queues: Vec<Queue>,
    regs: Registers,
    activated: bool,
}

/// The registers the driver writes (and a snapshot carries) beside the queues.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Registers {
    queue_select: u32,
    features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    config_generation: u32,
}

fn new_queues(device: &dyn VirtioDevice) -> Result<Vec<Queue>, Error> {
    device
        .queue_max_sizes()
        .iter()
        .map(|s| Queue::new(*s).map_err(|e| Error::Config(format!("queue of size {s}: {e:?}"))))
        .collect()
}

impl MmioTransport {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Interrupt,
    ) -> Result<Self, Error> {
        let queues = new_queues(device.as_ref())?;
        Ok(MmioTransport {
            device,
            mem,
            interrupt,
            queues,
            regs: Registers::default(),
            activated: false,
        })
    }

    fn queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.regs.queue_select as usize)
    }

    fn features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= 0x100 {
            self.device.read_config(offset - 0x100, data);
            return;
        }
        if data.len() != 4 {
            data.fill(0);
            return;
        }
        let v: u32 = match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => self.device.device_type(),
            0x0c => VENDOR,
            0x10 => match self.regs.features_select {
                0 => low_half(self.features()),
                1 => low_half(self.features() >> 32),
                _ => 0,
            },
            0x34 => self.queue().map(|q| u32::from(q.max_size())).unwrap_or(0),
            0x44 => self.queue().map(|q| u32::from(q.ready())).unwrap_or(0),
            0x60 => self.interrupt.status.load(Ordering::SeqCst),
            0x70 => self.regs.status,
            0xfc => self.regs.config_generation,
            _ => 0,
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= 0x100 || data.len() != 4 {
            // The vsock config (guest cid) is read-only; so is anything odd-sized.
            return;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        let setting_up = self.regs.status & STATUS_DRIVER_OK == 0;
        match offset {
            0x14 => self.regs.features_select = v,
            0x20 => match self.regs.driver_features_select {
                0 if setting_up => {
                    self.regs.driver_features =
                        (self.regs.driver_features & !0xffff_ffff) | u64::from(v)
                }
                1 if setting_up => {
                    self.regs.driver_features =
                        (self.regs.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                }
                _ => {}
            },
            0x24 => self.regs.driver_features_select = v,
            0x30 => self.regs.queue_select = v,
            // A size past u16 is no size the device offers: the queue keeps the one it
            // has rather than taking the low half.
            0x38 if setting_up => {
                if let (Some(q), Ok(size)) = (self.queue(), u16::try_from(v)) {
                    q.set_size(size);
                }
            }
            0x44 if setting_up => {
                if let Some(q) = self.queue() {
                    q.set_ready(v == 1);
                }
            }
            // The device owns the queues once active: check against its queue count.
            QUEUE_NOTIFY if self.activated => {
                if let Ok(index) = u16::try_from(v)
                    && usize::from(index) < self.device.queue_max_sizes().len()
                {
                    self.device.notify(index);
                }
            }
            0x64 => {
                self.interrupt.status.fetch_and(!v, Ordering::SeqCst);
            }
            0x70 => self.set_status(v),
            0x80 if setting_up => self.with_queue(|q| q.set_desc_table_address(Some(v), None)),
            0x84 if setting_up => self.with_queue(|q| q.set_desc_table_address(None, Some(v))),
            0x90 if setting_up => self.with_queue(|q| q.set_avail_ring_address(Some(v), None)),
            0x94 if setting_up => self.with_queue(|q| q.set_avail_ring_address(None, Some(v))),
            0xa0 if setting_up => self.with_queue(|q| q.set_used_ring_address(Some(v), None)),
            0xa4 if setting_up => self.with_queue(|q| q.set_used_ring_address(None, Some(v))),
            _ => {}
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.queue() {
            f(q);
        }
    }

    fn set_status(&mut self, v: u32) {
        tracing::debug!(
            status = v,
            features = self.regs.driver_features,
            "virtio-mmio status"
        );
        if v == 0 {
            self.reset();
            return;
        }
        if v & STATUS_FEATURES_OK != 0 && self.regs.status & STATUS_FEATURES_OK == 0 {
            // The driver may accept only what we offered, and must speak virtio 1.
            if self.regs.driver_features & !self.features() != 0
                || self.regs.driver_features & VIRTIO_F_VERSION_1 == 0
            {
                self.regs.status = v & !STATUS_FEATURES_OK;
                return;
            }
            self.device.ack_features(self.regs.driver_features);
        }
        self.regs.status = v;
        let ready = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        if !self.activated && v & ready == ready {
            let valid = self.queues.iter().all(|q| q.is_valid(&self.mem));
            let result = if valid {
                // The device owns the queues from here on; a reset makes new ones.
                let queues = std::mem::take(&mut self.queues);
                self.device
                    .activate(self.mem.clone(), queues, self.interrupt.clone())
            } else {
                Err(Error::InvalidQueue)
            };
            match result {
                Ok(()) => self.activated = true,
                Err(e) => {
                    static FAILED: LogBudget = LogBudget::new(8);
                    if FAILED.spend() {
                        tracing::warn!(error = %e, "virtio device failed to activate");
                    }
                    self.regs.status |= STATUS_FAILED;
                }
            }
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        self.queues = new_queues(self.device.as_ref()).unwrap_or_default();
        self.regs.status = 0;
        self.regs.driver_features = 0;
        self.regs.queue_select = 0;
        self.activated = false;
        self.interrupt.status.store(0, Ordering::SeqCst);
        self.regs.config_generation = self.regs.config_generation.wrapping_add(1);
    }
}

/// The low 32 bits of a 64-bit register (feature words are read in halves).
fn low_half(v: u64) -> u32 {
    u32::try_from(v & 0xffff_ffff).expect("masked to 32 bits")
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use vmm_sys_util::eventfd::EventFd;

    use super::*;

    #[derive(Clone, Default)]
    struct Record {
        activated: Arc<Mutex<bool>>,
        notified: Arc<Mutex<Vec<u16>>>,
        sizes: Arc<Mutex<Vec<u16>>>,
    }

    struct Fake(Record);

    impl VirtioDevice for Fake {
        fn device_type(&self) -> u32 {
            19
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16]
        }
        fn features(&self) -> u64 {
            0
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(u8::try_from(offset).unwrap() + 0x40);
        }
        fn activate(
            &mut self,
            _m: GuestMemoryMmap,
            q: Vec<Queue>,
            _i: Interrupt,
        ) -> Result<(), Error> {
            assert_eq!(q.len(), 2);
            *self.0.sizes.lock().unwrap() = q.iter().map(|q| q.size()).collect();
            *self.0.activated.lock().unwrap() = true;
            Ok(())
        }
        fn notify(&mut self, index: u16) {
            self.0.notified.lock().unwrap().push(index);
        }
        fn reset(&mut self) {}
    }

    fn transport() -> (MmioTransport, Record) {
        let rec = Record::default();
        let mem = crate::memory::create(16).unwrap().memory;
        let t = MmioTransport::new(
            Box::new(Fake(rec.clone())),
            mem,
            Interrupt::new(EventFd::new(0).unwrap()),
        )
        .unwrap();
        (t, rec)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    /// What Linux's virtio_mmio does, queues placed at `base` (+0x1000 per queue).
    fn bring_up(t: &mut MmioTransport, base: u64, driver_features_hi: u32) {
        bring_up_sized(t, base, driver_features_hi, 16);
    }

    fn bring_up_sized(t: &mut MmioTransport, base: u64, driver_features_hi: u32, size: u32) {
        w(t, 0x70, STATUS_ACKNOWLEDGE);
        w(t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(t, 0x24, 1);
        w(t, 0x20, driver_features_hi);
        w(
            t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        for q in 0..2u32 {
            let a = base + u64::from(q) * 0x1000;
            w(t, 0x30, q);
            w(t, 0x38, size);
            w(t, 0x80, u32::try_from(a).unwrap());
            w(t, 0x84, (a >> 32) as u32);
            w(t, 0x90, u32::try_from(a + 0x400).unwrap());
            w(t, 0x94, 0);
            w(t, 0xa0, u32::try_from(a + 0x800).unwrap());
            w(t, 0xa4, 0);
            w(t, 0x44, 1);
        }
        w(
            t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
    }

    #[test]
    fn identity_registers_and_config() {
        let (mut t, _) = transport();
        assert_eq!(r(&mut t, 0x00), MAGIC);
        assert_eq!(r(&mut t, 0x04), 2);
        assert_eq!(r(&mut t, 0x08), 19);
        w(&mut t, 0x14, 1);
        assert_eq!(r(&mut t, 0x10), 1, "VIRTIO_F_VERSION_1 offered");
        w(&mut t, 0x30, 1);
        assert_eq!(r(&mut t, 0x34), 16);
        w(&mut t, 0x30, 7);
        assert_eq!(r(&mut t, 0x34), 0, "no such queue");
        let mut cfg = [0u8; 2];
        t.read(0x104, &mut cfg);
        assert_eq!(cfg, [0x44, 0x44]);
    }

    #[test]
    fn notifications_reach_the_device_once_it_is_active() {
        let (mut t, rec) = transport();
        w(&mut t, 0x50, 1);
        assert!(
            rec.notified.lock().unwrap().is_empty(),
            "notify before activation"
        );
        bring_up(&mut t, 0x10_0000, 1);
        assert!(*rec.activated.lock().unwrap());
        w(&mut t, 0x50, 0);
        w(&mut t, 0x50, 1);
        w(&mut t, 0x50, 9);
        w(&mut t, 0x50, 0x1_0001);
        assert_eq!(*rec.notified.lock().unwrap(), vec![0, 1]);
    }

    #[test]
    fn a_queue_size_past_16_bits_is_not_cut_to_its_low_half() {
        let (mut t, rec) = transport();
        // Taken as 8 (a valid size), this would shrink the rings the device reads.
        bring_up_sized(&mut t, 0x10_0000, 1, 0x1_0008);
        assert!(*rec.activated.lock().unwrap());
        assert_eq!(*rec.sizes.lock().unwrap(), vec![16, 16]);
    }

    #[test]
    fn features_not_offered_and_bad_queues_fail() {
        let (mut t, rec) = transport();
        // Without VIRTIO_F_VERSION_1 the driver can't have FEATURES_OK.
        bring_up(&mut t, 0x10_0000, 0);
        assert_eq!(r(&mut t, 0x70) & STATUS_FEATURES_OK, 0);
        assert!(!*rec.activated.lock().unwrap());

        let (mut t, rec) = transport();
        // Rings outside guest memory (16 MiB): the device fails, the VMM doesn't.
        bring_up(&mut t, 0x4000_0000, 1);
        assert_ne!(r(&mut t, 0x70) & STATUS_FAILED, 0);
        assert!(!*rec.activated.lock().unwrap());
        // A reset brings it back to a clean state.
        w(&mut t, 0x70, 0);
        assert_eq!(r(&mut t, 0x70), 0);
        w(&mut t, 0x30, 0);
        assert_eq!(r(&mut t, 0x34), 16);
    }
}
