//! vmm boots Linux: end-to-end tests of the `vmm` binary.
//!
//! - **Host tests** (no KVM, no lab): bad command lines that vmm must refuse before it
//!   touches KVM. They run the built binary directly and take milliseconds.
//! - **Lab tests**: everything that needs a working KVM runs inside the lab's L1 machine
//!   (docs/lab.md), in two L1 boots (one-vCPU L1s: see [`L1_CPUS`]) shared through
//!   `OnceLock`s:
//!   - `guests`: twelve vmm runs (eleven guest kernel boots, one at a time) of the
//!     project's guest kernel (ELF and bzImage) with its rootfs, a data disk, an initrd,
//!     each console mode, each shutdown path, a kernel panic, and a triple fault;
//!   - `errors`: bad input that vmm only meets once it has KVM (not-a-kernel files,
//!     memory larger than the host, an unopenable console file, KVM not permitted).
//!
//!   The scenario, `tests/lab/scenarios/vmm-boot.sh`, only runs the cases and records
//!   each one's command, stdout, stderr and status under `/out`; the assertions are here.
//!   Fixtures (a data disk, a triple-faulting ELF, an initrd) are generated at test time.
//!
//! Set `VMM_SKIP_LAB=1` to skip the lab tests (they print SKIPPED); they fail loudly when
//! the lab is unavailable otherwise.

// Test code: `expect` with context is how these tests fail (clippy.toml's
// allow-expect-in-tests does not reach helper functions outside #[test]s).
#![allow(clippy::expect_used)]

mod common;

use common::{lab_skipped, prepare, scenario, LabResult};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The vmm binary under test.
const VMM: &str = env!("CARGO_BIN_EXE_vmm");

/// The scenario's status for a case it had to kill (`timeout -s KILL`: 128 + 9).
const CASE_KILLED: i32 = 137;

/// Where this file's fixtures and host-test scratch files go.
fn work_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("lab_boot")
        .join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot clear {}: {e}", dir.display()));
    }
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

fn write_file(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

fn read_file(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().map(|l| l.trim_end_matches('\r'))
}

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

/// A minimal x86_64 ELF "kernel": one PT_LOAD of two bytes, `ud2`, at physical (and
/// virtual) address 0x100000, which is also the entry point. vmm enters it in long mode
/// with an empty IDT, so the #UD cannot be delivered and escalates to a triple fault.
fn triple_fault_elf() -> Vec<u8> {
    const LOAD: u64 = 0x10_0000;
    const CODE_OFFSET: u64 = 0x1000;
    let code = [0x0f, 0x0b]; // ud2
    let mut f = Vec::new();
    // ELF header (64 bytes).
    f.extend_from_slice(b"\x7fELF");
    f.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little-endian, version 1, System V ABI
    f.extend_from_slice(&[0; 8]); // ABI version and padding
    f.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    f.extend_from_slice(&62u16.to_le_bytes()); // e_machine: EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes()); // e_version
    f.extend_from_slice(&LOAD.to_le_bytes()); // e_entry
    f.extend_from_slice(&64u64.to_le_bytes()); // e_phoff: right after this header
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no sections
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    f.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    f.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    assert_eq!(f.len(), 64);
    // Program header (56 bytes): PT_LOAD, R+X.
    f.extend_from_slice(&1u32.to_le_bytes()); // p_type: PT_LOAD
    f.extend_from_slice(&5u32.to_le_bytes()); // p_flags: R | X
    f.extend_from_slice(&CODE_OFFSET.to_le_bytes()); // p_offset
    f.extend_from_slice(&LOAD.to_le_bytes()); // p_vaddr
    f.extend_from_slice(&LOAD.to_le_bytes()); // p_paddr
    f.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_filesz
    f.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_memsz
    f.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    f.resize(0x1000, 0);
    f.extend_from_slice(&code);
    f
}

/// True when `elf` is an ELF file with a PT_INTERP program header (dynamically linked).
fn elf_has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]);
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&elf[o..o + 8]);
        u64::from_le_bytes(b)
    };
    assert!(
        elf.len() >= 64 && &elf[..4] == b"\x7fELF" && elf[4] == 2,
        "not a 64-bit ELF file"
    );
    let phoff = usize::try_from(u64_at(0x20)).expect("e_phoff fits usize");
    let phentsize = usize::from(u16_at(0x36));
    (0..usize::from(u16_at(0x38))).any(|i| {
        let o = phoff + i * phentsize;
        elf[o..o + 4] == 3u32.to_le_bytes() // PT_INTERP
    })
}

/// The host's statically linked busybox (Debian's busybox-static, which `lab prepare`
/// installs), for the initrd.
fn static_busybox() -> PathBuf {
    let candidates = ["/usr/bin/busybox", "/bin/busybox"];
    let path = candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("no busybox at {candidates:?}: run `tests/lab/lab prepare` (busybox-static)")
        });
    assert!(
        !elf_has_interpreter(&read_file(&path)),
        "{} is dynamically linked; the initrd needs busybox-static",
        path.display()
    );
    path
}

