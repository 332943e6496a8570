//! The host side of the vsock device: the hybrid unix listener, the unix streams of each
//! connection, and the translation between their bytes and vsock packets.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

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
/// Host ports handed to host-initiated connections start here.
const FIRST_HOST_PORT: u32 = 1 << 30;

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
    /// Guest bytes the host stream did not take yet.
    out: Vec<u8>,
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
        }
    }

    fn credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.rx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }
}

struct Active {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    interrupt: Interrupt,
}

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
            next_port: FIRST_HOST_PORT,
        };
        let fd = m.listener.as_raw_fd();
        m.watch(fd, EventSet::IN, ControlOperation::Add)?;
        m.fds.insert(fd, Token::Listener);
        Ok(m)
    }

    fn watch(&self, fd: RawFd, events: EventSet, op: ControlOperation) -> std::io::Result<()> {
        self.epoll.ctl(op, fd, EpollEvent::new(events, fd as u64))
    }

    pub fn activate(&mut self, mem: GuestMemoryMmap, rx: Queue, tx: Queue, interrupt: Interrupt) {
        self.active = Some(Active {
            mem,
            rx,
            tx,
            interrupt,
        });
        self.rx_starved = false;
    }

    pub fn reset(&mut self) {
        self.active = None;
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
                let fd = c.stream.as_raw_fd();
                let _ = self.watch(
                    fd,
                    EventSet::IN | EventSet::READ_HANG_UP,
                    ControlOperation::Modify,
                );
            }
            (OP_RW, true) if self.conns[&key].established => {
                let c = self.conns.get_mut(&key).expect("present");
                c.out.extend_from_slice(&p.data);
                self.flush(key);
            }
            (OP_CREDIT_UPDATE, true) => {}
            (OP_CREDIT_REQUEST, true) => self.reply(key, OP_CREDIT_UPDATE, 0),
            (OP_SHUTDOWN, true) => {
                if p.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND) == SHUTDOWN_RCV | SHUTDOWN_SEND {
                    self.reset_conn(key);
                } else if p.flags & SHUTDOWN_SEND != 0 {
                    let _ = self.conns[&key].stream.shutdown(Shutdown::Write);
                }
            }
            (OP_RST, true) => self.drop_conn(key),
            (OP_RST, false) => {}
            _ => self.reply(key, OP_RST, 0),
        }
    }

    /// A guest connection to host port P goes to `<uds>_P`.
    fn guest_connects(&mut self, key: Key) {
        let path = format!("{}_{}", self.uds.display(), key.local);
        match UnixStream::connect(&path).and_then(|s| s.set_nonblocking(true).map(|_| s)) {
            Ok(stream) => {
                let fd = stream.as_raw_fd();
                self.conns.insert(key, Conn::new(stream, true));
                self.fds.insert(fd, Token::Conn(key));
                let _ = self.watch(
                    fd,
                    EventSet::IN | EventSet::READ_HANG_UP,
                    ControlOperation::Add,
                );
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
        c.fwd_cnt = c.fwd_cnt.wrapping_add(written as u32);
        let fd = c.stream.as_raw_fd();
        let mut events = EventSet::IN | EventSet::READ_HANG_UP;
        if !c.out.is_empty() {
            events |= EventSet::OUT;
        }
        let tell = c.fwd_cnt.wrapping_sub(c.told_fwd_cnt) >= CONN_BUF_ALLOC / 2;
        let _ = self.watch(fd, events, ControlOperation::Modify);
        if tell {
            self.reply(key, OP_CREDIT_UPDATE, 0);
        }
    }

    // ---------------------------------------------------------------- host → guest

    fn reply(&mut self, key: Key, op: u16, flags: u32) {
        let p = self.packet_for(key, op, flags, Vec::new());
        self.control.push_back(p);
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
            if !c.established || room == 0 {
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
                    self.control.push_back(rst);
                    return Some(shutdown);
                }
                Ok(n) => {
                    buf.truncate(n);
                    c.rx_cnt = c.rx_cnt.wrapping_add(n as u32);
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
    /// report them readable forever.
    fn update_read_interest(&mut self) {
        for c in self.conns.values() {
            if !c.established {
                continue;
            }
            let mut events = EventSet::READ_HANG_UP;
            if !self.rx_starved && c.credit() > 0 {
                events |= EventSet::IN;
            }
            if !c.out.is_empty() {
                events |= EventSet::OUT;
            }
            let _ = self.watch(c.stream.as_raw_fd(), events, ControlOperation::Modify);
        }
    }

    fn reset_conn(&mut self, key: Key) {
        self.drop_conn(key);
        let p = self.packet_for(key, OP_RST, 0, Vec::new());
        self.control.push_back(p);
    }

    fn drop_conn(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            let fd = c.stream.as_raw_fd();
            let _ = self.watch(fd, EventSet::empty(), ControlOperation::Delete);
            self.fds.remove(&fd);
        }
    }

    // ---------------------------------------------------------------- host sockets

    fn accept(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            if stream.set_nonblocking(true).is_err() {
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
        let local = self.next_port;
        self.next_port = self.next_port.checked_add(1).unwrap_or(FIRST_HOST_PORT);
        let key = Key { local, peer: port };
        // Not read until the guest accepts: only a hang-up matters meanwhile.
        let _ = self.watch(fd, EventSet::READ_HANG_UP, ControlOperation::Add);
        self.conns.insert(key, Conn::new(stream, false));
        self.fds.insert(fd, Token::Conn(key));
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

/// The device's event loop: waits on host sockets and lets the muxer handle them.
pub fn spawn_event_loop(muxer: Arc<Mutex<Muxer>>) -> std::io::Result<()> {
    let epoll = muxer.lock().expect("vsock lock").epoll.clone();
    std::thread::Builder::new()
        .name("vsock".into())
        .spawn(move || {
            crate::seccomp::apply_or_exit(crate::seccomp::ThreadKind::Device);
            let mut events = vec![EpollEvent::default(); 64];
            loop {
                let n = match epoll.wait(-1, &mut events) {
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::error!(error = %e, "vsock event loop failed");
                        return;
                    }
                };
                let mut m = muxer.lock().expect("vsock lock");
                for ev in &events[..n] {
                    m.dispatch(ev.data() as RawFd, ev.event_set());
                }
            }
        })?;
    Ok(())
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
