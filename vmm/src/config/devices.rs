//! Device options: disks, network devices, vsock, console — each parsed from
//! its command-line form (`PATH,ro`, `tap=NAME,ip=...`, `cid=N,socket=PATH`,
//! `file:PATH`).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::ConfigError;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
