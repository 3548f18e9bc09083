#!/bin/sh
# shellcheck disable=SC2016 # container commands are single-quoted on purpose: the container expands them
# Lab scenario (runs in L1): `vmm run`, tenants, `vmm exec`/`ps` and bad images, end to end:
# images are converted in L1, tenant VMs boot under L1's KVM, the agent runs the containers.
# It judges nothing: every case leaves NAME.cmd, NAME.stdout, NAME.stderr and NAME.status
# under /out (and a few NAME.* extras, below) for tests/lab_containers.rs.
#
# Files in L1: vmm, mkfs.ext4, debugfs and GNU grep as ggrep on PATH (`lab run --bin`, e.g.
# --bin /usr/bin/grep:/lab/bin/ggrep: it skips the holes of a sparse file), /lab/vmlinux,
# /lab/agentfs.ext4 (rootfs-tools/mkagentfs.sh), and images made by the test:
#   /lab/img/busybox-oci.tar     tests/lab/make-oci-image.sh (an OCI layout in a tar)
#   /lab/img/busybox-docker.tar  the same image as a `docker save` archive
#   /lab/img/layers.tar          3 layers: busybox, files, whiteouts of some of them
#   /lab/img/truncated.tar       a `docker save` archive cut short
#   /lab/img/dotdot.tar          a layer with a `../../..` entry
# Argument: TOKEN, a random word the test looks for in the tenants' scratch disks.
# Exit status: 0 when every case ran (whatever vmm did), 2 on usage errors or missing files.
CASE_TIMEOUT=${CASE_TIMEOUT:-240}
OUT=${LAB_OUT:-/out}
IMG=/lab/img
TOKEN=${1:?usage: containers-run.sh TOKEN}
export VMM_KERNEL=/lab/vmlinux VMM_AGENTFS=/lab/agentfs.ext4
export VMM_CACHE=/var/cache/vmm VMM_STATE_DIR=/var/lib/vmm
mkdir -p "$OUT"

die() { echo "containers-run.sh: error: $*"; exit 2; }
up() { cut -d' ' -f1 /proc/uptime; }
for f in "$VMM_KERNEL" "$VMM_AGENTFS" "$IMG/busybox-oci.tar" "$IMG/busybox-docker.tar" \
    "$IMG/layers.tar" "$IMG/truncated.tar" "$IMG/dotdot.tar"; do
    [ -f "$f" ] || die "missing $f (see the header of this script)"
done
for c in vmm mkfs.ext4 debugfs ggrep; do command -v $c >/dev/null || die "$c is not on PATH"; done

# run NAME -- COMMAND...: runs COMMAND (stdin /dev/null) with a time limit and records it.
run() {
    name=$1
    shift 2
    printf '%s\n' "$*" >"$OUT/$name.cmd"
    t0=$(up)
    timeout -s KILL "$CASE_TIMEOUT" "$@" </dev/null >"$OUT/$name.stdout" 2>"$OUT/$name.stderr"
    st=$?
    echo "$st" >"$OUT/$name.status"
    echo "CASE $name status=$st secs=$(awk -v a="$t0" -v b="$(up)" 'BEGIN { printf "%.2f", b - a }')"
    tail -n 3 "$OUT/$name.stderr" | sed "s/^/  $name stderr| /"
}

# start NAME MARKER -- COMMAND...: runs COMMAND in the background like `run`, and returns
# once its stdout has the line MARKER (or it ended, or CASE_TIMEOUT passed). Sets $bg.
start() {
    name=$1 marker=$2
    shift 3
    printf '%s\n' "$*" >"$OUT/$name.cmd"
    "$@" </dev/null >"$OUT/$name.stdout" 2>"$OUT/$name.stderr" &
    bg=$!
    n=0
    until grep -qx "$marker" "$OUT/$name.stdout"; do
        kill -0 "$bg" 2>/dev/null || { echo "CASE $name ended before printing $marker"; return 1; }
        n=$((n + 1))
        [ $n -lt $((CASE_TIMEOUT * 10)) ] || { echo "CASE $name: no $marker in $CASE_TIMEOUT s"; return 1; }
        sleep 0.1
    done
    echo "CASE $name started (pid $bg)"
}

# finish NAME PID: waits for a `start`ed case and records its status.
finish() {
    wait "$2"
    st=$?
    echo "$st" >"$OUT/$1.status"
    echo "CASE $1 status=$st"
    tail -n 3 "$OUT/$1.stderr" | sed "s/^/  $1 stderr| /"
}

# snapshot FILE: name, size, mtime and ctime (nanoseconds) of everything outside the image
# cache and /out, /proc, /sys, /dev: what a case must not change.
snapshot() {
    find / \( -path /proc -o -path /sys -o -path /dev -o -path "$OUT" -o -path "$VMM_CACHE" \) -prune \
        -o -exec stat -c '%n|%s|%y|%z' {} + 2>/dev/null | sort >"$1"
}

# --- bad input first, on an empty cache and no state directory --------------------------
mkdir -p "$VMM_CACHE"
for c in missing truncated dotdot; do
    case $c in
        missing) image=$IMG/no-such-image.tar ;;
        *) image=$IMG/$c.tar ;;
    esac
    snapshot "$OUT/bad-$c.before"
    run "bad-$c" -- vmm run --tenant bad "$image" -- sh -c 'echo should-not-run'
    snapshot "$OUT/bad-$c.after"
    # what the case created, changed or removed (`diff` exits 1 when there is some)
    diff "$OUT/bad-$c.before" "$OUT/bad-$c.after" | grep '^[-+]/' >"$OUT/bad-$c.changed"
