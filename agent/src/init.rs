//! What the agent does as PID 1 of the pod VM before it serves: move off the initramfs
//! (pivot_root can't leave rootfs, and every container needs pivot_root), mount the
//! kernel filesystems, enable cgroup v2 controllers, bring up loopback; and, at the end,
//! end the VM so it never hangs.

use std::ffi::CString;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use nix::mount::{MsFlags, mount};

const SWITCHED_ENV: &str = "HULL_AGENT_SWITCHED_ROOT";
/// The guest clock (ms since boot) when the kernel started /init, carried over the re-exec.
const STARTED_ENV: &str = "HULL_AGENT_STARTED_MS";

/// Copies the agent onto a tmpfs, makes that tmpfs the root and re-executes from it.
/// Returns only in the re-executed agent (where the switch already happened).
pub fn switch_root_once() -> anyhow::Result<()> {
    if std::env::var_os(SWITCHED_ENV).is_some() {
        return Ok(());
    }
    // No /proc yet: the clock comes from the syscall, not /proc/uptime.
    let started_ms = boottime_ms();
    let new_root = Path::new("/newroot");
    std::fs::create_dir_all(new_root)?;
    mount(
        Some("rootfs"),
        new_root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )
    .context("mounting the new root")?;
    // The kernel started us as /init; /proc (and so current_exe) isn't mounted yet.
    let exe = Path::new("/init");
    std::fs::copy(exe, new_root.join("init")).context("copying the agent to the new root")?;
    // Free the initramfs copy; the running image stays mapped until exec.
    let _ = std::fs::remove_file(exe);
    std::env::set_current_dir(new_root)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .context("moving the new root to /")?;
    nix::unistd::chroot(".").context("chroot to the new root")?;
    std::env::set_current_dir("/")?;

    let path = CString::new("/init")?;
    let args: Vec<CString> = std::env::args()
        .map(|a| CString::new(a).expect("argv has no NUL"))
        .collect();
    let mut env: Vec<CString> = std::env::vars()
        .map(|(k, v)| CString::new(format!("{k}={v}")).expect("env has no NUL"))
        .collect();
    env.push(CString::new(format!("{SWITCHED_ENV}=1"))?);
    env.push(CString::new(format!("{STARTED_ENV}={started_ms}"))?);
    nix::unistd::execve(&path, &args, &env).context("re-executing the agent")?;
    unreachable!("execve returned without error")
}

pub fn mount_base_filesystems() -> anyhow::Result<()> {
    let nosuid_noexec_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    let mounts: [(&str, &str, &str, MsFlags, Option<&str>); 8] = [
        ("proc", "/proc", "proc", nosuid_noexec_nodev, None),
        ("sysfs", "/sys", "sysfs", nosuid_noexec_nodev, None),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        ),
        (
            "shm",
            "/dev/shm",
            "tmpfs",
            nosuid_noexec_nodev,
            Some("mode=1777"),
        ),
        (
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            nosuid_noexec_nodev,
            Some("nsdelegate"),
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
    ];
    for (src, target, fstype, flags, data) in mounts {
        std::fs::create_dir_all(target).with_context(|| format!("creating {target}"))?;
        mount(Some(src), target, Some(fstype), flags, data)
            .with_context(|| format!("mounting {fstype} on {target}"))?;
    }
    let _ = std::fs::remove_file("/dev/ptmx");
    std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx").context("linking /dev/ptmx")?;
    std::fs::create_dir_all("/etc")?;
    for (file, text) in [
        ("/etc/hostname", "hull\n"),
        ("/etc/resolv.conf", ""),
        ("/etc/hosts", "127.0.0.1 localhost\n"),
    ] {
        if !Path::new(file).exists() {
            std::fs::write(file, text)?;
        }
    }
    nix::unistd::sethostname("hull").context("setting the hostname")?;
    Ok(())
}

/// Delegates every available controller to child cgroups (containers).
pub fn enable_cgroup_controllers() -> anyhow::Result<()> {
    let root = Path::new("/sys/fs/cgroup");
    let controllers = std::fs::read_to_string(root.join("cgroup.controllers"))?;
    let enable: Vec<String> = controllers
        .split_whitespace()
        .map(|c| format!("+{c}"))
        .collect();
    std::fs::write(root.join("cgroup.subtree_control"), enable.join(" "))
        .context("enabling cgroup controllers")?;
    Ok(())
}

pub fn loopback_up() -> anyhow::Result<()> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own, on a valid socket.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            bail!("SIOCGIFFLAGS lo: {}", std::io::Error::last_os_error());
        }
        ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) < 0 {
            bail!("SIOCSIFFLAGS lo: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// hull-vmm's boot-timer port and value (vmm/src/devices/boot_timer.rs): the agent writes
/// it once it serves, so the VMM can tell how long the guest took. Other VMMs ignore it.
const BOOT_TIMER_PORT: u16 = 0x440;
const BOOT_TIMER_MAGIC: u8 = 123;

/// Tells the VMM that the agent serves. Best effort: a kernel without ioperm, or a VMM
/// without the timer, just means no figure.
pub fn signal_boot_timer() {
    // SAFETY: ioperm only changes this thread's I/O permission bitmap; PID 1 is root.
    if unsafe { libc::ioperm(u64::from(BOOT_TIMER_PORT), 1, 1) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "no boot-timer port");
        return;
    }
    // SAFETY: an OUT to the one port this thread was just granted; it touches no memory.
    unsafe {
        std::arch::asm!("out dx, al", in("dx") BOOT_TIMER_PORT, in("al") BOOT_TIMER_MAGIC, options(nomem, nostack, preserves_flags));
    }
}

/// One console line with the guest clock's view of the boot: when the kernel started
/// /init and when the agent began to serve. `make bench-vmm` reads it; it is there under
/// `quiet` too, unlike the kernel's own "Run /init" line.
pub fn report_boot_clock() {
    let init_ms = std::env::var(STARTED_ENV).unwrap_or_else(|_| "?".into());
    let _ = writeln!(
        std::io::stderr(),
        "hull-agent: boot clock: init_ms={init_ms} ready_ms={}",
        boottime_ms()
    );
}

/// Milliseconds since the guest booted (CLOCK_BOOTTIME).
fn boottime_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the one we pass.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1000
        + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1_000_000
}

/// Tells the host, over a vsock connection to its port `AGENT_READY_PORT`, that the agent
/// serves. Best effort (the host may not listen): one attempt, then the connection closes.
pub fn announce_ready() {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, VsockAddr, connect, socket};
    const HOST_CID: u32 = 2;
    let result = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .and_then(|fd| {
        let addr = VsockAddr::new(HOST_CID, hull_protocols::AGENT_READY_PORT);
        connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)
    });
    if let Err(e) = result {
        tracing::debug!(error = %e, "the host took no ready announcement");
    }
}

/// Flushes and ends the VM. PID 1 must never just exit: that panics the kernel.
///
/// A reset is the end of a hull VM (Firecracker's model): hull-vmm exits on the guest's
/// i8042 reset and QEMU runs with `-no-reboot`. It needs no ACPI, which QEMU's microvm
/// tables don't give this kernel.
pub fn end_vm() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
