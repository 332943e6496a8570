//! Per-thread seccomp filters (seccompiler): every hull-vmm thread installs the filter for
//! its kind before it touches guest memory or runs guest code. Nothing after start-up may
//! open files, create processes, mount or map devices; only the syscalls each thread needs
//! to run the VM are allowed, with `ioctl` narrowed to its request numbers and `socket`
//! to unix sockets. A forbidden syscall ends the VMM with exit status 3 and a message
//! naming the syscall (a SIGSYS handler), not a silent kill.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// hull-vmm's exit status when a thread breaks its filter.
pub const EXIT_SECCOMP: i32 = 3;

const KVM_RUN: u64 = 0xae80;
/// Read-only vCPU state, for the report of a guest that triple-faulted or failed entry.
const KVM_GET_REGS: u64 = 0x8090_ae81;
const KVM_GET_SREGS: u64 = 0x8138_ae83;
const FIONBIO: u64 = 0x5421;

/// `_IOR(KVMIO, nr, T)` and `_IOWR(KVMIO, nr, T)`.
const fn kvm_ior<T>(nr: u64) -> u64 {
    (2 << 30) | ((std::mem::size_of::<T>() as u64) << 16) | (0xae << 8) | nr
}
const fn kvm_iowr<T>(nr: u64) -> u64 {
    (3 << 30) | ((std::mem::size_of::<T>() as u64) << 16) | (0xae << 8) | nr
}

/// What a parked vCPU thread reads of its vCPU for a snapshot.
const VCPU_STATE_IOCTLS: [u64; 7] = [
    kvm_iowr::<kvm_bindings::kvm_msrs>(0x88),
    kvm_ior::<kvm_bindings::kvm_vcpu_events>(0x9f),
    kvm_ior::<kvm_bindings::kvm_mp_state>(0x98),
    kvm_ior::<kvm_bindings::kvm_xsave>(0xa4),
    kvm_ior::<kvm_bindings::kvm_xcrs>(0xa6),
    kvm_ior::<kvm_bindings::kvm_debugregs>(0xa1),
    kvm_ior::<kvm_bindings::kvm_lapic_state>(0x8e),
];

/// What the API thread reads of the VM for a snapshot: PIC and IOAPIC, PIT, clock.
const VM_STATE_IOCTLS: [u64; 3] = [
    kvm_iowr::<kvm_bindings::kvm_irqchip>(0x62),
    kvm_ior::<kvm_bindings::kvm_pit_state2>(0x9f),
    kvm_ior::<kvm_bindings::kvm_clock_data>(0x7c),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// Runs KVM_RUN and serves the exits answered inline (serial, i8042, virtio-mmio
    /// registers). Device work is the event loops': a vCPU thread touches no file.
    Vcpu,
    /// Event loops (virtio-net, vsock sockets, virtio-fs interrupts, the API socket) and
    /// the main thread once the VM runs.
    Device,
    /// virtio-blk's event loop: it also reads, writes and syncs its disk image.
    Block,
    /// virtio-net's thread when vhost-net moves the frames: an event loop that also
    /// attaches and detaches the kernel's rings.
    VhostNet,
    /// The API socket's thread: a device loop that also writes snapshots (creates,
    /// writes, syncs and renames the files of the directory it is given, and reads the
    /// VM's interrupt controllers and clock).
    Api,
}

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns filters off for this process (`--no-seccomp`, for debugging only).
pub fn disable() {
    ENABLED.store(false, Ordering::SeqCst);
}

/// The syscalls every thread needs: memory, futexes, signals, I/O on descriptors it
/// already holds, epoll, unix-socket traffic, time.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mprotect,
    libc::SYS_brk,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_sched_yield,
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_fcntl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_connect,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
];

/// The block device's loop reads and writes the image it holds.
const BLOCK_EXTRA: &[i64] = &[
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
];

/// Writing a snapshot's files.
const API_EXTRA: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_pwrite64,
    libc::SYS_write,
    libc::SYS_ftruncate,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
];

/// Event loops accept connections (hybrid vsock, API socket). They already run when the
/// jail drops the process's uid and gid, which glibc applies to every thread by having
/// each one make the same calls: lowering ids is all they can do with them.
const DEVICE_EXTRA: &[i64] = &[
    libc::SYS_accept4,
    libc::SYS_accept,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_setgroups,
];

fn eq(arg: u8, value: u64) -> SeccompRule {
    SeccompRule::new(vec![
        SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
            .expect("valid condition"),
    ])
    .expect("valid rule")
}

/// The BPF program for `kind`.
pub fn filter(kind: ThreadKind) -> Result<BpfProgram, seccompiler::Error> {
    filter_with(kind, SeccompAction::Trap)
}

