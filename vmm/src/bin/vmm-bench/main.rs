//! `vmm-bench`: measures vmm next to QEMU microvm.
//!
//! - `vmm-bench native`: the null guest (guest-kernel/null-guest) on this
//!   host: start → ready line / boot marker / exit, peak and idle memory, and
//!   N VMs started at once.
//! - `vmm-bench boot --lab`: the project's Linux guest booted by both VMMs in
//!   one lab run: boot-to-ready time and memory overhead, as ratios.
//!
//! Results are a Markdown table on stdout and JSON (`--json FILE`). See
//! docs/performance.md for the method and the numbers.

mod lab;
mod native;
mod proc;
mod report;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use clap::{Parser, Subcommand};

use report::Json;

#[derive(Debug, Parser)]
#[command(name = "vmm-bench", about = "Benchmarks of vmm next to QEMU microvm")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The null guest on this host: start → ready/marker/exit, memory, parallel VMs.
    Native {
        /// Timed runs per VMM (after one warm-up run).
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Idle runs per VMM, for memory.
        #[arg(long, default_value_t = 5)]
        idle_runs: usize,
        /// Batch sizes of VMs started at once.
        #[arg(long, default_value = "20,100", value_delimiter = ',')]
        parallel: Vec<usize>,
        /// Rounds per batch size.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// The vmm binary (default: `vmm` next to this binary).
        #[arg(long)]
        vmm: Option<PathBuf>,
        /// QEMU.
        #[arg(long, default_value = "qemu-system-x86_64")]
        qemu: PathBuf,
        /// Measure vmm only.
        #[arg(long)]
        no_qemu: bool,
        /// The null guest (default: built by guest-kernel/null-guest/build.sh).
        #[arg(long)]
        guest: Option<PathBuf>,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 128)]
        mem: u64,
        /// Also write the JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Run even when other QEMU processes (e.g. a lab run) share the CPUs.
        #[arg(long)]
        allow_busy: bool,
        /// The repository (for the null guest's build script).
        #[arg(long)]
        repo: Option<PathBuf>,
    },
    /// The Linux guest booted by vmm and QEMU microvm, in one lab run (ratios only).
    Boot {
        /// Run in the lab (tests/lab/lab): the only mode meant for people.
        #[arg(long, required_unless_present = "in_l1")]
        lab: bool,
        /// Internal: the part that runs inside L1.
        #[arg(long, hide = true)]
        in_l1: bool,
        /// Boots per VMM.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 256)]
        mem: u64,
        /// The vmm binary (host: copied into L1; default `vmm` next to this binary).
        #[arg(long)]
        vmm: Option<PathBuf>,
        /// QEMU inside L1.
        #[arg(long, default_value = "qemu-system-x86_64")]
        qemu: PathBuf,
        /// Leave out `vmm --boot pvh`.
        #[arg(long)]
        no_pvh: bool,
        /// In L1: the kernel.
        #[arg(long, default_value = "/lab/vmlinux")]
        kernel: PathBuf,
        /// In L1: the rootfs.
        #[arg(long, default_value = "/lab/rootfs.ext4")]
        rootfs: PathBuf,
        /// In L1: which VMMs (vmm, vmm-pvh, qemu).
        #[arg(long, default_value = "vmm,vmm-pvh,qemu")]
        variants: String,
        /// In L1: directory for boot.md and boot.json.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Host: copy the JSON result here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Host: copy the Markdown result here.
        #[arg(long)]
        markdown: Option<PathBuf>,
        /// The repository (for tests/lab/lab).
        #[arg(long)]
        repo: Option<PathBuf>,
    },
}

/// The repository this binary was built from.
fn default_repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// `vmm` next to this binary.
fn default_vmm() -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let vmm = me.with_file_name("vmm");
    if vmm.is_file() {
        Ok(vmm)
    } else {
        Err(format!(
            "no vmm binary next to {} (build it: cargo build --release -p vmm), or pass --vmm",
            me.display()
        ))
    }
}

fn build_null_guest(repo: &Path) -> Result<PathBuf, String> {
    let script = repo.join("guest-kernel/null-guest/build.sh");
    let out = Command::new(&script)
        .arg("--quiet")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let path = PathBuf::from(text.lines().last().unwrap_or("").trim());
    if out.status.success() && path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} failed ({}): {text}",
            script.display(),
            out.status
        ))
    }
}

