//! The null guest (guest-kernel/null-guest) under vmm, on this host: PVH boot, the boot
//! marker, the ready line, exit statuses, restart cycles without leaks, and bad PVH notes
//! refused with a clear message. One lab test boots Linux through `--boot pvh`.
//!
//! The null guest is a few dozen instructions entered in 32-bit protected mode, which
//! KVM-PVM runs natively, so these tests need a `/dev/kvm` but no lab. They fail loudly
//! without one, unless `VMM_SKIP_KVM=1` (they then print SKIPPED). The lab test follows
//! `VMM_SKIP_LAB` like the other lab tests.

// A test crate: `expect` with context is how its helpers fail.
#![allow(clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{lab_skipped, prepare, repo_root, LabRun};

/// The vmm binary under test.
const VMM: &str = env!("CARGO_BIN_EXE_vmm");
/// The null guest's ready line.
const READY: &str = "NULL-GUEST-READY";
/// No null-guest run here should take longer (they take milliseconds).
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// True (after printing SKIPPED) when `VMM_SKIP_KVM=1`; panics when `/dev/kvm` cannot be
/// opened otherwise, so a host without KVM cannot pass these tests silently.
fn kvm_skipped(test: &str) -> bool {
    if std::env::var("VMM_SKIP_KVM").is_ok_and(|v| v == "1") {
        println!("SKIPPED {test}: VMM_SKIP_KVM=1 is set, so this KVM test did not run");
        eprintln!("SKIPPED {test}: VMM_SKIP_KVM=1 is set, so this KVM test did not run");
        return true;
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("{test} needs /dev/kvm, which cannot be opened read-write ({e}); set VMM_SKIP_KVM=1 to skip the KVM tests");
    }
    false
}

/// The null guest, built (or found in the cache) by its build script once per test binary.
fn null_guest() -> &'static Path {
    static GUEST: OnceLock<PathBuf> = OnceLock::new();
    GUEST.get_or_init(|| {
        let script = repo_root().join("guest-kernel/null-guest/build.sh");
        let out = Command::new(&script)
            .arg("--quiet")
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{} failed ({}):\n{stdout}",
            script.display(),
            out.status
        );
        let path = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
        assert!(
            path.is_file(),
            "{} printed {path:?}, not a file",
            script.display()
        );
        path
    })
}

/// Scratch files of this test binary.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("null_guest");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {dir:?}: {e}"));
    dir.join(name)
}

/// Runs vmm with `args` (stdin closed), killing it after [`RUN_LIMIT`].
fn run_vmm(args: &[&str]) -> Output {
    let child = Command::new(VMM)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {VMM}: {e}"));
    let pid = child.id();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(RUN_LIMIT).is_err() {
            kill(pid, libc::SIGKILL);
        }
    });
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("cannot wait for vmm: {e}"));
    let _ = done_tx.send(());
    let _ = watchdog.join();
    out
}

fn kill(pid: u32, sig: i32) {
    let pid = i32::try_from(pid).expect("pid fits i32");
    // SAFETY: kill(2) on a pid we spawned; no memory is involved.
    unsafe { libc::kill(pid, sig) };
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace('\r', "")
}

