//! Layer images on the scratch disk, each loop-mounted read-only once.
//!
//! ```text
//! <state>/layers/<hex>.ext4     verified layer images (named by diff-id)
//! <state>/layers/.tmp/          uploads in progress
//! <state>/mnt/<hex>/            each image mounted read-only (ext4 on a loop device)
//! ```
//!
//! A file gets its final name only after its size and sha256 matched what
//! the host announced, so a file under its final name is trusted after an
//! agent restart (it is mounted again if it is not).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::protocol::{digest_hex, PutLayer};
use crate::sys::{self, SysError};

const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// Errors of the layer store.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A system call failed.
    #[error("{context}: {source}")]
    Sys {
        /// Which step, which layer.
        context: String,
        /// The call.
        #[source]
        source: SysError,
    },
    /// The request was not acceptable.
    #[error(transparent)]
    Protocol(#[from] crate::protocol::ProtocolError),
    /// Another connection is uploading the same layer.
    #[error("layer {0} is being uploaded by another connection")]
    Busy(String),
    /// The scratch disk has too little room.
    #[error("layer {diff_id} needs {size} bytes, the scratch disk has {free} free")]
    NoSpace {
        /// The layer.
        diff_id: String,
        /// Its size.
        size: u64,
        /// Free bytes.
        free: u64,
    },
    /// More data than announced arrived.
    #[error("layer {diff_id}: more than the announced {size} bytes")]
    TooMuchData {
        /// The layer.
        diff_id: String,
        /// The announced size.
        size: u64,
    },
    /// The data did not match what was announced.
    #[error("layer {diff_id}: {what} mismatch: announced {expected}, received {actual}")]
    Mismatch {
        /// The layer.
        diff_id: String,
        /// `size` or `sha256`.
        what: &'static str,
        /// Announced.
        expected: String,
        /// Received.
        actual: String,
    },
}

type Result<T> = std::result::Result<T, LayerError>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LayerError + 'a {
    move |source| LayerError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The layer store.
#[derive(Debug)]
pub struct LayerStore {
    files: PathBuf,
    tmp: PathBuf,
    mnt: PathBuf,
    uploads: Mutex<HashSet<String>>,
    seq: AtomicU64,
}

impl LayerStore {
    /// Opens (creates) the store under `state`, removes unfinished uploads
    /// and mounts the layers that are not mounted. Returns the store and the
    /// layers that could not be mounted (they are left out of it).
    pub fn open(state: &Path) -> Result<(Self, Vec<String>)> {
        let store = Self {
            files: state.join("layers"),
            tmp: state.join("layers/.tmp"),
            mnt: state.join("mnt"),
            uploads: Mutex::new(HashSet::new()),
            seq: AtomicU64::new(0),
        };
        if store.tmp.exists() {
            fs::remove_dir_all(&store.tmp).map_err(io_err("remove", &store.tmp))?;
        }
        for d in [&store.files, &store.tmp, &store.mnt] {
            fs::create_dir_all(d).map_err(io_err("mkdir", d))?;
        }
        let mut failures = Vec::new();
        for hex in store.stored_files()? {
            if let Err(e) = store.ensure_mounted(&hex) {
                failures.push(format!("sha256:{hex}: {e}"));
            }
        }
        Ok((store, failures))
    }

