# shellcheck shell=bash
# Helpers to run a private containerd for integration tests. Source this file from bash, as root,
# inside the test host (tests/testhost/run.sh) or on any machine where containerd may run. The
# functions work under `set -euo pipefail` and return non-zero (with a "ctrd:" message) on failure:
#
#   . tests/containerd/env.sh
#   trap ctrd_stop EXIT
#   ctrd_start "$(mktemp -d)" "$PWD/target/debug"   # 2nd arg: where containerd-shim-kata-v2 is
#   ctrd_import_busybox                              # docker.io/library/busybox:latest
#   $CTR run --rm --runtime io.containerd.kata.v2 docker.io/library/busybox:latest t1 echo hi
#
# Functions
#   ctrd_start DIR [RUNTIME_PATH_DIR]  write DIR/config.toml, start containerd (log in
#                                     DIR/containerd.log), wait until it answers (CTRD_TIMEOUT s)
#   ctrd_stop                         kill what is left of our tasks and shims, stop containerd,
#                                     unmount and remove its root; safe to call twice or unstarted
#   ctrd_import_busybox [NAME]        import the busybox image (default name
#                                     docker.io/library/busybox:latest), building it if needed
#   ctrd_busybox_tar [NAME]           print the path of that image's tarball (cached under
#                                     $HUSK_CACHE/containerd; works without a running containerd)
#   ctrd_ctr ARGS...                  ctr against our containerd and namespace
#   ctrd_log [N]                      print the last N (40) lines of containerd's log to stderr
#
# Variables set by ctrd_start
#   CTRD_DIR    DIR (config, state, sockets, log)
#   CTRD_SOCK   DIR/containerd.sock (grpc); ttrpc is DIR/containerd.sock.ttrpc
#   CTRD_ROOT   containerd's root: a directory on a tmpfs or a normal disk file system (see below)
#   CTRD_PID    containerd's pid
#   CTR         "ctr -a $CTRD_SOCK -n $CTRD_NAMESPACE", to be used unquoted: $CTR images ls
#               (or call ctrd_ctr; under timeout(1), which cannot run functions, spell it out)
#
# Settings (environment, read by ctrd_start)
#   CTRD_NAMESPACE   containerd namespace for CTR (default husk-test)
#   CTRD_TIMEOUT     seconds to wait for containerd to answer, and for it to stop (default 60)
#   CTRD_LOG_LEVEL   containerd's log level (default info)
#   CTRD_FORCE_ROOT  use this directory as containerd's root (it must suit overlayfs upperdirs)
#   CTRD_BUSYBOX_TAR a prebuilt image tarball for ctrd_import_busybox (skips build and cache)
#   BUSYBOX          the static busybox to put in the image (default /bin/busybox)
#   CTRD_CRI         1: keep containerd's CRI plugin (kubelet's API) on, with the handlers `kata`
#                    (husk) and `runc`, CNI's bridge plugin on husk-cri0 (10.88.0.0/24, config in
#                    DIR/cni) and CTRD_PAUSE_IMAGE as the sandbox image (see ctrd_import_pause)
#
# containerd's overlayfs snapshotter refuses an upperdir on an overlay (or 9p) file system, and the
# test host's / is an overlay. So the root goes to DIR/root when DIR is on a suitable file system,
# else to a fresh directory on the tmpfs at /var/lib/containerd (the test host mounts one), else to
# a tmpfs that ctrd_start mounts at DIR/root. Some paths of containerd are global whatever the
# config says: /run/containerd/s (shim sockets) and /run/containerd/fifo (ctr's fifos).

CTRD_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CTRD_DIR=${CTRD_DIR:-}
CTRD_SOCK=${CTRD_SOCK:-}
CTRD_PID=${CTRD_PID:-}
CTRD_ROOT=${CTRD_ROOT:-}
CTRD_NAMESPACE=${CTRD_NAMESPACE:-husk-test}
CTRD_ROOT_MOUNTED=""
CTRD_ROOT_CREATED=""

