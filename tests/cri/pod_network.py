"""A pod whose network namespace CNI prepared (a veth eth0 on the host side) starts with
runtime handler `hull`; until pod networking is carried into the VM, its containers see
loopback only. Then everything is stopped and removed (CNI tears the veth down).

usage: pod_network.py CONTAINERD_SOCKET LOG_DIR
"""
import sys

import grpc
from cri_api.v1 import api_pb2 as api
from cri_api.v1 import api_pb2_grpc as rpc


def check(cond, msg):
    if not cond:
        print(f"FAIL: {msg}", file=sys.stderr)
        sys.exit(1)


def main():
    sock, log_dir = sys.argv[1:3]
    rt = rpc.RuntimeServiceStub(grpc.insecure_channel(f"unix://{sock}"))
    pod_cfg = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name="net-pod", uid="uid-net-1", namespace="default"),
        hostname="net-pod",
        log_directory=log_dir,
    )
    pod = rt.RunPodSandbox(api.RunPodSandboxRequest(config=pod_cfg, runtime_handler="hull")).pod_sandbox_id
    status = rt.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=pod)).status
    check(status.network.ip.startswith("198.18."), f"CNI gave no address: {status.network}")
    print("CNI address:", status.network.ip)

    cfg = api.ContainerConfig(
        metadata=api.ContainerMetadata(name="app"),
        image=api.ImageSpec(image="docker.io/hull/busybox:test"),
        command=["sleep", "600"],
    )
    cid = rt.CreateContainer(api.CreateContainerRequest(pod_sandbox_id=pod, config=cfg, sandbox_config=pod_cfg)).container_id
    rt.StartContainer(api.StartContainerRequest(container_id=cid))
    r = rt.ExecSync(api.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", "tail -n +3 /proc/net/dev | cut -d: -f1"], timeout=60))
    check(r.exit_code == 0, f"ExecSync: {r.stderr!r}")
    ifaces = r.stdout.decode().split()
    check(ifaces == ["lo"], f"interfaces in the guest: {ifaces}")

    rt.StopContainer(api.StopContainerRequest(container_id=cid, timeout=2))
    rt.RemoveContainer(api.RemoveContainerRequest(container_id=cid))
    rt.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod))
    rt.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod))
    print("pod network ok")


if __name__ == "__main__":
    main()
