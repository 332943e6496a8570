//! Pause, resume and snapshot of a running VM, asked for through the API socket.
//!
//! Pause: the vCPU threads are kicked out of KVM_RUN (`vcpu_kick`) and park, each
//! answering once it has; then every device's event loop is parked between two events,
//! so nothing writes guest memory or raises an interrupt. Resume lets the devices go,
//! then the vCPUs. A snapshot is taken only of a paused VM: each parked vCPU thread reads
//! its own state out of KVM, this thread reads the VM's, the devices' and guest memory.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;

use crate::arch::x86_64::state::{self, VcpuState};
use crate::devices::PioBus;
use crate::devices::virtio::event_loop::Parked;
use crate::machine::MmioBus;
use crate::memory::GuestRam;
use crate::snapshot::{self, MachineState};
use crate::vcpu_kick;

/// How long the vCPU threads and device loops get to stop or answer: they are hull-vmm's
/// own threads (a guest cannot hold a vCPU in the kernel for long), so this bounds a bug.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the VM is already paused")]
    AlreadyPaused,
    #[error("the VM is not paused (pause it before a snapshot)")]
    NotPaused,
    #[error("the VM has not started running")]
    NotRunning,
    #[error("vCPU {0} did not stop within {STOP_TIMEOUT:?}")]
    VcpuStuck(usize),
    #[error("vCPU {id}: {what}")]
    Vcpu { id: usize, what: String },
    #[error("{0}")]
    Device(String),
    #[error("the VM's own state: {0}")]
    Vm(#[source] crate::arch::x86_64::Error),
    #[error(transparent)]
    Snapshot(#[from] snapshot::Error),
}

/// What a parked vCPU thread is told.
pub enum VcpuCommand {
    /// Read the vCPU's state out of KVM and send it back.
    Save(mpsc::Sender<Result<VcpuState, String>>),
    /// Go back into the guest.
    Resume,
}

/// A vCPU thread as the controller sees it (its handle once spawned, to kick it).
struct VcpuLink {
    thread: Option<JoinHandle<()>>,
    commands: mpsc::Sender<VcpuCommand>,
}

/// The vCPU thread's end: what it waits on while parked, and where it says so.
pub struct VcpuPort {
    pub commands: mpsc::Receiver<VcpuCommand>,
    parked: mpsc::Sender<usize>,
}

pub struct Control {
    paused: AtomicBool,
    inner: Mutex<Inner>,
    vm: Arc<VmFd>,
    ram: Arc<GuestRam>,
    bus: Arc<Mutex<PioBus>>,
    mmio: Arc<MmioBus>,
    memory_mib: u32,
}

struct Inner {
    vcpus: Vec<VcpuLink>,
    parked_tx: mpsc::Sender<usize>,
    parked_rx: mpsc::Receiver<usize>,
    /// The device loops while paused, in window order (None: a device without a loop of
    /// its own to park).
    devices: Vec<Option<Parked>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Control {
    pub fn new(
        vm: Arc<VmFd>,
        ram: Arc<GuestRam>,
        bus: Arc<Mutex<PioBus>>,
        mmio: Arc<MmioBus>,
        memory_mib: u32,
    ) -> Control {
        let (parked_tx, parked_rx) = mpsc::channel();
        Control {
            paused: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                vcpus: Vec::new(),
                parked_tx,
                parked_rx,
                devices: Vec::new(),
            }),
            vm,
            ram,
            bus,
            mmio,
            memory_mib,
        }
    }

    /// The ports of `count` vCPU threads, made before any starts, so that a pause
    /// always waits for (and resumes) every one of them.
    pub fn vcpu_ports(&self, count: usize) -> Vec<VcpuPort> {
        let mut inner = lock(&self.inner);
        (0..count)
            .map(|_| {
                let (tx, rx) = mpsc::channel();
                inner.vcpus.push(VcpuLink {
                    thread: None,
                    commands: tx,
                });
                VcpuPort {
                    commands: rx,
                    parked: inner.parked_tx.clone(),
                }
            })
            .collect()
    }

    /// vCPU `id`'s thread, once spawned.
    pub fn set_thread(&self, id: usize, thread: JoinHandle<()>) {
        if let Some(v) = lock(&self.inner).vcpus.get_mut(id) {
            v.thread = Some(thread);
        }
    }

    pub fn memory_bytes(&self) -> u64 {
        u64::from(self.memory_mib) << 20
    }

    /// Whether a vCPU thread should park instead of entering the guest.
    pub fn pause_wanted(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Stops every vCPU and device; returns once all have stopped.
    pub fn pause(&self) -> Result<(), Error> {
        let mut inner = lock(&self.inner);
        if inner.vcpus.is_empty() {
            return Err(Error::NotRunning);
        }
        if self.paused.swap(true, Ordering::SeqCst) {
            return Err(Error::AlreadyPaused);
        }
        match self.stop_vcpus(&inner).and_then(|()| self.park_devices()) {
            Ok(devices) => {
                inner.devices = devices;
                tracing::info!("VM paused");
                Ok(())
            }
            Err(e) => {
                // Devices parked so far were let go when their handles dropped.
                self.paused.store(false, Ordering::SeqCst);
                resume_vcpus(&inner);
                Err(e)
            }
        }
    }

    /// Parks every device that has a loop of its own, in window order.
    fn park_devices(&self) -> Result<Vec<Option<Parked>>, Error> {
        self.mmio
            .transports()
            .map(|(_, t)| {
                let pacer = lock(t).pacer();
                pacer
                    .map(|p| p.park("device"))
                    .transpose()
                    .map_err(|e| Error::Device(e.to_string()))
            })
            .collect()
    }

    fn stop_vcpus(&self, inner: &Inner) -> Result<(), Error> {
        // Answers left from an earlier, failed pause are stale.
        while inner.parked_rx.try_recv().is_ok() {}
        kick(&inner.vcpus, |_| true);
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut parked = vec![false; inner.vcpus.len()];
        while parked.iter().any(|p| !p) {
            let left = deadline.saturating_duration_since(Instant::now());
            match inner
                .parked_rx
                .recv_timeout(left.min(Duration::from_millis(50)))
            {
                Ok(id) => {
                    if let Some(p) = parked.get_mut(id) {
                        *p = true;
                    }
                }
                Err(_) if left.is_zero() => {
                    let id = parked.iter().position(|p| !p).unwrap_or(0);
                    return Err(Error::VcpuStuck(id));
                }
                // A kick that landed between a thread's check and its KVM_RUN is caught by
                // immediate_exit; kicking again only covers a thread that was not yet armed.
                Err(_) => kick(&inner.vcpus, |id| !parked[id]),
            }
        }
        Ok(())
    }

    /// Lets the devices, then the vCPUs, go on.
    pub fn resume(&self) -> Result<(), Error> {
        let mut inner = lock(&self.inner);
        if !self.paused.load(Ordering::SeqCst) {
            return Err(Error::NotPaused);
        }
        inner.devices.clear();
        self.paused.store(false, Ordering::SeqCst);
        resume_vcpus(&inner);
        tracing::info!("VM resumed");
        Ok(())
    }

    /// Writes a snapshot of the paused VM into `dir` (an existing directory).
    pub fn snapshot(&self, dir: &Path) -> Result<(), Error> {
        let inner = lock(&self.inner);
        if !self.paused.load(Ordering::SeqCst) {
            return Err(Error::NotPaused);
        }
        if inner.vcpus.is_empty() {
            return Err(Error::NotRunning);
        }
        let started = Instant::now();
        let mut vcpus = Vec::with_capacity(inner.vcpus.len());
        for (id, v) in inner.vcpus.iter().enumerate() {
            let (tx, rx) = mpsc::channel();
            let what = |w: &str| Error::Vcpu {
                id,
                what: w.to_string(),
            };
            v.commands
                .send(VcpuCommand::Save(tx))
                .map_err(|_| what("its thread is gone"))?;
            let state = rx
                .recv_timeout(STOP_TIMEOUT)
                .map_err(|_| what("no answer"))?
                .map_err(|e| what(&e))?;
            vcpus.push(state);
        }
        let vm = state::save_vm(&self.vm).map_err(Error::Vm)?;
        let serial = lock(&self.bus).serial.state();
        let mut devices = Vec::new();
        for (i, (_, t)) in self.mmio.transports().enumerate() {
            let parked = inner.devices.get(i).and_then(Option::as_ref);
            devices.push(
                lock(t)
                    .save(parked)
                    .map_err(|e| Error::Device(e.to_string()))?,
            );
        }
        snapshot::write_memory(dir, &self.ram)?;
        snapshot::write_state(
            dir,
            &MachineState {
                vmm_version: env!("CARGO_PKG_VERSION").to_string(),
                memory_mib: self.memory_mib,
                vcpus,
                vm,
                serial,
                devices,
            },
        )?;
        tracing::info!(ms = started.elapsed().as_millis(), dir = %dir.display(), "snapshot written");
        Ok(())
    }
}

/// Kicks the spawned vCPU threads `which` picks (a thread not yet spawned sees the pause
/// flag before its first KVM_RUN).
fn kick(vcpus: &[VcpuLink], which: impl Fn(usize) -> bool) {
    for (id, v) in vcpus.iter().enumerate() {
        if let (true, Some(t)) = (which(id), &v.thread) {
            vcpu_kick::kick(t);
        }
    }
}

fn resume_vcpus(inner: &Inner) {
    for v in &inner.vcpus {
        let _ = v.commands.send(VcpuCommand::Resume);
    }
}

impl VcpuPort {
    /// Parks the calling vCPU thread (vCPU `id`) until told to resume; serves the state
    /// requests of a snapshot meanwhile with `save`. False: the controller is gone.
    pub fn park(&self, id: usize, mut save: impl FnMut() -> Result<VcpuState, String>) -> bool {
        // A Resume sent to a thread that never parked (a pause that failed) is stale.
        while self.commands.try_recv().is_ok() {}
        let _ = self.parked.send(id);
        loop {
            match self.commands.recv() {
                Ok(VcpuCommand::Resume) => return true,
                Ok(VcpuCommand::Save(reply)) => {
                    let _ = reply.send(save());
                }
                Err(_) => return false,
            }
        }
    }
}
