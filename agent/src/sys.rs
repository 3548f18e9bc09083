//! Typed wrappers around the raw Linux calls the agent makes. Every unsafe
//! block of the crate lives here, but for one `kill` in cgroup.rs and the
//! init helper taking ownership of its inherited fds in init.rs.

// Values crossing the C ABI: syscall results that fit their C types (pids,
// fds), capability masks split into 32-bit halves on purpose.
#![allow(clippy::cast_possible_truncation)]

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;

/// A failed system call, with what it was applied to.
#[derive(Debug, thiserror::Error)]
#[error("{call}({what}): {source}")]
pub struct SysError {
    /// The call (e.g. `mount`).
    pub call: &'static str,
    /// Its main argument (a path, a pid, a flag set).
    pub what: String,
    /// The errno.
    #[source]
    pub source: io::Error,
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, SysError>;

impl SysError {
    /// The error for the current errno.
    pub fn last(call: &'static str, what: impl Into<String>) -> Self {
        Self {
            call,
            what: what.into(),
            source: io::Error::last_os_error(),
        }
    }

    /// The raw errno, if any.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

fn check_long(
    ret: libc::c_long,
    call: &'static str,
    what: impl FnOnce() -> String,
) -> Result<libc::c_long> {
    if ret < 0 {
        Err(SysError::last(call, what()))
    } else {
        Ok(ret)
    }
}

fn check(
    ret: libc::c_int,
    call: &'static str,
    what: impl FnOnce() -> String,
) -> Result<libc::c_int> {
    if ret < 0 {
        Err(SysError::last(call, what()))
    } else {
        Ok(ret)
    }
}

/// A path as a C string (paths with NUL bytes are refused).
pub fn cpath(call: &'static str, p: &Path) -> Result<CString> {
    cstr(call, p.as_os_str())
}

/// Any OS string as a C string.
pub fn cstr(call: &'static str, s: &OsStr) -> Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| SysError {
        call,
        what: format!("{s:?}"),
        source: io::Error::from_raw_os_error(libc::EINVAL),
    })
}

/// mount(2).
pub fn mount(
    src: &str,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<()> {
    let c_src = cstr("mount", OsStr::new(src))?;
    let c_target = cpath("mount", target)?;
    let c_fs = fstype.map(|f| cstr("mount", OsStr::new(f))).transpose()?;
    let c_data = data.map(|d| cstr("mount", OsStr::new(d))).transpose()?;
    // SAFETY: all pointers are valid NUL-terminated strings (or null) that
    // outlive the call; mount does not keep them.
    let ret = unsafe {
        libc::mount(
            c_src.as_ptr(),
            c_target.as_ptr(),
            c_fs.as_ref().map_or(ptr::null(), |c| c.as_ptr()),
            flags,
            c_data
                .as_ref()
                .map_or(ptr::null(), |c| c.as_ptr().cast::<libc::c_void>()),
        )
    };
    check(ret, "mount", || {
        format!(
            "{src} on {}, type {fstype:?}, flags {flags:#x}, {data:?}",
            target.display()
        )
    })
    .map(drop)
}

/// umount2(2) with `MNT_DETACH`.
pub fn umount_detach(target: &Path) -> Result<()> {
    let c = cpath("umount2", target)?;
    // SAFETY: `c` is a valid C string for the duration of the call.
    let ret = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    check(ret, "umount2", || target.display().to_string()).map(drop)
}

/// pivot_root(".", "."): the current directory becomes the root and the old
/// root is stacked on it, then detached.
pub fn pivot_root_cwd() -> Result<()> {
    let dot = c".";
    // SAFETY: both arguments are valid C strings; the call only changes this
    // process's mount namespace.
    let ret = unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) };
    check_long(ret, "pivot_root", || ".".into())?;
    // SAFETY: as above.
    let ret = unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) };
    check(ret, "umount2", || "old root".into()).map(drop)
}

/// sethostname(2).
pub fn sethostname(name: &str) -> Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes.
    let ret = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    check(ret, "sethostname", || name.to_string()).map(drop)
}

