//! The CPUID each vCPU sees: what KVM supports, with the topology filled in and the leaves that
//! would mislead the guest cleaned up.

use kvm_bindings::kvm_cpuid_entry2;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_THERMAL: u32 = 0x6;
const LEAF_PMU: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_XSAVE: u32 = 0xd;
const LEAF_EXT_SIZES: u32 = 0x8000_0008;

const LEGACY_AREA: u32 = 512;
const XSAVE_HEADER: u32 = 64;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;

/// The per-vCPU facts CPUID must agree with.
#[derive(Clone, Copy, Debug)]
pub struct Topology {
    pub vcpu_id: u8,
    pub vcpu_count: u8,
    pub tsc_deadline: bool,
}

/// Rewrites KVM's supported CPUID into what vCPU `topo.vcpu_id` should see.
///
/// Every vCPU is one core of one package, so the guest counts them all as CPUs. Leaf 0xD is made
/// consistent: some hosts (TCG-emulated CPUs among them) report XSAVE components with no size, or
/// an area size smaller than the components need; the guest kernel then warns or miscomputes.
pub fn sanitize(entries: &mut [kvm_cpuid_entry2], topo: Topology) {
    let count = u32::from(topo.vcpu_count.max(1));
    let apic_id = u32::from(topo.vcpu_id);
    // Bits needed to hold a core number: the x2APIC-ID shift of the core level.
    let core_bits = 32 - (count - 1).leading_zeros();

    let xsave = xsave_layout(entries);
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | (count << 16);
                e.ecx |= ECX_HYPERVISOR;
                if topo.tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // Cores per package - 1 in bits 31:26; each cache is private to its core.
                e.eax = (e.eax & 0x3fff) | ((count - 1) << 26);
            }
            LEAF_THERMAL | LEAF_PMU => {
                // No power management and no PMU: the guest must not probe them.
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            LEAF_TOPOLOGY => {
                e.edx = apic_id;
                match e.index {
                    0 => {
                        // SMT level: one thread per core.
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        // Core level: every vCPU in one package.
                        e.eax = core_bits;
                        e.ebx = count;
                        e.ecx = (2 << 8) | 1;
                    }
                    n => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = n;
                    }
                }
            }
            LEAF_XSAVE => sanitize_xsave(e, &xsave),
            LEAF_EXT_SIZES => {
                // AMD: number of cores - 1 in ECX[7:0], APIC-ID size in ECX[15:12].
                e.ecx = (e.ecx & !0xf0ff) | (core_bits << 12) | (count - 1);
            }
            _ => {}
        }
    }
}

/// XSAVE components that exist only when a feature bit says so: (component bit, leaf, register
/// index in [eax, ebx, ecx, edx], feature bit). A component reported without its feature makes
/// the guest kernel compute a different area size than CPUID reports.
const XSAVE_FEATURES: [(u32, u32, usize, u32); 7] = [
    (2, 0x1, 2, 28), // AVX
    (3, 0x7, 1, 14), // MPX bounds registers
    (4, 0x7, 1, 14), // MPX bounds config
    (5, 0x7, 1, 16), // AVX-512 opmask
    (6, 0x7, 1, 16), // AVX-512 upper ZMM
    (7, 0x7, 1, 16), // AVX-512 high ZMM
    (9, 0x7, 2, 3),  // PKRU
];

/// What leaf 0xD's sub-leaves say about the XSAVE components, after dropping inconsistent ones.
#[derive(Debug, Default, PartialEq)]
struct XsaveLayout {
    /// User (XCR0) components that have a size and offset, x87 and SSE always included.
    xcr0_mask: u64,
    /// Size of the standard-format area holding every component in `xcr0_mask`.
    size: u32,
}

fn xsave_layout(entries: &[kvm_cpuid_entry2]) -> XsaveLayout {
    let Some(leaf0) = entries
        .iter()
        .find(|e| e.function == LEAF_XSAVE && e.index == 0)
    else {
        return XsaveLayout::default();
    };
    let feature = |leaf: u32, reg: usize, bit: u32| {
        entries
            .iter()
            .find(|e| e.function == leaf && e.index == 0)
            .is_some_and(|e| [e.eax, e.ebx, e.ecx, e.edx][reg] & (1 << bit) != 0)
    };
    let mut reported = u64::from(leaf0.eax) | (u64::from(leaf0.edx) << 32);
    for (component, leaf, reg, bit) in XSAVE_FEATURES {
        if !feature(leaf, reg, bit) {
            reported &= !(1 << component);
        }
    }
    // x87 and SSE live in the legacy area, followed by the XSAVE header.
    let mut mask = reported & 0b11;
    let mut size = LEGACY_AREA + XSAVE_HEADER;
    for bit in 2..63 {
        if reported & (1 << bit) == 0 {
            continue;
        }
        let Some(sub) = entries
            .iter()
            .find(|e| e.function == LEAF_XSAVE && e.index == bit)
        else {
            continue;
        };
        // EAX: size of the component, EBX: its offset in the standard format.
        if sub.eax == 0 || sub.ebx < 576 {
            continue;
        }
        mask |= 1 << bit;
        size = size.max(sub.ebx + sub.eax);
    }
    XsaveLayout {
        xcr0_mask: mask,
        size,
    }
}

