//! vmm's debug device: one MMIO page through which a guest marks the moment
//! it is up (the boot-time marker) and hands vmm its exit status.
//!
//! | offset | access      | meaning                                          |
//! |--------|-------------|--------------------------------------------------|
//! | 0x0    | write, any  | boot marker; the value written is the marker code |
//! | 0x4    | write, any  | exit status: the low byte ends vmm with it        |
//! | any    | read        | 0                                                |
//!
//! From a Linux userspace: `devmem 0xd0000000 8 1`; from a bare-metal guest a
//! plain store.

use crate::bus::BusDevice;

/// Offset of the boot-marker register.
pub const MARKER_OFFSET: u64 = 0x0;
/// Offset of the exit-status register.
pub const EXIT_OFFSET: u64 = 0x4;

/// What the VMM does with the guest's writes.
pub trait DebugEvents: Send {
    /// The guest wrote boot marker `code`.
    fn marker(&self, code: u64);
    /// The guest asked to exit with `status`.
    fn exit(&self, status: u8);
}

/// The debug device.
pub struct DebugDevice<E: DebugEvents> {
    events: E,
}

impl<E: DebugEvents> DebugDevice<E> {
    /// A debug device reporting to `events`.
    pub fn new(events: E) -> Self {
        Self { events }
    }
}

fn value(data: &[u8]) -> Option<u64> {
    match data.len() {
        1 | 2 | 4 | 8 => {
            let mut b = [0u8; 8];
            b[..data.len()].copy_from_slice(data);
            Some(u64::from_le_bytes(b))
        }
        _ => None,
    }
}

impl<E: DebugEvents> BusDevice for DebugDevice<E> {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(v) = value(data) else { return };
        match offset {
            MARKER_OFFSET => self.events.marker(v),
            EXIT_OFFSET => self.events.exit(v.to_le_bytes()[0]),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::cast_possible_truncation)]
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Default, Clone)]
    struct Log(Arc<Mutex<Vec<String>>>);
    impl DebugEvents for Log {
        fn marker(&self, code: u64) {
            self.0.lock().unwrap().push(format!("m{code}"));
        }
        fn exit(&self, status: u8) {
            self.0.lock().unwrap().push(format!("x{status}"));
        }
    }

    #[test]
    fn marker_and_exit_writes() {
        let log = Log::default();
        let mut d = DebugDevice::new(log.clone());
        d.write(MARKER_OFFSET, &[1]);
        d.write(MARKER_OFFSET, &7u32.to_le_bytes());
        d.write(EXIT_OFFSET, &[3]);
        d.write(EXIT_OFFSET, &0x1_02u32.to_le_bytes()); // low byte counts
        d.write(0x8, &[9]); // unknown register
        d.write(MARKER_OFFSET, &[1, 2, 3]); // odd size ignored
        let mut r = [0xffu8; 4];
        d.read(EXIT_OFFSET, &mut r);
        assert_eq!(r, [0; 4]);
        assert_eq!(*log.0.lock().unwrap(), vec!["m1", "m7", "x3", "x2"]);
    }
}