/// mknod(2) of a character device.
pub fn mknod_char(path: &Path, mode: u32, major: u32, minor: u32) -> Result<()> {
    let c = cpath("mknod", path)?;
    // SAFETY: `c` is a valid C string; makedev and mknod take plain values.
    let ret = unsafe {
        libc::mknod(
            c.as_ptr(),
            libc::S_IFCHR | mode,
            libc::makedev(major, minor),
        )
    };
    check(ret, "mknod", || path.display().to_string()).map(drop)
}

/// chmod(2) (mknod's mode is subject to the umask).
pub fn chmod(path: &Path, mode: u32) -> Result<()> {
    let c = cpath("chmod", path)?;
    // SAFETY: `c` is a valid C string.
    let ret = unsafe { libc::chmod(c.as_ptr(), mode) };
    check(ret, "chmod", || path.display().to_string()).map(drop)
}

/// pipe2(O_CLOEXEC): (read end, write end).
pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let ret = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    check(ret, "pipe2", String::new)?;
    // SAFETY: pipe2 succeeded, so both are fresh descriptors we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A close-on-exec duplicate of `fd` numbered at least `min`.
pub fn dup_min(fd: BorrowedFd<'_>, min: RawFd) -> Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a valid descriptor returns a new one or -1.
    let ret = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    check(ret, "fcntl", || "F_DUPFD_CLOEXEC".into())?;
    // SAFETY: the descriptor is new and ours.
    Ok(unsafe { OwnedFd::from_raw_fd(ret) })
}

/// Sets or clears `FD_CLOEXEC` on one of our descriptors.
pub fn set_cloexec(fd: RawFd, on: bool) -> Result<()> {
    let flags = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: F_SETFD on a descriptor number; an invalid one fails with EBADF.
    let ret = unsafe { libc::fcntl(fd, libc::F_SETFD, flags) };
    check(ret, "fcntl", || format!("F_SETFD {fd}")).map(drop)
}

/// Sets `O_NONBLOCK` on one of our descriptors.
pub fn set_nonblocking(fd: RawFd) -> Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor number; invalid ones fail.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    check(fl, "fcntl", || format!("F_GETFL {fd}"))?;
    // SAFETY: as above.
    let ret = unsafe { libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) };
    check(ret, "fcntl", || format!("F_SETFL {fd}")).map(drop)
}

/// Closes every descriptor from `first` on (the init helper's hygiene).
pub fn close_from(first: u32) {
    // SAFETY: close_range only closes descriptors; nothing of ours above
    // `first` is used afterwards (the callers own no such fds).
    unsafe { libc::close_range(first, u32::MAX, 0) };
}

/// The fds a helper starts with, in order: stdin, stdout, stderr, the spec
/// pipe (3), the error pipe (4) and, for `exec`, the container init's pidfd
/// (5).
pub const HELPER_FDS: RawFd = 6;

/// What a [`spawn_helper`] child was made of.
pub struct Spawned {
    /// Its pid (in the caller's pid namespace).
    pub pid: libc::pid_t,
    /// Its pidfd.
    pub pidfd: OwnedFd,
}

