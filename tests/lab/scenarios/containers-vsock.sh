#!/bin/sh
# shellcheck disable=SC2016 # guest commands are single-quoted on purpose: the guest expands them
# Lab scenario (runs in L1): vmm's virtio-vsock under load, with socat on both sides.
# A guest (the test rootfs plus socat) listens on vsock ports; L1 talks to it through vmm's
# Unix socket (CONNECT <port>) and listens on <socket>_<port> for the guest's connections.
# It judges nothing: every fact is a `FACT key value...` line (and files under /out) for
# tests/lab_containers.rs.
#
# Files in L1: vmm and socat on PATH (`lab run --bin`), /lab/vmlinux, /lab/socat-rootfs.ext4
# (rootfs-tools/mkrootfs.sh --add-bin /usr/bin/socat).
# Guest ports: 5000 a shell (commands in, output out), 5001 sha256sum of what it receives,
# 5004 echo (cat), 5005 reads 1 MiB, says `guest-closing` and exits (graceful close
# mid-stream), 5006 reads 1 MiB, says `guest-killing` and SIGKILLs its socat (abrupt close;
# the line may be lost with it), 5007 streams zeros to L1's port 5008 (pid in /tmp/zero.pid).
# 5005 and 5006 note how much they read in /tmp/read-<port>.
# L1 ports (guest -> host): 5002 one 32 MiB stream, 5003 parallel streams, 5008 a stream the
# guest's socat is killed in the middle of.
# Arguments: KEY=VALUE overrides of the sizes below (e.g. BIG=1048576 for a quick run).
# Exit status: 0 when every step ran (whatever happened), 2 when the guest never answered.
for a in "$@"; do
    case "$a" in
        BIG=*|PAR=*|PAR_BYTES=*|STEP_TIMEOUT=*) export "${a?}" ;;
        *) echo "containers-vsock.sh: unknown argument $a"; exit 2 ;;
    esac
done
BIG=${BIG:-33554432}   # bytes each way in the large round trips
PAR=${PAR:-32}         # parallel streams
PAR_BYTES=${PAR_BYTES:-262144}
STEP_TIMEOUT=${STEP_TIMEOUT:-300}
OUT=${LAB_OUT:-/out}
SOCK=/tmp/v.sock
mkdir -p "$OUT"

up() { cut -d' ' -f1 /proc/uptime; }
fact() { echo "FACT $*"; }
sha() { sha256sum "$1" | cut -c1-64; }
since() { awk -v a="$1" -v b="$(up)" 'BEGIN { printf "%.2f", b - a }'; }
# payload FILE: what follows the device's `OK <port>` line in a client's output
payload() { tail -n +2 "$1"; }

# conn PORT OUTFILE [INPUT-FILE]: one host -> guest connection through vmm's socket, sending
# the CONNECT line and INPUT (nothing when absent), output (the OK line included) to OUTFILE.
# socat's -t keeps the connection for the guest's answer after our input ends.
conn() {
    if [ -n "${3:-}" ]; then
        { printf 'CONNECT %s\n' "$1"; cat "$3"; } | timeout "$STEP_TIMEOUT" socat -t "$STEP_TIMEOUT" - "UNIX-CONNECT:$SOCK" >"$2"
    else
        printf 'CONNECT %s\n' "$1" | timeout "$STEP_TIMEOUT" socat -t "$STEP_TIMEOUT" - "UNIX-CONNECT:$SOCK" >"$2"
    fi
}
# guest_sh 'COMMANDS': runs COMMANDS in the guest's shell (port 5000); prints their output.
# The command, the output and socat's status are kept in /out/guest-sh.<up>.*.
guest_sh() {
    n=$(up)
    printf '%s\n' "$1" >"$OUT/guest-sh.$n.cmd"
    conn 5000 "$OUT/guest-sh.$n.out" "$OUT/guest-sh.$n.cmd"
    echo "$?" >"$OUT/guest-sh.$n.status"
    payload "$OUT/guest-sh.$n.out"
}
# alive STEP: is vmm still running, and does the guest still answer (a fresh connection)?
alive() {
    fact "alive-$1" vmm="$(kill -0 "$VMM" 2>/dev/null && echo yes || echo no)" guest="$(guest_sh 'echo pong-$((6*7))' | tr '\n' ' ')"
}
# wait_port PORT: polls until the guest accepts on PORT (its socat may still be starting).
wait_port() {
    n=0
    while [ $n -lt 100 ]; do
        printf 'CONNECT %s\n' "$1" | timeout 20 socat -t 1 - "UNIX-CONNECT:$SOCK" >/tmp/probe 2>&1
        case "$(head -n 1 /tmp/probe)" in OK*) return 0 ;; esac
        n=$((n + 1))
        sleep 0.2
    done
    echo "port $1: the guest never accepted: $(cat /tmp/probe)"
    return 1
}

