//! Build a layer's ext4 image from its staging tree with e2fsprogs:
//! `mkfs.ext4 -d` copies the tree (owners, modes, times, xattrs, device
//! nodes, hard links), then `debugfs` removes the `lost+found` that mkfs
//! always creates and stamps the root directory, which mkfs does not copy.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use super::extract::{RootMeta, Stats};
use super::ImageError;

const BLOCK: u64 = 4096;
/// Smallest image made (mkfs needs room for its own metadata).
const MIN_BLOCKS: u64 = 2048;
/// Attempts, doubling the size each time, if the estimate was too small.
const ATTEMPTS: u32 = 3;

/// Find an e2fsprogs tool in `PATH` or the usual sbin directories.
pub fn find_tool(name: &'static str) -> Result<PathBuf, ImageError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| ImageError::Tool {
            layer: "-".into(),
            tool: name,
            detail: "not found in PATH, /usr/sbin or /sbin; install e2fsprogs".into(),
        })
}

/// Blocks and inodes for a tree described by `stats`, with margins.
pub fn estimate(stats: &Stats) -> (u64, u64) {
    let inodes = stats.entries + 64;
    let mut blocks =
        stats.data_blocks + stats.dirs + stats.dirent_bytes.div_ceil(BLOCK) + stats.extra_blocks;
    blocks += blocks / 16; // extent tree and htree index blocks
    blocks += (inodes * 256).div_ceil(BLOCK); // inode tables
    let groups = blocks.div_ceil(BLOCK * 8) + 1;
    blocks += groups * 8 + 256; // bitmaps, descriptors, superblock backups
    (blocks.max(MIN_BLOCKS), inodes)
}

/// What the layer has at `/lost+found`, which mkfs creates as a directory.
enum LostFound {
    /// Nothing: mkfs's directory is removed afterwards.
    Absent,
    /// A directory: mkfs merges it with its own.
    Dir,
    /// Something else (a whiteout, typically), moved to this name in the
    /// staging root while mkfs runs, and moved back into place afterwards.
    Aliased(String),
}

fn lost_and_found(staging: &Path) -> Result<LostFound, ImageError> {
    let path = staging.join("lost+found");
    match fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LostFound::Absent),
        Err(e) => Err(ImageError::io("stat", path, e)),
        Ok(m) if m.is_dir() => Ok(LostFound::Dir),
        Ok(_) => {
            let alias = (0..)
                .map(|n| format!(".vmm-lost+found.{n}"))
                .find(|a| fs::symlink_metadata(staging.join(a)).is_err())
                .unwrap_or_default();
            fs::rename(&path, staging.join(&alias))
                .map_err(|e| ImageError::io("rename", &path, e))?;
            Ok(LostFound::Aliased(alias))
        }
    }
}

/// Build the image `out` from `staging`. `layer` names it in errors.
pub fn build(
    staging: &Path,
    out: &Path,
    stats: &Stats,
    root: Option<&RootMeta>,
    layer: &str,
) -> Result<(), ImageError> {
    let mkfs = find_tool("mkfs.ext4")?;
    let debugfs = find_tool("debugfs")?;
    let tool_err = |tool: &'static str, detail: String| ImageError::Tool {
        layer: layer.to_owned(),
        tool,
        detail,
    };
    let lost_found = lost_and_found(staging)?;
    let (mut blocks, mut inodes) = estimate(stats);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let file = File::create(out).map_err(|e| ImageError::io("create", out, e))?;
        file.set_len(blocks * BLOCK)
            .map_err(|e| ImageError::io("size", out, e))?;
        drop(file);
        let output = Command::new(&mkfs)
            .args([
                "-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-m", "0",
            ])
            .args([
                "-O",
                "^has_journal,^resize_inode",
                "-L",
                "layer",
                "-E",
                "nodiscard",
            ])
            .arg("-N")
            .arg(inodes.to_string())
            .arg("-d")
            .arg(staging)
            .arg(out)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| tool_err("mkfs.ext4", e.to_string()))?;
        if output.status.success() {
            break;
        }
        let detail = format!(
            "{} with {blocks} blocks and {inodes} inodes: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        if attempt >= ATTEMPTS {
            return Err(tool_err("mkfs.ext4", detail));
        }
        log::debug!("layer {layer}: mkfs.ext4 failed ({detail}); retrying larger");
        blocks *= 2;
        inodes *= 2;
    }

    let mut script = String::new();
    match &lost_found {
        LostFound::Dir => {}
        LostFound::Absent => script.push_str("rmdir /lost+found\n"),
        // `ln` and `unlink` leave link counts alone, so together they rename.
        LostFound::Aliased(alias) => {
            let _ = write!(
                script,
                "rmdir /lost+found\nln /{alias} /lost+found\nunlink /{alias}\n"
            );
        }
    }
    if let Some(r) = root {
        let secs = r
            .mtime
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let _ = write!(
            script,
            "sif / mode 0{:o}\nsif / uid {}\nsif / gid {}\nsif / mtime @{secs}\nsif / atime @{secs}\n",
            libc::S_IFDIR | (r.mode & 0o7777),
            r.uid,
            r.gid
        );
    }
    if script.is_empty() {
        return Ok(());
    }
    let script_path = out.with_extension("debugfs");
    fs::write(&script_path, script).map_err(|e| ImageError::io("write", &script_path, e))?;
    let output = Command::new(&debugfs)
        .arg("-w")
        .arg("-f")
        .arg(&script_path)
        .arg(out)
        .stdin(Stdio::null())
        .output();
    let _ = fs::remove_file(&script_path);
    let output = output.map_err(|e| tool_err("debugfs", e.to_string()))?;
    // debugfs exits 0 even when a command fails; its errors go to stderr,
    // after its version banner.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .collect();
    if !output.status.success() || !errors.is_empty() {
        return Err(tool_err(
            "debugfs",
            format!("{}: {}", output.status, errors.join("; ")),
        ));
    }
    Ok(())
}
