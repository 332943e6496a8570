//! Guest RAM: one memfd, mapped shared, so that vhost-user daemons (virtiofsd,
//! vhost-device-vsock) can map the same pages. A VM restored from a snapshot maps the
//! snapshot's memory file private instead: copy-on-write, so VMs restored from one
//! snapshot share the pages none of them wrote.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestMemoryMmap};

use crate::arch::x86_64::layout;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("guest memory must be at least 16 MiB, not {0} MiB")]
    TooSmall(u32),
    #[error("making the guest memory file: {0}")]
    File(#[source] std::io::Error),
    #[error("mapping guest memory: {0}")]
    Map(#[source] vm_memory::mmap::FromRangesError),
    #[error("mapping the snapshot's guest memory: {0}")]
    MapPrivate(String),
}

pub struct GuestRam {
    pub memory: GuestMemoryMmap,
    /// The file behind every region (offset = the region's place in the file): the
    /// memfd, or the snapshot's memory file when `private`.
    pub file: File,
    /// Mapped copy-on-write from a snapshot: the guest's writes are in this process
    /// only, not in `file` (nothing else may map it to share the guest's view).
    pub private: bool,
}

pub fn create(size_mib: u32) -> Result<GuestRam, Error> {
    if size_mib < 16 {
        return Err(Error::TooSmall(size_mib));
    }
    let size = u64::from(size_mib) << 20;
    let name = CString::from(c"hull-guest-ram");
    // SAFETY: memfd_create takes a valid NUL-terminated name and flags; it returns a new
    // descriptor we own or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::File(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(Error::File)?;
    let mut offset = 0u64;
    let mut ranges = Vec::new();
    for (addr, len) in layout::ram_ranges(size) {
        let fo = FileOffset::new(file.try_clone().map_err(Error::File)?, offset);
        offset += len as u64;
        ranges.push((addr, len, Some(fo)));
    }
    let memory = GuestMemoryMmap::from_ranges_with_files(ranges).map_err(Error::Map)?;
    Ok(GuestRam {
        memory,
        file,
        private: false,
    })
}

/// Guest RAM of `size_mib` mapped private from `file` (a snapshot's memory, already
/// checked to be that size).
pub fn restore(file: File, size_mib: u32) -> Result<GuestRam, Error> {
    use vm_memory::{GuestRegionMmap, MmapRegion};
    let size = u64::from(size_mib) << 20;
    let fail = |e: &dyn std::fmt::Display| Error::MapPrivate(e.to_string());
    let mut offset = 0u64;
    let mut regions = Vec::new();
    for (addr, len) in layout::ram_ranges(size) {
        let fo = FileOffset::new(file.try_clone().map_err(Error::File)?, offset);
        let region = MmapRegion::<()>::build(
            Some(fo),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_NORESERVE,
        )
        .map_err(|e| fail(&e))?;
        offset += len as u64;
        regions.push(
            GuestRegionMmap::new(region, addr)
                .ok_or_else(|| fail(&"a region past the end of the address space"))?,
        );
    }
    let memory = GuestMemoryMmap::from_regions(regions).map_err(|e| fail(&e))?;
    Ok(GuestRam {
        memory,
        file,
        private: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

    #[test]
    fn memfd_backed_and_usable() {
        let ram = create(32).unwrap();
        assert_eq!(ram.memory.num_regions(), 1);
        ram.memory
            .write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        assert_eq!(
            ram.memory.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        assert_eq!(ram.file.metadata().unwrap().len(), 32 << 20);
        assert!(ram.memory.read_obj::<u32>(GuestAddress(32 << 20)).is_err());
        assert!(create(8).is_err());
    }
}
