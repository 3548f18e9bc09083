//! A hostile guest: forged headers, malformed chains, ignored credit,
//! floods, broken rings. Each is counted and contained: no panic, no hang,
//! no unbounded growth, no access outside guest memory.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;

use vm_memory::{Bytes, GuestAddress};

use super::packet::{Header, Op, SHUTDOWN_SEND};
use super::test_util::*;
use super::*;

/// VRING_DESC_F_INDIRECT.
const INDIRECT: u16 = 4;

/// A packet from the guest for no connection, so that whether the device
/// took it shows as an RST reply.
fn probe() -> Header {
    GuestSock::new(4000, 4001).hdr(Op::Rw)
}

fn assert_rst_for(p: &Pkt, g: &GuestSock) {
    assert_eq!(p.op(), Some(Op::Rst), "{p:?}");
    assert_eq!((p.hdr.src_port, p.hdr.dst_port), (g.hport, g.gport));
}

#[test]
fn spoofed_and_misaddressed_packets_are_dropped_silently() {
    let mut h = Harness::new();
    let (_c, g) = h.host_connect(52);
    let addresses = [
        (4, HOST_CID),
        (HOST_CID, HOST_CID),
        (CID | 1 << 32, HOST_CID),
        (CID, CID),
        (CID, HOST_CID | 1 << 32),
        (CID, 1),
    ];
    for (src, dst) in addresses {
        // Even an RST for the real connection: forged, so ignored.
        let mut hd = g.hdr(Op::Rst);
        hd.src_cid = src;
        hd.dst_cid = dst;
        h.send(hd, &[]);
        let mut hd = probe();
        hd.src_cid = src;
        hd.dst_cid = dst;
        h.send(hd, b"data");
    }
    h.post_rx(8, RX_BUF);
    h.pump();
    assert!(h.recv().is_empty(), "no answer to forged packets");
    assert!(h.dev.muxer.find(g.hport, g.gport).is_some());
    let m = h.metrics();
    assert_eq!((m.bad_cids, m.bad_headers), (12, 0));
    for i in 0..h.used_idx(TX) {
        assert_eq!(h.used_elem(TX, i).1, 0, "transmit chains are only read");
    }
}

/// Every way a header can be wrong other than its addresses.
fn bad_headers(g: &GuestSock) -> Vec<(Header, Vec<u8>)> {
    let with = |f: &dyn Fn(&mut Header)| {
        let mut hd = g.hdr(Op::Rw);
        f(&mut hd);
        hd
    };
    vec![
        (with(&|h| h.type_ = 2), b"x".to_vec()),
        (with(&|h| h.type_ = 0), vec![]),
        (with(&|h| h.op = 0), vec![]),
        (with(&|h| h.op = 8), vec![]),
        (with(&|h| h.op = u16::MAX), vec![]),
        (g.hdr(Op::Request), b"payload".to_vec()),
        (g.hdr(Op::CreditUpdate), b"p".to_vec()),
        (with(&|h| h.flags = 1), b"x".to_vec()),
        (g.shutdown(4), vec![]),
        (g.shutdown(u32::MAX), vec![]),
        (
            Header {
                flags: 2,
                ..g.hdr(Op::CreditRequest)
            },
            vec![],
        ),
    ]
}

#[test]
fn bad_headers_get_rst_or_reset_their_connection() {
    let mut h = Harness::new();
    // For no connection: an RST reply each.
    let g = GuestSock::new(1000, 99);
    let bad = bad_headers(&g);
    for (hd, payload) in &bad {
        h.send(*hd, payload);
        assert_rst_for(&h.recv_one(), &g);
    }
    let n = bad.len() as u64;
    assert_eq!(h.metrics().bad_headers, n);
    // For a connection: it is reset, the host end sees EOF.
    for (i, (hd, payload)) in bad.into_iter().enumerate() {
        let (mut c, g) = h.host_connect(52 + i as u32);
        let hd = Header {
            src_port: g.gport,
            dst_port: g.hport,
            ..hd
        };
        h.send(hd, &payload);
        assert_rst_for(&h.recv_one(), &g);
        assert!(read_to_end(&mut c).is_empty(), "header {i}");
        assert!(h.dev.muxer.find(g.hport, g.gport).is_none());
    }
    let m = h.metrics();
    assert_eq!((m.bad_headers, m.open_connections), (2 * n, 0));
}

