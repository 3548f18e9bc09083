//! vCPUs: initial state, one thread each running `KVM_RUN`, exit handling
//! through the I/O and MMIO buses, and kicking a vCPU out of the guest.

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use devices::Bus;
use kvm_bindings::{kvm_msr_entry, CpuId, Msrs};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::arch::x86_64::{cpuid, regs};
use crate::exit::{ExitReason, ExitSignal};
use crate::vstate::vm::Vm;

/// Errors of [`self`].
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// KVM_CREATE_VCPU failed.
    #[error("cannot create vCPU {index}: {source}")]
    Create {
        /// Which vCPU.
        index: u32,
        /// Why.
        source: kvm_ioctls::Error,
    },
    /// Setting initial vCPU state failed.
    #[error("vCPU {index}: {what} failed: {source}")]
    Setup {
        /// Which vCPU.
        index: u32,
        /// Which step.
        what: &'static str,
        /// Why.
        source: kvm_ioctls::Error,
    },
    /// Building the MSR list failed.
    #[error("vCPU {0}: cannot build the MSR list")]
    Msrs(u32),
    /// KVM accepted fewer MSRs than given.
    #[error("vCPU {index}: KVM set {set} of {wanted} MSRs")]
    MsrsPartial {
        /// Which vCPU.
        index: u32,
        /// How many were set.
        set: usize,
        /// How many were given.
        wanted: usize,
    },
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
    /// The vCPU thread could not be started.
    #[error("cannot start the thread of vCPU {index}: {source}")]
    Spawn {
        /// Which vCPU.
        index: u32,
        /// Why.
        source: std::io::Error,
    },
}

/// How the boot vCPU starts.
#[derive(Clone, Copy, Debug)]
pub struct BootEntry {
    /// Entry point address.
    pub entry: u64,
    /// Protocol.
    pub mode: regs::EntryMode,
}

/// A configured vCPU that has not started running yet.
pub struct Vcpu {
    index: u32,
    fd: VcpuFd,
}

impl Vcpu {
    /// Create vCPU `index` of `count`, with CPUID from `base_cpuid` and the
    /// reset state of a PC; the boot vCPU (0) also gets the entry state.
    pub fn new(
        vm: &Vm,
        index: u32,
        count: u32,
        base_cpuid: &CpuId,
        boot: BootEntry,
    ) -> Result<Self, VcpuError> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(|source| VcpuError::Create { index, source })?;
        let setup = |what| {
            move |source| VcpuError::Setup {
                index,
                what,
                source,
            }
        };

        let mut cpuid = base_cpuid.clone();
        cpuid::filter_entries(cpuid.as_mut_slice(), index, count);
        fd.set_cpuid2(&cpuid).map_err(setup("KVM_SET_CPUID2"))?;

        let entries: Vec<kvm_msr_entry> = regs::boot_msrs()
            .into_iter()
            .map(|(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::Msrs(index))?;
        let set = fd.set_msrs(&msrs).map_err(setup("KVM_SET_MSRS"))?;
        if set != entries.len() {
            return Err(VcpuError::MsrsPartial {
                index,
                set,
                wanted: entries.len(),
            });
        }
        fd.set_fpu(&regs::boot_fpu())
            .map_err(setup("KVM_SET_FPU"))?;
        let lapic = fd.get_lapic().map_err(setup("KVM_GET_LAPIC"))?;
        fd.set_lapic(&regs::boot_lapic(lapic))
            .map_err(setup("KVM_SET_LAPIC"))?;

        if index == 0 {
            let sregs = fd.get_sregs().map_err(setup("KVM_GET_SREGS"))?;
            fd.set_sregs(&regs::boot_sregs(sregs, boot.mode))
                .map_err(setup("KVM_SET_SREGS"))?;
            fd.set_regs(&regs::boot_regs(boot.entry, boot.mode))
                .map_err(setup("KVM_SET_REGS"))?;
        }
        Ok(Self { index, fd })
    }

    /// Start the vCPU's thread.
    pub fn start(
        mut self,
        io: Arc<Bus>,
        mmio: Arc<Bus>,
        exit: Arc<ExitSignal>,
    ) -> Result<VcpuHandle, VcpuError> {
        install_kick_handler()?;
        let index = self.index;
        let kick = Arc::new(KickTarget::default());
        let stop = Arc::new(AtomicBool::new(false));
        *lock(&kick.immediate_exit) = Some(ImmediateExit(
            &mut self.fd.get_kvm_run().immediate_exit as *mut u8,
        ));
        let (k, s) = (kick.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || {
                // Dropped before `self`: clears the pointer into kvm_run
                // before the mapping goes away, even on a panic.
                let mut vcpu = self;
                let _guard = KickGuard(k);
                vcpu.run(&io, &mmio, &exit, &s);
            })
            .map_err(|source| VcpuError::Spawn { index, source })?;
        Ok(VcpuHandle {
            index,
            thread: Some(thread),
            kick,
            stop,
        })
    }

