#!/usr/bin/env bash
# Builds hull's guest initrd: a zstd-compressed newc cpio whose /init is the statically
# linked hull-agent, plus the few nodes the kernel needs before the agent runs. It is
# preceded by a small uncompressed cpio holding etc/hull-agent-api (the agent API version
# the agent speaks), which `hull check` reads without unpacking anything; the kernel
# unpacks both archives in turn.
#
#   rootfs/build.sh AGENT_BINARY OUTPUT
#
# Reproducible (sorted entries, zero mtimes, root ownership) and cached in
# $HULL_CACHE/initrd (default ~/.cache/hull) under a hash of the agent and this script.
set -euo pipefail

agent=$1
out=$2
cache_root=${HULL_CACHE:-$HOME/.cache/hull}

[ -x "$agent" ] || { echo "initrd: agent $agent missing" >&2; exit 1; }
# A dynamically linked agent has nothing to load its libraries from in the guest.
if readelf -lW "$agent" | grep -q 'Requesting program interpreter'; then
  echo "initrd: $agent is dynamically linked; build it with +crt-static (make agent-static)" >&2
  exit 1
fi

key=$(cat "$agent" "$0" | sha256sum | cut -c1-16)
cached=$cache_root/initrd/initrd-$key.img
mkdir -p "$cache_root/initrd" "$(dirname "$out")"

if [ ! -f "$cached" ]; then
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' EXIT
  mkdir -p "$stage"/{dev,proc,sys,run,tmp,etc}
  install -m 0755 "$agent" "$stage/init"
  mknod -m 600 "$stage/dev/console" c 5 1
  mknod -m 666 "$stage/dev/null" c 1 3
  api=$("$agent" --api-version)
  case $api in
    [0-9]*.[0-9]*.[0-9]*) ;;
    *) echo "initrd: $agent --api-version printed '$api'" >&2; exit 1 ;;
  esac
  manifest=$(mktemp -d)
  trap 'rm -rf "$stage" "$manifest"' EXIT
  mkdir -p "$manifest/etc"
  echo "$api" >"$manifest/etc/hull-agent-api"
  find "$stage" "$manifest" -exec touch -h -d @0 {} +
  (cd "$manifest" && printf 'etc\netc/hull-agent-api\n' |
    cpio --create --format=newc --reproducible --owner=0:0 --quiet) >"$cached.tmp.$$"
  (cd "$stage" && find . -print0 | LC_ALL=C sort -z |
    cpio --null --create --format=newc --reproducible --owner=0:0 --quiet) |
    zstd -q -19 -T0 >>"$cached.tmp.$$"
  mv "$cached.tmp.$$" "$cached"
  echo "initrd: built $(du -h "$cached" | cut -f1) -> $cached (agent API $api)"
fi
cp "$cached" "$out.tmp" && mv "$out.tmp" "$out"
echo "initrd: $out ($(stat -c %s "$out") bytes)"
