//! Shim logs: `tracing` lines into the `log` FIFO containerd opens in the bundle (it
//! copies them into its own log), tagged with the namespace and the shim's first task id,
//! and a copy into the pod's directory (`<pod dir>/shim.log`, bounded like every pod log)
//! for `hull logs`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

/// The shim log's name in the pod directory.
pub const SHIM_LOG: &str = "shim.log";

/// Where the copy goes: the pod directory (once the pod has made it: logging never makes
/// a directory, so a `delete` after the pod is gone leaves nothing behind) and its bound.
pub struct PodLog {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

pub fn init(level: &str, namespace: &str, id: &str, pod_log: Option<PodLog>) {
    // O_RDWR: opening a FIFO this way never blocks, whether or not containerd reads yet.
    let fifo = OpenOptions::new().read(true).write(true).open("log").ok();
    let primary = fifo.map_or(Primary::Stderr, Primary::Fifo);
    install(level, namespace, id, primary, pod_log);
}

/// Logging for a process whose stderr is not its own (hull's OCI supervisor holds the
/// container's): only the pod directory's copy.
pub fn init_pod_only(level: &str, namespace: &str, id: &str, pod_log: PodLog) {
    install(level, namespace, id, Primary::Nowhere, Some(pod_log));
}

fn install(level: &str, namespace: &str, id: &str, primary: Primary, pod_log: Option<PodLog>) {
    let filter = std::env::var("HULL_LOG").unwrap_or_else(|_| level.to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(false);
    let tee = Tee {
        primary,
        pod: pod_log.map(|p| PodCopy {
            log: p,
            file: None,
            written: 0,
        }),
    };
    if builder.with_writer(Mutex::new(tee)).try_init().is_ok() {
        tracing::debug!(namespace, id, "hull shim logging");
    }
}

struct PodCopy {
    log: PodLog,
    file: Option<File>,
    /// Bytes in the file (what others wrote before this shim included).
    written: u64,
}

impl PodCopy {
    fn write(&mut self, buf: &[u8]) {
        if self.file.is_none() && self.log.dir.is_dir() {
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.log.dir.join(SHIM_LOG))
                .ok();
            self.written = self
                .file
                .as_ref()
                .and_then(|f| f.metadata().ok())
                .map_or(0, |m| m.len());
        }
        let Some(f) = &mut self.file else {
            return;
        };
        let room = self.log.max_bytes.saturating_sub(self.written);
        let n = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        if n > 0 && f.write_all(&buf[..n]).is_ok() {
            self.written += n as u64;
        }
    }
}

/// Where log lines go first.
enum Primary {
    /// containerd's log FIFO.
    Fifo(File),
    Stderr,
    Nowhere,
}

/// The primary log and the pod's copy.
struct Tee {
    primary: Primary,
    pod: Option<PodCopy>,
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.primary {
            Primary::Fifo(f) => {
                let _ = f.write_all(buf);
            }
            Primary::Stderr => {
                let _ = std::io::stderr().write_all(buf);
            }
            Primary::Nowhere => {}
        }
        if let Some(p) = &mut self.pod {
            p.write(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_copy_waits_for_the_pod_directory_and_stops_at_its_bound() {
        let run = tempfile::tempdir().unwrap();
        let dir = run.path().join("pod");
        let mut copy = PodCopy {
            log: PodLog {
                dir: dir.clone(),
                max_bytes: 10,
            },
            file: None,
            written: 0,
        };
        copy.write(b"before\n");
        assert!(!dir.exists(), "logging never makes the pod directory");
        std::fs::create_dir(&dir).unwrap();
        copy.write(b"0123456\n");
        copy.write(b"89abcdef\n");
        assert_eq!(std::fs::read(dir.join(SHIM_LOG)).unwrap(), b"0123456\n89");
    }
}
