#!/bin/sh
# shellcheck disable=SC2016 # guest commands are single-quoted on purpose: the guest expands them
# Lab scenario (runs in L1): vmm boots the project's guest in many ways, and refuses bad
# input that only a host with KVM gets to. It judges nothing itself: every case leaves
# its command line, stdout, stderr and exit status under /out for tests/lab_boot.rs.
#
# Usage: vmm-boot.sh guests|errors|CASE...
#   guests  elf bzimage ro reboot poweroff panic triple initrd console-file console-none
#           stdin no-acpi                         (guest boots; elf must precede bzimage)
#   errors  kernel-text kernel-random kernel-empty kernel-host-sh kernel-l1-sh
#           mem-more-than-host console-file-bad kvm-denied              (no guest boots)
#
# Files in L1: vmm on PATH (`lab run --bin`), /lab/vmlinux, /lab/bzImage,
# /lab/rootfs.ext4, /lab/data.img (rootfs-tools/mkdatadisk.sh); written by the test:
# /lab/triple.elf and /lab/initrd.cpio.gz (guests), /lab/host-sh (errors: the host's
# /bin/sh). Each case works on private copies of the images in /tmp.
#
# Per case NAME in /out: NAME.cmd, NAME.stdout, NAME.stderr, NAME.status (137 when the
# case was killed after CASE_TIMEOUT seconds, default 60), and case-specific files:
#   NAME.sha-before / NAME.sha-after   sha256 of the case's images before and after
#   persist.expected(.sha256)          what elf writes into the rootfs for bzimage to read
#   console-file.console               the file given to --console file:
#   kvm-denied.pre                     /dev/kvm's mode and the unprivileged user's id
#   NAME.hang                          what a case that outlived its time limit was doing
# Exit status: 0 when every case ran (whatever vmm did), 2 on usage errors or missing files.
CASE_TIMEOUT=${CASE_TIMEOUT:-60}
OUT=${LAB_OUT:-/out}
KERNEL=/lab/vmlinux
BZIMAGE=/lab/bzImage
ROOTFS=/lab/rootfs.ext4
DATA=/lab/data.img

die() { echo "vmm-boot.sh: error: $*"; exit 2; }
up() { cut -d' ' -f1 /proc/uptime; }
need() { for f in "$@"; do [ -f "$f" ] || die "missing $f (see the header of this script)"; done; }
sha() { sha256sum "$1" | cut -c1-64; }
b64() { printf '%s\n' "$1" | base64 -w 0; }

# watchdog NAME PID: when the case is still running 15 s after its time limit (so even
# SIGKILL did not end it), shows what it and L1's kernel are doing, in /out/NAME.hang too.
watchdog() {
    s=0
    while [ "$s" -lt $((CASE_TIMEOUT + 15)) ]; do
        sleep 1
        s=$((s + 1))
        kill -0 "$2" 2>/dev/null || exit 0
    done
    {
        echo "HANG $1: pid $2 is still there $s s after it started (time limit $CASE_TIMEOUT s)"
        for t in /proc/"$2"/task/*; do
            echo "task ${t##*/}: state $(cut -d' ' -f3 "$t/stat") wchan $(cat "$t/wchan")"
            sed 's/^/    /' "$t/stack"
        done
        dmesg | tail -n 40
    } 2>&1 | tee "$OUT/$1.hang"
}

# run NAME [--stdin TEXT] -- COMMAND...: runs COMMAND with a time limit, stdin from a
# pipe fed TEXT (or /dev/null), and records what it did in /out/NAME.*.
run() {
    name=$1
    shift
    input=""
    piped=0
    while [ $# -gt 0 ]; do
        case $1 in
            --stdin) input=$2; piped=1; shift 2 ;;
            --) shift; break ;;
            *) die "run: unknown option $1" ;;
        esac
    done
    printf '%s\n' "$*" >"$OUT/$name.cmd"
    t0=$(up)
    # busybox timeout execs COMMAND, so $! is COMMAND's pid.
    if [ "$piped" = 1 ]; then
        printf '%s' "$input" | timeout -s KILL "$CASE_TIMEOUT" "$@" >"$OUT/$name.stdout" 2>"$OUT/$name.stderr" &
    else
        timeout -s KILL "$CASE_TIMEOUT" "$@" </dev/null >"$OUT/$name.stdout" 2>"$OUT/$name.stderr" &
    fi
    pid=$!
    watchdog "$name" "$pid" &
    wd=$!
    wait "$pid"
    st=$?
    kill "$wd" 2>/dev/null
    wait "$wd" 2>/dev/null
    echo "$st" >"$OUT/$name.status"
    echo "CASE $name status=$st secs=$(awk -v a="$t0" -v b="$(up)" 'BEGIN { printf "%.2f", b - a }')"
    tail -n 4 "$OUT/$name.stderr" | sed "s/^/  $name stderr| /"
}

