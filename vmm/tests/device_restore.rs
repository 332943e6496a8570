//! Devices saved from a parked loop and restored into new ones, played against the
//! driver's side by hand. A restored virtio-blk goes on from the queue position it was
//! saved at. A restored vsock tells the guest its transport was reset, and holds a host
//! connection until the guest has handled that (Linux would otherwise accept the
//! connection and then kill it in the reset). A restored virtio-net (hull-vmm's own data
//! path) goes on from its queue positions on a new tap.

use std::io::Write;

mod common;
use common::{QUEUE_SIZE, bring_up, used_idx, w32};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use hull_vmm::devices::virtio::block::{Block, DiskConfig};
use hull_vmm::devices::virtio::mmio::{MmioTransport, QUEUE_NOTIFY};
use hull_vmm::devices::virtio::net::{Net, Tap, VNET_HDR_LEN};
use hull_vmm::devices::virtio::vsock::Vsock;
use hull_vmm::devices::virtio::{Interrupt, VirtioDevice};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const RX: u64 = 0;
const EVENT: u64 = 2;
const BUFFERS: u64 = 0x10_0000;
const OP_REQUEST: u16 = 1;

/// Publishes `count` device-writable buffers of `len` bytes on queue `q`, from `first`.
fn publish(mem: &GuestMemoryMmap, q: u64, first: u16, count: u16, len: u32, area: u64) {
    let base = q * 0x1000;
    for i in first..first + count {
        let d = base + u64::from(i) * 16;
        mem.write_obj(area + u64::from(i) * 0x1000, GuestAddress(d))
            .unwrap();
        mem.write_obj(len, GuestAddress(d + 8)).unwrap();
        mem.write_obj(2u16, GuestAddress(d + 12)).unwrap(); // WRITE
        let slot = u64::from(i % QUEUE_SIZE);
        mem.write_obj(i, GuestAddress(base + 0x404 + slot * 2))
            .unwrap();
    }
    mem.write_obj(first + count, GuestAddress(base + 0x402))
        .unwrap();
}

fn interrupt() -> Interrupt {
    Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())
}

#[test]
fn a_restored_vsock_resets_the_guest_transport_and_holds_host_connections_until_it_has() {
    let dir = tempfile::tempdir().unwrap();
    let mem = hull_vmm::memory::create(16).unwrap().memory;
    let rx_area = BUFFERS;
    let event_area = BUFFERS + 0x10_0000;
    publish(&mem, RX, 0, 4, 4096, rx_area);
    publish(&mem, EVENT, 0, 1, 8, event_area);

    let old = Vsock::new(3, dir.path().join("old.sock")).unwrap();
    let mut t = MmioTransport::new(Box::new(old), mem.clone(), interrupt()).unwrap();
    bring_up(&mut t, 3);
    let parked = t.pacer().unwrap().park("vsock").unwrap();
    let state = t.save(Some(&parked)).unwrap();
    drop(parked);
    drop(t);

    let new = Vsock::new(3, dir.path().join("new.sock")).unwrap();
    let probe = new.probe();
    let pacer = new.pacer().unwrap();
    let mut t = MmioTransport::restore(Box::new(new), mem.clone(), interrupt(), &state).unwrap();
    pacer.settle();
    assert_eq!(used_idx(&mem, EVENT), 1, "the reset event was sent");
    let id: u32 = mem.read_obj(GuestAddress(event_area)).unwrap();
    assert_eq!(id, 0, "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET");

    let mut host = UnixStream::connect(dir.path().join("new.sock")).unwrap();
    host.write_all(b"CONNECT 1024\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    pacer.settle();
    assert_eq!(
        used_idx(&mem, RX),
        0,
        "no connection request before the guest handled the reset"
    );
    assert_eq!(probe.load().0, 1, "the connection is held, and counted");

    // The guest gives the event buffer back and kicks the event queue.
    publish(&mem, EVENT, 1, 1, 8, event_area);
    w32(&mut t, QUEUE_NOTIFY, 2);
    pacer.settle();
    std::thread::sleep(Duration::from_millis(100));
    pacer.settle();
    assert_eq!(
        used_idx(&mem, RX),
        1,
        "the held connection reaches the guest"
    );
    let op: u16 = mem.read_obj(GuestAddress(rx_area + 30)).unwrap();
    let dst_port: u32 = mem.read_obj(GuestAddress(rx_area + 20)).unwrap();
    assert_eq!((op, dst_port), (OP_REQUEST, 1024));
}

/// Publishes a virtio-blk read of `sector` as avail entry `n`: header, 512-byte buffer,
/// status byte, in descriptors 3n..3n+2, all in the buffer area.
fn publish_read(mem: &GuestMemoryMmap, n: u16, sector: u64) -> (u64, u64) {
    let area = BUFFERS + u64::from(n) * 0x1000;
    let (header, data, status) = (area, area + 0x100, area + 0x400);
    mem.write_obj(0u32, GuestAddress(header)).unwrap(); // VIRTIO_BLK_T_IN
    mem.write_obj(sector, GuestAddress(header + 8)).unwrap();
    let chain = [(header, 16u32, 1u16), (data, 512, 1 | 2), (status, 1, 2)];
    for (i, (a, len, flags)) in chain.iter().enumerate() {
        let d = u64::from(n) * 3 + i as u64;
        mem.write_obj(*a, GuestAddress(d * 16)).unwrap();
        mem.write_obj(*len, GuestAddress(d * 16 + 8)).unwrap();
        mem.write_obj(*flags, GuestAddress(d * 16 + 12)).unwrap();
        let next = u16::try_from(d + 1).unwrap();
        mem.write_obj(next, GuestAddress(d * 16 + 14)).unwrap();
    }
    let slot = u64::from(n % QUEUE_SIZE);
    mem.write_obj(n * 3, GuestAddress(0x404 + slot * 2))
        .unwrap();
    mem.write_obj(n + 1, GuestAddress(0x402)).unwrap();
    (data, status)
}

#[test]
fn a_restored_disk_goes_on_from_its_queue_position() {
    let mut img = tempfile::NamedTempFile::new().unwrap();
    img.write_all(&[[b'a'; 512], [b'b'; 512]].concat()).unwrap();
    let cfg = DiskConfig {
        path: img.path().to_path_buf(),
        read_only: true,
    };
    let mem = hull_vmm::memory::create(16).unwrap().memory;
    let old = Block::open(&cfg).unwrap();
    let mut t = MmioTransport::new(Box::new(old), mem.clone(), interrupt()).unwrap();
    bring_up(&mut t, 1);
    let (data, _) = publish_read(&mem, 0, 0);
    let pacer = t.pacer().unwrap();
    w32(&mut t, QUEUE_NOTIFY, 0);
    pacer.settle();
    assert_eq!(used_idx(&mem, 0), 1);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(data)).unwrap(), b'a');
    // The guest reuses the buffer; a device that served request 0 again would overwrite it.
    mem.write_obj(b'z', GuestAddress(data)).unwrap();
    let first = data;
    let parked = pacer.park("virtio-blk").unwrap();
    let state = t.save(Some(&parked)).unwrap();
    drop(parked);
    drop(t);

    let new = Block::open(&cfg).unwrap();
    let pacer = new.pacer();
    let mut t = MmioTransport::restore(Box::new(new), mem.clone(), interrupt(), &state).unwrap();
    let (data, status) = publish_read(&mem, 1, 1);
    w32(&mut t, QUEUE_NOTIFY, 0);
    pacer.settle();
    assert_eq!(used_idx(&mem, 0), 2);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(first)).unwrap(),
        b'z',
        "the first request is not served again"
    );
    assert_eq!(mem.read_obj::<u8>(GuestAddress(data)).unwrap(), b'b');
    assert_eq!(mem.read_obj::<u8>(GuestAddress(status)).unwrap(), 0);
}

