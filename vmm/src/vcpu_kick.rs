//! Getting a vCPU thread out of KVM_RUN: a real-time signal whose handler sets the
//! thread's `kvm_run.immediate_exit`. KVM_RUN then returns EINTR whether the signal
//! landed inside the guest or just before the thread entered it, so a pause request can
//! never be lost between "checked the flag" and "entered the guest" (the race a bare
//! signal has).

use std::cell::Cell;
use std::os::unix::thread::JoinHandleExt;
use std::thread::JoinHandle;

use kvm_ioctls::VcpuFd;

thread_local! {
    /// This thread's `kvm_run.immediate_exit`, while it runs a vCPU.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal that kicks a vCPU thread.
pub fn signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

extern "C" fn on_kick(_sig: libc::c_int, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // `try_with`: a thread being torn down has no slot left, and then nothing to kick.
    let _ = IMMEDIATE_EXIT.try_with(|p| {
        let p = p.get();
        if !p.is_null() {
            // SAFETY: the pointer is this thread's own kvm_run mapping, set by `arm` while
            // the VcpuFd (which owns the mapping) lives on this thread; a volatile byte
            // store is async-signal-safe.
            unsafe { p.write_volatile(1) };
        }
    });
}

/// Installs the handler (once, process-wide, before any vCPU thread starts).
pub fn install_handler() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid start; the handler only does a volatile store
    // through a thread-local pointer, which is async-signal-safe.
    let rc = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_kick as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigaction(signal(), &sa, std::ptr::null_mut())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Makes kicks of the calling thread reach `vcpu`'s KVM_RUN. The thread must keep `vcpu`
/// until it calls `disarm`.
pub fn arm(vcpu: &mut VcpuFd) {
    let p: *mut u8 = &mut vcpu.get_kvm_run().immediate_exit;
    IMMEDIATE_EXIT.with(|c| c.set(p));
}

/// The calling thread's vCPU is going away: kicks no longer touch it.
pub fn disarm() {
    IMMEDIATE_EXIT.with(|c| c.set(std::ptr::null_mut()));
}

/// Kicks `thread` out of KVM_RUN (or out of its next one).
pub fn kick<T>(thread: &JoinHandle<T>) {
    // SAFETY: the handle keeps the thread joinable, so its pthread_t is valid; the signal
    // has the handler installed by `install_handler`.
    let rc = unsafe { libc::pthread_kill(thread.as_pthread_t(), signal()) };
    if rc != 0 {
        tracing::warn!(error = %std::io::Error::from_raw_os_error(rc), "kicking a vCPU thread");
    }
}
