//! Test helpers: the shared ring driver (`virtio/test_util.rs`) with three
//! queues, a minimal vsock driver on top (packets in and out,
//! per-connection credit) and host-side socket helpers.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use vmm_sys_util::tempdir::TempDir;

use super::packet::{Header, Op, TYPE_STREAM};
use super::*;
pub use crate::virtio::test_util::*;

pub const CID: u64 = 3;

pub const RX: usize = RX_QUEUE;
pub const TX: usize = TX_QUEUE;
pub const HDR: usize = HDR_LEN;

/// Each descriptor index of the rx and tx queues owns a buffer this big
/// (a header and the largest payload fit), in its queue's area. The tx
/// area straddles the two memory regions.
const SLOT: u64 = 0x11000;
const TX_AREA: u64 = 0x10_0000;
const RX_AREA: u64 = 0x22_0000;
/// Free guest memory for hand-made buffers.
pub const SCRATCH: u64 = 0x34_0000;
/// Receive buffer size of a Linux driver: a header and 4 KiB.
pub const RX_BUF: u32 = 4096 + HDR as u32;

/// Features of a plain modern driver.
pub const BASE: u64 = 1 << VIRTIO_F_VERSION_1;

/// Short timeouts for tests that wait for them.
pub const SHORT: Duration = Duration::from_millis(30);

/// A packet the guest received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkt {
    pub hdr: Header,
    pub data: Vec<u8>,
}

impl Pkt {
    pub fn op(&self) -> Option<Op> {
        Op::from_raw(self.hdr.op)
    }
}

/// The guest's end of one connection: its port, the host's, and the
/// guest's receive accounting.
#[derive(Debug, Clone, Copy)]
pub struct GuestSock {
    pub gport: u32,
    pub hport: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl GuestSock {
    pub fn new(gport: u32, hport: u32) -> Self {
        Self {
            gport,
            hport,
            buf_alloc: 256 * 1024,
            fwd_cnt: 0,
        }
    }

    /// SHUTDOWN with `flags` from this socket.
    pub fn shutdown(&self, flags: u32) -> Header {
        Header {
            flags,
            ..self.hdr(Op::Shutdown)
        }
    }

    /// A header from this socket.
    pub fn hdr(&self, op: Op) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: self.gport,
            dst_port: self.hport,
            type_: TYPE_STREAM,
            op: op.raw(),
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt,
            ..Header::default()
        }
    }
}

/// A vsock device listening in a temporary directory, activated on three
/// queues, plus a minimal driver (the harness dereferences to its rings).
pub struct Harness {
    _dir: TempDir,
    pub path: PathBuf,
    pub drv: Driver<3>,
    pub dev: Vsock,
    rx_seen: u16,
    rx_posted: u16,
}

deref_driver!(Harness, 3);

impl Harness {
    pub fn new() -> Self {
        Self::with_features(BASE)
    }

    pub fn with_features(features: u64) -> Self {
        Self::build(features, MAX_CONNECTIONS)
    }

    /// A device with a table of `capacity` connections.
    pub fn with_capacity(capacity: usize) -> Self {
        Self::build(BASE, capacity)
    }

    fn build(features: u64, capacity: usize) -> Self {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("v.sock");
        let drv = Driver::new();
        let mut dev = Vsock::with_capacity(CID, &path, capacity).unwrap();
        dev.muxer.timeouts = muxer::Timeouts {
            handshake: Duration::from_secs(10),
            connect: Duration::from_secs(10),
            linger: Duration::from_secs(10),
        };
        dev.activate(drv.context(features)).unwrap();
        Self {
            _dir: dir,
            path,
            drv,
            dev,
            rx_seen: 0,
            rx_posted: 0,
        }
    }

    /// Use `t` for every timeout.
    pub fn set_timeouts(&mut self, t: Duration) {
        self.dev.muxer.timeouts = muxer::Timeouts {
            handshake: t,
            connect: t,
            linger: t,
        };
    }

    pub fn metrics(&self) -> VsockMetricsSnapshot {
        self.dev.metrics().snapshot()
    }

    /// The event loop found the backend fd readable.
    pub fn pump(&mut self) {
        let fd = self.dev.backend_fds()[0];
        self.dev.backend_event(fd, EventSet::IN);
    }

    /// Queue `hdr` (its `len` set to the payload's) and `payload` as one
    /// transmit chain without notifying.
    pub fn queue_tx(&mut self, mut hdr: Header, payload: &[u8]) {
        hdr.len = payload.len() as u32;
        self.queue_raw(hdr, payload);
    }

    /// Like `queue_tx` but `hdr.len` is left as it is.
    pub fn queue_raw(&mut self, hdr: Header, payload: &[u8]) {
        let addr = TX_AREA + u64::from(self.rings[TX].next_desc) * SLOT;
        self.write(addr, &hdr.encode());
        self.write(addr + HDR as u64, payload);
        if payload.is_empty() {
            self.add(TX, &[(addr, HDR as u32, R)]);
        } else {
            let p = addr + HDR as u64;
            self.add(TX, &[(addr, HDR as u32, R), (p, payload.len() as u32, R)]);
        }
    }

    /// Send one packet from the guest.
    pub fn send(&mut self, hdr: Header, payload: &[u8]) {
        self.queue_tx(hdr, payload);
        self.dev.queue_notify(TX);
    }