# --- the guest --------------------------------------------------------------------------
guest_script='s() { socat -t 300 "VSOCK-LISTEN:$1,reuseaddr,fork,backlog=128" "$2" & }
s 5001 SYSTEM:sha256sum
s 5004 EXEC:cat
s 5005 "SYSTEM:head -c 1048576 | wc -c >/tmp/read-5005; echo guest-closing"
s 5006 "SYSTEM:head -c 1048576 | wc -c >/tmp/read-5006; echo guest-killing; kill -9 \$PPID"
# (a script: socat would cut a SYSTEM command at its first colon)
printf "%s\n" "echo \$\$ >/tmp/zero.pid" "exec socat -u OPEN:/dev/zero VSOCK-CONNECT:2:5008" >/tmp/zero.sh
s 5007 "EXEC:sh /tmp/zero.sh"
s 5000 EXEC:/bin/sh,stderr
echo GUEST-LISTENERS-STARTED
wait'
cp /lab/socat-rootfs.ext4 /tmp/guest.ext4
vmm --kernel /lab/vmlinux --rootfs /tmp/guest.ext4 --mem 512M --vsock "cid=3,socket=$SOCK" \
    --console "file:$OUT/vsock-console.log" \
    --cmdline "quiet run64=$(printf '%s\n' "$guest_script" | base64 -w 0)" </dev/null &
VMM=$!
fact vmm-pid "$VMM"
t0=$(up)
until grep -q GUEST-LISTENERS-STARTED "$OUT/vsock-console.log" 2>/dev/null; do
    if ! kill -0 "$VMM" 2>/dev/null || [ "$(since "$t0" | cut -d. -f1)" -gt 180 ]; then
        echo "the guest did not start its listeners"; cat "$OUT/vsock-console.log"; kill "$VMM" 2>/dev/null; exit 2
    fi
    sleep 0.2
done
for p in 5000 5001 5004 5005 5006 5007; do wait_port $p || { kill "$VMM"; exit 2; }; done
fact guest-ready "$(since "$t0")"
fact guest-echo "$(guest_sh 'echo pong-$((6*7))')"

# --- 1. large round trips ---------------------------------------------------------------
# host -> guest: BIG random bytes into sha256sum in the guest; its digest comes back.
head -c "$BIG" /dev/urandom >/tmp/h2g.bin
t=$(up)
conn 5001 /tmp/h2g.reply /tmp/h2g.bin
st=$?
fact h2g status=$st secs=$(since "$t") bytes="$(stat -c %s /tmp/h2g.bin)" sent="$(sha /tmp/h2g.bin)" got="$(payload /tmp/h2g.reply | cut -c1-64)"
rm -f /tmp/h2g.bin
alive h2g

