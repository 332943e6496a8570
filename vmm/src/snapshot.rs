//! The snapshot on disk: a directory holding `memory` (guest RAM, byte for byte, holes
//! where the guest never wrote) and `state` (everything else). `state` is written last,
//! through a temporary name and a rename, so a directory with a `state` file holds a
//! whole snapshot; one without is an interrupted one.
//!
//! `state` is an 8-byte magic, the format version (u32 LE), the payload's length (u64
//! LE) and CRC-32 (u32 LE), then the payload: `MachineState` in bincode. A reader
//! refuses another format version, a wrong length (truncated), a wrong checksum
//! (damaged) and a payload over `MAX_STATE_BYTES` before it decodes anything.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use bincode::Options;
use serde::{Deserialize, Serialize};

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::x86_64::state::{VcpuState, VmState};
use crate::devices::virtio::mmio::TransportState;
use crate::memory::GuestRam;

const MAGIC: &[u8; 8] = b"HULLSNAP";
/// Bumped whenever `MachineState` (or anything in it) changes shape.
pub const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 8 + 4;
/// A snapshot's state is a few KiB per vCPU and device; anything near this is not one.
const MAX_STATE_BYTES: u64 = 16 << 20;

pub const STATE_FILE: &str = "state";
pub const MEMORY_FILE: &str = "memory";

/// Everything of a paused VM but its memory.
#[derive(Serialize, Deserialize)]
pub struct MachineState {
    /// The hull-vmm that wrote it (for the operator; the format version decides).
    pub vmm_version: String,
    pub memory_mib: u32,
    pub vcpus: Vec<VcpuState>,
    pub vm: VmState,
    pub serial: SerialState,
    /// The virtio-mmio devices, in window order.
    pub devices: Vec<TransportState>,
}

/// The 8250's registers (`vm_superio::serial::SerialState`, which has no serde).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SerialState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path}: {source}", path = .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a hull-vmm snapshot state file", .0.display())]
    NotASnapshot(PathBuf),
    #[error("{path} has snapshot format {found}; this hull-vmm reads format {FORMAT_VERSION}", path = .path.display())]
    Version { path: PathBuf, found: u32 },
    #[error("{path} is truncated or damaged ({why})", path = .path.display())]
    Damaged { path: PathBuf, why: String },
    #[error("encoding the snapshot state: {0}")]
    Encode(String),
    #[error("the snapshot's memory file {path} has {found} bytes; the VM has {expected}", path = .path.display())]
    MemorySize {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
}

fn codec() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(MAX_STATE_BYTES)
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { what, path, source }
}

/// Writes `state` as `dir/state`, atomically (temporary file, fsync, rename).
pub fn write_state(dir: &Path, state: &MachineState) -> Result<(), Error> {
    let payload = codec()
        .serialize(state)
        .map_err(|e| Error::Encode(e.to_string()))?;
    let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    let tmp = dir.join(".state.tmp");
    let path = dir.join(STATE_FILE);
    let mut f = create(&tmp)?;
    f.write_all(&bytes).map_err(io("writing", &tmp))?;
    f.sync_all().map_err(io("syncing", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("renaming into place", &path))
}

/// Reads and checks `dir/state`.
pub fn read_state(dir: &Path) -> Result<MachineState, Error> {
    let path = dir.join(STATE_FILE);
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(io("opening", &path))?;
    let mut header = [0u8; HEADER_LEN];
    if f.read_exact(&mut header).is_err() || &header[..8] != MAGIC {
        return Err(Error::NotASnapshot(path));
    }
    let found = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if found != FORMAT_VERSION {
        return Err(Error::Version { path, found });
    }
    let len = u64::from_le_bytes(header[12..20].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(header[20..24].try_into().expect("4 bytes"));
    let damaged = |why: String| Error::Damaged {
        path: path.clone(),
        why,
    };
    if len > MAX_STATE_BYTES {
        return Err(damaged(format!("a payload of {len} bytes")));
    }
    let mut payload = Vec::new();
    f.take(MAX_STATE_BYTES + 1)
        .read_to_end(&mut payload)
        .map_err(io("reading", &path))?;
    if payload.len() as u64 != len {
        return Err(damaged(format!(
            "{} payload bytes where the header says {len}",
            payload.len()
        )));
    }
    if crc32fast::hash(&payload) != crc {
        return Err(damaged("checksum mismatch".into()));
    }
    codec()
        .deserialize(&payload)
        .map_err(|e| damaged(format!("undecodable: {e}")))
}

/// Creates `path` for writing (mode 0600; replacing a file, never following a link).
pub fn create(path: &Path) -> Result<File, Error> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io("removing", path)(e));
        }
        _ => {}
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io("creating", path))
}

/// Copies guest RAM into `dir/memory`. From a memfd only the ranges the guest has
/// written are copied (SEEK_DATA/SEEK_HOLE), so the file is as sparse as the VM's memory;
/// a VM restored copy-on-write has its writes in no file, so all of it is copied.
pub fn write_memory(dir: &Path, ram: &GuestRam) -> Result<(), Error> {
    let path = dir.join(MEMORY_FILE);
    let out = create(&path)?;
    let mut total = 0u64;
    for region in ram.memory.iter() {
        let file_offset = region.file_offset().map_or(0, |f| f.start());
        let len = region.len();
        let end = file_offset + len;
        total = total.max(end);
        let host = ram
            .memory
            .get_host_address(region.start_addr())
            .map_err(|e| io("mapping", &path)(std::io::Error::other(e.to_string())))?;
        let ranges = if ram.private {
            vec![(file_offset, end)]
        } else {
            crate::memory::data_ranges(&ram.file, end)
                .into_iter()
                .filter_map(|(a, b)| (b > file_offset).then_some((a.max(file_offset), b)))
                .collect()
        };
        for (data, hole) in ranges {
            let start = usize::try_from(data - file_offset).expect("inside the region");
            let n = usize::try_from(hole - data).expect("inside the region");
            // SAFETY: `host` maps the region's `len` bytes for as long as `ram` lives, and
            // start + n <= len; the vCPUs and devices are paused, so nothing writes the
            // range while it is read.
            let bytes = unsafe { std::slice::from_raw_parts(host.add(start).cast_const(), n) };
            out.write_all_at(bytes, data)
                .map_err(io("writing guest memory to", &path))?;
        }
    }
    out.set_len(total).map_err(io("sizing", &path))?;
    out.sync_all().map_err(io("syncing", &path))
}

