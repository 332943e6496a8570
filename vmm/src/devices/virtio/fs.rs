//! virtio-fs (device type 26) as a vhost-user frontend: the file system itself is served
//! by a vhost-user daemon (virtiofsd) that maps guest memory from the memfd and works the
//! queues directly. hull-vmm only negotiates and hands over memory and rings; the guest's
//! queue notifications reach the daemon's kick eventfds through KVM (ioeventfds), and an
//! event loop turns the daemon's call eventfds into the device's interrupt.
//!
//! The daemon is a separate, possibly failing process: every error from it fails the
//! device (logged), never the VMM.
//!
//! Snapshots: the guest's FUSE session (its INIT, the inodes it looked up) lives in the
//! daemon, which a restored VM does not get back; a restore hands the rings to a new
//! daemon. So a snapshot is taken only while the guest has never used the device (both
//! rings untouched: the share not mounted yet), which is how a pod template is taken.

use crate::log_budget::LogBudget;
use std::path::PathBuf;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::event_loop::{self, Backend, Inbox, Mailbox, Request};
use super::{
    Error, Interrupt, VIRTIO_F_VERSION_1, VirtioDevice, expect_queues, io, read_config_bytes,
};
use crate::seccomp::ThreadKind;

pub const DEVICE_TYPE: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_FS;
/// The high-priority queue and one request queue.
const QUEUE_SIZES: [u16; 2] = [1024, 1024];
/// The longest tag the guest can see (virtio 1.2, 5.11.4).
pub const TAG_MAX: usize = 36;
/// Ring features the daemon implements and hull passes through to the guest.
const RING_INDIRECT_DESC: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
const RING_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
const PASSTHROUGH: u64 = VIRTIO_F_VERSION_1 | RING_INDIRECT_DESC | RING_EVENT_IDX;

/// A virtio-fs device as configured by the operator: `SOCKET,TAG`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    pub socket: PathBuf,
    pub tag: String,
}

impl FsConfig {
    /// What the guest can take: a socket path and a tag of 1..=36 bytes.
    pub fn validate(&self) -> Result<(), String> {
        if self.socket.as_os_str().is_empty() {
            return Err("empty virtio-fs socket path".into());
        }
        if self.tag.is_empty() || self.tag.len() > TAG_MAX {
            return Err(format!("virtio-fs tag must be 1..={TAG_MAX} bytes"));
        }
        Ok(())
    }
}