# guest -> host: the guest makes BIG random bytes, prints their digest and sends them to L1.
rm -f /tmp/g2h.bin
timeout "$STEP_TIMEOUT" socat -u "UNIX-LISTEN:${SOCK}_5002" CREATE:/tmp/g2h.bin &
listener=$!
until [ -S "${SOCK}_5002" ]; do sleep 0.1; done
t=$(up)
gsha=$(guest_sh "head -c $BIG /dev/urandom >/tmp/g2h.bin && sha256sum /tmp/g2h.bin | cut -c1-64 && socat -u OPEN:/tmp/g2h.bin VSOCK-CONNECT:2:5002 && rm /tmp/g2h.bin")
wait $listener
st=$?
fact g2h status=$st secs=$(since "$t") bytes="$(stat -c %s /tmp/g2h.bin)" sent="$gsha" got="$(sha /tmp/g2h.bin)"
rm -f /tmp/g2h.bin
alive g2h

# --- 2. parallel streams ----------------------------------------------------------------
# PAR echo connections at once, each PAR_BYTES of its own random data, both directions.
i=0
while [ $i -lt "$PAR" ]; do
    head -c "$PAR_BYTES" /dev/urandom >/tmp/par$i.in
    i=$((i + 1))
done
t=$(up)
i=0
pids=""
while [ $i -lt "$PAR" ]; do
    conn 5004 /tmp/par$i.out /tmp/par$i.in &
    pids="$pids $!"
    i=$((i + 1))
done
failed=0
for p in $pids; do wait "$p" || failed=$((failed + 1)); done
secs=$(since "$t")
same=0
i=0
while [ $i -lt "$PAR" ]; do
    payload /tmp/par$i.out >/tmp/par$i.echo
    if [ "$(sha /tmp/par$i.in)" = "$(sha /tmp/par$i.echo)" ]; then
        same=$((same + 1))
    else
        echo "par-echo stream $i: sent $(stat -c %s /tmp/par$i.in) bytes, got $(stat -c %s /tmp/par$i.echo) back, $(cmp /tmp/par$i.in /tmp/par$i.echo 2>&1)"
    fi
    i=$((i + 1))
done
fact par-echo streams="$PAR" bytes="$PAR_BYTES" failed=$failed identical=$same secs="$secs"
rm -f /tmp/par*
alive par-echo

