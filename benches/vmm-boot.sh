#!/usr/bin/env bash
# hull-vmm boot and memory figures, printed (not asserted). Run on demand: `make bench-vmm`.
# This host's /dev/kvm is PVM, so the figures come from inside the nested test host (QEMU
# TCG with emulated AMD SVM, real KVM inside): expect seconds, not milliseconds.
#  - N boots (default 10) at 1 and at 2 vCPUs, with the shim's kernel command line, each
#    to agent-ready: per boot, VMM start -> first KVM_RUN, -> agent ready (hull-vmm's
#    clock), the guest clock when the kernel started /init and when the agent served, and
#    the console lines; then min/median/max and failures (tests/nested/boot-loop.sh)
#  - the guest kernel's boot profile: its slowest initcalls and longest silent stretches,
#    from its ring buffer (tests/nested/boot-profile.sh)
#  - VMM memory overhead: RSS minus the resident guest RAM (the memfd, RssShmem), and of
#    that the private part (RssAnon; the rest is program text shared with others)
set -euo pipefail
N=${N:-10}
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=$repo/target/release
script="bin=$bin"'
for v in 1 2; do
  echo "--- $v vCPU(s)"
  tests/nested/boot-loop.sh $bin '"$N"' $v
done
echo "--- where the guest kernel spends its boot (1 vCPU; tests/nested/boot-profile.sh)"
tests/nested/boot-profile.sh $bin 1 12
echo "--- memory (1 vCPU, 256 MiB)"
HULL_LOG=info $bin/hull-vmm --kernel build/vmlinux --initrd build/initrd.img --memory 256 \
  --cmdline quiet --vsock-uds /tmp/m.sock --serial-log /tmp/m.log 2>/tmp/m.err &
pid=$!
for i in $(seq 1 1200); do grep -q "guest agent ready" /tmp/m.err && break; sleep 0.1; done
rss=$(awk "/^VmRSS/ {print \$2}" /proc/$pid/status 2>/dev/null || echo 0)
shm=$(awk "/^RssShmem/ {print \$2}" /proc/$pid/status 2>/dev/null || echo 0)
anon=$(awk "/^RssAnon/ {print \$2}" /proc/$pid/status 2>/dev/null || echo 0)
echo "VMM RSS ${rss} KiB, guest RAM resident ${shm} KiB, VMM overhead $((rss - shm)) KiB (private heap/stacks ${anon} KiB, the rest is mapped program text)"
$bin/hull-agent-probe --vsock-uds /tmp/m.sock --timeout 30 --destroy >/dev/null 2>&1 || kill $pid
wait $pid 2>/dev/null || true'
echo "hull-vmm, measured nested: QEMU TCG test host with emulated AMD SVM, KVM inside (host kernel $(uname -r), $(nproc) cores)"
cd "$repo" && tests/nested/test-host.sh --timeout 1800 -- "$script"