fn filter_with(
    kind: ThreadKind,
    mismatch: SeccompAction,
) -> Result<BpfProgram, seccompiler::Error> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let extra: &[&[i64]] = match kind {
        ThreadKind::Vcpu => &[],
        ThreadKind::Device | ThreadKind::VhostNet => &[DEVICE_EXTRA],
        ThreadKind::Block => &[DEVICE_EXTRA, BLOCK_EXTRA],
        ThreadKind::Api => &[DEVICE_EXTRA, API_EXTRA],
    };
    for nr in COMMON.iter().chain(extra.iter().copied().flatten()) {
        rules.insert(*nr, Vec::new());
    }
    let ioctls = match kind {
        ThreadKind::Vcpu => [KVM_RUN, FIONBIO, KVM_GET_REGS, KVM_GET_SREGS]
            .into_iter()
            .chain(VCPU_STATE_IOCTLS)
            .map(|nr| eq(1, nr))
            .collect(),
        ThreadKind::Api => [FIONBIO]
            .into_iter()
            .chain(VM_STATE_IOCTLS)
            .map(|nr| eq(1, nr))
            .collect(),
        // TUNSETOFFLOAD: the net thread tells the tap what the guest negotiated.
        ThreadKind::Device => vec![eq(1, FIONBIO), eq(1, libc::TUNSETOFFLOAD)],
        ThreadKind::Block => vec![eq(1, FIONBIO)],
        ThreadKind::VhostNet => [FIONBIO, libc::TUNSETOFFLOAD]
            .into_iter()
            .chain(vhost_net_ioctls())
            .map(|nr| eq(1, nr))
            .collect(),
    };
    rules.insert(libc::SYS_ioctl, ioctls);
    rules.insert(libc::SYS_socket, vec![eq(0, libc::AF_UNIX as u64)]);
    let f = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)?;
    BpfProgram::try_from(f).map_err(seccompiler::Error::Backend)
}

/// What the vhost-net thread asks of `/dev/vhost-net` after start-up: features, rings,
/// eventfds and the tap (owner and memory table are set before seccomp).
fn vhost_net_ioctls() -> impl Iterator<Item = u64> {
    use vhost::vhost_kern::vhost_binding as v;
    [
        v::VHOST_SET_FEATURES(),
        v::VHOST_SET_VRING_NUM(),
        v::VHOST_SET_VRING_ADDR(),
        v::VHOST_SET_VRING_BASE(),
        v::VHOST_GET_VRING_BASE(),
        v::VHOST_SET_VRING_CALL(),
        v::VHOST_SET_VRING_KICK(),
        v::VHOST_SET_VRING_ERR(),
        v::VHOST_NET_SET_BACKEND(),
    ]
    .into_iter()
}

/// Installs the filter for `kind` on the calling thread; a thread that can't be confined
/// must not run, so failure ends the process.
pub fn apply_or_exit(kind: ThreadKind) {
    if !ENABLED.load(Ordering::SeqCst) {
        return;
    }
    let result = filter(kind).and_then(|p| seccompiler::apply_filter(&p));
    if let Err(e) = result {
        eprintln!("hull-vmm: installing the {kind:?} seccomp filter: {e}");
        std::process::exit(1);
    }
}

/// Reports a forbidden syscall and ends the process (SIGSYS from a Trap filter).
extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SIGSYS; on x86_64 its `si_syscall`
    // (an int) follows `si_call_addr` in the union that starts at byte 16.
    let nr = unsafe { *(info.cast::<u8>().add(24).cast::<libc::c_int>()) };
    let mut msg = *b"hull-vmm: seccomp: forbidden syscall 0000\n";
    let digits = &mut msg[37..41];
    let mut n = nr.unsigned_abs();
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `msg` lives on this stack.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(EXIT_SECCOMP);
    }
}

