#!/usr/bin/env bash
# Cold boot vs restore from a snapshot, printed (not asserted). Run on demand:
# `make bench-start`. Measured inside the nested test host (this host's /dev/kvm is PVM):
#  - N cold boots and N restores of one snapshot (default 10 each), each from hull-vmm's
#    launch until the agent answers over vsock: min/median/max
#  - memory: K VMs (K = 1, 5, 10; KS=...) running at once, cold-booted or restored from one
#    snapshot (KINDS="cold restored"), each to agent-ready; the PSS of all their VMM processes (guest RAM
#    included) divided by K. Restored VMs map the snapshot copy-on-write, so their clean
#    pages are shared and PSS per VM falls as K grows.
#  - pod start through containerd, booted vs restored from a template
#    (benches/template-pods.sh)
set -euo pipefail
N=${N:-10}
KS=${KS:-1 5 10}
KINDS=${KINDS:-cold restored}
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=$repo/target/release
script="bin=$bin; N=$N; KS='$KS'; KINDS='$KINDS'"'
ms() { echo $(( $(date +%s%N) / 1000000 )); }
stats() { sort -n | awk '"'"'{a[NR]=$1} END {if (NR) printf "min=%d median=%d max=%d ms (n=%d)\n", a[1], a[int((NR+1)/2)], a[NR], NR; else print "none"}'"'"'; }
# launch NAME ARGS...: a VMM in the background on /tmp/NAME.sock; its pid in $LAST.
launch() { n=$1; shift; rm -f /tmp/$n.sock /tmp/$n.sock_* /tmp/$n.api
  $bin/hull-vmm "$@" --vsock-uds /tmp/$n.sock --api-sock /tmp/$n.api --serial-log /tmp/$n.log >/dev/null 2>/tmp/$n.err & LAST=$!; }
ready() { $bin/hull-agent-probe --vsock-uds /tmp/$1.sock --timeout 600 >/tmp/$1.out 2>&1; }
stop() { echo "{\"action\":\"shutdown\"}" | socat -t 10 - UNIX-CONNECT:/tmp/$1.api >/dev/null 2>&1 || kill -9 $2; wait $2 2>/dev/null || true; }
cold="--kernel build/vmlinux --initrd build/initrd.img --memory 256 --cmdline quiet"
pss() { total=0; for p in "$@"; do v=$(awk "/^Pss:/ {print \$2}" /proc/$p/smaps_rollup 2>/dev/null || echo 0); total=$((total + v)); done; echo $total; }

echo "--- snapshot of a booted VM"
launch s $cold; pid=$LAST; ready s
t0=$(ms); echo "{\"action\":\"pause\"}" | socat - UNIX-CONNECT:/tmp/s.api >/dev/null
rm -rf /tmp/snap; mkdir /tmp/snap
echo "{\"action\":\"snapshot\",\"dir\":\"/tmp/snap\"}" | socat -t 120 - UNIX-CONNECT:/tmp/s.api
echo "pause + snapshot: $(( $(ms) - t0 )) ms; files: $(du -k /tmp/snap/memory | cut -f1) KiB of memory on disk, $(stat -c %s /tmp/snap/state) bytes of state"
stop s $pid

echo "--- launch -> agent answers, $N each"
: >/tmp/cold.ms; : >/tmp/restore.ms
for i in $(seq 1 $N); do
  t0=$(ms); launch c $cold; pid=$LAST; ready c && echo $(( $(ms) - t0 )) >>/tmp/cold.ms; stop c $pid
  t0=$(ms); launch r --restore /tmp/snap; pid=$LAST; ready r && echo $(( $(ms) - t0 )) >>/tmp/restore.ms; stop r $pid
done
echo "cold boot: $(stats </tmp/cold.ms)"
echo "restore:   $(stats </tmp/restore.ms)"

echo "--- memory: PSS per VM (VMM process, guest RAM included), K VMs at once"
for k in $KS; do
  for kind in $KINDS; do
    pids=""
    for i in $(seq 1 $k); do
      if [ $kind = cold ]; then launch m$i $cold; else launch m$i --restore /tmp/snap; fi
      pids="$pids $LAST"
    done
    for i in $(seq 1 $k); do
      ready m$i || { echo "m$i did not answer (VMM $(kill -0 $(echo $pids | cut -d" " -f$i) 2>/dev/null && echo alive || echo gone)):"
        tail -3 /tmp/m$i.out /tmp/m$i.err; tail -c 600 /tmp/m$i.log; }
    done
    total=$(pss $pids)
    echo "K=$k $kind: $((total / k)) KiB per VM"
    i=1; for p in $pids; do stop m$i $p; i=$((i + 1)); done
  done
done

echo "--- pod start through containerd: ctr run --rm true, launch -> exit, $N each"
bash benches/template-pods.sh $bin $N'
echo "hull-vmm start, measured nested: QEMU TCG test host with emulated AMD SVM, KVM inside (host kernel $(uname -r), $(nproc) cores)"
cd "$repo" && tests/nested/test-host.sh --timeout 2400 --memory 4096 -- "$script"