/// clone3(2) a child with `flags` (namespace flags; `CLONE_PIDFD` is added)
/// that puts `fds[i]` at descriptor `i` and executes the program `exe` with
/// `argv` and an empty environment. Between clone and exec the child makes
/// only async-signal-safe system calls, so this is safe from a
/// multi-threaded process. `fds` must all be numbered at least
/// [`HELPER_FDS`] (see [`dup_min`]).
pub fn spawn_helper(
    exe: BorrowedFd<'_>,
    argv: &[CString],
    fds: &[BorrowedFd<'_>],
    flags: u64,
) -> Result<Spawned> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    if raw.len() != HELPER_FDS as usize
        || raw
            .iter()
            .chain([&exe.as_raw_fd()])
            .any(|&f| f < HELPER_FDS)
    {
        return Err(SysError {
            call: "clone3",
            what: format!("helper fds {raw:?} overlap 0..{HELPER_FDS}"),
            source: io::Error::from_raw_os_error(libc::EINVAL),
        });
    }
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(ptr::null());
    let envp: [*const libc::c_char; 1] = [ptr::null()];
    let exe_fd = exe.as_raw_fd();
    let mut pidfd: RawFd = -1;
    // SAFETY: clone_args is plain data; zero is valid for every field.
    let mut args: libc::clone_args = unsafe { zeroed() };
    args.flags = flags | libc::CLONE_PIDFD as u64;
    args.pidfd = ptr::addr_of_mut!(pidfd) as u64;
    args.exit_signal = libc::SIGCHLD as u64;
    // SAFETY: a fork-like clone3 (no CLONE_VM, no new stack): the child gets
    // a copy of this address space. In the child (ret 0) only dup2, execveat
    // and _exit run, all async-signal-safe, on data prepared above.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            ptr::addr_of!(args),
            size_of::<libc::clone_args>(),
        )
    };
    if ret == 0 {
        for (i, &fd) in raw.iter().enumerate() {
            // SAFETY: dup2 on descriptor numbers; the child exits if it fails.
            // `i` < HELPER_FDS.
            if unsafe { libc::dup2(fd, i as RawFd) } < 0 {
                // SAFETY: _exit never returns and is async-signal-safe.
                unsafe { libc::_exit(126) };
            }
        }
        // SAFETY: the argv and envp arrays are NULL-terminated and point to
        // C strings that live in this (copied) address space.
        unsafe {
            libc::execveat(
                exe_fd,
                c"".as_ptr(),
                argv_ptrs.as_ptr().cast(),
                envp.as_ptr().cast(),
                libc::AT_EMPTY_PATH,
            );
            libc::_exit(127);
        }
    }
    if ret < 0 {
        return Err(SysError::last("clone3", format!("flags {flags:#x}")));
    }
    // SAFETY: with CLONE_PIDFD the kernel stored a new descriptor we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(Spawned {
        pid: ret as libc::pid_t,
        pidfd,
    })
}

/// pidfd_send_signal(2).
pub fn pidfd_signal(pidfd: BorrowedFd<'_>, signal: i32) -> Result<()> {
    // SAFETY: a signal number and a pidfd; no pointers (info is NULL).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    check_long(ret, "pidfd_send_signal", || signal.to_string()).map(drop)
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStatus {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
}

/// waitid(P_PIDFD, WEXITED): reaps the child (blocks unless `nohang`).
pub fn wait_pidfd(pidfd: BorrowedFd<'_>, nohang: bool) -> Result<Option<WaitStatus>> {
    let mut flags = libc::WEXITED;
    if nohang {
        flags |= libc::WNOHANG;
    }
    loop {
        // SAFETY: siginfo_t is plain data, zero is valid.
        let mut info: libc::siginfo_t = unsafe { zeroed() };
        // SAFETY: `info` is a valid siginfo_t to fill.
        let ret = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                flags,
            )
        };
        if ret < 0 {
            let e = SysError::last("waitid", "P_PIDFD");
            if e.errno() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        // SAFETY: waitid filled the SIGCHLD fields of `info` (or left the pid
        // 0 under WNOHANG).
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        return Ok(Some(if info.si_code == libc::CLD_EXITED {
            WaitStatus::Exited(status)
        } else {
            WaitStatus::Signaled(status)
        }));
    }
}

/// unshare(2).
pub fn unshare(flags: libc::c_int) -> Result<()> {
    // SAFETY: plain flag argument.
    let ret = unsafe { libc::unshare(flags) };
    check(ret, "unshare", || format!("{flags:#x}")).map(drop)
}

/// setns(2) with a pidfd or a namespace file.
pub fn setns(fd: BorrowedFd<'_>, flags: libc::c_int) -> Result<()> {
    // SAFETY: plain arguments.
    let ret = unsafe { libc::setns(fd.as_raw_fd(), flags) };
    check(ret, "setns", || format!("{flags:#x}")).map(drop)
}

