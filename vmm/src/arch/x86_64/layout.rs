//! The guest physical address map of an x86_64 vmm guest.
//!
//! ```text
//! 0x0000_0000  real-mode IVT / BDA (RAM, left alone)
//! 0x0000_0500  GDT                    0x0000_0540  IDT (empty)
//! 0x0000_6000  PVH start_info (+ memory map, modules)
//! 0x0000_7000  zero page (boot_params)
//! 0x0000_8ff0  initial stack (grows down)
//! 0x0000_9000  PML4, 0xa000 PDPT, 0xb000..0xf000 four page directories
//! 0x0002_0000  kernel command line (up to CMDLINE_MAX_SIZE)
//! 0x0009_fc00  EBDA: MP table (reserved in e820)
//! 0x000a_0000  VGA / BIOS hole (reserved)
//! 0x000e_0000  ACPI tables (RSDP first), up to 0x000f_ffff
//! 0x0010_0000  kernel (bzImage protected-mode part; vmlinux at its own address)
//! ...          RAM up to min(size, MMIO_GAP_START); initrd at the top of it
//! 0xc000_0000  32-bit MMIO gap: debug device, virtio-mmio devices, IOAPIC, LAPIC
//! 0x1_0000_0000 RAM above 4 GiB, when the guest has more than the gap allows
//! ```

/// GDT location.
pub const GDT_ADDR: u64 = 0x500;
/// IDT location (an empty IDT; the kernel installs its own).
pub const IDT_ADDR: u64 = 0x540;
/// PVH `hvm_start_info` location.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// Linux zero page (struct boot_params).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables: PML4.
pub const PML4_ADDR: u64 = 0x9000;
/// Identity-mapping page tables: PDPT.
pub const PDPT_ADDR: u64 = 0xa000;
/// Identity-mapping page tables: first of four page directories (4 GiB in 2 MiB pages).
pub const PD_ADDR: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = CMDLINE_ADDR_32 as u64;
/// Kernel command line, as the 32-bit boot_params field holds it.
pub const CMDLINE_ADDR_32: u32 = 0x20000;
/// Largest command line we pass (the x86 boot protocol allows 2 KiB by default;
/// kernels since 2.6.22 announce their own limit in `cmdline_size`).
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the Extended BIOS Data Area: end of usable low memory.
pub const EBDA_START: u64 = 0x9fc00;
/// The MP table lives in the EBDA.
pub const MPTABLE_ADDR: u64 = EBDA_START;
/// Start of the legacy VGA/BIOS hole.
pub const LEGACY_HOLE_START: u64 = 0xa0000;
/// ACPI tables region (the RSDP must be in 0xe0000..0x100000 for kernels that scan).
pub const ACPI_ADDR: u64 = 0xe0000;
/// End of the ACPI region.
pub const ACPI_END: u64 = 0x100000;
/// Where high memory starts (kernel loaded at or above it).
pub const HIMEM_START: u64 = 0x10_0000;

/// Start of the 32-bit MMIO gap below 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap (exclusive): 4 GiB.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// The vmm debug device (boot marker, exit status): one page.
pub const DEBUG_DEVICE_ADDR: u64 = 0xd000_0000;
/// Size of the debug device's region.
pub const DEBUG_DEVICE_SIZE: u64 = 0x1000;
/// First virtio-mmio device.
pub const VIRTIO_MMIO_START: u64 = 0xd000_1000;
/// Spacing of virtio-mmio devices (one page each).
pub const VIRTIO_MMIO_SIZE: u64 = VIRTIO_MMIO_SIZE_32 as u64;
/// The same, as 32-bit firmware tables carry it.
pub const VIRTIO_MMIO_SIZE_32: u32 = 0x1000;
/// End of the virtio-mmio window (exclusive).
pub const VIRTIO_MMIO_END: u64 = 0xd100_0000;
/// IOAPIC MMIO base.
pub const IOAPIC_ADDR: u64 = IOAPIC_ADDR_32 as u64;
/// IOAPIC MMIO base, as 32-bit firmware tables carry it.
pub const IOAPIC_ADDR_32: u32 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const APIC_ADDR: u64 = APIC_ADDR_32 as u64;
/// Local APIC MMIO base, as 32-bit firmware tables carry it.
pub const APIC_ADDR_32: u32 = 0xfee0_0000;
/// KVM's TSS (three pages, Intel only), at the top of the MMIO gap.
pub const KVM_TSS_ADDR: usize = 0xfffb_d000;
/// KVM's identity map page (Intel only), just below the TSS.
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;
/// Start of RAM above the MMIO gap.
pub const HIGH_RAM_START: u64 = MMIO_GAP_END;

