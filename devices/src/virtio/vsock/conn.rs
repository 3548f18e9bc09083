//! One connection between a guest stream socket and a host Unix socket.
//!
//! The connection keeps the credit accounting of both directions and the
//! shutdown state, and knows which packets it owes the guest. It never
//! buffers data for the guest: host bytes are read only when the guest has
//! granted credit and posted a receive buffer for them. Data from the guest
//! is written to the host socket at once; what the socket does not take
//! waits in a buffer that the credit the device advertises
//! ([`BUF_ALLOC`]) bounds.
//!
//! Counters are free-running `u32`s compared with wrapping arithmetic, as
//! the spec defines them:
//! - towards the host: `recv_cnt` bytes received from the guest, `fwd_cnt`
//!   of them written to the host socket (or dropped because it is gone),
//!   `fwd_cnt_sent` the `fwd_cnt` the guest was last told; the guest may
//!   send `BUF_ALLOC - (recv_cnt - fwd_cnt_sent)` more bytes.
//! - towards the guest: `sent_cnt` bytes sent; the guest's `buf_alloc` and
//!   `fwd_cnt` (from every packet it sends) give its free space.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use log::debug;

use super::host;
use super::metrics::{add_bytes, inc, VsockMetrics};
use super::packet::{Op, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND};

/// Bytes of guest data the device accepts per connection before they are
/// written to the host socket: the `buf_alloc` it advertises.
pub const BUF_ALLOC: u32 = 64 * 1024;
/// Longest line the device itself writes to a host client (`OK <port>\n`).
const PREAMBLE_MAX: usize = 16;
/// Capacity of the buffer towards the host: guest data within the credit,
/// plus the `OK` line.
const OUT_CAP: usize = BUF_ALLOC as usize + PREAMBLE_MAX;

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// A host client of the listener; its CONNECT line has not arrived.
    Handshake,
    /// REQUEST owed or sent to the guest; waiting for RESPONSE or RST.
    Requested,
    /// Data may flow.
    Established,
}

/// A guest packet the connection cannot accept: the connection is reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum Violation {
    /// Data before the connection was established.
    #[error("data before the connection was established")]
    NotEstablished,
    /// Data after the guest said it would send no more.
    #[error("data after SHUTDOWN(SEND)")]
    AfterShutdown,
    /// More data than the credit the device granted.
    #[error("{len} bytes with {in_use} of {BUF_ALLOC} credit bytes in use")]
    Credit {
        /// Credit bytes in use as the guest was last told.
        in_use: u32,
        /// Length of the offending packet.
        len: u32,
    },
}

/// A packet the connection produced for the guest; payload (RW only) is in
/// the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Produced {
    pub op: Op,
    pub flags: u32,
    pub len: usize,
}

/// One connection. Ports: `local_port` is the host's, `peer_port` the
/// guest's.
#[derive(Debug)]
pub(super) struct Conn {
    pub state: State,
    pub local_port: u32,
    pub peer_port: u32,
    /// The host side; `None` once it is closed (only packets remain owed).
    pub stream: Option<UnixStream>,
    /// When the connection is reset if it has not moved on.
    pub deadline: Option<Instant>,
    /// In the device's queue of connections with packets for the guest.
    pub in_ready: bool,
    /// OUT is in the socket's epoll interest.
    pub watching_out: bool,
    /// Finished: remove from the table.
    pub done: bool,

    out: VecDeque<u8>,
    /// Leading bytes of `out` that are not guest data (the `OK` line).
    out_extra: usize,
    recv_cnt: u32,
    fwd_cnt: u32,
    /// `fwd_cnt` as last told to the guest.
    fwd_cnt_sent: u32,

    sent_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,

    host_readable: bool,
    /// The host socket will give no more bytes (EOF, or an error).
    host_eof: bool,
    /// The host peer closed entirely: nothing more can be written to it.
    host_gone: bool,
    host_write_shut: bool,
    host_read_shut: bool,
    guest_no_send: bool,
    guest_no_recv: bool,

    pub send_request: bool,
    send_response: bool,
    send_rst: bool,
    /// SHUTDOWN flags owed to the guest, and those already sent.
    send_shutdown: u32,
    shutdown_sent: u32,
    send_credit_update: bool,
    send_credit_request: bool,
    credit_requested: bool,
}

