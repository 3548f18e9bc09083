//! Intel MultiProcessor Specification 1.4 tables: how a guest kernel without
//! ACPI finds its CPUs, the IOAPIC and the interrupt wiring.
//!
//! The floating pointer structure sits at the start of the EBDA (where Linux
//! looks for it); the configuration table follows it. Everything from the EBDA
//! to 1 MiB is reserved in the e820 map, so the table may grow past 0xa0000.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{ACPI_ADDR, APIC_ADDR_32, IOAPIC_ADDR_32, IOAPIC_PINS, MPTABLE_ADDR};

/// Errors of [`self`].
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// Too many vCPUs for xAPIC IDs (the IOAPIC needs the next free ID).
    #[error("{0} vCPUs do not fit in an MP table (at most {max})", max = MAX_CPUS)]
    TooManyCpus(u32),
    /// The table would run into the ACPI area.
    #[error("MP table of {0} bytes does not fit below the ACPI area")]
    TooBig(usize),
    /// Writing the table into guest memory failed.
    #[error("writing the MP table into guest memory: {0}")]
    GuestWrite(#[from] vm_memory::GuestMemoryError),
}

/// Largest vCPU count an MP table can describe (APIC IDs 0..=253, IOAPIC 254).
pub const MAX_CPUS: u32 = 254;

const MPC_SPEC_REV: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_INTSRC: u8 = 3;
const ENTRY_LINTSRC: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const FPS_LEN: usize = 16;
const HEADER_LEN: usize = 44;

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |s, b| s.wrapping_add(*b))
        .wrapping_neg()
}

/// Build the MP floating pointer and configuration table for `cpus` vCPUs,
/// placed at `addr`.
pub fn build(cpus: u32, addr: u64) -> Result<Vec<u8>, MptableError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(MptableError::TooManyCpus(cpus));
    }
    // The IOAPIC takes the first ID after the CPUs.
    let ioapic_id = u8::try_from(cpus).map_err(|_| MptableError::TooManyCpus(cpus))?;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..ioapic_id {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, id, APIC_VERSION, flags]);
        // CPU signature (family 6), feature flags (FPU, APIC), reserved.
        entries.extend_from_slice(&0x600u32.to_le_bytes());
        entries.extend_from_slice(&0x201u32.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR_32.to_le_bytes());
    count += 1;
    for irq in 0..IOAPIC_PINS {
        // ISA IRQ n on IOAPIC pin n, bus-default polarity and trigger.
        entries.extend_from_slice(&[ENTRY_INTSRC, INT_TYPE_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // LINT0: ExtINT from the PIC; LINT1: NMI; to all local APICs.
    entries.extend_from_slice(&[ENTRY_LINTSRC, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[ENTRY_LINTSRC, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_len = HEADER_LEN + entries.len();
    let total = FPS_LEN + table_len;
    if addr + total as u64 > ACPI_ADDR {
        return Err(MptableError::TooBig(total));
    }
    let table_addr = addr + FPS_LEN as u64;

    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(
        &u16::try_from(table_len)
            .map_err(|_| MptableError::TooBig(total))?
            .to_le_bytes(),
    );
    header.push(MPC_SPEC_REV);
    header.push(0); // checksum, below
    header.extend_from_slice(b"VMM     "); // OEM ID
    header.extend_from_slice(b"MICROVM     "); // product ID
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&APIC_ADDR_32.to_le_bytes());
    header.extend_from_slice(&[0, 0, 0, 0]); // extended table length, checksum, reserved
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fps = Vec::with_capacity(FPS_LEN);
    fps.extend_from_slice(b"_MP_");
    fps.extend_from_slice(
        &u32::try_from(table_addr)
            .map_err(|_| MptableError::TooBig(total))?
            .to_le_bytes(),
    );
    fps.push(1); // length in 16-byte units
    fps.push(MPC_SPEC_REV);
    fps.push(0); // checksum, below
    fps.extend_from_slice(&[0; 5]); // feature bytes: a configuration table is present
    fps[10] = checksum(&fps);

    fps.extend_from_slice(&table);
    Ok(fps)
}

/// Write the MP table for `cpus` vCPUs into guest memory.
pub fn setup(mem: &GuestMemoryMmap, cpus: u32) -> Result<(), MptableError> {
    let bytes = build(cpus, MPTABLE_ADDR)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_ADDR))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::cast_possible_truncation)]
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_pointers_are_valid() {
        for cpus in [1, 2, 4, 32, MAX_CPUS] {
            let t = build(cpus, MPTABLE_ADDR).unwrap();
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0);
            let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
            assert_eq!(ptr, MPTABLE_ADDR + 16);
            let table = &t[16..];
            assert_eq!(&table[0..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0, "{cpus} cpus");
            let count = u16::from_le_bytes([table[34], table[35]]) as u32;
            assert_eq!(count, cpus + 1 + 1 + 24 + 2);
        }
    }

    #[test]
    fn processors_are_enumerated_with_bsp_first() {
        let t = build(3, MPTABLE_ADDR).unwrap();
        let entries = &t[16 + 44..];
        for id in 0..3usize {
            let e = &entries[id * 20..id * 20 + 20];
            assert_eq!((e[0], e[1]), (ENTRY_PROCESSOR, id as u8));
            assert_eq!(e[3] & CPU_BOOTPROCESSOR != 0, id == 0);
            assert_ne!(e[3] & CPU_ENABLED, 0);
        }
        let ioapic = &entries[60 + 8..60 + 16];
        assert_eq!((ioapic[0], ioapic[1]), (ENTRY_IOAPIC, 3));
    }

    #[test]
    fn bad_cpu_counts_are_rejected() {
        assert!(matches!(
            build(0, MPTABLE_ADDR),
            Err(MptableError::TooManyCpus(0))
        ));
        assert!(matches!(
            build(255, MPTABLE_ADDR),
            Err(MptableError::TooManyCpus(255))
        ));
        assert!(matches!(
            build(4, ACPI_ADDR - 100),
            Err(MptableError::TooBig(_))
        ));
    }
}
