//! virtio-blk backed by a raw disk image (a regular file or a block device).
//!
//! One request queue of [`QUEUE_SIZE`] entries, processed synchronously when
//! the driver notifies it. Requests are parsed and validated by
//! [`request`], executed against the image by [`disk`]. Supported: IN, OUT,
//! FLUSH, GET_ID; anything else is answered with `VIRTIO_BLK_S_UNSUPP`.
//!
//! Offered features: `VIRTIO_F_VERSION_1`, `VIRTIO_RING_F_EVENT_IDX`,
//! `VIRTIO_BLK_F_FLUSH`, `VIRTIO_BLK_F_SEG_MAX`, `VIRTIO_BLK_F_BLK_SIZE` and,
//! for read-only images, `VIRTIO_BLK_F_RO`. When the driver does not accept
//! FLUSH the device writes through (syncs after each write).

mod disk;
mod request;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use log::{debug, error, warn};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{Bytes, GuestMemoryMmap};

use self::disk::Disk;
use self::request::{Refused, Request, RequestType};
use super::queue::{drain_all, setup_queue, signal_used, take_queues};
use super::{config_bytes, ActivateContext, IrqTrigger, VirtioDevice, VirtioError};

/// Bytes per sector, the unit of the request header and of the capacity.
pub const SECTOR_SIZE: u64 = 512;
/// The logical block size reported in the config space.
const BLK_SIZE: u32 = 512;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most data segments per request: a chain also needs a header and a status.
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// The config space fields we fill: capacity, size_max, seg_max, geometry,
/// blk_size (`struct virtio_blk_config` up to and including `blk_size`).
const CONFIG_LEN: usize = 24;

/// Errors of [`Block`].
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image could not be opened.
    #[error("cannot open disk image {path}: {source}")]
    Open {
        /// The image.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The size of the image could not be determined.
    #[error("cannot get the size of disk image {path}: {source}")]
    Size {
        /// The image.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The image's metadata (for the default serial) could not be read.
    #[error("cannot read the metadata of disk image {path}: {source}")]
    Metadata {
        /// The image.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The serial does not fit the 20 bytes of a GET_ID answer.
    #[error("disk id {id:?} is longer than 20 bytes")]
    IdTooLong {
        /// The offending id.
        id: String,
    },
}

/// Counters of one block device, shared with whoever wants to report them.
/// Updated with relaxed atomics: each is exact, they are not a snapshot of
/// one instant together.
#[derive(Debug, Default)]
pub struct BlockMetrics {
    requests: AtomicU64,
    reads: AtomicU64,
    read_bytes: AtomicU64,
    writes: AtomicU64,
    write_bytes: AtomicU64,
    flushes: AtomicU64,
    get_ids: AtomicU64,
    invalid_requests: AtomicU64,
    unsupported_requests: AtomicU64,
    io_errors: AtomicU64,
    queue_errors: AtomicU64,
}

/// A copy of [`BlockMetrics`] at one time.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlockMetricsSnapshot {
    /// Descriptor chains taken from the queue.
    pub requests: u64,
    /// Successful reads.
    pub reads: u64,
    /// Bytes read by successful reads.
    pub read_bytes: u64,
    /// Successful writes.
    pub writes: u64,
    /// Bytes written by successful writes.
    pub write_bytes: u64,
    /// Successful flushes.
    pub flushes: u64,
    /// Successful GET_ID requests.
    pub get_ids: u64,
    /// Requests refused as malformed, out of range or writing a read-only disk.
    pub invalid_requests: u64,
    /// Requests of a type the device does not implement.
    pub unsupported_requests: u64,
    /// Requests failed by the host (file I/O errors).
    pub io_errors: u64,
    /// Queue-level failures that put the device in DEVICE_NEEDS_RESET.
    pub queue_errors: u64,
}

impl BlockMetrics {
    /// Read all counters.
    pub fn snapshot(&self) -> BlockMetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BlockMetricsSnapshot {
            requests: get(&self.requests),
            reads: get(&self.reads),
            read_bytes: get(&self.read_bytes),
            writes: get(&self.writes),
            write_bytes: get(&self.write_bytes),
            flushes: get(&self.flushes),
            get_ids: get(&self.get_ids),
            invalid_requests: get(&self.invalid_requests),
            unsupported_requests: get(&self.unsupported_requests),
            io_errors: get(&self.io_errors),
            queue_errors: get(&self.queue_errors),
        }
    }
}

fn inc(c: &AtomicU64, by: u64) {
    c.fetch_add(by, Ordering::Relaxed);
}

/// State that exists only between activation and reset.
#[derive(Debug)]
struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    irq: Arc<IrqTrigger>,
}

/// A virtio block device.
#[derive(Debug)]
pub struct Block {
    path: PathBuf,
    disk: Disk,
    avail_features: u64,
    config: [u8; CONFIG_LEN],
    active: Option<Active>,
    needs_reset: bool,
    metrics: Arc<BlockMetrics>,
    /// Scratch copy of the chain being handled; capacity `QUEUE_SIZE`, never
    /// grown (chains are refused beyond the queue size).
    descs: Vec<Descriptor>,
}

impl Block {
    /// A block device on the image at `path`. `id` is the serial the guest
    /// reads with GET_ID (at most 20 bytes); without it one is derived from
    /// the file's device and inode numbers.
    pub fn new(
        path: impl AsRef<Path>,
        read_only: bool,
        id: Option<&str>,
    ) -> Result<Self, BlockError> {
        let path = path.as_ref();
        let disk = Disk::open(path, read_only, id)?;
        let mut avail_features = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE);
        if read_only {
            avail_features |= 1 << VIRTIO_BLK_F_RO;
        }
        let mut config = [0u8; CONFIG_LEN];
        config[0..8].copy_from_slice(&disk.capacity().to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        config[20..24].copy_from_slice(&BLK_SIZE.to_le_bytes());
        debug!(
            "virtio-blk: {} ({} sectors{})",
            path.display(),
            disk.capacity(),
            if read_only { ", read-only" } else { "" }
        );
        Ok(Self {
            path: path.to_owned(),
            disk,
            avail_features,
            config,
            active: None,
            needs_reset: false,
            metrics: Arc::default(),
            descs: Vec::with_capacity(usize::from(QUEUE_SIZE)),
        })
    }

