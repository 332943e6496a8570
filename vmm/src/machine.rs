//! A hull microVM: the KVM VM, its memory slots, in-kernel irqchip and PIT, the PIO
//! devices, and one thread per vCPU. It runs until the guest resets (its way of ending),
//! triple-faults, or KVM reports an error.

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    CpuId, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN, kvm_userspace_memory_region,
};
use kvm_ioctls::{IoEventAddress, Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::{boot, cpu, irqchip, state};
use crate::devices::i8042::I8042;
use crate::devices::serial::{self, Serial};
use crate::devices::virtio::block::{Block, DiskConfig};
use crate::devices::virtio::fs::{FsConfig, VhostUserFs};
use crate::devices::virtio::mmio::{MMIO_LEN, MmioTransport, QUEUE_NOTIFY, TransportState};
use crate::devices::virtio::net::{Net, NetConfig};
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::devices::{Action, PioBus};
use crate::exit_stats;
use crate::log_budget::LogBudget;
use crate::memory::{self, GuestRam};
use crate::seccomp::{self, ThreadKind};
use crate::snapshot;
use crate::vcpu_kick;
use crate::vm_control::{Control, VcpuPort};

pub enum Boot {
    /// A Linux kernel (ELF vmlinux or bzImage), optional initrd, kernel parameters.
    Linux {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
    },
    /// A raw real-mode image loaded at `addr` and entered there (tests, tiny firmware).
    RealMode { image: Vec<u8>, addr: u16 },
}

pub struct MachineConfig {
    pub memory_mib: u32,
    pub vcpus: u8,
    pub boot: Boot,
    pub serial_out: Box<dyn Write + Send>,
    pub devices: Devices,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    #[serde(default = "default_cid")]
    pub cid: u64,
    pub uds: PathBuf,
}

/// The guest's vsock context id unless configured (the first one not reserved).
pub const DEFAULT_CID: u64 = 3;

fn default_cid() -> u64 {
    DEFAULT_CID
}

/// First virtio-mmio window and IRQ; each further device takes the next ones, up to the
/// IOAPIC's last pin.
const MMIO_BASE: u64 = 0xd000_0000;
const MMIO_FIRST_IRQ: u32 = 5;
const MMIO_LAST_IRQ: u32 = 23;

/// The virtio-mmio devices by their window.
pub struct MmioBus {
    devices: Vec<(u64, Mutex<MmioTransport>)>,
}

/// What making or running the VM can fail on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("a VM needs at least one vCPU")]
    NoVcpus,
    #[error("too many virtio devices (at most {0})")]
    TooManyDevices(u32),
    #[error("{op}: {source}")]
    Kvm {
        op: String,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Device {
        what: String,
        #[source]
        source: crate::devices::virtio::Error,
    },
    #[error(transparent)]
    Arch(#[from] crate::arch::x86_64::Error),
    #[error(transparent)]
    Memory(#[from] memory::Error),
    #[error("loading the image: {0}")]
    Image(#[source] vm_memory::GuestMemoryError),
    #[error("every vCPU thread ended without a word")]
    NoExit,
    #[error(transparent)]
    Snapshot(#[from] snapshot::Error),
    #[error("restoring the snapshot: {0}")]
    Restore(String),
    /// A vCPU met a state it cannot go on from; the message has its registers.
    #[error("vCPU {id}: {what}")]
    Vcpu { id: usize, what: String },
}

fn ioctl(op: impl Into<String>) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    let op = op.into();
    move |source| Error::Kvm { op, source }
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

fn device_error(what: impl Into<String>) -> impl FnOnce(crate::devices::virtio::Error) -> Error {
    let what = what.into();
    move |source| Error::Device { what, source }
}

impl MmioBus {
    /// The devices in window order.
    pub fn transports(&self) -> impl Iterator<Item = (u64, &Mutex<MmioTransport>)> {
        self.devices.iter().map(|(b, t)| (*b, t))
    }

    /// Places `device` in the next window with the next IRQ, wired to KVM through an irqfd;
    /// returns the kernel parameter that announces it. With `restored`, the transport
    /// and the device's queues are as a snapshot left them.
    fn add(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        device: Box<dyn VirtioDevice>,
        restored: Option<&TransportState>,
    ) -> Result<String, Error> {
        let max = MMIO_LAST_IRQ - MMIO_FIRST_IRQ + 1;
        let n = u32::try_from(self.devices.len()).map_err(|_| Error::TooManyDevices(max))?;
        let irq = MMIO_FIRST_IRQ + n;
        if irq > MMIO_LAST_IRQ {
            return Err(Error::TooManyDevices(max));
        }
        let base = MMIO_BASE + u64::from(n) * MMIO_LEN;
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(io("virtio irq eventfd"))?;
        vm.register_irqfd(&evt, irq)
            .map_err(ioctl("registering a virtio irqfd"))?;
        // A write of queue index i to the notify register signals the device's i-th
        // eventfd inside KVM: the vCPU goes on running the guest.
        let queue_events = device
            .queue_events()
            .map_err(io("cloning the queue eventfds"))?;
        for (i, qevt) in (0u32..).zip(&queue_events) {
            vm.register_ioevent(qevt, &IoEventAddress::Mmio(base + QUEUE_NOTIFY), i)
                .map_err(ioctl("registering a queue ioeventfd"))?;
        }
        let interrupt = Interrupt::new(evt);
        let transport = match restored {
            None => MmioTransport::new(device, mem.clone(), interrupt),
            Some(state) => MmioTransport::restore(device, mem.clone(), interrupt, state),
        }
        .map_err(device_error("the virtio-mmio transport"))?;
        self.devices.push((base, Mutex::new(transport)));
        Ok(format!(" virtio_mmio.device=4K@{base:#x}:{irq}"))
    }

    fn find(&self, addr: u64) -> Option<(u64, &Mutex<MmioTransport>)> {
        self.devices
            .iter()
            .find(|(base, _)| (*base..*base + MMIO_LEN).contains(&addr))
            .map(|(b, d)| (addr - b, d))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset the machine (i8042 or KVM reset event): its orderly end.
    Reset,
    /// A triple fault or KVM shutdown event.
    Shutdown,
    /// The operator asked for it through the API socket.
    ApiShutdown,
}

/// How a VM's end is reported to `Machine::run`.
pub type ExitSender = mpsc::Sender<Result<ExitReason, Error>>;

pub struct Machine {
    vcpus: Vec<(VcpuFd, CpuId)>,
    msr_indices: Arc<Vec<u32>>,
    bus: Arc<Mutex<PioBus>>,
    mmio: Arc<MmioBus>,
    control: Arc<Control>,
    exit_tx: ExitSender,
    exit_rx: mpsc::Receiver<Result<ExitReason, Error>>,
}

/// The devices of a VM, whether it boots or is restored (`default()`: none).
#[derive(Default)]
pub struct Devices {
    /// virtio-vsock with the hybrid unix socket at `uds`.
    pub vsock: Option<VsockConfig>,
    /// virtio-blk devices, in order (the guest sees vda, vdb, ...).
    pub disks: Vec<DiskConfig>,
    /// virtio-fs devices, each served by a vhost-user daemon.
    pub fs: Vec<FsConfig>,
    /// virtio-net devices, each on a tap fd this process inherited.
    pub nets: Vec<NetConfig>,
}

/// A VM to restore from a snapshot directory, with the host side of its devices (a new
/// vsock socket, ...), which must be the snapshot's devices in kind and order.
pub struct RestoreConfig {
    pub dir: PathBuf,
    pub serial_out: Box<dyn Write + Send>,
    pub devices: Devices,
}

/// The KVM VM with `ram` in its memory slots and the irqchip and PIT made.
fn create_vm(kvm: &Kvm, ram: &GuestRam) -> Result<VmFd, Error> {
    let vm = kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
    boot_step("KVM VM created");
    for (slot, region) in (0u32..).zip(ram.memory.iter()) {
        let host = ram
            .memory
            .get_host_address(region.start_addr())
            .map_err(crate::arch::x86_64::Error::from)?;
        let mr = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `ram`, which the Machine keeps
        // for as long as the VM exists; its size and address come from that mapping.
        unsafe { vm.set_user_memory_region(mr) }.map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))?;
    }
    irqchip::create(&vm)?;
    boot_step("guest RAM mapped, irqchip and PIT made");
    Ok(vm)
}

/// The port-I/O devices around `serial`, its interrupt wired to KVM.
fn pio_bus(vm: &VmFd, serial: Serial) -> Result<Arc<Mutex<PioBus>>, Error> {
    let serial_irq = serial.irq_evt().map_err(io("serial eventfd"))?;
    vm.register_irqfd(&serial_irq, serial::IRQ)
        .map_err(ioctl("registering the serial irqfd"))?;
    Ok(Arc::new(Mutex::new(PioBus {
        serial,
        i8042: I8042,
    })))
}

/// Makes the virtio devices in window order (vsock, disks, fs, nets); with `restored`,
/// each as the snapshot left the device in its window. Returns the bus and the kernel
/// parameters that announce the devices.
fn make_devices(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    cfg: &Devices,
    restored: Option<&[TransportState]>,
) -> Result<(MmioBus, String), Error> {
    let mut made: Vec<Box<dyn VirtioDevice>> = Vec::new();
    if let Some(v) = &cfg.vsock {
        let dev = Vsock::new(v.cid, v.uds.clone()).map_err(device_error("vsock device"))?;
        made.push(Box::new(dev));
    }
    for d in &cfg.disks {
        made.push(Box::new(
            Block::open(d).map_err(device_error("block device"))?,
        ));
    }
    for f in &cfg.fs {
        let dev = VhostUserFs::connect(f).map_err(device_error("virtio-fs device"))?;
        made.push(Box::new(dev));
    }
    for n in &cfg.nets {
        let dev =
            Net::new(n, mem).map_err(device_error(format!("net device on tap-fd {}", n.tap_fd)))?;
        made.push(Box::new(dev));
    }
    if let Some(states) = restored
        && states.len() != made.len()
    {
        return Err(Error::Restore(format!(
            "the snapshot has {} virtio devices, the restored VM was given {}",
            states.len(),
            made.len()
        )));
    }
    let mut mmio = MmioBus {
        devices: Vec::new(),
    };
    let mut params = String::new();
    for (i, dev) in made.into_iter().enumerate() {
        params += &mmio.add(vm, mem, dev, restored.and_then(|s| s.get(i)))?;
    }
    boot_step("devices made");
    Ok((mmio, params))
}

impl Machine {
    pub fn new(cfg: MachineConfig) -> Result<Machine, Error> {
        if cfg.vcpus == 0 {
            return Err(Error::NoVcpus);
        }
        let kvm = Kvm::new().map_err(ioctl("opening /dev/kvm"))?;
        let ram = memory::create(cfg.memory_mib)?;
        let vm = create_vm(&kvm, &ram)?;
        let serial = Serial::new(cfg.serial_out).map_err(io("serial eventfd"))?;
        let bus = pio_bus(&vm, serial)?;
        let (mmio, device_params) = make_devices(&vm, &ram.memory, &cfg.devices, None)?;

        let mut vcpus = Vec::with_capacity(cfg.vcpus as usize);
        for id in 0..cfg.vcpus {
            let vcpu = vm
                .create_vcpu(u64::from(id))
                .map_err(ioctl(format!("KVM_CREATE_VCPU {id}")))?;
            let cpuid = cpu::configure_common(&kvm, &vcpu, id, cfg.vcpus)?;
            vcpus.push((vcpu, cpuid));
        }
        boot_step("vCPUs made");
        match cfg.boot {
            Boot::Linux {
                kernel,
                initrd,
                cmdline,
            } => {
                let loaded = boot::load_kernel(&ram.memory, &kernel)?;
                let kernel_end = loaded.kernel_load.raw_value() + loaded.kernel_end;
                let initrd = match initrd {
                    Some(p) => Some(boot::load_initrd(&ram.memory, &p, kernel_end)?),
                    None => None,
                };
                boot::configure_linux(
                    &ram.memory,
                    &loaded,
                    &boot::build_cmdline(&format!("{cmdline}{device_params}"))?,
                    initrd,
                )?;
                boot::mptable::write(&ram.memory, cfg.vcpus)?;
                cpu::configure_long_mode(&vcpus[0].0, &ram.memory, loaded.kernel_load.raw_value())?;
            }
            Boot::RealMode { image, addr } => {
                ram.memory
                    .write_slice(&image, GuestAddress(u64::from(addr)))
                    .map_err(Error::Image)?;
                cpu::configure_real_mode(&vcpus[0].0, addr)?;
            }
        }
        boot_step("guest loaded");
        Machine::assemble(&kvm, vm, ram, vcpus, bus, mmio, cfg.memory_mib)
    }

    /// A VM as the snapshot in `cfg.dir` left it, ready to run on. Refused (before any
    /// vCPU runs) when the snapshot is damaged, of another format, taken on a host whose
    /// CPU offers other features, or taken with other devices.
    pub fn restore(cfg: RestoreConfig) -> Result<Machine, Error> {
        let state = snapshot::read_state(&cfg.dir)?;
        let count = u8::try_from(state.vcpus.len())
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| Error::Restore(format!("{} vCPUs", state.vcpus.len())))?;
        let kvm = Kvm::new().map_err(ioctl("opening /dev/kvm"))?;
        let file = snapshot::open_memory(&cfg.dir, u64::from(state.memory_mib) << 20)?;
        // A vhost-user daemon maps guest memory from the memfd: it cannot share a private
        // copy-on-write view, so such a VM gets its own copy (and shares no pages).
        let ram = if cfg.devices.fs.is_empty() {
            memory::restore(file, state.memory_mib)?
        } else {
            memory::restore_copied(&file, state.memory_mib)?
        };
        let vm = create_vm(&kvm, &ram)?;
        let serial = Serial::restore(cfg.serial_out, &state.serial).map_err(io("serial state"))?;
        let bus = pio_bus(&vm, serial)?;
        let (mmio, _) = make_devices(&vm, &ram.memory, &cfg.devices, Some(&state.devices))?;
        let mut vcpus = Vec::with_capacity(state.vcpus.len());
        for (id, saved) in (0..count).zip(&state.vcpus) {
            let here = cpu::cpuid(&kvm, id, count)?;
            if here.as_slice() != saved.cpuid.as_slice() {
                return Err(Error::Restore(
                    "the snapshot was taken on a host whose CPU profile (CPUID) differs from this one's"
                        .into(),
                ));
            }
            let vcpu = vm
                .create_vcpu(u64::from(id))
                .map_err(ioctl(format!("KVM_CREATE_VCPU {id}")))?;
            state::restore_vcpu(&vcpu, saved)?;
            vcpus.push((vcpu, here));
        }
        state::restore_vm(&vm, &state.vm)?;
        for (_, t) in mmio.transports() {
            t.lock().expect("mmio lock").reassert_interrupt();
        }
        boot_step("restored");
        Machine::assemble(&kvm, vm, ram, vcpus, bus, mmio, state.memory_mib)
    }

    fn assemble(
        kvm: &Kvm,
        vm: VmFd,
        ram: GuestRam,
        vcpus: Vec<(VcpuFd, CpuId)>,
        bus: Arc<Mutex<PioBus>>,
        mmio: MmioBus,
        memory_mib: u32,
    ) -> Result<Machine, Error> {
        let msr_indices = Arc::new(state::msr_index_list(kvm)?);
        let mmio = Arc::new(mmio);
        // The controller holds the VM and its RAM for as long as the machine lives.
        let control = Arc::new(Control::new(
            Arc::new(vm),
            Arc::new(ram),
            bus.clone(),
            mmio.clone(),
            memory_mib,
        ));
        let (exit_tx, exit_rx) = mpsc::channel();
        Ok(Machine {
            vcpus,
            msr_indices,
            bus,
            mmio,
            control,
            exit_tx,
            exit_rx,
        })
    }

    /// Where other parts of the VMM (the API socket) report that the VM should end.
    pub fn exit_sender(&self) -> ExitSender {
        self.exit_tx.clone()
    }

    /// The size of guest RAM (and of a snapshot's memory file).
    pub fn memory_bytes(&self) -> u64 {
        self.control.memory_bytes()
    }

    /// Pause, resume and snapshot, for the API socket.
    pub fn control(&self) -> Arc<Control> {
        self.control.clone()
    }

    /// Runs every vCPU on its own thread; returns when the first one ends the VM (or the
    /// API asks for it). The calling thread is confined once the vCPUs run.
    pub fn run(self) -> Result<ExitReason, Error> {
        vcpu_kick::install_handler().map_err(io("installing the vCPU kick handler"))?;
        let tx = self.exit_tx;
        let ports = self.control.vcpu_ports(self.vcpus.len());
        for (id, ((vcpu, cpuid), port)) in self.vcpus.into_iter().zip(ports).enumerate() {
            let bus = self.bus.clone();
            let mmio = self.mmio.clone();
            let control = self.control.clone();
            let msrs = self.msr_indices.clone();
            let tx = tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || {
                    let ctx = VcpuContext {
                        id,
                        bus: &bus,
                        mmio: &mmio,
                        control: &control,
                        port: &port,
                        cpuid: &cpuid,
                        msrs: &msrs,
                    };
                    let _ = tx.send(run_vcpu(&ctx, vcpu));
                })
                .map_err(io("spawning a vCPU thread"))?;
            self.control.set_thread(id, thread);
        }
        drop(tx);
        seccomp::apply_or_exit(ThreadKind::Device);
        self.exit_rx.recv().map_err(|_| Error::NoExit)?
    }
}

/// Logs how long after the process start a step of making the VM finished: the parts of
/// "VMM start -> first KVM_RUN" in `make bench-vmm`.
fn boot_step(step: &str) {
    tracing::debug!(us = since_start_us(), "{step}");
}

/// Microseconds since the process started.
fn since_start_us() -> u64 {
    process_start()
        .elapsed()
        .as_micros()
        .try_into()
        .unwrap_or(u64::MAX)
}

/// When the process started, for the boot figures hull-vmm logs.
pub fn process_start() -> std::time::Instant {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *START.get_or_init(std::time::Instant::now)
}

/// The registers that tell where and in which mode a vCPU stopped, on one line: what an
/// operator (or a bug report) needs after a triple fault.
fn vcpu_state(vcpu: &VcpuFd) -> String {
    let regs = match vcpu.get_regs() {
        Ok(r) => format!("rip={:#x} rsp={:#x} rflags={:#x}", r.rip, r.rsp, r.rflags),
        Err(e) => format!("registers unreadable ({e})"),
    };
    let sregs = match vcpu.get_sregs() {
        Ok(s) => format!(
            "cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x} idt={:#x}/{:#x}",
            s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.cs.selector, s.idt.base, s.idt.limit
        ),
        Err(e) => format!("system registers unreadable ({e})"),
    };
    format!("{regs} {sregs}")
}

/// What a vCPU thread works with besides its vCPU.
struct VcpuContext<'a> {
    id: usize,
    bus: &'a Mutex<PioBus>,
    mmio: &'a MmioBus,
    control: &'a Control,
    port: &'a VcpuPort,
    cpuid: &'a CpuId,
    msrs: &'a [u32],
}

fn run_vcpu(ctx: &VcpuContext, mut vcpu: VcpuFd) -> Result<ExitReason, Error> {
    seccomp::apply_or_exit(ThreadKind::Vcpu);
    vcpu_kick::arm(&mut vcpu);
    let result = vcpu_loop(ctx, &mut vcpu);
    vcpu_kick::disarm();
    result
}

fn vcpu_loop(ctx: &VcpuContext, vcpu: &mut VcpuFd) -> Result<ExitReason, Error> {
    let id = ctx.id;
    let fail = |what: String| Err(Error::Vcpu { id, what });
    if id == 0 {
        tracing::info!(us = since_start_us(), "first KVM_RUN");
    }
    loop {
        if ctx.control.pause_wanted() {
            let save = || state::save_vcpu(vcpu, ctx.cpuid, ctx.msrs).map_err(|e| e.to_string());
            if !ctx.port.park(id, save) {
                return Err(Error::NoExit);
            }
        }
        let exit = vcpu.run();
        exit_stats::count(match &exit {
            Ok(VcpuExit::IoIn(..)) => exit_stats::Reason::IoIn,
            Ok(VcpuExit::IoOut(..)) => exit_stats::Reason::IoOut,
            Ok(VcpuExit::MmioRead(..)) => exit_stats::Reason::MmioRead,
            Ok(VcpuExit::MmioWrite(..)) => exit_stats::Reason::MmioWrite,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                exit_stats::Reason::Interrupted
            }
            _ => exit_stats::Reason::Other,
        });
        match exit {
            Ok(VcpuExit::IoIn(port, data)) => ctx.bus.lock().expect("bus lock").read(port, data),
            Ok(VcpuExit::IoOut(port, data)) => {
                match ctx.bus.lock().expect("bus lock").write(port, data) {
                    Action::Reset => return Ok(ExitReason::Reset),
                    Action::GuestReady => {
                        // The guest may write the boot-timer port as often as it likes.
                        static READY: LogBudget = LogBudget::new(1);
                        if READY.spend() {
                            tracing::info!(ms = since_start_us() / 1000, "guest agent ready")
                        }
                    }
                    Action::None => {}
                }
            }
            // Outside any device window, reads see nothing and writes go nowhere.
            Ok(VcpuExit::MmioRead(addr, data)) => match ctx.mmio.find(addr) {
                Some((offset, dev)) => dev.lock().expect("mmio lock").read(offset, data),
                None => data.fill(0xff),
            },
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if let Some((offset, dev)) = ctx.mmio.find(addr) {
                    dev.lock().expect("mmio lock").write(offset, data);
                }
            }
            Ok(VcpuExit::Shutdown) => {
                tracing::error!(vcpu = id, state = %vcpu_state(vcpu), "guest triple fault");
                return Ok(ExitReason::Shutdown);
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_RESET => return Ok(ExitReason::Reset),
                KVM_SYSTEM_EVENT_SHUTDOWN => return Ok(ExitReason::Shutdown),
                other => return fail(format!("unexpected system event {other}")),
            },
            Ok(VcpuExit::Hlt) => {
                return fail("halted with no interrupt controller to wake it".into());
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                return fail(format!(
                    "VM entry failed (reason {reason:#x}, cpu {cpu}): {}",
                    vcpu_state(vcpu)
                ));
            }
            Ok(VcpuExit::InternalError) => {
                return fail(format!("KVM internal error: {}", vcpu_state(vcpu)));
            }
            Ok(other) => return fail(format!("unhandled exit {other:?}")),
            // A kick (or another signal): clear the kick's mark, then look at the pause flag.
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
            }
            Err(e) => return fail(format!("KVM_RUN: {e}")),
        }
    }
}
