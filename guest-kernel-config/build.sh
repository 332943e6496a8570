#!/usr/bin/env bash
# Builds a hull kernel (vmlinux) from Debian's linux-source-6.12 package.
#
#   guest-kernel-config/build.sh [PROFILE] [OUTDIR]
#
# PROFILE names a fragment, PROFILE.fragment beside this script (default: guest); a
# `# hull-include: OTHER.fragment` line in it applies OTHER first (test-host builds on guest).
# tinyconfig + fragment -> olddefconfig -> every requested symbol is checked -> vmlinux.
# The result is cached in $HULL_CACHE (default ~/.cache/hull) under a key made of the
# fragment, this script and the source package version, so a warm run only copies files.
# OUTDIR (default: build/) receives vmlinux-PROFILE and vmlinux-PROFILE.config.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
profile=${1:-guest}
outdir=${2:-$here/../build}
fragment=$here/$profile.fragment
cache_root=${HULL_CACHE:-$HOME/.cache/hull}
src_tar=/usr/src/linux-source-6.12.tar.xz

[ -f "$fragment" ] || { echo "kernel: no fragment $fragment" >&2; exit 1; }
fragments=()
for inc in $(sed -n 's/^# hull-include: *//p' "$fragment"); do
  [ -f "$here/$inc" ] || { echo "kernel: $fragment includes missing $inc" >&2; exit 1; }
  fragments+=("$here/$inc")
done
fragments+=("$fragment")
[ -f "$src_tar" ] || { echo "kernel: $src_tar missing; run scripts/setup.sh" >&2; exit 1; }

src_version=$(dpkg-query -W -f='${Version}' linux-source-6.12)
key=$(cat "${fragments[@]}" "$0" <(echo "$src_version") | sha256sum | cut -c1-16)
cached=$cache_root/kernel/$profile-$key
mkdir -p "$outdir"

if [ ! -f "$cached/vmlinux" ]; then
  start=$(date +%s)
  work=$cache_root/kernel-build/$profile
  srcdir=$cache_root/kernel-src/$src_version
  if [ ! -f "$srcdir/.unpacked" ]; then
    echo "kernel: unpacking linux-source $src_version"
    rm -rf "$srcdir" && mkdir -p "$srcdir"
    tar -xJf "$src_tar" -C "$srcdir" --strip-components=1
    touch "$srcdir/.unpacked"
  fi
  mkdir -p "$work"
  echo "kernel: configuring $profile (tinyconfig + ${fragments[*]##*/})"
  make -s -C "$srcdir" O="$work" tinyconfig >/dev/null
  "$srcdir/scripts/kconfig/merge_config.sh" -m -O "$work" "$work/.config" "${fragments[@]}" >/dev/null
  make -s -C "$srcdir" O="$work" olddefconfig >/dev/null

  # kconfig drops symbols whose dependencies are unmet without a word: check each one.
  missing=0
  while IFS= read -r line; do
    if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
      want="${BASH_REMATCH[1]}=${BASH_REMATCH[2]}"
      grep -qxF "$want" "$work/.config" || { echo "kernel: $want did not survive olddefconfig" >&2; missing=1; }
    elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
      sym=${BASH_REMATCH[1]}
      if grep -q "^$sym=" "$work/.config"; then echo "kernel: $sym should be unset" >&2; missing=1; fi
    fi
  done < <(cat "${fragments[@]}")
  [ "$missing" = 0 ] || { echo "kernel: fragment $fragment not honoured; fix its dependencies" >&2; exit 1; }

  echo "kernel: building vmlinux ($profile) with $(nproc) jobs; a cold build takes ~10-20 min"
  make -s -C "$srcdir" O="$work" -j"$(nproc)" vmlinux bzImage KCFLAGS=-w >"$work/build.log" 2>&1 \
    || { tail -40 "$work/build.log" >&2; echo "kernel: build failed (log: $work/build.log)" >&2; exit 1; }
  tmp=$cached.tmp.$$
  mkdir -p "$tmp"
  cp "$work/vmlinux" "$tmp/vmlinux"
  cp "$work/arch/x86/boot/bzImage" "$tmp/bzImage"
  cp "$work/.config" "$tmp/config"
  rm -rf "$cached" && mv "$tmp" "$cached"
  echo "kernel: built $profile in $(( $(date +%s) - start )) s -> $cached"
fi

cp "$cached/vmlinux" "$outdir/vmlinux-$profile.tmp" && mv "$outdir/vmlinux-$profile.tmp" "$outdir/vmlinux-$profile"
cp "$cached/bzImage" "$outdir/bzImage-$profile"
cp "$cached/config" "$outdir/vmlinux-$profile.config"
echo "kernel: $outdir/vmlinux-$profile ($profile-$key)"
