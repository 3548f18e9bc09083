//! Command-line interface.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{parse_size, BootProtocol, ConfigError, DiskConfig, OnReboot, VmConfig};

const EXAMPLES: &str = "\
Examples:
  Boot a guest with a root file system, console on this terminal:
    vmm --kernel vmlinux --rootfs rootfs.ext4

  Two vCPUs, 512 MiB, an extra read-only disk, a command for the test init:
    vmm --kernel vmlinux --rootfs rootfs.ext4 --cpus 2 --mem 512M \\
        --disk data.img,ro --cmdline 'run=\"cat /proc/cpuinfo\"'

  Boot with an initrd and no disk, console to a file, with a boot log:
    vmm --kernel bzImage --initrd initrd.cpio.gz --console file:guest.log -v

Console: on a terminal the console is raw (keys go to the guest);
Ctrl-A x stops vmm, Ctrl-A Ctrl-A sends Ctrl-A.

Exit status: 0 when the guest powers off or reboots; the status the guest
wrote to the debug device; 1 on a vmm error; 3 on a guest triple fault;
4 when KVM cannot run the guest; 5 when the guest kernel panicked;
128+N when stopped by signal N.";

/// vmm: boot a Linux guest in a KVM micro-VM, or run containers in per-tenant VMs.
#[derive(Debug, Parser)]
#[command(
    name = "vmm",
    version,
    about,
    after_help = EXAMPLES,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Containers in tenant VMs.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Booting a VM (when no subcommand is given).
    #[command(flatten)]
    pub boot: BootArgs,
}

/// Subcommands: containers inside per-tenant VMs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a container image in a tenant's VM (started if needed), or in a
    /// throw-away VM without --tenant; exits with the container's status.
    Run(RunArgs),
    /// Start, stop and list tenant VMs.
    Tenant {
        /// What to do.
        #[command(subcommand)]
        action: TenantAction,
    },
    /// Run a command in a running container of a tenant.
    Exec {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The container id (see `vmm ps`).
        container: String,
        /// `KEY=VALUE` environment entries.
        #[arg(long = "env", short = 'e')]
        env: Vec<String>,
        /// The command.
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// List the containers of a tenant.
    Ps {
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
}

/// Tenant VM options shared by `run` and `tenant up`.
#[derive(Debug, clap::Args)]
pub struct TenantVmArgs {
    /// Guest kernel (default: $VMM_KERNEL).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// The agent root file system, from rootfs-tools/mkagentfs.sh (default: $VMM_AGENTFS).
    #[arg(long, value_name = "PATH")]
    pub agentfs: Option<PathBuf>,
    /// Memory of the tenant VM.
    #[arg(long, default_value = "512M", value_name = "SIZE")]
    pub mem: String,
    /// vCPUs of the tenant VM.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub cpus: u32,
    /// Seconds to wait for the tenant VM's agent to answer.
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    pub boot_timeout: u64,
}

/// `vmm run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The tenant whose VM runs the container; without it a throw-away VM is used.
    #[arg(long)]
    pub tenant: Option<String>,
    /// The tenant VM.
    #[command(flatten)]
    pub vm: TenantVmArgs,
    /// Memory limit of the container, e.g. 64M.
    #[arg(long, value_name = "SIZE")]
    pub memory_limit: Option<String>,
    /// CPU limit of the container in cores, e.g. 0.5.
    #[arg(long, value_name = "CORES")]
    pub cpu_limit: Option<f64>,
    /// Most processes and threads in the container.
    #[arg(long, value_name = "N")]
    pub pids_limit: Option<u64>,
    /// `KEY=VALUE` environment entries (added to the image's).
    #[arg(long = "env", short = 'e')]
    pub env: Vec<String>,
    /// Working directory in the container.
    #[arg(long, short = 'w')]
    pub workdir: Option<String>,
    /// `user[:group]` in the container.
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// Container id (default: generated).
    #[arg(long)]
    pub name: Option<String>,
    /// The image: an OCI image layout directory or a `docker save` tarball.
    pub image: PathBuf,
    /// The command (default: the image's Entrypoint and Cmd).
    #[arg(last = true)]
    pub argv: Vec<String>,
}

