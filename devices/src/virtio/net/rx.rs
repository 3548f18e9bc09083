//! Receive: frames from the backend into the guest's receive queue.
//!
//! A frame is read into a bounce buffer, its header checked against what the
//! driver accepted, then chains are taken from the receive queue until they
//! can hold it: one chain without `VIRTIO_NET_F_MRG_RXBUF`, as many as needed
//! with it (`num_buffers` tells the driver how many). Every chain is checked
//! as a whole (device-writable, inside guest memory, bounded length) before
//! a byte is written. Chains taken for a frame that cannot be placed yet are
//! put back in the ring, untouched from the driver's point of view.

use std::io;

use log::debug;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_HDR_F_DATA_VALID,
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{inc, Active, Net, NetBackend, NetMetrics, ServeError, VNET_HDR_LEN};
use crate::virtio::queue::{
    arm_notification, signal_used, writable_buffers, ChainError, QueueError,
};

/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;

/// Scratch space for placing one frame, allocated once and never grown:
/// each vector holds at most `limit` (the largest queue size) entries.
#[derive(Debug)]
pub(super) struct Scratch {
    /// Writable buffers (address, length) of the chains taken for the frame.
    segs: Vec<(GuestAddress, usize)>,
    /// Chains taken for the frame: head index and end of their buffers in
    /// `segs`.
    chains: Vec<(u16, usize)>,
    /// Used-ring entries (head, length) to add, in order.
    used: Vec<(u16, u32)>,
    limit: usize,
}

impl Scratch {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            segs: Vec::with_capacity(limit),
            chains: Vec::with_capacity(limit),
            used: Vec::with_capacity(limit),
            limit,
        }
    }
}

/// What became of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placed {
    /// Written to the guest.
    Delivered,
    /// Not enough buffers yet: the frame waits.
    NoBuffers,
    /// Larger than the guest's buffers can hold: dropped.
    TooBig,
    /// A malformed chain interrupted a multi-buffer frame: dropped.
    BadChain,
}

