//! Why a VM stopped, and the exit status vmm returns for it.
//!
//! Any thread may ask the VM to stop (a vCPU on a triple fault, a device when
//! the guest reboots or reports its exit status, the event loop on a signal);
//! the first reason wins and the event loop is woken through an event fd.

use std::fmt;
use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Exit status: the guest shut down or rebooted.
pub const EXIT_OK: i32 = 0;
/// Exit status: vmm failed (bad input, set-up error, host error).
pub const EXIT_VMM_ERROR: i32 = 1;
/// Exit status: the guest triple-faulted.
pub const EXIT_TRIPLE_FAULT: i32 = 3;
/// Exit status: KVM could not run the guest (internal/emulation error, failed entry).
pub const EXIT_GUEST_ERROR: i32 = 4;
/// Exit status: the guest kernel panicked (reported through pvpanic).
pub const EXIT_GUEST_PANIC: i32 = 5;

/// Why the VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest rebooted (keyboard controller reset, ACPI reset, KVM reset event).
    Reboot,
    /// The guest powered off (ACPI S5, KVM shutdown event).
    Poweroff,
    /// The guest reported an exit status through the debug device.
    GuestStatus(u8),
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault {
        /// The vCPU.
        vcpu: u32,
    },
    /// The guest kernel panicked (pvpanic).
    GuestPanic,
    /// KVM could not run the guest.
    GuestError {
        /// The vCPU.
        vcpu: u32,
        /// What KVM said.
        detail: String,
    },
    /// vmm was told to stop by a signal and the guest did not shut down in time
    /// (or a second signal came).
    Signal(i32),
    /// A host-side error while running.
    HostError(String),
}

impl ExitReason {
    /// The process exit status for this reason.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::Reboot | ExitReason::Poweroff => EXIT_OK,
            ExitReason::GuestStatus(s) => i32::from(*s),
            ExitReason::TripleFault { .. } => EXIT_TRIPLE_FAULT,
            ExitReason::GuestPanic => EXIT_GUEST_PANIC,
            ExitReason::GuestError { .. } => EXIT_GUEST_ERROR,
            ExitReason::Signal(sig) => 128 + sig,
            ExitReason::HostError(_) => EXIT_VMM_ERROR,
        }
    }

    /// True for reasons that are failures worth a message on stderr.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            ExitReason::TripleFault { .. }
                | ExitReason::GuestPanic
                | ExitReason::GuestError { .. }
                | ExitReason::HostError(_)
        )
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Reboot => write!(f, "guest rebooted"),
            ExitReason::Poweroff => write!(f, "guest powered off"),
            ExitReason::GuestStatus(s) => write!(f, "guest exited with status {s}"),
            ExitReason::TripleFault { vcpu } => write!(f, "guest triple fault on vCPU {vcpu}"),
            ExitReason::GuestPanic => write!(f, "guest kernel panicked"),
            ExitReason::GuestError { vcpu, detail } => {
                write!(f, "KVM cannot run the guest on vCPU {vcpu}: {detail}")
            }
            ExitReason::Signal(sig) => write!(f, "stopped by signal {sig}"),
            ExitReason::HostError(e) => write!(f, "{e}"),
        }
    }
}

/// The shared "stop the VM" request.
#[derive(Debug)]
pub struct ExitSignal {
    reason: Mutex<Option<ExitReason>>,
    evt: EventFd,
    /// The signal that asked the guest to shut down, if one did.
    shutdown_signal: Mutex<Option<i32>>,
}

impl ExitSignal {
    /// A new, unset exit signal.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Mutex::new(None),
            evt: EventFd::new(EFD_NONBLOCK)?,
            shutdown_signal: Mutex::new(None),
        })
    }

    /// Ask the VM to stop for `reason`; only the first request counts.
    pub fn request(&self, reason: ExitReason) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            log::debug!("exit requested: {reason}");
            *r = Some(reason);
        }
        drop(r);
        if let Err(e) = self.evt.write(1) {
            log::error!("cannot wake the event loop: {e}");
        }
    }

    /// The reason, if a stop was requested.
    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Record that signal `sig` asked the guest to shut down; returns false
    /// when an earlier signal already did.
    pub fn note_shutdown_signal(&self, sig: i32) -> bool {
        let mut s = self
            .shutdown_signal
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if s.is_some() {
            return false;
        }
        *s = Some(sig);
        true
    }

    /// The signal that asked the guest to shut down, if any.
    pub fn shutdown_signal(&self) -> Option<i32> {
        *self
            .shutdown_signal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The event fd the event loop watches.
    pub fn event_fd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::cast_possible_truncation)]
    use super::*;

    #[test]
    fn first_reason_wins_and_wakes_the_loop() {
        let s = ExitSignal::new().unwrap();
        assert_eq!(s.reason(), None);
        s.request(ExitReason::GuestStatus(7));
        s.request(ExitReason::Reboot);
        assert_eq!(s.reason(), Some(ExitReason::GuestStatus(7)));
        assert_eq!(s.event_fd().read().unwrap(), 2);
    }

    #[test]
    fn exit_codes_are_distinct_for_failures() {
        assert_eq!(ExitReason::Reboot.exit_code(), 0);
        assert_eq!(ExitReason::Poweroff.exit_code(), 0);
        assert_eq!(ExitReason::GuestStatus(42).exit_code(), 42);
        assert_eq!(ExitReason::Signal(15).exit_code(), 143);
        let failures = [
            ExitReason::TripleFault { vcpu: 0 }.exit_code(),
            ExitReason::GuestError {
                vcpu: 0,
                detail: String::new(),
            }
            .exit_code(),
            ExitReason::GuestPanic.exit_code(),
            ExitReason::HostError(String::new()).exit_code(),
        ];
        for (i, a) in failures.iter().enumerate() {
            assert_ne!(*a, 0);
            for b in &failures[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
