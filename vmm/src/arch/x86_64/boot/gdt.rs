//! The boot GDT for the 64-bit Linux entry and its translation into KVM segments.

use kvm_bindings::kvm_segment;

/// A GDT descriptor from access/flags bits (`0xa09b`: 64-bit code), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// null, 64-bit code, data, TSS.
pub const BOOT_GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

pub fn segment(entry: u64, index: u8) -> kvm_segment {
    let present = ((entry >> 47) & 1) as u8;
    let g = ((entry >> 55) & 1) as u8;
    let raw_limit = u32::try_from(((entry >> 32) & 0x000f_0000) | (entry & 0xffff))
        .expect("a descriptor's limit has 20 bits");
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | (((entry >> 56) & 0xff) << 24),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_64_bit_flat() {
        let cs = segment(BOOT_GDT[1], 1);
        assert_eq!(
            (cs.selector, cs.l, cs.db, cs.present, cs.s, cs.type_),
            (8, 1, 0, 1, 1, 0xb)
        );
        assert_eq!((cs.base, cs.limit, cs.g), (0, 0xffff_ffff, 1));
        let ds = segment(BOOT_GDT[2], 2);
        assert_eq!((ds.selector, ds.db, ds.l, ds.type_), (16, 1, 0, 3));
        assert_eq!(segment(BOOT_GDT[0], 0).unusable, 1);
    }
}
