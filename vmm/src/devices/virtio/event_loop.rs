//! Where device work runs: never on a vCPU thread, always on an event loop of the device's
//! own, built on rust-vmm's `event-manager`. The device's backend is the loop's subscriber;
//! it registers the queues' eventfds (KVM writes them directly as ioeventfds, so a guest
//! kick wakes the loop without a vCPU exit to userspace) and whatever host descriptors it
//! serves.
//!
//! The vCPU side (the MMIO transport) talks to a backend only through its `Mailbox`: it
//! hands over the queues at DRIVER_OK and takes them back at reset, and waits for the
//! backend's answer, so the guest never reuses ring memory the backend still reads.
//!
//! A loop can also be parked (`Pacer::park`): it stops between two events, hands over
//! the state of the queues its backend holds, and serves nothing until the `Parked`
//! handle is dropped. A paused VM parks every device, so that nothing writes guest memory
//! while a snapshot copies it.

use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::EventFd;

use virtio_queue::QueueState;

use super::Error;
use crate::seccomp::{self, ThreadKind};

/// How long the vCPU side waits for a backend's answer. The backend is hull-vmm's own
/// thread, not the guest, so this is a bound against a bug, not against an attack.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// A device's data path, run by its event loop.
pub trait Backend: MutEventSubscriber + Send + 'static {
    /// True once the device is gone (its mailbox said Stop): the loop then ends.
    fn finished(&self) -> bool;
    /// The queues the backend holds, in the device's queue order, for a snapshot; None
    /// when the device cannot be snapshotted (or holds no queues: not activated).
    fn queue_states(&self) -> Option<Vec<QueueState>> {
        None
    }
}

/// Starts `backend` on a thread of its own named `name`, confined by `kind`'s seccomp
/// filter. The loop and the backend's registrations are made here, before the thread
/// starts, so a failure is the caller's error and the thread itself needs no epoll_create.
pub fn spawn<B: Backend>(name: &str, kind: ThreadKind, backend: B) -> std::io::Result<Pacer> {
    let (tx, requests) = mpsc::channel();
    let pacer = Pacer {
        tx,
        evt: Arc::new(EventFd::new(libc::EFD_NONBLOCK)?),
    };
    let looped = Arc::new(Mutex::new(Looped {
        backend,
        pace: pacer.evt.clone(),
        requests,
        due: Vec::new(),
    }));
    let mut manager: EventManager<Arc<Mutex<Looped<B>>>> =
        EventManager::new().map_err(std::io::Error::other)?;
    manager.add_subscriber(looped.clone());
    let name = name.to_string();
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            seccomp::apply_or_exit(kind);
            loop {
                // Interrupted by a signal: run() says 0 and the loop goes round.
                if let Err(e) = manager.run() {
                    tracing::error!(device = %name, error = %e, "device event loop failed");
                    return;
                }
                let mut l = looped.lock().unwrap_or_else(PoisonError::into_inner);
                // Everything signalled before a pace request was ready when this round's
                // wait returned, so it has been served: answer.
                for done in l.due.drain(..) {
                    let _ = done.send(());
                }
                if l.backend.finished() {
                    return;
                }
            }
        })?;
    Ok(pacer)
}

/// What the loop itself is asked, beside its backend's events.
enum LoopRequest {
    /// Answer once everything signalled before has been served.
    Settle(mpsc::Sender<()>),
    /// Stop here: send the backend's queue states, then wait until the receiver's sender
    /// is dropped.
    Park(mpsc::Sender<Option<Vec<QueueState>>>, mpsc::Receiver<()>),
}

/// The backend and the loop's own pacing source.
struct Looped<B> {
    backend: B,
    pace: Arc<EventFd>,
    requests: mpsc::Receiver<LoopRequest>,
    /// Pace requests seen this round, answered once the round is over.
    due: Vec<mpsc::Sender<()>>,
}

