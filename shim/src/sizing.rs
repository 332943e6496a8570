//! A pod VM's size: the configured default (room for the guest kernel and agent) plus the
//! pod's own limits, which containerd's CRI plugin puts on the sandbox as annotations.

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
            .filter(|v| *v > 0)
    };
    let extra_mib = get(MEMORY)
        .map(|b| (b as u64).div_ceil(1 << 20))
        .unwrap_or(0);
    let extra_cpus = match (get(CPU_QUOTA), get(CPU_PERIOD)) {
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
}
