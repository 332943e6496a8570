# Sourced by scripts/demo.sh and benches/*.sh: a private containerd 1.6 (own root, state,
# sockets, config) with hull's shim on its PATH, and the busybox test images imported.
# Everything lives under $HULL_CTRD_DIR and is stopped by pid in hull_containerd_stop.
# $HULL_EXTRA_CONFIG, if set, is appended to the shim's hull.toml.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HULL_CTRD_NS=${HULL_CTRD_NS:-hull-demo}

hull_containerd_start() { # dir of the shim binary
  local shim_dir=$1
  HULL_CTRD_DIR=$(mktemp -d /tmp/hull-ctrd.XXXXXX)
  local d=$HULL_CTRD_DIR
  cat >"$d/hull.toml" <<TOML
kernel = "$REPO/build/vmlinux"
initrd = "$REPO/build/initrd.img"
run_dir = "$d/run"
${HULL_EXTRA_CONFIG:-}
TOML
  cat >"$d/config.toml" <<TOML
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$d/containerd.sock"
[ttrpc]
  address = "$d/containerd.sock.ttrpc"
TOML
  PATH="$shim_dir:$PATH" HULL_CONFIG="$d/hull.toml" containerd --config "$d/config.toml" >"$d/containerd.log" 2>&1 &
  HULL_CTRD_PID=$!
  for _ in $(seq 1 200); do [ -S "$d/containerd.sock" ] && break; sleep 0.05; done
  [ -S "$d/containerd.sock" ] || { echo "containerd did not start; see $d/containerd.log" >&2; return 1; }
  hull_ctr images import "$("$REPO/tests/images/busybox-oci.sh")" >/dev/null
}

hull_ctr() {
  ctr --address "$HULL_CTRD_DIR/containerd.sock" -n "$HULL_CTRD_NS" "$@"
}

hull_accel() {
  if [ -e /sys/module/kvm_pvm ] || ! grep -qw -e vmx -e svm /proc/cpuinfo || [ ! -e /dev/kvm ]; then
    echo "QEMU TCG (no usable KVM here)"
  else
    echo "QEMU KVM"
  fi
}

# Pids of processes whose command line names our directory (shims, VMs, daemons), except
# containerd itself. Matched in bash: a grep would find its own command line.
hull_pids() {
  local f cmd pid
  for f in /proc/[0-9]*/cmdline; do
    pid=${f#/proc/}; pid=${pid%/cmdline}
    [ "$pid" = "${HULL_CTRD_PID:-}" ] && continue
    cmd=$(tr '\0' ' ' <"$f" 2>/dev/null) || continue
    case $cmd in *"$HULL_CTRD_DIR"*) echo "$pid" ;; esac
  done
}

hull_containerd_stop() {
  if [ -n "${HULL_CTRD_PID:-}" ]; then
    kill "$HULL_CTRD_PID" 2>/dev/null || true
    wait "$HULL_CTRD_PID" 2>/dev/null || true
  fi
  # Anything of ours still running (a shim, a VM) names our directory on its command line.
  for p in $(hull_pids); do kill -9 "$p" 2>/dev/null || true; done
  { grep -o " $HULL_CTRD_DIR[^ ]*" /proc/self/mountinfo || true; } | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$HULL_CTRD_DIR"
  return 0
}
