//! Hypervisor backends that boot a pod VM. QEMU for now; hull-vmm joins later.

pub mod accel;
pub mod qemu;
