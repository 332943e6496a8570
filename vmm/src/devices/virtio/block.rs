//! virtio-blk (device type 2) over a raw image file: read, write (unless read-only),
//! flush, and get-id. Requests are served on the device's own event loop, woken by the
//! queue's ioeventfd: disk I/O never holds a vCPU, and vCPU threads may not touch files.
//!
//! The guest controls every field of a request: the chain's layout, the sector, the
//! lengths. Each is checked; a request that is out of range, misaligned or malformed
//! completes with an error status (or, when it has no room even for the status byte, is
//! returned unused). The device never reads or writes outside the image or guest memory.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{DescriptorChain, Queue, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::event_loop::{self, Backend, Inbox, Mailbox, Pacer, Request};
use super::{Error, Interrupt, VirtioDevice, expect_queues, io, read_config_bytes};
use crate::seccomp::ThreadKind;

pub const DEVICE_TYPE: u32 = VIRTIO_ID_BLOCK;
pub const SECTOR_SIZE: u64 = 512;
const QUEUE_SIZES: [u16; 1] = [256];

/// Feature bits (virtio 1.2, 5.2.3).
const F_SEG_MAX: u64 = 1 << VIRTIO_BLK_F_SEG_MAX;
const F_RO: u64 = 1 << VIRTIO_BLK_F_RO;
const F_FLUSH: u64 = 1 << VIRTIO_BLK_F_FLUSH;
/// Data segments per request: the queue size less the header and status descriptors.
const SEG_MAX: u32 = QUEUE_SIZES[0] as u32 - 2;

/// Request types and status values (5.2.6).
pub const T_IN: u32 = VIRTIO_BLK_T_IN;
pub const T_OUT: u32 = VIRTIO_BLK_T_OUT;
pub const T_FLUSH: u32 = VIRTIO_BLK_T_FLUSH;
pub const T_GET_ID: u32 = VIRTIO_BLK_T_GET_ID;
// The status byte: the bindings' u32 values, all below 256.
pub const S_OK: u8 = status_byte(VIRTIO_BLK_S_OK);
pub const S_IOERR: u8 = status_byte(VIRTIO_BLK_S_IOERR);
pub const S_UNSUPP: u8 = status_byte(VIRTIO_BLK_S_UNSUPP);

const fn status_byte(status: u32) -> u8 {
    let [b, 0, 0, 0] = status.to_le_bytes() else {
        panic!("a virtio-blk status is one byte");
    };
    b
}
/// The serial number returned by GET_ID is at most this long.
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;
/// The largest data transfer one request may ask for; a bigger one fails with IOERR
/// rather than making the VMM allocate what the guest says.
const MAX_TRANSFER: usize = 16 << 20;

/// A block device as configured by the operator.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
}

impl std::str::FromStr for DiskConfig {
    type Err = String;

    /// `PATH[,ro]`.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(',');
        let path = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or("empty disk path")?;
        let mut read_only = false;
        for opt in parts {
            match opt {
                "ro" => read_only = true,
                "rw" => read_only = false,
                other => return Err(format!("unknown disk option `{other}` (ro, rw)")),
            }
        }
        Ok(DiskConfig {
            path: path.into(),
            read_only,
        })
    }
}

struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Interrupt,
}

/// The image and what the guest may do with it.
struct Disk {
    file: File,
    read_only: bool,
    /// Whole sectors in the image; a trailing partial sector is not exposed.
    sectors: u64,
    id: [u8; ID_BYTES],
}

pub struct Block {
    config: [u8; 16],
    read_only: bool,
    id: [u8; ID_BYTES],
    /// Written by KVM on a notify (ioeventfd), or by `notify`.
    kick: Arc<EventFd>,
    mailbox: Mailbox<Active>,
    pacer: Pacer,
}

/// The device's event loop: the image, and the queue while the driver runs.
struct Worker {
    disk: Disk,
    kick: Arc<EventFd>,
    inbox: Inbox<Active>,
    active: Option<Active>,
}

