#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::sync::Mutex;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_MQ,
    VIRTIO_NET_F_MTU, VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP,
};

use virtio_queue::QueueT;
use vm_memory::GuestAddress;

use super::test_util::*;
use super::*;

const ALL_TUN: u32 = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;
const RX: usize = RX_QUEUE;
const TX: usize = TX_QUEUE;
const NEEDS_CSUM: u8 = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
const DATA_VALID: u8 = VIRTIO_NET_HDR_F_DATA_VALID as u8;
const TCPV4: u8 = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
const TCPV6: u8 = VIRTIO_NET_HDR_GSO_TCPV6 as u8;
const ECN: u8 = VIRTIO_NET_HDR_GSO_ECN as u8;

fn f(b: u32) -> u64 {
    1 << b
}

fn harness(features: u64) -> (Harness<Fake>, Arc<Mutex<FakeState>>) {
    let (fake, state) = Fake::new(ALL_TUN);
    (Harness::new(fake, features), state)
}

/// Queue (without notifying) a 60-byte frame at `BUF` whose first write
/// to the backend fails with `e`.
fn queue_failing_tx(h: &mut Harness<Fake>, state: &Mutex<FakeState>, e: io::Error) {
    h.write(BUF, &packet(0, 0, 60));
    state.lock().unwrap().tx_errors.push_back(e);
    h.add(TX, &[(BUF, HDR as u32 + 60, R)]);
}

fn queue_rx(state: &Mutex<FakeState>, p: Vec<u8>) {
    state.lock().unwrap().rx.push_back(Ok(p));
}

/// `p` as the guest should see it: with `num_buffers` set.
fn with_num_buffers(p: &[u8], n: u16) -> Vec<u8> {
    let mut v = p.to_vec();
    v[10..12].copy_from_slice(&n.to_le_bytes());
    v
}

fn backend_readable<B: NetBackend>(h: &mut Harness<B>) {
    let fd = h.net.backend().as_raw_fd();
    h.net.backend_event(fd, EventSet::IN | EventSet::OUT);
}

#[test]
fn offered_features_follow_backend_offloads() {
    let always = BASE
        | EVENT_IDX
        | MRG
        | f(VIRTIO_NET_F_MAC)
        | f(VIRTIO_NET_F_STATUS)
        | f(VIRTIO_NET_F_CSUM)
        | f(VIRTIO_NET_F_HOST_TSO4)
        | f(VIRTIO_NET_F_HOST_TSO6)
        | f(VIRTIO_NET_F_HOST_ECN);
    let guest_all = f(VIRTIO_NET_F_GUEST_CSUM)
        | f(VIRTIO_NET_F_GUEST_TSO4)
        | f(VIRTIO_NET_F_GUEST_TSO6)
        | f(VIRTIO_NET_F_GUEST_ECN);
    let offered = |tun: u32| Net::new(Fake::new(tun).0, MAC).unwrap().avail_features();
    assert_eq!(offered(0), always);
    assert_eq!(offered(ALL_TUN), always | guest_all);
    assert_eq!(
        offered(libc::TUN_F_CSUM),
        always | f(VIRTIO_NET_F_GUEST_CSUM)
    );
    // TSO without checksum offload cannot be used.
    assert_eq!(offered(libc::TUN_F_TSO4 | libc::TUN_F_TSO6), always);
    for never in [
        VIRTIO_NET_F_GUEST_UFO,
        VIRTIO_NET_F_HOST_UFO,
        VIRTIO_NET_F_CTRL_VQ,
        VIRTIO_NET_F_MQ,
        VIRTIO_NET_F_MTU,
    ] {
        assert_eq!(offered(u32::MAX) & f(never), 0, "feature {never}");
    }
}

