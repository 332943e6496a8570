//! A vCPU made ready for the 64-bit Linux boot protocol (or for real mode, for tests and
//! firmware-less images): CPUID, MSRs, registers, segments and identity page tables,
//! FPU, and the local APIC's LINT0/LINT1 wiring.

use crate::arch::x86_64::{Error, Result, ioctl};
use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES, Msrs, kvm_fpu, kvm_msr_entry, kvm_regs};
use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::boot::gdt::{BOOT_GDT, segment};
use crate::arch::x86_64::layout::*;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 0x1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// What a guest reads when the host CPU has no brand string (e.g. QEMU's TCG `max` CPU
/// under a nested test host): a name rather than the kernel's family-table guess.
const FALLBACK_BRAND: &[u8] = b"hull virtual CPU";

/// The host's supported CPUID, normalised for vCPU `id` of `count`: APIC ids and the
/// topology leaves describe `count` single-threaded cores in one package (not the host's
/// sharing counts), and the brand string is never empty. Everything else (features,
/// caches, TLBs, XSAVE sizes) is what KVM reports it can virtualise.
pub fn cpuid(kvm: &Kvm, id: u8, count: u8) -> Result<CpuId> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(ioctl("KVM_GET_SUPPORTED_CPUID"))?;
    normalise(&mut cpuid, id, count);
    if kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer) {
        offer_tsc_deadline(&mut cpuid);
    }
    Ok(cpuid)
}

/// CPUID.1:ECX bit 24: the LAPIC timer has TSC-deadline mode.
const TSC_DEADLINE_TIMER: u32 = 1 << 24;

/// KVM's in-kernel LAPIC emulates the TSC-deadline timer, but KVM_GET_SUPPORTED_CPUID
/// leaves the bit to the VMM (it depends on the in-kernel irqchip). Without it the guest
/// arms every timer through the LAPIC's one-shot count registers, with more exits per
/// tick; with it, one WRMSR. QEMU and Firecracker offer it too.
fn offer_tsc_deadline(cpuid: &mut CpuId) {
    for e in cpuid.as_mut_slice() {
        if e.function == 1 {
            e.ecx |= TSC_DEADLINE_TIMER;
        }
    }
}

fn normalise(cpuid: &mut CpuId, id: u8, count: u8) {
    let (id, count) = (u32::from(id), u32::from(count));
    let last = count.saturating_sub(1);
    // Bits of an APIC id that number the cores of the package.
    let core_bits = 32 - last.leading_zeros();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                // APIC id, logical processor count, and "running under a hypervisor".
                e.ebx = (e.ebx & 0x0000_ffff) | (count << 16) | (id << 24);
                e.ecx |= 1 << 31;
                if count > 1 {
                    e.edx |= 1 << 28; // HTT: more than one logical processor
                }
            }
            // Deterministic cache parameters (Intel): per-core caches, the last level
            // shared by the package; cores per package.
            4 => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { last } else { 0 };
                e.eax = (e.eax & 0x3fff) | (sharing << 14) | (last << 26);
            }
            // Extended topology: SMT level (one thread per core), then the core level.
            0xb => {
                (e.eax, e.ebx, e.ecx) = match e.index {
                    0 => (0, 1, 1 << 8),
                    1 => (core_bits, count, (2 << 8) | 1),
                    n => (0, 0, n),
                };
                e.edx = id;
            }
            // AMD: cores in the package minus one, and how many APIC-id bits count them.
            0x8000_0008 => e.ecx = (e.ecx & !0xf0ff) | (core_bits << 12) | last,
            // AMD: extended APIC id, core id, one thread per core, node 0.
            0x8000_001e => {
                e.eax = id;
                e.ebx = id & 0xff;
                e.ecx = 0;
            }
            _ => {}
        }
    }
    set_brand_if_missing(cpuid);
}

