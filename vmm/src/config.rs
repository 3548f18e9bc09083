//! The validated description of a VM: what the CLI (or a caller) asks for,
//! checked before any KVM resource is created.

use std::fmt;
use std::net::Ipv4Addr;
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

/// Most network devices a guest may have.
pub const MAX_NICS: usize = 8;

/// Which TAP a network device uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TapConfig {
    /// An existing TAP, left as it is when vmm exits.
    Named(String),
    /// A TAP vmm creates (`vmm<pid>n<index>`) and removes when it exits.
    Auto,
}

/// One network device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The TAP behind it.
    pub tap: TapConfig,
    /// Its MAC address; generated from the VM's configuration when absent.
    pub mac: Option<[u8; 6]>,
    /// Guest address and prefix length, set up by the kernel (`ip=`).
    pub ip: Option<(Ipv4Addr, u8)>,
    /// Guest default gateway.
    pub gw: Option<Ipv4Addr>,
    /// Address and prefix length vmm puts on the host side of the TAP.
    pub host_ip: Option<(Ipv4Addr, u8)>,
}

fn parse_cidr(s: &str, whole: &str) -> Result<(Ipv4Addr, u8), ConfigError> {
    let err = || {
        ConfigError::NetSpec(
            whole.into(),
            format!("'{s}' is not ADDRESS/PREFIX, e.g. 10.0.0.2/24"),
        )
    };
    let (a, p) = s.split_once('/').ok_or_else(err)?;
    let addr: Ipv4Addr = a.parse().map_err(|_| err())?;
    let prefix: u8 = p.parse().map_err(|_| err())?;
    if prefix > 32 {
        return Err(err());
    }
    Ok((addr, prefix))
}

impl std::str::FromStr for NetConfig {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: String| ConfigError::NetSpec(s.into(), why);
        let mut parts = s.split(',');
        let tap = match parts.next() {
            Some("auto") => TapConfig::Auto,
            Some(p) => match p.strip_prefix("tap=") {
                Some(name) if !name.is_empty() => TapConfig::Named(name.into()),
                _ => return Err(bad("start with tap=NAME or auto".into())),
            },
            None => return Err(bad("empty".into())),
        };
        let mut n = NetConfig {
            tap,
            mac: None,
            ip: None,
            gw: None,
            host_ip: None,
        };
        for part in parts {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("'{part}' is not KEY=VALUE")))?;
            match k {
                "mac" => {
                    n.mac = Some(
                        devices::virtio::net::parse_mac(v).map_err(|e| bad(format!("mac: {e}")))?,
                    )
                }
                "ip" => n.ip = Some(parse_cidr(v, s)?),
                "gw" => {
                    n.gw = Some(
                        v.parse()
                            .map_err(|_| bad(format!("gw '{v}' is not an IPv4 address")))?,
                    )
                }
                "host" => n.host_ip = Some(parse_cidr(v, s)?),
                _ => return Err(bad(format!("unknown key '{k}' (mac, ip, gw, host)"))),
            }
        }
        if n.gw.is_some() && n.ip.is_none() {
            return Err(bad("gw= needs ip=".into()));
        }
        if n.host_ip.is_some() && n.tap != TapConfig::Auto {
            return Err(bad(
                "host= is only for auto TAPs; configure a named TAP on the host".into(),
            ));
        }
        Ok(n)
    }
}

/// The vsock device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context ID (3 or more).
    pub cid: u64,
    /// Unix socket host processes connect to (`CONNECT <port>`); guest
    /// connections to host port P go to `<path>_P`.
    pub socket: PathBuf,
}

impl std::str::FromStr for VsockConfig {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| ConfigError::VsockSpec(s.into(), why.into());
        let mut cid = None;
        let mut socket = None;
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("cid", v)) => {
                    cid = Some(v.parse::<u64>().map_err(|_| bad("cid must be a number"))?)
                }
                Some(("socket", v)) if !v.is_empty() => socket = Some(PathBuf::from(v)),
                _ => return Err(bad("use cid=N,socket=PATH")),
            }
        }
        let cid = cid.ok_or_else(|| bad("cid= is missing"))?;
        if !(3..=u64::from(u32::MAX - 1)).contains(&cid) {
            return Err(bad("cid must be between 3 and 4294967294"));
        }
        let socket = socket.ok_or_else(|| bad("socket= is missing"))?;
        Ok(VsockConfig { cid, socket })
    }
}

