//! Connections from end to end: handshakes, data both ways, credit, and
//! every way of closing. The host side is real Unix sockets.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::thread;
use std::time::Duration;

use super::packet::{Op, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND};
use super::test_util::*;
use super::*;

fn ops(pkts: &[Pkt]) -> Vec<Op> {
    pkts.iter().filter_map(Pkt::op).collect()
}

fn rw_bytes(pkts: &[Pkt]) -> usize {
    pkts.iter()
        .filter(|p| p.op() == Some(Op::Rw))
        .map(|p| p.data.len())
        .sum()
}

#[test]
fn host_connect_exchanges_data_both_ways() {
    let mut h = Harness::new();
    let mut c = h.client();
    c.write_all(b"CONNECT 52\n").unwrap();
    h.pump();
    let req = h.recv_one();
    let hport = req.hdr.src_port;
    assert!(hport >= 1 << 30, "an ephemeral host port: {hport}");
    assert_eq!(req.op(), Some(Op::Request));
    assert_eq!(
        (
            req.hdr.dst_port,
            req.hdr.len,
            req.hdr.flags,
            req.hdr.fwd_cnt
        ),
        (52, 0, 0, 0)
    );
    assert_eq!(req.hdr.buf_alloc, BUF_ALLOC);
    assert!(h.irq_raised());
    let mut g = GuestSock::new(52, hport);
    h.send(g.hdr(Op::Response), &[]);
    assert_eq!(read_line(&mut c), format!("OK {hport}\n"));

    c.write_all(b"hello").unwrap();
    assert_eq!(h.recv_data(&mut g, 5), b"hello");
    h.send(g.hdr(Op::Rw), b"world");
    let mut buf = [0u8; 5];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"world");

    let m = h.metrics();
    assert_eq!(
        (
            m.host_connections,
            m.bytes_to_guest,
            m.bytes_to_host,
            m.open_connections
        ),
        (1, 5, 5, 1)
    );
    assert_eq!(m.protocol_errors + m.bad_headers + m.tx_bad_chains, 0);
    // A second client gets another host port.
    let (_c2, g2) = h.host_connect(52);
    assert_ne!(g2.hport, hport);
}

#[test]
fn bytes_after_the_connect_line_reach_the_guest() {
    let mut h = Harness::new();
    let mut c = h.client();
    c.write_all(b"CONNECT 52\nearly bytes").unwrap();
    h.pump();
    let req = h.recv_one();
    assert_eq!(req.op(), Some(Op::Request));
    let mut g = GuestSock::new(52, req.hdr.src_port);
    // Nothing but the REQUEST before the guest accepts.
    h.post_rx(4, RX_BUF);
    h.pump();
    assert!(h.recv().is_empty());
    h.send(g.hdr(Op::Response), &[]);
    assert_eq!(read_line(&mut c), format!("OK {}\n", g.hport));
    assert_eq!(h.recv_data(&mut g, 11), b"early bytes");
}

#[test]
fn host_to_guest_data_follows_the_guest_credit() {
    let mut h = Harness::new();
    let (mut c, mut g) = h.host_connect(52);
    g.buf_alloc = 10_000;
    h.send(g.hdr(Op::CreditUpdate), &[]);
    let data = pattern(100_000, 1);
    let expect = data.clone();
    let writer = thread::spawn(move || {
        c.write_all(&data).unwrap();
        c
    });
    // Plenty of buffers, no credit update: exactly the credit arrives,
    // in packets no larger than the buffers, then one CREDIT_REQUEST.
    let mut got = Vec::new();
    for _ in 0..100 {
        h.post_rx(h.rx_room(), RX_BUF);
        h.pump();
        got.extend(h.recv());
        if got.iter().any(|p| p.op() == Some(Op::CreditRequest)) && rw_bytes(&got) == 10_000 {
            break;
        }
        thread::sleep(Duration::from_millis(2));
    }
    for _ in 0..5 {
        h.post_rx(h.rx_room(), RX_BUF);
        h.pump();
        got.extend(h.recv());
    }
    assert_eq!(rw_bytes(&got), 10_000);
    assert!(got.iter().all(|p| p.data.len() <= 4096));
    assert!(got.iter().filter(|p| p.op() == Some(Op::Rw)).count() >= 3);
    let requests = ops(&got)
        .iter()
        .filter(|&&o| o == Op::CreditRequest)
        .count();
    assert_eq!(requests, 1, "{:?}", ops(&got));
    let mut received: Vec<u8> = got.iter().flat_map(|p| p.data.clone()).collect();
    // The guest acknowledges: the rest flows.
    g.fwd_cnt = 10_000;
    h.send(g.hdr(Op::CreditUpdate), &[]);
    received.extend(h.recv_data(&mut g, 90_000));
    assert_eq!(received, expect);
    let _c = writer.join().unwrap();
    assert_eq!(h.metrics().bytes_to_guest, 100_000);
}