/// prctl(2) with integer arguments.
pub fn prctl(option: libc::c_int, arg2: libc::c_ulong, what: &str) -> Result<()> {
    // SAFETY: every option we use takes integer arguments only.
    let ret = unsafe {
        libc::prctl(
            option,
            arg2,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    check(ret, "prctl", || what.to_string()).map(drop)
}

/// capset(2) of this thread: (effective, permitted, inheritable) as 64-bit
/// masks.
pub fn capset(effective: u64, permitted: u64, inheritable: u64) -> Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let hdr = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let half = |m: u64, hi: bool| (if hi { m >> 32 } else { m & 0xffff_ffff }) as u32;
    let data = [false, true].map(|hi| Data {
        effective: half(effective, hi),
        permitted: half(permitted, hi),
        inheritable: half(inheritable, hi),
    });
    // SAFETY: version 3 takes a header and two data structs, as laid out.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &hdr, data.as_ptr()) };
    check_long(ret, "capset", || format!("{effective:#x}")).map(drop)
}

/// Installs a classic BPF seccomp filter (needs no_new_privs or
/// CAP_SYS_ADMIN).
pub fn seccomp_install(filter: &[libc::sock_filter]) -> Result<()> {
    let prog = libc::sock_fprog {
        len: filter.len() as libc::c_ushort,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points to `filter`, valid for the call; the kernel
    // copies the program.
    let ret = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            ptr::addr_of!(prog),
        )
    };
    check(ret, "prctl", || "PR_SET_SECCOMP".into()).map(drop)
}

/// setgroups, setresgid and setresuid, in that order.
pub fn set_ids(uid: u32, gid: u32, groups: &[u32]) -> Result<()> {
    // SAFETY: the pointer and length describe `groups`.
    let ret = unsafe { libc::setgroups(groups.len(), groups.as_ptr()) };
    check(ret, "setgroups", || format!("{groups:?}"))?;
    // SAFETY: plain ids.
    let ret = unsafe { libc::setresgid(gid, gid, gid) };
    check(ret, "setresgid", || gid.to_string())?;
    // SAFETY: plain ids.
    let ret = unsafe { libc::setresuid(uid, uid, uid) };
    check(ret, "setresuid", || uid.to_string()).map(drop)
}

/// Resets what a Rust process changes and programs expect at their defaults:
/// SIGPIPE's disposition and the signal mask.
pub fn reset_signals() -> Result<()> {
    // SAFETY: setting a standard disposition; sigset_t is plain data.
    unsafe {
        if libc::signal(libc::SIGPIPE, libc::SIG_DFL) == libc::SIG_ERR {
            return Err(SysError::last("signal", "SIGPIPE"));
        }
        let mut set: libc::sigset_t = zeroed();
        libc::sigemptyset(&mut set);
        let ret = libc::sigprocmask(libc::SIG_SETMASK, &set, ptr::null_mut());
        check(ret, "sigprocmask", || "empty".into()).map(drop)
    }
}

/// execve(2); returns only on failure.
pub fn execve(path: &CStr, argv: &[CString], env: &[CString]) -> SysError {
    let mut a: Vec<*const libc::c_char> = argv.iter().map(|s| s.as_ptr()).collect();
    a.push(ptr::null());
    let mut e: Vec<*const libc::c_char> = env.iter().map(|s| s.as_ptr()).collect();
    e.push(ptr::null());
    // SAFETY: NULL-terminated arrays of valid C strings.
    unsafe { libc::execve(path.as_ptr(), a.as_ptr(), e.as_ptr()) };
    SysError::last("execve", path.to_string_lossy())
}

