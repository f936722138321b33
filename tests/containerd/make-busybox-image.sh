#!/usr/bin/env bash
# Builds a busybox container image as an OCI image layout tarball, offline.
#
#   tests/containerd/make-busybox-image.sh OUT.tar [NAME]
#
# NAME defaults to docker.io/library/busybox:latest. The result imports with
#   ctr -a SOCK -n NS images import OUT.tar
#
# The image has a single layer: the host's static busybox (Debian's busybox-static, /bin/busybox;
# override with BUSYBOX=/path) as /bin/busybox, one symlink in /bin per applet it lists, a minimal
# /etc/passwd and /etc/group (root 0, nobody 65534) and the usual empty directories. Its config
# has no Entrypoint, Cmd ["sh"] (or IMAGE_CMD, a JSON array of strings) and a standard PATH.
#
# The output depends only on the busybox binary, NAME and this script: every file has a fixed
# owner, mode and mtime, tar entries are sorted and gzip stores no name or time. It needs only
# bash, coreutils, tar and gzip (the small JSON documents are written with printf) and starts few
# processes: ~0.15 s on the host, 1.4-2 s inside the TCG test host. env.sh caches the result.
set -euo pipefail

usage() {
  sed -n '2,6s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
  exit 2
}

if [ $# -lt 1 ] || [ $# -gt 2 ]; then usage; fi
out=$1
name=${2:-docker.io/library/busybox:latest}
busybox=${BUSYBOX:-/bin/busybox}
cmd=${IMAGE_CMD:-'["sh"]'}

die() {
  echo "make-busybox-image: $*" >&2
  exit 1
}

# NAME is written into JSON as is: allow only what image references are made of.
case "$name" in
  '' | *[!A-Za-z0-9._:/@+-]*) die "'$name' does not look like an image reference" ;;
esac
# The tag for org.opencontainers.image.ref.name: what follows the last ':' unless that is part of
# a registry host:port; "latest" when NAME has no tag.
ref=latest
last=${name##*/}
case "$last" in
  *@*) ref=${last#*@} ;;
  *:*) ref=${last##*:} ;;
esac

case "$cmd" in
  '['*']') ;;
  *) die "IMAGE_CMD '$cmd' is not a JSON array" ;;
esac
case "$cmd" in
  *[!A-Za-z0-9._/\ \"\[\],:=-]*) die "IMAGE_CMD '$cmd' holds characters this script does not escape" ;;
esac
[ -x "$busybox" ] || die "no busybox at $busybox (apt-get install busybox-static)"
# Under TCG every external command costs some 40 ms, so this script forks as little as it can:
# bash builtins where they do, one tool call per job.
export LC_ALL=C
umask 022
# A dynamically linked busybox would not run in an image without a libc: look for an ELF
# interpreter name in its first bytes.
IFS= read -r -d '' -N 4096 head <"$busybox" || true
case "$head" in
  *ld-linux* | *ld-musl*) die "$busybox is not statically linked (install busybox-static, or set BUSYBOX)" ;;
esac

case "$HOSTTYPE" in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  *) arch=$HOSTTYPE ;;
esac

tmp=$(mktemp -d "${TMPDIR:-/tmp}/husk-busybox-image.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# --- the layer's file tree -----------------------------------------------------------------
# Modes come from the umask (0755 directories, 0644 files) except /root and /tmp.
r=$tmp/rootfs
blobs=$tmp/oci/blobs/sha256
mkdir -p "$r"/bin "$r"/dev "$r"/etc "$r"/proc "$r"/sys "$blobs"
mkdir -m 0700 "$r/root"
mkdir -m 1777 "$r/tmp"
cp "$busybox" "$r/bin/busybox"
applets=$("$busybox" --list) || die "$busybox --list failed"
# One symlink per applet. `busybox --install -s DIR` makes them all in one process (a loop of `ln`
# costs a fork per applet, seconds under TCG); its links point to the absolute path of the copy,
# which the tar below rewrites to "busybox". Fall back to `ln` should an applet be missing.
"$r/bin/busybox" --install -s "$r/bin" 2>/dev/null || true
for a in $applets; do
  case "$a" in
    busybox | */* | '') continue ;;
  esac
  [ -L "$r/bin/$a" ] || ln -sfn busybox "$r/bin/$a"
done
printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' \
  'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' >"$r/etc/passwd"
printf '%s\n' 'root:x:0:' 'nobody:x:65534:' >"$r/etc/group"

# Deterministic tar: sorted, fixed owner and mtime, ustar (no pax headers with atimes).
# Symlink targets that name the staged busybox by its absolute path become plain "busybox".
dtar() {
  local dir=$1
  shift
  tar -C "$dir" --sort=name --format=ustar --owner=0 --group=0 --numeric-owner \
    --mtime=@0 --transform='s|^/.*/bin/busybox$|busybox|RH' -cf - "$@"
}

# The layer: its uncompressed digest is the diff_id, its gzip digest the blob name.
dtar "$r" bin dev etc proc root sys tmp >"$tmp/layer.tar"
gzip -n -6 -c "$tmp/layer.tar" >"$tmp/layer.tar.gz"
sums=$(sha256sum "$tmp/layer.tar" "$tmp/layer.tar.gz")
diff_id=${sums%% *}
layer_digest=${sums#*$'\n'}
layer_digest=${layer_digest%% *}
layer_size=$(stat -c %s "$tmp/layer.tar.gz")
mv "$tmp/layer.tar.gz" "$blobs/$layer_digest"

# Stores JSON text $1 (ASCII) as a blob; sets blob_digest and blob_size.
put_blob() {
  printf '%s' "$1" >"$tmp/blob.json"
  blob_digest=$(sha256sum "$tmp/blob.json")
  blob_digest=${blob_digest%% *}
  blob_size=${#1}
  printf '%s' "$1" >"$blobs/$blob_digest"
}

# --- config, manifest, index ----------------------------------------------------------------
path='/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
printf -v json '{"architecture":"%s","os":"linux","created":"1970-01-01T00:00:00Z","config":{"Env":["PATH=%s"],"Cmd":%s},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"husk tests/containerd/make-busybox-image.sh"}]}' \
  "$arch" "$path" "$cmd" "$diff_id"
put_blob "$json"
config_digest=$blob_digest
config_size=$blob_size

printf -v json '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%d}]}' \
  "$config_digest" "$config_size" "$layer_digest" "$layer_size"
put_blob "$json"
manifest_digest=$blob_digest
manifest_size=$blob_size

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"platform":{"architecture":"%s","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
  "$manifest_digest" "$manifest_size" "$arch" "$name" "$ref" >"$tmp/oci/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' >"$tmp/oci/oci-layout"

# Written beside OUT and renamed, so a reader never sees half a tarball.
part="$out.part.$$"
dtar "$tmp/oci" oci-layout index.json blobs >"$part"
mv -f "$part" "$out"
