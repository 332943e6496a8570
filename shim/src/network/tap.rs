//! Tap devices for pod NICs: made with the TUNSETIFF ioctl (the kernel refuses to make a
//! tap over netlink), in the namespace of the thread that opens `/dev/net/tun`. A tap
//! that is not made persistent disappears when its last file descriptor closes, so a tap
//! never outlives both the shim and the VMM that holds it.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::{Context, bail};

nix::ioctl_write_ptr_bad!(tun_set_iff, libc::TUNSETIFF, libc::ifreq);

/// Creates tap `name` with a virtio-net header on every frame (`IFF_VNET_HDR`, so the
/// VMM can pass checksum and segmentation offloads through) and no packet-info prefix.
pub fn create(name: &str) -> anyhow::Result<OwnedFd> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        bail!("tap name {name:?} does not fit IFNAMSIZ");
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("opening /dev/net/tun")?;
    // SAFETY: ifreq is plain old data; all-zero is a valid (empty) value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: the fd is an open /dev/net/tun and `req` a valid ifreq that outlives the call.
    unsafe { tun_set_iff(tun.as_raw_fd(), &req) }
        .with_context(|| format!("creating tap {name} (TUNSETIFF)"))?;
    Ok(tun.into())
}
