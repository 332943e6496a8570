//! `hull events`: a container's cgroup figures from inside its VM, as runc's `events`
//! prints them: one `{"type":"stats","id":…,"data":{…}}` line (`--stats`), or one every
//! `--interval` until the container stops. The figures are the guest's cgroup v2 ones
//! for the container, which the agent reads; the VM's own overhead is not in them.

use std::time::Duration;

use hull_protocols::agent as pb;
use serde_json::json;

use super::control::{self, Request, Status};
use super::{Global, opened, status};

/// The agent's figures in runc's `types.Stats` shape (the fields go-runc and Docker read).
pub fn runc_stats(s: &pb::StatsContainerResponse) -> serde_json::Value {
    let cpu = s.cpu.as_ref().cloned().unwrap_or_default();
    let mem = s.memory.as_ref().cloned().unwrap_or_default();
    let pids = s.pids.as_ref().cloned().unwrap_or_default();
    let io = |op: &str, f: fn(&pb::IoEntry) -> u64| -> Vec<serde_json::Value> {
        s.io.iter()
            .map(|e| json!({"major": e.major, "minor": e.minor, "op": op, "value": f(e)}))
            .collect()
    };
    let mut bytes = io("Read", |e| e.rbytes);
    bytes.extend(io("Write", |e| e.wbytes));
    let mut ios = io("Read", |e| e.rios);
    ios.extend(io("Write", |e| e.wios));
    json!({
        "cpu": {
            "usage": {
                "total": cpu.usage_usec.saturating_mul(1000),
                "kernel": cpu.system_usec.saturating_mul(1000),
                "user": cpu.user_usec.saturating_mul(1000),
            },
            "throttling": {
                "periods": cpu.nr_periods,
                "throttledPeriods": cpu.nr_throttled,
                "throttledTime": cpu.throttled_usec.saturating_mul(1000),
            },
        },
        "memory": {
            "usage": {"usage": mem.usage, "limit": mem.limit, "failcnt": mem.max_events},
            "raw": mem.stat,
        },
        "pids": {"current": pids.current, "limit": pids.limit},
        "blkio": {
            "ioServiceBytesRecursive": bytes,
            "ioServicedRecursive": ios,
        },
    })
}

/// Parses runc's interval (`5s`, `500ms`, `1m`, or plain seconds).
pub fn parse_interval(s: &str) -> anyhow::Result<Duration> {
    let bad = || anyhow::anyhow!("--interval {s:?}: expected e.g. 5s, 500ms, 1m");
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num.parse().map_err(|_| bad())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(bad()),
    };
    if d.is_zero() {
        return Err(bad());
    }
    Ok(d)
}

pub fn run(g: &Global, id: &str, once: bool, interval: Duration) -> anyhow::Result<()> {
    let timeout = super::agent_timeout();
    loop {
        let (entry, saved) = opened(g, id)?;
        match status(&entry, Some(&saved)) {
            Status::Stopped if once => anyhow::bail!("container not running"),
            Status::Stopped => return Ok(()),
            _ => {}
        }
        let socket = entry.control_socket();
        // The lock is for changes: a long `events` must not hold up `delete`.
        drop(entry);
        let r = control::call(&socket, &Request::Stats, timeout)?;
        let line = json!({"type": "stats", "id": id, "data": r.stats});
        println!("{line}");
        if once {
            return Ok(());
        }
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_as_runc_takes_them() {
        assert_eq!(parse_interval("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_interval("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_interval("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_interval("3").unwrap(), Duration::from_secs(3));
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("5h").is_err());
        assert!(parse_interval("").is_err());
    }

    #[test]
    fn stats_have_runc_field_names_and_units() {
        let mut s = pb::StatsContainerResponse::new();
        let mut cpu = pb::CpuStats::new();
        cpu.usage_usec = 7;
        s.cpu = Some(cpu).into();
        let mut mem = pb::MemoryStats::new();
        mem.usage = 4096;
        mem.limit = 8192;
        s.memory = Some(mem).into();
        let v = runc_stats(&s);
        assert_eq!(v["cpu"]["usage"]["total"], 7000, "nanoseconds");
        assert_eq!(v["memory"]["usage"]["usage"], 4096);
        assert_eq!(v["memory"]["usage"]["limit"], 8192);
        assert_eq!(v["pids"]["current"], 0);
    }
}
