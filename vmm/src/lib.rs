//! vmm: a small, fast KVM micro-VM monitor.
//!
//! Data flow: CLI -> validated [`config::VmConfig`] -> [`builder::run`] runs the
//! boot steps in order (KVM, guest memory, VM, devices, kernel and boot
//! information, vCPUs), then the [`event_loop`] until the VM stops ->
//! [`exit::ExitReason`] -> exit status.

pub mod arch;
pub mod builder;
pub mod cli;
pub mod config;
pub mod device_manager;
pub mod event_loop;
pub mod exit;
pub mod image;
pub mod logger;
pub mod tenant;
pub mod terminal;
pub mod vstate;