impl<B: NetBackend> Net<B> {
    /// Move frames from the backend to the guest until the backend is empty
    /// or the guest out of buffers, then interrupt the guest if (EVENT_IDX
    /// permitting) it wants to hear about the used buffers.
    pub(super) fn process_rx(&mut self) {
        if self.needs_reset {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        let result = receive(
            &mut self.backend,
            active,
            &mut self.rx_pending,
            &mut self.rx_buf,
            &mut self.rx_scratch,
            &self.metrics,
            &mut used,
        );
        signal_used(&mut active.rx, &active.mem, &active.irq, used);
        match result {
            Ok(()) => {}
            Err(ServeError::Backend(e)) => self.backend_failed("read", &e),
            Err(e) => self.queue_failed("receive", &e),
        }
    }
}

fn receive<B: NetBackend>(
    backend: &mut B,
    active: &mut Active,
    pending: &mut Option<usize>,
    buf: &mut [u8],
    scratch: &mut Scratch,
    metrics: &NetMetrics,
    used: &mut bool,
) -> Result<(), ServeError> {
    let mrg = active.has(VIRTIO_NET_F_MRG_RXBUF);
    loop {
        let len = match *pending {
            Some(len) => len,
            None => {
                let Some(len) = read_frame(backend, buf)? else {
                    return Ok(());
                };
                if len < VNET_HDR_LEN || len >= buf.len() {
                    // Shorter than a header, or filling the whole buffer
                    // (one byte more than the longest packet): cut short.
                    debug!("virtio-net: dropping a {len}-byte packet from the backend");
                    inc(&metrics.rx_dropped_malformed, 1);
                    continue;
                }
                if !buf
                    .get_mut(..len)
                    .is_some_and(|p| sanitize_header(p, active))
                {
                    inc(&metrics.rx_dropped_offload, 1);
                    continue;
                }
                *pending = Some(len);
                len
            }
        };
        let Some(packet) = buf.get_mut(..len) else {
            *pending = None;
            continue;
        };
        let (placed, any_used) = place(&mut active.rx, &active.mem, packet, mrg, scratch, metrics)?;
        *used |= any_used;
        if placed != Placed::NoBuffers {
            *pending = None;
        }
        match placed {
            Placed::Delivered => {
                inc(&metrics.rx_frames, 1);
                inc(
                    &metrics.rx_bytes,
                    u64::try_from(len.saturating_sub(VNET_HDR_LEN)).unwrap_or(0),
                );
            }
            Placed::TooBig => {
                debug!("virtio-net: dropping a {len}-byte packet larger than the guest's buffers");
                inc(&metrics.rx_dropped_too_big, 1);
            }
            Placed::BadChain => inc(&metrics.rx_dropped_bad_chain, 1),
            Placed::NoBuffers => {
                inc(&metrics.rx_no_buffers, 1);
                // Stop reading; the driver's notification brings us back.
                if !arm_notification(&mut active.rx, &active.mem).map_err(QueueError::from)? {
                    return Ok(());
                }
            }
        }
    }
}

/// Read one packet; `None` when the backend has none.
fn read_frame<B: NetBackend>(backend: &mut B, buf: &mut [u8]) -> Result<Option<usize>, ServeError> {
    loop {
        match backend.read_frame(buf) {
            Ok(len) => return Ok(Some(len)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A read that fails for any other reason fails again: treating
            // it as a dropped frame could spin.
            Err(e) => return Err(ServeError::Backend(e)),
        }
    }
}

/// Make the header say only what the driver accepted: refuse offloads it did
/// not negotiate, clear flags it may not see. Returns false to drop.
fn sanitize_header(packet: &mut [u8], active: &Active) -> bool {
    let (Some(&flags), Some(&gso)) = (packet.first(), packet.get(1)) else {
        return false;
    };
    let (flags, gso) = (u32::from(flags), u32::from(gso));
    let new_flags = if active.has(VIRTIO_NET_F_GUEST_CSUM) {
        flags & (VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID)
    } else if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
        debug!("virtio-net: dropping a partially checksummed frame (no GUEST_CSUM)");
        return false;
    } else {
        0
    };
    let ecn = gso & VIRTIO_NET_HDR_GSO_ECN != 0;
    let gso_ok = match gso & !VIRTIO_NET_HDR_GSO_ECN {
        VIRTIO_NET_HDR_GSO_NONE => !ecn,
        VIRTIO_NET_HDR_GSO_TCPV4 => active.has(VIRTIO_NET_F_GUEST_TSO4),
        VIRTIO_NET_HDR_GSO_TCPV6 => active.has(VIRTIO_NET_F_GUEST_TSO6),
        _ => false,
    } && (!ecn || active.has(VIRTIO_NET_F_GUEST_ECN));
    if !gso_ok {
        debug!("virtio-net: dropping a frame with GSO type {gso:#x} the driver did not accept");
        return false;
    }
    if let Some(f) = packet.first_mut() {
        // The mask keeps bits 0 and 1 only.
        *f = u8::try_from(new_flags).unwrap_or(0);
    }
    true
}

/// Place `packet` (header and frame) into chains of `queue`.
/// Returns what happened and whether used-ring entries were added.
fn place(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    packet: &mut [u8],
    mrg: bool,
    s: &mut Scratch,
    metrics: &NetMetrics,
) -> Result<(Placed, bool), QueueError> {
    s.segs.clear();
    s.chains.clear();
    s.used.clear();
    let need = packet.len();
    let size = queue.size();
    let start = queue.next_avail();
    let mut have = 0usize;
    let mut taken: u16 = 0;
    // Malformed chains ahead of any good one: returned unused, skipped.
    let mut skipped: u16 = 0;
    let mut outcome = None;
    {
        let mut iter = queue.iter(mem)?;
        while have < need && (mrg || s.chains.is_empty()) {
            let Some(chain) = iter.next() else {
                break;
            };
            taken += 1;
            let head = chain.head_index();
            let seg_start = s.segs.len();
            let err = match writable_buffers(chain, mem, size, &mut s.segs, s.limit) {
                Ok(cap) if cap >= VNET_HDR_LEN => {
                    s.chains.push((head, s.segs.len()));
                    have = have.saturating_add(cap);
                    continue;
                }
                Ok(cap) => ChainError::TooShort {
                    have: u64::try_from(cap).unwrap_or(u64::MAX),
                    need: VNET_HDR_LEN,
                },
                Err(e) => e,
            };
            s.segs.truncate(seg_start);
            if let ChainError::TooManySegments(_) = err {
                // Not this chain's fault: the frame needs more buffers than a
                // well-behaved driver can post. Put everything back.
                outcome = Some(Placed::TooBig);
                break;
            }
            debug!("virtio-net: receive chain {head} refused: {err}");
            inc(&metrics.rx_bad_chains, 1);
            if s.chains.is_empty() {
                s.used.push((head, 0));
                skipped += 1;
                continue;
            }
            // The frame's buffers must be consecutive in the used ring and
            // this one cannot be among them: give all back unused.
            s.used.extend(s.chains.iter().map(|&(h, _)| (h, 0)));
            s.used.push((head, 0));
            s.chains.clear();
            outcome = Some(Placed::BadChain);
            break;
        }
    }
    let placed = match outcome {
        Some(Placed::BadChain) => Placed::BadChain,
        Some(other) => {
            queue.set_next_avail(start.wrapping_add(skipped));
            other
        }
        None if have >= need && !s.chains.is_empty() => {
            write_packet(mem, packet, s)?;
            Placed::Delivered
        }
        None => {
            // Put the good chains back for the next frame.
            queue.set_next_avail(start.wrapping_add(skipped));
            if !mrg && !s.chains.is_empty() {
                // Without MRG_RXBUF one buffer must hold the frame.
                Placed::TooBig
            } else if taken - skipped == size {
                // The whole ring holds good buffers and they are too small.
                Placed::TooBig
            } else {
                Placed::NoBuffers
            }
        }
    };
    for &(head, len) in &s.used {
        queue.add_used(mem, head, len)?;
    }
    Ok((placed, !s.used.is_empty()))
}

/// Write `packet` across the chains in `s` (which can hold it), setting
/// `num_buffers`, and record the used entries.
fn write_packet(
    mem: &GuestMemoryMmap,
    packet: &mut [u8],
    s: &mut Scratch,
) -> Result<(), QueueError> {
    // At most a queue's worth of chains: fits.
    let n = u16::try_from(s.chains.len()).unwrap_or(u16::MAX);
    if let Some(field) = packet.get_mut(NUM_BUFFERS_OFFSET..VNET_HDR_LEN) {
        field.copy_from_slice(&n.to_le_bytes());
    }
    let mut off = 0usize;
    let mut seg_start = 0usize;
    for &(head, seg_end) in &s.chains {
        let mut written = 0usize;
        for &(addr, len) in s.segs.get(seg_start..seg_end).unwrap_or(&[]) {
            let Some(rest) = packet.get(off..).filter(|r| !r.is_empty()) else {
                break;
            };
            let chunk = rest.get(..len.min(rest.len())).unwrap_or(rest);
            mem.write_slice(chunk, addr)?;
            off += chunk.len();
            written += chunk.len();
        }
        seg_start = seg_end;
        // At most the packet length: fits.
        s.used
            .push((head, u32::try_from(written).unwrap_or(u32::MAX)));
    }
    Ok(())
}