const TOKEN_CONTROL: u32 = 0;
const TOKEN_KICK: u32 = 1;

impl Block {
    pub fn open(cfg: &DiskConfig) -> Result<Block, Error> {
        let file = OpenOptions::new()
            .read(true)
            .write(!cfg.read_only)
            .open(&cfg.path)
            .map_err(io(format!("opening disk {}", cfg.path.display())))?;
        Block::from_file(file, cfg.read_only, &cfg.path)
    }

    fn from_file(file: File, read_only: bool, path: &Path) -> Result<Block, Error> {
        let meta = file.metadata().map_err(io("disk metadata"))?;
        if !meta.is_file() {
            return Err(Error::Config(format!(
                "disk {} is not a regular file",
                path.display()
            )));
        }
        let sectors = meta.len() / SECTOR_SIZE;
        if !meta.len().is_multiple_of(SECTOR_SIZE) {
            tracing::warn!(
                disk = %path.display(),
                "disk size is not a multiple of 512 bytes; the tail is not exposed"
            );
        }
        // A stable id for the same file: its device and inode, as Firecracker does.
        let mut id = [0u8; ID_BYTES];
        let text = format!("{:x}{:x}", meta.dev(), meta.ino());
        let n = text.len().min(ID_BYTES);
        id[..n].copy_from_slice(&text.as_bytes()[..n]);
        let mut config = [0u8; 16];
        config[..8].copy_from_slice(&sectors.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        let kick = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(io("kick eventfd"))?);
        let (mailbox, inbox) = event_loop::mailbox("virtio-blk").map_err(io("control eventfd"))?;
        let worker = Worker {
            disk: Disk {
                file,
                read_only,
                sectors,
                id,
            },
            kick: kick.clone(),
            inbox,
            active: None,
        };
        let pacer = event_loop::spawn("virtio-blk", ThreadKind::Block, worker)
            .map_err(io("starting the virtio-blk thread"))?;
        Ok(Block {
            config,
            read_only,
            id,
            kick,
            mailbox,
            pacer,
        })
    }

    pub fn id(&self) -> &[u8; ID_BYTES] {
        &self.id
    }

    /// Waits for the device's loop, usable after the device is handed to its transport.
    pub fn pacer(&self) -> Pacer {
        self.pacer.clone()
    }
}

impl Worker {
    fn process_queue(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mem = a.mem.clone();
        let mut used = false;
        while let Some(chain) = a.queue.pop_descriptor_chain(&mem) {
            let head = chain.head_index();
            let len = self.disk.serve(&mem, chain);
            if let Err(e) = a.queue.add_used(&mem, head, len) {
                tracing::warn!(error = ?e, "virtio-blk: returning a used buffer");
            }
            used = true;
        }
        if used {
            a.interrupt.signal_used();
        }
    }
}

impl MutEventSubscriber for Worker {
    fn init(&mut self, ops: &mut EventOps) {
        self.inbox.watch(ops, TOKEN_CONTROL);
        event_loop::watch(ops, self.kick.as_ref(), TOKEN_KICK, "the queue's kick");
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            TOKEN_KICK => {
                let _ = self.kick.read();
                self.process_queue();
            }
            _ => {
                for c in self.inbox.take() {
                    match c {
                        Request::Activate(a, reply) => {
                            self.active = Some(a);
                            let _ = reply.send(Ok(()));
                            // Requests published before the driver's first kick.
                            self.process_queue();
                        }
                        Request::Reset(done) => {
                            self.active = None;
                            let _ = done.send(());
                        }
                    }
                }
            }
        }
    }
}

impl Backend for Worker {
    fn finished(&self) -> bool {
        self.inbox.stopped()
    }

    /// Requests are served whole within one event, so a parked loop has none half done.
    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        self.active.as_ref().map(|a| vec![a.queue.state()])
    }
}

