//! Loading a kernel (ELF vmlinux or bzImage) and an initrd, and handing the
//! kernel its boot information: `boot_params` for the 64-bit Linux boot
//! protocol, `hvm_start_info` for PVH.

use std::fs::File;
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{self, BzImage, Elf, KernelLoader};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, ReadVolatile};

use super::layout::{
    e820_map, low_ram_end, CMDLINE_ADDR, CMDLINE_ADDR_32, CMDLINE_MAX_SIZE, HIMEM_START,
    PVH_INFO_ADDR, ZERO_PAGE_ADDR,
};
use super::pvh_note::{self, PvhNoteError};

/// Errors of [`self`].
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file could not be opened.
    #[error("cannot open kernel {path}: {source}")]
    OpenKernel {
        /// The path given.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is neither an ELF vmlinux nor a bzImage.
    #[error("{path} is not a Linux kernel: neither an x86_64 ELF vmlinux nor a bzImage")]
    NotAKernel {
        /// The path given.
        path: String,
        /// What the ELF loader said.
        elf: loader::Error,
        /// What the bzImage loader said.
        bzimage: loader::Error,
    },
    /// The kernel is a valid image but could not be loaded (too big, bad addresses).
    #[error("loading kernel {path} ({format}): {source}; does it fit in guest memory?")]
    LoadKernel {
        /// The path given.
        path: String,
        /// ELF or bzImage.
        format: &'static str,
        /// The loader's error.
        source: loader::Error,
    },
    /// The kernel image extends past the end of low guest memory.
    #[error("kernel {path} needs memory up to {end:#x} but the guest has RAM only up to {ram:#x}: give it more --mem")]
    KernelTooBig {
        /// The path given.
        path: String,
        /// End of the loaded image.
        end: u64,
        /// End of low RAM.
        ram: u64,
    },
    /// An ELF file that is not an x86_64 executable (a 32-bit or foreign ELF,
    /// a shared object such as a program binary).
    #[error("{path} is an ELF file but not an x86_64 Linux kernel ({why})")]
    NotX86Kernel {
        /// The path given.
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// PVH boot was requested but the kernel has no PVH entry note.
    #[error("kernel {0} has no PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY); boot it with --boot linux or build it with CONFIG_PVH=y")]
    NoPvhEntry(String),
    /// The PVH entry note is malformed or points outside the image or RAM.
    #[error("kernel {path} has a bad PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): {source}")]
    PvhNote {
        /// The path given.
        path: String,
        /// What is wrong with it.
        source: PvhNoteError,
    },
    /// The initrd could not be opened or read.
    #[error("cannot read initrd {path}: {source}")]
    Initrd {
        /// The path given.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The initrd file is empty.
    #[error("initrd {0} is empty")]
    InitrdEmpty(String),
    /// The initrd does not fit between the kernel and the top of low memory.
    #[error("initrd {path} ({size} bytes) does not fit in guest memory below {limit:#x} above the kernel: give the guest more --mem")]
    InitrdTooBig {
        /// The path given.
        path: String,
        /// Its size.
        size: u64,
        /// Highest address it may end at.
        limit: u64,
    },
    /// The command line is longer than the kernel accepts.
    #[error("kernel command line is {len} bytes, the kernel accepts at most {max}")]
    CmdlineTooLong {
        /// Length with the terminating NUL.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Writing boot structures into guest memory failed.
    #[error("writing {what} into guest memory: {detail}")]
    GuestWrite {
        /// What was written.
        what: &'static str,
        /// The underlying error.
        detail: String,
    },
}

/// The format of a loaded kernel and what the boot protocol needs from it.
#[derive(Clone, Copy, Debug)]
pub enum KernelFormat {
    /// ELF vmlinux, with its PVH entry point if it has one.
    Elf {
        /// 32-bit PVH entry point from the `XEN_ELFNOTE_PHYS32_ENTRY` note.
        pvh_entry: Option<u64>,
    },
    /// bzImage with its setup header.
    BzImage(setup_header),
}

/// A kernel loaded into guest memory.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// 64-bit entry point for the Linux boot protocol.
    pub entry: u64,
    /// End of the loaded image (exclusive).
    pub end: u64,
    /// What was loaded.
    pub format: KernelFormat,
}

impl LoadedKernel {
    /// The PVH entry point, if the kernel has one.
    pub fn pvh_entry(&self) -> Option<u64> {
        match self.format {
            KernelFormat::Elf { pvh_entry } => pvh_entry,
            KernelFormat::BzImage(_) => None,
        }
    }

    /// "ELF" or "bzImage".
    pub fn format_name(&self) -> &'static str {
        match self.format {
            KernelFormat::Elf { .. } => "ELF",
            KernelFormat::BzImage(_) => "bzImage",
        }
    }

    /// Longest command line (with NUL) this kernel accepts.
    pub fn cmdline_limit(&self) -> usize {
        match self.format {
            // Since boot protocol 2.06 the kernel announces its limit (without NUL).
            KernelFormat::BzImage(h) if h.version >= 0x0206 => {
                (h.cmdline_size as usize + 1).min(CMDLINE_MAX_SIZE)
            }
            KernelFormat::BzImage(_) => 256,
            // x86_64 COMMAND_LINE_SIZE.
            KernelFormat::Elf { .. } => 2048,
        }
    }
}

/// Load the kernel at `path`: ELF vmlinux first, bzImage as a fallback.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let p = path.display().to_string();
    let mut file = File::open(path).map_err(|source| BootError::OpenKernel {
        path: p.clone(),
        source,
    })?;
    check_elf_ident(&mut file, &p)?;
    let himem = Some(GuestAddress(HIMEM_START));
    let ram_end = low_ram_end(mem.last_addr().raw_value() + 1);
    // Checked before loading: linux-loader trusts the note.
    let pvh_entry =
        pvh_note::read_pvh_entry(&mut file, ram_end).map_err(|source| BootError::PvhNote {
            path: p.clone(),
            source,
        })?;
    let loaded = match Elf::load(mem, None, &mut file, himem) {
        Ok(r) => LoadedKernel {
            entry: r.kernel_load.raw_value(),
            end: r.kernel_end,
            format: KernelFormat::Elf { pvh_entry },
        },
        Err(elf_err) if is_format_mismatch(&elf_err) => {
            match BzImage::load(mem, None, &mut file, himem) {
                Ok(r) => LoadedKernel {
                    // The 64-bit entry point is 0x200 past the protected-mode start.
                    entry: r.kernel_load.raw_value() + 0x200,
                    end: r.kernel_end,
                    format: KernelFormat::BzImage(r.setup_header.unwrap_or_default()),
                },
                Err(bz_err) if is_format_mismatch(&bz_err) => {
                    return Err(BootError::NotAKernel {
                        path: p,
                        elf: elf_err,
                        bzimage: bz_err,
                    })
                }
                Err(source) => {
                    return Err(BootError::LoadKernel {
                        path: p,
                        format: "bzImage",
                        source,
                    })
                }
            }
        }
        Err(source) => {
            return Err(BootError::LoadKernel {
                path: p,
                format: "ELF",
                source,
            })
        }
    };
    if loaded.end > ram_end {
        return Err(BootError::KernelTooBig {
            path: p,
            end: loaded.end,
            ram: ram_end,
        });
    }
    Ok(loaded)
}

