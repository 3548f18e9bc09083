//! `vmm-containers`: the container subcommands of vmm (`vmm run`, `vmm tenant`,
//! `vmm exec`, `vmm ps`), which `vmm` hands over to. They are a binary of
//! their own so that the VMM every VM runs stays small.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use vmm::cli::{Cli, Command, TenantAction, TenantVmArgs};
use vmm::config::parse_size;
use vmm::exit::EXIT_VMM_ERROR;
use vmm::tenant::run::{self, RunOptions};
use vmm::tenant::{self, Tenant, TenantSpec};
use vmm_agent::protocol::Limits;

fn main() -> ExitCode {
    // Parsed as `vmm ...`, so --help and errors read the same.
    let args = std::iter::once(std::ffi::OsString::from("vmm")).chain(std::env::args_os().skip(1));
    let cli = Cli::parse_from(args);
    let code = match cli.command {
        Some(cmd) => containers(cmd),
        None => {
            eprintln!(
                "vmm-containers: give a subcommand: run, tenant, exec or ps (see vmm --help)"
            );
            2
        }
    };
    ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(u8::MAX))
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
