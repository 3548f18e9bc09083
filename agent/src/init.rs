//! The container init helper: the agent binary re-executed as
//! `vmm-agent __init` in the container's fresh namespaces (or, for `exec`,
//! in a running container's). It reads an [`InitSpec`] from fd 3, sets the
//! container up and executes the command; on failure it writes one line
//! saying which step failed to fd 4 and exits 127. A successful exec closes
//! fd 4 (close-on-exec), which is how the agent learns the command started.

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::{symlink, DirBuilderExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sys::{self, SysError};
use crate::{caps, seccomp};

/// fd the spec arrives on.
pub const SPEC_FD: RawFd = 3;
/// fd errors go to.
pub const ERROR_FD: RawFd = 4;
/// fd of the container init's pidfd (exec).
pub const JOIN_FD: RawFd = 5;
/// `argv[1]` that makes the agent binary an init helper.
pub const INIT_ARG: &str = "__init";
/// Default `PATH` for commands.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const MAX_SPEC: u64 = 4 << 20;
const MAX_ID_FILE: u64 = 1 << 20;

/// What the helper does, sent by the agent as JSON on fd 3.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitSpec {
    /// A new container or a process in a running one.
    pub mode: InitMode,
    /// The command.
    pub argv: Vec<String>,
    /// `KEY=VALUE` (defaults are added here).
    pub env: Vec<String>,
    /// Working directory in the container.
    pub cwd: String,
    /// `user[:group]` or `uid[:gid]`; `None` is root.
    pub user: Option<String>,
}

/// See [`InitSpec::mode`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum InitMode {
    /// Set up the root file system and the namespaces' contents.
    Run {
        /// Directory holding the layer mounts (the helper `chdir`s there so
        /// that `lowerdir` can name them relatively and stay short).
        layers_dir: PathBuf,
        /// Layer mount names relative to `layers_dir`, top first.
        lowers: Vec<String>,
        /// overlayfs upperdir.
        upper: PathBuf,
        /// overlayfs workdir.
        work: PathBuf,
        /// Where to mount the overlay (the future root).
        root: PathBuf,
        /// The hostname.
        hostname: String,
    },
    /// Already in the container's namespaces: only the process's own set-up.
    Exec,
}

/// Errors of the helper (each names its step).
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A system call failed.
    #[error("{step}: {source}")]
    Sys {
        /// The step.
        step: &'static str,
        /// The call.
        #[source]
        source: SysError,
    },
    /// Anything else.
    #[error("{step}: {message}")]
    Other {
        /// The step.
        step: &'static str,
        /// What went wrong.
        message: String,
    },
}

type Result<T> = std::result::Result<T, InitError>;

