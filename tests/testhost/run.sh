#!/usr/bin/env bash
# Runs a command where standard KVM is available.
#
#   tests/testhost/run.sh [--] CMD [ARGS...]   run CMD (directly, or inside a disposable L1 VM)
#   tests/testhost/run.sh --prepare            build the cached L1 kernel and initramfs, run nothing
#   tests/testhost/run.sh --check              say whether commands would run directly or in a VM
#
# On a host whose /dev/kvm boots standard guests (it opens, the CPU shows vmx or svm and it is not
# PVM) the command is simply exec'd. Otherwise (our PVM machines) it runs inside a "test host": a
# QEMU-TCG VM with an emulated AMD CPU with SVM, where kvm_amd provides a standard /dev/kvm. The
# command there sees the host's file system (read-only 9p share plus a throw-away tmpfs overlay),
# the same working directory and environment, stdin (when it is not a terminal), and its stdout,
# stderr and exit status come back separately. See README.md beside this file for the details.

# QEMU options are comma-separated by nature; cleanup() is reached through a trap.
# shellcheck disable=SC2054,SC2317
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
self="$here/run.sh"
init_script="$here/init.sh"

# Modules the L1 kernel needs, in load order (a module must follow the ones it uses), and extras
# for network tests whose failure to load is tolerated.
REQUIRED_MODULES="irqbypass ccp kvm kvm-amd virtio_ring virtio virtio_pci_legacy_dev
  virtio_pci_modern_dev virtio_pci virtio_mmio 9pnet 9pnet_virtio netfs fscache 9p overlay"
OPTIONAL_MODULES="tun veth llc stp bridge sch_ingress cls_u32 act_mirred"
PACKAGES="qemu-system-x86 busybox-static cpio xz-utils lz4"

# Exit statuses of our own (as timeout(1) and env(1) use them): 124 timed out, 125 run.sh or the
# test host failed, 123 the test host stalled (its heartbeat stopped; rerunning may help).
EXIT_TIMEOUT=124
EXIT_HOST=125
EXIT_STALL=123
# Seconds without a heartbeat from the running test host before it counts as stalled.
STALL_S=${HUSK_TESTHOST_STALL:-120}

say() { echo "husk-testhost: $*" >&2; }
die() { say "$*"; exit "$EXIT_HOST"; }

# Prints the usage lines at the top of this file; exits with $1.
usage() {
  if [ "$1" = 0 ]; then
    sed -n '2,6s/^# \{0,1\}//p' "$self"
  else
    sed -n '2,6s/^# \{0,1\}//p' "$self" >&2
  fi
  exit "$1"
}

# --- where to run ----------------------------------------------------------------------------

# Sets `why` and succeeds when this host's /dev/kvm can boot a standard guest.
standard_kvm() {
  if [ -e /sys/module/kvm_pvm ]; then
    why="/dev/kvm is provided by kvm_pvm, which cannot boot a standard guest kernel"
    return 1
  fi
  if [ ! -c /dev/kvm ]; then
    why="there is no /dev/kvm"
    return 1
  fi
  if ! (exec 3<>/dev/kvm) 2>/dev/null; then
    why="/dev/kvm cannot be opened for reading and writing"
    return 1
  fi
  local ext
  ext=$(grep -owE -m1 'vmx|svm' /proc/cpuinfo | head -n1 || true)
  if [ -z "$ext" ]; then
    why="the CPU shows neither vmx nor svm"
    return 1
  fi
  why="/dev/kvm works, the CPU has $ext and it is not PVM"
}

# Sets `mode` (direct or vm) and `why`.
choose_mode() {
  case "${HUSK_TESTHOST:-auto}" in
    direct) mode=direct; why="forced by HUSK_TESTHOST=direct" ;;
    vm) mode=vm; why="forced by HUSK_TESTHOST=vm" ;;
    auto | "")
      if standard_kvm; then mode=direct; else mode=vm; fi
      ;;
    *) die "HUSK_TESTHOST must be direct, vm or auto, not '$HUSK_TESTHOST'" ;;
  esac
}

