//! virtio-net (device type 1) on a tap the caller passes in: one RX and one TX queue,
//! virtio 1.x headers, checksum and TSO offloads both ways, mergeable RX buffers, event
//! index, the MAC and MTU in config space.
//!
//! Two data paths, picked when the device is made (`vhost=auto|on|off`, auto by default):
//! - in the kernel (`vhost`): where `/dev/vhost-net` can be opened, its kernel worker moves
//!   the frames and hull-vmm only turns its completions into interrupts;
//! - in hull-vmm (`worker`): a thread of the device's own, woken by the queues'
//!   notifications (KVM ioeventfds: a guest kick never stops a vCPU in userspace) and by
//!   the tap; used buffers are signalled through the device's irqfd.
//!
//! Either thread is made when the device is, before seccomp, and lives as long as the VMM:
//! activation and reset only hand it queues or take them back.

mod tap;
mod vhost;
mod worker;

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_MTU,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::event_loop::{self, Mailbox, Pacer};
use super::{Error, Interrupt, VirtioDevice, expect_queues, io, read_config_bytes};
pub use tap::{Tap, VNET_HDR_LEN};
pub use vhost::Error as VhostNetError;
pub use worker::NetStats;
use worker::Worker;

/// Whether the frames move through `/dev/vhost-net`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VhostMode {
    /// The kernel's data path where `/dev/vhost-net` opens, hull-vmm's otherwise.
    #[default]
    Auto,
    /// The kernel's, or the VMM does not start.
    On,
    /// hull-vmm's own.
    Off,
}

impl std::str::FromStr for VhostMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(VhostMode::Auto),
            "on" => Ok(VhostMode::On),
            "off" => Ok(VhostMode::Off),
            _ => Err(format!("bad vhost `{s}` (auto, on or off)")),
        }
    }
}

pub const DEVICE_TYPE: u32 = VIRTIO_ID_NET;
const QUEUE_SIZES: [u16; 2] = [256, 256];
const RX: usize = 0;
const TX: usize = 1;
/// The MTU range a guest NIC may be given.
const MTU_RANGE: std::ops::RangeInclusive<u16> = 68..=65535;

const fn bit(b: u32) -> u64 {
    1 << b
}

const OFFERED: u64 = bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
    | bit(VIRTIO_NET_F_MRG_RXBUF)
    | bit(VIRTIO_NET_F_MAC)
    | bit(VIRTIO_RING_F_EVENT_IDX);

/// A NIC as configured by the operator: `tap-fd=N[,mac=XX:..][,mtu=M][,vhost=auto]` or
/// JSON `{"tap_fd": N, "mac": "02:..", "mtu": 1500, "vhost": "auto"}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// An open tap (`IFF_TAP|IFF_NO_PI|IFF_VNET_HDR`) this process inherited.
    pub tap_fd: RawFd,
    /// The guest NIC's MAC; a random locally administered one if absent.
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default)]
    pub mtu: Option<u16>,
    #[serde(default)]
    pub vhost: VhostMode,
}

impl std::str::FromStr for NetConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut cfg = NetConfig {
            tap_fd: -1,
            mac: None,
            mtu: None,
            vhost: VhostMode::Auto,
        };
        for opt in s.split(',') {
            match opt.split_once('=') {
                Some(("tap-fd", v)) => {
                    cfg.tap_fd = v.parse().map_err(|_| format!("bad tap-fd `{v}`"))?
                }
                Some(("mac", v)) => cfg.mac = Some(v.to_string()),
                Some(("mtu", v)) => {
                    cfg.mtu = Some(v.parse().map_err(|_| format!("bad mtu `{v}`"))?)
                }
                Some(("vhost", v)) => cfg.vhost = v.parse()?,
                _ => {
                    return Err(format!(
                        "unknown net option `{opt}` (tap-fd=N, mac=MAC, mtu=N, vhost=auto|on|off)"
                    ));
                }
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

impl NetConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.tap_fd < 3 {
            return Err(format!(
                "tap-fd {} is not an inherited descriptor (≥ 3)",
                self.tap_fd
            ));
        }
        if let Some(m) = &self.mac {
            parse_mac(m)?;
        }
        if let Some(mtu) = self.mtu
            && !MTU_RANGE.contains(&mtu)
        {
            return Err(format!("mtu {mtu} is outside {MTU_RANGE:?}"));
        }
        Ok(())
    }
}

pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("`{s}` is not a MAC address"));
    }
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(format!("`{s}` is not a MAC address"));
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| format!("`{s}` is not a MAC address"))?;
    }
    if mac[0] & 1 != 0 {
        return Err(format!("`{s}` is a multicast address"));
    }
    Ok(mac)
}

fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    super::random_fill(&mut mac);
    mac[0] = (mac[0] & 0xfe) | 0x02; // unicast, locally administered
    mac
}

pub struct Net {
    /// MAC, status (unused), max_virtqueue_pairs, MTU.
    config: [u8; 12],
    features: u64,
    acked: u64,
    /// One per queue: written by `notify` or directly by KVM (ioeventfd).
    queue_evts: Vec<Arc<EventFd>>,
    mailbox: Mailbox<Box<worker::Active>>,
    stats: NetStats,
    in_kernel: bool,
    /// hull-vmm's own data path's loop, which a pause parks; none with vhost-net.
    pacer: Option<Pacer>,
}

