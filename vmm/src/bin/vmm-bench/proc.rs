//! Running a VMM process and looking at it: launch with a timestamp, the time
//! its ready line arrives, its exit and peak memory (`wait4`), and its memory
//! while it runs (`/proc/PID/status`, `/proc/PID/smaps`).

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a process may take to die after SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(20);

/// A launched VMM.
pub struct Launched {
    /// The process.
    pub child: Child,
    /// Just before `spawn`.
    pub t0: Instant,
    ready: mpsc::Receiver<Instant>,
    stdout: Option<JoinHandle<Vec<String>>>,
    stderr: Option<JoinHandle<String>>,
}

/// How a launched VMM ended.
#[derive(Debug, Clone)]
pub struct Ended {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal, when it was killed.
    pub signal: Option<i32>,
    /// When `wait4` returned, since launch.
    pub elapsed: Duration,
    /// Peak resident memory (`ru_maxrss`), KiB.
    pub maxrss_kib: u64,
    /// The last lines of its stdout.
    pub stdout_tail: Vec<String>,
    /// Its stderr.
    pub stderr: String,
}

impl Ended {
    /// The output, for error messages.
    pub fn describe(&self) -> String {
        format!(
            "exit code {:?}, signal {:?}\n--- stdout (tail)\n{}\n--- stderr\n{}",
            self.code,
            self.signal,
            self.stdout_tail.join("\n"),
            self.stderr
        )
    }
}

/// Start `cmd` (stdin closed, stdout and stderr read by threads) and watch
/// its stdout for a line containing `ready_line`.
pub fn launch(cmd: &mut Command, ready_line: &str) -> std::io::Result<Launched> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = cmd.spawn()?;
    let (tx, ready) = mpsc::channel();
    let out = child.stdout.take();
    let err = child.stderr.take();
    let marker = ready_line.to_string();
    let stdout = std::thread::spawn(move || {
        let mut tail: Vec<String> = Vec::new();
        let Some(out) = out else { return tail };
        let mut seen = false;
        for line in BufReader::new(out).split(b'\n').map_while(Result::ok) {
            let line = String::from_utf8_lossy(&line).replace('\r', "");
            if !seen && line.contains(&marker) {
                seen = true;
                let _ = tx.send(Instant::now());
            }
            if tail.len() == 40 {
                tail.remove(0);
            }
            tail.push(line);
        }
        tail
    });
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut err) = err {
            let _ = err.read_to_string(&mut s);
        }
        s
    });
    Ok(Launched {
        child,
        t0,
        ready,
        stdout: Some(stdout),
        stderr: Some(stderr),
    })
}

impl Launched {
    /// The process id.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or(i32::MAX)
    }

    /// When the ready line arrived (since launch), waiting at most `limit`.
    pub fn wait_ready(&self, limit: Duration) -> Option<Duration> {
        self.ready
            .recv_timeout(limit)
            .ok()
            .map(|t| t.duration_since(self.t0))
    }

    /// When the ready line arrived, if it did (call after the process ended).
    pub fn ready_seen(&self) -> Option<Duration> {
        self.ready
            .try_recv()
            .ok()
            .map(|t| t.duration_since(self.t0))
    }

    /// Send `sig`.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child; no memory is involved.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Wait for the process to end (killing it after `limit`), with its
    /// peak memory from `wait4`. Never blocks for good: a process that does
    /// not end within [`KILL_GRACE`] of SIGKILL (stuck in the kernel) is an
    /// error, and is left behind.
    pub fn wait(&mut self, limit: Duration) -> std::io::Result<Ended> {
        let pid = self.pid();
        let t0 = self.t0;
        let (tx, rx) = mpsc::channel();
        // wait4 blocks, so it runs on its own thread, which takes the
        // timestamp the moment the process is reaped.
        std::thread::spawn(move || {
            let mut status = 0i32;
            // SAFETY: rusage is plain data; all zeroes is a valid value.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            let rc = loop {
                // SAFETY: wait4 on our own child, writing into locals we own.
                let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
                if rc >= 0
                    || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
                {
                    break rc;
                }
            };
            let elapsed = t0.elapsed();
            let result = if rc < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok((status, u64::try_from(usage.ru_maxrss).unwrap_or(0), elapsed))
            };
            let _ = tx.send(result);
        });
        let reaped = match rx.recv_timeout(limit) {
            Ok(r) => r,
            Err(_) => {
                self.signal(libc::SIGKILL);
                rx.recv_timeout(KILL_GRACE).unwrap_or_else(|_| {
                    Err(std::io::Error::other(format!(
                        "process {pid} did not end within {} s of SIGKILL (stuck in the kernel?)",
                        KILL_GRACE.as_secs()
                    )))
                })
            }
        };
        let (status, maxrss_kib, elapsed) = reaped?;
        let stdout_tail = self
            .stdout
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        Ok(Ended {
            code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
            signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
            elapsed,
            maxrss_kib,
            stdout_tail,
            stderr,
        })
    }
}