trait Step<T> {
    fn step(self, step: &'static str) -> Result<T>;
}

impl<T> Step<T> for sys::Result<T> {
    fn step(self, step: &'static str) -> Result<T> {
        self.map_err(|source| InitError::Sys { step, source })
    }
}

fn other(step: &'static str, message: impl Into<String>) -> InitError {
    InitError::Other {
        step,
        message: message.into(),
    }
}

/// The helper's entry point; never returns.
pub fn main() -> ! {
    // Keep other processes of the container (for exec) away from us while we
    // still hold every capability.
    let _ = sys::prctl(libc::PR_SET_DUMPABLE, 0, "PR_SET_DUMPABLE");
    let err = match run() {
        Ok(never) => match never {},
        Err(e) => e,
    };
    // SAFETY: fd 4 is the error pipe the agent set up for us; we own it.
    let mut f = unsafe { fs::File::from_raw_fd(ERROR_FD) };
    let _ = writeln!(f, "{err}");
    std::process::exit(127)
}

enum Never {}

fn run() -> Result<Never> {
    sys::set_cloexec(ERROR_FD, true).step("error pipe")?;
    // SAFETY: fd 3 is the spec pipe the agent set up for us; we own it.
    let spec_file = unsafe { fs::File::from_raw_fd(SPEC_FD) };
    let mut json = Vec::new();
    spec_file
        .take(MAX_SPEC)
        .read_to_end(&mut json)
        .map_err(|e| other("read spec", e.to_string()))?;
    let spec: InitSpec =
        serde_json::from_slice(&json).map_err(|e| other("decode spec", e.to_string()))?;
    if let InitMode::Exec = spec.mode {
        // SAFETY: fd 5 is the container init's pidfd the agent passed us.
        let target = unsafe { std::os::fd::OwnedFd::from_raw_fd(JOIN_FD) };
        let ns = crate::container::ALL_NS & !libc::CLONE_NEWPID;
        sys::setns(std::os::fd::AsFd::as_fd(&target), ns)
            .step("join the container's namespaces")?;
    }
    sys::close_from(5);

    if let InitMode::Run {
        layers_dir,
        lowers,
        upper,
        work,
        root,
        hostname,
    } = &spec.mode
    {
        setup_root(layers_dir, lowers, upper, work, root)?;
        sys::sethostname(hostname).step("sethostname")?;
        sys::loopback_up().step("bring up lo")?;
        if !Path::new(&spec.cwd).exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&spec.cwd)
                .map_err(|e| other("create working directory", format!("{}: {e}", spec.cwd)))?;
        }
    }
    let user = resolve_user(spec.user.as_deref())?;
    let env = finish_env(&spec.env, &user.home);

    caps::drop_bounding().step("drop capabilities from the bounding set")?;
    sys::set_ids(user.uid, user.gid, &user.groups).step("switch user")?;
    caps::set_for_user(user.uid).step("set capabilities")?;
    sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS").step("no_new_privs")?;
    std::env::set_current_dir(&spec.cwd)
        .map_err(|e| other("chdir", format!("{}: {e}", spec.cwd)))?;
    let argv = cstrings(&spec.argv)?;
    let envc = cstrings(&env)?;
    let path_var = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
        .to_string();
    let candidates = candidates(&spec.argv[0], &path_var);
    seccomp::install().step("install the seccomp filter")?;
    sys::reset_signals().step("reset signals")?;
    let mut last: Option<SysError> = None;
    for c in candidates {
        let Ok(path) = CString::new(c.into_os_string().into_encoded_bytes()) else {
            continue;
        };
        let e = sys::execve(&path, &argv, &envc);
        let retry = matches!(e.errno(), Some(libc::ENOENT | libc::ENOTDIR | libc::EACCES));
        // Prefer reporting EACCES over a later ENOENT, as execvp does.
        if last.as_ref().and_then(SysError::errno) != Some(libc::EACCES) {
            last = Some(e);
        }
        if !retry {
            break;
        }
    }
    Err(match last {
        Some(source) => InitError::Sys {
            step: "execute the command",
            source,
        },
        None => other(
            "execute the command",
            format!("{:?} not found", spec.argv[0]),
        ),
    })
}

fn cstrings(v: &[String]) -> Result<Vec<CString>> {
    v.iter()
        .map(|s| CString::new(s.as_bytes()).map_err(|_| other("argv/env", "NUL byte")))
        .collect()
}

/// The paths to try for `argv0`: itself when it has a `/`, else each `PATH`
/// entry joined with it.
pub fn candidates(argv0: &str, path: &str) -> Vec<PathBuf> {
    if argv0.contains('/') {
        return vec![PathBuf::from(argv0)];
    }
    path.split(':')
        .map(|d| if d.is_empty() { "." } else { d })
        .map(|d| Path::new(d).join(argv0))
        .collect()
}

