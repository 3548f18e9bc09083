//! The backing file of a virtio-blk device and the execution of validated
//! requests against it.
//!
//! Data moves directly between the file and guest memory: `pread`/`pwrite`
//! into the guest's own pages (vm-memory volatile slices), no bounce buffer
//! and no shared file cursor.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use log::warn;
use virtio_bindings::virtio_blk::VIRTIO_BLK_ID_BYTES;
use virtio_queue::desc::split::Descriptor;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{
    Bytes, GuestMemory, GuestMemoryError, GuestMemoryMmap, Permissions, ReadVolatile,
    VolatileMemoryError, VolatileSlice, WriteVolatile,
};

use super::request::{Request, RequestType};
use super::{BlockError, SECTOR_SIZE};

/// Length of the GET_ID answer.
pub(super) const SERIAL_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;

/// Why a valid-looking request failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum ExecError {
    /// A write to a read-only disk.
    #[error("write to a read-only disk")]
    ReadOnly,
    /// The request reaches past the end of the disk.
    #[error("sectors {sector}+{len} bytes are beyond the disk capacity")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Data length in bytes.
        len: u64,
    },
    /// The host file failed.
    #[error("host I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Guest memory could not be accessed (should not happen after validation).
    #[error("guest memory: {0}")]
    Guest(#[from] GuestMemoryError),
    /// A guest memory slice could not be transferred.
    #[error("transfer: {0}")]
    Volatile(VolatileMemoryError),
}

impl From<VolatileMemoryError> for ExecError {
    fn from(e: VolatileMemoryError) -> Self {
        match e {
            VolatileMemoryError::IOError(e) => Self::Io(e),
            other => Self::Volatile(other),
        }
    }
}

impl ExecError {
    /// True for failures of the host, false for requests the guest got wrong.
    pub(super) fn is_host_error(&self) -> bool {
        !matches!(self, Self::ReadOnly | Self::OutOfRange { .. })
    }
}

/// A disk image opened for the device.
#[derive(Debug)]
pub(super) struct Disk {
    file: File,
    read_only: bool,
    /// Usable size in bytes: a whole number of sectors.
    size: u64,
    serial: [u8; SERIAL_LEN],
    /// Sync after every write (the driver did not negotiate FLUSH).
    pub(super) writethrough: bool,
}