impl Net {
    /// Takes ownership of the configured tap fd, opens vhost-net as configured (before
    /// the jail: it opens a device node) and starts the device thread.
    pub fn new(cfg: &NetConfig, mem: &GuestMemoryMmap) -> Result<Net, Error> {
        cfg.validate().map_err(Error::Config)?;
        // SAFETY: F_GETFD only asks whether the descriptor is open.
        if unsafe { libc::fcntl(cfg.tap_fd, libc::F_GETFD) } < 0 {
            return Err(Error::Config(format!("tap-fd {} is not open", cfg.tap_fd)));
        }
        // SAFETY: the fd is open (checked above), was handed to this process for this
        // device, and nothing else in hull-vmm refers to it; the Tap owns it from here.
        let fd = unsafe { OwnedFd::from_raw_fd(cfg.tap_fd) };
        let tap = Tap::from_fd(fd).map_err(io(format!("setting up tap-fd {}", cfg.tap_fd)))?;
        let mac = match &cfg.mac {
            Some(m) => parse_mac(m).map_err(Error::Config)?,
            None => random_mac(),
        };
        let kernel = match cfg.vhost {
            VhostMode::Off => None,
            VhostMode::On => Some(vhost::Kernel::open(mem)?),
            VhostMode::Auto => match vhost::Kernel::open(mem) {
                Ok(k) => Some(k),
                Err(e) if e.is_unavailable() => {
                    tracing::debug!(error = %e, "no vhost-net: frames move in hull-vmm");
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, "vhost-net unusable: frames move in hull-vmm");
                    None
                }
            },
        };
        Net::build(tap, mac, cfg.mtu, kernel)
    }

    /// A device on `tap` with hull-vmm's own data path (tests pass a datagram socket).
    pub fn with_tap(tap: Tap, mac: [u8; 6], mtu: Option<u16>) -> Result<Net, Error> {
        Net::build(tap, mac, mtu, None)
    }

    fn build(
        tap: Tap,
        mac: [u8; 6],
        mtu: Option<u16>,
        kernel: Option<vhost::Kernel>,
    ) -> Result<Net, Error> {
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&mac);
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        let mut features = OFFERED;
        if let Some(m) = mtu {
            config[10..12].copy_from_slice(&m.to_le_bytes());
            features |= bit(VIRTIO_NET_F_MTU);
        }
        let queue_evts = (0..QUEUE_SIZES.len())
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(io("queue eventfds"))?;
        let (mailbox, inbox) = event_loop::mailbox("net").map_err(io("control eventfd"))?;
        let stats = NetStats::default();
        let in_kernel = kernel.is_some();
        let pacer = match kernel {
            Some(k) => vhost::spawn(
                k,
                tap,
                [queue_evts[RX].clone(), queue_evts[TX].clone()],
                inbox,
            )
            .map(|()| None),
            None => Worker::spawn(
                tap,
                queue_evts[RX].clone(),
                queue_evts[TX].clone(),
                inbox,
                stats.clone(),
            )
            .map(Some),
        }
        .map_err(io("starting the net thread"))?;
        Ok(Net {
            config,
            features,
            acked: 0,
            queue_evts,
            mailbox,
            stats,
            in_kernel,
            pacer,
        })
    }

    /// Whether vhost-net moves the frames.
    pub fn in_kernel(&self) -> bool {
        self.in_kernel
    }

    /// Frame counters of hull-vmm's own data path (vhost-net's are the kernel's), usable
    /// after the device is handed to its transport.
    pub fn stats(&self) -> NetStats {
        self.stats.clone()
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features;
    }

    fn queue_events(&self) -> std::io::Result<Vec<EventFd>> {
        self.queue_evts.iter().map(|e| e.try_clone()).collect()
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        mut queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), Error> {
        expect_queues("virtio-net", 2, queues.len())?;
        let acked = |b: u32| self.acked & bit(b) != 0;
        let event_idx = acked(VIRTIO_RING_F_EVENT_IDX);
        for q in &mut queues {
            q.set_event_idx(event_idx);
        }
        let tx = queues.remove(TX);
        let rx = queues.remove(RX);
        let mut offload = 0;
        if acked(VIRTIO_NET_F_GUEST_CSUM) {
            offload |= libc::TUN_F_CSUM;
            // The guest takes 64 KiB frames only into buffers it can merge.
            if acked(VIRTIO_NET_F_MRG_RXBUF) {
                if acked(VIRTIO_NET_F_GUEST_TSO4) {
                    offload |= libc::TUN_F_TSO4;
                }
                if acked(VIRTIO_NET_F_GUEST_TSO6) {
                    offload |= libc::TUN_F_TSO6;
                }
            }
        }
        let mtu = u16::from_le_bytes([self.config[10], self.config[11]]);
        let active = worker::Active {
            mem,
            rx,
            tx,
            interrupt,
            acked: self.acked,
            mergeable: acked(VIRTIO_NET_F_MRG_RXBUF),
            offload,
            host_tso4: acked(VIRTIO_NET_F_HOST_TSO4),
            host_tso6: acked(VIRTIO_NET_F_HOST_TSO6),
            mtu: if mtu == 0 { 1500 } else { mtu },
        };
        self.mailbox.activate(Box::new(active))
    }

    /// hull-vmm's own data path is parked for a pause and hands over its queues.
    fn pacer(&self) -> Option<Pacer> {
        self.pacer.clone()
    }

    /// With vhost-net the rings are the kernel's, which keeps moving frames: no snapshot.
    fn snapshot_queues(&self) -> Result<Option<Vec<virtio_queue::QueueState>>, Error> {
        Err(Error::Config(
            "virtio-net through vhost-net cannot be snapshotted (the kernel holds its \
             rings); make the VM with vhost=off"
                .into(),
        ))
    }

    fn notify(&mut self, index: u16) {
        if let Some(e) = self.queue_evts.get(usize::from(index)) {
            let _ = e.write(1);
        }
    }

    fn reset(&mut self) {
        self.acked = 0;
        // The guest may reuse the queues' memory once reset returns: the mailbox waits
        // until the thread has let go of them.
        self.mailbox.reset();
    }
}

#[cfg(test)]
mod tests;
