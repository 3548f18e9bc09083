//! Container images to ext4 layer images, for containers inside VMs.
//!
//! [`Store::import`] reads an OCI image layout directory or a `docker save`
//! archive, verifies every blob against its digest and every layer against
//! its diff-id, and converts each layer into one ext4 image cached under
//! `<cache>/layers/<diff-id>.ext4`. A layer image holds exactly that layer's
//! changes with overlayfs conventions (whiteouts are 0:0 character devices,
//! opaque directories carry `trusted.overlay.opaque=y`), so the guest stacks
//! the images as overlayfs lower directories, top layer first. See
//! `docs/images.md`.
//!
//! Input is untrusted: paths that would leave the layer, links planted to
//! redirect later entries, truncated data, digest mismatches and absurd
//! sizes are refused with an error naming the image, layer and entry, and
//! nothing is written outside the cache.

mod cache;
mod convert;
mod digest;
mod error;
mod ext4;
mod extract;
mod fsops;
mod manifest;
mod source;
mod tarstream;
#[cfg(test)]
mod tests;

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Deserializer, Serialize};

pub use digest::Digest;
pub use error::ImageError;

use cache::Dirs;
use source::Source;

/// Bounds on what one import may read and create.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most layers in one image.
    pub max_layers: usize,
    /// Most tar entries in one layer.
    pub max_entries: u64,
    /// Most uncompressed bytes in one layer (the tar stream).
    pub max_layer_bytes: u64,
    /// Largest layer blob as stored (compressed).
    pub max_blob_bytes: u64,
    /// Largest JSON document (index, manifest, config).
    pub max_json_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_layers: 128,
            max_entries: 1_000_000,
            max_layer_bytes: 32 << 30,
            max_blob_bytes: 32 << 30,
            max_json_bytes: 4 << 20,
        }
    }
}

/// The parts of an image's config the runner needs to default the command.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    /// `Entrypoint`.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// `Env` (`NAME=value`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub env: Vec<String>,
    /// `WorkingDir`.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// `User` (`uid[:gid]` or names, as the image wrote it).
    #[serde(default)]
    pub user: Option<String>,
}

fn null_as_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// One converted layer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LayerRef {
    /// Digest of the uncompressed layer tar: the cache key.
    pub diff_id: Digest,
    /// The ext4 image.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
}

/// An imported image.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// Its reference name (tag) if the image gives one, else the input's
    /// file name.
    pub name: String,
    /// The config blob's digest (docker's image ID).
    pub id: Digest,
    /// Layers bottom to top (overlayfs wants them reversed).
    pub layers: Vec<LayerRef>,
    /// The runtime config.
    pub config: ImageConfig,
}

/// The layer image cache.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    dirs: Dirs,
    limits: Limits,
    conversions: AtomicU64,
}

impl Store {
    /// A store in the cache directory `root` (created if needed).
    pub fn new(root: impl Into<PathBuf>) -> Result<Store, ImageError> {
        let root = root.into();
        let dirs = Dirs::create(&root)?;
        Ok(Store {
            root,
            dirs,
            limits: Limits::default(),
            conversions: AtomicU64::new(0),
        })
    }

