//! virtio-vsock with the host side implemented in the device, bridging guest
//! stream sockets to Unix sockets (no `/dev/vhost-vsock` needed).
//!
//! Three queues of [`QUEUE_SIZE`] entries: rx (index 0, packets for the
//! guest), tx (1, packets from the guest) and event (2, never used: the
//! guest's CID does not change). The config space is the guest's CID (le64).
//!
//! Offered features: `VIRTIO_F_VERSION_1`, `VIRTIO_RING_F_EVENT_IDX`, and
//! `VIRTIO_VSOCK_F_STREAM` (stream sockets; without `NO_IMPLIED_STREAM`
//! a driver that does not know the bit gets streams anyway). Not offered:
//! SEQPACKET.
//!
//! The host side (see `docs/vsock.md` for the protocol):
//! - the device listens on a Unix socket at `PATH`; a host client writes
//!   `CONNECT <port>\n`, the device asks the guest (REQUEST from a host port
//!   of its choosing) and answers `OK <host port>\n` or `ERR <reason>\n`;
//! - a guest connection to CID 2, port P connects to the Unix socket
//!   `PATH_P`, or is refused with RST.
//!
//! Module layout: `packet` the header format and its checks, `chain`
//! descriptor chains, `conn` the per-connection state machine and credit
//! accounting, `host` the listener and Unix socket calls, `handshake` the
//! CONNECT line, `muxer` the connection table, inner epoll set, timers and
//! guest packet dispatch, `metrics` the counters.
//!
//! The guest is untrusted: malformed chains are returned unused and counted;
//! headers are checked field by field (a spoofed source or foreign
//! destination is dropped, anything else wrong resets the connection or is
//! answered with RST); data beyond the granted credit resets the
//! connection; the connection table, the RST reply queue and every buffer
//! are bounded. A broken ring puts the device in DEVICE_NEEDS_RESET.

mod chain;
mod conn;
mod handshake;
mod host;
mod metrics;
mod muxer;
mod packet;
#[cfg(test)]
mod test_util;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_flow;
#[cfg(test)]
mod tests_hostile;

use std::os::fd::RawFd;
use std::path::Path;
use std::sync::Arc;

use event_manager::EventSet;
use log::{debug, error};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use self::chain::TxPacket;
use self::metrics::inc;
use self::muxer::Muxer;
use self::packet::HDR_LEN;
use super::queue::{drain_all, setup_queue, signal_used, take_queues, QueueError};
use super::{config_bytes, ActivateContext, IrqTrigger, VirtioDevice, VirtioError};

pub use self::conn::BUF_ALLOC;
pub use self::host::{HostError, MAX_PATH_LEN};
pub use self::metrics::{VsockMetrics, VsockMetricsSnapshot};
pub use self::muxer::{MuxerError, MAX_CONNECTIONS, MAX_HANDSHAKES};
pub use self::packet::{HOST_CID, MAX_PAYLOAD};

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue (device to guest).
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue (guest to device).
pub const TX_QUEUE: usize = 1;
/// Index of the event queue.
pub const EVENT_QUEUE: usize = 2;
/// Feature bit: stream sockets.
const VIRTIO_VSOCK_F_STREAM: u32 = 0;
/// Lowest CID a guest may have (0 and 1 are reserved, 2 is the host).
const MIN_GUEST_CID: u64 = 3;
/// Highest: `u32::MAX` is `VMADDR_CID_ANY`.
const MAX_GUEST_CID: u64 = u32::MAX as u64 - 1;
/// Packets placed per call before the device yields to the event loop.
const RX_BUDGET: usize = 4 * QUEUE_SIZE as usize;

/// Errors of [`Vsock`].
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The CID is reserved or beyond 32 bits.
    #[error("invalid guest CID {0}: must be between {MIN_GUEST_CID} and {MAX_GUEST_CID}")]
    InvalidCid(u64),
    /// The host side could not be set up.
    #[error(transparent)]
    Backend(#[from] MuxerError),
}

