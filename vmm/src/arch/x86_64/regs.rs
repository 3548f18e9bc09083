//! Initial vCPU state: GDT, identity page tables, segment and control
//! registers, general registers, FPU, MSRs and local APIC LVTs.
//!
//! Two entry modes are supported: the 64-bit Linux boot protocol (long mode,
//! paging on, identity-mapped first 4 GiB, `rsi` = zero page) and the PVH boot
//! ABI (32-bit protected mode, paging off, `ebx` = `hvm_start_info`).

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    BOOT_STACK_POINTER, GDT_ADDR, IDT_ADDR, PDPT_ADDR, PD_ADDR, PML4_ADDR, PVH_INFO_ADDR,
    ZERO_PAGE_ADDR,
};

/// Errors of [`self`].
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Writing the GDT, IDT or page tables into guest memory failed.
    #[error("writing {what} at {addr:#x} into guest memory: {source}")]
    GuestWrite {
        /// What was written.
        what: &'static str,
        /// Where.
        addr: u64,
        /// Why it failed.
        source: vm_memory::GuestMemoryError,
    },
}

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit Linux boot protocol: long mode, `rsi` points at boot_params.
    Linux64,
    /// PVH: 32-bit protected mode without paging, `ebx` points at hvm_start_info.
    Pvh,
}

// Segment selectors in our GDT.
const CODE64_SEL: u16 = 0x08;
const DATA_SEL: u16 = 0x10;
const TSS_SEL: u16 = 0x18;
const CODE32_SEL: u16 = 0x20;

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

#[allow(clippy::cast_possible_truncation)] // only masked bit fields are cast
/// Build a GDT descriptor from flags (upper 12 bits: G, D/B, L, AVL and the
/// access byte), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
}

/// Our GDT: null, 64-bit code, data, TSS, 32-bit code (for PVH).
pub const GDT: [u64; 5] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code: G, L, present, DPL0, exec/read, accessed
    gdt_entry(0xc093, 0, 0xfffff), // data: G, D/B, present, DPL0, read/write, accessed
    gdt_entry(0x808b, 0, 0xfffff), // TSS (busy 64-bit TSS type), unused but valid for KVM
    gdt_entry(0xc09b, 0, 0xfffff), // 32-bit code: G, D/B, present, DPL0, exec/read, accessed
];

/// GDT limit: its size in bytes minus one.
#[allow(clippy::cast_possible_truncation)] // 5 entries: 39
const GDT_LIMIT: u16 = (std::mem::size_of::<[u64; 5]>() - 1) as u16;

/// Decode a GDT entry into the segment KVM expects in `kvm_sregs`.
#[allow(clippy::cast_possible_truncation)] // only masked bit fields are cast
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let base = (((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000)) as u32;
    let limit_raw = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    // With G set, the limit is in 4 KiB units.
    let limit = if g == 1 {
        (limit_raw << 12) | 0xfff
    } else {
        limit_raw
    };
    kvm_segment {
        base: u64::from(base),
        limit,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(((entry >> 47) & 1) == 0),
        padding: 0,
    }
}

fn write<T: vm_memory::ByteValued>(
    mem: &GuestMemoryMmap,
    what: &'static str,
    addr: u64,
    val: T,
) -> Result<(), RegsError> {
    mem.write_obj(val, GuestAddress(addr))
        .map_err(|source| RegsError::GuestWrite { what, addr, source })
}

/// Write the GDT and an empty IDT into guest memory.
pub fn write_gdt_idt(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    for (i, entry) in GDT.iter().enumerate() {
        write(mem, "GDT", GDT_ADDR + (i as u64) * 8, *entry)?;
    }
    write(mem, "IDT", IDT_ADDR, 0u64)
}

/// Write identity-mapping page tables for the first 4 GiB (2 MiB pages).
pub fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    const PRESENT_RW: u64 = 0x3;
    const PAGE_SIZE_2M: u64 = 0x80;
    write(mem, "PML4", PML4_ADDR, PDPT_ADDR | PRESENT_RW)?;
    for pd in 0..4u64 {
        let pd_addr = PD_ADDR + pd * 0x1000;
        write(mem, "PDPT", PDPT_ADDR + pd * 8, pd_addr | PRESENT_RW)?;
        for i in 0..512u64 {
            let phys = ((pd << 9) + i) << 21;
            write(mem, "PD", pd_addr + i * 8, phys | PRESENT_RW | PAGE_SIZE_2M)?;
        }
    }
    Ok(())
}

/// Special registers for the boot vCPU, starting from KVM's defaults.
pub fn boot_sregs(mut sregs: kvm_sregs, mode: EntryMode) -> kvm_sregs {
    let data = segment_from_gdt(GDT[(DATA_SEL / 8) as usize], DATA_SEL);
    let tss = segment_from_gdt(GDT[(TSS_SEL / 8) as usize], TSS_SEL);
    let code = match mode {
        EntryMode::Linux64 => segment_from_gdt(GDT[(CODE64_SEL / 8) as usize], CODE64_SEL),
        EntryMode::Pvh => segment_from_gdt(GDT[(CODE32_SEL / 8) as usize], CODE32_SEL),
    };
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = GDT_LIMIT;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    match mode {
        EntryMode::Linux64 => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 = X86_CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
        EntryMode::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    sregs
}

/// General registers for the boot vCPU entering at `entry`.
pub fn boot_regs(entry: u64, mode: EntryMode) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2, // bit 1 is reserved and must be set
        rip: entry,
        ..Default::default()
    };
    match mode {
        EntryMode::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_ADDR;
        }
        EntryMode::Pvh => {
            regs.rbx = PVH_INFO_ADDR;
        }
    }
    regs
}

