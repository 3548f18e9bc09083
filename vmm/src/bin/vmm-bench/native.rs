//! `vmm-bench native`: vmm and QEMU microvm boot the null guest on this host.
//!
//! For each VMM: process start → ready line and → exit, vmm's own boot-marker
//! time, peak memory of exit runs (`wait4`), memory while the guest idles
//! (`/proc/PID/status`, guest RAM from `/proc/PID/smaps`), and the wall time
//! of N VMs started at once until the last one exits.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::proc::{self, launch};
use crate::report::{cell, ratio, table, Json, Summary};
use crate::HostInfo;

/// The null guest's ready line.
pub const READY: &str = "NULL-GUEST-READY";
/// The status the guest exits with in timed runs (proves it ran to the end).
const STATUS: u8 = 7;
/// Limit for any single run.
const RUN_LIMIT: Duration = Duration::from_secs(30);
/// How long after the ready line an idle guest's VMM is sampled.
const SETTLE: Duration = Duration::from_millis(200);

/// Options of `vmm-bench native`.
#[derive(Debug, Clone)]
pub struct NativeOpts {
    /// Timed exit runs per VMM.
    pub runs: usize,
    /// Idle (memory) runs per VMM.
    pub idle_runs: usize,
    /// Parallel batch sizes.
    pub parallel: Vec<usize>,
    /// Rounds per batch size.
    pub rounds: usize,
    /// The vmm binary.
    pub vmm: PathBuf,
    /// QEMU, unless skipped.
    pub qemu: Option<PathBuf>,
    /// The null guest.
    pub guest: PathBuf,
    /// Guest memory, MiB.
    pub mem_mib: u64,
}

/// Which VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// vmm.
    Vmm,
    /// QEMU microvm.
    Qemu,
}

/// A VMM under test.
#[derive(Debug, Clone)]
pub struct Target {
    kind: Kind,
    bin: PathBuf,
    mem_mib: u64,
}

