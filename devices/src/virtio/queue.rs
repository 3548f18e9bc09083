//! Queue plumbing shared by the virtio devices: taking the driver's queues
//! at activation.
//!
//! What a device does with a chain's contents (block's request layout and
//! status byte, net's frames and offloads, vsock's packet headers) stays in
//! the device.

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::VirtioError;

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
