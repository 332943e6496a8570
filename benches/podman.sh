#!/usr/bin/env bash
# `podman run --rm … true` wall time, hull vs the runc-family runtimes installed here,
# median of N runs each, in one private Podman store; printed, not asserted (`make bench`).
# A runtime that fails here is reported with its error instead of a figure.
set -euo pipefail
N=${N:-5}
REPO=$(cd "$(dirname "$0")/.." && pwd)
HULL=$REPO/target/release/hull
[ -x "$HULL" ] || HULL=$REPO/target/debug/hull
WORK=$(mktemp -d /tmp/hull-bench-podman.XXXXXX)
trap 'podman_ rm -af -t 0 >/dev/null 2>&1 || true; podman_ rmi -af >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

cat >"$WORK/hull.toml" <<TOML
kernel = "$REPO/build/vmlinux"
initrd = "$REPO/build/initrd.img"
run_dir = "$WORK/run"
TOML
cat >"$WORK/containers.conf" <<CONF
[engine]
conmon_env_vars = ["PATH=$PATH", "HULL_CONFIG=$WORK/hull.toml"]
[engine.runtimes]
hull = ["$HULL"]
CONF
podman_() {
  CONTAINERS_CONF=$WORK/containers.conf podman --root "$WORK/storage" --runroot "$WORK/runroot" \
    --cgroup-manager cgroupfs "$@"
}

mkdir -p "$WORK/img/bin"
cp /bin/busybox "$WORK/img/bin/"
ln -s busybox "$WORK/img/bin/true"
tar -C "$WORK/img" -cf "$WORK/img.tar" .
podman_ import "$WORK/img.tar" localhost/bench:latest >/dev/null 2>&1

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
time_runs() { # runtime
  local err
  if ! err=$(podman_ run --rm --runtime "$1" localhost/bench true 2>&1); then
    echo "failed here: $(echo "$err" | tail -1 | cut -c1-120)"
    return
  fi
  for _ in $(seq 1 "$N"); do
    local t0 t1
    t0=$(date +%s%N)
    podman_ run --rm --runtime "$1" localhost/bench true >/dev/null
    t1=$(date +%s%N)
    echo $(((t1 - t0) / 1000000))
  done | median | sed 's/$/ ms/'
}

echo "where: host kernel $(uname -r), $(nproc) cores; $(podman --version)"
echo "podman run --rm true, median of $N:"
for rt in hull runc crun; do
  if [ "$rt" = hull ] || command -v "$rt" >/dev/null; then
    echo "  $rt: $(time_runs "$rt")"
  fi
done