/// A newc cpio archive (the initramfs format) being built.
struct Cpio {
    bytes: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn new() -> Self {
        Self {
            bytes: Vec::new(),
            ino: 1,
        }
    }

    fn pad4(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    /// One entry: `mode` includes the file type; `rdev` is (major, minor) for devices.
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        let size = u32::try_from(data.len()).expect("cpio member under 4 GiB");
        let namesize = u32::try_from(name.len() + 1).expect("short name");
        let fields = [
            self.ino, mode, 0, 0, 1, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0,
        ];
        self.ino += 1;
        self.bytes.extend_from_slice(b"070701");
        for f in fields {
            self.bytes.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad4();
        self.bytes.extend_from_slice(data);
        self.pad4();
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        self.bytes
    }
}

/// The initrd's `/init`: the boot marker, a few facts about the system it runs on, then
/// status 42 through vmm's debug device (which ends vmm at once).
const INITRD_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox devmem 0xd0000000 8 1
echo "VMM-INITRD-INIT pid=$$"
echo "initrd-root-fstype=$(/bin/busybox awk '$2 == "/" { print $3; exit }' /proc/mounts)"
echo "initrd-cmdline=$(/bin/busybox cat /proc/cmdline)"
echo "initrd-disks=$(/bin/busybox grep -c ' vd[a-z]*$' /proc/partitions)"
/bin/busybox devmem 0xd0000004 8 42
echo "initrd: the exit status write did not stop the VM"
/bin/busybox poweroff -f
"#;

/// A gzip'd newc initrd: busybox-static and [`INITRD_INIT`].
fn initrd(dir: &Path) -> PathBuf {
    let busybox = read_file(&static_busybox());
    let mut cpio = Cpio::new();
    for d in ["bin", "dev", "proc"] {
        cpio.entry(d, 0o040_755, &[], (0, 0));
    }
    cpio.entry("dev/console", 0o020_600, &[], (5, 1));
    cpio.entry("bin/busybox", 0o100_755, &busybox, (0, 0));
    cpio.entry("init", 0o100_755, INITRD_INIT.as_bytes(), (0, 0));
    let cpio = cpio.finish();

    let mut gzip = Command::new("gzip")
        .args(["-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run gzip");
    let mut stdin = gzip.stdin.take().expect("gzip stdin");
    let writer = std::thread::spawn(move || stdin.write_all(&cpio));
    let out = gzip.wait_with_output().expect("wait for gzip");
    writer
        .join()
        .expect("gzip writer thread")
        .expect("write the cpio to gzip");
    assert!(out.status.success(), "gzip failed: {}", out.status);
    let path = dir.join("initrd.cpio.gz");
    write_file(&path, &out.stdout);
    path
}

/// A data disk from `rootfs-tools/mkdatadisk.sh`, with what the script says about it.
#[derive(Debug)]
struct DataDisk {
    path: PathBuf,
    size: u64,
    sha256: String,
}

fn data_disk(dir: &Path) -> DataDisk {
    let path = dir.join("data.img");
    let script = common::repo_root().join("rootfs-tools/mkdatadisk.sh");
    let out = Command::new(&script)
        .arg("-o")
        .arg(&path)
        .args(["--size", "1"])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} failed ({}): {stdout}{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let var = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("mkdatadisk.sh printed no {key}=: {stdout}"))
            .to_string()
    };
    let disk = DataDisk {
        path,
        size: var("DATA_DISK_SIZE")
            .parse()
            .expect("DATA_DISK_SIZE is a number"),
        sha256: var("DATA_DISK_SHA256"),
    };
    assert_eq!(disk.sha256.len(), 64, "{disk:?}");
    disk
}

// ---------------------------------------------------------------------------------------
// Lab runs and their cases
// ---------------------------------------------------------------------------------------

/// One lab run of `vmm-boot.sh` and the data disk it was given.
struct Lab {
    run: LabResult,
    disk: DataDisk,
}

/// What one case of the scenario recorded.
struct Case {
    name: String,
    cmd: String,
    status: i32,
    stdout: String,
    stderr: String,
}

/// The L1 machine's vCPUs. With two (the runner's default), L1 froze for good in about one
/// run of this file's guest group in six (no console output, no watchdog, until the lab
/// timeout), and in 2 of 5 runs of 60 triple faults; with one it never did (6 guest groups,
/// 240 triple faults), at the same speed: the guests run one at a time anyway.
const L1_CPUS: u32 = 1;

