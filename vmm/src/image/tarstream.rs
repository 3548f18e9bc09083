//! Reading tar entries with bounded extension headers.
//!
//! The `tar` crate's normal iterator reads GNU long names and PAX headers
//! into memory whatever their size; here the archive is read raw and those
//! headers are folded into the following entry by hand, each bounded.

use std::io::{self, Read};
use std::time::{Duration, SystemTime};

use tar::{Archive, Entry, EntryType, PaxExtensions};

/// Longest path or link target accepted (Linux's `PATH_MAX`).
pub const MAX_PATH: usize = 4096;
/// Largest PAX extended header accepted.
const MAX_PAX: u64 = 1 << 20;
/// Largest single extended attribute value accepted.
const MAX_XATTR_VALUE: usize = 64 << 10;

/// One tar member's metadata, extension headers applied.
#[derive(Debug)]
pub struct Meta {
    /// The path as written (long name or PAX `path` if present).
    pub path: Vec<u8>,
    /// Link target of symbolic and hard links.
    pub link: Option<Vec<u8>>,
    /// The member type.
    pub kind: EntryType,
    /// Data size.
    pub size: u64,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time.
    pub mtime: SystemTime,
    /// Device numbers of character and block devices.
    pub dev: (u32, u32),
    /// `SCHILY.xattr.*` extended attributes.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Offset of the data in the archive stream.
    pub data_offset: u64,
}

