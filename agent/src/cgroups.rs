//! A container's cgroup as the agent uses it after creation: resource updates, stats in
//! the API's cgroup v2 shape, the pids in it, and OOM-kill notifications (cgroup v2
//! `memory.events`, watched with inotify).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, anyhow};
use hull_protocols::agent as pb;
use libcgroups::common::{CgroupConfig, CgroupManager, ControllerOpt, create_cgroup_manager};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use oci_spec::runtime::LinuxResources;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

fn manager(path: &Path, id: &str) -> anyhow::Result<libcgroups::common::AnyCgroupManager> {
    create_cgroup_manager(CgroupConfig {
        cgroup_path: path.to_path_buf(),
        systemd_cgroup: false,
        container_name: id.to_string(),
    })
    .map_err(|e| anyhow!("opening cgroup {}: {e}", path.display()))
}

pub fn update(path: &Path, id: &str, resources: &LinuxResources) -> anyhow::Result<()> {
    let opt = ControllerOpt {
        resources,
        disable_oom_killer: false,
        oom_score_adj: None,
        freezer_state: None,
    };
    manager(path, id)?
        .apply(&opt)
        .map_err(|e| anyhow!("applying resources: {e}"))
}

pub fn pids(path: &Path, id: &str) -> anyhow::Result<Vec<i32>> {
    let pids = manager(path, id)?
        .get_all_pids()
        .map_err(|e| anyhow!("listing pids: {e}"))?;
    Ok(pids.into_iter().map(|p| p.as_raw()).collect())
}

fn is_v2() -> bool {
    Path::new(CGROUP_ROOT).join("cgroup.controllers").exists()
}

pub fn stats(path: &Path, id: &str) -> anyhow::Result<pb::StatsContainerResponse> {
    if is_v2() {
        // Read directly: libcgroups' v2 stats fail unless hugetlb and PSI files all exist.
        return Ok(stats_v2(&Path::new(CGROUP_ROOT).join(rel(path))));
    }
    let s = manager(path, id)?
        .stats()
        .map_err(|e| anyhow!("reading stats: {e}"))?;
    let mut out = pb::StatsContainerResponse::new();

    let mut cpu = pb::CpuStats::new();
    // libcgroups reports nanoseconds for both cgroup versions.
    cpu.usage_usec = s.cpu.usage.usage_total / 1000;
    cpu.user_usec = s.cpu.usage.usage_user / 1000;
    cpu.system_usec = s.cpu.usage.usage_kernel / 1000;
    cpu.nr_periods = s.cpu.throttling.periods;
    cpu.nr_throttled = s.cpu.throttling.throttled_periods;
    cpu.throttled_usec = s.cpu.throttling.throttled_time / 1000;
    out.cpu = Some(cpu).into();

    let mut mem = pb::MemoryStats::new();
    mem.usage = s.memory.memory.usage;
    mem.limit = no_limit_as_zero(s.memory.memory.limit);
    mem.anon = *s
        .memory
        .stats
        .get("anon")
        .or(s.memory.stats.get("rss"))
        .unwrap_or(&0);
    mem.file = *s
        .memory
        .stats
        .get("file")
        .or(s.memory.stats.get("cache"))
        .unwrap_or(&0);
    mem.kernel = *s
        .memory
        .stats
        .get("kernel")
        .unwrap_or(&s.memory.kernel.usage);
    mem.max_events = s.memory.memory.fail_count;
    let events = memory_events(&Path::new(CGROUP_ROOT).join(rel(path)).join("memory.events"));
    mem.oom_events = *events.get("oom").unwrap_or(&0);
    mem.oom_kill = *events.get("oom_kill").unwrap_or(&0);
    mem.stat = s.memory.stats.into_iter().collect();
    out.memory = Some(mem).into();

    let mut pids = pb::PidsStats::new();
    pids.current = s.pids.current;
    pids.limit = no_limit_as_zero(s.pids.limit);
    out.pids = Some(pids).into();

    let mut io: HashMap<(u64, u64), pb::IoEntry> = HashMap::new();
    for d in &s.blkio.service_bytes {
        let e = io.entry((d.major, d.minor)).or_default();
        e.major = d.major;
        e.minor = d.minor;
        match d.op_type.as_deref() {
            Some("Read") | Some("rbytes") => e.rbytes = d.value,
            Some("Write") | Some("wbytes") => e.wbytes = d.value,
            _ => {}
        }
    }
    for d in &s.blkio.serviced {
        let e = io.entry((d.major, d.minor)).or_default();
        match d.op_type.as_deref() {
            Some("Read") | Some("rios") => e.rios = d.value,
            Some("Write") | Some("wios") => e.wios = d.value,
            _ => {}
        }
    }
    out.io = io.into_values().collect();
    Ok(out)
}

