//! The Intel MP table (MultiProcessor Specification 1.4): how a guest without ACPI learns
//! its CPUs, its IOAPIC and how ISA interrupts reach it. Written at the start of the last
//! KiB of base memory, where Linux looks for it.

use crate::arch::x86_64::{Error, Result};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::layout::EBDA_START;

pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
const LAPIC_ADDR: u32 = 0xfee0_0000;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// IOAPIC inputs; each ISA IRQ 0..15 and the rest (virtio devices) map 1:1.
const IRQ_COUNT: u8 = 24;
const CPU_ENABLED: u8 = 1;
const CPU_BOOT: u8 = 2;

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// The table for `cpus` vCPUs (APIC ids 0..cpus); the IOAPIC takes id `cpus + 1`.
pub fn build(cpus: u8) -> Result<Vec<u8>> {
    if cpus == 0 || cpus > 254 {
        return Err(Error::Cpus(cpus));
    }
    let ioapic_id = cpus + 1;
    let mut entries = Vec::new();
    let mut count = 0u16;
    let mut push = |entry: &[u8]| {
        entries.extend_from_slice(entry);
        count += 1;
    };
    for id in 0..cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOT } else { 0 };
        let mut cpu = [0u8; 20];
        cpu[..4].copy_from_slice(&[0, id, APIC_VERSION, flags]);
        cpu[4..8].copy_from_slice(&0x600u32.to_le_bytes()); // cpu signature: family 6
        cpu[8..12].copy_from_slice(&0x201u32.to_le_bytes()); // features: FPU, APIC
        push(&cpu);
    }
    push(&[1, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
    let a = IOAPIC_ADDR.to_le_bytes();
    push(&[2, ioapic_id, IOAPIC_VERSION, 1, a[0], a[1], a[2], a[3]]);
    for irq in 0..IRQ_COUNT {
        // mp_INT, conforming polarity and trigger, ISA bus 0 irq -> IOAPIC pin irq.
        push(&[3, 0, 0, 0, 0, irq, ioapic_id, irq]);
    }
    // ExtINT on every LAPIC's LINT0, NMI on LINT1.
    push(&[4, 3, 0, 0, 0, 0, 0xff, 0]);
    push(&[4, 1, 0, 0, 0, 0, 0xff, 1]);

    let table_len = 44 + entries.len();
    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    let table_len = u16::try_from(table_len).map_err(|_| Error::MpTableTooBig(cpus))?;
    table.extend_from_slice(&table_len.to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"HULL    ");
    table.extend_from_slice(b"hull-vmm    ");
    table.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes());
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    // The floating pointer comes first and points just past itself.
    let table_addr =
        u32::try_from(EBDA_START + 16).map_err(|_| Error::TooLarge("the MP table's address"))?;
    let mut out = Vec::with_capacity(16 + table.len());
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&table_addr.to_le_bytes());
    out.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // 16 bytes, spec 1.4, checksum, no default config
    out[10] = checksum(&out[..16]);
    out.extend_from_slice(&table);
    if out.len() > 1024 {
        return Err(Error::MpTableTooBig(cpus));
    }
    Ok(out)
}

pub fn write(mem: &GuestMemoryMmap, cpus: u8) -> Result<()> {
    mem.write_slice(&build(cpus)?, GuestAddress(EBDA_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_and_layout() {
        let t = build(2).unwrap();
        assert_eq!(&t[..4], b"_MP_");
        assert_eq!(t[..16].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let table = &t[16..];
        assert_eq!(&table[..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(table.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(
            u32::from_le_bytes([t[4], t[5], t[6], t[7]]),
            u32::try_from(EBDA_START).unwrap() + 16
        );
        // entry count: 2 cpus + bus + ioapic + 24 irqs + 2 lint
        assert_eq!(u16::from_le_bytes([table[34], table[35]]), 30);
    }

    #[test]
    fn cpu_limits() {
        assert!(build(0).is_err());
        assert!(build(30).is_ok());
        assert!(build(64).is_err(), "64 CPUs do not fit in 1 KiB");
    }
}
