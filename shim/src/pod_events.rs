//! The pod's lifecycle as JSON lines in `<pod dir>/events.jsonl`, for `hull monitor`:
//! `boot`, `ready`, `oom`, `vm_died`, `shutdown`. Bounded: a guest that OOMs without end
//! cannot fill the disk (and OOM events are rate-limited before they get here).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::Serialize;

pub const FILE: &str = "events.jsonl";
/// The most the file may hold; events past it are dropped.
pub const MAX_BYTES: u64 = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// The pod directory exists and the VM is being booted.
    Boot,
    /// The agent answered and the sandbox is set up.
    Ready,
    /// The guest's kernel OOM-killed a process of a container.
    Oom,
    /// The VMM exited without being asked to.
    VmDied,
    /// An orderly shutdown began.
    Shutdown,
}

#[derive(Serialize)]
struct Line<'a> {
    /// Seconds since the epoch, with milliseconds.
    time: f64,
    event: Event,
    namespace: &'a str,
    /// The whole id (the directory's name may be a shortened one).
    sandbox: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    container: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    detail: &'a str,
}

/// An event's `time`: seconds since the epoch, to the millisecond.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| (d.as_millis() as f64) / 1000.0)
}

/// Which pod the events are of, and where its directory is.
pub struct PodRef<'a> {
    pub dir: &'a Path,
    pub namespace: &'a str,
    pub sandbox: &'a str,
}

/// Appends one event to the pod directory's file; never creates the directory, never
/// follows a link, and fails quietly (events are for operators, not for the pod's life).
pub fn record(pod: &PodRef, event: Event, container: &str, detail: &str) {
    let time = now();
    let Ok(mut line) = serde_json::to_vec(&Line {
        time,
        event,
        namespace: pod.namespace,
        sandbox: pod.sandbox,
        container,
        detail,
    }) else {
        return;
    };
    line.push(b'\n');
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(pod.dir.join(FILE));
    if let Ok(mut f) = file {
        let len = f.metadata().map_or(u64::MAX, |m| m.len());
        if len.saturating_add(line.len() as u64) <= MAX_BYTES {
            let _ = f.write_all(&line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_json_lines_bounded_and_need_the_pod_directory() {
        let d = tempfile::tempdir().unwrap();
        let pod = PodRef {
            dir: d.path(),
            namespace: "k8s.io",
            sandbox: "web",
        };
        record(&pod, Event::Boot, "", "");
        record(&pod, Event::Oom, "c1", "");
        let text = std::fs::read_to_string(d.path().join(FILE)).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["event"], "boot");
        assert_eq!(lines[0]["namespace"], "k8s.io");
        assert_eq!(lines[0]["sandbox"], "web");
        assert!(lines[0].get("container").is_none());
        assert_eq!(lines[1]["event"], "oom");
        assert_eq!(lines[1]["container"], "c1");
        assert!(lines[1]["time"].as_f64().unwrap() > 1.7e9);

        for _ in 0..10_000 {
            record(
                &pod,
                Event::Oom,
                "c1",
                "a detail long enough to reach the bound soon",
            );
        }
        let len = std::fs::metadata(d.path().join(FILE)).unwrap().len();
        assert!(len <= MAX_BYTES && len > MAX_BYTES - 200, "{len}");

        let gone = d.path().join("gone");
        let pod = PodRef { dir: &gone, ..pod };
        record(&pod, Event::Shutdown, "", "");
        assert!(!gone.exists());
    }
}