    fn stored_files(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.files).map_err(io_err("read", &self.files))? {
            let e = e.map_err(io_err("read", &self.files))?;
            let name = e.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".ext4")) else {
                continue;
            };
            if digest_hex("layer file", &format!("sha256:{hex}")).is_ok() {
                out.push(hex.to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Where layer `hex` is mounted.
    pub fn mount_dir(&self, hex: &str) -> PathBuf {
        self.mnt.join(hex)
    }

    /// The directory holding every layer mount.
    pub fn mounts(&self) -> &Path {
        &self.mnt
    }

    fn file(&self, hex: &str) -> PathBuf {
        self.files.join(format!("{hex}.ext4"))
    }

    /// Whether layer `hex` is stored and mounted.
    pub fn has(&self, hex: &str) -> bool {
        self.file(hex).is_file() && is_mount_point(&self.mount_dir(hex))
    }

    /// The diff-ids of the stored and mounted layers, sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        Ok(self
            .stored_files()?
            .into_iter()
            .filter(|h| self.has(h))
            .map(|h| format!("sha256:{h}"))
            .collect())
    }

    /// Starts an upload. `Ok(None)` when the layer is already there.
    pub fn begin(&self, req: &PutLayer) -> Result<Option<Upload<'_>>> {
        req.validate()?;
        let hex = digest_hex("diff_id", &req.diff_id)?.to_string();
        if self.has(&hex) {
            return Ok(None);
        }
        {
            let mut up = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
            if !up.insert(hex.clone()) {
                return Err(LayerError::Busy(req.diff_id.clone()));
            }
        }
        let guard = UploadGuard {
            store: self,
            hex: hex.clone(),
        };
        // The image plus room for the containers' upper directories.
        let free = sys::fs_free(&self.files).map_err(|source| LayerError::Sys {
            context: "free space of the scratch disk".into(),
            source,
        })?;
        if req.size > free {
            return Err(LayerError::NoSpace {
                diff_id: req.diff_id.clone(),
                size: req.size,
                free,
            });
        }
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp.join(format!("{hex}.{n}"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        Ok(Some(Upload {
            _guard: guard,
            req: req.clone(),
            hex,
            tmp,
            file: Some(file),
            hasher: Sha256::new(),
            written: 0,
        }))
    }

    /// Mounts layer `hex` if it is not mounted.
    fn ensure_mounted(&self, hex: &str) -> Result<()> {
        let dir = self.mount_dir(hex);
        fs::create_dir_all(&dir).map_err(io_err("mkdir", &dir))?;
        if is_mount_point(&dir) {
            return Ok(());
        }
        let file = self.file(hex);
        let dev = loop_attach(&file).map_err(|source| LayerError::Sys {
            context: format!("loop device for {}", file.display()),
            source,
        })?;
        let path = format!("/dev/loop{}", dev.number);
        let res = sys::mount(&path, &dir, Some("ext4"), libc::MS_RDONLY, None);
        if let Err(source) = res {
            // Detach now rather than rely on autoclear at the close.
            let _ = sys::ioctl_int(dev.fd.as_fd(), LOOP_CLR_FD, 0, "LOOP_CLR_FD");
            return Err(LayerError::Sys {
                context: format!("mount layer sha256:{hex}"),
                source,
            });
        }
        Ok(())
    }
}

/// Removes the upload marker when an upload ends, however it ends.
#[derive(Debug)]
struct UploadGuard<'a> {
    store: &'a LayerStore,
    hex: String,
}

impl Drop for UploadGuard<'_> {
    fn drop(&mut self) {
        let mut up = self.store.uploads.lock().unwrap_or_else(|p| p.into_inner());
        up.remove(&self.hex);
    }
}

/// A layer being received.
#[derive(Debug)]
pub struct Upload<'a> {
    _guard: UploadGuard<'a>,
    req: PutLayer,
    hex: String,
    tmp: PathBuf,
    file: Option<File>,
    hasher: Sha256,
    written: u64,
}

impl Upload<'_> {
    /// Appends data (refusing more than the announced size).
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        let len = data.len() as u64;
        if self.written + len > self.req.size {
            return Err(LayerError::TooMuchData {
                diff_id: self.req.diff_id.clone(),
                size: self.req.size,
            });
        }
        if let Some(f) = self.file.as_mut() {
            f.write_all(data).map_err(io_err("write", &self.tmp))?;
        }
        self.hasher.update(data);
        self.written += len;
        Ok(())
    }

    /// Verifies size and digest, syncs, renames into place and mounts.
    pub fn finish(mut self, store: &LayerStore) -> Result<u64> {
        let mismatch = |what, expected: String, actual: String| LayerError::Mismatch {
            diff_id: self.req.diff_id.clone(),
            what,
            expected,
            actual,
        };
        if self.written != self.req.size {
            return Err(mismatch(
                "size",
                self.req.size.to_string(),
                self.written.to_string(),
            ));
        }
        let actual = format!(
            "sha256:{}",
            hex_string(&std::mem::take(&mut self.hasher).finalize())
        );
        if actual != self.req.sha256 {
            return Err(mismatch("sha256", self.req.sha256.clone(), actual));
        }
        if let Some(f) = self.file.take() {
            f.sync_all().map_err(io_err("fsync", &self.tmp))?;
        }
        let dest = store.file(&self.hex);
        fs::rename(&self.tmp, &dest).map_err(io_err("rename", &dest))?;
        if let Err(e) = store.ensure_mounted(&self.hex) {
            let _ = fs::remove_file(&dest);
            return Err(e);
        }
        Ok(self.written)
    }
}

