//! Stable-Rust fuzzing of what a guest controls: the virtio-mmio registers, descriptor
//! chains (addresses, lengths, flags, loops, indirect tables), virtio-blk requests
//! (types, sectors, sizes), vsock packets (headers, ports, ops, payload lengths) and
//! virtio-net frames both ways (headers, offload requests, chain shapes, frame sizes) and
//! virtio-fs requests through the vhost-user frontend to a real virtiofsd.
//! Each target drives the real device code with seeded random guest memory for a few
//! thousand rounds; a panic, a hang or an out-of-bounds access fails the test.
//!
//! `cargo fuzz` needs a nightly toolchain, which this project's machines lack; these run
//! on stable in every `cargo test` (20 000 rounds each, a fixed seed). Replay or lengthen
//! a run with `HULL_FUZZ_SEED=<seed> HULL_FUZZ_ITERS=<n>`; `HULL_FUZZ_RACE=1` adds a
//! thread that keeps rewriting guest memory (descriptor tables, rings, buffers) while the
//! device works on it, as a second guest vCPU could. A round that takes longer than
//! `HULL_FUZZ_ROUND_MS` (default 5000) aborts the run with its seed: a hang is a bug.
//! `make fuzz` runs 10^6 rounds per target in both modes.

// Guest values are u32/u64 and land in narrower fields: every narrowing is checked.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_lossless
)]

use std::io::Write;

mod common;
use common::{QUEUE_SIZE, bring_up, bring_up_with, used_idx, w32};

use hull_vmm::devices::virtio::block::{Block, DiskConfig};
use hull_vmm::devices::virtio::fs::{FsConfig, VhostUserFs};
use hull_vmm::devices::virtio::mmio::MmioTransport;
use hull_vmm::devices::virtio::net::{Net, Tap, VNET_HDR_LEN};
use hull_vmm::devices::virtio::vsock::Vsock;
use hull_vmm::devices::virtio::{Interrupt, VirtioDevice};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const MEM_MIB: u32 = 16;
const BUFFERS: u64 = 0x10_0000;

/// xorshift64*: small, seedable, good enough to steer inputs.
struct Rng(u64);

impl Rng {
    fn from_env(target: &str) -> Rng {
        let seed = std::env::var("HULL_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            // A fixed default: every CI run replays the same inputs; set the variable to
            // explore others.
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        eprintln!(
            "{target}: HULL_FUZZ_SEED={seed} HULL_FUZZ_ITERS={}",
            iterations()
        );
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// `below(n)` in a narrower type, for an `n` that fits it.
    fn below_as<T: TryFrom<u64>>(&mut self, n: u64) -> T
    where
        T::Error: std::fmt::Debug,
    {
        T::try_from(self.below(n)).expect("below n fits the type")
    }
    fn u8(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }
    fn u32(&mut self) -> u32 {
        let b = self.next().to_le_bytes();
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below_as::<usize>(xs.len() as u64)]
    }
}

/// Aborts the process (naming the target and seed) when one round takes too long.
struct Watchdog {
    round: std::sync::Arc<std::sync::atomic::AtomicU64>,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Watchdog {
    fn start(target: &'static str) -> Watchdog {
        use std::sync::atomic::Ordering;
        let limit = std::time::Duration::from_millis(
            std::env::var("HULL_FUZZ_ROUND_MS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(5000),
        );
        let round = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (r, d) = (round.clone(), done.clone());
        std::thread::spawn(move || {
            let mut last = (0, std::time::Instant::now());
            while !d.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(50));
                let now = r.load(Ordering::Relaxed);
                if now != last.0 {
                    last = (now, std::time::Instant::now());
                } else if last.1.elapsed() > limit {
                    eprintln!(
                        "{target}: round {now} ran over {limit:?}: hang (see the seed above)"
                    );
                    std::process::abort();
                }
            }
        });
        Watchdog { round, done }
    }

    fn tick(&self) {
        self.round
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// With `HULL_FUZZ_RACE=1`, a thread that rewrites the first `len` bytes of guest memory
/// (queues and buffers) with random words until dropped.
struct Racer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<u64>>,
}

impl Racer {
    fn start(mem: &GuestMemoryMmap, seed: u64) -> Racer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handle = racing().then(|| {
            let (mem, stop) = (mem.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut r = Rng(seed ^ 0x5555_5555_5555_5555 | 1);
                let mut writes = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let a = if r.below(2) == 0 {
                        r.below(0x3000) & !7
                    } else {
                        BUFFERS + (r.below(0x1_0000) & !7)
                    };
                    let _ = mem.write_obj(r.next(), GuestAddress(a));
                    writes += 1;
                }
                writes
            })
        });
        Racer { stop, handle }
    }
}