/// Lab runs of this file, one at a time (each is CPU-bound).
static LAB_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `tests/lab/lab run` like [`common::LabRun::run`], which cannot pass `--cpus`:
/// `vmm` (`--bin`), `files` (`--file SRC:DEST`), `/out` collected, the scenario
/// `vmm-boot.sh GROUP`.
fn run_lab(name: &str, files: &[(PathBuf, &str)], group: &str, timeout_s: u64) -> LabResult {
    let _one_at_a_time = LAB_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = common::artifact_dir(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot clear {}: {e}", dir.display()));
    }
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let (log, out_dir) = (dir.join("l1.log"), dir.join("out"));
    let mut cmd = Command::new(common::lab_script());
    cmd.arg("run").arg("--bin").arg(VMM);
    for (src, dest) in files {
        cmd.arg("--file").arg(format!("{}:{dest}", src.display()));
    }
    cmd.args(["--cpus", &L1_CPUS.to_string()])
        .args(["--timeout", &timeout_s.to_string()])
        .arg("--log")
        .arg(&log)
        .arg("--out")
        .arg(&out_dir)
        .arg("--")
        .arg(scenario("vmm-boot.sh"))
        .arg(group)
        .stdin(Stdio::null());
    let started = std::time::Instant::now();
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", common::lab_script().display()));
    let result = LabResult {
        name: name.to_string(),
        status: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).replace('\r', ""),
        stderr: String::from_utf8_lossy(&output.stderr).replace('\r', ""),
        out_dir: Some(out_dir),
        log,
        elapsed: started.elapsed(),
    };
    println!("{}", result.describe());
    result
}

impl Lab {
    /// One L1 boot running `vmm-boot.sh GROUP` with the guest kernel, rootfs, a fresh data
    /// disk and `extra` files (made in a fixture directory).
    fn new(
        name: &str,
        group: &str,
        extra: impl FnOnce(&Path) -> Vec<(PathBuf, &'static str)>,
    ) -> Self {
        let p = prepare();
        let dir = work_dir(&format!("{name}-fixtures"));
        let disk = data_disk(&dir);
        let mut files = vec![
            (p.guest_vmlinux.clone(), "/lab/vmlinux"),
            (p.guest_bzimage.clone(), "/lab/bzImage"),
            (p.rootfs.clone(), "/lab/rootfs.ext4"),
            (disk.path.clone(), "/lab/data.img"),
        ];
        files.extend(extra(&dir));
        // Normally under a minute; the limit allows for a loaded host.
        let run = run_lab(name, &files, group, 480);
        // Every case ran, whatever vmm did in it; the tests judge the cases.
        run.assert_kind("scenario");
        run.assert_status(0);
        run.assert_stdout_contains("ALL-CASES-DONE");
        Self { run, disk }
    }

    fn case(&self, name: &str) -> Case {
        let status = self.run.out_file(&format!("{name}.status"));
        let case = Case {
            name: name.to_string(),
            cmd: self.run.out_file(&format!("{name}.cmd")).trim().to_string(),
            status: status
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("case {name}: status {status:?} is not a number")),
            stdout: self.run.out_file(&format!("{name}.stdout")),
            stderr: self.run.out_file(&format!("{name}.stderr")),
        };
        assert_ne!(
            case.status,
            CASE_KILLED,
            "case {name}: vmm did not finish and was killed by the scenario\n{}",
            case.describe()
        );
        case
    }

    /// `/out/NAME` of this run.
    fn out(&self, name: &str) -> String {
        self.run.out_file(name)
    }
}

/// Runs `make` once for all the tests sharing `cell`. A failed run (a panic: the lab is
/// broken, a fixture cannot be built) is kept too, so that every test sharing it fails
/// with the same message instead of booting L1 again.
fn shared(cell: &'static OnceLock<Result<Lab, String>>, make: fn() -> Lab) -> &'static Lab {
    let result = cell.get_or_init(|| {
        std::panic::catch_unwind(make).map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into())
        })
    });
    match result {
        Ok(lab) => lab,
        Err(e) => panic!("the shared lab run failed: {e}"),
    }
}

/// Boots of the project's guest in L1 (one L1 boot for all of them).
fn guests(test: &str) -> Option<&'static Lab> {
    static LAB: OnceLock<Result<Lab, String>> = OnceLock::new();
    if lab_skipped(test) {
        return None;
    }
    Some(shared(&LAB, || {
        Lab::new("lab-boot-guests", "guests", |dir| {
            let triple = dir.join("triple.elf");
            write_file(&triple, &triple_fault_elf());
            vec![
                (triple, "/lab/triple.elf"),
                (initrd(dir), "/lab/initrd.cpio.gz"),
            ]
        })
    }))
}

/// Bad input that needs KVM to be reached, in L1 (one L1 boot, no guest boots).
fn errors(test: &str) -> Option<&'static Lab> {
    static LAB: OnceLock<Result<Lab, String>> = OnceLock::new();
    if lab_skipped(test) {
        return None;
    }
    Some(shared(&LAB, || {
        Lab::new("lab-boot-errors", "errors", |_| {
            let sh = std::fs::canonicalize("/bin/sh").expect("this host has a /bin/sh");
            vec![(sh, "/lab/host-sh")]
        })
    }))
}

