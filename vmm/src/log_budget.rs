//! A bound on log lines the guest can trigger: each call site that logs on a guest
//! action (a port write, a failed device activation, a failed kick) spends from a fixed
//! budget, so a guest that repeats the action forever cannot grow the host's log.

use std::sync::atomic::{AtomicU32, Ordering};

pub struct LogBudget(AtomicU32);

impl LogBudget {
    pub const fn new(lines: u32) -> LogBudget {
        LogBudget(AtomicU32::new(lines))
    }

    /// Whether this line may still be logged; the last one allowed says so.
    pub fn spend(&self) -> bool {
        let left = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        if left == Ok(1) {
            tracing::warn!("further lines like the next one are not logged");
        }
        left.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_runs_out() {
        let b = LogBudget::new(3);
        let spent = (0..1000).filter(|_| b.spend()).count();
        assert_eq!(spent, 3);
    }
}
