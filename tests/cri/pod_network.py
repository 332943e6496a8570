"""Pod networking through CRI, as the kubelet drives it: pods on a CNI bridge (see
tests/src/containerd.rs) run in hull VMs whose eth0 carries the pod's address.

- pod A runs busybox httpd in one container and a client in another: the client reaches
  the server over localhost (one network namespace per pod), the guest's eth0 holds the
  pod's IPv4 and IPv6 addresses, and resolv.conf is the CRI DNSConfig;
- pod B fetches pod A's page over the bridge;
- then the script prints `READY <pod A's IP>` and waits for a line on stdin, while the
  test checks from the bridge's side (ping, HTTP), and removes everything;
- a hostNetwork pod is refused with a clear error.

usage: pod_network.py CONTAINERD_SOCKET LOG_DIR
"""
import sys

import grpc
from cri_api.v1 import api_pb2 as api
from cri_api.v1 import api_pb2_grpc as rpc

PAGE = "hull-web-ok"
DNS = api.DNSConfig(servers=["198.18.0.53"], searches=["hull.test"], options=["ndots:2"])


def check(cond, msg):
    if not cond:
        print(f"FAIL: {msg}", file=sys.stderr)
        sys.exit(1)


class Pod:
    def __init__(self, rt, log_dir, name, host_network=False):
        self.rt = rt
        ns = api.NamespaceOption(network=api.NODE if host_network else api.POD)
        self.cfg = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="default"),
            hostname=name,
            log_directory=log_dir,
            dns_config=DNS,
            linux=api.LinuxPodSandboxConfig(
                security_context=api.LinuxSandboxSecurityContext(namespace_options=ns)
            ),
        )
        self.id = rt.RunPodSandbox(api.RunPodSandboxRequest(config=self.cfg, runtime_handler="hull")).pod_sandbox_id
        self.containers = []

    def status(self):
        return self.rt.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=self.id)).status

    def run(self, name, command):
        cfg = api.ContainerConfig(
            metadata=api.ContainerMetadata(name=name),
            image=api.ImageSpec(image="docker.io/hull/busybox:test"),
            command=command,
        )
        cid = self.rt.CreateContainer(
            api.CreateContainerRequest(pod_sandbox_id=self.id, config=cfg, sandbox_config=self.cfg)
        ).container_id
        self.rt.StartContainer(api.StartContainerRequest(container_id=cid))
        self.containers.append(cid)
        return cid

    def remove(self):
        for cid in self.containers:
            self.rt.StopContainer(api.StopContainerRequest(container_id=cid, timeout=2))
            self.rt.RemoveContainer(api.RemoveContainerRequest(container_id=cid))
        self.rt.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=self.id))
        self.rt.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=self.id))


def sh(rt, cid, script, timeout=60):
    r = rt.ExecSync(api.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", script], timeout=timeout))
    check(r.exit_code == 0, f"{script!r} in {cid[:12]} exited {r.exit_code}: {r.stderr.decode()!r}")
    return r.stdout.decode()


def fetch(rt, cid, host):
    # The server may still be starting: a few tries. On failure, what the guest saw.
    script = (
        f"for i in $(seq 8); do timeout 5 wget -qO- http://{host}:8080/index.html && exit 0; sleep 0.5; done; "
        "ip -s link show eth0 >&2; ip neigh >&2; ip route >&2; exit 1"
    )
    return sh(rt, cid, script).strip()


def main():
    sock, log_dir = sys.argv[1:3]
    rt = rpc.RuntimeServiceStub(grpc.insecure_channel(f"unix://{sock}"))

    a = Pod(rt, log_dir, "net-a")
    st = a.status()
    ip = st.network.ip
    ips = [ip] + [x.ip for x in st.network.additional_ips]
    check(ip.startswith("198.18.0."), f"CNI gave no IPv4 address: {st.network}")
    print("pod A:", ips, flush=True)
    web = a.run("web", ["sh", "-c", f"mkdir -p /www && echo {PAGE} > /www/index.html && exec httpd -f -p 8080 -h /www"])
    client = a.run("client", ["sleep", "600"])

    addrs = sh(rt, client, "ip -o addr show dev eth0")
    for x in ips:
        check(f" {x}/" in addrs, f"{x} is not on the guest's eth0:\n{addrs}")
    check(fetch(rt, client, "127.0.0.1") == PAGE, "localhost between two containers of a pod")
    routes = sh(rt, client, "ip route")
    check("default via 198.18.0.1 dev eth0" in routes, f"no default route in the guest:\n{routes}")
    resolv = sh(rt, web, "cat /etc/resolv.conf")
    for want in ["nameserver 198.18.0.53", "search hull.test", "options ndots:2"]:
        check(want in resolv, f"{want!r} missing from resolv.conf:\n{resolv}")

    b = Pod(rt, log_dir, "net-b")
    b_client = b.run("client", ["sleep", "600"])
    check(fetch(rt, b_client, ip) == PAGE, "pod B fetching from pod A")
    sh(rt, b_client, f"ping -c 1 -W 5 {ip}")
    print("pod to pod ok", flush=True)

    print("READY", ip, flush=True)
    sys.stdin.readline()
    a.remove()
    b.remove()

    try:
        Pod(rt, log_dir, "net-host", host_network=True)
        check(False, "a hostNetwork pod was started")
    except grpc.RpcError as e:
        check("host's network" in e.details(), f"unclear refusal: {e.details()}")
        print("hostNetwork refused:", e.details().splitlines()[0][:160])
    print("pod network ok")


if __name__ == "__main__":
    main()
