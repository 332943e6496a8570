#!/usr/bin/env bash
# hull-vmm boot and memory figures, printed (not asserted). Run on demand: `make bench-vmm`.
#  - process start -> first KVM_RUN, and -> agent ready (the agent's boot-timer write)
#  - VMM memory overhead: RSS minus the resident guest RAM (the memfd, RssShmem), and
#    of that the private part (RssAnon; the rest is program text shared with others)
# at 1 and 2 vCPUs. This host's /dev/kvm is PVM, so the figures come from inside the
# nested test host (QEMU TCG with emulated SVM): expect seconds, not milliseconds.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=$repo/target/release
script="bin=$bin"'
for n in 1 2; do
  HULL_LOG=info $bin/hull-vmm --kernel build/vmlinux --initrd build/initrd.img --memory 256 --vcpus $n \
    --vsock-uds /tmp/v$n.sock --serial-log /tmp/g$n.log 2>/tmp/vmm$n.err &
  pid=$!
  for i in $(seq 1 1200); do grep -q "guest agent ready" /tmp/vmm$n.err && break; sleep 0.1; done
  rss=$(awk "/^VmRSS/ {print \$2}" /proc/$pid/status 2>/dev/null || echo 0)
  shm=$(awk "/^RssShmem/ {print \$2}" /proc/$pid/status 2>/dev/null || echo 0)
  anon=$(awk "/^RssAnon/ {print \$2}" /proc/$pid/status 2>/dev/null || echo 0)
  first=$(grep -o "first KVM_RUN us=[0-9]*" /tmp/vmm$n.err | cut -d= -f2)
  ready=$(grep -o "guest agent ready ms=[0-9]*" /tmp/vmm$n.err | cut -d= -f2)
  echo "vcpus=$n start->first KVM_RUN ${first:-?} us, start->agent ready ${ready:-?} ms, VMM RSS ${rss} KiB, guest RAM resident ${shm} KiB, VMM overhead $((rss - shm)) KiB (private heap/stacks ${anon} KiB, the rest is mapped program text)"
  $bin/hull-agent-probe --vsock-uds /tmp/v$n.sock --timeout 30 --destroy >/dev/null 2>&1 || kill $pid
  wait $pid 2>/dev/null || true
done'
echo "hull-vmm, measured nested: QEMU TCG test host with emulated AMD SVM, KVM inside (host kernel $(uname -r), $(nproc) cores)"
cd "$repo" && tests/nested/test-host.sh --timeout 600 -- "$script"
