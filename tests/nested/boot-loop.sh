#!/bin/sh
# Inside the nested test host: N consecutive hull-vmm boots to agent-ready, each ended by
# the agent (DestroySandbox), with per-boot figures and a summary. Used by the nested
# tier's boot-loop test (N=50, asserts no failure) and by `make bench-vmm`.
#
#   boot-loop.sh BIN_DIR N VCPUS
#
# The kernel command line is the shim's for hull-vmm pods ("quiet"), or $BOOT_LOOP_CMDLINE
# (e.g. "ignore_loglevel" to see where a failing boot stopped); $BOOT_LOOP_INITRD replaces
# build/initrd.img. Per boot it prints
#   boot I ok vmm_first_run_us=… vmm_ready_ms=… guest_init_ms=… guest_ready_ms=… console_lines=…
# (vmm_*: hull-vmm's clock from its process start; guest_*: the guest's clock, when the
# kernel started /init and when the agent served), or "boot I FAILED" with the VMM's
# error and the console's tail; then one line:
#   summary boots=N failures=F triple_faults=T ready_ms min=… median=… max=…
# (T of the F failures were hull-vmm reporting a guest triple fault, exit 2; the nested
# tests allow no failure of either kind)
bin=$1; n=$2; vcpus=$3
cmdline=${BOOT_LOOP_CMDLINE:-quiet}
fails=0; triple=0
: >/tmp/boot-loop.ready
i=1
while [ "$i" -le "$n" ]; do
  rm -f /tmp/bl.sock /tmp/bl.sock_* /tmp/bl-console.log
  HULL_LOG=info timeout 300 "$bin/hull-vmm" --kernel build/vmlinux --initrd "${BOOT_LOOP_INITRD:-build/initrd.img}" \
    --memory 256 --vcpus "$vcpus" --cmdline "$cmdline" --vsock-uds /tmp/bl.sock \
    --serial-log /tmp/bl-console.log 2>/tmp/bl-vmm.err &
  pid=$!
  # Like the shim, talk to the agent only once it has said it serves (here: the
  # boot-timer port hull-vmm logs), then end the VM through it.
  ok=0; t=0
  while [ $t -lt 1200 ] && kill -0 $pid 2>/dev/null && ! grep -q "guest agent ready" /tmp/bl-vmm.err; do
    sleep 0.1; t=$((t + 1))
  done
  : >/tmp/bl-probe.out
  if grep -q "guest agent ready" /tmp/bl-vmm.err; then
    "$bin/hull-agent-probe" --vsock-uds /tmp/bl.sock --timeout 60 --destroy >/tmp/bl-probe.out 2>&1 && ok=1
  fi
  [ $ok = 1 ] || kill -9 $pid 2>/dev/null
  wait $pid; rc=$?
  [ "$rc" = 0 ] || ok=0
  first=$(grep -o "first KVM_RUN us=[0-9]*" /tmp/bl-vmm.err | cut -d= -f2)
  ready=$(grep -o "guest agent ready ms=[0-9]*" /tmp/bl-vmm.err | cut -d= -f2)
  clock=$(grep -o "boot clock: init_ms=[0-9?]* ready_ms=[0-9]*" /tmp/bl-console.log | head -1)
  ginit=$(echo "$clock" | sed -n 's/.*init_ms=\([0-9?]*\).*/\1/p')
  gready=$(echo "$clock" | sed -n 's/.* ready_ms=\([0-9]*\).*/\1/p')
  lines=$(wc -l </tmp/bl-console.log)
  if [ "$ok" = 1 ] && [ -n "$ready" ]; then
    echo "boot $i ok vmm_first_run_us=$first vmm_ready_ms=$ready guest_init_ms=$ginit guest_ready_ms=$gready console_lines=$lines"
    echo "$ready" >>/tmp/boot-loop.ready
  else
    fails=$((fails + 1))
    # Counted apart for the figures: the nested triple fault (docs/vmm.md) was one, and a
    # triple fault says the guest died, not that the VMM failed. The tests allow none.
    if [ "$rc" = 2 ] && grep -q "guest triple fault" /tmp/bl-vmm.err; then
      triple=$((triple + 1))
    fi
    echo "boot $i FAILED (hull-vmm exit $rc)"
    tail -5 /tmp/bl-probe.out | sed 's/^/  probe: /'
    tail -8 /tmp/bl-vmm.err | sed 's/^/  vmm: /'
    tail -15 /tmp/bl-console.log | sed 's/^/  console: /'
  fi
  i=$((i + 1))
done
sort -n /tmp/boot-loop.ready | awk -v n="$n" -v f="$fails" -v t="$triple" '
  {a[NR]=$1} END {
    if (NR) printf "summary boots=%d failures=%d triple_faults=%d ready_ms min=%d median=%d max=%d\n", n, f, t, a[1], a[int((NR+1)/2)], a[NR];
    else printf "summary boots=%d failures=%d triple_faults=%d ready_ms none\n", n, f, t }'
