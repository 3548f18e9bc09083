//! The virtio-mmio transport, register layout version 2 (virtio 1.x, modern
//! only).
//!
//! [`MmioTransport`] sits between a vCPU and a [`VirtioDevice`]: it answers
//! the guest's register accesses (as a [`BusDevice`]), runs feature
//! negotiation and the device status state machine, keeps the queue
//! configuration until the driver sets DRIVER_OK, and then hands validated
//! queues to the device. It also owns one event fd per queue: the VMM
//! registers them with KVM as ioeventfds on the QueueNotify register, and the
//! transport (as an `event-manager` subscriber) turns them into
//! [`VirtioDevice::queue_notify`] calls.
//!
//! Everything the guest writes is untrusted: illegal status transitions,
//! out-of-range selectors, bad queue sizes and queues outside guest memory are
//! ignored or answered with DEVICE_NEEDS_RESET, never with a panic.

use std::os::fd::RawFd;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{debug, error, warn};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio as reg;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{ActivateContext, IrqTrigger, VirtioDevice};
use crate::bus::BusDevice;

/// Value of the MagicValue register ("virt" in little endian).
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// Value of the Version register: the modern (virtio 1.x) layout.
pub const MMIO_VERSION: u32 = 2;
/// Value of the VendorID register ("VMM" in little endian).
pub const MMIO_VENDOR_ID: u32 = 0x004d_4d56;
/// Size of the MMIO window of one device: registers, then config space.
pub const MMIO_REGION_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register, where the VMM places one ioeventfd per
/// queue (datamatch = queue index, 4 bytes).
pub const MMIO_NOTIFY_OFFSET: u64 = reg::VIRTIO_MMIO_QUEUE_NOTIFY as u64;
/// Offset of the device-specific configuration space.
pub const MMIO_CONFIG_OFFSET: u64 = reg::VIRTIO_MMIO_CONFIG as u64;

/// Event data tag for backend fds (queue event fds use their index).
const BACKEND_EVENT_DATA: u32 = u32::MAX;

// The legal values of the status register, in the order the driver sets them.
const S_ACK: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const S_DRIVER: u32 = S_ACK | VIRTIO_CONFIG_S_DRIVER;
const S_FEATURES_OK: u32 = S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
const S_DRIVER_OK: u32 = S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK;

/// Errors of [`MmioTransport`].
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// The notification event fd of a queue could not be created.
    #[error("cannot create the event fd of queue {index}: {source}")]
    QueueEventFd {
        /// Index of the queue.
        index: usize,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The device reports a maximum queue size virtio does not allow (0, not a
    /// power of two, or above 32768).
    #[error("queue {index} has an invalid maximum size {size}")]
    InvalidQueueMaxSize {
        /// Index of the queue.
        index: usize,
        /// The offending size.
        size: u16,
    },
}

/// What the driver wrote about one queue; turned into a `Queue` on DRIVER_OK.
#[derive(Debug, Clone, Copy)]
struct QueueConfig {
    max_size: u16,
    /// Raw QueueNum value: validated (power of two, <= max) only at activation.
    size: u32,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

impl QueueConfig {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: u32::from(max_size),
            ready: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }

    /// A ready `Queue` built from this configuration, if it is valid in `mem`.
    fn build(&self, mem: &GuestMemoryMmap) -> Option<Queue> {
        let mut q = Queue::new(self.max_size).ok()?;
        let size = u16::try_from(self.size).ok()?;
        q.try_set_size(size).ok()?;
        q.try_set_desc_table_address(GuestAddress(self.desc)).ok()?;
        q.try_set_avail_ring_address(GuestAddress(self.driver))
            .ok()?;
        q.try_set_used_ring_address(GuestAddress(self.device))
            .ok()?;
        q.set_ready(true);
        q.is_valid(mem).then_some(q)
    }
}

impl std::fmt::Display for QueueConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "size {}, max {}, desc {:#x}, avail {:#x}, used {:#x}",
            self.size, self.max_size, self.desc, self.driver, self.device
        )
    }
}

/// Replace the low or high 32 bits of `v`.
fn set_half(v: &mut u64, high: bool, half: u32) {
    *v = if high {
        (*v & 0xffff_ffff) | (u64::from(half) << 32)
    } else {
        (*v & !0xffff_ffff) | u64::from(half)
    };
}

/// The low 32 bits of `v`.
#[allow(clippy::cast_possible_truncation)]
fn low_half(v: u64) -> u32 {
    v as u32
}

/// The high 32 bits of `v`.
fn high_half(v: u64) -> u32 {
    low_half(v >> 32)
}