/// `env` plus the defaults: `PATH`, `HOME`.
pub fn finish_env(env: &[String], home: &str) -> Vec<String> {
    let has = |k: &str| {
        env.iter()
            .any(|e| e.split_once('=').is_some_and(|(n, _)| n == k))
    };
    let mut out = env.to_vec();
    if !has("PATH") {
        out.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has("HOME") {
        out.push(format!("HOME={home}"));
    }
    out
}

fn mkdir_in_root(p: &str) -> Result<()> {
    match fs::DirBuilder::new().mode(0o755).create(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && Path::new(p).is_dir() => Ok(()),
        Err(e) => Err(other("create mount point", format!("{p}: {e}"))),
    }
}

const NOSUID: libc::c_ulong = libc::MS_NOSUID;
const NODEV: libc::c_ulong = libc::MS_NODEV;
const NOEXEC: libc::c_ulong = libc::MS_NOEXEC;

/// overlayfs root, pivot_root, /proc, /dev, /sys.
fn setup_root(
    layers_dir: &Path,
    lowers: &[String],
    upper: &Path,
    work: &Path,
    root: &Path,
) -> Result<()> {
    sys::mount(
        "none",
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
    .step("make mounts private")?;
    std::env::set_current_dir(layers_dir).map_err(|e| {
        other(
            "chdir to the layers",
            format!("{}: {e}", layers_dir.display()),
        )
    })?;
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        upper.display(),
        work.display()
    );
    if opts.len() >= 4096 {
        return Err(other(
            "mount overlay",
            format!("{} bytes of options", opts.len()),
        ));
    }
    sys::mount("overlay", root, Some("overlay"), 0, Some(&opts)).step("mount the overlay root")?;
    std::env::set_current_dir(root)
        .map_err(|e| other("chdir to the root", format!("{}: {e}", root.display())))?;
    sys::pivot_root_cwd().step("pivot_root")?;
    std::env::set_current_dir("/").map_err(|e| other("chdir /", e.to_string()))?;

    // From here on, paths resolve inside the container: a hostile symlink in
    // the image can only redirect a mount within the container itself.
    for d in ["/proc", "/dev", "/sys"] {
        mkdir_in_root(d)?;
    }
    sys::mount(
        "proc",
        Path::new("/proc"),
        Some("proc"),
        NOSUID | NODEV | NOEXEC,
        None,
    )
    .step("mount /proc")?;
    sys::mount(
        "tmpfs",
        Path::new("/dev"),
        Some("tmpfs"),
        NOSUID | libc::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )
    .step("mount /dev")?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let p = Path::new("/dev").join(name);
        sys::mknod_char(&p, 0o666, major, minor).step("create a device node")?;
        sys::chmod(&p, 0o666).step("chmod a device node")?;
    }
    for (link, target) in [
        ("/dev/ptmx", "pts/ptmx"),
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, link).map_err(|e| other("create /dev links", format!("{link}: {e}")))?;
    }
    for d in ["/dev/pts", "/dev/shm"] {
        mkdir_in_root(d)?;
    }
    sys::mount(
        "devpts",
        Path::new("/dev/pts"),
        Some("devpts"),
        NOSUID | NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )
    .step("mount /dev/pts")?;
    sys::mount(
        "shm",
        Path::new("/dev/shm"),
        Some("tmpfs"),
        NOSUID | NODEV | NOEXEC,
        Some("mode=1777,size=65536k"),
    )
    .step("mount /dev/shm")?;
    sys::mount(
        "sysfs",
        Path::new("/sys"),
        Some("sysfs"),
        libc::MS_RDONLY | NOSUID | NODEV | NOEXEC,
        None,
    )
    .step("mount /sys")?;
    mask_paths()
}

/// Docker's masked and read-only paths: kernel interfaces a container's
/// root must not write (sysctls, sysrq) or read (kcore, keys).
fn mask_paths() -> Result<()> {
    for p in [
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
        "/proc/sys",
        "/proc/sysrq-trigger",
    ] {
        let path = Path::new(p);
        if !path.exists() {
            continue;
        }
        sys::mount(p, path, None, libc::MS_BIND | libc::MS_REC, None)
            .step("bind a read-only path")?;
        sys::mount(
            p,
            path,
            None,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | NOSUID | NODEV | NOEXEC,
            None,
        )
        .step("remount a path read-only")?;
    }
    for p in [
        "/proc/acpi",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/timer_list",
        "/proc/sched_debug",
        "/proc/scsi",
        "/sys/firmware",
        "/sys/devices/virtual/powercap",
    ] {
        let path = Path::new(p);
        if path.is_dir() {
            sys::mount("tmpfs", path, Some("tmpfs"), libc::MS_RDONLY, None)
                .step("mask a directory")?;
        } else if path.exists() {
            sys::mount("/dev/null", path, None, libc::MS_BIND, None).step("mask a file")?;
        }
    }
    Ok(())
}

/// The user a process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Home directory (for `HOME`).
    pub home: String,
}

fn read_small(path: &str) -> String {
    let mut s = String::new();
    if let Ok(f) = fs::File::open(path) {
        let _ = f.take(MAX_ID_FILE).read_to_string(&mut s);
    }
    s
}

fn resolve_user(spec: Option<&str>) -> Result<User> {
    resolve_user_in(spec, &read_small("/etc/passwd"), &read_small("/etc/group"))
}