/// cgroup v2 figures from the files of the cgroup directory `dir`; a missing
/// controller reads as zeros.
pub fn stats_v2(dir: &Path) -> pb::StatsContainerResponse {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let single = |f: &str| read(f).trim().parse::<u64>().unwrap_or(0);
    let mut out = pb::StatsContainerResponse::new();

    let cpu = parse_flat_keyed(&read("cpu.stat"));
    let get = |m: &HashMap<String, u64>, k: &str| *m.get(k).unwrap_or(&0);
    let mut c = pb::CpuStats::new();
    c.usage_usec = get(&cpu, "usage_usec");
    c.user_usec = get(&cpu, "user_usec");
    c.system_usec = get(&cpu, "system_usec");
    c.nr_periods = get(&cpu, "nr_periods");
    c.nr_throttled = get(&cpu, "nr_throttled");
    c.throttled_usec = get(&cpu, "throttled_usec");
    out.cpu = Some(c).into();

    let stat = parse_flat_keyed(&read("memory.stat"));
    let events = parse_flat_keyed(&read("memory.events"));
    let mut m = pb::MemoryStats::new();
    m.usage = single("memory.current");
    m.limit = single("memory.max"); // "max" parses as 0: no limit
    m.anon = get(&stat, "anon");
    m.file = get(&stat, "file");
    m.kernel = get(&stat, "kernel");
    m.oom_events = get(&events, "oom");
    m.oom_kill = get(&events, "oom_kill");
    m.max_events = get(&events, "max");
    m.stat = stat.into_iter().collect();
    out.memory = Some(m).into();

    let mut p = pb::PidsStats::new();
    p.current = single("pids.current");
    p.limit = single("pids.max");
    out.pids = Some(p).into();

    out.io = parse_io_stat(&read("io.stat"));
    out
}

/// `io.stat` lines: `MAJ:MIN rbytes=N wbytes=N rios=N wios=N dbytes=N dios=N`.
fn parse_io_stat(text: &str) -> Vec<pb::IoEntry> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let (maj, min) = words.next()?.split_once(':')?;
            let mut e = pb::IoEntry::new();
            e.major = maj.parse().ok()?;
            e.minor = min.parse().ok()?;
            for w in words {
                let (k, v) = w.split_once('=')?;
                let v = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => e.rbytes = v,
                    "wbytes" => e.wbytes = v,
                    "rios" => e.rios = v,
                    "wios" => e.wios = v,
                    _ => {}
                }
            }
            Some(e)
        })
        .collect()
}

fn no_limit_as_zero(v: u64) -> u64 {
    if v == u64::MAX || v >= i64::MAX as u64 {
        0
    } else {
        v
    }
}

fn rel(path: &Path) -> &Path {
    path.strip_prefix("/").unwrap_or(path)
}

/// `memory.events` as a map (`oom`, `oom_kill`, `max`, ...); empty if unreadable.
pub fn memory_events(file: &Path) -> HashMap<String, u64> {
    parse_flat_keyed(&std::fs::read_to_string(file).unwrap_or_default())
}

