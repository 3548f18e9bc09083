#!/usr/bin/env bash
# Build a raw data disk with known, verifiable content for block-device tests.
#
# Usage: rootfs-tools/mkdatadisk.sh -o OUT [--size MiB]
#
# Layout (512-byte sectors, text only, so busybox tools can check it in a guest):
#   sector 0     "VMM-DATA-DISK v1\n" then "sectors=<N>\n", padded with '.' to 511 bytes + "\n"
#   sector i>0   16 identical 32-byte lines "VMMDATA sector=<i, 10 digits> .....\n"
# The content depends only on the size, so its sha256 is fixed for a given size
# (default 8 MiB: see rootfs-tools/README.md). In a guest:
#   head -n 1 /dev/vdb                                    -> VMM-DATA-DISK v1
#   dd if=/dev/vdb bs=512 skip=123 count=1 | head -n 1    -> VMMDATA sector=0000000123 .....
#   sha256sum /dev/vdb                                    -> DATA_DISK_SHA256 below
# stdout: DATA_DISK_SIZE=<bytes>, DATA_DISK_SHA256=<hex>, and last the image path.
# Writes atomically (temporary file + rename).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
prog=mkdatadisk
# shellcheck source=rootfs-tools/lib.sh
. "$here/lib.sh"

out=""
size=8
while [ $# -gt 0 ]; do
    case "$1" in
        -o) [ $# -ge 2 ] || die "-o needs a path"; out=$2; shift 2 ;;
        --size) [ $# -ge 2 ] || die "--size needs a number of MiB"; size=$2; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[ -n "$out" ] || die "missing -o OUT (see --help)"
[[ $size =~ ^[1-9][0-9]*$ ]] && [ "$size" -le 4096 ] || die "--size must be 1..4096 MiB, not '$size'"

sectors=$(( size * 2048 ))
bytes=$(( size * 1024 * 1024 ))
outdir=$(dirname -- "$out")
mkdir -p -- "$outdir" || die "cannot create '$outdir'"
tmp=$(mktemp "$outdir/.$(basename -- "$out").XXXXXX")
trap 'rm -f -- "$tmp"' EXIT

awk -v n="$sectors" 'BEGIN {
    hdr = "VMM-DATA-DISK v1\nsectors=" n "\n"
    pad = ""
    while (length(hdr) + length(pad) < 511) pad = pad "."
    printf "%s%s\n", hdr, pad
    for (i = 1; i < n; i++) {
        line = sprintf("VMMDATA sector=%010d .....\n", i)
        printf "%s%s%s%s%s%s%s%s%s%s%s%s%s%s%s%s", line, line, line, line, line, line, line, line,
               line, line, line, line, line, line, line, line
    }
}' >"$tmp" || die "writing '$tmp' failed"

got=$(stat -c %s -- "$tmp")
[ "$got" = "$bytes" ] || die "internal error: wrote $got bytes, expected $bytes"
sha=$(sha256sum -- "$tmp" | cut -c1-64)
chmod 0644 "$tmp"
mv -f -- "$tmp" "$out"
trap - EXIT
echo "DATA_DISK_SIZE=$bytes"
echo "DATA_DISK_SHA256=$sha"
echo "$out"
