//! What KVM holds of a paused x86-64 VM, read out for a snapshot and written back on
//! restore: each vCPU's registers, system registers, XSAVE area, XCRs, debug registers,
//! MSRs, local APIC, MP state and pending events; and the VM's PIC, IOAPIC, PIT and
//! kvm-clock.

use kvm_bindings::{
    CpuId, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, Msrs, kvm_clock_data,
    kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

use crate::arch::x86_64::{Error, Result, ioctl};

/// One vCPU, as KVM holds it.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub msrs: Vec<kvm_msr_entry>,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub mp_state: kvm_mp_state,
    pub events: kvm_vcpu_events,
}

/// The VM-wide devices KVM emulates.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

/// The MSRs a snapshot may carry: every one KVM lists as saved or emulated for its VMs.
pub fn msr_index_list(kvm: &Kvm) -> Result<Vec<u32>> {
    let listed = kvm
        .get_msr_index_list()
        .map_err(ioctl("KVM_GET_MSR_INDEX_LIST"))?;
    Ok(listed.as_slice().to_vec())
}

/// Reads the MSRs of `indices` that KVM will read for `vcpu`: KVM stops at the first one
/// it refuses (one this host lists but does not back), which is dropped, and the rest is
/// read again.
fn read_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>> {
    let mut wanted = indices.to_vec();
    loop {
        let mut m = msrs(&wanted)?;
        let read = vcpu.get_msrs(&mut m).map_err(ioctl("KVM_GET_MSRS"))?;
        if read >= wanted.len() {
            return Ok(m.as_slice().to_vec());
        }
        wanted.remove(read);
    }
}

fn msrs(indices: &[u32]) -> Result<Msrs> {
    let entries: Vec<kvm_msr_entry> = indices
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&entries).map_err(|e| Error::Msrs(format!("{e:?}")))
}

/// Reads `vcpu` (paused: not in KVM_RUN), with those of the MSRs in `msr_indices` that
/// KVM backs.
pub fn save_vcpu(vcpu: &VcpuFd, cpuid: &CpuId, msr_indices: &[u32]) -> Result<VcpuState> {
    Ok(VcpuState {
        cpuid: cpuid.as_slice().to_vec(),
        msrs: read_msrs(vcpu, msr_indices)?,
        // Pending exceptions and interrupts first: reading them settles KVM's view.
        events: vcpu
            .get_vcpu_events()
            .map_err(ioctl("KVM_GET_VCPU_EVENTS"))?,
        mp_state: vcpu.get_mp_state().map_err(ioctl("KVM_GET_MP_STATE"))?,
        regs: vcpu.get_regs().map_err(ioctl("KVM_GET_REGS"))?,
        sregs: vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?,
        xsave: vcpu.get_xsave().map_err(ioctl("KVM_GET_XSAVE"))?,
        xcrs: vcpu.get_xcrs().map_err(ioctl("KVM_GET_XCRS"))?,
        debugregs: vcpu.get_debug_regs().map_err(ioctl("KVM_GET_DEBUGREGS"))?,
        lapic: vcpu.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?,
    })
}

/// Writes `state` into a fresh `vcpu`, in the order KVM needs: CPUID before anything
/// that depends on features; system registers (APIC base) before the LAPIC; the LAPIC
/// before the MSRs (TSC deadline); events last.
pub fn restore_vcpu(vcpu: &VcpuFd, state: &VcpuState) -> Result<()> {
    let cpuid = CpuId::from_entries(&state.cpuid).map_err(|e| Error::Msrs(format!("{e:?}")))?;
    vcpu.set_cpuid2(&cpuid).map_err(ioctl("KVM_SET_CPUID2"))?;
    vcpu.set_mp_state(state.mp_state)
        .map_err(ioctl("KVM_SET_MP_STATE"))?;
    vcpu.set_regs(&state.regs).map_err(ioctl("KVM_SET_REGS"))?;
    vcpu.set_sregs(&state.sregs)
        .map_err(ioctl("KVM_SET_SREGS"))?;
    // SAFETY: the xsave area was read from KVM on a host with the same CPUID (the
    // snapshot's CPU profile is checked before restore), so its size matches.
    unsafe { vcpu.set_xsave(&state.xsave) }.map_err(ioctl("KVM_SET_XSAVE"))?;
    vcpu.set_xcrs(&state.xcrs).map_err(ioctl("KVM_SET_XCRS"))?;
    vcpu.set_debug_regs(&state.debugregs)
        .map_err(ioctl("KVM_SET_DEBUGREGS"))?;
    vcpu.set_lapic(&state.lapic)
        .map_err(ioctl("KVM_SET_LAPIC"))?;
    let m = Msrs::from_entries(&state.msrs).map_err(|e| Error::Msrs(format!("{e:?}")))?;
    let written = vcpu.set_msrs(&m).map_err(ioctl("KVM_SET_MSRS"))?;
    if written != state.msrs.len() {
        return Err(Error::MsrsRefused {
            written,
            wanted: state.msrs.len(),
        });
    }
    vcpu.set_vcpu_events(&state.events)
        .map_err(ioctl("KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}

fn irqchip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip)
        .map_err(ioctl("KVM_GET_IRQCHIP"))?;
    Ok(chip)
}

/// Reads the VM's interrupt controllers, PIT and clock (every vCPU paused).
pub fn save_vm(vm: &VmFd) -> Result<VmState> {
    Ok(VmState {
        pic_master: irqchip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: irqchip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: irqchip(vm, KVM_IRQCHIP_IOAPIC)?,
        pit: vm.get_pit2().map_err(ioctl("KVM_GET_PIT2"))?,
        clock: vm.get_clock().map_err(ioctl("KVM_GET_CLOCK"))?,
    })
}

/// Writes `state` into a VM whose irqchip and PIT exist and whose vCPUs have not run.
pub fn restore_vm(vm: &VmFd, state: &VmState) -> Result<()> {
    for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
        vm.set_irqchip(chip).map_err(ioctl("KVM_SET_IRQCHIP"))?;
    }
    vm.set_pit2(&state.pit).map_err(ioctl("KVM_SET_PIT2"))?;
    // The clock goes on from where the snapshot stopped it: the guest sees no jump.
    let clock = kvm_clock_data {
        clock: state.clock.clock,
        ..Default::default()
    };
    vm.set_clock(&clock).map_err(ioctl("KVM_SET_CLOCK"))?;
    Ok(())
}