/// When the file is ELF, make sure it is a 64-bit little-endian x86_64
/// executable before handing it to the loader, which checks less.
fn check_elf_ident(file: &mut File, path: &str) -> Result<(), BootError> {
    use std::io::{Read, Seek};
    let mut ehdr = [0u8; 64];
    let n = file.read(&mut ehdr).unwrap_or(0);
    let _ = file.rewind();
    if n < 20 || &ehdr[..4] != b"\x7fELF" {
        return Ok(()); // not ELF: the loaders decide
    }
    let why = if ehdr[4] != 2 {
        Some("not 64-bit")
    } else if ehdr[5] != 1 {
        Some("not little-endian")
    } else if u16::from_le_bytes([ehdr[18], ehdr[19]]) != 62 {
        Some("not for x86_64")
    } else if u16::from_le_bytes([ehdr[16], ehdr[17]]) != 2 {
        Some("not an executable: a shared object or relocatable file")
    } else if n == ehdr.len() {
        let why = program_markers(file, &ehdr);
        let _ = file.rewind();
        why
    } else {
        None
    };
    match why {
        Some(why) => Err(BootError::NotX86Kernel {
            path: path.into(),
            why,
        }),
        None => Ok(()),
    }
}

/// What marks a 64-bit ELF executable as a userspace program rather than a
/// kernel: an interpreter (dynamically linked), a thread-local storage
/// segment, or a GNU ABI tag note (every glibc program, static ones too).
/// Kernels have none of these. Unreadable headers are left to the loader.
fn program_markers(file: &mut File, ehdr: &[u8; 64]) -> Option<&'static str> {
    use std::io::{Read, Seek, SeekFrom};
    const PT_INTERP: u32 = 3;
    const PT_NOTE: u32 = 4;
    const PT_TLS: u32 = 7;
    const MAX_PHDRS: u16 = 128;
    const MAX_NOTES: u64 = 64 << 10;
    let phoff = u64::from_le_bytes(ehdr[32..40].try_into().ok()?);
    let phentsize = u16::from_le_bytes([ehdr[54], ehdr[55]]);
    let phnum = u16::from_le_bytes([ehdr[56], ehdr[57]]);
    if phentsize != 56 || phnum > MAX_PHDRS {
        return None;
    }
    let mut phdrs = vec![0u8; usize::from(phnum) * 56];
    file.seek(SeekFrom::Start(phoff)).ok()?;
    file.read_exact(&mut phdrs).ok()?;
    let mut notes = Vec::new();
    for ph in phdrs.chunks_exact(56) {
        match u32::from_le_bytes(ph[0..4].try_into().ok()?) {
            PT_INTERP => return Some("a dynamically linked program, not a kernel"),
            PT_TLS => return Some("a program with thread-local storage, not a kernel"),
            PT_NOTE => {
                let off = u64::from_le_bytes(ph[8..16].try_into().ok()?);
                let size = u64::from_le_bytes(ph[32..40].try_into().ok()?);
                if size <= MAX_NOTES {
                    notes.push((off, size));
                }
            }
            _ => {}
        }
    }
    for (off, size) in notes {
        let mut buf = vec![0u8; usize::try_from(size).ok()?];
        file.seek(SeekFrom::Start(off)).ok()?;
        if file.read_exact(&mut buf).is_err() {
            continue;
        }
        if has_gnu_abi_tag(&buf) {
            return Some("a program built with a C library (GNU ABI tag note), not a kernel");
        }
    }
    None
}