# PAR guest -> host connections at once: the guest sends PAR files, L1 hashes each stream.
# The guest's connect() waits 30 s for the device's answer instead of Linux's default 2 s:
# with L1's single emulated vCPU busy forking PAR socat/sha256sum pairs, answers can take
# longer than 2 s (a lost answer still fails). socat sets the option before connect() only
# as `setsockopt-listen`: SO_VM_SOCKETS_CONNECT_TIMEOUT_OLD (AF_VSOCK 40, 6), a timeval.
CONNECT_TIMEOUT=setsockopt-listen=40:6:x1e000000000000000000000000000000
rm -f /tmp/par-g2h.sha
timeout "$STEP_TIMEOUT" socat "UNIX-LISTEN:${SOCK}_5003,fork,backlog=128" 'SYSTEM:sha256sum | cut -c1-64 >>/tmp/par-g2h.sha' &
listener=$!
until [ -S "${SOCK}_5003" ]; do sleep 0.1; done
t=$(up)
guest_sh "mkdir -p /tmp/par && i=0; while [ \$i -lt $PAR ]; do head -c $PAR_BYTES /dev/urandom >/tmp/par/\$i; i=\$((i + 1)); done
sha256sum /tmp/par/* | cut -c1-64 | sort >/tmp/par.sha
i=0; ps=; while [ \$i -lt $PAR ]; do socat -u OPEN:/tmp/par/\$i VSOCK-CONNECT:2:5003,$CONNECT_TIMEOUT & ps=\"\$ps \$!\"; i=\$((i + 1)); done
f=0; for j in \$ps; do wait \$j || f=\$((f + 1)); done
cat /tmp/par.sha; echo guest-failed=\$f; rm -rf /tmp/par /tmp/par.sha" >/tmp/par-g2h.guest
secs=$(since "$t")
# every stream has been answered once the guest's socats are done, but L1's forked
# children may still be appending: wait for PAR lines (bounded).
n=0
while [ "$(wc -l </tmp/par-g2h.sha 2>/dev/null || echo 0)" -lt "$PAR" ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n + 1)); done
kill $listener 2>/dev/null
grep -v = /tmp/par-g2h.guest >/tmp/par-g2h.sent
sort /tmp/par-g2h.sha >/tmp/par-g2h.got
fact par-g2h streams="$PAR" sent="$(wc -l </tmp/par-g2h.sent)" got="$(wc -l </tmp/par-g2h.got)" \
    identical="$(if cmp -s /tmp/par-g2h.sent /tmp/par-g2h.got; then echo yes; else echo no; fi)" \
    "$(grep guest-failed= /tmp/par-g2h.guest)" connect-timeouts="$(grep -c 'timed out' /tmp/par-g2h.guest)" secs="$secs"
alive par-g2h

# --- 3. the guest closes mid-stream -----------------------------------------------------
# L1 sends BIG bytes; the guest reads 1 MiB, answers a line and closes (5005) or is killed (5006).
for p in 5005 5006; do
    t=$(up)
    { printf 'CONNECT %s\n' $p; head -c "$BIG" /dev/zero; } | timeout 120 socat -t 120 - "UNIX-CONNECT:$SOCK" >/tmp/close$p.out 2>/tmp/close$p.err
    st=$?
    fact close-$p status=$st secs="$(since "$t")" alive="$(kill -0 "$VMM" && echo yes || echo no)" \
        guest-read="$(guest_sh "cat /tmp/read-$p")" said="$(payload /tmp/close$p.out | tr '\n' ' ')" \
        err="$(tr '\n' ' ' </tmp/close$p.err)"
done

# guest -> host: the guest streams zeros to L1 and its socat is SIGKILLed once L1 has 1 MiB.
rm -f /tmp/partial.bin
# (60 s at most: if the kill does not come, the zeros fill L1's RAM)
timeout 60 socat -u "UNIX-LISTEN:${SOCK}_5008" CREATE:/tmp/partial.bin &
listener=$!
until [ -S "${SOCK}_5008" ]; do sleep 0.1; done
# The guest's port 5007 starts the stream; the trigger connection lasts as long as it does.
# (Not through the shell: a background process there keeps descriptors of the shell's
# connection that socat leaves open, and with them the connection.)
conn 5007 /tmp/trigger.out &
trigger=$!
n=0
while [ "$(stat -c %s /tmp/partial.bin 2>/dev/null || echo 0)" -lt 1048576 ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n + 1)); done
guest_sh 'kill -9 $(cat /tmp/zero.pid) && echo killed' >/tmp/kill.out
t=$(up)
wait $listener
st=$?
wait $trigger
size=$(stat -c %s /tmp/partial.bin)
fact g2h-killed listener-status=$st secs="$(since "$t")" bytes="$size" \
    zeros="$(if cmp -s -n "$size" /tmp/partial.bin /dev/zero; then echo yes; else echo no; fi)" \
    guest="$(cat /tmp/kill.out)" alive="$(kill -0 "$VMM" && echo yes || echo no)"
rm -f /tmp/partial.bin
alive g2h-killed

# --- 4. still working afterwards ---------------------------------------------------------
head -c 1048576 /dev/urandom >/tmp/after.bin
conn 5001 /tmp/after.reply /tmp/after.bin
fact after status=$? sent="$(sha /tmp/after.bin)" got="$(payload /tmp/after.reply | cut -c1-64)"
fact after-echo "$(guest_sh 'echo pong-$((6*7))')"
fact refused "$(printf 'CONNECT 4999\n' | timeout 30 socat -t 10 - "UNIX-CONNECT:$SOCK")"

# --- the end: SIGTERM -> Ctrl-Alt-Del -> clean poweroff -------------------------------------
kill -TERM "$VMM"
wait "$VMM"
fact vmm-exit "$?"
exit 0
