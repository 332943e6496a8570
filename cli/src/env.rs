//! `hull env`: the configuration the shim would run with here (the file named by
//! `$HULL_CONFIG` or /etc/hull/config.toml, over the defaults), the tools it would start,
//! and the backend `auto` resolves to on this host.

use std::collections::BTreeMap;

use hull_shim::config::{HullConfig, HypervisorKind, Source};
use hull_shim::hypervisor::accel::Accel;
use hull_shim::hypervisor::{resolve, tools_for};
use serde::Serialize;

#[derive(Serialize)]
struct Env {
    /// Where the configuration came from.
    source: String,
    config: HullConfig,
    resolved: Resolved,
}

#[derive(Serialize)]
struct Resolved {
    backend: HypervisorKind,
    accelerator: &'static str,
    /// Why `auto` picked the backend it did (empty on hardware KVM).
    reason: &'static str,
    tools: BTreeMap<&'static str, String>,
}

pub fn run(json: bool) -> anyhow::Result<()> {
    let env = effective(HullConfig::load()?);
    if json {
        println!("{}", serde_json::to_string_pretty(&env)?);
    } else {
        print!("{}", toml::to_string(&env)?);
    }
    Ok(())
}

fn effective(config: HullConfig) -> Env {
    let (backend, accel, reason) = resolve(config.hypervisor);
    let tools = tools_for(&config, backend)
        .into_iter()
        .map(|(name, path)| (name, path.display().to_string()))
        .collect();
    let source = Source::current().to_string();
    Env {
        source,
        config,
        resolved: Resolved {
            backend,
            accelerator: match accel {
                Accel::Kvm => "kvm",
                Accel::Tcg => "tcg",
            },
            reason,
            tools,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_configuration_round_trips_as_toml_and_json() {
        let env = effective(HullConfig {
            memory_mib: 512,
            ..HullConfig::default()
        });
        let text = toml::to_string(&env).unwrap();
        let back: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(back["config"]["memory_mib"].as_integer(), Some(512));
        // The config part is a valid config file as it stands.
        let config_part = toml::to_string(&env.config).unwrap();
        let reread: HullConfig = toml::from_str(&config_part).unwrap();
        assert_eq!(reread.memory_mib, 512);
        let json: serde_json::Value = serde_json::to_value(&env).unwrap();
        assert!(json["resolved"]["tools"]["virtiofsd"].is_string());
        assert!(matches!(
            json["resolved"]["backend"].as_str(),
            Some("builtin" | "qemu")
        ));
    }
}
