//! An i8042 keyboard controller with a PS/2 keyboard behind it: enough of
//! both for Linux's i8042 and atkbd drivers to probe quickly and find a
//! keyboard, for the guest to reset the machine (command 0xFE, or the output
//! port's reset line), and for the host to send Ctrl-Alt-Del.
//!
//! There is no mouse (AUX) port; the AUX tests answer so that Linux gives up
//! on it at once instead of timing out.

use std::collections::VecDeque;

use crate::bus::BusDevice;

/// Something to call when the guest resets the machine or when keyboard data
/// is ready (the keyboard IRQ).
pub trait I8042Events: Send {
    /// The guest asked for a CPU reset.
    fn reset(&self);
    /// Raise the keyboard interrupt (IRQ 1).
    fn kbd_interrupt(&self);
}

// Port offsets from the base (0x60).
const DATA: u64 = 0;
const COMMAND: u64 = 4;

// Status register bits.
const SR_OBF: u8 = 0x01;
const SR_SYS: u8 = 0x04;
const SR_CMD: u8 = 0x08;
const SR_KEYLOCK: u8 = 0x10; // keyboard not inhibited
                             // Controller configuration ("command byte") bits.
const CTR_KBDINT: u8 = 0x01;
const CTR_SYS: u8 = 0x04;
const CTR_KBDDIS: u8 = 0x10;
const CTR_AUXDIS: u8 = 0x20;
const CTR_XLATE: u8 = 0x40;

// Keyboard replies.
const KBD_ACK: u8 = 0xfa;
const KBD_BAT_OK: u8 = 0xaa;

/// Most bytes queued for the guest; more are dropped (a real controller
/// holds one, the keyboard a few more).
const OUT_CAPACITY: usize = 32;

/// What a data-port write means after a controller command that takes an argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    None,
    WriteCtr,
    WriteOutputPort,
    WriteKbdBuffer,
    WriteAuxBuffer,
    WriteAux,
    /// A keyboard command waiting for its argument.
    KbdArg(u8),
}

/// The i8042 controller and its keyboard.
pub struct I8042<E: I8042Events> {
    events: E,
    ctr: u8,
    status_cmd: bool,
    pending: Pending,
    /// Bytes for the guest with whether they come from the keyboard (and so
    /// raise IRQ 1).
    out: VecDeque<(u8, bool)>,
    scanning: bool,
}

impl<E: I8042Events> I8042<E> {
    /// A controller in its power-on state, keyboard enabled, no translation.
    pub fn new(events: E) -> Self {
        Self {
            events,
            ctr: CTR_KBDINT | CTR_SYS | CTR_AUXDIS,
            status_cmd: false,
            pending: Pending::None,
            out: VecDeque::new(),
            scanning: true,
        }
    }

    fn status(&self) -> u8 {
        let mut s = SR_SYS | SR_KEYLOCK;
        if !self.out.is_empty() {
            s |= SR_OBF;
        }
        if self.status_cmd {
            s |= SR_CMD;
        }
        s
    }

    fn push(&mut self, byte: u8, from_kbd: bool) {
        if self.out.len() >= OUT_CAPACITY {
            log::debug!("i8042: output buffer full, dropping {byte:#x}");
            return;
        }
        let was_empty = self.out.is_empty();
        self.out.push_back((byte, from_kbd));
        if was_empty {
            self.maybe_interrupt();
        }
    }

    /// Raise IRQ 1 when the byte at the head comes from the keyboard and the
    /// guest enabled keyboard interrupts.
    fn maybe_interrupt(&self) {
        if let Some((_, true)) = self.out.front() {
            if self.ctr & CTR_KBDINT != 0 && self.ctr & CTR_KBDDIS == 0 {
                self.events.kbd_interrupt();
            }
        }
    }

    fn read_data(&mut self) -> u8 {
        match self.out.pop_front() {
            Some((b, _)) => {
                self.maybe_interrupt();
                b
            }
            None => 0,
        }
    }

    fn command(&mut self, cmd: u8) {
        self.status_cmd = true;
        self.pending = Pending::None;
        match cmd {
            0x20 => self.push(self.ctr, false),
            0x60 => self.pending = Pending::WriteCtr,
            0xa7 => self.ctr |= CTR_AUXDIS,
            0xa8 => self.ctr &= !CTR_AUXDIS,
            // AUX interface test: "clock line stuck", i.e. no mouse port.
            0xa9 => self.push(0x01, false),
            0xaa => {
                // Controller self-test passed; the CTR returns to its defaults.
                self.push(0x55, false);
            }
            0xab => self.push(0x00, false), // keyboard interface test passed
            0xad => self.ctr |= CTR_KBDDIS,
            0xae => {
                self.ctr &= !CTR_KBDDIS;
                self.maybe_interrupt();
            }
            0xc0 => self.push(0x00, false), // input port
            0xd0 => self.push(0x01, false), // output port: reset line high
            0xd1 => self.pending = Pending::WriteOutputPort,
            0xd2 => self.pending = Pending::WriteKbdBuffer,
            0xd3 => self.pending = Pending::WriteAuxBuffer,
            0xd4 => self.pending = Pending::WriteAux,
            // Pulse output lines; bit 0 clear pulses the CPU reset line.
            0xf0..=0xff => {
                if cmd & 1 == 0 {
                    self.events.reset();
                }
            }
            other => log::debug!("i8042: unknown controller command {other:#x}"),
        }
    }