impl Case {
    fn describe(&self) -> String {
        let mut s = format!(
            "case {}: `{}` exited with {}\n--- stderr:\n",
            self.name, self.cmd, self.status
        );
        for l in lines(&self.stderr) {
            let _ = writeln!(s, "  ! {l}");
        }
        s.push_str("--- stdout (last 60 lines):\n");
        let out: Vec<&str> = lines(&self.stdout).collect();
        for l in &out[out.len().saturating_sub(60)..] {
            let _ = writeln!(s, "  | {l}");
        }
        s
    }

    fn assert_status(&self, want: i32) {
        assert_eq!(
            self.status,
            want,
            "case {}: wrong vmm exit status\n{}",
            self.name,
            self.describe()
        );
    }

    fn has_line(&self, line: &str) -> bool {
        lines(&self.stdout).any(|l| l == line)
    }

    fn assert_line(&self, line: &str) {
        assert!(
            self.has_line(line),
            "case {}: stdout lacks the line {line:?}\n{}",
            self.name,
            self.describe()
        );
    }

    fn assert_no_line(&self, line: &str) {
        assert!(
            !self.has_line(line),
            "case {}: stdout has the line {line:?}\n{}",
            self.name,
            self.describe()
        );
    }

    /// Position of the first stdout line equal to `line`.
    fn line_index(&self, line: &str) -> usize {
        lines(&self.stdout)
            .position(|l| l == line)
            .unwrap_or_else(|| {
                panic!(
                    "case {}: stdout lacks the line {line:?}\n{}",
                    self.name,
                    self.describe()
                )
            })
    }

    /// The value of the first stdout line `KEY=VALUE`.
    fn value(&self, key: &str) -> &str {
        lines(&self.stdout)
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| {
                panic!(
                    "case {}: stdout has no line {key}=...\n{}",
                    self.name,
                    self.describe()
                )
            })
    }

    fn assert_value(&self, key: &str, want: &str) {
        assert_eq!(
            self.value(key),
            want,
            "case {}: {key}\n{}",
            self.name,
            self.describe()
        );
    }

    fn assert_stderr_contains(&self, text: &str) {
        assert!(
            self.stderr.contains(text),
            "case {}: stderr lacks {text:?}\n{}",
            self.name,
            self.describe()
        );
    }

    /// stderr has a line `vmm: ...` (vmm's own message, not a log line) containing `text`.
    fn assert_vmm_message(&self, text: &str) {
        assert!(
            lines(&self.stderr)
                .any(|l| l.starts_with("vmm: ") && !l.starts_with("vmm: [") && l.contains(text)),
            "case {}: no `vmm: ...{text}...` message on stderr\n{}",
            self.name,
            self.describe()
        );
    }

    fn assert_stdout_empty(&self) {
        assert!(
            self.stdout.is_empty(),
            "case {}: stdout should be empty\n{}",
            self.name,
            self.describe()
        );
    }

    /// The guest booted the test init, ran its command and reported `status`, which is
    /// also vmm's exit status.
    fn assert_guest_exit(&self, status: i32) {
        let ready = self.line_index("VMM-GUEST-READY");
        let exit = self.line_index(&format!("VMM-GUEST-EXIT {status}"));
        assert!(
            ready < exit,
            "case {}: VMM-GUEST-EXIT before VMM-GUEST-READY\n{}",
            self.name,
            self.describe()
        );
        self.assert_status(status);
    }

    /// `-v` logged the guest's boot marker (the init's write to the debug device), with a
    /// time after vmm's start.
    fn assert_boot_marker(&self) {
        let ms = lines(&self.stderr)
            .find_map(|l| {
                l.split_once("guest boot marker 1 at ")?
                    .1
                    .strip_suffix(" ms")
            })
            .unwrap_or_else(|| {
                panic!(
                    "case {}: no `guest boot marker 1 at <t> ms` on stderr\n{}",
                    self.name,
                    self.describe()
                )
            });
        let ms: f64 = ms.trim().parse().unwrap_or_else(|_| {
            panic!(
                "case {}: boot marker time {ms:?} is not a number\n{}",
                self.name,
                self.describe()
            )
        });
        assert!(ms > 0.0, "case {}: boot marker at {ms} ms", self.name);
    }

    /// vmm refused the run: status 1, nothing on stdout, exactly one line on stderr,
    /// `vmm: error: ...` containing each of `names`.
    fn assert_refused(&self, names: &[&str]) {
        self.assert_status(1);
        self.assert_stdout_empty();
        let errs: Vec<&str> = lines(&self.stderr).filter(|l| !l.is_empty()).collect();
        assert!(
            errs.len() == 1 && errs[0].starts_with("vmm: error: "),
            "case {}: want exactly one stderr line `vmm: error: ...`\n{}",
            self.name,
            self.describe()
        );
        for n in names {
            assert!(
                errs[0].contains(n),
                "case {}: the error does not name {n:?}\n{}",
                self.name,
                self.describe()
            );
        }
    }
}

