//! Container cgroups: memory, cpu and pids limits, OOM-kill counts.
//!
//! The guest mounts cgroup v2 at `/sys/fs/cgroup` (mkagentfs's init) and the
//! agent puts each container in `/sys/fs/cgroup/<name>/<id>`. For tests on
//! hosts that still run the hybrid layout (v1 controllers plus an empty
//! unified hierarchy), the v1 controllers are used instead, under the
//! agent's own cgroup in each of them.

use std::fs;
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::protocol::Limits;

const CGROUP_MOUNT: &str = "/sys/fs/cgroup";
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;
/// CFS period used for `cpu` limits.
const CPU_PERIOD_US: u64 = 100_000;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup file or directory operation failed.
    #[error("cgroup {op} {path}: {source}")]
    Io {
        /// What was done (`mkdir`, `write memory.max`, ...).
        op: String,
        /// Where.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// No usable hierarchy was found.
    #[error("no usable cgroup hierarchy at {CGROUP_MOUNT}: {0}")]
    NoHierarchy(String),
}

type Result<T> = std::result::Result<T, CgroupError>;

fn io_err(op: impl Into<String>, path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    let op = op.into();
    move |source| CgroupError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn write_file(dir: &Path, file: &str, value: &str) -> Result<()> {
    let path = dir.join(file);
    fs::write(&path, value).map_err(io_err(format!("write {value:?} to"), &path))
}

/// Where container cgroups go.
#[derive(Debug, Clone)]
pub enum Hierarchy {
    /// cgroup v2: containers are `<root>/<id>`.
    V2 {
        /// The agent's parent cgroup directory.
        root: PathBuf,
    },
    /// cgroup v1 (hybrid hosts): one parent directory per controller.
    V1 {
        /// In the memory hierarchy.
        memory: PathBuf,
        /// In the cpu hierarchy.
        cpu: PathBuf,
        /// In the pids hierarchy.
        pids: PathBuf,
    },
}

/// The agent's own cgroup path in a v1 hierarchy (from /proc/self/cgroup).
fn own_v1_path(controller: &str) -> String {
    let text = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, ctrls, path) = (it.next()?, it.next()?, it.next()?);
            ctrls
                .split(',')
                .any(|c| c == controller)
                .then(|| path.to_string())
        })
        .next()
        .unwrap_or_else(|| "/".into())
}

impl Hierarchy {
    /// Finds the hierarchy: v2 at `/sys/fs/cgroup`, else the v1 `memory`,
    /// `cpu` and `pids` controllers. `name` is the agent's parent cgroup.
    pub fn detect(name: &str) -> Result<Self> {
        let base = Path::new(CGROUP_MOUNT);
        let magic =
            crate::sys::fs_magic(base).map_err(|e| CgroupError::NoHierarchy(e.to_string()))?;
        if magic == CGROUP2_SUPER_MAGIC {
            return Ok(Self::V2 {
                root: base.join(name),
            });
        }
        let v1 = |c: &str| -> Result<PathBuf> {
            let mnt = base.join(c);
            match crate::sys::fs_magic(&mnt) {
                Ok(m) if m == CGROUP_SUPER_MAGIC => {}
                _ => {
                    return Err(CgroupError::NoHierarchy(format!(
                        "neither cgroup2 nor a v1 {c} controller"
                    )))
                }
            }
            let own = own_v1_path(c);
            Ok(mnt.join(own.trim_start_matches('/')).join(name))
        };
        Ok(Self::V1 {
            memory: v1("memory")?,
            cpu: v1("cpu")?,
            pids: v1("pids")?,
        })
    }

    /// Creates the parent cgroup(s) and, on v2, enables the memory, cpu and
    /// pids controllers for the containers (the controllers must be enabled
    /// in `/sys/fs/cgroup` itself, which the guest init does). Returns
    /// warnings for controllers that could not be enabled.
    pub fn setup(&self) -> Result<Vec<String>> {
        let mut warnings = Vec::new();
        match self {
            Self::V2 { root } => {
                fs::create_dir_all(root).map_err(io_err("mkdir", root))?;
                for c in ["memory", "cpu", "pids"] {
                    if let Err(e) = write_file(root, "cgroup.subtree_control", &format!("+{c}")) {
                        warnings.push(e.to_string());
                    }
                }
            }
            Self::V1 { memory, cpu, pids } => {
                for d in [memory, cpu, pids] {
                    fs::create_dir_all(d).map_err(io_err("mkdir", d))?;
                }
            }
        }
        Ok(warnings)
    }

