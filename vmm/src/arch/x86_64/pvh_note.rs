//! The PVH entry note of an ELF kernel (`XEN_ELFNOTE_PHYS32_ENTRY`), read and
//! checked before the kernel is loaded.
//!
//! linux-loader finds the note but trusts it: it reads a note's descriptor
//! even when the note runs past its `PT_NOTE` segment, reports a note cut
//! short by the end of the file as "unable to read note header", and hands
//! back whatever entry address the note holds. vmm walks the notes itself,
//! strictly inside each segment, and accepts an entry point only when it lies
//! in bytes the kernel image loads into guest RAM.

use std::io::{Read, Seek, SeekFrom};

/// Note type of the 32-bit PVH entry point.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// Largest `PT_NOTE` segment read (Linux's are a few hundred bytes).
pub const MAX_NOTE_SEGMENT: u64 = 64 << 10;

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const NHDR_SIZE: usize = 12;

/// What is wrong with a kernel's PVH note.
#[derive(Debug, thiserror::Error)]
pub enum PvhNoteError {
    /// The ELF or program headers could not be read.
    #[error("cannot read the ELF program headers: {0}")]
    Headers(std::io::Error),
    /// A `PT_NOTE` segment lies (partly) outside the file.
    #[error("its PT_NOTE segment ({size} bytes at file offset {offset:#x}) extends past the end of the file ({file_size} bytes)")]
    SegmentOutsideFile {
        /// File offset of the segment.
        offset: u64,
        /// Its size.
        size: u64,
        /// The file's size.
        file_size: u64,
    },
    /// A `PT_NOTE` segment larger than vmm reads.
    #[error("its PT_NOTE segment is {0} bytes, more than the {MAX_NOTE_SEGMENT} vmm accepts")]
    SegmentTooLarge(u64),
    /// A note runs past the end of its segment.
    #[error("the note at offset {offset} of its PT_NOTE segment is truncated: it needs {needed} bytes, the segment has {available} left")]
    Truncated {
        /// Offset of the note in the segment.
        offset: usize,
        /// Bytes the note's header says it has.
        needed: u64,
        /// Bytes left in the segment.
        available: usize,
    },
    /// The descriptor cannot hold a 32-bit address.
    #[error("its descriptor is {0} bytes, too short for a 32-bit entry address")]
    ShortDescriptor(u32),
    /// The entry address does not fit in 32 bits.
    #[error("its entry point {0:#x} is above 4 GiB, unreachable in 32-bit mode")]
    EntryAbove4G(u64),
    /// The entry is beyond guest RAM.
    #[error("its entry point {entry:#x} is outside guest memory (RAM ends at {ram_end:#x})")]
    EntryOutsideRam {
        /// The entry address.
        entry: u64,
        /// End of low guest RAM.
        ram_end: u64,
    },
    /// The entry is not in any loaded part of the image.
    #[error("its entry point {0:#x} is outside the kernel image (in no PT_LOAD segment's file contents)")]
    EntryOutsideImage(u64),
}

/// A loadable segment's file-backed part in guest memory: (address, size).
type Extent = (u64, u64);

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// The PVH entry point of the ELF64 kernel in `file`, checked against the
/// image and `ram_end` (end of low guest RAM): `None` when the file is not
/// ELF64 or has no PVH note. Leaves the file position undefined.
pub fn read_pvh_entry<F: Read + Seek>(
    file: &mut F,
    ram_end: u64,
) -> Result<Option<u64>, PvhNoteError> {
    let file_size = file.seek(SeekFrom::End(0)).map_err(PvhNoteError::Headers)?;
    let mut ehdr = [0u8; EHDR_SIZE];
    file.rewind().map_err(PvhNoteError::Headers)?;
    if file.read_exact(&mut ehdr).is_err() || &ehdr[..4] != b"\x7fELF" || ehdr[4] != 2 {
        return Ok(None); // not ELF64: the loaders decide what it is
    }
    let phoff = u64_at(&ehdr, 32);
    let phentsize = usize::from(u16_at(&ehdr, 54));
    let phnum = usize::from(u16_at(&ehdr, 56));
    if phnum == 0 {
        return Ok(None);
    }
    if phentsize < PHDR_SIZE {
        return Err(PvhNoteError::Headers(std::io::Error::other(format!(
            "program header size {phentsize} is smaller than ELF64's {PHDR_SIZE}"
        ))));
    }
    let table = (phentsize * phnum) as u64;
    if phoff.checked_add(table).is_none_or(|end| end > file_size) {
        return Err(PvhNoteError::Headers(std::io::Error::other(format!(
            "the program header table ({table} bytes at {phoff:#x}) runs past the end of the file"
        ))));
    }
    // No larger than the file.
    let mut phdrs = vec![0u8; phentsize * phnum];
    file.seek(SeekFrom::Start(phoff))
        .and_then(|_| file.read_exact(&mut phdrs))
        .map_err(PvhNoteError::Headers)?;

    let mut loads: Vec<Extent> = Vec::new();
    let mut entry = None;
    for ph in phdrs.chunks_exact(phentsize) {
        let (kind, offset, paddr, filesz) =
            (u32_at(ph, 0), u64_at(ph, 8), u64_at(ph, 24), u64_at(ph, 32));
        match kind {
            PT_LOAD if filesz > 0 => loads.push((paddr, filesz)),
            PT_NOTE if entry.is_none() => {
                if offset.checked_add(filesz).is_none_or(|end| end > file_size) {
                    return Err(PvhNoteError::SegmentOutsideFile {
                        offset,
                        size: filesz,
                        file_size,
                    });
                }
                if filesz > MAX_NOTE_SEGMENT {
                    return Err(PvhNoteError::SegmentTooLarge(filesz));
                }
                // Bounded by MAX_NOTE_SEGMENT above.
                let mut notes = vec![0u8; usize::try_from(filesz).unwrap_or(0)];
                file.seek(SeekFrom::Start(offset))
                    .and_then(|_| file.read_exact(&mut notes))
                    .map_err(PvhNoteError::Headers)?;
                entry = find_pvh_entry(&notes)?;
            }
            _ => {}
        }
    }
    match entry {
        Some(e) => check_entry(e, &loads, ram_end).map(Some),
        None => Ok(None),
    }
}