/// Leaves 0x80000002..4 hold a 48-byte NUL-padded brand string; fills in
/// `FALLBACK_BRAND` when they are absent or blank.
fn set_brand_if_missing(cpuid: &mut CpuId) {
    let brand_leaves = |f: u32| (0x8000_0002..=0x8000_0004).contains(&f);
    let has_brand = cpuid
        .as_slice()
        .iter()
        .filter(|e| brand_leaves(e.function))
        .any(|e| e.eax | e.ebx | e.ecx | e.edx != 0);
    let max_ext = cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0x8000_0000)
        .map_or(0, |e| e.eax);
    if has_brand || max_ext < 0x8000_0004 {
        return;
    }
    let mut text = [0u8; 48];
    text[..FALLBACK_BRAND.len()].copy_from_slice(FALLBACK_BRAND);
    let word = |i: usize| u32::from_le_bytes(text[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
    for (n, function) in (0x8000_0002u32..=0x8000_0004).enumerate() {
        let entry = kvm_bindings::kvm_cpuid_entry2 {
            function,
            eax: word(n * 4),
            ebx: word(n * 4 + 1),
            ecx: word(n * 4 + 2),
            edx: word(n * 4 + 3),
            ..Default::default()
        };
        match cpuid
            .as_mut_slice()
            .iter_mut()
            .find(|e| e.function == function)
        {
            Some(e) => *e = entry,
            None => {
                // A full list keeps the host's (blank) leaf: the name is cosmetic.
                let _ = cpuid.push(entry);
            }
        }
    }
}

fn boot_msrs() -> Result<Msrs> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    Msrs::from_entries(&[
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
        // MTRRs on, default type write-back.
        entry(MSR_MTRR_DEF_TYPE, (1 << 11) | 6),
    ])
    .map_err(|e| Error::Msrs(format!("{e:?}")))
}

/// CPUID, MSRs, FPU and LAPIC: every vCPU needs them, the boot one and the others.
/// Returns the CPUID the vCPU got (a snapshot carries it).
pub fn configure_common(kvm: &Kvm, vcpu: &VcpuFd, id: u8, count: u8) -> Result<CpuId> {
    let cpuid = cpuid(kvm, id, count)?;
    vcpu.set_cpuid2(&cpuid).map_err(ioctl("KVM_SET_CPUID2"))?;
    let msrs = boot_msrs()?;
    let written = vcpu.set_msrs(&msrs).map_err(ioctl("KVM_SET_MSRS"))?;
    if written != msrs.as_slice().len() {
        return Err(Error::MsrsRefused {
            written,
            wanted: msrs.as_slice().len(),
        });
    }
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(ioctl("KVM_SET_FPU"))?;
    let mut lapic = vcpu.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?;
    set_lvt_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_lvt_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic).map_err(ioctl("KVM_SET_LAPIC"))?;
    Ok(cpuid)
}

fn set_lvt_mode(regs: &mut [std::os::raw::c_char; 1024], offset: usize, mode: u32) {
    let mut bytes = [0u8; 4];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = regs[offset + i].cast_unsigned();
    }
    let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = b.cast_signed();
    }
}

/// Registers, segments and paging for the 64-bit Linux entry at `entry`.
pub fn configure_long_mode(vcpu: &VcpuFd, mem: &GuestMemoryMmap, entry: u64) -> Result<()> {
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(ioctl("KVM_SET_REGS"))?;

    for (i, e) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_START + 8 * i as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))?;
    // Identity map the first GiB with 2 MiB pages.
    mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START))?;
    mem.write_obj(PDE_START | 0x03, GuestAddress(PDPTE_START))?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, GuestAddress(PDE_START + i * 8))?;
    }

    let mut sregs = vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = u16::try_from(std::mem::size_of_val(&BOOT_GDT) - 1)
        .map_err(|_| Error::TooLarge("the boot GDT"))?;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = segment(BOOT_GDT[1], 1);
    let data = segment(BOOT_GDT[2], 2);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(BOOT_GDT[3], 3);
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).map_err(ioctl("KVM_SET_SREGS"))?;
    Ok(())
}

