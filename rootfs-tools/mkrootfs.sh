#!/usr/bin/env bash
# Build an ext4 root filesystem image for vmm guests from Debian's busybox-static.
#
# Usage: rootfs-tools/mkrootfs.sh [--add-bin SRC[:DEST]]... [--add-file SRC:DEST]...
#                                 [--run-script FILE] [--size MiB] [-o OUT]
#
# --add-bin SRC[:DEST]   a host binary (default DEST /usr/local/bin/<name>) plus every
#                        shared library it needs (ldd, incl. the loader) at its host path.
# --add-file SRC:DEST    a file at DEST (absolute) in the image; DEST ending in / keeps
#                        the name.
# --run-script FILE      installed as /etc/vmm/run.sh: the command the test init runs
#                        when the kernel command line has no run= or run64=.
# --size MiB             image size (default: contents + 50% + 16 MiB).
# -o OUT                 write the image to OUT instead of the cache.
#
# Without -o the image is cached as $VMM_CACHE/rootfs/<key>.ext4, keyed by every input
# (busybox, init scripts, added files, this script, size), so a re-run returns at once.
# The last stdout line is the image path. No root mounts or loop devices are used
# (mkfs.ext4 -d); writes are atomic (temporary file + rename).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
prog=mkrootfs
# shellcheck source=rootfs-tools/lib.sh
. "$here/lib.sh"

bins=()
files=()
run_script=""
size=""
out=""