impl std::str::FromStr for FsConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (socket, tag) = s
            .rsplit_once(',')
            .ok_or("expected SOCKET,TAG (the vhost-user socket and the mount tag)")?;
        let cfg = FsConfig {
            socket: socket.into(),
            tag: tag.into(),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

pub struct VhostUserFs {
    frontend: Frontend,
    socket: PathBuf,
    backend_features: u64,
    acked_features: u64,
    config: [u8; TAG_MAX + 4],
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    forwarder: Mailbox<Interrupt>,
    /// While active: guest memory and the rings as the driver set them up.
    active: Option<(GuestMemoryMmap, Vec<Queue>)>,
}

impl VhostUserFs {
    /// Connects to the daemon now, so that a missing or dead one is a clear start-up error.
    pub fn connect(cfg: &FsConfig) -> Result<VhostUserFs, Error> {
        // The tag is copied into the config space below: a library caller may not have
        // parsed it through the checked paths.
        cfg.validate().map_err(Error::Config)?;
        let frontend =
            Frontend::connect(&cfg.socket, QUEUE_SIZES.len() as u64).map_err(|source| {
                Error::Daemon {
                    socket: cfg.socket.clone(),
                    source: Box::new(Error::VhostUser {
                        op: "connect",
                        source,
                    }),
                }
            })?;
        frontend.set_owner().map_err(vhost_user("SET_OWNER"))?;
        let backend_features = frontend
            .get_features()
            .map_err(vhost_user("GET_FEATURES"))?;
        if backend_features & VIRTIO_F_VERSION_1 == 0 {
            return Err(Error::Backend(format!(
                "the vhost-user daemon at {} does not speak virtio 1",
                cfg.socket.display()
            )));
        }
        let mut config = [0u8; TAG_MAX + 4];
        config[..cfg.tag.len()].copy_from_slice(cfg.tag.as_bytes());
        config[TAG_MAX..].copy_from_slice(&1u32.to_le_bytes());
        let kicks = QUEUE_SIZES
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(io("kick eventfds"))?;
        let (calls, forwarder) = spawn_forwarder(QUEUE_SIZES.len())?;
        Ok(VhostUserFs {
            frontend,
            socket: cfg.socket.clone(),
            backend_features,
            acked_features: 0,
            config,
            kicks,
            calls,
            forwarder,
            active: None,
        })
    }

    fn setup_backend(&mut self, mem: &GuestMemoryMmap, queues: &[Queue]) -> Result<(), Error> {
        let calls = &self.calls;
        let f = &mut self.frontend;
        let protocol = self.backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        f.set_features(self.acked_features | protocol)
            .map_err(vhost_user("SET_FEATURES"))?;
        if protocol != 0 {
            let theirs = f
                .get_protocol_features()
                .map_err(vhost_user("GET_PROTOCOL_FEATURES"))?;
            f.set_protocol_features(theirs & VhostUserProtocolFeatures::REPLY_ACK)
                .map_err(vhost_user("SET_PROTOCOL_FEATURES"))?;
        }
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(vhost_user("describing guest memory"))?;
        f.set_mem_table(&regions)
            .map_err(vhost_user("SET_MEM_TABLE"))?;
        for (i, q) in queues.iter().enumerate() {
            let host = |addr: u64| -> Result<u64, Error> {
                Ok(mem
                    .get_host_address(GuestAddress(addr))
                    .map_err(|_| Error::InvalidQueue)? as u64)
            };
            let ring = VringConfigData {
                queue_max_size: q.max_size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: host(q.desc_table())?,
                used_ring_addr: host(q.used_ring())?,
                avail_ring_addr: host(q.avail_ring())?,
                log_addr: None,
            };
            f.set_vring_num(i, q.size())
                .map_err(vhost_user("SET_VRING_NUM"))?;
            f.set_vring_addr(i, &ring)
                .map_err(vhost_user("SET_VRING_ADDR"))?;
            // Where the driver's ring stands: 0 after a fresh setup, the snapshot's place
            // for a restored one.
            f.set_vring_base(i, q.next_avail())
                .map_err(vhost_user("SET_VRING_BASE"))?;
            f.set_vring_call(i, &calls[i])
                .map_err(vhost_user("SET_VRING_CALL"))?;
            f.set_vring_kick(i, &self.kicks[i])
                .map_err(vhost_user("SET_VRING_KICK"))?;
            if protocol != 0 {
                f.set_vring_enable(i, true)
                    .map_err(vhost_user("SET_VRING_ENABLE"))?;
            }
        }
        Ok(())
    }
}

impl VirtioDevice for VhostUserFs {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        self.backend_features & PASSTHROUGH
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), Error> {
        expect_queues("virtio-fs", QUEUE_SIZES.len(), queues.len())?;
        // The forwarder first: a call the daemon makes the moment its rings are set up
        // must find an interrupt to raise, not be read and dropped.
        self.forwarder.activate(interrupt)?;
        if let Err(e) = self.setup_backend(&mem, &queues) {
            self.forwarder.reset();
            return Err(Error::Daemon {
                socket: self.socket.clone(),
                source: Box::new(e),
            });
        }
        self.active = Some((mem, queues));
        Ok(())
    }

    /// The rings as set up, if the guest never used them (see the module's doc).
    fn snapshot_queues(&self) -> Result<Option<Vec<virtio_queue::QueueState>>, Error> {
        let Some((mem, queues)) = &self.active else {
            return Ok(None);
        };
        let index = |ring: u64| -> Result<u16, Error> {
            // avail->idx and used->idx both sit 2 bytes into their ring.
            mem.read_obj::<u16>(GuestAddress(ring.wrapping_add(2)))
                .map_err(|_| Error::InvalidQueue)
        };
        for q in queues {
            if index(q.avail_ring())? != 0 || index(q.used_ring())? != 0 {
                return Err(Error::Config(
                    "virtio-fs: the guest has used the file system, whose session lives in the \
                     daemon and cannot be restored; snapshot before the share is mounted"
                        .into(),
                ));
            }
        }
        Ok(Some(queues.iter().map(Queue::state).collect()))
    }

    /// The daemon's kick eventfds themselves: KVM signals virtiofsd directly.
    fn queue_events(&self) -> std::io::Result<Vec<EventFd>> {
        self.kicks.iter().map(EventFd::try_clone).collect()
    }

    fn notify(&mut self, index: u16) {
        if let Some(k) = self.kicks.get(usize::from(index))
            && let Err(e) = k.write(1)
        {
            static KICKS: LogBudget = LogBudget::new(8);
            if KICKS.spend() {
                tracing::warn!(error = %e, "virtio-fs: kicking the daemon");
            }
        }
    }

    fn reset(&mut self) {
        // Stop the daemon's rings (GET_VRING_BASE) so it no longer touches guest memory.
        self.forwarder.reset();
        if self.active.take().is_some() {
            for i in 0..QUEUE_SIZES.len() {
                if let Err(e) = self.frontend.get_vring_base(i) {
                    tracing::warn!(error = %e, queue = i, "virtio-fs: stopping a ring");
                }
            }
        }
    }
}

