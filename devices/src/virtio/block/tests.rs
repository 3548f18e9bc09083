#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::io::{Read, Seek, SeekFrom, Write};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_USED_F_NO_NOTIFY};
use virtio_queue::QueueT;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::virtio::test_util::*;
use crate::virtio::VIRTIO_MMIO_INT_VRING;

/// The request queue, the only one.
const Q: usize = 0;
/// Its rings in the shared driver.
const DESC_TABLE: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x11_0000;
const STATUS: u64 = 0x18_0000;
const INDIRECT: u64 = 0x19_0000;
const SECTORS: u64 = 64;

const UNTOUCHED: u8 = 0xee;

const BASE_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_BLK_F_FLUSH);

fn image_byte(offset: u64) -> u8 {
    (offset.wrapping_mul(7) ^ (offset >> 9)) as u8
}

fn image(len: u64) -> TempFile {
    let t = TempFile::new().unwrap();
    let bytes: Vec<u8> = (0..len).map(image_byte).collect();
    t.as_file().write_all(&bytes).unwrap();
    t
}

fn file_contents(t: &TempFile) -> Vec<u8> {
    let mut f = t.as_file();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    v
}

fn new_queue(mem: &GuestMemoryMmap) -> Queue {
    Ring::new(DESC_TABLE).queue(mem)
}

/// A block device on a temp image plus a minimal split-queue driver (the
/// harness dereferences to it).
struct Harness {
    drv: Driver<1>,
    image: TempFile,
    block: Block,
}

deref_driver!(Harness, 1);

impl Harness {
    fn new() -> Self {
        Self::with(
            image(SECTORS * SECTOR_SIZE),
            false,
            Some("test-disk"),
            BASE_FEATURES,
        )
    }

    fn with(image: TempFile, read_only: bool, id: Option<&str>, features: u64) -> Self {
        let drv = Driver::new();
        let r = &drv.rings[Q];
        assert_eq!((r.desc, r.avail, r.used), (DESC_TABLE, AVAIL, USED));
        let mut block = Block::new(image.as_path(), read_only, id).unwrap();
        block.activate(drv.context(features)).unwrap();
        Self { drv, image, block }
    }

