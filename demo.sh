#!/usr/bin/env bash
# Set everything up and boot the demo guest with vmm.
#
# On a host whose KVM runs standard guests (VMX/SVM), vmm boots the guest here.
# On a PVM host (or with --lab), it boots it inside the nested test host (the
# lab, see docs/lab.md), because PVM cannot run a standard guest kernel.
#
# Usage: ./demo.sh [--lab] [--shell]
#   --lab    boot inside the lab even when this host could run the guest
#   --shell  (direct boot only) give an interactive guest shell instead of the demo command
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

use_lab=0 shell=0
for a in "$@"; do
    case "$a" in
        --lab) use_lab=1 ;;
        --shell) shell=1 ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "demo: unknown argument '$a' (see --help)" >&2; exit 2 ;;
    esac
done

command -v cargo >/dev/null || { echo "demo: cargo is missing: install Rust (https://rustup.rs)" >&2; exit 1; }

echo "demo: preparing the guest kernel, root file system and lab (cached after the first run)..."
eval "$(tests/lab/lab prepare)"
echo "demo: building vmm (release)..."
cargo build --release --quiet -p vmm
vmm=$PWD/target/x86_64-unknown-linux-gnu/release/vmm

demo_cmd='echo; echo "Hello from a vmm guest: $(uname -sr) on $(nproc) vCPU(s), $(awk "/MemTotal/ {print \$2 \" kB\"}" /proc/meminfo) of RAM"; echo "root file system: $(mount | grep " / ")"; echo "disks: $(ls /dev/vd*)"'

# The guest init runs a base64-encoded script given as run64= on the command line.
run64=$(printf '%s\n' "$demo_cmd" | base64 -w0)

if [ "$use_lab" = 0 ] && { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; } && [ -w /dev/kvm ]; then
    echo "demo: this host's KVM runs standard guests: booting here"
    rootfs=$(mktemp /tmp/vmm-demo-rootfs.XXXXXX)
    trap 'rm -f "$rootfs"' EXIT
    cp "$ROOTFS" "$rootfs"
    if [ "$shell" = 1 ]; then
        exec "$vmm" --kernel "$GUEST_VMLINUX" --rootfs "$rootfs" -v
    fi
    "$vmm" --kernel "$GUEST_VMLINUX" --rootfs "$rootfs" -v --cmdline "run64=$run64"
else
    if [ "$use_lab" = 0 ]; then
        echo "demo: this host's KVM cannot run a standard guest kernel (no kvm_intel/kvm_amd: $(ls /sys/module | grep -E '^kvm' | tr '\n' ' ')): booting inside the lab"
    fi
    scenario=$(mktemp /tmp/vmm-demo-scenario.XXXXXX)
    trap 'rm -f "$scenario"' EXIT
    cat >"$scenario" <<SCEN
#!/bin/sh
cp /lab/rootfs.ext4 /tmp/rootfs.ext4
exec /lab/bin/vmm --kernel /lab/vmlinux --rootfs /tmp/rootfs.ext4 -v --cmdline 'run64=$run64'
SCEN
    tests/lab/lab run --bin "$vmm" --file "$GUEST_VMLINUX:/lab/vmlinux" --file "$ROOTFS:/lab/rootfs.ext4" -- "$scenario"
fi
