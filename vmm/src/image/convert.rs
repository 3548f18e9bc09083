//! Import one layer: read its blob once, verifying the blob digest and size
//! and the diff-id; on a cache miss extract it into a staging tree and build
//! its ext4 image, then rename that into the cache.

use std::fs::{self, DirBuilder, File};
use std::io::BufReader;
use std::os::unix::fs::DirBuilderExt;

use tar::Archive;

use super::cache::{Dirs, TempPath};
use super::digest::{detect, Compression, Decoder, HashReader};
use super::extract::{self, Ctx, Extracted};
use super::manifest::PlannedLayer;
use super::source::Source;
use super::{ext4, ImageError, LayerRef, Limits};

/// Capabilities conversion needs: (bit, name).
const NEEDED_CAPS: [(u32, &str); 5] = [
    (0, "CAP_CHOWN"),
    (1, "CAP_DAC_OVERRIDE"),
    (3, "CAP_FOWNER"),
    (21, "CAP_SYS_ADMIN"),
    (27, "CAP_MKNOD"),
];

/// The needed capabilities missing from a `CapEff:` mask (hex).
pub fn missing_caps(cap_eff_hex: &str) -> Vec<&'static str> {
    let mask = u64::from_str_radix(cap_eff_hex.trim(), 16).unwrap_or(0);
    NEEDED_CAPS
        .iter()
        .filter(|(bit, _)| mask & (1u64 << bit) == 0)
        .map(|(_, name)| *name)
        .collect()
}

/// Fail unless this process may create device nodes, chown, and set
/// `trusted.*` extended attributes.
pub fn check_privileges() -> Result<(), ImageError> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status.lines().find_map(|l| l.strip_prefix("CapEff:"));
    let missing = match cap_eff {
        Some(hex) => missing_caps(hex),
        // SAFETY: geteuid has no preconditions and cannot fail.
        None if unsafe { libc::geteuid() } == 0 => Vec::new(),
        None => vec!["root"],
    };
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ImageError::NotRoot {
            missing: missing.join(", "),
        })
    }
}

/// What the caller needs to convert a layer.
pub struct Job<'a> {
    /// The cache.
    pub dirs: &'a Dirs,
    /// Bounds.
    pub limits: &'a Limits,
    /// The image's files.
    pub source: &'a Source,
    /// The input path, for errors.
    pub image: &'a str,
    /// Position from the bottom.
    pub index: usize,
    /// The layer.
    pub layer: &'a PlannedLayer,
}

/// Import one layer; `Ok((layer, converted))`, `converted` false on a cache hit.
pub fn import_layer(job: &Job<'_>) -> Result<(LayerRef, bool), ImageError> {
    let layer = job.layer;
    let ctx = Ctx {
        image: job.image,
        layer: format!("{} ({})", job.index, layer.diff_id),
    };
    let blob = job.source.open(&layer.path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ImageError::MissingBlob {
            image: job.image.to_owned(),
            blob: layer.path.clone(),
        },
        _ => ctx.layer(format!("cannot open blob {}: {e}", layer.path)),
    })?;
    if let Some(expected) = layer.size.filter(|&s| s != blob.size) {
        return Err(ImageError::BlobSize {
            image: job.image.to_owned(),
            blob: layer.path.clone(),
            expected,
            actual: blob.size,
        });
    }
    if blob.size > job.limits.max_blob_bytes {
        return Err(ImageError::Limit {
            image: job.image.to_owned(),
            what: format!("layer {}: blob size", ctx.layer),
            limit: job.limits.max_blob_bytes,
        });
    }
    let blob_size = blob.size;

    let target = job.dirs.layer(&layer.diff_id);
    let _lock = job.dirs.lock(&layer.diff_id, true)?;
    job.dirs.remove_leftovers(&layer.diff_id)?;
    let hit = target.is_file();
    if !hit {
        check_privileges()?;
        ext4::find_tool("mkfs.ext4")?;
        ext4::find_tool("debugfs")?;
    }

    // blob -> (hash: blob digest) -> buffer -> decompress -> (hash: diff-id) -> tar
    let mut compressed = BufReader::with_capacity(
        64 << 10,
        HashReader::new(blob.reader, job.limits.max_blob_bytes),
    );
    let compression =
        detect(&mut compressed).map_err(|e| ctx.layer(format!("cannot read: {e}")))?;
    if let Compression::Unsupported(kind) = compression {
        return Err(ImageError::Unsupported {
            image: job.image.to_owned(),
            what: format!("{kind}-compressed layer {}", ctx.layer),
        });
    }
    let decoder = Decoder::new(compressed, compression)
        .ok_or_else(|| ctx.layer("unsupported compression"))?;
    let mut tar = HashReader::new(decoder, job.limits.max_layer_bytes);

    let mut staged = None;
    if !hit {
        let staging = TempPath::new(job.dirs.tmp_name(&layer.diff_id, ""));
        DirBuilder::new()
            .mode(0o700)
            .create(staging.path())
            .map_err(|e| ImageError::io("create staging directory", staging.path(), e))?;
        let root = File::open(staging.path())
            .map_err(|e| ImageError::io("open staging directory", staging.path(), e))?;
        let mut archive = Archive::new(tar);
        let result = extract::extract(&mut archive, &root, &ctx, job.limits);
        tar = archive.into_inner();
        check_limits(&mut tar, job, &ctx)?;
        staged = Some((staging, result?));
    }

    finish(tar, job, &ctx, blob_size)?;

    if let Some((staging, Extracted { stats, root })) = staged {
        let image = TempPath::new(job.dirs.tmp_name(&layer.diff_id, ".ext4"));
        ext4::build(
            staging.path(),
            image.path(),
            &stats,
            root.as_ref(),
            &ctx.layer,
        )?;
        fs::rename(image.path(), &target)
            .map_err(|e| ImageError::io("rename into cache", &target, e))?;
        image.keep();
        drop(staging);
        log::info!(
            "image {}: layer {} converted ({} entries, {} bytes)",
            job.image,
            ctx.layer,
            stats.entries,
            stats.bytes
        );
    }
    let size = fs::metadata(&target)
        .map_err(|e| ImageError::io("stat", &target, e))?
        .len();
    Ok((
        LayerRef {
            diff_id: layer.diff_id.clone(),
            path: target,
            size,
        },
        !hit,
    ))
}