fn describe(out: &Output) -> String {
    format!(
        "vmm {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// The boot marker times (ms) in a `-v` log.
fn markers(stderr: &str) -> Vec<f64> {
    stderr
        .lines()
        .filter_map(|l| l.split_once("guest boot marker 1 at "))
        .filter_map(|(_, rest)| rest.strip_suffix(" ms")?.trim().parse().ok())
        .collect()
}

#[test]
fn null_guest_boots_through_pvh_marks_prints_ready_and_exits_0() {
    if kvm_skipped("null_guest_boots_through_pvh_marks_prints_ready_and_exits_0") {
        return;
    }
    let guest = null_guest().to_str().expect("UTF-8 path");
    let out = run_vmm(&["--kernel", guest, "--boot", "pvh", "-v"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        stdout.lines().any(|l| l == READY),
        "no {READY} line\n{}",
        describe(&out)
    );
    assert!(
        stderr.contains("boot protocol Pvh"),
        "not booted through PVH\n{}",
        describe(&out)
    );
    let m = markers(&stderr);
    assert!(
        m.len() == 1 && m[0] > 0.0 && m[0] < RUN_LIMIT.as_secs_f64() * 1000.0,
        "expected one boot marker with a time in the -v log, got {m:?}\n{}",
        describe(&out)
    );
    assert!(
        stderr.contains("guest exited with status 0"),
        "{}",
        describe(&out)
    );
}

#[test]
fn the_guest_exit_status_passes_through() {
    if kvm_skipped("the_guest_exit_status_passes_through") {
        return;
    }
    let guest = null_guest().to_str().expect("UTF-8 path");
    // The last word wins; only the status's low byte reaches the debug device.
    for (cmdline, want) in [
        ("exit=1", 1),
        ("exit=42", 42),
        ("exit=255", 255),
        ("exit=300", 300 % 256),
        ("exit=9 exit", 0),
        ("idle exit=7", 7),
    ] {
        let out = run_vmm(&["--kernel", guest, "--boot", "pvh", "--cmdline", cmdline]);
        assert_eq!(
            out.status.code(),
            Some(want),
            "--cmdline {cmdline:?}\n{}",
            describe(&out)
        );
        assert!(text(&out.stdout).lines().any(|l| l == READY));
    }
    // vmm's own `reboot=k` is not the null guest's `reboot` word: this exits with 3.
    let out = run_vmm(&["--kernel", guest, "--boot", "pvh", "--cmdline", "exit=3"]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
}

#[test]
fn boot_auto_picks_pvh_on_a_pvm_host() {
    if kvm_skipped("boot_auto_picks_pvh_on_a_pvm_host") {
        return;
    }
    let pvm = Path::new("/sys/module/kvm_pvm").exists()
        && !Path::new("/sys/module/kvm_intel").exists()
        && !Path::new("/sys/module/kvm_amd").exists();
    if !pvm {
        println!("this host's KVM is not PVM: --boot auto uses the Linux protocol here");
        return;
    }
    let guest = null_guest().to_str().expect("UTF-8 path");
    let out = run_vmm(&["--kernel", guest, "-v", "--cmdline", "exit=6"]);
    assert_eq!(out.status.code(), Some(6), "{}", describe(&out));
    assert!(text(&out.stderr).contains("boot protocol Pvh"));
}

/// A running vmm whose stdout and stderr lines arrive on channels.
struct Live {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Live {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(VMM)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {VMM}: {e}"));
        let lines = |r: Box<dyn std::io::Read + Send>| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    if tx.send(line.replace('\r', "")).is_err() {
                        break;
                    }
                }
            });
            rx
        };
        let stdout = lines(Box::new(child.stdout.take().expect("piped stdout")));
        let stderr = lines(Box::new(child.stderr.take().expect("piped stderr")));
        Self {
            child,
            stdout,
            stderr,
            log: Vec::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a line containing `what` on stdout or stderr (both are kept in `log`).
    fn expect(&mut self, from_stdout: bool, what: &str) {
        let deadline = Instant::now() + RUN_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let rx = if from_stdout {
                &self.stdout
            } else {
                &self.stderr
            };
            match rx.recv_timeout(left.min(Duration::from_millis(50))) {
                Ok(line) => {
                    let hit = line.contains(what);
                    self.log.push(line);
                    if hit {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) if !left.is_zero() => {}
                Err(e) => self.fail(&format!("no line with {what:?} ({e:?})")),
            }
            // Keep the other stream flowing into the log.
            let other = if from_stdout {
                &self.stderr
            } else {
                &self.stdout
            };
            self.log.extend(other.try_iter());
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        if let Err(e) = stdin.write_all(bytes).and_then(|()| stdin.flush()) {
            self.fail(&format!("cannot write to vmm's stdin: {e}"));
        }
    }

    fn wait(&mut self) -> Option<i32> {
        let deadline = Instant::now() + RUN_LIMIT;
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) => {
                    self.log.extend(self.stdout.try_iter());
                    self.log.extend(self.stderr.try_iter());
                    return s.code();
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => self.fail("vmm did not exit"),
            }
        }
    }

    fn fail(&mut self, why: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log.extend(self.stdout.try_iter());
        self.log.extend(self.stderr.try_iter());
        panic!("{why}; vmm's output so far:\n{}", self.log.join("\n"));
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn wait_holds_the_guest_until_console_input() {
    if kvm_skipped("wait_holds_the_guest_until_console_input") {
        return;
    }
    let guest = null_guest().to_str().expect("UTF-8 path");
    let mut vm = Live::start(&[
        "--kernel",
        guest,
        "--boot",
        "pvh",
        "--cmdline",
        "wait exit=5",
    ]);
    vm.expect(true, READY);
    std::thread::sleep(Duration::from_millis(200));
    if let Ok(Some(s)) = vm.child.try_wait() {
        vm.fail(&format!("vmm ended ({s}) before the guest got any input"));
    }
    vm.send(b"x");
    assert_eq!(vm.wait(), Some(5), "{}", vm.log.join("\n"));
}

/// What a long-lived vmm process holds at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Footprint {
    fds: usize,
    threads: u64,
    rss_kib: u64,
}

fn footprint(pid: u32) -> Footprint {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("cannot list /proc/{pid}/fd: {e}"))
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    Footprint {
        fds,
        threads: field("Threads:"),
        rss_kib: field("VmRSS:"),
    }
}

/// The lifecycle promise: 50 boot/shutdown cycles of a long-lived vmm (`--on-reboot
/// restart`) without growth in open file descriptors, threads or memory. The guest
/// (`wait reboot`) reboots only when it gets a byte of console input, so every sample is
/// taken in the same state: guest booted and waiting, vmm idle in its event loop.
#[test]
fn fifty_restart_cycles_do_not_grow_fds_threads_or_memory() {
    if kvm_skipped("fifty_restart_cycles_do_not_grow_fds_threads_or_memory") {
        return;
    }
    const CYCLES: u64 = 50;
    let guest = null_guest().to_str().expect("UTF-8 path");
    let mut vm = Live::start(&[
        "--kernel",
        guest,
        "--boot",
        "pvh",
        "--on-reboot",
        "restart",
        "--cmdline",
        "wait reboot",
        "-v",
    ]);
    let mut samples = Vec::new();
    for boot in 1..=CYCLES {
        if boot > 1 {
            vm.expect(false, &format!("guest rebooted: starting boot {boot}"));
        }
        vm.expect(true, READY);
        if [5, 10, 20, 30, 40, 50].contains(&boot) {
            samples.push((boot, footprint(vm.pid())));
        }
        if boot < CYCLES {
            vm.send(b"r");
        }
    }
    // A stop signal, then the reboot it would otherwise restart from: vmm ends with 0.
    kill(vm.pid(), libc::SIGTERM);
    vm.expect(false, "asking the guest to shut down");
    vm.send(b"r");
    let status = vm.wait();
    println!("footprints (boot, state): {samples:?}");
    assert_eq!(status, Some(0), "{}", vm.log.join("\n"));
    assert!(
        !vm.log
            .iter()
            .any(|l| l.contains(&format!("starting boot {}", CYCLES + 1))),
        "vmm restarted the guest after SIGTERM\n{}",
        vm.log.join("\n")
    );
    let (_, first) = samples[0];
    for &(boot, f) in &samples[1..] {
        assert_eq!(
            (f.fds, f.threads),
            (first.fds, first.threads),
            "open fds or threads changed between boot 5 and boot {boot}: {samples:?}"
        );
        // Guest memory is mapped afresh each boot; what the host process holds besides
        // must not creep up: allow allocator noise, not 45 boots of a leak.
        assert!(
            f.rss_kib <= first.rss_kib + 256,
            "resident memory grew from {} KiB at boot 5 to {} KiB at boot {boot}: {samples:?}",
            first.rss_kib,
            f.rss_kib
        );
    }
}

// --- Bad PVH notes --------------------------------------------------------------------

/// Where the null guest's PT_NOTE segment is: (offset of its program header, file offset
/// and size of the segment).
fn note_segment(elf: &[u8]) -> (usize, usize, usize) {
    let u16_at = |at: usize| usize::from(u16::from_le_bytes([elf[at], elf[at + 1]]));
    let u64_at = |at: usize| {
        let v = u64::from_le_bytes(elf[at..at + 8].try_into().expect("8 bytes"));
        usize::try_from(v).expect("offset fits usize")
    };
    let (phoff, phentsize, phnum) = (u64_at(32), u16_at(54), u16_at(56));
    (0..phnum)
        .map(|i| phoff + i * phentsize)
        .find(|&ph| elf[ph..ph + 4] == 4u32.to_le_bytes())
        .map(|ph| (ph, u64_at(ph + 8), u64_at(ph + 32)))
        .expect("the null guest has a PT_NOTE segment")
}

/// Runs vmm on a doctored copy of the null guest and checks that it refuses it with one
/// clear line.
fn assert_refused(name: &str, elf: &[u8], why: &str) {
    let path = scratch(&format!("{name}.elf"));
    std::fs::write(&path, elf).unwrap_or_else(|e| panic!("cannot write {path:?}: {e}"));
    let kernel = path.to_str().expect("UTF-8 path");
    for boot in ["pvh", "auto", "linux"] {
        let out = run_vmm(&["--kernel", kernel, "--boot", boot]);
        let stderr = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{name}, --boot {boot}\n{}",
            describe(&out)
        );
        assert!(
            stderr.contains("has a bad PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)")
                && stderr.contains(why),
            "{name}, --boot {boot}: expected a bad-PVH-note error mentioning {why:?}\n{}",
            describe(&out)
        );
        assert!(!text(&out.stdout).contains(READY), "{name}: the guest ran");
    }
}