/// Resolves `user[:group]` against passwd and group file contents: numeric
/// ids are taken as they are (a uid without a passwd entry gets gid 0, as in
/// docker), names must exist. Supplementary groups are those listing the
/// user by name (at most 64).
pub fn resolve_user_in(spec: Option<&str>, passwd: &str, group: &str) -> Result<User> {
    let spec = spec.unwrap_or("0");
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entries = passwd.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 7).then(|| {
            (
                f[0],
                f[2].parse::<u32>().ok(),
                f[3].parse::<u32>().ok(),
                f[5],
            )
        })
    });
    let mut found = None;
    for (name, uid, gid, home) in entries {
        let matches = match u.parse::<u32>() {
            Ok(n) => uid == Some(n),
            Err(_) => name == u,
        };
        if matches {
            found = Some((name.to_string(), uid, gid, home.to_string()));
            break;
        }
    }
    let (name, uid, pgid, home) = match (u.parse::<u32>(), found) {
        (Ok(n), Some((name, _, gid, home))) => (Some(name), n, gid.unwrap_or(0), home),
        (Ok(n), None) => (None, n, 0, "/".to_string()),
        (Err(_), Some((name, Some(uid), gid, home))) => (Some(name), uid, gid.unwrap_or(0), home),
        (Err(_), _) => {
            return Err(other(
                "resolve user",
                format!("no user {u:?} in /etc/passwd"),
            ))
        }
    };
    let groups_file: Vec<(&str, Option<u32>, Vec<&str>)> = group
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4).then(|| (f[0], f[2].parse().ok(), f[3].split(',').collect()))
        })
        .collect();
    let gid = match g {
        None => pgid,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups_file
                .iter()
                .find(|(n, _, _)| *n == g)
                .and_then(|(_, id, _)| *id)
                .ok_or_else(|| other("resolve group", format!("no group {g:?} in /etc/group")))?,
        },
    };
    let mut groups = vec![gid];
    if let Some(name) = &name {
        for (_, id, members) in &groups_file {
            if let Some(id) = id {
                if members.contains(&name.as_str()) && !groups.contains(id) && groups.len() < 64 {
                    groups.push(*id);
                }
            }
        }
    }
    let home = if home.is_empty() { "/".into() } else { home };
    Ok(User {
        uid,
        gid,
        groups,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnginx:x:101:101:nginx:/var/lib/nginx:/sbin/nologin\nbroken\n";
    const GROUP: &str = "root:x:0:\nadm:x:4:nginx,other\nnginx:x:101:\nwww:x:33:nginx\n";

    #[test]
    fn users_resolve_like_docker() {
        let r = |s| resolve_user_in(s, PASSWD, GROUP);
        let root = r(None).unwrap();
        assert_eq!((root.uid, root.gid, root.home.as_str()), (0, 0, "/root"));
        let n = r(Some("nginx")).unwrap();
        assert_eq!((n.uid, n.gid), (101, 101));
        assert_eq!(n.groups, [101, 4, 33]);
        assert_eq!(n.home, "/var/lib/nginx");
        let n = r(Some("101:adm")).unwrap();
        assert_eq!((n.uid, n.gid), (101, 4));
        let anon = r(Some("1234")).unwrap();
        assert_eq!(
            (
                anon.uid,
                anon.gid,
                anon.groups.as_slice(),
                anon.home.as_str()
            ),
            (1234, 0, &[0][..], "/")
        );
        let ids = r(Some("1000:1000")).unwrap();
        assert_eq!((ids.uid, ids.gid), (1000, 1000));
        assert!(r(Some("nobody")).is_err());
        assert!(r(Some("nginx:nogroup")).is_err());
    }

    #[test]
    fn env_defaults_and_path_search() {
        let env = finish_env(&["A=1".into()], "/root");
        assert!(env.contains(&format!("PATH={DEFAULT_PATH}")));
        assert!(env.contains(&"HOME=/root".to_string()));
        let env = finish_env(&["PATH=/x".into(), "HOME=/h".into()], "/root");
        assert_eq!(env, ["PATH=/x", "HOME=/h"]);
        assert_eq!(candidates("/bin/sh", "/a"), [PathBuf::from("/bin/sh")]);
        assert_eq!(
            candidates("ls", "/a::/b"),
            [
                PathBuf::from("/a/ls"),
                PathBuf::from("./ls"),
                PathBuf::from("/b/ls")
            ]
        );
    }
}
