//! Helpers for vmm's integration tests that run in the lab, the nested test host
//! driven by `tests/lab/lab` (see docs/lab.md).
//!
//! - [`prepare`] runs `tests/lab/lab prepare` once per test binary (cached: seconds when
//!   everything is built) and returns the artifact paths it printed.
//! - [`LabRun`] describes one L1 boot (files, scenario, timeouts); [`LabRun::run`] runs it and
//!   returns a [`LabResult`] with the exit status, the streamed scenario output, the runner's
//!   messages and the `/out` directory that came back.
//! - L1 boots are serialised within a test binary: they are CPU-bound (emulated), and
//!   running two at once only makes both slower.
//!
//! Tests that need the lab fail loudly when it is unavailable. The only way to skip them is
//! `VMM_SKIP_LAB=1`, which CI never sets: such a test prints `SKIPPED` and returns.
#![allow(dead_code)] // each integration test uses a different subset of these helpers

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Exit status of `tests/lab/lab run` when the scenario hit `--timeout`.
pub const STATUS_TIMEOUT: i32 = 124;
/// Lab broken: QEMU (or another host tool) missing on the host.
pub const STATUS_NO_QEMU: i32 = 100;
/// Lab broken: the L1 kernel package could not be obtained.
pub const STATUS_NO_L1_KERNEL: i32 = 101;
/// Lab broken: L1 did not boot.
pub const STATUS_L1_NO_BOOT: i32 = 102;
/// Lab broken: L1 booted but has no `/dev/kvm`.
pub const STATUS_L1_NO_KVM: i32 = 103;
/// Lab broken: L1 died before the scenario reported a status.
pub const STATUS_L1_DIED: i32 = 104;
/// `guest-run` (in L1): the guest printed no `VMM-GUEST-READY`, it did not boot.
pub const GUEST_RUN_NO_READY: i32 = 90;
/// `guest-run` (in L1): the guest booted but printed no `VMM-GUEST-EXIT`.
pub const GUEST_RUN_NO_EXIT: i32 = 91;

/// True (after printing a SKIPPED line) when `VMM_SKIP_LAB=1` asks to skip lab tests.
pub fn lab_skipped(test: &str) -> bool {
    match std::env::var("VMM_SKIP_LAB") {
        Ok(v) if v == "1" => {
            // Straight to the process's stderr: the test harness captures print!/eprint!
            // and would hide this line for a test that returns normally.
            let _ = writeln!(
                std::io::stderr().lock(),
                "SKIPPED {test}: VMM_SKIP_LAB=1 is set, so this lab test did not run"
            );
            true
        }
        _ => false,
    }
}

/// The repository root: the first ancestor of this crate's manifest directory (or of this
/// source file, or of the working directory) that holds `tests/lab/lab`.
pub fn repo_root() -> PathBuf {
    let mut starts: Vec<PathBuf> = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR"))];
    let here = Path::new(file!());
    if here.is_absolute() {
        starts.push(here.to_path_buf());
    }
    if let Ok(cwd) = std::env::current_dir() {
        starts.push(cwd);
    }
    for start in &starts {
        for dir in start.ancestors() {
            if dir.join("tests/lab/lab").is_file() {
                return dir.to_path_buf();
            }
        }
    }
    panic!("cannot find the repository root (a directory with tests/lab/lab) above {starts:?}");
}

/// `tests/lab/lab`.
pub fn lab_script() -> PathBuf {
    repo_root().join("tests/lab/lab")
}

/// A scenario shipped with the lab, `tests/lab/scenarios/NAME`.
pub fn scenario(name: &str) -> PathBuf {
    let path = repo_root().join("tests/lab/scenarios").join(name);
    assert!(
        path.is_file(),
        "lab scenario {} does not exist",
        path.display()
    );
    path
}

/// Where a test's lab artifacts (logs, `/out`) go: under Cargo's per-target temp dir.
pub fn artifact_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("lab")
        .join(name)
}

