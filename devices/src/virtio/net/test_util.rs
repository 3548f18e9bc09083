//! Test helpers: the shared ring driver (`virtio/test_util.rs`) with two
//! queues, and a fake backend.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
pub use crate::virtio::test_util::*;

/// Where test buffers go (below: the rings).
pub const BUF: u64 = 0x10_0000;

pub const HDR: usize = VNET_HDR_LEN;
pub const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// Features of a plain modern driver.
pub const BASE: u64 = 1 << VIRTIO_F_VERSION_1;
pub const MRG: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;

/// A device on `B` activated with two queues, plus a minimal driver (the
/// harness dereferences to it).
pub struct Harness<B: NetBackend> {
    pub drv: Driver<2>,
    pub net: Net<B>,
}

deref_driver!(Harness<B>, 2, B: NetBackend);

impl<B: NetBackend> Harness<B> {
    pub fn new(backend: B, features: u64) -> Self {
        let drv = Driver::new();
        let mut net = Net::new(backend, MAC).unwrap();
        net.activate(drv.context(features)).unwrap();
        Self { drv, net }
    }

    /// Reset the device and activate it again on fresh rings.
    pub fn reactivate(&mut self, features: u64) -> Result<(), VirtioError> {
        self.net.reset();
        self.drv.reset_rings();
        self.net.activate(self.drv.context(features))
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
