"""Drives containerd's CRI API as the kubelet does: a pod with runtime handler `hull` and
two containers. Checks that both run in one VM, share the pod's IPC and UTS namespaces,
log in the CRI format, answer ExecSync, take resource updates and report stats; then stops
and removes everything.

usage: pod_lifecycle.py CONTAINERD_SOCKET LOG_DIR TEST_DIR
Exits non-zero with a message on the first failed check.
"""
import os
import sys
import time

import grpc
from cri_api.v1 import api_pb2 as api
from cri_api.v1 import api_pb2_grpc as rpc

IMAGE = "docker.io/hull/busybox:test"


def check(cond, msg):
    if not cond:
        print(f"FAIL: {msg}", file=sys.stderr)
        sys.exit(1)


def hypervisors(test_dir):
    """Running VMMs of this test's pods, whichever backend (QEMU or hull-vmm): the lines
    with role "vmm" in each pod's pid file whose process still has its recorded start time."""
    import glob

    found = []
    for pids in glob.glob(f"{test_dir}/run/*/*/vm/pids"):
        with open(pids) as f:
            for line in f:
                pid, start, role, _name = line.split()
                if role != "vmm":
                    continue
                try:
                    with open(f"/proc/{pid}/stat") as st:
                        fields = st.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if fields[19] == start:
                    found.append(int(pid))
    return found


def main():
    sock, log_dir, test_dir = sys.argv[1:4]
    rt = rpc.RuntimeServiceStub(grpc.insecure_channel(f"unix://{sock}"))
    print("CRI runtime:", rt.Version(api.VersionRequest()).runtime_name)

    ns = api.NamespaceOption(network=api.POD)
    pod_cfg = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name="hull-pod", uid="uid-hull-1", namespace="default"),
        hostname="hull-pod",
        log_directory=log_dir,
        linux=api.LinuxPodSandboxConfig(
            security_context=api.LinuxSandboxSecurityContext(namespace_options=ns),
            # Pod-level limits: containerd passes them on as sandbox annotations, and the
            # VM is sized as the default (256 MiB) plus these.
            resources=api.LinuxContainerResources(memory_limit_in_bytes=128 * 1024 * 1024),
        ),
    )
    started = time.time()
    pod = rt.RunPodSandbox(api.RunPodSandboxRequest(config=pod_cfg, runtime_handler="hull")).pod_sandbox_id
    print(f"RunPodSandbox: {time.time() - started:.2f}s")

    def create(name, command):
        cfg = api.ContainerConfig(
            metadata=api.ContainerMetadata(name=name),
            image=api.ImageSpec(image=IMAGE),
            command=command,
            log_path=f"{name}.log",
        )
        req = api.CreateContainerRequest(pod_sandbox_id=pod, config=cfg, sandbox_config=pod_cfg)
        cid = rt.CreateContainer(req).container_id
        rt.StartContainer(api.StartContainerRequest(container_id=cid))
        return cid

    writer = create("writer", ["sh", "-c", "echo hello-from-cri; echo err-line >&2; exec sleep 600"])
    sleeper = create("sleeper", ["sleep", "600"])
    check(len(hypervisors(test_dir)) == 1, f"expected one VM for the pod, found {hypervisors(test_dir)}")

    probe = ["sh", "-c", "hostname; readlink /proc/self/ns/ipc; readlink /proc/self/ns/uts"]
    seen = []
    for cid in (writer, sleeper):
        r = rt.ExecSync(api.ExecSyncRequest(container_id=cid, cmd=probe, timeout=60))
        check(r.exit_code == 0, f"ExecSync exit {r.exit_code}: {r.stderr!r}")
        seen.append(r.stdout.decode().split())
    check(seen[0] == seen[1], f"containers see different hostname/ipc/uts: {seen}")
    r = rt.ExecSync(api.ExecSyncRequest(container_id=sleeper, cmd=["sh", "-c", "grep MemTotal /proc/meminfo"], timeout=60))
    mem_kib = int(r.stdout.split()[1])
    check(mem_kib > 300 * 1024, f"VM not sized from the pod's limits: MemTotal {mem_kib} KiB")
    r = rt.ExecSync(api.ExecSyncRequest(container_id=sleeper, cmd=["sh", "-c", "echo out; exit 7"], timeout=60))
    check((r.exit_code, r.stdout) == (7, b"out\n"), f"ExecSync exit code/output: {r.exit_code} {r.stdout!r}")

    # UpdateContainerResources reaches the container's cgroup in the guest.
    limit = 64 * 1024 * 1024
    rt.UpdateContainerResources(api.UpdateContainerResourcesRequest(
        container_id=sleeper, linux=api.LinuxContainerResources(memory_limit_in_bytes=limit)))
    r = rt.ExecSync(api.ExecSyncRequest(
        container_id=sleeper, cmd=["sh", "-c", "cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/memory.max"], timeout=60))
    check(r.stdout.decode().strip() == str(limit), f"memory.max after update: {r.stdout!r} {r.stderr!r}")

    # Container stats come from the guest's cgroup.
    stats = rt.ContainerStats(api.ContainerStatsRequest(container_id=sleeper)).stats
    check(stats.memory.working_set_bytes.value > 0 or stats.memory.usage_bytes.value > 0, f"stats: {stats}")

    log = os.path.join(log_dir, "writer.log")
    lines = []
    for _ in range(100):
        if os.path.exists(log):
            with open(log) as f:
                lines = f.read().splitlines()
            if len(lines) >= 2:
                break
        time.sleep(0.1)
    # CRI log format: <RFC3339Nano time> <stream> <P|F> <message>
    parsed = sorted((l.split(" ", 3)[1:] for l in lines))
    check(parsed == [["stderr", "F", "err-line"], ["stdout", "F", "hello-from-cri"]], f"CRI log: {lines}")

    for cid in (writer, sleeper):
        rt.StopContainer(api.StopContainerRequest(container_id=cid, timeout=2))
        st = rt.ContainerStatus(api.ContainerStatusRequest(container_id=cid)).status
        check(st.state == api.CONTAINER_EXITED, f"{cid} state {st.state}")
        rt.RemoveContainer(api.RemoveContainerRequest(container_id=cid))
    rt.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod))
    rt.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod))
    check(not rt.ListPodSandbox(api.ListPodSandboxRequest()).items, "pod still listed")
    print("pod lifecycle ok")


if __name__ == "__main__":
    main()