    /// Kills the processes of every container cgroup left under the parent
    /// (by an agent that died) and removes those cgroups.
    pub fn clear(&self) -> Result<()> {
        let parents: Vec<&PathBuf> = match self {
            Self::V2 { root } => vec![root],
            Self::V1 { memory, cpu, pids } => vec![memory, cpu, pids],
        };
        for parent in parents {
            let Ok(entries) = fs::read_dir(parent) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let cg = Cgroup {
                        dirs: vec![e.path()],
                        v2: matches!(self, Self::V2 { .. }),
                    };
                    cg.kill_all();
                    cg.remove_within(Duration::from_secs(5))?;
                }
            }
        }
        Ok(())
    }

    /// Removes the parent cgroup(s) (they must be empty).
    pub fn remove(&self) -> Result<()> {
        let dirs: Vec<&PathBuf> = match self {
            Self::V2 { root } => vec![root],
            Self::V1 { memory, cpu, pids } => vec![memory, cpu, pids],
        };
        for d in dirs {
            fs::remove_dir(d).map_err(io_err("rmdir", d))?;
        }
        Ok(())
    }

    /// Creates the cgroup of container `id` (an id already validated) with
    /// its limits. A leftover cgroup of the same id is removed first.
    pub fn create(&self, id: &str, limits: &Limits) -> Result<Cgroup> {
        let cg = match self {
            Self::V2 { root } => Cgroup {
                dirs: vec![root.join(id)],
                v2: true,
            },
            Self::V1 { memory, cpu, pids } => Cgroup {
                dirs: vec![memory.join(id), cpu.join(id), pids.join(id)],
                v2: false,
            },
        };
        for d in &cg.dirs {
            match fs::create_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    fs::remove_dir(d).map_err(io_err("rmdir leftover", d))?;
                    fs::create_dir(d).map_err(io_err("mkdir", d))?;
                }
                Err(e) => return Err(io_err("mkdir", d)(e)),
            }
        }
        if let Err(e) = cg.apply(limits) {
            let _ = cg.remove();
            return Err(e);
        }
        Ok(cg)
    }
}

/// One container's cgroup (one directory on v2, three on v1).
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
    v2: bool,
}

impl Cgroup {
    fn memory_dir(&self) -> &Path {
        &self.dirs[0]
    }

    fn cpu_dir(&self) -> &Path {
        if self.v2 {
            &self.dirs[0]
        } else {
            &self.dirs[1]
        }
    }

    fn pids_dir(&self) -> &Path {
        if self.v2 {
            &self.dirs[0]
        } else {
            &self.dirs[2]
        }
    }

    /// The directories (for messages and tests).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    fn apply(&self, limits: &Limits) -> Result<()> {
        if let Some(m) = limits.memory_bytes {
            let m = m.to_string();
            if self.v2 {
                write_file(self.memory_dir(), "memory.max", &m)?;
                // Only with swap accounting; without it there is no swap to use.
                if self.memory_dir().join("memory.swap.max").exists() {
                    write_file(self.memory_dir(), "memory.swap.max", "0")?;
                }
            } else {
                write_file(self.memory_dir(), "memory.limit_in_bytes", &m)?;
                if self
                    .memory_dir()
                    .join("memory.memsw.limit_in_bytes")
                    .exists()
                {
                    write_file(self.memory_dir(), "memory.memsw.limit_in_bytes", &m)?;
                }
            }
        }
        if let Some(cores) = limits.cpu {
            let quota = cpu_quota_us(cores);
            if self.v2 {
                write_file(
                    self.cpu_dir(),
                    "cpu.max",
                    &format!("{quota} {CPU_PERIOD_US}"),
                )?;
            } else {
                write_file(
                    self.cpu_dir(),
                    "cpu.cfs_period_us",
                    &CPU_PERIOD_US.to_string(),
                )?;
                write_file(self.cpu_dir(), "cpu.cfs_quota_us", &quota.to_string())?;
            }
        }
        if let Some(p) = limits.pids {
            write_file(self.pids_dir(), "pids.max", &p.to_string())?;
        }
        Ok(())
    }

    /// Moves process `pid` (and its threads) into the cgroup.
    pub fn add(&self, pid: i32) -> Result<()> {
        for d in &self.dirs {
            write_file(d, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// How many processes the memory controller OOM-killed in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        let text = fs::read_to_string(self.memory_dir().join(file)).unwrap_or_default();
        parse_counter(&text, "oom_kill")
    }

    /// The pids of the processes in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.dirs[0].join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// SIGKILLs every process in the cgroup (cgroup.kill where available).
    pub fn kill_all(&self) {
        if self.v2 && write_file(&self.dirs[0], "cgroup.kill", "1").is_ok() {
            return;
        }
        for pid in self.pids() {
            // SAFETY: kill(2) with plain values; the pids are in our pid
            // namespace, read from the cgroup of a container we created.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }

    /// Removes the cgroup, killing what is left in it and waiting up to
    /// `timeout` for the processes to go.
    pub fn remove_within(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.remove() {
                Ok(()) => return Ok(()),
                Err(CgroupError::Io { source, .. })
                    if source.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                {
                    self.kill_all();
                    sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn remove(&self) -> Result<()> {
        for d in &self.dirs {
            match fs::remove_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("rmdir", d)(e)),
            }
        }
        Ok(())
    }
}

/// CFS quota for `cores` CPUs per [`CPU_PERIOD_US`] (at least 1 ms).
#[allow(clippy::cast_possible_truncation)] // cores <= 1024 (validated): fits
pub fn cpu_quota_us(cores: f64) -> u64 {
    ((cores * CPU_PERIOD_US as f64).round() as u64).max(1000)
}

/// The value of `key` in a `key value` per line file (0 when absent).
pub fn parse_counter(text: &str, key: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_quotas() {
        let events = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_counter(events, "oom_kill"), 2);
        assert_eq!(parse_counter(events, "oom"), 3);
        assert_eq!(
            parse_counter("oom_kill_disable 0\nunder_oom 0\noom_kill 7", "oom_kill"),
            7
        );
        assert_eq!(parse_counter("", "oom_kill"), 0);
        assert_eq!(cpu_quota_us(0.5), 50_000);
        assert_eq!(cpu_quota_us(2.0), 200_000);
        assert_eq!(cpu_quota_us(0.001), 1000);
    }
}
