//! The containers' seccomp filter: a deny list in classic BPF.
//!
//! Written by hand rather than with `seccompiler` because a deny list needs
//! two things that crate's rule model does not express: refusing the whole
//! x32 syscall range (numbers with bit 30 set reach the same kernel entry
//! points, so an x32 `kexec_load` would slip past a list of x86-64 numbers)
//! and a syscall answered with `ENOSYS` (`clone3`, whose flags live in
//! memory the filter cannot read, so that libc falls back to `clone`, whose
//! flags it can).
//!
//! The program:
//! 1. `arch != AUDIT_ARCH_X86_64` (i386 `int 0x80`) → `ENOSYS`;
//! 2. `nr >= 0x40000000` (x32) → `ENOSYS`;
//! 3. each denied syscall → `EPERM`;
//! 4. `clone`/`unshare` with `CLONE_NEWUSER` → `EPERM` (user namespaces
//!    need no capability, so dropping capabilities does not stop them);
//!    `socket`/`socketpair` of `AF_VSOCK` → `EPERM` (vsock ignores network
//!    namespaces: it would reach the host and the agent's port);
//! 5. anything else → allowed.

/// `AUDIT_ARCH_X86_64`: `EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`.
pub const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
/// The x32 ABI's syscall number bit.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Syscalls the containers get `EPERM` for, with their names (for docs and
/// tests).
pub const DENIED: &[(&str, libc::c_long)] = &[
    // Kernel modules and kexec.
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("reboot", libc::SYS_reboot),
    // Swap, accounting, quotas, obsolete interfaces.
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("acct", libc::SYS_acct),
    ("quotactl", libc::SYS_quotactl),
    ("quotactl_fd", libc::SYS_quotactl_fd),
    ("nfsservctl", libc::SYS_nfsservctl),
    ("uselib", libc::SYS_uselib),
    ("_sysctl", libc::SYS__sysctl),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("vhangup", libc::SYS_vhangup),
    ("syslog", libc::SYS_syslog),
    // Kernel attack surface: BPF, perf, keyrings, userfaultfd, io_uring.
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    // File handles (escape by inode number), raw I/O ports.
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("iopl", libc::SYS_iopl),
    ("ioperm", libc::SYS_ioperm),
    // Clocks.
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("settimeofday", libc::SYS_settimeofday),
    ("adjtimex", libc::SYS_adjtimex),
    // Mounts and namespaces (also refused by the missing CAP_SYS_ADMIN).
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("setns", libc::SYS_setns),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("mount_setattr", libc::SYS_mount_setattr),
];

const RET_ALLOW: u32 = 0x7fff_0000; // SECCOMP_RET_ALLOW
const RET_ERRNO: u32 = 0x0005_0000; // SECCOMP_RET_ERRNO

// Offsets in struct seccomp_data.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARG0_LO: u32 = 16; // little endian: the low word of args[0]

// Opcodes (linux/bpf_common.h): class | size | mode / op | source.
const LD_W_ABS: u16 = 0x20; // BPF_LD (0) | BPF_W (0) | BPF_ABS
const JEQ_K: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
const JGE_K: u16 = 0x05 | 0x30; // BPF_JMP | BPF_JGE | BPF_K
const JSET_K: u16 = 0x05 | 0x40; // BPF_JMP | BPF_JSET | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K
#[cfg(test)]
const CLASS_JMP: u16 = 0x05;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