# A private copy of an image, so that every case starts from the pristine one.
copy() { cp "$1" "$2" || die "cannot copy $1 to $2"; }

# --- guests -----------------------------------------------------------------------------

# ELF vmlinux, full console and boot log, an extra read-write disk (/dev/vdb), a file
# written into the rootfs for `bzimage` to read back, and a non-zero status.
case_elf() {
    need "$KERNEL" "$ROOTFS" "$DATA"
    copy "$ROOTFS" /tmp/persist.ext4
    copy "$DATA" /tmp/data-rw.img
    token="persist-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    printf '%s\n' "$token" >"$OUT/persist.expected"
    printf '%s\n' "$token" | sha256sum | cut -c1-64 >"$OUT/persist.expected.sha256"
    script='echo "elf-out-$((6*7))"
echo "acpi=$([ -d /sys/firmware/acpi/tables ] && echo present || echo absent)"
echo "vdb-head=$(head -n 1 /dev/vdb)"
echo "vdb-sector123=$(dd if=/dev/vdb bs=512 skip=123 count=1 2>/dev/null | head -n 1)"
echo "vdb-size=$(blockdev --getsize64 /dev/vdb)"
echo "vdb-sha256=$(sha256sum /dev/vdb | cut -c1-64)"
printf "%s\n" "'"$token"'" >/root/persist.txt && sync && echo persist-written
exit 7'
    run elf -- vmm -v --kernel "$KERNEL" --rootfs /tmp/persist.ext4 --disk /tmp/data-rw.img \
        --cmdline "run64=$(b64 "$script")"
    rm -f /tmp/data-rw.img
}

# bzImage, booting the rootfs `elf` wrote to.
case_bzimage() {
    need "$BZIMAGE"
    [ -f /tmp/persist.ext4 ] || die "case bzimage needs case elf first"
    run bzimage -- vmm -v --kernel "$BZIMAGE" --rootfs /tmp/persist.ext4 \
        --cmdline 'quiet run="echo bz-out-$((6*7)); cat /root/persist.txt; sha256sum /root/persist.txt"'
    rm -f /tmp/persist.ext4
}

# Read-only rootfs and data disk: reads work, writes fail, host files unchanged.
case_ro() {
    need "$KERNEL" "$ROOTFS" "$DATA"
    copy "$ROOTFS" /tmp/ro.ext4
    copy "$DATA" /tmp/data-ro.img
    script='echo "root-mount=$(awk '"'"'$2 == "/" { split($4, o, ","); print o[1] }'"'"' /proc/mounts)"
echo "root-read=$(cat /etc/hostname)"
if touch /root/ro-probe 2>/dev/null; then echo root-write=ok; else echo root-write=failed; fi
if mount -o remount,rw / 2>/dev/null; then echo root-remount-rw=ok; else echo root-remount-rw=failed; fi
echo "vda-ro=$(blockdev --getro /dev/vda)"
echo "vdb-ro=$(blockdev --getro /dev/vdb)"
for d in vda vdb; do
    if echo ro-probe | dd of=/dev/$d bs=512 count=1 conv=notrunc,fsync 2>/dev/null; then
        echo "$d-write=ok"
    else
        echo "$d-write=failed"
    fi
done
echo "vdb-head=$(head -n 1 /dev/vdb)"
echo "vdb-sha256=$(sha256sum /dev/vdb | cut -c1-64)"
exit 0'
    { sha /tmp/ro.ext4; sha /tmp/data-ro.img; } >"$OUT/ro.sha-before"
    run ro -- vmm --kernel "$KERNEL" --rootfs /tmp/ro.ext4 --rootfs-ro --disk /tmp/data-ro.img,ro \
        --cmdline "quiet run64=$(b64 "$script")"
    { sha /tmp/ro.ext4; sha /tmp/data-ro.img; } >"$OUT/ro.sha-after"
    rm -f /tmp/ro.ext4 /tmp/data-ro.img
}