    fn header(&self, t: u32, sector: u64) {
        self.mem.write_obj(t, GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        self.mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
    }

    fn fill(&self, addr: u64, len: usize, byte: u8) {
        self.write(addr, &vec![byte; len]);
    }

    fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    /// Submit one chain, run the device, return (used len, status byte).
    fn submit(&mut self, descs: &[Desc]) -> (u32, u8) {
        self.mem.write_obj(UNTOUCHED, GuestAddress(STATUS)).unwrap();
        let head = self.add(Q, descs);
        let before = self.used_idx(Q);
        self.block.queue_notify(0);
        assert_eq!(self.used_idx(Q), before.wrapping_add(1), "one chain used");
        let (id, len) = self.used_elem(Q, before);
        assert_eq!(id, u32::from(head));
        (len, self.status())
    }

    /// A well-formed request: header, data descriptors, 1-byte status.
    fn request(&mut self, t: u32, sector: u64, data: &[Desc]) -> (u32, u8) {
        self.header(t, sector);
        let mut descs = vec![(HDR, 16, R)];
        descs.extend_from_slice(data);
        descs.push((STATUS, 1, W));
        self.submit(&descs)
    }

    fn metrics(&self) -> BlockMetricsSnapshot {
        self.block.metrics().snapshot()
    }
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

fn image_range(start: u64, len: u64) -> Vec<u8> {
    (start..start + len).map(image_byte).collect()
}

// ---- construction and config ----

#[test]
fn new_reports_capacity_features_and_config() {
    let h = Harness::new();
    let b = &h.block;
    assert_eq!(b.capacity(), SECTORS);
    assert_eq!(b.device_type(), VIRTIO_ID_BLOCK);
    assert_eq!(b.queue_max_sizes(), &[256]);
    let f = b.avail_features();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
    ] {
        assert_ne!(f & (1 << bit), 0, "feature {bit}");
    }
    assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
    let mut cfg = [0u8; 24];
    b.read_config(0, &mut cfg);
    assert_eq!(u64::from_le_bytes(cfg[0..8].try_into().unwrap()), SECTORS);
    assert_eq!(u32::from_le_bytes(cfg[12..16].try_into().unwrap()), 254);
    assert_eq!(u32::from_le_bytes(cfg[20..24].try_into().unwrap()), 512);
    // Partial and out-of-range reads.
    let mut four = [0u8; 4];
    b.read_config(4, &mut four);
    assert_eq!(four, [0; 4]);
    b.read_config(20, &mut four);
    assert_eq!(four, 512u32.to_le_bytes());
    let mut eight = [0xaa; 8];
    b.read_config(20, &mut eight);
    assert_eq!(eight, [0, 2, 0, 0, 0xaa, 0xaa, 0xaa, 0xaa]);
    b.read_config(u64::MAX, &mut eight);
    assert_eq!(eight, [0, 2, 0, 0, 0xaa, 0xaa, 0xaa, 0xaa]);
}

#[test]
fn size_not_multiple_of_sector_is_rounded_down() {
    let mut h = Harness::with(image(1000), false, None, BASE_FEATURES);
    assert_eq!(h.block.capacity(), 1);
    assert_eq!(h.request(VIRTIO_BLK_T_IN, 0, &[(DATA, 512, W)]), (513, OK));
    assert_eq!(h.request(VIRTIO_BLK_T_IN, 1, &[(DATA, 512, W)]), (1, IOERR));
}

#[test]
fn new_errors_name_the_offending_value() {
    let err = Block::new(Path::new("/nonexistent/disk.img"), false, None).unwrap_err();
    assert!(matches!(err, BlockError::Open { .. }));
    assert!(err.to_string().contains("/nonexistent/disk.img"), "{err}");

    let img = image(512);
    let long = "an-id-longer-than-twenty-bytes";
    let err = Block::new(img.as_path(), false, Some(long)).unwrap_err();
    assert!(matches!(err, BlockError::IdTooLong { .. }));
    assert!(err.to_string().contains(long), "{err}");
}

#[test]
fn activate_requires_one_valid_queue() {
    let img = image(512);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    let irq = Arc::new(IrqTrigger::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let ctx = |queues| ActivateContext {
        mem: mem.clone(),
        queues,
        acked_features: BASE_FEATURES,
        irq: irq.clone(),
    };
    let mut b = Block::new(img.as_path(), false, None).unwrap();
    assert!(matches!(
        b.activate(ctx(vec![])),
        Err(VirtioError::QueueCount {
            expected: 1,
            got: 0
        })
    ));
    assert!(matches!(
        b.activate(ctx(vec![new_queue(&mem), new_queue(&mem)])),
        Err(VirtioError::QueueCount {
            expected: 1,
            got: 2
        })
    ));
    assert!(matches!(
        b.activate(ctx(vec![Queue::new(QSIZE).unwrap()])),
        Err(VirtioError::InvalidQueue(0))
    ));
    assert!(b.activate(ctx(vec![new_queue(&mem)])).is_ok());
}

// ---- the supported requests ----

#[test]
fn read_sectors_into_split_buffers() {
    let mut h = Harness::new();
    h.fill(DATA, 0x2000, 0);
    // Second buffer straddles the boundary between the two memory regions.
    let straddle = REGION - 0x100;
    let r = h.request(VIRTIO_BLK_T_IN, 3, &[(DATA, 512, W), (straddle, 1024, W)]);
    assert_eq!(r, (1 + 1536, OK));
    assert_eq!(h.read(DATA, 512), image_range(3 * 512, 512));
    assert_eq!(h.read(straddle, 1024), image_range(4 * 512, 1024));
    assert_eq!(h.interrupts(), 1);
    assert_eq!(h.irq.status(), VIRTIO_MMIO_INT_VRING);
    let m = h.metrics();
    assert_eq!((m.requests, m.reads, m.read_bytes), (1, 1, 1536));
}

#[test]
fn read_last_sector() {
    let mut h = Harness::new();
    let r = h.request(VIRTIO_BLK_T_IN, SECTORS - 1, &[(DATA, 512, W)]);
    assert_eq!(r, (513, OK));
    assert_eq!(h.read(DATA, 512), image_range((SECTORS - 1) * 512, 512));
}

#[test]
fn write_sectors() {
    let mut h = Harness::new();
    let mut expected = file_contents(&h.image);
    h.fill(DATA, 512, 0x5a);
    h.fill(REGION - 0x100, 512, 0xa5);
    let r = h.request(
        VIRTIO_BLK_T_OUT,
        5,
        &[(DATA, 512, R), (REGION - 0x100, 512, R)],
    );
    assert_eq!(r, (1, OK));
    expected[5 * 512..6 * 512].fill(0x5a);
    expected[6 * 512..7 * 512].fill(0xa5);
    assert_eq!(file_contents(&h.image), expected);
    let m = h.metrics();
    assert_eq!((m.writes, m.write_bytes), (1, 1024));
}

#[test]
fn write_through_without_flush_feature() {
    let mut h = Harness::with(image(4096), false, None, 1 << VIRTIO_F_VERSION_1);
    assert!(h.block.disk.writethrough);
    h.fill(DATA, 512, 0x11);
    assert_eq!(h.request(VIRTIO_BLK_T_OUT, 1, &[(DATA, 512, R)]), (1, OK));
    assert_eq!(file_contents(&h.image)[512..1024], [0x11; 512]);
    h.block.reset();
    assert!(!h.block.disk.writethrough);
}

#[test]
fn flush() {
    let mut h = Harness::new();
    assert_eq!(h.request(VIRTIO_BLK_T_FLUSH, 0, &[]), (1, OK));
    assert_eq!(h.metrics().flushes, 1);
}

#[test]
fn get_id_with_given_serial() {
    let mut h = Harness::new();
    h.fill(DATA, 32, UNTOUCHED);
    assert_eq!(
        h.request(VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 20, W)]),
        (21, OK)
    );
    let mut expected = b"test-disk".to_vec();
    expected.resize(20, 0);
    assert_eq!(h.read(DATA, 20), expected);
    assert_eq!(h.read(DATA + 20, 12), [UNTOUCHED; 12]);
    // A short buffer gets a prefix; a split one gets it in order.
    h.fill(DATA, 32, UNTOUCHED);
    assert_eq!(h.request(VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 4, W)]), (5, OK));
    assert_eq!(h.read(DATA, 5), b"test\xee");
    h.fill(DATA, 32, UNTOUCHED);
    let r = h.request(VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 5, W), (DATA + 16, 64, W)]);
    assert_eq!(r, (21, OK));
    assert_eq!(h.read(DATA, 5), b"test-");
    assert_eq!(
        h.read(DATA + 16, 16),
        [&expected[5..], &[UNTOUCHED]].concat()
    );
    assert_eq!(h.metrics().get_ids, 3);
}