impl Meta {
    /// The path for messages.
    pub fn display(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

/// [`Meta`] while headers are being folded in.
struct Parsed {
    path: Vec<u8>,
    link: Option<Vec<u8>>,
    kind: EntryType,
    size: u64,
    mode: u32,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<SystemTime>,
    dev: (u32, u32),
    xattrs: Vec<(String, Vec<u8>)>,
    data_offset: u64,
}

#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

/// Call `f` with each member of `archive` (its metadata and its data) until
/// the end of the archive. Errors from the archive are `Err(Left(message))`;
/// errors from `f` are passed through as `Err(Right(e))`.
pub fn for_each<R: Read, E>(
    archive: &mut Archive<R>,
    mut f: impl FnMut(Meta, &mut Entry<'_, R>) -> Result<(), E>,
) -> Result<(), Either<String, E>> {
    let entries = archive.entries().map_err(|e| Either::Left(e.to_string()))?;
    let mut pending = Pending::default();
    for entry in entries.raw(true) {
        let mut entry = entry.map_err(|e| Either::Left(format!("reading tar: {e}")))?;
        let kind = entry.header().entry_type();
        match kind {
            EntryType::GNULongName => {
                pending.long_name =
                    Some(read_name(&mut entry, "GNU long name").map_err(Either::Left)?);
                continue;
            }
            EntryType::GNULongLink => {
                pending.long_link =
                    Some(read_name(&mut entry, "GNU long link name").map_err(Either::Left)?);
                continue;
            }
            EntryType::XHeader => {
                pending.pax =
                    Some(read_bounded(&mut entry, MAX_PAX, "PAX header").map_err(Either::Left)?);
                continue;
            }
            // Global PAX headers set defaults nobody relies on in layers.
            EntryType::XGlobalHeader => continue,
            _ => {}
        }
        let meta = meta(&entry, std::mem::take(&mut pending)).map_err(Either::Left)?;
        f(meta, &mut entry).map_err(Either::Right)?;
    }
    if pending.long_name.is_some() || pending.long_link.is_some() || pending.pax.is_some() {
        return Err(Either::Left(
            "archive ends after an extension header with no member".into(),
        ));
    }
    Ok(())
}

/// One of two error kinds.
#[derive(Debug)]
pub enum Either<L, R> {
    /// The first.
    Left(L),
    /// The second.
    Right(R),
}

fn read_bounded<R: Read>(
    entry: &mut Entry<'_, R>,
    max: u64,
    what: &str,
) -> Result<Vec<u8>, String> {
    if entry.size() > max {
        return Err(format!(
            "{what} of {} bytes is larger than {max}",
            entry.size()
        ));
    }
    let mut buf = Vec::new();
    entry
        .take(max)
        .read_to_end(&mut buf)
        .map_err(|e| format!("reading {what}: {e}"))?;
    if (buf.len() as u64) < entry.size() {
        return Err(format!("{what} ends early (archive truncated)"));
    }
    Ok(buf)
}

fn read_name<R: Read>(entry: &mut Entry<'_, R>, what: &str) -> Result<Vec<u8>, String> {
    let mut name = read_bounded(entry, MAX_PATH as u64 + 1, what)?;
    while name.last() == Some(&0) {
        name.pop();
    }
    Ok(name)
}

fn meta<R: Read>(entry: &Entry<'_, R>, pending: Pending) -> Result<Meta, String> {
    let header = entry.header();
    let field = |what: &str, e: io::Error| format!("bad {what} in tar header: {e}");
    // Numeric fields a PAX header overrides may be empty in the header.
    let mut m = Parsed {
        path: pending
            .long_name
            .unwrap_or_else(|| header.path_bytes().into_owned()),
        link: pending
            .long_link
            .or_else(|| header.link_name_bytes().map(|l| l.into_owned())),
        kind: header.entry_type(),
        size: entry.size(),
        mode: header.mode().map_err(|e| field("mode", e))? & 0o7777,
        uid: numeric(header.uid(), &header.as_old().uid),
        gid: numeric(header.gid(), &header.as_old().gid),
        mtime: header
            .mtime()
            .ok()
            .map(|t| SystemTime::UNIX_EPOCH + Duration::from_secs(t)),
        dev: (0, 0),
        xattrs: Vec::new(),
        data_offset: entry.raw_file_position(),
    };
    if matches!(m.kind, EntryType::Char | EntryType::Block) {
        m.dev = (
            header.device_major().ok().flatten().unwrap_or(0),
            header.device_minor().ok().flatten().unwrap_or(0),
        );
    }
    if let Some(pax) = pending.pax {
        apply_pax(&mut m, &pax)?;
    }
    let uid = m
        .uid
        .ok_or_else(|| field("uid", io::ErrorKind::InvalidData.into()))?;
    let gid = m
        .gid
        .ok_or_else(|| field("gid", io::ErrorKind::InvalidData.into()))?;
    let mtime = m.mtime.unwrap_or(SystemTime::UNIX_EPOCH);
    if m.path.len() > MAX_PATH || m.link.as_ref().is_some_and(|l| l.len() > MAX_PATH) {
        let shown = String::from_utf8_lossy(&m.path);
        return Err(format!("path of {shown} longer than {MAX_PATH} bytes"));
    }
    Ok(Meta {
        path: m.path,
        link: m.link,
        kind: m.kind,
        size: m.size,
        mode: m.mode,
        uid,
        gid,
        mtime,
        dev: m.dev,
        xattrs: m.xattrs,
        data_offset: m.data_offset,
    })
}

/// A numeric header field: an empty one (NULs or spaces) is 0, an
/// unparsable one `None` (an error unless a PAX header gives the value).
fn numeric(parsed: io::Result<u64>, raw: &[u8]) -> Option<u64> {
    match parsed {
        Ok(v) => Some(v),
        Err(_) if raw.iter().all(|&b| b == 0 || b == b' ') => Some(0),
        Err(_) => None,
    }
}

fn apply_pax(m: &mut Parsed, pax: &[u8]) -> Result<(), String> {
    for ext in PaxExtensions::new(pax) {
        let ext = ext.map_err(|e| format!("malformed PAX header: {e}"))?;
        let key = ext.key().map_err(|_| "non-UTF-8 PAX key".to_string())?;
        let value = ext.value_bytes();
        let number = || {
            std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| format!("bad PAX {key} {:?}", String::from_utf8_lossy(value)))
        };
        match key {
            "path" => m.path = value.to_vec(),
            "linkpath" => m.link = Some(value.to_vec()),
            "uid" => m.uid = Some(number()?),
            "gid" => m.gid = Some(number()?),
            // The raw reader framed the entry by the header's size, so a
            // different PAX size would mean the entry was mis-framed.
            "size" if number()? != m.size => {
                return Err("PAX size differs from the header size (unsupported)".into())
            }
            "mtime" => m.mtime = Some(pax_time(value).ok_or("bad PAX mtime")?),
            k if k.starts_with("GNU.sparse.") => {
                return Err("GNU sparse files are not supported".into())
            }
            k => {
                if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                    if value.len() > MAX_XATTR_VALUE || m.xattrs.len() >= 64 {
                        return Err(format!("extended attribute {name} too large or too many"));
                    }
                    m.xattrs.push((name.to_owned(), value.to_vec()));
                }
            }
        }
    }
    Ok(())
}

/// A PAX time: decimal seconds with an optional fraction; negative times
/// are clamped to the epoch.
fn pax_time(value: &[u8]) -> Option<SystemTime> {
    let s = std::str::from_utf8(value).ok()?.trim();
    if s.starts_with('-') {
        return Some(SystemTime::UNIX_EPOCH);
    }
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: u64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let nanos = if digits.is_empty() {
        0
    } else if digits.bytes().all(|b| b.is_ascii_digit()) {
        let scale = 10u32.pow(9 - u32::try_from(digits.len()).ok()?);
        digits.parse::<u32>().ok()? * scale
    } else {
        return None;
    };
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}
