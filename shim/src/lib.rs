//! containerd-shim-hull-v2: the containerd shim v2 that runs each pod in a hull microVM.
//! One shim process and one VM per pod; containers of a pod join its shim by sandbox id.

pub mod admission;
pub mod agent_client;
pub mod config;
pub mod daemon;
pub mod hybrid_vsock;
pub mod hypervisor;
pub mod ids;
pub mod logging;
pub mod network;
pub mod pod;
pub mod pod_dir;
pub mod pod_events;
pub mod pod_fs;
pub mod pod_metrics;
pub mod share;
pub mod shim;
pub mod sizing;
pub mod task;
pub mod template;
pub mod vm_cgroup;

use oci_spec::runtime::Spec;

/// Annotations naming a container's pod sandbox: containerd's CRI, then CRI-O's.
const SANDBOX_ID_ANNOTATIONS: [&str; 2] = [
    "io.kubernetes.cri.sandbox-id",
    "io.kubernetes.cri-o.SandboxID",
];
const CONTAINER_TYPE_ANNOTATIONS: [&str; 2] = [
    "io.kubernetes.cri.container-type",
    "io.kubernetes.cri-o.ContainerType",
];

/// The pod a container belongs to, if its annotations name one.
pub fn sandbox_id(spec: &Spec) -> Option<String> {
    let a = spec.annotations().as_ref()?;
    SANDBOX_ID_ANNOTATIONS
        .iter()
        .find_map(|k| a.get(*k))
        .filter(|v| !v.is_empty())
        .cloned()
}

/// Whether the container is its pod's sandbox (pause) container.
pub fn is_sandbox_container(spec: &Spec) -> bool {
    spec.annotations().as_ref().is_some_and(|a| {
        CONTAINER_TYPE_ANNOTATIONS
            .iter()
            .any(|k| a.get(*k).map(String::as_str) == Some("sandbox"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_grouping() {
        let mut s = Spec::default();
        assert_eq!(sandbox_id(&s), None);
        s.set_annotations(Some(
            [
                (
                    "io.kubernetes.cri.sandbox-id".to_string(),
                    "pod-1".to_string(),
                ),
                (
                    "io.kubernetes.cri.container-type".to_string(),
                    "container".to_string(),
                ),
            ]
            .into(),
        ));
        assert_eq!(sandbox_id(&s).as_deref(), Some("pod-1"));
        assert!(!is_sandbox_container(&s));
        s.set_annotations(Some(
            [
                (
                    "io.kubernetes.cri-o.SandboxID".to_string(),
                    "p2".to_string(),
                ),
                (
                    "io.kubernetes.cri-o.ContainerType".to_string(),
                    "sandbox".to_string(),
                ),
            ]
            .into(),
        ));
        assert_eq!(sandbox_id(&s).as_deref(), Some("p2"));
        assert!(is_sandbox_container(&s));
    }
}