    /// `${VMM_CACHE:-${XDG_CACHE_HOME:-~/.cache}/vmm}`, if any is set.
    pub fn default_dir() -> Option<PathBuf> {
        let var = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        var("VMM_CACHE")
            .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("vmm")))
            .or_else(|| var("HOME").map(|h| h.join(".cache").join("vmm")))
    }

    /// Replace the bounds.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Layers this store converted (cache misses) since it was created.
    pub fn conversions(&self) -> u64 {
        self.conversions.load(Ordering::Relaxed)
    }

    /// Where the image of layer `diff_id` is (or would be) cached.
    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.dirs.layer(diff_id)
    }

    /// Import the image at `path`: an OCI image layout directory, or a
    /// `docker save` archive (plain or gzip-compressed) or its unpacked
    /// directory. Layers already cached are verified, not converted again.
    pub fn import(&self, path: &Path) -> Result<ImageRef, ImageError> {
        let image = path.display().to_string();
        let source = self.open_source(path, &image)?;
        let plan = manifest::plan(&source, &image, &self.limits)?;
        let mut layers = Vec::with_capacity(plan.layers.len());
        for (index, layer) in plan.layers.iter().enumerate() {
            let job = convert::Job {
                dirs: &self.dirs,
                limits: &self.limits,
                source: &source,
                image: &image,
                index,
                layer,
            };
            let (layer, converted) = convert::import_layer(&job)?;
            if converted {
                self.conversions.fetch_add(1, Ordering::Relaxed);
            }
            layers.push(layer);
        }
        let name = plan.name.unwrap_or_else(|| {
            path.file_name()
                .map_or_else(|| image.clone(), |n| n.to_string_lossy().into_owned())
        });
        let image_ref = ImageRef {
            name,
            id: plan.id,
            layers,
            config: plan.config,
        };
        let record = serde_json::to_vec_pretty(&image_ref).map_err(|e| {
            ImageError::io(
                "encode",
                self.dirs.record(&image_ref.id),
                io::Error::other(e),
            )
        })?;
        cache::write_atomic(&self.dirs.record(&image_ref.id), &record)?;
        Ok(image_ref)
    }

    fn open_source(&self, path: &Path, image: &str) -> Result<Source, ImageError> {
        let open_err = |source| ImageError::Open {
            image: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(open_err)?;
        if file.metadata().map_err(open_err)?.is_dir() {
            return Ok(Source::Dir(file));
        }
        let unknown = |detail: String| ImageError::UnknownFormat {
            image: image.to_owned(),
            detail,
        };
        let mut reader = BufReader::new(file);
        let archive = match digest::detect(&mut reader).map_err(open_err)? {
            digest::Compression::None => reader.into_inner(),
            digest::Compression::Gzip => self.gunzip(reader, image)?,
            digest::Compression::Unsupported(kind) => {
                return Err(unknown(format!(
                    "{kind}-compressed archives are not supported"
                )))
            }
        };
        Source::tar(archive).map_err(|e| unknown(format!("not a readable tar archive: {e}")))
    }

    /// Decompress a gzipped archive into an unnamed temporary file in the
    /// cache (gone when closed, even after a crash).
    fn gunzip(&self, reader: BufReader<File>, image: &str) -> Result<File, ImageError> {
        let tmp = &self.dirs.tmp;
        let mut out = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(0o600)
            .open(tmp)
            .map_err(|e| ImageError::io("create temporary file in", tmp, e))?;
        let decoder = digest::Decoder::new(reader, digest::Compression::Gzip).ok_or_else(|| {
            ImageError::io("decompress", image, io::ErrorKind::Unsupported.into())
        })?;
        let mut limited = digest::HashReader::new(decoder, self.limits.max_blob_bytes);
        let copied = io::copy(&mut limited, &mut out);
        if limited.exceeded() {
            return Err(ImageError::Limit {
                image: image.to_owned(),
                what: "decompressed archive".into(),
                limit: self.limits.max_blob_bytes,
            });
        }
        copied.map_err(|e| ImageError::UnknownFormat {
            image: image.to_owned(),
            detail: format!("corrupt or truncated gzip: {e}"),
        })?;
        Ok(out)
    }

    /// The cached layer images.
    pub fn layers(&self) -> Result<Vec<LayerRef>, ImageError> {
        let dir = &self.dirs.layers;
        let mut out = Vec::new();
        for entry in fs::read_dir(dir)
            .map_err(|e| ImageError::io("list", dir, e))?
            .flatten()
        {
            let name = entry.file_name();
            let hex = name.to_str().and_then(|n| n.strip_suffix(".ext4"));
            let Some(diff_id) = hex.and_then(Digest::from_hex) else {
                continue;
            };
            let Ok(meta) = entry.metadata() else { continue };
            out.push(LayerRef {
                diff_id,
                path: entry.path(),
                size: meta.len(),
            });
        }
        out.sort_by(|a, b| a.diff_id.cmp(&b.diff_id));
        Ok(out)
    }

    /// The images imported into this cache (their records; a record's
    /// layers may have been evicted since).
    pub fn images(&self) -> Result<Vec<ImageRef>, ImageError> {
        let dir = &self.dirs.images;
        let mut out = Vec::new();
        for entry in fs::read_dir(dir)
            .map_err(|e| ImageError::io("list", dir, e))?
            .flatten()
        {
            if entry.path().extension().is_some_and(|e| e == "json") {
                let record = fs::read(entry.path()).ok();
                match record.and_then(|r| serde_json::from_slice::<ImageRef>(&r).ok()) {
                    Some(image) => out.push(image),
                    None => log::warn!(
                        "ignoring unreadable image record {}",
                        entry.path().display()
                    ),
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Remove the cached image of layer `diff_id` (waiting for a conversion
    /// of it to finish). A VM that has it open keeps its copy. `Ok(false)`
    /// if it was not cached.
    pub fn evict_layer(&self, diff_id: &Digest) -> Result<bool, ImageError> {
        let _lock = self.dirs.lock(diff_id, true)?;
        let path = self.dirs.layer(diff_id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(ImageError::io("remove", path, e)),
        }
    }

    /// Forget the image `id` (its layers stay until [`Store::prune`]).
    pub fn remove_image(&self, id: &Digest) -> Result<bool, ImageError> {
        let path = self.dirs.record(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(ImageError::io("remove", path, e)),
        }
    }

    /// Evict every cached layer no recorded image uses; returns them.
    /// Racing an import of an image that uses such a layer may evict it
    /// before the import records it: run it when no import is going on.
    pub fn prune(&self) -> Result<Vec<Digest>, ImageError> {
        let used: std::collections::HashSet<Digest> = self
            .images()?
            .into_iter()
            .flat_map(|i| i.layers.into_iter().map(|l| l.diff_id))
            .collect();
        let mut evicted = Vec::new();
        for layer in self.layers()? {
            if !used.contains(&layer.diff_id) && self.evict_layer(&layer.diff_id)? {
                evicted.push(layer.diff_id);
            }
        }
        Ok(evicted)
    }

    /// Remove leftovers of crashed conversions from the staging area
    /// (those of layers nobody is converting now).
    pub fn clean_tmp(&self) -> Result<(), ImageError> {
        let tmp = &self.dirs.tmp;
        let mut seen = std::collections::HashSet::new();
        for entry in fs::read_dir(tmp)
            .map_err(|e| ImageError::io("list", tmp, e))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let hex = name.split('.').next().unwrap_or_default();
            if let Some(d) = Digest::from_hex(hex) {
                seen.insert(d);
            }
        }
        for diff_id in seen {
            if let Some(_lock) = self.dirs.lock(&diff_id, false)? {
                self.dirs.remove_leftovers(&diff_id)?;
            }
        }
        Ok(())
    }
}
