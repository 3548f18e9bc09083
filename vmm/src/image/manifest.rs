//! From an image's JSON documents to a [`Plan`]: which blobs are its layers
//! (bottom to top), with which digests, and its runtime config.
//!
//! OCI layouts: `index.json` -> (nested indexes) -> the linux/amd64 manifest
//! -> config and layer descriptors, each blob checked against its digest and
//! size. `docker save`: `manifest.json` -> `Config` and `Layers` paths; blobs
//! named by digest (`blobs/sha256/<hex>`, `<hex>.json`) are checked against
//! it, and every layer against the config's `rootfs.diff_ids`.

use std::collections::HashMap;
use std::io::Read;

use serde::Deserialize;

use super::digest::{Digest, HashReader};
use super::source::{normalize, Source};
use super::{ImageConfig, ImageError, Limits};

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
/// Most levels of nested indexes followed.
const MAX_INDEX_DEPTH: usize = 4;

/// What to import.
#[derive(Debug)]
pub struct Plan {
    /// A reference name, when the image gives one.
    pub name: Option<String>,
    /// The config blob's digest (the image ID).
    pub id: Digest,
    /// The runtime config.
    pub config: ImageConfig,
    /// The layers, bottom to top.
    pub layers: Vec<PlannedLayer>,
}

/// One layer to import.
#[derive(Debug)]
pub struct PlannedLayer {
    /// Path of its blob inside the image.
    pub path: String,
    /// Digest of the blob as stored, when the image gives one.
    pub digest: Option<Digest>,
    /// Size of the blob as stored, when the image gives one.
    pub size: Option<u64>,
    /// Digest of the uncompressed tar (from the config).
    pub diff_id: Digest,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

#[derive(Deserialize, Clone, Debug)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    config: Option<ImageConfig>,
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// Reads the documents of one image.
struct Reader<'a> {
    source: &'a Source,
    image: &'a str,
    limits: &'a Limits,
}