/// The kernel release (`uname -r`).
pub fn kernel_release() -> String {
    // SAFETY: utsname is plain data; uname fills it.
    let mut u: libc::utsname = unsafe { zeroed() };
    // SAFETY: `u` is a valid utsname.
    if unsafe { libc::uname(&mut u) } < 0 {
        return String::from("unknown");
    }
    let bytes: Vec<u8> = u
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// statfs(2)'s file system magic.
pub fn fs_magic(path: &Path) -> Result<i64> {
    let c = cpath("statfs", path)?;
    // SAFETY: statfs is plain data; the call fills it.
    let mut s: libc::statfs = unsafe { zeroed() };
    // SAFETY: valid C string and struct.
    let ret = unsafe { libc::statfs(c.as_ptr(), &mut s) };
    check(ret, "statfs", || path.display().to_string())?;
    Ok(s.f_type)
}

/// Free bytes for root on the file system of `path`.
pub fn fs_free(path: &Path) -> Result<u64> {
    let c = cpath("statvfs", path)?;
    // SAFETY: statvfs is plain data; the call fills it.
    let mut s: libc::statvfs = unsafe { zeroed() };
    // SAFETY: valid C string and struct.
    let ret = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    check(ret, "statvfs", || path.display().to_string())?;
    Ok(s.f_bfree.saturating_mul(s.f_frsize))
}

/// ioctl(2) with an integer argument.
pub fn ioctl_int(
    fd: BorrowedFd<'_>,
    req: libc::c_ulong,
    arg: libc::c_ulong,
    what: &str,
) -> Result<i32> {
    // SAFETY: the requests we pass take an integer (or none).
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) };
    check(ret, "ioctl", || what.to_string())
}

/// ioctl(2) with a pointer to `T`, which the request reads or fills.
pub fn ioctl_ptr<T>(
    fd: BorrowedFd<'_>,
    req: libc::c_ulong,
    arg: &mut T,
    what: &str,
) -> Result<i32> {
    // SAFETY: the callers pair each request with the struct type it expects.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg as *mut T) };
    check(ret, "ioctl", || what.to_string())
}

/// Brings the loopback interface of this network namespace up.
pub fn loopback_up() -> Result<()> {
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(fd, "socket", || "AF_INET".into())?;
    // SAFETY: fd is a new descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; 16],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..2].copy_from_slice(b"lo");
    ioctl_ptr(
        sock.as_fd_ref(),
        libc::SIOCGIFFLAGS,
        &mut req,
        "SIOCGIFFLAGS lo",
    )?;
    req.flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    ioctl_ptr(
        sock.as_fd_ref(),
        libc::SIOCSIFFLAGS,
        &mut req,
        "SIOCSIFFLAGS lo",
    )
    .map(drop)
}

/// `as_fd` under a name that does not need the trait in scope.
pub trait AsFdRef {
    /// Borrows the descriptor.
    fn as_fd_ref(&self) -> BorrowedFd<'_>;
}

impl AsFdRef for OwnedFd {
    fn as_fd_ref(&self) -> BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(self)
    }
}

/// poll(2) on a set of descriptors; returns the revents, in order.
pub fn poll(fds: &[(RawFd, i16)], timeout_ms: i32) -> Result<Vec<i16>> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&(fd, events)| libc::pollfd {
            fd,
            events,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: `p` is a valid array of pollfd of the given length.
        let ret = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
        if ret < 0 {
            let e = SysError::last("poll", format!("{} fds", p.len()));
            if e.errno() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        return Ok(p.iter().map(|p| p.revents).collect());
    }
}

/// A listening AF_VSOCK stream socket on `port`, any CID.
pub fn vsock_listen(port: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; zero is valid.
    let mut addr: libc::sockaddr_vm = unsafe { zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    // SAFETY: `addr` is a valid sockaddr_vm of the size passed.
    let ret = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            ptr::addr_of!(addr).cast(),
            size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen on our socket.
    if unsafe { libc::listen(fd.as_raw_fd(), 128) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// accept4(SOCK_CLOEXEC) on a listening socket.
pub fn accept(listener: &OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: accept4 on our listening socket; the peer address is not
    // wanted (NULL).
    let c = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            ptr::null_mut(),
            ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if c < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(c) })
}

/// shutdown(SHUT_RD) of a socket (errors ignored: it is a wake-up).
pub fn shutdown_read(fd: RawFd) {
    // SAFETY: shutdown on a socket descriptor number.
    unsafe { libc::shutdown(fd, libc::SHUT_RD) };
}

/// SO_RCVTIMEO of a socket (None: block forever).
pub fn set_read_timeout(fd: RawFd, t: Option<std::time::Duration>) -> io::Result<()> {
    let tv = t.map_or(
        libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        |d| libc::timeval {
            tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_usec: libc::suseconds_t::from(d.subsec_micros()),
        },
    );
    // SAFETY: `tv` is a valid timeval of the size passed.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            ptr::addr_of!(tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
