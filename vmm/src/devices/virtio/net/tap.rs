//! The host end of a virtio-net device: a tap file descriptor handed to hull-vmm by its
//! caller (the shim made the tap in the pod's network namespace; hull-vmm, jailed, opens
//! nothing itself). Frames cross it with a 12-byte virtio-net header in front
//! (`IFF_VNET_HDR` + `TUNSETVNETHDRSZ`), so checksum and segmentation offloads pass
//! between guest and host untouched. A datagram socket stands in for a tap in tests.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// `struct virtio_net_hdr_v1`: what every frame starts with (virtio 1.x).
pub const VNET_HDR_LEN: usize = 12;

nix::ioctl_write_ptr_bad!(tun_set_vnet_hdr_sz, libc::TUNSETVNETHDRSZ, libc::c_int);
nix::ioctl_write_int_bad!(tun_set_offload, libc::TUNSETOFFLOAD);

pub struct Tap {
    fd: File,
    /// A real tap (offloads are set on it); false for a test's datagram socket.
    is_tap: bool,
}

impl Tap {
    /// Takes a tap fd (opened with `IFF_TAP|IFF_NO_PI|IFF_VNET_HDR`): sets its header size
    /// and makes it non-blocking. Runs before seccomp (it issues ioctls).
    pub fn from_fd(fd: OwnedFd) -> io::Result<Tap> {
        let size = libc::c_int::try_from(VNET_HDR_LEN).expect("a 12-byte header");
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which outlives the call.
        unsafe { tun_set_vnet_hdr_sz(fd.as_raw_fd(), &size) }.map_err(io::Error::from)?;
        set_nonblocking(fd.as_raw_fd())?;
        Ok(Tap {
            fd: File::from(fd),
            is_tap: true,
        })
    }

    /// A packet socket (`SOCK_DGRAM`/`SOCK_SEQPACKET`) in place of a tap, for tests.
    pub fn from_datagram_socket(fd: OwnedFd) -> io::Result<Tap> {
        set_nonblocking(fd.as_raw_fd())?;
        Ok(Tap {
            fd: File::from(fd),
            is_tap: false,
        })
    }

    /// The tap as vhost-net takes it (VHOST_NET_SET_BACKEND).
    pub fn file(&self) -> &File {
        &self.fd
    }

    /// Tells the tap which offloads the guest takes on frames it receives (`TUN_F_*`).
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        if !self.is_tap {
            return Ok(());
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value; the fd is a tap.
        unsafe { tun_set_offload(self.fd.as_raw_fd(), flags as libc::c_int) }
            .map(|_| ())
            .map_err(io::Error::from)
    }

    /// One frame into `iov` (header included); `WouldBlock` when none is waiting.
    pub fn readv(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        // SAFETY: each iovec points into guest memory that stays mapped for the VM's life,
        // with the length its descriptor gave, checked against the memory region.
        let n = unsafe { libc::readv(self.fd.as_raw_fd(), iov.as_ptr(), iov_count(iov)?) };
        byte_count(n)
    }

    /// One frame out of `iov` (header included).
    pub fn writev(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        // SAFETY: as in `readv`; the kernel only reads from these buffers.
        let n = unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), iov_count(iov)?) };
        byte_count(n)
    }
}

fn iov_count(iov: &[libc::iovec]) -> io::Result<libc::c_int> {
    libc::c_int::try_from(iov.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// readv/writev's return value: a byte count, or -1 and errno.
fn byte_count(n: isize) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor this process owns; only adds O_NONBLOCK.
    let r = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            flags
        } else {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK)
        }
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
