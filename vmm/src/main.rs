//! The `vmm` command.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use vmm::builder;
use vmm::cli::Cli;
use vmm::exit::{ExitReason, EXIT_VMM_ERROR};
use vmm::vstate::kvm::HostKind;

fn main() -> ExitCode {
    let start = Instant::now();
    let cli = Cli::parse();
    vmm::logger::init(cli.verbose, start);
    let code = match cli
        .to_config()
        .map_err(builder::BuilderError::from)
        .and_then(|c| builder::run(&c, start))
    {
        Ok(outcome) => {
            if outcome.reason.is_failure() {
                eprintln!("vmm: {}", outcome.reason);
                if let Some(hint) = hint(&outcome) {
                    eprintln!("vmm: {hint}");
                }
            }
            outcome.reason.exit_code()
        }
        Err(e) => {
            eprintln!("vmm: error: {e}");
            EXIT_VMM_ERROR
        }
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// What to do about a failed guest, when we can tell.
fn hint(outcome: &builder::RunOutcome) -> Option<&'static str> {
    let died = matches!(
        outcome.reason,
        ExitReason::GuestError { .. } | ExitReason::TripleFault { .. }
    );
    if !died || outcome.host != HostKind::Pvm {
        return None;
    }
    Some(if outcome.console_bytes == 0 {
        "this host's KVM is PVM (kvm_pvm) and the guest died before printing anything: \
         PVM runs only PVM guest kernels; build one with \
         guest-kernel/build.sh --tree <PVM-enabled linux tree> --fragment guest-kernel/pvm.config"
    } else {
        "this host's KVM is PVM (kvm_pvm), which emulates a non-PVM guest kernel until an \
         instruction it cannot emulate: use a PVM guest kernel (guest-kernel/build.sh --tree \
         <PVM-enabled linux tree> --fragment guest-kernel/pvm.config)"
    })
}