while [ $# -gt 0 ]; do
    case "$1" in
        --add-bin) [ $# -ge 2 ] || die "--add-bin needs a path"; bins+=("$2"); shift 2 ;;
        --add-file) [ $# -ge 2 ] || die "--add-file needs SRC:DEST"; files+=("$2"); shift 2 ;;
        --run-script) [ $# -ge 2 ] || die "--run-script needs a file"; run_script=$2; shift 2 ;;
        --size) [ $# -ge 2 ] || die "--size needs a number of MiB"; size=$2; shift 2 ;;
        -o) [ $# -ge 2 ] || die "-o needs a path"; out=$2; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

[ -z "$size" ] || [[ $size =~ ^[1-9][0-9]*$ ]] || die "--size must be a positive number of MiB, not '$size'"
[ -z "$run_script" ] || [ -r "$run_script" ] || die "--run-script '$run_script' is not readable"

ensure_pkgs busybox-static e2fsprogs
busybox=/bin/busybox
[ -x "$busybox" ] || die "$busybox is missing: install busybox-static"
[ -z "$(lib_deps "$busybox")" ] || die "$busybox is dynamically linked: install busybox-static"

# --- Parse the additions into (src, dest) pairs ------------------------------------
bin_src=() bin_dest=() file_src=() file_dest=()
for b in "${bins[@]}"; do
    src=${b%%:*}
    dest=/usr/local/bin/$(basename -- "$src")
    [[ $b == *:* ]] && dest=${b#*:}
    [ -f "$src" ] || die "--add-bin '$src' is not a file"
    [[ $dest == /* ]] || die "--add-bin destination '$dest' must be absolute"
    bin_src+=("$src"); bin_dest+=("$dest")
done
for f in "${files[@]}"; do
    [[ $f == *:* ]] || die "--add-file needs SRC:DEST, got '$f'"
    src=${f%%:*} dest=${f#*:}
    [ -f "$src" ] || die "--add-file '$src' is not a file"
    [[ $dest == /* ]] || die "--add-file destination '$dest' must be absolute"
    [[ $dest == */ ]] && dest=$dest$(basename -- "$src")
    file_src+=("$src"); file_dest+=("$dest")
done

# --- Cache key: every input -------------------------------------------------------
stage=$(mktemp -d "${TMPDIR:-/tmp}/mkrootfs.XXXXXX")
tmpimg=""
cleanup() { rm -rf -- "$stage"; [ -z "$tmpimg" ] || rm -f -- "$tmpimg"; }
trap cleanup EXIT
keyin=$stage/key
{
    echo "mkrootfs v1 size=$size"
    cat "$0" "$here/lib.sh" "$here"/init/*
    echo "busybox $(sha_of "$busybox")"
} >"$keyin"
for i in "${!bin_src[@]}"; do
    echo "add-bin ${bin_dest[$i]}" >>"$keyin"
    bin_key "${bin_src[$i]}" >>"$keyin"
done
for i in "${!file_src[@]}"; do
    h=$(sha_of "${file_src[$i]}")
    echo "add-file ${file_dest[$i]} $(stat -L -c %a -- "${file_src[$i]}") $h" >>"$keyin"
done
if [ -n "$run_script" ]; then echo "run-script"; cat -- "$run_script"; fi >>"$keyin"
mkfs.ext4 -V 2>&1 | sed -n 1p >>"$keyin"
key=$(sha256sum "$keyin" | cut -c1-24)

if [ -z "$out" ]; then
    out="$vmm_cache/rootfs/$key.ext4"
    if [ -s "$out" ]; then
        log "cached: $out"
        echo "$out"
        exit 0
    fi
fi
outdir=$(dirname -- "$out")
mkdir -p -- "$outdir" || die "cannot create '$outdir'"

root=$stage/root
mkdir -p "$root"

# --- Layout -------------------------------------------------------------------------
for d in bin sbin usr/bin usr/sbin usr/local/bin usr/local/sbin etc/init.d etc/vmm \
         proc sys dev tmp run root mnt var/log var/tmp home; do
    mkdir -p "$root/$d"
done
chmod 1777 "$root/tmp" "$root/var/tmp"
chmod 0700 "$root/root"
cp "$busybox" "$root/bin/busybox"
chmod 0755 "$root/bin/busybox"
# One symlink per applet, at the path busybox itself names (bin/sh, sbin/init, ...).
while IFS= read -r applet; do
    [ -n "$applet" ] && [ "$applet" != bin/busybox ] || continue
    mkdir -p "$root/$(dirname "$applet")"
    rel=$(realpath -m --relative-to="$root/$(dirname "$applet")" "$root/bin/busybox")
    ln -sf "$rel" "$root/$applet"
done < <("$busybox" --list-full)
[ -L "$root/sbin/init" ] || die "busybox has no init applet"

install -m 0644 "$here/init/inittab" "$root/etc/inittab"
install -m 0755 "$here/init/rcS" "$root/etc/init.d/rcS"
install -m 0755 "$here/init/run" "$root/etc/vmm/run"
install -m 0755 "$here/init/shutdown" "$root/etc/vmm/shutdown"
echo vmm-guest >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tvmm-guest\n' >"$root/etc/hosts"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\ntty:x:5:\nnogroup:x:65534:\n' >"$root/etc/group"
printf 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nexport PS1='"'"'\\h:\\w\\$ '"'"'\n' \
    >"$root/etc/profile"
echo "/dev/root / ext4 rw 0 1" >"$root/etc/fstab"
[ -z "$run_script" ] || install -m 0755 "$run_script" "$root/etc/vmm/run.sh"

for i in "${!bin_src[@]}"; do
    stage_bin "${bin_src[$i]}" "${bin_dest[$i]}" "$root"
    chmod 0755 "$root${bin_dest[$i]}"
done
for i in "${!file_src[@]}"; do
    stage_file "${file_src[$i]}" "${file_dest[$i]}" "$root"
done

# --- Image ----------------------------------------------------------------------------
used=$(du -sm --apparent-size "$root" | cut -f1)
if [ -z "$size" ]; then
    size=$(( used + used / 2 + 16 ))
elif [ "$size" -lt $(( used + 4 )) ]; then
    die "--size $size MiB is too small for $used MiB of contents"
fi

tmpimg=$(mktemp "$outdir/.$(basename -- "$out").XXXXXX")
# Deterministic UUID and directory hash seed, derived from the key.
uuid=$(printf '%s' "$key" | sha256sum | sed -E 's/^(.{8})(.{4})(.{4})(.{4})(.{12}).*/\1-\2-\3-\4-\5/')
mkfs_log=$(mkfs.ext4 -F -q -L vmm-root -U "$uuid" -E "hash_seed=$uuid" \
           -d "$root" "$tmpimg" "${size}M" 2>&1) || die "mkfs.ext4 failed: $mkfs_log"
chmod 0644 "$tmpimg"
mv -f -- "$tmpimg" "$out"
tmpimg=""
log "built $out (${size} MiB, ${used} MiB used)"
echo "$out"