# --- packages --------------------------------------------------------------------------------

apt_updated=0
apt_update_once() {
  [ "$apt_updated" = 1 ] && return 0
  say "running apt-get update"
  apt-get -o DPkg::Lock::Timeout=600 update -qq >&2 || die "apt-get update failed"
  apt_updated=1
}

ensure_packages() {
  local p missing=()
  for p in $PACKAGES; do
    dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii' || missing+=("$p")
  done
  [ ${#missing[@]} = 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "missing packages (${missing[*]}) and not root to install them"
  apt_update_once
  say "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends "${missing[@]}" >&2 || die "cannot install ${missing[*]}"
}

# Sets kpkg and kver to the Debian kernel package that linux-image-amd64 currently points to and
# its version. With "offline" it never runs apt-get update and just fails when apt does not know.
# apt-cache takes ~0.4 s here (no binary package cache), so the answer is remembered for as long as
# apt's package lists stay the same.
apt_lists_signature() {
  find /var/lib/apt/lists -maxdepth 1 -type f -name '*Packages*' -printf '%f %T@ %s\n' 2>/dev/null |
    LC_ALL=C sort | sha256sum | cut -c1-16
}
kernel_package() {
  local memo="$cache_root/.kernel-package" sig dep="" msig=""
  sig=$(apt_lists_signature)
  if [ -f "$memo" ]; then
    read -r msig kpkg kver <"$memo" || true
    if [ "${msig:-}" = "$sig" ] && [ -n "${kpkg:-}" ] && [ -n "${kver:-}" ]; then
      return 0
    fi
  fi
  dep=$(apt-cache show --no-all-versions linux-image-amd64 2>/dev/null |
    sed -n 's/^Depends: \(linux-image-[^ ,]*\) (= \([^)]*\)).*/\1 \2/p' | head -n1 || true)
  if [ -z "$dep" ] && [ "${1:-}" != offline ]; then
    apt_update_once
    sig=$(apt_lists_signature)
    dep=$(apt-cache show --no-all-versions linux-image-amd64 2>/dev/null |
      sed -n 's/^Depends: \(linux-image-[^ ,]*\) (= \([^)]*\)).*/\1 \2/p' | head -n1 || true)
  fi
  if [ -z "$dep" ]; then
    [ "${1:-}" = offline ] && return 1
    die "apt knows no linux-image-amd64 kernel package"
  fi
  kpkg=${dep% *}
  kver=${dep#* }
  if mkdir -p "$cache_root" 2>/dev/null; then
    if ! { echo "$sig $kpkg $kver" >"$memo.$$" && mv -f "$memo.$$" "$memo"; }; then
      rm -f "$memo.$$"
    fi
  fi
}

# --- the cache -------------------------------------------------------------------------------
#
# $HUSK_CACHE/testhost/
#   kernel-<package>_<version>/   vmlinux and the needed modules of one Debian kernel
#   <key>/                        vmlinux and l1.cpio.gz, ready to boot; <key> hashes the kernel
#                                 version, busybox's version, run.sh and init.sh
# Both are built in a temporary directory beside them and renamed into place, under a lock, so a
# concurrent run either waits or sees a complete directory.

cache_root="${HUSK_CACHE:-${HOME:-/root}/.cache/husk}/testhost"

# Sets kpkg, kver, kernel_dir, key and cache_dir (arguments go to kernel_package).
cache_paths() {
  kernel_package "$@" || return 1
  kernel_dir="$cache_root/kernel-${kpkg}_$kver"
  local bbver
  bbver=$(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null || echo none)
  key=$( { echo "$kpkg $kver busybox $bbver"; cat "$self" "$init_script"; } | sha256sum | cut -c1-16)
  cache_dir="$cache_root/$key"
}

# Copies the payload of a bzImage out as an uncompressed ELF vmlinux, which QEMU boots through its
# PVH entry point (faster than letting the bzImage decompress itself under TCG).
extract_vmlinux() {
  local bz=$1 out=$2 setup_sects payload_off payload_len start magic
  setup_sects=$(od -An -tu1 -j $((0x1f1)) -N1 "$bz" | tr -d ' ')
  [ "$setup_sects" != 0 ] || setup_sects=4
  payload_off=$(od -An -tu4 -j $((0x248)) -N4 "$bz" | tr -d ' ')
  payload_len=$(od -An -tu4 -j $((0x24c)) -N4 "$bz" | tr -d ' ')
  start=$(((setup_sects + 1) * 512 + payload_off))
  magic=$(od -An -tx1 -j "$start" -N6 "$bz" | tr -d ' \n')
  payload() { dd if="$bz" iflag=skip_bytes,count_bytes skip="$start" count="$payload_len" bs=1M status=none; }
  case "$magic" in
    fd377a585a00*) payload | xz -dc --single-stream >"$out" ;;
    02214c18*) payload | lz4 -dc >"$out" 2>/dev/null ;;
    *) die "unknown compression of the kernel payload in $bz (magic $magic)" ;;
  esac
  [ "$(od -An -tx1 -N4 "$out" | tr -d ' \n')" = 7f454c46 ] || die "the payload of $bz is not an ELF image"
}

