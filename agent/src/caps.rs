//! Capabilities of container processes: docker's default set.

use crate::sys::{self, SysError};

/// Capability numbers (linux/capability.h).
pub mod cap {
    /// CAP_CHOWN.
    pub const CHOWN: u32 = 0;
    /// CAP_DAC_OVERRIDE.
    pub const DAC_OVERRIDE: u32 = 1;
    /// CAP_FOWNER.
    pub const FOWNER: u32 = 3;
    /// CAP_FSETID.
    pub const FSETID: u32 = 4;
    /// CAP_KILL.
    pub const KILL: u32 = 5;
    /// CAP_SETGID.
    pub const SETGID: u32 = 6;
    /// CAP_SETUID.
    pub const SETUID: u32 = 7;
    /// CAP_SETPCAP.
    pub const SETPCAP: u32 = 8;
    /// CAP_NET_BIND_SERVICE.
    pub const NET_BIND_SERVICE: u32 = 10;
    /// CAP_NET_RAW.
    pub const NET_RAW: u32 = 13;
    /// CAP_SYS_CHROOT.
    pub const SYS_CHROOT: u32 = 18;
    /// CAP_MKNOD.
    pub const MKNOD: u32 = 27;
    /// CAP_AUDIT_WRITE.
    pub const AUDIT_WRITE: u32 = 29;
    /// CAP_SETFCAP.
    pub const SETFCAP: u32 = 31;
}

/// Docker's default capability set (no CAP_SYS_ADMIN, CAP_SYS_MODULE,
/// CAP_SYS_PTRACE, CAP_NET_ADMIN, CAP_SYS_TIME, CAP_SYS_BOOT, ...).
pub const DEFAULT: &[u32] = &[
    cap::CHOWN,
    cap::DAC_OVERRIDE,
    cap::FOWNER,
    cap::FSETID,
    cap::KILL,
    cap::SETGID,
    cap::SETUID,
    cap::SETPCAP,
    cap::NET_BIND_SERVICE,
    cap::NET_RAW,
    cap::SYS_CHROOT,
    cap::MKNOD,
    cap::AUDIT_WRITE,
    cap::SETFCAP,
];

/// [`DEFAULT`] as a bit mask.
pub fn default_mask() -> u64 {
    DEFAULT.iter().fold(0, |m, &c| m | (1u64 << c))
}

/// Drops every capability outside [`DEFAULT`] from the bounding set (needs
/// CAP_SETPCAP) and clears the ambient set.
pub fn drop_bounding() -> Result<(), SysError> {
    let keep = default_mask();
    for c in 0..64u32 {
        if keep & (1u64 << c) != 0 {
            continue;
        }
        match sys::prctl(
            libc::PR_CAPBSET_DROP,
            libc::c_ulong::from(c),
            "PR_CAPBSET_DROP",
        ) {
            Ok(()) => {}
            // Past the kernel's last capability.
            Err(e) if e.errno() == Some(libc::EINVAL) => break,
            Err(e) => return Err(e),
        }
    }
    sys::prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
        "PR_CAP_AMBIENT_CLEAR_ALL",
    )
}

/// Sets the effective and permitted sets after the switch to the container
/// user: [`DEFAULT`] for uid 0, nothing for others (the kernel already
/// cleared them on setuid); the inheritable set is always empty.
pub fn set_for_user(uid: u32) -> Result<(), SysError> {
    let m = if uid == 0 { default_mask() } else { 0 };
    sys::capset(m, m, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_set_is_dockers() {
        // CapBnd of `docker run alpine grep Cap /proc/self/status`.
        assert_eq!(default_mask(), 0x0000_0000_a804_25fb);
    }
}
