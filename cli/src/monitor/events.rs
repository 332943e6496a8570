//! Follows every pod's `events.jsonl` (written by its shim: boot, ready, oom, vm_died,
//! shutdown) and prints each new event as one JSON line; a pod directory that disappears
//! gives a `removed` event. Polled, so it needs nothing from the shims but their files.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use hull_shim::pod_dir::pod_dirs;
use hull_shim::pod_events::{FILE, MAX_BYTES, now};

/// One followed file, held open: the lines its shim wrote last are still read after the
/// pod directory is removed.
struct Followed {
    file: std::fs::File,
    /// The start of a line still being written.
    partial: String,
    /// From its lines, for the `removed` event.
    namespace: String,
    sandbox: String,
}

#[derive(Default)]
pub struct Follower {
    files: HashMap<PathBuf, Followed>,
}

impl Follower {
    /// One pass over `run_dir`: writes every event appended since the last pass, and a
    /// `removed` event for each pod directory that is gone.
    pub fn poll(&mut self, run_dir: &Path, out: &mut impl Write) -> std::io::Result<()> {
        let mut seen = HashSet::new();
        for pod in pod_dirs(run_dir) {
            let path = pod.join(FILE);
            if !self.files.contains_key(&path) {
                let Ok(file) = std::fs::File::open(&path) else {
                    continue;
                };
                self.files.insert(
                    path.clone(),
                    Followed {
                        file,
                        partial: String::new(),
                        namespace: String::new(),
                        sandbox: String::new(),
                    },
                );
            }
            seen.insert(path);
        }
        let paths: Vec<PathBuf> = self.files.keys().cloned().collect();
        for path in paths {
            let gone = !seen.contains(&path);
            let f = self.files.get_mut(&path).expect("followed");
            read_new(f, out)?;
            if gone {
                let f = self.files.remove(&path).expect("followed");
                let line = serde_json::json!({
                    "time": now(),
                    "event": "removed",
                    "namespace": f.namespace,
                    "sandbox": f.sandbox,
                });
                writeln!(out, "{line}")?;
            }
        }
        out.flush()
    }
}

/// Prints the whole lines appended since the last read.
fn read_new(f: &mut Followed, out: &mut impl Write) -> std::io::Result<()> {
    let mut text = std::mem::take(&mut f.partial);
    // A shim writes at most MAX_BYTES in all.
    (&mut f.file).take(MAX_BYTES).read_to_string(&mut text)?;
    let whole = text.rfind('\n').map_or(0, |i| i + 1);
    f.partial = text[whole..].to_string();
    for line in text[..whole].lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let field = |k: &str| v.get(k).and_then(|s| s.as_str()).unwrap_or("").to_string();
        f.namespace = field("namespace");
        f.sandbox = field("sandbox");
        writeln!(out, "{v}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_lines_once_half_lines_later_and_removal_noticed() {
        let run = tempfile::tempdir().unwrap();
        let pod = run.path().join("k8s.io").join("web");
        std::fs::create_dir_all(&pod).unwrap();
        let file = pod.join(FILE);
        std::fs::write(
            &file,
            "{\"event\":\"boot\",\"namespace\":\"k8s.io\",\"sandbox\":\"web\"}\n{\"event\":\"rea",
        )
        .unwrap();
        let mut f = Follower::default();
        let mut out = Vec::new();
        f.poll(run.path(), &mut out).unwrap();
        assert_eq!(String::from_utf8_lossy(&out).lines().count(), 1);
        let mut append = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        append
            .write_all(b"dy\",\"namespace\":\"k8s.io\",\"sandbox\":\"web\"}\nnot json\n")
            .unwrap();
        out.clear();
        f.poll(run.path(), &mut out).unwrap();
        let text = String::from_utf8_lossy(&out).to_string();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("\"ready\""));
        out.clear();
        f.poll(run.path(), &mut out).unwrap();
        assert!(out.is_empty());
        // The last line written just before the directory goes is still printed.
        append
            .write_all(b"{\"event\":\"shutdown\",\"namespace\":\"k8s.io\",\"sandbox\":\"web\"}\n")
            .unwrap();
        std::fs::remove_dir_all(&pod).unwrap();
        f.poll(run.path(), &mut out).unwrap();
        let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0]["event"], "shutdown");
        assert_eq!(events[1]["event"], "removed");
        assert_eq!(events[1]["sandbox"], "web");
    }
}
