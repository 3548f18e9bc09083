//! [`ImageError`]: everything that can go wrong while importing an image.

use std::path::PathBuf;

/// Errors of [`super`]. Each names the image (its input path), and where it
/// applies the layer (its diff-id) and the offending entry, blob or digest.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The input path does not exist or cannot be opened.
    #[error("image {image}: cannot open: {source}")]
    Open {
        /// The input path.
        image: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The input is neither an OCI image layout nor a `docker save` archive.
    #[error("image {image}: not an OCI image layout or docker-save archive: {detail}")]
    UnknownFormat {
        /// The input path.
        image: String,
        /// What was found instead.
        detail: String,
    },
    /// A manifest, index or config is malformed or inconsistent.
    #[error("image {image}: bad {what}: {detail}")]
    Manifest {
        /// The input path.
        image: String,
        /// Which document (`index.json`, `manifest sha256:...`, ...).
        what: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The image holds no manifest for linux/amd64.
    #[error("image {image}: no linux/amd64 image: {detail}")]
    Platform {
        /// The input path.
        image: String,
        /// The platforms that were found.
        detail: String,
    },
    /// A blob the manifest refers to is not in the image.
    #[error("image {image}: missing blob {blob}")]
    MissingBlob {
        /// The input path.
        image: String,
        /// The blob's path inside the image.
        blob: String,
    },
    /// A blob's size differs from the size its descriptor gives.
    #[error("image {image}: blob {blob} is {actual} bytes, its descriptor says {expected}")]
    BlobSize {
        /// The input path.
        image: String,
        /// The blob's path inside the image.
        blob: String,
        /// Size from the descriptor.
        expected: u64,
        /// Size found.
        actual: u64,
    },
    /// Content does not hash to the digest that names it.
    #[error("image {image}: digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The input path.
        image: String,
        /// What was hashed (blob path, `layer N (uncompressed)`, ...).
        what: String,
        /// The digest the image names.
        expected: String,
        /// The digest of the content.
        actual: String,
    },
    /// A layer's data is corrupt or ends early (tar or gzip).
    #[error("image {image}: layer {layer}: {detail}")]
    Layer {
        /// The input path.
        image: String,
        /// The layer (`N (diff-id)`).
        layer: String,
        /// What is wrong.
        detail: String,
    },
    /// A layer entry is refused (escaping path, bad link, bad type, ...).
    #[error("image {image}: layer {layer}: entry {entry:?} refused: {reason}")]
    Entry {
        /// The input path.
        image: String,
        /// The layer (`N (diff-id)`).
        layer: String,
        /// The entry's path as written in the tar.
        entry: String,
        /// Why it is refused.
        reason: String,
    },
    /// A bound on sizes or counts was exceeded.
    #[error("image {image}: {what} exceeds the limit of {limit}")]
    Limit {
        /// The input path.
        image: String,
        /// What was too large (`layer N: entries`, ...).
        what: String,
        /// The limit.
        limit: u64,
    },
    /// Something the image uses that this converter does not support.
    #[error("image {image}: unsupported: {what}")]
    Unsupported {
        /// The input path.
        image: String,
        /// What is not supported.
        what: String,
    },
    /// Conversion needs privileges this process does not have.
    #[error(
        "image conversion needs root (CAP_MKNOD, CAP_CHOWN, CAP_SYS_ADMIN for overlay \
         whiteouts); run as root (missing: {missing})"
    )]
    NotRoot {
        /// The capabilities that are missing.
        missing: String,
    },
    /// An external tool (`mkfs.ext4`, `debugfs`) is missing or failed.
    #[error("layer {layer}: {tool} failed: {detail}")]
    Tool {
        /// The layer being converted.
        layer: String,
        /// The tool.
        tool: &'static str,
        /// Its exit status and output.
        detail: String,
    },
    /// A file-system operation on the cache failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A digest given to the store is not `sha256:<64 hex digits>`.
    #[error("not a sha256 digest: {0:?}")]
    BadDigest(String),
}

impl ImageError {
    /// An [`ImageError::Io`] for `path`.
    pub(super) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ImageError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
