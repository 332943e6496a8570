//! A VM restored from a snapshot starts with the snapshotted kernel's random state and
//! identity: every clone of one template would draw the same "random" numbers. The host
//! hands each clone fresh entropy; this mixes it into the kernel's pool, credits it
//! (RNDADDENTROPY) and makes the CRNG reseed from it at once (RNDRESEEDCRNG), and sets
//! the hostname the host gives. The clone's wall clock also stopped at the snapshot (its
//! kvm-clock goes on from there): it is set to the host's.

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

/// The earliest wall clock the host may set: 2020-01-01 (a zero-ish or wrapped value is
/// a host bug, not a time).
const MIN_REALTIME_NS: u64 = 1_577_836_800 * 1_000_000_000;

/// Checks what the host sent before anything is changed.
pub fn check(entropy: &[u8], hostname: &str, realtime_ns: u64) -> Result<()> {
    if realtime_ns != 0 && realtime_ns < MIN_REALTIME_NS {
        return Err(AgentError::InvalidArgument(format!(
            "realtime_ns {realtime_ns} is before 2020"
        )));
    }
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

/// Credits `entropy` to the kernel, reseeds its CRNG, and sets `hostname` and the wall
/// clock (each if given).
pub fn apply(entropy: &[u8], hostname: &str, realtime_ns: u64) -> Result<()> {
    check(entropy, hostname, realtime_ns)?;
    if realtime_ns != 0 {
        let secs = i64::try_from(realtime_ns / 1_000_000_000).expect("u64 / 1e9 fits");
        let nanos = i64::try_from(realtime_ns % 1_000_000_000).expect("below 1e9");
        nix::time::clock_settime(
            nix::time::ClockId::CLOCK_REALTIME,
            nix::sys::time::TimeSpec::new(secs, nanos),
        )
        .context("setting the wall clock")?;
    }
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
        let e = check(&[0; 8], "", 0).unwrap_err().to_string();
        assert!(e.contains("32 to 512 bytes, not 8"), "{e}");
        assert!(check(&[0; 513], "", 0).is_err());
        assert!(check(&[0; 32], "pod-1.example", 0).is_ok());
        assert!(check(&[0; 32], "a b", 0).is_err());
        assert!(check(&[0; 32], &"x".repeat(65), 0).is_err());
        let e = check(&[0; 32], "", 5).unwrap_err().to_string();
        assert!(e.contains("before 2020"), "{e}");
        assert!(check(&[0; 32], "", 1_800_000_000 * 1_000_000_000).is_ok());
    }
}
