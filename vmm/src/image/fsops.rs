//! Small typed wrappers around the `*at` system calls extraction needs.
//! Every name is a single path component relative to a directory fd, and
//! nothing here follows a symbolic link in its last component; callers reach
//! the directory itself by opening one component at a time with
//! [`open_dir_at`] (which refuses symbolic links), so no path ever resolves
//! through a link planted by the image.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::SystemTime;

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn open_at(
    dir: &impl AsRawFd,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<File> {
    // SAFETY: `name` is a valid NUL-terminated string, `dir` a live fd; the
    // returned fd is new and owned by nobody else.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            libc::c_uint::from(mode),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat and is owned by us alone.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Open the directory `name` in `dir`; fails (ELOOP/ENOTDIR) on anything
/// that is not a directory, including a symbolic link to one.
pub fn open_dir_at(dir: &impl AsRawFd, name: &CStr) -> io::Result<File> {
    open_at(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
}

/// Open the regular file `name` in `dir` for reading, not through a link.
pub fn open_file_at(dir: &impl AsRawFd, name: &CStr) -> io::Result<File> {
    open_at(dir, name, libc::O_RDONLY, 0)
}

/// Create the new regular file `name` in `dir` (mode 0600, must not exist).
pub fn create_file_at(dir: &impl AsRawFd, name: &CStr) -> io::Result<File> {
    open_at(
        dir,
        name,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
        0o600,
    )
}

/// Create the directory `name` in `dir` with `mode`.
pub fn mkdir_at(dir: &impl AsRawFd, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: valid fd and NUL-terminated name; no memory is handed over.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) })
}

/// Create the symbolic link `name` in `dir` pointing at `target`.
pub fn symlink_at(target: &CStr, dir: &impl AsRawFd, name: &CStr) -> io::Result<()> {
    // SAFETY: valid fd and NUL-terminated strings.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })
}

/// Hard-link `old_name` in `old_dir` (not following a link) as `name` in `dir`.
pub fn link_at(
    old_dir: &impl AsRawFd,
    old_name: &CStr,
    dir: &impl AsRawFd,
    name: &CStr,
) -> io::Result<()> {
    // SAFETY: valid fds and NUL-terminated names; flags 0 = do not follow.
    check(unsafe {
        libc::linkat(
            old_dir.as_raw_fd(),
            old_name.as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
            0,
        )
    })
}

/// Create the device node or fifo `name` in `dir` (`kind` is `S_IFCHR`,
/// `S_IFBLK` or `S_IFIFO`), then set its permission bits to `perm` (mknod is
/// subject to the umask).
pub fn mknod_at(
    dir: &impl AsRawFd,
    name: &CStr,
    kind: libc::mode_t,
    perm: libc::mode_t,
    major: u32,
    minor: u32,
) -> io::Result<()> {
    let dev = libc::makedev(major, minor);
    // SAFETY: valid fd and NUL-terminated name.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), kind | perm, dev) })?;
    // SAFETY: as above. `name` is the node just created in a directory only
    // this process writes to, so the path cannot have become a link.
    check(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), perm, 0) })
}

/// `lstat` of `name` in `dir`; `None` if it does not exist.
pub fn stat_at(dir: &impl AsRawFd, name: &CStr) -> io::Result<Option<libc::stat>> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, NUL-terminated name, `st` is writable and sized right.
    let ret = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    match check(ret) {
        Ok(()) => Ok(Some(st)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Remove the non-directory `name` (or the empty directory, with `dir_flag`).
pub fn unlink_at(dir: &impl AsRawFd, name: &CStr, dir_flag: bool) -> io::Result<()> {
    let flags = if dir_flag { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: valid fd and NUL-terminated name.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })
}

/// Change the owner of `name` in `dir` itself (never a link's target).
pub fn lchown_at(dir: &impl AsRawFd, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: valid fd and NUL-terminated name.
    check(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// Set the access and modification times of `name` in `dir` itself.
pub fn set_times_at(dir: &impl AsRawFd, name: &CStr, mtime: SystemTime) -> io::Result<()> {
    let ts = timespec(mtime);
    let times = [ts, ts];
    // SAFETY: valid fd, NUL-terminated name, `times` is two timespecs.
    check(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            name.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

fn timespec(t: SystemTime) -> libc::timespec {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    libc::timespec {
        tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(d.subsec_nanos()),
    }
}

/// Set the extended attribute `name` on the open file `file`.
pub fn set_xattr(file: &File, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: valid fd, NUL-terminated name, `value` is readable for its length.
    check(unsafe {
        libc::fsetxattr(
            file.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

/// Take an exclusive `flock` on `file` (blocking, or failing with
/// `WouldBlock` when `wait` is false). Released when the file is closed.
pub fn lock(file: &File, wait: bool) -> io::Result<()> {
    let op = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    loop {
        // SAFETY: valid fd; flock touches no memory.
        match check(unsafe { libc::flock(file.as_raw_fd(), op) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}
