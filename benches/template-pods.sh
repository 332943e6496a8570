#!/usr/bin/env bash
# Pod start through containerd, booted vs restored from a template, printed (not
# asserted). `benches/vmm-start.sh` runs it inside the nested test host (templates need
# hull-vmm on real KVM): `ctr run --rm … true` from launch to exit, N pods with
# `template = false` and N with `template = true` (whose template one more pod builds
# first, not counted).   Usage: template-pods.sh BIN_DIR N
set -euo pipefail
bin=$1
N=$2
source "$(dirname "$0")/../scripts/lib/containerd.sh"
trap hull_containerd_stop EXIT
ms() { echo $(( $(date +%s%N) / 1000000 )); }
stats() { sort -n | awk '{a[NR]=$1} END {if (NR) printf "min=%d median=%d max=%d ms (n=%d)\n", a[1], a[int((NR+1)/2)], a[NR], NR; else print "none"}'; }
run() { hull_ctr run --rm --runtime io.containerd.hull.v2 docker.io/hull/busybox:test "$1" true; }
for template in false true; do
  HULL_EXTRA_CONFIG="boot_timeout_s = 300
template = $template"
  hull_containerd_start "$bin"
  [ $template = true ] && run warm
  for i in $(seq 1 "$N"); do
    t0=$(ms); run "p$i" && echo $(( $(ms) - t0 ))
  done >/tmp/pods-$template.ms
  echo "pod start, template = $template: $(stats </tmp/pods-$template.ms)"
  hull_containerd_stop
done
