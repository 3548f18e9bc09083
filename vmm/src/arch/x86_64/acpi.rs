//! ACPI tables for a hardware-reduced ACPI platform (built with the rust-vmm
//! `acpi_tables` crate): RSDP, XSDT, FADT, MADT and a DSDT.
//!
//! What the guest gets from them:
//! - the CPUs and the IOAPIC (MADT), as the MP table also says;
//! - power off: the FADT's sleep control register is an I/O port; the guest
//!   writes SLP_TYP (from the DSDT's `_S5_`) with SLP_EN and vmm stops;
//! - reboot: the FADT's reset register, next to it;
//! - panic notification: a pvpanic device (`QEMU0001`) in the DSDT;
//! - its devices: COM1 (`PNP0501`), the i8042 (`PNP0303`) and every virtio-mmio
//!   device (`LNRO0005`) with their ports, MMIO windows and interrupts. On a
//!   hardware-reduced platform Linux maps interrupts only for devices ACPI
//!   describes, so nothing goes on the command line;
//! - no VGA, no CMOS RTC (IAPC_BOOT_ARCH).

use acpi_tables::aml::{
    Device, EISAName, Interrupt, Memory32Fixed, Name, Package, Path, ResourceTemplate, IO,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use devices::legacy::power::{self, RESET_VALUE, SLP_TYP_S5};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    ACPI_ADDR, ACPI_END, ACPI_PM_PORT, APIC_ADDR_32, I8042_PORT, IOAPIC_ADDR_32, IRQ_I8042_KBD,
    IRQ_SERIAL, PVPANIC_PORT, SERIAL_PORT, VIRTIO_MMIO_SIZE_32,
};

/// Errors of [`self`].
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables do not fit their region.
    #[error("ACPI tables need {0} bytes, more than the {avail} reserved", avail = ACPI_END - ACPI_ADDR)]
    TooBig(u64),
    /// Too many vCPUs for 8-bit APIC IDs.
    #[error("{0} vCPUs do not fit in a MADT with xAPIC entries")]
    TooManyCpus(u32),
    /// Writing into guest memory failed.
    #[error("writing ACPI tables into guest memory: {0}")]
    GuestWrite(#[from] vm_memory::GuestMemoryError),
}

const OEM_ID: [u8; 6] = *b"VMMVMM";
const OEM_TABLE_ID: [u8; 8] = *b"MICROVM ";
const OEM_REVISION: u32 = 1;

/// Port of the sleep control register.
pub const SLEEP_CONTROL_PORT: u64 = ACPI_PM_PORT + power::SLEEP_CONTROL;
/// Port of the sleep status register.
pub const SLEEP_STATUS_PORT: u64 = ACPI_PM_PORT + power::SLEEP_STATUS;
/// Port of the reset register.
pub const RESET_PORT: u64 = ACPI_PM_PORT + power::RESET;

// IAPC_BOOT_ARCH bits.
const IAPC_8042: u16 = 1 << 1;
const IAPC_NO_VGA: u16 = 1 << 2;
const IAPC_NO_CMOS_RTC: u16 = 1 << 5;

fn aml(obj: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    obj.to_aml_bytes(&mut v);
    v
}

fn io_reg(port: u64) -> GAS {
    GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, port)
}

/// A virtio-mmio device as the DSDT describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmioInfo {
    /// Base of its register window (one page).
    pub base: u32,
    /// Its GSI.
    pub irq: u32,
}

/// An edge-triggered, active-high, exclusive interrupt: what an irqfd gives.
fn edge_irq(gsi: u32) -> Interrupt {
    Interrupt::new(true, true, false, false, gsi)
}

fn port(p: u64) -> u16 {
    // Layout ports are all 16-bit (checked by the tests of this module).
    u16::try_from(p).unwrap_or(u16::MAX)
}