    fn write_data(&mut self, byte: u8) {
        self.status_cmd = false;
        match std::mem::replace(&mut self.pending, Pending::None) {
            Pending::WriteCtr => {
                self.ctr = byte;
                self.maybe_interrupt();
            }
            Pending::WriteOutputPort => {
                if byte & 1 == 0 {
                    self.events.reset();
                }
            }
            Pending::WriteKbdBuffer => self.push(byte, true),
            // No mouse: the loopback byte comes back as keyboard-less
            // controller data, which tells Linux there is no AUX port.
            Pending::WriteAuxBuffer => self.push(byte, false),
            Pending::WriteAux => {}
            Pending::KbdArg(cmd) => self.keyboard_arg(cmd, byte),
            Pending::None => self.keyboard_command(byte),
        }
    }

    fn keyboard_command(&mut self, cmd: u8) {
        match cmd {
            0xff => {
                self.scanning = true;
                self.push(KBD_ACK, true);
                self.push(KBD_BAT_OK, true);
            }
            0xf2 => {
                self.push(KBD_ACK, true);
                self.push(0xab, true);
                let id = if self.ctr & CTR_XLATE != 0 {
                    0x41
                } else {
                    0x83
                };
                self.push(id, true);
            }
            0xf4 => {
                self.scanning = true;
                self.push(KBD_ACK, true);
            }
            0xf5 => {
                self.scanning = false;
                self.push(KBD_ACK, true);
            }
            0xee => self.push(0xee, true),
            0xed | 0xf3 | 0xf0 => {
                self.pending = Pending::KbdArg(cmd);
                self.push(KBD_ACK, true);
            }
            // Set defaults, resend, and anything else: acknowledge.
            _ => self.push(KBD_ACK, true),
        }
    }

    fn keyboard_arg(&mut self, cmd: u8, arg: u8) {
        self.push(KBD_ACK, true);
        if cmd == 0xf0 && arg == 0 {
            // Report the current scancode set: 2.
            self.push(0x02, true);
        }
    }

    /// Send Ctrl-Alt-Del (press, then release) as the keyboard would.
    pub fn send_ctrl_alt_del(&mut self) {
        // Scancode set 2: make codes, then break codes (F0 prefix).
        const SET2: [&[u8]; 6] = [
            &[0x14],
            &[0x11],
            &[0xe0, 0x71],
            &[0xe0, 0xf0, 0x71],
            &[0xf0, 0x11],
            &[0xf0, 0x14],
        ];
        // The same keys in set 1, as the controller sends them with translation on.
        const SET1: [&[u8]; 6] = [
            &[0x1d],
            &[0x38],
            &[0xe0, 0x53],
            &[0xe0, 0xd3],
            &[0xb8],
            &[0x9d],
        ];
        let codes = if self.ctr & CTR_XLATE != 0 {
            SET1
        } else {
            SET2
        };
        for code in codes {
            for b in code.iter() {
                self.push(*b, true);
            }
        }
    }

    /// The events sink (for tests and the VMM).
    pub fn events(&self) -> &E {
        &self.events
    }
}

