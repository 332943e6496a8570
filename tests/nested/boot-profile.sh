#!/bin/sh
# Inside the nested test host: where a hull-vmm guest's kernel spends its boot. Boots the
# real kernel and initrd once with the shim's command line plus `initcall_debug`, but with
# a /init of its own laid over the initrd (a later cpio archive wins), which prints the
# kernel's ring buffer and resets the VM. The ring buffer has every line with its
# timestamp at no console cost (under `quiet` nothing of it reaches the serial port), so
# the guest's own clock is not disturbed by the measurement.
#
#   boot-profile.sh BIN_DIR VCPUS [TOP]
#
# $BOOT_PROFILE_CMDLINE is added to the command line (to weigh a parameter's worth);
# $BOOT_PROFILE_INITRD replaces build/initrd.img (to weigh another initrd).
# Prints: the guest clock when /init ran, the TOP (default 15) slowest initcalls, and the
# TOP longest stretches between two consecutive kernel log lines (what ran in them is the
# line that ends the stretch and the one before it).
set -eu
bin=$1; vcpus=$2; top=${3:-15}
work=$(mktemp -d /tmp/boot-profile.XXXXXX)
mkdir -p "$work/root/bin" "$work/root/proc"
cp /bin/busybox "$work/root/bin/busybox"
cat >"$work/root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo "profile-init-uptime $(/bin/busybox cut -d' ' -f1 /proc/uptime)"
echo PROFILE-DMESG-BEGIN
/bin/busybox dmesg
echo PROFILE-DMESG-END
/bin/busybox reboot -f
EOF
chmod +x "$work/root/init"
(cd "$work/root" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/over.cpio.gz"
cat "${BOOT_PROFILE_INITRD:-build/initrd.img}" "$work/over.cpio.gz" >"$work/initrd.img"

# dmesg goes out line by line through the emulated UART: allow for it.
HULL_LOG=info timeout 600 "$bin/hull-vmm" --kernel build/vmlinux --initrd "$work/initrd.img" \
  --memory 256 --vcpus "$vcpus" --cmdline "quiet initcall_debug ${BOOT_PROFILE_CMDLINE:-}" \
  --vsock-uds "$work/v.sock" --serial-log "$work/console.log" 2>"$work/vmm.err" || {
  echo "boot-profile: hull-vmm failed:"; tail -5 "$work/vmm.err"; tail -5 "$work/console.log"
  rm -rf "$work"; exit 1
}
tr -d '\r' <"$work/console.log" | sed -n '/PROFILE-DMESG-BEGIN/,/PROFILE-DMESG-END/p' |
  sed '1d;$d' >"$work/dmesg"
grep -o "first KVM_RUN us=[0-9]*" "$work/vmm.err" | sed 's/^/vmm: /'
grep -a "profile-init-uptime" "$work/console.log" | tr -d '\r'
echo "kernel log lines: $(wc -l <"$work/dmesg")"
echo "slowest initcalls (usecs):"
sed -n 's/^\[ *\([0-9.]*\)\] initcall \([^ ]*\) returned .* after \([0-9]*\) usecs/\3 \2 (done at \1 s)/p' \
  "$work/dmesg" | sort -rn | head -n "$top" | sed 's/^/  /'
echo "longest gaps between log lines (ms, then the line that ends the gap):"
sed -n 's/^\[ *\([0-9.]*\)\] \(.*\)/\1 \2/p' "$work/dmesg" |
  awk '{t=$1; $1=""; if (NR>1) printf "%d%s | after:%s\n", (t-p)*1000, $0, prev; p=t; prev=$0}' |
  sort -rn | head -n "$top" | cut -c1-200 | sed 's/^/  /'
rm -rf "$work"
