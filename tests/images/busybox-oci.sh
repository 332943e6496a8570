#!/usr/bin/env bash
# Builds an OCI image archive (for `ctr images import`) holding Debian's busybox-static,
# as two images on one layer: docker.io/hull/busybox:test (runs `sh`) and
# docker.io/hull/pause:test (sleeps; the CRI sandbox image for tests). Reproducible; cached in $HULL_CACHE/images (default
# ~/.cache/hull) under a hash of this script and the busybox-static version.
# Prints the archive's path.
set -euo pipefail

cache_root=${HULL_CACHE:-$HOME/.cache/hull}
version=$(dpkg-query -W -f='${Version}' busybox-static)
key=$(cat "$0" <(echo "$version") | sha256sum | cut -c1-16)
out=$cache_root/images/busybox-$key.tar
if [ -f "$out" ]; then echo "$out"; exit 0; fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root"/{bin,etc,tmp,proc,sys,dev,root}
install -m 0755 /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
chmod 1777 "$root/tmp"

blobs=$work/oci/blobs/sha256
mkdir -p "$blobs"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$root" -cf "$work/layer.tar" .
add_blob() { # file -> prints "digest size"
  local d s
  d=$(sha256sum "$1" | cut -d' ' -f1); s=$(stat -c %s "$1")
  cp "$1" "$blobs/$d"
  echo "$d $s"
}
read -r layer layer_size < <(add_blob "$work/layer.tar")
manifest_for() { # cmd-json -> prints "digest size" of a manifest for that Cmd
  local cfg=$work/config-$RANDOM.json man=$work/manifest-$RANDOM.json config config_size
  printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":%s,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$1" "$layer" >"$cfg"
  read -r config config_size < <(add_blob "$cfg")
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "$config" "$config_size" "$layer" "$layer_size" >"$man"
  add_blob "$man"
}
entry() { # name digest size
  printf '{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"docker.io/hull/%s:test","org.opencontainers.image.ref.name":"%s"},"platform":{"architecture":"amd64","os":"linux"}}' "$2" "$3" "$1" "$1"
}
read -r busybox busybox_size < <(manifest_for '["sh"]')
read -r pause pause_size < <(manifest_for '["sleep","2147483647"]')
printf '{"schemaVersion":2,"manifests":[%s,%s]}' "$(entry busybox "$busybox" "$busybox_size")" "$(entry pause "$pause" "$pause_size")" >"$work/oci/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$work/oci/oci-layout"
mkdir -p "$(dirname "$out")"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work/oci" -cf "$out.tmp.$$" .
mv "$out.tmp.$$" "$out"
echo "$out"