#[test]
fn guest_to_host_data_follows_the_device_credit() {
    let mut h = Harness::new();
    let (c, g) = h.host_connect(52);
    const N: usize = 1 << 20;
    let reader = thread::spawn(move || {
        let mut c = c;
        let mut v = vec![0u8; N];
        // Slow at first: the device has to buffer and hold the guest back.
        thread::sleep(Duration::from_millis(50));
        c.read_exact(&mut v).unwrap();
        v
    });
    let data = pattern(N, 9);
    let (mut sent, mut known_fwd, mut waits, mut updates) = (0usize, 0u32, 0, 0);
    while sent < N {
        for p in h.recv() {
            assert_eq!(p.op(), Some(Op::CreditUpdate), "{p:?}");
            assert_eq!(p.hdr.buf_alloc, BUF_ALLOC);
            known_fwd = p.hdr.fwd_cnt;
            updates += 1;
        }
        h.post_rx(h.rx_room(), RX_BUF);
        let credit = BUF_ALLOC as usize - (sent - known_fwd as usize);
        if credit == 0 {
            waits += 1;
            assert!(waits < 10_000, "no credit update came");
            thread::sleep(Duration::from_millis(1));
            h.pump();
            continue;
        }
        let n = credit.min(4096).min(N - sent);
        h.send(g.hdr(Op::Rw), &data[sent..sent + n]);
        sent += n;
    }
    // What the device still holds goes out as the host reads.
    while !reader.is_finished() {
        h.pump();
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(reader.join().unwrap(), data);
    let m = h.metrics();
    assert_eq!((m.bytes_to_host, m.credit_violations), (N as u64, 0));
    assert!(
        updates >= N / BUF_ALLOC as usize,
        "{updates} credit updates"
    );
    assert!(waits > 0, "the guest had to wait for credit at least once");
}

#[test]
fn guest_connects_to_a_host_listener() {
    let mut h = Harness::new();
    let l = UnixListener::bind(h.port_path(1234)).unwrap();
    let (mut g, p) = h.guest_connect(5000, 1234);
    assert_eq!(p.op(), Some(Op::Response));
    assert_eq!((p.hdr.src_port, p.hdr.dst_port), (1234, 5000));
    assert_eq!((p.hdr.buf_alloc, p.hdr.fwd_cnt), (BUF_ALLOC, 0));
    let (mut s, _) = l.accept().unwrap();
    h.send(g.hdr(Op::Rw), b"ping");
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    s.write_all(b"pong").unwrap();
    assert_eq!(h.recv_data(&mut g, 4), b"pong");
    let m = h.metrics();
    assert_eq!((m.guest_connections, m.open_connections), (1, 1));
}

#[test]
fn guest_connect_to_a_missing_or_dead_socket_gets_rst() {
    let mut h = Harness::new();
    let (_, p) = h.guest_connect(5000, 77);
    assert_eq!(p.op(), Some(Op::Rst));
    assert_eq!((p.hdr.src_port, p.hdr.dst_port), (77, 5000));
    // A socket file nobody listens on.
    drop(UnixListener::bind(h.port_path(78)).unwrap());
    let (_, p) = h.guest_connect(5001, 78);
    assert_eq!(p.op(), Some(Op::Rst));
    let m = h.metrics();
    assert_eq!((m.guest_connect_failures, m.open_connections), (2, 0));
}

#[test]
fn many_parallel_streams() {
    const N: u32 = 40;
    let mut h = Harness::new();
    // Host-initiated: all clients at once.
    let mut clients: Vec<UnixStream> = (0..N).map(|_| h.client()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(format!("CONNECT {}\n", 100 + i).as_bytes())
            .unwrap();
    }
    h.pump();
    let reqs = h.recv_until(|p| p.len() == N as usize);
    let mut socks = Vec::new();
    for r in &reqs {
        assert_eq!(r.op(), Some(Op::Request));
        let g = GuestSock::new(r.hdr.dst_port, r.hdr.src_port);
        h.send(g.hdr(Op::Response), &[]);
        socks.push(g);
    }
    socks.sort_by_key(|g| g.gport);
    for (c, g) in clients.iter_mut().zip(&socks) {
        assert_eq!(read_line(c), format!("OK {}\n", g.hport));
    }
    // Guest-initiated: N connections to one host service.
    let l = UnixListener::bind(h.port_path(777)).unwrap();
    for i in 0..N {
        let (g, p) = h.guest_connect(9000 + i, 777);
        assert_eq!(p.op(), Some(Op::Response));
        socks.push(g);
    }
    let mut served: Vec<UnixStream> = (0..N).map(|_| l.accept().unwrap().0).collect();
    clients.append(&mut served);
    assert_eq!(h.metrics().open_connections, 2 * u64::from(N));

    // Every host end writes its own bytes; every guest end its own.
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(&pattern(3000 + i, i as u8)).unwrap();
    }
    for (i, g) in socks.iter().enumerate() {
        h.send(g.hdr(Op::Rw), &pattern(100 + i, i as u8 ^ 0x55));
    }
    let total: usize = (0..2 * N as usize).map(|i| 3000 + i).sum();
    let pkts = h.recv_until(|p| rw_bytes(p) >= total);
    let mut by_conn: HashMap<(u32, u32), Vec<u8>> = HashMap::new();
    for p in pkts {
        assert_eq!(p.op(), Some(Op::Rw), "{p:?}");
        by_conn
            .entry((p.hdr.src_port, p.hdr.dst_port))
            .or_default()
            .extend(p.data);
    }
    for (i, (g, c)) in socks.iter().zip(clients.iter_mut()).enumerate() {
        assert_eq!(
            by_conn[&(g.hport, g.gport)],
            pattern(3000 + i, i as u8),
            "connection {i}"
        );
        let mut buf = vec![0u8; 100 + i];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(buf, pattern(100 + i, i as u8 ^ 0x55), "connection {i}");
    }
}