done
ls -A "$VMM_CACHE/layers" "$VMM_CACHE/layers/.tmp" >"$OUT/bad.cache" 2>&1
[ -e /tmp/vmm-escape ] && echo "present" >"$OUT/bad.escape"
[ -e "$VMM_STATE_DIR" ] && ls -laR "$VMM_STATE_DIR" >"$OUT/bad.state"

# --- throw-away VMs: an OCI layout directory, then a docker-save archive ---------------
mkdir -p /tmp/busybox-oci
tar -xf "$IMG/busybox-oci.tar" -C /tmp/busybox-oci
run oci-dir -- vmm run /tmp/busybox-oci -- sh -c 'echo "hello from $(hostname) pid $$"; exit 0'
run docker-exit -- vmm run "$IMG/busybox-docker.tar" -- sh -c 'head -n 1 /etc/passwd; echo to-stderr >&2; exit 3'
ls -d /tmp/vmm-run-* >"$OUT/throwaway.left" 2>/dev/null

# --- tenant t1 ----------------------------------------------------------------------------
run t1-up -- vmm tenant up t1
cat "$VMM_STATE_DIR/tenants/t1/vmm.pid" >"$OUT/t1.pid" 2>/dev/null
run t1-bootid -- vmm run --tenant t1 "$IMG/busybox-oci.tar" -- cat /proc/sys/kernel/random/boot_id
run t1-exit -- vmm run --tenant t1 "$IMG/busybox-oci.tar" -- sh -c 'echo out-line; echo err-line >&2; exit 7'
run t1-segv -- vmm run --tenant t1 "$IMG/busybox-oci.tar" -- sh -c 'ulimit -s 256; f() { f; }; f'
run t1-pid1-kill -- vmm run --tenant t1 "$IMG/busybox-oci.tar" -- sh -c 'kill -9 $$; echo "pid $$ survived"'
run t1-env -- vmm run --tenant t1 -e GREETING=hi-there -w /work "$IMG/busybox-oci.tar" -- sh -c 'echo "$GREETING in $(pwd) as $(id -u)"'

# A long-running container: keeps a file with TOKEN on t1's scratch disk, handles SIGTERM.
start t1-bystander bystander-ready -- vmm run --tenant t1 --name bystander -e TOKEN="$TOKEN" \
    "$IMG/busybox-oci.tar" -- sh -c 'trap "echo got-TERM; exit 42" TERM
echo "$TOKEN" >/root/token; sync; echo bystander-ready; sleep 100000 & wait'
bystander=$bg

# The memory hog (the container's main process) next to it.
run t1-oom -- vmm run --tenant t1 --memory-limit 32M "$IMG/busybox-oci.tar" -- dd if=/dev/zero of=/dev/null bs=128M count=1
run t1-pids -- vmm run --tenant t1 --pids-limit 4 "$IMG/busybox-oci.tar" -- sh -c 'i=0; while [ $i -lt 8 ]; do sleep 30 & i=$((i + 1)); done; echo "forked"'
run t1-ps -- vmm ps --tenant t1
run t1-exec -- vmm exec --tenant t1 bystander -- sh -c 'echo "exec sees $(cat /root/token) and pid 1 $(cat /proc/1/cmdline | tr "\0" " ")"'
run t1-after-oom -- vmm run --tenant t1 "$IMG/busybox-oci.tar" -- cat /proc/sys/kernel/random/boot_id
cat "$VMM_STATE_DIR/tenants/t1/vmm.pid" >"$OUT/t1.pid-after" 2>/dev/null

# --- tenant t2: its own VM ------------------------------------------------------------------
run t2-bootid -- vmm run --tenant t2 "$IMG/busybox-oci.tar" -- cat /proc/sys/kernel/random/boot_id
cat "$VMM_STATE_DIR/tenants/t2/vmm.pid" >"$OUT/t2.pid" 2>/dev/null
run t2-ps -- vmm ps --tenant t2
run t2-exec-other -- vmm exec --tenant t2 bystander -- cat /root/token
run t2-look -- vmm run --tenant t2 "$IMG/busybox-oci.tar" -- sh -c 'cat /root/token; ps -o pid,args'
run tenant-ls -- vmm tenant ls
for t in t1 t2; do
    # the whole 4 GiB disk image (sparse; GNU grep reads only its data)
    ggrep -c "$TOKEN" "$VMM_STATE_DIR/tenants/$t/scratch.ext4" >"$OUT/$t.token-count"
done

# --- whiteouts ------------------------------------------------------------------------------
run layers -- vmm run --tenant t1 "$IMG/layers.tar" -- sh -c 'for d in /data /opaque /etc/motd /added; do
    if [ -d $d ]; then echo "$d: $(ls -A $d | tr "\n" " ")"; elif [ -e $d ]; then echo "$d= $(cat $d)"; else echo "$d absent"; fi
done
for p in /data/gone /opaque/old1 /opaque/sub; do [ -e $p ] && echo "$p present" || echo "$p absent"; done'

# --- SIGTERM from the host reaches the container through vmm run ---------------------------
kill -TERM "$bystander"
finish t1-bystander "$bystander"

# --- down ------------------------------------------------------------------------------------
run t1-down -- vmm tenant down t1
run t2-down -- vmm tenant down t2
run tenant-ls-after -- vmm tenant ls
for t in t1 t2; do
    pid=$(cat "$OUT/$t.pid" 2>/dev/null)
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid" >"$OUT/$t.still-running"
done
ls -A "$VMM_CACHE/layers" >"$OUT/cache.layers" 2>&1
exit 0