/// What `tests/lab/lab prepare` printed.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The guest kernel as an ELF (`GUEST_VMLINUX`).
    pub guest_vmlinux: PathBuf,
    /// The guest kernel as a bzImage (`GUEST_BZIMAGE`).
    pub guest_bzimage: PathBuf,
    /// The default test rootfs (`ROOTFS`).
    pub rootfs: PathBuf,
    /// The L1 machine's kernel (`L1_KERNEL`).
    pub l1_kernel: PathBuf,
    /// Every `KEY=VALUE` line.
    pub vars: BTreeMap<String, String>,
}

/// Runs `tests/lab/lab prepare` once per test binary and returns its artifacts. Panics with
/// the runner's message when the lab cannot be prepared: a test that needs the lab must not
/// pass without it.
pub fn prepare() -> &'static Prepared {
    static PREPARED: OnceLock<Result<Prepared, String>> = OnceLock::new();
    match PREPARED.get_or_init(run_prepare) {
        Ok(p) => p,
        Err(e) => panic!("the lab is unavailable: {e}"),
    }
}

fn run_prepare() -> Result<Prepared, String> {
    let lab = lab_script();
    let started = Instant::now();
    // stderr is inherited: a first run builds the guest kernel and shows its progress.
    let out = Command::new(&lab)
        .arg("prepare")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", lab.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "`{} prepare` failed ({}); its output:\n{stdout}",
            lab.display(),
            out.status
        ));
    }
    let vars: BTreeMap<String, String> = stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let path = |key: &str| -> Result<PathBuf, String> {
        let p = vars
            .get(key)
            .map(PathBuf::from)
            .ok_or_else(|| format!("`lab prepare` printed no {key}=; output:\n{stdout}"))?;
        if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "`lab prepare` printed {key}={}, which is not a file",
                p.display()
            ))
        }
    };
    let prepared = Prepared {
        guest_vmlinux: path("GUEST_VMLINUX")?,
        guest_bzimage: path("GUEST_BZIMAGE")?,
        rootfs: path("ROOTFS")?,
        l1_kernel: path("L1_KERNEL")?,
        vars: vars.clone(),
    };
    println!(
        "lab prepare: {:.1} s, {:?}",
        started.elapsed().as_secs_f64(),
        prepared.vars
    );
    Ok(prepared)
}

/// One L1 boot: what goes in, what runs, how long it may take.
#[derive(Debug, Clone)]
pub struct LabRun {
    name: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    scenario: Vec<String>,
    out: bool,
}

