//! Virtio devices and the virtio-mmio transport.
//!
//! A device model implements [`VirtioDevice`]: what it offers (type, features,
//! queues, config space) and what it does once the driver has set it up. The
//! transport ([`mmio::MmioTransport`]) owns everything the virtio spec puts
//! between the two: the register file, feature negotiation, the device status
//! state machine, queue configuration, the queue notification event fds and
//! the interrupt status. It activates the device on DRIVER_OK and resets it
//! when the driver writes 0 to the status register.

pub mod block;
pub mod mmio;
pub mod net;
mod queue;
#[cfg(test)]
mod test_util;
pub mod vsock;

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use event_manager::EventSet;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Bit in the interrupt status register: a queue has new used buffers.
pub const VIRTIO_MMIO_INT_VRING: u32 = 0x01;
/// Bit in the interrupt status register: the configuration space changed.
pub const VIRTIO_MMIO_INT_CONFIG: u32 = 0x02;

/// Errors of device activation.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// The driver configured a different number of queues than the device has.
    #[error("device expects {expected} queues, the driver set up {got}")]
    QueueCount {
        /// Queues the device has.
        expected: usize,
        /// Queues the driver made ready.
        got: usize,
    },
    /// A queue's rings lie outside guest memory or its size is invalid.
    #[error("queue {0} is not valid (size or ring addresses)")]
    InvalidQueue(usize),
    /// The backend could not be prepared (file, socket, TAP).
    #[error("device backend: {0}")]
    Backend(#[from] std::io::Error),
}

/// Copy the part of `config` (a device's config space) at `offset` into
/// `data`: bytes beyond the config space are left as they are (the transport
/// pre-fills `data` with zeros), an offset beyond it reads nothing.
pub(crate) fn config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    let Some(src) = usize::try_from(offset).ok().and_then(|o| config.get(o..)) else {
        return;
    };
    let n = src.len().min(data.len());
    data[..n].copy_from_slice(&src[..n]);
}

/// The interrupt line of one virtio device: the interrupt status register
/// shared with the transport, and the event fd that KVM turns into a guest
/// interrupt (irqfd).
#[derive(Debug)]
pub struct IrqTrigger {
    status: AtomicU32,
    evt: EventFd,
}

impl IrqTrigger {
    /// A trigger raising `evt` (normally registered with KVM as an irqfd).
    pub fn new(evt: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            evt,
        }
    }

    /// Tell the driver that a queue has used buffers.
    pub fn signal_used_queue(&self) {
        self.raise(VIRTIO_MMIO_INT_VRING);
    }

    /// Tell the driver that the config space changed.
    pub fn signal_config_change(&self) {
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            log::error!("virtio: failed to raise interrupt: {e}");
        }
    }

    /// Current interrupt status register value.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The driver acknowledges the interrupt bits in `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Clear all pending bits (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    /// The event fd behind this trigger.
    pub fn event_fd(&self) -> &EventFd {
        &self.evt
    }
}

/// Everything a device gets when the driver sets DRIVER_OK.
pub struct ActivateContext {
    /// Guest memory, for the queues and the buffers they point at.
    pub mem: GuestMemoryMmap,
    /// One queue per entry of `queue_max_sizes`, in index order. Queues the
    /// driver made ready are validated (size, alignment, rings inside guest
    /// memory); queues it left alone have `ready() == false` and the device
    /// decides whether it can run without them.
    pub queues: Vec<Queue>,
    /// Features the driver accepted (a subset of `avail_features`).
    pub acked_features: u64,
    /// The device's interrupt line.
    pub irq: Arc<IrqTrigger>,
}

/// A virtio device model, independent of the transport.
pub trait VirtioDevice: Send {
    /// Virtio device ID (`VIRTIO_ID_*`).
    fn device_type(&self) -> u32;
    /// Features the device offers, including `VIRTIO_F_VERSION_1`.
    fn avail_features(&self) -> u64;
    /// Maximum size of each queue; the slice's length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Read from the device-specific configuration space. Bytes beyond the
    /// config space read as zero; `data` is pre-filled with zeros.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write to the device-specific configuration space (ignored where read-only).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Start operating: called once when the driver sets DRIVER_OK.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), VirtioError>;
    /// Return to the initial state (driver wrote 0 to the status register):
    /// drop queues and memory, keep the backend.
    fn reset(&mut self);
    /// The driver notified queue `index`. Only called after a successful
    /// `activate` and with `index < queue_max_sizes().len()`.
    fn queue_notify(&mut self, index: usize);
    /// Host fds (TAP, sockets) this device wants watched by the event loop.
    fn backend_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
    /// How the event loop watches backend fd `fd`: level-triggered `IN` by
    /// default. A device that may leave an fd readable (a TAP while the
    /// driver has posted no receive buffers) asks for `EDGE_TRIGGERED`, so
    /// the loop wakes once per new event instead of spinning.
    fn backend_event_set(&self, _fd: RawFd) -> EventSet {
        EventSet::IN
    }
    /// One of `backend_fds` is ready.
    fn backend_event(&mut self, _fd: RawFd, _events: EventSet) {}
    /// True once the device hit an error it cannot recover from without a
    /// reset (for example a queue pointing outside guest memory); the transport
    /// then sets DEVICE_NEEDS_RESET and raises a config interrupt.
    fn needs_reset(&self) -> bool {
        false
    }
}