impl Conn {
    fn new(state: State, stream: UnixStream, local_port: u32, peer_port: u32) -> Self {
        Self {
            state,
            local_port,
            peer_port,
            stream: Some(stream),
            deadline: None,
            in_ready: false,
            watching_out: false,
            done: false,
            out: VecDeque::new(),
            out_extra: 0,
            recv_cnt: 0,
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            sent_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            host_readable: false,
            host_eof: false,
            host_gone: false,
            host_write_shut: false,
            host_read_shut: false,
            guest_no_send: false,
            guest_no_recv: false,
            send_request: false,
            send_response: false,
            send_rst: false,
            send_shutdown: 0,
            shutdown_sent: 0,
            send_credit_update: false,
            send_credit_request: false,
            credit_requested: false,
        }
    }

    /// A host client that has yet to send its CONNECT line.
    pub(super) fn handshake(stream: UnixStream, deadline: Instant) -> Self {
        let mut c = Self::new(State::Handshake, stream, 0, 0);
        c.deadline = Some(deadline);
        c
    }

    /// The host client asked for guest port `peer_port` from host port
    /// `local_port`: a REQUEST is owed to the guest.
    pub(super) fn request(&mut self, local_port: u32, peer_port: u32, deadline: Instant) {
        self.state = State::Requested;
        self.local_port = local_port;
        self.peer_port = peer_port;
        self.send_request = true;
        self.deadline = Some(deadline);
        // Bytes after the CONNECT line may already be waiting.
        self.host_readable = true;
    }

    /// The guest connected to `local_port` from `peer_port` and the host
    /// socket accepted: a RESPONSE is owed to the guest.
    pub(super) fn accepted(stream: UnixStream, local_port: u32, peer_port: u32) -> Self {
        let mut c = Self::new(State::Established, stream, local_port, peer_port);
        c.send_response = true;
        c
    }

    /// The guest accepted a host-initiated connection: tell the client.
    pub(super) fn established(&mut self, m: &VsockMetrics) {
        self.state = State::Established;
        self.deadline = None;
        let line = format!("OK {}\n", self.local_port);
        self.out.extend(line.as_bytes());
        self.out_extra = line.len();
        self.flush(m);
    }

