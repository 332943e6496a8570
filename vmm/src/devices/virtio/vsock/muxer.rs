//! The host side of the vsock device: the hybrid unix listener, the unix streams of each
//! connection, and the translation between their bytes and vsock packets.
//!
//! The guest is hostile, so everything it can make the host hold is bounded: per
//! connection, guest bytes buffered for a slow host stream never exceed the `buf_alloc`
//! advertised to the guest (a guest that sends past its credit gets the connection reset);
//! replies waiting for RX buffers are capped; connections per VM are capped; and a host
//! stream the guest has no credit for is taken off epoll, so a hang-up cannot spin.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::packet::*;
use crate::devices::virtio::Interrupt;

const HOST_CID: u64 = 2;
/// Receive buffer the host side advertises per connection.
const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// Longest `CONNECT <port>\n` line accepted.
const MAX_CONNECT_LINE: usize = 32;
/// Host ports handed to host-initiated connections lie at or above this.
const FIRST_HOST_PORT: u32 = 1 << 30;

/// Where this muxer's host ports start: at a random place in [2^30, 2^31). A VM restored
/// from a snapshot still knows the old VMM's connections for a moment (closing sockets
/// linger in the guest after its transport reset); a new connection that reused one of
/// their port pairs would be refused by the guest.
fn first_host_port() -> u32 {
    let mut b = [0u8; 4];
    let r = if crate::devices::virtio::random_fill(&mut b) {
        u32::from_ne_bytes(b)
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    };
    FIRST_HOST_PORT + (r % FIRST_HOST_PORT)
}
/// Connections (both directions, handshakes included) one VM may hold at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Guest bytes held for slow host streams, all connections of the VM together: below
/// `MAX_CONNECTIONS × CONN_BUF_ALLOC`, so a guest that fills every connection's credit
/// gets connections reset instead of growing the VMM by a quarter GiB.
pub const MAX_BUFFERED_BYTES: usize = 16 << 20;
/// Packets waiting for guest RX buffers; past this, replies are dropped (and the
/// connection they belong to closed).
pub const MAX_PENDING_CONTROL: usize = 2 * MAX_CONNECTIONS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    local: u32,
    peer: u32,
}

struct Conn {
    stream: UnixStream,
    established: bool,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes sent to the guest.
    rx_cnt: u32,
    /// Bytes delivered to the host stream, and the count last told to the guest.
    fwd_cnt: u32,
    told_fwd_cnt: u32,
    /// Guest bytes the host stream did not take yet (at most `CONN_BUF_ALLOC`).
    out: Vec<u8>,
    /// The events the stream is registered for; empty: not on epoll at all.
    watched: EventSet,
    /// SHUTDOWN flags the guest sent whose effect waits for `out` to drain: bytes it
    /// sent before its shutdown still reach the host stream.
    peer_shutdown: u32,
}

impl Conn {
    fn new(stream: UnixStream, established: bool) -> Conn {
        Conn {
            stream,
            established,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            told_fwd_cnt: 0,
            out: Vec::new(),
            watched: EventSet::empty(),
            peer_shutdown: 0,
        }
    }

    fn credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.rx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }
}

/// The queues while the driver runs.
pub struct Active {
    pub mem: GuestMemoryMmap,
    pub rx: Queue,
    pub tx: Queue,
    /// The event queue: used once, for the TRANSPORT_RESET a restored guest gets.
    pub event: Queue,
    pub interrupt: Interrupt,
    /// A restored VM: the guest's connections died with the old VMM; tell it so.
    pub transport_reset: bool,
}

/// virtio_vsock_event id: every connection is gone (the guest re-reads its cid and
/// resets its sockets; listeners stay).
const EVENT_TRANSPORT_RESET: u32 = 0;

enum Token {
    Listener,
    Handshake(UnixStream, Vec<u8>),
    Conn(Key),
}

