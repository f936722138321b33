#!/bin/sh
# virtio-fs rows of `make bench`, run where standard KVM is (the test host): sequential read and
# write of a 256 MiB file and small-file metadata operations, in the guest through a husk-vmm
# virtio-fs share and on the host's page cache, in one run. Usage: fs_bench.sh HUSKCTL
set -u
huskctl=$1
d=$(mktemp -d /tmp/husk-fsbench.XXXXXX)
trap 'rm -rf "$d"' EXIT
mkdir -p "$d/meta"
head -c 268435456 /dev/zero > "$d/big"

# The workload, the same on both sides: prints "read MB/s", "write MB/s", "meta ops/s".
cat > "$d/work.sh" <<'W'
dir=$1
up() { cut -d' ' -f1 /proc/uptime; }
rate() { echo "$1 $2 $3" | awk '{ d = $2 - $1; if (d <= 0) d = 0.01; printf "%.0f", $3 / d }'; }
t0=$(up); dd if=$dir/big of=/dev/null bs=1M 2>/dev/null; t1=$(up)
echo "read $(rate $t0 $t1 268.435456)"
t0=$(up); dd if=/dev/zero of=$dir/w bs=1M count=256 2>/dev/null; t1=$(up)
echo "write $(rate $t0 $t1 268.435456)"
rm -f $dir/w
t0=$(up); i=0
while [ $i -lt 300 ]; do : > $dir/meta/$i; [ -e $dir/meta/$i ]; rm $dir/meta/$i; i=$((i+1)); done
t1=$(up)
echo "meta $(rate $t0 $t1 900)"
W
# Host page cache: read the file once so it is cached. Both sides run the workload with busybox.
cat "$d/big" > /dev/null
host=$(timeout 240 busybox sh "$d/work.sh" "$d")
guest=$(timeout 240 "$huskctl" run --memory 512 -v "$d:/mnt" -- /bin/sh /mnt/work.sh /mnt)
val() { echo "$1" | awk -v k="$2" '$1 == k { print $2 }'; }
row() {
  h=$(val "$host" "$1"); g=$(val "$guest" "$1")
  ratio=$(awk -v g="$g" -v h="$h" 'BEGIN { if (h > 0) printf "%.2f", g / h; else print "n/a" }')
  echo "| $2 | $g | $h | $ratio |"
}
echo "| virtio-fs (256 MiB file, busybox dd bs=1M; 300 x create+stat+unlink) | guest | host page cache | guest / host |"
echo "|---|---|---|---|"
row read "sequential read, MB/s"
row write "sequential write, MB/s"
row meta "metadata ops/s"
