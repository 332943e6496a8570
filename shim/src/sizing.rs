//! A pod VM's size: the configured default (room for the guest kernel and agent) plus the
//! pod's own limits, which containerd's CRI plugin puts on the sandbox as annotations (or,
//! for the OCI runtime's one-container VMs, the container's own limits).

use std::collections::HashMap;

use crate::config::HullConfig;

const MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
const CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
const CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodSize {
    pub vcpus: u32,
    pub memory_mib: u32,
}

pub fn pod_size(
    cfg: &HullConfig,
    annotations: Option<&HashMap<String, String>>,
    host_cpus: u32,
) -> PodSize {
    let get = |k: &str| {
        annotations
            .and_then(|a| a.get(k))
            .and_then(|v| v.parse::<i64>().ok())
    };
    sized(cfg, get(MEMORY), get(CPU_QUOTA), get(CPU_PERIOD), host_cpus)
}

/// The size of a VM that holds one container (hull's OCI runtime): the default plus the
/// container's own memory limit and CPU quota, as Kata sizes a VM for its container.
pub fn container_size(
    cfg: &HullConfig,
    resources: Option<&oci_spec::runtime::LinuxResources>,
    host_cpus: u32,
) -> PodSize {
    let memory = resources
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit());
    let cpu = resources.and_then(|r| r.cpu().as_ref());
    let quota = cpu.and_then(|c| c.quota());
    let period = cpu
        .and_then(|c| c.period())
        .and_then(|p| i64::try_from(p).ok());
    sized(cfg, memory, quota, period, host_cpus)
}

/// The default, plus `memory` bytes and `quota / period` CPUs (each only when positive),
/// with no more vCPUs than the host has.
fn sized(
    cfg: &HullConfig,
    memory: Option<i64>,
    quota: Option<i64>,
    period: Option<i64>,
    host_cpus: u32,
) -> PodSize {
    let positive = |v: Option<i64>| v.filter(|v| *v > 0);
    let extra_mib = positive(memory)
        .map(|b| (b as u64).div_ceil(1 << 20))
        .unwrap_or(0);
    let extra_cpus = match (positive(quota), positive(period)) {
        (Some(q), Some(p)) => (q as u64).div_ceil(p as u64),
        _ => 0,
    };
    PodSize {
        vcpus: (u64::from(cfg.vcpus) + extra_cpus).min(u64::from(host_cpus.max(1))) as u32,
        memory_mib: (u64::from(cfg.memory_mib) + extra_mib).min(u64::from(u32::MAX)) as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_plus_pod_limits_capped_by_host() {
        let cfg = HullConfig::default();
        let base = pod_size(&cfg, None, 8);
        assert_eq!(
            base,
            PodSize {
                vcpus: cfg.vcpus,
                memory_mib: cfg.memory_mib
            }
        );
        let a: HashMap<String, String> = [
            (MEMORY.to_string(), (512u64 << 20).to_string()),
            (CPU_QUOTA.to_string(), "150000".to_string()),
            (CPU_PERIOD.to_string(), "100000".to_string()),
        ]
        .into();
        assert_eq!(
            pod_size(&cfg, Some(&a), 8),
            PodSize {
                vcpus: cfg.vcpus + 2,
                memory_mib: cfg.memory_mib + 512
            }
        );
        assert_eq!(pod_size(&cfg, Some(&a), 2).vcpus, 2);
        let junk: HashMap<String, String> = [(MEMORY.to_string(), "-5".to_string())].into();
        assert_eq!(pod_size(&cfg, Some(&junk), 8).memory_mib, cfg.memory_mib);
    }

    #[test]
    fn a_container_vm_grows_by_the_containers_limits() {
        let cfg = HullConfig::default();
        let r: oci_spec::runtime::LinuxResources = serde_json::from_value(serde_json::json!({
            "memory": {"limit": 128u64 << 20},
            "cpu": {"quota": 150000, "period": 100000},
        }))
        .unwrap();
        let s = container_size(&cfg, Some(&r), 8);
        assert_eq!(s.memory_mib, cfg.memory_mib + 128);
        assert_eq!(s.vcpus, cfg.vcpus + 2);
        assert_eq!(container_size(&cfg, None, 8), pod_size(&cfg, None, 8));
        let unlimited: oci_spec::runtime::LinuxResources =
            serde_json::from_value(serde_json::json!({"memory": {"limit": -1}})).unwrap();
        assert_eq!(
            container_size(&cfg, Some(&unlimited), 8).memory_mib,
            cfg.memory_mib
        );
    }
}
