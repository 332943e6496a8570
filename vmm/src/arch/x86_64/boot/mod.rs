//! Loading a Linux guest: the kernel (ELF vmlinux, or bzImage), the initrd at the top of
//! low memory, the command line, and the zero page (boot_params with the e820 map).

pub mod gdt;
pub mod mptable;

use std::fs::File;
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::{
    KernelLoader, KernelLoaderResult, bzimage::BzImage, elf::Elf, load_cmdline,
};
use vm_memory::{
    Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, ReadVolatile,
};

use crate::arch::x86_64::layout::*;
use crate::arch::x86_64::{Error, Result};

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const E820_RAM: u32 = 1;
const PAGE_SIZE: u64 = 4096;

/// hull's default kernel parameters for hull-vmm: no PCI, no keyboard, i8042 reset, and
/// no ACPI (hull-vmm has no tables: the MP table describes the CPUs and the IOAPIC, and
/// the kernel need not scan the BIOS areas for an RSDP that is not there).
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off acpi=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

/// Where the guest starts.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub rip: u64,
}

/// Loads the kernel and returns its entry point and the end of what it occupies.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<KernelLoaderResult> {
    let open = || {
        File::open(path).map_err(|source| Error::Open {
            path: path.to_path_buf(),
            source,
        })
    };
    let himem = Some(GuestAddress(HIMEM_START));
    match Elf::load(mem, None, &mut open()?, himem) {
        Ok(r) => Ok(r),
        Err(elf) => {
            BzImage::load(mem, None, &mut open()?, himem).map_err(|bzimage| Error::Kernel {
                path: path.to_path_buf(),
                elf,
                bzimage,
            })
        }
    }
}

/// Places the initrd page-aligned at the top of the RAM below the MMIO gap.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
) -> Result<(GuestAddress, usize)> {
    let mut file = File::open(path).map_err(|source| Error::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let size = file.metadata()?.len();
    let too_big = || Error::InitrdTooBig { size };
    let low_end = mem
        .iter()
        .next()
        .map(|r| r.start_addr().unchecked_add(r.len()))
        .ok_or_else(too_big)?;
    let top = low_end.raw_value().min(MMIO_GAP_START);
    if size >= top {
        return Err(too_big());
    }
    let addr = (top - size) & !(PAGE_SIZE - 1);
    if addr < kernel_end {
        return Err(Error::InitrdOverlapsKernel { size });
    }
    let region = mem.find_region(GuestAddress(addr)).ok_or_else(too_big)?;
    let offset = GuestAddress(addr).unchecked_offset_from(region.start_addr());
    let len = usize::try_from(size).map_err(|_| too_big())?;
    let slice = region
        .get_slice(vm_memory::MemoryRegionAddress(offset), len)
        .map_err(Error::Memory)?;
    file.read_exact_volatile(&mut slice.clone())
        .map_err(Error::InitrdRead)?;
    Ok((GuestAddress(addr), len))
}

pub fn build_cmdline(extra: &str) -> Result<Cmdline> {
    let mut c = Cmdline::new(CMDLINE_MAX_SIZE)?;
    c.insert_str(extra)?;
    Ok(c)
}

/// Writes the command line and the zero page (boot_params, e820) into guest memory.
pub fn configure_linux(
    mem: &GuestMemoryMmap,
    kernel: &KernelLoaderResult,
    cmdline: &Cmdline,
    initrd: Option<(GuestAddress, usize)>,
) -> Result<()> {
    load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(|e| Error::BootParams(format!("the command line: {e}")))?;
    let cmdline_len = cmdline
        .as_cstring()
        .map(|c| c.as_bytes_with_nul().len())
        .unwrap_or(1);

    let mut params = boot_params::default();
    if let Some(hdr) = kernel.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    params.hdr.cmd_line_ptr =
        u32::try_from(CMDLINE_START).map_err(|_| Error::TooLarge("the command line's address"))?;
    params.hdr.cmdline_size =
        u32::try_from(cmdline_len).map_err(|_| Error::TooLarge("the command line"))?;
    if let Some((addr, size)) = initrd {
        // The boot protocol's fields are 32 bits: load_initrd keeps it below the MMIO gap.
        params.hdr.ramdisk_image =
            u32::try_from(addr.raw_value()).map_err(|_| Error::TooLarge("the initrd's address"))?;
        params.hdr.ramdisk_size = u32::try_from(size).map_err(|_| Error::TooLarge("the initrd"))?;
    }
    let mut entries = vec![(0, EBDA_START)];
    for region in mem.iter() {
        let start = region.start_addr().raw_value().max(HIMEM_START);
        let end = region.start_addr().raw_value() + region.len();
        if end > start {
            entries.push((start, end - start));
        }
    }
    if entries.len() > params.e820_table.len() {
        return Err(Error::TooLarge("the e820 map"));
    }
    for (i, (addr, size)) in entries.iter().enumerate() {
        params.e820_table[i].addr = *addr;
        params.e820_table[i].size = *size;
        params.e820_table[i].r#type = E820_RAM;
    }
    params.e820_entries =
        u8::try_from(entries.len()).map_err(|_| Error::TooLarge("the e820 map"))?;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(|e| Error::BootParams(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn zero_page_has_cmdline_initrd_and_e820() {
        let ram = crate::memory::create(64).unwrap();
        let mem = &ram.memory;
        let kernel = KernelLoaderResult {
            kernel_load: GuestAddress(HIMEM_START),
            kernel_end: 0x20_0000,
            ..Default::default()
        };
        let cmdline = build_cmdline("console=ttyS0 quiet").unwrap();
        configure_linux(
            mem,
            &kernel,
            &cmdline,
            Some((GuestAddress(0x300_0000), 4096)),
        )
        .unwrap();
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!(u64::from(hdr.cmd_line_ptr), CMDLINE_START);
        assert_eq!({ hdr.ramdisk_image }, 0x300_0000);
        assert_eq!(params.e820_entries, 2);
        let e0 = params.e820_table[0];
        let e1 = params.e820_table[1];
        assert_eq!(({ e0.addr }, { e0.size }), (0, EBDA_START));
        assert_eq!(
            ({ e1.addr }, { e1.size }),
            (HIMEM_START, (64 << 20) - HIMEM_START)
        );
        let mut text = [0u8; 19];
        mem.read_slice(&mut text, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&text, b"console=ttyS0 quiet");
    }

    #[test]
    fn bad_kernel_and_oversized_initrd_are_errors() {
        let ram = crate::memory::create(32).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk");
        std::fs::write(&junk, vec![0u8; 8192]).unwrap();
        assert!(
            load_kernel(&ram.memory, &junk)
                .unwrap_err()
                .to_string()
                .contains("neither")
        );
        let big = dir.path().join("big");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(40 << 20)
            .unwrap();
        assert!(load_initrd(&ram.memory, &big, HIMEM_START).is_err());
        assert!(load_kernel(&ram.memory, &dir.path().join("missing")).is_err());
    }
}