# Copies module NAME of the unpacked kernel tree ROOT to DIR as NAME.ko, uncompressed.
# Prints nothing and fails when the kernel has no such module.
copy_module() {
  local root=$1 name=$2 dir=$3 alt f
  alt=$(echo "$name" | tr '_-' '-_')
  f=$(find "$root" \( -name "$name.ko*" -o -name "$alt.ko*" \) -print -quit)
  [ -n "$f" ] || return 1
  case "$f" in
    *.ko) cp "$f" "$dir/$name.ko" ;;
    *.ko.xz) xz -dc "$f" >"$dir/$name.ko" ;;
    *.ko.zst) zstd -dcq "$f" >"$dir/$name.ko" ;;
    *.ko.gz) gzip -dc "$f" >"$dir/$name.ko" ;;
    *) return 1 ;;
  esac
}

build_kernel_dir() {
  [ -f "$kernel_dir/vmlinux" ] && return 0
  say "fetching and unpacking $kpkg $kver"
  local t
  t=$(mktemp -d "$cache_root/.kernel.XXXXXX")
  build_tmp=$t
  (cd "$t" && apt-get download "$kpkg=$kver" >/dev/null 2>&1) || die "cannot download $kpkg=$kver"
  dpkg -x "$t"/*.deb "$t/pkg"
  mkdir -p "$t/out/modules"
  extract_vmlinux "$(echo "$t"/pkg/boot/vmlinuz-*)" "$t/out/vmlinux"
  local m
  for m in $REQUIRED_MODULES; do
    copy_module "$t/pkg/lib/modules" "$m" "$t/out/modules" || die "$kpkg has no module $m"
  done
  for m in $OPTIONAL_MODULES; do
    copy_module "$t/pkg/lib/modules" "$m" "$t/out/modules" || say "note: $kpkg has no module $m"
  done
  rm -rf "$kernel_dir"
  mv -T "$t/out" "$kernel_dir"
  rm -rf "$t"
  build_tmp=""
}

build_cache_dir() {
  [ -f "$cache_dir/l1.cpio.gz" ] && return 0
  build_kernel_dir
  say "building the L1 initramfs ($key)"
  local t r m
  t=$(mktemp -d "$cache_root/.l1.XXXXXX")
  build_tmp=$t
  r="$t/root"
  mkdir -p "$r"/{bin,dev,proc,sys,io,hostroot,overlay,newroot,modules}
  cp /bin/busybox "$r/bin/busybox"
  cp "$init_script" "$r/init"
  chmod 0755 "$r/init" "$r/bin/busybox"
  : >"$r/modules/required"
  : >"$r/modules/optional"
  for m in $REQUIRED_MODULES; do
    cp "$kernel_dir/modules/$m.ko" "$r/modules/"
    echo "$m.ko" >>"$r/modules/required"
  done
  for m in $OPTIONAL_MODULES; do
    [ -f "$kernel_dir/modules/$m.ko" ] || continue
    cp "$kernel_dir/modules/$m.ko" "$r/modules/"
    echo "$m.ko" >>"$r/modules/optional"
  done
  mkdir -p "$t/out"
  (cd "$r" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -6) >"$t/out/l1.cpio.gz"
  ln "$kernel_dir/vmlinux" "$t/out/vmlinux" 2>/dev/null || cp "$kernel_dir/vmlinux" "$t/out/vmlinux"
  { echo "kernel $kpkg $kver"; date -u +"built %Y-%m-%dT%H:%M:%SZ"; } >"$t/out/info"
  rm -rf "$cache_dir"
  mv -T "$t/out" "$cache_dir"
  rm -rf "$t"
  build_tmp=""
  # Images of other run.sh versions or kernels pile up as the scripts change: drop those unused
  # for two days (each run touches the image it uses).
  find "$cache_root" -mindepth 1 -maxdepth 1 -type d \( -name '[0-9a-f]*' -o -name 'kernel-*' -o -name '.l1.*' -o -name '.kernel.*' \) \
    ! -path "$cache_dir" ! -path "$kernel_dir" -mtime +2 -exec rm -rf {} + 2>/dev/null || true
}

# Makes sure packages and cache are there; sets cache_dir.
prepare() {
  ensure_packages
  mkdir -p "$cache_root"
  cache_paths
  if [ -f "$cache_dir/l1.cpio.gz" ]; then
    touch "$cache_dir" "$kernel_dir" 2>/dev/null || true
    return 0
  fi
  # One builder at a time; the others wait and then find the result.
  exec 9>"$cache_root/.lock"
  flock -w 1800 9 || die "timed out waiting for another run.sh to build the cache"
  build_cache_dir
  exec 9>&-
}

# --- running in the VM -----------------------------------------------------------------------

# The host's TSC frequency in kHz (0 if unknown). A TCG guest on microvm calibrates its TSC against
# the PIT and hangs when the host is busy; telling it the frequency skips the calibration.
tsc_khz() {
  local mhz
  mhz=$(dmesg 2>/dev/null | sed -n 's/.*Refined TSC clocksource calibration: \([0-9.]*\) MHz.*/\1/p' | tail -n1 || true)
  [ -n "$mhz" ] || mhz=$(dmesg 2>/dev/null | sed -n 's/.*tsc: Detected \([0-9.]*\) MHz processor.*/\1/p' | tail -n1 || true)
  [ -n "$mhz" ] || mhz=$(sed -n 's/^cpu MHz[[:space:]]*: *\([0-9.]*\).*/\1/p' /proc/cpuinfo | head -n1 || true)
  awk -v m="${mhz:-0}" 'BEGIN { printf "%d\n", m * 1000 }'
}