fn nr(n: libc::c_long) -> u32 {
    // x86-64 syscall numbers are small and positive.
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Builds the filter program.
pub fn filter() -> Vec<libc::sock_filter> {
    let errno = |e: i32| RET_ERRNO | (e as u32 & 0xffff);
    let mut p = vec![
        stmt(LD_W_ABS, OFF_ARCH),
        jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(RET_K, errno(libc::ENOSYS)),
        stmt(LD_W_ABS, OFF_NR),
        jump(JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(RET_K, errno(libc::ENOSYS)),
        jump(JEQ_K, nr(libc::SYS_clone3), 0, 1),
        stmt(RET_K, errno(libc::ENOSYS)),
    ];
    for &(_, n) in DENIED {
        p.push(jump(JEQ_K, nr(n), 0, 1));
        p.push(stmt(RET_K, errno(libc::EPERM)));
    }
    // Argument checks: load args[0] once the number matched.
    // clone(flags, ...) and unshare(flags): CLONE_NEWUSER.
    for n in [libc::SYS_clone, libc::SYS_unshare] {
        p.push(jump(JEQ_K, nr(n), 0, 4));
        p.push(stmt(LD_W_ABS, OFF_ARG0_LO));
        p.push(jump(JSET_K, libc::CLONE_NEWUSER as u32, 0, 1));
        p.push(stmt(RET_K, errno(libc::EPERM)));
        p.push(stmt(RET_K, RET_ALLOW));
    }
    // socket(domain, ...) and socketpair(domain, ...): AF_VSOCK.
    for n in [libc::SYS_socket, libc::SYS_socketpair] {
        p.push(jump(JEQ_K, nr(n), 0, 4));
        p.push(stmt(LD_W_ABS, OFF_ARG0_LO));
        p.push(jump(JEQ_K, libc::AF_VSOCK as u32, 0, 1));
        p.push(stmt(RET_K, errno(libc::EPERM)));
        p.push(stmt(RET_K, RET_ALLOW));
    }
    p.push(stmt(RET_K, RET_ALLOW));
    p
}

/// Installs [`filter`] on the calling thread (no_new_privs must be set).
pub fn install() -> crate::sys::Result<()> {
    crate::sys::seccomp_install(&filter())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the classic BPF subset the filter uses over a seccomp_data.
    fn run(prog: &[libc::sock_filter], arch: u32, nr: u32, arg0: u64) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        data[16..24].copy_from_slice(&arg0.to_le_bytes());
        let mut acc = 0u32;
        let mut pc = 0usize;
        for _ in 0..10_000 {
            let i = prog[pc];
            let k = i.k;
            let skip = |cond: bool| usize::from(if cond { i.jt } else { i.jf });
            pc += 1;
            match i.code {
                LD_W_ABS => {
                    let o = k as usize;
                    acc = u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
                }
                JEQ_K => pc += skip(acc == k),
                JGE_K => pc += skip(acc >= k),
                JSET_K => pc += skip(acc & k != 0),
                RET_K => return k,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
        panic!("no return");
    }

    fn sys(n: libc::c_long, arg0: u64) -> u32 {
        run(&filter(), AUDIT_ARCH_X86_64, nr(n), arg0)
    }

    const EPERM: u32 = RET_ERRNO | libc::EPERM as u32;
    const ENOSYS: u32 = RET_ERRNO | libc::ENOSYS as u32;

    #[test]
    fn denied_syscalls_get_eperm() {
        for &(name, n) in DENIED {
            assert_eq!(sys(n, 0), EPERM, "{name}");
        }
    }

    #[test]
    fn ordinary_syscalls_pass() {
        for n in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_exit_group,
            libc::SYS_mmap,
            libc::SYS_ptrace,
            libc::SYS_setuid,
            libc::SYS_wait4,
        ] {
            assert_eq!(sys(n, 0), RET_ALLOW, "{n}");
        }
    }

    #[test]
    fn foreign_abis_are_refused() {
        let prog = filter();
        // i386 (int 0x80): AUDIT_ARCH_I386 = EM_386 | LE.
        assert_eq!(run(&prog, 3 | 0x4000_0000, 1, 0), ENOSYS);
        // x32: the same numbers with bit 30.
        let x32 = X32_SYSCALL_BIT | nr(libc::SYS_kexec_load);
        assert_eq!(run(&prog, AUDIT_ARCH_X86_64, x32, 0), ENOSYS);
        assert_eq!(sys(libc::SYS_clone3, 0), ENOSYS);
    }

    #[test]
    fn argument_checks() {
        let newuser = libc::CLONE_NEWUSER as u64;
        let thread = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
        assert_eq!(sys(libc::SYS_clone, newuser | 0x11), EPERM);
        assert_eq!(sys(libc::SYS_clone, thread), RET_ALLOW);
        assert_eq!(sys(libc::SYS_unshare, newuser), EPERM);
        assert_eq!(sys(libc::SYS_unshare, libc::CLONE_FILES as u64), RET_ALLOW);
        assert_eq!(sys(libc::SYS_socket, libc::AF_VSOCK as u64), EPERM);
        assert_eq!(sys(libc::SYS_socketpair, libc::AF_VSOCK as u64), EPERM);
        assert_eq!(sys(libc::SYS_socket, libc::AF_INET as u64), RET_ALLOW);
        assert_eq!(sys(libc::SYS_socket, libc::AF_UNIX as u64), RET_ALLOW);
    }

    #[test]
    fn jumps_stay_in_range() {
        let prog = filter();
        assert!(prog.len() < 4096, "BPF_MAXINSNS");
        for (i, ins) in prog.iter().enumerate() {
            if ins.code & 0x07 == CLASS_JMP {
                assert!(i + 1 + usize::from(ins.jt.max(ins.jf)) < prog.len(), "{i}");
            }
        }
        assert_eq!(prog.last().map(|i| (i.code, i.k)), Some((RET_K, RET_ALLOW)));
    }
}