#[test]
fn derived_serial_is_stable_and_not_empty() {
    let img = image(512);
    let a = Block::new(img.as_path(), false, None).unwrap();
    let b = Block::new(img.as_path(), true, None).unwrap();
    assert_eq!(a.serial().len(), 20);
    assert_ne!(a.serial(), [0; 20]);
    assert_eq!(a.serial(), b.serial());
}

#[test]
fn read_only_refuses_writes_and_offers_ro() {
    let img = image(SECTORS * SECTOR_SIZE);
    let before = file_contents(&img);
    let mut h = Harness::with(img, true, None, BASE_FEATURES);
    assert!(h.block.read_only());
    assert_ne!(h.block.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
    h.fill(DATA, 512, 0x77);
    assert_eq!(
        h.request(VIRTIO_BLK_T_OUT, 0, &[(DATA, 512, R)]),
        (1, IOERR)
    );
    assert_eq!(file_contents(&h.image), before);
    // Reads still work.
    assert_eq!(h.request(VIRTIO_BLK_T_IN, 0, &[(DATA, 512, W)]).1, OK);
    assert_eq!(h.metrics().invalid_requests, 1);
}

#[test]
fn unsupported_types() {
    let mut h = Harness::new();
    h.fill(DATA, 512, UNTOUCHED);
    for t in [2, 11, 13, 0xdead_beef] {
        let r = h.request(t, 0, &[(DATA, 512, W)]);
        assert_eq!(r, (1, UNSUPP), "type {t}");
    }
    assert_eq!(h.read(DATA, 512), [UNTOUCHED; 512]);
    assert_eq!(h.metrics().unsupported_requests, 4);
}

#[test]
fn sectors_beyond_capacity() {
    let mut h = Harness::new();
    let before = file_contents(&h.image);
    h.fill(DATA, 1024, UNTOUCHED);
    for (sector, len) in [
        (SECTORS, 512),
        (SECTORS - 1, 1024),
        (u64::MAX / 512, 512),
        (u64::MAX / 512 + 1, 512),
        (u64::MAX, 512),
    ] {
        let r = h.request(VIRTIO_BLK_T_IN, sector, &[(DATA, len, W)]);
        assert_eq!(r, (1, IOERR), "read of sector {sector}");
        let r = h.request(VIRTIO_BLK_T_OUT, sector, &[(DATA, len, R)]);
        assert_eq!(r, (1, IOERR), "write of sector {sector}");
    }
    assert_eq!(h.read(DATA, 1024), [UNTOUCHED; 1024]);
    assert_eq!(file_contents(&h.image), before, "file unchanged, not grown");
    assert_eq!(h.metrics().invalid_requests, 10);
}

#[test]
fn host_io_error_is_reported() {
    let mut h = Harness::new();
    // The image shrinks under the device: reads past the new end fail.
    h.image.as_file().set_len(512).unwrap();
    assert_eq!(h.request(VIRTIO_BLK_T_IN, 2, &[(DATA, 512, W)]), (1, IOERR));
    assert_eq!(h.metrics().io_errors, 1);
}

// ---- hostile chains ----

#[test]
fn bad_headers_get_ioerr() {
    let mut h = Harness::new();
    h.header(VIRTIO_BLK_T_IN, 0);
    h.fill(DATA, 512, UNTOUCHED);
    let data = (DATA, 512, W);
    let status = (STATUS, 1, W);
    for (name, header) in [
        ("short", (HDR, 15, R)),
        ("device-writable", (HDR, 16, W)),
        ("outside memory", (MEM_END - 8, 16, R)),
        ("wrapping address", (u64::MAX - 7, 16, R)),
    ] {
        assert_eq!(h.submit(&[header, data, status]), (1, IOERR), "{name}");
    }
    // No header at all: the status byte alone.
    assert_eq!(h.submit(&[status]), (1, IOERR));
    assert_eq!(h.read(DATA, 512), [UNTOUCHED; 512]);
}

#[test]
fn unusable_status_means_no_status_write() {
    let mut h = Harness::new();
    h.header(VIRTIO_BLK_T_OUT, 0);
    h.fill(DATA, 512, 0x33);
    let before = file_contents(&h.image);
    let hdr = (HDR, 16, R);
    let data = (DATA, 512, R);
    for (name, status) in [
        ("readable", (STATUS, 1, R)),
        ("empty", (STATUS, 0, W)),
        ("outside memory", (MEM_END, 1, W)),
    ] {
        assert_eq!(h.submit(&[hdr, data, status]), (0, UNTOUCHED), "{name}");
    }
    // A single readable descriptor: nothing to report into.
    assert_eq!(h.submit(&[hdr]), (0, UNTOUCHED));
    assert_eq!(file_contents(&h.image), before);
    assert_eq!(h.metrics().invalid_requests, 4);
}

#[test]
fn data_descriptors_with_wrong_direction() {
    let mut h = Harness::new();
    let before = file_contents(&h.image);
    h.fill(DATA, 1024, UNTOUCHED);
    // A read whose second buffer is device-readable.
    let r = h.request(VIRTIO_BLK_T_IN, 0, &[(DATA, 512, W), (DATA + 512, 512, R)]);
    assert_eq!(r, (1, IOERR));
    assert_eq!(h.read(DATA, 1024), [UNTOUCHED; 1024], "nothing read in");
    // A write whose buffer is device-writable.
    let r = h.request(VIRTIO_BLK_T_OUT, 0, &[(DATA, 512, R), (DATA + 512, 512, W)]);
    assert_eq!(r, (1, IOERR));
    let r = h.request(VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 20, R)]);
    assert_eq!(r, (1, IOERR));
    assert_eq!(file_contents(&h.image), before);
}