tmp=""
vm_pid=""
tail_pids=()
build_tmp=""

# Run on every exit of the script (not in direct mode, which execs the command).
cleanup() {
  local p qpid
  if [ -n "$build_tmp" ]; then
    rm -rf "$build_tmp"
  fi
  if [ -n "$vm_pid" ]; then
    kill "$vm_pid" 2>/dev/null || true
  fi
  # timeout(1) passes the signal on to QEMU; kill QEMU directly as well in case it did not.
  if [ -n "$tmp" ] && [ -f "$tmp/qemu.pid" ]; then
    qpid=$(cat "$tmp/qemu.pid" 2>/dev/null || true)
    if [ -n "$qpid" ] && grep -q '^qemu' "/proc/$qpid/comm" 2>/dev/null; then
      kill -KILL "$qpid" 2>/dev/null || true
    fi
  fi
  for p in "${tail_pids[@]}"; do
    kill "$p" 2>/dev/null || true
  done
  if [ -n "$tmp" ]; then
    rm -rf "$tmp"
  fi
}

# After a stall, before the VM is killed: where QEMU's threads spend their time (2 s of CPU
# ticks per thread), the L1 vCPUs' registers and local APIC from QEMU's monitor, so that a stall
# can be told apart as a guest spinning, a guest waiting for an interrupt, or QEMU itself stuck.
stall_report() {
  local qpid t
  qpid=$(cat "$tmp/qemu.pid" 2>/dev/null || true)
  [ -n "$qpid" ] && [ -d "/proc/$qpid" ] || return 0
  ticks() { for t in /proc/"$qpid"/task/*; do echo "$(cat "$t/comm" 2>/dev/null | tr ' ' _) $(awk '{ print $14 + $15 }' "$t/stat" 2>/dev/null)"; done; }
  ticks >"$tmp/ticks.1"
  sleep 2
  ticks >"$tmp/ticks.2"
  say "QEMU threads' CPU ticks in 2 s:"
  paste "$tmp/ticks.1" "$tmp/ticks.2" | awk '{ if ($4 - $2 > 0) printf "  | %s %d\n", $1, $4 - $2 }' >&2
  [ -S "$tmp/monitor.sock" ] || return 0
  say "L1 vCPU state (QEMU monitor):"
  timeout 10 python3 - "$tmp/monitor.sock" <<'PY' 2>/dev/null | grep -E '^(CPU|RIP|RAX|RSP|CS |CR0|EFER)|^\* CPU|^  CPU|^dumping|^LVT|^Timer|^SPIV|^ISR|^IRR|^ESR|^ICR' | sed 's/^/  | /' >&2 || true
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.settimeout(5)
def until_prompt():
    buf = b""
    while not buf.endswith(b"(qemu) "):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace")
until_prompt()
for cmd in ("info cpus", "info registers -a", "info lapic"):
    s.sendall(cmd.encode() + b"\n")
    print(until_prompt())
PY
}

# Prints the last lines of the L1 console to stderr.
console_tail() {
  [ -s "$tmp/console.log" ] || return 0
  say "last lines of the test host's console:"
  tail -n "${1:-25}" "$tmp/console.log" | sed 's/^/  | /' >&2
}

run_in_vm() {
  local timeout_s=${HUSK_TESTHOST_TIMEOUT:-600}
  case "$timeout_s" in '' | *[!0-9]*) die "HUSK_TESTHOST_TIMEOUT must be a number of seconds" ;; esac
  local started=$SECONDS

  prepare

  # Temp dirs of runs that were SIGKILLed stay behind; drop those older than a day.
  find "${TMPDIR:-/tmp}" -maxdepth 1 -type d -name 'husk-testhost.*' -mmin +1440 -exec rm -rf {} + 2>/dev/null || true
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/husk-testhost.XXXXXX")
  local io="$tmp/io"
  mkdir "$io"
  : >"$io/stdout"
  : >"$io/stderr"

  # The job: command line, environment, working directory, stdin, optional writable share.
  printf '%s\0' "$@" >"$io/argv"
  { env -0 -u SHLVL -u _ -u OLDPWD -u HUSK_TESTHOST; printf '%s\0' HUSK_TESTHOST_INSIDE=1; } >"$io/env"
  printf '%s' "$PWD" >"$io/cwd"
  if [ "${HUSK_TESTHOST_STDIN:-}" = null ]; then
    : # the command gets /dev/null
  elif [ ! -t 0 ]; then
    # Read all of stdin before the boot; bounded by the same timeout as the whole run.
    local rc=0
    timeout --foreground "$timeout_s" cat >"$io/stdin" 2>/dev/null || rc=$?
    if [ "$rc" = 124 ]; then
      say "timed out after ${timeout_s}s (HUSK_TESTHOST_TIMEOUT) reading stdin"
      exit "$EXIT_TIMEOUT"
    fi
  fi
  local share_args=()
  if [ -n "${HUSK_TESTHOST_SHARE:-}" ]; then
    local share
    share=$(realpath -e -- "$HUSK_TESTHOST_SHARE" 2>/dev/null || true)
    if [ -z "$share" ] || [ ! -d "$share" ]; then
      die "HUSK_TESTHOST_SHARE=$HUSK_TESTHOST_SHARE is not a directory"
    fi
    printf '%s' "$share" >"$io/share"
    share_args=(-fsdev "local,id=share,path=$share,security_model=none"
      -device virtio-9p-device,fsdev=share,mount_tag=share)
  fi

  local khz append
  khz=$(tsc_khz)
  append="console=ttyS0 panic=-1 8250.nr_uarts=1"
  [ "${HUSK_TESTHOST_DEBUG:-0}" = 1 ] || append="$append quiet"
  [ "$khz" -gt 0 ] && append="$append tsc_early_khz=$khz"
  # A periodic local-APIC tick that QEMU re-arms by itself. With the default one-shot tick the L1
  # kernel re-arms its timer from the interrupt handler; QEMU 7.2 can drop the CPU's "interrupt
  # pending" flag (an unlocked update on the nested-VM exit path races the timer thread), the
  # handler never runs and the test host sleeps for good. A periodic timer raises the flag again
  # on the next tick. README.md, "Reliability", has the captures.
  append="$append ${HUSK_TESTHOST_TICK-nohz=off highres=off}"
  # Extra L1 kernel parameters; MODULE.PARAM=VALUE ones reach the modules init.sh loads.
  [ -n "${HUSK_TESTHOST_APPEND:-}" ] && append="$append $HUSK_TESTHOST_APPEND"

  # One L1 vCPU: with two, QEMU 7.2's TCG now and then froze the test host (both CPUs looping on
  # the int3 of a jump label the L1 kernel was patching as KVM created or destroyed a VM) or
  # faulted an L2 guest (a page fault on kernel text, never injected by KVM, while the other
  # CPU ran). README.md, "Reliability", has the measurements.
  local qemu=(qemu-system-x86_64
    -accel "${HUSK_TESTHOST_ACCEL:-tcg,tb-size=256}" -cpu "${HUSK_TESTHOST_CPU:-EPYC,+svm,+npt}"
    -m "${HUSK_TESTHOST_MEM:-4096}" -smp "${HUSK_TESTHOST_CPUS:-1}" -M microvm,rtc=on
    -kernel "$cache_dir/vmlinux" -initrd "$cache_dir/l1.cpio.gz" -append "$append"
    -display none -monitor "unix:$tmp/monitor.sock,server=on,wait=off" -serial "file:$tmp/console.log" -no-reboot -no-user-config
    -pidfile "$tmp/qemu.pid" -name husk-testhost,debug-threads=on
    -fsdev local,id=fs0,path=/,security_model=none,readonly=on,multidevs=remap
    -device virtio-9p-device,fsdev=fs0,mount_tag=hostroot
    -fsdev "local,id=io,path=$io,security_model=none"
    -device virtio-9p-device,fsdev=io,mount_tag=io
    "${share_args[@]}")

  # The deadline covers the whole run so far (package checks, stdin, boot and command).
  local left=$((timeout_s - (SECONDS - started)))
  [ "$left" -gt 0 ] || left=1
  # timeout(1) bounds the VM's life. The parent-death signals chain the processes together: should
  # this script be SIGKILLed (no trap runs then), timeout(1) dies with it and QEMU with timeout(1).
  # QEMU's own messages go to a log, never to our stdout.
  setpriv --pdeathsig KILL -- timeout -k 5 "$left" setpriv --pdeathsig KILL -- "${qemu[@]}" \
    </dev/null >"$tmp/qemu.log" 2>&1 &
  vm_pid=$!

  # Stream the command's output while it runs. tail exits once the VM is gone, after a last read,
  # so everything written is copied, in order within each stream.
  tail -c +1 -s 0.1 -f --pid="$vm_pid" "$io/stdout" &
  tail_pids+=($!)
  tail -c +1 -s 0.1 -f --pid="$vm_pid" "$io/stderr" >&2 &
  tail_pids+=($!)
  if [ "${HUSK_TESTHOST_DEBUG:-0}" = 1 ]; then
    touch "$tmp/console.log"
    tail -n +1 -s 0.1 -f --pid="$vm_pid" "$tmp/console.log" | sed -u 's/^/husk-testhost console: /' >&2 &
    tail_pids+=($!)
  fi

  # The stall watchdog: the test host touches io/heartbeat every 5 s while the command runs.
  (
    while kill -0 "$vm_pid" 2>/dev/null; do
      sleep 5
      [ -f "$io/heartbeat" ] || continue
      if [ $(($(date +%s) - $(stat -c %Y "$io/heartbeat"))) -gt "$STALL_S" ]; then
        : >"$tmp/stalled"
        stall_report 2>"$tmp/stall-report"
        kill -TERM "$vm_pid" 2>/dev/null || true
        exit 0
      fi
    done
  ) &
  local watchdog=$!

  local vm_rc=0
  wait "$vm_pid" || vm_rc=$?
  kill "$watchdog" 2>/dev/null || true
  wait "$watchdog" 2>/dev/null || true
  vm_pid=""
  local p
  for p in "${tail_pids[@]}"; do
    wait "$p" 2>/dev/null || true
  done
  tail_pids=()

  if [ -f "$tmp/stalled" ] && [ ! -f "$io/status" ]; then
    say "the test host stalled: no heartbeat for ${STALL_S}s while the command ran; the VM was killed"
    cat "$tmp/stall-report" >&2 2>/dev/null || true
    # The console holds what explains a stall (soft-lockup traces, a panic): show enough of it.
    console_tail 60
    exit "$EXIT_STALL"
  fi
  if [ "$vm_rc" = 124 ] || [ "$vm_rc" = 137 ] && [ ! -f "$io/status" ]; then
    say "timed out after ${timeout_s}s (HUSK_TESTHOST_TIMEOUT=${HUSK_TESTHOST_TIMEOUT:-600}); the test host VM was killed"
    console_tail 5
    exit "$EXIT_TIMEOUT"
  fi
  if [ -s "$io/status" ]; then
    local status
    status=$(cat "$io/status")
    case "$status" in '' | *[!0-9]*) die "the test host reported a bad exit status '$status'" ;; esac
    exit "$status"
  fi
  if [ -s "$io/error" ]; then
    say "the test host failed: $(cat "$io/error")"
  else
    if grep -q 'husk-testhost: stage 5/6' "$tmp/console.log" 2>/dev/null; then
      say "the test host VM stopped while the command was running (QEMU exit status $vm_rc)"
    else
      say "the test host VM stopped before it could run the command (QEMU exit status $vm_rc)"
    fi
    # QEMU warns about every EPYC feature TCG lacks; those are noise.
    if grep -qv "TCG doesn't support requested feature" "$tmp/qemu.log" 2>/dev/null; then
      say "QEMU said:"
      grep -v "TCG doesn't support requested feature" "$tmp/qemu.log" | sed 's/^/  | /' >&2
    fi
  fi
  if [ "${HUSK_TESTHOST_DEBUG:-0}" != 1 ]; then console_tail 25; fi
  exit "$EXIT_HOST"
}

# --- main ------------------------------------------------------------------------------------

trap cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

case "${1:-}" in
  --check)
    choose_mode
    echo "husk-testhost: $mode ($why)"
    if [ "$mode" = vm ]; then
      if command -v qemu-system-x86_64 >/dev/null && cache_paths offline && [ -f "$cache_dir/l1.cpio.gz" ]; then
        echo "husk-testhost: L1 image ready in $cache_dir"
      else
        echo "husk-testhost: L1 image not prepared yet (run.sh --prepare builds it)"
      fi
    fi
    exit 0
    ;;
  --prepare)
    choose_mode
    if [ "$mode" = direct ]; then
      echo "husk-testhost: direct ($why): nothing to prepare"
      exit 0
    fi
    prepare
    echo "husk-testhost: L1 image ready in $cache_dir"
    exit 0
    ;;
  --help | -h) usage 0 ;;
  --) shift ;;
  -*) say "unknown option $1"; usage "$EXIT_HOST" ;;
esac
[ $# -gt 0 ] || usage "$EXIT_HOST"

choose_mode
if [ "$mode" = direct ]; then
  exec "$@"
fi
run_in_vm "$@"