impl<B: Backend> MutEventSubscriber for Looped<B> {
    fn init(&mut self, ops: &mut EventOps) {
        watch(ops, self.pace.as_ref(), 0, "the pacing eventfd");
        self.backend.init(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.pace.as_raw_fd() {
            let _ = self.pace.read();
            for r in self.requests.try_iter().collect::<Vec<_>>() {
                match r {
                    LoopRequest::Settle(done) => self.due.push(done),
                    LoopRequest::Park(states, resume) => {
                        if states.send(self.backend.queue_states()).is_ok() {
                            // Returns when the Parked handle is dropped.
                            let _ = resume.recv();
                        }
                    }
                }
            }
        } else {
            self.backend.process(events, ops);
        }
    }
}

/// Lets a caller wait until a device's loop has served what was signalled to it: a test
/// or fuzzer plays a guest that waits for the device before it writes the ring again.
#[derive(Clone)]
pub struct Pacer {
    tx: mpsc::Sender<LoopRequest>,
    evt: Arc<EventFd>,
}

/// A parked device loop: it serves nothing until this is dropped.
pub struct Parked {
    /// The backend's queues as it left them (None: it cannot be snapshotted).
    pub queues: Option<Vec<QueueState>>,
    _resume: mpsc::Sender<()>,
}

impl Pacer {
    /// Returns once every kick and message sent before the call has been served (or the
    /// loop is gone, or `ANSWER_TIMEOUT` passed).
    pub fn settle(&self) {
        let (done, wait) = mpsc::channel();
        if self.send(LoopRequest::Settle(done)) {
            let _ = wait.recv_timeout(ANSWER_TIMEOUT);
        }
    }

    /// Parks the loop between two events; `device` names it in errors.
    pub fn park(&self, device: &str) -> Result<Parked, Error> {
        let (states_tx, states) = mpsc::channel();
        let (resume, wait) = mpsc::channel();
        if !self.send(LoopRequest::Park(states_tx, wait)) {
            return Err(Error::Backend(format!("the {device} thread is gone")));
        }
        match states.recv_timeout(ANSWER_TIMEOUT) {
            Ok(queues) => Ok(Parked {
                queues,
                _resume: resume,
            }),
            Err(_) => Err(Error::Backend(format!(
                "the {device} thread did not stop for the pause"
            ))),
        }
    }

    fn send(&self, r: LoopRequest) -> bool {
        self.tx.send(r).is_ok() && self.evt.write(1).is_ok()
    }
}

/// What the vCPU side asks of a backend, as the backend sees it.
pub enum Request<A> {
    /// The driver is ready: here are the queues (and what else the device needs); the
    /// backend answers whether it took them.
    Activate(A, mpsc::Sender<Result<(), String>>),
    /// The driver reset the device: the backend lets go of the queues, then answers.
    Reset(mpsc::Sender<()>),
}

enum Control<A> {
    Request(Request<A>),
    /// The device is gone: the loop ends.
    Stop,
}

/// The vCPU side's end of a backend's control channel. Dropping it stops the backend.
pub struct Mailbox<A> {
    tx: mpsc::Sender<Control<A>>,
    evt: Arc<EventFd>,
    device: &'static str,
}

/// The backend's end: an eventfd to register with the loop, and the messages behind it.
pub struct Inbox<A> {
    rx: mpsc::Receiver<Control<A>>,
    evt: Arc<EventFd>,
    stopped: bool,
}

/// A control channel for `device` (its name in errors and logs).
pub fn mailbox<A>(device: &'static str) -> std::io::Result<(Mailbox<A>, Inbox<A>)> {
    let evt = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
    let (tx, rx) = mpsc::channel();
    Ok((
        Mailbox {
            tx,
            evt: evt.clone(),
            device,
        },
        Inbox {
            rx,
            evt,
            stopped: false,
        },
    ))
}

impl<A> Mailbox<A> {
    fn send(&self, c: Control<A>) -> bool {
        self.tx.send(c).is_ok() && self.evt.write(1).is_ok()
    }

    /// Hands the backend its queues and waits for its answer.
    pub fn activate(&self, a: A) -> Result<(), Error> {
        let (reply, answer) = mpsc::channel();
        if !self.send(Control::Request(Request::Activate(a, reply))) {
            return Err(Error::Backend(format!(
                "the {} thread is gone",
                self.device
            )));
        }
        match answer.recv_timeout(ANSWER_TIMEOUT) {
            Ok(result) => result.map_err(Error::Backend),
            Err(_) => Err(Error::Backend(format!(
                "the {} thread did not answer the activation",
                self.device
            ))),
        }
    }

    /// Takes the queues back; returns once the backend no longer touches them.
    pub fn reset(&self) {
        let (done, wait) = mpsc::channel();
        if !self.send(Control::Request(Request::Reset(done)))
            || wait.recv_timeout(ANSWER_TIMEOUT).is_err()
        {
            tracing::warn!(
                device = self.device,
                "the device thread did not confirm a reset"
            );
        }
    }
}

impl<A> Drop for Mailbox<A> {
    fn drop(&mut self) {
        self.send(Control::Stop);
    }
}

impl<A> Inbox<A> {
    /// Registers the inbox with the loop, tagged `data`.
    pub fn watch(&self, ops: &mut EventOps, data: u32) {
        watch(ops, self.evt.as_ref(), data, "the device's mailbox");
    }