#[test]
fn identity_and_config_space() {
    let net = Net::new(Fake::new(0).0, MAC).unwrap();
    assert_eq!(net.device_type(), 1);
    assert_eq!(net.queue_max_sizes(), &[256, 256]);
    let read = |off: u64, len: usize| {
        let mut v = vec![0; len];
        net.read_config(off, &mut v);
        v
    };
    assert_eq!(read(0, 6), MAC);
    assert_eq!(read(6, 2), [1, 0], "status: link up");
    assert_eq!(read(8, 2), [1, 0], "max_virtqueue_pairs");
    assert_eq!(read(4, 4), [0, 1, 1, 0]);
    assert_eq!(read(10, 4), [0; 4]);
    assert_eq!(read(u64::MAX, 8), [0; 8]);
    let mut net = net;
    net.write_config(0, &[0xff; 6]);
    assert_eq!(net.mac(), MAC);
    assert_eq!(net.backend_fds(), vec![net.backend().as_raw_fd()]);
    assert_eq!(
        net.backend_event_set(0),
        EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED
    );
}

#[test]
fn mac_addresses() {
    assert_eq!(
        parse_mac("02:00:0a:FF:00:01").unwrap(),
        [2, 0, 10, 255, 0, 1]
    );
    for bad in [
        "",
        "02:00:0a:ff:00",
        "02:00:0a:ff:00:01:02",
        "2:00:0a:ff:00:01",
        "0g:00:0a:ff:00:01",
    ] {
        assert!(
            matches!(parse_mac(bad), Err(NetError::ParseMac(_))),
            "{bad}"
        );
    }
    assert!(matches!(
        parse_mac("01:00:5e:00:00:01"),
        Err(NetError::InvalidMac(_))
    ));
    assert!(matches!(
        parse_mac("00:00:00:00:00:00"),
        Err(NetError::InvalidMac(_))
    ));
    assert!(matches!(
        Net::new(Fake::new(0).0, [0xff; 6]),
        Err(NetError::InvalidMac(_))
    ));
    let m = random_mac().unwrap();
    assert_eq!(m[0] & 0x03, 0x02, "locally administered unicast");
    assert_eq!(format_mac(&MAC), "02:00:00:00:00:01");
}

#[test]
fn activation_sets_backend_offloads_and_reset_clears_them() {
    let guest = |feats: u64| {
        let (h, state) = harness(BASE | feats);
        let set = state.lock().unwrap().offloads.clone();
        (h, state, set)
    };
    let (mut h, state, set) =
        guest(f(VIRTIO_NET_F_GUEST_CSUM) | f(VIRTIO_NET_F_GUEST_TSO4) | f(VIRTIO_NET_F_GUEST_ECN));
    assert_eq!(
        set,
        [libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO_ECN]
    );
    h.net.reset();
    assert_eq!(state.lock().unwrap().offloads.last(), Some(&0));
    // A driver breaking the dependencies gets nothing it cannot use.
    assert_eq!(guest(f(VIRTIO_NET_F_GUEST_TSO4)).2, [0]);
    assert_eq!(
        guest(f(VIRTIO_NET_F_GUEST_CSUM) | f(VIRTIO_NET_F_GUEST_ECN)).2,
        [libc::TUN_F_CSUM]
    );
}

#[test]
fn activation_needs_two_ready_queues() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), REGION as usize)]).unwrap();
    let irq = Arc::new(IrqTrigger::new(
        vmm_sys_util::eventfd::EventFd::new(0).unwrap(),
    ));
    let mut net = Net::new(Fake::new(0).0, MAC).unwrap();
    let ctx = |queues| ActivateContext {
        mem: mem.clone(),
        queues,
        acked_features: BASE,
        irq: irq.clone(),
    };
    assert!(matches!(
        net.activate(ctx(vec![Queue::new(16).unwrap()])),
        Err(VirtioError::QueueCount {
            expected: 2,
            got: 1
        })
    ));
    assert!(matches!(
        net.activate(ctx(vec![Queue::new(16).unwrap(), Queue::new(16).unwrap()])),
        Err(VirtioError::InvalidQueue(0))
    ));
    // Never activated: notifications and backend events do nothing.
    net.queue_notify(RX);
    net.queue_notify(TX);
    net.queue_notify(7);
    net.backend_event(0, EventSet::IN | EventSet::OUT);
    assert!(!net.needs_reset());
}