#[test]
fn data_outside_guest_memory() {
    let mut h = Harness::new();
    let before = file_contents(&h.image);
    h.fill(MEM_END - 256, 256, UNTOUCHED);
    for (name, addr, len) in [
        ("past the end", MEM_END - 256, 512),
        ("beyond memory", MEM_END + 0x1000, 512),
        ("wrapping", u64::MAX - 255, 512),
        ("huge", DATA, 0xffff_fe00),
    ] {
        let r = h.request(VIRTIO_BLK_T_IN, 0, &[(addr, len, W)]);
        assert_eq!(r, (1, IOERR), "read {name}");
        let r = h.request(VIRTIO_BLK_T_OUT, 0, &[(addr, len, R)]);
        assert_eq!(r, (1, IOERR), "write {name}");
    }
    // A chain of more than 4 GiB in total is cut short by the chain iterator
    // (virtio-queue) and refused without a status.
    let r = h.request(VIRTIO_BLK_T_IN, 0, &[(0, u32::MAX, W)]);
    assert_eq!(r, (0, UNTOUCHED));
    let r = h.request(
        VIRTIO_BLK_T_IN,
        0,
        &[(DATA, 0x8000_0000, W), (DATA, 0x8000_0000, W)],
    );
    assert_eq!(r, (0, UNTOUCHED));
    assert_eq!(h.read(MEM_END - 256, 256), [UNTOUCHED; 256]);
    assert_eq!(file_contents(&h.image), before);
}