impl Drop for Upload<'_> {
    fn drop(&mut self) {
        // Unfinished or refused: the temporary file goes (after a successful
        // finish it no longer exists under this name).
        let _ = fs::remove_file(&self.tmp);
    }
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `dir` is the root of a mount (another device than its parent).
pub fn is_mount_point(dir: &Path) -> bool {
    let (Ok(me), Some(Ok(parent))) = (fs::metadata(dir), dir.parent().map(fs::metadata)) else {
        return false;
    };
    me.dev() != parent.dev()
}

/// A bound loop device.
struct LoopDev {
    number: i32,
    fd: File,
}

#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

fn loop_info(file: &Path) -> LoopInfo64 {
    let mut name = [0u8; 64];
    let bytes = file.as_os_str().as_encoded_bytes();
    let n = bytes.len().min(63);
    name[..n].copy_from_slice(&bytes[..n]);
    LoopInfo64 {
        device: 0,
        inode: 0,
        rdevice: 0,
        offset: 0,
        sizelimit: 0,
        number: 0,
        encrypt_type: 0,
        encrypt_key_size: 0,
        flags: LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR,
        file_name: name,
        crypt_name: [0; 64],
        encrypt_key: [0; 32],
        init: [0; 2],
    }
}

/// Binds `file` read-only to a free loop device (LOOP_CONFIGURE, or
/// LOOP_SET_FD + LOOP_SET_STATUS64 on kernels before 5.8). The device is
/// auto-cleared once unmounted and closed.
fn loop_attach(file: &Path) -> sys::Result<LoopDev> {
    let open = |p: &Path, write: bool| {
        OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_CLOEXEC)
            .open(p)
            .map_err(|source| SysError {
                call: "open",
                what: p.display().to_string(),
                source,
            })
    };
    let backing = open(file, false)?;
    let ctl = open(Path::new("/dev/loop-control"), true)?;
    let backing_fd = u32::try_from(backing.as_raw_fd()).unwrap_or(u32::MAX);
    let mut last = None;
    for _ in 0..16 {
        let number = sys::ioctl_int(ctl.as_fd(), LOOP_CTL_GET_FREE, 0, "LOOP_CTL_GET_FREE")?;
        let dev = open(Path::new(&format!("/dev/loop{number}")), true)?;
        let mut cfg = LoopConfig {
            fd: backing_fd,
            block_size: 0,
            info: loop_info(file),
            reserved: [0; 8],
        };
        match sys::ioctl_ptr(dev.as_fd(), LOOP_CONFIGURE, &mut cfg, "LOOP_CONFIGURE") {
            Ok(_) => return Ok(LoopDev { number, fd: dev }),
            // Another process took the device between GET_FREE and here.
            Err(e) if e.errno() == Some(libc::EBUSY) => last = Some(e),
            Err(e) if matches!(e.errno(), Some(libc::EINVAL | libc::ENOTTY)) => {
                let fd = libc::c_ulong::try_from(backing.as_raw_fd()).unwrap_or(0);
                match sys::ioctl_int(dev.as_fd(), LOOP_SET_FD, fd, "LOOP_SET_FD") {
                    Ok(_) => {}
                    Err(e) if e.errno() == Some(libc::EBUSY) => {
                        last = Some(e);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                let mut info = loop_info(file);
                if let Err(e) = sys::ioctl_ptr(
                    dev.as_fd(),
                    LOOP_SET_STATUS64,
                    &mut info,
                    "LOOP_SET_STATUS64",
                ) {
                    let _ = sys::ioctl_int(dev.as_fd(), LOOP_CLR_FD, 0, "LOOP_CLR_FD");
                    return Err(e);
                }
                return Ok(LoopDev { number, fd: dev });
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| SysError {
        call: "ioctl",
        what: "LOOP_CONFIGURE".into(),
        source: io::Error::from_raw_os_error(libc::EBUSY),
    }))
}