/// FPU state after reset: x87 control word and MXCSR defaults.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// MSR indices and values set on every vCPU.
pub fn boot_msrs() -> Vec<(u32, u64)> {
    const MSR_IA32_SYSENTER_CS: u32 = 0x174;
    const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
    const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
    const MSR_STAR: u32 = 0xc000_0081;
    const MSR_LSTAR: u32 = 0xc000_0082;
    const MSR_CSTAR: u32 = 0xc000_0083;
    const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
    const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
    const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
    const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 1;
    const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
    // MTRRs enabled, default memory type write-back.
    const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;
    vec![
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn get_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &lapic.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[offset + i] = *byte as _;
    }
}

fn set_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Local APIC: LINT0 delivers ExtINT (the PIC), LINT1 delivers NMI, as on a PC.
pub fn boot_lapic(mut lapic: kvm_lapic_state) -> kvm_lapic_state {
    let lvt0 = get_reg(&lapic, APIC_LVT0);
    set_reg(
        &mut lapic,
        APIC_LVT0,
        set_delivery_mode(lvt0, APIC_MODE_EXTINT),
    );
    let lvt1 = get_reg(&lapic, APIC_LVT1);
    set_reg(
        &mut lapic,
        APIC_LVT1,
        set_delivery_mode(lvt1, APIC_MODE_NMI),
    );
    lapic
}

#[cfg(test)]
mod tests {
    #![allow(clippy::cast_possible_truncation)]
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn gdt_entries_decode_to_the_segments_linux_expects() {
        let code = segment_from_gdt(GDT[1], CODE64_SEL);
        assert_eq!(
            (code.l, code.db, code.g, code.present, code.s),
            (1, 0, 1, 1, 1)
        );
        assert_eq!((code.type_, code.limit, code.base), (0xb, 0xffff_ffff, 0));
        let data = segment_from_gdt(GDT[2], DATA_SEL);
        assert_eq!((data.l, data.db, data.type_, data.unusable), (0, 1, 0x3, 0));
        let code32 = segment_from_gdt(GDT[4], CODE32_SEL);
        assert_eq!((code32.l, code32.db, code32.type_), (0, 1, 0xb));
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
        // Base and limit bits are split across the descriptor.
        let e = gdt_entry(0x0093, 0x1234_5678, 0xabcde);
        let s = segment_from_gdt(e, 0);
        assert_eq!((s.base, s.limit, s.g), (0x1234_5678, 0xabcde, 0));
    }

    #[test]
    fn page_tables_identity_map_four_gib() {
        let m = mem();
        write_page_tables(&m).unwrap();
        let pml4: u64 = m.read_obj(GuestAddress(PML4_ADDR)).unwrap();
        assert_eq!(pml4, PDPT_ADDR | 3);
        for pd in 0..4u64 {
            let pdpte: u64 = m.read_obj(GuestAddress(PDPT_ADDR + pd * 8)).unwrap();
            assert_eq!(pdpte, (PD_ADDR + pd * 0x1000) | 3);
        }
        // Walk a few addresses through the tables.
        for va in [0u64, 0x20_0000, 0x1234_5678, 0xffff_ffff] {
            let pd_index = va >> 30;
            let pde_addr = PD_ADDR + pd_index * 0x1000 + ((va >> 21) & 0x1ff) * 8;
            let pde: u64 = m.read_obj(GuestAddress(pde_addr)).unwrap();
            assert_eq!(pde & 0x83, 0x83, "present, writable, 2M");
            assert_eq!((pde & !0x1f_ffff) | (va & 0x1f_ffff), va);
        }
    }

    #[test]
    fn long_mode_and_pvh_entry_states() {
        let s = boot_sregs(kvm_sregs::default(), EntryMode::Linux64);
        assert_eq!(s.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE | X86_CR0_PG);
        assert_eq!(
            (s.cr3, s.cr4 & X86_CR4_PAE, s.efer),
            (PML4_ADDR, X86_CR4_PAE, 0x500)
        );
        assert_eq!((s.cs.selector, s.cs.l), (CODE64_SEL, 1));
        let p = boot_sregs(kvm_sregs::default(), EntryMode::Pvh);
        assert_eq!((p.cr0 & X86_CR0_PG, p.efer, p.cs.l, p.cs.db), (0, 0, 0, 1));
        let r = boot_regs(0x100_0000, EntryMode::Linux64);
        assert_eq!(
            (r.rip, r.rsi, r.rsp, r.rflags),
            (0x100_0000, ZERO_PAGE_ADDR, BOOT_STACK_POINTER, 2)
        );
        let r = boot_regs(0x100_0000, EntryMode::Pvh);
        assert_eq!((r.rbx, r.rsi), (PVH_INFO_ADDR, 0));
    }

    #[test]
    fn gdt_and_idt_land_in_memory() {
        let m = mem();
        write_gdt_idt(&m).unwrap();
        for (i, e) in GDT.iter().enumerate() {
            let got: u64 = m.read_obj(GuestAddress(GDT_ADDR + i as u64 * 8)).unwrap();
            assert_eq!(got, *e);
        }
        // Too little memory for the tables is an error, not a panic.
        let tiny = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(
            write_page_tables(&tiny),
            Err(RegsError::GuestWrite { .. })
        ));
    }

    #[test]
    fn lapic_lint_modes() {
        let l = boot_lapic(kvm_lapic_state::default());
        assert_eq!((get_reg(&l, APIC_LVT0) >> 8) & 7, APIC_MODE_EXTINT);
        assert_eq!((get_reg(&l, APIC_LVT1) >> 8) & 7, APIC_MODE_NMI);
    }
}
