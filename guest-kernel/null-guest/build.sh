#!/usr/bin/env bash
# Build vmm's null guest (see null-guest.s) and cache it outside the checkout.
#
# Usage: guest-kernel/null-guest/build.sh [--quiet]
#
# Needs only GNU as and ld (binutils, installed with gcc; installed with apt
# when missing). The result is cached as
#   ${VMM_CACHE:-~/.cache/vmm}/null-guest/<key>/null-guest.elf
# where the key hashes the source, the linker script, this script's recipe
# version and the assembler and linker versions: a second run returns at once.
# The last line on stdout is the path of null-guest.elf.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Bump when the way the guest is built changes: it is part of the cache key.
recipe=1
cache=${VMM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmm}
quiet=0

log() { [ "$quiet" = 1 ] || echo "[null-guest] $*" >&2; }
die() { echo "null-guest: error: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --quiet) quiet=1; shift ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v as >/dev/null || ! command -v ld >/dev/null; then
    log "installing binutils (GNU as and ld)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends binutils >&2 \
        || { as_root apt-get update >&2 && as_root env DEBIAN_FRONTEND=noninteractive \
             apt-get install -y --no-install-recommends binutils >&2; } \
        || die "GNU as and ld are missing and binutils could not be installed with apt-get"
fi

src=$here/null-guest.s
script=$here/link.ld
[ -r "$src" ] && [ -r "$script" ] || die "missing $src or $script"

key=$({
    echo "recipe $recipe"
    as --version | head -n 1
    ld --version | head -n 1
    sha256sum <"$src"
    sha256sum <"$script"
} | sha256sum | cut -c1-16)
out=$cache/null-guest/$key
if [ -f "$out/null-guest.elf" ]; then
    log "cached: $out/null-guest.elf"
    echo "$out/null-guest.elf"
    exit 0
fi

mkdir -p "$cache/null-guest"
tmp=$(mktemp -d "$cache/null-guest/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
as --64 -o "$tmp/null-guest.o" "$src"
ld -m elf_x86_64 -nostdlib -static -T "$script" --build-id=none -z max-page-size=0x1000 \
    -z noexecstack -s -o "$tmp/null-guest.elf" "$tmp/null-guest.o"
rm -f "$tmp/null-guest.o"
chmod 755 "$tmp"
# Atomic: a concurrent build of the same key wins or loses as a whole.
if mv -T "$tmp" "$out" 2>/dev/null; then
    trap - EXIT
else
    [ -f "$out/null-guest.elf" ] || die "cannot move the build into $out"
fi
log "built $out/null-guest.elf"
echo "$out/null-guest.elf"