#[test]
fn payload_length_must_fit_the_chain_and_the_maximum() {
    let mut h = Harness::new();
    // More announced than carried.
    let (mut c, g) = h.host_connect(52);
    let mut hd = g.hdr(Op::Rw);
    hd.len = 100;
    h.queue_raw(hd, &[1; 10]);
    h.dev.queue_notify(TX);
    assert_rst_for(&h.recv_one(), &g);
    assert!(
        read_to_end(&mut c).is_empty(),
        "no byte of it reached the host"
    );

    // More than the largest payload, with a chain that carries it.
    let (mut c, g) = h.host_connect(53);
    let mut hd = g.hdr(Op::Rw);
    hd.len = MAX_PAYLOAD as u32 + 1;
    h.write(SCRATCH, &hd.encode());
    h.add(
        TX,
        &[
            (SCRATCH, HDR as u32, R),
            (SCRATCH + 0x100, MAX_PAYLOAD as u32 + 1, R),
        ],
    );
    h.dev.queue_notify(TX);
    assert_rst_for(&h.recv_one(), &g);
    assert!(read_to_end(&mut c).is_empty());
    let m = h.metrics();
    assert_eq!((m.tx_bad_chains, m.bad_headers, m.bytes_to_host), (2, 2, 0));

    // Legal oddities: a header split over descriptors, a payload straddling
    // the two memory regions, trailing bytes after the payload.
    let (mut c, g) = h.host_connect(54);
    let mut hd = g.hdr(Op::Rw);
    hd.len = 5;
    let raw = hd.encode();
    let (a, b) = raw.split_at(10);
    h.write(REGION - 10, a);
    h.write(REGION, b);
    h.write(REGION + 34, b"hello-and-more");
    h.add(
        TX,
        &[(REGION - 10, 10, R), (REGION, 34, R), (REGION + 34, 14, R)],
    );
    h.dev.queue_notify(TX);
    let mut buf = [0u8; 5];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    assert_eq!(h.metrics().tx_bad_chains, 2);
}

#[test]
fn malformed_transmit_chains_are_returned_unused() {
    let mut h = Harness::new();
    h.write(SCRATCH, &probe().encode());
    let hdr = HDR as u32;
    // A device-writable header.
    h.add(TX, &[(SCRATCH, hdr, W)]);
    // Outside guest memory, straddling its end, wrapping the address space.
    h.add(TX, &[(MEM_END, hdr, R)]);
    h.add(TX, &[(MEM_END - 10, hdr, R)]);
    h.add(TX, &[(u64::MAX - 5, hdr, R)]);
    // Shorter than a header, and empty.
    h.add(TX, &[(SCRATCH, hdr - 1, R)]);
    h.add(TX, &[(SCRATCH, 0, R)]);
    // A descriptor looping onto itself.
    let i = h.chain(TX, &[(SCRATCH, 8, R)]);
    h.set_desc(TX, i, (SCRATCH, 8, R | NEXT), i);
    h.publish(TX, i);
    // A next index beyond the table.
    let i = h.chain(TX, &[(SCRATCH, 8, R)]);
    h.set_desc(TX, i, (SCRATCH, 8, R | NEXT), 99);
    h.publish(TX, i);
    // A head index beyond the table is a broken ring, tested elsewhere.
    h.dev.queue_notify(TX);
    let m = h.metrics();
    assert_eq!((m.tx_bad_chains, m.packets_from_guest), (8, 0));
    assert!(!h.dev.needs_reset());

    // An indirect table of more descriptors than the queue has.
    let table = SCRATCH + 0x1000;
    for n in 0..32u16 {
        let d = virtio_queue::desc::split::Descriptor::new(SCRATCH, 2, R | NEXT, n + 1);
        h.mem
            .write_obj(d, GuestAddress(table + 16 * u64::from(n)))
            .unwrap();
    }
    h.add(TX, &[(table, 32 * 16, INDIRECT)]);
    // The header is fine, the payload descriptor device-writable: the
    // packet's connection (none here) gets an RST.
    h.write(SCRATCH + 0x2000, &probe().encode());
    h.add(TX, &[(SCRATCH + 0x2000, hdr, R), (SCRATCH + 0x3000, 4, W)]);
    // Readable header, payload outside memory.
    h.add(TX, &[(SCRATCH + 0x2000, hdr, R), (MEM_END - 2, 4, R)]);
    h.dev.queue_notify(TX);
    let m = h.metrics();
    assert_eq!((m.tx_bad_chains, m.bad_headers), (11, 2));
    h.post_rx(4, RX_BUF);
    let p = h.recv();
    assert_eq!(p.len(), 2);
    assert!(p.iter().all(|p| p.op() == Some(Op::Rst)));
    for i in 0..h.used_idx(TX) {
        assert_eq!(h.used_elem(TX, i).1, 0);
    }
    // The queue still works.
    h.send(probe(), b"x");
    assert_eq!(h.recv_one().op(), Some(Op::Rst));
}