impl Disk {
    /// Serves one request chain (header, data, status byte last); returns how many bytes
    /// the device wrote into it.
    fn serve(&self, mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> u32 {
        let (Ok(mut reader), Ok(mut writer)) =
            (Reader::new(mem, chain.clone()), Writer::new(mem, chain))
        else {
            return 0; // a descriptor outside guest memory or an overflowing chain
        };
        let writable = writer.available_bytes();
        if writable == 0 {
            return 0; // no room for a status byte: nothing can be reported
        }
        let Ok(mut status_writer) = writer.split_at(writable - 1) else {
            return 0;
        };
        let status = match read_header(&mut reader) {
            None => S_IOERR,
            Some((ty, sector)) => self.execute(ty, sector, &mut reader, &mut writer),
        };
        if status_writer.write_all(&[status]).is_err() {
            return 0;
        }
        u32::try_from(writer.bytes_written() + 1).unwrap_or(u32::MAX)
    }

    fn execute(
        &self,
        ty: u32,
        sector: u64,
        reader: &mut Reader<'_>,
        writer: &mut Writer<'_>,
    ) -> u8 {
        match ty {
            T_IN => {
                let len = writer.available_bytes();
                let Some(offset) = range(sector, len, self.sectors) else {
                    return S_IOERR;
                };
                let mut buf = vec![0u8; len];
                if self.file.read_exact_at(&mut buf, offset).is_err()
                    || writer.write_all(&buf).is_err()
                {
                    return S_IOERR;
                }
                S_OK
            }
            T_OUT => {
                let len = reader.available_bytes();
                if self.read_only {
                    return S_IOERR;
                }
                let Some(offset) = range(sector, len, self.sectors) else {
                    return S_IOERR;
                };
                let mut buf = vec![0u8; len];
                if reader.read_exact(&mut buf).is_err()
                    || self.file.write_all_at(&buf, offset).is_err()
                {
                    return S_IOERR;
                }
                S_OK
            }
            T_FLUSH if self.read_only => S_OK,
            T_FLUSH => match self.file.sync_data() {
                Ok(()) => S_OK,
                Err(_) => S_IOERR,
            },
            T_GET_ID => {
                let n = writer.available_bytes().min(ID_BYTES);
                match writer.write_all(&self.id[..n]) {
                    Ok(()) => S_OK,
                    Err(_) => S_IOERR,
                }
            }
            _ => S_UNSUPP,
        }
    }
}

/// The request header: type and first sector.
fn read_header(reader: &mut Reader<'_>) -> Option<(u32, u64)> {
    let mut h = [0u8; 16];
    reader.read_exact(&mut h).ok()?;
    let ty = u32::from_le_bytes(h[0..4].try_into().ok()?);
    let sector = u64::from_le_bytes(h[8..16].try_into().ok()?);
    Some((ty, sector))
}

/// The byte offset of a `len`-byte transfer at `sector`, if it is whole sectors, within
/// the disk and not larger than one request may be.
fn range(sector: u64, len: usize, sectors: u64) -> Option<u64> {
    if len == 0 || len > MAX_TRANSFER || !(len as u64).is_multiple_of(SECTOR_SIZE) {
        return None;
    }
    let end = sector.checked_add(len as u64 / SECTOR_SIZE)?;
    (end <= sectors).then(|| sector * SECTOR_SIZE)
}

impl VirtioDevice for Block {
    /// Parked while the VM is paused; it hands over its queue for a snapshot.
    fn pacer(&self) -> Option<Pacer> {
        Some(self.pacer.clone())
    }

    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        F_SEG_MAX | F_FLUSH | if self.read_only { F_RO } else { 0 }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        mut queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), Error> {
        expect_queues("virtio-blk", 1, queues.len())?;
        self.mailbox.activate(Active {
            mem,
            queue: queues.remove(0),
            interrupt,
        })
    }

    fn queue_events(&self) -> std::io::Result<Vec<EventFd>> {
        Ok(vec![self.kick.try_clone()?])
    }

