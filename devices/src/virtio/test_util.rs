//! Test helpers shared by the device test suites: guest memory and a
//! minimal split-queue driver that works a device's rings by hand (chains
//! built descriptor by descriptor, hostile ones included).
//!
//! Each suite wraps a [`Driver`] in its own harness with the device under
//! test and whatever it needs besides (a disk image, a fake backend, host
//! sockets); the harness dereferences to its driver.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::mmio::MmioTransport;
use super::{ActivateContext, IrqTrigger, VirtioDevice};

/// Guest memory: two adjacent 2 MiB regions, so buffers can straddle them.
pub const REGION: u64 = 0x20_0000;
/// The end of guest memory.
pub const MEM_END: u64 = 2 * REGION;
/// Size of every test queue.
pub const QSIZE: u16 = 16;
/// Where the first queue's rings start; each queue takes `RING_SPAN` bytes.
const RINGS: u64 = 0x1000;
/// Descriptor table, available ring and used ring, a page each.
const RING_SPAN: u64 = 0x3000;

/// Flags of a device-readable descriptor.
pub const R: u16 = 0;
/// Flags of a device-writable descriptor.
pub const W: u16 = VRING_DESC_F_WRITE as u16;
/// The NEXT flag.
pub const NEXT: u16 = VRING_DESC_F_NEXT as u16;

/// `VIRTIO_RING_F_EVENT_IDX` as a feature bit.
pub const EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// A descriptor as the tests write it: address, length, flags.
pub type Desc = (u64, u32, u16);

/// Two adjacent regions of `REGION` bytes from 0.
pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), REGION as usize),
        (GuestAddress(REGION), REGION as usize),
    ])
    .unwrap()
}

/// An event manager like the VMM's.
pub type EventLoop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// `dev` behind an MMIO transport (not activated) on one region of guest
/// memory, subscribed to a new event manager.
pub fn in_event_loop(dev: Box<dyn VirtioDevice>) -> EventLoop {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), REGION as usize)]).unwrap();
    let irq = Arc::new(IrqTrigger::new(EventFd::new(0).unwrap()));
    let t = MmioTransport::new(dev, mem, irq).unwrap();
    let mut em = EventLoop::new().unwrap();
    em.add_subscriber(Arc::new(Mutex::new(t)));
    em
}

/// One split queue as a driver sees it.
pub struct Ring {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub avail_idx: u16,
    pub next_desc: u16,
}

impl Ring {
    /// Rings on three consecutive pages from `base`.
    pub fn new(base: u64) -> Self {
        Self {
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            avail_idx: 0,
            next_desc: 0,
        }
    }

    /// A ready queue of `QSIZE` entries on these rings, as the transport
    /// hands it to a device.
    pub fn queue(&self, mem: &GuestMemoryMmap) -> Queue {
        let mut q = Queue::new(QSIZE).unwrap();
        q.try_set_desc_table_address(GuestAddress(self.desc))
            .unwrap();
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .unwrap();
        q.try_set_used_ring_address(GuestAddress(self.used))
            .unwrap();
        q.set_ready(true);
        assert!(q.is_valid(mem));
        q
    }
}

/// The driver's side of a device with `N` queues: guest memory, the
/// device's interrupt line and one [`Ring`] per queue.
pub struct Driver<const N: usize> {
    pub mem: GuestMemoryMmap,
    pub irq: Arc<IrqTrigger>,
    pub rings: [Ring; N],
}

impl<const N: usize> Driver<N> {
    /// Fresh guest memory and rings.
    pub fn new() -> Self {
        Self {
            mem: guest_memory(),
            irq: Arc::new(IrqTrigger::new(EventFd::new(EFD_NONBLOCK).unwrap())),
            rings: Self::fresh_rings(),
        }
    }

    fn fresh_rings() -> [Ring; N] {
        std::array::from_fn(|q| Ring::new(RINGS + RING_SPAN * q as u64))
    }

    /// What the transport hands the device on DRIVER_OK: every queue ready.
    pub fn context(&self, acked_features: u64) -> ActivateContext {
        ActivateContext {
            mem: self.mem.clone(),
            queues: self.rings.iter().map(|r| r.queue(&self.mem)).collect(),
            acked_features,
            irq: self.irq.clone(),
        }
    }