#[test]
fn transmits_a_frame() {
    let (mut h, state) = harness(BASE);
    let p = packet(0, 0, 100);
    h.write(BUF, &p[..HDR]);
    // The frame straddles the two memory regions.
    h.write(REGION - 40, &p[HDR..]);
    let head = h.add(TX, &[(BUF, HDR as u32, R), (REGION - 40, 100, R)]);
    h.net.queue_notify(TX);
    assert_eq!(state.lock().unwrap().tx, vec![p]);
    assert_eq!(h.used_idx(TX), 1);
    assert_eq!(h.used_elem(TX, 0), (u32::from(head), 0));
    assert!(h.irq_raised());
    let m = h.metrics();
    assert_eq!((m.tx_frames, m.tx_bytes), (1, 100));
}

#[test]
fn refuses_hostile_transmit_chains() {
    let (mut h, state) = harness(BASE);
    h.write(BUF, &packet(0, 0, 64));
    let hdr = HDR as u32;
    // A device-writable descriptor.
    h.add(TX, &[(BUF, hdr, R), (BUF + 0x100, 64, W)]);
    // Outside guest memory, and wrapping the address space.
    h.add(TX, &[(BUF, hdr, R), (MEM_END - 10, 64, R)]);
    h.add(TX, &[(u64::MAX - 5, 64, R)]);
    // Shorter than the header.
    h.add(TX, &[(BUF, hdr - 1, R)]);
    // A descriptor looping onto itself.
    let i = h.chain(TX, &[(BUF, 64, R)]);
    h.set_desc(TX, i, (BUF, 64, R | NEXT), i);
    h.publish(TX, i);
    // Larger than the longest packet.
    h.add(TX, &[(BUF, 0x1_0000, R), (BUF, 0x1_0000, R)]);
    // And finally a good one.
    h.add(TX, &[(BUF, hdr + 64, R)]);
    h.net.queue_notify(TX);

    assert_eq!(h.used_idx(TX), 7);
    for i in 0..7 {
        assert_eq!(h.used_elem(TX, i).1, 0);
    }
    assert_eq!(state.lock().unwrap().tx, vec![packet(0, 0, 64)]);
    let m = h.metrics();
    assert_eq!(
        (m.tx_bad_chains, m.tx_dropped_too_big, m.tx_frames),
        (5, 1, 1)
    );
    assert!(!h.net.needs_reset());
}

#[test]
fn transmit_headers_must_match_negotiated_features() {
    let send = |feats: u64, flags: u8, gso: u8| {
        let (mut h, state) = harness(BASE | feats);
        h.write(BUF, &packet(flags, gso, 60));
        h.add(TX, &[(BUF, HDR as u32 + 60, R)]);
        h.net.queue_notify(TX);
        assert_eq!(h.used_idx(TX), 1);
        let sent = state.lock().unwrap().tx.len();
        assert_eq!(h.metrics().tx_dropped_bad_header, 1 - sent as u64);
        sent == 1
    };
    let offload = f(VIRTIO_NET_F_CSUM) | f(VIRTIO_NET_F_HOST_TSO4);
    assert!(send(0, 0, 0));
    assert!(!send(0, NEEDS_CSUM, 0));
    assert!(!send(0, DATA_VALID, 0));
    assert!(!send(0, 0, TCPV4));
    assert!(send(offload, NEEDS_CSUM, TCPV4));
    assert!(!send(offload, NEEDS_CSUM, TCPV6));
    assert!(!send(offload, NEEDS_CSUM, TCPV4 | ECN));
    assert!(send(
        offload | f(VIRTIO_NET_F_HOST_ECN),
        NEEDS_CSUM,
        TCPV4 | ECN
    ));
    assert!(!send(offload, NEEDS_CSUM, VIRTIO_NET_HDR_GSO_UDP as u8));
    assert!(!send(offload, 0, ECN));
}