/// The case's images have the same sha256 after vmm ran as before.
fn assert_images_untouched(lab: &Lab, case: &str) {
    let before = lab.out(&format!("{case}.sha-before"));
    let after = lab.out(&format!("{case}.sha-after"));
    assert_eq!(
        before.lines().filter(|l| l.len() == 64).count(),
        2,
        "case {case}: expected two sha256 lines before the run, got {before:?}"
    );
    assert_eq!(
        before, after,
        "case {case}: vmm changed a disk image (sha256 before vs after)"
    );
}

// ---------------------------------------------------------------------------------------
// Lab: guest boots
// ---------------------------------------------------------------------------------------

#[test]
fn elf_vmlinux_boots_runs_the_command_and_vmm_exits_with_its_status() {
    let Some(lab) = guests("elf_vmlinux_boots_runs_the_command_and_vmm_exits_with_its_status")
    else {
        return;
    };
    let c = lab.case("elf");
    c.assert_guest_exit(7);
    let out = c.line_index("elf-out-42");
    assert!(
        c.line_index("VMM-GUEST-READY") < out && out < c.line_index("VMM-GUEST-EXIT 7"),
        "command output not between the markers\n{}",
        c.describe()
    );
    c.assert_boot_marker();
    // Not `quiet`: the kernel's own boot log reached the console too.
    assert!(
        lines(&c.stdout).any(|l| l.contains("Linux version")),
        "no kernel boot log on the console\n{}",
        c.describe()
    );
}

#[test]
fn bzimage_boots_runs_the_command_and_vmm_exits_with_its_status() {
    let Some(lab) = guests("bzimage_boots_runs_the_command_and_vmm_exits_with_its_status") else {
        return;
    };
    let c = lab.case("bzimage");
    c.assert_guest_exit(0);
    c.assert_line("bz-out-42");
    c.assert_boot_marker();
}

#[test]
fn a_file_written_in_one_boot_is_read_back_in_the_next() {
    let Some(lab) = guests("a_file_written_in_one_boot_is_read_back_in_the_next") else {
        return;
    };
    let writer = lab.case("elf");
    writer.assert_line("persist-written");
    let reader = lab.case("bzimage");
    let expected = lab.out("persist.expected");
    let token = expected.trim_end_matches('\n');
    assert!(
        token.starts_with("persist-") && token.len() > 20,
        "{expected:?}"
    );
    reader.assert_line(token);
    let sha = lab.out("persist.expected.sha256");
    reader.assert_line(&format!("{}  /root/persist.txt", sha.trim()));
}

#[test]
fn an_extra_disk_is_vdb_with_its_content() {
    let Some(lab) = guests("an_extra_disk_is_vdb_with_its_content") else {
        return;
    };
    let c = lab.case("elf");
    c.assert_value("vdb-head", "VMM-DATA-DISK v1");
    c.assert_value(
        "vdb-sector123",
        &format!("VMMDATA sector={:010} .....", 123),
    );
    c.assert_value("vdb-size", &lab.disk.size.to_string());
    c.assert_value("vdb-sha256", &lab.disk.sha256);
}

#[test]
fn read_only_rootfs_and_disk_can_be_read_not_written() {
    let Some(lab) = guests("read_only_rootfs_and_disk_can_be_read_not_written") else {
        return;
    };
    let c = lab.case("ro");
    c.assert_guest_exit(0);
    // Reads: the rootfs's /etc/hostname, the data disk's known content.
    c.assert_value("root-read", "vmm-guest");
    c.assert_value("vdb-head", "VMM-DATA-DISK v1");
    c.assert_value("vdb-sha256", &lab.disk.sha256);
    // Writes: the rootfs is mounted read-only and cannot be remounted read-write; both
    // block devices are read-only and refuse raw writes.
    c.assert_value("root-mount", "ro");
    c.assert_value("root-write", "failed");
    c.assert_value("root-remount-rw", "failed");
    c.assert_value("vda-ro", "1");
    c.assert_value("vdb-ro", "1");
    c.assert_value("vda-write", "failed");
    c.assert_value("vdb-write", "failed");
    assert_images_untouched(lab, "ro");
}

#[test]
fn guest_reboot_ends_vmm_with_status_0() {
    let Some(lab) = guests("guest_reboot_ends_vmm_with_status_0") else {
        return;
    };
    let c = lab.case("reboot");
    c.assert_status(0);
    c.assert_line("VMM-GUEST-READY");
    c.assert_line("rebooting-42");
    // `reboot -f` bypasses the init's exit report: vmm ended on the reboot itself.
    assert!(
        !c.stdout.contains("VMM-GUEST-EXIT"),
        "the init reported an exit\n{}",
        c.describe()
    );
    c.assert_stderr_contains("guest rebooted");
}

