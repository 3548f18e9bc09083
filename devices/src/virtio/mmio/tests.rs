#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::sync::Mutex;

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};

use super::*;
use crate::bus::Bus;
use crate::virtio::VirtioError;

const DEVICE_TYPE: u32 = 42;
const FEAT_A: u64 = 1 << 3;
const FEAT_UNOFFERED: u64 = 1 << 4;
const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
const CONFIG: [u8; 16] = [
    0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
];

const fn off(r: u32) -> u64 {
    r as u64
}
const MAGIC: u64 = off(reg::VIRTIO_MMIO_MAGIC_VALUE);
const STATUS: u64 = off(reg::VIRTIO_MMIO_STATUS);
const DEV_FEAT: u64 = off(reg::VIRTIO_MMIO_DEVICE_FEATURES);
const DEV_FEAT_SEL: u64 = off(reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL);
const DRV_FEAT: u64 = off(reg::VIRTIO_MMIO_DRIVER_FEATURES);
const DRV_FEAT_SEL: u64 = off(reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL);
const QSEL: u64 = off(reg::VIRTIO_MMIO_QUEUE_SEL);
const QNUM_MAX: u64 = off(reg::VIRTIO_MMIO_QUEUE_NUM_MAX);
const QNUM: u64 = off(reg::VIRTIO_MMIO_QUEUE_NUM);
const QREADY: u64 = off(reg::VIRTIO_MMIO_QUEUE_READY);
const QNOTIFY: u64 = off(reg::VIRTIO_MMIO_QUEUE_NOTIFY);
const QDESC_LO: u64 = off(reg::VIRTIO_MMIO_QUEUE_DESC_LOW);
const QDESC_HI: u64 = off(reg::VIRTIO_MMIO_QUEUE_DESC_HIGH);
const QAVAIL_LO: u64 = off(reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW);
const QUSED_LO: u64 = off(reg::VIRTIO_MMIO_QUEUE_USED_LOW);
const INT_STATUS: u64 = off(reg::VIRTIO_MMIO_INTERRUPT_STATUS);
const INT_ACK: u64 = off(reg::VIRTIO_MMIO_INTERRUPT_ACK);

const NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;
const FAILED: u32 = VIRTIO_CONFIG_S_FAILED;

#[derive(Default)]
struct FakeState {
    activations: Vec<(u64, Vec<Queue>)>,
    resets: usize,
    notified: Vec<usize>,
    fail_activate: bool,
    needs_reset: bool,
    config_writes: Vec<(u64, Vec<u8>)>,
}

struct FakeDevice {
    sizes: Vec<u16>,
    state: Arc<Mutex<FakeState>>,
}

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }
    fn avail_features(&self) -> u64 {
        VERSION_1 | FEAT_A
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            if let Some(v) = CONFIG.get(offset as usize + i) {
                *b = *v;
            }
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.state
            .lock()
            .unwrap()
            .config_writes
            .push((offset, data.to_vec()));
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), VirtioError> {
        let mut s = self.state.lock().unwrap();
        if s.fail_activate {
            return Err(VirtioError::Backend(std::io::Error::other("backend down")));
        }
        s.activations.push((ctx.acked_features, ctx.queues));
        Ok(())
    }
    fn reset(&mut self) {
        self.state.lock().unwrap().resets += 1;
    }
    fn queue_notify(&mut self, index: usize) {
        self.state.lock().unwrap().notified.push(index);
    }
    fn needs_reset(&self) -> bool {
        self.state.lock().unwrap().needs_reset
    }
}

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
}

