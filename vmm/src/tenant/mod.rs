//! Tenant VMs: one VM per tenant running the guest agent, with containers
//! inside it (see docs/containers.md).
//!
//! A tenant has a state directory holding its vsock socket, its vmm's pid,
//! logs and its scratch disk. `up` starts a detached `vmm` for it and waits for
//! the agent to answer; `down` asks the guest to shut down (SIGTERM: Ctrl-Alt-Del)
//! and waits; [`run`] runs containers in it.

pub mod run;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vmm_agent::client;
use vmm_agent::protocol::{Request, Response, DEFAULT_PORT};

/// Errors of [`self`].
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    /// A tenant name with characters we do not allow.
    #[error("invalid tenant name '{0}': use 1 to 32 of a-z, A-Z, 0-9, '-', '_'")]
    Name(String),
    /// No guest kernel or agent rootfs was given.
    #[error("no {what}: pass {flag} or set {env} ({how})")]
    Missing {
        /// What is missing.
        what: &'static str,
        /// The option.
        flag: &'static str,
        /// The environment variable.
        env: &'static str,
        /// How to make one.
        how: &'static str,
    },
    /// A file operation in the state directory failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The scratch disk could not be made.
    #[error("cannot make the scratch disk {0}: mkfs.ext4 failed ({1})")]
    Scratch(PathBuf, String),
    /// The tenant's VM stopped or never answered.
    #[error("tenant {name}: {why}; its logs: {log}")]
    Boot {
        /// The tenant.
        name: String,
        /// What happened.
        why: String,
        /// The log to read.
        log: PathBuf,
    },
    /// The tenant is not running.
    #[error("tenant {0} is not running (start it with 'vmm tenant up {0}')")]
    NotRunning(String),
    /// Talking to the agent failed.
    #[error("tenant {0}: {1}")]
    Agent(String, client::ClientError),
}

/// How a tenant VM is made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TenantSpec {
    /// Guest kernel.
    pub kernel: PathBuf,
    /// The agent root file system (rootfs-tools/mkagentfs.sh).
    pub agentfs: PathBuf,
    /// Guest memory, e.g. "512M".
    pub mem: String,
    /// vCPUs.
    pub cpus: u32,
    /// Size of the scratch disk (sparse) in bytes.
    pub scratch_bytes: u64,
}

impl TenantSpec {
    /// A spec with the kernel and agent rootfs from the arguments or from
    /// `VMM_KERNEL` / `VMM_AGENTFS`.
    pub fn new(
        kernel: Option<PathBuf>,
        agentfs: Option<PathBuf>,
        mem: &str,
        cpus: u32,
    ) -> Result<Self, TenantError> {
        let kernel = kernel
            .or_else(|| std::env::var_os("VMM_KERNEL").map(PathBuf::from))
            .ok_or(TenantError::Missing {
                what: "guest kernel",
                flag: "--kernel",
                env: "VMM_KERNEL",
                how: "guest-kernel/build.sh prints where it built one",
            })?;
        let agentfs = agentfs
            .or_else(|| std::env::var_os("VMM_AGENTFS").map(PathBuf::from))
            .ok_or(TenantError::Missing {
                what: "agent root file system",
                flag: "--agentfs",
                env: "VMM_AGENTFS",
                how: "rootfs-tools/mkagentfs.sh builds one",
            })?;
        Ok(Self {
            kernel,
            agentfs,
            mem: mem.to_string(),
            cpus,
            scratch_bytes: 4 << 30,
        })
    }
}

/// Where tenants keep their state.
pub fn state_root() -> PathBuf {
    if let Some(d) = std::env::var_os("VMM_STATE_DIR") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("vmm")
}

/// Check a tenant name.
pub fn check_name(name: &str) -> Result<(), TenantError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(TenantError::Name(name.into()))
    }
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TenantError {
    let path = path.to_path_buf();
    move |source| TenantError::Io { what, path, source }
}

/// A tenant's state directory and the files in it.
#[derive(Clone, Debug)]
pub struct Tenant {
    /// Its name.
    pub name: String,
    /// Its state directory.
    pub dir: PathBuf,
}

impl Tenant {
    /// The tenant `name` under `root`.
    pub fn new(root: &Path, name: &str) -> Result<Self, TenantError> {
        check_name(name)?;
        Ok(Self {
            name: name.into(),
            dir: root.join("tenants").join(name),
        })
    }