#[test]
fn malformed_receive_chains_are_returned_unused() {
    let mut h = Harness::new();
    // A packet waits: the RST for a probe.
    h.send(probe(), b"x");
    let buf = SCRATCH;
    h.add(RX, &[(buf, RX_BUF, R)]);
    h.add(RX, &[(buf, HDR as u32, W)]);
    h.add(RX, &[(buf, 10, W), (buf + 10, 34, W)]);
    h.add(RX, &[(MEM_END - 100, RX_BUF, W)]);
    h.add(RX, &[(u64::MAX - 100, RX_BUF, W)]);
    let i = h.chain(RX, &[(buf, 8, W)]);
    h.set_desc(RX, i, (buf, 8, W | NEXT), i);
    h.publish(RX, i);
    // A good chain: header and payload in separate, odd-sized pieces.
    h.add(
        RX,
        &[(buf, 7, W), (buf + 0x100, 0, W), (buf + 0x200, 200, W)],
    );
    h.dev.queue_notify(RX);
    assert_eq!(h.used_idx(RX), 7);
    for n in 0..6 {
        assert_eq!(h.used_elem(RX, n).1, 0, "bad chain {n}");
    }
    assert_eq!(h.used_elem(RX, 6).1, HDR as u32);
    let mut raw = h.read(buf, 7);
    raw.extend(h.read(buf + 0x200, HDR - 7));
    let hdr = Header::decode(raw.as_slice().try_into().unwrap());
    assert_eq!(hdr.op, Op::Rst.raw());
    assert_eq!((hdr.src_port, hdr.dst_port), (4001, 4000));
    assert_eq!(h.metrics().rx_bad_chains, 6);
    assert!(!h.dev.needs_reset());
}

#[test]
fn a_guest_ignoring_credit_is_reset() {
    let mut h = Harness::new();
    let (mut c, g) = h.host_connect(52);
    // Exactly the credit in one packet, then one byte more, in one batch
    // (so no credit update can come in between).
    h.queue_tx(g.hdr(Op::Rw), &pattern(BUF_ALLOC as usize, 1));
    h.queue_tx(g.hdr(Op::Rw), b"!");
    h.dev.queue_notify(TX);
    assert_rst_for(&h.recv_one(), &g);
    let got = read_to_end(&mut c);
    assert!(got.len() <= BUF_ALLOC as usize);
    assert_eq!(got, pattern(got.len(), 1));
    let m = h.metrics();
    assert_eq!((m.credit_violations, m.open_connections), (1, 0));

    // A guest that keeps sending whatever the credit, to a host that does
    // not read: reset once the device would hold more than BUF_ALLOC.
    let (_c, g) = h.host_connect(53);
    let chunk = pattern(MAX_PAYLOAD, 2);
    for _ in 0..20 {
        h.send(g.hdr(Op::Rw), &chunk);
        if h.metrics().credit_violations > 1 {
            break;
        }
    }
    assert_eq!(
        h.metrics().credit_violations,
        2,
        "reset once the host stalls"
    );
}

