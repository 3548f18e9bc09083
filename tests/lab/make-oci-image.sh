#!/usr/bin/env bash
# Build a small container image from the host's busybox-static, without docker: one layer
# with /bin/busybox, a symlink per applet (busybox --list-full), /etc/passwd, /etc/group,
# /root and /tmp, plus whatever --add puts in. The config runs `sh` with a default PATH.
#
# Usage: tests/lab/make-oci-image.sh [--format oci|oci-tar|docker] [--add SRC:DEST]...
#                                    [--name NAME] -o OUT
#
# --format oci       an OCI image layout directory (oci-layout, index.json, blobs/sha256/)
# --format oci-tar   the same layout packed in a tar file (default)
# --format docker    a classic `docker save` archive (manifest.json, <id>/layer.tar, <id>.json)
# --add SRC:DEST     a host file at DEST (absolute) in the layer, mode kept
# --name NAME        the image's name/tag (default busybox:vmm-test)
# -o OUT             where to write the image (replaced if it exists)
#
# The output is reproducible: entries are sorted, owned by 0:0 with mtime 0, so equal
# inputs give equal digests (and `vmm run` finds the layer in its cache). Prints the layer's
# diff-id (`DIFF_ID=sha256:...`) and, last, OUT. Needs GNU tar, sha256sum and
# busybox-static (Debian's package; installed with apt-get when missing).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
prog=make-oci-image
# shellcheck source=rootfs-tools/lib.sh
. "$here/../../rootfs-tools/lib.sh"

format=oci-tar
name=busybox:vmm-test
out=""
adds=()
while [ $# -gt 0 ]; do
    case "$1" in
        --format) [ $# -ge 2 ] || die "--format needs oci, oci-tar or docker"; format=$2; shift 2 ;;
        --add) [ $# -ge 2 ] || die "--add needs SRC:DEST"; adds+=("$2"); shift 2 ;;
        --name) [ $# -ge 2 ] || die "--name needs a name"; name=$2; shift 2 ;;
        -o) [ $# -ge 2 ] || die "-o needs a path"; out=$2; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
case "$format" in oci|oci-tar|docker) ;; *) die "unknown --format '$format' (oci, oci-tar or docker)" ;; esac
[ -n "$out" ] || die "-o OUT is required"
[[ $name =~ ^[a-zA-Z0-9._/:-]+$ ]] || die "--name '$name': use letters, digits and . _ / : -"

ensure_pkgs busybox-static tar
busybox=/bin/busybox
[ -z "$(lib_deps "$busybox")" ] || die "$busybox is dynamically linked: install busybox-static"

work=$(mktemp -d "${TMPDIR:-/tmp}/make-oci-image.XXXXXX")
trap 'rm -rf -- "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp}
chmod 1777 "$root/tmp"
chmod 0700 "$root/root"
cp -- "$busybox" "$root/bin/busybox"
while IFS= read -r applet; do
    [ -n "$applet" ] && [ "$applet" != bin/busybox ] || continue
    mkdir -p "$root/$(dirname -- "$applet")"
    ln -sf /bin/busybox "$root/$applet"
done < <("$busybox" --list-full)
cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
for a in "${adds[@]}"; do
    [[ $a == *:/* ]] || die "--add needs SRC:DEST with an absolute DEST, got '$a'"
    src=${a%%:*} dest=${a#*:}
    [ -f "$src" ] || die "--add '$src' is not a file"
    mkdir -p -- "$root$(dirname -- "$dest")"
    cp -L --preserve=mode -- "$src" "$root$dest"
done

# The layer: sorted, root-owned, mtime 0, no PAX time records.
layer=$work/layer.tar
tar --create --file "$layer" --directory "$root" --sort=name --format=gnu \
    --owner=0 --group=0 --numeric-owner --mtime=@0 .
diff_hex=$(sha256sum "$layer" | cut -c1-64)
layer_size=$(stat -c %s "$layer")

config=$work/config.json
printf '%s' "{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{\"Env\":[\"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"],\"Cmd\":[\"sh\"],\"WorkingDir\":\"/\"},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$diff_hex\"]}}" >"$config"
config_hex=$(sha256sum "$config" | cut -c1-64)
config_size=$(stat -c %s "$config")

img=$work/image
mkdir -p "$img"
case "$format" in
    oci|oci-tar)
        mkdir -p "$img/blobs/sha256"
        cp -- "$layer" "$img/blobs/sha256/$diff_hex"
        cp -- "$config" "$img/blobs/sha256/$config_hex"
        manifest=$work/manifest.json
        printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$config_hex\",\"size\":$config_size},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:$diff_hex\",\"size\":$layer_size}]}" >"$manifest"
        manifest_hex=$(sha256sum "$manifest" | cut -c1-64)
        manifest_size=$(stat -c %s "$manifest")
        cp -- "$manifest" "$img/blobs/sha256/$manifest_hex"
        printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$img/oci-layout"
        printf '%s' "{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$manifest_hex\",\"size\":$manifest_size,\"annotations\":{\"org.opencontainers.image.ref.name\":\"$name\"},\"platform\":{\"architecture\":\"amd64\",\"os\":\"linux\"}}]}" >"$img/index.json"
        ;;
    docker)
        mkdir -p "$img/$diff_hex"
        cp -- "$layer" "$img/$diff_hex/layer.tar"
        cp -- "$config" "$img/$config_hex.json"
        printf '%s' "[{\"Config\":\"$config_hex.json\",\"RepoTags\":[\"$name\"],\"Layers\":[\"$diff_hex/layer.tar\"]}]" >"$img/manifest.json"
        ;;
esac

rm -rf -- "$out" "$out.tmp.$$"
if [ "$format" = oci ]; then
    cp -r -- "$img" "$out.tmp.$$"
else
    tar --create --file "$out.tmp.$$" --directory "$img" --sort=name --format=gnu \
        --owner=0 --group=0 --numeric-owner --mtime=@0 .
fi
mv -f -- "$out.tmp.$$" "$out"
echo "DIFF_ID=sha256:$diff_hex"
echo "$out"
