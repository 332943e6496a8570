//! virtio-net on mock queues, with a SOCK_SEQPACKET pair standing in for the tap: frames
//! cross both ways intact, mergeable RX buffers carry `num_buffers`, a guest without RX
//! buffers is waited for, and malformed chains are returned unsent and counted.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress};

use super::*;

const W: u16 = crate::devices::virtio::DESC_F_WRITE;
const N: u16 = crate::devices::virtio::DESC_F_NEXT;
const RXQ: u64 = 0;
const TXQ: u64 = 0x1_0000;
const BUF: u64 = 0x10_0000;
const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

struct Rig {
    net: Net,
    mem: GuestMemoryMmap,
    peer: OwnedFd,
    irq: Arc<EventFd>,
}

fn d(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

/// A descriptor that continues at table entry `next`.
fn dn(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags | N, next))
}

fn rig(acked: u64) -> Rig {
    let mem = crate::memory::create(16).unwrap().memory;
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    let net = Net::with_tap(Tap::from_datagram_socket(a).unwrap(), MAC, Some(1500)).unwrap();
    let mut r = Rig {
        net,
        mem,
        peer: b,
        irq: Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
    };
    r.net
        .ack_features(acked | crate::devices::virtio::VIRTIO_F_VERSION_1);
    r
}

/// The driver's side of the two rings (made once: making one clears its rings).
struct Rings<'m> {
    rx: MockSplitQueue<'m, GuestMemoryMmap>,
    tx: MockSplitQueue<'m, GuestMemoryMmap>,
}

fn rings(mem: &GuestMemoryMmap) -> Rings<'_> {
    Rings {
        rx: MockSplitQueue::create(mem, GuestAddress(RXQ), 16),
        tx: MockSplitQueue::create(mem, GuestAddress(TXQ), 16),
    }
}

impl Rig {
    fn activate(&mut self, q: &Rings) {
        let rx: Queue = q.rx.create_queue().unwrap();
        let tx: Queue = q.tx.create_queue().unwrap();
        let irq = Interrupt {
            status: Default::default(),
            evt: self.irq.clone(),
        };
        self.net
            .activate(self.mem.clone(), vec![rx, tx], irq)
            .unwrap();
    }

    /// The used ring of the queue at `q`, where MockSplitQueue puts it (its offset from
    /// the queue's start, found once on scratch memory).
    fn used_addr(q: u64) -> GuestAddress {
        static OFFSET: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        let off = *OFFSET.get_or_init(|| {
            let mem = crate::memory::create(16).unwrap().memory;
            MockSplitQueue::create(&mem, GuestAddress(0), 16)
                .used_addr()
                .0
        });
        GuestAddress(q + off)
    }

    fn used_idx(&self, q: u64) -> u16 {
        self.mem
            .read_obj(Self::used_addr(q).unchecked_add(2))
            .unwrap()
    }

    fn used_len(&self, q: u64, i: u64) -> u32 {
        self.mem
            .read_obj(Self::used_addr(q).unchecked_add(4 + 8 * i + 4))
            .unwrap()
    }

