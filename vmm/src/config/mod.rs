//! The validated description of a VM: what the CLI (or a caller) asks for,
//! checked before any KVM resource is created.

mod devices;

pub use devices::{ConsoleConfig, DiskConfig, NetConfig, TapConfig, VsockConfig, MAX_NICS};

use std::fmt;
use std::path::{Path, PathBuf};

/// Smallest guest memory vmm accepts.
pub const MIN_MEM: u64 = 16 << 20;
/// Largest guest memory vmm accepts (also limited by the host's RAM).
pub const MAX_MEM: u64 = 1 << 40;
/// Most vCPUs a guest may have (MP table / xAPIC limit).
pub const MAX_CPUS: u32 = crate::arch::x86_64::mptable::MAX_CPUS;
/// Most block devices (root file system included) a guest may have.
pub const MAX_DISKS: usize = 16;

/// Errors of [`self`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// No kernel and no subcommand.
    #[error("--kernel is required to boot a VM (or use a subcommand: run, tenant, exec, ps; see --help)")]
    NoKernel,
    /// A size could not be parsed.
    #[error(
        "invalid size '{0}': use a number with an optional K, M, G or T suffix, e.g. 128M or 1G"
    )]
    Size(String),
    /// Memory too small.
    #[error("--mem {} is too small: a guest needs at least {}", human_size(*.0), human_size(MIN_MEM))]
    MemTooSmall(u64),
    /// Memory too large.
    #[error("--mem {} is too large: vmm supports up to {}", human_size(*.0), human_size(MAX_MEM))]
    MemTooLarge(u64),
    /// Memory not a multiple of the page size.
    #[error("--mem {0} bytes is not a multiple of 4 KiB")]
    MemUnaligned(u64),
    /// vCPU count out of range.
    #[error("--cpus {0} is out of range: use 1 to {MAX_CPUS}")]
    Cpus(u32),
    /// A file given does not exist or is not a regular file.
    #[error("{what} {path} does not exist")]
    Missing {
        /// Kernel, rootfs, disk, initrd.
        what: &'static str,
        /// The path given.
        path: PathBuf,
    },
    /// A path is not a regular file (directory, device...).
    #[error("{what} {path} is not a regular file")]
    NotAFile {
        /// Kernel, rootfs, disk, initrd.
        what: &'static str,
        /// The path given.
        path: PathBuf,
    },
    /// Too many disks.
    #[error("{0} disks given: vmm supports at most {MAX_DISKS} (root file system included)")]
    TooManyDisks(usize),
    /// A --disk option could not be parsed.
    #[error("invalid --disk '{0}': use PATH or PATH,ro")]
    DiskSpec(String),
    /// The same image is attached twice.
    #[error("{0} is attached twice; a disk image can back only one device")]
    DuplicateDisk(PathBuf),
    /// A --net option could not be parsed.
    #[error("invalid --net '{0}': {1}")]
    NetSpec(String, String),
    /// Too many network devices.
    #[error("{0} network devices given: vmm supports at most {MAX_NICS}")]
    TooManyNics(usize),
    /// The kernel can configure only one interface.
    #[error("ip= is given for more than one --net: the kernel's ip= configures one interface; configure the others inside the guest")]
    SeveralKernelIps,
    /// The same TAP twice.
    #[error("TAP {0} is given twice")]
    DuplicateTap(String),
    /// A --vsock option could not be parsed.
    #[error("invalid --vsock '{0}': {1}")]
    VsockSpec(String, String),
    /// A --console option could not be parsed.
    #[error("invalid --console '{0}': use stdio, file:PATH or none")]
    Console(String),
    /// The shutdown timeout is negative or not a number.
    #[error("invalid --shutdown-timeout '{0}': give a number of seconds, e.g. 10 or 2.5")]
    ShutdownTimeout(String),
    /// The extra command line has characters the kernel cannot take.
    #[error("--cmdline must be printable ASCII without NUL bytes")]
    Cmdline,
}

/// Which boot protocol to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BootProtocol {
    /// PVH when the kernel has a PVH entry and the host needs it, else Linux.
    #[default]
    Auto,
    /// 64-bit Linux boot protocol.
    Linux,
    /// PVH boot ABI (32-bit entry).
    Pvh,
}

impl fmt::Display for BootProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BootProtocol::Auto => "auto",
            BootProtocol::Linux => "linux",
            BootProtocol::Pvh => "pvh",
        })
    }
}

/// What happens when the guest reboots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnReboot {
    /// vmm exits with status 0.
    #[default]
    Exit,
    /// vmm boots the guest again from scratch (fresh memory and devices; disk
    /// contents persist). A reboot asked for by a stop signal still exits.
    Restart,
}

