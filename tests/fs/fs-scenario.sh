#!/bin/sh
# The virtio-fs scenario, run where standard KVM is (the test host): prepares a share next to a
# marker file, runs guest-checks.sh in a microVM with huskctl, then checks from the host what the
# guest wrote. Usage: fs-scenario.sh HUSKCTL
set -u
huskctl=$1
here=$(cd "$(dirname "$0")" && pwd)
top=$(mktemp -d /tmp/husk-fs.XXXXXX)
d=$top/share
mkdir -p "$d/many" "$top/ro"
echo husk-outside-marker > "$top/outside-marker"
ln -s "$top/outside-marker" "$d/abs-link"
ln -s ../outside-marker "$d/rel-link"
echo keep > "$top/ro/file"
head -c 268435456 /dev/urandom > "$d/big"
(cd "$d/many" && seq 1 10000 | xargs touch)
cp "$here/guest-checks.sh" "$d/guest-checks.sh"
gcc -static -O2 -o "$d/probe" "$here/probe.c" || echo "FAIL build_probe"

"$huskctl" run --memory 512 --all-xattrs -v "$d:/mnt" -v "$top/ro:/ro:ro" -- /bin/sh /mnt/guest-checks.sh
echo "huskctl exited $?"

host_hash=$(sha256sum "$d/big" | cut -d' ' -f1)
if [ "$host_hash" = "$(cat "$d/big.guest-hash" 2>/dev/null)" ]; then echo "ok big_file_same_hash_on_both_sides"; else echo "FAIL big_file_same_hash_on_both_sides: host $host_hash guest $(cat "$d/big.guest-hash" 2>/dev/null)"; fi
if [ "$(cat "$d/from-guest" 2>/dev/null)" = from-guest ]; then echo "ok guest_write_seen_on_host"; else echo "FAIL guest_write_seen_on_host"; fi
if [ "$(cat "$d/mapped" 2>/dev/null)" = mmap-ok ]; then echo "ok mmap_write_seen_on_host"; else echo "FAIL mmap_write_seen_on_host: $(cat "$d/mapped" 2>&1)"; fi
if [ "$(cat "$top/ro/file")" = keep ]; then echo "ok read_only_share_unchanged"; else echo "FAIL read_only_share_unchanged"; fi
rm -rf "$top"