impl LabRun {
    /// A run named `name` (used for its artifact directory) with the runner's defaults.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            args: Vec::new(),
            env: Vec::new(),
            scenario: Vec::new(),
            out: false,
        }
    }

    /// Puts a host file into L1 at `dest` (absolute, or relative to `/lab`).
    pub fn file(mut self, src: impl AsRef<Path>, dest: &str) -> Self {
        self.args.push("--file".into());
        self.args.push(format!("{}:{dest}", src.as_ref().display()));
        self
    }

    /// Puts a host binary and its shared libraries into L1 (binary at `/lab/bin/<name>`).
    pub fn bin(mut self, src: impl AsRef<Path>) -> Self {
        self.args.push("--bin".into());
        self.args.push(src.as_ref().display().to_string());
        self
    }

    /// The guest kernel at `/lab/vmlinux` and `/lab/bzImage`, the rootfs at `/lab/rootfs.ext4`.
    pub fn guest_files(self, p: &Prepared) -> Self {
        self.file(&p.guest_vmlinux, "/lab/vmlinux")
            .file(&p.guest_bzimage, "/lab/bzImage")
            .file(&p.rootfs, "/lab/rootfs.ext4")
    }

    /// Limit for the scenario once L1 is ready (`--timeout`).
    pub fn timeout(mut self, secs: u64) -> Self {
        self.args.push("--timeout".into());
        self.args.push(secs.to_string());
        self
    }

    /// Limit for L1 to boot (`--boot-timeout`).
    pub fn boot_timeout(mut self, secs: u64) -> Self {
        self.args.push("--boot-timeout".into());
        self.args.push(secs.to_string());
        self
    }

    /// L1 memory in MiB (`--mem`).
    pub fn mem(mut self, mib: u64) -> Self {
        self.args.push("--mem".into());
        self.args.push(mib.to_string());
        self
    }

    /// L1 vCPUs (`--cpus`; the lab's default is 1).
    pub fn cpus(mut self, n: u32) -> Self {
        self.args.push("--cpus".into());
        self.args.push(n.to_string());
        self
    }

    /// Extra L1 kernel modules (`--modules`).
    pub fn modules(mut self, list: &[&str]) -> Self {
        self.args.push("--modules".into());
        self.args.push(list.join(","));
        self
    }

    /// Collect what the scenario writes under `/out` (see [`LabResult::out_file`]).
    pub fn collect_out(mut self) -> Self {
        self.out = true;
        self
    }

    /// An environment variable for the runner itself (e.g. `LAB_CPU`, `LAB_QEMU`).
    pub fn runner_env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// The scenario: a host script (packed into L1 and executed there) and its arguments.
    pub fn script<I, S>(mut self, path: impl AsRef<Path>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scenario = vec![path.as_ref().display().to_string()];
        self.scenario.extend(args.into_iter().map(Into::into));
        self
    }

    /// The scenario: a command that exists in L1 (e.g. `["sh", "-c", "..."]`).
    pub fn command<I, S>(mut self, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scenario = argv.into_iter().map(Into::into).collect();
        self
    }

    /// Boots L1, runs the scenario, and returns what happened. Panics only when the runner
    /// itself cannot be started; every lab outcome, good or bad, is in the result.
    pub fn run(self) -> LabResult {
        assert!(
            !self.scenario.is_empty(),
            "LabRun {}: no scenario given",
            self.name
        );
        static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
        let _guard = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());

        let dir = artifact_dir(&self.name);
        if dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                panic!("cannot clear {}: {e}", dir.display());
            }
        }
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("cannot create {}: {e}", dir.display());
        }
        let log = dir.join("l1.log");
        let out_dir = self.out.then(|| dir.join("out"));

        let lab = lab_script();
        let mut cmd = Command::new(&lab);
        cmd.arg("run").args(&self.args).arg("--log").arg(&log);
        if let Some(out) = &out_dir {
            cmd.arg("--out").arg(out);
        }
        cmd.arg("--").args(&self.scenario).stdin(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let started = Instant::now();
        let output = match cmd.output() {
            Ok(o) => o,
            Err(e) => panic!("cannot run {}: {e}", lab.display()),
        };
        let result = LabResult {
            name: self.name,
            status: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).replace('\r', ""),
            stderr: String::from_utf8_lossy(&output.stderr).replace('\r', ""),
            out_dir,
            log,
            elapsed: started.elapsed(),
        };
        // Captured by the test harness and shown when a test fails.
        println!("{}", result.describe());
        result
    }
}

/// What one L1 boot produced.
#[derive(Debug, Clone)]
pub struct LabResult {
    /// The run's name.
    pub name: String,
    /// The runner's exit status (the scenario's, or a lab status); `None` if it was killed.
    pub status: Option<i32>,
    /// The scenario's output, streamed by the runner.
    pub stdout: String,
    /// The runner's own messages (progress, errors, the `lab: result:` line).
    pub stderr: String,
    /// Where `/out` was unpacked, when collected.
    pub out_dir: Option<PathBuf>,
    /// The full L1 serial log.
    pub log: PathBuf,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

impl LabResult {
    /// The outcome kind from the runner's last `lab: result: KIND status=N` line
    /// (`scenario`, `timeout`, `l1-no-boot`, `l1-no-kvm`, `qemu-missing`, ...).
    pub fn kind(&self) -> Option<&str> {
        self.stderr
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("lab: result: "))
            .and_then(|r| r.split_whitespace().next())
    }

