//! Device identity, lifecycle and event-loop integration.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::io::Write;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet as EpollSet};

use super::packet::Op;
use super::test_util::*;
use super::*;

#[test]
fn identity_config_and_features() {
    let h = Harness::new();
    let dev = &h.dev;
    assert_eq!(dev.device_type(), 19);
    assert_eq!(dev.queue_max_sizes(), &[256, 256, 256]);
    assert_eq!(dev.avail_features(), (1 << 32) | (1 << 29) | 1);
    assert_eq!(dev.guest_cid(), CID);
    assert_eq!(dev.uds_path(), h.path);
    let read = |off: u64, len: usize| {
        let mut v = vec![0; len];
        dev.read_config(off, &mut v);
        v
    };
    assert_eq!(read(0, 8), [3, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(read(0, 4), [3, 0, 0, 0]);
    assert_eq!(read(4, 4), [0; 4]);
    assert_eq!(read(6, 4), [0; 4]);
    assert_eq!(read(8, 4), [0; 4]);
    assert_eq!(read(u64::MAX, 8), [0; 8]);
    let mut h = h;
    h.dev.write_config(0, &[9; 8]);
    assert_eq!(h.dev.guest_cid(), CID);
    let fds = h.dev.backend_fds();
    assert_eq!(fds, vec![h.dev.muxer.epoll_fd()]);
    assert_eq!(h.dev.backend_event_set(fds[0]), EventSet::IN);
}

#[test]
fn new_refuses_reserved_cids_and_live_sockets() {
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let path = dir.as_path().join("s");
    for cid in [0, 1, 2, u64::from(u32::MAX), 1 << 32, u64::MAX] {
        assert!(
            matches!(Vsock::new(cid, &path), Err(VsockError::InvalidCid(c)) if c == cid),
            "{cid}"
        );
    }
    assert!(!path.exists());
    let v = Vsock::new(u64::from(u32::MAX) - 1, &path).unwrap();
    assert!(path.exists());
    let err = Vsock::new(3, &path).unwrap_err();
    assert!(matches!(
        err,
        VsockError::Backend(MuxerError::Host(HostError::InUse(_)))
    ));
    assert!(err.to_string().contains("in use"), "{err}");
    drop(v);
    assert!(!path.exists(), "the socket is removed with the device");
    // A stale socket left behind by a crash is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let _v = Vsock::new(3, &path).unwrap();
}

#[test]
fn activation_needs_ready_rx_and_tx_queues() {
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let mut dev = Vsock::new(CID, &dir.as_path().join("s")).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), REGION as usize)]).unwrap();
    let irq = Arc::new(IrqTrigger::new(
        vmm_sys_util::eventfd::EventFd::new(0).unwrap(),
    ));
    let ctx = |queues: Vec<Queue>| ActivateContext {
        mem: mem.clone(),
        queues,
        acked_features: BASE,
        irq: irq.clone(),
    };
    let q = || Queue::new(QSIZE).unwrap();
    assert!(matches!(
        dev.activate(ctx(vec![q(), q()])),
        Err(VirtioError::QueueCount {
            expected: 3,
            got: 2
        })
    ));
    assert!(matches!(
        dev.activate(ctx(vec![q(), q(), q()])),
        Err(VirtioError::InvalidQueue(0))
    ));
    // Not activated: notifications and backend events are harmless.
    dev.queue_notify(RX);
    dev.queue_notify(TX);
    dev.queue_notify(EVENT_QUEUE);
    dev.queue_notify(9);
    dev.backend_event(dev.backend_fds()[0], EventSet::IN);
    assert!(!dev.needs_reset());
}

#[test]
fn host_clients_before_activation_are_refused() {
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let path = dir.as_path().join("s");
    let mut dev = Vsock::new(CID, &path).unwrap();
    let mut c = std::os::unix::net::UnixStream::connect(&path).unwrap();
    c.write_all(b"CONNECT 5\n").unwrap();
    dev.backend_event(dev.backend_fds()[0], EventSet::IN);
    assert_eq!(read_line(&mut c), "ERR device not active\n");
    assert!(read_to_end(&mut c).is_empty());
}

#[test]
fn reset_ends_connections_and_reactivation_works() {
    let mut h = Harness::new();
    let (mut c, _g) = h.host_connect(52);
    assert_eq!(h.metrics().open_connections, 1);
    // A client still in its handshake survives the reset.
    let mut waiting = h.client();
    h.pump();
    h.dev.reset();
    assert!(read_to_end(&mut c).is_empty(), "closed by the reset");
    assert_eq!(h.metrics().open_connections, 1);
    waiting.write_all(b"CONNECT 52\n").unwrap();
    h.pump();
    assert_eq!(read_line(&mut waiting), "ERR device not active\n");
    assert_eq!(h.metrics().open_connections, 0);

    let mut h = Harness::new();
    let (_c, _g) = h.host_connect(52);
    h.dev.reset();
    assert_eq!(h.dev.muxer.counts(), (0, 0));
}

