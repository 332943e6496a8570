//! Checks and adapts an OCI spec from the shim before any of it is acted on: ids, the
//! rootfs and bind sources (which must lie in the shared directory), cgroup path, and
//! namespaces that name a host path (which mean "the pod's", and are mapped to the
//! sandbox's namespaces inside the guest).

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, Process, Spec};

use crate::error::{Result, invalid};

/// Annotations by which containerd's CRI plugin (and CRI-O) mark the pod's sandbox.
const CONTAINER_TYPE_ANNOTATIONS: [&str; 2] = [
    "io.kubernetes.cri.container-type",
    "io.kubernetes.cri-o.ContainerType",
];

/// Container and exec ids become path components: keep them boring.
pub fn validate_id(what: &str, id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 128 {
        return Err(invalid(format!("{what} id must be 1 to 128 characters")));
    }
    if id.starts_with('.') || id.contains("..") || id.contains('/') {
        return Err(invalid(format!(
            "{what} id {id:?} must not contain '/' or '..' or start with '.'"
        )));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(invalid(format!(
            "{what} id {id:?} may hold only letters, digits, '-', '_' and '.'"
        )));
    }
    Ok(())
}

/// The pod-level namespaces a container may join.
#[derive(Debug, Clone, Default)]
pub struct PodNamespaces {
    /// Bind-mounted ipc and uts namespace files created by CreateSandbox.
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    /// pid of the sandbox (pause) container's init, whose pid namespace the pod shares.
    pub sandbox_pid: Option<i32>,
}

/// Whether the spec describes the pod's sandbox (pause) container.
pub fn is_sandbox_container(spec: &Spec) -> bool {
    spec.annotations().as_ref().is_some_and(|a| {
        CONTAINER_TYPE_ANNOTATIONS
            .iter()
            .any(|k| a.get(*k).map(String::as_str) == Some("sandbox"))
    })
}

pub fn parse_spec(raw: &[u8]) -> Result<Spec> {
    serde_json::from_slice(raw).map_err(|e| invalid(format!("malformed OCI spec: {e}")))
}

pub fn parse_process(raw: &[u8]) -> Result<Process> {
    let p: Process =
        serde_json::from_slice(raw).map_err(|e| invalid(format!("malformed OCI process: {e}")))?;
    check_args(&p)?;
    Ok(p)
}

fn check_args(p: &Process) -> Result<()> {
    if p.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(invalid("process.args is empty: nothing to run"));
    }
    Ok(())
}

/// Validates `spec` and rewrites it for the guest; returns the cgroup path it will use.
pub fn prepare(
    spec: &mut Spec,
    id: &str,
    shared_dir: &Path,
    pod: &PodNamespaces,
) -> Result<PathBuf> {
    let shared = shared_dir.canonicalize().map_err(|e| {
        invalid(format!(
            "shared directory {} is not usable: {e}",
            shared_dir.display()
        ))
    })?;

    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid("spec has no process"))?;
    check_args(process)?;

    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| invalid("spec has no root"))?;
    let rootfs = inside_shared(root.path(), &shared, "rootfs")?;
    let mut root = root.clone();
    root.set_path(rootfs);
    spec.set_root(Some(root));

    for m in spec.mounts().iter().flatten() {
        let is_bind = m.typ().as_deref() == Some("bind")
            || m.options()
                .iter()
                .flatten()
                .any(|o| o == "bind" || o == "rbind");
        if is_bind {
            let src = m.source().as_ref().ok_or_else(|| {
                invalid(format!(
                    "bind mount on {} has no source",
                    m.destination().display()
                ))
            })?;
            inside_shared(src, &shared, "bind mount source")?;
        }
    }

    let linux = spec
        .linux()
        .clone()
        .ok_or_else(|| invalid("spec has no linux section"))?;
    let mut linux = linux;
    // Host cgroup paths (and systemd "slice:prefix:name" triples) mean nothing in the guest.
    let cgroup = match linux.cgroups_path() {
        Some(p) if p.is_absolute() && !p.to_string_lossy().contains(':') => p.clone(),
        _ => PathBuf::from(format!("/hull/{id}")),
    };
    linux.set_cgroups_path(Some(cgroup.clone()));
    if let Some(nss) = linux.namespaces() {
        linux.set_namespaces(Some(map_namespaces(nss, pod)?));
    }
    // No UTS namespace of its own (a host-network pod): the container shares the VM's,
    // whose hostname is the pod's (CreateSandbox); the spec's copy can't be applied.
    let own_uts = linux
        .namespaces()
        .iter()
        .flatten()
        .any(|n| n.typ() == LinuxNamespaceType::Uts);
    if !own_uts {
        spec.set_hostname(None);
        spec.set_domainname(None);
    }
    spec.set_linux(Some(linux));
    Ok(cgroup)
}