pub struct Muxer {
    cid: u64,
    uds: PathBuf,
    epoll: Arc<Epoll>,
    listener: UnixListener,
    active: Option<Active>,
    conns: HashMap<Key, Conn>,
    fds: HashMap<RawFd, Token>,
    /// Packets for the guest waiting for RX buffers.
    control: VecDeque<Packet>,
    rx_starved: bool,
    next_port: u32,
    /// The sum of every connection's `out`.
    buffered: usize,
    /// A transport reset was sent and the guest has not yet handled it (it gives the
    /// event buffer back when it has): a connection accepted before would die in the
    /// reset, so host connections wait in `held` until then.
    reset_pending: bool,
    held: Vec<(UnixStream, u32)>,
}

impl Muxer {
    pub fn new(cid: u64, uds: PathBuf) -> std::io::Result<Muxer> {
        let _ = std::fs::remove_file(&uds);
        let listener = UnixListener::bind(&uds)?;
        listener.set_nonblocking(true)?;
        let epoll = Arc::new(Epoll::new()?);
        let mut m = Muxer {
            cid,
            uds,
            epoll,
            listener,
            active: None,
            conns: HashMap::new(),
            fds: HashMap::new(),
            control: VecDeque::new(),
            rx_starved: false,
            reset_pending: false,
            held: Vec::new(),
            next_port: first_host_port(),
            buffered: 0,
        };
        let fd = m.listener.as_raw_fd();
        m.watch(fd, EventSet::IN, ControlOperation::Add)?;
        m.fds.insert(fd, Token::Listener);
        Ok(m)
    }

    fn watch(&self, fd: RawFd, events: EventSet, op: ControlOperation) -> std::io::Result<()> {
        self.epoll
            .ctl(op, fd, EpollEvent::new(events, fd_token(fd)))
    }

    /// Takes the queues and serves what the driver published before its first kick.
    pub fn activate(&mut self, active: Active) {
        let reset = active.transport_reset;
        self.active = Some(active);
        self.rx_starved = false;
        if reset {
            self.send_transport_reset();
        }
        self.process_tx();
    }

