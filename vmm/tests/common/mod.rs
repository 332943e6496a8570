//! What the device tests share: the driver's side of a virtio-mmio bring-up, played by
//! hand.

#![allow(dead_code)] // each test file uses its own part

use hull_vmm::devices::virtio::mmio::MmioTransport;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const QUEUE_SIZE: u16 = 16;

pub fn w32(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// Brings a transport up the way Linux does, queue q at q * 0x1000, acking VERSION_1.
pub fn bring_up(t: &mut MmioTransport, queues: u32) {
    bring_up_with(t, queues, 0);
}

/// As `bring_up`, also acking `features_lo` (the low 32 feature bits).
pub fn bring_up_with(t: &mut MmioTransport, queues: u32, features_lo: u32) {
    w32(t, 0x70, 1);
    w32(t, 0x70, 3);
    w32(t, 0x24, 0);
    w32(t, 0x20, features_lo);
    w32(t, 0x24, 1);
    w32(t, 0x20, 1); // VIRTIO_F_VERSION_1
    w32(t, 0x70, 11);
    for q in 0..queues {
        let a = u64::from(q) * 0x1000;
        w32(t, 0x30, q);
        w32(t, 0x38, u32::from(QUEUE_SIZE));
        w32(t, 0x80, u32::try_from(a).unwrap());
        w32(t, 0x90, u32::try_from(a + 0x400).unwrap());
        w32(t, 0xa0, u32::try_from(a + 0x800).unwrap());
        w32(t, 0x44, 1);
    }
    w32(t, 0x70, 15);
}

pub fn used_idx(mem: &GuestMemoryMmap, q: u64) -> u16 {
    mem.read_obj(GuestAddress(q * 0x1000 + 0x802)).unwrap()
}