/// Whether a PT_NOTE segment holds an `NT_GNU_ABI_TAG` note.
fn has_gnu_abi_tag(mut notes: &[u8]) -> bool {
    const NT_GNU_ABI_TAG: u32 = 1;
    let align4 = |x: usize| x.div_ceil(4) * 4;
    while notes.len() >= 12 {
        let word =
            |i: usize| u32::from_le_bytes([notes[i], notes[i + 1], notes[i + 2], notes[i + 3]]);
        let (namesz, descsz, kind) = (word(0) as usize, word(4) as usize, word(8));
        let Some(name) = notes.get(12..12 + namesz) else {
            return false;
        };
        if kind == NT_GNU_ABI_TAG && name == b"GNU\0" {
            return true;
        }
        let next = 12usize
            .saturating_add(align4(namesz))
            .saturating_add(align4(descsz));
        match notes.get(next..) {
            Some(rest) => notes = rest,
            None => return false,
        }
    }
    false
}

/// True when the loader rejected the file's format (as opposed to failing to
/// load a file of the right format).
fn is_format_mismatch(e: &loader::Error) -> bool {
    use linux_loader::loader::bzimage::Error as Bz;
    use linux_loader::loader::elf::Error as El;
    matches!(
        e,
        loader::Error::Elf(
            El::InvalidElfMagicNumber
                | El::ReadElfHeader
                | El::BigEndianElfOnLittle
                | El::InvalidEntryAddress
                | El::SeekElfStart
        ) | loader::Error::Bzimage(
            Bz::InvalidBzImage | Bz::ReadBzImageHeader | Bz::SeekBzImageHeader | Bz::Underflow
        )
    )
}

