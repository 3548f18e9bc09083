//! The KVM VM: in-kernel irqchip (PIC + IOAPIC) and PIT, and the event fds
//! that connect devices to it (irqfd for interrupts, ioeventfd for queue
//! notifications).

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::{KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR};
use crate::vstate::kvm::KvmContext;

/// Errors of [`self`].
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// KVM_CREATE_VM failed.
    #[error("cannot create a KVM VM: {0}")]
    Create(kvm_ioctls::Error),
    /// A VM set-up ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Setup {
        /// Which step.
        what: &'static str,
        /// Why.
        source: kvm_ioctls::Error,
    },
    /// Registering an interrupt event fd failed.
    #[error("cannot connect IRQ {gsi} to its event fd: {source}")]
    Irqfd {
        /// The GSI.
        gsi: u32,
        /// Why.
        source: kvm_ioctls::Error,
    },
    /// Registering a notification event fd failed.
    #[error("cannot register ioeventfd at {addr:#x}: {source}")]
    Ioeventfd {
        /// The MMIO address.
        addr: u64,
        /// Why.
        source: kvm_ioctls::Error,
    },
}

/// A VM with its in-kernel interrupt controllers and timer.
pub struct Vm {
    fd: VmFd,
}

impl Vm {
    /// Create the VM, its TSS and identity-map pages (needed by Intel VMX),
    /// the in-kernel PIC/IOAPIC/LAPICs and a PIT with a dummy speaker port.
    pub fn new(kvm: &KvmContext) -> Result<Self, VmError> {
        let vm = Self::create(kvm)?;
        vm.setup_platform()?;
        Ok(vm)
    }

    /// Create the bare VM; [`Vm::setup_platform`] adds the rest. Memory can
    /// be registered in between, so that KVM's waits for both overlap.
    pub fn create(kvm: &KvmContext) -> Result<Self, VmError> {
        let fd = kvm.kvm().create_vm().map_err(VmError::Create)?;
        Ok(Self { fd })
    }

    /// The TSS and identity-map pages, the in-kernel PIC/IOAPIC/LAPICs and a
    /// PIT with a dummy speaker port. Creating the irqchip waits for an SRCU
    /// grace period and the PIT for a kernel thread to start.
    pub fn setup_platform(&self) -> Result<(), VmError> {
        let fd = &self.fd;
        let setup = |what| move |source| VmError::Setup { what, source };
        fd.set_tss_address(KVM_TSS_ADDR)
            .map_err(setup("KVM_SET_TSS_ADDR"))?;
        // Only VMX needs it; other implementations may refuse, which is harmless.
        if let Err(e) = fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDR) {
            log::debug!("KVM_SET_IDENTITY_MAP_ADDR: {e} (ignored)");
        }
        fd.create_irq_chip().map_err(setup("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(setup("KVM_CREATE_PIT2"))?;
        Ok(())
    }

    /// The VM file descriptor.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Raise GSI `gsi` whenever `evt` is written.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|source| VmError::Irqfd { gsi, source })
    }

    /// Complete 32-bit MMIO writes of `datamatch` to `addr` in the kernel by
    /// signalling `evt`, without an exit to vmm.
    pub fn register_ioeventfd(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), VmError> {
        self.fd
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), datamatch)
            .map_err(|source| VmError::Ioeventfd { addr, source })
    }
}