#[test]
fn full_backend_keeps_the_chain_until_writable() {
    let (mut h, state) = harness(BASE | EVENT_IDX);
    queue_failing_tx(&mut h, &state, io::ErrorKind::WouldBlock.into());
    h.net.queue_notify(TX);
    assert_eq!(h.used_idx(TX), 0, "the chain stays in the ring");
    assert!(state.lock().unwrap().tx.is_empty());
    assert_eq!(h.metrics().tx_blocked, 1);
    // The driver is asked to notify when it adds the next chain.
    assert_eq!(h.avail_event(TX), 1);
    // Readable alone does not retry the write.
    h.net.backend_event(0, EventSet::IN);
    assert!(state.lock().unwrap().tx.is_empty());
    h.net.backend_event(0, EventSet::OUT);
    assert_eq!(state.lock().unwrap().tx.len(), 1);
    assert_eq!(h.used_idx(TX), 1);
    assert_eq!(h.metrics().tx_frames, 1);
}

#[test]
fn refused_frame_is_dropped_alone() {
    let (mut h, state) = harness(BASE);
    queue_failing_tx(&mut h, &state, errno(libc::EINVAL));
    h.add(TX, &[(BUF, HDR as u32 + 60, R)]);
    h.net.queue_notify(TX);
    assert_eq!(h.used_idx(TX), 2);
    assert_eq!(state.lock().unwrap().tx.len(), 1);
    let m = h.metrics();
    assert_eq!((m.tx_dropped_backend, m.tx_frames), (1, 1));
    assert!(!h.net.needs_reset());
}

#[test]
fn vanished_backend_needs_reset_and_stays_quiet() {
    let (mut h, state) = harness(BASE);
    queue_failing_tx(&mut h, &state, errno(libc::EBADFD));
    h.net.queue_notify(TX);
    assert!(h.net.needs_reset());
    assert_eq!(h.used_idx(TX), 0);
    // Nothing touches the backend any more.
    queue_rx(&state, packet(0, 0, 10));
    h.add(RX, &[(BUF + 0x1000, 2048, W)]);
    h.net.queue_notify(TX);
    h.net.queue_notify(RX);
    backend_readable(&mut h);
    let s = state.lock().unwrap();
    assert_eq!((s.reads, s.tx.len()), (0, 0));
    assert_eq!(h.metrics().backend_errors, 1);
    drop(s);
    h.net.reset();
    assert!(!h.net.needs_reset());

    // A read failure is fatal too.
    let (mut h, state) = harness(BASE);
    state.lock().unwrap().rx.push_back(Err(errno(libc::EIO)));
    h.add(RX, &[(BUF, 2048, W)]);
    backend_readable(&mut h);
    assert!(h.net.needs_reset());
    assert_eq!(h.used_idx(RX), 0);
}

#[test]
fn receives_into_one_buffer() {
    let (mut h, state) = harness(BASE);
    let head = h.add(RX, &[(REGION - 6, 6, W), (REGION, 2000, W)]);
    let p = packet(0, 0, 100);
    queue_rx(&state, p.clone());
    backend_readable(&mut h);
    assert_eq!(h.used_idx(RX), 1);
    assert_eq!(h.used_elem(RX, 0), (u32::from(head), p.len() as u32));
    assert_eq!(h.read(REGION - 6, p.len()), with_num_buffers(&p, 1));
    assert!(h.irq_raised());
    let m = h.metrics();
    assert_eq!((m.rx_frames, m.rx_bytes), (1, 100));
}

#[test]
fn without_mrg_a_too_small_buffer_drops_the_frame_and_stays() {
    let (mut h, state) = harness(BASE);
    let head = h.add(RX, &[(BUF, 100, W)]);
    queue_rx(&state, packet(0, 0, 200));
    let small = packet(0, 0, 50);
    queue_rx(&state, small.clone());
    backend_readable(&mut h);
    assert_eq!(h.used_idx(RX), 1);
    assert_eq!(h.used_elem(RX, 0), (u32::from(head), small.len() as u32));
    assert_eq!(h.read(BUF, small.len()), with_num_buffers(&small, 1));
    let m = h.metrics();
    assert_eq!((m.rx_dropped_too_big, m.rx_frames), (1, 1));
}