fn sanitize_xsave(e: &mut kvm_cpuid_entry2, xsave: &XsaveLayout) {
    match e.index {
        0 => {
            e.eax = xsave.xcr0_mask as u32;
            e.edx = (xsave.xcr0_mask >> 32) as u32;
            // ECX: the area for every supported component. EBX: the area for the components
            // enabled in XCR0, which holds only x87 at reset; KVM updates it when the guest
            // enables more (but not for x87/SSE alone, so it must start right).
            e.ecx = xsave.size;
            e.ebx = LEGACY_AREA + XSAVE_HEADER;
        }
        1 => {}
        n if n < 63 && xsave.xcr0_mask & (1 << n) == 0 && (e.ecx & 1) == 0 => {
            // A user component we dropped: it no longer exists.
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn topo(vcpu_id: u8, vcpu_count: u8) -> Topology {
        Topology {
            vcpu_id,
            vcpu_count,
            tsc_deadline: true,
        }
    }

    #[test]
    fn leaf1_carries_apic_id_count_and_hypervisor_bit() {
        let mut e = [entry(1, 0, [0x800f12, 0x0000_0800, 0, 0])];
        sanitize(&mut e, topo(3, 4));
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_eq!(e[0].ebx & 0xffff, 0x0800, "CLFLUSH size is kept");
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].ecx & ECX_TSC_DEADLINE, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let mut e = [entry(1, 0, [0, 0, 0, EDX_HTT])];
        sanitize(&mut e, topo(0, 1));
        assert_eq!(e[0].edx & EDX_HTT, 0);
    }

    #[test]
    fn topology_leaf_counts_all_vcpus_as_cores() {
        let mut e = [
            entry(0xb, 0, [9, 9, 9, 9]),
            entry(0xb, 1, [9, 9, 9, 9]),
            entry(0xb, 2, [9, 9, 9, 9]),
        ];
        sanitize(&mut e, topo(2, 3));
        assert_eq!([e[0].eax, e[0].ebx, e[0].ecx, e[0].edx], [0, 1, 1 << 8, 2]);
        assert_eq!(
            [e[1].eax, e[1].ebx, e[1].ecx, e[1].edx],
            [2, 3, (2 << 8) | 1, 2]
        );
        assert_eq!([e[2].eax, e[2].ebx, e[2].ecx, e[2].edx], [0, 0, 2, 2]);
    }

    #[test]
    fn pmu_and_thermal_leaves_are_cleared() {
        let mut e = [entry(0xa, 0, [1, 2, 3, 4]), entry(6, 0, [1, 2, 3, 4])];
        sanitize(&mut e, topo(0, 1));
        for x in e {
            assert_eq!([x.eax, x.ebx, x.ecx, x.edx], [0, 0, 0, 0]);
        }
    }

    const AVX: u32 = 1 << 28;
    const AVX512F: u32 = 1 << 16;

    #[test]
    fn xsave_sizes_are_recomputed_from_components() {
        // x87|SSE|AVX reported with an area size (ECX) that is too small for AVX.
        let mut e = [
            entry(1, 0, [0, 0, AVX, 0]),
            entry(0xd, 0, [0b111, 832, 576, 0]),
            entry(0xd, 1, [1, 0, 0, 0]),
            entry(0xd, 2, [256, 576, 0, 0]),
        ];
        sanitize(&mut e, topo(0, 1));
        assert_eq!(e[1].eax, 0b111);
        assert_eq!(e[1].ecx, 576 + 256);
        assert_eq!(e[1].ebx, 576, "EBX matches XCR0 at reset (x87 only)");
        assert_eq!(e[2].eax, 1, "sub-leaf 1 is left alone");
    }

    #[test]
    fn xsave_component_without_its_feature_bit_is_dropped() {
        // AVX offered in leaf 0xD but not in leaf 1 (seen on TCG-emulated CPUs).
        let mut e = [
            entry(1, 0, [0, 0, 0, 0]),
            entry(0xd, 0, [0b111, 832, 832, 0]),
            entry(0xd, 2, [256, 576, 0, 0]),
        ];
        sanitize(&mut e, topo(0, 1));
        assert_eq!(e[1].eax, 0b11);
        assert_eq!(e[1].ecx, 576);
        assert_eq!([e[2].eax, e[2].ebx], [0, 0], "the AVX sub-leaf is cleared");
    }

    #[test]
    fn xsave_component_without_size_is_dropped() {
        // AVX-512 bits 5..7 reported, but two of their sub-leaves give no size.
        let mut e = [
            entry(1, 0, [0, 0, AVX, 0]),
            entry(7, 0, [0, AVX512F, 0, 0]),
            entry(0xd, 0, [0b1110_0111, 0, 4096, 0]),
            entry(0xd, 2, [256, 576, 0, 0]),
            entry(0xd, 5, [0, 0, 0, 0]),
            entry(0xd, 6, [0, 0, 0, 0]),
            entry(0xd, 7, [1024, 1152, 0, 0]),
        ];
        sanitize(&mut e, topo(0, 1));
        assert_eq!(e[2].eax, 0b1000_0111);
        assert_eq!(e[2].ecx, 1152 + 1024);
    }

    #[test]
    fn no_xsave_leaf_is_fine() {
        let mut e = [entry(0, 0, [0xd, 0, 0, 0])];
        sanitize(&mut e, topo(0, 1));
        assert_eq!(e[0].eax, 0xd);
    }
}