    /// A summary for failure messages: status, kind, time, log, and the output's tail.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "lab run '{}': status {:?}, result {:?}, {:.1} s, L1 log {}",
            self.name,
            self.status,
            self.kind(),
            self.elapsed.as_secs_f64(),
            self.log.display()
        );
        for line in tail(&self.stdout, 60) {
            let _ = writeln!(s, "  | {line}");
        }
        for line in tail(&self.stderr, 15) {
            let _ = writeln!(s, "  ! {line}");
        }
        s
    }

    /// Asserts the runner's exit status.
    pub fn assert_status(&self, expected: i32) {
        assert_eq!(
            self.status,
            Some(expected),
            "unexpected lab status\n{}",
            self.describe()
        );
    }

    /// Asserts the outcome kind (see [`LabResult::kind`]).
    pub fn assert_kind(&self, expected: &str) {
        assert_eq!(
            self.kind(),
            Some(expected),
            "unexpected lab result kind\n{}",
            self.describe()
        );
    }

    /// True when the scenario output has exactly this line.
    pub fn has_line(&self, line: &str) -> bool {
        self.stdout.lines().any(|l| l == line)
    }

    /// Asserts the scenario output has exactly this line.
    pub fn assert_line(&self, line: &str) {
        assert!(
            self.has_line(line),
            "scenario output lacks the line {line:?}\n{}",
            self.describe()
        );
    }

    /// Asserts the scenario output has no such line.
    pub fn assert_no_line(&self, line: &str) {
        assert!(
            !self.has_line(line),
            "scenario output has the line {line:?}\n{}",
            self.describe()
        );
    }

    /// Asserts the scenario output contains this text.
    pub fn assert_stdout_contains(&self, text: &str) {
        assert!(
            self.stdout.contains(text),
            "scenario output lacks {text:?}\n{}",
            self.describe()
        );
    }

    /// Asserts the runner's messages contain this text.
    pub fn assert_stderr_contains(&self, text: &str) {
        assert!(
            self.stderr.contains(text),
            "runner messages lack {text:?}\n{}",
            self.describe()
        );
    }

    /// The content of `/out/NAME` from L1 (the run must have used [`LabRun::collect_out`]).
    pub fn out_file(&self, name: &str) -> String {
        let Some(dir) = &self.out_dir else {
            panic!("lab run '{}' did not collect /out", self.name);
        };
        let path = dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).replace('\r', ""),
            Err(e) => panic!(
                "/out/{name} did not come back from L1 ({}: {e})\n{}",
                path.display(),
                self.describe()
            ),
        }
    }

    /// The `GUEST-RUN name=NAME ...` summary line that `guest-run` printed in L1, as fields.
    pub fn guest_run(&self, name: &str) -> BTreeMap<String, String> {
        let prefix = format!("GUEST-RUN name={name} ");
        let Some(line) = self.stdout.lines().find(|l| l.starts_with(&prefix)) else {
            panic!(
                "no `{prefix}...` line in the scenario output\n{}",
                self.describe()
            );
        };
        line.split_whitespace()
            .skip(1)
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

/// Asserts that `text` has exactly the line `line`; `what` names the text in the message,
/// which shows the text's last 80 lines.
pub fn assert_has_line(text: &str, line: &str, what: &str) {
    if !text.lines().any(|l| l == line) {
        let shown: Vec<&str> = tail(text, 80).collect();
        panic!(
            "{what} lacks the line {line:?}; its last {} lines:\n{}",
            shown.len(),
            shown.join("\n")
        );
    }
}

fn tail(text: &str, n: usize) -> impl Iterator<Item = &str> {
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(n);
    lines.into_iter().skip(skip)
}
