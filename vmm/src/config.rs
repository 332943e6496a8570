//! What to boot, from the command line or a JSON file (`--config vm.json`), in one type.
//! The JSON form has the same fields as the flags:
//!
//! ```json
//! {"kernel": "build/vmlinux", "initrd": "build/initrd.img", "memory_mib": 256, "vcpus": 1,
//!  "vsock": {"uds": "/run/vm/vsock.sock", "cid": 3},
//!  "disks": [{"path": "data.img", "read_only": true}],
//!  "fs": [{"socket": "/run/vm/fs.sock", "tag": "hullfs"}],
//!  "net": [{"tap_fd": 100, "mac": "02:00:00:00:00:01", "mtu": 1500}],
//!  "serial_log": "/run/vm/console.log", "api_sock": "/run/vm/api.sock"}
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::devices::virtio::block::DiskConfig;
use crate::devices::virtio::fs::FsConfig;
use crate::devices::virtio::net::NetConfig;
use crate::machine::VsockConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    pub kernel: PathBuf,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Appended to hull-vmm's default kernel parameters.
    #[serde(default)]
    pub cmdline: String,
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    #[serde(default)]
    pub fs: Vec<FsConfig>,
    #[serde(default)]
    pub net: Vec<NetConfig>,
    #[serde(default)]
    pub serial_log: Option<PathBuf>,
    /// Bytes of guest console output kept in `serial_log`; the rest is discarded.
    #[serde(default = "default_serial_log_max")]
    pub serial_log_max: u64,
    /// Jail the VMM (see `jail`); none: it runs with the caller's privileges.
    #[serde(default)]
    pub jail: Option<crate::jail::JailConfig>,
    #[serde(default)]
    pub api_sock: Option<PathBuf>,
}

pub const DEFAULT_MEMORY_MIB: u32 = 256;
/// Console output kept by default: 4 MiB.
pub const DEFAULT_SERIAL_LOG_MAX: u64 = 4 << 20;

fn default_serial_log_max() -> u64 {
    DEFAULT_SERIAL_LOG_MAX
}

fn default_memory() -> u32 {
    DEFAULT_MEMORY_MIB
}
fn default_vcpus() -> u8 {
    1
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}", path = .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}", path = .path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{device}: {problem}")]
    Invalid { device: String, problem: String },
}

impl VmConfig {
    pub fn from_file(path: &Path) -> Result<VmConfig, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: VmConfig = serde_json::from_str(&text).map_err(|source| Error::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        // The flag form checks these as it parses them.
        for f in &cfg.fs {
            f.validate().map_err(|problem| Error::Invalid {
                device: format!("fs device {}", f.socket.display()),
                problem,
            })?;
        }
        for n in &cfg.net {
            n.validate().map_err(|problem| Error::Invalid {
                device: format!("net device on tap_fd {}", n.tap_fd),
                problem,
            })?;
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<VmConfig, Error> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vm.json");
        std::fs::write(&p, json).unwrap();
        VmConfig::from_file(&p)
    }

    #[test]
    fn json_config_with_defaults_and_devices() {
        let c = parse(
            r#"{"kernel":"/k","vsock":{"uds":"/v.sock"},"disks":[{"path":"/d.img","read_only":true}],
                "fs":[{"socket":"/fs.sock","tag":"hullfs"}]}"#,
        )
        .unwrap();
        assert_eq!((c.memory_mib, c.vcpus), (256, 1));
        assert_eq!(c.vsock.unwrap().cid, 3);
        assert!(c.disks[0].read_only);
        assert_eq!(c.fs[0].tag, "hullfs");
    }

    #[test]
    fn bad_json_configs_are_clear_errors() {
        for (json, want) in [
            (
                r#"{"kernel":"/k","memroy_mib":1}"#,
                "unknown field `memroy_mib`",
            ),
            (r#"{"memory_mib":128}"#, "missing field `kernel`"),
            (
                r#"{"kernel":"/k","fs":[{"socket":"/s","tag":""}]}"#,
                "tag must be",
            ),
            ("{", "EOF"),
        ] {
            let e = parse(json).unwrap_err().to_string();
            assert!(e.contains(want), "{json}: {e}");
        }
    }
}