#[test]
fn mrg_spreads_a_frame_over_buffers() {
    let (mut h, state) = harness(BASE | MRG);
    let heads: Vec<u16> = (0..3)
        .map(|i| h.add(RX, &[(BUF + 0x1000 * i, 100, W)]))
        .collect();
    let p = packet(0, 0, 250 - HDR);
    queue_rx(&state, p.clone());
    backend_readable(&mut h);
    assert_eq!(h.used_idx(RX), 3);
    let lens: Vec<(u32, u32)> = (0..3).map(|i| h.used_elem(RX, i)).collect();
    let want: Vec<(u32, u32)> = heads
        .iter()
        .zip([100, 100, 50])
        .map(|(&h, l)| (u32::from(h), l))
        .collect();
    assert_eq!(lens, want);
    let mut got = h.read(BUF, 100);
    got.extend(h.read(BUF + 0x1000, 100));
    got.extend(h.read(BUF + 0x2000, 50));
    assert_eq!(got, with_num_buffers(&p, 3));
}

#[test]
fn no_buffers_pauses_reading_with_one_frame_pending() {
    let (mut h, state) = harness(BASE | MRG | EVENT_IDX);
    // No buffers at all: one frame is read and kept, no more.
    for _ in 0..3 {
        queue_rx(&state, packet(0, 0, 250 - HDR));
    }
    backend_readable(&mut h);
    backend_readable(&mut h);
    assert_eq!(state.lock().unwrap().reads, 1);
    // One buffer, too small: still waiting; the driver is asked to notify
    // when it adds the next buffer.
    h.add(RX, &[(BUF, 100, W)]);
    h.net.queue_notify(RX);
    backend_readable(&mut h);
    assert_eq!(h.used_idx(RX), 0);
    assert_eq!(state.lock().unwrap().reads, 1);
    assert_eq!(h.avail_event(RX), 1);
    assert!(h.metrics().rx_no_buffers >= 2);
    // Enough for the first frame: delivered, the second is read and waits.
    h.add(RX, &[(BUF + 0x1000, 200, W)]);
    h.net.queue_notify(RX);
    assert_eq!(h.used_idx(RX), 2);
    assert_eq!(state.lock().unwrap().reads, 2);
    assert_eq!(h.avail_event(RX), 2);
    // Buffers for the rest.
    for i in 2..8 {
        h.add(RX, &[(BUF + 0x1000 * i, 100, W)]);
    }
    h.net.queue_notify(RX);
    assert_eq!(h.used_idx(RX), 8);
    let s = state.lock().unwrap();
    assert!(s.rx.is_empty());
    assert_eq!(s.reads, 4, "three frames and the empty read");
    assert_eq!(h.metrics().rx_frames, 3);
}

#[test]
fn mrg_frame_larger_than_the_whole_ring_is_dropped() {
    let (mut h, state) = harness(BASE | MRG);
    for i in 0..u64::from(QSIZE) {
        h.add(RX, &[(BUF + 0x100 * i, 16, W)]);
    }
    queue_rx(&state, packet(0, 0, 1000));
    let small = packet(0, 0, 10);
    queue_rx(&state, small.clone());
    backend_readable(&mut h);
    assert_eq!(h.metrics().rx_dropped_too_big, 1);
    // The buffers were kept for the next frame: 22 bytes over two.
    assert_eq!(h.used_idx(RX), 2);
    assert_eq!((h.used_elem(RX, 0).1, h.used_elem(RX, 1).1), (16, 6));
    let mut got = h.read(BUF, 16);
    got.extend(h.read(BUF + 0x100, 6));
    assert_eq!(got, with_num_buffers(&small, 2));
}

#[test]
fn largest_packet_fits_exactly() {
    let (mut h, state) = harness(BASE | MRG);
    for i in 0..u64::from(QSIZE) {
        h.add(RX, &[(BUF + 0x2000 * i, 0x1100, W)]);
    }
    let p = packet(0, 0, MAX_FRAME_LEN);
    queue_rx(&state, p.clone());
    queue_rx(&state, packet(0, 0, MAX_FRAME_LEN + 1));
    queue_rx(&state, vec![0; HDR - 1]);
    backend_readable(&mut h);
    assert_eq!(h.metrics().rx_dropped_malformed, 2);
    let n = p.len().div_ceil(0x1100);
    assert_eq!(usize::from(h.used_idx(RX)), n);
    let mut got = Vec::new();
    for i in 0..n {
        let len = h.used_elem(RX, i as u16).1 as usize;
        got.extend(h.read(BUF + 0x2000 * i as u64, len));
    }
    assert_eq!(got, with_num_buffers(&p, n as u16));
}