    /// Clear the rings in guest memory and start them over (after a
    /// device reset).
    pub fn reset_rings(&mut self) {
        self.write(RINGS, &vec![0; (RING_SPAN * N as u64) as usize]);
        self.rings = Self::fresh_rings();
    }

    /// Write descriptor `i` of the table at `table` (a queue's or an
    /// indirect one).
    pub fn write_desc(&self, table: u64, i: u16, d: Desc, next: u16) {
        let d = Descriptor::new(d.0, d.1, d.2, next);
        let at = table + 16 * u64::from(i);
        self.mem.write_obj(d, GuestAddress(at)).unwrap();
    }

    /// Write descriptor `i` of queue `q`.
    pub fn set_desc(&self, q: usize, i: u16, d: Desc, next: u16) {
        self.write_desc(self.rings[q].desc, i, d, next);
    }

    /// Put `descs` in consecutive table slots of queue `q`, linked with
    /// NEXT; return the head index.
    pub fn chain(&mut self, q: usize, descs: &[Desc]) -> u16 {
        let head = self.rings[q].next_desc;
        for (n, &(addr, len, flags)) in descs.iter().enumerate() {
            let i = (head + n as u16) % QSIZE;
            if n + 1 == descs.len() {
                self.set_desc(q, i, (addr, len, flags), 0);
            } else {
                self.set_desc(q, i, (addr, len, flags | NEXT), (i + 1) % QSIZE);
            }
        }
        self.rings[q].next_desc = (head + descs.len() as u16) % QSIZE;
        head
    }

    /// Make the chain at `head` available on queue `q`.
    pub fn publish(&mut self, q: usize, head: u16) {
        let r = &mut self.rings[q];
        let slot = r.avail + 4 + 2 * u64::from(r.avail_idx % QSIZE);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        r.avail_idx = r.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(r.avail_idx, GuestAddress(r.avail + 2))
            .unwrap();
    }

    /// Chain and publish.
    pub fn add(&mut self, q: usize, descs: &[Desc]) -> u16 {
        let head = self.chain(q, descs);
        self.publish(q, head);
        head
    }

    /// The used ring's index of queue `q`.
    pub fn used_idx(&self, q: usize) -> u16 {
        self.mem
            .read_obj(GuestAddress(self.rings[q].used + 2))
            .unwrap()
    }

    /// (id, len) of used entry `i`.
    pub fn used_elem(&self, q: usize, i: u16) -> (u32, u32) {
        let at = self.rings[q].used + 4 + 8 * u64::from(i % QSIZE);
        let id = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        (id, len)
    }

    /// The device's avail_event (EVENT_IDX) for queue `q`.
    pub fn avail_event(&self, q: usize) -> u16 {
        let at = self.rings[q].used + 4 + 8 * u64::from(QSIZE);
        self.mem.read_obj(GuestAddress(at)).unwrap()
    }

    /// The driver's used_event (EVENT_IDX) for queue `q`.
    pub fn set_used_event(&self, q: usize, v: u16) {
        let at = self.rings[q].avail + 4 + 2 * u64::from(QSIZE);
        self.mem.write_obj(v, GuestAddress(at)).unwrap();
    }

    pub fn write(&self, addr: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// Whether the interrupt was raised since the last call.
    pub fn irq_raised(&self) -> bool {
        self.irq.event_fd().read().is_ok()
    }

    /// How many times the interrupt was raised since the last call.
    pub fn interrupts(&self) -> u64 {
        self.irq.event_fd().read().unwrap_or(0)
    }
}

/// A harness holding its driver in field `drv` dereferences to it, so
/// tests write `h.add(..)`, `h.mem`, `h.rings[q]`:
/// `deref_driver!(Harness, 1)` or, for a generic harness,
/// `deref_driver!(Harness<B>, 2, B: NetBackend)`.
macro_rules! deref_driver {
    ($h:ty, $n:literal $(, $g:ident: $bound:path)?) => {
        impl$(<$g: $bound>)? std::ops::Deref for $h {
            type Target = $crate::virtio::test_util::Driver<$n>;
            fn deref(&self) -> &Self::Target {
                &self.drv
            }
        }
        impl$(<$g: $bound>)? std::ops::DerefMut for $h {
            fn deref_mut(&mut self) -> &mut Self::Target {
                &mut self.drv
            }
        }
    };
}
pub(crate) use deref_driver;
