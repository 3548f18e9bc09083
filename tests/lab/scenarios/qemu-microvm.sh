#!/bin/sh
# Lab scenario (runs in L1): boot the project's guest kernel and rootfs under
# QEMU microvm with KVM (nested), once per case, and judge each boot with guest-run.
#
# Usage: qemu-microvm.sh NAME 'KERNEL ARGS' [NAME 'KERNEL ARGS']...
#   e.g. qemu-microvm.sh ok 'root=/dev/vda run="uname -r; echo lab-ok"'
# Files: /lab/vmlinux and /lab/rootfs.ext4 (override with GUEST_KERNEL, GUEST_ROOTFS).
# Each case boots a private copy of the rootfs, streams the console, and leaves
# /out/NAME.log (console) and /out/NAME.status (guest-run's status). The scenario's
# own exit status is the last case's status (the guest's VMM-GUEST-EXIT status, or
# guest-run's 90/91/124 when the guest did not boot / did not finish).
kernel=${GUEST_KERNEL:-/lab/vmlinux}
rootfs=${GUEST_ROOTFS:-/lab/rootfs.ext4}
[ -f "$kernel" ] || { echo "qemu-microvm.sh: error: no guest kernel at $kernel"; exit 2; }
[ -f "$rootfs" ] || { echo "qemu-microvm.sh: error: no rootfs at $rootfs"; exit 2; }
[ $# -ge 2 ] && [ $(($# % 2)) -eq 0 ] || { echo "qemu-microvm.sh: error: usage: NAME 'KERNEL ARGS' ..."; exit 2; }

mkdir -p /out
status=0
while [ $# -ge 2 ]; do
    name=$1 args=$2
    shift 2
    cp "$rootfs" "/tmp/$name.ext4"
    echo "=== case $name: $args"
    guest-run --name "$name" --timeout "${GUEST_TIMEOUT:-120}" --log "/out/$name.log" -- \
        qemu-system-x86_64 -M microvm -enable-kvm -cpu host -m 256M -smp 1 \
        -nodefaults -no-user-config -nographic -serial stdio \
        -kernel "$kernel" -append "console=ttyS0 reboot=t panic=-1 rw $args" \
        -drive "id=root,file=/tmp/$name.ext4,format=raw,if=none" -device virtio-blk-device,drive=root \
        -no-reboot
    status=$?
    echo "$status" >"/out/$name.status"
    rm -f "/tmp/$name.ext4"
done
exit "$status"