    /// vmm's vsock Unix socket for this tenant.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("v.sock")
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("vmm.pid")
    }

    /// vmm's own log (stderr).
    pub fn vmm_log(&self) -> PathBuf {
        self.dir.join("vmm.log")
    }

    /// The guest console.
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    fn scratch(&self) -> PathBuf {
        self.dir.join("scratch.ext4")
    }

    /// The pid of its vmm, when one runs.
    pub fn running_pid(&self) -> Option<i32> {
        let pid: i32 = fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        // SAFETY: kill with signal 0 only checks that the process exists.
        let alive = pid > 0 && unsafe { libc::kill(pid, 0) } == 0;
        // A recycled pid would not be vmm: check its command line.
        let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let want = format!("socket={}", self.socket().display());
        let is_ours = cmd.split(|b| *b == 0).any(|a| a.ends_with(want.as_bytes()));
        (alive && is_ours).then_some(pid)
    }

    /// Ask the agent whether it answers.
    pub fn ping(&self, timeout: Duration) -> Result<Response, client::ClientError> {
        let mut s = client::connect_vsock(&self.socket(), DEFAULT_PORT, timeout)?;
        client::request(&mut s, &Request::Ping)
    }

    fn lock(&self) -> Result<File, TenantError> {
        let path = self.dir.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("cannot open", &path))?;
        // SAFETY: flock on an fd we own; blocks until the lock is ours.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) } != 0 {
            return Err(io_err("cannot lock", &path)(std::io::Error::last_os_error()));
        }
        Ok(f)
    }

    /// Start the tenant's VM unless it runs, and wait until its agent
    /// answers. `detached`: the VM outlives this process.
    pub fn up(
        &self,
        spec: &TenantSpec,
        detached: bool,
        timeout: Duration,
    ) -> Result<Option<Child>, TenantError> {
        fs::create_dir_all(&self.dir).map_err(io_err("cannot create", &self.dir))?;
        let _lock = self.lock()?;
        if self.running_pid().is_some() && self.ping(Duration::from_secs(5)).is_ok() {
            return Ok(None);
        }
        if !self.scratch().exists() {
            make_scratch(&self.scratch(), spec.scratch_bytes)?;
        }
        let log = File::create(self.vmm_log()).map_err(io_err("cannot create", &self.vmm_log()))?;
        let log2 = log
            .try_clone()
            .map_err(io_err("cannot open", &self.vmm_log()))?;
        // The VMM is the `vmm` binary next to this one (vmm-containers).
        let exe = std::env::current_exe()
            .map_err(io_err("cannot find", Path::new("/proc/self/exe")))?
            .with_file_name("vmm");
        let mut cmd = Command::new(exe);
        cmd.arg("--kernel")
            .arg(&spec.kernel)
            .arg("--rootfs")
            .arg(&spec.agentfs)
            .arg("--rootfs-ro")
            .arg("--disk")
            .arg(self.scratch())
            .arg("--vsock")
            .arg(format!("cid=3,socket={}", self.socket().display()))
            .arg("--mem")
            .arg(&spec.mem)
            .arg("--cpus")
            .arg(spec.cpus.to_string())
            .arg("--console")
            .arg(format!("file:{}", self.console_log().display()))
            .arg("-v")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        if detached {
            // SAFETY: setsid in the child before exec touches no parent state.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .spawn()
            .map_err(io_err("cannot start vmm for", &self.dir))?;
        fs::write(self.pid_file(), child.id().to_string())
            .map_err(io_err("cannot write", &self.pid_file()))?;
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                let _ = fs::remove_file(self.pid_file());
                return Err(TenantError::Boot {
                    name: self.name.clone(),
                    why: format!(
                        "its vmm exited ({st}) before the agent answered: {}",
                        last_line(&self.vmm_log())
                    ),
                    log: self.vmm_log(),
                });
            }
            if self.socket().exists() && self.ping(Duration::from_secs(2)).is_ok() {
                return Ok(if detached { None } else { Some(child) });
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                let _ = fs::remove_file(self.pid_file());
                return Err(TenantError::Boot {
                    name: self.name.clone(),
                    why: format!("the agent did not answer within {} s", timeout.as_secs()),
                    log: self.console_log(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Shut the tenant's VM down (SIGTERM, then SIGKILL after `timeout`).
    /// Returns false when it was not running.
    pub fn down(&self, timeout: Duration) -> Result<bool, TenantError> {
        let Some(pid) = self.running_pid() else {
            let _ = fs::remove_file(self.pid_file());
            return Ok(false);
        };
        // SAFETY: signalling a pid we checked is this tenant's vmm.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < timeout {
            // SAFETY: signal 0 only checks the process exists.
            if unsafe { libc::kill(pid, 0) } != 0 {
                let _ = fs::remove_file(self.pid_file());
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above; the guest did not stop in time.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = fs::remove_file(self.pid_file());
        Ok(true)
    }
}

/// The last non-empty line of a log, for error messages.
fn last_line(path: &Path) -> String {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(_) => return String::new(),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(4096)));
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

/// A sparse ext4 scratch disk for the agent's layers and container upper dirs.
fn make_scratch(path: &Path, bytes: u64) -> Result<(), TenantError> {
    let tmp = path.with_extension("tmp");
    let f = File::create(&tmp).map_err(io_err("cannot create", &tmp))?;
    f.set_len(bytes).map_err(io_err("cannot size", &tmp))?;
    drop(f);
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "scratch", "-E", "nodiscard"])
        .arg(&tmp)
        .output()
        .map_err(|e| TenantError::Scratch(path.into(), e.to_string()))?;
    if !out.status.success() {
        let _ = fs::remove_file(&tmp);
        return Err(TenantError::Scratch(
            path.into(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    fs::rename(&tmp, path).map_err(io_err("cannot rename", &tmp))
}

/// All tenants under `root` with whether each runs.
pub fn list(root: &Path) -> Vec<(String, Option<i32>)> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(root.join("tenants")) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Ok(t) = Tenant::new(root, &name) {
                out.push((name, t.running_pid()));
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "tenant-1", "A_b-9", &"x".repeat(32)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "../x", "a/b", "a b", "ä", &"x".repeat(33), "."] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn missing_kernel_names_the_fix() {
        std::env::remove_var("VMM_KERNEL");
        let e = TenantSpec::new(None, Some("a".into()), "512M", 1).unwrap_err();
        assert!(e.to_string().contains("--kernel"), "{e}");
    }

    #[test]
    fn stopped_tenant_is_not_running() {
        let root = std::env::temp_dir().join(format!("vmm-tenant-test-{}", std::process::id()));
        let t = Tenant::new(&root, "t1").unwrap();
        fs::create_dir_all(&t.dir).unwrap();
        // A pid that exists but is not this tenant's vmm.
        fs::write(t.dir.join("vmm.pid"), std::process::id().to_string()).unwrap();
        assert_eq!(t.running_pid(), None);
        assert!(!t.down(Duration::from_secs(1)).unwrap());
        assert_eq!(list(&root), vec![("t1".to_string(), None)]);
        fs::remove_dir_all(&root).unwrap();
    }
}
