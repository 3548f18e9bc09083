//! Everything that holds a KVM handle: `/dev/kvm`, guest memory slots, the
//! VM and its vCPUs.

pub mod kvm;
pub mod memory;
pub mod vcpu;
pub mod vm;
