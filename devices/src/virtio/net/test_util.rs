//! Test helpers: guest memory with two hand-driven split queues, and a fake
//! backend.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;

/// Guest memory: two adjacent 2 MiB regions, so buffers can straddle them.
pub const REGION: u64 = 0x20_0000;
pub const MEM_END: u64 = 2 * REGION;
pub const QSIZE: u16 = 16;
/// Where test buffers go (below: the rings).
pub const BUF: u64 = 0x10_0000;

pub const R: u16 = 0;
pub const W: u16 = VRING_DESC_F_WRITE as u16;
pub const NEXT: u16 = VRING_DESC_F_NEXT as u16;
pub const HDR: usize = VNET_HDR_LEN;
pub const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// A descriptor as the tests write it: address, length, flags.
pub type Desc = (u64, u32, u16);

/// Features of a plain modern driver.
pub const BASE: u64 = 1 << VIRTIO_F_VERSION_1;
pub const MRG: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;
pub const EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;

/// One split queue as a driver sees it.
pub struct Ring {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub avail_idx: u16,
    pub next_desc: u16,
}

impl Ring {
    fn new(base: u64) -> Self {
        Self {
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            avail_idx: 0,
            next_desc: 0,
        }
    }

    fn queue(&self, mem: &GuestMemoryMmap) -> Queue {
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

/// A device on `B` activated with two queues, plus a minimal driver.
pub struct Harness<B: NetBackend> {
    pub mem: GuestMemoryMmap,
    pub net: Net<B>,
    pub irq: Arc<IrqTrigger>,
    pub rings: [Ring; 2],
}

impl<B: NetBackend> Harness<B> {
    pub fn new(backend: B, features: u64) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), REGION as usize),
            (GuestAddress(REGION), REGION as usize),
        ])
        .unwrap();
        let mut net = Net::new(backend, MAC).unwrap();
        let irq = Arc::new(IrqTrigger::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let rings = [Ring::new(0x1000), Ring::new(0x4000)];
        net.activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![rings[0].queue(&mem), rings[1].queue(&mem)],
            acked_features: features,
            irq: irq.clone(),
        })
        .unwrap();
        Self {
            mem,
            net,
            irq,
            rings,
        }
    }

    /// Reset the device and activate it again on fresh rings.
    pub fn reactivate(&mut self, features: u64) -> Result<(), VirtioError> {
        self.net.reset();
        self.write(0x1000, &[0; 0x6000]);
        self.rings = [Ring::new(0x1000), Ring::new(0x4000)];
        self.net.activate(ActivateContext {
            mem: self.mem.clone(),
            queues: vec![
                self.rings[0].queue(&self.mem),
                self.rings[1].queue(&self.mem),
            ],
            acked_features: features,
            irq: self.irq.clone(),
        })
    }

    pub fn set_desc(&self, q: usize, i: u16, d: Desc, next: u16) {
        let d = Descriptor::new(d.0, d.1, d.2, next);
        let at = self.rings[q].desc + 16 * u64::from(i);
        self.mem.write_obj(d, GuestAddress(at)).unwrap();
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

    pub fn metrics(&self) -> NetMetricsSnapshot {
        self.net.metrics().snapshot()
    }
}

/// A packet: 12-byte header with `flags` and `gso`, then `len` frame bytes.
pub fn packet(flags: u8, gso: u8, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; HDR];
    p[0] = flags;
    p[1] = gso;
    p.extend((0..len).map(|i| (i * 7 + 3) as u8));
    p
}

/// What the fake backend holds; shared with the test.
#[derive(Debug, Default)]
pub struct FakeState {
    /// Packets (or errors) to return from reads, in order.
    pub rx: VecDeque<io::Result<Vec<u8>>>,
    /// Results to return from writes before accepting (then: accept).
    pub tx_errors: VecDeque<io::Error>,
    /// Packets written.
    pub tx: Vec<Vec<u8>>,
    /// Offload settings, in order.
    pub offloads: Vec<u32>,
    /// Read calls.
    pub reads: usize,
}

/// A backend serving from [`FakeState`]; its fd is an event fd nobody uses.
pub struct Fake {
    pub state: Arc<Mutex<FakeState>>,
    pub evt: EventFd,
    supported: u32,
}

impl Fake {
    pub fn new(supported: u32) -> (Self, Arc<Mutex<FakeState>>) {
        let state = Arc::new(Mutex::new(FakeState::default()));
        let fake = Self {
            state: state.clone(),
            evt: EventFd::new(EFD_NONBLOCK).unwrap(),
            supported,
        };
        (fake, state)
    }
}

impl AsRawFd for Fake {
    fn as_raw_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }
}

impl NetBackend for Fake {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut s = self.state.lock().unwrap();
        s.reads += 1;
        match s.rx.pop_front() {
            None => Err(io::ErrorKind::WouldBlock.into()),
            Some(Err(e)) => Err(e),
            Some(Ok(p)) => {
                // Like a TAP: copy what fits, report the full length.
                let n = p.len().min(buf.len());
                buf[..n].copy_from_slice(&p[..n]);
                Ok(p.len())
            }
        }
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        let mut s = self.state.lock().unwrap();
        if let Some(e) = s.tx_errors.pop_front() {
            return Err(e);
        }
        s.tx.push(frame.to_vec());
        Ok(frame.len())
    }

    fn supported_offloads(&self) -> u32 {
        self.supported
    }

    fn set_offloads(&mut self, flags: u32) -> io::Result<()> {
        self.state.lock().unwrap().offloads.push(flags);
        Ok(())
    }
}

pub fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}