#[test]
fn refuses_hostile_receive_chains() {
    let (mut h, state) = harness(BASE);
    // Device-readable, outside memory, shorter than a header, looping:
    // each returned unused.
    let mut bad = vec![
        h.add(RX, &[(BUF, 2048, R)]),
        h.add(RX, &[(BUF, 100, W), (MEM_END - 10, 100, W)]),
        h.add(RX, &[(BUF, 8, W)]),
    ];
    let i = h.chain(RX, &[(BUF, 64, W)]);
    h.set_desc(RX, i, (BUF, 64, W | NEXT), i);
    h.publish(RX, i);
    bad.push(i);
    let good = h.add(RX, &[(BUF + 0x1000, 2048, W)]);
    let p = packet(0, 0, 100);
    queue_rx(&state, p.clone());
    backend_readable(&mut h);

    assert_eq!(h.used_idx(RX), 5);
    for (n, &head) in bad.iter().enumerate() {
        assert_eq!(h.used_elem(RX, n as u16), (u32::from(head), 0));
    }
    assert_eq!(h.used_elem(RX, 4), (u32::from(good), p.len() as u32));
    assert_eq!(h.read(BUF + 0x1000, p.len()), with_num_buffers(&p, 1));
    let m = h.metrics();
    assert_eq!((m.rx_bad_chains, m.rx_frames), (4, 1));
    assert!(!h.net.needs_reset());
}

#[test]
fn mrg_bad_chain_inside_a_frame_drops_it() {
    let (mut h, state) = harness(BASE | MRG);
    let a = h.add(RX, &[(BUF, 100, W)]);
    let b = h.add(RX, &[(BUF + 0x1000, 100, R)]);
    let c = h.add(RX, &[(BUF + 0x2000, 2000, W)]);
    queue_rx(&state, packet(0, 0, 250));
    let p = packet(0, 0, 20);
    queue_rx(&state, p.clone());
    backend_readable(&mut h);
    assert_eq!(h.used_idx(RX), 3);
    assert_eq!(h.used_elem(RX, 0), (u32::from(a), 0));
    assert_eq!(h.used_elem(RX, 1), (u32::from(b), 0));
    assert_eq!(h.used_elem(RX, 2), (u32::from(c), p.len() as u32));
    let m = h.metrics();
    assert_eq!(
        (m.rx_dropped_bad_chain, m.rx_bad_chains, m.rx_frames),
        (1, 1, 1)
    );
}

#[test]
fn receive_headers_follow_negotiated_offloads() {
    // Returns the flags byte the guest saw, or None if dropped.
    let recv = |feats: u64, flags: u8, gso: u8| {
        let (mut h, state) = harness(BASE | feats);
        h.add(RX, &[(BUF, 2048, W)]);
        queue_rx(&state, packet(flags, gso, 60));
        backend_readable(&mut h);
        let m = h.metrics();
        assert_eq!(m.rx_frames + m.rx_dropped_offload, 1);
        (m.rx_frames == 1).then(|| {
            assert_eq!(h.read(BUF + 1, 1)[0], gso);
            h.read(BUF, 1)[0]
        })
    };
    assert_eq!(recv(0, DATA_VALID, 0), Some(0));
    assert_eq!(recv(0, 0x80, 0), Some(0));
    assert_eq!(recv(0, NEEDS_CSUM, 0), None);
    assert_eq!(recv(0, 0, TCPV4), None);
    let csum_tso4 = f(VIRTIO_NET_F_GUEST_CSUM) | f(VIRTIO_NET_F_GUEST_TSO4);
    assert_eq!(recv(csum_tso4, NEEDS_CSUM, TCPV4), Some(NEEDS_CSUM));
    assert_eq!(recv(csum_tso4, DATA_VALID | 4, 0), Some(DATA_VALID));
    assert_eq!(recv(csum_tso4, NEEDS_CSUM, TCPV6), None);
    assert_eq!(recv(csum_tso4, NEEDS_CSUM, TCPV4 | ECN), None);
    assert_eq!(
        recv(
            csum_tso4 | f(VIRTIO_NET_F_GUEST_ECN),
            NEEDS_CSUM,
            TCPV4 | ECN
        ),
        Some(NEEDS_CSUM)
    );
    assert_eq!(recv(csum_tso4, 0, VIRTIO_NET_HDR_GSO_UDP as u8), None);
}

