#!/usr/bin/env bash
# Runs a command inside hull's nested test host: a QEMU TCG VM with emulated AMD SVM,
# booted from Debian's prebuilt cloud kernel with kvm-amd (nested=1) loaded, so /dev/kvm
# inside is real Linux KVM. Files named with --file are shipped in its initramfs under
# /hull/ (the cloud kernel has no 9p or virtio-fs for sharing the host tree).
#
#   tests/nested/test-host.sh [--timeout S] [--file SRC[:NAME]]... -- COMMAND...
#
# Prints what the command printed and exits with its status: 124 if it timed out,
# 125 if the test host itself failed. Leaves nothing behind (a private temp dir).
set -euo pipefail

timeout_s=300
files=()
while [ $# -gt 0 ]; do
  case $1 in
    --timeout) timeout_s=$2; shift 2 ;;
    --file) files+=("$2"); shift 2 ;;
    --) shift; break ;;
    *) echo "test-host: unknown option $1" >&2; exit 125 ;;
  esac
done
[ $# -gt 0 ] || { echo "test-host: no command" >&2; exit 125; }

# The test-host kernel and its KVM modules, cached by package version.
cache=${HULL_CACHE:-$HOME/.cache/hull}/test-host
pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$pkg" ] || { echo "test-host: linux-image-cloud-amd64 not known to apt" >&2; exit 125; }
kdir=$cache/$pkg
if [ ! -f "$kdir/vmlinuz" ]; then
  dl=$(mktemp -d)
  (cd "$dl" && apt-get download -q "$pkg" >/dev/null 2>&1) || { echo "test-host: downloading $pkg failed" >&2; rm -rf "$dl"; exit 125; }
  dpkg-deb -x "$dl"/*.deb "$dl/x"
  mkdir -p "$kdir.tmp"
  cp "$dl"/x/boot/vmlinuz-* "$kdir.tmp/vmlinuz"
  for m in virt/lib/irqbypass.ko arch/x86/kvm/kvm.ko arch/x86/kvm/kvm-amd.ko; do
    cp "$(find "$dl/x/lib/modules" -path "*/kernel/$m*" | head -1)" "$kdir.tmp/"
  done
  rm -rf "$dl" "$kdir" && mv "$kdir.tmp" "$kdir"
fi

work=$(mktemp -d /tmp/hull-testhost.XXXXXX)
qemu_pid=
cleanup() {
  [ -n "$qemu_pid" ] && kill -9 "$qemu_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

root=$work/root
mkdir -p "$root"/{bin,proc,sys,dev,tmp,hull,modules}
cp /bin/busybox "$root/bin/busybox"
cp "$kdir"/*.ko* "$root/modules/"
for f in "${files[@]}"; do
  src=${f%%:*}; name=${f#*:}; [ "$name" = "$f" ] && name=$(basename "$src")
  cp -L "$src" "$root/hull/$name"
done
printf '%s\n' "$*" >"$root/hull/cmd.sh"
cat >"$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev; mount -t tmpfs tmp /tmp
for m in irqbypass kvm kvm-amd; do
  if [ "$m" = kvm-amd ]; then insmod /modules/$m.ko* nested=1; else insmod /modules/$m.ko*; fi
done
echo HULL-TEST-HOST-READY
cd /hull && sh /hull/cmd.sh; rc=$?
echo "HULL-TEST-HOST-EXIT=$rc"
poweroff -f
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initramfs.gz"

console=$work/console.log
timeout "$timeout_s" qemu-system-x86_64 -accel tcg -cpu max -m 1536 -smp 2 \
  -kernel "$kdir/vmlinuz" -initrd "$work/initramfs.gz" \
  -append "console=ttyS0 quiet panic=-1" \
  -nodefaults -no-user-config -nographic -no-reboot -serial "file:$console" &
qemu_pid=$!
set +e
wait "$qemu_pid"
qrc=$?
set -e
qemu_pid=
# What the command printed lies between the markers.
sed -n '/HULL-TEST-HOST-READY/,/HULL-TEST-HOST-EXIT=/p' "$console" | sed '1d;$d' | tr -d '\r'
rc=$(grep -ao 'HULL-TEST-HOST-EXIT=[0-9]*' "$console" | tail -1 | cut -d= -f2)
if [ -n "$rc" ]; then exit "$rc"; fi
if [ "$qrc" = 124 ]; then echo "test-host: timed out after ${timeout_s}s" >&2; exit 124; fi
echo "test-host: the test host failed (qemu status $qrc); console tail:" >&2
tail -20 "$console" >&2
exit 125