/// `vmm tenant ...`.
#[derive(Debug, Subcommand)]
pub enum TenantAction {
    /// Start a tenant's VM (if it is not running) and wait for its agent.
    Up {
        /// The tenant.
        name: String,
        /// The tenant VM.
        #[command(flatten)]
        vm: TenantVmArgs,
    },
    /// Shut a tenant's VM down.
    Down {
        /// The tenant.
        name: String,
    },
    /// List tenants and whether their VM runs.
    Ls,
}

/// Booting a VM directly.
#[derive(Debug, clap::Args)]
pub struct BootArgs {
    /// Guest kernel: ELF vmlinux or bzImage (required to boot a VM).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,

    /// Root file system image (raw, e.g. ext4), attached as /dev/vda.
    #[arg(long, value_name = "PATH")]
    pub rootfs: Option<PathBuf>,

    /// Attach the root file system read-only (and mount it read-only).
    #[arg(long, requires = "rootfs")]
    pub rootfs_ro: bool,

    /// Extra disk image, appended as /dev/vdb, /dev/vdc, ...; add ",ro" for read-only.
    #[arg(long = "disk", value_name = "PATH[,ro]")]
    pub disks: Vec<String>,

    /// Network device on a TAP, appended as eth0, eth1, ...:
    /// `tap=NAME` (an existing TAP) or `auto` (a TAP vmm creates and removes),
    /// then optionally `,mac=MAC`, `,ip=ADDR/PREFIX[,gw=ADDR]` (configured by the
    /// guest kernel) and, for auto, `,host=ADDR/PREFIX` (the host's side).
    #[arg(long = "net", value_name = "SPEC")]
    pub nets: Vec<String>,

    /// vsock device: `cid=N,socket=PATH`. Host processes connect to the Unix
    /// socket PATH and write `CONNECT <port>\n` to reach a guest port; guest
    /// connections to host port P go to the Unix socket `PATH_P`.
    #[arg(long, value_name = "SPEC")]
    pub vsock: Option<String>,

    /// Initial ramdisk.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// Guest memory, e.g. 128M or 1G (MiB when no suffix).
    #[arg(long, default_value = "128M", value_name = "SIZE")]
    pub mem: String,

    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub cpus: u32,

    /// Extra kernel command line, appended to vmm's defaults
    /// (console=ttyS0, reboot through the keyboard controller, root=/dev/vda).
    #[arg(
        long,
        value_name = "ARGS",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub cmdline: String,

    /// Guest console: stdio, file:PATH or none.
    #[arg(long, default_value = "stdio", value_name = "WHERE")]
    pub console: String,

    /// Boot protocol: auto, linux (64-bit boot protocol) or pvh.
    #[arg(long, default_value = "auto", value_parser = ["auto", "linux", "pvh"])]
    pub boot: String,

    /// Describe the platform without ACPI: an MP table, and virtio devices on the
    /// kernel command line (for guest kernels built without CONFIG_ACPI).
    #[arg(long)]
    pub no_acpi: bool,

    /// What a guest reboot does: exit (status 0) or restart the guest.
    #[arg(long, default_value = "exit", value_parser = ["exit", "restart"])]
    pub on_reboot: String,

    /// Seconds the guest gets to shut down after SIGTERM/SIGINT/SIGHUP before
    /// vmm stops it (a second signal stops it at once).
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub shutdown_timeout: f64,

    /// The KVM device to use.
    #[arg(long, default_value = "/dev/kvm", value_name = "PATH")]
    pub kvm_device: PathBuf,