    fn run(&mut self, io: &Bus, mmio: &Bus, exit: &ExitSignal, stop: &AtomicBool) {
        let index = self.index;
        while !stop.load(Ordering::Acquire) {
            match self.fd.run() {
                Ok(e) => match handle_exit(e, index, io, mmio) {
                    Handled::Continue => {}
                    Handled::Stop(reason) => {
                        exit.request(self.with_rip(reason));
                        break;
                    }
                },
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    // Kicked: the loop condition decides whether to go on.
                    self.fd.set_kvm_immediate_exit(0);
                }
                Err(e) => {
                    exit.request(ExitReason::GuestError {
                        vcpu: index,
                        detail: format!("KVM_RUN failed: {e}"),
                    });
                    break;
                }
            }
        }
        log::debug!("vCPU {index} stopped");
    }
}

impl Vcpu {
    /// Add where the guest was to a failure that KVM reports without it.
    fn with_rip(&self, reason: ExitReason) -> ExitReason {
        match reason {
            ExitReason::GuestError { vcpu, detail } => {
                let at = match self.fd.get_regs() {
                    Ok(r) => format!(" at RIP {:#x}", r.rip),
                    Err(_) => String::new(),
                };
                ExitReason::GuestError {
                    vcpu,
                    detail: format!("{detail}{at}"),
                }
            }
            other => other,
        }
    }
}

/// What to do after a vCPU exit.
#[derive(Debug, PartialEq, Eq)]
pub enum Handled {
    /// Re-enter the guest.
    Continue,
    /// Stop the VM.
    Stop(ExitReason),
}

/// Handle one vCPU exit: port and MMIO accesses go to their bus (unclaimed
/// reads see all ones, unclaimed writes are dropped); everything that means
/// the guest cannot go on stops the VM with a reason.
pub fn handle_exit(exit: VcpuExit, vcpu: u32, io: &Bus, mmio: &Bus) -> Handled {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !io.read(u64::from(port), data) {
                data.fill(0xff);
            }
            Handled::Continue
        }
        VcpuExit::IoOut(port, data) => {
            if !io.write(u64::from(port), data) {
                log::trace!("unclaimed port write {port:#x} {data:x?}");
            }
            Handled::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            if !mmio.read(addr, data) {
                log::debug!("unclaimed MMIO read at {addr:#x}");
                data.fill(0xff);
            }
            Handled::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !mmio.write(addr, data) {
                log::debug!("unclaimed MMIO write at {addr:#x}");
            }
            Handled::Continue
        }
        // Only seen without an in-kernel LAPIC, or while kicked.
        VcpuExit::Hlt | VcpuExit::Intr | VcpuExit::IrqWindowOpen => Handled::Continue,
        VcpuExit::Shutdown => Handled::Stop(ExitReason::TripleFault { vcpu }),
        VcpuExit::SystemEvent(kind, _) => match kind {
            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => Handled::Stop(ExitReason::Poweroff),
            kvm_bindings::KVM_SYSTEM_EVENT_RESET => Handled::Stop(ExitReason::Reboot),
            kvm_bindings::KVM_SYSTEM_EVENT_CRASH => Handled::Stop(ExitReason::GuestPanic),
            other => Handled::Stop(ExitReason::GuestError {
                vcpu,
                detail: format!("unknown system event {other}"),
            }),
        },
        VcpuExit::FailEntry(reason, cpu) => Handled::Stop(ExitReason::GuestError {
            vcpu,
            detail: format!("VM entry failed (hardware reason {reason:#x}, host CPU {cpu})"),
        }),
        VcpuExit::InternalError => Handled::Stop(ExitReason::GuestError {
            vcpu,
            detail: "KVM internal error (an instruction KVM could not emulate)".into(),
        }),
        other => Handled::Stop(ExitReason::GuestError {
            vcpu,
            detail: format!("unexpected exit {other:?}"),
        }),
    }
}

/// A pointer to `kvm_run.immediate_exit` of a running vCPU.
#[derive(Debug)]
struct ImmediateExit(*mut u8);
// SAFETY: the pointer is only dereferenced under `KickTarget::immediate_exit`'s
// mutex, and is cleared (under the same mutex) before the mapping it points
// into is unmapped.
unsafe impl Send for ImmediateExit {}

#[derive(Debug, Default)]
struct KickTarget {
    immediate_exit: Mutex<Option<ImmediateExit>>,
}

struct KickGuard(Arc<KickTarget>);