#[test]
fn guest_closing_mid_stream() {
    let mut h = Harness::new();
    let (mut c, g) = h.host_connect(52);
    h.send(g.hdr(Op::Rw), b"partial");
    h.send(g.shutdown(SHUTDOWN_BOTH), &[]);
    // The device finishes the connection: RST to the guest, EOF to the host.
    let p = h.recv_one();
    assert_eq!(p.op(), Some(Op::Rst));
    assert_eq!(read_to_end(&mut c), b"partial");
    assert!(h.dev.muxer.find(g.hport, g.gport).is_none());
    assert_eq!(h.metrics().open_connections, 0);
    // The host end is gone for writing too.
    let e = (0..100).find_map(|_| c.write(&[0; 4096]).err()).unwrap();
    assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
    // Late packets of the connection are answered with RST.
    h.send(g.hdr(Op::Rw), b"late");
    assert_eq!(h.recv_one().op(), Some(Op::Rst));
    assert_eq!(h.metrics().unknown_connections, 1);
}

/// The guest sends (following the credit) until the device holds data the
/// host has not read; returns what it sent.
fn fill_until_buffered(h: &mut Harness, g: &GuestSock) -> Vec<u8> {
    let mut sent = Vec::new();
    let mut known_fwd = 0u32;
    for round in 0..100_000 {
        assert!(round < 99_999, "the device never had to buffer");
        if h.dev.muxer.find(g.hport, g.gport).unwrap().want_out() {
            return sent;
        }
        for p in h.recv() {
            known_fwd = p.hdr.fwd_cnt;
        }
        h.post_rx(h.rx_room(), RX_BUF);
        let credit = BUF_ALLOC as usize - (sent.len() - known_fwd as usize);
        let chunk = pattern(credit.min(4096), sent.len() as u8);
        if chunk.is_empty() {
            h.pump();
        } else {
            h.send(g.hdr(Op::Rw), &chunk);
            sent.extend(chunk);
        }
    }
    unreachable!()
}

