#!/usr/bin/env bash
# Installs every Debian package and cargo tool that hull's build, demo and tests need.
# Idempotent: packages already present and tools already at the pinned version are skipped.
set -euo pipefail

APT_PACKAGES=(
  # guest kernel build (guest-kernel-config/build.sh)
  linux-source-6.12 build-essential bc bison flex libelf-dev libssl-dev dwarves xz-utils zstd
  # initrd (rootfs/build.sh) and the busybox test image
  cpio busybox-static
  # static agent with seccomp (libseccomp.a), virtiofsd's C libraries
  libseccomp-dev libcap-ng-dev pkg-config
  # hypervisor, containerd path
  qemu-system-x86 containerd runc containernetworking-plugins
  # test tooling
  python3 python3-venv jq iproute2 procps util-linux socat
  # make bench-net
  iperf3
  # hull as Podman's OCI runtime (tests/tests/podman.rs)
  podman netavark
  # hull as Docker's runtime (tests/tests/docker.rs)
  docker.io
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Cargo tools, pinned. They live in ~/.cargo/bin, outside the repo, and survive between runs.
cargo_tool() { # name version binary
  local name=$1 version=$2 bin=$3
  if "$HOME/.cargo/bin/$bin" --version 2>/dev/null | grep -q "$version"; then return; fi
  echo "setup: cargo install $name@$version"
  cargo install --locked --quiet "$name" --version "$version"
}
cargo_tool vhost-device-vsock 0.3.0 vhost-device-vsock
cargo_tool virtiofsd 1.14.0 virtiofsd

# The CRI client the CRI tests drive containerd with, as the kubelet would, and the
# Prometheus parser that reads `hull monitor`'s /metrics as Prometheus would (PyPI), in a
# virtual environment outside the repo.
venv=${HULL_CACHE:-$HOME/.cache/hull}/venv
if ! "$venv/bin/python" -c 'import cri_api.v1, prometheus_client.openmetrics.parser' 2>/dev/null; then
  echo "setup: python venv with the CRI client and the Prometheus parser"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'container-runtime-interface-api==2.0.1' 'grpcio==1.85.3' 'protobuf==6.33.6' \
    'prometheus-client==0.26.0'
fi

echo "setup: done"
