//! Counters of one vsock device.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one vsock device, shared with whoever reports them. Relaxed
/// atomics: each is exact, together they are not a snapshot of one instant.
#[derive(Debug, Default)]
pub struct VsockMetrics {
    pub(super) host_connections: AtomicU64,
    pub(super) guest_connections: AtomicU64,
    pub(super) open_connections: AtomicU64,
    pub(super) connect_refused: AtomicU64,
    pub(super) connect_timeouts: AtomicU64,
    pub(super) guest_connect_failures: AtomicU64,
    pub(super) table_full: AtomicU64,
    pub(super) handshake_errors: AtomicU64,
    pub(super) shutdown_timeouts: AtomicU64,
    pub(super) bytes_to_guest: AtomicU64,
    pub(super) bytes_to_host: AtomicU64,
    pub(super) bytes_dropped: AtomicU64,
    pub(super) packets_to_guest: AtomicU64,
    pub(super) packets_from_guest: AtomicU64,
    pub(super) tx_bad_chains: AtomicU64,
    pub(super) rx_bad_chains: AtomicU64,
    pub(super) rx_no_buffers: AtomicU64,
    pub(super) bad_cids: AtomicU64,
    pub(super) bad_headers: AtomicU64,
    pub(super) unknown_connections: AtomicU64,
    pub(super) protocol_errors: AtomicU64,
    pub(super) credit_violations: AtomicU64,
    pub(super) rst_dropped: AtomicU64,
    pub(super) host_errors: AtomicU64,
    pub(super) queue_errors: AtomicU64,
}

/// A copy of [`VsockMetrics`] at one time.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VsockMetricsSnapshot {
    /// Host-initiated connections the guest accepted.
    pub host_connections: u64,
    /// Guest-initiated connections to a host socket.
    pub guest_connections: u64,
    /// Entries of the connection table in use now (including host clients
    /// that have not sent their CONNECT line yet).
    pub open_connections: u64,
    /// Host-initiated connections the guest refused (RST).
    pub connect_refused: u64,
    /// Host-initiated connections the guest did not answer in time.
    pub connect_timeouts: u64,
    /// Guest connections to a host port whose socket is missing or refuses.
    pub guest_connect_failures: u64,
    /// Connections refused because the table (or the handshake quota) was
    /// full.
    pub table_full: u64,
    /// Host clients refused for a malformed, overlong or late CONNECT line.
    pub handshake_errors: u64,
    /// Connections reset because a shutdown did not complete in time.
    pub shutdown_timeouts: u64,
    /// Payload bytes delivered to the guest.
    pub bytes_to_guest: u64,
    /// Payload bytes written to host sockets.
    pub bytes_to_host: u64,
    /// Guest payload bytes dropped because the host side had gone.
    pub bytes_dropped: u64,
    /// Packets placed in the receive queue.
    pub packets_to_guest: u64,
    /// Packets taken from the transmit queue with a readable header.
    pub packets_from_guest: u64,
    /// Malformed transmit chains (direction, range, loop, length, count).
    pub tx_bad_chains: u64,
    /// Malformed or too small receive chains, returned unused.
    pub rx_bad_chains: u64,
    /// Times delivery paused because the guest had no receive buffers.
    pub rx_no_buffers: u64,
    /// Packets dropped for a source CID other than the guest's or a
    /// destination other than the host.
    pub bad_cids: u64,
    /// Packets refused for their type, operation, length or flags.
    pub bad_headers: u64,
    /// Packets for no known connection (answered with RST).
    pub unknown_connections: u64,
    /// Packets not valid in their connection's state (connection reset).
    pub protocol_errors: u64,
    /// Data beyond the credit the device granted (connection reset).
    pub credit_violations: u64,
    /// RST replies dropped because the reply queue was full.
    pub rst_dropped: u64,
    /// Unexpected I/O errors on host sockets.
    pub host_errors: u64,
    /// Ring failures that put the device in DEVICE_NEEDS_RESET.
    pub queue_errors: u64,
}

impl VsockMetrics {
    /// Read all counters.
    pub fn snapshot(&self) -> VsockMetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        VsockMetricsSnapshot {
            host_connections: get(&self.host_connections),
            guest_connections: get(&self.guest_connections),
            open_connections: get(&self.open_connections),
            connect_refused: get(&self.connect_refused),
            connect_timeouts: get(&self.connect_timeouts),
            guest_connect_failures: get(&self.guest_connect_failures),
            table_full: get(&self.table_full),
            handshake_errors: get(&self.handshake_errors),
            shutdown_timeouts: get(&self.shutdown_timeouts),
            bytes_to_guest: get(&self.bytes_to_guest),
            bytes_to_host: get(&self.bytes_to_host),
            bytes_dropped: get(&self.bytes_dropped),
            packets_to_guest: get(&self.packets_to_guest),
            packets_from_guest: get(&self.packets_from_guest),
            tx_bad_chains: get(&self.tx_bad_chains),
            rx_bad_chains: get(&self.rx_bad_chains),
            rx_no_buffers: get(&self.rx_no_buffers),
            bad_cids: get(&self.bad_cids),
            bad_headers: get(&self.bad_headers),
            unknown_connections: get(&self.unknown_connections),
            protocol_errors: get(&self.protocol_errors),
            credit_violations: get(&self.credit_violations),
            rst_dropped: get(&self.rst_dropped),
            host_errors: get(&self.host_errors),
            queue_errors: get(&self.queue_errors),
        }
    }
}

/// Add `by` to counter `c`.
pub(super) fn inc(c: &AtomicU64, by: u64) {
    c.fetch_add(by, Ordering::Relaxed);
}

/// Add a byte count to counter `c`.
pub(super) fn add_bytes(c: &AtomicU64, n: usize) {
    inc(c, u64::try_from(n).unwrap_or(u64::MAX));
}

/// Set gauge `c`.
pub(super) fn set(c: &AtomicU64, v: usize) {
    c.store(u64::try_from(v).unwrap_or(u64::MAX), Ordering::Relaxed);
}
