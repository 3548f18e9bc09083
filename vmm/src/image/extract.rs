//! Extract one layer tar into a private staging directory, turning OCI
//! whiteouts into overlayfs ones.
//!
//! Every entry is created relative to directory fds opened one component at
//! a time with `O_NOFOLLOW | O_DIRECTORY`, so an entry can never reach
//! through a symbolic link (or anything but a real directory) that an
//! earlier entry planted; `..` components are refused and absolute paths are
//! taken relative to the layer root. Links are stored verbatim and never
//! followed; hard links must point at an entry of the same layer.

use std::ffi::{CString, OsStr};
use std::fs::{File, FileTimes, Permissions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::time::SystemTime;

use tar::{Archive, EntryType};

use super::tarstream::{self, Either, Meta};
use super::{ImageError, Limits};

/// Deepest path accepted (components).
const MAX_DEPTH: usize = 256;
/// Longest file name (ext4's limit).
const MAX_NAME: usize = 255;
/// Extended attributes kept from the tar; everything else (notably
/// `trusted.*`, which overlayfs interprets) is dropped.
fn xattr_allowed(name: &str) -> bool {
    name.starts_with("user.") || name == "security.capability"
}

/// Names the image and layer in errors.
pub struct Ctx<'a> {
    /// The input path.
    pub image: &'a str,
    /// `N (diff-id)`.
    pub layer: String,
}

impl Ctx<'_> {
    fn entry(&self, entry: &str, reason: impl Into<String>) -> ImageError {
        ImageError::Entry {
            image: self.image.to_owned(),
            layer: self.layer.clone(),
            entry: entry.to_owned(),
            reason: reason.into(),
        }
    }

    /// A [`ImageError::Layer`].
    pub fn layer(&self, detail: impl Into<String>) -> ImageError {
        ImageError::Layer {
            image: self.image.to_owned(),
            layer: self.layer.clone(),
            detail: detail.into(),
        }
    }
}

/// What the staging tree holds, to size the file system.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Tar entries seen.
    pub entries: u64,
    /// Bytes of regular-file data.
    pub bytes: u64,
    /// 4 KiB blocks of regular-file data.
    pub data_blocks: u64,
    /// Directories.
    pub dirs: u64,
    /// Bytes of directory entries.
    pub dirent_bytes: u64,
    /// Inodes with extended attributes, and symbolic links too long to be
    /// stored in the inode: one block each at most.
    pub extra_blocks: u64,
}

/// Metadata of the layer's root directory (from a `./` entry), which
/// `mkfs.ext4 -d` does not copy.
#[derive(Debug, Clone, Copy)]
pub struct RootMeta {
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time.
    pub mtime: SystemTime,
}

/// The result of [`extract`].
#[derive(Debug)]
pub struct Extracted {
    /// Sizing information.
    pub stats: Stats,
    /// The root directory's metadata, if the layer has a root entry.
    pub root: Option<RootMeta>,
}

struct Extractor<'a> {
    root: &'a File,
    ctx: &'a Ctx<'a>,
    limits: &'a Limits,
    stats: Stats,
    root_meta: Option<RootMeta>,
    dir_times: Vec<(Vec<Vec<u8>>, SystemTime)>,
}

/// Extract `archive` into the directory `root`. Nothing is created outside
/// `root`; on error the caller removes `root`.
pub fn extract<R: Read>(
    archive: &mut Archive<R>,
    root: &File,
    ctx: &Ctx<'_>,
    limits: &Limits,
) -> Result<Extracted, ImageError> {
    let mut x = Extractor {
        root,
        ctx,
        limits,
        stats: Stats::default(),
        root_meta: None,
        dir_times: Vec::new(),
    };
    tarstream::for_each(archive, |meta, data| x.entry(meta, data)).map_err(|e| match e {
        Either::Left(msg) => ctx.layer(format!("corrupt or truncated layer data: {msg}")),
        Either::Right(e) => e,
    })?;
    x.apply_dir_times()?;
    Ok(Extracted {
        stats: x.stats,
        root: x.root_meta,
    })
}

fn cstring(name: &[u8]) -> Option<CString> {
    CString::new(name).ok()
}

/// Split a tar path into components: `.` and empty ones dropped (so a
/// leading `/` is relative to the root), `..` refused.
fn components(path: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("path has a '..' component".into()),
            c if c.len() > MAX_NAME => {
                return Err(format!("a name is longer than {MAX_NAME} bytes"))
            }
            c if c.contains(&0) => return Err("path contains a NUL byte".into()),
            c => out.push(c),
        }
    }
    if out.len() > MAX_DEPTH {
        return Err(format!("path is deeper than {MAX_DEPTH} components"));
    }
    Ok(out)
}