_ctrd_say() { echo "ctrd: $*" >&2; }

# Sleeps $1 seconds without starting a process (an external sleep costs ~40 ms of CPU under TCG,
# taken from containerd while we poll it): read with a timeout on a FIFO nobody writes to.
_ctrd_sleep_fd=""
_ctrd_sleep() {
  if [ -z "$_ctrd_sleep_fd" ]; then
    local fifo
    fifo=$(mktemp -u "${TMPDIR:-/tmp}/ctrd-sleep.XXXXXX")
    if mkfifo -m 0600 "$fifo" 2>/dev/null && exec {_ctrd_sleep_fd}<>"$fifo"; then
      rm -f "$fifo"
    else
      rm -f "$fifo"
      _ctrd_sleep_fd=""
      sleep "$1"
      return 0
    fi
  fi
  read -r -t "$1" -u "$_ctrd_sleep_fd" _ 2>/dev/null || true
}

# The file system type of PATH's nearest existing ancestor.
_ctrd_fstype() {
  local p=$1
  while [ ! -e "$p" ]; do p=$(dirname -- "$p"); done
  stat -f -c %T -- "$p" 2>/dev/null
}

# Succeeds when overlayfs accepts an upperdir on file system type $1.
_ctrd_fs_ok_for_overlay() {
  case "$1" in
    overlayfs | v9fs | fuseblk | fuse | nfs | cifs | smb2 | ecryptfs | UNKNOWN* | '') return 1 ;;
  esac
  return 0
}

# Picks and prepares containerd's root for DIR; sets CTRD_ROOT (and the cleanup markers).
_ctrd_make_root() {
  local dir=$1
  CTRD_ROOT_MOUNTED=""
  CTRD_ROOT_CREATED=""
  if [ -n "${CTRD_FORCE_ROOT:-}" ]; then
    CTRD_ROOT=$CTRD_FORCE_ROOT
    mkdir -p -- "$CTRD_ROOT"
    return 0
  fi
  if _ctrd_fs_ok_for_overlay "$(_ctrd_fstype "$dir")"; then
    CTRD_ROOT=$dir/root
    mkdir -p -- "$CTRD_ROOT"
    CTRD_ROOT_CREATED=$CTRD_ROOT
    return 0
  fi
  if [ -d /var/lib/containerd ] && [ "$(_ctrd_fstype /var/lib/containerd)" = tmpfs ]; then
    CTRD_ROOT=$(mktemp -d /var/lib/containerd/husk-test.XXXXXX) || return 1
    CTRD_ROOT_CREATED=$CTRD_ROOT
    return 0
  fi
  CTRD_ROOT=$dir/root
  mkdir -p -- "$CTRD_ROOT"
  mount -t tmpfs -o mode=0711 tmpfs "$CTRD_ROOT" || {
    _ctrd_say "cannot mount a tmpfs for containerd's root at $CTRD_ROOT"
    return 1
  }
  CTRD_ROOT_MOUNTED=$CTRD_ROOT
  CTRD_ROOT_CREATED=$CTRD_ROOT
}

ctrd_log() {
  [ -n "$CTRD_DIR" ] && [ -f "$CTRD_DIR/containerd.log" ] || return 0
  _ctrd_say "last lines of $CTRD_DIR/containerd.log:"
  tail -n "${1:-40}" "$CTRD_DIR/containerd.log" | sed 's/^/  | /' >&2
}

ctrd_ctr() {
  ctr -a "$CTRD_SOCK" -n "$CTRD_NAMESPACE" "$@"
}

