//! The device's host side: the connection table, the listener, the inner
//! epoll set, deadlines, and the packets owed to the guest.
//!
//! Host fds come and go at run time (one per connection), so they are not
//! registered with the VMM's event loop one by one: they live in an epoll
//! set owned here, whose own fd is the device's only backend fd (watched
//! level-triggered). [`Muxer::process_events`] drains the set without
//! blocking. Inside it:
//! - the listener, the timer fd and the kick event fd are level-triggered
//!   and always drained, so they never keep the set readable;
//! - connection sockets are edge-triggered: readiness is recorded in the
//!   connection, which reads only when the guest has credit and buffers.
//!   An idle readable socket therefore costs nothing.
//!
//! Packets for the guest come from connections in the `ready` queue (each
//! at most once, round robin) and from a small queue of RST replies to
//! packets for no connection; both are bounded.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, RawFd};

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::error;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use super::conn::{Conn, State, BUF_ALLOC};
use super::host::{self, HostError, Listener};
use super::metrics::{inc, set, VsockMetrics};
use super::packet::Header;

mod events;
mod guest;

/// Most connections at a time, host clients still in their handshake
/// included. Beyond: host clients get `ERR`, guest requests RST.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most host clients that have not sent their CONNECT line yet.
pub const MAX_HANDSHAKES: usize = 64;
/// Most RST replies to packets for no connection waiting for the guest.
const MAX_PENDING_RSTS: usize = 64;
/// Epoll events taken per wait, and waits per call.
const EVENTS_PER_WAIT: usize = 64;
const WAITS_PER_CALL: usize = 16;
/// Connections accepted per listener event.
const ACCEPTS_PER_EVENT: usize = 64;
/// Host ports given to host-initiated connections.
const EPHEMERAL_FIRST: u32 = 1 << 30;
const EPHEMERAL_LAST: u32 = u32::MAX - 1;
/// How long the listener rests after `accept` failed (out of fds).
const LISTENER_PAUSE: Duration = Duration::from_millis(100);

const TOKEN_LISTENER: u64 = 0;
const TOKEN_TIMER: u64 = 1;
const TOKEN_KICK: u64 = 2;
/// Connection tokens: slot + this in the low half, generation in the high.
const TOKEN_CONN_BASE: u64 = 16;

/// Errors setting up the host side.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    /// The listening socket.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The epoll set, timer or event fd could not be created or registered.
    #[error("cannot set up the {what}: {source}")]
    Setup {
        /// Which part.
        what: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// How long the device waits on a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Timeouts {
    /// For a host client's CONNECT line.
    pub handshake: Duration,
    /// For the guest's answer to a REQUEST.
    pub connect: Duration,
    /// For a closing connection to finish (guest RST, draining, flushing).
    pub linger: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            handshake: Duration::from_secs(5),
            connect: Duration::from_secs(5),
            linger: Duration::from_secs(5),
        }
    }
}

/// The interest of a connection socket.
fn conn_events(out: bool) -> EventSet {
    let base = EventSet::IN | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
    if out {
        base | EventSet::OUT
    } else {
        base
    }
}

/// The host side of one vsock device.
pub(super) struct Muxer {
    guest_cid: u64,
    listener: Listener,
    listener_resume: Option<Instant>,
    epoll: Epoll,
    timer: TimerFd,
    timer_at: Option<Instant>,
    kick: EventFd,
    slots: Vec<Option<Conn>>,
    gens: Vec<u32>,
    free: Vec<usize>,
    /// (host port, guest port) of connections past their handshake.
    by_key: HashMap<(u32, u32), usize>,
    handshakes: usize,
    ready: VecDeque<usize>,
    rsts: VecDeque<Header>,
    next_port: u32,
    active: bool,
    pub(super) timeouts: Timeouts,
    metrics: Arc<VsockMetrics>,
    events: Vec<EpollEvent>,
}

impl std::fmt::Debug for Muxer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Muxer")
            .field("guest_cid", &self.guest_cid)
            .field("path", &self.listener.path())
            .field("active", &self.active)
            .field("connections", &(self.slots.len() - self.free.len()))
            .field("handshakes", &self.handshakes)
            .field("ready", &self.ready.len())
            .field("rsts", &self.rsts.len())
            .finish_non_exhaustive()
    }
}