#[test]
fn data_lengths_must_be_whole_sectors() {
    let mut h = Harness::new();
    let before = file_contents(&h.image);
    let cases: &[(&str, u32, &[Desc])] = &[
        ("no data", VIRTIO_BLK_T_IN, &[]),
        ("no data", VIRTIO_BLK_T_OUT, &[]),
        ("513 bytes", VIRTIO_BLK_T_IN, &[(DATA, 513, W)]),
        ("100 bytes", VIRTIO_BLK_T_OUT, &[(DATA, 100, R)]),
        (
            "256 + 256 + 1",
            VIRTIO_BLK_T_IN,
            &[(DATA, 256, W), (DATA + 256, 257, W)],
        ),
        (
            "empty descriptor",
            VIRTIO_BLK_T_OUT,
            &[(DATA, 512, R), (DATA, 0, R)],
        ),
        ("empty get-id", VIRTIO_BLK_T_GET_ID, &[]),
    ];
    for (name, t, data) in cases {
        assert_eq!(h.request(*t, 0, data), (1, IOERR), "{name} (type {t})");
    }
    // Sub-sector buffers adding up to whole sectors are fine.
    let r = h.request(VIRTIO_BLK_T_IN, 0, &[(DATA, 256, W), (DATA + 256, 256, W)]);
    assert_eq!(r, (513, OK));
    assert_eq!(file_contents(&h.image), before);
}

