//! Transmit: frames from the guest's transmit queue to the backend.
//!
//! Each chain is checked (device-readable, inside guest memory, bounded
//! length and descriptor count) while it is copied into a bounce buffer of
//! the longest packet; the copy's header is then checked against the
//! negotiated features, so the guest cannot change what was checked. Bad
//! chains and refused frames are returned as used and counted. A full
//! backend leaves the chain in the ring for the next attempt.

use std::io;
use std::ops::ControlFlow;

use log::debug;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
};
use virtio_queue::DescriptorChain;
use vm_memory::{GuestMemory, GuestMemoryMmap};

use super::{inc, is_fatal, Active, Net, NetBackend, NetMetrics, ServeError, VNET_HDR_LEN};
use crate::virtio::queue::{
    arm_notification, drain, read_chain, signal_used, ChainError, Copied, Overflow, QueueError,
};

/// Why a chain stays in the ring.
enum Kept {
    /// The backend is full: the chain is sent later.
    Blocked,
    /// The backend is gone.
    Failed(io::Error),
}

/// A chain sent or dropped: returned as used, nothing written to it.
const DONE: ControlFlow<Kept, u32> = ControlFlow::Continue(0);

impl<B: NetBackend> Net<B> {
    /// Send what the guest queued, then interrupt it if (EVENT_IDX
    /// permitting) it wants to hear about the used chains.
    pub(super) fn process_tx(&mut self) {
        if self.needs_reset {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        let result = transmit(
            &mut self.backend,
            active,
            &mut self.tx_buf,
            &mut self.tx_blocked,
            &self.metrics,
            &mut used,
        );
        signal_used(&mut active.tx, &active.mem, &active.irq, used);
        match result {
            Ok(()) => {}
            Err(ServeError::Backend(e)) => self.backend_failed("write", &e),
            Err(e) => self.queue_failed("transmit", &e),
        }
    }
}

/// The standard service loop ([`drain`]); a chain the backend cannot take
/// now, or at all, stays in the ring.
fn transmit<B: NetBackend>(
    backend: &mut B,
    active: &mut Active,
    buf: &mut [u8],
    blocked: &mut bool,
    metrics: &NetMetrics,
    used: &mut bool,
) -> Result<(), ServeError> {
    let acked = active.acked;
    let (queue, mem) = (&mut active.tx, &active.mem);
    let flow = drain(queue, mem, used, |chain, size| {
        send_chain(backend, chain, mem, size, buf, acked, metrics)
    })?;
    match flow {
        ControlFlow::Continue(()) => *blocked = false,
        ControlFlow::Break(Kept::Blocked) => {
            *blocked = true;
            inc(&metrics.tx_blocked, 1);
            // Retried when the backend is writable again, or when the
            // driver adds a chain.
            arm_notification(queue, mem).map_err(QueueError::from)?;
        }
        ControlFlow::Break(Kept::Failed(e)) => return Err(ServeError::Backend(e)),
    }
    Ok(())
}

/// Check one chain and send its frame: `Continue(0)` when it was sent or
/// dropped (it goes back to the driver as used), `Break` when it must stay
/// in the ring.
fn send_chain<B: NetBackend>(
    backend: &mut B,
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    max: u16,
    buf: &mut [u8],
    acked: u64,
    metrics: &NetMetrics,
) -> ControlFlow<Kept, u32> {
    let head = chain.head_index();
    let packet = match gather(chain, mem, max, buf) {
        Ok(len) => buf.get(..len).unwrap_or_default(),
        Err(e) => {
            debug!("virtio-net: transmit chain {head} refused: {e}");
            match e {
                ChainError::TooBig(_) => inc(&metrics.tx_dropped_too_big, 1),
                _ => inc(&metrics.tx_bad_chains, 1),
            }
            return DONE;
        }
    };
    if let Err(why) = check_header(packet, acked) {
        debug!("virtio-net: transmit chain {head} refused: {why}");
        inc(&metrics.tx_dropped_bad_header, 1);
        return DONE;
    }
    loop {
        match backend.write_frame(packet) {
            Ok(_) => {
                inc(&metrics.tx_frames, 1);
                let frame_len = packet.len().saturating_sub(VNET_HDR_LEN);
                inc(&metrics.tx_bytes, u64::try_from(frame_len).unwrap_or(0));
                return DONE;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return ControlFlow::Break(Kept::Blocked)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_fatal(&e) => return ControlFlow::Break(Kept::Failed(e)),
            Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                // The TAP is down: like an unplugged cable.
                inc(&metrics.tx_dropped_link_down, 1);
                return DONE;
            }
            Err(e) => {
                // EINVAL (a header the backend rejects), ENOBUFS, ...
                debug!("virtio-net: backend refused a frame: {e}");
                inc(&metrics.tx_dropped_backend, 1);
                return DONE;
            }
        }
    }
}

/// Copy a transmit chain into `buf`: every descriptor device-readable and
/// inside guest memory, at most `buf.len()` bytes in all (a longer frame is
/// refused whole), at least a header.
fn gather<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    max: u16,
    buf: &mut [u8],
) -> Result<usize, ChainError>
where
    M: std::ops::Deref,
    M::Target: GuestMemory,
{
    let mut c = Copied::default();
    read_chain(chain, mem, max, buf, Overflow::Refuse, &mut c)?;
    if c.copied < VNET_HDR_LEN {
        return Err(ChainError::TooShort {
            have: c.total,
            need: VNET_HDR_LEN,
        });
    }
    Ok(c.copied)
}

/// Refuse headers asking for what was not negotiated.
fn check_header(packet: &[u8], acked: u64) -> Result<(), &'static str> {
    let has = |feature: u32| acked & (1 << feature) != 0;
    let (Some(&flags), Some(&gso)) = (packet.first(), packet.get(1)) else {
        return Err("no header");
    };
    let (flags, gso) = (u32::from(flags), u32::from(gso));
    if flags & !VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
        return Err("flags other than NEEDS_CSUM");
    }
    if flags != 0 && !has(VIRTIO_NET_F_CSUM) {
        return Err("NEEDS_CSUM without VIRTIO_NET_F_CSUM");
    }
    let ecn = gso & VIRTIO_NET_HDR_GSO_ECN != 0;
    let ok = match gso & !VIRTIO_NET_HDR_GSO_ECN {
        VIRTIO_NET_HDR_GSO_NONE => !ecn,
        VIRTIO_NET_HDR_GSO_TCPV4 => has(VIRTIO_NET_F_HOST_TSO4),
        VIRTIO_NET_HDR_GSO_TCPV6 => has(VIRTIO_NET_F_HOST_TSO6),
        _ => false,
    };
    if !ok || (ecn && !has(VIRTIO_NET_F_HOST_ECN)) {
        return Err("GSO type not negotiated");
    }
    Ok(())
}
