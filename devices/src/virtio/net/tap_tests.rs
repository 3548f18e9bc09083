//! Tests on a real TAP. Each runs on its own thread inside a fresh network
//! namespace (`unshare(CLONE_NEWNET)` affects only that thread), so nothing
//! they create is visible on the host, and whatever they leak vanishes with
//! the namespace. Without the privilege to create a namespace they are
//! skipped with a message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use super::test_util::*;
use super::*;
use crate::tap::{interface_exists, TapError};

const RX: usize = RX_QUEUE;
const TX: usize = TX_QUEUE;
const ALL_TUN: u32 = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;

/// Run `f` on a new thread in a new network namespace; `None` (and a
/// message) if the namespace cannot be created.
fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let joined = std::thread::spawn(move || {
        // SAFETY: plain system call without pointers; it moves only this
        // thread, which ends with the test, into a new network namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            eprintln!(
                "skipped: cannot create a network namespace: {}",
                io::Error::last_os_error()
            );
            return None;
        }
        Some(f())
    })
    .join();
    match joined {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Run `ip args` (in the calling thread's namespace); false if it failed or
/// is not installed.
fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

/// Wait until `fd` is readable or `timeout` passes.
fn wait_readable(fd: RawFd, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfd` is one valid, exclusively borrowed pollfd for the call.
    unsafe { libc::poll(&mut pfd, 1, ms) };
}

#[test]
fn tap_create_busy_offloads_and_delete_on_drop() {
    in_netns(|| {
        let tap = Tap::create("vmmtest0").unwrap();
        assert!(tap.created());
        assert_eq!(tap.name(), "vmmtest0");
        assert!(interface_exists("vmmtest0"));
        assert!(tap.is_up().unwrap());

        // The name is taken, and the TAP is in use.
        assert!(matches!(
            Tap::create("vmmtest0"),
            Err(TapError::Busy { .. })
        ));
        assert!(matches!(
            Tap::attach("vmmtest0"),
            Err(TapError::Busy { .. })
        ));
        let e = Tap::create("vmmtest0").unwrap_err().to_string();
        assert!(e.contains("busy"), "{e}");

        // Offloads: all probed ones work, TSO without checksumming does not.
        assert_eq!(tap.supported_offloads(), ALL_TUN);
        tap.set_offloads(ALL_TUN).unwrap();
        tap.set_offloads(libc::TUN_F_CSUM).unwrap();
        tap.set_offloads(0).unwrap();
        assert!(tap.set_offloads(libc::TUN_F_TSO4).is_err());

        tap.set_ipv4(Ipv4Addr::new(10, 0, 2, 1), 24).unwrap();
        assert!(matches!(
            tap.set_ipv4(Ipv4Addr::new(10, 0, 2, 1), 33),
            Err(TapError::InvalidPrefix(33))
        ));

        drop(tap);
        assert!(!interface_exists("vmmtest0"), "deleted on drop");
        // And the name is free again.
        let again = Tap::create("vmmtest0").unwrap();
        drop(again);

        let numbered = Tap::create("vmmt%d").unwrap();
        let name = numbered.name().to_owned();
        assert_eq!(name, "vmmt0");
        drop(numbered);
        assert!(!interface_exists(&name));
    });
}

#[test]
fn tap_refuses_bad_names_and_non_taps() {
    in_netns(|| {
        for bad in ["", "0123456789abcdef", "a/b", "a b", "a:b", ".."] {
            assert!(
                matches!(Tap::create(bad), Err(TapError::InvalidName { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            Tap::attach("tap%d"),
            Err(TapError::InvalidName { .. })
        ));
        assert!(matches!(
            Tap::attach("nosuch0"),
            Err(TapError::NotFound { .. })
        ));
        assert!(matches!(Tap::attach("lo"), Err(TapError::NotTap { .. })));
        assert!(matches!(Tap::create("lo"), Err(TapError::Busy { .. })));
    });
}

#[test]
fn tap_attach_leaves_an_existing_tap_alone() {
    in_netns(|| {
        if !ip(&["tuntap", "add", "dev", "vmmp0", "mode", "tap"]) {
            eprintln!("skipped: `ip tuntap add` failed or ip is not installed");
            return;
        }
        let tap = Tap::attach("vmmp0").unwrap();
        assert!(!tap.created());
        assert_eq!(tap.name(), "vmmp0");
        assert!(!tap.is_up().unwrap(), "attach does not bring it up");
        drop(tap);
        assert!(interface_exists("vmmp0"), "not ours to delete");
        assert!(ip(&["link", "del", "vmmp0"]));
    });
}

/// An Ethernet ARP request from `mac`/`spa` for `tpa`.
fn arp_request(mac: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend(mac);
    f.extend([0x08, 0x06]); // ARP
    f.extend([0, 1, 0x08, 0x00, 6, 4, 0, 1]); // Ethernet/IPv4, request
    f.extend(mac);
    f.extend(spa);
    f.extend([0; 6]);
    f.extend(tpa);
    f
}

/// The whole data path with the host kernel on the other side: the "guest"
/// asks for the TAP's MAC with ARP and gets the kernel's reply.
#[test]
fn arp_exchange_with_the_host_kernel() {
    in_netns(|| {
        let tap = Tap::create("vmmnet0").unwrap();
        tap.set_ipv4(Ipv4Addr::new(10, 0, 2, 1), 24).unwrap();
        let fd = tap.as_raw_fd();
        let guest_csum = 1 << VIRTIO_NET_F_GUEST_CSUM;
        let mut h = Harness::new(tap, BASE | MRG | EVENT_IDX | guest_csum);
        // One-descriptor chains: head i is the buffer at BUF + 0x1000 * i.
        for i in 0..u64::from(QSIZE) {
            h.add(RX, &[(BUF + 0x1000 * i, 2048, W)]);
        }

        let mut p = vec![0u8; HDR];
        p.extend(arp_request(MAC, [10, 0, 2, 2], [10, 0, 2, 1]));
        h.write(0x8_0000, &p);
        h.add(TX, &[(0x8_0000, p.len() as u32, R)]);
        h.net.queue_notify(TX);
        assert_eq!(h.metrics().tx_frames, 1);
        assert_eq!(h.used_idx(TX), 1);

        // Frames arrive; other traffic (IPv6 router solicitations, ...)
        // may come first.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = 0u16;
        let reply = loop {
            assert!(Instant::now() < deadline, "no ARP reply");
            wait_readable(fd, Duration::from_millis(100));
            h.net.backend_event(fd, EventSet::IN);
            let mut found = None;
            while seen != h.used_idx(RX) {
                let (id, len) = h.used_elem(RX, seen);
                seen += 1;
                let frame = h.read(BUF + 0x1000 * u64::from(id), len as usize);
                assert_eq!(&frame[10..12], &[1, 0], "num_buffers");
                let eth = &frame[HDR..];
                if eth[12..14] == [0x08, 0x06] && eth[20..22] == [0, 2] {
                    found = Some(eth.to_vec());
                }
            }
            if let Some(f) = found {
                break f;
            }
        };
        assert_eq!(&reply[0..6], &MAC, "to us");
        assert_eq!(&reply[28..32], &[10, 0, 2, 1], "sender IP");
        assert_eq!(&reply[32..38], &MAC, "target MAC");
        assert_eq!(&reply[38..42], &[10, 0, 2, 2], "target IP");
        assert!(h.metrics().rx_frames >= 1);
        assert!(!h.net.needs_reset());
    });
}

/// The TAP is deleted under the device: the next I/O puts the device in
/// DEVICE_NEEDS_RESET, and nothing spins.
#[test]
fn deleted_tap_needs_reset() {
    in_netns(|| {
        let tap = Tap::create("vmmgone0").unwrap();
        let fd = tap.as_raw_fd();
        let mut h = Harness::new(tap, BASE);
        if !ip(&["link", "del", "vmmgone0"]) {
            eprintln!("skipped: `ip link del` failed or ip is not installed");
            return;
        }
        assert!(!interface_exists("vmmgone0"));
        h.write(BUF, &packet(0, 0, 60));
        h.add(TX, &[(BUF, HDR as u32 + 60, R)]);
        h.net.queue_notify(TX);
        assert!(h.net.needs_reset());
        assert_eq!(h.metrics().backend_errors, 1);
        assert_eq!(h.used_idx(TX), 0);

        // The read side fails the same way.
        h.net.needs_reset = false;
        h.add(RX, &[(BUF, 2048, W)]);
        h.net.backend_event(fd, EventSet::IN | EventSet::ERROR);
        assert!(h.net.needs_reset());
        assert_eq!(h.metrics().backend_errors, 2);
        // And after a reset, activation fails (the transport then sets
        // DEVICE_NEEDS_RESET again).
        assert!(matches!(h.reactivate(BASE), Err(VirtioError::Backend(_))));
        // Dropping a TAP whose interface is gone is fine.
    });
}

/// A TAP set administratively down refuses frames with `EIO`: they are
/// dropped like on an unplugged cable, and traffic resumes once it is up.
#[test]
fn down_tap_drops_frames_until_up() {
    in_netns(|| {
        let tap = Tap::create("vmmdown0").unwrap();
        let mut h = Harness::new(tap, BASE);
        if !ip(&["link", "set", "vmmdown0", "down"]) {
            eprintln!("skipped: `ip link set` failed or ip is not installed");
            return;
        }
        let mut p = vec![0u8; HDR];
        p.extend(arp_request(MAC, [10, 0, 2, 2], [10, 0, 2, 1]));
        h.write(BUF, &p);
        h.add(TX, &[(BUF, p.len() as u32, R)]);
        h.net.queue_notify(TX);
        assert_eq!(h.used_idx(TX), 1);
        assert_eq!(h.metrics().tx_dropped_link_down, 1);
        assert!(!h.net.needs_reset());
        assert!(ip(&["link", "set", "vmmdown0", "up"]));
        h.add(TX, &[(BUF, p.len() as u32, R)]);
        h.net.queue_notify(TX);
        assert_eq!(h.metrics().tx_frames, 1);
    });
}