/// The backend fd is level-triggered in the VMM's event loop: after the
/// device handled what was ready it must not stay readable, whatever the
/// host sockets hold (no spinning).
#[test]
fn backend_fd_does_not_stay_readable() {
    let mut h = Harness::new();
    let outer = Epoll::new().unwrap();
    let fd = h.dev.backend_fds()[0];
    outer
        .ctl(ControlOperation::Add, fd, EpollEvent::new(EpollSet::IN, 0))
        .unwrap();
    let ready = |outer: &Epoll| {
        let mut ev = [EpollEvent::default(); 4];
        outer.wait(0, &mut ev).unwrap()
    };
    assert_eq!(ready(&outer), 0);
    // A connection whose host side has bytes but the guest no buffers.
    let (mut c, _g) = h.host_connect(52);
    c.write_all(&[7; 10_000]).unwrap();
    assert_eq!(ready(&outer), 1);
    h.pump();
    assert_eq!(ready(&outer), 0, "readable host socket, no guest buffers");
    // A client sending half a line.
    let mut half = h.client();
    half.write_all(b"CONN").unwrap();
    h.pump();
    assert_eq!(ready(&outer), 0, "incomplete CONNECT line");
    // The rest arrives: ready once.
    half.write_all(b"ECT 9\n").unwrap();
    assert_eq!(ready(&outer), 1);
    h.pump();
    assert_eq!(ready(&outer), 0);
    // Buffers come: the data moves, and the fd is quiet again.
    let got = h.recv_until(|p| {
        p.iter()
            .filter(|p| p.op() == Some(Op::Rw))
            .map(|p| p.data.len())
            .sum::<usize>()
            == 10_000
    });
    assert!(got.iter().any(|p| p.op() == Some(Op::Request)));
    assert_eq!(ready(&outer), 0);
    // A deadline passes: ready once, quiet after.
    h.set_timeouts(SHORT);
    let _idle = h.client();
    h.pump();
    assert_eq!(ready(&outer), 0);
    std::thread::sleep(SHORT * 2);
    assert_eq!(ready(&outer), 1);
    h.pump();
    assert_eq!(ready(&outer), 0, "the timer does not stay readable");
    drop(c);
}

#[test]
fn event_idx_asks_for_the_next_buffer() {
    let mut h = Harness::with_features(BASE | EVENT_IDX);
    let (mut c, mut g) = h.host_connect(52);
    let data = pattern(50_000, 1);
    c.write_all(&data).unwrap();
    h.pump();
    // Out of buffers with data waiting: the device wants to hear of the
    // next buffer the driver adds.
    assert_eq!(h.rx_free(), 0);
    assert_eq!(h.avail_event(RX), h.rings[RX].avail_idx);
    assert!(h.metrics().rx_no_buffers > 0);
    assert_eq!(h.recv_data(&mut g, data.len()), data);
    h.send(g.hdr(Op::Rw), b"back");
    let mut buf = [0u8; 4];
    std::io::Read::read_exact(&mut c, &mut buf).unwrap();
    assert_eq!(&buf, b"back");
}

/// Through the transport and a real event manager.
#[test]
fn works_through_the_mmio_transport_and_event_manager() {
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let path = dir.as_path().join("s");
    let mut em = in_event_loop(Box::new(Vsock::new(CID, &path).unwrap()));
    assert_eq!(em.run_with_timeout(0).unwrap(), 0);
    let mut c = std::os::unix::net::UnixStream::connect(&path).unwrap();
    c.write_all(b"CONNECT 1\n").unwrap();
    assert_eq!(em.run_with_timeout(100).unwrap(), 1);
    assert_eq!(read_line(&mut c), "ERR device not active\n");
    assert_eq!(em.run_with_timeout(0).unwrap(), 0, "quiet once handled");
    // Many clients at once are all handled, none left behind.
    let clients: Vec<_> = (0..100)
        .map(|_| std::os::unix::net::UnixStream::connect(&path).unwrap())
        .collect();
    for _ in 0..10 {
        em.run_with_timeout(10).unwrap();
    }
    assert_eq!(em.run_with_timeout(0).unwrap(), 0);
    drop(clients);
}