/// One block device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// Raw image file.
    pub path: PathBuf,
    /// Advertised read-only to the guest and opened read-only on the host.
    pub read_only: bool,
}

impl std::str::FromStr for DiskConfig {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (path, read_only) = match s.rsplit_once(',') {
            Some((p, "ro")) => (p, true),
            Some((p, "rw")) => (p, false),
            Some(_) => return Err(ConfigError::DiskSpec(s.into())),
            None => (s, false),
        };
        if path.is_empty() {
            return Err(ConfigError::DiskSpec(s.into()));
        }
        Ok(DiskConfig {
            path: path.into(),
            read_only,
        })
    }
}

/// Where the guest console goes.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum ConsoleConfig {
    /// vmm's stdout; stdin forwarded to the guest.
    #[default]
    Stdio,
    /// Output appended to a file; no input.
    File(PathBuf),
    /// Discarded.
    None,
}

impl std::str::FromStr for ConsoleConfig {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdio" => Ok(ConsoleConfig::Stdio),
            "none" => Ok(ConsoleConfig::None),
            _ => match s.strip_prefix("file:") {
                Some(p) if !p.is_empty() => Ok(ConsoleConfig::File(p.into())),
                _ => Err(ConfigError::Console(s.into())),
            },
        }
    }
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

    #[test]
    fn vsock_specs() {
        let v: VsockConfig = "cid=3,socket=/tmp/v.sock".parse().unwrap();
        assert_eq!((v.cid, v.socket), (3, PathBuf::from("/tmp/v.sock")));
        for bad in [
            "",
            "cid=3",
            "socket=/x",
            "cid=2,socket=/x",
            "cid=x,socket=/x",
            "cid=3,socket=",
            "cid=3,socket=/x,foo=1",
        ] {
            assert!(bad.parse::<VsockConfig>().is_err(), "{bad}");
        }
    }

    #[test]
    fn net_specs() {
        let n: NetConfig = "tap=tap0,mac=02:00:00:00:00:01,ip=10.0.0.2/24,gw=10.0.0.1"
            .parse()
            .unwrap();
        assert_eq!(n.tap, TapConfig::Named("tap0".into()));
        assert_eq!(n.mac, Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(n.ip, Some(("10.0.0.2".parse().unwrap(), 24)));
        assert_eq!(n.gw, Some("10.0.0.1".parse().unwrap()));
        let a: NetConfig = "auto,host=10.1.0.1/30,ip=10.1.0.2/30".parse().unwrap();
        assert_eq!(a.tap, TapConfig::Auto);
        assert_eq!(a.host_ip, Some(("10.1.0.1".parse().unwrap(), 30)));
        for bad in [
            "",
            "tap=",
            "eth0",
            "auto,ip=10.0.0.2",
            "auto,ip=10.0.0.2/33",
            "auto,ip=300.0.0.1/24",
            "auto,mac=zz",
            "auto,gw=10.0.0.1",
            "tap=t,host=10.0.0.1/24",
            "auto,color=blue",
            "auto,ip",
        ] {
            assert!(bad.parse::<NetConfig>().is_err(), "{bad}");
        }
    }

    #[test]
    fn disk_and_console_specs() {
        assert_eq!(
            "a.img,ro".parse::<DiskConfig>(),
            Ok(DiskConfig {
                path: "a.img".into(),
                read_only: true
            })
        );
        assert_eq!(
            "dir,with,commas.img".parse::<DiskConfig>(),
            Err(ConfigError::DiskSpec("dir,with,commas.img".into()))
        );
        assert!(!"b.img".parse::<DiskConfig>().unwrap().read_only);
        assert!(",ro".parse::<DiskConfig>().is_err());
        assert_eq!("none".parse::<ConsoleConfig>(), Ok(ConsoleConfig::None));
        assert_eq!(
            "file:/tmp/x".parse::<ConsoleConfig>(),
            Ok(ConsoleConfig::File("/tmp/x".into()))
        );
        assert!("file:".parse::<ConsoleConfig>().is_err());
        assert!("tty".parse::<ConsoleConfig>().is_err());
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