impl<E: I8042Events> BusDevice for I8042<E> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 {
            return;
        }
        data[0] = match offset {
            DATA => self.read_data(),
            COMMAND => self.status(),
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 {
            return;
        }
        match offset {
            DATA => self.write_data(data[0]),
            COMMAND => self.command(data[0]),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::cast_possible_truncation)]
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[derive(Default, Clone)]
    struct Counts(Arc<(AtomicUsize, AtomicUsize)>);
    impl I8042Events for Counts {
        fn reset(&self) {
            self.0 .0.fetch_add(1, Ordering::SeqCst);
        }
        fn kbd_interrupt(&self) {
            self.0 .1.fetch_add(1, Ordering::SeqCst);
        }
    }
    impl Counts {
        fn resets(&self) -> usize {
            self.0 .0.load(Ordering::SeqCst)
        }
        fn irqs(&self) -> usize {
            self.0 .1.load(Ordering::SeqCst)
        }
    }

    fn rd(d: &mut I8042<Counts>, off: u64) -> u8 {
        let mut b = [0u8];
        d.read(off, &mut b);
        b[0]
    }
    fn wr(d: &mut I8042<Counts>, off: u64, v: u8) {
        d.write(off, &[v]);
    }
    fn drain(d: &mut I8042<Counts>) -> Vec<u8> {
        let mut v = vec![];
        while rd(d, COMMAND) & SR_OBF != 0 {
            v.push(rd(d, DATA));
        }
        v
    }

    #[test]
    fn linux_probe_sequence() {
        let c = Counts::default();
        let mut d = I8042::new(c.clone());
        // Flush: nothing pending.
        assert_eq!(rd(&mut d, COMMAND) & SR_OBF, 0);
        assert_ne!(rd(&mut d, COMMAND), 0xff, "controller present");
        // Self-test.
        wr(&mut d, COMMAND, 0xaa);
        assert_eq!(drain(&mut d), vec![0x55]);
        // Read CTR, write it back with the keyboard disabled.
        wr(&mut d, COMMAND, 0x20);
        let ctr = drain(&mut d)[0];
        wr(&mut d, COMMAND, 0x60);
        wr(&mut d, DATA, ctr | CTR_KBDDIS);
        wr(&mut d, COMMAND, 0x20);
        assert_eq!(drain(&mut d), vec![ctr | CTR_KBDDIS]);
        // AUX loop: the byte comes back, AUX test fails: no mouse.
        wr(&mut d, COMMAND, 0xd3);
        wr(&mut d, DATA, 0x5a);
        assert_eq!(rd(&mut d, COMMAND) & 0x20, 0, "not AUX data");
        assert_eq!(drain(&mut d), vec![0x5a]);
        wr(&mut d, COMMAND, 0xa9);
        assert_eq!(drain(&mut d), vec![0x01]);
        assert_eq!(c.irqs(), 0, "controller replies raise no keyboard IRQ");
        // Enable keyboard with interrupts.
        wr(&mut d, COMMAND, 0x60);
        wr(&mut d, DATA, CTR_KBDINT | CTR_SYS | CTR_AUXDIS);
        // atkbd: GETID, SETLEDS, ENABLE.
        wr(&mut d, DATA, 0xf2);
        assert_eq!(drain(&mut d), vec![KBD_ACK, 0xab, 0x83]);
        wr(&mut d, DATA, 0xed);
        wr(&mut d, DATA, 0x00);
        assert_eq!(drain(&mut d), vec![KBD_ACK, KBD_ACK]);
        wr(&mut d, DATA, 0xf4);
        assert_eq!(drain(&mut d), vec![KBD_ACK]);
        assert!(c.irqs() >= 3, "keyboard replies raise IRQ 1");
        assert_eq!(c.resets(), 0);
    }

    #[test]
    fn reset_by_command_and_by_output_port() {
        let c = Counts::default();
        let mut d = I8042::new(c.clone());
        wr(&mut d, COMMAND, 0xfe);
        assert_eq!(c.resets(), 1);
        wr(&mut d, COMMAND, 0xd1);
        wr(&mut d, DATA, 0xfe);
        assert_eq!(c.resets(), 2);
        wr(&mut d, COMMAND, 0xd1);
        wr(&mut d, DATA, 0x01); // reset line stays high
        wr(&mut d, COMMAND, 0xff); // pulse nothing
        assert_eq!(c.resets(), 2);
    }

    #[test]
    fn ctrl_alt_del_in_both_scancode_sets() {
        let c = Counts::default();
        let mut d = I8042::new(c.clone());
        d.send_ctrl_alt_del();
        assert_eq!(&drain(&mut d)[..4], &[0x14, 0x11, 0xe0, 0x71]);
        assert!(c.irqs() > 0);
        wr(&mut d, COMMAND, 0x60);
        wr(&mut d, DATA, CTR_KBDINT | CTR_XLATE);
        d.send_ctrl_alt_del();
        assert_eq!(&drain(&mut d)[..4], &[0x1d, 0x38, 0xe0, 0x53]);
    }

    #[test]
    fn hostile_access_patterns_are_harmless() {
        let c = Counts::default();
        let mut d = I8042::new(c.clone());
        // Wide accesses are ignored.
        d.write(COMMAND, &[0xfe, 0xfe]);
        let mut b = [0u8; 4];
        d.read(DATA, &mut b);
        assert_eq!(c.resets(), 0);
        // The output queue is bounded.
        for _ in 0..1000 {
            wr(&mut d, DATA, 0xf2);
        }
        assert!(drain(&mut d).len() <= OUT_CAPACITY);
        // Every command byte is accepted without panicking.
        for cmd in 0..=255u8 {
            wr(&mut d, COMMAND, cmd);
            wr(&mut d, DATA, cmd);
            drain(&mut d);
        }
    }
}