#[test]
fn request_floods_and_rst_floods_are_bounded() {
    let mut h = Harness::with_capacity(8);
    let _l = UnixListener::bind(h.port_path(5)).unwrap();
    // No receive buffers yet: replies pile up, within bounds.
    for batch in 0..2u32 {
        for i in 0..10 {
            h.queue_tx(
                GuestSock::new(1000 + batch * 10 + i, 5).hdr(Op::Request),
                &[],
            );
        }
        h.dev.queue_notify(TX);
    }
    assert_eq!(h.dev.muxer.counts().0, 8);
    let m = h.metrics();
    assert_eq!((m.guest_connections, m.table_full), (8, 12));
    // Host clients are refused too while the table is full.
    let mut c = h.client();
    h.pump();
    assert_eq!(read_line(&mut c), "ERR too many connections\n");
    // Packets for no connection: RST replies beyond the queue's bound are
    // dropped.
    for batch in 0..10u32 {
        for i in 0..16 {
            h.queue_tx(GuestSock::new(2000 + batch * 16 + i, 6).hdr(Op::Rw), &[]);
        }
        h.dev.queue_notify(TX);
    }
    let m = h.metrics();
    assert_eq!(m.rst_dropped, 12 + 160 - 64);
    // The guest catches up: 64 RSTs, then the 8 RESPONSEs.
    let p = h.recv_until(|p| p.len() == 72);
    assert!(p[..64].iter().all(|p| p.op() == Some(Op::Rst)));
    assert!(p[64..].iter().all(|p| p.op() == Some(Op::Response)));
    h.post_rx(8, RX_BUF);
    h.pump();
    assert!(h.recv().is_empty());
}

#[test]
fn without_receive_buffers_nothing_is_read_from_the_host() {
    let mut h = Harness::new();
    let (mut c, _g) = h.host_connect(52);
    // Use up the buffers left posted.
    while h.rx_free() > 0 {
        h.send(probe(), b"x");
    }
    let before = h.metrics();
    c.set_nonblocking(true).unwrap();
    let mut written = 0;
    while let Ok(n) = c.write(&[9; 4096]) {
        written += n;
        h.pump();
        assert!(written < 64 << 20, "the host socket never filled up");
    }
    let m = h.metrics();
    assert_eq!(m.bytes_to_guest, before.bytes_to_guest);
    assert!(m.rx_no_buffers > before.rx_no_buffers);
    assert!(written > 0);
}

/// Something a guest does on a connection.
type Case = dyn Fn(&mut Harness, &GuestSock);