fn dirent_bytes(name: &[u8]) -> u64 {
    8 + (name.len() as u64).next_multiple_of(4)
}

impl Extractor<'_> {
    fn entry<R: Read>(&mut self, meta: Meta, data: &mut R) -> Result<(), ImageError> {
        let shown = meta.display();
        let refuse = |reason: String| self.ctx.entry(&shown, reason);
        self.stats.entries += 1;
        if self.stats.entries > self.limits.max_entries {
            return Err(ImageError::Limit {
                image: self.ctx.image.to_owned(),
                what: format!("layer {}: number of entries", self.ctx.layer),
                limit: self.limits.max_entries,
            });
        }
        let comps = components(&meta.path).map_err(refuse)?;
        let uid = u32::try_from(meta.uid)
            .ok()
            .filter(|&u| u != u32::MAX)
            .ok_or_else(|| refuse(format!("uid {} out of range", meta.uid)))?;
        let gid = u32::try_from(meta.gid)
            .ok()
            .filter(|&g| g != u32::MAX)
            .ok_or_else(|| refuse(format!("gid {} out of range", meta.gid)))?;
        let Some((&name, parents)) = comps.split_last() else {
            if meta.kind != EntryType::Directory {
                return Err(refuse("the layer root is not a directory".into()));
            }
            self.root_meta = Some(RootMeta {
                mode: meta.mode,
                uid,
                gid,
                mtime: meta.mtime,
            });
            return Ok(());
        };
        let dir = self.walk(parents, true, &shown)?;
        let io_err = |what: &str, e: io::Error| refuse(format!("{what}: {e}"));

        if let Some(target) = name.strip_prefix(b".wh.") {
            return self.whiteout(&dir, target, &shown);
        }
        let cname = cstring(name).ok_or_else(|| refuse("bad name".into()))?;
        // A later entry replaces an earlier one of the same name; a
        // directory over a directory only updates its metadata.
        let existing = super::fsops::stat_at(&dir, &cname).map_err(|e| io_err("stat", e))?;
        let new_is_dir = meta.kind == EntryType::Directory;
        match existing {
            Some(st) if is_dir(&st) && new_is_dir => {}
            Some(st) => remove(&dir, &cname, is_dir(&st)).map_err(|e| io_err("replace", e))?,
            None => self.stats.dirent_bytes += dirent_bytes(name),
        }

        match meta.kind {
            EntryType::Regular | EntryType::Continuous => {
                let left = self.limits.max_layer_bytes.saturating_sub(self.stats.bytes);
                if meta.size > left {
                    return Err(ImageError::Limit {
                        image: self.ctx.image.to_owned(),
                        what: format!("layer {}: data (entry {shown:?})", self.ctx.layer),
                        limit: self.limits.max_layer_bytes,
                    });
                }
                let mut file =
                    super::fsops::create_file_at(&dir, &cname).map_err(|e| io_err("create", e))?;
                let copied = io::copy(&mut data.take(meta.size), &mut file).map_err(|e| {
                    self.ctx.layer(format!(
                        "corrupt or truncated layer data in entry {shown:?}: {e}"
                    ))
                })?;
                if copied < meta.size {
                    return Err(self.ctx.layer(format!(
                        "layer data ends inside entry {shown:?} ({copied} of {} bytes; truncated)",
                        meta.size
                    )));
                }
                self.stats.bytes += meta.size;
                self.stats.data_blocks += meta.size.div_ceil(4096);
                self.apply(&file, &meta, uid, gid, &shown)?;
                file.set_times(times(meta.mtime))
                    .map_err(|e| io_err("set times", e))?;
            }
            EntryType::Directory => {
                if existing.is_none() {
                    super::fsops::mkdir_at(&dir, &cname, 0o700).map_err(|e| io_err("mkdir", e))?;
                    self.stats.dirs += 1;
                }
                let d = super::fsops::open_dir_at(&dir, &cname).map_err(|e| io_err("open", e))?;
                self.apply(&d, &meta, uid, gid, &shown)?;
                let path = comps.iter().map(|c| c.to_vec()).collect();
                self.dir_times.push((path, meta.mtime));
            }
            EntryType::Symlink => {
                let target = meta.link.as_deref().filter(|t| !t.is_empty());
                let target = target
                    .and_then(cstring)
                    .ok_or_else(|| refuse("symbolic link with an empty or bad target".into()))?;
                if target.as_bytes().len() > 59 {
                    self.stats.extra_blocks += 1;
                }
                super::fsops::symlink_at(&target, &dir, &cname)
                    .map_err(|e| io_err("symlink", e))?;
                super::fsops::lchown_at(&dir, &cname, uid, gid).map_err(|e| io_err("chown", e))?;
                super::fsops::set_times_at(&dir, &cname, meta.mtime)
                    .map_err(|e| io_err("set times", e))?;
            }
            EntryType::Link => self.hardlink(&dir, &cname, &meta, &comps, &shown)?,
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let kind = match meta.kind {
                    EntryType::Char => libc::S_IFCHR,
                    EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                let (major, minor) = meta.dev;
                super::fsops::mknod_at(&dir, &cname, kind, meta.mode, major, minor)
                    .map_err(|e| io_err("mknod", e))?;
                super::fsops::lchown_at(&dir, &cname, uid, gid).map_err(|e| io_err("chown", e))?;
                super::fsops::set_times_at(&dir, &cname, meta.mtime)
                    .map_err(|e| io_err("set times", e))?;
            }
            EntryType::GNUSparse => {
                return Err(refuse("GNU sparse files are not supported".into()))
            }
            other => {
                return Err(refuse(format!(
                    "unsupported tar entry type {:?}",
                    other.as_byte() as char
                )))
            }
        }
        Ok(())
    }

    /// `.wh..wh..opq` marks `dir` opaque; `.wh.NAME` becomes a 0:0
    /// character device `NAME`.
    fn whiteout(&mut self, dir: &File, target: &[u8], shown: &str) -> Result<(), ImageError> {
        let refuse = |reason: String| self.ctx.entry(shown, reason);
        if target == b".wh..opq" {
            super::fsops::set_xattr(dir, c"trusted.overlay.opaque", b"y")
                .map_err(|e| refuse(format!("set opaque xattr: {e}")))?;
            self.stats.extra_blocks += 1;
            return Ok(());
        }
        if target.starts_with(b".wh.") {
            log::warn!(
                "image {}: layer {}: ignoring AUFS metadata {shown:?}",
                self.ctx.image,
                self.ctx.layer
            );
            return Ok(());
        }
        if matches!(target, b"" | b"." | b"..") {
            return Err(refuse("whiteout of an empty, '.' or '..' name".into()));
        }
        let cname = cstring(target).ok_or_else(|| refuse("bad name".into()))?;
        match super::fsops::stat_at(dir, &cname).map_err(|e| refuse(format!("stat: {e}")))? {
            Some(st) => {
                remove(dir, &cname, is_dir(&st)).map_err(|e| refuse(format!("replace: {e}")))?
            }
            None => self.stats.dirent_bytes += dirent_bytes(target),
        }
        super::fsops::mknod_at(dir, &cname, libc::S_IFCHR, 0, 0, 0)
            .map_err(|e| refuse(format!("create whiteout: {e}")))
    }

    fn hardlink(
        &mut self,
        dir: &File,
        cname: &CString,
        meta: &Meta,
        comps: &[&[u8]],
        shown: &str,
    ) -> Result<(), ImageError> {
        let refuse = |reason: String| self.ctx.entry(shown, reason);
        let link = meta.link.as_deref().unwrap_or_default();
        let target = components(link).map_err(|e| refuse(format!("hard link target: {e}")))?;
        let Some((&tname, tparents)) = target.split_last() else {
            return Err(refuse("hard link to the layer root".into()));
        };
        if target == comps {
            return Err(refuse("hard link to itself".into()));
        }
        let missing = || {
            refuse(format!(
                "hard link target {:?} is not an earlier file of this layer",
                String::from_utf8_lossy(link)
            ))
        };
        let tdir = self.walk(tparents, false, shown).map_err(|_| missing())?;
        let tcname = cstring(tname).ok_or_else(missing)?;
        match super::fsops::stat_at(&tdir, &tcname) {
            Ok(Some(st)) if !is_dir(&st) => {}
            Ok(Some(_)) => return Err(refuse("hard link to a directory".into())),
            _ => return Err(missing()),
        }
        super::fsops::link_at(&tdir, &tcname, dir, cname).map_err(|e| refuse(format!("link: {e}")))
    }

    /// Owner, then permission bits (chown clears setuid/setgid), then the
    /// allowed extended attributes (chown clears file capabilities too).
    fn apply(
        &mut self,
        file: &File,
        meta: &Meta,
        uid: u32,
        gid: u32,
        shown: &str,
    ) -> Result<(), ImageError> {
        let refuse = |what: &str, e: io::Error| self.ctx.entry(shown, format!("{what}: {e}"));
        std::os::unix::fs::fchown(file, Some(uid), Some(gid)).map_err(|e| refuse("chown", e))?;
        file.set_permissions(Permissions::from_mode(meta.mode))
            .map_err(|e| refuse("chmod", e))?;
        let mut any = false;
        for (name, value) in &meta.xattrs {
            if !xattr_allowed(name) {
                log::warn!(
                    "image {}: layer {}: dropping extended attribute {name} of {shown:?}",
                    self.ctx.image,
                    self.ctx.layer
                );
                continue;
            }
            let cname =
                cstring(name.as_bytes()).ok_or_else(|| self.ctx.entry(shown, "bad xattr name"))?;
            super::fsops::set_xattr(file, &cname, value).map_err(|e| refuse("set xattr", e))?;
            any = true;
        }
        if any {
            self.stats.extra_blocks += 1;
        }
        Ok(())
    }

    /// Open the directory `comps` below the root, one component at a time,
    /// never through a symbolic link; missing ones are created (0755, root)
    /// when `create` is set.
    fn walk(&mut self, comps: &[&[u8]], create: bool, shown: &str) -> Result<File, ImageError> {
        let mut dir = self
            .root
            .try_clone()
            .map_err(|e| self.ctx.entry(shown, format!("dup: {e}")))?;
        for (i, &c) in comps.iter().enumerate() {
            let prefix = || String::from_utf8_lossy(&comps[..=i].join(&b'/')).into_owned();
            let name = cstring(c).ok_or_else(|| self.ctx.entry(shown, "bad name"))?;
            dir = match super::fsops::open_dir_at(&dir, &name) {
                Ok(d) => d,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create => {
                    super::fsops::mkdir_at(&dir, &name, 0o755)
                        .map_err(|e| self.ctx.entry(shown, format!("mkdir {}: {e}", prefix())))?;
                    self.stats.dirs += 1;
                    self.stats.dirent_bytes += dirent_bytes(c);
                    super::fsops::open_dir_at(&dir, &name)
                        .map_err(|e| self.ctx.entry(shown, format!("open {}: {e}", prefix())))?
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                    return Err(self.ctx.entry(
                        shown,
                        format!(
                            "path goes through {}, which is a symbolic link or not a directory",
                            prefix()
                        ),
                    ))
                }
                Err(e) => return Err(self.ctx.entry(shown, format!("open {}: {e}", prefix()))),
            };
        }
        Ok(dir)
    }

    /// Directory times go last: creating entries inside changes them.
    fn apply_dir_times(&mut self) -> Result<(), ImageError> {
        for (path, mtime) in std::mem::take(&mut self.dir_times) {
            let comps: Vec<&[u8]> = path.iter().map(Vec::as_slice).collect();
            let Some((&name, parents)) = comps.split_last() else {
                continue;
            };
            // Replaced since (by a later entry): nothing to stamp.
            let Ok(parent) = self.walk(parents, false, "") else {
                continue;
            };
            let Some(cname) = cstring(name) else { continue };
            let Ok(d) = super::fsops::open_dir_at(&parent, &cname) else {
                continue;
            };
            d.set_times(times(mtime)).map_err(|e| {
                self.ctx.entry(
                    &String::from_utf8_lossy(&path.join(&b'/')),
                    format!("set times: {e}"),
                )
            })?;
        }
        Ok(())
    }
}

fn times(t: SystemTime) -> FileTimes {
    FileTimes::new().set_accessed(t).set_modified(t)
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// Remove `name` from `dir`: a whole tree if it is a directory. The tree is
/// reached through `/proc/self/fd`, i.e. through the open directory itself,
/// and `remove_dir_all` does not follow symbolic links inside it.
fn remove(dir: &File, name: &CString, is_dir: bool) -> io::Result<()> {
    if !is_dir {
        return super::fsops::unlink_at(dir, name, false);
    }
    let mut path = std::path::PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    path.push(OsStr::from_bytes(name.as_bytes()));
    std::fs::remove_dir_all(path)
}
