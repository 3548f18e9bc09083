//! Packets from the guest: checked, then dispatched to their connection,
//! to a new connection (REQUEST), or answered with RST.

use std::time::Instant;

use log::debug;

use super::super::conn::{Conn, State, Violation};
use super::super::host;
use super::super::metrics::inc;
use super::super::packet::{self, Header, Op};
use super::{Muxer, MAX_PENDING_RSTS};

impl Muxer {
    /// A packet from the guest, with its payload.
    pub(in crate::virtio::vsock) fn guest_packet(&mut self, hdr: &Header, payload: &[u8]) {
        inc(&self.metrics.packets_from_guest, 1);
        let op = match packet::check(hdr, self.guest_cid) {
            Ok(op) => op,
            Err(e) => {
                debug!("vsock: packet refused: {e}");
                return self.refuse_packet(hdr, e.answerable());
            }
        };
        let now = Instant::now();
        let Some(&slot) = self.by_key.get(&(hdr.dst_port, hdr.src_port)) else {
            match op {
                Op::Request => self.guest_connect(hdr, now),
                Op::Rst => {}
                _ => {
                    inc(&self.metrics.unknown_connections, 1);
                    self.reply_rst(hdr);
                }
            }
            return;
        };
        let metrics = self.metrics.clone();
        let Some(conn) = self.conn(slot) else {
            return;
        };
        if conn.resetting() {
            // Late packets of a connection being reset: only its end counts.
            if op == Op::Rst {
                self.remove(slot);
            }
            return;
        }
        conn.peer_credit(hdr.buf_alloc, hdr.fwd_cnt);
        let state = conn.state;
        let result = match (op, state) {
            (Op::Rst, State::Requested) => {
                if let Some(s) = conn.stream.as_ref() {
                    host::refuse(s, "connection refused");
                }
                inc(&metrics.connect_refused, 1);
                return self.remove(slot);
            }
            (Op::Rst, _) => return self.remove(slot),
            (Op::Response, State::Requested) => {
                conn.established(&metrics);
                inc(&metrics.host_connections, 1);
                Ok(())
            }
            (Op::Rw, _) => conn.guest_data(payload, &metrics).map_err(|v| {
                let c = match v {
                    Violation::Credit { .. } => &metrics.credit_violations,
                    _ => &metrics.protocol_errors,
                };
                inc(c, 1);
                v.to_string()
            }),
            (Op::Shutdown, State::Established) => {
                conn.guest_shutdown(hdr.flags);
                Ok(())
            }
            (Op::CreditUpdate, State::Established) => Ok(()),
            (Op::CreditRequest, State::Established) => {
                conn.credit_requested_by_guest();
                Ok(())
            }
            (op, state) => {
                inc(&metrics.protocol_errors, 1);
                Err(format!("{op:?} in state {state:?}"))
            }
        };
        if let Err(why) = result {
            debug!(
                "vsock: resetting connection {}:{}: {why}",
                hdr.dst_port, hdr.src_port
            );
            if state == State::Requested {
                if let Some(s) = conn.stream.as_ref() {
                    host::refuse(s, "connection reset");
                }
            }
            conn.reset(&metrics);
        }
        self.reschedule(slot, now);
    }

    /// A packet whose header or chain is malformed: reset the connection it
    /// names, or answer RST; drop it silently if its addresses are wrong.
    pub(in crate::virtio::vsock) fn refuse_packet(&mut self, hdr: &Header, answerable: bool) {
        let addressed = hdr.src_cid == self.guest_cid && hdr.dst_cid == packet::HOST_CID;
        if !answerable || !addressed {
            inc(&self.metrics.bad_cids, 1);
            return;
        }
        inc(&self.metrics.bad_headers, 1);
        match self.by_key.get(&(hdr.dst_port, hdr.src_port)).copied() {
            Some(slot) => {
                let metrics = self.metrics.clone();
                if let Some(conn) = self.conn(slot) {
                    if !conn.resetting() {
                        if let (State::Requested, Some(s)) = (conn.state, conn.stream.as_ref()) {
                            host::refuse(s, "connection reset");
                        }
                        conn.reset(&metrics);
                    }
                }
                self.reschedule(slot, Instant::now());
            }
            None => self.reply_rst(hdr),
        }
    }

    /// The guest connects to host port `hdr.dst_port`: connect to
    /// `PATH_<port>`.
    fn guest_connect(&mut self, hdr: &Header, now: Instant) {
        if self.free.is_empty() {
            inc(&self.metrics.table_full, 1);
            return self.reply_rst(hdr);
        }
        let path = host::port_path(self.path(), hdr.dst_port);
        let stream = match host::connect(&path) {
            Ok(s) => s,
            Err(e) => {
                debug!("vsock: guest connection to {path:?} failed: {e}");
                inc(&self.metrics.guest_connect_failures, 1);
                return self.reply_rst(hdr);
            }
        };
        let mut conn = Conn::accepted(stream, hdr.dst_port, hdr.src_port);
        conn.peer_credit(hdr.buf_alloc, hdr.fwd_cnt);
        match self.insert(conn) {
            Some(slot) => {
                inc(&self.metrics.guest_connections, 1);
                self.reschedule(slot, now);
            }
            None => self.reply_rst(hdr),
        }
    }

    /// Answer a packet for no connection with RST (never an RST).
    fn reply_rst(&mut self, hdr: &Header) {
        if hdr.op == Op::Rst.raw() {
            return;
        }
        if self.rsts.len() >= MAX_PENDING_RSTS {
            inc(&self.metrics.rst_dropped, 1);
            return;
        }
        self.rsts.push_back(Header::to_guest(
            self.guest_cid,
            hdr.dst_port,
            hdr.src_port,
            Op::Rst,
        ));
    }
}
