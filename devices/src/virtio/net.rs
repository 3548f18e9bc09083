//! virtio-net over a host backend, normally a Linux TAP ([`crate::tap::Tap`]).
//!
//! Two queues of [`QUEUE_SIZE`] entries: receive (index 0) and transmit
//! (index 1); no control queue, no multiqueue. Every frame on either queue is
//! preceded by a 12-byte `virtio_net_hdr_v1`, and the TAP is set up to use
//! the same header, so headers pass through (checked, see below) unchanged.
//!
//! Offered features and why:
//! - `VIRTIO_F_VERSION_1`, `VIRTIO_RING_F_EVENT_IDX`: modern device, fewer
//!   notifications and interrupts.
//! - `VIRTIO_NET_F_MAC`, `VIRTIO_NET_F_STATUS`: the MAC the VMM chose and a
//!   link that is always up.
//! - `VIRTIO_NET_F_MRG_RXBUF`: a large frame may span several small receive
//!   buffers, so a guest does not have to post 64 KiB buffers for TSO.
//! - `VIRTIO_NET_F_CSUM`, `HOST_TSO4`, `HOST_TSO6`, `HOST_ECN`: the guest may
//!   send partially checksummed and TCP-segmentation-offloaded frames. A TAP
//!   opened with `IFF_VNET_HDR` always accepts those.
//! - `VIRTIO_NET_F_GUEST_CSUM`, `GUEST_TSO4`, `GUEST_TSO6`, `GUEST_ECN`: only
//!   if the backend accepted the matching `TUN_F_*` flags when it was opened
//!   ([`NetBackend::supported_offloads`]). On activation the backend is told
//!   to use exactly what the guest accepted (`TUNSETOFFLOAD`), nothing more.
//! - Not offered: UFO in either direction (Linux stopped generating UFO in
//!   4.14 and the TAP ignores `TUN_F_UFO`), USO, `MTU` (the TAP's MTU may
//!   change under us; the guest's default of 1500 matches a new TAP), control
//!   queue, multiqueue, indirect descriptors.
//!
//! Receive: when the backend is readable or the guest adds receive buffers,
//! frames are read one at a time and copied into the guest's buffers (see
//! `net/rx.rs`). At most one frame waits in the device when the guest has no
//! buffers; reading stops until the guest adds some (its queue notification
//! resumes it). The backend fd is watched edge-triggered
//! ([`VirtioDevice::backend_event_set`]), so a TAP left readable does not
//! wake the event loop again and again.
//!
//! Transmit: on a queue notification each chain is validated and copied into
//! a bounded buffer, its header checked against the negotiated features, and
//! the frame written to the backend (see `net/tx.rs`). A full backend (`EAGAIN`)
//! leaves the chain in the ring until the backend is writable again or the
//! guest notifies.
//!
//! The guest is untrusted: bad chains are returned unused and counted, a bad
//! ring puts the device in DEVICE_NEEDS_RESET, and so does a backend that
//! disappeared. Nothing is allocated after construction.

mod rx;
#[cfg(test)]
mod tap_tests;
#[cfg(test)]
mod test_util;
#[cfg(test)]
mod tests;
mod tx;

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use event_manager::EventSet;
use log::{debug, error};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::queue::{setup_queue, take_queues, QueueError};
use super::{config_bytes, ActivateContext, IrqTrigger, VirtioDevice, VirtioError};
use crate::tap::{Tap, VNET_HDR_LEN};

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// Longest frame (Ethernet header and payload, no virtio header) carried in
/// either direction: a 64 KiB TSO frame with its headers.
pub const MAX_FRAME_LEN: usize = 65550;
/// Longest buffer on the wire between device and backend: header and frame.
const MAX_PACKET_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;
/// The config space: mac (6 bytes), status (le16), max_virtqueue_pairs (le16).
const CONFIG_LEN: usize = 10;

/// Errors of [`Net`].
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The MAC is multicast or all zeros.
    #[error("invalid MAC address {}: multicast or all zeros", format_mac(.0))]
    InvalidMac([u8; 6]),
    /// A MAC string is not six hex bytes separated by colons.
    #[error("cannot parse MAC address {0:?} (expected xx:xx:xx:xx:xx:xx)")]
    ParseMac(String),
    /// No random bytes for a MAC.
    #[error("cannot read random bytes for a MAC address: {0}")]
    Random(#[source] io::Error),
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = *mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// Parse `aa:bb:cc:dd:ee:ff` into a MAC usable by a device.
pub fn parse_mac(s: &str) -> Result<[u8; 6], NetError> {
    let bad = || NetError::ParseMac(s.to_owned());
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts
            .next()
            .filter(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(bad)?;
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    check_mac(mac)
}

/// A random locally administered unicast MAC.
pub fn random_mac() -> Result<[u8; 6], NetError> {
    let mut mac = [0u8; 6];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut mac))
        .map_err(NetError::Random)?;
    mac[0] = (mac[0] & !0x01) | 0x02;
    Ok(mac)
}

