#!/usr/bin/env bash
# Build the tenant VM's root file system: busybox, the statically linked vmm-agent and a
# run script for the test init that mounts cgroup2 (memory, cpu, pids for children),
# mounts the scratch disk at /var/lib/vmm-agent and runs the agent, restarting it if it
# dies. See docs/agent.md.
#
# Usage: rootfs-tools/mkagentfs.sh [--agent PATH] [-o OUT]
#
# --agent PATH   a statically linked vmm-agent (default: build it with
#                RUSTFLAGS=-Ctarget-feature=+crt-static --target x86_64-unknown-linux-gnu).
# -o OUT         write the image to OUT instead of the cache.
#
# The image is made by mkrootfs.sh and cached like its images ($VMM_CACHE/rootfs/<key>.ext4,
# keyed by every input, the agent binary included). The last stdout line is its path.
#
# Guest: /dev/vda this image (read-only is fine), /dev/vdb the scratch disk (ext4, made by
# the host), a virtio-vsock device. Kernel parameters read by the run script:
#   agent_port=N        vsock port (default 1024)
#   agent_scratch=DEV   scratch device (default /dev/vdb)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
prog=mkagentfs
# shellcheck source=rootfs-tools/lib.sh
. "$here/lib.sh"

agent=""
out=()
while [ $# -gt 0 ]; do
    case "$1" in
        --agent) [ $# -ge 2 ] || die "--agent needs a path"; agent=$2; shift 2 ;;
        -o) [ $# -ge 2 ] || die "-o needs a path"; out=(-o "$2"); shift 2 ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

if [ -z "$agent" ]; then
    command -v cargo >/dev/null || die "cargo is missing: install Rust, or pass --agent"
    log "building the static vmm-agent"
    # The flags apply to the explicit target only, so the host's build of the other crates
    # (and of vmm) is unchanged; the output goes to target/x86_64-unknown-linux-gnu/.
    (cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --release --target x86_64-unknown-linux-gnu -p vmm-agent >&2) \
        || die "cargo build of vmm-agent failed"
    agent=$repo/target/x86_64-unknown-linux-gnu/release/vmm-agent
fi
[ -f "$agent" ] || die "--agent '$agent' is not a file"
[ -z "$(lib_deps "$agent")" ] || die "'$agent' is dynamically linked: the agent must be static"

stage=$(mktemp -d "${TMPDIR:-/tmp}/mkagentfs.XXXXXX")
trap 'rm -rf -- "$stage"' EXIT

# Where the scratch disk is mounted: the directory must exist in the (read-only) image.
echo "The scratch disk (/dev/vdb) is mounted here." >"$stage/scratch-mountpoint"

cat >"$stage/agent-run.sh" <<'EOF'
#!/bin/sh
# vmm tenant VM (rootfs-tools/mkagentfs.sh): cgroups, the scratch disk, then vmm-agent,
# restarted whenever it exits. Runs as the test init's command (/etc/vmm/run.sh).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
log() { echo "vmm-agentfs: $*"; }
state=/var/lib/vmm-agent
port=${agent_port:-1024}
scratch=${agent_scratch:-/dev/vdb}

if ! grep -q '^[^ ]* /sys/fs/cgroup cgroup2 ' /proc/mounts; then
    mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup || { log "error: cannot mount cgroup2 on /sys/fs/cgroup"; exit 1; }
fi
for c in memory cpu pids; do
    echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null \
        || log "warning: cannot enable the $c controller for the containers"
done

if ! grep -q "^[^ ]* $state " /proc/mounts; then
    mount -t ext4 -o rw,noatime "$scratch" "$state" \
        || { log "error: cannot mount the scratch disk $scratch (ext4) on $state"; exit 1; }
fi

while :; do
    vmm-agent --listen "vsock:$port" --state-dir "$state"
    log "vmm-agent exited with status $?; restarting in 1 s"
    sleep 1
done
EOF

"$here/mkrootfs.sh" --add-bin "$agent:/usr/local/bin/vmm-agent" \
    --add-file "$stage/scratch-mountpoint:/var/lib/vmm-agent/.scratch-mountpoint" \
    --run-script "$stage/agent-run.sh" "${out[@]}"