fn transport_with(sizes: &[u16]) -> (MmioTransport, Arc<Mutex<FakeState>>) {
    let state = Arc::new(Mutex::new(FakeState::default()));
    let dev = FakeDevice {
        sizes: sizes.to_vec(),
        state: state.clone(),
    };
    let irq = Arc::new(IrqTrigger::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let t = MmioTransport::new(Box::new(dev), mem(), irq).unwrap();
    (t, state)
}

fn transport() -> (MmioTransport, Arc<Mutex<FakeState>>) {
    transport_with(&[16])
}

fn r(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut d = [0u8; 4];
    t.read(offset, &mut d);
    u32::from_le_bytes(d)
}

fn w(t: &mut MmioTransport, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

fn write_features(t: &mut MmioTransport, features: u64) {
    w(t, DRV_FEAT_SEL, 0);
    w(t, DRV_FEAT, features as u32);
    w(t, DRV_FEAT_SEL, 1);
    w(t, DRV_FEAT, (features >> 32) as u32);
}

/// ACKNOWLEDGE, DRIVER, features, FEATURES_OK.
fn negotiate(t: &mut MmioTransport, features: u64) {
    w(t, STATUS, S_ACK);
    w(t, STATUS, S_DRIVER);
    write_features(t, features);
    w(t, STATUS, S_FEATURES_OK);
}

/// Configure queue `index` with valid rings for a 16-entry queue in 64 KiB.
fn setup_queue(t: &mut MmioTransport, index: u32, size: u32, desc: u64) {
    w(t, QSEL, index);
    w(t, QNUM, size);
    w(t, QDESC_LO, desc as u32);
    w(t, QDESC_HI, (desc >> 32) as u32);
    w(t, QAVAIL_LO, 0x2000 + index * 0x100);
    w(t, QUSED_LO, 0x3000 + index * 0x100);
    w(t, QREADY, 1);
}

fn activate(t: &mut MmioTransport) {
    negotiate(t, VERSION_1 | FEAT_A);
    setup_queue(t, 0, 16, 0x1000);
    w(t, STATUS, S_DRIVER_OK);
}

fn irq_count(t: &MmioTransport) -> u64 {
    t.irq().event_fd().read().unwrap_or(0)
}

#[test]
fn identification_registers() {
    let (mut t, _) = transport_with(&[16, 8]);
    assert_eq!(r(&mut t, MAGIC), 0x7472_6976);
    assert_eq!(r(&mut t, off(reg::VIRTIO_MMIO_VERSION)), 2);
    assert_eq!(r(&mut t, off(reg::VIRTIO_MMIO_DEVICE_ID)), DEVICE_TYPE);
    assert_eq!(r(&mut t, off(reg::VIRTIO_MMIO_VENDOR_ID)), MMIO_VENDOR_ID);
    assert_eq!(r(&mut t, DEV_FEAT), FEAT_A as u32);
    w(&mut t, DEV_FEAT_SEL, 1);
    assert_eq!(r(&mut t, DEV_FEAT), 1);
    w(&mut t, DEV_FEAT_SEL, 2);
    assert_eq!(r(&mut t, DEV_FEAT), 0);
    assert_eq!(r(&mut t, QNUM_MAX), 16);
    w(&mut t, QSEL, 1);
    assert_eq!(r(&mut t, QNUM_MAX), 8);
    w(&mut t, QSEL, 2);
    assert_eq!(r(&mut t, QNUM_MAX), 0);
    assert_eq!(r(&mut t, off(reg::VIRTIO_MMIO_CONFIG_GENERATION)), 0);
    assert_eq!(r(&mut t, off(reg::VIRTIO_MMIO_SHM_LEN_LOW)), u32::MAX);
    assert_eq!(r(&mut t, STATUS), 0);
    assert_eq!(t.queue_evts().len(), 2);
}

#[test]
fn invalid_queue_max_size_is_refused_at_construction() {
    let state = Arc::new(Mutex::new(FakeState::default()));
    let dev = FakeDevice {
        sizes: vec![16, 12],
        state,
    };
    let irq = Arc::new(IrqTrigger::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let err = MmioTransport::new(Box::new(dev), mem(), irq).unwrap_err();
    assert!(matches!(
        err,
        MmioError::InvalidQueueMaxSize { index: 1, size: 12 }
    ));
    assert!(err.to_string().contains("12"));
}

#[test]
fn full_handshake_activates_device() {
    let (mut t, state) = transport();
    w(&mut t, STATUS, S_ACK);
    assert_eq!(r(&mut t, STATUS), S_ACK);
    w(&mut t, STATUS, S_DRIVER);
    write_features(&mut t, VERSION_1 | FEAT_A);
    w(&mut t, STATUS, S_FEATURES_OK);
    assert_eq!(r(&mut t, STATUS), S_FEATURES_OK);
    setup_queue(&mut t, 0, 8, 0x1000);
    assert_eq!(r(&mut t, QREADY), 1);
    assert!(state.lock().unwrap().activations.is_empty());
    w(&mut t, STATUS, S_DRIVER_OK);
    assert_eq!(r(&mut t, STATUS), S_DRIVER_OK);
    assert!(t.is_activated());

    let s = state.lock().unwrap();
    assert_eq!(s.activations.len(), 1);
    let (acked, queues) = &s.activations[0];
    assert_eq!(*acked, VERSION_1 | FEAT_A);
    assert_eq!(queues.len(), 1);
    let q = &queues[0];
    assert!(q.ready());
    assert_eq!(q.size(), 8);
    assert_eq!(q.desc_table(), 0x1000);
    assert_eq!(q.avail_ring(), 0x2000);
    assert_eq!(q.used_ring(), 0x3000);
    drop(s);

    // Queue registers are frozen once the device runs.
    w(&mut t, QREADY, 0);
    assert_eq!(r(&mut t, QREADY), 1);
}

#[test]
fn illegal_status_transitions_are_ignored() {
    let (mut t, state) = transport();
    // Each step: value written, expected status afterwards.
    let steps: &[(&str, u32, u32)] = &[
        ("DRIVER without ACKNOWLEDGE", VIRTIO_CONFIG_S_DRIVER, 0),
        ("everything at once", S_DRIVER_OK, 0),
        ("ACKNOWLEDGE", S_ACK, S_ACK),
        ("FEATURES_OK without DRIVER", S_FEATURES_OK, S_ACK),
        (
            "ACKNOWLEDGE | FEATURES_OK",
            S_ACK | VIRTIO_CONFIG_S_FEATURES_OK,
            S_ACK,
        ),
        ("DRIVER", S_DRIVER, S_DRIVER),
        (
            "DRIVER_OK without FEATURES_OK",
            S_DRIVER | VIRTIO_CONFIG_S_DRIVER_OK,
            S_DRIVER,
        ),
        ("all of it from DRIVER", S_DRIVER_OK, S_DRIVER),
        ("clearing a bit", S_ACK, S_DRIVER),
        ("reserved bit", 0x10 | S_DRIVER, S_DRIVER),
    ];
    for &(what, v, expected) in steps {
        w(&mut t, STATUS, v);
        assert_eq!(r(&mut t, STATUS), expected, "{what}: wrote {v:#x}");
    }
    write_features(&mut t, VERSION_1);
    w(&mut t, STATUS, S_FEATURES_OK);
    assert_eq!(r(&mut t, STATUS), S_FEATURES_OK);
    w(&mut t, STATUS, S_DRIVER); // dropping FEATURES_OK
    assert_eq!(r(&mut t, STATUS), S_FEATURES_OK);
    setup_queue(&mut t, 0, 16, 0x1000);
    w(&mut t, STATUS, S_DRIVER_OK);
    assert_eq!(r(&mut t, STATUS), S_DRIVER_OK);
    w(&mut t, STATUS, S_FEATURES_OK); // dropping DRIVER_OK
    assert_eq!(r(&mut t, STATUS), S_DRIVER_OK);
    // Writing the same value again is harmless and does not re-activate.
    w(&mut t, STATUS, S_DRIVER_OK);
    let s = state.lock().unwrap();
    assert_eq!(s.activations.len(), 1);
    assert_eq!(s.resets, 0);
}

#[test]
fn failed_is_honoured() {
    let (mut t, state) = transport();
    w(&mut t, STATUS, S_ACK);
    w(&mut t, STATUS, S_ACK | FAILED);
    assert_eq!(r(&mut t, STATUS), S_ACK | FAILED);
    // No progress past FAILED.
    w(&mut t, STATUS, S_DRIVER | FAILED);
    assert_eq!(r(&mut t, STATUS), S_ACK | FAILED);
    w(&mut t, STATUS, S_DRIVER);
    assert_eq!(r(&mut t, STATUS), S_ACK | FAILED);
    // Reset recovers.
    w(&mut t, STATUS, 0);
    assert_eq!(r(&mut t, STATUS), 0);
    activate(&mut t);
    assert!(t.is_activated());
    // FAILED after DRIVER_OK stops notifications reaching the device.
    w(&mut t, STATUS, S_DRIVER_OK | FAILED);
    assert_eq!(r(&mut t, STATUS), S_DRIVER_OK | FAILED);
    assert!(!t.is_running());
    assert_eq!(state.lock().unwrap().activations.len(), 1);
}

#[test]
fn unoffered_feature_blocks_features_ok() {
    let (mut t, state) = transport();
    negotiate(&mut t, VERSION_1 | FEAT_A | FEAT_UNOFFERED);
    assert_eq!(r(&mut t, STATUS), S_DRIVER, "FEATURES_OK must not stick");
    // The driver may try again with a valid set.
    write_features(&mut t, VERSION_1 | FEAT_A);
    w(&mut t, STATUS, S_FEATURES_OK);
    assert_eq!(r(&mut t, STATUS), S_FEATURES_OK);
    setup_queue(&mut t, 0, 16, 0x1000);
    w(&mut t, STATUS, S_DRIVER_OK);
    assert_eq!(state.lock().unwrap().activations[0].0, VERSION_1 | FEAT_A);
}

#[test]
fn version_1_is_required() {
    let (mut t, _) = transport();
    negotiate(&mut t, FEAT_A);
    assert_eq!(r(&mut t, STATUS), S_DRIVER);
    // A high window beyond 1 does not smuggle features in.
    w(&mut t, DRV_FEAT_SEL, 2);
    w(&mut t, DRV_FEAT, u32::MAX);
    w(&mut t, STATUS, S_FEATURES_OK);
    assert_eq!(r(&mut t, STATUS), S_DRIVER);
}

#[test]
fn features_are_writable_only_while_negotiating() {
    let (mut t, state) = transport();
    // Before DRIVER: ignored.
    w(&mut t, STATUS, S_ACK);
    write_features(&mut t, VERSION_1 | FEAT_A);
    w(&mut t, STATUS, S_DRIVER);
    w(&mut t, STATUS, S_FEATURES_OK);
    assert_eq!(r(&mut t, STATUS), S_DRIVER, "features written too early");
    write_features(&mut t, VERSION_1);
    w(&mut t, STATUS, S_FEATURES_OK);
    assert_eq!(r(&mut t, STATUS), S_FEATURES_OK);
    // After FEATURES_OK: ignored.
    write_features(&mut t, VERSION_1 | FEAT_A);
    setup_queue(&mut t, 0, 16, 0x1000);
    w(&mut t, STATUS, S_DRIVER_OK);
    assert_eq!(state.lock().unwrap().activations[0].0, VERSION_1);
}

#[test]
fn absent_queue_registers_read_zero_and_ignore_writes() {
    let (mut t, state) = transport();
    negotiate(&mut t, VERSION_1);
    setup_queue(&mut t, 0, 16, 0x1000);
    w(&mut t, QSEL, 1);
    assert_eq!(r(&mut t, QNUM_MAX), 0);
    assert_eq!(r(&mut t, QREADY), 0);
    w(&mut t, QNUM, 4);
    w(&mut t, QDESC_LO, 0x5000);
    w(&mut t, QREADY, 1);
    assert_eq!(r(&mut t, QREADY), 0);
    w(&mut t, QSEL, u32::MAX);
    w(&mut t, QREADY, 1);
    w(&mut t, STATUS, S_DRIVER_OK);
    let s = state.lock().unwrap();
    assert_eq!(s.activations[0].1.len(), 1);
    assert_eq!(s.activations[0].1[0].size(), 16);
    assert_eq!(s.activations[0].1[0].desc_table(), 0x1000);
}

#[test]
fn queue_registers_are_frozen_while_ready() {
    let (mut t, state) = transport();
    negotiate(&mut t, VERSION_1);
    setup_queue(&mut t, 0, 16, 0x1000);
    w(&mut t, QNUM, 4);
    w(&mut t, QDESC_LO, 0x5000);
    // Un-readying makes them writable again.
    w(&mut t, QREADY, 0);
    w(&mut t, QAVAIL_LO, 0x2400);
    w(&mut t, QREADY, 1);
    w(&mut t, STATUS, S_DRIVER_OK);
    let s = state.lock().unwrap();
    let q = &s.activations[0].1[0];
    assert_eq!(
        (q.size(), q.desc_table(), q.avail_ring()),
        (16, 0x1000, 0x2400)
    );
}

#[test]
fn queues_left_unready_are_passed_as_not_ready() {
    let (mut t, state) = transport_with(&[16, 16]);
    negotiate(&mut t, VERSION_1);
    setup_queue(&mut t, 1, 16, 0x1000);
    w(&mut t, STATUS, S_DRIVER_OK);
    let s = state.lock().unwrap();
    let queues = &s.activations[0].1;
    assert_eq!(queues.len(), 2);
    assert!(!queues[0].ready());
    assert!(queues[1].ready());
}

/// Activation with a bad queue: DEVICE_NEEDS_RESET, config interrupt, no
/// activation, no notification delivered.
fn assert_needs_reset_at_driver_ok(size: u32, desc: u64) {
    let (mut t, state) = transport();
    negotiate(&mut t, VERSION_1);
    setup_queue(&mut t, 0, size, desc);
    w(&mut t, STATUS, S_DRIVER_OK);
    let ctx = format!("size {size}, desc {desc:#x}");
    assert_eq!(r(&mut t, STATUS), S_DRIVER_OK | NEEDS_RESET, "{ctx}");
    assert_eq!(r(&mut t, INT_STATUS), VIRTIO_MMIO_INT_CONFIG, "{ctx}");
    assert_eq!(irq_count(&t), 1, "{ctx}");
    assert!(!t.is_activated(), "{ctx}");
    assert!(state.lock().unwrap().activations.is_empty(), "{ctx}");
    // A read-modify-write of the status that carries NEEDS_RESET back is
    // harmless; reset clears everything.
    w(&mut t, STATUS, S_DRIVER_OK | NEEDS_RESET);
    assert_eq!(r(&mut t, STATUS), S_DRIVER_OK | NEEDS_RESET);
    w(&mut t, STATUS, 0);
    assert_eq!(r(&mut t, STATUS), 0);
    assert_eq!(r(&mut t, INT_STATUS), 0);
}

#[test]
fn queue_outside_guest_memory_needs_reset() {
    assert_needs_reset_at_driver_ok(16, 0xfff0);
    assert_needs_reset_at_driver_ok(16, 0x1_0000_1000);
    assert_needs_reset_at_driver_ok(16, u64::MAX - 0xf);
}

#[test]
fn bad_queue_size_or_alignment_needs_reset() {
    assert_needs_reset_at_driver_ok(12, 0x1000); // not a power of two
    assert_needs_reset_at_driver_ok(32, 0x1000); // above QueueNumMax
    assert_needs_reset_at_driver_ok(0, 0x1000);
    assert_needs_reset_at_driver_ok(0x1_0010, 0x1000); // truncates to 16
    assert_needs_reset_at_driver_ok(16, 0x1008); // misaligned table
}

#[test]
fn activation_error_needs_reset() {
    let (mut t, state) = transport();
    state.lock().unwrap().fail_activate = true;
    activate(&mut t);
    assert_eq!(r(&mut t, STATUS), S_DRIVER_OK | NEEDS_RESET);
    assert_eq!(r(&mut t, INT_STATUS), VIRTIO_MMIO_INT_CONFIG);
    assert!(!t.is_activated());
}

#[test]
fn reset_mid_operation_clears_everything() {
    let (mut t, state) = transport();
    activate(&mut t);
    w(&mut t, DEV_FEAT_SEL, 1);
    w(&mut t, QSEL, 3);
    t.irq().signal_used_queue();
    assert_eq!(r(&mut t, INT_STATUS), VIRTIO_MMIO_INT_VRING);

    w(&mut t, STATUS, 0);
    assert_eq!(state.lock().unwrap().resets, 1);
    assert!(!t.is_activated());
    assert_eq!(r(&mut t, STATUS), 0);
    assert_eq!(r(&mut t, INT_STATUS), 0);
    assert_eq!(r(&mut t, DEV_FEAT), FEAT_A as u32, "selector back to 0");
    assert_eq!(r(&mut t, QNUM_MAX), 16, "queue selector back to 0");
    assert_eq!(r(&mut t, QREADY), 0);

    // Start over without writing QueueNum or features: defaults apply.
    w(&mut t, STATUS, S_ACK);
    w(&mut t, STATUS, S_DRIVER);
    w(&mut t, STATUS, S_FEATURES_OK);
    assert_eq!(r(&mut t, STATUS), S_DRIVER, "acked features were cleared");
    w(&mut t, DRV_FEAT_SEL, 1);
    w(&mut t, DRV_FEAT, 1);
    w(&mut t, STATUS, S_FEATURES_OK);
    w(&mut t, QDESC_LO, 0x1000);
    w(&mut t, QAVAIL_LO, 0x2000);
    w(&mut t, QUSED_LO, 0x3000);
    w(&mut t, QREADY, 1);
    w(&mut t, STATUS, S_DRIVER_OK);
    let s = state.lock().unwrap();
    assert_eq!(s.activations.len(), 2);
    assert_eq!(s.activations[1].0, VERSION_1);
    assert_eq!(s.activations[1].1[0].size(), 16);
}

#[test]
fn wrong_access_sizes_are_ignored() {
    let (mut t, _) = transport();
    let mut d2 = [0xaa; 2];
    t.read(MAGIC, &mut d2);
    assert_eq!(d2, [0xaa; 2]);
    let mut d8 = [0xaa; 8];
    t.read(MAGIC, &mut d8);
    assert_eq!(d8, [0xaa; 8]);
    let mut d4 = [0xaa; 4];
    t.read(MAGIC + 2, &mut d4);
    assert_eq!(d4, [0xaa; 4]);
    // Unknown register, right size: zero.
    t.read(0x0f0, &mut d4);
    assert_eq!(d4, [0; 4]);

    t.write(STATUS, &[S_ACK as u8]);
    assert_eq!(r(&mut t, STATUS), 0);
    t.write(STATUS + 1, &S_ACK.to_le_bytes());
    assert_eq!(r(&mut t, STATUS), 0);
    t.write(STATUS, &u64::from(S_ACK).to_le_bytes());
    assert_eq!(r(&mut t, STATUS), 0);
    // Read-only registers ignore writes.
    w(&mut t, MAGIC, 0);
    assert_eq!(r(&mut t, MAGIC), MMIO_MAGIC_VALUE);
}

#[test]
fn config_space_access() {
    let (mut t, state) = transport();
    let base = MMIO_CONFIG_OFFSET;
    let mut b1 = [0u8; 1];
    t.read(base + 3, &mut b1);
    assert_eq!(b1, [0x13]);
    let mut b2 = [0u8; 2];
    t.read(base + 4, &mut b2);
    assert_eq!(b2, [0x14, 0x15]);
    let mut b4 = [0u8; 4];
    t.read(base, &mut b4);
    assert_eq!(b4, [0x10, 0x11, 0x12, 0x13]);
    let mut b8 = [0u8; 8];
    t.read(base + 8, &mut b8);
    assert_eq!(b8, CONFIG[8..16]);
    // Beyond the device's config: zeros, whatever the bus pre-filled.
    let mut b4 = [0xaa; 4];
    t.read(base + 14, &mut b4);
    assert_eq!(b4, [0x1e, 0x1f, 0, 0]);
    // Odd sizes are refused.
    let mut b3 = [0xaa; 3];
    t.read(base, &mut b3);
    assert_eq!(b3, [0xaa; 3]);

    t.write(base + 2, &[1, 2]);
    t.write(base, &[1, 2, 3]);
    assert_eq!(state.lock().unwrap().config_writes, vec![(2, vec![1, 2])]);
}

#[test]
fn interrupt_status_and_ack() {
    let (mut t, _) = transport();
    t.irq().signal_used_queue();
    t.irq().signal_config_change();
    assert_eq!(
        r(&mut t, INT_STATUS),
        VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG
    );
    assert_eq!(irq_count(&t), 2);
    w(&mut t, INT_STATUS, 0); // read-only
    assert_eq!(
        r(&mut t, INT_STATUS),
        VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG
    );
    w(&mut t, INT_ACK, VIRTIO_MMIO_INT_VRING);
    assert_eq!(r(&mut t, INT_STATUS), VIRTIO_MMIO_INT_CONFIG);
    w(&mut t, INT_ACK, VIRTIO_MMIO_INT_CONFIG);
    assert_eq!(r(&mut t, INT_STATUS), 0);
}

/// The VMM's wiring: one `Arc<Mutex<_>>` on the MMIO bus and in the event
/// manager; QueueNotify writes reach the device through the event loop.
#[test]
fn notifications_through_bus_and_event_manager() {
    let (t, state) = transport_with(&[16, 16]);
    let t = Arc::new(Mutex::new(t));
    let mut bus = Bus::new();
    bus.insert(t.clone(), 0x1000_0000, MMIO_REGION_SIZE)
        .unwrap();
    let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    em.add_subscriber(t.clone());

    let bus_w = |off: u64, v: u32| assert!(bus.write(0x1000_0000 + off, &v.to_le_bytes()));
    let delivered = |em: &mut EventManager<_>| {
        em.run_with_timeout(50).unwrap();
        std::mem::take(&mut state.lock().unwrap().notified)
    };

    // Before activation the kick is consumed but not delivered.
    bus_w(QNOTIFY, 0);
    assert_eq!(delivered(&mut em), Vec::<usize>::new());

    activate(&mut t.lock().unwrap());
    bus_w(QNOTIFY, 1);
    assert_eq!(delivered(&mut em), vec![1]);
    bus_w(QNOTIFY, 7); // absent queue
    bus_w(QNOTIFY, 0);
    assert_eq!(delivered(&mut em), vec![0]);

    // The device reports an unrecoverable error: NEEDS_RESET and a config
    // interrupt, once; notifications stop.
    assert_eq!(irq_count(&t.lock().unwrap()), 0);
    state.lock().unwrap().needs_reset = true;
    bus_w(QNOTIFY, 0);
    assert_eq!(delivered(&mut em), vec![0]);
    bus_w(QNOTIFY, 0);
    assert_eq!(delivered(&mut em), Vec::<usize>::new());
    let mut t = t.lock().unwrap();
    assert_eq!(t.status(), S_DRIVER_OK | NEEDS_RESET);
    assert_eq!(r(&mut t, INT_STATUS), VIRTIO_MMIO_INT_CONFIG);
    assert_eq!(irq_count(&t), 1);
}

/// The real block device behind the transport: handshake with everything it
/// offers, one GET_ID request kicked through QueueNotify and the event loop.
#[test]
fn block_device_end_to_end() {
    use crate::virtio::block::Block;
    use virtio_queue::desc::split::Descriptor;
    use vm_memory::Bytes;

    let img = vmm_sys_util::tempfile::TempFile::new().unwrap();
    img.as_file().set_len(4096).unwrap();
    let block = Block::new(img.as_path(), false, Some("e2e-serial")).unwrap();
    let metrics = block.metrics();
    let mem = mem();
    let irq = Arc::new(IrqTrigger::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let t = Arc::new(Mutex::new(
        MmioTransport::new(Box::new(block), mem.clone(), irq).unwrap(),
    ));
    let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    em.add_subscriber(t.clone());

    let mut guard = t.lock().unwrap();
    let t_ = &mut *guard;
    assert_eq!(r(t_, off(reg::VIRTIO_MMIO_DEVICE_ID)), 2);
    let mut offered = u64::from(r(t_, DEV_FEAT));
    w(t_, DEV_FEAT_SEL, 1);
    offered |= u64::from(r(t_, DEV_FEAT)) << 32;
    negotiate(t_, offered);
    assert_eq!(r(t_, STATUS), S_FEATURES_OK);
    assert_eq!(r(t_, QNUM_MAX), 256);
    setup_queue(t_, 0, 16, 0x1000);
    w(t_, STATUS, S_DRIVER_OK);
    assert_eq!(r(t_, STATUS), S_DRIVER_OK);
    let mut cap = [0u8; 8];
    t_.read(MMIO_CONFIG_OFFSET, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 8);

    // GET_ID: header, 20-byte buffer, status.
    let (hdr, buf, status) = (0x4000u64, 0x5000u64, 0x6000u64);
    mem.write_obj(8u32, GuestAddress(hdr)).unwrap();
    let descs = [
        Descriptor::new(hdr, 16, 1, 1),
        Descriptor::new(buf, 20, 1 | 2, 2),
        Descriptor::new(status, 1, 2, 0),
    ];
    for (i, d) in descs.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(0x1000 + 16 * i as u64))
            .unwrap();
    }
    mem.write_obj(0u16, GuestAddress(0x2004)).unwrap();
    mem.write_obj(1u16, GuestAddress(0x2002)).unwrap();
    mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
    w(t_, QNOTIFY, 0);
    drop(guard);
    em.run_with_timeout(50).unwrap();

    let used_idx: u16 = mem.read_obj(GuestAddress(0x3002)).unwrap();
    let used_len: u32 = mem.read_obj(GuestAddress(0x3008)).unwrap();
    assert_eq!((used_idx, used_len), (1, 21));
    assert_eq!(mem.read_obj::<u8>(GuestAddress(status)).unwrap(), 0);
    let mut serial = [0u8; 20];
    mem.read_slice(&mut serial, GuestAddress(buf)).unwrap();
    assert_eq!(&serial[..10], b"e2e-serial");
    assert_eq!(metrics.snapshot().get_ids, 1);
    let mut t = t.lock().unwrap();
    assert_eq!(r(&mut t, INT_STATUS), VIRTIO_MMIO_INT_VRING);
}