/// State that exists only between activation and reset.
#[derive(Debug)]
struct Active {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    irq: Arc<IrqTrigger>,
}

/// A virtio-vsock device bridging to Unix sockets.
#[derive(Debug)]
pub struct Vsock {
    guest_cid: u64,
    muxer: Muxer,
    active: Option<Active>,
    needs_reset: bool,
    metrics: Arc<VsockMetrics>,
    /// Transmit bounce buffer: a header and the largest payload.
    tx_buf: Box<[u8]>,
    /// Host bytes on their way to a receive buffer.
    rx_buf: Box<[u8]>,
    /// Buffers of the receive chain being filled (capacity: a queue).
    rx_segs: Vec<(GuestAddress, usize)>,
}

impl Vsock {
    /// A device for the guest with CID `guest_cid`, listening at `uds_path`
    /// (at most [`MAX_PATH_LEN`] bytes; a live socket there is refused, a
    /// stale one replaced; the socket is removed when the device is
    /// dropped). Guest connections to host port P go to `<uds_path>_P`.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, VsockError> {
        Self::with_capacity(guest_cid, uds_path, MAX_CONNECTIONS)
    }

    /// Like `new`, with a connection table of `capacity` entries.
    fn with_capacity(guest_cid: u64, uds_path: &Path, capacity: usize) -> Result<Self, VsockError> {
        if !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&guest_cid) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        let metrics = Arc::new(VsockMetrics::default());
        let muxer = Muxer::with_capacity(guest_cid, uds_path, metrics.clone(), capacity)?;
        debug!("virtio-vsock: guest CID {guest_cid}, host socket {uds_path:?}");
        Ok(Self {
            guest_cid,
            muxer,
            active: None,
            needs_reset: false,
            metrics,
            tx_buf: vec![0; HDR_LEN + MAX_PAYLOAD].into_boxed_slice(),
            rx_buf: vec![0; MAX_PAYLOAD].into_boxed_slice(),
            rx_segs: Vec::with_capacity(usize::from(QUEUE_SIZE)),
        })
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Where host clients connect.
    pub fn uds_path(&self) -> &Path {
        self.muxer.path()
    }

    /// The device's counters; the handle stays valid after the device has
    /// been handed to a transport.
    pub fn metrics(&self) -> Arc<VsockMetrics> {
        self.metrics.clone()
    }

    fn queue_failed(&mut self, which: &str, e: &QueueError) {
        error!("virtio-vsock: {which} queue error, device needs a reset: {e}");
        inc(&self.metrics.queue_errors, 1);
        self.needs_reset = true;
        // Nothing can reach the guest any more: end every connection.
        self.muxer.reset();
    }

    /// Take the guest's packets, then deliver what they caused.
    fn process_tx(&mut self) {
        if self.needs_reset {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let (muxer, buf, metrics) = (&mut self.muxer, &mut self.tx_buf, &*self.metrics);
        let mem = &active.mem;
        let mut used = false;
        // Transmit chains are only read: their used length is 0.
        let result = drain_all(&mut active.tx, mem, &mut used, |chain, size| {
            match chain::read_tx(chain, mem, size, buf) {
                Ok(TxPacket::Ok { hdr, len }) => {
                    muxer.guest_packet(&hdr, buf.get(HDR_LEN..HDR_LEN + len).unwrap_or_default());
                }
                Ok(TxPacket::BadPayload { hdr, error }) => {
                    debug!("virtio-vsock: transmit chain refused: {error}");
                    inc(&metrics.tx_bad_chains, 1);
                    muxer.refuse_packet(&hdr, true);
                }
                Err(e) => {
                    debug!("virtio-vsock: transmit chain refused: {e}");
                    inc(&metrics.tx_bad_chains, 1);
                }
            }
            0
        });
        signal_used(&mut active.tx, mem, &active.irq, used);
        match result {
            Ok(()) => self.process_rx(),
            Err(e) => self.queue_failed("transmit", &e),
        }
    }

    /// Place packets owed to the guest into its receive buffers.
    fn process_rx(&mut self) {
        if self.needs_reset {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        let result = deliver(
            active,
            &mut self.muxer,
            &mut self.rx_buf,
            &mut self.rx_segs,
            &self.metrics,
            &mut used,
        );
        signal_used(&mut active.rx, &active.mem, &active.irq, used);
        if let Err(e) = result {
            self.queue_failed("receive", &e);
        }
    }
}

/// Fill receive buffers while packets are owed and buffers last, at most
/// `RX_BUDGET` of them (then the muxer is kicked to come back).
fn deliver(
    active: &mut Active,
    muxer: &mut Muxer,
    buf: &mut [u8],
    segs: &mut Vec<(GuestAddress, usize)>,
    metrics: &VsockMetrics,
    used: &mut bool,
) -> Result<(), QueueError> {
    let (queue, mem) = (&mut active.rx, &active.mem);
    let size = queue.size();
    let mut budget = RX_BUDGET;
    while muxer.has_pending() {
        if budget == 0 {
            muxer.kick();
            return Ok(());
        }
        budget -= 1;
        let Some(chain) = queue.iter(mem)?.next() else {
            // Out of buffers: the driver's notification brings us back.
            if queue.enable_notification(mem)? {
                continue;
            }
            inc(&metrics.rx_no_buffers, 1);
            return Ok(());
        };
        let head = chain.head_index();
        let cap = match chain::rx_buffers(chain, mem, size, segs) {
            Ok(cap) => cap,
            Err(e) => {
                debug!("virtio-vsock: receive chain {head} refused: {e}");
                inc(&metrics.rx_bad_chains, 1);
                queue.add_used(mem, head, 0)?;
                *used = true;
                continue;
            }
        };
        let max = (cap - HDR_LEN).min(MAX_PAYLOAD);
        let Some((hdr, len)) = muxer.next_packet(max, buf) else {
            // Nothing after all: the chain stays for the next packet.
            queue.go_to_previous_position();
            return Ok(());
        };
        let payload = buf.get(..len).unwrap_or_default();
        let written = chain::write_rx(mem, segs, &hdr.encode(), payload)?;
        queue.add_used(mem, head, written)?;
        *used = true;
        inc(&metrics.packets_to_guest, 1);
    }
    Ok(())
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn avail_features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX) | (1 << VIRTIO_VSOCK_F_STREAM)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        debug!(
            "virtio-vsock: {}-byte config write at {offset:#x} ignored",
            data.len()
        );
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), VirtioError> {
        // The event queue is never used: the driver may leave it unready.
        let [mut rx, mut tx, _event] = take_queues(ctx.queues)?;
        setup_queue(RX_QUEUE, &mut rx, &ctx.mem, ctx.acked_features)?;
        setup_queue(TX_QUEUE, &mut tx, &ctx.mem, ctx.acked_features)?;
        self.active = Some(Active {
            mem: ctx.mem,
            rx,
            tx,
            irq: ctx.irq,
        });
        self.needs_reset = false;
        self.muxer.activate();
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.needs_reset = false;
        self.muxer.reset();
    }

    fn queue_notify(&mut self, index: usize) {
        match index {
            RX_QUEUE => self.process_rx(),
            TX_QUEUE => self.process_tx(),
            // The event queue is never used.
            _ => {}
        }
    }

    fn backend_fds(&self) -> Vec<RawFd> {
        vec![self.muxer.epoll_fd()]
    }

    fn backend_event(&mut self, _fd: RawFd, _events: EventSet) {
        // Always drained, even before activation: the fd is level-triggered.
        self.muxer.process_events();
        self.process_rx();
    }

    fn needs_reset(&self) -> bool {
        self.needs_reset
    }
}