/// Publishes a TX frame of `len` bytes filled with `fill` (after its virtio-net header) as
/// avail entry `n` of queue 1, one descriptor in the buffer area.
fn publish_tx(mem: &GuestMemoryMmap, n: u16, fill: u8, len: usize) {
    let base = 0x1000;
    let area = BUFFERS + u64::from(n) * 0x1000;
    let mut frame = vec![0u8; VNET_HDR_LEN];
    frame.extend(std::iter::repeat_n(fill, len));
    mem.write_slice(&frame, GuestAddress(area)).unwrap();
    let d = base + u64::from(n) * 16;
    mem.write_obj(area, GuestAddress(d)).unwrap();
    mem.write_obj(u32::try_from(frame.len()).unwrap(), GuestAddress(d + 8))
        .unwrap();
    mem.write_obj(0u16, GuestAddress(d + 12)).unwrap();
    let slot = u64::from(n % QUEUE_SIZE);
    mem.write_obj(n, GuestAddress(base + 0x404 + slot * 2))
        .unwrap();
    mem.write_obj(n + 1, GuestAddress(base + 0x402)).unwrap();
}

fn recv_frame(peer: &std::os::unix::net::UnixDatagram) -> Option<Vec<u8>> {
    peer.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = peer.recv(&mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

#[test]
fn a_restored_nic_goes_on_from_its_queue_positions_on_a_new_tap() {
    use std::os::unix::net::UnixDatagram;
    let mem = hull_vmm::memory::create(16).unwrap().memory;
    let mac = [2, 0, 0, 0, 0, 9];
    let (a, old_peer) = UnixDatagram::pair().unwrap();
    let old = Net::with_tap(Tap::from_datagram_socket(a.into()).unwrap(), mac, None).unwrap();
    let mut t = MmioTransport::new(Box::new(old), mem.clone(), interrupt()).unwrap();
    bring_up(&mut t, 2);
    publish_tx(&mem, 0, b'a', 60);
    let pacer = t.pacer().expect("hull-vmm's own data path parks");
    w32(&mut t, QUEUE_NOTIFY, 1);
    pacer.settle();
    assert_eq!(used_idx(&mem, 1), 1);
    assert_eq!(recv_frame(&old_peer).unwrap()[VNET_HDR_LEN..], [b'a'; 60]);
    let parked = pacer.park("virtio-net").unwrap();
    let state = t.save(Some(&parked)).unwrap();
    drop(parked);
    drop(t);

    let (b, new_peer) = UnixDatagram::pair().unwrap();
    let new = Net::with_tap(Tap::from_datagram_socket(b.into()).unwrap(), mac, None).unwrap();
    let pacer = new.pacer().unwrap();
    let mut t = MmioTransport::restore(Box::new(new), mem.clone(), interrupt(), &state).unwrap();
    publish_tx(&mem, 1, b'b', 60);
    w32(&mut t, QUEUE_NOTIFY, 1);
    pacer.settle();
    assert_eq!(used_idx(&mem, 1), 2);
    assert_eq!(
        recv_frame(&new_peer).unwrap()[VNET_HDR_LEN..],
        [b'b'; 60],
        "the new tap gets the next frame"
    );
    assert!(
        recv_frame(&new_peer).is_none(),
        "the frame sent before the snapshot is not sent again"
    );
}
