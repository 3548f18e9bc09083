//! Tests: images are built at test time with the `tar` crate (no network)
//! and the resulting ext4 images are checked with `debugfs` and `e2fsck`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod convert;
mod hostile;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use flate2::write::GzEncoder;
use serde_json::json;
use tar::{EntryType, Header};

use super::{Digest, ImageError, Store};

/// A directory removed at the end of the test.
pub struct TestDir(PathBuf);

impl TestDir {
    pub fn new(name: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("vmm-image-{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TestDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A fixed mtime for entries (2001-09-09).
pub const MTIME: u64 = 1_000_000_000;

/// Builds a layer tar.
pub struct LayerTar(tar::Builder<Vec<u8>>);

impl LayerTar {
    pub fn new() -> Self {
        LayerTar(tar::Builder::new(Vec::new()))
    }

    fn header(kind: EntryType, mode: u32, uid: u64, gid: u64, size: u64) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(MTIME);
        h.set_size(size);
        h
    }

    /// Any entry, with the raw path and link name written as given (no
    /// validation: for hostile entries).
    pub fn raw(mut self, path: &[u8], kind: EntryType, link: &[u8], data: &[u8]) -> Self {
        let mut h = Self::header(kind, 0o644, 0, 0, data.len() as u64);
        h.as_old_mut().name[..path.len()].copy_from_slice(path);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    pub fn file_full(mut self, path: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> Self {
        let mut h = Self::header(EntryType::Regular, mode, uid, gid, data.len() as u64);
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }

    pub fn file(self, path: &str, data: &[u8]) -> Self {
        self.file_full(path, data, 0o644, 0, 0)
    }

    pub fn dir_full(mut self, path: &str, mode: u32, uid: u64, gid: u64) -> Self {
        let mut h = Self::header(EntryType::Directory, mode, uid, gid, 0);
        self.0.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    pub fn dir(self, path: &str) -> Self {
        self.dir_full(path, 0o755, 0, 0)
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(EntryType::Symlink, 0o777, 0, 0, 0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(EntryType::Link, 0o644, 0, 0, 0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn node(mut self, path: &str, kind: EntryType, mode: u32, major: u32, minor: u32) -> Self {
        let mut h = Self::header(kind, mode, 0, 0, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.0.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    /// An OCI whiteout of `path`.
    pub fn whiteout(self, dir: &str, name: &str) -> Self {
        self.file(&format!("{dir}/.wh.{name}"), b"")
    }

    pub fn build(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// One layer: its tar, stored gzip-compressed or not.
#[derive(Clone)]
pub struct Layer {
    pub tar: Vec<u8>,
    pub gzip: bool,
    /// Stored instead of the (compressed) tar: a truncated or altered blob.
    pub blob: Option<Vec<u8>>,
}

impl Layer {
    pub fn plain(tar: Vec<u8>) -> Self {
        Layer {
            tar,
            gzip: false,
            blob: None,
        }
    }

    pub fn gz(tar: Vec<u8>) -> Self {
        Layer {
            tar,
            gzip: true,
            blob: None,
        }
    }

    pub fn blob(&self) -> Vec<u8> {
        if let Some(b) = &self.blob {
            b.clone()
        } else if self.gzip {
            gzip(&self.tar)
        } else {
            self.tar.clone()
        }
    }

    pub fn diff_id(&self) -> Digest {
        Digest::of(&self.tar)
    }
}

pub fn config_json(layers: &[Layer]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id().to_string()).collect();
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": ["/bin/sh"],
            "Cmd": ["-c", "echo hi"],
            "Env": ["PATH=/usr/bin:/bin", "A=b"],
            "WorkingDir": "/work",
            "User": "1000:1000"
        },
        "rootfs": { "type": "layers", "diff_ids": diff_ids }
    }))
    .unwrap()
}

fn put_blob(dir: &Path, bytes: &[u8]) -> Digest {
    let d = Digest::of(bytes);
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    fs::write(blobs.join(d.hex()), bytes).unwrap();
    d
}

/// What [`write_oci`] wrote.
pub struct Oci {
    pub layer_digests: Vec<Digest>,
    pub manifest: Digest,
}

/// Write an OCI image layout with `layers` into `dir`.
pub fn write_oci(dir: &Path, layers: &[Layer]) -> Oci {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let config = config_json(layers);
    let config_digest = put_blob(dir, &config);
    let mut descs = Vec::new();
    let mut layer_digests = Vec::new();
    for l in layers {
        let blob = l.blob();
        let d = put_blob(dir, &blob);
        let media = if l.gzip {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        } else {
            "application/vnd.oci.image.layer.v1.tar"
        };
        descs.push(json!({"mediaType": media, "digest": d.to_string(), "size": blob.len()}));
        layer_digests.push(d);
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest.to_string(), "size": config.len()},
        "layers": descs
    }))
    .unwrap();
    let manifest_digest = put_blob(dir, &manifest);
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest.to_string(),
            "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": "test:oci"}
        }]
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    Oci {
        layer_digests,
        manifest: manifest_digest,
    }
}

/// How [`write_docker_save`] lays out the archive.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Docker {
    /// Before docker 25: `<id>/layer.tar`, `<config hex>.json`.
    Legacy,
    /// Docker 25+: an OCI layout plus `manifest.json` naming blobs; the
    /// legacy `<id>/layer.tar` names are symbolic links to the blobs and
    /// the manifest uses them.
    OciWithLinks,
}

