//! Puts devices on the buses, gives them IRQs and MMIO windows, connects
//! their event fds to KVM and collects the `virtio_mmio.device=` entries the
//! guest kernel needs to find them.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use devices::legacy::{
    AcpiPm, ConsoleOutput, DebugDevice, DebugEvents, I8042Events, PowerEvents, PvPanic,
    SerialDevice, I8042,
};
use devices::virtio::mmio::{MmioTransport, MMIO_NOTIFY_OFFSET};
use devices::virtio::{IrqTrigger, VirtioDevice};
use devices::{Bus, BusError};
use event_manager::MutEventSubscriber;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::x86_64::acpi::VirtioMmioInfo;
use crate::arch::x86_64::layout::{
    ACPI_PM_PORT, DEBUG_DEVICE_ADDR, DEBUG_DEVICE_SIZE, I8042_PORT, IRQ_FIRST_VIRTIO,
    IRQ_I8042_KBD, IRQ_LAST, IRQ_SERIAL, PVPANIC_PORT, SERIAL_PORT, VIRTIO_MMIO_END,
    VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START,
};
use crate::exit::{ExitReason, ExitSignal};
use crate::vstate::vm::{Vm, VmError};

/// Errors of [`self`].
#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    /// Creating an event fd failed.
    #[error("cannot create an event fd: {0}")]
    EventFd(std::io::Error),
    /// Connecting a device to KVM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Two devices claimed the same addresses.
    #[error("device placement: {0}")]
    Bus(#[from] BusError),
    /// No IRQ or MMIO window left for another virtio device.
    #[error("no {0} left for another virtio device")]
    Exhausted(&'static str),
    /// The virtio transport refused the device.
    #[error("virtio-mmio transport: {0}")]
    Transport(String),
}

/// A virtio-mmio device as shared by the MMIO bus and the event loop.
pub type SharedTransport = Arc<Mutex<MmioTransport>>;

/// Boot-time markers the guest wrote through the debug device.
#[derive(Debug, Default)]
pub struct BootMarkers {
    /// (code, time since vmm started) of each marker, in order.
    pub seen: Mutex<Vec<(u64, std::time::Duration)>>,
}

struct DebugSink {
    start: Instant,
    markers: Arc<BootMarkers>,
    exit: Arc<ExitSignal>,
}

impl DebugEvents for DebugSink {
    fn marker(&self, code: u64) {
        let t = self.start.elapsed();
        log::info!(
            "guest boot marker {code} at {:.3} ms",
            t.as_secs_f64() * 1000.0
        );
        let mut seen = self.markers.seen.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: a guest writing markers in a loop cannot grow our memory.
        if seen.len() < 64 {
            seen.push((code, t));
        }
    }

    fn exit(&self, status: u8) {
        self.exit.request(ExitReason::GuestStatus(status));
    }
}

/// i8042 events: a reset stops the VM, keyboard data raises IRQ 1.
pub struct KbdSink {
    exit: Arc<ExitSignal>,
    irq: EventFd,
}

impl I8042Events for KbdSink {
    fn reset(&self) {
        self.exit.request(ExitReason::Reboot);
    }
    fn kbd_interrupt(&self) {
        if let Err(e) = self.irq.write(1) {
            log::warn!("i8042: cannot raise IRQ 1: {e}");
        }
    }
}

/// ACPI power registers and pvpanic: each ends the VM with its reason.
#[derive(Clone)]
struct PowerSink(Arc<ExitSignal>);

impl PowerEvents for PowerSink {
    fn poweroff(&self) {
        self.0.request(ExitReason::Poweroff);
    }
    fn reboot(&self) {
        self.0.request(ExitReason::Reboot);
    }
    fn panicked(&self) {
        self.0.request(ExitReason::GuestPanic);
    }
}

/// The devices of one VM and where they are.
pub struct DeviceManager {
    io_bus: Bus,
    mmio_bus: Bus,
    next_irq: u32,
    next_mmio: u64,
    virtio_info: Vec<VirtioMmioInfo>,
    /// The serial console.
    pub serial: Arc<Mutex<SerialDevice>>,
    /// Signalled when the serial receive FIFO has room again.
    pub serial_rx_room: EventFd,
    /// Bytes the guest wrote to its console.
    pub console_bytes: Arc<AtomicU64>,
    /// The keyboard controller.
    pub i8042: Arc<Mutex<I8042<KbdSink>>>,
    /// Boot markers seen so far.
    pub markers: Arc<BootMarkers>,
    /// virtio devices, in attach order.
    pub virtio: Vec<SharedTransport>,
}

fn evt() -> Result<EventFd, DeviceManagerError> {
    EventFd::new(EFD_NONBLOCK).map_err(DeviceManagerError::EventFd)
}

impl DeviceManager {
    /// Create the platform devices (serial on COM1, i8042, ACPI power
    /// registers, pvpanic, the debug device) and connect their interrupts.
    pub fn new(
        vm: &Vm,
        console: ConsoleOutput,
        exit: Arc<ExitSignal>,
        start: Instant,
    ) -> Result<Self, DeviceManagerError> {
        let mut io_bus = Bus::new();
        let mut mmio_bus = Bus::new();

        let serial_irq = evt()?;
        vm.register_irqfd(&serial_irq, IRQ_SERIAL)?;
        let rx_room = evt()?;
        let serial = SerialDevice::new(
            serial_irq,
            console,
            rx_room.try_clone().map_err(DeviceManagerError::EventFd)?,
        )
        .map_err(DeviceManagerError::EventFd)?;
        let console_bytes = serial.out_bytes();
        let serial = Arc::new(Mutex::new(serial));
        io_bus.insert(serial.clone(), SERIAL_PORT, 8)?;

        let kbd_irq = evt()?;
        vm.register_irqfd(&kbd_irq, IRQ_I8042_KBD)?;
        let i8042 = Arc::new(Mutex::new(I8042::new(KbdSink {
            exit: exit.clone(),
            irq: kbd_irq,
        })));
        // Data port 0x60, command/status port 0x64.
        io_bus.insert(i8042.clone(), I8042_PORT, 5)?;

        let power = PowerSink(exit.clone());
        io_bus.insert(
            Arc::new(Mutex::new(AcpiPm::new(power.clone()))),
            ACPI_PM_PORT,
            3,
        )?;
        io_bus.insert(Arc::new(Mutex::new(PvPanic::new(power))), PVPANIC_PORT, 1)?;

        let markers = Arc::new(BootMarkers::default());
        let debug = DebugDevice::new(DebugSink {
            start,
            markers: markers.clone(),
            exit,
        });
        mmio_bus.insert(
            Arc::new(Mutex::new(debug)),
            DEBUG_DEVICE_ADDR,
            DEBUG_DEVICE_SIZE,
        )?;

        Ok(Self {
            io_bus,
            mmio_bus,
            next_irq: IRQ_FIRST_VIRTIO,
            next_mmio: VIRTIO_MMIO_START,
            virtio_info: Vec::new(),
            serial,
            serial_rx_room: rx_room,
            console_bytes,
            i8042,
            markers,
            virtio: Vec::new(),
        })
    }

    fn allocate(&mut self) -> Result<(u32, u32), DeviceManagerError> {
        // IRQ 8 belongs to the RTC on a PC; leave it alone.
        if self.next_irq == 8 {
            self.next_irq += 1;
        }
        if self.next_irq > IRQ_LAST {
            return Err(DeviceManagerError::Exhausted("IRQ"));
        }
        if self.next_mmio + VIRTIO_MMIO_SIZE > VIRTIO_MMIO_END {
            return Err(DeviceManagerError::Exhausted("MMIO window"));
        }
        let base = u32::try_from(self.next_mmio)
            .map_err(|_| DeviceManagerError::Exhausted("MMIO window"))?;
        let r = (base, self.next_irq);
        self.next_mmio += VIRTIO_MMIO_SIZE;
        self.next_irq += 1;
        Ok(r)
    }

    /// Put a virtio device on the MMIO bus with its own IRQ and window,
    /// wire its notifications (ioeventfd) and interrupt (irqfd) to KVM.
    pub fn attach_virtio(
        &mut self,
        vm: &Vm,
        mem: &GuestMemoryMmap,
        device: Box<dyn VirtioDevice>,
    ) -> Result<SharedTransport, DeviceManagerError> {
        let (base32, irq) = self.allocate()?;
        let base = u64::from(base32);
        let irq_evt = evt()?;
        vm.register_irqfd(&irq_evt, irq)?;
        let transport = MmioTransport::new(device, mem.clone(), Arc::new(IrqTrigger::new(irq_evt)))
            .map_err(|e| DeviceManagerError::Transport(e.to_string()))?;
        for (i, qevt) in (0u32..).zip(transport.queue_evts()) {
            vm.register_ioeventfd(qevt, base + MMIO_NOTIFY_OFFSET, i)?;
        }
        let shared = Arc::new(Mutex::new(transport));
        self.mmio_bus
            .insert(shared.clone(), base, VIRTIO_MMIO_SIZE)?;
        self.virtio_info.push(VirtioMmioInfo { base: base32, irq });
        self.virtio.push(shared.clone());
        Ok(shared)
    }

    /// Where the virtio devices are, for the ACPI tables.
    pub fn virtio_info(&self) -> &[VirtioMmioInfo] {
        &self.virtio_info
    }

    /// The `virtio_mmio.device=` entries for the kernel command line, for
    /// guests booted without ACPI.
    pub fn cmdline_entries(&self) -> Vec<String> {
        self.virtio_info
            .iter()
            .map(|d| {
                format!(
                    "virtio_mmio.device={}K@{:#x}:{}",
                    VIRTIO_MMIO_SIZE >> 10,
                    d.base,
                    d.irq
                )
            })
            .collect()
    }

    /// The port I/O bus, for the vCPUs.
    pub fn io_bus(&self) -> Arc<Bus> {
        Arc::new(self.io_bus.clone())
    }

    /// The MMIO bus, for the vCPUs.
    pub fn mmio_bus(&self) -> Arc<Bus> {
        Arc::new(self.mmio_bus.clone())
    }

    /// Every virtio device as an event-loop subscriber.
    pub fn subscribers(
        &self,
    ) -> impl Iterator<Item = Arc<Mutex<dyn MutEventSubscriber + Send>>> + '_ {
        self.virtio
            .iter()
            .map(|t| t.clone() as Arc<Mutex<dyn MutEventSubscriber + Send>>)
    }
}
