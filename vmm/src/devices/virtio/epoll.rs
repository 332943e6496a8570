//! What every device thread's epoll loop shares: a set that watches fixed eventfds for
//! input, and a wait that rides out signals and ends the thread, logged, on a broken set.

use std::io::ErrorKind;
use std::os::fd::RawFd;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// An epoll set watching each `(fd, token)` for input.
pub fn watching(sources: &[(RawFd, u64)]) -> std::io::Result<Epoll> {
    let epoll = Epoll::new()?;
    for &(fd, token) in sources {
        epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        )?;
    }
    Ok(epoll)
}

/// Waits for `events`; `None` once the set fails (logged as `loop_name`'s end), on which
/// the calling thread stops.
pub fn wait(epoll: &Epoll, events: &mut [EpollEvent], loop_name: &str) -> Option<usize> {
    loop {
        match epoll.wait(-1, events) {
            Ok(n) => return Some(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(error = %e, "{loop_name} event loop failed");
                return None;
            }
        }
    }
}
