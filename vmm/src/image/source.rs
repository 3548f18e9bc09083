//! Where an image's files come from: a directory (OCI layout, or an
//! unpacked `docker save`) or a `docker save` tar archive, read in place.
//!
//! Paths inside an image are relative, `/`-separated and never contain
//! `..`; in a directory no component may be a symbolic link, and in an
//! archive links are resolved inside the archive only.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek};
use std::os::unix::fs::FileExt;

use tar::{Archive, EntryType};

use super::fsops;
use super::tarstream::{self, Either};

/// Most members a `docker save` archive may have.
const MAX_MEMBERS: usize = 100_000;
/// Most links followed to find one member.
const MAX_LINK_HOPS: usize = 8;

/// An image's files.
pub enum Source {
    /// A directory, as an open fd.
    Dir(File),
    /// A tar archive and where its regular members are.
    Tar {
        /// The archive.
        file: File,
        /// Members by normalized path.
        members: HashMap<String, Member>,
    },
}

/// A member of a tar archive.
#[derive(Clone, Debug)]
pub enum Member {
    /// A regular file's data position.
    File {
        /// Offset of the data in the archive.
        offset: u64,
        /// Length.
        size: u64,
    },
    /// A symbolic link (target as written).
    Symlink(String),
    /// A hard link (target path from the archive root).
    Hardlink(String),
    /// A directory or anything else.
    Other,
}

/// An open file of the image with its size.
pub struct Blob<'a> {
    /// Its data.
    pub reader: BlobReader<'a>,
    /// Its length.
    pub size: u64,
}

/// Reads one file of a [`Source`].
pub enum BlobReader<'a> {
    /// A file of a directory.
    File(File),
    /// A member of an archive: `(archive, position, end)`.
    Section(&'a File, u64, u64),
}

impl Read for BlobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            BlobReader::File(f) => f.read(buf),
            BlobReader::Section(file, pos, end) => {
                let left = usize::try_from(end.saturating_sub(*pos)).unwrap_or(usize::MAX);
                let want = buf.len().min(left);
                if want == 0 {
                    return Ok(0);
                }
                let n = file.read_at(buf.get_mut(..want).unwrap_or_default(), *pos)?;
                *pos += n as u64;
                Ok(n)
            }
        }
    }
}

/// Normalize a path inside an image: strip `./` and leading `/`, refuse
/// `..`, empty results and NUL bytes.
pub fn normalize(path: &str) -> Option<String> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            p if p.contains('\0') => return None,
            p => parts.push(p),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

impl Source {
    /// Index the archive `file` (from its start, whatever its position). `Err` says why it is
    /// not a readable archive.
    pub fn tar(mut file: File) -> Result<Source, String> {
        file.rewind().map_err(|e| e.to_string())?;
        let len = file.metadata().map_err(|e| e.to_string())?.len();
        let mut members = HashMap::new();
        let mut archive = Archive::new(BufReader::new(&file));
        let walk = tarstream::for_each(&mut archive, |meta, _| {
            if members.len() >= MAX_MEMBERS {
                return Err(format!("more than {MAX_MEMBERS} members"));
            }
            let path = String::from_utf8(meta.path.clone())
                .ok()
                .and_then(|p| normalize(&p));
            let Some(path) = path else {
                return Ok(()); // the root or an unusable name: never referenced
            };
            let link = meta
                .link
                .as_ref()
                .map(|l| String::from_utf8_lossy(l).into_owned());
            let member = match (meta.kind, link) {
                (EntryType::Regular | EntryType::Continuous, _) => {
                    let end = meta.data_offset.saturating_add(meta.size);
                    if end > len {
                        return Err(format!(
                            "member {path} ends past the end of the archive (truncated)"
                        ));
                    }
                    Member::File {
                        offset: meta.data_offset,
                        size: meta.size,
                    }
                }
                (EntryType::Symlink, Some(t)) => Member::Symlink(t),
                (EntryType::Link, Some(t)) => Member::Hardlink(t),
                _ => Member::Other,
            };
            members.insert(path, member);
            Ok(())
        });
        match walk {
            Ok(()) => Ok(Source::Tar { file, members }),
            Err(Either::Left(e) | Either::Right(e)) => Err(e),
        }
    }

    /// Whether the image has the file `path`.
    pub fn exists(&self, path: &str) -> bool {
        match self.open(path) {
            Ok(_) => true,
            Err(e) => e.kind() != io::ErrorKind::NotFound,
        }
    }

    /// Open the regular file `path` (already [`normalize`]d).
    pub fn open(&self, path: &str) -> io::Result<Blob<'_>> {
        match self {
            Source::Dir(root) => open_in_dir(root, path),
            Source::Tar { file, members } => {
                let (offset, size) = resolve(members, path)?;
                Ok(Blob {
                    reader: BlobReader::Section(file, offset, offset.saturating_add(size)),
                    size,
                })
            }
        }
    }
}

fn open_in_dir(root: &File, path: &str) -> io::Result<Blob<'static>> {
    let not_found = || io::Error::new(io::ErrorKind::NotFound, "no such file");
    let cstr = |s: &str| CString::new(s).map_err(|_| not_found());
    let mut parts: Vec<&str> = path.split('/').collect();
    let name = parts.pop().ok_or_else(not_found)?;
    let mut dir: Option<File> = None;
    for part in parts {
        let next = fsops::open_dir_at(dir.as_ref().unwrap_or(root), &cstr(part)?)?;
        dir = Some(next);
    }
    let file = fsops::open_file_at(dir.as_ref().unwrap_or(root), &cstr(name)?)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(Blob {
        size: meta.len(),
        reader: BlobReader::File(file),
    })
}

/// Find the data of `path`, following links inside the archive.
fn resolve(members: &HashMap<String, Member>, path: &str) -> io::Result<(u64, u64)> {
    let not_found = || io::Error::new(io::ErrorKind::NotFound, "no such member");
    let mut path = path.to_owned();
    for _ in 0..MAX_LINK_HOPS {
        path = match members.get(&path).ok_or_else(not_found)? {
            Member::File { offset, size } => return Ok((*offset, *size)),
            Member::Hardlink(target) => normalize(target).ok_or_else(not_found)?,
            Member::Symlink(target) if !target.starts_with('/') => {
                let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
                join_lexically(dir, target).ok_or_else(not_found)?
            }
            Member::Symlink(_) | Member::Other => return Err(not_found()),
        };
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        "too many links",
    ))
}

/// `dir/target` with `.` and `..` folded; `None` if it climbs above the root.
fn join_lexically(dir: &str, target: &str) -> Option<String> {
    let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}
