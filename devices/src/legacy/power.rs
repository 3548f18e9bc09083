//! Power management as a guest sees it on a hardware-reduced ACPI platform,
//! and panic notification:
//!
//! - [`AcpiPm`]: three one-byte I/O registers named in the FADT: sleep control
//!   (writing SLP_TYP=5 with SLP_EN powers off), sleep status, reset (writing
//!   the reset value reboots);
//! - [`PvPanic`]: the pvpanic device (ACPI `QEMU0001`): reading it tells the
//!   guest which events it may report, writing bit 0 reports a kernel panic.

use crate::bus::BusDevice;

/// What the VMM does when the guest asks.
pub trait PowerEvents: Send {
    /// The guest entered S5 (soft off).
    fn poweroff(&self);
    /// The guest asked for a reset.
    fn reboot(&self);
    /// The guest kernel panicked.
    fn panicked(&self);
}

/// Sleep control register offset.
pub const SLEEP_CONTROL: u64 = 0;
/// Sleep status register offset.
pub const SLEEP_STATUS: u64 = 1;
/// Reset register offset.
pub const RESET: u64 = 2;
/// SLP_TYP for S5, as in the DSDT's `_S5_` package.
pub const SLP_TYP_S5: u8 = 5;
const SLP_EN: u8 = 1 << 5;
/// Value of the FADT's RESET_VALUE.
pub const RESET_VALUE: u8 = 1;
/// Wake status bit of the sleep status register.
const WAK_STS: u8 = 1 << 7;

/// The ACPI fixed hardware registers.
pub struct AcpiPm<E: PowerEvents> {
    events: E,
}

impl<E: PowerEvents> AcpiPm<E> {
    /// Registers reporting to `events`.
    pub fn new(events: E) -> Self {
        Self { events }
    }
}

impl<E: PowerEvents> BusDevice for AcpiPm<E> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 {
            // The guest polls WAK_STS after a sleep request; S5 never wakes,
            // but answering "awake" keeps a confused guest from spinning.
            data[0] = if offset == SLEEP_STATUS { WAK_STS } else { 0 };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [v] = data else { return };
        match offset {
            SLEEP_CONTROL if v & SLP_EN != 0 && (v >> 2) & 0x7 == SLP_TYP_S5 => {
                self.events.poweroff()
            }
            RESET if *v == RESET_VALUE => self.events.reboot(),
            _ => {}
        }
    }
}

/// pvpanic event bits.
const PVPANIC_PANICKED: u8 = 1 << 0;
const PVPANIC_CRASH_LOADED: u8 = 1 << 1;

/// The pvpanic device.
pub struct PvPanic<E: PowerEvents> {
    events: E,
}

impl<E: PowerEvents> PvPanic<E> {
    /// A pvpanic device reporting to `events`.
    pub fn new(events: E) -> Self {
        Self { events }
    }
}

impl<E: PowerEvents> BusDevice for PvPanic<E> {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        if data.len() == 1 {
            data[0] = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let [v] = data {
            if v & PVPANIC_PANICKED != 0 {
                self.events.panicked();
            } else if v & PVPANIC_CRASH_LOADED != 0 {
                log::warn!("guest kernel crashed into a crash kernel");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::cast_possible_truncation)]
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Default, Clone)]
    struct Log(Arc<Mutex<Vec<&'static str>>>);
    impl PowerEvents for Log {
        fn poweroff(&self) {
            self.0.lock().unwrap().push("off");
        }
        fn reboot(&self) {
            self.0.lock().unwrap().push("reboot");
        }
        fn panicked(&self) {
            self.0.lock().unwrap().push("panic");
        }
    }

    #[test]
    fn s5_and_reset() {
        let log = Log::default();
        let mut pm = AcpiPm::new(log.clone());
        pm.write(SLEEP_CONTROL, &[(SLP_TYP_S5 << 2) | SLP_EN]);
        pm.write(SLEEP_CONTROL, &[(3 << 2) | SLP_EN]); // S3: not supported, ignored
        pm.write(SLEEP_CONTROL, &[SLP_TYP_S5 << 2]); // no SLP_EN
        pm.write(RESET, &[RESET_VALUE]);
        pm.write(RESET, &[0x42]);
        pm.write(RESET, &[RESET_VALUE, 0]); // wide access ignored
        let mut d = [0u8];
        pm.read(SLEEP_STATUS, &mut d);
        assert_eq!(d[0], WAK_STS);
        assert_eq!(*log.0.lock().unwrap(), vec!["off", "reboot"]);
    }

    #[test]
    fn pvpanic_reports_capabilities_and_panics() {
        let log = Log::default();
        let mut p = PvPanic::new(log.clone());
        let mut d = [0u8];
        p.read(0, &mut d);
        assert_eq!(d[0], 3);
        p.write(0, &[PVPANIC_CRASH_LOADED]);
        assert!(log.0.lock().unwrap().is_empty());
        p.write(0, &[PVPANIC_PANICKED]);
        assert_eq!(*log.0.lock().unwrap(), vec!["panic"]);
    }
}