/// Memory fields of `/proc/PID/status`, KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemStatus {
    /// Peak resident set (VmHWM).
    pub hwm: u64,
    /// Resident set (VmRSS).
    pub rss: u64,
    /// Its anonymous part (RssAnon).
    pub anon: u64,
    /// Its file-backed part (RssFile).
    pub file: u64,
}

/// Read `/proc/PID/status`.
pub fn mem_status(pid: i32) -> std::io::Result<MemStatus> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(parse_status(&text))
}

fn kib_field(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn parse_status(text: &str) -> MemStatus {
    MemStatus {
        hwm: kib_field(text, "VmHWM:"),
        rss: kib_field(text, "VmRSS:"),
        anon: kib_field(text, "RssAnon:"),
        file: kib_field(text, "RssFile:"),
    }
}

/// Proportional and private memory from `/proc/PID/smaps_rollup`, KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rollup {
    /// Proportional set size: shared pages divided among their users.
    pub pss: u64,
    /// Pages only this process maps (Private_Clean + Private_Dirty).
    pub private: u64,
}

/// Read `/proc/PID/smaps_rollup`.
pub fn rollup(pid: i32) -> std::io::Result<Rollup> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    Ok(Rollup {
        pss: kib_field(&text, "Pss:"),
        private: kib_field(&text, "Private_Clean:") + kib_field(&text, "Private_Dirty:"),
    })
}

/// One mapping of `/proc/PID/smaps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// The address range as smaps prints it.
    pub range: String,
    /// Size, KiB.
    pub size: u64,
    /// Resident, KiB.
    pub rss: u64,
    /// Path or `[heap]`-like name; empty for anonymous memory.
    pub name: String,
}

/// Read `/proc/PID/smaps`.
pub fn smaps(pid: i32) -> std::io::Result<Vec<Mapping>> {
    Ok(parse_smaps(&std::fs::read_to_string(format!(
        "/proc/{pid}/smaps"
    ))?))
}

fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut maps: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if first.contains('-') && !first.ends_with(':') {
            // "start-end perms offset dev inode [name]"
            let name = words.nth(4).unwrap_or("").to_string();
            maps.push(Mapping {
                range: first.to_string(),
                size: 0,
                rss: 0,
                name,
            });
        } else if let Some(m) = maps.last_mut() {
            let value = || {
                words
                    .clone()
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            match first {
                "Size:" => m.size = value(),
                "Rss:" => m.rss = value(),
                _ => {}
            }
        }
    }
    maps
}

/// The guest RAM mapping: the anonymous mapping exactly as large as the
/// guest's memory, or else the largest anonymous one within 4 MiB above it
/// (a VMM may align its RAM block).
pub fn guest_ram(maps: &[Mapping], mem_kib: u64) -> Option<&Mapping> {
    let anon = maps.iter().filter(|m| m.name.is_empty());
    anon.clone().find(|m| m.size == mem_kib).or_else(|| {
        anon.filter(|m| m.size >= mem_kib && m.size <= mem_kib + 4096)
            .max_by_key(|m| m.size)
    })
}

/// Other QEMU processes on this host (not ours): `(pid, command)`.
pub fn other_qemus() -> Vec<(u32, String)> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let comm = stat.split_once('(')?.1.rsplit_once(')')?.0.to_string();
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (comm.starts_with("qemu-system") && ppid != me).then_some((pid, comm))
        })
        .collect()
}

/// The 1-minute load average.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(-1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_smaps_parse() {
        let s = parse_status("Name:\tvmm\nVmHWM:\t    2780 kB\nVmRSS:\t 2700 kB\nRssAnon:\t 236 kB\nRssFile:\t2464 kB\n");
        assert_eq!((s.hwm, s.rss, s.anon, s.file), (2780, 2700, 236, 2464));
        assert_eq!(
            kib_field("Rss: 1 kB\nPss:  1424 kB\nPss_Anon: 3 kB\n", "Pss:"),
            1424
        );
        let maps = parse_smaps(
            "5626ea61b000-5626ea6d9000 r-xp 0002a000 fe:00 5325664    /usr/bin/vmm\n\
             Size:                760 kB\nRss:                 756 kB\n\
             7fc360600000-7fc368600000 rw-p 00000000 00:00 0 \n\
             Size:             131072 kB\nKernelPageSize:        4 kB\nRss:                  48 kB\n\
             7fc370000000-7fc370100000 rw-p 00000000 00:00 0 \n\
             Size:               1024 kB\nRss:                1024 kB\n",
        );
        assert_eq!(maps.len(), 3);
        assert_eq!(maps[0].name, "/usr/bin/vmm");
        assert_eq!((maps[1].size, maps[1].rss), (131072, 48));
        assert_eq!(guest_ram(&maps, 131072).map(|m| m.rss), Some(48));
        assert_eq!(guest_ram(&maps, 131000).map(|m| m.rss), Some(48));
        assert_eq!(guest_ram(&maps, 262144), None);
    }
}