impl Drop for Racer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let writes = h.join().unwrap_or(0);
            eprintln!("racing thread: {writes} concurrent writes to guest memory");
        }
    }
}

/// Whether the racing thread runs: it rewrites the rings too, so checks of the rings'
/// shape (and of reach) only hold without it.
fn racing() -> bool {
    std::env::var("HULL_FUZZ_RACE").is_ok_and(|v| v == "1")
}

fn iterations() -> usize {
    std::env::var("HULL_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000)
}

/// A guest-chosen address: mostly in the buffer area, sometimes at the edge of memory,
/// in the descriptor tables themselves, or anywhere at all.
fn addr(r: &mut Rng) -> u64 {
    match r.below(8) {
        0 => r.next(),
        1 => (u64::from(MEM_MIB) << 20) - r.below(1024),
        2 => r.below(0x3000),
        _ => BUFFERS + r.below(0x1_0000),
    }
}

/// Writes random descriptors and publishes a few random heads on queue `q`.
/// The low bits of a random word.
fn low32(x: u64) -> u32 {
    u32::try_from(x & 0xffff_ffff).unwrap()
}
fn low16(x: u64) -> u16 {
    u16::try_from(x & 0xffff).unwrap()
}

/// A queue number as an index into the per-queue arrays.
fn ix(q: u64) -> usize {
    usize::try_from(q).expect("a queue number")
}

fn scribble_queue(mem: &GuestMemoryMmap, r: &mut Rng, q: u64, avail_idx: &mut u16) {
    let base = q * 0x1000;
    for i in 0..u64::from(QUEUE_SIZE) {
        let any = r.next();
        let len = r.pick(&[0u32, 1, 15, 16, 44, 512, 4096, 65536, u32::MAX, low32(any)]);
        let flags = r.below_as::<u16>(8) & 0b111; // NEXT | WRITE | INDIRECT
        let next = r.below_as::<u16>(u64::from(QUEUE_SIZE) + 4);
        let d = base + i * 16;
        mem.write_obj(addr(r), GuestAddress(d)).unwrap();
        mem.write_obj(len, GuestAddress(d + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(d + 12)).unwrap();
        mem.write_obj(next, GuestAddress(d + 14)).unwrap();
    }
    let n = r.below_as::<u16>(4) + 1;
    for k in 0..n {
        let slot = u64::from(avail_idx.wrapping_add(k) % QUEUE_SIZE);
        let head = r.below_as::<u16>(u64::from(QUEUE_SIZE) + 2);
        mem.write_obj(head, GuestAddress(base + 0x404 + slot * 2))
            .unwrap();
    }
    *avail_idx = avail_idx.wrapping_add(n);
    // Now and then the guest claims far more entries than the ring holds (for this round).
    let published = if r.below(16) == 0 {
        avail_idx.wrapping_add(1000)
    } else {
        *avail_idx
    };
    mem.write_obj(published, GuestAddress(base + 0x402))
        .unwrap();
}

/// Random bytes in the buffer area, with plausible request headers sprinkled in.
fn scribble_buffers(mem: &GuestMemoryMmap, r: &mut Rng) {
    for _ in 0..64 {
        let a = BUFFERS + r.below(0x1_0000);
        let v = match r.below(4) {
            0 => r.pick(&[0u64, 1, 4, 8, 11]), // blk types
            1 => r.below(5000),                // sectors
            _ => r.next(),
        };
        mem.write_obj(v, GuestAddress(a)).unwrap();
    }
}

fn transport(dev: Box<dyn VirtioDevice>) -> (MmioTransport, GuestMemoryMmap) {
    let mem = hull_vmm::memory::create(MEM_MIB).unwrap().memory;
    let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let t = MmioTransport::new(dev, mem.clone(), Interrupt::new(evt)).unwrap();
    (t, mem)
}

#[test]
fn fuzz_virtio_blk_requests_and_descriptor_chains() {
    let mut r = Rng::from_env("virtio-blk");
    let mut img = tempfile::NamedTempFile::new().unwrap();
    img.write_all(&vec![0x5a; 4096 * 512]).unwrap();
    let disk = DiskConfig {
        path: img.path().into(),
        read_only: false,
    };
    let blk = Block::open(&disk).unwrap();
    let pacer = blk.pacer();
    let (mut t, mem) = transport(Box::new(blk));
    bring_up(&mut t, 1);
    let mut avail = 0u16;
    let mut total_used = 0usize;
    let wd = Watchdog::start("virtio-blk");
    let _race = Racer::start(&mem, r.0);
    for _ in 0..iterations() {
        wd.tick();
        scribble_buffers(&mem, &mut r);
        scribble_queue(&mem, &mut r, 0, &mut avail);
        let before = used_idx(&mem, 0);
        t.write(0x50, &0u32.to_le_bytes());
        // The device serves the kick on its own thread; the guest waits for it.
        pacer.settle();
        let used = used_idx(&mem, 0).wrapping_sub(before);
        total_used += usize::from(used);
        assert!(
            racing() || used <= QUEUE_SIZE,
            "device used {used} buffers of a {QUEUE_SIZE}-entry ring"
        );
    }
    assert!(
        racing() || total_used > iterations(),
        "the inputs hardly reach the device: {total_used} buffers used"
    );
    assert_eq!(
        std::fs::metadata(img.path()).unwrap().len(),
        4096 * 512,
        "the disk never grows"
    );
}

/// A virtio-vsock header (44 bytes, little endian) with guest-chosen fields, written at `a`.
#[allow(clippy::too_many_arguments)]
fn write_vsock_header(
    mem: &GuestMemoryMmap,
    a: u64,
    cids: (u64, u64),
    ports: (u32, u32),
    len: u32,
    type_: u16,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
) {
    let g = |off: u64| GuestAddress(a + off);
    mem.write_obj(cids.0, g(0)).unwrap();
    mem.write_obj(cids.1, g(8)).unwrap();
    mem.write_obj(ports.0, g(16)).unwrap();
    mem.write_obj(ports.1, g(20)).unwrap();
    mem.write_obj(len, g(24)).unwrap();
    mem.write_obj(type_, g(28)).unwrap();
    mem.write_obj(op, g(30)).unwrap();
    mem.write_obj(flags, g(32)).unwrap();
    mem.write_obj(buf_alloc, g(36)).unwrap();
    mem.write_obj(fwd_cnt, g(40)).unwrap();
}

/// Publishes `n` single-descriptor chains on queue `q` (descriptors 0..n), each `len`
/// bytes at `addrs[i]`, device-writable when `write`.
fn publish_chains(
    mem: &GuestMemoryMmap,
    q: u64,
    addrs: &[(u64, u32)],
    write: bool,
    avail_idx: &mut u16,
) {
    let base = q * 0x1000;
    for (i, (a, len)) in addrs.iter().enumerate() {
        let d = base + i as u64 * 16;
        mem.write_obj(*a, GuestAddress(d)).unwrap();
        mem.write_obj(*len, GuestAddress(d + 8)).unwrap();
        mem.write_obj(if write { 2u16 } else { 0 }, GuestAddress(d + 12))
            .unwrap();
        mem.write_obj(0u16, GuestAddress(d + 14)).unwrap();
        let slot = u64::from(avail_idx.wrapping_add(u16::try_from(i).unwrap()) % QUEUE_SIZE);
        mem.write_obj(
            u16::try_from(i).unwrap(),
            GuestAddress(base + 0x404 + slot * 2),
        )
        .unwrap();
    }
    *avail_idx = avail_idx.wrapping_add(u16::try_from(addrs.len()).unwrap());
    mem.write_obj(*avail_idx, GuestAddress(base + 0x402))
        .unwrap();
}

/// Packets with every header field in the right place, steered towards what the device
/// acts on (the guest's cid, the host's, ports with live host peers, every op), mixed with
/// random descriptor tables. Host peers: port 1234 accepts and never reads (credit), 1235
/// accepts and hangs up at once. The device must never hold more than its bounds.
#[test]
fn fuzz_vsock_packets_from_the_guest() {
    let mut r = Rng::from_env("virtio-vsock");
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let keep = std::os::unix::net::UnixListener::bind(format!("{}_1234", uds.display())).unwrap();
    let hang_up =
        std::os::unix::net::UnixListener::bind(format!("{}_1235", uds.display())).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in keep.incoming().flatten() {
            held.push(s);
        }
    });
    std::thread::spawn(move || for _s in hang_up.incoming() {});
    let vsock = Vsock::new(3, uds).unwrap();
    let probe = vsock.probe();
    let (mut t, mem) = transport(Box::new(vsock));
    bring_up(&mut t, 3);
    let mut avail = [0u16; 2];
    let (mut max_conns, mut max_replies) = (0, 0);
    let wd = Watchdog::start("virtio-vsock");
    let _race = Racer::start(&mem, r.0);
    for _ in 0..iterations() {
        wd.tick();
        if r.below(4) == 0 {
            let q = r.below(2);
            scribble_buffers(&mem, &mut r);
            scribble_queue(&mem, &mut r, q, &mut avail[ix(q)]);
            t.write(0x50, &u32::try_from(q).unwrap().to_le_bytes());
            probe.settle();
            continue;
        }
        // RX buffers now and then: without them replies must queue, boundedly.
        if r.below(3) == 0 {
            let bufs: Vec<(u64, u32)> = (0..4)
                .map(|i| (BUFFERS + 0x8000 + i * 0x1000, 4096))
                .collect();
            publish_chains(&mem, 0, &bufs, true, &mut avail[0]);
            t.write(0x50, &0u32.to_le_bytes());
            probe.settle();
        }
        let n = r.below(4) + 1;
        let mut chains = Vec::new();
        for i in 0..n {
            let a = BUFFERS + i * 0x200;
            let data = r.pick(&[0u32, 1, 44, 64, 256]);
            let any = r.next();
            let len = if r.below(8) == 0 { r.u32() } else { data };
            write_vsock_header(
                &mem,
                a,
                (r.pick(&[3u64, 3, 3, any]), r.pick(&[2u64, 2, 2, 3, any])),
                (
                    5000 + r.below_as::<u32>(4),
                    r.pick(&[1234u32, 1234, 1235, 4321, low32(any)]),
                ),
                len,
                r.pick(&[1u16, 1, 1, 2, low16(any)]),
                r.below_as::<u16>(9),
                r.below_as::<u32>(4),
                r.pick(&[0u32, 4096, 262_144, u32::MAX]),
                r.u32(),
            );
            chains.push((a, 44 + data));
        }
        publish_chains(&mem, 1, &chains, false, &mut avail[1]);
        t.write(0x50, &1u32.to_le_bytes());
        probe.settle();
        let (conns, replies) = probe.load();
        assert!(
            conns <= 1024 && replies <= 2048,
            "{conns} connections, {replies} replies"
        );
        max_conns = max_conns.max(conns);
        max_replies = max_replies.max(replies);
    }
    // Reach: packets parsed, connections made to host peers, replies produced.
    assert!(
        racing() || max_conns > 0,
        "no guest packet ever opened a connection"
    );
    assert!(
        racing() || max_replies > 0,
        "no guest packet ever earned a reply"
    );
}