    fn notify(&mut self, index: u16) {
        if index == 0 {
            let _ = self.kick.write(1);
        }
    }

    fn reset(&mut self) {
        // The guest may reuse the ring's memory once this returns.
        self.mailbox.reset();
    }
}

#[cfg(test)]
mod tests {
    use std::io::Seek;

    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    use super::*;

    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;
    const W: u16 = crate::devices::virtio::DESC_F_WRITE;

    fn mem() -> GuestMemoryMmap {
        crate::memory::create(16).unwrap().memory
    }

    /// A 64-sector disk whose sector n is filled with byte n.
    fn disk(read_only: bool) -> (Block, tempfile::NamedTempFile) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        for s in 0..64u8 {
            f.write_all(&[s; 512]).unwrap();
        }
        f.rewind().unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(f.path())
            .unwrap();
        (Block::from_file(file, read_only, f.path()).unwrap(), f)
    }

    fn d(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    fn header(m: &GuestMemoryMmap, ty: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&ty.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        m.write_slice(&h, GuestAddress(HDR)).unwrap();
        m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    /// Runs one chain through the device; returns (used length, status byte), or `None`
    /// for the used length when the device returned nothing.
    fn run(blk: &mut Block, m: &GuestMemoryMmap, descs: &[RawDescriptor]) -> (u32, u8) {
        let q = MockSplitQueue::create(m, GuestAddress(0), 16);
        q.build_desc_chain(descs).unwrap();
        let queue: Queue = q.create_queue().unwrap();
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        blk.activate(m.clone(), vec![queue], Interrupt::new(evt))
            .unwrap();
        blk.notify(0);
        blk.pacer().settle();
        blk.reset();
        let used_idx: u16 = m.read_obj(q.used_addr().unchecked_add(2)).unwrap();
        assert_eq!(used_idx, 1, "every chain is returned to the driver");
        let used_len: u32 = m.read_obj(q.used_addr().unchecked_add(8)).unwrap();
        (used_len, m.read_obj(GuestAddress(STATUS)).unwrap())
    }

    fn standard(len: u32, data_flags: u16) -> Vec<RawDescriptor> {
        vec![d(HDR, 16, 0), d(DATA, len, data_flags), d(STATUS, 1, W)]
    }

    #[test]
    fn reads_sectors_into_guest_memory() {
        let (mut blk, _f) = disk(false);
        let m = mem();
        header(&m, T_IN, 5);
        assert_eq!(run(&mut blk, &m, &standard(1024, W)), (1025, S_OK));
        let mut got = [0u8; 1024];
        m.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert!(got[..512].iter().all(|b| *b == 5));
        assert!(got[512..].iter().all(|b| *b == 6));
    }

    #[test]
    fn writes_and_flushes_to_the_file() {
        let (mut blk, f) = disk(false);
        let m = mem();
        header(&m, T_OUT, 63);
        m.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
        assert_eq!(run(&mut blk, &m, &standard(512, 0)), (1, S_OK));
        let content = std::fs::read(f.path()).unwrap();
        assert!(content[63 * 512..].iter().all(|b| *b == 0xab));
        header(&m, T_FLUSH, 0);
        assert_eq!(
            run(&mut blk, &m, &[d(HDR, 16, 0), d(STATUS, 1, W)]),
            (1, S_OK)
        );
    }

    #[test]
    fn read_only_disks_refuse_writes() {
        let (mut blk, f) = disk(true);
        assert_ne!(blk.features() & F_RO, 0);
        let m = mem();
        header(&m, T_OUT, 0);
        m.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
        assert_eq!(run(&mut blk, &m, &standard(512, 0)).1, S_IOERR);
        assert!(
            std::fs::read(f.path()).unwrap()[..512]
                .iter()
                .all(|b| *b == 0)
        );
    }

    #[test]
    fn out_of_range_and_misaligned_transfers_fail() {
        let (mut blk, f) = disk(false);
        let m = mem();
        for (ty, sector, len) in [
            (T_IN, 64, 512),             // just past the end
            (T_IN, 63, 1024),            // straddles the end
            (T_IN, u64::MAX, 512),       // sector arithmetic overflows
            (T_IN, u64::MAX / 512, 512), // byte offset overflows
            (T_IN, 0, 100),              // not whole sectors
            (T_OUT, 64, 512),
            (T_OUT, u64::MAX, 512),
        ] {
            header(&m, ty, sector);
            let flags = if ty == T_IN { W } else { 0 };
            assert_eq!(
                run(&mut blk, &m, &standard(len, flags)).1,
                S_IOERR,
                "type {ty} sector {sector} len {len}"
            );
        }
        assert_eq!(std::fs::metadata(f.path()).unwrap().len(), 64 * 512);
    }

    #[test]
    fn get_id_and_unknown_requests() {
        let (mut blk, _f) = disk(false);
        let m = mem();
        header(&m, T_GET_ID, 0);
        assert_eq!(run(&mut blk, &m, &standard(20, W)), (21, S_OK));
        let mut id = [0u8; ID_BYTES];
        m.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, blk.id());
        header(&m, 99, 0);
        assert_eq!(run(&mut blk, &m, &standard(512, W)).1, S_UNSUPP);
    }

    #[test]
    fn malformed_chains_never_touch_memory_out_of_bounds() {
        let (mut blk, _f) = disk(false);
        let m = mem();
        header(&m, T_IN, 0);
        // Short header: IOERR.
        assert_eq!(
            run(&mut blk, &m, &[d(HDR, 8, 0), d(STATUS, 1, W)]),
            (1, S_IOERR)
        );
        // No writable byte for the status: returned with nothing written.
        assert_eq!(run(&mut blk, &m, &[d(HDR, 16, 0)]).0, 0);
        // Zero-length data: IOERR.
        assert_eq!(run(&mut blk, &m, &standard(0, W)).1, S_IOERR);
        // A buffer beyond guest memory (16 MiB): returned unused.
        assert_eq!(
            run(
                &mut blk,
                &m,
                &[d(HDR, 16, 0), d(0x4000_0000, 512, W), d(STATUS, 1, W)]
            )
            .0,
            0
        );
        // A buffer that runs off the end of guest memory.
        assert_eq!(
            run(
                &mut blk,
                &m,
                &[d(HDR, 16, 0), d((16 << 20) - 256, 512, W), d(STATUS, 1, W)]
            )
            .0,
            0
        );
        // Header and data overlapping the status byte: still whole sectors, still in range.
        header(&m, T_IN, 1);
        let (len, _) = run(
            &mut blk,
            &m,
            &[d(HDR, 16, 0), d(STATUS - 511, 512, W), d(STATUS, 1, W)],
        );
        assert_eq!(len, 513);
        assert_eq!(m.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), S_OK);
        // A transfer larger than one request may be.
        header(&m, T_IN, 0);
        assert_eq!(
            run(&mut blk, &m, &standard(32 << 20, W)).0,
            0,
            "32 MiB buffer lies outside the 16 MiB guest"
        );
    }

    #[test]
    fn disk_options_parse() {
        assert_eq!(
            "/a.img,ro".parse::<DiskConfig>().unwrap(),
            DiskConfig {
                path: "/a.img".into(),
                read_only: true
            }
        );
        assert!(!"/a.img".parse::<DiskConfig>().unwrap().read_only);
        assert!("/a.img,rx".parse::<DiskConfig>().is_err());
        assert!(",ro".parse::<DiskConfig>().is_err());
    }

    #[test]
    fn config_space_is_capacity_and_seg_max() {
        let (blk, _f) = disk(false);
        let mut cap = [0u8; 8];
        blk.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 64);
        let mut b = [0u8; 4];
        blk.read_config(12, &mut b);
        assert_eq!(u32::from_le_bytes(b), SEG_MAX);
        blk.read_config(u64::MAX, &mut b);
        assert_eq!(b, [0; 4]);
    }
}
