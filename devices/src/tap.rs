//! A Linux TAP interface: the host side of a virtio-net device.
//!
//! [`Tap::create`] makes a new interface (refusing a name already in use),
//! brings it up and deletes it again when dropped; [`Tap::attach`] opens an
//! interface someone else created and leaves its configuration alone. Both
//! configure the file descriptor the way virtio-net needs it: non-blocking,
//! close-on-exec, Ethernet frames without packet information (`IFF_NO_PI`),
//! each preceded by a 12-byte `virtio_net_hdr_v1` (`IFF_VNET_HDR` with
//! `TUNSETVNETHDRSZ`).
//!
//! Offloads: the kernel always accepts checksum-offloaded and TCP-segmented
//! frames written with a virtio header. What it may hand to *us* (partial
//! checksums, TSO) is chosen with `TUNSETOFFLOAD`; [`Tap::supported_offloads`]
//! reports which `TUN_F_*` flags the kernel accepted when the TAP was opened
//! and [`Tap::set_offloads`] enables a subset (the ones the guest accepted).
//!
//! Deletion: a TAP that is not persistent disappears when the last file
//! descriptor attached to it closes. A created TAP is never made persistent
//! (`Drop` clears the flag again to be sure) and its descriptor is
//! close-on-exec, so no child process keeps it alive.
//!
//! Every `ioctl` and raw libc call lives in a small helper below with its
//! safety argument.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use libc::{c_int, c_short, c_uint, c_ulong};
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref, ioctl_with_val};

/// The TUN/TAP clone device.
const TUN_PATH: &str = "/dev/net/tun";
/// Length of the virtio header the kernel reads and writes in front of every
/// frame: `struct virtio_net_hdr_v1` (virtio 1.x, with `num_buffers`).
pub const VNET_HDR_LEN: usize = 12;
/// Longest interface name (`IFNAMSIZ` minus the terminating NUL).
const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;
/// The `TUN_F_*` sets tried, in order, to learn what the kernel can deliver.
const OFFLOAD_PROBES: [c_uint; 2] = [
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN,
    libc::TUN_F_CSUM,
];

