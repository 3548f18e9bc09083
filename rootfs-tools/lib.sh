# shellcheck shell=bash
# Shared helpers for rootfs-tools/*.sh and tests/lab/lab. Source it; do not run it.
# Callers set `prog` (used in messages) before sourcing.

vmm_cache=${VMM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmm}

log() { echo "[${prog:-vmm}] $*" >&2; }
die() { echo "${prog:-vmm}: error: $*" >&2; exit "${die_status:-1}"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# ensure_pkgs PKG... — install missing Debian packages (apt-get update only when needed).
ensure_pkgs() {
    local p missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 \
        || { as_root apt-get update >&2 \
             && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2; } \
        || die "could not install ${missing[*]} with apt-get (is a Debian mirror reachable?)"
}

# sha_of FILE — sha256 of a file's content (memoised by path, size, mtime, inode).
sha_of() {
    local f=$1 st memo
    st=$(stat -L -c '%s %Y %i %d' -- "$f") || die "cannot stat '$f'"
    memo="$vmm_cache/hash/$(printf '%s %s' "$(realpath -- "$f")" "$st" | sha256sum | cut -c1-32)"
    if [ -s "$memo" ]; then cat "$memo"; return 0; fi
    local h
    h=$(sha256sum -- "$f" | cut -c1-64) || die "cannot read '$f'"
    mkdir -p "$vmm_cache/hash"
    printf '%s\n' "$h" >"$memo.$$" && mv -f "$memo.$$" "$memo"
    printf '%s\n' "$h"
}

# lib_deps BIN — print the absolute paths of every shared object BIN needs
# (as the dynamic loader resolves them on this host, incl. the loader itself).
# Prints nothing for a static binary; dies on an unresolved library.
lib_deps() {
    local bin=$1 out
    [ -f "$bin" ] || die "'$bin' is not a file"
    if ! out=$(LC_ALL=C ldd -- "$bin" 2>&1); then
        case "$out" in
            *"not a dynamic executable"*|*"statically linked"*) return 0 ;;
            *) die "ldd '$bin' failed: $out" ;;
        esac
    fi
    case "$out" in *"statically linked"*) return 0 ;; esac
    if grep -q 'not found' <<<"$out"; then
        die "'$bin' needs libraries that are not installed: $(grep 'not found' <<<"$out" | awk '{print $1}' | tr '\n' ' ')"
    fi
    # "libx.so.1 => /path/libx.so.1 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)"
    awk '$2 == "=>" && $3 ~ /^\// { print $3; next } $1 ~ /^\// { print $1 }' <<<"$out" | sort -u
}

# stage_file SRC DEST_IN_ROOT ROOT — copy SRC (dereferenced) to ROOT/DEST, creating parents.
stage_file() {
    local src=$1 dest=$2 root=$3
    mkdir -p -- "$root$(dirname -- "$dest")"
    cp -L --preserve=mode -- "$src" "$root$dest" || die "cannot copy '$src' to '$dest'"
}

# stage_bin SRC DEST ROOT — stage a binary at DEST plus its libraries at their host paths.
stage_bin() {
    local src=$1 dest=$2 root=$3 lib libs
    libs=$(lib_deps "$src") || exit 1
    stage_file "$src" "$dest" "$root"
    while IFS= read -r lib; do
        [ -n "$lib" ] || continue
        [ -e "$root$lib" ] || stage_file "$lib" "$lib" "$root"
    done <<<"$libs"
}

# bin_key SRC — identity of a binary and its libraries, for cache keys.
bin_key() {
    local src=$1 lib libs h
    libs=$(lib_deps "$src") || exit 1
    h=$(sha_of "$src") || exit 1
    echo "bin $h"
    while IFS= read -r lib; do
        [ -n "$lib" ] || continue
        h=$(sha_of "$lib") || exit 1
        echo "lib $lib $h"
    done <<<"$libs"
}