    /// The image this device serves.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.capacity()
    }

    /// Whether the guest may write.
    pub fn read_only(&self) -> bool {
        self.disk.read_only()
    }

    /// The 20-byte serial answered to GET_ID (zero-padded).
    pub fn serial(&self) -> &[u8] {
        self.disk.serial()
    }

    /// The device's counters; the handle stays valid after the device has
    /// been handed to a transport.
    pub fn metrics(&self) -> Arc<BlockMetrics> {
        self.metrics.clone()
    }

    /// Serve the queue and interrupt the guest if (EVENT_IDX permitting)
    /// it wants to hear about the used chains. A queue error leaves the
    /// device needing a reset.
    fn process_queue(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let (disk, metrics, descs) = (&self.disk, &*self.metrics, &mut self.descs);
        let mem = &active.mem;
        let mut used = false;
        let result = drain_all(&mut active.queue, mem, &mut used, |chain, queue_size| {
            handle_chain(disk, metrics, descs, mem, queue_size, chain)
        });
        match result {
            Ok(()) => signal_used(&mut active.queue, mem, &active.irq, used),
            Err(e) => {
                error!(
                    "virtio-blk: {}: queue error, device needs a reset: {e}",
                    self.path.display()
                );
                inc(&self.metrics.queue_errors, 1);
                self.needs_reset = true;
                // The ring is broken: do not ask it whether the driver
                // wants the interrupt.
                if used {
                    active.irq.signal_used_queue();
                }
            }
        }
    }
}

/// Handle one chain; return the used length (bytes written to guest memory,
/// status byte included).
fn handle_chain(
    disk: &Disk,
    metrics: &BlockMetrics,
    descs: &mut Vec<Descriptor>,
    mem: &GuestMemoryMmap,
    queue_size: u16,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> u32 {
    inc(&metrics.requests, 1);
    let req = match request::parse(chain, mem, queue_size, descs) {
        Ok(req) => req,
        Err(Refused { status, error }) => {
            debug!("virtio-blk: invalid request: {error}");
            inc(&metrics.invalid_requests, 1);
            return status.map_or(0, |s| complete(mem, s, VIRTIO_BLK_S_IOERR, 0));
        }
    };
    if let RequestType::Unsupported(t) = req.kind {
        debug!("virtio-blk: unsupported request type {t}");
        inc(&metrics.unsupported_requests, 1);
        return complete(mem, req.status, VIRTIO_BLK_S_UNSUPP, 0);
    }
    let mut written = 0;
    let status = match disk.execute(mem, &req, descs, &mut written) {
        Ok(()) => {
            count_success(metrics, &req);
            VIRTIO_BLK_S_OK
        }
        Err(e) => {
            if e.is_host_error() {
                warn!("virtio-blk: {:?} at sector {}: {e}", req.kind, req.sector);
                inc(&metrics.io_errors, 1);
            } else {
                debug!("virtio-blk: {:?} refused: {e}", req.kind);
                inc(&metrics.invalid_requests, 1);
            }
            VIRTIO_BLK_S_IOERR
        }
    };
    complete(mem, req.status, status, written)
}

fn count_success(metrics: &BlockMetrics, req: &Request) {
    match req.kind {
        RequestType::In => {
            inc(&metrics.reads, 1);
            inc(&metrics.read_bytes, req.data_len);
        }
        RequestType::Out => {
            inc(&metrics.writes, 1);
            inc(&metrics.write_bytes, req.data_len);
        }
        RequestType::Flush => inc(&metrics.flushes, 1),
        RequestType::GetId => inc(&metrics.get_ids, 1),
        RequestType::Unsupported(_) => {}
    }
}

/// Write the status byte; return the used length.
fn complete(
    mem: &GuestMemoryMmap,
    status_addr: vm_memory::GuestAddress,
    status: u32,
    written: u64,
) -> u32 {
    // Status values are 0..=2.
    let status = u8::try_from(status).unwrap_or(u8::MAX);
    let status_len = match mem.write_obj(status, status_addr) {
        Ok(()) => 1,
        // Checked during parsing; guest memory does not shrink.
        Err(e) => {
            error!("virtio-blk: cannot write status byte: {e}");
            0
        }
    };
    // A chain carries less than 4 GiB, so this fits; saturate regardless.
    u32::try_from(written.saturating_add(status_len)).unwrap_or(u32::MAX)
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // No writable field (no CONFIG_WCE).
        debug!(
            "virtio-blk: {}-byte config write at {offset:#x} ignored",
            data.len()
        );
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), VirtioError> {
        let [mut queue] = take_queues(ctx.queues)?;
        setup_queue(0, &mut queue, &ctx.mem, ctx.acked_features)?;
        self.disk.writethrough = ctx.acked_features & (1 << VIRTIO_BLK_F_FLUSH) == 0;
        self.active = Some(Active {
            mem: ctx.mem,
            queue,
            irq: ctx.irq,
        });
        self.needs_reset = false;
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.needs_reset = false;
        self.disk.writethrough = false;
    }

    fn queue_notify(&mut self, index: usize) {
        if index != 0 || self.needs_reset {
            return;
        }
        self.process_queue();
    }

    fn needs_reset(&self) -> bool {
        self.needs_reset
    }
}