/// The `net.*` sysctls of a container that shares the VM's network namespace (it joins
/// the pod's), taken out of its spec: they are the pod's, set on the VM's namespace
/// (`apply_pod_sysctls`), where the runtime would refuse them for a container without a
/// network namespace of its own. Names are checked: a name that could leave
/// /proc/sys/net is refused.
pub fn take_pod_sysctls(spec: &mut Spec) -> Result<Vec<(String, String)>> {
    let Some(mut linux) = spec.linux().clone() else {
        return Ok(Vec::new());
    };
    let own_net = linux
        .namespaces()
        .iter()
        .flatten()
        .any(|n| n.typ() == LinuxNamespaceType::Network);
    let Some(sysctls) = linux.sysctl().clone() else {
        return Ok(Vec::new());
    };
    if own_net {
        return Ok(Vec::new());
    }
    let (net, rest): (Vec<_>, Vec<_>) = sysctls
        .into_iter()
        .partition(|(k, _)| k.starts_with("net."));
    for (k, _) in &net {
        let ok = k.split(['.', '/']).all(|part| {
            !part.is_empty()
                && part != ".."
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
        if !ok {
            return Err(invalid(format!("sysctl {k:?} is not a sysctl name")));
        }
    }
    linux.set_sysctl((!rest.is_empty()).then(|| rest.into_iter().collect()));
    spec.set_linux(Some(linux));
    Ok(net)
}

/// Sets `sysctls` (checked by `take_pod_sysctls`) on the VM's own namespaces.
pub fn apply_pod_sysctls(sysctls: &[(String, String)]) -> Result<()> {
    for (k, v) in sysctls {
        let path = Path::new("/proc/sys").join(k.replace('.', "/"));
        std::fs::write(&path, v).map_err(|e| invalid(format!("setting sysctl {k}={v}: {e}")))?;
    }
    Ok(())
}

fn inside_shared(path: &Path, shared: &Path, what: &str) -> Result<PathBuf> {
    if !path.is_absolute() {
        return Err(invalid(format!(
            "{what} {} must be an absolute path",
            path.display()
        )));
    }
    let real = path
        .canonicalize()
        .map_err(|e| invalid(format!("{what} {} does not exist: {e}", path.display())))?;
    if !real.starts_with(shared) {
        return Err(invalid(format!(
            "{what} {} is outside the shared directory {}",
            path.display(),
            shared.display()
        )));
    }
    Ok(real)
}

/// Namespaces given by path are the pod's on the host; inside the VM they become the
/// sandbox's. ipc and uts are always the pod's when a sandbox exists, so every container
/// of the pod (the pause container included) sees the same ones.
fn map_namespaces(nss: &[LinuxNamespace], pod: &PodNamespaces) -> Result<Vec<LinuxNamespace>> {
    let mut out = Vec::with_capacity(nss.len());
    for ns in nss {
        let mut ns = ns.clone();
        let joins = ns.path().is_some();
        match ns.typ() {
            LinuxNamespaceType::Ipc | LinuxNamespaceType::Uts => {
                let pod_ns = if ns.typ() == LinuxNamespaceType::Ipc {
                    &pod.ipc
                } else {
                    &pod.uts
                };
                match (pod_ns, joins) {
                    (Some(p), _) => {
                        ns.set_path(Some(p.clone()));
                    }
                    (None, true) => {
                        return Err(invalid(format!(
                            "{:?} namespace joins the pod's, but no sandbox exists",
                            ns.typ()
                        )));
                    }
                    (None, false) => {}
                }
            }
            // The VM is the pod's network namespace.
            LinuxNamespaceType::Network if joins => continue,
            LinuxNamespaceType::Pid if joins => match pod.sandbox_pid {
                Some(pid) => {
                    ns.set_path(Some(PathBuf::from(format!("/proc/{pid}/ns/pid"))));
                }
                None => {
                    return Err(invalid(
                        "pid namespace joins the pod's, but the pod has no sandbox container",
                    ));
                }
            },
            t if joins => {
                return Err(invalid(format!(
                    "joining a host {t:?} namespace by path is not supported in the VM"
                )));
            }
            _ => {}
        }
        out.push(ns);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxNamespaceBuilder, MountBuilder, RootBuilder};

    fn spec_with_root(root: &Path) -> Spec {
        let mut s = Spec::default();
        s.set_root(Some(
            RootBuilder::default()
                .path(root)
                .readonly(false)
                .build()
                .unwrap(),
        ));
        s
    }

    #[test]
    fn ids() {
        assert!(validate_id("container", "abc-123_x.y").is_ok());
        for bad in [
            "",
            "a/b",
            "..",
            "a..b",
            ".hidden",
            "sp ace",
            &"x".repeat(129),
        ] {
            assert!(validate_id("container", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn rootfs_must_be_in_shared_dir() {
        let shared = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let rootfs = shared.path().join("c1/rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        let pod = PodNamespaces::default();

        let mut ok = spec_with_root(&rootfs);
        let cg = prepare(&mut ok, "c1", shared.path(), &pod).unwrap();
        assert_eq!(cg, PathBuf::from("/hull/c1"));

        let mut bad = spec_with_root(outside.path());
        assert!(
            prepare(&mut bad, "c1", shared.path(), &pod)
                .unwrap_err()
                .to_string()
                .contains("outside")
        );

        let escape = shared.path().join("c1/../../");
        let mut bad = spec_with_root(&escape);
        assert!(prepare(&mut bad, "c1", shared.path(), &pod).is_err());

        let mut missing = spec_with_root(&shared.path().join("nope"));
        assert!(
            prepare(&mut missing, "c1", shared.path(), &pod)
                .unwrap_err()
                .to_string()
                .contains("does not exist")
        );
    }

    #[test]
    fn bind_source_must_be_in_shared_dir() {
        let shared = tempfile::tempdir().unwrap();
        let rootfs = shared.path().join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        let mut s = spec_with_root(&rootfs);
        let mut mounts = s.mounts().clone().unwrap();
        mounts.push(
            MountBuilder::default()
                .destination("/etc/passwd")
                .typ("bind")
                .source("/etc/passwd")
                .options(vec!["rbind".to_string(), "ro".to_string()])
                .build()
                .unwrap(),
        );
        s.set_mounts(Some(mounts));
        let err = prepare(&mut s, "c", shared.path(), &PodNamespaces::default()).unwrap_err();
        assert!(err.to_string().contains("bind mount source"), "{err}");
    }

    #[test]
    fn pod_namespaces_are_mapped() {
        let shared = tempfile::tempdir().unwrap();
        let rootfs = shared.path().join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        let mut s = spec_with_root(&rootfs);
        let mut linux = s.linux().clone().unwrap();
        let ns = |t, p: Option<&str>| {
            let mut b = LinuxNamespaceBuilder::default().typ(t);
            if let Some(p) = p {
                b = b.path(p);
            }
            b.build().unwrap()
        };
        linux.set_namespaces(Some(vec![
            ns(LinuxNamespaceType::Pid, Some("/proc/999/ns/pid")),
            ns(LinuxNamespaceType::Network, Some("/var/run/netns/cni-1")),
            ns(LinuxNamespaceType::Ipc, Some("/proc/999/ns/ipc")),
            ns(LinuxNamespaceType::Uts, None),
            ns(LinuxNamespaceType::Mount, None),
        ]));
        linux.set_cgroups_path(Some(PathBuf::from("kubepods.slice:cri-containerd:abc")));
        s.set_linux(Some(linux));

        let pod = PodNamespaces {
            ipc: Some("/run/ns/ipc".into()),
            uts: Some("/run/ns/uts".into()),
            sandbox_pid: Some(42),
        };
        let cg = prepare(&mut s, "c", shared.path(), &pod).unwrap();
        assert_eq!(cg, PathBuf::from("/hull/c"));
        let got: Vec<_> = s.linux().as_ref().unwrap().namespaces().clone().unwrap();
        let paths: Vec<_> = got.iter().map(|n| (n.typ(), n.path().clone())).collect();
        assert_eq!(
            paths,
            vec![
                (
                    LinuxNamespaceType::Pid,
                    Some(PathBuf::from("/proc/42/ns/pid"))
                ),
                (LinuxNamespaceType::Ipc, Some(PathBuf::from("/run/ns/ipc"))),
                (LinuxNamespaceType::Uts, Some(PathBuf::from("/run/ns/uts"))),
                (LinuxNamespaceType::Mount, None),
            ]
        );

        let mut joins_mnt = spec_with_root(&rootfs);
        let mut linux = joins_mnt.linux().clone().unwrap();
        linux.set_namespaces(Some(vec![ns(
            LinuxNamespaceType::Mount,
            Some("/proc/1/ns/mnt"),
        )]));
        joins_mnt.set_linux(Some(linux));
        assert!(prepare(&mut joins_mnt, "c", shared.path(), &pod).is_err());
    }

    #[test]
    fn hostname_without_uts_namespace_is_dropped() {
        let shared = tempfile::tempdir().unwrap();
        let rootfs = shared.path().join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        let mut s = spec_with_root(&rootfs);
        s.set_hostname(Some("pod".into()));
        let mut linux = s.linux().clone().unwrap();
        let nss: Vec<_> = linux
            .namespaces()
            .clone()
            .unwrap()
            .into_iter()
            .filter(|n| n.typ() != LinuxNamespaceType::Uts)
            .collect();
        linux.set_namespaces(Some(nss));
        s.set_linux(Some(linux));
        prepare(&mut s, "c", shared.path(), &PodNamespaces::default()).unwrap();
        assert_eq!(s.hostname(), &None);
    }

    #[test]
    fn malformed_input() {
        assert!(
            parse_spec(b"{not json")
                .unwrap_err()
                .to_string()
                .contains("malformed OCI spec")
        );
        assert!(parse_process(br#"{"cwd":"/","args":[]}"#).is_err());
        assert!(parse_process(br#"{"cwd":"/","args":["true"],"user":{"uid":0,"gid":0}}"#).is_ok());
    }

    #[test]
    fn net_sysctls_of_a_container_in_the_pods_network_are_the_pods() {
        let mut spec = Spec::default();
        let mut linux = spec.linux().clone().unwrap();
        linux.set_namespaces(Some(vec![]));
        linux.set_sysctl(Some(
            [
                ("net.ipv4.ip_unprivileged_port_start", "0"),
                ("kernel.shm_rmid_forced", "1"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ));
        spec.set_linux(Some(linux.clone()));
        let net = take_pod_sysctls(&mut spec).unwrap();
        assert_eq!(
            net,
            vec![(
                "net.ipv4.ip_unprivileged_port_start".to_string(),
                "0".to_string()
            )]
        );
        let left = spec.linux().as_ref().unwrap().sysctl().clone().unwrap();
        assert_eq!(left.len(), 1);
        assert!(left.contains_key("kernel.shm_rmid_forced"));

        let mut bad = Spec::default();
        let mut l = linux.clone();
        l.set_sysctl(Some(
            [("net.ipv4/../../kernel/x".to_string(), "1".to_string())]
                .into_iter()
                .collect(),
        ));
        bad.set_linux(Some(l));
        assert!(take_pod_sysctls(&mut bad).is_err());

        // A container with a network namespace of its own keeps them.
        let mut own = Spec::default();
        let mut l = linux;
        l.set_namespaces(Some(vec![
            oci_spec::runtime::LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .build()
                .unwrap(),
        ]));
        own.set_linux(Some(l));
        assert!(take_pod_sysctls(&mut own).unwrap().is_empty());
    }
}