/// Errors of [`Tap`]. Each says which interface and, where the kernel's
/// errno has a well-known meaning, what it means.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name cannot be an interface name.
    #[error("invalid TAP name {name:?}: {reason}")]
    InvalidName {
        /// The offending name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `/dev/net/tun` is missing or the tun driver is not available.
    #[error("no /dev/net/tun (is the tun module loaded?): {0}")]
    NoTunDevice(#[source] io::Error),
    /// The caller lacks CAP_NET_ADMIN (or access to `/dev/net/tun`).
    #[error("permission denied: {op} of TAP {name:?} needs CAP_NET_ADMIN")]
    PermissionDenied {
        /// The interface.
        name: String,
        /// What was attempted.
        op: &'static str,
    },
    /// Creating: an interface of that name exists. Attaching: another
    /// process has the TAP open.
    #[error("TAP name {name:?} busy: the interface exists (create) or is in use (attach)")]
    Busy {
        /// The interface.
        name: String,
    },
    /// Attaching to an interface that does not exist.
    #[error("no interface named {name:?} to attach to")]
    NotFound {
        /// The interface.
        name: String,
    },
    /// The interface is not a TAP (a TUN device, a physical NIC, ...), or a
    /// TAP set up with incompatible flags (multi-queue).
    #[error("{name:?} is not a single-queue TAP interface")]
    NotTap {
        /// The interface.
        name: String,
    },
    /// The kernel's TUN/TAP driver cannot prepend virtio headers.
    #[error("the kernel's TUN/TAP driver lacks IFF_VNET_HDR")]
    NoVnetHdr,
    /// An IPv4 prefix length above 32.
    #[error("invalid IPv4 prefix length /{0}")]
    InvalidPrefix(u8),
    /// Any other failure of a system call on the interface.
    #[error("TAP {name:?}: {op}: {source}")]
    Io {
        /// The interface.
        name: String,
        /// What was attempted.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl TapError {
    /// Classify the errno of `op` on interface `name`.
    fn from_errno(name: &str, op: &'static str, source: io::Error) -> Self {
        let name = name.to_owned();
        match source.raw_os_error() {
            Some(libc::EBUSY) => Self::Busy { name },
            Some(libc::EPERM | libc::EACCES) => Self::PermissionDenied { name, op },
            _ => Self::Io { name, op, source },
        }
    }
}

/// An open TAP interface.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    created: bool,
    supported_offloads: c_uint,
}

impl Tap {
    /// Create the TAP `name` (a `%d` in it lets the kernel pick a number),
    /// refusing a name already in use, and bring it up. It is deleted when
    /// this value is dropped.
    pub fn create(name: &str) -> Result<Self, TapError> {
        let tap = Self::open(name, true)?;
        tap.set_up()?;
        Ok(tap)
    }

    /// Another handle on the same TAP queue (a duplicated fd). A TAP vmm
    /// created lives until the last handle is dropped.
    pub fn try_clone(&self) -> Result<Self, TapError> {
        Ok(Self {
            file: self.file.try_clone().map_err(|source| TapError::Io {
                name: self.name.clone(),
                op: "dup",
                source,
            })?,
            name: self.name.clone(),
            created: self.created,
            supported_offloads: self.supported_offloads,
        })
    }

    /// Attach to the existing TAP `name` without changing its addresses or
    /// link state; it outlives this value.
    pub fn attach(name: &str) -> Result<Self, TapError> {
        check_name(name, false)?;
        if !interface_exists(name) {
            return Err(TapError::NotFound {
                name: name.to_owned(),
            });
        }
        Self::open(name, false)
    }

    fn open(name: &str, create: bool) -> Result<Self, TapError> {
        check_name(name, create)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) => TapError::NoTunDevice(e),
                _ => TapError::from_errno(name, "open /dev/net/tun", e),
            })?;
        let features =
            get_features(&file).map_err(|e| TapError::from_errno(name, "TUNGETFEATURES", e))?;
        if features & tun_flag(libc::IFF_VNET_HDR) == 0 {
            return Err(TapError::NoVnetHdr);
        }

        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if create {
            flags |= libc::IFF_TUN_EXCL;
        }
        let mut ifr = new_ifreq(name);
        ifr.ifr_ifru.ifru_flags = short_flags(flags);
        set_iff(&file, &mut ifr).map_err(|e| match e.raw_os_error() {
            Some(libc::EINVAL) if !create => TapError::NotTap {
                name: name.to_owned(),
            },
            _ => TapError::from_errno(name, if create { "create" } else { "attach" }, e),
        })?;
        // From here on the interface exists; dropping `tap` cleans it up.
        let mut tap = Self {
            file,
            name: ifreq_name(&ifr),
            created: create,
            supported_offloads: 0,
        };
        let hdr_len = c_int::try_from(VNET_HDR_LEN).unwrap_or(c_int::MAX);
        set_vnet_hdr_len(&tap.file, hdr_len).map_err(|e| tap.error("TUNSETVNETHDRSZ", e))?;
        tap.supported_offloads = OFFLOAD_PROBES
            .into_iter()
            .find(|&flags| tap.set_offloads(flags).is_ok())
            .unwrap_or(0);
        tap.set_offloads(0)?;
        Ok(tap)
    }

    fn error(&self, op: &'static str, source: io::Error) -> TapError {
        TapError::from_errno(&self.name, op, source)
    }

    /// The interface name (as the kernel completed it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True if this value created the interface (and deletes it on drop).
    pub fn created(&self) -> bool {
        self.created
    }

    /// The `TUN_F_*` offloads the kernel accepted when the TAP was opened:
    /// what it can hand us without checksumming or segmenting first.
    pub fn supported_offloads(&self) -> u32 {
        self.supported_offloads
    }

    /// Let the kernel hand us frames using exactly the `TUN_F_*` offloads in
    /// `flags` (0: only complete, checksummed, unsegmented frames).
    pub fn set_offloads(&self, flags: u32) -> Result<(), TapError> {
        set_offload(&self.file, flags).map_err(|e| self.error("TUNSETOFFLOAD", e))
    }

    /// Whether the interface is administratively up.
    pub fn is_up(&self) -> Result<bool, TapError> {
        let sock = inet_socket().map_err(|e| self.error("socket", e))?;
        let mut ifr = new_ifreq(&self.name);
        get_if_flags(&sock, &mut ifr).map_err(|e| self.error("SIOCGIFFLAGS", e))?;
        Ok(c_int::from(ifreq_flags(&ifr)) & libc::IFF_UP != 0)
    }

    fn set_up(&self) -> Result<(), TapError> {
        let sock = inet_socket().map_err(|e| self.error("socket", e))?;
        let mut ifr = new_ifreq(&self.name);
        get_if_flags(&sock, &mut ifr).map_err(|e| self.error("SIOCGIFFLAGS", e))?;
        let flags = c_int::from(ifreq_flags(&ifr)) | libc::IFF_UP;
        ifr.ifr_ifru.ifru_flags = short_flags(flags);
        set_if_flags(&sock, &ifr).map_err(|e| self.error("SIOCSIFFLAGS", e))
    }

    /// Give the interface the IPv4 address `addr/prefix_len`.
    pub fn set_ipv4(&self, addr: Ipv4Addr, prefix_len: u8) -> Result<(), TapError> {
        if prefix_len > 32 {
            return Err(TapError::InvalidPrefix(prefix_len));
        }
        let mask = u32::MAX
            .checked_shl(32 - u32::from(prefix_len))
            .unwrap_or(0);
        let sock = inet_socket().map_err(|e| self.error("socket", e))?;
        let mut ifr = new_ifreq(&self.name);
        ifr.ifr_ifru.ifru_addr = sockaddr_in(addr);
        set_if_addr(&sock, libc::SIOCSIFADDR, &ifr).map_err(|e| self.error("SIOCSIFADDR", e))?;
        ifr.ifr_ifru.ifru_netmask = sockaddr_in(Ipv4Addr::from(mask));
        set_if_addr(&sock, libc::SIOCSIFNETMASK, &ifr).map_err(|e| self.error("SIOCSIFNETMASK", e))
    }

    /// The underlying file (reads and writes carry one frame each, virtio
    /// header first; both are non-blocking).
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        if self.created {
            // Only our descriptor can have made it persistent; make sure it
            // is not, so closing the descriptor deletes the interface.
            if let Err(e) = set_persist(&self.file, false) {
                // EBADFD: the interface is already gone.
                if e.raw_os_error() != Some(libc::EBADFD) {
                    log::warn!("TAP {}: cannot clear persistence: {e}", self.name);
                }
            }
        }
    }
}

