#!/usr/bin/env bash
# Builds the husk guest initramfs: our agent as /init, a static busybox (debug shell and test
# tool) with its applet links, and the empty mount points the agent uses.
# Usage: build-initramfs.sh AGENT_BINARY OUTPUT
set -euo pipefail
agent=${1:?usage: build-initramfs.sh AGENT OUTPUT}
out=${2:?usage: build-initramfs.sh AGENT OUTPUT}
busybox=/bin/busybox
[ -x "$agent" ] || { echo "guest-image: agent $agent is missing: build it first (make agent)" >&2; exit 1; }
if ! file -L "$busybox" 2>/dev/null | grep -q "statically linked"; then
  echo "guest-image: $busybox is not the static busybox: install busybox-static (make deps)" >&2; exit 1
fi
if ! file -L "$agent" | grep -Eq "static(-pie)? linked|statically linked"; then
  echo "guest-image: $agent is dynamically linked; build it with -C target-feature=+crt-static" >&2; exit 1
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,run,tmp,root,etc,mnt}
install -m 0755 "$agent" "$stage/init"
install -m 0755 "$busybox" "$stage/bin/busybox"
for applet in $("$busybox" --list-full); do
  [ -e "$stage/$applet" ] || ln -s /bin/busybox "$stage/$applet"
done
# The kernel opens /dev/console for init before anything is mounted on /dev.
if [ "$(id -u)" = 0 ]; then
  mknod -m 0600 "$stage/dev/console" c 5 1
fi
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$stage/etc/passwd"
printf 'root:x:0:\n' > "$stage/etc/group"

# Reproducible: fixed order, owner and timestamps; uncompressed, so the guest does not spend
# boot time decompressing.
find "$stage" -exec touch -h -d @0 {} +
mkdir -p "$(dirname "$out")"
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible) > "$out.tmp"
mv "$out.tmp" "$out"
echo "guest-image: $out ($(du -k "$out" | cut -f1) KiB)"
