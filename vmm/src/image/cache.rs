//! The on-disk cache: paths, per-layer locks and temporary files.
//!
//! ```text
//! <cache>/layers/<diff-id hex>.ext4   one image per layer
//! <cache>/layers/.tmp/                staging trees and images being built (0700)
//! <cache>/layers/.locks/<hex>.lock    flock held while a layer is converted
//! <cache>/images/<config hex>.json    the ImageRef of each imported image
//! ```

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::digest::Digest;
use super::{fsops, ImageError};

/// The cache's directories.
#[derive(Debug, Clone)]
pub struct Dirs {
    /// `<cache>/layers`.
    pub layers: PathBuf,
    /// `<cache>/layers/.tmp`.
    pub tmp: PathBuf,
    /// `<cache>/layers/.locks`.
    pub locks: PathBuf,
    /// `<cache>/images`.
    pub images: PathBuf,
}

impl Dirs {
    /// Create (if needed) the directories under `root`.
    pub fn create(root: &Path) -> Result<Dirs, ImageError> {
        let layers = root.join("layers");
        let dirs = Dirs {
            tmp: layers.join(".tmp"),
            locks: layers.join(".locks"),
            images: root.join("images"),
            layers,
        };
        for (dir, mode) in [
            (&dirs.layers, 0o755),
            (&dirs.tmp, 0o700),
            (&dirs.locks, 0o700),
            (&dirs.images, 0o755),
        ] {
            DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(dir)
                .map_err(|e| ImageError::io("create cache directory", dir, e))?;
        }
        // Staging trees hold the image's setuid files and device nodes: only
        // root may reach them, whatever the umask or an older cache said.
        fs::set_permissions(
            &dirs.tmp,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .map_err(|e| ImageError::io("chmod", &dirs.tmp, e))?;
        Ok(dirs)
    }

    /// Where the image of layer `diff_id` lives.
    pub fn layer(&self, diff_id: &Digest) -> PathBuf {
        self.layers.join(format!("{}.ext4", diff_id.hex()))
    }

    /// Where the record of image `id` lives.
    pub fn record(&self, id: &Digest) -> PathBuf {
        self.images.join(format!("{}.json", id.hex()))
    }

    /// Lock layer `diff_id` (waiting for another converter), or `None` when
    /// `wait` is false and someone else holds it.
    pub fn lock(&self, diff_id: &Digest, wait: bool) -> Result<Option<LayerLock>, ImageError> {
        let path = self.locks.join(format!("{}.lock", diff_id.hex()));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| ImageError::io("open lock", &path, e))?;
        match fsops::lock(&file, wait) {
            Ok(()) => Ok(Some(LayerLock(file))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(ImageError::io("lock", &path, e)),
        }
    }

    /// A fresh name in `.tmp` for layer `diff_id`: `<hex>.<pid>.<n><suffix>`.
    pub fn tmp_name(&self, diff_id: &Digest, suffix: &str) -> PathBuf {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        self.tmp.join(format!(
            "{}.{}.{n}{suffix}",
            diff_id.hex(),
            std::process::id()
        ))
    }

    /// Remove what a crashed conversion of `diff_id` left in `.tmp`. Only
    /// call while holding that layer's lock.
    pub fn remove_leftovers(&self, diff_id: &Digest) -> Result<(), ImageError> {
        let prefix = format!("{}.", diff_id.hex());
        let entries = fs::read_dir(&self.tmp).map_err(|e| ImageError::io("list", &self.tmp, e))?;
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                remove_path(&entry.path());
            }
        }
        Ok(())
    }
}

/// An exclusive lock on one layer; released on drop.
pub struct LayerLock(#[allow(dead_code)] File);

/// A temporary file or directory removed on drop unless kept.
pub struct TempPath {
    path: PathBuf,
    keep: bool,
}

impl TempPath {
    /// Track `path`.
    pub fn new(path: PathBuf) -> Self {
        TempPath { path, keep: false }
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Do not remove it (it was renamed into place).
    pub fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if !self.keep {
            remove_path(&self.path);
        }
    }
}

/// Remove a file or a whole directory tree (not following links).
pub fn remove_path(path: &Path) {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => Ok(()),
    };
    if let Err(e) = result {
        log::warn!("cannot remove {}: {e}", path.display());
    }
}

/// Write `bytes` to `path` atomically (temporary file, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp = TempPath::new(path.with_extension(format!("tmp.{}.{n}", std::process::id())));
    fs::write(tmp.path(), bytes).map_err(|e| ImageError::io("write", tmp.path(), e))?;
    fs::rename(tmp.path(), path).map_err(|e| ImageError::io("rename", path, e))?;
    tmp.keep();
    Ok(())
}
