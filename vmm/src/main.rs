//! The `vmm` command.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use vmm::builder;
use vmm::cli::{BootArgs, Cli};
use vmm::config::ConfigError;
use vmm::exit::{ExitReason, EXIT_VMM_ERROR};
use vmm::vstate::kvm::HostKind;

fn main() -> ExitCode {
    let start = Instant::now();
    // The container subcommands live in their own binary, so that the VMM
    // every VM runs stays small (its size is most of its resident memory).
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| CONTAINER_COMMANDS.iter().any(|c| a == *c))
    {
        return exec_containers();
    }
    let cli = Cli::parse();
    let code = match cli.command {
        Some(_) => return exec_containers(),
        None => boot(&cli.boot, start),
    };
    ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(u8::MAX))
}

/// The subcommands `vmm-containers` implements.
const CONTAINER_COMMANDS: [&str; 4] = ["run", "tenant", "exec", "ps"];

/// Replace this process with `vmm-containers` (next to this binary) and the
/// same arguments.
fn exec_containers() -> ExitCode {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(e) => e.with_file_name("vmm-containers"),
        Err(e) => {
            eprintln!("vmm: error: cannot find this program's path: {e}");
            return ExitCode::from(1);
        }
    };
    let err = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .exec();
    eprintln!(
        "vmm: error: cannot run {} for this subcommand: {err} (install vmm-containers next to vmm)",
        exe.display()
    );
    ExitCode::from(1)
}

/// Boot a VM: `vmm --kernel ...`.
fn boot(args: &BootArgs, start: Instant) -> i32 {
    vmm::logger::init(args.verbose, start);
    match args
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
            match e {
                // A usage error, like the ones clap reports.
                builder::BuilderError::Config(ConfigError::NoKernel) => 2,
                _ => EXIT_VMM_ERROR,
            }
        }
    }
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