#[test]
fn guest_poweroff_ends_vmm_with_status_0() {
    let Some(lab) = guests("guest_poweroff_ends_vmm_with_status_0") else {
        return;
    };
    let c = lab.case("poweroff");
    c.assert_status(0);
    c.assert_line("VMM-GUEST-READY");
    c.assert_line("powering-off-42");
    assert!(
        !c.stdout.contains("VMM-GUEST-EXIT"),
        "the init reported an exit\n{}",
        c.describe()
    );
    c.assert_stderr_contains("guest powered off");
}

#[test]
fn guest_kernel_panic_ends_vmm_with_status_5() {
    let Some(lab) = guests("guest_kernel_panic_ends_vmm_with_status_5") else {
        return;
    };
    let c = lab.case("panic");
    c.assert_status(5);
    assert!(
        c.stdout.contains("Kernel panic - not syncing"),
        "no kernel panic on the console\n{}",
        c.describe()
    );
    c.assert_no_line("VMM-GUEST-READY");
    c.assert_vmm_message("panic");
}

#[test]
fn guest_triple_fault_ends_vmm_with_status_3() {
    let Some(lab) = guests("guest_triple_fault_ends_vmm_with_status_3") else {
        return;
    };
    let c = lab.case("triple");
    c.assert_status(3);
    c.assert_vmm_message("triple fault");
}

#[test]
fn an_initrd_boots_without_any_disk() {
    let Some(lab) = guests("an_initrd_boots_without_any_disk") else {
        return;
    };
    let c = lab.case("initrd");
    c.assert_status(42);
    c.assert_line("VMM-INITRD-INIT pid=1");
    c.assert_value("initrd-root-fstype", "rootfs");
    c.assert_value("initrd-disks", "0");
    let cmdline = c.value("initrd-cmdline");
    assert!(
        !cmdline.contains("root="),
        "no rootfs, yet the command line names one: {cmdline}"
    );
    c.assert_no_line("initrd: the exit status write did not stop the VM");
    c.assert_boot_marker();
}

#[test]
fn console_file_gets_the_guest_output_instead_of_stdout() {
    let Some(lab) = guests("console_file_gets_the_guest_output_instead_of_stdout") else {
        return;
    };
    let c = lab.case("console-file");
    c.assert_status(11);
    c.assert_stdout_empty();
    let file = Case {
        name: "console-file (the file)".into(),
        stdout: lab.out("console-file.console"),
        ..c
    };
    file.assert_guest_exit(11);
    file.assert_line("console-file-42");
}

#[test]
fn console_none_prints_nothing() {
    let Some(lab) = guests("console_none_prints_nothing") else {
        return;
    };
    let c = lab.case("console-none");
    // The status proves the guest ran its command.
    c.assert_status(9);
    c.assert_stdout_empty();
    assert!(
        c.stderr.is_empty(),
        "case console-none: stderr should be empty\n{}",
        c.describe()
    );
}

#[test]
fn piped_stdin_reaches_the_guest_shell() {
    let Some(lab) = guests("piped_stdin_reaches_the_guest_shell") else {
        return;
    };
    let c = lab.case("stdin");
    // The shell echoes the command line; only running it prints `piped-42` alone.
    c.assert_line("piped-42");
    c.assert_guest_exit(13);
}

#[test]
fn no_acpi_boot_finds_the_disk_through_the_command_line() {
    let Some(lab) = guests("no_acpi_boot_finds_the_disk_through_the_command_line") else {
        return;
    };
    let c = lab.case("no-acpi");
    c.assert_guest_exit(17);
    c.assert_boot_marker();
    let cmdline = lines(&c.stdout)
        .find(|l| l.starts_with("console=ttyS0"))
        .unwrap_or_else(|| panic!("no /proc/cmdline line\n{}", c.describe()));
    assert!(
        cmdline.contains("virtio_mmio.device=") && cmdline.contains("acpi=off"),
        "command line lacks the virtio entry or acpi=off: {cmdline}"
    );
    c.assert_value("acpi", "absent");
    // The root file system is the virtio disk /dev/vda.
    let vda = c.value("vda-devno");
    assert!(!vda.is_empty(), "no /dev/vda\n{}", c.describe());
    c.assert_value("root-devno", vda);
    // Control: the same check sees ACPI tables in a default boot.
    lab.case("elf").assert_value("acpi", "present");
}

// ---------------------------------------------------------------------------------------
// Lab: bad input that vmm meets only with KVM open
// ---------------------------------------------------------------------------------------

#[test]
fn files_that_are_not_kernels_are_refused() {
    let Some(lab) = errors("files_that_are_not_kernels_are_refused") else {
        return;
    };
    for (case, path) in [
        ("kernel-text", "/tmp/text-kernel"),
        ("kernel-random", "/tmp/random-kernel"),
        ("kernel-empty", "/tmp/empty-kernel"),
        ("kernel-host-sh", "/lab/host-sh"),
    ] {
        lab.case(case).assert_refused(&[path]);
        assert_images_untouched(lab, case);
    }
}