impl Muxer {
    /// Listen at `path` for a guest with CID `guest_cid`, with a table of
    /// `capacity` connections ([`MAX_CONNECTIONS`] normally; tests use small
    /// ones to reach the bound cheaply).
    pub(super) fn with_capacity(
        guest_cid: u64,
        path: &Path,
        metrics: Arc<VsockMetrics>,
        capacity: usize,
    ) -> Result<Self, MuxerError> {
        let setup = |what| move |source| MuxerError::Setup { what, source };
        let listener = Listener::bind(path)?;
        let epoll = Epoll::new().map_err(setup("epoll set"))?;
        let timer = TimerFd::new()
            .map_err(std::io::Error::from)
            .map_err(setup("timer"))?;
        let kick = EventFd::new(EFD_NONBLOCK).map_err(setup("kick event fd"))?;
        for (fd, token, what) in [
            (listener.socket().as_raw_fd(), TOKEN_LISTENER, "listener"),
            (timer.as_raw_fd(), TOKEN_TIMER, "timer"),
            (kick.as_raw_fd(), TOKEN_KICK, "kick event fd"),
        ] {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(setup(what))?;
        }
        Ok(Self {
            guest_cid,
            listener,
            listener_resume: None,
            epoll,
            timer,
            timer_at: None,
            kick,
            slots: (0..capacity).map(|_| None).collect(),
            gens: vec![0; capacity],
            free: (0..capacity).rev().collect(),
            by_key: HashMap::with_capacity(capacity),
            handshakes: 0,
            ready: VecDeque::with_capacity(capacity),
            rsts: VecDeque::with_capacity(MAX_PENDING_RSTS),
            next_port: EPHEMERAL_FIRST,
            active: false,
            timeouts: Timeouts::default(),
            metrics,
            events: vec![EpollEvent::default(); EVENTS_PER_WAIT],
        })
    }

    /// The fd of the inner epoll set: readable when there is work.
    pub(super) fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Where host clients connect.
    pub(super) fn path(&self) -> &Path {
        self.listener.path()
    }

    /// The guest driver is up: host clients may connect to it.
    pub(super) fn activate(&mut self) {
        self.active = true;
    }

    /// The driver reset the device: every connection past its handshake
    /// ends (their host sockets close).
    pub(super) fn reset(&mut self) {
        self.active = false;
        for slot in 0..self.slots.len() {
            let Some(conn) = self.slots.get(slot).and_then(Option::as_ref) else {
                continue;
            };
            match conn.state {
                State::Handshake => continue,
                State::Requested => {
                    if let Some(s) = conn.stream.as_ref() {
                        host::refuse(s, "device reset");
                    }
                }
                State::Established => {}
            }
            self.remove(slot);
        }
        self.rsts.clear();
        self.ready.clear();
    }

    /// Whether packets wait for the guest.
    pub(super) fn has_pending(&self) -> bool {
        !self.rsts.is_empty() || !self.ready.is_empty()
    }

    /// Make the inner epoll set readable so that the event loop calls back.
    pub(super) fn kick(&self) {
        if let Err(e) = self.kick.write(1) {
            error!("vsock: cannot kick the backend: {e}");
        }
    }

    fn token(&self, slot: usize) -> u64 {
        let gen = self.gens.get(slot).copied().unwrap_or(0);
        let slot = u64::try_from(slot).unwrap_or(u64::MAX);
        (u64::from(gen) << 32) | slot.saturating_add(TOKEN_CONN_BASE)
    }

    fn slot_of(&self, token: u64) -> Option<usize> {
        let low = token & 0xffff_ffff;
        let slot = usize::try_from(low.checked_sub(TOKEN_CONN_BASE)?).ok()?;
        let gen = u64::from(*self.gens.get(slot)?);
        (token >> 32 == gen).then_some(slot)
    }

    fn conn(&mut self, slot: usize) -> Option<&mut Conn> {
        self.slots.get_mut(slot)?.as_mut()
    }

    fn update_gauge(&self) {
        set(
            &self.metrics.open_connections,
            self.slots.len().saturating_sub(self.free.len()),
        );
    }

    /// Put `conn` in the table and its socket in the epoll set.
    fn insert(&mut self, conn: Conn) -> Option<usize> {
        let slot = self.free.pop()?;
        let token = self.token(slot);
        if let Some(s) = conn.stream.as_ref() {
            let ev = EpollEvent::new(conn_events(false), token);
            if let Err(e) = self.epoll.ctl(ControlOperation::Add, s.as_raw_fd(), ev) {
                error!("vsock: cannot watch a host socket: {e}");
                inc(&self.metrics.host_errors, 1);
                self.free.push(slot);
                return None;
            }
        }
        match conn.state {
            State::Handshake => self.handshakes += 1,
            _ => {
                self.by_key.insert((conn.local_port, conn.peer_port), slot);
            }
        }
        if let Some(s) = self.slots.get_mut(slot) {
            *s = Some(conn);
        }
        self.update_gauge();
        Some(slot)
    }