/// Real mode at `addr` (below 64 KiB): code segment 0, flat.
pub fn configure_real_mode(vcpu: &VcpuFd, addr: u16) -> Result<()> {
    let mut sregs = vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).map_err(ioctl("KVM_SET_SREGS"))?;
    let regs = kvm_regs {
        rip: u64::from(addr),
        rflags: 0x2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(ioctl("KVM_SET_REGS"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lvt_mode_bits() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[APIC_LVT0] = 0xff_u8 as std::os::raw::c_char;
        regs[APIC_LVT0 + 1] = 0x07;
        set_lvt_mode(&mut regs, APIC_LVT0, APIC_MODE_NMI);
        assert_eq!(regs[APIC_LVT0].cast_unsigned(), 0xff);
        assert_eq!(regs[APIC_LVT0 + 1].cast_unsigned(), 0x04);
    }

    #[test]
    fn tsc_deadline_is_offered_in_leaf_one_only() {
        let leaf = |function, ecx| kvm_bindings::kvm_cpuid_entry2 {
            function,
            ecx,
            ..Default::default()
        };
        let mut cpuid = CpuId::from_entries(&[leaf(1, 0x8000_0001), leaf(7, 0)]).unwrap();
        offer_tsc_deadline(&mut cpuid);
        let ecx: Vec<u32> = cpuid.as_slice().iter().map(|e| e.ecx).collect();
        assert_eq!(ecx, vec![0x8000_0001 | TSC_DEADLINE_TIMER, 0]);
    }

    #[test]
    fn topology_leaves_describe_the_vm_not_the_host() {
        let leaf = |function, index, eax, ecx| kvm_bindings::kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx: 0xdead_beef,
            ecx,
            edx: 0,
            ..Default::default()
        };
        let mut c = CpuId::from_entries(&[
            leaf(1, 0, 0x00a2_0f10, 0),
            // The host's L3: shared by 64 threads, 32 cores.
            leaf(4, 3, (31 << 26) | (63 << 14) | (3 << 5) | 3, 0),
            leaf(0xb, 0, 0, 0),
            leaf(0xb, 1, 0, 0),
            leaf(0x8000_0008, 0, 0x3030, 0x1_703f),
        ])
        .unwrap();
        normalise(&mut c, 2, 3);
        let get = |f, i| {
            *c.as_slice()
                .iter()
                .find(|e| e.function == f && e.index == i)
                .unwrap()
        };
        assert_eq!(
            get(1, 0).ebx >> 16,
            (2 << 8) | 3,
            "APIC id 2, 3 logical CPUs"
        );
        assert_eq!(get(4, 3).eax, (2 << 26) | (2 << 14) | (3 << 5) | 3);
        let (smt, core) = (get(0xb, 0), get(0xb, 1));
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 2));
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 3, 0x201, 2));
        assert_eq!(get(0x8000_0008, 0).ecx, 0x1_0000 | (2 << 12) | 2);
    }

    #[test]
    fn blank_brand_string_is_filled_in() {
        let mut c = CpuId::from_entries(&[kvm_bindings::kvm_cpuid_entry2 {
            function: 0x8000_0000,
            eax: 0x8000_0008,
            ..Default::default()
        }])
        .unwrap();
        set_brand_if_missing(&mut c);
        let mut text = Vec::new();
        for f in 0x8000_0002u32..=0x8000_0004 {
            let e = c.as_slice().iter().find(|e| e.function == f).unwrap();
            for w in [e.eax, e.ebx, e.ecx, e.edx] {
                text.extend_from_slice(&w.to_le_bytes());
            }
        }
        assert_eq!(text.len(), 48);
        assert!(text.starts_with(FALLBACK_BRAND));
        assert!(text[FALLBACK_BRAND.len()..].iter().all(|b| *b == 0));
        // A host brand string is kept.
        let before = c.as_slice().to_vec();
        set_brand_if_missing(&mut c);
        assert_eq!(c.as_slice(), &before[..]);
    }

    #[test]
    fn boot_msr_list() {
        let m = boot_msrs().unwrap();
        assert!(
            m.as_slice()
                .iter()
                .any(|e| e.index == MSR_MTRR_DEF_TYPE && e.data == 0x806)
        );
    }
}