fn parse_flat_keyed(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// A watched `memory.events`: container id, file, and the oom_kill count last seen.
type Watched = (String, PathBuf, u64);

/// nix's Inotify exposes `AsFd`; tokio's AsyncFd wants `AsRawFd`.
struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Turns cgroup v2 `oom_kill` increments into container ids on a channel.
pub struct OomWatcher {
    inotify: Option<Arc<AsyncFd<InotifyFd>>>,
    watches: Arc<Mutex<HashMap<WatchDescriptor, Watched>>>,
}

impl OomWatcher {
    /// Returns the watcher and the receiving end of its events. Without cgroup v2 (a v1
    /// host) it watches nothing.
    pub fn start() -> (OomWatcher, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let watches: Arc<Mutex<HashMap<WatchDescriptor, Watched>>> = Arc::default();
        let inotify = if is_v2() {
            Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
                .ok()
                .and_then(|i| {
                    // SAFETY: the Inotify owns its descriptor and keeps it open, unchanged,
                    // for as long as the AsyncFd holds it.
                    unsafe { AsyncFd::register(InotifyFd(i)) }.ok()
                })
                .map(Arc::new)
        } else {
            None
        };
        if let Some(fd) = inotify.clone() {
            let watches = watches.clone();
            tokio::spawn(async move {
                loop {
                    let Ok(mut guard) = fd.readable().await else {
                        return;
                    };
                    let events = match guard
                        .try_io(|i| i.get_ref().0.read_events().map_err(std::io::Error::from))
                    {
                        Ok(Ok(ev)) => ev,
                        Ok(Err(_)) => return,
                        Err(_would_block) => continue,
                    };
                    for ev in events {
                        let mut w = watches.lock().expect("oom lock");
                        if let Some((id, file, seen)) = w.get_mut(&ev.wd) {
                            let now = *memory_events(file).get("oom_kill").unwrap_or(&0);
                            if now > *seen {
                                *seen = now;
                                tracing::info!(container = %id, oom_kill = now, "container OOM kill");
                                let _ = tx.send(id.clone());
                            }
                        }
                    }
                }
            });
        }
        (OomWatcher { inotify, watches }, rx)
    }

    pub fn watch(&self, id: &str, cgroup: &Path) -> anyhow::Result<()> {
        let Some(inotify) = &self.inotify else {
            return Ok(());
        };
        let file = Path::new(CGROUP_ROOT)
            .join(rel(cgroup))
            .join("memory.events");
        let seen = *memory_events(&file).get("oom_kill").unwrap_or(&0);
        let wd = inotify
            .get_ref()
            .0
            .add_watch(&file, AddWatchFlags::IN_MODIFY)
            .with_context(|| format!("watching {}", file.display()))?;
        self.watches
            .lock()
            .expect("oom lock")
            .insert(wd, (id.to_string(), file, seen));
        Ok(())
    }

    pub fn unwatch(&self, id: &str) {
        let Some(inotify) = &self.inotify else { return };
        let mut w = self.watches.lock().expect("oom lock");
        let wds: Vec<_> = w
            .iter()
            .filter(|(_, (i, _, _))| i == id)
            .map(|(wd, _)| *wd)
            .collect();
        for wd in wds {
            let _ = inotify.get_ref().0.rm_watch(wd);
            w.remove(&wd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_memory_events() {
        let m = parse_flat_keyed("low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n");
        assert_eq!(m["oom_kill"], 1);
        assert_eq!(m["max"], 12);
        assert!(memory_events(Path::new("/nonexistent/memory.events")).is_empty());
    }

    #[test]
    fn v2_stats_from_files() {
        let d = tempfile::tempdir().unwrap();
        let w = |f: &str, t: &str| std::fs::write(d.path().join(f), t).unwrap();
        w(
            "cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 4\nnr_throttled 1\nthrottled_usec 20\n",
        );
        w("memory.current", "4096\n");
        w("memory.max", "max\n");
        w("memory.stat", "anon 1024\nfile 2048\nkernel 512\n");
        w("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n");
        w("pids.current", "2\n");
        w("pids.max", "64\n");
        w(
            "io.stat",
            "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n",
        );
        let s = stats_v2(d.path());
        assert_eq!((s.cpu.usage_usec, s.cpu.nr_throttled), (1500, 1));
        assert_eq!(
            (
                s.memory.usage,
                s.memory.limit,
                s.memory.anon,
                s.memory.oom_kill
            ),
            (4096, 0, 1024, 1)
        );
        assert_eq!((s.pids.current, s.pids.limit), (2, 64));
        assert_eq!(
            (s.io[0].major, s.io[0].wbytes, s.io[0].wios),
            (254, 8192, 2)
        );
        // An empty directory (no controllers) is all zeros, not an error.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(stats_v2(empty.path()).memory.usage, 0);
    }

    #[test]
    fn unlimited_reads_as_zero() {
        assert_eq!(no_limit_as_zero(u64::MAX), 0);
        assert_eq!(no_limit_as_zero(1 << 20), 1 << 20);
    }
}
