//! Queue plumbing shared by the virtio devices: taking the driver's queues
//! at activation, the service loop and interrupt suppression, and walking
//! and checking descriptor chains.
//!
//! The guest is untrusted. Every chain is walked at most a queue's worth of
//! descriptors deep; empty, truncated and looping chains are refused; every
//! descriptor is checked for direction and against guest memory before a
//! byte goes through it; copies go into fixed-size buffers owned by the
//! device and nothing here allocates.
//!
//! What a device does with a chain's contents (block's request layout and
//! status byte, net's frames and offloads, vsock's packet headers) stays in
//! the device.

use std::convert::Infallible;
use std::ops::{ControlFlow, Deref};
use std::sync::atomic::Ordering;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemory, GuestMemoryError, GuestMemoryMmap, Permissions,
};

use super::{IrqTrigger, VirtioError};

/// `VIRTIO_RING_F_EVENT_IDX` as a feature bit.
const EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// The driver's queues as an array of the device's queue count `N`; any
/// other count is refused.
pub(super) fn take_queues<const N: usize>(queues: Vec<Queue>) -> Result<[Queue; N], VirtioError> {
    let got = queues.len();
    <[Queue; N]>::try_from(queues).map_err(|_| VirtioError::QueueCount { expected: N, got })
}

/// Check queue `index`, one the device cannot run without: the driver made
/// it ready and its rings lie inside guest memory. Then let it use
/// EVENT_IDX if the driver accepted the feature.
pub(super) fn setup_queue(
    index: usize,
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    acked_features: u64,
) -> Result<(), VirtioError> {
    if !queue.ready() || !queue.is_valid(mem) {
        return Err(VirtioError::InvalidQueue(index));
    }
    queue.set_event_idx(acked_features & EVENT_IDX != 0);
    Ok(())
}

/// Why a queue cannot be served any more: the device needs a reset.
#[derive(Debug, thiserror::Error)]
pub(super) enum QueueError {
    /// The ring is broken (addresses, indices).
    #[error(transparent)]
    Queue(#[from] virtio_queue::Error),
    /// A checked buffer could not be accessed.
    #[error("guest memory: {0}")]
    Memory(#[from] GuestMemoryError),
    /// The available ring announces chains that cannot be read.
    #[error("the available ring announces chains that cannot be read")]
    Stalled,
}

/// The standard service loop: disable notifications, take at most a
/// queue's worth of chains, re-enable notifications and check again for
/// chains that arrived meanwhile.
///
/// `handle(chain, queue_size)` says what became of each chain:
/// `Continue(len)` returns it as used with `len` bytes written;
/// `Break(why)` puts it back in the ring (untouched from the driver's point
/// of view) and ends the loop with notifications still disabled, returning
/// `Break(why)`. `used` records whether any chain was returned. Announced
/// chains that cannot be taken at all end the loop with
/// [`QueueError::Stalled`] instead of spinning.
pub(super) fn drain<S, F>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    used: &mut bool,
    mut handle: F,
) -> Result<ControlFlow<S>, QueueError>
where
    F: FnMut(DescriptorChain<&GuestMemoryMmap>, u16) -> ControlFlow<S, u32>,
{
    loop {
        queue.disable_notification(mem)?;
        let size = queue.size();
        let mut handled = 0;
        while handled < size {
            // `iter` refuses an available index more than a queue ahead.
            let Some(chain) = queue.iter(mem)?.next() else {
                break;
            };
            let head = chain.head_index();
            let len = match handle(chain, size) {
                ControlFlow::Continue(len) => len,
                ControlFlow::Break(why) => {
                    queue.go_to_previous_position();
                    return Ok(ControlFlow::Break(why));
                }
            };
            queue.add_used(mem, head, len)?;
            *used = true;
            handled += 1;
        }
        if !queue.enable_notification(mem)? {
            return Ok(ControlFlow::Continue(()));
        }
        if handled == 0 {
            // More is announced but nothing could be taken: never spin.
            return Err(QueueError::Stalled);
        }
    }
}

/// [`drain`] for a device that returns every chain: `handle` gives the
/// used length.
pub(super) fn drain_all<F>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    used: &mut bool,
    mut handle: F,
) -> Result<(), QueueError>
where
    F: FnMut(DescriptorChain<&GuestMemoryMmap>, u16) -> u32,
{
    let flow = drain(queue, mem, used, |chain, size| {
        ControlFlow::<Infallible, u32>::Continue(handle(chain, size))
    })?;
    match flow {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(never) => match never {},
    }
}