/// Logs a warning for the first few occurrences, then at powers of two, so a
/// guest hammering a bad register cannot flood the host log.
#[derive(Debug, Default)]
struct WarnLimiter {
    count: u64,
}

impl WarnLimiter {
    fn allow(&mut self) -> bool {
        self.count = self.count.saturating_add(1);
        self.count <= 8 || self.count.is_power_of_two()
    }
}

/// A virtio device behind a virtio-mmio (version 2) register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    irq: Arc<IrqTrigger>,
    queue_evts: Vec<EventFd>,
    queues: Vec<QueueConfig>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    status: u32,
    activated: bool,
    warn: WarnLimiter,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .field("acked_features", &self.acked_features)
            .field("activated", &self.activated)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// Put `device` behind a new register window. `irq` is the device's
    /// interrupt line (the VMM registers its event fd as an irqfd) and `mem`
    /// the guest memory the queues will live in.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        irq: Arc<IrqTrigger>,
    ) -> Result<Self, MmioError> {
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for (index, &size) in device.queue_max_sizes().iter().enumerate() {
            if Queue::new(size).is_err() {
                return Err(MmioError::InvalidQueueMaxSize { index, size });
            }
            queues.push(QueueConfig::new(size));
            let evt = EventFd::new(EFD_NONBLOCK)
                .map_err(|source| MmioError::QueueEventFd { index, source })?;
            queue_evts.push(evt);
        }
        Ok(Self {
            device,
            mem,
            irq,
            queue_evts,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            status: 0,
            activated: false,
            warn: WarnLimiter::default(),
        })
    }

    /// One event fd per queue, in queue order. The VMM registers entry `i` as
    /// an ioeventfd at `base + MMIO_NOTIFY_OFFSET` with datamatch `i`.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The device's interrupt line.
    pub fn irq(&self) -> &Arc<IrqTrigger> {
        &self.irq
    }

    /// The device behind this transport.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// Current value of the device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// True between a successful activation and the next reset.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// Whether queue notifications and backend events reach the device.
    fn is_running(&self) -> bool {
        self.activated && self.status & (VIRTIO_CONFIG_S_FAILED | VIRTIO_CONFIG_S_NEEDS_RESET) == 0
    }

    fn warn_guest(&mut self, msg: std::fmt::Arguments<'_>) {
        if self.warn.allow() {
            warn!(
                "virtio-mmio (device type {}): {msg}",
                self.device.device_type()
            );
        }
    }

    fn selected_queue(&self) -> Option<&QueueConfig> {
        self.queues.get(usize::try_from(self.queue_sel).ok()?)
    }

    fn read_reg(&self, offset: u32) -> u32 {
        let features = self.device.avail_features();
        match offset {
            reg::VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC_VALUE,
            reg::VIRTIO_MMIO_VERSION => MMIO_VERSION,
            reg::VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            reg::VIRTIO_MMIO_VENDOR_ID => MMIO_VENDOR_ID,
            reg::VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => low_half(features),
                1 => high_half(features),
                _ => 0,
            },
            reg::VIRTIO_MMIO_QUEUE_NUM_MAX => {
                self.selected_queue().map_or(0, |q| u32::from(q.max_size))
            }
            reg::VIRTIO_MMIO_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready)),
            reg::VIRTIO_MMIO_INTERRUPT_STATUS => self.irq.status(),
            reg::VIRTIO_MMIO_STATUS => self.status,
            // No shared memory regions: a non-existent region has length -1.
            reg::VIRTIO_MMIO_SHM_LEN_LOW
            | reg::VIRTIO_MMIO_SHM_LEN_HIGH
            | reg::VIRTIO_MMIO_SHM_BASE_LOW
            | reg::VIRTIO_MMIO_SHM_BASE_HIGH => u32::MAX,
            // The config space never changes under the driver's feet.
            reg::VIRTIO_MMIO_CONFIG_GENERATION => 0,
            // Write-only and unknown registers read as zero.
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u32, v: u32) {
        match offset {
            reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(v),
            reg::VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = v,
            reg::VIRTIO_MMIO_QUEUE_NUM
            | reg::VIRTIO_MMIO_QUEUE_READY
            | reg::VIRTIO_MMIO_QUEUE_DESC_LOW
            | reg::VIRTIO_MMIO_QUEUE_DESC_HIGH
            | reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | reg::VIRTIO_MMIO_QUEUE_USED_LOW
            | reg::VIRTIO_MMIO_QUEUE_USED_HIGH => self.write_queue_reg(offset, v),
            reg::VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(v),
            reg::VIRTIO_MMIO_INTERRUPT_ACK => self.irq.ack(v),
            reg::VIRTIO_MMIO_STATUS => self.write_status(v),
            // No shared memory regions: whatever is selected does not exist.
            reg::VIRTIO_MMIO_SHM_SEL => {}
            _ => self.warn_guest(format_args!(
                "write {v:#x} to read-only or unknown register {offset:#x}"
            )),
        }
    }

    fn write_driver_features(&mut self, v: u32) {
        let negotiating = self.status & VIRTIO_CONFIG_S_DRIVER != 0
            && self.status & (VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_FAILED) == 0;
        if !negotiating {
            let status = self.status;
            self.warn_guest(format_args!(
                "driver features written in status {status:#x}, ignored"
            ));
            return;
        }
        match self.driver_features_sel {
            sel @ (0 | 1) => set_half(&mut self.acked_features, sel == 1, v),
            sel => {
                if v != 0 {
                    self.warn_guest(format_args!(
                        "driver features {v:#x} in window {sel}, ignored"
                    ));
                }
            }
        }
    }

    fn write_queue_reg(&mut self, offset: u32, v: u32) {
        if self.status & (VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_FAILED) != 0 {
            let status = self.status;
            self.warn_guest(format_args!(
                "queue register {offset:#x} written in status {status:#x}, ignored"
            ));
            return;
        }
        let sel = self.queue_sel;
        let Some(q) = usize::try_from(sel)
            .ok()
            .and_then(|i| self.queues.get_mut(i))
        else {
            self.warn_guest(format_args!(
                "queue register {offset:#x} written for absent queue {sel}"
            ));
            return;
        };
        if offset == reg::VIRTIO_MMIO_QUEUE_READY {
            q.ready = v & 1 != 0;
            return;
        }
        if q.ready {
            self.warn_guest(format_args!(
                "queue register {offset:#x} written while queue {sel} is ready, ignored"
            ));
            return;
        }
        match offset {
            reg::VIRTIO_MMIO_QUEUE_NUM => q.size = v,
            reg::VIRTIO_MMIO_QUEUE_DESC_LOW => set_half(&mut q.desc, false, v),
            reg::VIRTIO_MMIO_QUEUE_DESC_HIGH => set_half(&mut q.desc, true, v),
            reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW => set_half(&mut q.driver, false, v),
            reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH => set_half(&mut q.driver, true, v),
            reg::VIRTIO_MMIO_QUEUE_USED_LOW => set_half(&mut q.device, false, v),
            reg::VIRTIO_MMIO_QUEUE_USED_HIGH => set_half(&mut q.device, true, v),
            _ => {}
        }
    }

    /// QueueNotify without an ioeventfd: kick the queue's event fd so the
    /// event loop handles it like an ioeventfd-delivered notification.
    fn notify(&mut self, index: u32) {
        match usize::try_from(index)
            .ok()
            .and_then(|i| self.queue_evts.get(i))
        {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    error!("virtio-mmio: cannot signal queue {index}: {e}");
                }
            }
            None => self.warn_guest(format_args!("notify for absent queue {index}")),
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // DEVICE_NEEDS_RESET is ours: a driver doing read-modify-write sends it
        // back, which is neither a request nor an error.
        let v = v & !VIRTIO_CONFIG_S_NEEDS_RESET;
        let old = self.status & !VIRTIO_CONFIG_S_NEEDS_RESET;
        if v == old {
            return;
        }
        if v & VIRTIO_CONFIG_S_FAILED != 0 {
            // The driver gave up on the device: honour it whatever the state;
            // only a reset brings the device back.
            debug!("virtio-mmio: driver set FAILED (status {v:#x})");
            self.status |= VIRTIO_CONFIG_S_FAILED;
            return;
        }
        match (old, v) {
            (0, S_ACK) | (S_ACK, S_DRIVER) => self.status = v,
            (S_DRIVER, S_FEATURES_OK) => {
                if self.features_acceptable() {
                    self.status = v;
                } else {
                    warn!(
                        "virtio-mmio: driver features {:#x} refused (offered {:#x}), FEATURES_OK not set",
                        self.acked_features,
                        self.device.avail_features()
                    );
                }
            }
            (S_FEATURES_OK, S_DRIVER_OK) => {
                self.status = v;
                self.activate();
            }
            _ => self.warn_guest(format_args!(
                "illegal status transition {old:#x} -> {v:#x}, ignored"
            )),
        }
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.device.avail_features();
        self.acked_features & !offered == 0 && self.acked_features & (1 << VIRTIO_F_VERSION_1) != 0
    }

    fn activate(&mut self) {
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, cfg) in self.queues.iter().enumerate() {
            if !cfg.ready {
                // Devices decide whether they can run without this queue.
                // (The max size was validated in `new`.)
                match Queue::new(cfg.max_size) {
                    Ok(q) => queues.push(q),
                    Err(e) => return self.fail_activation(&format!("queue {i}: {e}")),
                }
                continue;
            }
            let Some(q) = cfg.build(&self.mem) else {
                return self.fail_activation(&format!("queue {i} is invalid ({cfg})"));
            };
            queues.push(q);
        }
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues,
            acked_features: self.acked_features,
            irq: self.irq.clone(),
        };
        match self.device.activate(ctx) {
            Ok(()) => self.activated = true,
            Err(e) => self.fail_activation(&e.to_string()),
        }
    }

    fn fail_activation(&mut self, why: &str) {
        error!(
            "virtio-mmio: cannot activate device type {}: {why}",
            self.device.device_type()
        );
        self.raise_needs_reset();
    }

    fn raise_needs_reset(&mut self) {
        if self.status & VIRTIO_CONFIG_S_NEEDS_RESET == 0 {
            self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
            self.irq.signal_config_change();
        }
    }

    fn check_device_health(&mut self) {
        if self.activated && self.device.needs_reset() {
            if self.status & VIRTIO_CONFIG_S_NEEDS_RESET == 0 {
                error!(
                    "virtio-mmio: device type {} needs a reset",
                    self.device.device_type()
                );
            }
            self.raise_needs_reset();
        }
    }

    fn reset(&mut self) {
        debug!(
            "virtio-mmio: reset of device type {}",
            self.device.device_type()
        );
        self.device.reset();
        self.activated = false;
        for q in &mut self.queues {
            *q = QueueConfig::new(q.max_size);
        }
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.status = 0;
        self.irq.clear();
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= MMIO_CONFIG_OFFSET {
            if matches!(data.len(), 1 | 2 | 4 | 8) {
                data.fill(0);
                self.device.read_config(offset - MMIO_CONFIG_OFFSET, data);
            } else {
                self.warn_guest(format_args!(
                    "{}-byte config read at {offset:#x}, ignored",
                    data.len()
                ));
            }
            return;
        }
        match u32::try_from(offset) {
            Ok(o) if data.len() == 4 && o % 4 == 0 => {
                data.copy_from_slice(&self.read_reg(o).to_le_bytes())
            }
            _ => self.warn_guest(format_args!(
                "{}-byte register read at {offset:#x}, ignored",
                data.len()
            )),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= MMIO_CONFIG_OFFSET {
            if matches!(data.len(), 1 | 2 | 4 | 8) {
                self.device.write_config(offset - MMIO_CONFIG_OFFSET, data);
            } else {
                self.warn_guest(format_args!(
                    "{}-byte config write at {offset:#x}, ignored",
                    data.len()
                ));
            }
            return;
        }
        match (u32::try_from(offset), <[u8; 4]>::try_from(data)) {
            (Ok(o), Ok(bytes)) if o % 4 == 0 => self.write_reg(o, u32::from_le_bytes(bytes)),
            _ => self.warn_guest(format_args!(
                "{}-byte register write at {offset:#x}, ignored",
                data.len()
            )),
        }
    }
}

