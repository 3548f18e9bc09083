//! Device models for vmm.
//!
//! Nothing in this crate holds a KVM handle: devices see guest memory
//! (`vm-memory`), interrupt triggers backed by event fds, and host file
//! descriptors. That keeps them testable (and fuzzable) without `/dev/kvm`.
//! The `vmm` crate wires them to KVM: buses to vCPU exits, event fds to irqfd
//! and ioeventfd.

pub mod bus;
pub mod legacy;
pub mod tap;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