case_reboot() {
    need "$KERNEL" "$ROOTFS"
    copy "$ROOTFS" /tmp/reboot.ext4
    run reboot -- vmm -v --kernel "$KERNEL" --rootfs /tmp/reboot.ext4 \
        --cmdline 'quiet run="echo rebooting-$((6*7)); reboot -f"'
    rm -f /tmp/reboot.ext4
}

case_poweroff() {
    need "$KERNEL" "$ROOTFS"
    copy "$ROOTFS" /tmp/poweroff.ext4
    run poweroff -- vmm -v --kernel "$KERNEL" --rootfs /tmp/poweroff.ext4 \
        --cmdline 'quiet run="echo powering-off-$((6*7)); poweroff -f"'
    rm -f /tmp/poweroff.ext4
}

# The root device does not exist: the kernel panics (reported through pvpanic).
case_panic() {
    need "$KERNEL" "$ROOTFS"
    copy "$ROOTFS" /tmp/panic.ext4
    run panic -- vmm --kernel "$KERNEL" --rootfs /tmp/panic.ext4 --cmdline 'quiet root=/dev/vdz'
    rm -f /tmp/panic.ext4
}

# A "kernel" that executes ud2 with no IDT: #UD -> #GP -> #DF -> triple fault.
case_triple() {
    need /lab/triple.elf
    run triple -- vmm --kernel /lab/triple.elf
}

# An initrd and no disk at all; its /init reports status 42 through the debug device.
case_initrd() {
    need "$KERNEL" /lab/initrd.cpio.gz
    run initrd -- vmm -v --kernel "$KERNEL" --initrd /lab/initrd.cpio.gz --cmdline quiet
}

case_console_file() {
    need "$KERNEL" "$ROOTFS"
    copy "$ROOTFS" /tmp/console-file.ext4
    rm -f /tmp/console-file.log
    run console-file -- vmm --kernel "$KERNEL" --rootfs /tmp/console-file.ext4 \
        --console file:/tmp/console-file.log \
        --cmdline 'quiet run="echo console-file-$((6*7)); exit 11"'
    cp /tmp/console-file.log "$OUT/console-file.console" 2>/dev/null
    rm -f /tmp/console-file.ext4 /tmp/console-file.log
}

case_console_none() {
    need "$KERNEL" "$ROOTFS"
    copy "$ROOTFS" /tmp/console-none.ext4
    run console-none -- vmm --kernel "$KERNEL" --rootfs /tmp/console-none.ext4 --console none \
        --cmdline 'quiet run="echo console-none-$((6*7)); exit 9"'
    rm -f /tmp/console-none.ext4
}

# No run=: the init starts an interactive shell on the console, fed by vmm's stdin (a pipe).
case_stdin() {
    need "$KERNEL" "$ROOTFS"
    copy "$ROOTFS" /tmp/stdin.ext4
    run stdin --stdin 'echo piped-$((6*7))
exit 13
' -- vmm --kernel "$KERNEL" --rootfs /tmp/stdin.ext4 --cmdline quiet
    rm -f /tmp/stdin.ext4
}

# No ACPI: the virtio disk is found through the virtio_mmio.device= command-line entry.
case_no_acpi() {
    need "$KERNEL" "$ROOTFS"
    copy "$ROOTFS" /tmp/no-acpi.ext4
    script='cat /proc/cmdline
echo "acpi=$([ -d /sys/firmware/acpi/tables ] && echo present || echo absent)"
echo "root-devno=$(awk '"'"'$5 == "/" { print $3 }'"'"' /proc/self/mountinfo)"
echo "vda-devno=$(cat /sys/block/vda/dev)"
exit 17'
    run no-acpi -- vmm -v --no-acpi --kernel "$KERNEL" --rootfs /tmp/no-acpi.ext4 \
        --cmdline "quiet run64=$(b64 "$script")"
    rm -f /tmp/no-acpi.ext4
}

# --- errors: refused before the guest runs; the images must stay untouched ---------------