impl MutEventSubscriber for MmioTransport {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_evts.iter().enumerate() {
            let Ok(data) = u32::try_from(i) else { break };
            if let Err(e) = ops.add(Events::with_data(evt, data, EventSet::IN)) {
                error!("virtio-mmio: cannot watch queue {i} event fd: {e}");
            }
        }
        for fd in self.device.backend_fds() {
            let set = self.device.backend_event_set(fd);
            if let Err(e) = ops.add(Events::with_data_raw(fd, BACKEND_EVENT_DATA, set)) {
                error!("virtio-mmio: cannot watch backend fd {fd}: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let data = events.data();
        if data == BACKEND_EVENT_DATA {
            // Delivered even before activation: only the device knows how to
            // quiesce its backend (level-triggered fds keep firing).
            let fd: RawFd = events.fd();
            self.device.backend_event(fd, events.event_set());
        } else if let Some((index, evt)) = usize::try_from(data)
            .ok()
            .and_then(|i| Some((i, self.queue_evts.get(i)?)))
        {
            if let Err(e) = evt.read() {
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    error!("virtio-mmio: cannot read queue {index} event fd: {e}");
                }
                return;
            }
            if self.is_running() {
                self.device.queue_notify(index);
            } else {
                debug!("virtio-mmio: notification for queue {index} while not running, dropped");
            }
        } else {
            error!("virtio-mmio: event with unknown data {data}");
            return;
        }
        self.check_device_health();
    }
}

#[cfg(test)]
mod tests;