#[test]
fn packets_out_of_place_reset_the_connection() {
    let mut h = Harness::new();
    // RESPONSE, REQUEST on an established connection; data after the
    // guest's SHUTDOWN(SEND).
    let cases: [&Case; 3] = [
        &|h, g| h.send(g.hdr(Op::Response), &[]),
        &|h, g| h.send(g.hdr(Op::Request), &[]),
        &|h, g| {
            h.send(g.shutdown(SHUTDOWN_SEND), &[]);
            h.send(g.hdr(Op::Rw), b"more");
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        let (mut c, g) = h.host_connect(60 + i as u32);
        case(&mut h, &g);
        assert_rst_for(&h.recv_one(), &g);
        assert!(h.dev.muxer.find(g.hport, g.gport).is_none(), "case {i}");
        let _ = read_to_end(&mut c);
    }
    assert_eq!(h.metrics().protocol_errors, 3);

    // Data or SHUTDOWN before the guest accepted: the client hears of it.
    for (i, hd) in [(Op::Rw, &b"x"[..]), (Op::Shutdown, &b""[..])]
        .into_iter()
        .enumerate()
    {
        let mut c = h.client();
        c.write_all(format!("CONNECT {}\n", 70 + i).as_bytes())
            .unwrap();
        h.pump();
        let req = h.recv_one();
        let g = GuestSock::new(req.hdr.dst_port, req.hdr.src_port);
        let mut head = g.hdr(hd.0);
        if hd.0 == Op::Shutdown {
            head.flags = 3;
        }
        h.send(head, hd.1);
        assert_rst_for(&h.recv_one(), &g);
        assert_eq!(read_line(&mut c), "ERR connection reset\n");
    }
    assert_eq!(h.metrics().protocol_errors, 5);

    // A CREDIT_REQUEST is legitimate: answered with CREDIT_UPDATE.
    let (_c, g) = h.host_connect(80);
    h.send(g.hdr(Op::CreditRequest), &[]);
    let p = h.recv_one();
    assert_eq!(p.op(), Some(Op::CreditUpdate));
    assert_eq!((p.hdr.buf_alloc, p.hdr.fwd_cnt), (BUF_ALLOC, 0));
}

#[test]
fn hostile_credit_fields_are_harmless() {
    let mut h = Harness::new();
    let (mut c, mut g) = h.host_connect(52);
    // The guest claims to have consumed more than it was sent: no credit.
    g.fwd_cnt = 0x8000_0000;
    h.send(g.hdr(Op::CreditUpdate), &[]);
    c.write_all(&[1; 1000]).unwrap();
    let p = h.recv_one();
    assert_eq!(p.op(), Some(Op::CreditRequest));
    h.post_rx(4, RX_BUF);
    h.pump();
    assert!(h.recv().is_empty());
    // Back to sense, with an absurd buffer: packets stay buffer-sized.
    g.fwd_cnt = 0;
    g.buf_alloc = u32::MAX;
    h.send(g.hdr(Op::CreditUpdate), &[]);
    c.write_all(&[2; 10_000]).unwrap();
    let data = h.recv_data(&mut g, 11_000);
    assert_eq!(data.len(), 11_000);
}

#[test]
fn counters_wrap_around() {
    let mut h = Harness::new();
    let (mut c, mut g) = h.host_connect(52);
    let base = u32::MAX - 20_000;
    h.dev
        .muxer
        .find_mut(g.hport, g.gport)
        .unwrap()
        .offset_counters(base);
    g.fwd_cnt = base;
    h.send(g.hdr(Op::CreditUpdate), &[]);
    // Host to guest across the wrap.
    let data = pattern(100_000, 3);
    let writer = {
        let mut c = c.try_clone().unwrap();
        let data = data.clone();
        std::thread::spawn(move || c.write_all(&data).unwrap())
    };
    assert_eq!(h.recv_data(&mut g, data.len()), data);
    writer.join().unwrap();
    // Guest to host across the wrap, following the device's credit.
    c.set_nonblocking(true).unwrap();
    let mut known_fwd = base;
    let mut sent = 0usize;
    let mut got = Vec::new();
    let expect = pattern(100_000, 4);
    for round in 0.. {
        assert!(round < 100_000, "stuck at {sent} bytes");
        if sent == 100_000 {
            break;
        }
        let in_use = (base.wrapping_add(sent as u32)).wrapping_sub(known_fwd);
        let credit = (BUF_ALLOC - in_use) as usize;
        let n = credit.min(4096).min(100_000 - sent);
        if n > 0 {
            h.send(g.hdr(Op::Rw), &expect[sent..sent + n]);
            sent += n;
        }
        let mut buf = [0u8; 8192];
        if let Ok(k) = c.read(&mut buf) {
            got.extend_from_slice(&buf[..k]);
        }
        h.post_rx(h.rx_room(), RX_BUF);
        h.pump();
        for p in h.recv() {
            assert_eq!(p.op(), Some(Op::CreditUpdate));
            known_fwd = p.hdr.fwd_cnt;
        }
    }
    // What the device still holds goes out as the host reads.
    for _ in 0..100_000 {
        if got.len() == expect.len() {
            break;
        }
        let mut buf = [0u8; 8192];
        if let Ok(k) = c.read(&mut buf) {
            got.extend_from_slice(&buf[..k]);
        }
        h.pump();
    }
    assert_eq!(got, expect);
    assert_eq!(h.metrics().credit_violations, 0);
}

#[test]
fn broken_rings_need_reset() {
    // An available index more than a queue ahead.
    let mut h = Harness::new();
    let (mut c, _g) = h.host_connect(52);
    h.write(h.rings[TX].avail + 2, &100u16.to_le_bytes());
    h.dev.queue_notify(TX);
    assert!(h.dev.needs_reset());
    assert_eq!(h.metrics().queue_errors, 1);
    assert!(read_to_end(&mut c).is_empty(), "connections end");
    // Further notifications and events do nothing, and do not spin.
    h.dev.queue_notify(TX);
    h.dev.queue_notify(RX);
    h.pump();
    assert_eq!(h.metrics().queue_errors, 1);

    // A head index beyond the receive queue cannot be returned.
    let mut h = Harness::new();
    h.publish(RX, 99);
    h.send(probe(), b"x");
    assert!(h.dev.needs_reset());
    let m = h.metrics();
    assert_eq!((m.rx_bad_chains, m.queue_errors), (1, 1));
    // A reset brings the device back.
    h.dev.reset();
    assert!(!h.dev.needs_reset());
}
