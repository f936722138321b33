#!/bin/busybox sh
# /init of the test host's L1 VM (see run.sh and README.md in this folder).
#
# It runs as PID 1 from the initramfs that run.sh builds: busybox, this script, and the kernel
# modules named in /modules/required and /modules/optional (one file name per line, load order).
# It prepares a root that looks like the host's (the host's / over 9p, read-only, with a tmpfs
# overlay on top so the command can write), runs the job that run.sh left in the "io" share, writes
# the job's exit status back there and powers the VM off.
#
# The io share (mounted at /io here, never visible to the command) holds:
#   argv, env   NUL-separated command line and environment   (written by the host)
#   cwd         working directory                             (written by the host)
#   stdin       the command's standard input, if any          (written by the host)
#   share       host path of the optional writable share      (written by the host, optional)
#   stdout, stderr   the command's output, appended as it runs (written here)
#   status      the command's exit status, once it has ended  (written here)
#   error       why the test host could not run the command   (written here)
#
# Every stage prints a "husk-testhost:" marker to the console (ttyS0), which run.sh keeps in a log
# file, so the last marker shows where a failed boot stopped.

/bin/busybox --install -s /bin
export PATH=/bin
export HOME=/

mark() { echo "husk-testhost: $*"; }

# Halt for good: power off, and if that is not possible, reboot, which QEMU's -no-reboot turns into
# an exit as well.
finish() {
  mark "powering off"
  poweroff -f
  sleep 2
  reboot -f
}

# Report a failure of the test host itself (not of the command): to the console always, and to the
# host through the io share when it is mounted.
fail() {
  mark "FAILED: $*"
  if [ "$io_mounted" = 1 ]; then
    echo "$*" >/io/error
  fi
  finish
}

io_mounted=0
mark "stage 1/6: init started"
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

mark "stage 2/6: loading kernel modules"
# busybox insmod does not read the kernel command line: pass each MODULE.PARAM=VALUE found there
# (with - or _ in MODULE) to its module, as modprobe would.
modopts() {
  m=$(echo "${1%.ko}" | tr - _)
  for w in $(cat /proc/cmdline); do
    case "$(echo "${w%%.*}" | tr - _)" in "$m") echo "${w#*.}" ;; esac
  done
}
failed_modules=""
while read -r ko; do
  [ -n "$ko" ] || continue
  # shellcheck disable=SC2046
  insmod "/modules/$ko" $(modopts "$ko") || failed_modules="$failed_modules $ko"
done </modules/required
# Extras for network tests: a missing or failing one is not fatal.
while read -r ko; do
  [ -n "$ko" ] || continue
  insmod "/modules/$ko" 2>/dev/null || mark "optional module $ko did not load"
done </modules/optional

mark "stage 3/6: mounting the host's shares"
opts=trans=virtio,version=9p2000.L,msize=512000
# No cache on the io share: every write of the command reaches the host file at once, so the host
# can stream it while the command runs.
mount -t 9p -o "$opts" io /io || fail "cannot mount the io share (modules that failed:${failed_modules:- none})"
io_mounted=1
case "$failed_modules" in
  *kvm*) fail "kernel modules failed to load:$failed_modules (so there is no /dev/kvm: does the emulated CPU have svm?)" ;;
  ?*) fail "kernel modules failed to load:$failed_modules" ;;
esac
[ -c /dev/kvm ] || fail "no /dev/kvm in the test host (kvm_amd loaded but created no device; does the CPU model have svm?)"
mount -t 9p -o "$opts,ro,cache=loose" hostroot /hostroot || fail "cannot mount the host's root"

mark "stage 4/6: building the overlay root"
mount -t tmpfs -o mode=0755 tmpfs /overlay
mkdir -p /overlay/upper /overlay/work
mount -t overlay overlay -o lowerdir=/hostroot,upperdir=/overlay/upper,workdir=/overlay/work /newroot ||
  fail "cannot mount the overlay root"
r=/newroot
mount -t proc proc $r/proc
mount -t sysfs sysfs $r/sys
mount -t devtmpfs devtmpfs $r/dev
mkdir -p $r/dev/pts $r/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $r/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $r/dev/shm
mount -t tmpfs -o mode=0755 tmpfs $r/run
# /tmp stays the host's, seen through the overlay (read-only below, writable on top), so that a
# command whose working directory or inputs live under the host's /tmp (a CI clone) finds them.
mount -t cgroup2 cgroup2 $r/sys/fs/cgroup
# containerd's overlayfs snapshotter refuses an upperdir that lives on an overlay: give it a tmpfs.
mkdir -p $r/var/lib/containerd
mount -t tmpfs -o mode=0711 tmpfs $r/var/lib/containerd
if [ -f /io/share ]; then
  share=$(cat /io/share)
  mkdir -p "$r$share"
  mount -t 9p -o "$opts" share "$r$share" || fail "cannot mount the writable share at $share"
fi
ip link set lo up 2>/dev/null || mark "cannot bring up lo"
hostname husk-testhost

mark "stage 5/6: running the command"
# The host's bash (not busybox) restores the environment and the working directory, then execs
# the command through the host's env so that the environment is exactly the one the host sent.
# File descriptors 3 and 4 carry argv and env; the redirections are made here, before the chroot,
# so the io share never has to be visible inside the new root.
# shellcheck disable=SC2016
runner='
mapfile -d "" -u 3 argv
mapfile -d "" -u 4 envs
exec 3<&- 4<&-
cd -- "$1" || { echo "husk-testhost: the working directory $1 does not exist inside the test host" >&2; exit 125; }
exec /usr/bin/env -i "${envs[@]}" "${argv[@]}"
'
# A heartbeat for the host: run.sh kills a test host whose heartbeat stops (an L1 that stalls
# under emulation stops everything, timeouts included).
( while :; do echo beat >/io/heartbeat; sleep 5; done ) &
heartbeat=$!
# A second one on the console, which does not go through 9p: after a stall, the console shows
# whether the test host was still alive (its share hung) or stopped altogether.
( while sleep 30; do
    echo "husk-testhost: alive, uptime $(cut -d' ' -f1 /proc/uptime) s, load $(cut -d' ' -f1-4 /proc/loadavg)" >/dev/console
  done ) &
alive=$!
stdin=/dev/null
[ -f /io/stdin ] && stdin=/io/stdin
[ -x $r/bin/bash ] || fail "the host has no /bin/bash"
# The new root goes on top of the initramfs' own root (switch_root's way) before the chroot: in
# a mount namespace cloned from this one, the root found first is then the new root, not the
# initramfs. runc needs that: `runc exec` enters a container's mount namespace at its root, and
# the container's root was pivoted on top of it. (This shell keeps the initramfs as its root:
# an absolute path resolves from its root without crossing the mount above it.)
cd $r || fail "cannot enter the new root"
mount --move . / || fail "cannot move the new root onto /"
chroot . /bin/bash -c "$runner" husk-runner "$(cat /io/cwd)" \
  3</io/argv 4</io/env <"$stdin" >>/io/stdout 2>>/io/stderr
status=$?
cd /
kill "$heartbeat" "$alive" 2>/dev/null
echo "$status" >/io/status

mark "stage 6/6: command exited with status $status"
finish