    /// Drop the connection in `slot`; its socket closes, which also takes
    /// it out of the epoll set.
    fn remove(&mut self, slot: usize) {
        let Some(conn) = self.slots.get_mut(slot).and_then(Option::take) else {
            return;
        };
        if conn.state == State::Handshake {
            self.handshakes = self.handshakes.saturating_sub(1);
        } else if self.by_key.get(&(conn.local_port, conn.peer_port)) == Some(&slot) {
            self.by_key.remove(&(conn.local_port, conn.peer_port));
        }
        if conn.in_ready {
            self.ready.retain(|&s| s != slot);
        }
        if let Some(g) = self.gens.get_mut(slot) {
            *g = g.wrapping_add(1);
        }
        self.free.push(slot);
        self.update_gauge();
    }

    /// After anything happened to a connection: let it move on, then update
    /// its epoll interest, its place in the ready queue and the timer.
    fn reschedule(&mut self, slot: usize, now: Instant) {
        let linger = self.timeouts.linger;
        let token = self.token(slot);
        let Some(conn) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        conn.settle(now, linger, &self.metrics);
        if conn.done {
            self.remove(slot);
            return;
        }
        let want_out = conn.want_out();
        if want_out != conn.watching_out {
            if let Some(s) = conn.stream.as_ref() {
                let ev = EpollEvent::new(conn_events(want_out), token);
                if let Err(e) = self.epoll.ctl(ControlOperation::Modify, s.as_raw_fd(), ev) {
                    error!("vsock: cannot change a host socket's interest: {e}");
                }
            }
            conn.watching_out = want_out;
        }
        let deadline = conn.deadline;
        if conn.wants_rx() && !conn.in_ready {
            conn.in_ready = true;
            self.ready.push_back(slot);
        }
        if let Some(at) = deadline {
            self.arm_timer(at, now);
        }
    }

    /// Make the timer fire no later than `at`.
    fn arm_timer(&mut self, at: Instant, now: Instant) {
        if self.timer_at.is_some_and(|t| t <= at) {
            return;
        }
        // A zero duration would disarm the timer.
        let dur = at
            .saturating_duration_since(now)
            .max(Duration::from_millis(1));
        match self.timer.reset(dur, None) {
            Ok(()) => self.timer_at = Some(at),
            Err(e) => error!("vsock: cannot arm the timer: {e}"),
        }
    }

    /// The next packet for the guest, with at most `max` payload bytes (put
    /// in `buf`). Connections take turns.
    pub(super) fn next_packet(&mut self, max: usize, buf: &mut [u8]) -> Option<(Header, usize)> {
        if let Some(h) = self.rsts.pop_front() {
            return Some((h, 0));
        }
        let metrics = self.metrics.clone();
        // A connection that produced nothing either left the queue or owes
        // a packet now (a SHUTDOWN after EOF): two turns each suffice.
        let mut turns = self.ready.len().saturating_mul(2).saturating_add(1);
        while turns > 0 {
            turns -= 1;
            let slot = self.ready.pop_front()?;
            let Some(conn) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            conn.in_ready = false;
            let packet = conn.produce(max, buf, &metrics).map(|p| {
                let mut h = Header::to_guest(self.guest_cid, conn.local_port, conn.peer_port, p.op);
                // At most MAX_PAYLOAD.
                h.len = u32::try_from(p.len).unwrap_or(u32::MAX);
                h.flags = p.flags;
                h.buf_alloc = BUF_ALLOC;
                h.fwd_cnt = conn.fwd_cnt();
                (h, p.len)
            });
            self.reschedule(slot, Instant::now());
            if packet.is_some() {
                return packet;
            }
        }
        None
    }

    /// The connection between host port `local` and guest port `peer`.
    #[cfg(test)]
    pub(super) fn find(&self, local: u32, peer: u32) -> Option<&Conn> {
        let slot = *self.by_key.get(&(local, peer))?;
        self.slots.get(slot)?.as_ref()
    }

    /// Like `find`, mutable.
    #[cfg(test)]
    pub(super) fn find_mut(&mut self, local: u32, peer: u32) -> Option<&mut Conn> {
        let slot = *self.by_key.get(&(local, peer))?;
        self.slots.get_mut(slot)?.as_mut()
    }

    /// Connections in the table and host clients in their handshake.
    #[cfg(test)]
    pub(super) fn counts(&self) -> (usize, usize) {
        (self.slots.len() - self.free.len(), self.handshakes)
    }
}