impl Reader<'_> {
    fn bad(&self, what: &str, detail: impl Into<String>) -> ImageError {
        ImageError::Manifest {
            image: self.image.to_owned(),
            what: what.to_owned(),
            detail: detail.into(),
        }
    }

    fn digest(&self, what: &str, s: &str) -> Result<Digest, ImageError> {
        Digest::parse(s).map_err(|e| self.bad(what, e))
    }

    /// Read a JSON document at `path`, checking `digest` and `size` if given.
    fn read(
        &self,
        path: &str,
        digest: Option<&Digest>,
        size: Option<u64>,
    ) -> Result<Vec<u8>, ImageError> {
        let blob = self.source.open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ImageError::MissingBlob {
                image: self.image.to_owned(),
                blob: path.to_owned(),
            },
            _ => self.bad(path, e.to_string()),
        })?;
        if let Some(expected) = size.filter(|&s| s != blob.size) {
            return Err(ImageError::BlobSize {
                image: self.image.to_owned(),
                blob: path.to_owned(),
                expected,
                actual: blob.size,
            });
        }
        if blob.size > self.limits.max_json_bytes {
            return Err(ImageError::Limit {
                image: self.image.to_owned(),
                what: format!("document {path}"),
                limit: self.limits.max_json_bytes,
            });
        }
        let mut reader = HashReader::new(blob.reader, self.limits.max_json_bytes);
        let mut bytes = Vec::new();
        reader
            .read_to_end(&mut bytes)
            .map_err(|e| self.bad(path, e.to_string()))?;
        let (actual, len, _) = reader.finish().map_err(|e| self.bad(path, e.to_string()))?;
        if len != blob.size {
            return Err(ImageError::BlobSize {
                image: self.image.to_owned(),
                blob: path.to_owned(),
                expected: blob.size,
                actual: len,
            });
        }
        if let Some(expected) = digest.filter(|d| **d != actual) {
            return Err(ImageError::DigestMismatch {
                image: self.image.to_owned(),
                what: path.to_owned(),
                expected: expected.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(bytes)
    }

    fn parse<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        bytes: &[u8],
    ) -> Result<T, ImageError> {
        serde_json::from_slice(bytes).map_err(|e| self.bad(path, e.to_string()))
    }

    fn blob_path(digest: &Digest) -> String {
        format!("blobs/sha256/{}", digest.hex())
    }

    /// Read the blob a descriptor names.
    fn read_descriptor(&self, what: &str, d: &Descriptor) -> Result<(Digest, Vec<u8>), ImageError> {
        let digest = self.digest(what, &d.digest)?;
        let bytes = self.read(&Self::blob_path(&digest), Some(&digest), Some(d.size))?;
        Ok((digest, bytes))
    }

    /// The linux/amd64 manifest descriptor reachable from `index`.
    fn choose(&self, what: &str, index: Index, depth: usize) -> Result<Descriptor, ImageError> {
        let mut candidates = Vec::new();
        for d in index.manifests {
            if INDEX_TYPES.contains(&d.media_type.as_str()) {
                if depth >= MAX_INDEX_DEPTH {
                    return Err(self.bad(what, "indexes nested too deeply"));
                }
                let (digest, bytes) = self.read_descriptor(what, &d)?;
                let name = format!("index {digest}");
                let mut inner = self.choose(&name, self.parse(&name, &bytes)?, depth + 1)?;
                for (k, v) in &d.annotations {
                    inner
                        .annotations
                        .entry(k.clone())
                        .or_insert_with(|| v.clone());
                }
                candidates.push(inner);
            } else if MANIFEST_TYPES.contains(&d.media_type.as_str()) || d.media_type.is_empty() {
                candidates.push(d);
            }
        }
        let is_amd64 = |d: &Descriptor| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        };
        if let Some(pos) = candidates.iter().position(is_amd64) {
            return Ok(candidates.swap_remove(pos));
        }
        if candidates.len() == 1 && candidates.iter().all(|d| d.platform.is_none()) {
            return Ok(candidates.swap_remove(0));
        }
        let found: Vec<String> = candidates
            .iter()
            .map(|d| match &d.platform {
                Some(p) => format!("{}/{}", p.os, p.architecture),
                None => "unspecified".into(),
            })
            .collect();
        Err(ImageError::Platform {
            image: self.image.to_owned(),
            detail: if found.is_empty() {
                format!("{what} lists no image manifest")
            } else {
                format!("{what} has {}", found.join(", "))
            },
        })
    }

    fn oci(&self) -> Result<Plan, ImageError> {
        if self.source.exists("oci-layout") {
            let layout: serde_json::Value =
                self.parse("oci-layout", &self.read("oci-layout", None, None)?)?;
            let version = layout.get("imageLayoutVersion").and_then(|v| v.as_str());
            if version.is_some_and(|v| !v.starts_with("1.")) {
                return Err(self.bad(
                    "oci-layout",
                    format!("unsupported imageLayoutVersion {version:?}"),
                ));
            }
        }
        let index = self.parse("index.json", &self.read("index.json", None, None)?)?;
        let chosen = self.choose("index.json", index, 0)?;
        let what = format!("manifest {}", chosen.digest);
        let (_, bytes) = self.read_descriptor(&what, &chosen)?;
        let manifest: Manifest = self.parse(&what, &bytes)?;
        let (id, config_bytes) = self.read_descriptor("config", &manifest.config)?;
        let config: ConfigFile = self.parse(&format!("config {id}"), &config_bytes)?;
        let mut layers = Vec::new();
        for d in &manifest.layers {
            if d.media_type.contains("zstd") {
                return Err(ImageError::Unsupported {
                    image: self.image.to_owned(),
                    what: format!("zstd-compressed layer {}", d.digest),
                });
            }
            if !d.media_type.contains("tar") {
                return Err(ImageError::Unsupported {
                    image: self.image.to_owned(),
                    what: format!("layer {} of media type {:?}", d.digest, d.media_type),
                });
            }
            let digest = self.digest(&what, &d.digest)?;
            layers.push((Self::blob_path(&digest), Some(digest), Some(d.size)));
        }
        let name = chosen
            .annotations
            .get("io.containerd.image.name")
            .or_else(|| chosen.annotations.get("org.opencontainers.image.ref.name"))
            .cloned();
        self.finish(name, id, config, layers)
    }

    fn docker(&self) -> Result<Plan, ImageError> {
        let mut entries: Vec<DockerEntry> =
            self.parse("manifest.json", &self.read("manifest.json", None, None)?)?;
        if entries.len() != 1 {
            return Err(self.bad(
                "manifest.json",
                format!(
                    "holds {} images; import an archive of exactly one",
                    entries.len()
                ),
            ));
        }
        let entry = entries.swap_remove(0);
        let path = |p: &str| {
            normalize(p)
                .ok_or_else(|| self.bad("manifest.json", format!("path {p:?} leaves the archive")))
        };
        let config_path = path(&entry.config)?;
        let config_digest = named_digest(&config_path);
        let config_bytes = self.read(&config_path, config_digest.as_ref(), None)?;
        let id = config_digest.unwrap_or_else(|| Digest::of(&config_bytes));
        let config: ConfigFile = self.parse(&config_path, &config_bytes)?;
        let mut layers = Vec::new();
        for layer in &entry.layers {
            let p = path(layer)?;
            let digest = named_digest(&p).filter(|_| p.starts_with("blobs/"));
            layers.push((p, digest, None));
        }
        let name = entry.repo_tags.and_then(|t| t.into_iter().next());
        self.finish(name, id, config, layers)
    }

    fn finish(
        &self,
        name: Option<String>,
        id: Digest,
        config: ConfigFile,
        layers: Vec<(String, Option<Digest>, Option<u64>)>,
    ) -> Result<Plan, ImageError> {
        let what = format!("config {id}");
        let os = config.os.as_deref().unwrap_or("linux");
        let arch = config.architecture.as_deref().unwrap_or("amd64");
        if os != "linux" || arch != "amd64" {
            return Err(ImageError::Platform {
                image: self.image.to_owned(),
                detail: format!("the image is for {os}/{arch}"),
            });
        }
        if layers.len() != config.rootfs.diff_ids.len() {
            return Err(self.bad(
                &what,
                format!(
                    "{} layers but {} diff_ids",
                    layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            ));
        }
        if layers.len() > self.limits.max_layers {
            return Err(ImageError::Limit {
                image: self.image.to_owned(),
                what: "number of layers".into(),
                limit: self.limits.max_layers as u64,
            });
        }
        let mut planned = Vec::new();
        for ((path, digest, size), diff_id) in layers.into_iter().zip(&config.rootfs.diff_ids) {
            let diff_id = self.digest(&what, diff_id)?;
            planned.push(PlannedLayer {
                path,
                digest,
                size,
                diff_id,
            });
        }
        Ok(Plan {
            name,
            id,
            config: config.config.unwrap_or_default(),
            layers: planned,
        })
    }
}

/// The digest a blob's name gives: `blobs/sha256/<hex>` or `<hex>.json`.
fn named_digest(path: &str) -> Option<Digest> {
    if let Some(hex) = path.strip_prefix("blobs/sha256/") {
        return Digest::from_hex(hex);
    }
    Digest::from_hex(path.strip_suffix(".json")?)
}

/// Work out what to import from `source`. `image` names it in errors.
pub fn plan(source: &Source, image: &str, limits: &Limits) -> Result<Plan, ImageError> {
    let reader = Reader {
        source,
        image,
        limits,
    };
    if source.exists("manifest.json") {
        reader.docker()
    } else if source.exists("index.json") {
        reader.oci()
    } else {
        Err(ImageError::UnknownFormat {
            image: image.to_owned(),
            detail: "neither manifest.json nor index.json found".into(),
        })
    }
}