#[test]
fn descriptor_loops_terminate() {
    let mut h = Harness::new();
    h.header(VIRTIO_BLK_T_IN, 0);
    // 0 -> 1 -> 2 -> 1 -> ...
    h.write_desc(DESC_TABLE, 0, (HDR, 16, R | NEXT), 1);
    h.write_desc(DESC_TABLE, 1, (DATA, 512, W | NEXT), 2);
    h.write_desc(DESC_TABLE, 2, (STATUS, 1, W | NEXT), 1);
    h.mem.write_obj(UNTOUCHED, GuestAddress(STATUS)).unwrap();
    h.publish(Q, 0);
    // A descriptor pointing at itself.
    h.write_desc(DESC_TABLE, 3, (STATUS, 1, W | NEXT), 3);
    h.publish(Q, 3);
    // NEXT beyond the table.
    h.write_desc(DESC_TABLE, 4, (HDR, 16, R | NEXT), 200);
    h.publish(Q, 4);
    h.block.queue_notify(0);
    assert_eq!(h.used_idx(Q), 3);
    for i in 0..3 {
        assert_eq!(h.used_elem(Q, i).1, 0, "chain {i}");
    }
    assert_eq!(h.status(), UNTOUCHED);
    assert!(!h.block.needs_reset());
    // The queue still works.
    h.rings[Q].next_desc = 5;
    assert_eq!(h.request(VIRTIO_BLK_T_IN, 0, &[(DATA, 512, W)]), (513, OK));
}

#[test]
fn indirect_tables() {
    let mut h = Harness::new();
    h.header(VIRTIO_BLK_T_IN, 1);
    let ind = VRING_DESC_F_INDIRECT as u16;

    // A valid indirect chain works (the device does not offer INDIRECT_DESC,
    // but following a well-formed table is harmless).
    h.write_desc(INDIRECT, 0, (HDR, 16, R | NEXT), 1);
    h.write_desc(INDIRECT, 1, (DATA, 512, W | NEXT), 2);
    h.write_desc(INDIRECT, 2, (STATUS, 1, W), 0);
    assert_eq!(h.submit(&[(INDIRECT, 3 * 16, ind)]), (513, OK));
    assert_eq!(h.read(DATA, 512), image_range(512, 512));

    // Longer than the queue: a table of 2 * QSIZE descriptors.
    let n = 2 * QSIZE;
    h.write_desc(INDIRECT, 0, (HDR, 16, R | NEXT), 1);
    for i in 1..n - 1 {
        h.write_desc(INDIRECT, i, (DATA, 512, W | NEXT), i + 1);
    }
    h.write_desc(INDIRECT, n - 1, (STATUS, 1, W), 0);
    assert_eq!(
        h.submit(&[(INDIRECT, u32::from(n) * 16, ind)]),
        (0, UNTOUCHED)
    );

    // Nested indirect table.
    h.write_desc(INDIRECT, 0, (HDR, 16, R | NEXT), 1);
    h.write_desc(INDIRECT, 1, (INDIRECT + 0x1000, 32, ind), 0);
    assert_eq!(h.submit(&[(INDIRECT, 2 * 16, ind)]), (0, UNTOUCHED));
    h.write_desc(INDIRECT, 0, (INDIRECT, 16, ind), 0);
    assert_eq!(h.submit(&[(INDIRECT, 16, ind)]), (0, UNTOUCHED));

    // Table length not a multiple of a descriptor, empty, or outside memory.
    assert_eq!(h.submit(&[(INDIRECT, 20, ind)]), (0, UNTOUCHED));
    assert_eq!(h.submit(&[(INDIRECT, 0, ind)]), (0, UNTOUCHED));
    assert_eq!(h.submit(&[(MEM_END - 16, 32, ind)]), (0, UNTOUCHED));
    assert_eq!(h.submit(&[(INDIRECT, 0xffff_fff0, ind)]), (0, UNTOUCHED));
    // Indirect descriptor after a regular one.
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    h.write_desc(INDIRECT, 0, (STATUS, 1, W), 0);
    let r = h.submit(&[(HDR, 16, R), (INDIRECT, 16, ind)]);
    assert_eq!(r.1, OK, "header then an indirect table holding the status");
    assert!(!h.block.needs_reset());
}