fn dsdt(virtio: &[VirtioMmioInfo]) -> Vec<u8> {
    let mut body = Vec::new();

    // Soft off: SLP_TYP for S5.
    aml_into(
        &mut body,
        &Name::new(
            Path::new("_S5_"),
            &Package::new(vec![&SLP_TYP_S5, &0u8, &0u8, &0u8]),
        ),
    );

    // COM1.
    let hid = Name::new(Path::new("_HID"), &EISAName::new("PNP0501"));
    let uid = Name::new(Path::new("_UID"), &0u8);
    let io = IO::new(port(SERIAL_PORT), port(SERIAL_PORT), 1, 8);
    let irq = edge_irq(IRQ_SERIAL);
    let crs = Name::new(Path::new("_CRS"), &ResourceTemplate::new(vec![&io, &irq]));
    aml_into(
        &mut body,
        &Device::new(Path::new("COM1"), vec![&hid, &uid, &crs]),
    );

    // i8042 keyboard controller: data port, command/status port, keyboard IRQ.
    let hid = Name::new(Path::new("_HID"), &EISAName::new("PNP0303"));
    let data = IO::new(port(I8042_PORT), port(I8042_PORT), 1, 1);
    let cmd = IO::new(port(I8042_PORT + 4), port(I8042_PORT + 4), 1, 1);
    let irq = edge_irq(IRQ_I8042_KBD);
    let crs = Name::new(
        Path::new("_CRS"),
        &ResourceTemplate::new(vec![&data, &cmd, &irq]),
    );
    aml_into(&mut body, &Device::new(Path::new("PS2K"), vec![&hid, &crs]));

    // pvpanic: the guest reports a kernel panic.
    let hid = Name::new(Path::new("_HID"), &"QEMU0001");
    let io = IO::new(port(PVPANIC_PORT), port(PVPANIC_PORT), 1, 1);
    let crs = Name::new(Path::new("_CRS"), &ResourceTemplate::new(vec![&io]));
    let sta = Name::new(Path::new("_STA"), &0x0fu8);
    aml_into(
        &mut body,
        &Device::new(Path::new("PEVT"), vec![&hid, &crs, &sta]),
    );

    // virtio-mmio devices.
    for (i, dev) in (0u32..).zip(virtio) {
        let hid = Name::new(Path::new("_HID"), &"LNRO0005");
        let uid = Name::new(Path::new("_UID"), &i);
        let mem = Memory32Fixed::new(true, dev.base, VIRTIO_MMIO_SIZE_32);
        let irq = edge_irq(dev.irq);
        let crs = Name::new(Path::new("_CRS"), &ResourceTemplate::new(vec![&mem, &irq]));
        let name = format!("VR{:02X}", i & 0xff);
        aml_into(
            &mut body,
            &Device::new(Path::new(&name), vec![&hid, &uid, &crs]),
        );
    }

    let mut t = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    t.append_slice(&body);
    t.as_slice().to_vec()
}

fn aml_into(sink: &mut Vec<u8>, obj: &dyn Aml) {
    obj.to_aml_bytes(sink);
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton) // no fixed power button
        .flag(Flags::SlpButton) // no fixed sleep button
        .dsdt_64(dsdt_addr);
    b.iapc_boot_arch = (IAPC_8042 | IAPC_NO_VGA | IAPC_NO_CMOS_RTC).into();
    b.reset_reg = io_reg(RESET_PORT);
    b.reset_value = RESET_VALUE;
    b.sleep_control_reg = io_reg(SLEEP_CONTROL_PORT);
    b.sleep_status_reg = io_reg(SLEEP_STATUS_PORT);
    b.hypervisor_vendor_identity = u64::from_le_bytes(*b"VMMVMM  ").into();
    aml(&b.finalize())
}

fn madt(cpus: u32) -> Result<Vec<u8>, AcpiError> {
    let ioapic_id = u8::try_from(cpus).map_err(|_| AcpiError::TooManyCpus(cpus))?;
    let mut m = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(APIC_ADDR_32),
    );
    for id in 0..ioapic_id {
        m.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    m.add_structure(IoApic::new(ioapic_id, IOAPIC_ADDR_32, 0));
    Ok(aml(&m))
}

fn align8(x: u64) -> u64 {
    (x + 7) & !7
}