fn check_mac(mac: [u8; 6]) -> Result<[u8; 6], NetError> {
    if mac[0] & 0x01 != 0 || mac == [0; 6] {
        return Err(NetError::InvalidMac(mac));
    }
    Ok(mac)
}

/// What the device needs from the host side of the link: a TAP in
/// production, a fake in tests. Reads and writes carry one frame each,
/// preceded by a 12-byte `virtio_net_hdr_v1`, and never block.
pub trait NetBackend: AsRawFd + Send {
    /// Read one frame into `buf`; `WouldBlock` when none is queued. A result
    /// of `buf.len()` or more means the frame did not fit.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Write one frame; `WouldBlock` when the backend is full.
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize>;
    /// The `TUN_F_*` offloads the backend can hand to the guest.
    fn supported_offloads(&self) -> u32;
    /// Hand the guest frames with exactly the `TUN_F_*` offloads in `flags`.
    fn set_offloads(&mut self, flags: u32) -> io::Result<()>;
}

impl NetBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file().read(buf)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.file().write(frame)
    }

    fn supported_offloads(&self) -> u32 {
        Tap::supported_offloads(self)
    }

    fn set_offloads(&mut self, flags: u32) -> io::Result<()> {
        Tap::set_offloads(self, flags).map_err(io::Error::other)
    }
}

/// Counters of one network device. Relaxed atomics: each is exact, together
/// they are not a snapshot of one instant.
#[derive(Debug, Default)]
pub struct NetMetrics {
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    tx_frames: AtomicU64,
    tx_bytes: AtomicU64,
    rx_dropped_too_big: AtomicU64,
    rx_dropped_bad_chain: AtomicU64,
    rx_dropped_malformed: AtomicU64,
    rx_dropped_offload: AtomicU64,
    rx_bad_chains: AtomicU64,
    rx_no_buffers: AtomicU64,
    tx_bad_chains: AtomicU64,
    tx_dropped_too_big: AtomicU64,
    tx_dropped_bad_header: AtomicU64,
    tx_dropped_backend: AtomicU64,
    tx_dropped_link_down: AtomicU64,
    tx_blocked: AtomicU64,
    backend_errors: AtomicU64,
    queue_errors: AtomicU64,
}

/// A copy of [`NetMetrics`] at one time.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetMetricsSnapshot {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes of those frames (without the virtio header).
    pub rx_bytes: u64,
    /// Frames sent to the backend.
    pub tx_frames: u64,
    /// Bytes of those frames (without the virtio header).
    pub tx_bytes: u64,
    /// Received frames larger than the guest's buffers could ever hold
    /// (without MRG_RXBUF: than the next buffer).
    pub rx_dropped_too_big: u64,
    /// Received frames dropped because a malformed buffer interrupted them.
    pub rx_dropped_bad_chain: u64,
    /// Received frames the backend delivered too short or too long.
    pub rx_dropped_malformed: u64,
    /// Received frames using an offload the guest did not accept.
    pub rx_dropped_offload: u64,
    /// Malformed receive chains returned unused.
    pub rx_bad_chains: u64,
    /// Times reception paused because the guest had no buffers.
    pub rx_no_buffers: u64,
    /// Malformed transmit chains (direction, range, loop, length, count).
    pub tx_bad_chains: u64,
    /// Transmitted frames above the maximum frame length.
    pub tx_dropped_too_big: u64,
    /// Transmitted frames whose header asks for something not negotiated.
    pub tx_dropped_bad_header: u64,
    /// Transmitted frames the backend refused.
    pub tx_dropped_backend: u64,
    /// Transmitted frames dropped because the TAP was down (`EIO`).
    pub tx_dropped_link_down: u64,
    /// Times the backend was full and transmission waited.
    pub tx_blocked: u64,
    /// Backend failures that put the device in DEVICE_NEEDS_RESET.
    pub backend_errors: u64,
    /// Ring failures that put the device in DEVICE_NEEDS_RESET.
    pub queue_errors: u64,
}