    /// Record the guest's credit information (carried by every packet).
    pub(super) fn peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = fwd_cnt;
        if self.peer_free() > 0 {
            self.credit_requested = false;
        }
    }

    /// Bytes the guest can still take.
    fn peer_free(&self) -> u32 {
        let in_flight = self.sent_cnt.wrapping_sub(self.peer_fwd_cnt);
        // A guest claiming to have forwarded more than it got starves itself.
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// The guest asked for our credit information.
    pub(super) fn credit_requested_by_guest(&mut self) {
        self.send_credit_update = true;
    }

    /// Mark the host side readable (an IN event).
    pub(super) fn host_readable(&mut self) {
        self.host_readable = true;
    }

    /// The host peer closed: drain what it sent, write nothing more.
    pub(super) fn host_hung_up(&mut self, m: &VsockMetrics) {
        if !self.host_gone {
            self.host_gone = true;
            self.drop_out(m);
        }
        self.host_readable = true;
    }

    fn drop_out(&mut self, m: &VsockMetrics) {
        let guest_bytes = self.out.len().saturating_sub(self.out_extra);
        add_bytes(&m.bytes_dropped, guest_bytes);
        self.forwarded(guest_bytes);
        self.out = VecDeque::new();
        self.out_extra = 0;
    }

    /// Abort: close the host side (dropping what it did not take), owe the
    /// guest an RST.
    pub(super) fn reset(&mut self, m: &VsockMetrics) {
        self.drop_out(m);
        self.send_rst = true;
        self.stream = None;
        self.deadline = None;
        self.send_request = false;
    }

    /// Whether an RST is owed (the connection is over otherwise).
    pub(super) fn resetting(&self) -> bool {
        self.send_rst
    }

    /// The guest said it will send and/or receive no more.
    pub(super) fn guest_shutdown(&mut self, flags: u32) {
        self.guest_no_recv |= flags & SHUTDOWN_RCV != 0;
        self.guest_no_send |= flags & SHUTDOWN_SEND != 0;
    }

    /// Payload from the guest: write it to the host socket, keep what does
    /// not fit (within the credit).
    pub(super) fn guest_data(&mut self, data: &[u8], m: &VsockMetrics) -> Result<(), Violation> {
        if self.state != State::Established {
            return Err(Violation::NotEstablished);
        }
        if self.guest_no_send {
            return Err(Violation::AfterShutdown);
        }
        // At most MAX_PAYLOAD.
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        // Held against what the guest was told (`fwd_cnt_sent`, at most
        // `fwd_cnt`): a guest that waits for our credit updates never trips
        // this, and the buffer can never hold more than BUF_ALLOC bytes.
        let in_use = self.recv_cnt.wrapping_sub(self.fwd_cnt_sent);
        if in_use.saturating_add(len) > BUF_ALLOC {
            return Err(Violation::Credit { in_use, len });
        }
        self.recv_cnt = self.recv_cnt.wrapping_add(len);
        let Some(stream) = self.stream.as_ref().filter(|_| !self.host_gone) else {
            add_bytes(&m.bytes_dropped, data.len());
            self.forwarded(data.len());
            return Ok(());
        };
        let mut sent = 0;
        if self.out.is_empty() {
            match send_all(stream, data) {
                Ok(n) => sent = n,
                Err(e) => {
                    self.host_write_failed(&e, m);
                    add_bytes(&m.bytes_dropped, data.len());
                    self.forwarded(data.len());
                    return Ok(());
                }
            }
            add_bytes(&m.bytes_to_host, sent);
            self.forwarded(sent);
        }
        if let Some(rest) = data.get(sent..).filter(|r| !r.is_empty()) {
            if self.out.capacity() < OUT_CAP {
                self.out.reserve_exact(OUT_CAP - self.out.len());
            }
            self.out.extend(rest);
        }
        Ok(())
    }

    /// Write buffered bytes to the host socket (an OUT event).
    pub(super) fn flush(&mut self, m: &VsockMetrics) {
        while !self.out.is_empty() {
            let Some(stream) = self.stream.as_ref() else {
                return;
            };
            let (chunk, _) = self.out.as_slices();
            match send_all(stream, chunk) {
                Ok(0) => return,
                Ok(n) => {
                    self.out.drain(..n);
                    let extra = n.min(self.out_extra);
                    self.out_extra -= extra;
                    add_bytes(&m.bytes_to_host, n - extra);
                    self.forwarded(n - extra);
                }
                Err(e) => {
                    self.host_write_failed(&e, m);
                    return;
                }
            }
        }
    }

    fn host_write_failed(&mut self, e: &io::Error, m: &VsockMetrics) {
        if !matches!(
            e.raw_os_error(),
            Some(libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN)
        ) {
            debug!("vsock: host port {}: write failed: {e}", self.local_port);
            inc(&m.host_errors, 1);
        }
        self.host_hung_up(m);
    }

    /// `n` guest bytes left the device: maybe the guest should hear so.
    fn forwarded(&mut self, n: usize) {
        // At most BUF_ALLOC at a time.
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        self.fwd_cnt = self.fwd_cnt.wrapping_add(n);
        // Free space as the guest last heard of it.
        let known_used = self.recv_cnt.wrapping_sub(self.fwd_cnt_sent);
        let known_free = BUF_ALLOC.saturating_sub(known_used);
        if self.fwd_cnt != self.fwd_cnt_sent && known_free < BUF_ALLOC / 2 {
            self.send_credit_update = true;
        }
    }

    /// Whether OUT should be watched on the host socket.
    pub(super) fn want_out(&self) -> bool {
        !self.out.is_empty() && self.stream.is_some()
    }

    fn may_read_host(&self) -> bool {
        self.state == State::Established
            && self.stream.is_some()
            && self.host_readable
            && !self.host_eof
            && !self.guest_no_recv
            && !self.send_rst
    }

    /// Whether the connection has a packet for the guest now.
    pub(super) fn wants_rx(&self) -> bool {
        self.send_rst
            || self.send_request
            || self.send_response
            || self.send_shutdown != 0
            || self.send_credit_update
            || self.send_credit_request
            || (self.may_read_host() && self.peer_free() > 0)
    }

    /// Move on after an event: shut host directions the guest closed, tell
    /// the guest about directions the host closed, finish connections over
    /// in both directions, and bound every wait with a deadline (`linger`
    /// from `now`).
    pub(super) fn settle(&mut self, now: Instant, linger: Duration, m: &VsockMetrics) {
        if self.send_rst || self.done || self.state != State::Established {
            return;
        }
        let Some(stream) = self.stream.as_ref() else {
            return;
        };
        if self.guest_no_send && self.out.is_empty() && !self.host_write_shut && !self.host_gone {
            let _ = stream.shutdown(Shutdown::Write);
            self.host_write_shut = true;
        }
        if self.guest_no_recv && !self.host_read_shut {
            let _ = stream.shutdown(Shutdown::Read);
            self.host_read_shut = true;
        }
        let owed = self.shutdown_sent | self.send_shutdown;
        if self.guest_no_send && self.guest_no_recv {
            // The guest closed: finish once its data is out.
            if self.out.is_empty() || self.host_gone {
                self.reset(m);
            } else {
                self.deadline.get_or_insert(now + linger);
            }
        } else if self.host_gone {
            if self.host_eof || self.guest_no_recv {
                // Everything the host sent is out: close, wait for the
                // guest's RST.
                self.send_shutdown |= SHUTDOWN_BOTH & !self.shutdown_sent;
            }
            // Draining (guest credit permitting), then waiting.
            self.deadline.get_or_insert(now + linger);
        } else if self.host_eof && !self.guest_no_recv && owed & SHUTDOWN_SEND == 0 {
            self.send_shutdown |= SHUTDOWN_SEND;
        }
        if self.may_read_host() && self.peer_free() == 0 && !self.credit_requested {
            self.send_credit_request = true;
            self.credit_requested = true;
        }
    }

    /// The next packet for the guest, reading at most `max` host bytes into
    /// `buf` for an RW packet. `None` if there is none now.
    pub(super) fn produce(
        &mut self,
        max: usize,
        buf: &mut [u8],
        m: &VsockMetrics,
    ) -> Option<Produced> {
        let p = self.next_op(max, buf, m)?;
        // Every packet carries fwd_cnt: the guest's view is current.
        self.fwd_cnt_sent = self.fwd_cnt;
        self.send_credit_update = false;
        if p.op == Op::Rst {
            self.done = true;
        }
        Some(p)
    }

    fn next_op(&mut self, max: usize, buf: &mut [u8], m: &VsockMetrics) -> Option<Produced> {
        let control = |op, flags| Some(Produced { op, flags, len: 0 });
        if self.send_rst {
            self.send_rst = false;
            return control(Op::Rst, 0);
        }
        if self.send_request {
            self.send_request = false;
            return control(Op::Request, 0);
        }
        if self.send_response {
            self.send_response = false;
            return control(Op::Response, 0);
        }
        if let Some(n) = self.read_host(max, buf, m) {
            return Some(Produced {
                op: Op::Rw,
                flags: 0,
                len: n,
            });
        }
        if self.send_shutdown != 0 {
            self.shutdown_sent |= self.send_shutdown;
            self.send_shutdown = 0;
            return control(Op::Shutdown, self.shutdown_sent);
        }
        if self.send_credit_update {
            return control(Op::CreditUpdate, 0);
        }
        if self.send_credit_request {
            self.send_credit_request = false;
            return control(Op::CreditRequest, 0);
        }
        None
    }

    /// Read up to the guest's credit, `max` and `buf.len()` host bytes.
    fn read_host(&mut self, max: usize, buf: &mut [u8], m: &VsockMetrics) -> Option<usize> {
        if !self.may_read_host() {
            return None;
        }
        let credit = usize::try_from(self.peer_free()).unwrap_or(usize::MAX);
        let want = credit.min(max).min(buf.len());
        let dst = buf.get_mut(..want).filter(|d| !d.is_empty())?;
        let mut stream = self.stream.as_ref()?;
        loop {
            match stream.read(dst) {
                Ok(0) => {
                    self.host_eof = true;
                    return None;
                }
                Ok(n) => {
                    // n <= want <= credit: fits a u32.
                    self.sent_cnt = self
                        .sent_cnt
                        .wrapping_add(u32::try_from(n).unwrap_or(u32::MAX));
                    add_bytes(&m.bytes_to_guest, n);
                    return Some(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.host_readable = false;
                    return None;
                }
                Err(e) => {
                    if e.raw_os_error() != Some(libc::ECONNRESET) {
                        debug!("vsock: host port {}: read failed: {e}", self.local_port);
                        inc(&m.host_errors, 1);
                    }
                    self.host_eof = true;
                    self.host_hung_up(m);
                    return None;
                }
            }
        }
    }

    /// Start all counters at `base` instead of 0 (tests of wrap-around).
    #[cfg(test)]
    pub(super) fn offset_counters(&mut self, base: u32) {
        self.recv_cnt = self.recv_cnt.wrapping_add(base);
        self.fwd_cnt = self.fwd_cnt.wrapping_add(base);
        self.fwd_cnt_sent = self.fwd_cnt_sent.wrapping_add(base);
        self.sent_cnt = self.sent_cnt.wrapping_add(base);
    }

    /// `fwd_cnt` to put in headers.
    pub(super) fn fwd_cnt(&self) -> u32 {
        self.fwd_cnt
    }
}

/// Write what the socket takes of `buf`, retrying on EINTR; `WouldBlock`
/// counts as nothing written.
fn send_all(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while let Some(rest) = buf.get(done..).filter(|r| !r.is_empty()) {
        match host::send(stream, rest) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            // Report what was written; the error comes back next time.
            Err(_) if done > 0 => break,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
