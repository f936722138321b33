#!/usr/bin/env python3
"""Proves that /dev/kvm runs guest code: a one-vCPU VM executes five bytes of real-mode code
(`mov al, 0x42; out 0x10, al; hlt`) and must exit first with that port write, then with HLT.
selftest.sh runs it inside the test host. Prints "kvm ok: ..." and exits 0 on success."""

import ctypes
import fcntl
import mmap
import os
import struct
import sys

KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_GET_VCPU_MMAP_SIZE = 0xAE04
KVM_CREATE_VCPU = 0xAE41
KVM_SET_USER_MEMORY_REGION = 0x4020AE46  # _IOW(0xAE, 0x46, 32-byte struct)
KVM_RUN = 0xAE80
KVM_SET_REGS = 0x4090AE82  # _IOW(0xAE, 0x82, 144-byte struct kvm_regs)
KVM_GET_SREGS = 0x8138AE83  # _IOR(0xAE, 0x83, 312-byte struct kvm_sregs)
KVM_SET_SREGS = 0x4138AE84
KVM_EXIT_IO = 2
KVM_EXIT_HLT = 5

CODE = bytes([0xB0, 0x42, 0xE6, 0x10, 0xF4])
LOAD_ADDR = 0x1000


def main():
    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    api = fcntl.ioctl(kvm, KVM_GET_API_VERSION)
    if api != 12:
        sys.exit(f"unexpected KVM API version {api}")
    vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)

    mem = mmap.mmap(-1, 0x10000)
    mem[LOAD_ADDR:LOAD_ADDR + len(CODE)] = CODE
    addr = ctypes.addressof(ctypes.c_char.from_buffer(mem))
    region = struct.pack("=IIQQQ", 0, 0, 0, len(mem), addr)
    fcntl.ioctl(vm, KVM_SET_USER_MEMORY_REGION, region)

    vcpu = fcntl.ioctl(vm, KVM_CREATE_VCPU, 0)
    run_size = fcntl.ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE)
    run = mmap.mmap(vcpu, run_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    # Real mode with CS base 0, so the code runs at guest physical LOAD_ADDR.
    sregs = bytearray(fcntl.ioctl(vcpu, KVM_GET_SREGS, bytes(312)))
    struct.pack_into("=Q", sregs, 0, 0)  # cs.base
    struct.pack_into("=H", sregs, 12, 0)  # cs.selector
    fcntl.ioctl(vcpu, KVM_SET_SREGS, bytes(sregs))
    regs = [0] * 18
    regs[16] = LOAD_ADDR  # rip
    regs[17] = 0x2  # rflags: bit 1 is always set
    fcntl.ioctl(vcpu, KVM_SET_REGS, struct.pack("=18Q", *regs))

    fcntl.ioctl(vcpu, KVM_RUN, 0)
    reason = struct.unpack_from("=I", run, 8)[0]
    if reason != KVM_EXIT_IO:
        sys.exit(f"first exit reason {reason}, expected KVM_EXIT_IO")
    direction, size, port, count, data_offset = struct.unpack_from("=BBHIQ", run, 32)
    value = run[data_offset]
    if (direction, size, port, count, value) != (1, 1, 0x10, 1, 0x42):
        sys.exit(f"unexpected port I/O: dir={direction} size={size} port={port:#x} value={value:#x}")

    fcntl.ioctl(vcpu, KVM_RUN, 0)
    reason = struct.unpack_from("=I", run, 8)[0]
    if reason != KVM_EXIT_HLT:
        sys.exit(f"second exit reason {reason}, expected KVM_EXIT_HLT")
    print(f"kvm ok: API {api}, guest wrote {value:#x} to port {port:#x} and halted")


if __name__ == "__main__":
    main()