impl Disk {
    /// Open `path` (read-only when asked) and work out its capacity and serial.
    pub(super) fn open(path: &Path, read_only: bool, id: Option<&str>) -> Result<Self, BlockError> {
        let given_serial = id
            .map(|id| {
                serial_from(id.as_bytes())
                    .ok_or_else(|| BlockError::IdTooLong { id: id.to_owned() })
            })
            .transpose()?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.to_owned(),
                source,
            })?;
        // Seeking to the end also works for block devices, whose metadata
        // length is 0. I/O is positional, so the cursor is never used again.
        let len = file
            .seek(SeekFrom::End(0))
            .map_err(|source| BlockError::Size {
                path: path.to_owned(),
                source,
            })?;
        let size = len - len % SECTOR_SIZE;
        if size != len {
            warn!(
                "virtio-blk: {} is {len} bytes, not a multiple of {SECTOR_SIZE}: the last {} bytes are not visible to the guest",
                path.display(),
                len - size
            );
        }
        if size == 0 {
            warn!(
                "virtio-blk: {} has no whole sector, the disk is empty",
                path.display()
            );
        }
        let serial = match given_serial {
            Some(serial) => serial,
            None => {
                let meta = file.metadata().map_err(|source| BlockError::Metadata {
                    path: path.to_owned(),
                    source,
                })?;
                // Stable for the image, distinct between images.
                let derived = format!("{:x}{:x}{:x}", meta.dev(), meta.rdev(), meta.ino());
                let n = derived.len().min(SERIAL_LEN);
                serial_from(&derived.as_bytes()[..n]).unwrap_or_default()
            }
        };
        Ok(Self {
            file,
            read_only,
            size,
            serial,
            writethrough: false,
        })
    }

    /// Capacity in sectors.
    pub(super) fn capacity(&self) -> u64 {
        self.size / SECTOR_SIZE
    }

    /// Whether the disk refuses writes.
    pub(super) fn read_only(&self) -> bool {
        self.read_only
    }

    /// The GET_ID answer.
    pub(super) fn serial(&self) -> &[u8; SERIAL_LEN] {
        &self.serial
    }

    /// Byte offset of a request's data after checking it fits the disk.
    fn data_offset(&self, sector: u64, len: u64) -> Result<u64, ExecError> {
        sector
            .checked_mul(SECTOR_SIZE)
            .filter(|off| off.checked_add(len).is_some_and(|end| end <= self.size))
            .ok_or(ExecError::OutOfRange { sector, len })
    }

    /// Run a validated request. `written` counts the data bytes stored in
    /// guest memory, also when the request fails half-way.
    pub(super) fn execute(
        &self,
        mem: &GuestMemoryMmap,
        req: &Request,
        descs: &[Descriptor],
        written: &mut u64,
    ) -> Result<(), ExecError> {
        let data = descs.get(req.data.clone()).unwrap_or(&[]);
        match req.kind {
            RequestType::In => {
                let offset = self.data_offset(req.sector, req.data_len)?;
                self.read_to_guest(mem, offset, data, written)
            }
            RequestType::Out => self.write_from_guest(mem, req, data),
            RequestType::Flush => Ok(self.file.sync_data()?),
            RequestType::GetId => self.write_serial(mem, data, written),
            // Answered by the caller without touching the disk.
            RequestType::Unsupported(_) => Ok(()),
        }
    }

    fn read_to_guest(
        &self,
        mem: &GuestMemoryMmap,
        offset: u64,
        data: &[Descriptor],
        written: &mut u64,
    ) -> Result<(), ExecError> {
        let mut file = FileAt {
            file: &self.file,
            offset,
        };
        for d in data {
            for slice in mem.get_slices(d.addr(), buf_len(d)?, Permissions::Write)? {
                let mut slice = slice?;
                file.read_exact_volatile(&mut slice)?;
                *written += slice.len() as u64;
            }
        }
        Ok(())
    }

    fn write_from_guest(
        &self,
        mem: &GuestMemoryMmap,
        req: &Request,
        data: &[Descriptor],
    ) -> Result<(), ExecError> {
        if self.read_only {
            return Err(ExecError::ReadOnly);
        }
        let offset = self.data_offset(req.sector, req.data_len)?;
        let mut file = FileAt {
            file: &self.file,
            offset,
        };
        for d in data {
            for slice in mem.get_slices(d.addr(), buf_len(d)?, Permissions::Read)? {
                file.write_all_volatile(&slice?)?;
            }
        }
        if self.writethrough {
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn write_serial(
        &self,
        mem: &GuestMemoryMmap,
        data: &[Descriptor],
        written: &mut u64,
    ) -> Result<(), ExecError> {
        let mut rest: &[u8] = &self.serial;
        for d in data {
            if rest.is_empty() {
                break;
            }
            let (now, later) = rest.split_at(rest.len().min(buf_len(d)?));
            mem.write_slice(now, d.addr())?;
            *written += now.len() as u64;
            rest = later;
        }
        Ok(())
    }
}

/// The length of a descriptor's buffer as a `usize`.
fn buf_len(d: &Descriptor) -> Result<usize, ExecError> {
    usize::try_from(d.len()).map_err(|_| GuestMemoryError::InvalidGuestAddress(d.addr()).into())
}

/// The serial padded with zeros, or `None` if it does not fit.
fn serial_from(id: &[u8]) -> Option<[u8; SERIAL_LEN]> {
    let mut serial = [0; SERIAL_LEN];
    serial.get_mut(..id.len())?.copy_from_slice(id);
    Some(serial)
}

/// A file seen from `offset` onwards; each transfer advances `offset`. Gives
/// vm-memory's volatile I/O traits positional reads and writes (`pread`,
/// `pwrite`), which leave the file cursor alone.
struct FileAt<'a> {
    file: &'a File,
    offset: u64,
}

impl FileAt<'_> {
    fn off_t(&self) -> Result<libc::off_t, VolatileMemoryError> {
        libc::off_t::try_from(self.offset).map_err(|_| {
            VolatileMemoryError::IOError(std::io::Error::from_raw_os_error(libc::EINVAL))
        })
    }

    /// Account for a transfer that returned `ret`.
    fn advance(&mut self, ret: isize) -> Result<usize, VolatileMemoryError> {
        let n = usize::try_from(ret)
            .map_err(|_| VolatileMemoryError::IOError(std::io::Error::last_os_error()))?;
        self.offset = self.offset.saturating_add(n as u64);
        Ok(n)
    }
}

impl ReadVolatile for FileAt<'_> {
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let offset = self.off_t()?;
        let guard = buf.ptr_guard_mut();
        // SAFETY: the fd is open for the lifetime of `self.file`; `guard`
        // points to `buf.len()` bytes of mapped guest memory that stay mapped
        // while the guard lives, and pread writes at most `buf.len()` bytes.
        let ret = unsafe {
            libc::pread(
                self.file.as_raw_fd(),
                guard.as_ptr().cast(),
                buf.len(),
                offset,
            )
        };
        let res = self.advance(ret);
        // On failure part of the buffer may have been written: all of it is dirty.
        let dirty = res.as_ref().map_or(buf.len(), |&n| n);
        buf.bitmap().mark_dirty(0, dirty);
        res
    }
}

impl WriteVolatile for FileAt<'_> {
    fn write_volatile<B: BitmapSlice>(
        &mut self,
        buf: &VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let offset = self.off_t()?;
        let guard = buf.ptr_guard();
        // SAFETY: the fd is open for the lifetime of `self.file`; `guard`
        // points to `buf.len()` readable bytes of mapped guest memory that
        // stay mapped while the guard lives, and pwrite reads at most that.
        let ret = unsafe {
            libc::pwrite(
                self.file.as_raw_fd(),
                guard.as_ptr().cast(),
                buf.len(),
                offset,
            )
        };
        self.advance(ret)
    }
}
