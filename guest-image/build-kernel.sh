#!/usr/bin/env bash
# Builds the husk guest kernel from Debian's linux-source-6.1 and our config fragment.
# Output: $1 (default target/guest/vmlinux), an uncompressed ELF with a PVH entry note.
# The build is cached by a hash of its inputs under $HUSK_CACHE (default ~/.cache/husk), so a
# fresh clone on a machine that built the same kernel before copies it instead of rebuilding.
# A cold build prints a line per stage and, while compiling, one every 30 s, with elapsed time.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-target/guest/vmlinux}
cache=${HUSK_CACHE:-$HOME/.cache/husk}
tarball=/usr/src/linux-source-6.1.tar.xz
# Part of the cache key with the source version and the fragment: bump it when a change to the
# build steps below changes the kernel they produce (not for messages or progress output).
recipe=2

[ -f "$tarball" ] || { echo "guest-image: $tarball is missing: install the linux-source-6.1 package (make deps)" >&2; exit 1; }
srcver=$(dpkg-query -W -f='${Version}' linux-source-6.1)
key=$( (echo "$srcver recipe $recipe"; cat "$here/kernel.fragment") | sha256sum | cut -c1-16)
cached="$cache/kernel/$key/vmlinux"

started=$SECONDS
stage() { echo "guest-image: [$((SECONDS - started)) s] $*"; }

if [ ! -f "$cached" ]; then
  stage "building kernel $srcver (config $key); a cold build takes 5-10 minutes on 2 cores"
  src="$cache/src/linux-source-$srcver"
  if [ ! -f "$src/Makefile" ]; then
    stage "unpacking $tarball"
    rm -rf "$src.tmp" && mkdir -p "$src.tmp"
    tar -xJf "$tarball" -C "$src.tmp" --strip-components=1
    mv "$src.tmp" "$src"
  fi
  build="$cache/kernel/$key/build"
  rm -rf "$build" && mkdir -p "$build"
  mk() { make -C "$src" O="$build" ARCH=x86_64 "$@"; }
  stage "configuring: tinyconfig + kvm_guest.config + guest-image/kernel.fragment"
  mk -s tinyconfig
  KCONFIG_CONFIG="$build/.config" "$src/scripts/kconfig/merge_config.sh" -m -O "$build" \
    "$build/.config" "$src/kernel/configs/kvm_guest.config" "$here/kernel.fragment" >/dev/null
  mk -s olddefconfig
  # Every line of the fragment must have survived olddefconfig: a silently dropped option is a
  # guest without a feature we rely on.
  missing=0
  while IFS= read -r line; do
    case "$line" in CONFIG_*=n) opt=${line%%=*}; grep -q "^$opt=" "$build/.config" && { echo "guest-image: $opt is still set" >&2; missing=1; } ;;
                    CONFIG_*=*) grep -qx "$line" "$build/.config" || { echo "guest-image: $line did not survive olddefconfig" >&2; missing=1; } ;; esac
  done < "$here/kernel.fragment"
  [ "$missing" = 0 ] || { echo "guest-image: fix guest-image/kernel.fragment" >&2; exit 1; }
  stage "compiling vmlinux with $(nproc) jobs"
  mk -s -j"$(nproc)" KBUILD_BUILD_TIMESTAMP="1970-01-01" KBUILD_BUILD_USER=husk KBUILD_BUILD_HOST=husk vmlinux &
  make_pid=$!
  # Progress while make runs: the number of objects built so far (about 1,900 for this config).
  while kill -0 "$make_pid" 2>/dev/null; do
    for _ in $(seq 30); do
      sleep 1
      kill -0 "$make_pid" 2>/dev/null || break 2
    done
    stage "compiling: $(find "$build" -name '*.o' | wc -l) objects built"
  done
  wait "$make_pid"
  cp "$build/vmlinux" "$cached.tmp"
  strip --strip-debug "$cached.tmp" 2>/dev/null || true
  mv "$cached.tmp" "$cached"
  cp "$build/.config" "$cache/kernel/$key/config"
  rm -rf "$build"
  stage "kernel built"
fi
mkdir -p "$(dirname "$out")"
cp "$cached" "$out.tmp" && mv "$out.tmp" "$out"
echo "guest-image: $out (config $key)"