/// Where an initrd was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdPlacement {
    /// Guest physical address (always below 4 GiB).
    pub addr: u32,
    /// Size in bytes.
    pub size: u32,
}

/// Highest address (exclusive) an initrd may end at for this kernel.
fn initrd_limit(kernel: &LoadedKernel, ram_end: u64) -> u64 {
    let max = match kernel.format {
        // initrd_addr_max is the highest address the initrd's last byte may have.
        KernelFormat::BzImage(h) if h.version >= 0x0203 && h.initrd_addr_max != 0 => {
            u64::from(h.initrd_addr_max) + 1
        }
        _ => 0x3800_0000,
    };
    ram_end.min(max)
}

/// Load the initrd at `path` at the top of low memory, page aligned, above the kernel.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel: &LoadedKernel,
) -> Result<InitrdPlacement, BootError> {
    let p = path.display().to_string();
    let io = |source| BootError::Initrd {
        path: p.clone(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size == 0 {
        return Err(BootError::InitrdEmpty(p));
    }
    let limit = initrd_limit(kernel, low_ram_end(mem.last_addr().raw_value() + 1));
    let too_big = || BootError::InitrdTooBig {
        path: p.clone(),
        size,
        limit,
    };
    // The limit is below 4 GiB, so a placement under it fits the 32-bit fields.
    let addr = limit
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel.end)
        .ok_or_else(too_big)?;
    let (addr32, size32) = match (u32::try_from(addr), u32::try_from(size)) {
        (Ok(a), Ok(s)) => (a, s),
        _ => return Err(too_big()),
    };
    let len = usize::try_from(size).map_err(|_| too_big())?;
    let mut slice = mem
        .get_slice(GuestAddress(addr), len)
        .map_err(|e| BootError::GuestWrite {
            what: "initrd",
            detail: e.to_string(),
        })?;
    file.read_exact_volatile(&mut slice)
        .map_err(|e| io(std::io::Error::other(e.to_string())))?;
    Ok(InitrdPlacement {
        addr: addr32,
        size: size32,
    })
}

/// Write the command line (NUL terminated) at its fixed address, checking
/// it against the kernel's limit. Returns its length with the NUL.
pub fn write_cmdline(
    mem: &GuestMemoryMmap,
    cmdline: &Cmdline,
    kernel: &LoadedKernel,
) -> Result<usize, BootError> {
    let cstr = cmdline.as_cstring().map_err(|e| BootError::GuestWrite {
        what: "command line",
        detail: e.to_string(),
    })?;
    let len = cstr.as_bytes_with_nul().len();
    let max = kernel.cmdline_limit();
    if len > max {
        return Err(BootError::CmdlineTooLong { len, max });
    }
    loader::load_cmdline(mem, GuestAddress(CMDLINE_ADDR), cmdline).map_err(|e| {
        BootError::GuestWrite {
            what: "command line",
            detail: e.to_string(),
        }
    })?;
    Ok(len)
}

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x100_0000;

/// Build the zero page for the 64-bit Linux boot protocol.
pub fn build_boot_params(
    kernel: &LoadedKernel,
    cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
    mem_size: u64,
    rsdp: Option<u64>,
) -> boot_params {
    let mut params = boot_params::default();
    if let KernelFormat::BzImage(hdr) = kernel.format {
        params.hdr = hdr;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR_32;
    params.hdr.cmdline_size = u32::try_from(cmdline_len).unwrap_or(u32::MAX);
    if let Some(i) = initrd {
        params.hdr.ramdisk_image = i.addr;
        params.hdr.ramdisk_size = i.size;
    }
    if let Some(addr) = rsdp {
        params.acpi_rsdp_addr = addr;
    }
    let map = e820_map(mem_size);
    for (slot, e) in params.e820_table.iter_mut().zip(map.iter()) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = u8::try_from(map.len().min(params.e820_table.len())).unwrap_or(u8::MAX);
    params
}

/// Write the zero page for the 64-bit Linux boot protocol.
pub fn write_boot_params(mem: &GuestMemoryMmap, params: &boot_params) -> Result<(), BootError> {
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new::<boot_params>(params, GuestAddress(ZERO_PAGE_ADDR)),
        mem,
    )
    .map_err(|e| BootError::GuestWrite {
        what: "boot_params",
        detail: e.to_string(),
    })
}

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

/// Write `hvm_start_info`, its memory map and module list for PVH boot.
pub fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    initrd: Option<InitrdPlacement>,
    mem_size: u64,
    rsdp: Option<u64>,
) -> Result<(), BootError> {
    let map: Vec<hvm_memmap_table_entry> = e820_map(mem_size)
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let info_size = std::mem::size_of::<hvm_start_info>() as u64;
    let modlist_addr = PVH_INFO_ADDR + info_size;
    let memmap_addr = modlist_addr + std::mem::size_of::<hvm_modlist_entry>() as u64;
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        nr_modules: u32::from(initrd.is_some()),
        modlist_paddr: if initrd.is_some() { modlist_addr } else { 0 },
        cmdline_paddr: CMDLINE_ADDR,
        rsdp_paddr: rsdp.unwrap_or(0),
        memmap_paddr: memmap_addr,
        memmap_entries: u32::try_from(map.len()).unwrap_or(0),
        ..Default::default()
    };
    let mut params = BootParams::new::<hvm_start_info>(&start_info, GuestAddress(PVH_INFO_ADDR));
    params.set_sections::<hvm_memmap_table_entry>(&map, GuestAddress(memmap_addr));
    if let Some(i) = initrd {
        let module = hvm_modlist_entry {
            paddr: u64::from(i.addr),
            size: u64::from(i.size),
            ..Default::default()
        };
        params.set_modules::<hvm_modlist_entry>(&[module], GuestAddress(modlist_addr));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem).map_err(|e| {
        BootError::GuestWrite {
            what: "hvm_start_info",
            detail: e.to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::cast_possible_truncation)]
    use super::*;
    use std::io::Write;
    use vm_memory::Bytes;

    fn mem(size: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
    }

    fn temp_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("vmm-boot-{}-{name}", std::process::id()));
        std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
        p
    }

    fn elf_kernel() -> LoadedKernel {
        LoadedKernel {
            entry: 0x100_0000,
            end: 0x200_0000,
            format: KernelFormat::Elf { pvh_entry: None },
        }
    }

    #[test]
    fn garbage_is_not_a_kernel() {
        let p = temp_file("garbage", &[0x42u8; 8192]);
        let err = load_kernel(&mem(64 << 20), &p).unwrap_err();
        assert!(matches!(err, BootError::NotAKernel { .. }), "{err}");
        assert!(err.to_string().contains("is not a Linux kernel"));
        let empty = temp_file("empty", &[]);
        assert!(matches!(
            load_kernel(&mem(64 << 20), &empty).unwrap_err(),
            BootError::NotAKernel { .. }
        ));
        let missing = std::path::Path::new("/nonexistent/vmlinux");
        assert!(matches!(
            load_kernel(&mem(64 << 20), missing).unwrap_err(),
            BootError::OpenKernel { .. }
        ));
    }

    #[test]
    fn elf_entry_must_be_above_one_mib() {
        // A minimal ELF64 header with entry 0x1000 (below HIMEM_START).
        let mut h = vec![0u8; 64];
        h[0..4].copy_from_slice(b"\x7fELF");
        h[4] = 2; // 64-bit
        h[5] = 1; // little endian
        h[6] = 1;
        h[16] = 2; // ET_EXEC
        h[18] = 62; // x86_64
        h[24..32].copy_from_slice(&0x1000u64.to_le_bytes());
        h[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        h[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        let p = temp_file("lowelf", &h);
        let err = load_kernel(&mem(64 << 20), &p).unwrap_err();
        assert!(matches!(err, BootError::NotAKernel { .. }), "{err}");
        // 32-bit and non-executable ELF files are named as such.
        h[4] = 1;
        let p = temp_file("elf32", &h);
        let err = load_kernel(&mem(64 << 20), &p).unwrap_err();
        assert!(err.to_string().contains("not 64-bit"), "{err}");
        h[4] = 2;
        h[16] = 3; // ET_DYN, like a program binary
        let p = temp_file("elfdyn", &h);
        let err = load_kernel(&mem(64 << 20), &p).unwrap_err();
        assert!(err.to_string().contains("shared object"), "{err}");
    }

    #[test]
    fn gnu_abi_tag_notes_are_found() {
        let mut note = Vec::new();
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&16u32.to_le_bytes());
        note.extend_from_slice(&1u32.to_le_bytes());
        note.extend_from_slice(b"GNU\0");
        note.extend_from_slice(&[0u8; 16]);
        assert!(has_gnu_abi_tag(&note));
        // A Xen note before it is skipped over correctly.
        let mut xen = Vec::new();
        xen.extend_from_slice(&4u32.to_le_bytes());
        xen.extend_from_slice(&4u32.to_le_bytes());
        xen.extend_from_slice(&18u32.to_le_bytes());
        xen.extend_from_slice(b"Xen\0");
        xen.extend_from_slice(&[0u8; 4]);
        let both = [xen.clone(), note.clone()].concat();
        assert!(has_gnu_abi_tag(&both));
        assert!(!has_gnu_abi_tag(&xen));
        // Truncated or absurd sizes end the walk without a panic.
        assert!(!has_gnu_abi_tag(&note[..14]));
        let mut huge = note.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(!has_gnu_abi_tag(&huge));
    }

    #[test]
    fn a_static_program_is_not_a_kernel() {
        // busybox-static (an ET_EXEC with its entry above 1 MiB) when present.
        let bb = std::path::Path::new("/bin/busybox");
        assert!(
            bb.exists(),
            "this test needs busybox-static (tests/lab/lab prepare installs it)"
        );
        let err = load_kernel(&mem(64 << 20), bb).unwrap_err();
        assert!(matches!(err, BootError::NotX86Kernel { .. }), "{err}");
    }

    #[test]
    fn a_program_binary_is_not_a_kernel() {
        let err = load_kernel(&mem(64 << 20), std::path::Path::new("/bin/sh")).unwrap_err();
        assert!(matches!(err, BootError::NotX86Kernel { .. }), "{err}");
    }

    #[test]
    fn boot_params_for_elf_kernel() {
        let initrd = InitrdPlacement {
            addr: 0x700_0000,
            size: 0x1234,
        };
        let p = build_boot_params(&elf_kernel(), 100, Some(initrd), 128 << 20, Some(0xe0000));
        assert_eq!({ p.hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!({ p.hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ p.hdr.type_of_loader }, KERNEL_LOADER_OTHER);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_ADDR_32);
        assert_eq!(
            ({ p.hdr.ramdisk_image }, { p.hdr.ramdisk_size }),
            (0x700_0000, 0x1234)
        );
        assert_eq!({ p.acpi_rsdp_addr }, 0xe0000);
        assert_eq!(p.e820_entries, 4);
        let last_ram = p.e820_table[2];
        assert_eq!({ last_ram.addr }, HIMEM_START);
        assert_eq!({ last_ram.size }, (128 << 20) - HIMEM_START);
        let m = mem(1 << 20);
        write_boot_params(&m, &p).unwrap();
        let back: boot_params = m.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap();
        assert_eq!({ back.hdr.header }, KERNEL_HDR_MAGIC);
    }

    #[test]
    fn bzimage_header_is_kept_and_limits_are_honoured() {
        let hdr = setup_header {
            version: 0x020f,
            cmdline_size: 2047,
            initrd_addr_max: 0x7fff_ffff,
            header: KERNEL_HDR_MAGIC,
            setup_sects: 27,
            ..Default::default()
        };
        let k = LoadedKernel {
            entry: 0x10_0200,
            end: 0x80_0000,
            format: KernelFormat::BzImage(hdr),
        };
        assert_eq!(k.cmdline_limit(), 2048);
        let p = build_boot_params(&k, 10, None, 64 << 20, None);
        assert_eq!({ p.hdr.setup_sects }, 27);
        assert_eq!({ p.hdr.type_of_loader }, KERNEL_LOADER_OTHER);
        assert_eq!(initrd_limit(&k, 64 << 20), 64 << 20);
        assert_eq!(initrd_limit(&k, 3 << 30), 0x8000_0000);
        assert_eq!(initrd_limit(&elf_kernel(), 3 << 30), 0x3800_0000);
    }

    #[test]
    fn cmdline_length_is_checked() {
        let m = mem(1 << 20);
        let k = elf_kernel();
        let c = Cmdline::try_from("console=ttyS0", 4096).unwrap();
        assert_eq!(write_cmdline(&m, &c, &k).unwrap(), 14);
        let mut buf = [0u8; 14];
        m.read_slice(&mut buf, GuestAddress(CMDLINE_ADDR)).unwrap();
        assert_eq!(&buf, b"console=ttyS0\0");
        let long = Cmdline::try_from(&"x".repeat(2048), 4096).unwrap();
        assert!(matches!(
            write_cmdline(&m, &long, &k),
            Err(BootError::CmdlineTooLong {
                len: 2049,
                max: 2048
            })
        ));
    }

    #[test]
    fn initrd_goes_to_the_top_and_must_fit() {
        let m = mem(64 << 20);
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let p = temp_file("initrd", &data);
        let k = LoadedKernel {
            entry: 0x100_0000,
            end: 0x180_0000,
            format: KernelFormat::Elf { pvh_entry: None },
        };
        let placed = load_initrd(&m, &p, &k).unwrap();
        assert_eq!(placed.size, 10_000);
        assert_eq!(placed.addr % 4096, 0);
        assert!(placed.addr + placed.size <= 64 << 20);
        let mut back = vec![0u8; data.len()];
        m.read_slice(&mut back, GuestAddress(u64::from(placed.addr)))
            .unwrap();
        assert_eq!(back, data);
        // A kernel that ends near the top leaves no room.
        let big = LoadedKernel {
            end: (64 << 20) - 4096,
            ..k
        };
        assert!(matches!(
            load_initrd(&m, &p, &big),
            Err(BootError::InitrdTooBig { .. })
        ));
    }

    #[test]
    fn pvh_start_info_is_written() {
        let m = mem(1 << 20);
        let initrd = InitrdPlacement {
            addr: 0x80000,
            size: 0x100,
        };
        write_pvh_start_info(&m, Some(initrd), 1 << 20, None).unwrap();
        let info: hvm_start_info = m.read_obj(GuestAddress(PVH_INFO_ADDR)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.cmdline_paddr, CMDLINE_ADDR);
        let module: hvm_modlist_entry = m.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x80000, 0x100));
        let first: hvm_memmap_table_entry = m.read_obj(GuestAddress(info.memmap_paddr)).unwrap();
        assert_eq!((first.addr, first.type_), (0, 1));
        assert!(info.memmap_paddr + u64::from(info.memmap_entries) * 24 < CMDLINE_ADDR);
    }
}
