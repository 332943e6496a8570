#!/usr/bin/env bash
# Pod network figures, printed (not asserted): `make bench-net`.
# A pod joins a network namespace wired as CNI's bridge plugin leaves it (a veth whose far
# side is in an "outer" namespace standing for the bridge); iperf3 runs in the pod, the
# client on the far side. TCP throughput both ways and ping RTT, for hull (whatever backend
# this host's `auto` picks, or HULL_HYPERVISOR) and for runc on the same kind of link in the
# same run, and hull/runc ratios. Where /dev/vhost-net exists, hull runs twice: frames
# through the kernel's vhost-net (`vhost_net = "auto"`) and through the VMM (`"off"`). iperf3 and its libraries come from the host, bound into
# the busybox image read-only.
set -euo pipefail
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
source "$(dirname "$0")/../scripts/lib/containerd.sh"
command -v iperf3 >/dev/null || { echo "bench-net: iperf3 missing (run scripts/setup.sh)" >&2; exit 1; }

tag=$$
cleanup() {
  local rc=$?
  if [ "$rc" != 0 ] && [ -n "${HULL_CTRD_DIR:-}" ]; then
    echo "bench-net failed ($rc): the end of containerd's and the pods' logs" >&2
    tail -n 40 "$HULL_CTRD_DIR/containerd.log" >&2 || true
    for f in "$HULL_CTRD_DIR"/run/*/vm/*.log; do
      [ -f "$f" ] && { echo "== $f" >&2; tail -n 20 "$f" >&2; }
    done
  fi
  hull_containerd_stop
  # measure runs in a subshell: find its namespaces by this run's tag.
  for ns in $(ip netns list | awk '{print $1}' | grep -- "-$tag\$" || true); do
    ip netns delete "$ns" 2>/dev/null || true
  done
  # A shim killed by hull_containerd_stop leaves its VM's (empty) cgroup.
  for d in /sys/fs/cgroup/hull/*-"$tag"-* /sys/fs/cgroup/{memory,pids}/hull/*-"$tag"-*; do
    [ -d "$d" ] && rmdir "$d" 2>/dev/null || true
  done
}
trap cleanup EXIT
hull_containerd_start "$REPO/target/release"
if [ -n "${HULL_HYPERVISOR:-}" ]; then
  echo "hypervisor = \"$HULL_HYPERVISOR\"" >>"$HULL_CTRD_DIR/hull.toml"
  # In the nested test host every guest instruction is emulated twice over: agent calls
  # (a container with the bench's bind mounts) take longer than the default 30 s there.
  echo "agent_timeout_s = 120" >>"$HULL_CTRD_DIR/hull.toml"
fi

# outer/pod namespace pair $1 with the pod at 198.19.$2.2/24
make_link() {
  local outer=hb-o-$1-$tag pod=hb-p-$1-$tag
  ip netns add "$outer"; ip netns add "$pod"
  ip -n "$outer" link set lo up; ip -n "$pod" link set lo up
  ip -n "$outer" link add peer0 type veth peer name eth0 netns "$pod"
  ip -n "$outer" addr add "198.19.$2.1/24" dev peer0; ip -n "$outer" link set peer0 up
  ip -n "$pod" addr add "198.19.$2.2/24" dev eth0; ip -n "$pod" link set eth0 up
  ip -n "$pod" route add default via "198.19.$2.1"
}

# The bind sources are copies in this run's directory: in the nested test host the root
# file system is an overlay on 9p, which a pod's virtiofsd should not have to serve.
stage=$HULL_CTRD_DIR/iperf3
mkdir -p "$stage"
binds=()
stage_bind() { # host file, path in the container
  local copy
  copy=$stage/$(basename "$2")
  cp -L "$1" "$copy"
  binds+=(--mount "type=bind,src=$copy,dst=$2,options=rbind:ro")
}
for lib in $(ldd "$(command -v iperf3)" | awk '$3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
  stage_bind "$lib" "$lib"
done
stage_bind "$(command -v iperf3)" /usr/bin/iperf3

gbits() { jq -r 'if .error then ("iperf3: " + .error | halt_error) else .end.sum_received.bits_per_second / 1e9 | . * 100 | round / 100 end'; }

# One iperf3 run from namespace $1 to $2 (JSON); the server restarts between runs, so a
# refused connection is tried again.
iperf() {
  local outer=$1 ip=$2 out
  shift 2
  for _ in $(seq 1 20); do
    out=$(ip netns exec "$outer" iperf3 -c "$ip" -t "$SECONDS_PER_RUN" -J "$@" || true)
    if ! jq -e '.error' >/dev/null <<<"$out"; then
      echo "$out"
      return 0
    fi
    sleep 0.5
  done
  echo "$out"
}

measure() { # runtime name index -> "tx rx rtt"
  local runtime=$1 name=$2 i=$3
  make_link "$i" "$((10 + i))"
  local outer=hb-o-$i-$tag pod=hb-p-$i-$tag ip=198.19.$((10 + i)).2
  hull_ctr run -d --runtime "$runtime" --with-ns "network:/run/netns/$pod" "${binds[@]}" \
    docker.io/hull/busybox:test "$name" sh -c 'while true; do /usr/bin/iperf3 -s -1 --logfile /tmp/iperf3.log; done' >/dev/null
  local up=0
  # A pod VM under nested virtualisation takes minutes to boot and start the server.
  for _ in $(seq 1 600); do
    if ip netns exec "$outer" iperf3 -c "$ip" -t 1 >/dev/null 2>&1; then up=1; break; fi
    sleep 0.5
  done
  [ "$up" = 1 ] || { echo "bench-net: the iperf3 server in the $runtime pod never answered" >&2; return 1; }
  local tx rx rtt
  tx=$(iperf "$outer" "$ip" | gbits)
  rx=$(iperf "$outer" "$ip" -R | gbits)
  rtt=$(ip netns exec "$outer" busybox ping -c 20 -i 0.2 -q "$ip" | awk -F/ '/^round-trip/ {print $4}')
  hull_ctr task kill -s SIGKILL "$name" >/dev/null 2>&1 || true
  sleep 1
  hull_ctr task delete "$name" >/dev/null 2>&1 || true
  hull_ctr containers rm "$name" >/dev/null 2>&1 || true
  echo "$tx $rx $rtt"
}

backend=$(hull_accel)
[ -n "${HULL_HYPERVISOR:-}" ] && backend="$HULL_HYPERVISOR ($backend)"
echo "where: host kernel $(uname -r), $(nproc) cores; hull: $backend; iperf3 TCP ${SECONDS_PER_RUN}s per direction"
read -r r_tx r_rx r_rtt < <(measure io.containerd.runc.v2 "bench-runc-$tag" 1)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
rows=("$(printf '%-22s %18s %18s %12s' runtime "far side→pod Gb/s" "pod→far side Gb/s" "ping RTT ms")"
      "$(printf '%-22s %18s %18s %12s' runc "$r_tx" "$r_rx" "$r_rtt")")
modes=(auto)
[ -e /dev/vhost-net ] && modes=(auto off)
for i in "${!modes[@]}"; do
  mode=${modes[$i]}
  # Each shim reads the config when it starts: the next pod gets the new data path.
  sed -i '/^vhost_net = /d' "$HULL_CTRD_DIR/hull.toml"
  echo "vhost_net = \"$mode\"" >>"$HULL_CTRD_DIR/hull.toml"
  read -r h_tx h_rx h_rtt < <(measure io.containerd.hull.v2 "bench-hull-$mode-$tag" $((2 + i)))
  label="hull vhost_net=$mode"
  rows+=("$(printf '%-22s %18s %18s %12s' "$label" "$h_tx" "$h_rx" "$h_rtt")"
         "$(printf '%-22s %18s %18s %12s' "  ratio to runc" "$(ratio "$h_tx" "$r_tx")" "$(ratio "$h_rx" "$r_rx")" "$(ratio "$h_rtt" "$r_rtt")")")
done
printf '%s\n' "${rows[@]}"