/// A statically linked program is an x86_64 ET_EXEC ELF like a vmlinux; it is still not a
/// kernel (busybox, L1's /bin/sh).
#[test]
fn a_static_executable_is_not_taken_for_a_kernel() {
    let Some(lab) = errors("a_static_executable_is_not_taken_for_a_kernel") else {
        return;
    };
    lab.case("kernel-l1-sh").assert_refused(&["/bin/sh"]);
    assert_images_untouched(lab, "kernel-l1-sh");
}

#[test]
fn memory_larger_than_the_host_is_refused() {
    let Some(lab) = errors("memory_larger_than_the_host_is_refused") else {
        return;
    };
    lab.case("mem-more-than-host").assert_refused(&["--mem"]);
    assert_images_untouched(lab, "mem-more-than-host");
}

#[test]
fn a_console_file_that_cannot_be_created_is_refused() {
    let Some(lab) = errors("a_console_file_that_cannot_be_created_is_refused") else {
        return;
    };
    lab.case("console-file-bad")
        .assert_refused(&["/nonexistent-dir/console.log"]);
    assert_images_untouched(lab, "console-file-bad");
}

#[test]
fn kvm_not_permitted_is_refused() {
    let Some(lab) = errors("kvm_not_permitted_is_refused") else {
        return;
    };
    // Preconditions: /dev/kvm is not open to everyone, and vmm ran as another user.
    let pre = lab.out("kvm-denied.pre");
    let mode = pre
        .lines()
        .find_map(|l| l.strip_prefix("kvm-mode="))
        .unwrap_or_else(|| panic!("no kvm-mode in {pre:?}"));
    assert!(
        mode.len() == 10 && &mode[7..9] == "--",
        "L1's /dev/kvm is {mode}: other users may open it, so this test proves nothing"
    );
    assert!(
        pre.lines().any(|l| l == "user-id=65534"),
        "vmm did not run as the unprivileged user: {pre:?}"
    );
    lab.case("kvm-denied")
        .assert_refused(&["/dev/kvm", "permission denied"]);
    assert_images_untouched(lab, "kvm-denied");
}

// ---------------------------------------------------------------------------------------
// Host: bad input refused before KVM (no lab)
// ---------------------------------------------------------------------------------------

/// Images given to a refused run, checked byte for byte afterwards.
struct HostImages {
    dir: PathBuf,
    kernel: PathBuf,
    rootfs: PathBuf,
    disk: PathBuf,
    rootfs_bytes: Vec<u8>,
    disk_bytes: Vec<u8>,
}

impl HostImages {
    fn new(test: &str) -> Self {
        let dir = work_dir(&format!("host-{test}"));
        let pattern = |seed: u8| -> Vec<u8> {
            (0..64 * 1024u32)
                .map(|i| seed ^ i.to_le_bytes()[0] ^ i.to_le_bytes()[1])
                .collect()
        };
        let kernel = dir.join("kernel");
        // Never loaded: every run here fails before vmm reads the kernel.
        write_file(&kernel, b"placeholder kernel\n");
        let (rootfs, disk) = (dir.join("rootfs.ext4"), dir.join("data.img"));
        let (rootfs_bytes, disk_bytes) = (pattern(0x5a), pattern(0xa5));
        write_file(&rootfs, &rootfs_bytes);
        write_file(&disk, &disk_bytes);
        Self {
            dir,
            kernel,
            rootfs,
            disk,
            rootfs_bytes,
            disk_bytes,
        }
    }

    /// Runs vmm with `args`, after which the images must be unchanged. Unless `args` name
    /// a KVM device, `--kvm-device /nonexistent/kvm` is added so that no run here can reach
    /// a real KVM: input errors must be found before KVM is opened.
    fn vmm(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(VMM);
        if !args.contains(&"--kvm-device") {
            cmd.args(["--kvm-device", "/nonexistent/kvm"]);
        }
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run vmm");
        assert_eq!(
            read_file(&self.rootfs),
            self.rootfs_bytes,
            "vmm {args:?} changed the rootfs image"
        );
        assert_eq!(
            read_file(&self.disk),
            self.disk_bytes,
            "vmm {args:?} changed the data disk"
        );
        out
    }

    fn p(path: &Path) -> &str {
        path.to_str().expect("UTF-8 path")
    }