    /// The queues as the device holds them (RX, TX, event), for a snapshot.
    pub fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        let a = self.active.as_ref()?;
        Some(vec![a.rx.state(), a.tx.state(), a.event.state()])
    }

    fn send_transport_reset(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mem = a.mem.clone();
        let Some(chain) = a.event.pop_descriptor_chain(&mem) else {
            tracing::warn!("vsock: no event buffer for the transport reset");
            return;
        };
        let head = chain.head_index();
        let written = chain
            .writable()
            .next()
            .filter(|d| d.len() >= 4)
            .and_then(|d| {
                use vm_memory::Bytes;
                mem.write_obj(EVENT_TRANSPORT_RESET.to_le(), d.addr()).ok()
            })
            .map_or(0, |()| 4);
        let _ = a.event.add_used(&mem, head, written);
        a.interrupt.signal_used();
        self.reset_pending = true;
    }

    pub fn reset(&mut self) {
        self.active = None;
        self.reset_pending = false;
        self.held.clear();
        self.control.clear();
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for k in keys {
            self.drop_conn(k);
        }
    }

    // ---------------------------------------------------------------- guest → host

    pub fn process_tx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mem = a.mem.clone();
        let mut packets = Vec::new();
        let mut used = false;
        while let Some(mut chain) = a.tx.pop_descriptor_chain(&mem) {
            let head = chain.head_index();
            if let Some(p) = Packet::from_tx(&mem, &mut chain) {
                packets.push(p);
            }
            // A malformed chain is dropped: returned to the guest, unread.
            let _ = a.tx.add_used(&mem, head, 0);
            used = true;
        }
        if used {
            a.interrupt.signal_used();
        }
        for p in packets {
            self.handle_guest_packet(p);
        }
        self.fill_rx();
    }

    fn handle_guest_packet(&mut self, p: Packet) {
        p.trace("from the guest");
        if p.src_cid != self.cid || p.dst_cid != HOST_CID {
            return;
        }
        let key = Key {
            local: p.dst_port,
            peer: p.src_port,
        };
        if p.type_ != TYPE_STREAM {
            self.reply(key, OP_RST, 0);
            return;
        }
        if let Some(c) = self.conns.get_mut(&key) {
            c.peer_buf_alloc = p.buf_alloc;
            c.peer_fwd_cnt = p.fwd_cnt;
        }
        match (p.op, self.conns.contains_key(&key)) {
            (OP_REQUEST, false) => self.guest_connects(key),
            (OP_RESPONSE, true) => {
                let c = self.conns.get_mut(&key).expect("present");
                if c.established {
                    self.reset_conn(key);
                    return;
                }
                c.established = true;
                let ok = format!("OK {}\n", key.local);
                if c.stream.write_all(ok.as_bytes()).is_err() {
                    self.reset_conn(key);
                    return;
                }
                self.set_interest(key, EventSet::IN | EventSet::READ_HANG_UP);
            }
            (OP_RW, true) if self.conns[&key].established => {
                let c = self.conns.get_mut(&key).expect("present");
                if c.peer_shutdown & SHUTDOWN_SEND != 0 {
                    // Bytes after its own end of stream: the guest broke the protocol.
                    self.reset_conn(key);
                    return;
                }
                if c.out.len() + p.data.len() > CONN_BUF_ALLOC as usize {
                    // Past the credit the host gave: the guest broke the protocol.
                    tracing::debug!(port = key.local, "vsock: guest sent past its credit");
                    self.reset_conn(key);
                    return;
                }
                if self.buffered + p.data.len() > MAX_BUFFERED_BYTES {
                    tracing::debug!(port = key.local, "vsock: VM buffer budget spent");
                    self.reset_conn(key);
                    return;
                }
                self.buffered += p.data.len();
                c.out.extend_from_slice(&p.data);
                self.flush(key);
            }
            (OP_CREDIT_UPDATE, true) => {}
            (OP_CREDIT_REQUEST, true) => self.reply(key, OP_CREDIT_UPDATE, 0),
            (OP_SHUTDOWN, true) => {
                let c = self.conns.get_mut(&key).expect("present");
                c.peer_shutdown |= p.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                self.refresh_interest(key);
                self.finish_shutdown(key);
            }
            (OP_RST, true) => self.drop_conn(key),
            (OP_RST, false) => {}
            _ => self.reply(key, OP_RST, 0),
        }
    }

    /// Carries out the guest's shutdown once every byte it sent before is on the host
    /// stream: no more guest bytes (the stream's write side closes); both directions shut
    /// down: the connection goes, with the RST the guest waits for.
    fn finish_shutdown(&mut self, key: Key) {
        let Some(c) = self.conns.get(&key).filter(|c| c.out.is_empty()) else {
            return;
        };
        if c.peer_shutdown & (SHUTDOWN_RCV | SHUTDOWN_SEND) == SHUTDOWN_RCV | SHUTDOWN_SEND {
            self.reset_conn(key);
        } else if c.peer_shutdown & SHUTDOWN_SEND != 0 {
            let _ = c.stream.shutdown(Shutdown::Write);
        }
    }

    /// A guest connection to host port P goes to `<uds>_P`.
    fn guest_connects(&mut self, key: Key) {
        if self.connection_count() >= MAX_CONNECTIONS {
            tracing::debug!(port = key.local, "vsock: connection limit reached");
            self.reply(key, OP_RST, 0);
            return;
        }
        let path = format!("{}_{}", self.uds.display(), key.local);
        match UnixStream::connect(&path).and_then(|s| s.set_nonblocking(true).map(|_| s)) {
            Ok(stream) => {
                let fd = stream.as_raw_fd();
                self.conns.insert(key, Conn::new(stream, true));
                self.fds.insert(fd, Token::Conn(key));
                self.set_interest(key, EventSet::IN | EventSet::READ_HANG_UP);
                self.reply(key, OP_RESPONSE, 0);
            }
            Err(_) => self.reply(key, OP_RST, 0),
        }
    }

    /// Writes pending guest bytes to the host stream; counts what it took.
    fn flush(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let mut written = 0;
        while written < c.out.len() {
            match c.stream.write(&c.out[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.reset_conn(key);
                    return;
                }
            }
        }
        c.out.drain(..written);
        self.buffered -= written;
        if c.out.is_empty() && c.out.capacity() > 64 * 1024 {
            // A burst's buffer goes back; an idle connection holds nothing.
            c.out = Vec::new();
        }
        c.fwd_cnt = c.fwd_cnt.wrapping_add(count32(written));
        let tell = c.fwd_cnt.wrapping_sub(c.told_fwd_cnt) >= CONN_BUF_ALLOC / 2;
        let drained_after_shutdown = c.out.is_empty() && c.peer_shutdown != 0;
        self.refresh_interest(key);
        if drained_after_shutdown {
            self.finish_shutdown(key);
        } else if tell {
            self.reply(key, OP_CREDIT_UPDATE, 0);
        }
    }

    // ---------------------------------------------------------------- host → guest

    fn reply(&mut self, key: Key, op: u16, flags: u32) {
        let p = self.packet_for(key, op, flags, Vec::new());
        self.queue_control(p);
    }

    /// Queues a packet for the guest, unless the guest has let too many pile up (it posts
    /// no RX buffers): then the packet is dropped and its connection closed on the host.
    fn queue_control(&mut self, p: Packet) {
        if self.control.len() >= MAX_PENDING_CONTROL {
            let key = Key {
                local: p.src_port,
                peer: p.dst_port,
            };
            tracing::debug!(
                port = key.local,
                "vsock: reply queue full; dropping a reply"
            );
            self.drop_conn(key);
            return;
        }
        self.control.push_back(p);
    }

    fn connection_count(&self) -> usize {
        self.conns.len()
            + self.held.len()
            + self
                .fds
                .values()
                .filter(|t| matches!(t, Token::Handshake(..)))
                .count()
    }

    /// Registers the connection's stream for `events`, or takes it off epoll entirely when
    /// there is nothing to wait for (a hang-up would otherwise be reported forever).
    fn set_interest(&mut self, key: Key, events: EventSet) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.watched == events {
            return;
        }
        let fd = c.stream.as_raw_fd();
        let op = match (c.watched.is_empty(), events.is_empty()) {
            (true, _) => ControlOperation::Add,
            (false, true) => ControlOperation::Delete,
            (false, false) => ControlOperation::Modify,
        };
        c.watched = events;
        let _ = self
            .epoll
            .ctl(op, fd, EpollEvent::new(events, fd_token(fd)));
    }

    fn packet_for(&mut self, key: Key, op: u16, flags: u32, data: Vec<u8>) -> Packet {
        let fwd_cnt = match self.conns.get_mut(&key) {
            Some(c) => {
                c.told_fwd_cnt = c.fwd_cnt;
                c.fwd_cnt
            }
            None => 0,
        };
        Packet {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: key.local,
            dst_port: key.peer,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt,
            data,
        }
    }

    pub fn rx_buffers_added(&mut self) {
        self.rx_starved = false;
        self.fill_rx();
    }

    /// Moves queued control packets and readable host data into the guest's RX buffers.
    pub fn fill_rx(&mut self) {
        // Chains borrow the memory they point into; a clone (a few Arcs) keeps that borrow
        // off `self`, which the packet sources need.
        let Some(mem) = self.active.as_ref().map(|a| a.mem.clone()) else {
            return;
        };
        let mut used = false;
        let mut order: Vec<Key> = self.conns.keys().copied().collect();
        order.sort_by_key(|k| (k.local, k.peer));
        loop {
            let a = self.active.as_mut().expect("active");
            let Some(mut chain) = a.rx.pop_descriptor_chain(&mem) else {
                if !self.control.is_empty() {
                    tracing::debug!(waiting = self.control.len(), "vsock: no RX buffers");
                }
                self.rx_starved = true;
                break;
            };
            let head = chain.head_index();
            let Some(capacity) = Packet::rx_capacity(&mem, &mut chain.clone()) else {
                // Unusable buffer: give it back empty.
                let _ = a.rx.add_used(&mem, head, 0);
                used = true;
                continue;
            };
            let packet = match self.control.pop_front() {
                Some(p) => Some(p),
                None => self.read_host_data(&order, capacity),
            };
            let a = self.active.as_mut().expect("active");
            match packet {
                Some(p) => {
                    p.trace("to the guest");
                    let len = p.write_rx(&mem, &mut chain).unwrap_or(0);
                    let _ = a.rx.add_used(&mem, head, len);
                    used = true;
                }
                None => {
                    a.rx.go_to_previous_position();
                    break;
                }
            }
        }
        if used && let Some(a) = &self.active {
            a.interrupt.signal_used();
        }
        self.update_read_interest();
    }

    /// Reads from the first established connection with data and credit.
    fn read_host_data(&mut self, order: &[Key], capacity: usize) -> Option<Packet> {
        for key in order {
            let Some(c) = self.conns.get_mut(key) else {
                continue;
            };
            let room = capacity.min(c.credit() as usize);
            if !c.established || room == 0 || c.peer_shutdown & SHUTDOWN_RCV != 0 {
                continue;
            }
            let mut buf = vec![0u8; room];
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    // The host closed its end: tell the guest, then forget the connection.
                    let key = *key;
                    let shutdown =
                        self.packet_for(key, OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND, Vec::new());
                    let rst = self.packet_for(key, OP_RST, 0, Vec::new());
                    self.drop_conn(key);
                    self.queue_control(rst);
                    return Some(shutdown);
                }
                Ok(n) => {
                    buf.truncate(n);
                    c.rx_cnt = c.rx_cnt.wrapping_add(count32(n));
                    let key = *key;
                    return Some(self.packet_for(key, OP_RW, 0, buf));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                Err(_) => {
                    let key = *key;
                    self.reset_conn(key);
                    return self.control.pop_front();
                }
            }
        }
        None
    }

    /// Read host streams only while the guest can take their bytes: otherwise epoll would
    /// report them readable (or hung up) forever. A stream with neither credit nor pending
    /// output is not on epoll at all.
    fn update_read_interest(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for k in keys {
            self.refresh_interest(k);
        }
    }

    /// What one established connection's stream waits for now (see
    /// `update_read_interest`); the per-packet path refreshes just its own connection.
    fn refresh_interest(&mut self, key: Key) {
        let Some(c) = self.conns.get(&key).filter(|c| c.established) else {
            return;
        };
        let mut events = EventSet::empty();
        if !self.rx_starved && c.credit() > 0 && c.peer_shutdown & SHUTDOWN_RCV == 0 {
            events |= EventSet::IN | EventSet::READ_HANG_UP;
        }
        if !c.out.is_empty() {
            events |= EventSet::OUT;
        }
        self.set_interest(key, events);
    }

    fn reset_conn(&mut self, key: Key) {
        self.drop_conn(key);
        let p = self.packet_for(key, OP_RST, 0, Vec::new());
        self.queue_control(p);
    }

    fn drop_conn(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            self.buffered -= c.out.len();
            let fd = c.stream.as_raw_fd();
            if !c.watched.is_empty() {
                let _ = self.watch(fd, EventSet::empty(), ControlOperation::Delete);
            }
            self.fds.remove(&fd);
        }
    }

    /// Open connections and pending replies, for tests and metrics.
    pub fn load(&self) -> (usize, usize) {
        (self.conns.len() + self.held.len(), self.control.len())
    }

    /// Guest bytes held for host streams.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    // ---------------------------------------------------------------- host sockets

    fn accept(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            if self.connection_count() >= MAX_CONNECTIONS || stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            if self
                .watch(
                    fd,
                    EventSet::IN | EventSet::READ_HANG_UP,
                    ControlOperation::Add,
                )
                .is_ok()
            {
                self.fds.insert(fd, Token::Handshake(stream, Vec::new()));
            }
        }
    }

    /// Reads the `CONNECT <port>\n` line, byte by byte: what follows belongs to the guest.
    fn handshake(&mut self, fd: RawFd) {
        let Some(Token::Handshake(stream, line)) = self.fds.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let port = loop {
            match stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break parse_connect(line),
                Ok(1) if line.len() < MAX_CONNECT_LINE => line.push(byte[0]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                _ => break None, // EOF, error or an overlong line
            }
        };
        let Some(Token::Handshake(stream, _)) = self.fds.remove(&fd) else {
            return;
        };
        let _ = self.watch(fd, EventSet::empty(), ControlOperation::Delete);
        let (Some(port), true) = (port, self.active.is_some()) else {
            return;
        };
        if self.reset_pending {
            self.held.push((stream, port));
            return;
        }
        self.open_host_conn(stream, port);
    }

    /// The guest handled the transport reset (it gave an event buffer back): the host
    /// connections that waited for it go to the guest now.
    pub fn event_buffers_added(&mut self) {
        if !std::mem::take(&mut self.reset_pending) {
            return;
        }
        for (stream, port) in std::mem::take(&mut self.held) {
            self.open_host_conn(stream, port);
        }
    }

    /// Asks the guest to accept a host connection to its `port`.
    fn open_host_conn(&mut self, stream: UnixStream, port: u32) {
        let fd = stream.as_raw_fd();
        let local = self.next_port;
        self.next_port = self.next_port.checked_add(1).unwrap_or(FIRST_HOST_PORT);
        let key = Key { local, peer: port };
        self.conns.insert(key, Conn::new(stream, false));
        self.fds.insert(fd, Token::Conn(key));
        // Not read until the guest accepts: only a hang-up matters meanwhile.
        self.set_interest(key, EventSet::READ_HANG_UP);
        self.reply(key, OP_REQUEST, 0);
        self.fill_rx();
    }

    fn conn_event(&mut self, key: Key, events: EventSet) {
        if events.contains(EventSet::OUT) {
            self.flush(key);
        }
        let established = self.conns.get(&key).is_some_and(|c| c.established);
        if events.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP) {
            if established {
                self.fill_rx();
            } else if events.intersects(EventSet::READ_HANG_UP | EventSet::HANG_UP) {
                // The host gave up before the guest answered.
                self.reset_conn(key);
                self.fill_rx();
            }
        }
    }

    fn dispatch(&mut self, fd: RawFd, events: EventSet) {
        match self.fds.get(&fd) {
            Some(Token::Listener) => self.accept(),
            Some(Token::Handshake(..)) => self.handshake(fd),
            Some(Token::Conn(key)) => {
                let key = *key;
                self.conn_event(key, events);
            }
            None => {}
        }
    }
}

fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    text.strip_prefix("CONNECT ")?.trim().parse().ok()
}

impl Muxer {
    /// The muxer's own epoll set of host sockets: the device loop watches it as one source.
    pub fn host_events(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Serves the host sockets that are ready, without waiting.
    pub fn handle_host_events(&mut self) {
        let mut events = [EpollEvent::default(); 64];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => return,
            Err(e) => {
                tracing::error!(error = %e, "vsock: waiting on host sockets");
                return;
            }
        };
        for ev in &events[..n] {
            if let Ok(fd) = RawFd::try_from(ev.data()) {
                self.dispatch(fd, ev.event_set());
            }
        }
    }
}

/// The epoll token of a watched fd (fds are never negative).
fn fd_token(fd: RawFd) -> u64 {
    u64::try_from(fd).unwrap_or(u64::MAX)
}

/// A byte count as vsock's credit counters take it: they count modulo 2^32.
#[expect(
    clippy::cast_possible_truncation,
    reason = "the counters wrap by design (virtio 5.10.6.3)"
)]
fn count32(n: usize) -> u32 {
    n as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect(b"CONNECT x"), None);
        assert_eq!(parse_connect(b"connect 1"), None);
        assert_eq!(parse_connect(&[0xff, 0xfe]), None);
    }

    fn guest_packet(src_port: u32, dst_port: u32, op: u16, data: Vec<u8>) -> Packet {
        Packet {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: 0,
            data,
        }
    }

    /// A muxer whose host side listens on port 1234 (accepting in a thread, keeping each
    /// stream unread), and the accepted streams.
    fn muxer_with_host_service(
        dir: &std::path::Path,
    ) -> (Muxer, std::sync::mpsc::Receiver<UnixStream>) {
        let uds = dir.join("v.sock");
        let host = UnixListener::bind(format!("{}_1234", uds.display())).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for s in host.incoming() {
                if tx.send(s.unwrap()).is_err() {
                    return;
                }
            }
        });
        (Muxer::new(3, uds).unwrap(), rx)
    }

    fn raise_fd_limit() {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit read or write the one struct passed.
        unsafe {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
            lim.rlim_cur = lim.rlim_max.min(1 << 16);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }

    /// A guest that keeps sending to a host stream nobody reads is held to the credit the
    /// host advertised: the host never buffers more, and resets the connection.
    #[test]
    fn guest_sending_past_its_credit_is_reset() {
        let dir = tempfile::tempdir().unwrap();
        let (mut m, _accepted) = muxer_with_host_service(dir.path());
        m.handle_guest_packet(guest_packet(5000, 1234, OP_REQUEST, Vec::new()));
        assert_eq!(m.load().0, 1);
        let chunk = vec![0x41u8; MAX_PKT_DATA as usize];
        let mut reset = false;
        for _ in 0..200 {
            m.handle_guest_packet(guest_packet(5000, 1234, OP_RW, chunk.clone()));
            match m.conns.values().next() {
                Some(c) => assert!(c.out.len() <= CONN_BUF_ALLOC as usize),
                None => {
                    reset = true;
                    break;
                }
            }
        }
        assert!(reset, "12 MiB past a 256 KiB credit and still connected");
        assert!(
            m.control
                .iter()
                .any(|p| p.op == OP_RST && p.dst_port == 5000)
        );
    }

    /// Many connections, each filled up to its credit, never make the VMM hold more than
    /// its per-VM budget.
    #[test]
    fn guest_bytes_held_per_vm_are_capped() {
        raise_fd_limit();
        let dir = tempfile::tempdir().unwrap();
        let (mut m, _accepted) = muxer_with_host_service(dir.path());
        let chunk = vec![0x42u8; MAX_PKT_DATA as usize];
        let mut most = 0;
        // The host streams' socket buffers take ~200 KiB each; the rest of each
        // connection's 256 KiB credit stays in the VMM: 800 of them would hold ~40 MiB.
        for port in 0..800u32 {
            m.handle_guest_packet(guest_packet(20_000 + port, 1234, OP_REQUEST, Vec::new()));
            for _ in 0..(CONN_BUF_ALLOC / MAX_PKT_DATA) {
                m.handle_guest_packet(guest_packet(20_000 + port, 1234, OP_RW, chunk.clone()));
                assert!(m.buffered() <= MAX_BUFFERED_BYTES);
                most = most.max(m.buffered());
            }
        }
        let held: usize = m.conns.values().map(|c| c.out.len()).sum();
        assert_eq!(held, m.buffered());
        assert!(
            most > MAX_BUFFERED_BYTES - MAX_PKT_DATA as usize,
            "the budget never bound: at most {most} bytes held"
        );
    }

    #[test]
    fn connections_per_vm_are_capped() {
        raise_fd_limit();
        let dir = tempfile::tempdir().unwrap();
        let (mut m, accepted) = muxer_with_host_service(dir.path());
        for port in 0..(u32::try_from(MAX_CONNECTIONS).unwrap() + 50) {
            m.handle_guest_packet(guest_packet(10_000 + port, 1234, OP_REQUEST, Vec::new()));
        }
        assert_eq!(m.load().0, MAX_CONNECTIONS);
        let refused = m
            .control
            .iter()
            .filter(|p| {
                p.op == OP_RST && p.dst_port >= 10_000 + u32::try_from(MAX_CONNECTIONS).unwrap()
            })
            .count();
        assert_eq!(refused, 50);
        drop(accepted);
    }

    /// A guest that posts no RX buffers and keeps provoking replies cannot grow the
    /// reply queue without bound.
    #[test]
    fn replies_waiting_for_rx_buffers_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Muxer::new(3, dir.path().join("v.sock")).unwrap();
        for port in 0..(3 * u32::try_from(MAX_PENDING_CONTROL).unwrap()) {
            // RW on a connection that does not exist: each earns an RST.
            m.handle_guest_packet(guest_packet(port, 77, OP_RW, vec![1]));
        }
        assert_eq!(m.load().1, MAX_PENDING_CONTROL);
    }

    /// A host stream that hung up while the guest gives no credit is taken off epoll:
    /// nothing keeps reporting it, so the event loop sleeps instead of spinning.
    #[test]
    fn hang_up_without_credit_does_not_spin() {
        let dir = tempfile::tempdir().unwrap();
        let (mut m, accepted) = muxer_with_host_service(dir.path());
        let mut p = guest_packet(5000, 1234, OP_REQUEST, Vec::new());
        p.buf_alloc = 0;
        m.handle_guest_packet(p);
        let host_end = accepted.recv().unwrap();
        drop(host_end);
        m.update_read_interest();
        let mut events = vec![EpollEvent::default(); 8];
        let n = m.epoll.wait(50, &mut events).unwrap();
        let conn_events = events[..n]
            .iter()
            .filter(|e| {
                matches!(
                    m.fds.get(&RawFd::try_from(e.data()).unwrap()),
                    Some(Token::Conn(_))
                )
            })
            .count();
        assert_eq!(
            conn_events, 0,
            "a connection without credit is still polled"
        );
    }

    /// What the guest sent before it shut the connection down reaches the host stream
    /// whole, however slowly the host reads; only then does the stream end and the guest
    /// get its RST.
    #[test]
    fn guest_bytes_sent_before_a_shutdown_are_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let (mut m, accepted) = muxer_with_host_service(dir.path());
        m.handle_guest_packet(guest_packet(5000, 1234, OP_REQUEST, Vec::new()));
        let mut host_end = accepted.recv().unwrap();
        let mut sent = Vec::new();
        for i in 0..(CONN_BUF_ALLOC / MAX_PKT_DATA) {
            let chunk = vec![u8::try_from(i % 251).unwrap(); MAX_PKT_DATA as usize];
            sent.extend_from_slice(&chunk);
            m.handle_guest_packet(guest_packet(5000, 1234, OP_RW, chunk));
        }
        assert!(m.buffered() > 0, "the host stream's buffer took everything");
        let mut shutdown = guest_packet(5000, 1234, OP_SHUTDOWN, Vec::new());
        shutdown.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
        m.handle_guest_packet(shutdown);
        assert_eq!(m.load().0, 1, "the connection went with bytes undelivered");

        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            host_end.read_to_end(&mut got).unwrap();
            got
        });
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while m.load().0 > 0 && std::time::Instant::now() < until {
            let mut events = vec![EpollEvent::default(); 8];
            let _ = m.epoll.wait(50, &mut events);
            m.handle_host_events();
        }
        assert_eq!(
            m.load().0,
            0,
            "the connection outlived its drained shutdown"
        );
        assert_eq!(reader.join().unwrap(), sent);
        assert!(
            m.control
                .iter()
                .any(|p| p.op == OP_RST && p.dst_port == 5000)
        );
    }

    /// Bytes after the guest's own end of stream break the protocol: the connection is
    /// reset.
    #[test]
    fn guest_bytes_after_its_shutdown_reset_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (mut m, _accepted) = muxer_with_host_service(dir.path());
        m.handle_guest_packet(guest_packet(5000, 1234, OP_REQUEST, Vec::new()));
        let mut shutdown = guest_packet(5000, 1234, OP_SHUTDOWN, Vec::new());
        shutdown.flags = SHUTDOWN_SEND;
        m.handle_guest_packet(shutdown);
        assert_eq!(m.load().0, 1);
        m.handle_guest_packet(guest_packet(5000, 1234, OP_RW, vec![1, 2, 3]));
        assert_eq!(m.load().0, 0);
    }

    #[test]
    fn credit_accounting_wraps() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = Conn::new(a, true);
        c.peer_buf_alloc = 1000;
        c.rx_cnt = u32::MAX - 99;
        c.peer_fwd_cnt = u32::MAX - 199;
        assert_eq!(c.credit(), 900);
        c.rx_cnt = c.rx_cnt.wrapping_add(1000);
        assert_eq!(c.credit(), 0);
    }
}
