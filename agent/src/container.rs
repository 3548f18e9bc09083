//! Containers, agent side: set-up, the init helper's start, the registry
//! behind `ps`, and clean-up. The process I/O is in [`crate::stream`].

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{self, File};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::cgroup::{Cgroup, CgroupError, Hierarchy};
use crate::init::{InitMode, InitSpec, INIT_ARG};
use crate::layers::LayerStore;
use crate::protocol::{
    digest_hex, ContainerInfo, ContainerState, ExecSpec, ExitStatus, ProtocolError, RunSpec,
};
use crate::sys::{self, SysError, WaitStatus};

/// Most exited containers remembered for `ps`.
pub const MAX_EXITED: usize = 256;
/// How long the helper may take to set a container up.
const SETUP_TIMEOUT_MS: i32 = 60_000;
/// The namespaces of a container.
pub const ALL_NS: libc::c_int = libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWNET;

/// Errors of starting and tracking containers.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The request was not acceptable.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// A container with this id is running.
    #[error("container {0} is already running")]
    Exists(String),
    /// No running container has this id.
    #[error("no running container {0}")]
    NotRunning(String),
    /// A layer is not stored.
    #[error("layer {0} is not present (put_layer it first)")]
    MissingLayer(String),
    /// A cgroup step failed.
    #[error("container {id}: {source}")]
    Cgroup {
        /// The container.
        id: String,
        /// What failed.
        #[source]
        source: CgroupError,
    },
    /// A system call failed.
    #[error("container {id}: {step}: {source}")]
    Sys {
        /// The container.
        id: String,
        /// The step.
        step: &'static str,
        /// The call.
        #[source]
        source: SysError,
    },
    /// A file operation failed.
    #[error("container {id}: {step} {path}: {source}")]
    Io {
        /// The container.
        id: String,
        /// The step.
        step: &'static str,
        /// Where.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The init helper reported a failure (or did not answer).
    #[error("container {id}: {message}")]
    Setup {
        /// The container.
        id: String,
        /// The helper's message.
        message: String,
    },
}

type Result<T> = std::result::Result<T, ContainerError>;

struct Entry {
    info: ContainerInfo,
    pidfd: Option<Arc<OwnedFd>>,
    cgroup: Option<Arc<Cgroup>>,
    user: Option<String>,
    seq: u64,
}

/// The containers of this agent.
pub struct Containers {
    entries: Mutex<HashMap<String, Entry>>,
    seq: Mutex<u64>,
    hierarchy: Hierarchy,
    dir: PathBuf,
    exe: OwnedFd,
}

/// A started process: what [`crate::stream`] needs to run its I/O.
pub struct Started {
    /// Its pid.
    pub pid: i32,
    /// Its pidfd.
    pub pidfd: Arc<OwnedFd>,
    /// Its stdin (None when stdin is /dev/null).
    pub stdin: Option<OwnedFd>,
    /// Its stdout.
    pub stdout: OwnedFd,
    /// Its stderr.
    pub stderr: OwnedFd,
    /// The container's cgroup.
    pub cgroup: Arc<Cgroup>,
    /// OOM kills counted before the process started.
    pub oom_base: u64,
}