#[test]
fn fuzz_virtio_mmio_registers() {
    let mut r = Rng::from_env("virtio-mmio");
    let mut img = tempfile::NamedTempFile::new().unwrap();
    img.write_all(&[0u8; 8192]).unwrap();
    let disk = DiskConfig {
        path: img.path().into(),
        read_only: true,
    };
    let (mut t, mem) = transport(Box::new(Block::open(&disk).unwrap()));
    let offsets = [
        0x00u64, 0x10, 0x14, 0x20, 0x24, 0x30, 0x34, 0x38, 0x44, 0x50, 0x60, 0x64, 0x70, 0x80,
        0x84, 0x90, 0x94, 0xa0, 0xa4, 0xfc, 0x100, 0x108, 0xfff,
    ];
    let mut avail = 0u16;
    let wd = Watchdog::start("virtio-mmio");
    let _race = Racer::start(&mem, r.0);
    for _ in 0..iterations() * 4 {
        wd.tick();
        let off = if r.below(8) == 0 {
            r.below(0x2000)
        } else {
            r.pick(&offsets)
        };
        let size = r.pick(&[1usize, 2, 4, 4, 4, 8]);
        if r.below(2) == 0 {
            let v = match r.below(4) {
                0 => r.below_as::<u32>(16), // status bits, queue indices
                1 => r.pick(&[0u32, 1, 16, 256, 0x8000, u32::MAX]),
                _ => r.u32(),
            };
            let bytes = (u64::from(v) | (r.next() << 32)).to_le_bytes();
            t.write(off, &bytes[..size]);
        } else {
            let mut data = vec![0u8; size];
            t.read(off, &mut data);
        }
        if r.below(64) == 0 {
            scribble_queue(&mem, &mut r, 0, &mut avail);
        }
    }
}