    /// Post up to `n` receive buffers of `size` bytes (as many as the ring
    /// has room for) and notify.
    pub fn post_rx(&mut self, n: usize, size: u32) {
        for _ in 0..n.min(self.rx_room()) {
            let addr = RX_AREA + u64::from(self.rings[RX].next_desc) * SLOT;
            self.add(RX, &[(addr, size, W)]);
            self.rx_posted = self.rx_posted.wrapping_add(1);
        }
        self.dev.queue_notify(RX);
    }

    /// Receive buffers posted and not yet used.
    pub fn rx_free(&self) -> usize {
        usize::from(self.rx_posted.wrapping_sub(self.used_idx(RX)))
    }

    /// Receive buffers that can be posted now: the ring holds posted and
    /// used-but-unread ones.
    pub fn rx_room(&self) -> usize {
        usize::from(QSIZE - self.rx_posted.wrapping_sub(self.rx_seen))
    }

    /// Packets the device placed since the last call (buffers posted with
    /// `post_rx`).
    pub fn recv(&mut self) -> Vec<Pkt> {
        let mut out = Vec::new();
        let end = self.used_idx(RX);
        while self.rx_seen != end {
            let (id, len) = self.used_elem(RX, self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            let addr = RX_AREA + u64::from(id) * SLOT;
            let bytes = self.read(addr, len as usize);
            assert!(
                bytes.len() >= HDR,
                "used length {len} shorter than a header"
            );
            let hdr = Header::decode(bytes[..HDR].try_into().unwrap());
            assert_eq!(hdr.len as usize, bytes.len() - HDR, "{hdr:?}");
            assert_eq!((hdr.src_cid, hdr.dst_cid, hdr.type_), (HOST_CID, CID, 1));
            out.push(Pkt {
                hdr,
                data: bytes[HDR..].to_vec(),
            });
        }
        out
    }

    /// Keep buffers posted and pump until `f` says the packets gathered
    /// so far suffice (or give up after a while).
    pub fn recv_until(&mut self, mut f: impl FnMut(&[Pkt]) -> bool) -> Vec<Pkt> {
        let mut all = Vec::new();
        for _ in 0..200 {
            all.extend(self.recv());
            if f(&all) {
                return all;
            }
            let n = self.rx_room();
            self.post_rx(n.min(8), RX_BUF);
            self.pump();
            all.extend(self.recv());
            if f(&all) {
                return all;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("gave up waiting; got {all:?}");
    }

    /// Exactly one packet is owed: receive it.
    pub fn recv_one(&mut self) -> Pkt {
        let mut p = self.recv_until(|p| !p.is_empty());
        assert_eq!(p.len(), 1, "{p:?}");
        p.remove(0)
    }

    /// A host client of the listener.
    pub fn client(&self) -> UnixStream {
        let s = UnixStream::connect(&self.path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    /// A host client connects to guest port `gport` and the guest
    /// accepts; returns the client after it read its `OK` line.
    pub fn host_connect(&mut self, gport: u32) -> (UnixStream, GuestSock) {
        let mut s = self.client();
        s.write_all(format!("CONNECT {gport}\n").as_bytes())
            .unwrap();
        self.pump();
        let req = self.recv_one();
        assert_eq!(req.op(), Some(Op::Request));
        assert_eq!(req.hdr.dst_port, gport);
        let g = GuestSock::new(gport, req.hdr.src_port);
        self.send(g.hdr(Op::Response), &[]);
        assert_eq!(read_line(&mut s), format!("OK {}\n", g.hport));
        (s, g)
    }

    /// The guest connects to host port `hport` from `gport`; returns the
    /// packet the device answered with.
    pub fn guest_connect(&mut self, gport: u32, hport: u32) -> (GuestSock, Pkt) {
        let g = GuestSock::new(gport, hport);
        self.send(g.hdr(Op::Request), &[]);
        (g, self.recv_one())
    }

    /// The host side of guest port `port`: `PATH_port`.
    pub fn port_path(&self, port: u32) -> PathBuf {
        host::port_path(&self.path, port)
    }

    /// Receive RW packets of connection `g` until `n` payload bytes came,
    /// acknowledging them (CREDIT_UPDATE) as a Linux driver does.
    pub fn recv_data(&mut self, g: &mut GuestSock, n: usize) -> Vec<u8> {
        let mut data = Vec::new();
        for _ in 0..2000 {
            if data.len() >= n {
                break;
            }
            let n = self.rx_room();
            self.post_rx(n, RX_BUF);
            self.pump();
            let mut got = false;
            for p in self.recv() {
                assert_eq!((p.hdr.src_port, p.hdr.dst_port), (g.hport, g.gport));
                match p.op() {
                    Some(Op::Rw) => {
                        data.extend(&p.data);
                        g.fwd_cnt = g.fwd_cnt.wrapping_add(p.data.len() as u32);
                        got = true;
                    }
                    Some(Op::CreditUpdate | Op::CreditRequest) => {}
                    other => panic!("unexpected {other:?}: {p:?}"),
                }
            }
            if got {
                self.send(g.hdr(Op::CreditUpdate), &[]);
            } else {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        assert_eq!(data.len(), n);
        data
    }
}

/// Read one line (up to and including `\n`) from `s`.
pub fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 {
        line.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    String::from_utf8(line).unwrap()
}

/// Read until EOF.
pub fn read_to_end(s: &mut UnixStream) -> Vec<u8> {
    let mut v = Vec::new();
    s.read_to_end(&mut v).unwrap();
    v
}

/// Bytes of a recognisable pattern.
pub fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}