# refuse NAME [run options] -- VMM ARGS...: `run` with a private "rootfs" and data disk
# (copies of the data disk: vmm must not get as far as reading them) appended to the
# arguments, and their sha256 recorded before and after.
refuse() {
    name=$1
    shift
    copy "$DATA" "/tmp/$name-root.img"
    copy "$DATA" "/tmp/$name-data.img"
    chmod 0644 "/tmp/$name-root.img" "/tmp/$name-data.img"
    { sha "/tmp/$name-root.img"; sha "/tmp/$name-data.img"; } >"$OUT/$name.sha-before"
    run "$name" "$@" --rootfs "/tmp/$name-root.img" --disk "/tmp/$name-data.img"
    { sha "/tmp/$name-root.img"; sha "/tmp/$name-data.img"; } >"$OUT/$name.sha-after"
    rm -f "/tmp/$name-root.img" "/tmp/$name-data.img"
}

case_kernel_text() {
    need "$DATA"
    printf 'This is a text file, not a kernel.\n' >/tmp/text-kernel
    refuse kernel-text -- vmm --kernel /tmp/text-kernel
}

case_kernel_random() {
    need "$DATA"
    head -c 65536 /dev/urandom >/tmp/random-kernel
    refuse kernel-random -- vmm --kernel /tmp/random-kernel
}

case_kernel_empty() {
    need "$DATA"
    : >/tmp/empty-kernel
    refuse kernel-empty -- vmm --kernel /tmp/empty-kernel
}

# The host's /bin/sh (on Debian: dash, a dynamically linked PIE).
case_kernel_host_sh() {
    need "$DATA" /lab/host-sh
    refuse kernel-host-sh -- vmm --kernel /lab/host-sh
}

# L1's /bin/sh: busybox, a statically linked non-PIE executable.
case_kernel_l1_sh() {
    need "$DATA"
    refuse kernel-l1-sh -- vmm --kernel /bin/sh
}

# More memory than L1 has (vmm's own limit is larger).
case_mem_more_than_host() {
    need "$KERNEL" "$DATA"
    refuse mem-more-than-host -- vmm --kernel "$KERNEL" --mem 64G
}

case_console_file_bad() {
    need "$KERNEL" "$DATA"
    refuse console-file-bad -- vmm --kernel "$KERNEL" --console file:/nonexistent-dir/console.log
}

# vmm run by an unprivileged user (nobody) while /dev/kvm is root's only.
case_kvm_denied() {
    need "$KERNEL" "$DATA"
    mkdir -p /etc
    grep -q '^nobody:' /etc/passwd 2>/dev/null ||
        echo 'nobody:x:65534:65534:nobody:/nonexistent:/bin/sh' >>/etc/passwd
    grep -q '^nogroup:' /etc/group 2>/dev/null || echo 'nogroup:x:65534:' >>/etc/group
    {
        echo "kvm-mode=$(stat -L -c %A /dev/kvm)"
        echo "user-id=$(su -s /bin/sh nobody -c 'id -u' 2>&1)"
    } >"$OUT/kvm-denied.pre"
    vmm=$(command -v vmm) || die "vmm is not on PATH"
    # refuse appends the images after the shell command's "$@".
    refuse kvm-denied -- su -s /bin/sh -c 'exec "$0" "$@"' -- nobody "$vmm" --kernel "$KERNEL"
}

# --- main -------------------------------------------------------------------------------
# lane CASE...: runs the cases one after the other.
lane() {
    for c in "$@"; do
        fn="case_$(echo "$c" | tr - _)"
        command -v "$fn" >/dev/null || die "unknown case '$c'"
        "$fn"
    done
}

# Guest boots run one at a time: with two nested guests at once, L1 (TCG with nested SVM)
# died or hung in 3 of 6 runs.
guests() {
    lane elf bzimage ro reboot poweroff panic triple initrd console-file console-none \
        stdin no-acpi
}
errors() {
    lane kernel-text kernel-random kernel-empty kernel-host-sh kernel-l1-sh \
        mem-more-than-host console-file-bad kvm-denied
}

[ $# -ge 1 ] || die "usage: vmm-boot.sh guests|errors|CASE..."
mkdir -p "$OUT"
command -v vmm >/dev/null || die "vmm is not on PATH (lab run --bin target/x86_64-unknown-linux-gnu/release/vmm)"
t_all=$(up)
for a in "$@"; do
    case $a in
        guests) guests ;;
        errors) errors ;;
        *) lane "$a" ;;
    esac
done
echo "ALL-CASES-DONE secs=$(awk -v a="$t_all" -v b="$(up)" 'BEGIN { printf "%.2f", b - a }')"
