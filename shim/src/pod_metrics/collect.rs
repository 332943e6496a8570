//! One scrape: the accumulated metrics plus what is read now, from /proc for the VM's
//! processes and from the agent for the guest and each container. Every agent call has a
//! short deadline, so a stuck guest makes a scrape incomplete, never late.

use std::borrow::Cow;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use hull_protocols::agent::{GetGuestStatsRequest, StatsContainerRequest};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::daemon::{PID_FILE, PidRecord};
use crate::pod::Pod;

/// hull-vmm's API socket in the VM's run directory (the builtin backend only).
const VMM_API_SOCKET: &str = "api.sock";
/// The most reasons taken from hull-vmm's stats answer (itself read up to
/// `vmm_api::MAX_ANSWER`): the VMM runs next to guest code, so its answer is bounded like
/// a guest's.
const MAX_REASONS: usize = 16;

/// How long each agent call of a scrape may take.
const CALL_DEADLINE: Duration = Duration::from_secs(2);

type F64Gauge = Gauge<f64, AtomicU64>;
type F64Counter = Counter<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcessLabels {
    /// What the process is to the pod: `shim`, `vmm` or a daemon's role.
    role: String,
    /// Its program.
    process: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContainerLabels {
    container: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeriodLabels {
    period: &'static str,
}

fn ctx() -> ttrpc::context::Context {
    crate::agent_client::deadline(CALL_DEADLINE)
}

/// The whole exposition of `pod` now; `containers` are the ids the shim created.
pub async fn scrape(pod: &Pod, containers: &[String]) -> String {
    let mut reg = Registry::with_labels(
        [
            (
                Cow::Borrowed("namespace"),
                Cow::Owned(pod.namespace.clone()),
            ),
            (Cow::Borrowed("sandbox"), Cow::Owned(pod.id.clone())),
        ]
        .into_iter(),
    );
    pod.metrics.register(&mut reg);
    processes(pod, &mut reg);
    guest(pod, &mut reg).await;
    container_stats(pod, containers, &mut reg).await;
    vm_exits(&pod.dir.join("vm").join(VMM_API_SOCKET), &mut reg).await;
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &reg);
    text
}

/// The shim and every recorded process of the VM that is still the one recorded.
fn processes(pod: &Pod, reg: &mut Registry) {
    let rss: Family<ProcessLabels, F64Gauge> = Family::default();
    let cpu: Family<ProcessLabels, F64Counter> = Family::default();
    let pids = std::fs::read_to_string(pod.dir.join("vm").join(PID_FILE)).unwrap_or_default();
    let me = (
        i32::try_from(std::process::id()).unwrap_or(0),
        "shim".to_string(),
        "containerd-shim-hull-v2".to_string(),
    );
    let recorded = PidRecord::parse_file(&pids)
        .into_iter()
        .filter(PidRecord::is_alive)
        .map(|r| (r.pid, r.role, r.name));
    let ticks = procfs::ticks_per_second() as f64;
    let page = procfs::page_size() as f64;
    for (pid, role, process) in std::iter::once(me).chain(recorded) {
        let Ok(stat) = procfs::process::Process::new(pid).and_then(|p| p.stat()) else {
            continue;
        };
        let labels = ProcessLabels { role, process };
        rss.get_or_create(&labels).set(stat.rss as f64 * page);
        cpu.get_or_create(&labels)
            .inc_by((stat.utime + stat.stime) as f64 / ticks);
    }
    reg.register(
        "hull_process_resident_memory_bytes",
        "Resident memory of the pod's host processes (shim, VMM, daemons)",
        rss,
    );
    reg.register(
        "hull_process_cpu_seconds",
        "CPU time of the pod's host processes, user and system",
        cpu,
    );
}

/// The guest as a whole; `hull_agent_up` says whether it answered.
async fn guest(pod: &Pod, reg: &mut Registry) {
    let req = GetGuestStatsRequest::new();
    let call = pod.agent.agent.get_guest_stats(ctx(), &req);
    let stats = pod.metrics.rpc("GetGuestStats", call).await;
    let up = F64Gauge::default();
    up.set(if stats.is_ok() { 1.0 } else { 0.0 });
    reg.register(
        "hull_agent_up",
        "1 when the guest agent answered this scrape",
        up,
    );
    let Ok(s) = stats else { return };
    for (name, help, value) in [
        (
            "hull_guest_memory_total_bytes",
            "The guest kernel's MemTotal",
            s.mem_total_bytes as f64,
        ),
        (
            "hull_guest_memory_available_bytes",
            "The guest kernel's MemAvailable",
            s.mem_available_bytes as f64,
        ),
        (
            "hull_guest_processes",
            "Processes and threads in the guest",
            f64::from(s.processes),
        ),
    ] {
        let g = F64Gauge::default();
        g.set(value);
        reg.register(name, help, g);
    }
    let load: Family<PeriodLabels, F64Gauge> = Family::default();
    for (period, v) in [("1m", s.load1), ("5m", s.load5), ("15m", s.load15)] {
        load.get_or_create(&PeriodLabels { period }).set(v);
    }
    reg.register("hull_guest_load", "The guest's load average", load);
}

/// Each container's cgroup, as the agent reads it.
async fn container_stats(pod: &Pod, containers: &[String], reg: &mut Registry) {
    let cpu: Family<ContainerLabels, F64Counter> = Family::default();
    let mem: Family<ContainerLabels, F64Gauge> = Family::default();
    let limit: Family<ContainerLabels, F64Gauge> = Family::default();
    let pids: Family<ContainerLabels, F64Gauge> = Family::default();
    for id in containers {
        let mut req = StatsContainerRequest::new();
        req.container_id = id.clone();
        let call = pod.agent.agent.stats_container(ctx(), &req);
        let Ok(s) = pod.metrics.rpc("StatsContainer", call).await else {
            continue;
        };
        let l = ContainerLabels {
            container: id.clone(),
        };
        cpu.get_or_create(&l).inc_by(s.cpu.usage_usec as f64 / 1e6);
        mem.get_or_create(&l).set(s.memory.usage as f64);
        if s.memory.limit > 0 {
            limit.get_or_create(&l).set(s.memory.limit as f64);
        }
        pids.get_or_create(&l).set(s.pids.current as f64);
    }
    reg.register(
        "hull_container_cpu_seconds",
        "CPU time of the container's cgroup in the guest",
        cpu,
    );
    reg.register(
        "hull_container_memory_usage_bytes",
        "Memory charged to the container's cgroup in the guest",
        mem,
    );
    reg.register(
        "hull_container_memory_limit_bytes",
        "The container's memory limit (absent when it has none)",
        limit,
    );
    reg.register(
        "hull_container_pids",
        "Processes and threads in the container's cgroup",
        pids,
    );
}

/// hull-vmm's VM exits by reason, asked over its API socket (QEMU has none: no series).
async fn vm_exits(api: &std::path::Path, reg: &mut Registry) {
    if !api.exists() {
        return;
    }
    let stats = r#"{"action":"stats"}"#;
    let Ok(line) = crate::hypervisor::vmm_api::call_raw(api, stats, CALL_DEADLINE).await else {
        return;
    };
    let exits: Family<ReasonLabels, F64Counter> = Family::default();
    for (reason, n) in parse_exits(&line) {
        exits
            .get_or_create(&ReasonLabels { reason })
            .inc_by(n as f64);
    }
    reg.register("hull_vm_exits", "VM exits by reason (hull-vmm only)", exits);
}

/// The `exits` of a stats answer: names of lowercase letters and `_`, whole counts, at
/// most `MAX_REASONS` of them; anything else is ignored.
fn parse_exits(line: &str) -> Vec<(String, u64)> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        return Vec::new();
    };
    let Some(exits) = v.get("exits").and_then(|e| e.as_object()) else {
        return Vec::new();
    };
    exits
        .iter()
        .filter(|(k, _)| {
            (1..=32).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        })
        .filter_map(|(k, n)| Some((k.clone(), n.as_u64()?)))
        .take(MAX_REASONS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_reasons_from_the_vmm_are_bounded_and_checked() {
        let good = r#"{"ok":true,"exits":{"io_in":3,"mmio_write":7}}"#;
        assert_eq!(
            parse_exits(good),
            [("io_in".to_string(), 3), ("mmio_write".to_string(), 7)]
        );
        let hostile = format!(
            r#"{{"exits":{{"a\"b":1,"neg":-1,"Upper":2,"x":1.5,{}}}}}"#,
            (0..100)
                .map(|i| format!("\"r{}\":1", "a".repeat(i % 30 + 1)))
                .collect::<Vec<_>>()
                .join(",")
        );
        let parsed = parse_exits(&hostile);
        assert!(parsed.len() <= MAX_REASONS, "{parsed:?}");
        assert!(parsed.iter().all(|(k, _)| k.starts_with('r')), "{parsed:?}");
        assert!(parse_exits("not json").is_empty());
    }
}