impl Drop for KickGuard {
    fn drop(&mut self) {
        *lock(&self.0.immediate_exit) = None;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: the signal only interrupts KVM_RUN, immediate_exit
    // was set before it was sent.
}

fn install_kick_handler() -> Result<(), VcpuError> {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    let mut result = Ok(());
    INSTALLED.call_once(|| {
        result = register_signal_handler(kick_signal(), kick_handler).map_err(VcpuError::Signal);
    });
    result
}

/// A running vCPU thread.
pub struct VcpuHandle {
    index: u32,
    thread: Option<JoinHandle<()>>,
    kick: Arc<KickTarget>,
    stop: Arc<AtomicBool>,
}

impl VcpuHandle {
    /// Ask the vCPU to stop and kick it out of the guest.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let target = lock(&self.kick.immediate_exit);
        if let (Some(ptr), Some(thread)) = (target.as_ref(), self.thread.as_ref()) {
            // SAFETY: the pointer targets kvm_run of a vCPU whose thread is
            // alive: the thread clears it under this mutex before exiting.
            unsafe { std::ptr::write_volatile(ptr.0, 1) };
            // SAFETY: the thread is alive (see above), so its pthread_t is valid.
            let rc = unsafe { libc::pthread_kill(thread.as_pthread_t(), kick_signal()) };
            if rc != 0 {
                log::warn!("cannot kick vCPU {}: error {rc}", self.index);
            }
        }
    }

    /// Wait for the vCPU thread to end.
    pub fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("vCPU {} thread panicked", self.index);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::cast_possible_truncation)]
    use super::*;
    use devices::BusDevice;

    struct Reg(u8);
    impl BusDevice for Reg {
        fn read(&mut self, _: u64, data: &mut [u8]) {
            data.fill(self.0);
        }
        fn write(&mut self, _: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    fn buses() -> (Bus, Bus, Arc<Mutex<Reg>>) {
        let reg = Arc::new(Mutex::new(Reg(0x11)));
        let mut io = Bus::new();
        io.insert(reg.clone(), 0x3f8, 8).unwrap();
        let mut mmio = Bus::new();
        mmio.insert(reg.clone(), 0xd000_0000, 0x1000).unwrap();
        (io, mmio, reg)
    }

    #[test]
    fn port_and_mmio_exits_reach_the_bus() {
        let (io, mmio, reg) = buses();
        let mut d = [0u8; 1];
        assert_eq!(
            handle_exit(VcpuExit::IoIn(0x3f8, &mut d), 0, &io, &mmio),
            Handled::Continue
        );
        assert_eq!(d, [0x11]);
        handle_exit(VcpuExit::IoOut(0x3f9, &[0x22]), 0, &io, &mmio);
        assert_eq!(reg.lock().unwrap().0, 0x22);
        let mut d4 = [0u8; 4];
        handle_exit(VcpuExit::MmioRead(0xd000_0010, &mut d4), 0, &io, &mmio);
        assert_eq!(d4, [0x22; 4]);
        handle_exit(VcpuExit::MmioWrite(0xd000_0000, &[0x33]), 0, &io, &mmio);
        assert_eq!(reg.lock().unwrap().0, 0x33);
    }

    #[test]
    fn unclaimed_reads_see_all_ones() {
        let (io, mmio, _) = buses();
        let mut d = [0u8; 2];
        handle_exit(VcpuExit::IoIn(0x80, &mut d), 0, &io, &mmio);
        assert_eq!(d, [0xff, 0xff]);
        let mut d = [0u8; 4];
        handle_exit(VcpuExit::MmioRead(0x1234, &mut d), 0, &io, &mmio);
        assert_eq!(d, [0xff; 4]);
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x80, &[1]), 0, &io, &mmio),
            Handled::Continue
        );
    }

    #[test]
    fn fatal_exits_stop_with_a_reason() {
        let (io, mmio, _) = buses();
        assert_eq!(
            handle_exit(VcpuExit::Shutdown, 2, &io, &mmio),
            Handled::Stop(ExitReason::TripleFault { vcpu: 2 })
        );
        assert_eq!(
            handle_exit(
                VcpuExit::SystemEvent(kvm_bindings::KVM_SYSTEM_EVENT_RESET, &[]),
                0,
                &io,
                &mmio
            ),
            Handled::Stop(ExitReason::Reboot)
        );
        assert_eq!(
            handle_exit(
                VcpuExit::SystemEvent(kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN, &[]),
                0,
                &io,
                &mmio
            ),
            Handled::Stop(ExitReason::Poweroff)
        );
        assert!(matches!(
            handle_exit(VcpuExit::InternalError, 1, &io, &mmio),
            Handled::Stop(ExitReason::GuestError { vcpu: 1, .. })
        ));
        assert!(matches!(
            handle_exit(VcpuExit::FailEntry(7, 0), 0, &io, &mmio),
            Handled::Stop(ExitReason::GuestError { .. })
        ));
        assert!(matches!(
            handle_exit(VcpuExit::Unknown, 0, &io, &mmio),
            Handled::Stop(ExitReason::GuestError { .. })
        ));
    }
}
