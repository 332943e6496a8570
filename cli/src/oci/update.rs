//! `hull update`: new cgroup limits for a running container, applied by the agent to the
//! container's cgroup inside the VM. Takes runc's `--resources FILE` (`-`: stdin; OCI
//! `LinuxResources` JSON) or its flags. The VM's own size is not changed: a limit above
//! what the VM has is a limit that never bites.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::{Map, Value, json};

use super::control::{self, Request};
use super::{Global, opened};

#[derive(Args, Debug, Clone)]
pub struct UpdateArgs {
    /// OCI LinuxResources JSON; `-` reads it from stdin. The flags are then ignored.
    #[arg(short, long)]
    pub resources: Option<PathBuf>,
    /// Memory limit (bytes, or with k, m, g).
    #[arg(long)]
    pub memory: Option<String>,
    #[arg(long)]
    pub memory_reservation: Option<String>,
    /// Memory plus swap; -1 for unlimited.
    #[arg(long, allow_hyphen_values = true)]
    pub memory_swap: Option<String>,
    /// CFS period, microseconds.
    #[arg(long)]
    pub cpu_period: Option<u64>,
    /// CFS quota, microseconds; -1 for none.
    #[arg(long, allow_hyphen_values = true)]
    pub cpu_quota: Option<i64>,
    #[arg(long)]
    pub cpu_share: Option<u64>,
    #[arg(long)]
    pub cpuset_cpus: Option<String>,
    #[arg(long)]
    pub cpuset_mems: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
    pub id: String,
}

pub fn run(g: &Global, a: &UpdateArgs) -> anyhow::Result<()> {
    let resources = match &a.resources {
        Some(path) => {
            let mut text = Vec::new();
            if path.as_os_str() == "-" {
                std::io::stdin()
                    .take(1 << 20)
                    .read_to_end(&mut text)
                    .context("reading resources from stdin")?;
            } else {
                text =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            }
            let r: oci_spec::runtime::LinuxResources =
                serde_json::from_slice(&text).context("parsing the resources JSON")?;
            serde_json::to_value(r)?
        }
        None => from_flags(a)?,
    };
    let (entry, _) = opened(g, &a.id)?;
    control::call(
        &entry.control_socket(),
        &Request::Update { resources },
        super::agent_timeout(),
    )?;
    Ok(())
}

/// runc's flags as `LinuxResources`; only what was given.
fn from_flags(a: &UpdateArgs) -> anyhow::Result<Value> {
    let mut memory = Map::new();
    if let Some(m) = &a.memory {
        memory.insert("limit".into(), json!(parse_bytes(m)?));
    }
    if let Some(m) = &a.memory_reservation {
        memory.insert("reservation".into(), json!(parse_bytes(m)?));
    }
    if let Some(m) = &a.memory_swap {
        memory.insert("swap".into(), json!(parse_bytes(m)?));
    }
    let mut cpu = Map::new();
    if let Some(v) = a.cpu_period {
        cpu.insert("period".into(), json!(v));
    }
    if let Some(v) = a.cpu_quota {
        cpu.insert("quota".into(), json!(v));
    }
    if let Some(v) = a.cpu_share {
        cpu.insert("shares".into(), json!(v));
    }
    if let Some(v) = &a.cpuset_cpus {
        cpu.insert("cpus".into(), json!(v));
    }
    if let Some(v) = &a.cpuset_mems {
        cpu.insert("mems".into(), json!(v));
    }
    let mut r = Map::new();
    if !memory.is_empty() {
        r.insert("memory".into(), Value::Object(memory));
    }
    if !cpu.is_empty() {
        r.insert("cpu".into(), Value::Object(cpu));
    }
    if let Some(p) = a.pids_limit {
        r.insert("pids".into(), json!({"limit": p}));
    }
    if r.is_empty() {
        anyhow::bail!("update: nothing to change (give --resources or a limit)");
    }
    Ok(Value::Object(r))
}

/// `512m`, `1G`, `1048576`, `-1` (unlimited), as runc's units take them.
fn parse_bytes(s: &str) -> anyhow::Result<i64> {
    if s == "-1" {
        return Ok(-1);
    }
    let bad = || anyhow::anyhow!("{s:?}: expected bytes, e.g. 512m or 1g");
    let lower = s.to_ascii_lowercase();
    let t = lower.strip_suffix('b').unwrap_or(&lower);
    let (num, shift) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 10),
        Some('m') => (&t[..t.len() - 1], 20),
        Some('g') => (&t[..t.len() - 1], 30),
        Some('t') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: i64 = num.parse().map_err(|_| bad())?;
    if n < 0 {
        return Err(bad());
    }
    n.checked_mul(1i64 << shift).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_runc_takes_them() {
        assert_eq!(parse_bytes("512m").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1G").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("64kb").unwrap(), 64 << 10);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes("-1").unwrap(), -1);
        assert!(parse_bytes("-5").is_err());
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("99999999999t").is_err());
    }
}