impl Containers {
    /// Containers under `<state>/containers`, cgroups in `hierarchy`, started
    /// through the agent binary `exe` (an open fd of it).
    pub fn new(state: &Path, hierarchy: Hierarchy, exe: OwnedFd) -> std::io::Result<Self> {
        let dir = state.join("containers");
        if dir.exists() {
            // Leftovers of a previous agent: their processes are gone.
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir_all(&dir)?;
        // The helper's fds 0-4 are set up by dup2 before the exec through
        // this descriptor: keep it out of their way.
        let exe = sys::dup_min(exe.as_fd(), sys::HELPER_FDS).map_err(|e| e.source)?;
        Ok(Self {
            entries: Mutex::new(HashMap::new()),
            seq: Mutex::new(0),
            hierarchy,
            dir,
            exe,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next_seq(&self) -> u64 {
        let mut s = self.seq.lock().unwrap_or_else(|p| p.into_inner());
        *s += 1;
        *s
    }

    /// `ps`: every known container, by id.
    pub fn list(&self) -> Vec<ContainerInfo> {
        let mut v: Vec<ContainerInfo> = self.lock().values().map(|e| e.info.clone()).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Starts container `spec.id`: registry entry, directories, cgroup, the
    /// init helper in new namespaces, which mounts the root and executes the
    /// command. On success the container is `running`; the caller streams
    /// its I/O and then calls [`Containers::finish_run`].
    pub fn start_run(&self, spec: &RunSpec, layers: &LayerStore) -> Result<Started> {
        spec.validate()?;
        let id = spec.id.clone();
        let mut lowers = Vec::new();
        for l in spec.layers.iter().rev() {
            let hex = digest_hex("layers", l)?;
            if !layers.has(hex) {
                return Err(ContainerError::MissingLayer(l.clone()));
            }
            lowers.push(hex.to_string());
        }
        {
            let mut map = self.lock();
            if let Some(e) = map.get(&id) {
                if e.info.state != ContainerState::Exited {
                    return Err(ContainerError::Exists(id));
                }
            }
            let seq = self.next_seq();
            map.insert(
                id.clone(),
                Entry {
                    info: ContainerInfo {
                        id: id.clone(),
                        pid: 0,
                        argv: spec.argv.clone(),
                        state: ContainerState::Starting,
                        exit: None,
                        error: None,
                    },
                    pidfd: None,
                    cgroup: None,
                    user: spec.user.clone(),
                    seq,
                },
            );
        }
        match self.start_run_inner(spec, layers, lowers) {
            Ok(s) => {
                if let Some(e) = self.lock().get_mut(&id) {
                    e.info.state = ContainerState::Running;
                    e.info.pid = s.pid;
                    e.pidfd = Some(s.pidfd.clone());
                    e.cgroup = Some(s.cgroup.clone());
                }
                Ok(s)
            }
            Err(err) => {
                self.cleanup_dir(&id);
                self.mark_exited(&id, None, Some(err.to_string()));
                Err(err)
            }
        }
    }

    fn start_run_inner(
        &self,
        spec: &RunSpec,
        layers: &LayerStore,
        lowers: Vec<String>,
    ) -> Result<Started> {
        let id = &spec.id;
        let cdir = self.dir.join(id);
        let io = |step, path: &Path| {
            let (id, path) = (id.clone(), path.to_path_buf());
            move |source| ContainerError::Io {
                id,
                step,
                path,
                source,
            }
        };
        if cdir.exists() {
            fs::remove_dir_all(&cdir).map_err(io("remove leftover", &cdir))?;
        }
        let (upper, work, root) = (cdir.join("upper"), cdir.join("work"), cdir.join("root"));
        for d in [&upper, &work, &root] {
            fs::create_dir_all(d).map_err(io("mkdir", d))?;
        }
        let cgroup =
            self.hierarchy
                .create(id, &spec.limits)
                .map_err(|source| ContainerError::Cgroup {
                    id: id.clone(),
                    source,
                })?;
        let init = InitSpec {
            mode: InitMode::Run {
                layers_dir: layers.mounts().to_path_buf(),
                lowers,
                upper,
                work,
                root,
                hostname: spec.hostname.clone().unwrap_or_else(|| id.clone()),
            },
            argv: spec.argv.clone(),
            env: spec.env.clone(),
            cwd: spec.cwd.clone().unwrap_or_else(|| "/".into()),
            user: spec.user.clone(),
        };
        let cgroup = Arc::new(cgroup);
        let res = self.spawn(id, &init, spec.stdin, cgroup.clone(), None);
        if res.is_err() {
            let _ = cgroup.remove_within(Duration::from_secs(5));
        }
        res
    }

    /// Starts a process in running container `spec.id` (its namespaces and
    /// cgroup; its user unless `spec.user` says otherwise).
    pub fn start_exec(&self, spec: &ExecSpec) -> Result<Started> {
        spec.validate()?;
        let (pidfd, cgroup, user) = {
            let map = self.lock();
            match map.get(&spec.id) {
                Some(Entry {
                    info:
                        ContainerInfo {
                            state: ContainerState::Running,
                            ..
                        },
                    pidfd: Some(p),
                    cgroup: Some(c),
                    user,
                    ..
                }) => (p.clone(), c.clone(), user.clone()),
                _ => return Err(ContainerError::NotRunning(spec.id.clone())),
            }
        };
        let init = InitSpec {
            mode: InitMode::Exec,
            argv: spec.argv.clone(),
            env: spec.env.clone(),
            cwd: spec.cwd.clone().unwrap_or_else(|| "/".into()),
            user: spec.user.clone().or(user),
        };
        self.spawn(&spec.id, &init, spec.stdin, cgroup, Some(pidfd))
    }

    /// Clones the helper (into new namespaces, or those of `join`'s
    /// process), puts it in the cgroup, sends the spec and waits for the
    /// exec (or the helper's error).
    fn spawn(
        &self,
        id: &str,
        init: &InitSpec,
        with_stdin: bool,
        cgroup: Arc<Cgroup>,
        join: Option<Arc<OwnedFd>>,
    ) -> Result<Started> {
        let sys_err = |step| {
            let id = id.to_string();
            move |source| ContainerError::Sys { id, step, source }
        };
        let (in_r, in_w) = if with_stdin {
            let (r, w) = sys::pipe().map_err(sys_err("stdin pipe"))?;
            (r, Some(w))
        } else {
            let null = File::open("/dev/null").map_err(|source| ContainerError::Io {
                id: id.to_string(),
                step: "open",
                path: "/dev/null".into(),
                source,
            })?;
            (OwnedFd::from(null), None)
        };
        let (out_r, out_w) = sys::pipe().map_err(sys_err("stdout pipe"))?;
        let (err_r, err_w) = sys::pipe().map_err(sys_err("stderr pipe"))?;
        let (spec_r, spec_w) = sys::pipe().map_err(sys_err("spec pipe"))?;
        let (fail_r, fail_w) = sys::pipe().map_err(sys_err("error pipe"))?;
        // fd 5: what the helper joins for exec (unused for run).
        let join_fd = join.as_deref().unwrap_or(&in_r);
        let child_fds = [&in_r, &out_w, &err_w, &spec_r, &fail_w, join_fd]
            .map(|fd| sys::dup_min(fd.as_fd(), sys::HELPER_FDS))
            .into_iter()
            .collect::<sys::Result<Vec<OwnedFd>>>()
            .map_err(sys_err("helper fds"))?;
        let fds: Vec<_> = child_fds.iter().map(|f| f.as_fd()).collect();
        let argv = [c"vmm-agent".to_owned(), CString::from(c"__init")];
        debug_assert_eq!(INIT_ARG, "__init");
        let spawned = match &join {
            None => sys::spawn_helper(self.exe.as_fd(), &argv, &fds, ALL_NS as u64),
            Some(target) => {
                // The helper must start in the container's pid namespace,
                // which only a clone can enter: a short-lived thread sets its
                // pid_for_children and clones the helper. The helper itself
                // then joins the mount, UTS, IPC and network namespaces
                // (after its exec, so a dynamically linked agent still finds
                // its libraries).
                std::thread::scope(|s| {
                    s.spawn(|| {
                        sys::setns(target.as_fd(), libc::CLONE_NEWPID)?;
                        sys::spawn_helper(self.exe.as_fd(), &argv, &fds, 0)
                    })
                    .join()
                    .unwrap_or_else(|_| {
                        Err(SysError {
                            call: "setns",
                            what: "thread panicked".into(),
                            source: std::io::Error::from_raw_os_error(libc::EIO),
                        })
                    })
                })
            }
        }
        .map_err(sys_err("start the init helper"))?;
        drop(child_fds);
        drop((in_r, out_w, err_w, spec_r, fail_w));
        let pidfd = Arc::new(spawned.pidfd);
        let fail = |message: String| {
            let _ = sys::pidfd_signal(pidfd.as_fd(), libc::SIGKILL);
            let status = sys::wait_pidfd(pidfd.as_fd(), false);
            ContainerError::Setup {
                id: id.to_string(),
                message: format!("{message} (init helper: {status:?})"),
            }
        };
        let oom_base = cgroup.oom_kills();
        if let Err(e) = cgroup.add(spawned.pid) {
            return Err(fail(format!("join the cgroup: {e}")));
        }
        let json = serde_json::to_vec(init).map_err(|e| fail(format!("encode spec: {e}")))?;
        {
            let mut w = File::from(spec_w);
            if let Err(e) = std::io::Write::write_all(&mut w, &json) {
                // The helper died: its message (or status) says why.
                let msg = read_failure(fail_r).unwrap_or_else(|| format!("send spec: {e}"));
                return Err(fail(msg));
            }
        }
        if let Some(msg) = read_failure(fail_r) {
            return Err(fail(msg));
        }
        Ok(Started {
            pid: spawned.pid,
            pidfd,
            stdin: in_w,
            stdout: out_r,
            stderr: err_r,
            cgroup,
            oom_base,
        })
    }

    /// Ends a `run`: status, OOM check, cgroup and directory removal, `ps`
    /// entry. `status` is `None` when the wait itself failed.
    pub fn finish_run(
        &self,
        id: &str,
        started: &Started,
        status: Option<WaitStatus>,
    ) -> ExitStatus {
        let exit = exit_status(started, status);
        if let Err(e) = started.cgroup.remove_within(Duration::from_secs(5)) {
            eprintln!("vmm-agent: container {id}: {e}");
        }
        self.cleanup_dir(id);
        self.mark_exited(id, Some(exit), None);
        exit
    }

    fn cleanup_dir(&self, id: &str) {
        let cdir = self.dir.join(id);
        if let Err(e) = fs::remove_dir_all(&cdir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("vmm-agent: container {id}: remove {}: {e}", cdir.display());
            }
        }
    }

    fn mark_exited(&self, id: &str, exit: Option<ExitStatus>, error: Option<String>) {
        let seq = self.next_seq();
        let mut map = self.lock();
        if let Some(e) = map.get_mut(id) {
            e.info.state = ContainerState::Exited;
            e.info.exit = exit;
            e.info.error = error;
            e.pidfd = None;
            e.cgroup = None;
            e.seq = seq;
        }
        let mut exited: Vec<(u64, String)> = map
            .values()
            .filter(|e| e.info.state == ContainerState::Exited)
            .map(|e| (e.seq, e.info.id.clone()))
            .collect();
        if exited.len() > MAX_EXITED {
            exited.sort();
            for (_, old) in &exited[..exited.len() - MAX_EXITED] {
                map.remove(old);
            }
        }
    }
}

/// The protocol's exit status of a process (`oom_killed` from the cgroup's
/// counter since the process started).
pub fn exit_status(started: &Started, status: Option<WaitStatus>) -> ExitStatus {
    let oom_killed = started.cgroup.oom_kills() > started.oom_base;
    match status {
        Some(WaitStatus::Exited(code)) => ExitStatus {
            code: Some(code),
            signal: None,
            oom_killed,
        },
        Some(WaitStatus::Signaled(sig)) => ExitStatus {
            code: None,
            signal: Some(sig),
            oom_killed,
        },
        None => ExitStatus {
            code: None,
            signal: None,
            oom_killed,
        },
    }
}

/// Waits for the helper's verdict: `None` when the pipe closed without a
/// word (the command was executed), else the helper's message.
fn read_failure(fail_r: OwnedFd) -> Option<String> {
    let ready = sys::poll(&[(fail_r.as_raw_fd(), libc::POLLIN)], SETUP_TIMEOUT_MS);
    match ready {
        Ok(r) if r[0] != 0 => {}
        Ok(_) => {
            return Some(format!(
                "set-up did not finish within {} s",
                SETUP_TIMEOUT_MS / 1000
            ))
        }
        Err(e) => return Some(format!("wait for set-up: {e}")),
    }
    let mut msg = String::new();
    let _ = File::from(fail_r).take(64 * 1024).read_to_string(&mut msg);
    let msg = msg.trim();
    (!msg.is_empty()).then(|| msg.to_string())
}