fn align4(n: u64) -> u64 {
    (n + 3) & !3
}

/// The entry address of the first PVH note in a `PT_NOTE` segment's bytes;
/// every note before it must lie wholly inside the segment.
pub fn find_pvh_entry(notes: &[u8]) -> Result<Option<u64>, PvhNoteError> {
    let mut at = 0usize;
    while at < notes.len() {
        let left = notes.len() - at;
        let truncated = |needed: u64| PvhNoteError::Truncated {
            offset: at,
            needed,
            available: left,
        };
        if left < NHDR_SIZE {
            return Err(truncated(NHDR_SIZE as u64));
        }
        let namesz = u32_at(notes, at);
        let descsz = u32_at(notes, at + 4);
        let kind = u32_at(notes, at + 8);
        let name_len = align4(u64::from(namesz));
        let size = NHDR_SIZE as u64 + name_len + align4(u64::from(descsz));
        // The last note's descriptor need not be padded.
        let unpadded = NHDR_SIZE as u64 + name_len + u64::from(descsz);
        if unpadded > left as u64 {
            return Err(truncated(unpadded));
        }
        let name_at = at + NHDR_SIZE;
        // name_len <= left, so these fit in usize.
        let desc_at = name_at + usize::try_from(name_len).unwrap_or(usize::MAX);
        let name = &notes[name_at..name_at + usize::try_from(namesz).unwrap_or(0)];
        if kind == XEN_ELFNOTE_PHYS32_ENTRY && name == b"Xen\0" {
            let entry = match descsz {
                4..=7 => u64::from(u32_at(notes, desc_at)),
                8.. => u64_at(notes, desc_at),
                _ => return Err(PvhNoteError::ShortDescriptor(descsz)),
            };
            return Ok(Some(entry));
        }
        at = usize::try_from(size).map_or(notes.len(), |s| at.saturating_add(s));
    }
    Ok(None)
}