#[test]
fn guest_closing_with_data_the_host_has_not_read() {
    let mut h = Harness::new();
    let (mut c, g) = h.host_connect(52);
    let sent = fill_until_buffered(&mut h, &g);
    h.send(g.shutdown(SHUTDOWN_BOTH), &[]);
    // Not finished while the data waits for the host.
    h.pump();
    assert!(h.recv().iter().all(|p| p.op() != Some(Op::Rst)));
    assert!(h.dev.muxer.find(g.hport, g.gport).is_some());
    // The host reads it all, then EOF; the guest gets its RST.
    let reader = std::thread::spawn(move || read_to_end(&mut c));
    let p = h.recv_until(|p| p.iter().any(|p| p.op() == Some(Op::Rst)));
    assert_eq!(p.last().unwrap().op(), Some(Op::Rst));
    assert_eq!(reader.join().unwrap(), sent);
    assert_eq!(h.metrics().shutdown_timeouts, 0);

    // A host that never reads: the device gives up after the linger time.
    let mut h = Harness::new();
    let (_c, g) = h.host_connect(52);
    fill_until_buffered(&mut h, &g);
    h.set_timeouts(SHORT);
    h.send(g.shutdown(SHUTDOWN_BOTH), &[]);
    thread::sleep(SHORT * 2);
    let p = h.recv_until(|p| p.iter().any(|p| p.op() == Some(Op::Rst)));
    assert_eq!(p.last().unwrap().op(), Some(Op::Rst));
    let m = h.metrics();
    assert_eq!((m.shutdown_timeouts, m.open_connections), (1, 0));
    assert!(m.bytes_dropped > 0);
}

#[test]
fn guest_half_close_then_host_close() {
    let mut h = Harness::new();
    let (mut c, mut g) = h.host_connect(52);
    h.send(g.hdr(Op::Rw), b"request");
    h.send(g.shutdown(SHUTDOWN_SEND), &[]);
    assert_eq!(read_to_end(&mut c), b"request", "EOF after the data");
    // The other direction still works.
    c.write_all(b"reply").unwrap();
    assert_eq!(h.recv_data(&mut g, 5), b"reply");
    drop(c);
    let p = h.recv_one();
    assert_eq!((p.op(), p.hdr.flags), (Some(Op::Shutdown), SHUTDOWN_BOTH));
    assert!(h.dev.muxer.find(g.hport, g.gport).is_some());
    h.send(g.hdr(Op::Rst), &[]);
    assert!(h.dev.muxer.find(g.hport, g.gport).is_none());
    h.post_rx(4, RX_BUF);
    h.pump();
    assert!(h.recv().is_empty(), "nothing after the guest's RST");
}

#[test]
fn guest_shutdown_rcv_stops_host_to_guest() {
    let mut h = Harness::new();
    let (mut c, g) = h.host_connect(52);
    h.send(g.shutdown(SHUTDOWN_RCV), &[]);
    // The host's writes now fail; the guest gets no data.
    let e = (0..100).find_map(|_| c.write(&[1; 4096]).err()).unwrap();
    assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
    h.post_rx(8, RX_BUF);
    h.pump();
    assert!(h.recv().iter().all(|p| p.op() != Some(Op::Rw)));
    // The guest may still send.
    h.send(g.hdr(Op::Rw), b"still");
    let mut buf = [0u8; 5];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still");
}