/// A complete, validated VM description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// Kernel image (ELF vmlinux or bzImage).
    pub kernel: PathBuf,
    /// Optional initrd.
    pub initrd: Option<PathBuf>,
    /// Root file system image, attached first (/dev/vda).
    pub rootfs: Option<DiskConfig>,
    /// Extra disks (/dev/vdb, ...).
    pub disks: Vec<DiskConfig>,
    /// Network devices (eth0, eth1, ...).
    pub nets: Vec<NetConfig>,
    /// The vsock device, if any.
    pub vsock: Option<VsockConfig>,
    /// Guest memory in bytes.
    pub mem_bytes: u64,
    /// vCPU count.
    pub cpus: u32,
    /// Extra kernel command line, appended to the defaults.
    pub cmdline_extra: String,
    /// Console.
    pub console: ConsoleConfig,
    /// Boot protocol.
    pub boot: BootProtocol,
    /// The KVM device.
    pub kvm_device: PathBuf,
    /// What a guest reboot does.
    pub on_reboot: OnReboot,
    /// How long the guest gets to shut down after SIGTERM/SIGINT/SIGHUP.
    pub shutdown_timeout: std::time::Duration,
    /// Describe the platform with ACPI (devices in the DSDT); without it, the
    /// MP table and `virtio_mmio.device=` command-line entries.
    pub acpi: bool,
}

impl VmConfig {
    /// A configuration with defaults for everything but the kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            rootfs: None,
            disks: Vec::new(),
            nets: Vec::new(),
            vsock: None,
            mem_bytes: 128 << 20,
            cpus: 1,
            cmdline_extra: String::new(),
            console: ConsoleConfig::Stdio,
            boot: BootProtocol::Auto,
            acpi: true,
            kvm_device: PathBuf::from("/dev/kvm"),
            on_reboot: OnReboot::Exit,
            shutdown_timeout: std::time::Duration::from_secs(10),
        }
    }

    /// All disks in device order: the root file system first.
    pub fn all_disks(&self) -> impl Iterator<Item = &DiskConfig> {
        self.rootfs.iter().chain(self.disks.iter())
    }

    /// Check everything that can be checked without KVM.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.mem_bytes < MIN_MEM {
            return Err(ConfigError::MemTooSmall(self.mem_bytes));
        }
        if self.mem_bytes > MAX_MEM {
            return Err(ConfigError::MemTooLarge(self.mem_bytes));
        }
        if !self.mem_bytes.is_multiple_of(4096) {
            return Err(ConfigError::MemUnaligned(self.mem_bytes));
        }
        if self.cpus == 0 || self.cpus > MAX_CPUS {
            return Err(ConfigError::Cpus(self.cpus));
        }
        check_file("kernel", &self.kernel)?;
        if let Some(i) = &self.initrd {
            check_file("initrd", i)?;
        }
        if let Some(r) = &self.rootfs {
            check_file("root file system", &r.path)?;
        }
        for d in &self.disks {
            check_file("disk", &d.path)?;
        }
        let count = self.all_disks().count();
        if count > MAX_DISKS {
            return Err(ConfigError::TooManyDisks(count));
        }
        let mut seen: Vec<PathBuf> = Vec::new();
        for d in self.all_disks() {
            let canon = d.path.canonicalize().unwrap_or_else(|_| d.path.clone());
            if seen.contains(&canon) {
                return Err(ConfigError::DuplicateDisk(d.path.clone()));
            }
            seen.push(canon);
        }
        if self.nets.len() > MAX_NICS {
            return Err(ConfigError::TooManyNics(self.nets.len()));
        }
        if self.nets.iter().filter(|n| n.ip.is_some()).count() > 1 {
            return Err(ConfigError::SeveralKernelIps);
        }
        let mut taps: Vec<&str> = Vec::new();
        for n in &self.nets {
            if let TapConfig::Named(name) = &n.tap {
                if taps.contains(&name.as_str()) {
                    return Err(ConfigError::DuplicateTap(name.clone()));
                }
                taps.push(name);
            }
        }
        if !self
            .cmdline_extra
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b))
        {
            return Err(ConfigError::Cmdline);
        }
        Ok(())
    }
}

fn check_file(what: &'static str, path: &Path) -> Result<(), ConfigError> {
    match std::fs::metadata(path) {
        Err(_) => Err(ConfigError::Missing {
            what,
            path: path.into(),
        }),
        Ok(m) if !m.is_file() => Err(ConfigError::NotAFile {
            what,
            path: path.into(),
        }),
        Ok(_) => Ok(()),
    }
}

/// A byte count in the largest binary unit that divides it (or KiB with a
/// fraction), e.g. `128 MiB`, `1.5 GiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [(u32, &str); 4] = [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")];
    for (shift, unit) in UNITS {
        let u = 1u64 << shift;
        if bytes >= u {
            return if bytes.is_multiple_of(u) {
                format!("{} {unit}", bytes >> shift)
            } else {
                format!("{:.1} {unit}", bytes as f64 / u as f64)
            };
        }
    }
    format!("{bytes} bytes")
}

