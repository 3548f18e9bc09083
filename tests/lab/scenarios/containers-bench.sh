#!/bin/sh
# Lab scenario (runs in L1): how long from starting a container to its first output line,
# for `vmm run` with a cold tenant (its VM not running: boot + agent + run), a warm tenant
# (VM up, layers present: just the run) and a throw-away VM (no --tenant), next to crun
# running the same busybox rootfs directly in L1. All in one L1 boot, so that the emulation
# overhead and the host's load are the same for every kind: compare ratios, never the
# absolute times (docs/lab.md).
#
# Files in L1: vmm, mkfs.ext4, debugfs, crun and GNU date as gdate on PATH (`lab run --bin`,
# e.g. --bin /usr/bin/date:/lab/bin/gdate), /lab/vmlinux, /lab/agentfs.ext4,
# /lab/img/busybox-oci.tar (tests/lab/make-oci-image.sh).
# Argument: N, the runs per kind (default 9).
# Output: one `RUN kind i secs` line per run, /out/bench.runs, and /out/bench.summary with
# `BENCH kind n=N median=S min=S max=S` per kind and `RATIO a/b=R` lines (medians).
# Exit status: 0 when every run printed its line, 1 otherwise, 2 on missing files.
N=${1:-9}
OUT=${LAB_OUT:-/out}
IMG=/lab/img/busybox-oci.tar
export VMM_KERNEL=/lab/vmlinux VMM_AGENTFS=/lab/agentfs.ext4
export VMM_CACHE=/var/cache/vmm VMM_STATE_DIR=/var/lib/vmm
mkdir -p "$OUT"
die() { echo "containers-bench.sh: error: $*"; exit 2; }
for f in "$VMM_KERNEL" "$VMM_AGENTFS" "$IMG"; do [ -f "$f" ] || die "missing $f"; done
for c in vmm crun gdate mkfs.ext4 debugfs; do command -v $c >/dev/null || die "$c is not on PATH"; done

now() { gdate +%s%N; }
fails=0
# measure KIND I COMMAND...: time from just before COMMAND starts to its first stdout line,
# which must be `first-line`.
measure() {
    kind=$1 i=$2
    shift 2
    t0=$(now)
    "$@" </dev/null 2>"$OUT/$kind.$i.stderr" | {
        IFS= read -r line
        t1=$(now)
        cat >/dev/null
        if [ "$line" = first-line ]; then
            secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
            echo "RUN $kind $i $secs" | tee -a "$OUT/bench.runs"
        else
            echo "FAIL $kind $i: first line '$line'; stderr: $(tail -n 3 "$OUT/$kind.$i.stderr")"
            exit 1
        fi
    } || fails=$((fails + 1))
}

# --- the first run ever: image conversion, scratch disk, boot, layer upload ---------------
measure first 1 vmm run --tenant bench "$IMG" -- echo first-line
vmm tenant down bench >/dev/null

# --- cold tenant: the VM is down, the image converted and the layer on its scratch disk ---
i=1
while [ $i -le "$N" ]; do
    measure cold $i vmm run --tenant bench "$IMG" -- echo first-line
    vmm tenant down bench >/dev/null
    i=$((i + 1))
done

# --- warm tenant: the VM is up ------------------------------------------------------------
vmm tenant up bench >/dev/null || die "vmm tenant up bench failed"
i=1
while [ $i -le "$N" ]; do
    measure warm $i vmm run --tenant bench "$IMG" -- echo first-line
    i=$((i + 1))
done
vmm tenant down bench >/dev/null

# --- throw-away VM: a fresh scratch disk and VM per run --------------------------------------
i=1
while [ $i -le "$N" ]; do
    measure throwaway $i vmm run "$IMG" -- echo first-line
    i=$((i + 1))
done

# --- crun, same rootfs, directly in L1 --------------------------------------------------------
# cgroup2 (L1's init mounts none); crun 1.8 also wants the hugetlb controller, which the
# cloud kernel has: it is left on cgroup2.
mkdir -p /sys/fs/cgroup
grep -q ' /sys/fs/cgroup cgroup2 ' /proc/mounts || mount -t cgroup2 cgroup2 /sys/fs/cgroup || die "cannot mount cgroup2"
B=/tmp/bundle
mkdir -p $B/rootfs /tmp/oci
tar -xf "$IMG" -C /tmp/oci
diff_id=$(sed 's/.*"diff_ids":\["sha256:\([0-9a-f]*\)".*/\1/' "$(grep -l diff_ids /tmp/oci/blobs/sha256/*)")
tar -xf "/tmp/oci/blobs/sha256/$diff_id" -C $B/rootfs || die "cannot unpack the busybox layer"
(cd $B && crun spec) || die "crun spec failed"
sed -i -e 's/"terminal": true/"terminal": false/' \
    -e '/"args": \[/,/\]/c\		"args": [ "echo", "first-line" ],' $B/config.json
cp $B/config.json "$OUT/crun-config.json"
i=1
while [ $i -le "$N" ]; do
    # --no-pivot: L1's root is the initramfs, which pivot_root(2) refuses (EINVAL); crun then
    # moves the rootfs onto / and chroots, as docker does on a ramdisk (DOCKER_RAMDISK)
    measure crun $i crun run --no-pivot -b $B bench-$i
    i=$((i + 1))
done

# --- summary --------------------------------------------------------------------------------
stats() { # KIND -> "n=N median=S min=S max=S"
    grep "^RUN $1 " "$OUT/bench.runs" | cut -d' ' -f4 | sort -n | awk '
        { v[NR] = $1 }
        END { if (NR == 0) { print "n=0"; exit }
              m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
              printf "n=%d median=%.3f min=%.3f max=%.3f\n", NR, m, v[1], v[NR] }'
}
median() { stats "$1" | sed -n 's/.*median=\([0-9.]*\).*/\1/p'; }
{
    for k in first cold warm throwaway crun; do echo "BENCH $k $(stats $k)"; done
    for r in cold/crun warm/crun throwaway/crun cold/warm; do
        a=$(median "${r%/*}") b=$(median "${r#*/}")
        echo "RATIO $r=$(awk -v a="$a" -v b="$b" 'BEGIN { if (b > 0) printf "%.1f", a / b; else print "-" }')"
    done
    echo "L1: $(nproc) vCPU(s), $(uname -r)"
} | tee "$OUT/bench.summary"
[ "$fails" -eq 0 ]