/// Build all tables for `cpus` vCPUs, laid out from `base`; returns
/// `(address, bytes)` pieces, the RSDP first at `base`.
pub fn build(
    cpus: u32,
    virtio: &[VirtioMmioInfo],
    base: u64,
) -> Result<Vec<(u64, Vec<u8>)>, AcpiError> {
    let rsdp_len = Rsdp::len() as u64;
    let dsdt_addr = align8(base + rsdp_len);
    let dsdt = dsdt(virtio);
    if virtio.len() > 256 {
        return Err(AcpiError::TooBig(dsdt.len() as u64));
    }
    let fadt_addr = align8(dsdt_addr + dsdt.len() as u64);
    let fadt = fadt(dsdt_addr);
    let madt_addr = align8(fadt_addr + fadt.len() as u64);
    let madt = madt(cpus)?;
    let xsdt_addr = align8(madt_addr + madt.len() as u64);
    let mut x = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    x.add_entry(fadt_addr);
    x.add_entry(madt_addr);
    let xsdt = aml(&x);
    let end = xsdt_addr + xsdt.len() as u64;
    if end > ACPI_END {
        return Err(AcpiError::TooBig(end - base));
    }
    let rsdp = aml(&Rsdp::new(OEM_ID, xsdt_addr));
    Ok(vec![
        (base, rsdp),
        (dsdt_addr, dsdt),
        (fadt_addr, fadt),
        (madt_addr, madt),
        (xsdt_addr, xsdt),
    ])
}

