#!/usr/bin/env bash
# Pods under load, printed (not asserted). Run on demand: `make bench-load`.
#  - N (default 20) `ctr run --rm … true` started at once: start-to-exit percentiles,
#    failures (each with its error), wall time for all
#  - host memory per pod: MemAvailable drop with N idle pods running, divided by N
# Boots queue for the shim's host-wide boot slots (max_parallel_boots); see docs/shim.md.
set -euo pipefail
N=${N:-20}
source "$(dirname "$0")/../scripts/lib/containerd.sh"
trap hull_containerd_stop EXIT
hull_containerd_start "$REPO/target/release"
out=$(mktemp -d)
echo "where: host kernel $(uname -r), $(nproc) cores; hull VMs under $(hull_accel); $N pods at once"

# Not a bare `wait`: containerd is a background job of this shell too.
pids=()
t0=$(date +%s%N)
for i in $(seq 1 "$N"); do
  ( s=$(date +%s%N)
    if hull_ctr run --rm --runtime io.containerd.hull.v2 docker.io/hull/busybox:test "load-$i" true \
         >"$out/$i.out" 2>"$out/$i.err"; then
      echo $(( ($(date +%s%N) - s) / 1000000 )) >"$out/$i.ms"
    fi ) &
  pids+=($!)
done
wait "${pids[@]}"
wall=$(( ($(date +%s%N) - t0) / 1000000 ))
ok=$(cat "$out"/*.ms 2>/dev/null | wc -l)
pct() { sort -n "$out"/all | awk -v p="$1" '{a[NR]=$1} END {if (NR) print a[int((NR-1)*p/100)+1]; else print "-"}'; }
cat "$out"/*.ms >"$out/all" 2>/dev/null || true
echo "start-to-exit (ms): p50 $(pct 50)  p90 $(pct 90)  p100 $(pct 100); all $N in ${wall} ms; failed $((N - ok)) of $N"
for i in $(seq 1 "$N"); do
  [ -f "$out/$i.ms" ] || echo "  pod $i: $(tr '\n' ' ' <"$out/$i.err" | cut -c1-300)"
done

before=$(awk '/^MemAvailable/ {print $2}' /proc/meminfo)
pids=()
for i in $(seq 1 "$N"); do
  hull_ctr run -d --runtime io.containerd.hull.v2 docker.io/hull/busybox:test "idle-$i" sleep 600 >/dev/null &
  pids+=($!)
done
wait "${pids[@]}" || true
sleep 3
after=$(awk '/^MemAvailable/ {print $2}' /proc/meminfo)
echo "host memory per idle pod: $(( (before - after) / N )) KiB (MemAvailable drop with $N pods, / $N)"
for i in $(seq 1 "$N"); do
  hull_ctr task kill -s SIGKILL "idle-$i" >/dev/null 2>&1 || true
done
sleep 2
for i in $(seq 1 "$N"); do
  hull_ctr task delete "idle-$i" >/dev/null 2>&1 || true
  hull_ctr containers rm "idle-$i" >/dev/null 2>&1 || true
done
rm -rf "$out"
