#!/usr/bin/env bash
# Build the vmm guest kernel (vmlinux + bzImage) and cache it outside the checkout.
#
# Usage: guest-kernel/build.sh [--tree DIR] [--fragment FILE]... [-j N] [--quiet]
#
# Default source: Debian's linux-source-6.1 package (installed when missing).
# --tree DIR       build another kernel tree instead (e.g. a PVM-enabled one);
#                  the tree must be clean (`make mrproper`): vmm builds out of tree.
# --fragment FILE  extra config fragment applied after microvm.config (repeatable).
# -j N             parallel jobs (default: number of CPUs).
#
# The last line on stdout is the directory holding vmlinux, bzImage and config.
# The cache key covers the source version, every fragment and the build recipe
# version below, so a second run with the same inputs returns at once.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Bump when the way the kernel is built changes (not for comments or messages):
# it is part of the cache key, with the source version and every fragment.
recipe=1
cache=${VMM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmm}
tree=""
fragments=("$here/microvm.config")
jobs=$(nproc)
quiet=0

log() { echo "[guest-kernel] $*" >&2; }
die() { echo "guest-kernel: error: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --tree) [ $# -ge 2 ] || die "--tree needs a directory"; tree=$2; shift 2 ;;
        --fragment) [ $# -ge 2 ] || die "--fragment needs a file"; fragments+=("$2"); shift 2 ;;
        -j) [ $# -ge 2 ] || die "-j needs a number"; jobs=$2; shift 2 ;;
        --quiet) quiet=1; shift ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

for f in "${fragments[@]}"; do
    [ -r "$f" ] || die "config fragment '$f' is not readable"
done

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need_pkgs=(gcc make bc bison flex libelf-dev libssl-dev xz-utils cpio)
[ -n "$tree" ] || need_pkgs+=(linux-source-6.1)
missing=()
for p in "${need_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing build dependencies: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 \
        || { as_root apt-get update >&2 && as_root env DEBIAN_FRONTEND=noninteractive \
             apt-get install -y --no-install-recommends "${missing[@]}" >&2; } \
        || die "could not install ${missing[*]} with apt-get"
fi

# --- Source tree and its identity ---------------------------------------------
if [ -z "$tree" ]; then
    ver=$(dpkg-query -W -f='${Version}' linux-source-6.1)
    tarball=/usr/src/linux-source-6.1.tar.xz
    [ -r "$tarball" ] || die "$tarball missing although linux-source-6.1 is installed"
    src="$cache/src/linux-source-6.1_$ver"
    if [ ! -f "$src/Makefile" ]; then
        log "unpacking linux-source-6.1 $ver into $src"
        mkdir -p "$cache/src"
        tmp=$(mktemp -d "$cache/src/.unpack.XXXXXX")
        tar -C "$tmp" -xf "$tarball"
        rm -rf "$src"
        mv "$tmp/linux-source-6.1" "$src"
        rmdir "$tmp"
    fi
    source_id="debian linux-source-6.1 $ver"
else
    [ -f "$tree/Makefile" ] || die "'$tree' is not a kernel tree (no Makefile)"
    src=$(cd "$tree" && pwd)
    [ ! -f "$src/.config" ] || die "'$src' has a .config: run 'make mrproper' there first (vmm builds out of tree)"
    kver=$(make -s -C "$src" kernelversion 2>/dev/null) || die "'$src': make kernelversion failed"
    if git -C "$src" rev-parse HEAD >/dev/null 2>&1; then
        rev=$(git -C "$src" rev-parse HEAD)
        dirty=$(git -C "$src" status --porcelain --untracked-files=no | sha256sum | cut -c1-16)
        source_id="tree $src $kver git $rev $dirty"
    else
        newest=$(find "$src" -type f -printf '%T@\n' | sort -n | tail -1)
        source_id="tree $src $kver mtime $newest"
    fi
fi

key=$( { echo "$source_id"; echo "recipe $recipe"; for f in "${fragments[@]}"; do echo "--- fragment"; cat "$f"; done; } \
       | sha256sum | cut -c1-20)
out="$cache/kernel/$key"
if [ -f "$out/vmlinux" ] && [ -f "$out/bzImage" ]; then
    log "cached: $out ($source_id)"
    echo "$out"
    exit 0
fi

# One build per key at a time: a second caller waits, then finds the result.
mkdir -p "$cache/kernel"
exec 9>"$cache/kernel/.lock-$key"
if ! flock -n 9; then
    log "another build of $key is running; waiting for it"
    flock 9
fi
if [ -f "$out/vmlinux" ] && [ -f "$out/bzImage" ]; then
    log "cached: $out ($source_id)"
    echo "$out"
    exit 0
fi

log "building $source_id with ${#fragments[@]} fragment(s), $jobs job(s); key $key"
build="$cache/build/$key"
rm -rf "$build"
mkdir -p "$build"
blog="$build/build.log"

make -s -C "$src" O="$build" tinyconfig >"$blog" 2>&1 || { tail -20 "$blog" >&2; die "make tinyconfig failed"; }
"$src/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "${fragments[@]}" >>"$blog" 2>&1 \
    || { tail -20 "$blog" >&2; die "merging config fragments failed"; }
make -s -C "$src" O="$build" olddefconfig >>"$blog" 2>&1 || { tail -20 "$blog" >&2; die "make olddefconfig failed"; }

# Every option of every fragment must have survived olddefconfig.
lost=()
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=*) want=$line ;;
        "# CONFIG_"*" is not set") want=$line ;;
        *) continue ;;
    esac
    name=${want#\# }; name=${name%%=*}; name=${name%% *}
    if [[ $want == \#* ]]; then
        # "not set" is satisfied by the line saying so or by the option being absent.
        grep -q "^$name=" "$build/.config" && lost+=("$name (wanted: not set, got: $(grep "^$name=" "$build/.config"))")
    else
        grep -qxF "$want" "$build/.config" \
            || lost+=("$name (wanted: ${want#*=}, got: $(grep -E "^($name=|# $name is not set)" "$build/.config" || echo absent))")
    fi
done < <(cat "${fragments[@]}")
if [ ${#lost[@]} -gt 0 ]; then
    printf '  %s\n' "${lost[@]}" >&2
    die "${#lost[@]} option(s) of the fragments did not survive olddefconfig (missing dependencies?)"
fi
log "config verified: every fragment option is set as asked"

make -C "$src" O="$build" -j"$jobs" vmlinux bzImage >>"$blog" 2>&1 &
pid=$!
start=$(date +%s)
while kill -0 "$pid" 2>/dev/null; do
    sleep 10
    if [ "$quiet" = 0 ] && kill -0 "$pid" 2>/dev/null; then
        n=$(grep -c '^  CC ' "$blog" || true)
        log "compiling: $n objects after $(( $(date +%s) - start ))s (log: $blog)"
    fi
done
wait "$pid" || { tail -40 "$blog" >&2; die "kernel build failed (full log: $blog)"; }

tmp=$(mktemp -d "$cache/kernel.XXXXXX" 2>/dev/null || { mkdir -p "$cache/kernel" && mktemp -d "$cache/kernel/.new.XXXXXX"; })
cp "$build/vmlinux" "$tmp/vmlinux"
cp "$build/arch/x86/boot/bzImage" "$tmp/bzImage"
cp "$build/.config" "$tmp/config"
echo "$source_id" >"$tmp/source"
mkdir -p "$cache/kernel"
rm -rf "$out"
mv "$tmp" "$out"
rm -rf "$build"
log "built in $(( $(date +%s) - start ))s: $out"
echo "$out"
