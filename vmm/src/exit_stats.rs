//! VM exits by reason, counted by the vCPU threads and read through the API socket
//! (`{"action":"stats"}`), so that the shim can export them as metrics. One VMM process
//! runs one VM, so the counters are process-wide.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a vCPU left KVM_RUN, as far as the VMM tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    IoIn,
    IoOut,
    MmioRead,
    MmioWrite,
    /// KVM_RUN returned EINTR/EAGAIN (a signal, e.g. a pause or the exit kick).
    Interrupted,
    /// Anything else (shutdown, system events, failures): each ends the VM.
    Other,
}

const REASONS: [(Reason, &str); 6] = [
    (Reason::IoIn, "io_in"),
    (Reason::IoOut, "io_out"),
    (Reason::MmioRead, "mmio_read"),
    (Reason::MmioWrite, "mmio_write"),
    (Reason::Interrupted, "interrupted"),
    (Reason::Other, "other"),
];

static COUNTS: [AtomicU64; REASONS.len()] = [const { AtomicU64::new(0) }; REASONS.len()];

pub fn count(reason: Reason) {
    let i = REASONS
        .iter()
        .position(|(r, _)| *r == reason)
        .expect("every reason is listed");
    COUNTS[i].fetch_add(1, Ordering::Relaxed);
}

/// Every reason's name and count so far.
pub fn snapshot() -> serde_json::Map<String, serde_json::Value> {
    REASONS
        .iter()
        .zip(&COUNTS)
        .map(|((_, name), c)| ((*name).to_string(), c.load(Ordering::Relaxed).into()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_reason() {
        let before = snapshot()["mmio_write"].as_u64().unwrap();
        count(Reason::MmioWrite);
        count(Reason::MmioWrite);
        let after = snapshot();
        assert_eq!(after["mmio_write"].as_u64().unwrap(), before + 2);
        assert_eq!(after.len(), 6);
    }
}