/// First IRQ (GSI) handed to virtio devices; lower ones are legacy ISA IRQs.
pub const IRQ_FIRST_VIRTIO: u32 = 5;
/// Pins of the in-kernel IOAPIC.
pub const IOAPIC_PINS: u8 = 24;
/// Last usable GSI on the in-kernel IOAPIC.
pub const IRQ_LAST: u32 = IOAPIC_PINS as u32 - 1;
/// Serial port COM1 IRQ.
pub const IRQ_SERIAL: u32 = 4;
/// i8042 keyboard IRQ.
pub const IRQ_I8042_KBD: u32 = 1;

/// Serial port COM1 base port.
pub const SERIAL_PORT: u64 = 0x3f8;
/// i8042 data port; the command/status port is at +4 (0x64).
pub const I8042_PORT: u64 = 0x60;
/// ACPI fixed hardware for hardware-reduced ACPI: sleep control, sleep status
/// and reset registers (one byte each).
pub const ACPI_PM_PORT: u64 = 0x600;
/// pvpanic device port (QEMU's default, so guests' expectations hold).
pub const PVPANIC_PORT: u64 = 0x505;

// The fixed regions are ordered as the map above says.
const _: () =
    assert!(BOOT_STACK_POINTER < PML4_ADDR && BOOT_STACK_POINTER > ZERO_PAGE_ADDR + 0x1000);
const _: () = assert!(DEBUG_DEVICE_ADDR + DEBUG_DEVICE_SIZE <= VIRTIO_MMIO_START);
const _: () = assert!(VIRTIO_MMIO_END <= IOAPIC_ADDR && MMIO_GAP_START < DEBUG_DEVICE_ADDR);

/// Guest RAM ranges `(start, length)` for `mem_size` bytes of memory: one
/// range below the MMIO gap and, when needed, one above 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (HIGH_RAM_START, mem_size - MMIO_GAP_START),
        ]
    }
}

/// One entry of the e820 memory map handed to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// E820 type: 1 = RAM, 2 = reserved.
    pub kind: u32,
}

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// The guest's e820 map: low RAM up to the EBDA, the EBDA/VGA/BIOS hole as
/// reserved, RAM from 1 MiB, RAM above 4 GiB, and the MMIO gap as reserved so
/// the kernel does not put PCI BARs or anything else there.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    for (start, len) in ram_ranges(mem_size) {
        let end = start + len;
        // Low RAM below 1 MiB is already described above.
        let start = start.max(HIMEM_START);
        if end > start {
            map.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map.push(E820Entry {
        addr: MMIO_GAP_START,
        size: MMIO_GAP_END - MMIO_GAP_START,
        kind: E820_RESERVED,
    });
    map.sort_by_key(|e| e.addr);
    map
}

/// End (exclusive) of guest RAM below the MMIO gap.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::cast_possible_truncation)]
    use super::*;

    #[test]
    fn small_guest_has_one_range_and_no_high_ram() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
        let map = e820_map(128 << 20);
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9fc00,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x9fc00,
                    size: 0x60400,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: 0x100000,
                    size: (128 << 20) - 0x100000,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: MMIO_GAP_START,
                    size: 1 << 30,
                    kind: E820_RESERVED
                },
            ]
        );
    }

    #[test]
    fn large_guest_splits_around_the_mmio_gap() {
        let mem = 6u64 << 30;
        assert_eq!(ram_ranges(mem), vec![(0, 3 << 30), (4 << 30, 3 << 30)]);
        let map = e820_map(mem);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        // Everything but the EBDA/BIOS hole is usable RAM.
        assert_eq!(ram, mem - (HIMEM_START - EBDA_START));
        assert!(map.contains(&E820Entry {
            addr: 4 << 30,
            size: 3 << 30,
            kind: E820_RAM
        }));
        // No RAM entry overlaps the gap.
        for e in map.iter().filter(|e| e.kind == E820_RAM) {
            assert!(
                e.addr + e.size <= MMIO_GAP_START || e.addr >= MMIO_GAP_END,
                "{e:?}"
            );
        }
    }

    #[test]
    fn exactly_gap_sized_memory_needs_no_high_range() {
        assert_eq!(ram_ranges(MMIO_GAP_START).len(), 1);
        assert_eq!(low_ram_end(8 << 30), MMIO_GAP_START);
    }

    #[test]
    fn fixed_regions_do_not_overlap() {
        let fixed = [
            (GDT_ADDR, 0x28),
            (IDT_ADDR, 0x8),
            (PVH_INFO_ADDR, 0x1000),
            (ZERO_PAGE_ADDR, 0x1000),
            (PML4_ADDR, 0x1000),
            (PDPT_ADDR, 0x1000),
            (PD_ADDR, 0x4000),
            (CMDLINE_ADDR, CMDLINE_MAX_SIZE as u64),
        ];
        for (i, a) in fixed.iter().enumerate() {
            assert!(a.0 + a.1 <= EBDA_START);
            for b in &fixed[i + 1..] {
                assert!(
                    a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0,
                    "{a:x?} overlaps {b:x?}"
                );
            }
        }
    }
}
