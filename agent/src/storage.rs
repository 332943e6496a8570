//! Mounts the filesystems the shim asks for (virtio-fs share, block devices, tmpfs,
//! binds) and takes them down again. Mount points are confined to the agent's shared
//! and state directories so a request can't mount over the agent's own files.

use std::path::{Path, PathBuf};

use anyhow::Context;
use hull_protocols::agent::Storage;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::error::{AgentError, Result, invalid};

/// Splits mount options into flags and the filesystem's data string.
pub fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        let f = match o.as_str() {
            "ro" => MsFlags::MS_RDONLY,
            "rw" | "defaults" => MsFlags::empty(),
            "nosuid" => MsFlags::MS_NOSUID,
            "nodev" => MsFlags::MS_NODEV,
            "noexec" => MsFlags::MS_NOEXEC,
            "relatime" => MsFlags::MS_RELATIME,
            "noatime" => MsFlags::MS_NOATIME,
            "sync" => MsFlags::MS_SYNCHRONOUS,
            "bind" => MsFlags::MS_BIND,
            "rbind" => MsFlags::MS_BIND | MsFlags::MS_REC,
            other => {
                data.push(other.to_string());
                continue;
            }
        };
        flags |= f;
    }
    (flags, data.join(","))
}

/// Mounts `s`; returns the mount point to unmount later.
pub fn mount_storage(s: &Storage, allowed: &[&Path]) -> Result<PathBuf> {
    let target = PathBuf::from(&s.mount_point);
    if !target.is_absolute() || s.mount_point.contains("..") {
        return Err(invalid(format!(
            "storage mount point {:?} must be an absolute path without '..'",
            s.mount_point
        )));
    }
    if !allowed.iter().any(|a| target.starts_with(a)) {
        return Err(invalid(format!(
            "storage mount point {} is outside the agent's directories",
            target.display()
        )));
    }
    let (mut flags, data) = parse_options(&s.options);
    let (source, fstype): (&str, Option<&str>) = match s.driver.as_str() {
        "virtiofs" => (s.source.as_str(), Some("virtiofs")),
        "tmpfs" => ("tmpfs", Some("tmpfs")),
        "blk" => (
            s.source.as_str(),
            Some(s.fstype.as_str()).filter(|t| !t.is_empty()),
        ),
        "bind" => {
            if !allowed.iter().any(|a| Path::new(&s.source).starts_with(a)) {
                return Err(invalid(format!(
                    "bind storage source {} is outside the agent's directories",
                    s.source
                )));
            }
            flags |= MsFlags::MS_BIND;
            (s.source.as_str(), None)
        }
        other => return Err(invalid(format!("unknown storage driver {other:?}"))),
    };
    if s.driver == "blk" && fstype.is_none() {
        return Err(invalid("blk storage needs an fstype"));
    }
    std::fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
    let data = (!data.is_empty()).then_some(data.as_str());
    mount(Some(source), &target, fstype, flags, data)
        .with_context(|| format!("mounting {} ({}) on {}", source, s.driver, target.display()))
        .map_err(AgentError::Internal)?;
    if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
        // A bind mount ignores MS_RDONLY until remounted.
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            flags | MsFlags::MS_REMOUNT,
            None::<&str>,
        )
        .context("remounting bind read-only")
        .map_err(AgentError::Internal)?;
    }
    tracing::debug!(driver = %s.driver, source, target = %target.display(), "mounted storage");
    Ok(target)
}

/// Unmounts (lazily, so a busy mount still goes) and logs failures; used on teardown.
pub fn unmount_all(points: &[PathBuf]) {
    for p in points.iter().rev() {
        if let Err(e) = umount2(p, MntFlags::MNT_DETACH) {
            tracing::warn!(path = %p.display(), error = %e, "unmount failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let (f, d) = parse_options(&[
            "ro".into(),
            "nosuid".into(),
            "size=64m".into(),
            "mode=755".into(),
        ]);
        assert!(f.contains(MsFlags::MS_RDONLY | MsFlags::MS_NOSUID));
        assert_eq!(d, "size=64m,mode=755");
    }

    #[test]
    fn mount_point_must_be_allowed() {
        let mut s = Storage::new();
        s.driver = "tmpfs".into();
        s.mount_point = "/etc".into();
        assert!(mount_storage(&s, &[Path::new("/run/hull")]).is_err());
        s.mount_point = "/run/hull/../etc".into();
        assert!(mount_storage(&s, &[Path::new("/run/hull")]).is_err());
        s.mount_point = "/run/hull/x".into();
        s.driver = "nfs".into();
        assert!(
            mount_storage(&s, &[Path::new("/run/hull")])
                .unwrap_err()
                .to_string()
                .contains("unknown storage driver")
        );
    }
}
