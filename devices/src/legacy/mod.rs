//! Legacy PC devices and vmm's own debug device.

pub mod debug;
pub mod i8042;
pub mod power;
pub mod serial;

pub use debug::{DebugDevice, DebugEvents};
pub use i8042::{I8042Events, I8042};
pub use power::{AcpiPm, PowerEvents, PvPanic};
pub use serial::{ConsoleOutput, SerialDevice};