/// Accept `entry` when it is a 32-bit address inside guest RAM and inside the
/// file contents of a loadable segment.
fn check_entry(entry: u64, loads: &[Extent], ram_end: u64) -> Result<u64, PvhNoteError> {
    if entry > u64::from(u32::MAX) {
        return Err(PvhNoteError::EntryAbove4G(entry));
    }
    if entry >= ram_end {
        return Err(PvhNoteError::EntryOutsideRam { entry, ram_end });
    }
    let inside = loads
        .iter()
        .any(|&(start, size)| entry >= start && entry - start < size);
    if !inside {
        return Err(PvhNoteError::EntryOutsideImage(entry));
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::cast_possible_truncation)]
    use super::*;
    use std::io::Cursor;

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend((name.len() as u32).to_le_bytes());
        n.extend((desc.len() as u32).to_le_bytes());
        n.extend(kind.to_le_bytes());
        n.extend(name);
        n.resize(n.len().next_multiple_of(4), 0);
        n.extend(desc);
        n.resize(n.len().next_multiple_of(4), 0);
        n
    }

    fn pvh(entry: u64) -> Vec<u8> {
        note(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY, &entry.to_le_bytes())
    }

    /// An ELF64 file with one PT_LOAD (`code` at 1 MiB) and one PT_NOTE.
    fn elf(code_len: usize, notes: &[u8], note_filesz: u64) -> Vec<u8> {
        let mut f = vec![0u8; 64 + 2 * 56];
        f[0..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&2u16.to_le_bytes());
        let code_off = f.len() as u64;
        let note_off = code_off + code_len as u64;
        let ph = |f: &mut Vec<u8>, i: usize, kind: u32, off: u64, paddr: u64, size: u64| {
            let p = 64 + i * 56;
            f[p..p + 4].copy_from_slice(&kind.to_le_bytes());
            f[p + 8..p + 16].copy_from_slice(&off.to_le_bytes());
            f[p + 24..p + 32].copy_from_slice(&paddr.to_le_bytes());
            f[p + 32..p + 40].copy_from_slice(&size.to_le_bytes());
        };
        ph(&mut f, 0, PT_LOAD, code_off, 0x10_0000, code_len as u64);
        ph(&mut f, 1, PT_NOTE, note_off, 0, note_filesz);
        f.resize(f.len() + code_len, 0x90);
        f.extend(notes);
        f
    }

    fn entry_of(file: Vec<u8>) -> Result<Option<u64>, PvhNoteError> {
        read_pvh_entry(&mut Cursor::new(file), 64 << 20)
    }

    #[test]
    fn finds_the_pvh_note_among_others() {
        let mut notes = note(b"GNU\0", 3, &[1, 2, 3, 4, 5]);
        notes.extend(pvh(0x10_0010));
        assert_eq!(find_pvh_entry(&notes).unwrap(), Some(0x10_0010));
        // A 4-byte descriptor, as some kernels write it.
        let short = note(
            b"Xen\0",
            XEN_ELFNOTE_PHYS32_ENTRY,
            &0x10_0020u32.to_le_bytes(),
        );
        assert_eq!(find_pvh_entry(&short).unwrap(), Some(0x10_0020));
        // Wrong name or type: not the entry.
        assert_eq!(
            find_pvh_entry(&note(b"Xe\0", XEN_ELFNOTE_PHYS32_ENTRY, &[0; 8])).unwrap(),
            None
        );
        assert_eq!(find_pvh_entry(&note(b"Xen\0", 17, &[0; 8])).unwrap(), None);
        assert_eq!(find_pvh_entry(&[]).unwrap(), None);
    }

    #[test]
    fn truncated_and_short_notes_are_refused() {
        let full = pvh(0x10_0000);
        for cut in [1, 11, 12, 16, full.len() - 1] {
            let err = find_pvh_entry(&full[..cut]).unwrap_err();
            assert!(
                matches!(err, PvhNoteError::Truncated { .. }),
                "{cut}: {err}"
            );
        }
        // A descriptor claiming more than the segment holds.
        let mut huge = pvh(0x10_0000);
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            find_pvh_entry(&huge),
            Err(PvhNoteError::Truncated { .. })
        ));
        let two = note(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY, &[0, 0]);
        assert!(matches!(
            find_pvh_entry(&two),
            Err(PvhNoteError::ShortDescriptor(2))
        ));
    }

    #[test]
    fn entry_must_be_in_the_image_and_in_ram() {
        let notes = pvh(0x10_0008);
        assert_eq!(
            entry_of(elf(64, &notes, notes.len() as u64)).unwrap(),
            Some(0x10_0008)
        );
        let past_code = pvh(0x10_0040); // one past the 64 code bytes
        let err = entry_of(elf(64, &past_code, past_code.len() as u64)).unwrap_err();
        assert!(
            matches!(err, PvhNoteError::EntryOutsideImage(0x10_0040)),
            "{err}"
        );
        let beyond_ram = pvh(0x8000_0000);
        let err = entry_of(elf(64, &beyond_ram, beyond_ram.len() as u64)).unwrap_err();
        assert!(
            err.to_string()
                .contains("outside guest memory (RAM ends at 0x4000000)"),
            "{err}"
        );
        let high = pvh(1 << 32);
        assert!(matches!(
            entry_of(elf(64, &high, high.len() as u64)),
            Err(PvhNoteError::EntryAbove4G(_))
        ));
    }

    #[test]
    fn note_segments_must_be_whole_and_in_the_file() {
        let notes = pvh(0x10_0000);
        // The segment says 12 bytes: the header only.
        let err = entry_of(elf(64, &notes, 12)).unwrap_err();
        assert!(matches!(err, PvhNoteError::Truncated { .. }), "{err}");
        // The segment runs past the end of the file.
        let err = entry_of(elf(64, &notes, 4096)).unwrap_err();
        assert!(
            matches!(err, PvhNoteError::SegmentOutsideFile { .. }),
            "{err}"
        );
        let err = entry_of(elf(64, &notes, u64::MAX)).unwrap_err();
        assert!(
            matches!(err, PvhNoteError::SegmentOutsideFile { .. }),
            "{err}"
        );
        // The file ends in the middle of the note.
        let mut cut = elf(64, &notes, notes.len() as u64);
        cut.truncate(cut.len() - 4);
        assert!(matches!(
            entry_of(cut),
            Err(PvhNoteError::SegmentOutsideFile { .. })
        ));
        // No note at all, or not ELF64: nothing to say.
        assert_eq!(entry_of(elf(64, &[], 0)).unwrap(), None);
        assert_eq!(entry_of(b"not an elf".to_vec()).unwrap(), None);
    }
}