#[test]
fn host_closing_mid_stream() {
    let mut h = Harness::new();
    let (mut c, g) = h.host_connect(52);
    c.write_all(b"bye").unwrap();
    drop(c);
    // The data first, then SHUTDOWN.
    let p = h.recv_until(|p| p.iter().any(|p| p.op() == Some(Op::Shutdown)));
    assert_eq!(ops(&p), vec![Op::Rw, Op::Shutdown]);
    assert_eq!(p[0].data, b"bye");
    assert_eq!(p[1].hdr.flags, SHUTDOWN_BOTH);
    h.send(g.hdr(Op::Rst), &[]);
    assert!(h.dev.muxer.find(g.hport, g.gport).is_none());
    assert_eq!(h.metrics().shutdown_timeouts, 0);

    // The guest does not answer: RST after the linger time.
    let mut h = Harness::new();
    let (c, g) = h.host_connect(52);
    h.set_timeouts(SHORT);
    drop(c);
    let p = h.recv_one();
    assert_eq!((p.op(), p.hdr.flags), (Some(Op::Shutdown), SHUTDOWN_BOTH));
    thread::sleep(SHORT * 2);
    let p = h.recv_one();
    assert_eq!(p.op(), Some(Op::Rst));
    assert!(h.dev.muxer.find(g.hport, g.gport).is_none());
    assert_eq!(h.metrics().shutdown_timeouts, 1);
}

#[test]
fn host_close_with_undeliverable_data_is_bounded_by_a_timeout() {
    let mut h = Harness::new();
    let (mut c, mut g) = h.host_connect(52);
    h.set_timeouts(SHORT);
    // The guest grants no credit at all.
    g.buf_alloc = 0;
    h.send(g.hdr(Op::CreditUpdate), &[]);
    c.write_all(&[5; 10_000]).unwrap();
    drop(c);
    h.post_rx(8, RX_BUF);
    h.pump();
    let first = h.recv();
    assert_eq!(ops(&first)[0], Op::CreditRequest);
    assert_eq!(rw_bytes(&first), 0, "no credit, no data");
    thread::sleep(SHORT * 2);
    let p = h.recv_one();
    assert_eq!(p.op(), Some(Op::Rst));
    assert_eq!(h.metrics().open_connections, 0);
}

#[test]
fn host_half_close() {
    let mut h = Harness::new();
    let (mut c, g) = h.host_connect(52);
    c.shutdown(Shutdown::Write).unwrap();
    let p = h.recv_one();
    assert_eq!((p.op(), p.hdr.flags), (Some(Op::Shutdown), SHUTDOWN_SEND));
    h.send(g.hdr(Op::Rw), b"still open");
    let mut buf = [0u8; 10];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still open");
    h.send(g.shutdown(SHUTDOWN_BOTH), &[]);
    assert!(read_to_end(&mut c).is_empty());
    assert_eq!(h.recv_one().op(), Some(Op::Rst));
    assert!(h.dev.muxer.find(g.hport, g.gport).is_none());
}

