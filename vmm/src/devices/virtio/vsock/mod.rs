//! virtio-vsock (device type 19) with Firecracker's hybrid unix-socket backend.
//!
//! Host → guest: a program connects to the unix socket `uds`, writes `CONNECT <port>\n`,
//! and once the guest accepts it reads `OK <host port>\n`; the stream then carries the
//! connection's bytes. Guest → host: a guest connection to host port P becomes a unix
//! connection to `<uds>_P`. Flow control follows the virtio spec's credit scheme.
//!
//! The device's event loop does all the work: it is woken by the queues' ioeventfds (a
//! guest kick never stops a vCPU in userspace) and by the muxer's own epoll set of host
//! sockets, watched as one source as Firecracker does. The muxer sits behind a mutex only
//! so that tests and fuzzing can read what the guest made it hold.

mod muxer;
pub mod packet;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::event_loop::{self, Backend, Inbox, Mailbox, Pacer, Request};
use super::{Error, Interrupt, VirtioDevice, expect_queues, io, read_config_bytes};
use crate::seccomp::ThreadKind;
use muxer::Active;
pub use muxer::Muxer;

pub const DEVICE_TYPE: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
const QUEUE_SIZES: [u16; 3] = [256, 256, 256];
const RX: u16 = 0;
const TX: u16 = 1;
const EVENT: u16 = 2;

pub struct Vsock {
    cid: u64,
    muxer: Arc<Mutex<Muxer>>,
    /// RX, TX and event queue kicks: written by KVM (ioeventfds) or by `notify`.
    kicks: Vec<Arc<EventFd>>,
    mailbox: Mailbox<Active>,
    pacer: Pacer,
}

impl Vsock {
    /// Binds the hybrid socket at `uds` and starts the device's event loop.
    pub fn new(cid: u64, uds: PathBuf) -> Result<Vsock, Error> {
        if !(3..u64::from(u32::MAX)).contains(&cid) {
            return Err(Error::Config(format!(
                "guest cid {cid} is reserved or too large"
            )));
        }
        let socket = io(format!("vsock socket {}", uds.display()));
        let muxer = Muxer::new(cid, uds).map_err(socket)?;
        let muxer = Arc::new(Mutex::new(muxer));
        let kicks = QUEUE_SIZES
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(io("vsock kick eventfds"))?;
        let (mailbox, inbox) = event_loop::mailbox("vsock").map_err(io("control eventfd"))?;
        let worker = Worker {
            muxer: muxer.clone(),
            rx_kick: kicks[usize::from(RX)].clone(),
            tx_kick: kicks[usize::from(TX)].clone(),
            event_kick: kicks[usize::from(EVENT)].clone(),
            inbox,
        };
        let pacer = event_loop::spawn("vsock", ThreadKind::Device, worker)
            .map_err(io("starting the vsock thread"))?;
        Ok(Vsock {
            cid,
            muxer,
            kicks,
            mailbox,
            pacer,
        })
    }
}

impl Vsock {
    fn hand_over(
        &mut self,
        mem: GuestMemoryMmap,
        mut queues: Vec<Queue>,
        interrupt: Interrupt,
        transport_reset: bool,
    ) -> Result<(), Error> {
        expect_queues("vsock", 3, queues.len())?;
        let event = queues.remove(2);
        let tx = queues.remove(1);
        let rx = queues.remove(0);
        self.mailbox.activate(Active {
            mem,
            rx,
            tx,
            event,
            interrupt,
            transport_reset,
        })
    }
}

/// A handle on a vsock device's host side that stays usable after the device is handed
/// to its transport (tests and fuzzing read how much the guest made it hold).
#[derive(Clone)]
pub struct VsockProbe(Arc<Mutex<Muxer>>, Pacer);

impl VsockProbe {
    /// Open connections and replies waiting for guest RX buffers.
    pub fn load(&self) -> (usize, usize) {
        lock(&self.0).load()
    }

    /// Returns once the device's loop has served every kick made before the call.
    pub fn settle(&self) {
        self.1.settle();
    }
}

impl Vsock {
    pub fn probe(&self) -> VsockProbe {
        VsockProbe(self.muxer.clone(), self.pacer.clone())
    }
}

fn lock(m: &Mutex<Muxer>) -> std::sync::MutexGuard<'_, Muxer> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The device's event loop.
struct Worker {
    muxer: Arc<Mutex<Muxer>>,
    rx_kick: Arc<EventFd>,
    tx_kick: Arc<EventFd>,
    event_kick: Arc<EventFd>,
    inbox: Inbox<Active>,
}

const TOKEN_CONTROL: u32 = 0;
const TOKEN_RX: u32 = 1;
const TOKEN_TX: u32 = 2;
const TOKEN_HOST: u32 = 3;
const TOKEN_EVENT: u32 = 4;

impl MutEventSubscriber for Worker {
    fn init(&mut self, ops: &mut EventOps) {
        self.inbox.watch(ops, TOKEN_CONTROL);
        event_loop::watch(ops, self.rx_kick.as_ref(), TOKEN_RX, "the RX queue's kick");
        event_loop::watch(ops, self.tx_kick.as_ref(), TOKEN_TX, "the TX queue's kick");
        let event = self.event_kick.as_ref();
        event_loop::watch(ops, event, TOKEN_EVENT, "the event queue's kick");
        let host = lock(&self.muxer).host_events();
        if let Err(e) = ops.add(Events::with_data_raw(host, TOKEN_HOST, EventSet::IN)) {
            tracing::error!(error = %e, "registering the vsock host sockets with the device loop");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let mut m = lock(&self.muxer);
        match events.data() {
            TOKEN_RX => {
                let _ = self.rx_kick.read();
                m.rx_buffers_added();
            }
            TOKEN_TX => {
                let _ = self.tx_kick.read();
                m.process_tx();
            }
            TOKEN_HOST => m.handle_host_events(),
            TOKEN_EVENT => {
                let _ = self.event_kick.read();
                m.event_buffers_added();
            }
            _ => {
                for c in self.inbox.take() {
                    match c {
                        Request::Activate(a, reply) => {
                            m.activate(a);
                            let _ = reply.send(Ok(()));
                        }
                        Request::Reset(done) => {
                            m.reset();
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

    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        lock(&self.muxer).queue_states()
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // The config space is the 64-bit guest cid.
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), Error> {
        self.hand_over(mem, queues, interrupt, false)
    }

    /// The connections of the snapshotted VM are gone: the guest hears so at once.
    fn restore_activated(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), Error> {
        self.hand_over(mem, queues, interrupt, true)
    }

    fn pacer(&self) -> Option<Pacer> {
        Some(self.pacer.clone())
    }

    /// The event queue's kick is registered too: after a restore's reset event, the
    /// guest's kick (it gives the buffer back once it has reset its sockets) releases
    /// the host connections held meanwhile.
    fn queue_events(&self) -> std::io::Result<Vec<EventFd>> {
        self.kicks.iter().map(|k| k.try_clone()).collect()
    }

    fn notify(&mut self, index: u16) {
        if let Some(k) = self.kicks.get(usize::from(index)) {
            let _ = k.write(1);
        }
    }

    fn reset(&mut self) {
        // Connections are dropped and the queues let go of before this returns.
        self.mailbox.reset();
    }
}
