#!/usr/bin/env bash
# Boots the guest image N times with husk-vmm and N times with QEMU's microvm, interleaved, same
# kernel, initramfs and command line, and counts boots that reached the agent's ready line. The
# A/B that tells a fault of our VMM from one of the machine underneath. Inside the test host:
#   tests/testhost/run.sh tests/testhost/ab-boot.sh [N]
# Prints one line per failed boot (with its last console lines) and a summary line per VMM.
set -uo pipefail
cd "$(dirname "$0")/../.."
n=${1:-100}
kernel=target/guest/vmlinux
initrd=target/guest/initramfs.img
cmdline="console=ttyS0 quiet panic=-1 pci=off 8250.nr_uarts=1 tsc=reliable no_timer_check"
husk=(target/release/husk-vmm --kernel "$kernel" --initrd "$initrd" --vcpus 1 --memory 256
  --console stdio --no-rng --cmdline "$cmdline")
# acpi=off: microvm's hardware-reduced ACPI takes the serial console's ISA IRQ away.
qemu=(qemu-system-x86_64 -M microvm,acpi=off -accel kvm -cpu host -m 256 -smp 1 -kernel "$kernel"
  -initrd "$initrd" -append "$cmdline" -nodefaults -no-user-config -nographic -serial stdio -no-reboot)
out=$(mktemp)
trap 'rm -f "$out"' EXIT
declare -A ok=() bad=()
# Boots one VM and stops it at the agent's ready line (QEMU's microvm without ACPI only halts
# when the guest powers off), or after 60 s.
boot() {
  local name=$1 i=$2 pid t rc
  shift 2
  "$@" </dev/null >"$out" 2>&1 &
  pid=$!
  for t in $(seq 600); do
    grep -q 'husk-agent: ready' "$out" && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid"
  rc=$?
  if grep -q 'husk-agent: ready' "$out"; then
    ok[$name]=$((${ok[$name]:-0} + 1))
  else
    bad[$name]=$((${bad[$name]:-0} + 1))
    echo "ab-boot: $name boot $i failed (status $rc):"
    tail -n 5 "$out" | sed "s/^/ab-boot:   /"
  fi
}
for i in $(seq 1 "$n"); do
  boot husk-vmm "$i" "${husk[@]}"
  boot qemu "$i" "${qemu[@]}"
  echo "ab-boot: pair $i done (husk-vmm ${ok[husk-vmm]:-0} ok, qemu ${ok[qemu]:-0} ok)"
done
for name in husk-vmm qemu; do
  echo "ab-boot: $name: $n boots: ${ok[$name]:-0} reached the agent, ${bad[$name]:-0} failed"
done
