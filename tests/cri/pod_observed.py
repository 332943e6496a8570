"""A CRI pod with two containers, seen the way an operator sees it: `hull pods` lists it
with both containers, and `hull monitor`'s /metrics, fetched over HTTP and parsed with
Prometheus' own parser, has non-zero figures for its VM, guest, containers and agent
calls; once the pod is removed, none of its series are left.

usage: pod_observed.py CONTAINERD_SOCKET LOG_DIR HULL_BIN MONITOR_URL
(HULL_CONFIG in the environment names the shim's config.) Prints the sandbox id.
"""
import json
import os
import subprocess
import sys
import time
import urllib.request

import grpc
from cri_api.v1 import api_pb2 as api
from cri_api.v1 import api_pb2_grpc as rpc
from prometheus_client.openmetrics.parser import text_string_to_metric_families

IMAGE = "docker.io/hull/busybox:test"


def check(cond, msg):
    if not cond:
        print(f"FAIL: {msg}", file=sys.stderr)
        sys.exit(1)


def scrape(url):
    """{(sample name, frozenset of labels): value} of every sample, parsed by Prometheus'
    OpenMetrics parser (which refuses a malformed exposition)."""
    with urllib.request.urlopen(url, timeout=30) as r:
        check(r.status == 200, f"GET {url}: {r.status}")
        check(r.headers["Content-Type"].startswith("application/openmetrics-text"),
              f"content type {r.headers['Content-Type']}")
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out, text


def of_pod(samples, sandbox, name, **labels):
    return [v for (n, ls), v in samples.items()
            if n == name and ("sandbox", sandbox) in ls
            and all((k, v2) in ls for k, v2 in labels.items())]


def main():
    sock, log_dir, hull, url = sys.argv[1:5]
    rt = rpc.RuntimeServiceStub(grpc.insecure_channel(f"unix://{sock}"))
    ns = api.NamespaceOption(network=api.POD)
    pod_cfg = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name="observed", uid="uid-observed", namespace="default"),
        hostname="observed",
        log_directory=log_dir,
        linux=api.LinuxPodSandboxConfig(
            security_context=api.LinuxSandboxSecurityContext(namespace_options=ns)),
    )
    pod = rt.RunPodSandbox(api.RunPodSandboxRequest(config=pod_cfg, runtime_handler="hull")).pod_sandbox_id

    def create(name, command):
        cfg = api.ContainerConfig(metadata=api.ContainerMetadata(name=name),
                                  image=api.ImageSpec(image=IMAGE), command=command,
                                  log_path=f"{name}.log")
        cid = rt.CreateContainer(api.CreateContainerRequest(
            pod_sandbox_id=pod, config=cfg, sandbox_config=pod_cfg)).container_id
        rt.StartContainer(api.StartContainerRequest(container_id=cid))
        return cid

    # One container busy for a moment (CPU time), one whose awk holds an 8 MB string.
    busy = create("busy", ["sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exec sleep 600"])
    holder = create("holder", ["awk", 'BEGIN { s = sprintf("%8000000s", "x"); system("exec sleep 600") }'])

    pods = json.loads(subprocess.run([hull, "pods", "--json"], check=True, capture_output=True).stdout)
    mine = [p for p in pods if p["sandbox"] == pod]
    check(len(mine) == 1, f"hull pods: {pods}")
    check(mine[0]["running"] and mine[0]["namespace"] == "k8s.io", f"hull pods: {mine}")
    # Under CRI the sandbox is a container of the pod too (its pause process).
    check(sorted(mine[0]["containers"]) == sorted([pod, busy, holder]),
          f"hull pods containers: {mine[0]['containers']}")

    # The containers' figures show once their commands have run a while.
    deadline = time.time() + 60
    while True:
        samples, text = scrape(url)
        cpu = of_pod(samples, pod, "hull_container_cpu_seconds_total", container=busy)
        mem = of_pod(samples, pod, "hull_container_memory_usage_bytes", container=holder)
        if (cpu and cpu[0] > 0 and mem and mem[0] >= 8_000_000) or time.time() > deadline:
            break
        time.sleep(2)
    nonzero = {
        "hull_process_resident_memory_bytes (vmm)": of_pod(samples, pod, "hull_process_resident_memory_bytes", role="vmm"),
        "hull_process_cpu_seconds_total (vmm)": of_pod(samples, pod, "hull_process_cpu_seconds_total", role="vmm"),
        "hull_process_resident_memory_bytes (shim)": of_pod(samples, pod, "hull_process_resident_memory_bytes", role="shim"),
        "hull_guest_memory_total_bytes": of_pod(samples, pod, "hull_guest_memory_total_bytes"),
        "hull_guest_memory_available_bytes": of_pod(samples, pod, "hull_guest_memory_available_bytes"),
        "hull_guest_processes": of_pod(samples, pod, "hull_guest_processes"),
        "hull_agent_up": of_pod(samples, pod, "hull_agent_up"),
        "hull_pod_boot_seconds": of_pod(samples, pod, "hull_pod_boot_seconds"),
        "hull_container_cpu_seconds_total (busy)": cpu,
        "hull_container_pids (holder)": of_pod(samples, pod, "hull_container_pids", container=holder),
        "hull_agent_rpc_duration_seconds_count (CreateContainer)":
            of_pod(samples, pod, "hull_agent_rpc_duration_seconds_count", method="CreateContainer"),
        "hull_agent_rpc_duration_seconds_count (StartContainer)":
            of_pod(samples, pod, "hull_agent_rpc_duration_seconds_count", method="StartContainer"),
    }
    for what, values in nonzero.items():
        check(len(values) == 1 and values[0] > 0, f"{what}: {values}\n{text}")
    check(mem and mem[0] >= 8_000_000, f"the holder's 8 MB in its cgroup: {mem}")
    load = of_pod(samples, pod, "hull_guest_load", period="1m")
    check(len(load) == 1, f"guest load: {load}")
    check(of_pod(samples, pod, "hull_pod_oom_kills_total") == [0.0], "no OOM kills")
    print(pod)

    for cid in (busy, holder):
        rt.StopContainer(api.StopContainerRequest(container_id=cid, timeout=2))
        rt.RemoveContainer(api.RemoveContainerRequest(container_id=cid))
    rt.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod))
    rt.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod))
    samples, text = scrape(url)
    left = [k for k in samples if ("sandbox", pod) in k[1]]
    check(not left, f"series of the removed pod: {left}")
    check(json.loads(subprocess.run([hull, "pods", "--json"], check=True, capture_output=True).stdout) == [],
          "hull pods after removal")
    print("pod observed ok")


if __name__ == "__main__":
    main()