#[test]
fn guest_refusal_and_silence_reach_the_host_client() {
    // RST: connection refused.
    let mut h = Harness::new();
    let mut c = h.client();
    c.write_all(b"CONNECT 52\n").unwrap();
    h.pump();
    let req = h.recv_one();
    let g = GuestSock::new(52, req.hdr.src_port);
    h.send(g.hdr(Op::Rst), &[]);
    assert_eq!(read_line(&mut c), "ERR connection refused\n");
    assert!(read_to_end(&mut c).is_empty());
    assert_eq!(h.metrics().connect_refused, 1);

    // No answer: timeout, and the guest is told to forget it.
    h.set_timeouts(SHORT);
    let mut c = h.client();
    c.write_all(b"CONNECT 53\n").unwrap();
    h.pump();
    let req = h.recv_one();
    assert_eq!(req.op(), Some(Op::Request));
    thread::sleep(SHORT * 2);
    let rst = h.recv_one();
    assert_eq!(rst.op(), Some(Op::Rst));
    assert_eq!(rst.hdr.src_port, req.hdr.src_port);
    assert_eq!(read_line(&mut c), "ERR timeout\n");
    assert!(read_to_end(&mut c).is_empty());
    assert_eq!(h.metrics().connect_timeouts, 1);
    // A late RESPONSE is answered with RST.
    let g = GuestSock::new(53, req.hdr.src_port);
    h.send(g.hdr(Op::Response), &[]);
    assert_eq!(h.recv_one().op(), Some(Op::Rst));

    // The client leaves while the guest decides: RST to the guest.
    let mut c = h.client();
    c.write_all(b"CONNECT 54\n").unwrap();
    h.pump();
    assert_eq!(h.recv_one().op(), Some(Op::Request));
    drop(c);
    assert_eq!(h.recv_one().op(), Some(Op::Rst));
    // ... and before the REQUEST went out (no receive buffers): nothing.
    let mut h = Harness::new();
    let mut c = h.client();
    c.write_all(b"CONNECT 55\n").unwrap();
    h.pump();
    drop(c);
    h.pump();
    h.post_rx(8, RX_BUF);
    h.pump();
    assert!(h.recv().is_empty());
    assert_eq!(h.metrics().open_connections, 0);
}

#[test]
fn malformed_connect_lines_are_refused() {
    let mut h = Harness::new();
    let cases: [(&[u8], &str); 7] = [
        (b"connect 5\n", "malformed CONNECT line"),
        (b"CONNECT\n", "malformed CONNECT line"),
        (b"CONNECT 5 6\n", "malformed CONNECT line"),
        (b"CONNECT -5\n", "malformed CONNECT line"),
        (b"\n", "malformed CONNECT line"),
        (b"CONNECT 4294967295\n", "invalid port"),
        (&[b'A'; 40], "line too long"),
    ];
    for (line, reason) in cases {
        let mut c = h.client();
        c.write_all(line).unwrap();
        h.pump();
        assert_eq!(read_line(&mut c), format!("ERR {reason}\n"), "{line:?}");
        assert!(read_to_end(&mut c).is_empty());
    }
    assert_eq!(h.metrics().handshake_errors, 7);
    // Closing mid-line is not an error worth an answer.
    let mut c = h.client();
    c.write_all(b"CONN").unwrap();
    h.pump();
    c.shutdown(Shutdown::Write).unwrap();
    h.pump();
    assert!(read_to_end(&mut c).is_empty());
    assert_eq!(h.dev.muxer.counts(), (0, 0));

    // Silence: timeout.
    h.set_timeouts(SHORT);
    let mut c = h.client();
    h.pump();
    thread::sleep(SHORT * 2);
    h.pump();
    assert_eq!(read_line(&mut c), "ERR timeout\n");
    assert_eq!(h.metrics().handshake_errors, 8);
    h.post_rx(8, RX_BUF);
    h.pump();
    assert!(h.recv().is_empty(), "the guest heard of none of them");
}

#[test]
fn handshakes_are_bounded() {
    let mut h = Harness::new();
    let idle: Vec<UnixStream> = (0..MAX_HANDSHAKES).map(|_| h.client()).collect();
    h.pump();
    assert_eq!(h.dev.muxer.counts(), (MAX_HANDSHAKES, MAX_HANDSHAKES));
    let mut extra = h.client();
    h.pump();
    assert_eq!(read_line(&mut extra), "ERR too many connections\n");
    assert_eq!(h.metrics().table_full, 1);
    // One of them goes on: room for another.
    let mut idle = idle;
    idle[0].write_all(b"CONNECT 9\n").unwrap();
    h.pump();
    assert_eq!(h.dev.muxer.counts().1, MAX_HANDSHAKES - 1);
    let _another = h.client();
    h.pump();
    assert_eq!(h.dev.muxer.counts().1, MAX_HANDSHAKES);
}
