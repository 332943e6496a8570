//! The agent's cgroup v2 figures in containerd's `io.containerd.cgroups.v2.Metrics`, so
//! `ctr task metrics` and the CRI stats read them as they read runc's.

use containerd_shim_protos::cgroups_v2::metrics::{
    CPUStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use hull_protocols::agent::StatsContainerResponse;
use protobuf::Message;
use protobuf::well_known_types::any::Any;

/// containerd's typeurl name for cgroup v2 metrics (no `type.googleapis.com/` prefix).
pub const METRICS_V2_TYPE: &str = "io.containerd.cgroups.v2.Metrics";

pub fn to_metrics(s: &StatsContainerResponse) -> Metrics {
    let mut m = Metrics::new();
    let mut cpu = CPUStat::new();
    cpu.usage_usec = s.cpu.usage_usec;
    cpu.user_usec = s.cpu.user_usec;
    cpu.system_usec = s.cpu.system_usec;
    cpu.nr_periods = s.cpu.nr_periods;
    cpu.nr_throttled = s.cpu.nr_throttled;
    cpu.throttled_usec = s.cpu.throttled_usec;
    m.cpu = Some(cpu).into();

    let mut mem = MemoryStat::new();
    mem.usage = s.memory.usage;
    mem.usage_limit = s.memory.limit;
    mem.anon = s.memory.anon;
    mem.file = s.memory.file;
    let stat = |k: &str| *s.memory.stat.get(k).unwrap_or(&0);
    mem.kernel_stack = stat("kernel_stack");
    mem.slab = stat("slab");
    mem.sock = stat("sock");
    mem.shmem = stat("shmem");
    mem.file_mapped = stat("file_mapped");
    mem.file_dirty = stat("file_dirty");
    mem.inactive_anon = stat("inactive_anon");
    mem.active_anon = stat("active_anon");
    mem.inactive_file = stat("inactive_file");
    mem.active_file = stat("active_file");
    mem.unevictable = stat("unevictable");
    mem.pgfault = stat("pgfault");
    mem.pgmajfault = stat("pgmajfault");
    m.memory = Some(mem).into();

    let mut ev = MemoryEvents::new();
    ev.oom = s.memory.oom_events;
    ev.oom_kill = s.memory.oom_kill;
    ev.max = s.memory.max_events;
    m.memory_events = Some(ev).into();

    let mut pids = PidsStat::new();
    pids.current = s.pids.current;
    pids.limit = s.pids.limit;
    m.pids = Some(pids).into();

    let mut io = IOStat::new();
    io.usage =
        s.io.iter()
            .map(|e| {
                let mut x = IOEntry::new();
                x.major = e.major;
                x.minor = e.minor;
                x.rbytes = e.rbytes;
                x.wbytes = e.wbytes;
                x.rios = e.rios;
                x.wios = e.wios;
                x
            })
            .collect();
    m.io = Some(io).into();
    m
}

pub fn to_any(m: &Metrics) -> anyhow::Result<Any> {
    let mut any = Any::new();
    any.type_url = METRICS_V2_TYPE.to_string();
    any.value = m.write_to_bytes()?;
    Ok(any)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut s = StatsContainerResponse::new();
        s.memory.mut_or_insert_default().usage = 4096;
        s.pids.mut_or_insert_default().current = 3;
        let any = to_any(&to_metrics(&s)).unwrap();
        assert_eq!(any.type_url, METRICS_V2_TYPE);
        let back = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!((back.memory.usage, back.pids.current), (4096, 3));
    }
}