/// Brings a transport up acking every feature the device offers (low word) and VERSION_1.
fn bring_up_all_features(t: &mut MmioTransport, queues: u32) {
    let mut lo = [0u8; 4];
    w32(t, 0x14, 0);
    t.read(0x10, &mut lo);
    bring_up_with(t, queues, u32::from_le_bytes(lo));
}

/// A virtio-net header: sometimes valid, often asking for what was not negotiated or
/// pointing its checksum and segmentation fields anywhere.
fn net_header(r: &mut Rng) -> [u8; VNET_HDR_LEN] {
    let mut h = [0u8; VNET_HDR_LEN];
    if r.below(2) == 0 {
        let (any0, any1) = (r.u8(), r.u8());
        h[0] = r.pick(&[0u8, 1, 1, 2, 0x80, any0]);
        h[1] = r.pick(&[0u8, 0, 1, 3, 4, 5, 0x81, any1]);
        for b in &mut h[2..10] {
            *b = if r.below(2) == 0 { 0 } else { r.u8() };
        }
    }
    h
}

/// Waits until an asynchronous device has caught up with queue `q` (its used index equals
/// what was published, or stops moving for a millisecond): a real driver never publishes
/// more than its ring holds, and neither may the fuzzer.
fn settle(mem: &GuestMemoryMmap, q: u64, published: u16) {
    settle_for(mem, q, published, std::time::Duration::from_millis(1));
}