/// After used buffers were added (`used`), interrupt the driver if it wants
/// to hear about them (EVENT_IDX permitting); when the ring cannot tell,
/// interrupt anyway.
pub(super) fn signal_used(queue: &mut Queue, mem: &GuestMemoryMmap, irq: &IrqTrigger, used: bool) {
    if used && queue.needs_notification(mem).unwrap_or(true) {
        irq.signal_used_queue();
    }
}

/// Enable notifications so that the driver notifies us when it publishes
/// chains beyond those it has published already, even if `next_avail` lags
/// behind them (chains looked at and put back). With EVENT_IDX the plain
/// `enable_notification` would ask for a notification at `next_avail`, which
/// the driver has passed and will not notify for again. Returns true if the
/// driver published more chains meanwhile.
pub(super) fn arm_notification(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
) -> Result<bool, virtio_queue::Error> {
    let next = queue.next_avail();
    let published = queue.avail_idx(mem, Ordering::Acquire)?.0;
    queue.set_next_avail(published);
    let more = queue.enable_notification(mem);
    queue.set_next_avail(next);
    more
}

/// Why a chain was refused by the checks every device makes. Descriptor
/// numbers count from 0 at the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum ChainError {
    /// No descriptor at all (head index out of range, bad indirect table).
    #[error("empty descriptor chain")]
    Empty,
    /// More descriptors than the queue has.
    #[error("descriptor chain longer than {0} descriptors")]
    TooLong(u16),
    /// The chain stops at a descriptor that still has NEXT set: an index out
    /// of range, a loop, a bad or nested indirect table, or more than 4 GiB
    /// in total.
    #[error("descriptor chain is truncated")]
    Truncated,
    /// A descriptor the device must read is device-writable, or the reverse.
    #[error("descriptor {0} has the wrong direction")]
    WrongDirection(usize),
    /// A descriptor points outside guest memory.
    #[error("descriptor {0} is outside guest memory")]
    OutOfMemory(usize),
    /// The buffers gathered for one item (one chain, or the chains of one
    /// received frame) are more than the device's scratch space holds.
    #[error("more than {0} buffers")]
    TooManySegments(usize),
    /// More bytes than the device's bounce buffer holds.
    #[error("longer than {0} bytes")]
    TooBig(usize),
    /// Fewer bytes than the device needs (a header, a header and payload).
    #[error("{have} bytes, fewer than the {need} needed")]
    TooShort {
        /// What the chain holds.
        have: u64,
        /// What the device needs.
        need: usize,
    },
}

/// Which way a descriptor's bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    /// Driver to device: the descriptor must not be device-writable.
    DeviceReads,
    /// Device to driver: the descriptor must be device-writable.
    DeviceWrites,
}

/// What [`read_chain`] does with bytes that do not fit the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Overflow {
    /// Refuse the chain ([`ChainError::TooBig`]) at the first descriptor
    /// that does not fit: the device needs the whole chain.
    Refuse,
    /// Check that they lie inside guest memory, do not copy them: the
    /// device needs no more than the buffer holds.
    Skip,
}

/// How much of a chain [`read_chain`] took.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Copied {
    /// Bytes copied to the start of the buffer.
    pub copied: usize,
    /// Bytes the descriptors walked so far hold (saturating).
    pub total: u64,
}

/// Walk `chain`, calling `f(number, descriptor)` on each of at most `max`
/// descriptors; refuse empty and truncated chains. Bounded work: the chain
/// iterator itself stops after a queue's worth of descriptors.
pub(super) fn walk<M, F>(chain: DescriptorChain<M>, max: u16, mut f: F) -> Result<(), ChainError>
where
    M: Deref,
    M::Target: GuestMemory,
    F: FnMut(usize, &Descriptor) -> Result<(), ChainError>,
{
    let mut last: Option<Descriptor> = None;
    for (i, d) in chain.enumerate() {
        if i >= usize::from(max) {
            return Err(ChainError::TooLong(max));
        }
        f(i, &d)?;
        last = Some(d);
    }
    match last {
        None => Err(ChainError::Empty),
        // The chain iterator stops silently on a bad next index, a bad
        // indirect table, and after a queue's worth of descriptors (loops):
        // the last one then still points further.
        Some(d) if d.has_next() => Err(ChainError::Truncated),
        Some(_) => Ok(()),
    }
}