#[test]
fn interrupts_follow_event_idx() {
    let (mut h, state) = harness(BASE | EVENT_IDX);
    h.add(RX, &[(BUF, 2048, W)]);
    h.add(RX, &[(BUF + 0x1000, 2048, W)]);
    // The driver wants an interrupt once used entry 1 is written.
    h.set_used_event(RX, 1);
    queue_rx(&state, packet(0, 0, 10));
    backend_readable(&mut h);
    assert_eq!(h.used_idx(RX), 1);
    assert!(!h.irq_raised());
    queue_rx(&state, packet(0, 0, 10));
    backend_readable(&mut h);
    assert_eq!(h.used_idx(RX), 2);
    assert!(h.irq_raised());
}

#[test]
fn broken_rings_need_reset() {
    let (mut h, state) = harness(BASE);
    // An available index more than a queue ahead.
    h.write(h.rings[RX].avail + 2, &100u16.to_le_bytes());
    queue_rx(&state, packet(0, 0, 10));
    backend_readable(&mut h);
    assert!(h.net.needs_reset());
    assert_eq!(h.metrics().queue_errors, 1);

    let (mut h, _state) = harness(BASE);
    h.write(h.rings[TX].avail + 2, &100u16.to_le_bytes());
    h.net.queue_notify(TX);
    assert!(h.net.needs_reset());
    assert_eq!(h.metrics().queue_errors, 1);

    // A head index beyond the queue cannot even be returned as used.
    let (mut h, state) = harness(BASE);
    h.publish(RX, 99);
    queue_rx(&state, packet(0, 0, 10));
    backend_readable(&mut h);
    assert!(h.net.needs_reset());
    let m = h.metrics();
    assert_eq!((m.rx_bad_chains, m.queue_errors), (1, 1));

    let (mut h, state) = harness(BASE);
    h.publish(TX, 99);
    h.net.queue_notify(TX);
    assert!(h.net.needs_reset());
    assert!(state.lock().unwrap().tx.is_empty());
    let m = h.metrics();
    assert_eq!((m.tx_bad_chains, m.queue_errors), (1, 1));
}

#[test]
fn reset_drops_the_pending_frame() {
    let (mut h, state) = harness(BASE);
    queue_rx(&state, packet(0, 0, 10));
    backend_readable(&mut h);
    assert_eq!(state.lock().unwrap().reads, 1);
    assert!(h.net.rx_pending.is_some());
    h.net.reset();
    assert!(h.net.rx_pending.is_none());
    // Inactive: events are ignored.
    backend_readable(&mut h);
    assert_eq!(state.lock().unwrap().reads, 1);
}

/// Through the transport and an event manager: the backend fd is watched
/// edge-triggered, so a backend left readable wakes the loop once.
#[test]
fn backend_fd_is_edge_triggered_in_the_event_loop() {
    let (fake, _state) = Fake::new(0);
    let kick = fake.evt.try_clone().unwrap();
    let mut em = in_event_loop(Box::new(Net::new(fake, MAC).unwrap()));
    kick.write(1).unwrap();
    assert_eq!(em.run_with_timeout(100).unwrap(), 1);
    // Still readable (nobody read the counter), but no new edge.
    assert_eq!(em.run_with_timeout(0).unwrap(), 0);
    kick.write(1).unwrap();
    assert_eq!(em.run_with_timeout(100).unwrap(), 1);
}