ctrd_start() {
  if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    _ctrd_say "usage: ctrd_start DIR [RUNTIME_PATH_DIR]"
    return 2
  fi
  if [ -n "$CTRD_PID" ] && _ctrd_alive "$CTRD_PID"; then
    _ctrd_say "containerd is already running (pid $CTRD_PID); call ctrd_stop first"
    return 1
  fi
  local dir rtdir="${2:-}" timeout=${CTRD_TIMEOUT:-60}
  mkdir -p -- "$1" || return 1
  dir=$(cd -- "$1" && pwd -P) || return 1
  if [ -n "$rtdir" ]; then
    rtdir=$(cd -- "$rtdir" && pwd -P) || {
      _ctrd_say "no directory $2"
      return 1
    }
    [ -x "$rtdir/containerd-shim-kata-v2" ] ||
      _ctrd_say "note: $rtdir has no executable containerd-shim-kata-v2"
  fi
  if ! command -v containerd >/dev/null || ! command -v ctr >/dev/null; then
    _ctrd_say "containerd or ctr is not installed (apt-get install containerd runc)"
    return 1
  fi
  # A unix socket path must fit in sun_path (108 bytes including the NUL).
  if [ ${#dir} -gt 80 ]; then
    _ctrd_say "DIR is too long for unix socket paths (${#dir} > 80 characters): $dir"
    return 1
  fi

  CTRD_DIR=$dir
  CTRD_SOCK=$dir/containerd.sock
  _ctrd_make_root "$dir" || return 1
  mkdir -p -- "$dir/state"
  rm -f -- "$CTRD_SOCK" "$CTRD_SOCK.ttrpc"

  # CRI is left out unless asked for (slow to start, unused by ctr); so are the snapshotters that
  # cannot work here and would only fill the log.
  local cri='"io.containerd.grpc.v1.cri",'
  [ "${CTRD_CRI:-0}" = 1 ] && cri=''
  cat >"$dir/config.toml" <<EOF
version = 2
root = "$CTRD_ROOT"
state = "$dir/state"
disabled_plugins = [
  $cri
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "$CTRD_SOCK"

[ttrpc]
  address = "$CTRD_SOCK.ttrpc"

[debug]
  level = "${CTRD_LOG_LEVEL:-info}"

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$CTRD_ROOT/opt"
EOF
  [ "${CTRD_CRI:-0}" = 1 ] && _ctrd_cri_config "$dir"

  local path=$PATH
  [ -n "$rtdir" ] && path=$rtdir:$PATH
  # The parent-death signal stops containerd should this shell die without calling ctrd_stop.
  PATH=$path setpriv --pdeathsig TERM -- containerd --config "$dir/config.toml" \
    </dev/null >>"$dir/containerd.log" 2>&1 &
  CTRD_PID=$!
  echo "$CTRD_PID" >"$dir/containerd.pid"

  # Wait for the grpc socket (cheap to poll), then for a real answer.
  local deadline=$((SECONDS + timeout))
  while :; do
    # (It is our child: once dead it stays a zombie until ctrd_stop waits for it.)
    if ! _ctrd_alive "$CTRD_PID"; then
      _ctrd_say "containerd exited during start-up"
      ctrd_log 40
      ctrd_stop
      return 1
    fi
    if [ -S "$CTRD_SOCK" ] && timeout 20 ctr -a "$CTRD_SOCK" version >/dev/null 2>&1; then
      break
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      _ctrd_say "containerd did not answer within ${timeout}s"
      ctrd_log 40
      ctrd_stop
      return 1
    fi
    _ctrd_sleep 0.05
  done
  CTR="ctr -a $CTRD_SOCK -n $CTRD_NAMESPACE"
  export CTRD_DIR CTRD_SOCK CTRD_ROOT CTRD_PID CTRD_NAMESPACE CTR
}

CTRD_PAUSE_IMAGE=husk.test/pause:1

# The CRI plugin's part of DIR/config.toml, and the CNI network its pods get.
_ctrd_cri_config() {
  local dir=$1
  mkdir -p "$dir/cni"
  cat >"$dir/cni/10-husk-cri.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "husk-cri", "plugins": [
  {"type": "bridge", "bridge": "husk-cri0", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/24"}]],
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$dir/cni-ipam"}}]}
EOF
  cat >>"$dir/config.toml" <<EOF
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "$CTRD_PAUSE_IMAGE"
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    enable_selinux = false
    disable_apparmor = true
    [plugins."io.containerd.grpc.v1.cri".containerd]
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata]
        runtime_type = "io.containerd.kata.v2"
        privileged_without_host_devices = true
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "$dir/cni"
EOF
}

# Imports a pause image for CRI's sandbox containers into containerd namespace k8s.io: busybox
# whose command sleeps forever (the real pause image cannot be pulled here).
ctrd_import_pause() {
  local tarball
  tarball=$(IMAGE_CMD='["sleep","2147483647"]' ctrd_busybox_tar "$CTRD_PAUSE_IMAGE") || return 1
  ctr -a "$CTRD_SOCK" -n k8s.io images import "$tarball" >"$CTRD_DIR/import.log" 2>&1 || {
    _ctrd_say "ctr images import $tarball failed:"
    sed 's/^/  | /' "$CTRD_DIR/import.log" >&2
    return 1
  }
}

# Finds the shims that our containerd started: processes whose command line has "-address"
# followed by our socket (the runc shim and containerd-shim-kata-v2 both get it). Sets the arrays
# _ctrd_shims (pids) and _ctrd_shim_tasks ("NAMESPACE ID" of each).
_ctrd_find_shims() {
  local f pid i args ns id ours
  _ctrd_shims=()
  _ctrd_shim_tasks=()
  [ -n "$CTRD_SOCK" ] || return 0
  # Pure bash: forking a grep per process costs seconds under TCG.
  for f in /proc/[0-9]*/cmdline; do
    pid=${f#/proc/}
    pid=${pid%/cmdline}
    [ "$pid" = "$$" ] && continue
    args=()
    mapfile -d '' -t args 2>/dev/null <"$f" || continue
    ns="" id="" ours=""
    for ((i = 0; i + 1 < ${#args[@]}; i++)); do
      case "${args[i]}" in
        -address) [ "${args[i + 1]}" = "$CTRD_SOCK" ] && ours=1 ;;
        -namespace) ns=${args[i + 1]} ;;
        -id) id=${args[i + 1]} ;;
      esac
    done
    if [ -n "$ours" ]; then
      _ctrd_shims+=("$pid")
      _ctrd_shim_tasks+=("$ns $id")
    fi
  done
}

# All descendants of the given pids (children first listed after their parent).
_ctrd_descendants() {
  local p c f kids
  for p in "$@"; do
    for f in /proc/"$p"/task/*/children; do
      [ -r "$f" ] || continue
      read -r -a kids 2>/dev/null <"$f" || true
      for c in "${kids[@]}"; do
        echo "$c"
        _ctrd_descendants "$c"
      done
    done
  done
}

# Succeeds while pid $1 exists and is not a zombie (an orphan stays a zombie until PID 1 reaps it).
_ctrd_alive() {
  local stat
  read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

# Waits up to $1 seconds for all the other pids to be gone.
_ctrd_wait_gone() {
  local limit=$1 p alive
  shift
  local deadline=$((SECONDS + limit))
  while :; do
    alive=""
    for p in "$@"; do
      _ctrd_alive "$p" && alive="$alive $p"
    done
    [ -z "$alive" ] && return 0
    [ "$SECONDS" -ge "$deadline" ] && return 1
    _ctrd_sleep 0.05
  done
}

# Prints the mount points at or under $1, the latest mount first; fails when there are none.
_ctrd_mounts_under() {
  local base=$1 mp i
  local mps=()
  [ -n "$base" ] || return 1
  # Field 5 of mountinfo is the mount point (a space would appear as \040; our paths have none).
  while read -r _ _ _ _ mp _; do
    case "$mp" in "$base" | "$base"/*) mps+=("$mp") ;; esac
  done </proc/self/mountinfo
  for ((i = ${#mps[@]} - 1; i >= 0; i--)); do
    echo "${mps[i]}"
  done
  [ ${#mps[@]} -gt 0 ]
}

# Unmounts everything mounted at or under $1. (No process substitution here: the test host's
# devtmpfs has no /dev/fd, which bash needs for it.)
_ctrd_umount_under() {
  local mp
  { _ctrd_mounts_under "$1" || true; } | while read -r mp; do
    umount -l -- "$mp" 2>/dev/null || true
  done
}

ctrd_stop() {
  local timeout=${CTRD_TIMEOUT:-60} t ns id victims
  [ -n "$CTRD_SOCK" ] || return 0

  # Tasks still running (a test that failed half-way, a `ctr run -d`): once containerd is gone
  # nobody would clean them up. Ask containerd first, so that the shims shut down properly (and
  # remove their sockets in /run/containerd/s and the runtime's state), then kill whatever is left
  # of the shims and of everything below them (containers, VMMs).
  _ctrd_find_shims
  if [ ${#_ctrd_shims[@]} -gt 0 ] && [ -n "$CTRD_PID" ] && _ctrd_alive "$CTRD_PID"; then
    for t in "${_ctrd_shim_tasks[@]}"; do
      read -r ns id <<<"$t"
      if [ -z "$ns" ] || [ -z "$id" ]; then continue; fi
      timeout 20 ctr -a "$CTRD_SOCK" -n "$ns" tasks delete -f "$id" >/dev/null 2>&1 || true
      timeout 20 ctr -a "$CTRD_SOCK" -n "$ns" containers delete "$id" >/dev/null 2>&1 || true
    done
    _ctrd_find_shims
  fi
  if [ ${#_ctrd_shims[@]} -gt 0 ]; then
    # shellcheck disable=SC2207 # pids are words
    victims=($(_ctrd_descendants "${_ctrd_shims[@]}") "${_ctrd_shims[@]}")
    kill -KILL "${victims[@]}" 2>/dev/null || true
    _ctrd_wait_gone 5 "${victims[@]}" || _ctrd_say "some shim processes did not die: ${victims[*]}"
    # What a shim would have removed itself: its socket, named after the sha256 of
    # "ADDRESS/NAMESPACE/ID", and runc's state of the container.
    for t in "${_ctrd_shim_tasks[@]}"; do
      read -r ns id <<<"$t"
      if [ -z "$ns" ] || [ -z "$id" ]; then continue; fi
      t=$(printf '%s' "$CTRD_SOCK/$ns/$id" | sha256sum)
      rm -f -- "/run/containerd/s/${t%% *}"
      if [ -d "/run/containerd/runc/$ns/$id" ]; then
        runc --root "/run/containerd/runc/$ns" delete -f "$id" >/dev/null 2>&1 || true
      fi
    done
  fi

  if [ -n "$CTRD_PID" ] && kill -0 "$CTRD_PID" 2>/dev/null; then
    kill -TERM "$CTRD_PID" 2>/dev/null || true
    if ! _ctrd_wait_gone "$timeout" "$CTRD_PID"; then
      _ctrd_say "containerd did not stop within ${timeout}s of SIGTERM; sending SIGKILL"
      kill -KILL "$CTRD_PID" 2>/dev/null || true
      _ctrd_wait_gone 5 "$CTRD_PID" || true
    fi
    wait "$CTRD_PID" 2>/dev/null || true
  fi
  CTRD_PID=""

  # Leftover rootfs and snapshot mounts, then the root itself (it lives on a tmpfs: free it).
  _ctrd_umount_under "$CTRD_DIR/state"
  if [ -n "$CTRD_ROOT_CREATED" ]; then
    _ctrd_umount_under "$CTRD_ROOT_CREATED"
    if [ -n "$CTRD_ROOT_MOUNTED" ]; then
      umount -- "$CTRD_ROOT_MOUNTED" 2>/dev/null || umount -l -- "$CTRD_ROOT_MOUNTED" 2>/dev/null || true
      rmdir -- "$CTRD_ROOT_MOUNTED" 2>/dev/null || true
    elif ! _ctrd_mounts_under "$CTRD_ROOT_CREATED" >/dev/null; then
      rm -rf -- "$CTRD_ROOT_CREATED"
    fi
  fi
  CTRD_ROOT_CREATED=""
  CTRD_ROOT_MOUNTED=""
  # The namespace's parent cgroups that runc leaves behind (cgroup v2 and v1), if empty.
  rmdir /sys/fs/cgroup/"$CTRD_NAMESPACE" /sys/fs/cgroup/*/"$CTRD_NAMESPACE" 2>/dev/null || true
  rm -f -- "$CTRD_SOCK" "$CTRD_SOCK.ttrpc"
  CTRD_SOCK=""
  CTRD_ROOT=""
  return 0
}

# Prints the path of a busybox image tarball for NAME, building it when needed. Built images are
# kept in $HUSK_CACHE/containerd/ (default ~/.cache/husk), named after the hashes of the busybox
# binary and of make-busybox-image.sh, so a run on the host warms the cache for the test host
# (which sees the host's files; its own writes are thrown away).
ctrd_busybox_tar() {
  local name=${1:-docker.io/library/busybox:latest} sums h1 h2 cache f
  if [ -n "${CTRD_BUSYBOX_TAR:-}" ]; then
    echo "$CTRD_BUSYBOX_TAR"
    return 0
  fi
  sums=$(sha256sum "$CTRD_HERE/make-busybox-image.sh" "${BUSYBOX:-/bin/busybox}") || return 1
  h1=${sums:0:12}
  h2=${sums#*$'\n'}
  h2=${h2:0:12}
  cache=${HUSK_CACHE:-${HOME:-/root}/.cache/husk}/containerd
  f=$cache/busybox-$h1-$h2-${name//[^A-Za-z0-9._-]/_}${IMAGE_CMD:+-${IMAGE_CMD//[^A-Za-z0-9]/_}}.tar
  if [ ! -f "$f" ]; then
    if ! { mkdir -p -- "$cache" 2>/dev/null && [ -w "$cache" ]; }; then
      # No cache to write to: build a private copy.
      [ -n "$CTRD_DIR" ] || {
        _ctrd_say "ctrd_busybox_tar: $cache is not writable and no CTRD_DIR is set"
        return 1
      }
      f=$CTRD_DIR/busybox-$h1-$h2-${name//[^A-Za-z0-9._-]/_}.tar
    fi
    [ -f "$f" ] || "$CTRD_HERE/make-busybox-image.sh" "$f" "$name" >&2 || return 1
  fi
  echo "$f"
}

# Imports the busybox image (see ctrd_busybox_tar) into our containerd.
ctrd_import_busybox() {
  local name=${1:-docker.io/library/busybox:latest} tarball
  [ -n "$CTRD_SOCK" ] || {
    _ctrd_say "ctrd_import_busybox: containerd is not started (ctrd_start)"
    return 1
  }
  tarball=$(ctrd_busybox_tar "$name") || return 1
  ctr -a "$CTRD_SOCK" -n "$CTRD_NAMESPACE" images import "$tarball" >"$CTRD_DIR/import.log" 2>&1 || {
    _ctrd_say "ctr images import $tarball failed:"
    sed 's/^/  | /' "$CTRD_DIR/import.log" >&2
    return 1
  }
}

# husk_ctrd_setup WORKDIR: the usual start of a husk scenario. Writes a configuration.toml that
# points at this build tree (KATA_CONF_FILE, which containerd passes to its shims), starts our
# containerd with target/release on PATH (for containerd-shim-kata-v2) and imports busybox.
# Further arguments are extra lines for [hypervisor.husk], one key each.
husk_ctrd_setup() {
  local work=$1 repo
  shift
  repo=$(cd "$CTRD_HERE/../.." && pwd)
  {
    echo "[hypervisor.husk]"
    echo "path = \"$repo/target/release/husk-vmm\""
    echo "kernel = \"$repo/target/guest/vmlinux\""
    echo "initrd = \"$repo/target/guest/initramfs.img\""
    for line in "$@"; do echo "$line"; done
  } > "$work/configuration.toml"
  export KATA_CONF_FILE=$work/configuration.toml
  ctrd_start "$work/ctrd" "$repo/target/release" >/dev/null || return 1
  ctrd_import_busybox >/dev/null
}

# husk_ctrd_restart: stops containerd (its shims and tasks keep running) and starts it again on
# the same config, root and state, as a package upgrade or a crash and systemd restart would.
husk_ctrd_restart() {
  local repo
  repo=$(cd "$CTRD_HERE/../.." && pwd)
  kill -TERM "$CTRD_PID" 2>/dev/null
  wait "$CTRD_PID" 2>/dev/null
  PATH=$repo/target/release:$PATH setpriv --pdeathsig TERM -- containerd --config "$CTRD_DIR/config.toml" \
    </dev/null >>"$CTRD_DIR/containerd.log" 2>&1 &
  CTRD_PID=$!
  echo "$CTRD_PID" >"$CTRD_DIR/containerd.pid"
  export CTRD_PID
  for _ in $(seq 600); do
    timeout 20 ctr -a "$CTRD_SOCK" version >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "containerd did not come back" >&2
  return 1
}

# husk_task_gone NAME: SIGKILL task NAME, wait until it is STOPPED, delete task and container.
husk_task_gone() {
  $CTR task kill -s SIGKILL "$1"
  echo "after kill $1: $(husk_task_stopped "$1")"
  $CTR task delete "$1" && $CTR container delete "$1"
}

# husk_task_stopped NAME: waits (up to 10 s) until task NAME is STOPPED; prints its last state.
husk_task_stopped() {
  local st=""
  for _ in $(seq 50); do
    st=$($CTR task ls | awk -v c="$1" '$1==c{print $3}')
    [ "$st" = STOPPED ] && break
    sleep 0.2
  done
  echo "$st"
}

# cni NETNS ADD|DEL: CNI's bridge plugin with host-local IPAM on the namespace
# /var/run/netns/NETNS, as containerd's CRI runs it for a pod; ADD prints the (IPv4) address it
# gave. With CNI_IPV6=1 the network is dual-stack (fd77::/64 beside 10.77.0.0/24, a default
# route for each), as a dual-stack cluster's CNI makes it; use the same setting for DEL.
cni() {
  local conf ranges='[[{"subnet":"10.77.0.0/24"}]' routes='[{"dst":"0.0.0.0/0"}'
  if [ "${CNI_IPV6:-0}" = 1 ]; then
    ranges="$ranges,"'[{"subnet":"fd77::/64"}]' routes="$routes,"'{"dst":"::/0"}'
  fi
  conf=$(printf '{"cniVersion":"1.0.0","name":"husk-test","type":"bridge","bridge":"husk-br0","isGateway":true,"ipMasq":false,"ipam":{"type":"host-local","ranges":%s],"routes":%s],"dataDir":"%s/cni-ipam"}}' \
    "$ranges" "$routes" "${WORK:?}")
  echo "$conf" | CNI_COMMAND=$2 CNI_CONTAINERID=$1 CNI_NETNS=/var/run/netns/$1 CNI_IFNAME=eth0 \
    CNI_PATH=/usr/lib/cni /usr/lib/cni/bridge |
    python3 -c 'import json,sys; r=sys.stdin.read().strip(); print(json.loads(r)["ips"][0]["address"].split("/")[0] if r else "")'
}

# The global IPv6 address CNI gave namespace $1's eth0.
cni_ipv6() {
  ip -n "$1" -6 -o addr show dev eth0 scope global | awk '{sub("/.*", "", $4); print $4; exit}'
}

# netns_wait_listen NETNS PORT: waits (up to 30 s) until something listens on TCP PORT in NETNS.
netns_wait_listen() {
  for _ in $(seq 100); do
    ip netns exec "$1" ss -ltn 2>/dev/null | grep -q ":$2 " && return 0
    sleep 0.3
  done
  echo "nothing listens on port $2 in $1" >&2
  return 1
}

# What the pod namespace holds: links (without counters) and qdiscs.
netns_state() {
  ip -n "$1" -o link show | sed 's/ *link\/ether.*//' | sort
  tc -n "$1" qdisc show | sort
}
