//! Descriptor chain walking and notification arming, shared by the receive
//! and transmit paths.

use std::ops::Deref;
use std::sync::atomic::Ordering;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{GuestMemory, GuestMemoryMmap};

/// Why a chain was refused. Descriptor numbers count from 0 at the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum ChainError {
    /// No descriptor at all (head index out of range, bad indirect table).
    #[error("empty descriptor chain")]
    Empty,
    /// More descriptors than the queue has.
    #[error("descriptor chain longer than {0} descriptors")]
    TooLong(u16),
    /// The chain stops at a descriptor that still has NEXT set: an index out
    /// of range, a loop, or a bad or nested indirect table.
    #[error("descriptor chain is truncated")]
    Truncated,
    /// A descriptor the device must read is device-writable, or the reverse.
    #[error("descriptor {0} has the wrong direction")]
    WrongDirection(usize),
    /// A descriptor points outside guest memory.
    #[error("descriptor {0} is outside guest memory")]
    OutOfMemory(usize),
    /// Receive: the chains taken for one frame have more buffers than the
    /// queue has descriptors.
    #[error("more than {0} buffers for one frame")]
    TooManySegments(usize),
    /// Transmit: more bytes than the longest packet.
    #[error("longer than {0} bytes")]
    TooBig(usize),
    /// Fewer bytes than the virtio header.
    #[error("shorter than the {0}-byte header")]
    TooShort(usize),
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
        // The chain iterator stops silently on a bad next index and after a
        // queue's worth of descriptors (loops): the last one then still
        // points further.
        Some(d) if d.has_next() => Err(ChainError::Truncated),
        Some(_) => Ok(()),
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