type TarReader<'a> = HashReader<Decoder<BufReader<HashReader<super::source::BlobReader<'a>>>>>;

/// A limit error if either hashing reader stopped at its bound.
fn check_limits(tar: &mut TarReader<'_>, job: &Job<'_>, ctx: &Ctx<'_>) -> Result<(), ImageError> {
    let limit = |what: &str, limit| ImageError::Limit {
        image: job.image.to_owned(),
        what: format!("layer {}: {what}", ctx.layer),
        limit,
    };
    if tar.exceeded() {
        return Err(limit("uncompressed size", job.limits.max_layer_bytes));
    }
    if tar.inner_mut().get_mut().get_ref().exceeded() {
        return Err(limit("blob size", job.limits.max_blob_bytes));
    }
    Ok(())
}

/// Read both streams to their ends, then check the diff-id, and the blob's
/// size and digest.
fn finish(
    mut tar: TarReader<'_>,
    job: &Job<'_>,
    ctx: &Ctx<'_>,
    blob_size: u64,
) -> Result<(), ImageError> {
    let layer = job.layer;
    let corrupt = |e: std::io::Error| ctx.layer(format!("corrupt or truncated layer data: {e}"));
    let drained = std::io::copy(&mut tar, &mut std::io::sink());
    check_limits(&mut tar, job, ctx)?;
    drained.map_err(corrupt)?;
    let (diff_id, _, decoder) = tar.finish().map_err(corrupt)?;
    // Bytes buffered but not consumed were hashed already, below the buffer.
    let (blob_digest, blob_len, _) = decoder
        .into_inner()
        .into_inner()
        .finish()
        .map_err(corrupt)?;
    if blob_len != blob_size {
        return Err(ImageError::BlobSize {
            image: job.image.to_owned(),
            blob: layer.path.clone(),
            expected: blob_size,
            actual: blob_len,
        });
    }
    if let Some(expected) = layer.digest.as_ref().filter(|d| **d != blob_digest) {
        return Err(ImageError::DigestMismatch {
            image: job.image.to_owned(),
            what: format!("blob {}", layer.path),
            expected: expected.to_string(),
            actual: blob_digest.to_string(),
        });
    }
    if diff_id != layer.diff_id {
        return Err(ImageError::DigestMismatch {
            image: job.image.to_owned(),
            what: format!(
                "layer {} (uncompressed tar; truncated or altered?)",
                job.index
            ),
            expected: layer.diff_id.to_string(),
            actual: diff_id.to_string(),
        });
    }
    Ok(())
}