impl NetMetrics {
    /// Read all counters.
    pub fn snapshot(&self) -> NetMetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetMetricsSnapshot {
            rx_frames: get(&self.rx_frames),
            rx_bytes: get(&self.rx_bytes),
            tx_frames: get(&self.tx_frames),
            tx_bytes: get(&self.tx_bytes),
            rx_dropped_too_big: get(&self.rx_dropped_too_big),
            rx_dropped_bad_chain: get(&self.rx_dropped_bad_chain),
            rx_dropped_malformed: get(&self.rx_dropped_malformed),
            rx_dropped_offload: get(&self.rx_dropped_offload),
            rx_bad_chains: get(&self.rx_bad_chains),
            rx_no_buffers: get(&self.rx_no_buffers),
            tx_bad_chains: get(&self.tx_bad_chains),
            tx_dropped_too_big: get(&self.tx_dropped_too_big),
            tx_dropped_bad_header: get(&self.tx_dropped_bad_header),
            tx_dropped_backend: get(&self.tx_dropped_backend),
            tx_dropped_link_down: get(&self.tx_dropped_link_down),
            tx_blocked: get(&self.tx_blocked),
            backend_errors: get(&self.backend_errors),
            queue_errors: get(&self.queue_errors),
        }
    }
}

fn inc(c: &AtomicU64, by: u64) {
    c.fetch_add(by, Ordering::Relaxed);
}

/// Bit `bit` of a feature word.
const fn bit(bit: u32) -> u64 {
    1 << bit
}

/// The features offered on a backend that supports the `TUN_F_*` offloads
/// in `offloads` towards the guest.
fn offered_features(offloads: u32) -> u64 {
    let mut f = bit(VIRTIO_F_VERSION_1)
        | bit(VIRTIO_RING_F_EVENT_IDX)
        | bit(VIRTIO_NET_F_MAC)
        | bit(VIRTIO_NET_F_STATUS)
        | bit(VIRTIO_NET_F_MRG_RXBUF)
        | bit(VIRTIO_NET_F_CSUM)
        | bit(VIRTIO_NET_F_HOST_TSO4)
        | bit(VIRTIO_NET_F_HOST_TSO6)
        | bit(VIRTIO_NET_F_HOST_ECN);
    if offloads & libc::TUN_F_CSUM != 0 {
        f |= bit(VIRTIO_NET_F_GUEST_CSUM);
        if offloads & libc::TUN_F_TSO4 != 0 {
            f |= bit(VIRTIO_NET_F_GUEST_TSO4);
        }
        if offloads & libc::TUN_F_TSO6 != 0 {
            f |= bit(VIRTIO_NET_F_GUEST_TSO6);
        }
        let tso = bit(VIRTIO_NET_F_GUEST_TSO4) | bit(VIRTIO_NET_F_GUEST_TSO6);
        if offloads & libc::TUN_F_TSO_ECN != 0 && f & tso != 0 {
            f |= bit(VIRTIO_NET_F_GUEST_ECN);
        }
    }
    f
}

/// The `TUN_F_*` offloads matching the guest's accepted features, honouring
/// the dependencies (TSO needs CSUM, ECN needs TSO) even if the guest did not.
fn backend_offloads(acked: u64) -> u32 {
    let has = |b: u32| acked & bit(b) != 0;
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut t = libc::TUN_F_CSUM;
    if has(VIRTIO_NET_F_GUEST_TSO4) {
        t |= libc::TUN_F_TSO4;
    }
    if has(VIRTIO_NET_F_GUEST_TSO6) {
        t |= libc::TUN_F_TSO6;
    }
    if has(VIRTIO_NET_F_GUEST_ECN) && t & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0 {
        t |= libc::TUN_F_TSO_ECN;
    }
    t
}

/// Whether a write error means the backend is gone (`EBADFD`: the TAP was
/// deleted; a broken descriptor) rather than a refused frame. `EIO` is not
/// among them: a TAP answers it while administratively down, and traffic
/// resumes when it comes back up.
fn is_fatal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADFD | libc::EBADF | libc::ENODEV | libc::ENXIO | libc::EPIPE)
    )
}

/// Why the receive or transmit queue stopped being served for good.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    /// The ring is broken.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The backend failed.
    #[error("{0}")]
    Backend(io::Error),
}

/// State that exists only between activation and reset.
#[derive(Debug)]
struct Active {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    irq: Arc<IrqTrigger>,
    acked: u64,
}

impl Active {
    fn has(&self, feature: u32) -> bool {
        self.acked & bit(feature) != 0
    }
}

/// A virtio network device on backend `B`.
pub struct Net<B: NetBackend = Tap> {
    backend: B,
    avail_features: u64,
    config: [u8; CONFIG_LEN],
    active: Option<Active>,
    needs_reset: bool,
    metrics: Arc<NetMetrics>,
    /// A frame read from the backend and not yet placed: its length in
    /// `rx_buf`. At most one.
    rx_pending: Option<usize>,
    /// Receive bounce buffer: one byte more than the longest packet, so an
    /// oversized one shows as filling it.
    rx_buf: Box<[u8]>,
    rx_scratch: rx::Scratch,
    /// Transmit bounce buffer: the longest packet.
    tx_buf: Box<[u8]>,
    /// The backend refused a frame with `EAGAIN`; it stays in the ring.
    tx_blocked: bool,
}