    /// The requests waiting. A Stop (or a vanished mailbox) is remembered for `stopped`.
    pub fn take(&mut self) -> Vec<Request<A>> {
        let _ = self.evt.read();
        let mut out = Vec::new();
        loop {
            match self.rx.try_recv() {
                Ok(Control::Request(r)) => out.push(r),
                Ok(Control::Stop) | Err(mpsc::TryRecvError::Disconnected) => {
                    self.stopped = true;
                    return out;
                }
                Err(mpsc::TryRecvError::Empty) => return out,
            }
        }
    }

    /// Whether the device is gone: the backend's loop ends.
    pub fn stopped(&self) -> bool {
        self.stopped
    }
}

/// Registers `evt` for input, tagged `data`; logs what it cannot register (a loop that
/// misses a source is a bug the device's tests catch, not a guest's doing).
pub fn watch(ops: &mut event_manager::EventOps, evt: &impl AsRawFd, data: u32, what: &str) {
    if let Err(e) = ops.add(Events::with_data(evt, data, EventSet::IN)) {
        tracing::error!(error = %e, "registering {what} with the device loop");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend that counts kicks and answers its mailbox, as the devices do.
    struct Counter {
        kick: Arc<EventFd>,
        inbox: Inbox<u32>,
        kicks: Arc<Mutex<u32>>,
    }

    impl MutEventSubscriber for Counter {
        fn init(&mut self, ops: &mut EventOps) {
            watch(ops, self.kick.as_ref(), 1, "kick");
            self.inbox.watch(ops, 2);
        }
        fn process(&mut self, events: Events, _ops: &mut EventOps) {
            match events.data() {
                1 => {
                    let n = self.kick.read().unwrap_or(0);
                    *self.kicks.lock().unwrap() += u32::try_from(n).unwrap();
                }
                _ => {
                    for c in self.inbox.take() {
                        match c {
                            Request::Activate(v, reply) => {
                                let _ =
                                    reply.send(if v == 0 { Err("zero".into()) } else { Ok(()) });
                            }
                            Request::Reset(done) => {
                                let _ = done.send(());
                            }
                        }
                    }
                }
            }
        }
    }

    impl Backend for Counter {
        fn finished(&self) -> bool {
            self.inbox.stopped()
        }
    }

    /// A Counter on a loop of its own: its kick, its count, its mailbox and its pacer.
    fn counter() -> (Arc<EventFd>, Arc<Mutex<u32>>, Mailbox<u32>, Pacer) {
        let kick = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let kicks = Arc::new(Mutex::new(0));
        let (mailbox, inbox) = mailbox::<u32>("counter").unwrap();
        let backend = Counter {
            kick: kick.clone(),
            inbox,
            kicks: kicks.clone(),
        };
        let pacer = spawn("counter", ThreadKind::Device, backend).unwrap();
        (kick, kicks, mailbox, pacer)
    }

    #[test]
    fn a_backend_runs_on_its_loop_answers_its_mailbox_and_ends_with_it() {
        let (kick, kicks, mailbox, pacer) = counter();
        kick.write(3).unwrap();
        pacer.settle();
        assert_eq!(*kicks.lock().unwrap(), 3, "served before settle returns");
        assert!(mailbox.activate(1).is_ok());
        assert!(
            matches!(mailbox.activate(0), Err(Error::Backend(e)) if e == "zero"),
            "a refusal reaches the vCPU side"
        );
        mailbox.reset();
        drop(mailbox);
        std::thread::sleep(Duration::from_millis(100));
        kick.write(5).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(*kicks.lock().unwrap(), 3, "a stopped loop serves nothing");
    }

    #[test]
    fn a_parked_loop_serves_nothing_until_let_go() {
        let (kick, kicks, _mailbox, pacer) = counter();
        let parked = pacer.park("counter").unwrap();
        assert!(parked.queues.is_none(), "the counter hands over no queues");
        kick.write(2).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(*kicks.lock().unwrap(), 0, "parked");
        drop(parked);
        pacer.settle();
        assert_eq!(*kicks.lock().unwrap(), 2, "served once let go");
    }
}
