//! CPUID for each vCPU: KVM's supported set, with the hypervisor bit, the
//! APIC ID and the topology (one thread per core, all cores in one socket)
//! filled in.
//!
//! The functions here work on plain `kvm_cpuid_entry2` slices so they can be
//! tested without `/dev/kvm`.

use kvm_bindings::kvm_cpuid_entry2;

/// Leaf 1 ECX: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: more than one logical processor per package.
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 1 ECX: x2APIC supported.
const LEAF1_ECX_X2APIC: u32 = 1 << 21;

/// Topology level types in leaves 0xb / 0x1f.
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Bits needed to hold `count` distinct IDs.
fn id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

/// Adjust KVM's supported CPUID for vCPU `index` of `count` vCPUs.
pub fn filter_entries(entries: &mut [kvm_cpuid_entry2], index: u32, count: u32) {
    let apic_id = index;
    let core_bits = id_bits(count);
    for e in entries.iter_mut() {
        match e.function {
            0x1 => {
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                // Initial APIC ID (31:24), logical processors per package (23:16),
                // keep the CLFLUSH line size (15:8) and brand index (7:0).
                let logical = count.min(255);
                e.ebx = (apic_id << 24) | (logical << 16) | (e.ebx & 0xffff);
                if count > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            0x4 => {
                // Deterministic cache parameters (Intel). Cores per package
                // minus one in 31:26; threads sharing this cache minus one in 25:14.
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                let cores = (count - 1).min(63);
                e.eax = (e.eax & 0x3fff) | (cores << 26) | ((sharing & 0xfff) << 14);
            }
            0xb | 0x1f => {
                // Extended topology: SMT level (1 thread per core) then core level.
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (LEVEL_TYPE_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = core_bits;
                        e.ebx = count;
                        e.ecx = (LEVEL_TYPE_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            0x8000_0008 => {
                // AMD: number of cores minus one (7:0) and APIC ID core bits (15:12).
                e.ecx = (e.ecx & !0xf0ff) | ((count - 1) & 0xff) | (core_bits << 12);
            }
            0x8000_001e => {
                // AMD extended APIC ID, core ID with one thread per core, node 0.
                e.eax = apic_id;
                e.ebx = apic_id & 0xff;
                e.ecx = 0;
            }
            _ => {}
        }
    }
}

/// True when the entries advertise x2APIC.
pub fn has_x2apic(entries: &[kvm_cpuid_entry2]) -> bool {
    entries
        .iter()
        .any(|e| e.function == 1 && e.ecx & LEAF1_ECX_X2APIC != 0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::cast_possible_truncation)]
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0x0000_0800, // CLFLUSH 8 quadwords
            edx: LEAF1_EDX_HTT,
            eax: 0x121, // cache level 1, type data, self-initializing
            ..Default::default()
        }
    }

    fn find(e: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *e.iter().find(|x| x.function == f && x.index == i).unwrap()
    }

    #[test]
    fn id_bits_rounds_up_to_a_power_of_two() {
        assert_eq!(
            [1, 2, 3, 4, 5, 8, 9, 32, 33].map(id_bits),
            [0, 1, 2, 2, 3, 3, 4, 5, 6]
        );
    }

    #[test]
    fn leaf1_has_hypervisor_bit_and_apic_id() {
        let mut e = vec![entry(1, 0)];
        filter_entries(&mut e, 3, 4);
        assert_ne!(e[0].ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_eq!(e[0].ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(e[0].edx & LEAF1_EDX_HTT, 0);
        let mut e = vec![entry(1, 0)];
        filter_entries(&mut e, 0, 1);
        assert_eq!(e[0].edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn extended_topology_describes_one_socket_of_single_thread_cores() {
        let mut e = vec![entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)];
        filter_entries(&mut e, 5, 6);
        let smt = find(&e, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx >> 8, smt.edx), (0, 1, 1, 5));
        let core = find(&e, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (3, 6, 0x201, 5));
        let end = find(&e, 0xb, 2);
        assert_eq!(
            (end.ebx, end.ecx >> 8),
            (0, 0),
            "level type invalid ends enumeration"
        );
    }

    #[test]
    fn cache_leaf_counts_cores_and_sharing() {
        let mut l1 = entry(4, 0);
        l1.eax = 0x121;
        let mut l3 = entry(4, 3);
        l3.eax = 0x163;
        let mut e = vec![l1, l3];
        filter_entries(&mut e, 0, 8);
        assert_eq!(e[0].eax >> 26, 7);
        assert_eq!((e[0].eax >> 14) & 0xfff, 0);
        assert_eq!((e[1].eax >> 14) & 0xfff, 7);
        assert_eq!(
            e[1].eax & 0x3fff,
            0x163 & 0x3fff,
            "cache type and level kept"
        );
    }

    #[test]
    fn amd_leaves() {
        let mut e = vec![entry(0x8000_0008, 0), entry(0x8000_001e, 0)];
        filter_entries(&mut e, 2, 4);
        assert_eq!(e[0].ecx & 0xff, 3);
        assert_eq!((e[0].ecx >> 12) & 0xf, 2);
        assert_eq!(e[1].eax, 2);
    }
}
