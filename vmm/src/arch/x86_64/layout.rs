//! Where things live in guest physical memory on x86_64, and where RAM may go.

use vm_memory::GuestAddress;

/// Boot GDT and IDT (the kernel replaces both early).
pub const BOOT_GDT_START: u64 = 0x500;
pub const BOOT_IDT_START: u64 = 0x520;
/// Linux zero page (struct boot_params).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables for the 64-bit entry: PML4, PDPT, PD (2 MiB pages, first GiB).
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// End of the usable low memory (EBDA and BIOS area above).
pub const EBDA_START: u64 = 0x9fc00;
/// The kernel loads here (and above).
pub const HIMEM_START: u64 = 0x0010_0000;
/// The 32-bit MMIO hole: devices (IOAPIC, LAPIC, virtio-mmio) live in it, RAM doesn't.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_SIZE: u64 = 0x4000_0000;

/// RAM ranges for `size` bytes of guest memory: one range below the MMIO gap, and the
/// rest above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, usize)> {
    // hull-vmm is built for x86_64 only, where usize is 64 bits.
    let len = |n: u64| usize::try_from(n).expect("usize holds a u64 on x86_64");
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), len(size))]
    } else {
        vec![
            (GuestAddress(0), len(MMIO_GAP_START)),
            (
                GuestAddress(MMIO_GAP_START + MMIO_GAP_SIZE),
                len(size - MMIO_GAP_START),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_skips_the_mmio_gap() {
        assert_eq!(ram_ranges(256 << 20), vec![(GuestAddress(0), 256 << 20)]);
        let big = ram_ranges(4 << 30);
        assert_eq!(big[0], (GuestAddress(0), 0xc000_0000));
        assert_eq!(big[1].0, GuestAddress(1 << 32));
        assert_eq!(big[0].1 + big[1].1, 4 << 30);
    }
}