#[test]
fn out_of_range_head_index_needs_reset() {
    let mut h = Harness::new();
    h.publish(Q, QSIZE + 3);
    h.block.queue_notify(0);
    assert!(h.block.needs_reset());
    assert_eq!(h.used_idx(Q), 0);
    assert_eq!(h.metrics().queue_errors, 1);
    // Further notifications are ignored until reset, even for good chains.
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    let head = h.chain(Q, &[(HDR, 16, R), (STATUS, 1, W)]);
    h.publish(Q, head);
    h.block.queue_notify(0);
    assert_eq!(h.metrics().requests, 1);
    assert_eq!(h.used_idx(Q), 0);
    h.block.reset();
    assert!(!h.block.needs_reset());
}

#[test]
fn avail_index_beyond_queue_size_needs_reset() {
    let mut h = Harness::new();
    h.mem.write_obj(QSIZE + 1, GuestAddress(AVAIL + 2)).unwrap();
    h.block.queue_notify(0);
    assert!(h.block.needs_reset());
    assert_eq!(h.metrics().requests, 0);
}

#[test]
fn many_requests_wrap_the_rings() {
    let mut h = Harness::new();
    h.header(VIRTIO_BLK_T_IN, 2);
    for round in 0..3u16 {
        // A full ring of 3-descriptor chains does not fit 16 descriptors, so
        // publish 5 chains at a time.
        for _ in 0..5 {
            let head = h.chain(Q, &[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)]);
            h.publish(Q, head);
        }
        h.block.queue_notify(0);
        assert_eq!(h.used_idx(Q), 5 * (round + 1));
    }
    for i in 0..15 {
        assert_eq!(h.used_elem(Q, i).1, 513);
    }
    assert_eq!(h.metrics().reads, 15);
    // No event idx: notifications re-enabled after the pass.
    assert_eq!(h.mem.read_obj::<u16>(GuestAddress(USED)).unwrap(), 0);
}

#[test]
fn notifications_reenabled_after_processing() {
    let mut h = Harness::new();
    // Start from "no notify": the device must turn notifications back on
    // when it goes idle, or the driver would never kick again.
    h.mem
        .write_obj(VRING_USED_F_NO_NOTIFY as u16, GuestAddress(USED))
        .unwrap();
    h.block.queue_notify(0);
    assert_eq!(h.mem.read_obj::<u16>(GuestAddress(USED)).unwrap(), 0);
    assert_eq!(h.interrupts(), 0, "nothing used, no interrupt");
}

#[test]
fn event_idx_suppresses_interrupts() {
    let mut h = Harness::with(
        image(SECTORS * SECTOR_SIZE),
        false,
        None,
        BASE_FEATURES | EVENT_IDX,
    );
    let used_event = GuestAddress(AVAIL + 4 + 2 * u64::from(QSIZE));
    let avail_event = GuestAddress(USED + 4 + 8 * u64::from(QSIZE));
    // The driver wants an interrupt only once used idx passes 2.
    h.mem.write_obj(2u16, used_event).unwrap();
    h.request(VIRTIO_BLK_T_FLUSH, 0, &[]);
    assert_eq!(h.interrupts(), 0);
    assert_eq!(h.mem.read_obj::<u16>(avail_event).unwrap(), 1);
    h.request(VIRTIO_BLK_T_FLUSH, 0, &[]);
    assert_eq!(h.interrupts(), 0);
    h.request(VIRTIO_BLK_T_FLUSH, 0, &[]);
    assert_eq!(h.interrupts(), 1);
    assert_eq!(h.mem.read_obj::<u16>(avail_event).unwrap(), 3);
}

#[test]
fn reset_stops_processing() {
    let mut h = Harness::new();
    h.block.reset();
    h.header(VIRTIO_BLK_T_IN, 0);
    let head = h.chain(Q, &[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)]);
    h.publish(Q, head);
    h.block.queue_notify(0);
    h.block.queue_notify(1);
    assert_eq!(h.used_idx(Q), 0);
    assert_eq!(h.metrics().requests, 0);
}