/// As `settle`, giving up once the used index has not moved for `stall`, or after ten
/// stalls' time in all (with `HULL_FUZZ_RACE` the racing thread keeps rewriting the index
/// itself, so it may never hold still).
fn settle_for(mem: &GuestMemoryMmap, q: u64, published: u16, stall: std::time::Duration) {
    let mut last = used_idx(mem, q);
    let mut still = std::time::Instant::now();
    let give_up = still + stall * 10;
    while used_idx(mem, q) != published && std::time::Instant::now() < give_up {
        std::thread::yield_now();
        let now = used_idx(mem, q);
        if now != last {
            last = now;
            still = std::time::Instant::now();
        } else if still.elapsed() > stall {
            return;
        }
    }
}

/// Frames both ways through virtio-net, its tap a datagram socket: TX chains with
/// guest-chosen headers, lengths and layouts; RX buffers that are there or not, well-formed
/// or not, while frames of any size arrive from the host. Whatever the guest does, only
/// well-formed frames reach the host, the device keeps moving frames, and answers at the end.
#[test]
fn fuzz_virtio_net_frames_both_ways() {
    use std::os::fd::AsRawFd;
    let mut r = Rng::from_env("virtio-net");
    let (a, peer) = nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    let net = Net::with_tap(
        Tap::from_datagram_socket(a).unwrap(),
        [2, 0, 0, 0, 0, 1],
        Some(1500),
    )
    .unwrap();
    let stats = net.stats();
    let (mut t, mem) = transport(Box::new(net));
    bring_up_all_features(&mut t, 2);
    let mut avail = [0u16; 2];
    let wd = Watchdog::start("virtio-net");
    let _race = Racer::start(&mem, r.0);
    let mut out = vec![0u8; 70_000];
    let mut received = 0u64;
    let drain = |out: &mut [u8], received: &mut u64| loop {
        // SAFETY: reads into a local buffer of its own length.
        let n = unsafe {
            libc::recv(
                peer.as_raw_fd(),
                out.as_mut_ptr().cast(),
                out.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return;
        }
        let n = usize::try_from(n).unwrap();
        assert!(
            (VNET_HDR_LEN + 14..=VNET_HDR_LEN + 65550).contains(&n),
            "a {n}-byte frame reached the host"
        );
        assert!(
            out[0] & !1 == 0,
            "a frame with header flags {:#x} reached the host",
            out[0]
        );
        *received += 1;
    };
    for _ in 0..iterations() {
        wd.tick();
        match r.below(6) {
            0 => {
                let q = r.below(2);
                scribble_buffers(&mem, &mut r);
                scribble_queue(&mem, &mut r, q, &mut avail[ix(q)]);
                t.write(0x50, &u32::try_from(q).unwrap().to_le_bytes());
                settle(&mem, q, avail[ix(q)]);
            }
            1 | 2 => {
                // TX: a few frames, header then payload, in one or two descriptors.
                let n = r.below(3) + 1;
                let mut chains = Vec::new();
                for i in 0..n {
                    let at = BUFFERS + i * 0x1000;
                    mem.write_slice(&net_header(&mut r), GuestAddress(at))
                        .unwrap();
                    let any = r.u32();
                    let len = r.pick(&[0u32, 10, 12, 26, 60, 1514, 4000, 70_000, any]);
                    chains.push((at, len));
                }
                publish_chains(&mem, 1, &chains, r.below(16) == 0, &mut avail[1]);
                t.write(0x50, &1u32.to_le_bytes());
                settle(&mem, 1, avail[1]);
            }
            3 => {
                // RX buffers, mostly sane.
                let n = r.below(8) + 1;
                let bufs: Vec<(u64, u32)> = (0..n)
                    .map(|i| {
                        (
                            BUFFERS + 0x8000 + i * 0x2000,
                            r.pick(&[8192u32, 8192, 4096, 1024, 8, 0, 0x10_0000]),
                        )
                    })
                    .collect();
                // RX buffers stay with the device until frames come: publish only into room.
                if avail[0].wrapping_sub(used_idx(&mem, 0)) + u16::try_from(n).unwrap()
                    <= QUEUE_SIZE
                {
                    publish_chains(&mem, 0, &bufs, r.below(16) != 0, &mut avail[0]);
                    t.write(0x50, &0u32.to_le_bytes());
                }
            }
            _ => {
                // A frame from the host, of any size.
                let len = r.pick(&[0usize, 5, 12, 60, 600, 1526, 3000, 65_562]);
                let frame = vec![r.u8(); len];
                // SAFETY: sends a local buffer of its own length; a full socket just refuses.
                unsafe {
                    libc::send(
                        peer.as_raw_fd(),
                        frame.as_ptr().cast(),
                        frame.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
            }
        }
        drain(&mut out, &mut received);
    }
    // The device thread is alive: after a reset and a fresh set-up (whatever state the
    // fuzzed rings were left in), it moves a plain frame.
    w32(&mut t, 0x70, 0);
    mem.write_slice(&[0u8; 0x2000], GuestAddress(0)).unwrap();
    avail = [0, 0];
    bring_up_all_features(&mut t, 2);
    drain(&mut out, &mut received);
    let before = received;
    let at = BUFFERS + 0x4000;
    mem.write_slice(&[0u8; VNET_HDR_LEN + 60], GuestAddress(at))
        .unwrap();
    let alive = (0..500).any(|_| {
        wd.tick();
        publish_chains(
            &mem,
            1,
            &[(at, u32::try_from(VNET_HDR_LEN + 60).unwrap())],
            false,
            &mut avail[1],
        );
        t.write(0x50, &1u32.to_le_bytes());
        std::thread::sleep(std::time::Duration::from_millis(10));
        drain(&mut out, &mut received);
        received > before
    });
    assert!(
        racing() || alive,
        "the net device stopped moving frames: tx {} dropped {}, avail {:?}, used {}",
        stats.tx_frames(),
        stats.tx_dropped(),
        avail,
        used_idx(&mem, 1)
    );
    eprintln!(
        "virtio-net: tx {} (dropped {}), rx {} (dropped {}), host got {received}",
        stats.tx_frames(),
        stats.tx_dropped(),
        stats.rx_frames(),
        stats.rx_dropped()
    );
    // Reach: frames sent, malformed ones refused, frames delivered to guest buffers.
    assert!(
        racing() || stats.tx_frames() > 0,
        "no TX frame was ever sent"
    );
    assert!(
        racing() || stats.tx_dropped() > 0,
        "no malformed TX frame was ever refused"
    );
    assert!(
        racing() || stats.rx_frames() > 0,
        "no RX frame was ever delivered"
    );
}

/// virtiofsd: on PATH or in ~/.cargo/bin (scripts/setup.sh installs it).
fn virtiofsd() -> std::path::PathBuf {
    let mut dirs: Vec<std::path::PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(std::path::Path::new(&h).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("virtiofsd"))
        .find(|p| p.is_file())
        .expect("virtiofsd not found: run scripts/setup.sh")
}

/// A FUSE request (`fuse_in_header` + body) at `a`; returns its length. When `malformed`,
/// the body may be cut short and the header's `len` may be anything.
fn fuse_request(mem: &GuestMemoryMmap, r: &mut Rng, a: u64, malformed: bool) -> u32 {
    const INIT: u32 = 26;
    // Well-formed: opcodes whose bodies are built right (virtiofsd gives up for good on a
    // request it cannot decode); malformed: any opcode with any body.
    let any_op = r.below_as::<u32>(60);
    let opcode = if malformed {
        r.pick(&[INIT, 1, 15, 28, any_op, any_op])
    } else {
        r.pick(&[INIT, INIT, 1, 1, 3, 14, 15, 28, 17, 18])
    };
    let le = |vals: &[u64], widths: &[usize]| -> Vec<u8> {
        vals.iter()
            .zip(widths)
            .flat_map(|(v, w)| v.to_le_bytes()[..*w].to_vec())
            .collect()
    };
    let mut body: Vec<u8> = match opcode {
        // INIT: major 7, minor 31, max_readahead, flags (FUSE_INIT_EXT, bit 30, promises a
        // longer body: only in malformed requests)
        26 => {
            let flags = r.u32() & if malformed { u32::MAX } else { !(1 << 30) };
            le(&[7, 31, 0x2_0000, u64::from(flags)], &[4, 4, 4, 4])
        }
        // LOOKUP: a name inside, a way out, or anything
        1 => {
            let name: &[u8] = match r.below(4) {
                0 => b"hello",
                1 => b"..",
                2 => b"../outside",
                _ => b"\xff/x",
            };
            let mut n = name.to_vec();
            n.push(0);
            n
        }
        // GETATTR: getattr_flags, dummy, fh
        3 => le(&[r.below(2), 0, r.next()], &[4, 4, 8]),
        // OPEN: flags, open_flags
        14 => le(&[r.pick(&[0u64, 2, 0o100_000]), 0], &[4, 4]),
        // READ / READDIR: fh, offset, size (fits the reply buffer), flags, lock_owner, flags, pad
        15 | 28 => le(
            &[r.next(), r.below(1 << 20), r.below(4000), 0, 0, 0, 0],
            &[8, 8, 4, 4, 8, 4, 4],
        ),
        // STATFS: no body
        17 => Vec::new(),
        // RELEASE: fh, flags, release_flags, lock_owner
        18 => le(&[r.next(), 0, 0, 0], &[8, 4, 4, 8]),
        _ => (0..16).flat_map(|_| r.next().to_le_bytes()).collect(),
    };
    if malformed {
        body.truncate(r.pick(&[body.len(), 0, 3]));
    }
    let len = 40 + u32::try_from(body.len()).unwrap();
    let header_len = if malformed && r.below(2) == 0 {
        r.u32()
    } else {
        len
    };
    let any_node = r.next();
    let nodeid = r.pick(&[1u64, 1, 2, 0, any_node]);
    let g = |off: u64| GuestAddress(a + off);
    mem.write_obj(header_len, g(0)).unwrap();
    mem.write_obj(opcode, g(4)).unwrap();
    mem.write_obj(r.next(), g(8)).unwrap(); // unique
    mem.write_obj(nodeid, g(16)).unwrap();
    mem.write_obj(0u32, g(24)).unwrap(); // uid
    mem.write_obj(0u32, g(28)).unwrap(); // gid
    mem.write_obj(1u32, g(32)).unwrap(); // pid
    mem.write_obj(0u32, g(36)).unwrap();
    mem.write_slice(&body, g(40)).unwrap();
    len
}

/// virtio-fs through hull-vmm's vhost-user frontend to a real virtiofsd, in two halves.
/// First, well-formed FUSE requests with guest-chosen opcodes, node ids and names (`..`
/// included): the daemon answers them all and nothing outside its shared directory reaches
/// the guest's reply buffers. Then random descriptor tables and malformed requests on both
/// queues: virtiofsd may give up on a request it cannot decode (and then exits: the pod's
/// share is gone, the guest's own loss), but the frontend and transport never panic or
/// hang, with or without a backend, and nothing outside the share changes.
#[test]
fn fuzz_virtio_fs_requests_through_virtiofsd() {
    let mut r = Rng::from_env("virtio-fs");
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("hello"), b"inside").unwrap();
    let secret = b"SECRET-outside-the-share";
    std::fs::write(dir.path().join("outside"), secret).unwrap();
    let sock_dir = tempfile::tempdir().unwrap();
    let sock = sock_dir.path().join("fs.sock");
    let mut daemon = std::process::Command::new(virtiofsd())
        .arg("--socket-path")
        .arg(&sock)
        .arg("--shared-dir")
        .arg(&shared)
        .args(["--cache", "never", "--log-level", "error"])
        .spawn()
        .expect("starting virtiofsd");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !sock.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "virtiofsd made no socket"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let fs = VhostUserFs::connect(&FsConfig {
        socket: sock.clone(),
        tag: "fuzz".into(),
    })
    .unwrap();
    let (mut t, mem) = transport(Box::new(fs));
    bring_up(&mut t, 2);
    let mut avail = [0u16; 2];
    let mut answered = 0usize;
    let wd = Watchdog::start("virtio-fs");
    let _race = Racer::start(&mem, r.0);
    let out_at = BUFFERS + 0x8000;
    let rounds = iterations() / 4;
    let mut alive_after_first_half = true;
    let mut daemon_alive = true;
    for round in 0..rounds {
        wd.tick();
        let hostile = round >= rounds / 2;
        if round == rounds / 2 {
            alive_after_first_half = daemon.try_wait().unwrap().is_none();
        }
        let q = if r.below(4) == 0 { 0 } else { 1 };
        let before = used_idx(&mem, q);
        if hostile && r.below(8) == 0 {
            scribble_buffers(&mem, &mut r);
            scribble_queue(&mem, &mut r, q, &mut avail[ix(q)]);
        } else {
            let malformed = hostile && r.below(4) == 0;
            let len = fuse_request(&mem, &mut r, BUFFERS, malformed);
            mem.write_slice(&[0u8; 0x1000], GuestAddress(out_at))
                .unwrap();
            // A request chain: the request (readable), then room for the reply (writable).
            let base = q * 0x1000;
            let descs = [(BUFFERS, len, 1u16, 1u16), (out_at, 0x1000, 2, 0)];
            for (i, (a, l, flags, next)) in descs.iter().enumerate() {
                let d = base + i as u64 * 16;
                mem.write_obj(*a, GuestAddress(d)).unwrap();
                mem.write_obj(*l, GuestAddress(d + 8)).unwrap();
                mem.write_obj(*flags, GuestAddress(d + 12)).unwrap();
                mem.write_obj(*next, GuestAddress(d + 14)).unwrap();
            }
            let slot = u64::from(avail[ix(q)] % QUEUE_SIZE);
            mem.write_obj(0u16, GuestAddress(base + 0x404 + slot * 2))
                .unwrap();
            avail[ix(q)] = avail[ix(q)].wrapping_add(1);
            mem.write_obj(avail[ix(q)], GuestAddress(base + 0x402))
                .unwrap();
        }
        t.write(0x50, &u32::try_from(q).unwrap().to_le_bytes());
        // The daemon is another process: give it time, unless it is gone.
        if round % 64 == 0 {
            daemon_alive = daemon.try_wait().unwrap().is_none();
        }
        if daemon_alive {
            settle_for(&mem, q, avail[ix(q)], std::time::Duration::from_millis(200));
        }
        answered += usize::from(used_idx(&mem, q).wrapping_sub(before));
        if !racing() {
            let mut reply = vec![0u8; 0x1000];
            mem.read_slice(&mut reply, GuestAddress(out_at)).unwrap();
            assert!(
                !reply.windows(secret.len()).any(|w| w == secret),
                "a file outside the shared directory reached the guest"
            );
        }
    }
    // A reset of the device with the daemon alive or gone returns promptly.
    w32(&mut t, 0x70, 0);
    let alive = daemon.try_wait().unwrap().is_none();
    let _ = daemon.kill();
    let _ = daemon.wait();
    eprintln!(
        "virtio-fs: {answered} requests answered; virtiofsd alive after the well-formed half: {alive_after_first_half}, at the end: {alive}"
    );
    assert_eq!(std::fs::read(dir.path().join("outside")).unwrap(), secret);
    let outside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        outside.len(),
        2,
        "files appeared outside the share: {outside:?}"
    );
    assert!(
        racing() || alive_after_first_half,
        "virtiofsd died on well-formed requests"
    );
    assert!(
        racing() || answered > 100,
        "the requests hardly reach virtiofsd: {answered}"
    );
}
