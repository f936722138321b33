#!/usr/bin/env bash
# Starts husk-vmm (jailed, or with --no-jail) with a sleeping guest, a vsock socket and a
# virtio-fs share, and prints what the host sees of it as KEY=VALUE lines: namespaces, root,
# capabilities, no_new_privs and the seccomp mode of every thread. Then kills the process it
# started and reports whether the VMM went with it. Run as root where KVM boots our guest.
# Usage: jail-facts.sh VMM KERNEL INITRD [--no-jail]
set -u
vmm=$1 kernel=$2 initrd=$3 extra=${4:-}
dir=$(mktemp -d /tmp/jail-facts.XXXXXX)
mkdir -p "$dir/share" "$dir/run"
"$vmm" --kernel "$kernel" --initrd "$initrd" --memory 128 --console "$dir/run/console.log" \
  --vsock-uds "$dir/run/vsock.sock" --fs "tag=share,path=$dir/share" $extra \
  --append '-- /bin/busybox sleep 60' 2>"$dir/stderr" &
outer=$!
# The VMM is the outer process itself (--no-jail) or its only child (the jail).
vmm_pid=
for _ in $(seq 200); do
  if [ -n "$extra" ]; then vmm_pid=$outer; else
    vmm_pid=$(cat "/proc/$outer/task/$outer/children" 2>/dev/null | awk '{print $1}'); fi
  # Started when its vCPU thread exists.
  [ -n "$vmm_pid" ] && grep -qs '^vcpu0$' /proc/"$vmm_pid"/task/*/comm && break
  sleep 0.1
done
[ -n "$vmm_pid" ] || { echo "NO_VMM=1"; cat "$dir/stderr"; exit 1; }
sleep 1
field() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$2/status"; }
for p in outer:$outer vmm:$vmm_pid; do
  name=${p%%:*} pid=${p#*:}
  echo "${name}_CapEff=$(field CapEff "$pid")"
  echo "${name}_CapBnd=$(field CapBnd "$pid")"
  echo "${name}_NoNewPrivs=$(field NoNewPrivs "$pid")"
  echo "${name}_Seccomp=$(field Seccomp "$pid")"
done
for ns in mnt pid net ipc uts; do
  [ "$(readlink /proc/self/ns/$ns)" = "$(readlink "/proc/$vmm_pid/ns/$ns")" ] && s=same || s=own
  echo "ns_$ns=$s"
done
echo "vmm_NSpid=$(awk '$1 == "NSpid:" {print $NF}' "/proc/$vmm_pid/status")"
echo "root_entries=$(ls /proc/$vmm_pid/root/ 2>/dev/null | tr '\n' ' ')"
echo "root_has_etc=$([ -e "/proc/$vmm_pid/root/etc" ] && echo yes || echo no)"
for t in /proc/"$vmm_pid"/task/*; do
  echo "thread $(cat "$t/comm") Seccomp=$(awk '$1 == "Seccomp:" {print $2}' "$t/status")"
done
kill -9 "$outer"
wait "$outer" 2>/dev/null
for _ in $(seq 50); do [ -d "/proc/$vmm_pid" ] || break; sleep 0.1; done
echo "vmm_alive_after_kill=$([ -d "/proc/$vmm_pid" ] && echo yes || echo no)"
echo "stderr=$(tr '\n' ' ' < "$dir/stderr")"
rm -rf "$dir"