    /// Log what vmm does to stderr (-v: boot log and timings, -vv: debug).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl BootArgs {
    /// Turn the arguments into a VM configuration (not yet validated against
    /// the file system; see [`VmConfig::validate`]).
    pub fn to_config(&self) -> Result<VmConfig, ConfigError> {
        let kernel = self.kernel.as_ref().ok_or(ConfigError::NoKernel)?;
        let mut c = VmConfig::new(kernel);
        c.mem_bytes = parse_size(&self.mem)?;
        c.cpus = self.cpus;
        c.initrd = self.initrd.clone();
        c.rootfs = self.rootfs.as_ref().map(|p| DiskConfig {
            path: p.clone(),
            read_only: self.rootfs_ro,
        });
        c.disks = self
            .disks
            .iter()
            .map(|d| d.parse())
            .collect::<Result<_, _>>()?;
        c.nets = self
            .nets
            .iter()
            .map(|n| n.parse())
            .collect::<Result<_, _>>()?;
        c.vsock = self.vsock.as_deref().map(str::parse).transpose()?;
        c.cmdline_extra = self.cmdline.clone();
        c.acpi = !self.no_acpi;
        c.kvm_device = self.kvm_device.clone();
        c.on_reboot = if self.on_reboot == "restart" {
            OnReboot::Restart
        } else {
            OnReboot::Exit
        };
        c.shutdown_timeout = std::time::Duration::try_from_secs_f64(self.shutdown_timeout)
            .map_err(|_| ConfigError::ShutdownTimeout(self.shutdown_timeout.to_string()))?;
        c.console = self.console.parse()?;
        c.boot = match self.boot.as_str() {
            "linux" => BootProtocol::Linux,
            "pvh" => BootProtocol::Pvh,
            _ => BootProtocol::Auto,
        };
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::cast_possible_truncation)]
    use super::*;
    use crate::config::ConsoleConfig;

    #[test]
    fn one_line_boot() {
        let cli =
            Cli::try_parse_from(["vmm", "--kernel", "vmlinux", "--rootfs", "r.ext4"]).unwrap();
        let c = cli.boot.to_config().unwrap();
        assert_eq!(c.kernel, PathBuf::from("vmlinux"));
        assert!(cli.command.is_none());
        assert_eq!(c.mem_bytes, 128 << 20);
        assert_eq!(c.cpus, 1);
        assert_eq!(
            c.rootfs,
            Some(DiskConfig {
                path: "r.ext4".into(),
                read_only: false
            })
        );
        assert_eq!(c.console, ConsoleConfig::Stdio);
    }

    #[test]
    fn all_options() {
        let cli = Cli::try_parse_from([
            "vmm",
            "--kernel",
            "k",
            "--rootfs",
            "r",
            "--rootfs-ro",
            "--disk",
            "a.img",
            "--disk",
            "b.img,ro",
            "--mem",
            "1G",
            "--cpus",
            "4",
            "--cmdline",
            "quiet",
            "--console",
            "file:/tmp/c",
            "--boot",
            "pvh",
            "-vv",
            "--initrd",
            "i",
        ])
        .unwrap();
        let c = cli.boot.to_config().unwrap();
        assert_eq!(c.mem_bytes, 1 << 30);
        assert_eq!(c.cpus, 4);
        assert!(c.rootfs.unwrap().read_only);
        assert_eq!(c.disks.len(), 2);
        assert!(c.disks[1].read_only);
        assert_eq!(c.boot, BootProtocol::Pvh);
        assert_eq!(c.console, ConsoleConfig::File("/tmp/c".into()));
        assert_eq!(cli.boot.verbose, 2);
    }

    #[test]
    fn bad_values_are_refused() {
        let none = Cli::try_parse_from(["vmm"]).unwrap();
        assert_eq!(
            none.boot.to_config(),
            Err(ConfigError::NoKernel),
            "kernel is required"
        );
        assert!(Cli::try_parse_from(["vmm", "--kernel", "k", "--rootfs-ro"]).is_err());
        assert!(Cli::try_parse_from(["vmm", "--kernel", "k", "--boot", "uefi"]).is_err());
        let bad_mem = Cli::try_parse_from(["vmm", "--kernel", "k", "--mem", "lots"]).unwrap();
        assert!(matches!(
            bad_mem.boot.to_config(),
            Err(ConfigError::Size(_))
        ));
        let bad_console =
            Cli::try_parse_from(["vmm", "--kernel", "k", "--console", "tty"]).unwrap();
        assert!(matches!(
            bad_console.boot.to_config(),
            Err(ConfigError::Console(_))
        ));
    }
}
