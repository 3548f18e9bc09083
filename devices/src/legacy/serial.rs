//! The 8250/16550 UART on COM1 (`vm-superio`), with its output going to the
//! console (stdout, a file or nowhere) and input fed by the VMM.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Where the guest's console output goes.
pub enum ConsoleOutput {
    /// vmm's standard output, unbuffered so prompts show at once.
    Stdout(File),
    /// A file.
    File(File),
    /// Nowhere.
    Sink,
}

impl ConsoleOutput {
    /// vmm's standard output (a duplicate of fd 1, written without buffering).
    pub fn stdout() -> io::Result<Self> {
        Ok(ConsoleOutput::Stdout(File::from(
            io::stdout().as_fd().try_clone_to_owned()?,
        )))
    }
}

impl Write for ConsoleOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ConsoleOutput::Stdout(f) | ConsoleOutput::File(f) => f.write(buf),
            ConsoleOutput::Sink => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            ConsoleOutput::Stdout(f) | ConsoleOutput::File(f) => f.flush(),
            ConsoleOutput::Sink => Ok(()),
        }
    }
}

/// Raises the serial IRQ through an event fd (a KVM irqfd).
pub struct IrqEvt(pub EventFd);

impl Trigger for IrqEvt {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Counts output and tells the VMM when the receive FIFO has room again.
pub struct UartEvents {
    out_bytes: Arc<AtomicU64>,
    rx_room: EventFd,
}

impl SerialEvents for UartEvents {
    fn buffer_read(&self) {}
    fn out_byte(&self) {
        self.out_bytes.fetch_add(1, Ordering::Relaxed);
    }
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        // Best effort: the VMM also re-checks room whenever it has input.
        let _ = self.rx_room.write(1);
    }
}

/// The COM1 UART.
pub struct SerialDevice {
    uart: Serial<IrqEvt, UartEvents, ConsoleOutput>,
    out_bytes: Arc<AtomicU64>,
    /// Line control register, for the DLAB bit.
    lcr: u8,
    /// Whether the guest enabled the received-data interrupt: until its
    /// driver does, input would be eaten by the driver's start-up (it drains
    /// the FIFO), so none is taken.
    rx_enabled: bool,
    rx_room_evt: EventFd,
}

// 8250 register offsets and bits used here.
const IER: u8 = 1;
const LCR: u8 = 3;
const LCR_DLAB: u8 = 0x80;
const IER_RDA: u8 = 0x01;

impl SerialDevice {
    /// A UART raising `irq`, writing to `out`, signalling `rx_room` when the
    /// guest has drained its input FIFO.
    pub fn new(irq: EventFd, out: ConsoleOutput, rx_room: EventFd) -> io::Result<Self> {
        let out_bytes = Arc::new(AtomicU64::new(0));
        let rx_room_evt = rx_room.try_clone()?;
        let events = UartEvents {
            out_bytes: out_bytes.clone(),
            rx_room,
        };
        Ok(Self {
            uart: Serial::with_events(IrqEvt(irq), events, out),
            out_bytes,
            lcr: 0,
            rx_enabled: false,
            rx_room_evt,
        })
    }

    /// Queue input for the guest; returns how many bytes fit in the FIFO
    /// (none before the guest's driver enabled the receive interrupt).
    pub fn enqueue(&mut self, input: &[u8]) -> usize {
        if input.is_empty() || self.rx_room() == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(input) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("serial input: {e:?}");
                0
            }
        }
    }

    /// Whether the guest's driver has the receive interrupt enabled.
    pub fn rx_open(&self) -> bool {
        self.rx_enabled
    }

    /// Free room in the receive FIFO (0 until the guest takes input).
    pub fn rx_room(&self) -> usize {
        if self.rx_enabled {
            self.uart.fifo_capacity()
        } else {
            0
        }
    }

    /// A counter of bytes the guest has written, shared with the caller.
    pub fn out_bytes(&self) -> Arc<AtomicU64> {
        self.out_bytes.clone()
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (1, Ok(offset @ 0..=7)) = (data.len(), u8::try_from(offset)) {
            data[0] = self.uart.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (1, Ok(offset @ 0..=7)) = (data.len(), u8::try_from(offset)) {
            match offset {
                LCR => self.lcr = data[0],
                IER if self.lcr & LCR_DLAB == 0 => {
                    let enabled = data[0] & IER_RDA != 0;
                    if enabled && !self.rx_enabled {
                        // Tell the console that input may flow now.
                        let _ = self.rx_room_evt.write(1);
                    }
                    self.rx_enabled = enabled;
                }
                _ => {}
            }
            if let Err(e) = self.uart.write(offset, data[0]) {
                log::warn!("serial output: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::cast_possible_truncation)]
    use super::*;
    use std::io::{Read, Seek};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn evt() -> EventFd {
        EventFd::new(EFD_NONBLOCK).unwrap()
    }

    #[test]
    fn output_reaches_the_file_and_is_counted() {
        let path = std::env::temp_dir().join(format!("vmm-serial-{}", std::process::id()));
        let f = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut s =
            SerialDevice::new(evt(), ConsoleOutput::File(f.try_clone().unwrap()), evt()).unwrap();
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(s.out_bytes().load(Ordering::Relaxed), 3);
        let mut back = String::new();
        let mut f = f;
        f.rewind().unwrap();
        f.read_to_string(&mut back).unwrap();
        assert_eq!(back, "hi\n");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn input_fills_the_fifo_and_raises_the_irq() {
        let irq = evt();
        let rx = evt();
        let mut s = SerialDevice::new(
            irq.try_clone().unwrap(),
            ConsoleOutput::Sink,
            rx.try_clone().unwrap(),
        )
        .unwrap();
        // Before the driver enables the receive interrupt, input waits: the
        // driver's start-up would drain it.
        assert_eq!(s.rx_room(), 0);
        assert_eq!(s.enqueue(b"early"), 0);
        // Writing IER with DLAB set programs the divisor, not IER.
        s.write(3, &[0x80]);
        s.write(1, &[1]);
        assert_eq!(s.rx_room(), 0);
        s.write(3, &[0x03]);
        // Enable the received-data interrupt (IER bit 0): the console is told.
        s.write(1, &[1]);
        assert_eq!(rx.read().unwrap(), 1);
        let room = s.rx_room();
        let big = vec![b'x'; room + 10];
        assert_eq!(s.enqueue(&big), room);
        assert_eq!(s.enqueue(b"y"), 0, "full FIFO takes nothing");
        assert!(irq.read().unwrap() >= 1);
        let mut d = [0u8];
        s.read(0, &mut d);
        assert_eq!(d[0], b'x');
        // Wide accesses are ignored, not a panic.
        let mut wide = [0u8; 4];
        s.read(0, &mut wide);
        s.write(0, &[1, 2]);
    }
}
