//! The `vmm` command.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use std::time::Duration;
use vmm::builder;

use vmm::cli::{BootArgs, Cli, Command, TenantAction, TenantVmArgs};
use vmm::config::{parse_size, ConfigError};
use vmm::exit::{ExitReason, EXIT_VMM_ERROR};
use vmm::tenant::run::{self, RunOptions};
use vmm::tenant::{self, Tenant, TenantSpec};
use vmm::vstate::kvm::HostKind;
use vmm_agent::protocol::Limits;

fn main() -> ExitCode {
    let start = Instant::now();
    let cli = Cli::parse();
    let code = match cli.command {
        Some(cmd) => containers(cmd),
        None => boot(&cli.boot, start),
    };
    ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(u8::MAX))
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

/// `vmm run`, `vmm tenant`, `vmm exec`, `vmm ps`.
fn containers(cmd: Command) -> i32 {
    match containers_inner(cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vmm: error: {e}");
            EXIT_VMM_ERROR
        }
    }
}

fn tenant_spec(vm: &TenantVmArgs) -> Result<TenantSpec, Box<dyn std::error::Error>> {
    parse_size(&vm.mem)?;
    Ok(TenantSpec::new(
        vm.kernel.clone(),
        vm.agentfs.clone(),
        &vm.mem,
        vm.cpus,
    )?)
}

fn containers_inner(cmd: Command) -> Result<i32, Box<dyn std::error::Error>> {
    let root = tenant::state_root();
    match cmd {
        Command::Run(a) => {
            let spec = tenant_spec(&a.vm)?;
            let t = a
                .tenant
                .as_deref()
                .map(|n| Tenant::new(&root, n))
                .transpose()?;
            let opts = RunOptions {
                argv: a.argv,
                env: a.env,
                workdir: a.workdir,
                user: a.user,
                limits: Limits {
                    memory_bytes: a.memory_limit.as_deref().map(parse_size).transpose()?,
                    cpu: a.cpu_limit,
                    pids: a.pids_limit,
                },
                id: a.name,
            };
            let timeout = Duration::from_secs(a.vm.boot_timeout);
            Ok(run::run(&a.image, t.as_ref(), &spec, &opts, timeout)?)
        }
        Command::Tenant { action } => match action {
            TenantAction::Up { name, vm } => {
                let t = Tenant::new(&root, &name)?;
                t.up(
                    &tenant_spec(&vm)?,
                    true,
                    Duration::from_secs(vm.boot_timeout),
                )?;
                println!("tenant {name} is up ({})", t.dir.display());
                Ok(0)
            }
            TenantAction::Down { name } => {
                let t = Tenant::new(&root, &name)?;
                if t.down(Duration::from_secs(30))? {
                    println!("tenant {name} is down");
                } else {
                    println!("tenant {name} was not running");
                }
                Ok(0)
            }
            TenantAction::Ls => {
                for (name, pid) in tenant::list(&root) {
                    match pid {
                        Some(p) => println!("{name}\trunning\tpid {p}"),
                        None => println!("{name}\tstopped"),
                    }
                }
                Ok(0)
            }
        },
        Command::Exec {
            tenant: name,
            container,
            env,
            argv,
        } => {
            let t = Tenant::new(&root, &name)?;
            Ok(run::exec(&t, &container, argv, env)?)
        }
        Command::Ps { tenant: name } => {
            let t = Tenant::new(&root, &name)?;
            println!("ID\tPID\tSTATE\tSTATUS\tCOMMAND");
            for c in run::ps(&t)? {
                let status = c
                    .exit
                    .map(|e| run::exit_code(&e).to_string())
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{}\t{}\t{:?}\t{}\t{}",
                    c.id,
                    c.pid,
                    c.state,
                    status,
                    c.argv.join(" ")
                );
            }
            Ok(0)
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
