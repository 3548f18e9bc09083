//! The host side's sockets: the listening Unix socket at `PATH` and the
//! Unix socket calls the standard library lacks (non-blocking connect, send
//! without SIGPIPE).
//!
//! See `docs/vsock.md` for the protocol a host client speaks.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Capacity of `sockaddr_un.sun_path`, terminating NUL included.
const SUN_PATH_LEN: usize = 108;
/// Longest suffix a guest-initiated connection adds to the base path
/// (`_4294967295`).
pub(super) const PORT_SUFFIX_MAX: usize = 11;
/// Longest base path: every `PATH_<port>` must fit `sun_path`.
pub const MAX_PATH_LEN: usize = SUN_PATH_LEN - 1 - PORT_SUFFIX_MAX;

/// Errors of the listening socket.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The path is too long for a Unix socket address with a port suffix.
    #[error("socket path {path:?} is {len} bytes long, at most {MAX_PATH_LEN} are allowed")]
    PathTooLong {
        /// The offending path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// The path contains a NUL byte.
    #[error("socket path {0:?} contains a NUL byte")]
    PathNul(PathBuf),
    /// Something other than a socket exists at the path.
    #[error("{0:?} exists and is not a socket")]
    NotASocket(PathBuf),
    /// A live process listens at the path.
    #[error("{0:?} is in use: something is listening there")]
    InUse(PathBuf),
    /// The path could not be examined or a stale socket removed.
    #[error("cannot check or remove {path:?}: {source}")]
    Stale {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The socket could not be created.
    #[error("cannot listen on {path:?}: {source}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// The listening socket at `PATH`, removed when dropped if it is still the
/// one this listener created.
#[derive(Debug)]
pub(super) struct Listener {
    sock: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file, to recognise it at drop.
    id: (u64, u64),
}

impl Listener {
    /// Listen at `path`: refuse a live socket or a non-socket there, remove
    /// a stale socket (nobody accepts connections on it).
    pub(super) fn bind(path: &Path) -> Result<Self, HostError> {
        let len = path.as_os_str().len();
        if len > MAX_PATH_LEN || len == 0 {
            return Err(HostError::PathTooLong {
                path: path.to_owned(),
                len,
            });
        }
        if path.as_os_str().as_bytes().contains(&0) {
            return Err(HostError::PathNul(path.to_owned()));
        }
        let stale = |source| HostError::Stale {
            path: path.to_owned(),
            source,
        };
        match fs::symlink_metadata(path) {
            Ok(md) if !md.file_type().is_socket() => {
                return Err(HostError::NotASocket(path.to_owned()))
            }
            Ok(_) => match connect(path) {
                Ok(_) => return Err(HostError::InUse(path.to_owned())),
                // A full backlog: alive, just busy.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(HostError::InUse(path.to_owned()))
                }
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    fs::remove_file(path).map_err(stale)?;
                }
                Err(e) => return Err(stale(e)),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(stale(e)),
        }
        let bind = |source| HostError::Bind {
            path: path.to_owned(),
            source,
        };
        let sock = UnixListener::bind(path).map_err(bind)?;
        let md = match fs::symlink_metadata(path) {
            Ok(md) => md,
            Err(e) => {
                let _ = fs::remove_file(path);
                return Err(bind(e));
            }
        };
        let listener = Self {
            sock,
            path: path.to_owned(),
            id: (md.dev(), md.ino()),
        };
        listener.sock.set_nonblocking(true).map_err(bind)?;
        Ok(listener)
    }

    /// The listening socket.
    pub(super) fn socket(&self) -> &UnixListener {
        &self.sock
    }

    /// Where it listens.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Leave alone whatever replaced our socket file meanwhile.
        if let Ok(md) = fs::symlink_metadata(&self.path) {
            if (md.dev(), md.ino()) == self.id {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

/// `PATH_<port>`: where a guest connection to host port `port` goes.
pub(super) fn port_path(base: &Path, port: u32) -> PathBuf {
    let mut s = OsString::from(base.as_os_str());
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// Connect to the Unix stream socket at `path` without blocking: fails
/// with `WouldBlock` when the listener's backlog is full instead of waiting.
/// The returned stream is non-blocking.
pub(super) fn connect(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= SUN_PATH_LEN || bytes.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    let mut addr = libc::sockaddr_un {
        sun_family: libc::sa_family_t::try_from(libc::AF_UNIX)
            .map_err(|_| io::Error::from_raw_os_error(libc::EAFNOSUPPORT))?,
        sun_path: [0; SUN_PATH_LEN],
    };
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = libc::c_char::from_ne_bytes([src]);
    }
    let addr_len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_un>())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: creates a new descriptor; no memory is passed.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `addr` is a fully initialised `sockaddr_un` of `addr_len`
    // bytes that outlives the call; `fd` is an open socket.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            addr_len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

/// Write what fits of `buf` without blocking and without SIGPIPE (a closed
/// peer gives `EPIPE`).
pub(super) fn send(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the whole
    // call and the descriptor is open (borrowed from `stream`).
    let n = unsafe {
        libc::send(
            stream.as_raw_fd(),
            buf.as_ptr().cast::<libc::c_void>(),
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Copy up to `buf.len()` waiting bytes into `buf` without consuming them
/// and without blocking.
pub(super) fn peek(stream: &UnixStream, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole
    // call and the descriptor is open (borrowed from `stream`).
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast::<libc::c_void>(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Most unread client bytes discarded before closing on a refusal.
const REFUSE_DRAIN_MAX: usize = 64 * 1024;

/// Tell a host client why it is being closed: `ERR <reason>\n`, best
/// effort (the socket is new, its buffer empty: the line fits). Then
/// discard what the client sent and we did not read (within a bound):
/// closing a Unix socket with unread input resets the connection, and the
/// client could lose the line.
pub(super) fn refuse(stream: &UnixStream, reason: &str) {
    let line = format!("ERR {reason}\n");
    let _ = send(stream, line.as_bytes());
    drain_input(stream);
}

/// Discard what a client sent and nobody will read (within a bound), so
/// that closing does not reset the connection under what we wrote.
pub(super) fn drain_input(stream: &UnixStream) {
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    let mut reader = stream;
    while drained < REFUSE_DRAIN_MAX {
        match io::Read::read(&mut reader, &mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use vmm_sys_util::tempdir::TempDir;

    use super::*;

    #[test]
    fn listener_refuses_live_and_foreign_paths_and_replaces_stale_ones() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("v.sock");
        let l = Listener::bind(&path).unwrap();
        assert!(matches!(Listener::bind(&path), Err(HostError::InUse(_))));
        drop(l);
        assert!(!path.exists(), "removed on drop");
        // A stale socket: its listener gone without cleanup.
        let stale = dir.as_path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        assert!(stale.exists());
        let l = Listener::bind(&stale).unwrap();
        drop(l);
        assert!(!stale.exists(), "removed on drop");

        let file = dir.as_path().join("file");
        fs::write(&file, b"x").unwrap();
        assert!(matches!(
            Listener::bind(&file),
            Err(HostError::NotASocket(_))
        ));
        assert!(file.exists());
        let long = dir.as_path().join("x".repeat(MAX_PATH_LEN));
        assert!(matches!(
            Listener::bind(&long),
            Err(HostError::PathTooLong { .. })
        ));

        // Not removed on drop when someone replaced it.
        let p = dir.as_path().join("replaced.sock");
        let l = Listener::bind(&p).unwrap();
        fs::remove_file(&p).unwrap();
        fs::write(&p, b"not ours").unwrap();
        drop(l);
        assert!(p.exists());
    }

    #[test]
    fn connect_does_not_block_and_send_does_not_raise_sigpipe() {
        let dir = TempDir::new().unwrap();
        let base = dir.as_path().join("s");
        assert_eq!(port_path(&base, 7), dir.as_path().join("s_7"));
        let err = connect(&port_path(&base, 7)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let l = std::os::unix::net::UnixListener::bind(port_path(&base, 7)).unwrap();
        let s = connect(&port_path(&base, 7)).unwrap();
        let (peer, _) = l.accept().unwrap();
        assert_eq!(send(&s, b"hi").unwrap(), 2);
        drop(peer);
        let e = loop {
            match send(&s, b"x") {
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        assert_eq!(e.raw_os_error(), Some(libc::EPIPE));
    }
}
