#!/bin/sh
# Lab scenario (runs in L1): vmm boots the tenant VM image from rootfs-tools/mkagentfs.sh with
# a scratch disk and a vsock device, and `vmm-agent client` talks to the agent in the guest
# through vmm's Unix socket (CONNECT handshake): ping, put-layer, run, exec-free checks.
#
# Files in L1: vmm and vmm-agent on PATH (`lab run --bin`), /lab/vmlinux, /lab/agentfs.ext4,
# /lab/scratch.img (an empty ext4), /lab/layer.ext4 (busybox layer); argument: its diff-id.
# Output: the console in /out/console.log; one line per check; exit 0 when all passed.
set -u
DIFF_ID=$1
OUT=${LAB_OUT:-/out}
mkdir -p "$OUT"
cp /lab/scratch.img /tmp/scratch.img
SOCK=/tmp/v.sock
vmm --kernel /lab/vmlinux --rootfs /lab/agentfs.ext4 --rootfs-ro --disk /tmp/scratch.img \
    --vsock cid=3,socket=$SOCK --mem 512M --console "file:$OUT/console.log" </dev/null &
VMM=$!
i=0
until grep -q VMM-AGENT-READY "$OUT/console.log" 2>/dev/null; do
    i=$((i + 1))
    if [ $i -gt 240 ] || ! kill -0 $VMM 2>/dev/null; then
        echo "FAIL: no VMM-AGENT-READY"; cat "$OUT/console.log"; kill $VMM 2>/dev/null; exit 90
    fi
    sleep 0.5
done
echo "agent ready after ${i} polls"
fails=0
check() { # NAME EXPECTED-SUBSTRING COMMAND...
    name=$1 want=$2; shift 2
    got=$("$@" 2>&1); st=$?
    echo "$got" >"$OUT/$name.out"
    case "$got" in
        *"$want"*) echo "PASS $name (status $st)" ;;
        *) echo "FAIL $name (status $st): $got"; fails=$((fails + 1)) ;;
    esac
}
C="vmm-agent client --vsock $SOCK:1024"
check ping '"type":"pong"' $C ping
check put-layer "stored" $C put-layer /lab/layer.ext4 "$DIFF_ID"
check put-again "present" $C put-layer /lab/layer.ext4 "$DIFF_ID"
check layers "$DIFF_ID" $C layers
check run "hello from c1 pid 1 host c1" $C run "{\"id\":\"c1\",\"layers\":[\"$DIFF_ID\"],\"argv\":[\"sh\",\"-c\",\"echo hello from c1 pid \$\$ host \$(hostname)\"]}"
check exit-code "status=7" sh -c "$C run '{\"id\":\"c2\",\"layers\":[\"$DIFF_ID\"],\"argv\":[\"sh\",\"-c\",\"exit 7\"]}'; echo status=\$?"
check oom '"signal":9,"oom_killed":true' $C -v run "{\"id\":\"hog\",\"layers\":[\"$DIFF_ID\"],\"argv\":[\"dd\",\"if=/dev/zero\",\"of=/dev/null\",\"bs=128M\",\"count=1\"],\"limits\":{\"memory_bytes\":33554432}}"
check alive '"type":"pong"' $C ping
check caps "CapEff:	00000000a80425fb" $C run "{\"id\":\"caps\",\"layers\":[\"$DIFF_ID\"],\"argv\":[\"grep\",\"Cap\",\"/proc/self/status\"]}"
check ps '"id":"hog"' $C ps
kill $VMM
wait $VMM
echo "vmm exited with $?"
echo "checks failed: $fails"
[ $fails -eq 0 ]