/// Parse a size such as `128M`, `1G`, `1.5G`, `4096K` or `512` (MiB when no
/// suffix is given). Suffixes are binary; `MiB`/`MB`/`m` forms are accepted.
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let err = || ConfigError::Size(s.into());
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let shift = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "M" | "MB" | "MIB" => 20,
        "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(err()),
    };
    if num.is_empty() {
        return Err(err());
    }
    let bytes = if let Some((int, frac)) = num.split_once('.') {
        if frac.contains('.') || int.is_empty() && frac.is_empty() {
            return Err(err());
        }
        let int: u64 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| err())?
        };
        let frac = &frac[..frac.len().min(9)];
        let frac_digits = u32::try_from(frac.len()).map_err(|_| err())?;
        let frac_val: u64 = if frac.is_empty() {
            0
        } else {
            frac.parse().map_err(|_| err())?
        };
        let unit = 1u64 << shift;
        let whole = int.checked_mul(unit).ok_or_else(err)?;
        let part = u64::try_from(u128::from(frac_val) * u128::from(unit) / 10u128.pow(frac_digits))
            .map_err(|_| err())?;
        whole.checked_add(part).ok_or_else(err)?
    } else {
        let n: u64 = num.parse().map_err(|_| err())?;
        n.checked_mul(1 << shift).ok_or_else(err)?
    };
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::cast_possible_truncation)]
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(128 << 20), "128 MiB");
        assert_eq!(human_size(100 << 40), "100 TiB");
        assert_eq!(human_size(3 << 29), "1.5 GiB");
        assert_eq!(human_size(1 << 20), "1 MiB");
        assert_eq!(human_size(100), "100 bytes");
        assert_eq!(
            ConfigError::MemTooSmall(1 << 20).to_string(),
            "--mem 1 MiB is too small: a guest needs at least 16 MiB"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("128M"), Ok(128 << 20));
        assert_eq!(parse_size("128"), Ok(128 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("4096K"), Ok(4 << 20));
        assert_eq!(parse_size("65536B"), Ok(65536));
        for bad in [
            "",
            "M",
            "12X",
            "-1",
            "1..5G",
            "99999999999999999999T",
            "1.2.3",
            ".",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    fn tmp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("vmm-cfg-{}-{name}", std::process::id()));
        std::fs::write(&p, b"x").unwrap();
        p
    }

    #[test]
    fn validation_names_the_problem() {
        let k = tmp("kernel");
        let mut c = VmConfig::new(&k);
        assert_eq!(c.validate(), Ok(()));
        c.mem_bytes = 1 << 20;
        assert_eq!(c.validate(), Err(ConfigError::MemTooSmall(1 << 20)));
        c.mem_bytes = 2 << 40;
        assert!(matches!(c.validate(), Err(ConfigError::MemTooLarge(_))));
        c.mem_bytes = (128 << 20) + 1;
        assert!(matches!(c.validate(), Err(ConfigError::MemUnaligned(_))));
        c.mem_bytes = 128 << 20;
        c.cpus = 0;
        assert_eq!(c.validate(), Err(ConfigError::Cpus(0)));
        c.cpus = 1;
        c.rootfs = Some(DiskConfig {
            path: "/nonexistent.ext4".into(),
            read_only: false,
        });
        let e = c.validate().unwrap_err();
        assert_eq!(
            e.to_string(),
            "root file system /nonexistent.ext4 does not exist"
        );
        c.rootfs = Some(DiskConfig {
            path: std::env::temp_dir(),
            read_only: false,
        });
        assert!(matches!(c.validate(), Err(ConfigError::NotAFile { .. })));
        let d = tmp("disk");
        c.rootfs = Some(DiskConfig {
            path: d.clone(),
            read_only: false,
        });
        c.disks = vec![DiskConfig {
            path: d.clone(),
            read_only: true,
        }];
        assert!(matches!(c.validate(), Err(ConfigError::DuplicateDisk(_))));
        c.disks = (0..MAX_DISKS)
            .map(|i| DiskConfig {
                path: tmp(&format!("d{i}")),
                read_only: false,
            })
            .collect();
        assert_eq!(c.validate(), Err(ConfigError::TooManyDisks(MAX_DISKS + 1)));
        c.disks.clear();
        c.cmdline_extra = "quiet\nfoo".into();
        assert_eq!(c.validate(), Err(ConfigError::Cmdline));
        c.kernel = "/nonexistent/vmlinux".into();
        c.cmdline_extra.clear();
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "kernel /nonexistent/vmlinux does not exist"
        );
    }
}