impl Target {
    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Vmm => "vmm",
            Kind::Qemu => "QEMU microvm",
        }
    }

    /// The command that boots the null guest with `cmdline`.
    pub fn command(&self, guest: &Path, cmdline: &str, verbose: bool) -> Command {
        let mut c = Command::new(&self.bin);
        match self.kind {
            Kind::Vmm => {
                c.arg("--kernel")
                    .arg(guest)
                    .args(["--boot", "pvh", "--mem"])
                    .arg(format!("{}M", self.mem_mib))
                    .args(["--cmdline", cmdline]);
                if verbose {
                    c.arg("-v");
                }
            }
            Kind::Qemu => {
                c.args(["-M", "microvm", "-enable-kvm", "-cpu", "host", "-m"])
                    .arg(format!("{}M", self.mem_mib))
                    .args(["-smp", "1", "-nodefaults", "-no-user-config", "-nographic"])
                    .args(["-serial", "stdio", "-kernel"])
                    .arg(guest)
                    .args(["-append", cmdline])
                    .args([
                        "-device",
                        "isa-debug-exit,iobase=0xf4,iosize=4",
                        "-no-reboot",
                    ]);
            }
        }
        c
    }

    /// The exit code of the VMM when the guest exits with `status`.
    fn exit_code(&self, status: u8) -> i32 {
        match self.kind {
            Kind::Vmm => i32::from(status),
            // isa-debug-exit: (value << 1) | 1.
            Kind::Qemu => (i32::from(status) << 1) | 1,
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Samples {
    ready_ms: Vec<f64>,
    marker_ms: Vec<f64>,
    exit_ms: Vec<f64>,
    maxrss_mib: Vec<f64>,
    idle_hwm_mib: Vec<f64>,
    idle_rss_mib: Vec<f64>,
    idle_anon_mib: Vec<f64>,
    idle_file_mib: Vec<f64>,
    idle_pss_mib: Vec<f64>,
    idle_private_mib: Vec<f64>,
    idle_guest_mib: Vec<f64>,
    idle_overhead_mib: Vec<f64>,
    parallel_ms: Vec<(usize, Vec<f64>)>,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// vmm's boot-marker time from its `-v` log.
pub fn marker_ms(stderr: &str) -> Option<f64> {
    stderr
        .lines()
        .find_map(|l| l.split_once("guest boot marker 1 at "))
        .and_then(|(_, rest)| rest.trim().strip_suffix("ms")?.trim().parse().ok())
}

fn exit_run(t: &Target, guest: &Path, s: &mut Samples) -> Result<(), String> {
    let mut cmd = t.command(guest, &format!("exit={STATUS}"), true);
    let mut l = launch(&mut cmd, READY).map_err(|e| format!("cannot start {}: {e}", t.name()))?;
    let end = l
        .wait(RUN_LIMIT)
        .map_err(|e| format!("waiting for {}: {e}", t.name()))?;
    let ready = l.ready_seen();
    if end.code != Some(t.exit_code(STATUS)) || ready.is_none() {
        return Err(format!(
            "{} did not boot the null guest to its exit (expected code {}, ready line {}):\n{}",
            t.name(),
            t.exit_code(STATUS),
            if ready.is_some() { "seen" } else { "missing" },
            end.describe()
        ));
    }
    s.ready_ms.extend(ready.map(ms));
    s.exit_ms.push(ms(end.elapsed));
    s.maxrss_mib.push(mib(end.maxrss_kib));
    if t.kind == Kind::Vmm {
        match marker_ms(&end.stderr) {
            Some(m) => s.marker_ms.push(m),
            None => return Err(format!("no boot marker in vmm's log:\n{}", end.describe())),
        }
    }
    Ok(())
}

fn idle_run(t: &Target, guest: &Path, s: &mut Samples) -> Result<(), String> {
    let mut cmd = t.command(guest, "idle", false);
    let mut l = launch(&mut cmd, READY).map_err(|e| format!("cannot start {}: {e}", t.name()))?;
    let ready = l.wait_ready(RUN_LIMIT);
    if ready.is_some() {
        std::thread::sleep(SETTLE);
    }
    let status = proc::mem_status(l.pid());
    let rollup = proc::rollup(l.pid());
    let maps = proc::smaps(l.pid());
    l.signal(libc::SIGKILL);
    let end = l
        .wait(RUN_LIMIT)
        .map_err(|e| format!("waiting for {}: {e}", t.name()))?;
    if ready.is_none() {
        return Err(format!(
            "{} printed no ready line in idle mode:\n{}",
            t.name(),
            end.describe()
        ));
    }
    let status = status.map_err(|e| format!("reading /proc of {}: {e}", t.name()))?;
    let maps = maps.map_err(|e| format!("reading smaps of {}: {e}", t.name()))?;
    let rollup = rollup.map_err(|e| format!("reading smaps_rollup of {}: {e}", t.name()))?;
    let guest_kib = proc::guest_ram(&maps, t.mem_mib * 1024)
        .map(|m| m.rss)
        .ok_or_else(|| format!("no guest RAM mapping of {} MiB in smaps", t.mem_mib))?;
    s.idle_hwm_mib.push(mib(status.hwm));
    s.idle_rss_mib.push(mib(status.rss));
    s.idle_anon_mib.push(mib(status.anon));
    s.idle_file_mib.push(mib(status.file));
    s.idle_pss_mib.push(mib(rollup.pss));
    s.idle_private_mib.push(mib(rollup.private));
    s.idle_guest_mib.push(mib(guest_kib));
    s.idle_overhead_mib
        .push(mib(status.rss.saturating_sub(guest_kib)));
    Ok(())
}

/// Start `n` VMs at once; the wall time until the last one has exited.
fn parallel_run(t: &Target, guest: &Path, n: usize) -> Result<f64, String> {
    let t0 = Instant::now();
    let mut children = Vec::with_capacity(n);
    for _ in 0..n {
        let mut cmd = t.command(guest, &format!("exit={STATUS}"), false);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match cmd.spawn() {
            Ok(c) => children.push(c),
            Err(e) => {
                for mut c in children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(format!("cannot start {} #{}: {e}", t.name(), n));
            }
        }
    }
    let pids: Vec<i32> = children
        .iter()
        .map(|c| i32::try_from(c.id()).unwrap_or(i32::MAX))
        .collect();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(RUN_LIMIT).is_err() {
            for pid in pids {
                // SAFETY: kill(2) on our own children, not yet reaped.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    });
    let mut bad = Vec::new();
    for mut c in children {
        match c.wait() {
            Ok(s) if s.code() == Some(t.exit_code(STATUS)) => {}
            Ok(s) => bad.push(s.to_string()),
            Err(e) => bad.push(e.to_string()),
        }
    }
    let wall = ms(t0.elapsed());
    let _ = done_tx.send(());
    let _ = watchdog.join();
    if bad.is_empty() {
        Ok(wall)
    } else {
        Err(format!(
            "{} of {n} {} VMs run in parallel did not exit with code {}: {bad:?}",
            bad.len(),
            t.name(),
            t.exit_code(STATUS)
        ))
    }
}

/// Run the native benchmark; returns (Markdown, JSON).
pub fn run(o: &NativeOpts, host: &HostInfo) -> Result<(String, Json), String> {
    let mut targets = vec![Target {
        kind: Kind::Vmm,
        bin: o.vmm.clone(),
        mem_mib: o.mem_mib,
    }];
    if let Some(q) = &o.qemu {
        targets.push(Target {
            kind: Kind::Qemu,
            bin: q.clone(),
            mem_mib: o.mem_mib,
        });
    }
    let mut samples = vec![Samples::default(); targets.len()];
    let load_start = proc::loadavg();

    eprintln!("vmm-bench: warm-up");
    for t in &targets {
        exit_run(t, &o.guest, &mut Samples::default())?;
    }
    // Alternate the order so neither VMM always runs right after the other.
    let order = |i: usize| -> Vec<usize> {
        let mut v: Vec<usize> = (0..targets.len()).collect();
        if i % 2 == 1 {
            v.reverse();
        }
        v
    };
    eprintln!("vmm-bench: {} timed runs each", o.runs);
    for i in 0..o.runs {
        for k in order(i) {
            exit_run(&targets[k], &o.guest, &mut samples[k])?;
        }
    }
    eprintln!("vmm-bench: {} idle runs each", o.idle_runs);
    for i in 0..o.idle_runs {
        for k in order(i) {
            idle_run(&targets[k], &o.guest, &mut samples[k])?;
        }
    }
    for &n in &o.parallel {
        eprintln!("vmm-bench: {n} VMs in parallel, {} rounds each", o.rounds);
        let mut walls = vec![Vec::new(); targets.len()];
        for i in 0..o.rounds {
            for k in order(i) {
                walls[k].push(parallel_run(&targets[k], &o.guest, n)?);
            }
        }
        for (k, w) in walls.into_iter().enumerate() {
            samples[k].parallel_ms.push((n, w));
        }
    }
    let load_end = proc::loadavg();
    Ok(render(o, host, &targets, &samples, load_start, load_end))
}

fn render(
    o: &NativeOpts,
    host: &HostInfo,
    targets: &[Target],
    samples: &[Samples],
    load_start: f64,
    load_end: f64,
) -> (String, Json) {
    let sum = |k: usize, f: &dyn Fn(&Samples) -> &Vec<f64>| Summary::of(f(&samples[k]));
    let has_qemu = targets.len() > 1;
    type Get = fn(&Samples) -> &Vec<f64>;
    let metrics: [(&str, Get, usize); 12] = [
        ("start → ready line (ms)", |s| &s.ready_ms, 2),
        ("start → boot marker, vmm's clock (ms)", |s| &s.marker_ms, 2),
        ("start → exit (ms)", |s| &s.exit_ms, 2),
        (
            "peak RSS of an exit run, ru_maxrss (MiB)",
            |s| &s.maxrss_mib,
            2,
        ),
        ("idle: peak RSS, VmHWM (MiB)", |s| &s.idle_hwm_mib, 2),
        ("idle: RSS, VmRSS (MiB)", |s| &s.idle_rss_mib, 2),
        (
            "idle: anonymous RSS, RssAnon (MiB)",
            |s| &s.idle_anon_mib,
            2,
        ),
        (
            "idle: file-backed RSS, RssFile (MiB)",
            |s| &s.idle_file_mib,
            2,
        ),
        (
            "idle: proportional set size, Pss (MiB)",
            |s| &s.idle_pss_mib,
            2,
        ),
        (
            "idle: private memory, Private_* (MiB)",
            |s| &s.idle_private_mib,
            2,
        ),
        ("idle: guest RAM resident (MiB)", |s| &s.idle_guest_mib, 2),
        (
            "idle: RSS minus guest RAM (MiB)",
            |s| &s.idle_overhead_mib,
            2,
        ),
    ];
    let mut md_rows = Vec::new();
    let mut json_metrics = Vec::new();
    for (name, get, digits) in metrics {
        let v = sum(0, &get);
        let q = if has_qemu { sum(1, &get) } else { None };
        md_rows.push(vec![
            name.to_string(),
            cell(v, digits),
            if has_qemu {
                cell(q, digits)
            } else {
                "–".into()
            },
            ratio(v, q),
        ]);
        json_metrics.push((
            name.to_string(),
            Json::obj([
                ("vmm", Summary::json(v, get(&samples[0]))),
                (
                    "qemu",
                    if has_qemu {
                        Summary::json(q, get(&samples[1]))
                    } else {
                        Json::Null
                    },
                ),
            ]),
        ));
    }
    for (i, &n) in o.parallel.iter().enumerate() {
        let get = |k: usize| samples[k].parallel_ms.get(i).map(|(_, w)| w.clone());
        let v = get(0).unwrap_or_default();
        let q = if has_qemu {
            get(1).unwrap_or_default()
        } else {
            Vec::new()
        };
        let (sv, sq) = (Summary::of(&v), Summary::of(&q));
        let name = format!("{n} VMs in parallel: start → last exit (ms)");
        md_rows.push(vec![name.clone(), cell(sv, 1), cell(sq, 1), ratio(sv, sq)]);
        json_metrics.push((
            name,
            Json::obj([
                ("vmm", Summary::json(sv, &v)),
                (
                    "qemu",
                    if has_qemu {
                        Summary::json(sq, &q)
                    } else {
                        Json::Null
                    },
                ),
            ]),
        ));
    }

    let mut md = String::new();
    md.push_str("### vmm-bench native: the null guest on this host\n\n");
    md.push_str(&host.markdown());
    md.push_str(&format!(
        "\nGuest: the null guest ({}), {} MiB, 1 vCPU, command line `exit={STATUS}` (idle runs: `idle`). \
         {} timed runs and {} idle runs per VMM after one warm-up, alternating VMMs; idle memory \
         sampled {} ms after the ready line; parallel batches: {} rounds. Load average {load_start:.2} \
         at the start, {load_end:.2} at the end.\n\n",
        o.guest.display(),
        o.mem_mib,
        o.runs,
        o.idle_runs,
        SETTLE.as_millis(),
        o.rounds
    ));
    md.push_str("Median (min–max):\n\n");
    md.push_str(&table(
        &["metric", "vmm", "QEMU microvm", "vmm/QEMU"],
        &md_rows,
    ));

    // vmm against its targets.
    let med = |get: Get| sum(0, &get).map(|s| s.median);
    let par20 = o
        .parallel
        .iter()
        .position(|&n| n == 20)
        .and_then(|i| Summary::of(&samples[0].parallel_ms[i].1))
        .map(|s| s.median);
    let peak = [med(|s| &s.maxrss_mib), med(|s| &s.idle_hwm_mib)]
        .into_iter()
        .flatten()
        .fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.max(b))));
    let targets_rows: Vec<(String, String, Option<f64>, f64, usize)> = vec![
        (
            "start → boot marker (vmm's clock)".into(),
            "≤ 8 ms".into(),
            med(|s| &s.marker_ms),
            8.0,
            2,
        ),
        (
            "peak RSS (larger of the two peaks above)".into(),
            "≤ 3 MiB".into(),
            peak,
            3.0,
            2,
        ),
        (
            "anonymous RSS (idle)".into(),
            "≤ 0.3 MiB".into(),
            med(|s| &s.idle_anon_mib),
            0.3,
            2,
        ),
        (
            "20 VMs in parallel".into(),
            "≤ 60 ms".into(),
            par20,
            60.0,
            1,
        ),
    ];
    let mut trows = Vec::new();
    let mut tjson = Vec::new();
    for (name, goal, got, limit, digits) in targets_rows {
        let met = got.map(|g| g <= limit);
        trows.push(vec![
            name.clone(),
            goal.clone(),
            got.map_or("–".into(), |g| format!("{g:.digits$}")),
            match met {
                Some(true) => "yes".into(),
                Some(false) => "**no**".into(),
                None => "–".into(),
            },
        ]);
        tjson.push(Json::obj([
            ("target", Json::str(name)),
            ("goal", Json::str(goal)),
            ("median", got.map_or(Json::Null, Json::Num)),
            ("met", met.map_or(Json::Null, Json::Bool)),
        ]));
    }
    md.push_str("\nvmm against its targets (medians):\n\n");
    md.push_str(&table(&["target", "goal", "vmm", "met"], &trows));

    let json = Json::obj([
        ("benchmark", Json::str("native")),
        ("host", host.json()),
        ("guest", Json::str(o.guest.display().to_string())),
        ("mem_mib", Json::Num(o.mem_mib as f64)),
        ("runs", Json::Num(o.runs as f64)),
        ("idle_runs", Json::Num(o.idle_runs as f64)),
        ("rounds", Json::Num(o.rounds as f64)),
        ("load_start", Json::Num(load_start)),
        ("load_end", Json::Num(load_end)),
        (
            "commands",
            Json::Arr(
                targets
                    .iter()
                    .map(|t| {
                        Json::str(command_line(&t.command(
                            &o.guest,
                            "exit=7",
                            t.kind == Kind::Vmm,
                        )))
                    })
                    .collect(),
            ),
        ),
        ("metrics", Json::Obj(json_metrics)),
        ("targets", Json::Arr(tjson)),
    ]);
    (md, json)
}

/// A command as a shell would show it.
pub fn command_line(c: &Command) -> String {
    std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(|a| {
            let a = a.to_string_lossy();
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=,:@".contains(c))
            {
                a.into_owned()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_from_the_log() {
        let log = "vmm: [    8.112 ms] guest started 8.112 ms after vmm\n\
                   vmm: [    8.587 ms] guest boot marker 1 at 8.587 ms\n";
        assert_eq!(marker_ms(log), Some(8.587));
        assert_eq!(marker_ms("nothing"), None);
    }

    #[test]
    fn commands_boot_the_same_guest() {
        let g = Path::new("/g/null.elf");
        let v = Target {
            kind: Kind::Vmm,
            bin: "vmm".into(),
            mem_mib: 128,
        };
        assert_eq!(
            command_line(&v.command(g, "exit=7", true)),
            "vmm --kernel /g/null.elf --boot pvh --mem 128M --cmdline exit=7 -v"
        );
        let q = Target {
            kind: Kind::Qemu,
            bin: "qemu".into(),
            mem_mib: 128,
        };
        let line = command_line(&q.command(g, "idle", false));
        assert!(line.contains("-kernel /g/null.elf -append idle"), "{line}");
        assert_eq!((v.exit_code(7), q.exit_code(7)), (7, 15));
    }
}