fn first_line(cmd: &mut Command) -> String {
    cmd.stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// What the results were measured on.
pub struct HostInfo {
    cpu: String,
    cpus: usize,
    kernel: String,
    kvm: String,
    vmm: PathBuf,
    vmm_version: String,
    vmm_bytes: u64,
    git: String,
    qemu_version: String,
    date: String,
}

impl HostInfo {
    fn collect(vmm: &Path, qemu: Option<&Path>, repo: &Path) -> HostInfo {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
            .map_or("unknown".into(), |(_, v)| v.trim().to_string());
        let loaded = |m: &str| Path::new("/sys/module").join(m).exists();
        let kvm = if loaded("kvm_intel") {
            "VMX (kvm_intel)"
        } else if loaded("kvm_amd") {
            "SVM (kvm_amd)"
        } else if loaded("kvm_pvm") {
            "PVM (kvm_pvm)"
        } else {
            "unknown"
        };
        let git = {
            let head = first_line(Command::new("git").arg("-C").arg(repo).args([
                "rev-parse",
                "--short",
                "HEAD",
            ]));
            let dirty = Command::new("git")
                .arg("-C")
                .arg(repo)
                .args([
                    "status",
                    "--porcelain",
                    "--untracked-files=no",
                    "--",
                    "vmm",
                    "devices",
                    "Cargo.toml",
                    "Cargo.lock",
                ])
                .output()
                .map(|o| !o.stdout.is_empty())
                .unwrap_or(false);
            if dirty {
                format!("{head} + uncommitted changes")
            } else {
                head
            }
        };
        HostInfo {
            cpu,
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or("unknown".into(), |s| s.trim().to_string()),
            kvm: kvm.into(),
            vmm: vmm.to_path_buf(),
            vmm_version: first_line(Command::new(vmm).arg("--version")),
            vmm_bytes: std::fs::metadata(vmm).map_or(0, |m| m.len()),
            git,
            qemu_version: qemu.map_or("not measured".into(), |q| {
                first_line(Command::new(q).arg("--version"))
            }),
            date: first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
        }
    }

    fn markdown(&self) -> String {
        format!(
            "Measured {}: {}, {} CPUs, Linux {}, KVM {}. vmm: {} ({}, {} KiB, source {}). QEMU: {}.\n",
            self.date,
            self.cpu,
            self.cpus,
            self.kernel,
            self.kvm,
            self.vmm.display(),
            self.vmm_version,
            self.vmm_bytes / 1024,
            self.git,
            self.qemu_version
        )
    }

    fn json(&self) -> Json {
        Json::obj([
            ("date", Json::str(&self.date)),
            ("cpu", Json::str(&self.cpu)),
            ("cpus", Json::Num(self.cpus as f64)),
            ("kernel", Json::str(&self.kernel)),
            ("kvm", Json::str(&self.kvm)),
            ("vmm", Json::str(self.vmm.display().to_string())),
            ("vmm_version", Json::str(&self.vmm_version)),
            ("vmm_bytes", Json::Num(self.vmm_bytes as f64)),
            ("source", Json::str(&self.git)),
            ("qemu_version", Json::str(&self.qemu_version)),
        ])
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.cmd {
        Cmd::Native {
            runs,
            idle_runs,
            parallel,
            rounds,
            vmm,
            qemu,
            no_qemu,
            guest,
            mem,
            json,
            allow_busy,
            repo,
        } => {
            let others = proc::other_qemus();
            if !others.is_empty() {
                let msg = format!(
                    "other QEMU processes share this host's CPUs ({others:?}): a lab run? Timings would be skewed"
                );
                if !allow_busy {
                    return Err(format!(
                        "{msg}; wait for them to finish or pass --allow-busy"
                    ));
                }
                eprintln!("vmm-bench: warning: {msg}");
            }
            let repo = repo.unwrap_or_else(default_repo);
            let vmm = match vmm {
                Some(v) => v,
                None => default_vmm()?,
            };
            let guest = match guest {
                Some(g) => g,
                None => build_null_guest(&repo)?,
            };
            let qemu = (!no_qemu).then_some(qemu);
            let host = HostInfo::collect(&vmm, qemu.as_deref(), &repo);
            let opts = native::NativeOpts {
                runs: runs.max(1),
                idle_runs: idle_runs.max(1),
                parallel,
                rounds: rounds.max(1),
                vmm,
                qemu,
                guest,
                mem_mib: mem,
            };
            let (md, json_value) = native::run(&opts, &host)?;
            let text = json_value.render();
            println!("{md}\n```json\n{}```", text);
            if let Some(path) = json {
                std::fs::write(&path, text)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                eprintln!("vmm-bench: wrote {}", path.display());
            }
            Ok(())
        }
        Cmd::Boot {
            lab: _,
            in_l1,
            runs,
            mem,
            vmm,
            qemu,
            no_pvh,
            kernel,
            rootfs,
            variants,
            out,
            json,
            markdown,
            repo,
        } => {
            if in_l1 {
                let opts = lab::InL1Opts {
                    runs: runs.max(1),
                    mem_mib: mem,
                    vmm: vmm.unwrap_or_else(|| PathBuf::from("vmm")),
                    qemu,
                    kernel,
                    rootfs,
                    out,
                    variants: lab::parse_variants(&variants)?,
                };
                return lab::run_in_l1(&opts);
            }
            let vmm = match vmm {
                Some(v) => v,
                None => default_vmm()?,
            };
            lab::run_host(&lab::HostOpts {
                runs: runs.max(1),
                mem_mib: mem,
                vmm,
                repo: repo.unwrap_or_else(default_repo),
                json,
                markdown,
                no_pvh,
            })
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmm-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}
