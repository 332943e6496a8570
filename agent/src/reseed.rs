//! A VM restored from a snapshot starts with the snapshotted kernel's random state and
//! identity: every clone of one template would draw the same "random" numbers. The host
//! hands each clone fresh entropy; this mixes it into the kernel's pool, credits it
//! (RNDADDENTROPY) and makes the CRNG reseed from it at once (RNDRESEEDCRNG), and sets
//! the hostname the host gives.

use std::os::fd::AsRawFd;

use anyhow::Context;

use crate::error::{AgentError, Result};

/// The least and most entropy the host may hand over, in bytes.
pub const MIN_ENTROPY: usize = 32;
pub const MAX_ENTROPY: usize = 512;

// <linux/random.h>: _IOW('R', 0x03, int[2]) and _IO('R', 0x07).
nix::ioctl_write_ptr_bad!(
    rnd_add_entropy,
    nix::request_code_write!(b'R', 0x03, 2 * std::mem::size_of::<libc::c_int>()),
    u8
);
nix::ioctl_none!(rnd_reseed_crng, b'R', 0x07);

/// Checks what the host sent before anything is changed.
pub fn check(entropy: &[u8], hostname: &str) -> Result<()> {
    if !(MIN_ENTROPY..=MAX_ENTROPY).contains(&entropy.len()) {
        return Err(AgentError::InvalidArgument(format!(
            "entropy must be {MIN_ENTROPY} to {MAX_ENTROPY} bytes, not {}",
            entropy.len()
        )));
    }
    let valid = hostname.len() <= 64
        && hostname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !valid {
        return Err(AgentError::InvalidArgument(format!(
            "invalid hostname {hostname:?}"
        )));
    }
    Ok(())
}

/// Credits `entropy` to the kernel, reseeds its CRNG, and sets `hostname` (if any).
pub fn apply(entropy: &[u8], hostname: &str) -> Result<()> {
    check(entropy, hostname)?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let count = libc::c_int::try_from(entropy.len() * 8).expect("bounded above");
    let size = libc::c_int::try_from(entropy.len()).expect("bounded above");
    let mut info = Vec::with_capacity(8 + entropy.len());
    info.extend_from_slice(&count.to_ne_bytes());
    info.extend_from_slice(&size.to_ne_bytes());
    info.extend_from_slice(entropy);
    let random = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .context("opening /dev/urandom")?;
    // SAFETY: `info` is a whole rand_pool_info: its header, then buf_size bytes.
    unsafe { rnd_add_entropy(random.as_raw_fd(), info.as_ptr()) }.context("RNDADDENTROPY")?;
    // SAFETY: an ioctl without argument on the descriptor we hold.
    unsafe { rnd_reseed_crng(random.as_raw_fd()) }.context("RNDRESEEDCRNG")?;
    if !hostname.is_empty() {
        nix::unistd::sethostname(hostname).context("sethostname")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_requests_are_refused_before_anything_changes() {
        let e = check(&[0; 8], "").unwrap_err().to_string();
        assert!(e.contains("32 to 512 bytes, not 8"), "{e}");
        assert!(check(&[0; 513], "").is_err());
        assert!(check(&[0; 32], "pod-1.example").is_ok());
        assert!(check(&[0; 32], "a b").is_err());
        assert!(check(&[0; 32], &"x".repeat(65)).is_err());
    }
}