/// Refuse descriptor `i` unless its bytes go in direction `dir`.
pub(super) fn check_direction(i: usize, d: &Descriptor, dir: Direction) -> Result<(), ChainError> {
    if d.is_write_only() != (dir == Direction::DeviceWrites) {
        return Err(ChainError::WrongDirection(i));
    }
    Ok(())
}

/// Check descriptor `i` before the device accesses it in direction `dir`:
/// the right direction and, unless it is empty, all of it inside guest
/// memory. Returns its length.
pub(super) fn check_buffer(
    mem: &GuestMemoryMmap,
    i: usize,
    d: &Descriptor,
    dir: Direction,
) -> Result<usize, ChainError> {
    check_direction(i, d, dir)?;
    if d.len() == 0 {
        return Ok(0);
    }
    let len = usize::try_from(d.len()).map_err(|_| ChainError::OutOfMemory(i))?;
    let access = match dir {
        Direction::DeviceReads => Permissions::Read,
        Direction::DeviceWrites => Permissions::Write,
    };
    if !mem.check_range(d.addr(), len, access) {
        return Err(ChainError::OutOfMemory(i));
    }
    Ok(len)
}

/// Check a chain the device writes to: every descriptor device-writable and
/// inside guest memory. Its non-empty buffers (address, length) are
/// appended to `segs`, at most `limit` entries in all, so `segs` never grows
/// beyond a capacity of `limit`. Returns the chain's capacity in bytes.
pub(super) fn writable_buffers<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    max: u16,
    segs: &mut Vec<(GuestAddress, usize)>,
    limit: usize,
) -> Result<usize, ChainError>
where
    M: Deref,
    M::Target: GuestMemory,
{
    let mut cap = 0usize;
    walk(chain, max, |i, d| {
        let len = check_buffer(mem, i, d, Direction::DeviceWrites)?;
        if len == 0 {
            return Ok(());
        }
        if segs.len() >= limit {
            return Err(ChainError::TooManySegments(limit));
        }
        segs.push((d.addr(), len));
        cap = cap.saturating_add(len);
        Ok(())
    })?;
    Ok(cap)
}

/// Copy a chain the device reads into the start of `buf`, once, so the
/// guest cannot change it after it was checked: every descriptor
/// device-readable and inside guest memory. Bytes beyond `buf` are handled
/// as `overflow` says. `out` tells how far the copy got, also when the
/// chain is refused part-way.
pub(super) fn read_chain<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    max: u16,
    buf: &mut [u8],
    overflow: Overflow,
    out: &mut Copied,
) -> Result<(), ChainError>
where
    M: Deref,
    M::Target: GuestMemory,
{
    *out = Copied::default();
    let cap = buf.len();
    walk(chain, max, |i, d| {
        check_direction(i, d, Direction::DeviceReads)?;
        let len = usize::try_from(d.len()).map_err(|_| ChainError::OutOfMemory(i))?;
        let room = cap.saturating_sub(out.copied);
        if len > room && overflow == Overflow::Refuse {
            return Err(ChainError::TooBig(cap));
        }
        let take = len.min(room);
        if take > 0 {
            let dst = buf
                .get_mut(out.copied..out.copied + take)
                .ok_or(ChainError::OutOfMemory(i))?;
            mem.read_slice(dst, d.addr())
                .map_err(|_| ChainError::OutOfMemory(i))?;
        }
        if take < len {
            let rest = u64::try_from(take)
                .ok()
                .and_then(|t| d.addr().checked_add(t))
                .ok_or(ChainError::OutOfMemory(i))?;
            if !mem.check_range(rest, len - take, Permissions::Read) {
                return Err(ChainError::OutOfMemory(i));
            }
        }
        out.copied += take;
        out.total = out.total.saturating_add(u64::from(d.len()));
        Ok(())
    })
}