impl<B: NetBackend> std::fmt::Debug for Net<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("mac", &format_mac(&self.mac()))
            .field("avail_features", &self.avail_features)
            .field("active", &self.active.is_some())
            .field("needs_reset", &self.needs_reset)
            .field("rx_pending", &self.rx_pending)
            .field("tx_blocked", &self.tx_blocked)
            .finish_non_exhaustive()
    }
}

impl<B: NetBackend> Net<B> {
    /// A network device with address `mac` (see [`random_mac`],
    /// [`parse_mac`]) on `backend`.
    pub fn new(backend: B, mac: [u8; 6]) -> Result<Self, NetError> {
        let mac = check_mac(mac)?;
        let avail_features = offered_features(backend.supported_offloads());
        let mut config = [0u8; CONFIG_LEN];
        config[0..6].copy_from_slice(&mac);
        let link_up = u16::try_from(VIRTIO_NET_S_LINK_UP).unwrap_or(1);
        config[6..8].copy_from_slice(&link_up.to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        debug!(
            "virtio-net: mac {}, features {avail_features:#x}",
            format_mac(&mac)
        );
        Ok(Self {
            backend,
            avail_features,
            config,
            active: None,
            needs_reset: false,
            metrics: Arc::default(),
            rx_pending: None,
            rx_buf: vec![0; MAX_PACKET_LEN + 1].into_boxed_slice(),
            rx_scratch: rx::Scratch::new(usize::from(QUEUE_SIZE)),
            tx_buf: vec![0; MAX_PACKET_LEN].into_boxed_slice(),
            tx_blocked: false,
        })
    }

    /// The device's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        let mut mac = [0; 6];
        mac.copy_from_slice(&self.config[0..6]);
        mac
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The device's counters; the handle stays valid after the device has
    /// been handed to a transport.
    pub fn metrics(&self) -> Arc<NetMetrics> {
        self.metrics.clone()
    }

    /// The backend failed for good: stop using it until the driver resets
    /// the device.
    fn backend_failed(&mut self, what: &str, e: &io::Error) {
        if !self.needs_reset {
            error!("virtio-net: backend {what} failed, device needs a reset: {e}");
        }
        inc(&self.metrics.backend_errors, 1);
        self.needs_reset = true;
    }

    /// The guest broke a ring: stop until the driver resets the device.
    fn queue_failed(&mut self, which: &str, e: &dyn std::fmt::Display) {
        error!("virtio-net: {which} queue error, device needs a reset: {e}");
        inc(&self.metrics.queue_errors, 1);
        self.needs_reset = true;
    }
}

impl<B: NetBackend> VirtioDevice for Net<B> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The MAC is read-only for a modern driver (no CTRL_MAC_ADDR).
        debug!(
            "virtio-net: {}-byte config write at {offset:#x} ignored",
            data.len()
        );
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), VirtioError> {
        let [mut rx, mut tx] = take_queues(ctx.queues)?;
        setup_queue(RX_QUEUE, &mut rx, &ctx.mem, ctx.acked_features)?;
        setup_queue(TX_QUEUE, &mut tx, &ctx.mem, ctx.acked_features)?;
        self.backend
            .set_offloads(backend_offloads(ctx.acked_features))?;
        self.active = Some(Active {
            mem: ctx.mem,
            rx,
            tx,
            irq: ctx.irq,
            acked: ctx.acked_features,
        });
        self.needs_reset = false;
        self.rx_pending = None;
        self.tx_blocked = false;
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.needs_reset = false;
        // A pending frame was read for the old driver's offload settings.
        self.rx_pending = None;
        self.tx_blocked = false;
        if let Err(e) = self.backend.set_offloads(0) {
            debug!("virtio-net: cannot clear backend offloads on reset: {e}");
        }
    }

    fn queue_notify(&mut self, index: usize) {
        match index {
            RX_QUEUE => self.process_rx(),
            TX_QUEUE => self.process_tx(),
            _ => {}
        }
    }

    fn backend_fds(&self) -> Vec<RawFd> {
        vec![self.backend.as_raw_fd()]
    }

    fn backend_event_set(&self, _fd: RawFd) -> EventSet {
        // Edge-triggered: reception pauses with frames still queued when the
        // guest has no buffers, and resumes on the guest's notification.
        EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED
    }

    fn backend_event(&mut self, _fd: RawFd, events: EventSet) {
        if self.active.is_none() {
            // Before activation (or after a reset) frames stay in the
            // backend; with edge-triggered events that costs nothing.
            return;
        }
        if self.tx_blocked && events.contains(EventSet::OUT) {
            self.process_tx();
        }
        if events.intersects(EventSet::IN | EventSet::ERROR | EventSet::HANG_UP) {
            self.process_rx();
        }
    }

    fn needs_reset(&self) -> bool {
        self.needs_reset
    }
}
