//! The in-kernel interrupt controllers and timer: KVM's PIC + IOAPIC + LAPICs and its
//! PIT, which the guest's MP table and the device IRQ numbers assume.

use crate::arch::x86_64::{Result, ioctl};
use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config};
use kvm_ioctls::VmFd;

/// Intel needs a TSS region for real-mode emulation; three pages just below 4 GiB - 12 KiB.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// Creates the irqchip and PIT for `vm` (before any vCPU).
pub fn create(vm: &VmFd) -> Result<()> {
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(ioctl("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip().map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(ioctl("KVM_CREATE_PIT2"))?;
    Ok(())
}