/// Whether an interface called `name` exists in this thread's network
/// namespace.
pub fn interface_exists(name: &str) -> bool {
    let Ok(c) = CString::new(name) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call;
    // if_nametoindex only reads it.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

fn check_name(name: &str, create: bool) -> Result<(), TapError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("reserved")
    } else if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
    {
        Some("contains '/', ':', NUL or whitespace")
    } else if !create && name.contains('%') {
        Some("a '%' template can only be used when creating")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(TapError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// A `struct ifreq` holding `name` (at most 15 bytes, checked by callers;
/// longer names are cut) and zeros.
fn new_ifreq(name: &str) -> libc::ifreq {
    // SAFETY: `ifreq` is a C struct of integers, byte arrays and a union of
    // those and a raw pointer; all-zero bytes are a valid value of each.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &b) in ifr
        .ifr_name
        .iter_mut()
        .zip(name.as_bytes().iter().take(MAX_NAME_LEN))
    {
        *dst = libc::c_char::from_ne_bytes([b]);
    }
    ifr
}

/// The name the kernel left in `ifr`.
fn ifreq_name(ifr: &libc::ifreq) -> String {
    let bytes: Vec<u8> = ifr
        .ifr_name
        .iter()
        .map(|&c| c.to_ne_bytes()[0])
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The flags member of `ifr`.
fn ifreq_flags(ifr: &libc::ifreq) -> c_short {
    // SAFETY: the union's first bytes are initialised (zeroed at creation,
    // then written by us or the kernel) and every bit pattern is a valid
    // `c_short`.
    unsafe { ifr.ifr_ifru.ifru_flags }
}

/// Interface flags (`IFF_*`, all below 0x10000) as the 16-bit field of
/// `struct ifreq`, bit for bit.
#[allow(clippy::cast_possible_truncation)]
fn short_flags(flags: c_int) -> c_short {
    flags as u16 as c_short
}

/// A TUN flag as TUNGETFEATURES reports it.
fn tun_flag(flag: c_int) -> c_uint {
    c_uint::try_from(flag).unwrap_or(0)
}

/// An IPv4 address as a `struct sockaddr` (the layout of `sockaddr_in`).
fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let mut sa_data: [libc::c_char; 14] = [0; 14];
    // sin_port (2 bytes, zero), then sin_addr in network order.
    for (dst, b) in sa_data[2..6].iter_mut().zip(addr.octets()) {
        *dst = libc::c_char::from_ne_bytes([b]);
    }
    libc::sockaddr {
        sa_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or_default(),
        sa_data,
    }
}

fn check(ret: c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// TUNGETFEATURES: the `IFF_*` flags the driver supports.
fn get_features(tun: &File) -> io::Result<c_uint> {
    let mut features: c_uint = 0;
    // SAFETY: TUNGETFEATURES writes one `unsigned int` through the pointer,
    // which refers to a live, exclusively borrowed `c_uint`.
    check(unsafe { ioctl_with_mut_ref(tun, libc::TUNGETFEATURES, &mut features) })?;
    Ok(features)
}

/// TUNSETIFF: attach `tun` to (or create) the interface named in `ifr`; the
/// kernel writes the final name back.
fn set_iff(tun: &File, ifr: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, and `ifr` is a
    // live, exclusively borrowed `ifreq`.
    check(unsafe { ioctl_with_mut_ref(tun, libc::TUNSETIFF, ifr) })
}

/// TUNSETVNETHDRSZ: the length of the virtio header in front of frames.
fn set_vnet_hdr_len(tun: &File, len: c_int) -> io::Result<()> {
    // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer, which
    // refers to a live `c_int`.
    check(unsafe { ioctl_with_ref(tun, libc::TUNSETVNETHDRSZ, &len) })
}

/// TUNSETOFFLOAD: the `TUN_F_*` flags, passed by value.
fn set_offload(tun: &File, flags: c_uint) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is
    // accessed.
    check(unsafe { ioctl_with_val(tun, libc::TUNSETOFFLOAD, c_ulong::from(flags)) })
}

/// TUNSETPERSIST: the persistence flag, passed by value.
fn set_persist(tun: &File, persist: bool) -> io::Result<()> {
    // SAFETY: TUNSETPERSIST takes its argument by value; no memory is
    // accessed.
    check(unsafe { ioctl_with_val(tun, libc::TUNSETPERSIST, c_ulong::from(persist)) })
}

/// An AF_INET datagram socket, the handle for interface ioctls.
fn inet_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain system call with constant arguments; no memory is
    // passed.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor socket() just returned, owned by nobody
    // else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// SIOCGIFFLAGS: read the interface flags into `ifr`.
fn get_if_flags(sock: &OwnedFd, ifr: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: SIOCGIFFLAGS reads the name from and writes the flags into one
    // `struct ifreq`; `ifr` is a live, exclusively borrowed `ifreq`.
    check(unsafe { ioctl_with_mut_ref(sock, libc::SIOCGIFFLAGS, ifr) })
}

/// SIOCSIFFLAGS: set the interface flags from `ifr`.
fn set_if_flags(sock: &OwnedFd, ifr: &libc::ifreq) -> io::Result<()> {
    // SAFETY: SIOCSIFFLAGS only reads one `struct ifreq`, and `ifr` is a
    // live `ifreq`.
    check(unsafe { ioctl_with_ref(sock, libc::SIOCSIFFLAGS, ifr) })
}

/// SIOCSIFADDR or SIOCSIFNETMASK: set an address from `ifr`.
fn set_if_addr(sock: &OwnedFd, req: c_ulong, ifr: &libc::ifreq) -> io::Result<()> {
    // SAFETY: both requests only read one `struct ifreq` (name and a
    // `sockaddr`), and `ifr` is a live `ifreq`.
    check(unsafe { ioctl_with_ref(sock, req, ifr) })
}
