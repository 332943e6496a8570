//! Guest RAM: one memfd, mapped shared, so that vhost-user daemons (virtiofsd,
//! vhost-device-vsock) can map the same pages. A VM restored from a snapshot maps the
//! snapshot's memory file private instead: copy-on-write, so VMs restored from one
//! snapshot share the pages none of them wrote. A restored VM with a vhost-user device
//! cannot (the daemon would see the file, not the guest's writes): it gets a memfd again,
//! with the snapshot's pages copied in.

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
    advise_huge_pages(&memory);
    Ok(GuestRam {
        memory,
        file,
        private: false,
    })
}

/// Asks for transparent huge pages behind guest RAM. Where the host's shmem THP allows it
/// (`/sys/kernel/mm/transparent_hugepage/shmem_enabled` = `advise`, `within_size` or
/// `always`), the memfd's pages come in 2 MiB and KVM maps the guest with 2 MiB nested
/// pages: a first touch of fresh guest memory (the kernel's memory map, the initramfs
/// unpacking) faults once per 2 MiB instead of once per 4 KiB, and the TLB reaches
/// further. Where it doesn't (`never`, the usual default, or no THP at all) nothing
/// changes, so a refusal is not an error.
fn advise_huge_pages(memory: &GuestMemoryMmap) {
    use vm_memory::GuestMemoryBackend;
    for region in memory.iter() {
        // SAFETY: the range is exactly one mapping this process made and keeps; the
        // advice changes how its pages are allocated, never their contents.
        let rc = unsafe {
            libc::madvise(
                region.as_ptr().cast::<libc::c_void>(),
                region.size(),
                libc::MADV_HUGEPAGE,
            )
        };
        if rc != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "guest RAM stays in 4 KiB pages (no transparent huge pages here)"
            );
        }
    }
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

/// Guest RAM of `size_mib` in a new memfd (shared, as `create` makes it), holding what
/// `file` (a snapshot's memory, already checked to be that size) holds. Only the file's
/// data is copied, in the kernel (sendfile: one copy, no buffer here); its holes stay
/// holes in the memfd.
pub fn restore_copied(file: &File, size_mib: u32) -> Result<GuestRam, Error> {
    use std::io::{Seek, SeekFrom};
    let ram = create(size_mib)?;
    let mut out = &ram.file;
    for (start, end) in data_ranges(file, u64::from(size_mib) << 20) {
        out.seek(SeekFrom::Start(start)).map_err(Error::File)?;
        let mut offset = libc::off64_t::try_from(start)
            .map_err(|_| Error::File(std::io::ErrorKind::InvalidInput.into()))?;
        let mut left = end - start;
        while left > 0 {
            let chunk = usize::try_from(left.min(COPY_CHUNK)).expect("bounded by the chunk");
            let n = nix::sys::sendfile::sendfile64(&ram.file, file, Some(&mut offset), chunk)
                .map_err(|e| Error::File(e.into()))?;
            if n == 0 {
                return Err(Error::File(std::io::ErrorKind::UnexpectedEof.into()));
            }
            left -= n as u64;
        }
    }
    Ok(ram)
}

/// How much of a snapshot's memory one sendfile moves into the memfd.
const COPY_CHUNK: u64 = 64 << 20;

/// The `[start, end)` ranges of `file`'s first `len` bytes that hold data (SEEK_DATA and
/// SEEK_HOLE; a file system without them reports all of it as data).
pub fn data_ranges(file: &File, len: u64) -> Vec<(u64, u64)> {
    let mut ranges = Vec::new();
    let mut pos = 0;
    while pos < len {
        let Some(data) = seek(file, pos, libc::SEEK_DATA).filter(|d| *d < len) else {
            break;
        };
        let hole = seek(file, data, libc::SEEK_HOLE).unwrap_or(len).min(len);
        if hole <= data {
            break;
        }
        ranges.push((data, hole));
        pos = hole;
    }
    ranges
}

fn seek(f: &File, from: u64, whence: libc::c_int) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let from = libc::off_t::try_from(from).ok()?;
    // SAFETY: lseek on a descriptor we hold; it only moves that file's offset.
    let r = unsafe { libc::lseek(f.as_raw_fd(), from, whence) };
    u64::try_from(r).ok()
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

    #[test]
    fn a_copied_restore_is_shared_memory_with_the_snapshot_s_data() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        let f = File::create(&path).unwrap();
        f.set_len(32 << 20).unwrap();
        f.write_all_at(b"low page", 0x2000).unwrap();
        f.write_all_at(b"high page", (31 << 20) + 8).unwrap();
        drop(f);
        let f = File::open(&path).unwrap();
        let ram = restore_copied(&f, 32).unwrap();
        assert!(!ram.private);
        let mut got = [0u8; 9];
        ram.memory
            .read_slice(&mut got, GuestAddress((31 << 20) + 8))
            .unwrap();
        assert_eq!(&got, b"high page");
        ram.memory
            .read_slice(&mut got[..8], GuestAddress(0x2000))
            .unwrap();
        assert_eq!(&got[..8], b"low page");
        // The guest's writes land in the memfd (what a vhost-user daemon maps), not in
        // the snapshot.
        ram.memory
            .write_slice(b"guest", GuestAddress(0x2000))
            .unwrap();
        let mut back = [0u8; 5];
        ram.file.read_exact_at(&mut back, 0x2000).unwrap();
        assert_eq!(&back, b"guest");
        let mut orig = [0u8; 5];
        f.read_exact_at(&mut orig, 0x2000).unwrap();
        assert_eq!(&orig, b"low p");
        // Only the written ranges are data in the memfd.
        let copied: u64 = data_ranges(&ram.file, 32 << 20)
            .iter()
            .map(|(a, b)| b - a)
            .sum();
        assert!(copied < 1 << 20, "{copied} bytes of data");
    }
}