/// Write the tables into guest memory; returns the RSDP address.
pub fn setup(
    mem: &GuestMemoryMmap,
    cpus: u32,
    virtio: &[VirtioMmioInfo],
) -> Result<u64, AcpiError> {
    for (addr, bytes) in build(cpus, virtio, ACPI_ADDR)? {
        mem.write_slice(&bytes, GuestAddress(addr))?;
    }
    Ok(ACPI_ADDR)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::cast_possible_truncation)]
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
    }

    fn find<'a>(t: &'a [(u64, Vec<u8>)], sig: &[u8]) -> &'a (u64, Vec<u8>) {
        t.iter().find(|(_, b)| &b[..sig.len()] == sig).unwrap()
    }

    #[test]
    fn tables_are_linked_and_checksummed() {
        let t = build(4, &[], ACPI_ADDR).unwrap();
        let (rsdp_addr, rsdp) = &t[0];
        assert_eq!(*rsdp_addr, ACPI_ADDR);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(rsdp), 0);
        let xsdt_addr = u64::from_le_bytes(rsdp[24..32].try_into().unwrap());
        let (xa, xsdt) = find(&t, b"XSDT");
        assert_eq!(*xa, xsdt_addr);
        let entries: Vec<u64> = xsdt[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(entries, vec![find(&t, b"FACP").0, find(&t, b"APIC").0]);
        for (_, table) in &t[1..] {
            let len = u32::from_le_bytes(table[4..8].try_into().unwrap()) as usize;
            assert_eq!(len, table.len(), "{:?}", &table[..4]);
            assert_eq!(sum(table), 0, "{:?}", &table[..4]);
        }
        // Pieces do not overlap and stay in the region.
        let mut spans: Vec<(u64, u64)> = t.iter().map(|(a, b)| (*a, *a + b.len() as u64)).collect();
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0);
        }
        assert!(spans.last().unwrap().1 <= ACPI_END);
    }

    #[test]
    fn fadt_is_hardware_reduced_with_power_registers() {
        let t = build(1, &[], ACPI_ADDR).unwrap();
        let (_, f) = find(&t, b"FACP");
        let flags = u32::from_le_bytes(f[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        let iapc = u16::from_le_bytes([f[109], f[110]]);
        assert_eq!(iapc & IAPC_8042, IAPC_8042);
        // Reset register: GAS at 116, value at 128.
        assert_eq!(f[116], 1, "system I/O");
        assert_eq!(
            u64::from_le_bytes(f[120..128].try_into().unwrap()),
            RESET_PORT
        );
        assert_eq!(f[128], RESET_VALUE);
        // Sleep control/status registers at 244 and 256.
        assert_eq!(
            u64::from_le_bytes(f[248..256].try_into().unwrap()),
            SLEEP_CONTROL_PORT
        );
        assert_eq!(
            u64::from_le_bytes(f[260..268].try_into().unwrap()),
            SLEEP_STATUS_PORT
        );
        let x_dsdt = u64::from_le_bytes(f[140..148].try_into().unwrap());
        assert_eq!(x_dsdt, find(&t, b"DSDT").0);
    }

    #[test]
    fn dsdt_describes_s5_and_every_device() {
        let virtio = [
            VirtioMmioInfo {
                base: 0xd000_1000,
                irq: 5,
            },
            VirtioMmioInfo {
                base: 0xd000_2000,
                irq: 6,
            },
        ];
        let d = dsdt(&virtio);
        let has = |needle: &[u8]| d.windows(needle.len()).any(|w| w == needle);
        // Name(_S5_, Package(4) {5, 0, 0, 0})
        assert!(has(&[
            0x08, b'_', b'S', b'5', b'_', 0x12, 0x07, 0x04, 0x0a, 0x05, 0x00, 0x00, 0x00
        ]));
        assert!(has(b"QEMU0001\0"));
        // IO(Decode16, 0x505, 0x505, 1, 1)
        assert!(has(&[0x47, 0x01, 0x05, 0x05, 0x05, 0x05, 0x01, 0x01]));
        // COM1: EISA ID PNP0501, ports 0x3f8..0x3ff, extended IRQ 4.
        assert!(has(&[0x0c, 0x41, 0xd0, 0x05, 0x01]));
        assert!(has(&[0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08]));
        assert!(has(&[0x89, 0x06, 0x00, 0x03, 0x01, 0x04, 0, 0, 0]));
        // i8042: PNP0303 with IRQ 1.
        assert!(has(&[0x0c, 0x41, 0xd0, 0x03, 0x03]));
        assert!(has(&[0x89, 0x06, 0x00, 0x03, 0x01, 0x01, 0, 0, 0]));
        // Both virtio devices with their window and IRQ.
        assert_eq!(d.windows(9).filter(|w| w == b"LNRO0005\0").count(), 2);
        assert!(has(&[
            0x86, 0x09, 0x00, 0x01, 0x00, 0x20, 0x00, 0xd0, 0x00, 0x10, 0, 0
        ]));
        assert!(has(&[0x89, 0x06, 0x00, 0x03, 0x01, 0x06, 0, 0, 0]));
        assert!(has(b"VR01"));
    }

    #[test]
    fn many_virtio_devices_fit() {
        let virtio: Vec<_> = (0..19)
            .map(|i| VirtioMmioInfo {
                base: 0xd000_1000 + i * 0x1000,
                irq: 5 + i,
            })
            .collect();
        let t = build(64, &virtio, ACPI_ADDR).unwrap();
        assert!(t.iter().all(|(a, b)| a + b.len() as u64 <= ACPI_END));
    }

    #[test]
    fn madt_lists_every_cpu_and_the_ioapic() {
        let t = build(3, &[], ACPI_ADDR).unwrap();
        let (_, m) = find(&t, b"APIC");
        assert_eq!(
            u32::from_le_bytes(m[36..40].try_into().unwrap()),
            APIC_ADDR_32
        );
        let mut off = 44;
        let mut lapics = vec![];
        let mut ioapic = None;
        while off < m.len() {
            let (kind, len) = (m[off], m[off + 1] as usize);
            match kind {
                0 => lapics.push((m[off + 2], m[off + 3], m[off + 4] & 1)),
                1 => ioapic = Some(m[off + 2]),
                _ => {}
            }
            off += len;
        }
        assert_eq!(lapics, vec![(0, 0, 1), (1, 1, 1), (2, 2, 1)]);
        assert_eq!(ioapic, Some(3));
        assert!(matches!(
            build(300, &[], ACPI_ADDR),
            Err(AcpiError::TooManyCpus(300))
        ));
    }
}