/// Names the vhost-user request that failed.
fn vhost_user(op: &'static str) -> impl FnOnce(vhost::Error) -> Error {
    move |source| Error::VhostUser { op, source }
}

/// The loop that turns the daemon's call eventfds into the device interrupt. It starts
/// with the device, before any seccomp filter, and raises the interrupt only while the
/// device is active (the mailbox hands it the interrupt, and takes it back at reset).
struct Forwarder {
    calls: Vec<EventFd>,
    inbox: Inbox<Interrupt>,
    target: Option<Interrupt>,
}

/// The call eventfds the daemon is given, and the mailbox of the loop that watches them.
fn spawn_forwarder(queues: usize) -> Result<(Vec<EventFd>, Mailbox<Interrupt>), Error> {
    let calls = (0..queues)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io("call eventfds"))?;
    let for_daemon = calls
        .iter()
        .map(EventFd::try_clone)
        .collect::<Result<Vec<_>, _>>()
        .map_err(io("call eventfds"))?;
    let (mailbox, inbox) = event_loop::mailbox("virtio-fs").map_err(io("control eventfd"))?;
    let forwarder = Forwarder {
        calls,
        inbox,
        target: None,
    };
    event_loop::spawn("virtio-fs-irq", ThreadKind::Device, forwarder)
        .map(drop)
        .map_err(io("spawning the virtio-fs interrupt thread"))?;
    Ok((for_daemon, mailbox))
}

/// The inbox's token; call eventfd i has token i.
const TOKEN_CONTROL: u32 = u32::MAX;

impl MutEventSubscriber for Forwarder {
    fn init(&mut self, ops: &mut EventOps) {
        self.inbox.watch(ops, TOKEN_CONTROL);
        for (call, token) in self.calls.iter().zip(0u32..) {
            event_loop::watch(ops, call, token, "the daemon's call eventfd");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let token = events.data();
        if token == TOKEN_CONTROL {
            for c in self.inbox.take() {
                match c {
                    Request::Activate(i, reply) => {
                        self.target = Some(i);
                        let _ = reply.send(Ok(()));
                    }
                    Request::Reset(done) => {
                        self.target = None;
                        let _ = done.send(());
                    }
                }
            }
        } else if let Some(call) = usize::try_from(token).ok().and_then(|i| self.calls.get(i)) {
            let _ = call.read();
            if let Some(i) = &self.target {
                i.signal_used();
            }
        }
    }
}

impl Backend for Forwarder {
    fn finished(&self) -> bool {
        self.inbox.stopped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_options_parse() {
        let c: FsConfig = "/run/fs.sock,hullfs".parse().unwrap();
        assert_eq!(c.socket, PathBuf::from("/run/fs.sock"));
        assert_eq!(c.tag, "hullfs");
        assert!("/run/fs.sock".parse::<FsConfig>().is_err());
        assert!(",tag".parse::<FsConfig>().is_err());
        assert!("/s,".parse::<FsConfig>().is_err());
        assert!(
            format!("/s,{}", "t".repeat(37))
                .parse::<FsConfig>()
                .is_err()
        );
    }

    #[test]
    fn a_missing_daemon_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = FsConfig {
            socket: dir.path().join("none.sock"),
            tag: "t".into(),
        };
        let err = VhostUserFs::connect(&cfg).err().unwrap().to_string();
        assert!(
            err.contains("none.sock") && err.contains("connect"),
            "{err}"
        );
    }
}
