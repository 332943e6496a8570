#!/usr/bin/env bash
# `make demo`: a private containerd runs a busybox container with runtime
# io.containerd.hull.v2; the container runs inside a hull microVM and prints its greeting
# and the guest kernel version. Everything it started is stopped at the end.
set -euo pipefail
source "$(dirname "$0")/lib/containerd.sh"
trap hull_containerd_stop EXIT

hull_containerd_start "$REPO/target/debug"
echo "hull demo: containerd $(containerd --version | awk '{print $3}'), host kernel $(uname -r)"
start=$(date +%s.%N)
hull_ctr run --rm --runtime io.containerd.hull.v2 docker.io/hull/busybox:test hull-demo \
  sh -c 'echo "Hello from a container in a hull microVM!"; echo "guest kernel: $(uname -r), hostname: $(hostname)"'
echo "hull demo: ctr run --rm took $(echo "$(date +%s.%N) - $start" | bc) s, VM under $(hull_accel)"
