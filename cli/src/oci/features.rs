//! `hull features` (the runtime's capabilities as the OCI features document gives them)
//! and `hull spec` (a starting config.json, as `runc spec` writes one).

use std::path::Path;

use anyhow::Context;

/// The runtime-spec version hull states in `state` and takes in bundles.
pub const OCI_VERSION: &str = "1.1.0";

/// The namespaces the agent makes for a container inside the VM.
const NAMESPACES: [&str; 6] = ["cgroup", "ipc", "mount", "network", "pid", "uts"];

pub fn features() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        // The host-side ones; createContainer and startContainer would have to run in
        // the VM (refused at create).
        "hooks": ["prestart", "createRuntime", "poststart", "poststop"],
        "mountOptions": ["bind", "rbind", "ro", "rw", "nosuid", "nodev", "noexec", "private", "rprivate"],
        "linux": {
            "namespaces": NAMESPACES,
            "cgroup": {"v1": false, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {"enabled": true},
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
        },
        "annotations": {
            "io.hull.runtime": "a pod VM per container (hull-vmm or QEMU); see docs/oci-cli.md",
        },
    })
}

pub fn print() -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(&features())?);
    Ok(())
}

/// Writes `<bundle>/config.json`: `sh` in `rootfs`, runc's default mounts and
/// capabilities; refuses to replace a config.json that is there.
pub fn write_spec(bundle: &Path) -> anyhow::Result<()> {
    let path = bundle.join("config.json");
    if path.exists() {
        anyhow::bail!("File {} exists. Remove it first", path.display());
    }
    let mut spec = oci_spec::runtime::Spec::default();
    spec.set_version(OCI_VERSION.to_string());
    spec.set_hostname(Some("hull".to_string()));
    if let Some(p) = spec.process().clone() {
        let mut p = p;
        p.set_terminal(Some(false));
        p.set_args(Some(vec!["sh".to_string()]));
        spec.set_process(Some(p));
    }
    let json = serde_json::to_vec_pretty(&spec)?;
    std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_is_written_once_and_loads() {
        let t = tempfile::tempdir().unwrap();
        write_spec(t.path()).unwrap();
        let s = oci_spec::runtime::Spec::load(t.path().join("config.json")).unwrap();
        assert_eq!(
            s.process().as_ref().unwrap().args().as_ref().unwrap(),
            &vec!["sh".to_string()]
        );
        assert!(
            write_spec(t.path())
                .unwrap_err()
                .to_string()
                .contains("exists")
        );
        assert_eq!(features()["ociVersionMax"], OCI_VERSION);
    }
}