/// Write a `docker save` archive of `layers` to `path` (gzipped if `gz`).
pub fn write_docker_save(path: &Path, layers: &[Layer], style: Docker, gz: bool) {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
    };
    let config = config_json(layers);
    let config_digest = Digest::of(&config);
    let mut layer_paths = Vec::new();
    let mut links = Vec::new();
    let config_path = match style {
        Docker::Legacy => {
            for (i, l) in layers.iter().enumerate() {
                let id = Digest::of(format!("layer {i}").as_bytes());
                let p = format!("{}/layer.tar", id.hex());
                add(&p, &l.blob());
                layer_paths.push(p);
            }
            let p = format!("{}.json", config_digest.hex());
            add(&p, &config);
            p
        }
        Docker::OciWithLinks => {
            add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
            for (i, l) in layers.iter().enumerate() {
                let blob = l.blob();
                let d = Digest::of(&blob);
                add(&format!("blobs/sha256/{}", d.hex()), &blob);
                let id = Digest::of(format!("layer {i}").as_bytes());
                let p = format!("{}/layer.tar", id.hex());
                links.push((p.clone(), format!("../blobs/sha256/{}", d.hex())));
                layer_paths.push(p);
            }
            let p = format!("blobs/sha256/{}", config_digest.hex());
            add(&p, &config);
            p
        }
    };
    let manifest =
        json!([{"Config": config_path, "RepoTags": ["test:docker"], "Layers": layer_paths}]);
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    for (p, target) in links {
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        b.append_link(&mut h, p, target).unwrap();
    }
    let bytes = b.into_inner().unwrap();
    fs::write(path, if gz { gzip(&bytes) } else { bytes }).unwrap();
}

/// Run a debugfs request on `img`; returns stdout.
pub fn debugfs(img: &Path, request: &str) -> String {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(request)
        .arg(img)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `debugfs stat` of `path`, with "error" if it does not exist.
pub fn stat(img: &Path, path: &str) -> String {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat {path}"))
        .arg(img)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if text.trim().is_empty() {
        format!("error: {}", String::from_utf8_lossy(&out.stderr))
    } else {
        text
    }
}

pub fn exists(img: &Path, path: &str) -> bool {
    !stat(img, path).starts_with("error")
}

/// `e2fsck -fn` passes.
pub fn fsck_clean(img: &Path) {
    let out = Command::new("e2fsck").arg("-fn").arg(img).output().unwrap();
    assert!(
        out.status.success(),
        "e2fsck {}: {}{}",
        img.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether `path` itself (not a link's target) has the xattr `name`.
pub fn has_xattr(path: &Path, name: &str) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings; a NULL buffer of size 0 only asks
    // for the value's size, so nothing is written.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
    r >= 0
}

/// The text of an import error.
pub fn import_err(store: &Store, path: &Path) -> (ImageError, String) {
    let e = store
        .import(path)
        .expect_err("import should have been refused");
    let msg = e.to_string();
    (e, msg)
}