/// Installs the SIGSYS handler (once, process-wide, before any filter).
pub fn install_sigsys_handler() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid start; the handler is async-signal-safe and
    // has the SA_SIGINFO signature.
    let rc = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_ioctl_numbers_match_the_structs() {
        // _IOR(KVMIO, nr, struct): direction 2, the struct's size, type 0xae.
        let ior = |nr: u64, size: usize| (2 << 30) | ((size as u64) << 16) | (0xae << 8) | nr;
        assert_eq!(
            KVM_GET_REGS,
            ior(0x81, std::mem::size_of::<kvm_bindings::kvm_regs>())
        );
        assert_eq!(
            KVM_GET_SREGS,
            ior(0x83, std::mem::size_of::<kvm_bindings::kvm_sregs>())
        );
    }

    #[test]
    fn snapshot_ioctl_numbers_are_the_kernels() {
        // From <linux/kvm.h> on x86_64.
        assert_eq!(
            VCPU_STATE_IOCTLS,
            [
                0xc008_ae88, // KVM_GET_MSRS
                0x8040_ae9f, // KVM_GET_VCPU_EVENTS
                0x8004_ae98, // KVM_GET_MP_STATE
                0x9000_aea4, // KVM_GET_XSAVE
                0x8188_aea6, // KVM_GET_XCRS
                0x8080_aea1, // KVM_GET_DEBUGREGS
                0x8400_ae8e, // KVM_GET_LAPIC
            ]
        );
        assert_eq!(
            VM_STATE_IOCTLS,
            [
                0xc208_ae62, // KVM_GET_IRQCHIP
                0x8070_ae9f, // KVM_GET_PIT2
                0x8030_ae7c, // KVM_GET_CLOCK
            ]
        );
    }

    #[test]
    fn vhost_net_ioctl_numbers_are_the_kernels() {
        // From <linux/vhost.h>: _IOW(VHOST_VIRTIO = 0xaf, nr, type).
        let all: Vec<u64> = vhost_net_ioctls().collect();
        for nr in [
            0x4008_af00,
            0x4008_af10,
            0x4028_af11,
            0x4008_af21,
            0x4008_af30,
        ] {
            assert!(all.contains(&nr), "{nr:#x} in {all:x?}");
        }
    }

    #[test]
    fn filters_compile() {
        assert!(filter(ThreadKind::Vcpu).unwrap().len() > 40);
        assert!(filter(ThreadKind::Device).unwrap().len() > 40);
        assert!(filter(ThreadKind::VhostNet).unwrap().len() > 40);
        assert!(filter(ThreadKind::Block).unwrap().len() > 40);
        assert!(filter(ThreadKind::Api).unwrap().len() > 40);
    }

    /// The API thread writes snapshot files, and still cannot start a process.
    #[test]
    fn the_api_thread_creates_files_but_cannot_fork() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let prog = filter_with(ThreadKind::Api, SeccompAction::Errno(libc::EPERM as u32)).unwrap();
        let (created, forked) = std::thread::spawn(move || {
            seccompiler::apply_filter(&prog).unwrap();
            let created = std::fs::write(&path, b"x").is_ok()
                && std::fs::rename(&path, path.with_extension("done")).is_ok();
            (
                created,
                std::process::Command::new("/bin/true").status().is_ok(),
            )
        })
        .join()
        .unwrap();
        assert!(created && !forked);
    }

    /// Only the block device's loop does file I/O; a vCPU thread, which runs whatever
    /// exit the guest makes, cannot even read a file it holds.
    #[test]
    fn only_the_block_loop_reads_and_writes_files() {
        let file = tempfile::tempfile().unwrap();
        for (kind, allowed) in [
            (ThreadKind::Vcpu, false),
            (ThreadKind::Device, false),
            (ThreadKind::Block, true),
        ] {
            let prog = filter_with(kind, SeccompAction::Errno(libc::EPERM as u32)).unwrap();
            let f = file.try_clone().unwrap();
            let (wrote, read, synced) = std::thread::spawn(move || {
                use std::os::unix::fs::FileExt;
                seccompiler::apply_filter(&prog).unwrap();
                let wrote = f.write_all_at(b"x", 0).is_ok();
                let read = f.read_exact_at(&mut [0u8; 1], 0).is_ok();
                (wrote, read, f.sync_data().is_ok())
            })
            .join()
            .unwrap();
            assert_eq!(
                (wrote, read, synced),
                (allowed, allowed, allowed),
                "{kind:?}"
            );
        }
    }

    /// A confined thread keeps working on what it holds but can't open files or create
    /// descriptors or processes. (Errno instead of Trap, so the test process survives.)
    #[test]
    fn a_confined_thread_cannot_open_files_or_fork() {
        for kind in [
            ThreadKind::Vcpu,
            ThreadKind::Device,
            ThreadKind::Block,
            ThreadKind::VhostNet,
        ] {
            let prog = filter_with(kind, SeccompAction::Errno(libc::EPERM as u32)).unwrap();
            let (opened, evt, forked, wrote) = std::thread::spawn(move || {
                let evt = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
                seccompiler::apply_filter(&prog).unwrap();
                let opened = std::fs::File::open("/proc/self/status").is_ok();
                let new_evt = vmm_sys_util::eventfd::EventFd::new(0).is_ok();
                let forked = std::process::Command::new("/bin/true").status().is_ok();
                (opened, new_evt, forked, evt.write(1).is_ok())
            })
            .join()
            .unwrap();
            assert!(!opened && !evt && !forked, "{kind:?}");
            assert!(wrote, "{kind:?}: existing descriptors stay usable");
        }
    }
}