    /// `--kernel K --rootfs R --disk D` followed by `extra`.
    fn with_images<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec![
            "--kernel",
            Self::p(&self.kernel),
            "--rootfs",
            Self::p(&self.rootfs),
            "--disk",
            Self::p(&self.disk),
        ];
        v.extend_from_slice(extra);
        v
    }

    /// vmm refused `args` with status 1, one stderr line `vmm: error: ...` naming each of
    /// `names`, and nothing on stdout.
    fn assert_refused(&self, args: &[&str], names: &[&str]) {
        let out = self.vmm(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let what = format!(
            "vmm {args:?}: status {:?}\nstdout: {}\nstderr: {stderr}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(out.status.code(), Some(1), "{what}");
        assert!(out.stdout.is_empty(), "{what}");
        let errs: Vec<&str> = stderr.lines().filter(|l| !l.is_empty()).collect();
        assert!(
            errs.len() == 1 && errs[0].starts_with("vmm: error: "),
            "want exactly one stderr line `vmm: error: ...`; {what}"
        );
        for n in names {
            assert!(errs[0].contains(n), "the error does not name {n:?}; {what}");
        }
    }
}

#[test]
fn missing_files_are_named() {
    let t = HostImages::new("missing-files");
    let dir = HostImages::p(&t.dir);
    let missing = t.dir.join("nonexistent");
    let missing = HostImages::p(&missing);
    let (rootfs, disk) = (HostImages::p(&t.rootfs), HostImages::p(&t.disk));
    t.assert_refused(
        &["--kernel", missing, "--rootfs", rootfs, "--disk", disk],
        &["kernel", missing],
    );
    t.assert_refused(
        &["--kernel", dir, "--rootfs", rootfs, "--disk", disk],
        &["kernel", dir],
    );
    let kernel = HostImages::p(&t.kernel);
    t.assert_refused(
        &["--kernel", kernel, "--rootfs", missing, "--disk", disk],
        &["root file system", missing],
    );
    t.assert_refused(
        &["--kernel", kernel, "--rootfs", rootfs, "--disk", missing],
        &["disk", missing],
    );
    t.assert_refused(&t.with_images(&["--initrd", missing]), &["initrd", missing]);
}

#[test]
fn bad_memory_sizes_are_refused() {
    let t = HostImages::new("memory");
    t.assert_refused(&t.with_images(&["--mem", "1M"]), &["--mem", "too small"]);
    t.assert_refused(&t.with_images(&["--mem", "100T"]), &["--mem", "too large"]);
    t.assert_refused(&t.with_images(&["--mem", "0"]), &["--mem", "too small"]);
    t.assert_refused(&t.with_images(&["--mem", "lots"]), &["lots"]);
}

#[test]
fn bad_disk_and_console_specs_are_refused() {
    let t = HostImages::new("specs");
    let disk = HostImages::p(&t.disk);
    let bad_mode = format!("{disk},rx");
    t.assert_refused(
        &t.with_images(&["--disk", &bad_mode]),
        &["--disk", &bad_mode],
    );
    t.assert_refused(&t.with_images(&["--disk", ",ro"]), &["--disk", ",ro"]);
    // The same image twice.
    let rootfs = HostImages::p(&t.rootfs);
    t.assert_refused(&t.with_images(&["--disk", rootfs]), &[rootfs, "twice"]);
    t.assert_refused(&t.with_images(&["--console", "tty"]), &["--console", "tty"]);
    t.assert_refused(
        &t.with_images(&["--console", "file:"]),
        &["--console", "file:"],
    );
    t.assert_refused(&t.with_images(&["--cpus", "0"]), &["--cpus"]);
    // A refused run creates no console file either.
    let console = t.dir.join("console.log");
    let console_arg = format!("file:{}", HostImages::p(&console));
    t.assert_refused(
        &t.with_images(&["--console", &console_arg, "--mem", "1M"]),
        &["--mem"],
    );
    assert!(!console.exists(), "a refused run created its console file");
}

#[test]
fn missing_kvm_is_reported() {
    let t = HostImages::new("kvm-missing");
    t.assert_refused(
        &t.with_images(&["--kvm-device", "/nonexistent/kvm"]),
        &["/nonexistent/kvm", "no KVM"],
    );
}

/// A device that exists but is not KVM: the error should say which device.
#[test]
fn a_kvm_device_that_is_not_kvm_is_named() {
    let t = HostImages::new("kvm-not-kvm");
    t.assert_refused(
        &t.with_images(&["--kvm-device", "/dev/null"]),
        &["/dev/null"],
    );
}

#[test]
fn usage_errors_exit_with_status_2() {
    let t = HostImages::new("usage");
    let kernel = HostImages::p(&t.kernel);
    for (args, name) in [
        (vec![], "--kernel"),
        (vec!["--kernel", kernel, "--bogus"], "--bogus"),
        (vec!["--kernel", kernel, "--cpus", "two"], "--cpus"),
        (vec!["--kernel", kernel, "--boot", "uefi"], "uefi"),
        (vec!["--kernel", kernel, "--rootfs-ro"], "--rootfs"),
    ] {
        let out = t.vmm(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let what = format!(
            "vmm {args:?}: status {:?}\nstderr: {stderr}",
            out.status.code()
        );
        assert_eq!(out.status.code(), Some(2), "{what}");
        assert!(out.stdout.is_empty(), "{what}");
        // The first line is the error (`vmm: error: ...` or clap's `error: ...`); the
        // offending argument is named in it or right after it.
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.contains("error: ") && stderr.contains(name),
            "want a usage error naming {name:?}; {what}"
        );
    }
}