    fn wait_used(&self, q: u64, n: u16) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.used_idx(q) < n {
            assert!(
                Instant::now() < deadline,
                "queue {q:#x}: used {} < {n}",
                self.used_idx(q)
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn peer_recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 70000];
        let deadline = Instant::now() + Duration::from_millis(500);
        loop {
            // SAFETY: reads into a local buffer of its own length.
            let n = unsafe {
                libc::recv(
                    self.peer.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                buf.truncate(usize::try_from(n).unwrap());
                return Some(buf);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn peer_send(&self, frame: &[u8]) {
        // SAFETY: sends a local buffer of its own length.
        let n = unsafe { libc::send(self.peer.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(n, frame.len() as isize);
    }
}

/// A header and a minimal Ethernet frame, `len` bytes in all.
fn frame(len: usize, fill: u8) -> Vec<u8> {
    let mut f = vec![fill; len];
    f[..VNET_HDR_LEN].fill(0);
    f
}

#[test]
fn config_space_holds_mac_and_mtu() {
    let r = rig(0);
    let mut c = [0u8; 12];
    r.net.read_config(0, &mut c);
    assert_eq!(&c[..6], &MAC);
    assert_eq!(u16::from_le_bytes([c[10], c[11]]), 1500);
    assert_ne!(r.net.features() & bit(VIRTIO_NET_F_MTU), 0);
}

#[test]
fn tx_frames_reach_the_tap_whole() {
    let mut r = rig(0);
    let mem = r.mem.clone();
    let q = rings(&mem);
    let f = frame(100, 0xab);
    r.mem.write_slice(&f[..40], GuestAddress(BUF)).unwrap();
    r.mem
        .write_slice(&f[40..], GuestAddress(BUF + 0x1000))
        .unwrap();
    q.tx.add_desc_chains(&[dn(BUF, 40, 0, 1), d(BUF + 0x1000, 60, 0)], 0)
        .unwrap();
    r.activate(&q);
    r.net.notify(u16::try_from(TX).unwrap());
    r.wait_used(TXQ, 1);
    assert_eq!(r.peer_recv().as_deref(), Some(&f[..]));
    assert_eq!(r.net.stats().tx_frames(), 1);
    assert!(r.irq.read().is_ok(), "used TX buffers are signalled");
}

#[test]
fn malformed_tx_chains_are_returned_unsent() {
    let mut r = rig(0);
    let mem = r.mem.clone();
    let q = rings(&mem);
    let mut gso = frame(100, 1);
    gso[1] = 1; // TCPv4 segmentation, not negotiated
    r.mem.write_slice(&gso, GuestAddress(BUF)).unwrap();
    r.mem
        .write_slice(&frame(100, 2), GuestAddress(BUF + 0x1000))
        .unwrap();
    let mut bad_flags = frame(100, 3);
    bad_flags[0] = 0x80;
    r.mem
        .write_slice(&bad_flags, GuestAddress(BUF + 0x2000))
        .unwrap();
    q.tx.add_desc_chains(
        &[
            d(BUF, 100, 0),              // GSO not negotiated
            d(BUF + 0x1000, 100, W),     // a writable descriptor in TX
            d(BUF + 0x1000, 10, 0),      // shorter than a header
            d(0xffff_0000, 100, 0),      // outside guest memory
            d(BUF + 0x2000, 100, 0),     // unknown header flags
            d(BUF + 0x1000, 0x20000, 0), // past the largest frame
        ],
        0,
    )
    .unwrap();
    r.activate(&q);
    r.net.notify(u16::try_from(TX).unwrap());
    r.wait_used(TXQ, 6);
    assert_eq!(r.peer_recv(), None, "nothing malformed reaches the tap");
    assert_eq!(r.net.stats().tx_dropped(), 6);
    assert_eq!(r.net.stats().tx_frames(), 0);
}

#[test]
fn rx_frames_span_mergeable_buffers_with_num_buffers() {
    let mut r = rig(bit(VIRTIO_NET_F_MRG_RXBUF));
    let mem = r.mem.clone();
    let q = rings(&mem);
    q.rx.add_desc_chains(
        &[
            d(BUF, 1024, W),
            d(BUF + 0x1000, 1024, W),
            d(BUF + 0x2000, 1024, W),
        ],
        0,
    )
    .unwrap();
    r.activate(&q);
    let f = frame(1200, 0x5a);
    r.peer_send(&f);
    r.wait_used(RXQ, 2);
    assert_eq!((r.used_len(RXQ, 0), r.used_len(RXQ, 1)), (1024, 176));
    let mut got = vec![0u8; 1200];
    r.mem
        .read_slice(&mut got[..1024], GuestAddress(BUF))
        .unwrap();
    r.mem
        .read_slice(&mut got[1024..], GuestAddress(BUF + 0x1000))
        .unwrap();
    let num_buffers = u16::from_le_bytes([got[10], got[11]]);
    assert_eq!(num_buffers, 2);
    got[10..12].fill(0);
    assert_eq!(got, f);
    assert_eq!(r.net.stats().rx_frames(), 1);
    // The third buffer went back to the ring; alone it cannot hold an MTU-sized frame, so
    // the next frame waits for more, then starts in it.
    r.peer_send(&frame(300, 1));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(r.used_idx(RXQ), 2);
    q.rx.add_desc_chains(&[d(BUF + 0x3000, 1024, W)], 3)
        .unwrap();
    r.net.notify(u16::try_from(RX).unwrap());
    r.wait_used(RXQ, 3);
    assert_eq!(r.used_len(RXQ, 2), 300);
    let used_id: u32 = r
        .mem
        .read_obj(Rig::used_addr(RXQ).unchecked_add(4 + 16))
        .unwrap();
    assert_eq!(used_id, 2, "the frame starts in the returned buffer");
}

#[test]
fn rx_waits_for_the_guest_to_add_buffers() {
    let mut r = rig(bit(VIRTIO_NET_F_MRG_RXBUF));
    let mem = r.mem.clone();
    let q = rings(&mem);
    r.activate(&q);
    let f = frame(600, 7);
    r.peer_send(&f);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(r.used_idx(RXQ), 0);
    q.rx.add_desc_chains(&[d(BUF, 2048, W)], 0).unwrap();
    r.net.notify(u16::try_from(RX).unwrap());
    r.wait_used(RXQ, 1);
    assert_eq!(r.used_len(RXQ, 0), 600);
}

/// A driver with EVENT_IDX kicks only when its new avail index passes the device's
/// avail_event. Buffers too small for a frame go back to the ring; the device must then ask
/// for a kick at the driver's next publish, or RX stops for good.
#[test]
fn rx_short_of_buffers_is_kicked_by_the_next_publish_under_event_idx() {
    let mut r = rig(bit(VIRTIO_NET_F_MRG_RXBUF) | bit(VIRTIO_RING_F_EVENT_IDX));
    let mem = r.mem.clone();
    let q = rings(&mem);
    // 1024 bytes: less than an MTU-sized frame needs.
    q.rx.add_desc_chains(&[d(BUF, 1024, W)], 0).unwrap();
    r.activate(&q);
    r.peer_send(&frame(300, 3));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(r.used_idx(RXQ), 0);
    let avail_event = Rig::used_addr(RXQ).unchecked_add(4 + 8 * 16);
    // The driver publishes one more buffer (avail index 1 -> 2), then kicks exactly when
    // vring_need_event(avail_event, 2, 1) holds, as Linux's virtio_ring does.
    q.rx.add_desc_chains(&[d(BUF + 0x1000, 1024, W)], 1)
        .unwrap();
    let event: u16 = r.mem.read_obj(avail_event).unwrap();
    let (new, old) = (2u16, 1u16);
    if new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old) {
        r.net.notify(u16::try_from(RX).unwrap());
    }
    r.wait_used(RXQ, 1);
    assert_eq!(r.used_len(RXQ, 0), 300);
}

#[test]
fn rx_chains_with_readable_descriptors_are_refused() {
    let mut r = rig(bit(VIRTIO_NET_F_MRG_RXBUF));
    let mem = r.mem.clone();
    let q = rings(&mem);
    q.rx.add_desc_chains(&[d(BUF, 2048, 0), d(BUF + 0x1000, 2048, W)], 0)
        .unwrap();
    r.activate(&q);
    r.peer_send(&frame(200, 9));
    r.wait_used(RXQ, 2);
    assert_eq!((r.used_len(RXQ, 0), r.used_len(RXQ, 1)), (0, 200));
}

#[test]
fn reset_stops_the_device_and_bad_configs_are_refused() {
    let mut r = rig(0);
    let mem = r.mem.clone();
    let q = rings(&mem);
    r.activate(&q);
    r.net.reset();
    r.peer_send(&frame(100, 1));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(r.net.stats().rx_frames(), 0);
    for bad in [
        "tap-fd=1",
        "tap-fd=5,mac=01:00:00:00:00:01",
        "tap-fd=5,mtu=20",
        "tap-fd=5,speed=1",
        "tap-fd=5,vhost=maybe",
        "mac=zz",
    ] {
        assert!(bad.parse::<NetConfig>().is_err(), "{bad}");
    }
    let ok: NetConfig = "tap-fd=100,mac=02:00:00:00:00:09,mtu=9000".parse().unwrap();
    assert_eq!(
        (ok.tap_fd, ok.mtu, ok.vhost),
        (100, Some(9000), VhostMode::Auto)
    );
    let off: NetConfig = "tap-fd=100,vhost=off".parse().unwrap();
    assert_eq!(off.vhost, VhostMode::Off);
    let closed = NetConfig {
        tap_fd: 999,
        mac: None,
        mtu: None,
        vhost: VhostMode::Auto,
    };
    assert!(Net::new(&closed, &mem).is_err());
}

/// A tap (`IFF_TAP|IFF_NO_PI|IFF_VNET_HDR`) in a network namespace of its own, made on a
/// thread that leaves the test's namespace; it goes away with its last fd.
fn private_tap() -> std::os::fd::RawFd {
    use std::os::fd::IntoRawFd;
    nix::ioctl_write_ptr_bad!(tun_set_iff, libc::TUNSETIFF, libc::ifreq);
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare (root)");
        let tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .expect("/dev/net/tun");
        // SAFETY: ifreq is plain old data; all-zero is a valid (empty) value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        req.ifr_ifru.ifru_flags =
            i16::try_from(libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR).unwrap();
        // SAFETY: an open /dev/net/tun and a valid ifreq that outlives the call.
        unsafe { tun_set_iff(tun.as_raw_fd(), &req) }.expect("TUNSETIFF");
        tun.into_raw_fd()
    })
    .join()
    .unwrap()
}

/// `vhost=` picks the data path: off is hull-vmm's own, auto is the kernel's exactly where
/// /dev/vhost-net exists, on is the kernel's or a clear error.
#[test]
fn vhost_mode_picks_the_data_path_this_host_has() {
    let mem = crate::memory::create(16).unwrap().memory;
    let has_vhost = std::path::Path::new("/dev/vhost-net").exists();
    let make = |vhost| {
        Net::new(
            &NetConfig {
                tap_fd: private_tap(),
                mac: None,
                mtu: None,
                vhost,
            },
            &mem,
        )
    };
    assert!(!make(VhostMode::Off).unwrap().in_kernel());
    assert_eq!(make(VhostMode::Auto).unwrap().in_kernel(), has_vhost);
    match make(VhostMode::On) {
        Ok(net) => assert!(has_vhost && net.in_kernel()),
        Err(e) => {
            let e = e.to_string();
            assert!(!has_vhost && e.contains("/dev/vhost-net"), "{e}");
        }
    }
}
