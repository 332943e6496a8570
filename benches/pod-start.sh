#!/usr/bin/env bash
# Pod start and memory figures, printed (not asserted). Run on demand: `make bench`.
#  - `ctr run --rm … true` wall time, hull vs runc, median of N runs in the same containerd
#  - RSS and PSS of the shim, QEMU, virtiofsd and vhost-device-vsock of one idle pod
set -euo pipefail
N=${N:-5}
source "$(dirname "$0")/../scripts/lib/containerd.sh"
trap hull_containerd_stop EXIT
hull_containerd_start "$REPO/target/release"

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
time_runs() { # runtime
  for i in $(seq 1 "$N"); do
    local t0 t1
    t0=$(date +%s%N)
    hull_ctr run --rm --runtime "$1" docker.io/hull/busybox:test "bench-$i" true >/dev/null
    t1=$(date +%s%N)
    echo $(( (t1 - t0) / 1000000 ))
  done | median
}
echo "where: host kernel $(uname -r), $(nproc) cores; hull VMs under $(hull_accel)"
echo "ctr run --rm true, median of $N (ms): runc $(time_runs io.containerd.runc.v2)   hull $(time_runs io.containerd.hull.v2)"

hull_ctr run -d --runtime io.containerd.hull.v2 docker.io/hull/busybox:test idle sleep 600 >/dev/null
sleep 2
printf '%-22s %8s %8s\n' process "RSS KiB" "PSS KiB"
total=0
for p in $(hull_pids); do
  name=$(basename "$(tr '\0' ' ' </proc/$p/cmdline | awk '{print $1}')")
  case $name in ctr) continue ;; esac
  rss=$(awk '/^VmRSS/ {print $2}' /proc/$p/status)
  pss=$(awk '/^Pss:/ {print $2}' /proc/$p/smaps_rollup)
  printf '%-22s %8s %8s\n' "$name" "$rss" "$pss"
  total=$((total + pss))
done
echo "pod total PSS: $total KiB (guest RAM touched counts in QEMU's)"
hull_ctr task kill -s SIGKILL idle >/dev/null; sleep 1; hull_ctr task delete idle >/dev/null 2>&1 || true
hull_ctr containers rm idle >/dev/null
