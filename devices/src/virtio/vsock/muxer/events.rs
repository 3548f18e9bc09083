//! Host-side events: the inner epoll set, the listener, host clients'
//! handshakes, connection sockets and deadlines.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use log::{debug, error, warn};
use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};

use super::super::conn::{Conn, State};
use super::super::handshake::{self, LineError};
use super::super::host;
use super::super::metrics::inc;
use super::{
    Muxer, ACCEPTS_PER_EVENT, EPHEMERAL_FIRST, EPHEMERAL_LAST, LISTENER_PAUSE, MAX_HANDSHAKES,
    TOKEN_KICK, TOKEN_LISTENER, TOKEN_TIMER, WAITS_PER_CALL,
};

impl Muxer {
    /// Handle what is ready in the inner epoll set, without blocking and
    /// in bounded rounds (the event loop calls again while it stays ready).
    pub(in crate::virtio::vsock) fn process_events(&mut self) {
        for _ in 0..WAITS_PER_CALL {
            let n = match self.epoll.wait(0, &mut self.events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    error!("vsock: epoll_wait failed: {e}");
                    return;
                }
            };
            for i in 0..n {
                let Some(ev) = self.events.get(i).copied() else {
                    break;
                };
                match ev.data() {
                    TOKEN_LISTENER => self.accept_clients(),
                    TOKEN_TIMER => self.on_timer(),
                    TOKEN_KICK => {
                        let _ = self.kick.read();
                    }
                    token => {
                        if let Some(slot) = self.slot_of(token) {
                            self.on_host_event(slot, ev.event_set());
                        }
                    }
                }
            }
            // Handling may have made more ready (a new client's line):
            // look again until nothing is left, within the bound.
            if n == 0 {
                return;
            }
        }
    }

    fn accept_clients(&mut self) {
        for _ in 0..ACCEPTS_PER_EVENT {
            match self.listener.socket().accept() {
                Ok((stream, _)) => self.new_client(stream),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e)
                    if e.kind() == std::io::ErrorKind::Interrupted
                        || e.raw_os_error() == Some(libc::ECONNABORTED) => {}
                Err(e) => {
                    // Out of fds or memory: the pending connection stays and
                    // the listener stays readable. Rest rather than spin.
                    warn!("vsock: accept on {:?} failed: {e}", self.path());
                    inc(&self.metrics.host_errors, 1);
                    let fd = self.listener.socket().as_raw_fd();
                    let ev = EpollEvent::new(EventSet::IN, TOKEN_LISTENER);
                    if self.epoll.ctl(ControlOperation::Delete, fd, ev).is_ok() {
                        let now = Instant::now();
                        self.listener_resume = Some(now + LISTENER_PAUSE);
                        self.arm_timer(now + LISTENER_PAUSE, now);
                    }
                    return;
                }
            }
        }
    }

    fn new_client(&mut self, stream: UnixStream) {
        if let Err(e) = stream.set_nonblocking(true) {
            warn!("vsock: cannot make a host client non-blocking: {e}");
            inc(&self.metrics.host_errors, 1);
            return;
        }
        if self.handshakes >= MAX_HANDSHAKES || self.free.is_empty() {
            host::refuse(&stream, "too many connections");
            inc(&self.metrics.table_full, 1);
            return;
        }
        let now = Instant::now();
        let deadline = now + self.timeouts.handshake;
        if self.insert(Conn::handshake(stream, deadline)).is_some() {
            self.arm_timer(deadline, now);
        }
    }

    fn on_host_event(&mut self, slot: usize, set: EventSet) {
        let now = Instant::now();
        let metrics = self.metrics.clone();
        let Some(conn) = self.conn(slot) else {
            return;
        };
        let hup = set.intersects(EventSet::HANG_UP | EventSet::ERROR);
        let readable = set.intersects(EventSet::IN | EventSet::READ_HANG_UP);
        match conn.state {
            State::Handshake => {
                let closing = hup || set.contains(EventSet::READ_HANG_UP);
                return self.on_handshake(slot, closing, now);
            }
            State::Requested if hup => {
                // The client left before the guest answered.
                if conn.send_request {
                    return self.remove(slot);
                }
                conn.reset(&metrics);
            }
            State::Requested | State::Established => {
                if readable {
                    conn.host_readable();
                }
                if hup {
                    conn.host_hung_up(&metrics);
                }
                if set.contains(EventSet::OUT) {
                    conn.flush(&metrics);
                }
            }
        }
        self.reschedule(slot, now);
    }

    fn on_handshake(&mut self, slot: usize, closing: bool, now: Instant) {
        let Some(stream) = self
            .slots
            .get(slot)
            .and_then(Option::as_ref)
            .and_then(|c| c.stream.as_ref())
        else {
            return;
        };
        match handshake::read_connect(stream, closing) {
            Ok(None) => {}
            Ok(Some(port)) => self.start_request(slot, port, now),
            Err(LineError::Closed) => {
                host::drain_input(stream);
                self.remove(slot);
            }
            Err(e) => {
                debug!("vsock: host client refused: {e}");
                inc(&self.metrics.handshake_errors, 1);
                host::refuse(stream, e.reason());
                self.remove(slot);
            }
        }
    }

    /// A host client asked for guest port `port`.
    fn start_request(&mut self, slot: usize, port: u32, now: Instant) {
        let refusal = if !self.active {
            Some("device not active")
        } else {
            None
        };
        let local = refusal.is_none().then(|| self.alloc_port(port)).flatten();
        let deadline = now + self.timeouts.connect;
        let Some(conn) = self.conn(slot) else {
            return;
        };
        let Some(local) = local else {
            if let Some(s) = conn.stream.as_ref() {
                host::refuse(s, refusal.unwrap_or("too many connections"));
            }
            return self.remove(slot);
        };
        conn.request(local, port, deadline);
        self.handshakes = self.handshakes.saturating_sub(1);
        self.by_key.insert((local, port), slot);
        self.reschedule(slot, now);
    }

    /// A host port for a new connection to guest port `peer`.
    fn alloc_port(&mut self, peer: u32) -> Option<u32> {
        // At most one key per slot is taken: one of these is free.
        for _ in 0..=self.slots.len() {
            let p = self.next_port;
            self.next_port = if p >= EPHEMERAL_LAST {
                EPHEMERAL_FIRST
            } else {
                p + 1
            };
            if !self.by_key.contains_key(&(p, peer)) {
                return Some(p);
            }
        }
        None
    }

    fn on_timer(&mut self) {
        self.timer_at = None;
        if let Err(e) = self.timer.clear() {
            error!("vsock: cannot clear the timer: {e}");
        }
        let now = Instant::now();
        if self.listener_resume.is_some_and(|at| at <= now) {
            self.listener_resume = None;
            let fd = self.listener.socket().as_raw_fd();
            let ev = EpollEvent::new(EventSet::IN, TOKEN_LISTENER);
            if let Err(e) = self.epoll.ctl(ControlOperation::Add, fd, ev) {
                error!("vsock: cannot watch the listener again: {e}");
            }
        }
        for slot in 0..self.slots.len() {
            let due = self
                .slots
                .get(slot)
                .and_then(Option::as_ref)
                .and_then(|c| c.deadline)
                .is_some_and(|d| d <= now);
            if due {
                self.expire(slot, now);
            }
        }
        let next = self
            .slots
            .iter()
            .flatten()
            .filter_map(|c| c.deadline)
            .chain(self.listener_resume)
            .min();
        if let Some(at) = next {
            self.arm_timer(at, now);
        }
    }

    /// The deadline of the connection in `slot` passed.
    fn expire(&mut self, slot: usize, now: Instant) {
        let metrics = self.metrics.clone();
        let Some(conn) = self.conn(slot) else {
            return;
        };
        conn.deadline = None;
        match conn.state {
            State::Handshake => {
                if let Some(s) = conn.stream.as_ref() {
                    host::refuse(s, "timeout");
                }
                inc(&metrics.handshake_errors, 1);
                return self.remove(slot);
            }
            State::Requested => {
                if let Some(s) = conn.stream.as_ref() {
                    host::refuse(s, "timeout");
                }
                inc(&metrics.connect_timeouts, 1);
                if conn.send_request {
                    return self.remove(slot);
                }
                conn.reset(&metrics);
            }
            State::Established => {
                inc(&metrics.shutdown_timeouts, 1);
                conn.reset(&metrics);
            }
        }
        self.reschedule(slot, now);
    }
}