/// Opens `dir/memory` and checks it holds exactly `expected` bytes.
pub fn open_memory(dir: &Path, expected: u64) -> Result<File, Error> {
    let path = dir.join(MEMORY_FILE);
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(io("opening", &path))?;
    let found = f
        .metadata()
        .map_err(io("reading the size of", &path))?
        .len();
    if found != expected {
        return Err(Error::MemorySize {
            path,
            found,
            expected,
        });
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> MachineState {
        MachineState {
            vmm_version: "test".into(),
            memory_mib: 64,
            vcpus: Vec::new(),
            vm: VmState {
                pic_master: Default::default(),
                pic_slave: Default::default(),
                ioapic: Default::default(),
                pit: Default::default(),
                clock: Default::default(),
            },
            serial: SerialState {
                baud_divisor_low: 12,
                baud_divisor_high: 0,
                interrupt_enable: 0,
                interrupt_identification: 1,
                line_control: 3,
                line_status: 0x60,
                modem_control: 8,
                modem_status: 0xb0,
                scratch: 0,
                in_buffer: vec![1, 2, 3],
            },
            devices: Vec::new(),
        }
    }

    #[test]
    fn state_round_trips_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        write_state(dir.path(), &sample()).unwrap();
        let back = read_state(dir.path()).unwrap();
        assert_eq!(back.memory_mib, 64);
        assert_eq!(back.serial.in_buffer, vec![1, 2, 3]);
        let path = dir.path().join(STATE_FILE);
        let good = std::fs::read(&path).unwrap();

        let mut other_version = good.clone();
        other_version[8] = 99;
        std::fs::write(&path, &other_version).unwrap();
        let e = read_state(dir.path()).err().unwrap().to_string();
        assert!(
            e.contains("format 99") && e.contains("reads format 1"),
            "{e}"
        );

        std::fs::write(&path, &good[..good.len() - 10]).unwrap();
        let e = read_state(dir.path()).err().unwrap().to_string();
        assert!(e.contains("truncated or damaged"), "{e}");

        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        std::fs::write(&path, &flipped).unwrap();
        let e = read_state(dir.path()).err().unwrap().to_string();
        assert!(e.contains("checksum mismatch"), "{e}");

        std::fs::write(&path, b"#!/bin/sh\necho not a snapshot\n").unwrap();
        let e = read_state(dir.path()).err().unwrap().to_string();
        assert!(e.contains("not a hull-vmm snapshot"), "{e}");

        let mut huge = good[..HEADER_LEN].to_vec();
        huge[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&path, &huge).unwrap();
        let e = read_state(dir.path()).err().unwrap().to_string();
        assert!(e.contains("truncated or damaged"), "{e}");
    }

    #[test]
    fn memory_copies_only_what_was_written_and_checks_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let ram = crate::memory::create(16).unwrap();
        use vm_memory::{Bytes, GuestAddress};
        ram.memory
            .write_slice(b"hello", GuestAddress(0x10_0000))
            .unwrap();
        ram.memory
            .write_slice(b"world", GuestAddress((16 << 20) - 5))
            .unwrap();
        write_memory(dir.path(), &ram).unwrap();
        let f = open_memory(dir.path(), 16 << 20).unwrap();
        let mut buf = [0u8; 5];
        f.read_exact_at(&mut buf, 0x10_0000).unwrap();
        assert_eq!(&buf, b"hello");
        f.read_exact_at(&mut buf, (16 << 20) - 5).unwrap();
        assert_eq!(&buf, b"world");
        use std::os::unix::fs::MetadataExt;
        assert!(
            f.metadata().unwrap().blocks() * 512 < 1 << 20,
            "the file stays sparse"
        );
        let e = open_memory(dir.path(), 32 << 20).err().unwrap().to_string();
        assert!(e.contains("has 16777216 bytes; the VM has 33554432"), "{e}");

        // Restored copy-on-write: the guest's writes stay out of the snapshot file, and a
        // snapshot of the restored VM still has them.
        let restored = crate::memory::restore(f, 16).unwrap();
        restored
            .memory
            .write_slice(b"again", GuestAddress(0x20_0000))
            .unwrap();
        let mut back = [0u8; 5];
        restored
            .memory
            .read_slice(&mut back, GuestAddress(0x10_0000))
            .unwrap();
        assert_eq!(&back, b"hello");
        let original = open_memory(dir.path(), 16 << 20).unwrap();
        original.read_exact_at(&mut buf, 0x20_0000).unwrap();
        assert_eq!(buf, [0; 5], "the snapshot file is not written through");
        let second = tempfile::tempdir().unwrap();
        write_memory(second.path(), &restored).unwrap();
        let f2 = open_memory(second.path(), 16 << 20).unwrap();
        f2.read_exact_at(&mut buf, 0x20_0000).unwrap();
        assert_eq!(&buf, b"again");
        f2.read_exact_at(&mut buf, 0x10_0000).unwrap();
        assert_eq!(&buf, b"hello");
    }
}