#[test]
fn bad_pvh_notes_are_refused_with_a_clear_message() {
    if kvm_skipped("bad_pvh_notes_are_refused_with_a_clear_message") {
        return;
    }
    let good = std::fs::read(null_guest()).expect("read the null guest");
    let (ph, off, size) = note_segment(&good);
    // The note: namesz, descsz, type, "Xen\0", then the 8-byte entry.
    assert_eq!(
        &good[off + 12..off + 16],
        b"Xen\0",
        "unexpected note layout"
    );
    let desc = off + 16;
    let with_entry = |entry: u64| {
        let mut e = good.clone();
        e[desc..desc + 8].copy_from_slice(&entry.to_le_bytes());
        e
    };

    // The entry points into guest RAM, but outside the kernel image.
    assert_refused(
        "entry-outside-image",
        &with_entry(0x20_0000),
        "outside the kernel image",
    );
    // The entry points past the end of guest memory (128 MiB by default).
    assert_refused(
        "entry-outside-ram",
        &with_entry(0xb000_0000),
        "outside guest memory",
    );
    assert_refused("entry-above-4g", &with_entry(1 << 32), "above 4 GiB");

    // The segment holds only the note's header: the note is truncated.
    let mut short = good.clone();
    short[ph + 32..ph + 40].copy_from_slice(&12u64.to_le_bytes());
    assert_refused("truncated-note", &short, "truncated");

    // A descriptor too short for an address.
    let mut tiny = good.clone();
    tiny[off + 4..off + 8].copy_from_slice(&2u32.to_le_bytes());
    assert_refused("short-descriptor", &tiny, "too short");

    // The file ends inside the note.
    assert_refused(
        "cut-file",
        &good[..off + size - 4],
        "extends past the end of the file",
    );

    // The untouched guest still boots (the doctoring above is what vmm refused).
    let out = run_vmm(&[
        "--kernel",
        null_guest().to_str().expect("UTF-8"),
        "--boot",
        "pvh",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

// --- Lab: Linux through PVH -----------------------------------------------------------

/// Our Linux guest kernel (CONFIG_PVH=y) boots through `--boot pvh` to the test init's
/// `VMM-GUEST-READY` and runs its command, in the lab (KVM with SVM, nested).
#[test]
fn linux_boots_through_pvh_in_the_lab() {
    if lab_skipped("linux_boots_through_pvh_in_the_lab") {
        return;
    }
    let script = "cp /lab/rootfs.ext4 /tmp/rootfs.ext4 && \
        exec guest-run --name pvh --timeout 300 -- vmm -v --kernel /lab/vmlinux --boot pvh \
        --rootfs /tmp/rootfs.ext4 --cmdline 'run=\"echo pvh-ok; exit 7\"'";
    let run = LabRun::new("null-guest-linux-pvh")
        .bin(VMM)
        .guest_files(prepare())
        .timeout(600)
        .command(["sh", "-c", script])
        .run();
    run.assert_kind("scenario");
    run.assert_line("VMM-GUEST-READY");
    run.assert_line("pvh-ok");
    run.assert_stdout_contains("boot protocol Pvh");
    let summary = run.guest_run("pvh");
    assert_eq!(
        summary.get("result").map(String::as_str),
        Some("ok"),
        "{}",
        run.describe()
    );
    assert_eq!(
        summary.get("vmm_status").map(String::as_str),
        Some("7"),
        "{}",
        run.describe()
    );
    run.assert_status(7);
}
