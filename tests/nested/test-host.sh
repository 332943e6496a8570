#!/usr/bin/env bash
# Runs a command inside hull's nested test host (TESTING.md tier 4): a QEMU TCG microVM
# with emulated AMD SVM, booted from the `test-host` kernel profile
# (guest-kernel-config/test-host.fragment: hull's guest kernel plus built-in KVM/kvm-amd
# and 9p), so /dev/kvm inside is real Linux KVM. The host's whole tree is shared
# read-only over virtio-9p under a tmpfs overlay: the command sees this machine's files
# (the repo, containerd, virtiofsd, ...) at their usual paths, runs as root in the
# caller's working directory, and whatever it writes vanishes with the test host.
#
#   tests/nested/test-host.sh [--timeout S] [--memory MIB] [--cpus N] -- COMMAND...
#
# Prints what the command printed and exits with its status: 124 if it timed out,
# 125 if the test host itself failed. Leaves nothing behind (a private temp dir).
# --cpus N gives the test host N emulated CPUs (2 unless told). HULL_TEST_HOST_ACCEL and
# HULL_TEST_HOST_CPU replace QEMU's `-accel tcg` and `-cpu max,-fsgsbase`,
# HULL_TEST_HOST_SHMEM_THP the test host's shmem THP setting (`advise`) (experiments with
# the emulator and the kernel under the nested stack). While it runs, QEMU's monitor
# listens on `monitor.sock` in its work directory (/tmp/hull-testhost.*): `info registers
# -a` there shows where a hung test host's CPUs are.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
timeout_s=300
memory=2048
cpus=2
while [ $# -gt 0 ]; do
  case $1 in
    --timeout) timeout_s=$2; shift 2 ;;
    --memory) memory=$2; shift 2 ;;
    --cpus) cpus=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "test-host: unknown option $1" >&2; exit 125 ;;
  esac
done
[ $# -gt 0 ] || { echo "test-host: no command" >&2; exit 125; }

# The test-host kernel (cached; a warm run only copies it).
"$repo/guest-kernel-config/build.sh" test-host "$repo/build" >/dev/null \
  || { echo "test-host: building the test-host kernel failed" >&2; exit 125; }
kernel=$repo/build/vmlinux-test-host

work=$(mktemp -d /tmp/hull-testhost.XXXXXX)
qemu_pid=
cleanup() {
  [ -n "$qemu_pid" ] && kill -9 "$qemu_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

root=$work/root
mkdir -p "$root"/{bin,proc,sys,dev,host,rw,newroot}
cp /bin/busybox "$root/bin/busybox"
{ printf 'cd %q || exit 125\n' "$PWD"; printf '%s\n' "$*"; } >"$root/cmd.sh"
printf '%s\n' "$PWD" >"$root/pwd"
printf '%s\n' "${HULL_TEST_HOST_SHMEM_THP:-advise}" >"$root/shmem_thp"
cat >"$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro hostroot /host
mount -t tmpfs -o size=75% rw /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work overlay /newroot
for d in proc sys dev tmp run sys/fs/cgroup; do mkdir -p /newroot/$d; done
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
# A fresh /tmp, except that a working directory under /tmp (a CI checkout) stays.
pwd=$(cat /pwd)
case $pwd in /tmp/*) mkdir -p /keep && mount --bind "/newroot$pwd" /keep ;; esac
mount -t tmpfs tmp /newroot/tmp
if [ -d /keep ]; then mkdir -p "/newroot$pwd" && mount --move /keep "/newroot$pwd"; fi
mount -t tmpfs run /newroot/run
mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup
# 2 MiB pages for what asks for them (hull-vmm's guest RAM), as an operator would set it.
thp=/newroot/sys/kernel/mm/transparent_hugepage
[ -d $thp ] && echo madvise >$thp/enabled && cat /shmem_thp >$thp/shmem_enabled
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /newroot/dev/pts
mount -t tmpfs shm /newroot/dev/shm
ln -sf /proc/self/fd /newroot/dev/fd
for i in 0:stdin 1:stdout 2:stderr; do ln -sf /proc/self/fd/${i%%:*} /newroot/dev/${i#*:}; done
cp /cmd.sh /newroot/tmp/.hull-cmd.sh
echo HULL-TEST-HOST-READY
chroot /newroot /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/root/.cargo/bin HOME=/root \
  /bin/sh /tmp/.hull-cmd.sh </newroot/dev/null; rc=$?
echo "HULL-TEST-HOST-EXIT=$rc"
reboot -f
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initramfs.gz"

# The emulated CPU is QEMU's `max` without FSGSBASE. With it, the test host's kernel and
# the guests inside it both, at random and more often under load, ended up running kernel
# code on the user's GS base (docs/vmm.md, "The nested triple fault"): an emulation fault
# below hull, seen as guest triple faults and the test host's own oopses. Without the
# instructions, both kernels switch GS with SWAPGS and MSR writes alone.
cpu=${HULL_TEST_HOST_CPU:-max,-fsgsbase}
# A microVM under TCG needs the TSC frequency, or it hangs calibrating it.
khz=$(awk -F: '/^cpu MHz/ {printf "%d", $2 * 1000; exit}' /proc/cpuinfo)
console=$work/console.log
timeout "$timeout_s" qemu-system-x86_64 -M microvm,acpi=off,rtc=on \
  -accel "${HULL_TEST_HOST_ACCEL:-tcg}" -cpu "$cpu" \
  -m "$memory" -smp "$cpus" -kernel "$kernel" -initrd "$work/initramfs.gz" \
  -append "console=ttyS0 quiet panic=-1 reboot=t kvm_amd.nested=1 tsc_early_khz=$khz" \
  -fsdev local,id=host,path=/,security_model=none,readonly=on,multidevs=remap \
  -device virtio-9p-device,fsdev=host,mount_tag=hostroot \
  -global virtio-mmio.force-legacy=off \
  -nodefaults -no-user-config -nographic -no-reboot -serial "file:$console" \
  -monitor "unix:$work/monitor.sock,server,nowait" &
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
