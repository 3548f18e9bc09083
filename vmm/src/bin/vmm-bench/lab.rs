//! `vmm-bench boot --lab`: the project's Linux guest booted N times by vmm and
//! by QEMU microvm, alternating, in one lab run (docs/lab.md).
//!
//! On the host, [`run_host`] prepares the lab and starts one L1 with this
//! binary, vmm, the guest kernel and the rootfs; inside L1, [`run_in_l1`]
//! does the boots: process start → `VMM-GUEST-READY`, and the VMM's memory at
//! that moment minus the guest RAM it has touched (smaps). Everything in L1
//! is emulated, so only the ratios between VMMs of the same run mean anything.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use vmm::config::{DiskConfig, VmConfig};

use crate::native::command_line;
use crate::proc::{self, launch};
use crate::report::{cell, ratio, table, Json, Summary};

/// The test init's ready line.
const READY: &str = "VMM-GUEST-READY";
/// Longest a boot may take in L1 (emulated).
const BOOT_LIMIT: Duration = Duration::from_secs(180);
/// The command the test init runs before it powers the guest off.
const RUN: &str = "run=\"exit 0\"";

/// The VMM configurations compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// vmm, default boot protocol (the 64-bit Linux one where KVM is VMX/SVM).
    Vmm,
    /// vmm through the PVH entry point, as QEMU boots an ELF kernel.
    VmmPvh,
    /// QEMU microvm.
    Qemu,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Vmm => "vmm",
            Variant::VmmPvh => "vmm --boot pvh",
            Variant::Qemu => "QEMU microvm",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Variant::Vmm => "vmm",
            Variant::VmmPvh => "vmm_pvh",
            Variant::Qemu => "qemu",
        }
    }
}

/// Options of the in-L1 part.
#[derive(Debug, Clone)]
pub struct InL1Opts {
    /// Boots per variant.
    pub runs: usize,
    /// Guest memory, MiB.
    pub mem_mib: u64,
    /// vmm in L1.
    pub vmm: PathBuf,
    /// QEMU in L1.
    pub qemu: PathBuf,
    /// The guest kernel (ELF vmlinux).
    pub kernel: PathBuf,
    /// The rootfs image (copied for each boot).
    pub rootfs: PathBuf,
    /// Where to write boot.md and boot.json.
    pub out: Option<PathBuf>,
    /// Which variants.
    pub variants: Vec<Variant>,
}

/// The kernel command line both VMMs get: vmm's defaults and the run command.
pub fn guest_cmdline(kernel: &Path, disk: &Path) -> String {
    let mut c = VmConfig::new(kernel);
    c.rootfs = Some(DiskConfig {
        path: disk.to_path_buf(),
        read_only: false,
    });
    format!("{} {RUN}", vmm::builder::default_cmdline(&c))
}

fn command(v: Variant, o: &InL1Opts, disk: &Path) -> Command {
    match v {
        Variant::Vmm | Variant::VmmPvh => {
            let mut c = Command::new(&o.vmm);
            c.arg("--kernel")
                .arg(&o.kernel)
                .arg("--rootfs")
                .arg(disk)
                .arg("--mem")
                .arg(format!("{}M", o.mem_mib))
                .args(["--cmdline", RUN]);
            if v == Variant::VmmPvh {
                c.args(["--boot", "pvh"]);
            }
            c
        }
        Variant::Qemu => {
            let mut c = Command::new(&o.qemu);
            c.args(["-M", "microvm", "-enable-kvm", "-cpu", "host", "-m"])
                .arg(format!("{}M", o.mem_mib))
                .args(["-smp", "1", "-nodefaults", "-no-user-config", "-nographic"])
                .args(["-serial", "stdio", "-kernel"])
                .arg(&o.kernel)
                .arg("-append")
                .arg(guest_cmdline(&o.kernel, disk))
                .arg("-drive")
                .arg(format!(
                    "id=root,file={},format=raw,if=none",
                    disk.display()
                ))
                .args(["-device", "virtio-blk-device,drive=root", "-no-reboot"]);
            c
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Samples {
    ready_s: Vec<f64>,
    rss: Vec<f64>,
    anon: Vec<f64>,
    guest: Vec<f64>,
    overhead: Vec<f64>,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn boot_once(v: Variant, o: &InL1Opts, s: &mut Samples) -> Result<(), String> {
    let disk = std::env::temp_dir().join("vmm-bench-rootfs.ext4");
    std::fs::copy(&o.rootfs, &disk).map_err(|e| {
        format!(
            "cannot copy {} to {}: {e}",
            o.rootfs.display(),
            disk.display()
        )
    })?;
    let mut cmd = command(v, o, &disk);
    let mut l = launch(&mut cmd, READY).map_err(|e| format!("cannot start {}: {e}", v.name()))?;
    let ready = l.wait_ready(BOOT_LIMIT);
    let status = proc::mem_status(l.pid());
    let maps = proc::smaps(l.pid());
    // The guest runs its command and powers off. (Stopping QEMU with a signal
    // while its guest runs has frozen L1, TCG with nested SVM, twice.)
    let end = l
        .wait(BOOT_LIMIT)
        .map_err(|e| format!("waiting for {}: {e}", v.name()))?;
    let _ = std::fs::remove_file(&disk);
    let Some(ready) = ready else {
        return Err(format!(
            "{} did not reach {READY} within {} s:\n{}",
            v.name(),
            BOOT_LIMIT.as_secs(),
            end.describe()
        ));
    };
    if end.code != Some(0) {
        return Err(format!(
            "{} reached {READY} but did not end with status 0 (the guest's command, then power off):\n{}",
            v.name(),
            end.describe()
        ));
    }
    let status = status.map_err(|e| format!("reading /proc of {}: {e}", v.name()))?;
    let maps = maps.map_err(|e| format!("reading smaps of {}: {e}", v.name()))?;
    let guest = proc::guest_ram(&maps, o.mem_mib * 1024)
        .map(|m| m.rss)
        .ok_or_else(|| {
            format!(
                "no {} MiB guest RAM mapping in the smaps of {}",
                o.mem_mib,
                v.name()
            )
        })?;
    s.ready_s.push(ready.as_secs_f64());
    s.rss.push(mib(status.rss));
    s.anon.push(mib(status.anon));
    s.guest.push(mib(guest));
    s.overhead.push(mib(status.rss.saturating_sub(guest)));
    println!(
        "vmm-bench: {}: ready after {:.2} s, RSS {:.1} MiB, guest RAM {:.1} MiB, overhead {:.1} MiB",
        v.name(),
        ready.as_secs_f64(),
        mib(status.rss),
        mib(guest),
        mib(status.rss.saturating_sub(guest))
    );
    Ok(())
}

/// Inside L1: boot every variant `runs` times, alternating; print and write
/// the Markdown and JSON results.
pub fn run_in_l1(o: &InL1Opts) -> Result<(), String> {
    let mut samples = vec![Samples::default(); o.variants.len()];
    let n = o.variants.len();
    let mut failure = None;
    'rounds: for i in 0..o.runs {
        // Rotate the order each round.
        for j in 0..n {
            let k = (i + j) % n;
            if let Err(e) = boot_once(o.variants[k], o, &mut samples[k]) {
                failure = Some(format!("round {}, {}: {e}", i + 1, o.variants[k].name()));
                break 'rounds;
            }
        }
    }
    if let Some(f) = &failure {
        // What the L1 kernel said, in case the VMM got stuck in it.
        let dmesg = Command::new("dmesg")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let tail: Vec<&str> = dmesg.lines().rev().take(30).collect();
        println!("vmm-bench: boot failed, stopping: {f}");
        println!("vmm-bench: last kernel messages in L1:");
        for l in tail.iter().rev() {
            println!("  {l}");
        }
    }
    let (md, json) = render(o, &samples, failure.as_deref());
    println!("{md}");
    if let Some(dir) = &o.out {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        for (name, text) in [("boot.md", md), ("boot.json", json.render())] {
            std::fs::write(dir.join(name), text)
                .map_err(|e| format!("cannot write {}/{name}: {e}", dir.display()))?;
        }
    }
    failure.map_or(Ok(()), Err)
}

fn render(o: &InL1Opts, samples: &[Samples], failure: Option<&str>) -> (String, Json) {
    type Get = fn(&Samples) -> &Vec<f64>;
    let metrics: [(&str, &str, Get, usize); 5] = [
        (
            "ready",
            "start → VMM-GUEST-READY (s, emulated)",
            |s| &s.ready_s,
            2,
        ),
        ("rss", "VMM RSS at ready (MiB)", |s| &s.rss, 1),
        (
            "guest",
            "guest RAM resident at ready (MiB)",
            |s| &s.guest,
            1,
        ),
        (
            "overhead",
            "VMM overhead: RSS − guest RAM (MiB)",
            |s| &s.overhead,
            1,
        ),
        (
            "anon",
            "RssAnon at ready, guest RAM included (MiB)",
            |s| &s.anon,
            1,
        ),
    ];
    let qemu = o.variants.iter().position(|v| *v == Variant::Qemu);
    let mut header: Vec<String> = vec!["metric".into()];
    header.extend(o.variants.iter().map(|v| v.name().to_string()));
    let others: Vec<usize> = (0..o.variants.len()).filter(|k| Some(*k) != qemu).collect();
    if qemu.is_some() {
        header.extend(
            others
                .iter()
                .map(|&k| format!("{} / QEMU", o.variants[k].name())),
        );
    }
    let mut rows = Vec::new();
    let mut jm = Vec::new();
    for (key, name, get, digits) in metrics {
        let sums: Vec<Option<Summary>> = samples.iter().map(|s| Summary::of(get(s))).collect();
        let mut row = vec![name.to_string()];
        row.extend(sums.iter().map(|s| cell(*s, digits)));
        let mut ratios = Vec::new();
        if let Some(q) = qemu {
            for &k in &others {
                row.push(ratio(sums[k], sums[q]));
                let r = match (sums[k], sums[q]) {
                    (Some(a), Some(b)) if b.median > 0.0 => Json::Num(a.median / b.median),
                    _ => Json::Null,
                };
                ratios.push((format!("{}_over_qemu", o.variants[k].key()), r));
            }
        }
        rows.push(row);
        let mut obj: Vec<(String, Json)> = o
            .variants
            .iter()
            .zip(samples)
            .map(|(v, s)| {
                (
                    v.key().to_string(),
                    Summary::json(Summary::of(get(s)), get(s)),
                )
            })
            .collect();
        obj.extend(ratios);
        jm.push((key.to_string(), Json::Obj(obj)));
    }
    let disk = Path::new("/tmp/vmm-bench-rootfs.ext4");
    let commands: Vec<Json> = o
        .variants
        .iter()
        .map(|v| Json::str(command_line(&command(*v, o, disk))))
        .collect();
    let mut md = String::from(
        "### vmm-bench boot --lab: Linux guest, vmm and QEMU microvm in one lab run\n\n",
    );
    md.push_str(&format!(
        "Inside L1 (QEMU/TCG with nested SVM): every time is emulated, so only the ratios \
         between VMMs of this run mean anything. Kernel {}, rootfs {} (a fresh copy per boot), \
         {} MiB, 1 vCPU; {} boots per VMM, order rotated each round; the VMM's memory is \
         sampled at the ready line, then the guest runs its command and powers off. Guest \
         command line: `{}`.\n\n",
        o.kernel.display(),
        o.rootfs.display(),
        o.mem_mib,
        o.runs,
        guest_cmdline(&o.kernel, disk)
    ));
    if let Some(f) = failure {
        md.push_str(&format!(
            "**Incomplete**: a boot failed and the run stopped ({f}).\n\n"
        ));
    }
    md.push_str("Median (min–max):\n\n");
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
    md.push_str(&table(&header_refs, &rows));
    let json = Json::obj([
        ("benchmark", Json::str("boot-lab")),
        ("kernel", Json::str(o.kernel.display().to_string())),
        ("mem_mib", Json::Num(o.mem_mib as f64)),
        ("runs", Json::Num(o.runs as f64)),
        ("commands", Json::Arr(commands)),
        ("failure", failure.map_or(Json::Null, Json::str)),
        ("metrics", Json::Obj(jm)),
    ]);
    (md, json)
}

/// Options of the host part.
#[derive(Debug, Clone)]
pub struct HostOpts {
    /// Boots per variant.
    pub runs: usize,
    /// Guest memory, MiB.
    pub mem_mib: u64,
    /// The vmm binary to copy into L1.
    pub vmm: PathBuf,
    /// The repository (for tests/lab/lab).
    pub repo: PathBuf,
    /// Copy boot.json here.
    pub json: Option<PathBuf>,
    /// Copy boot.md here.
    pub markdown: Option<PathBuf>,
    /// Skip `vmm --boot pvh`.
    pub no_pvh: bool,
}

/// On the host: prepare the lab and run the in-L1 benchmark in one L1 boot.
pub fn run_host(o: &HostOpts) -> Result<(), String> {
    let lab = o.repo.join("tests/lab/lab");
    if !lab.is_file() {
        return Err(format!("{} not found (use --repo)", lab.display()));
    }
    eprintln!("vmm-bench: {} prepare", lab.display());
    let out = Command::new(&lab)
        .arg("prepare")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", lab.display()))?;
    let vars = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!("lab prepare failed ({}):\n{vars}", out.status));
    }
    let var = |k: &str| {
        vars.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .map(PathBuf::from)
            .ok_or_else(|| format!("lab prepare printed no {k}=:\n{vars}"))
    };
    let (kernel, rootfs) = (var("GUEST_VMLINUX")?, var("ROOTFS")?);
    let me = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let dir = std::env::temp_dir().join(format!("vmm-bench-lab-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let variants = if o.no_pvh {
        "vmm,qemu"
    } else {
        "vmm,vmm-pvh,qemu"
    };
    let nvar = if o.no_pvh { 2 } else { 3 };
    // Generous: each emulated boot takes seconds to tens of seconds.
    let timeout = 300 + o.runs * nvar * 90;
    let mut cmd = Command::new(&lab);
    cmd.arg("run")
        .arg("--bin")
        .arg(&me)
        .arg("--bin")
        .arg(&o.vmm)
        .arg("--file")
        .arg(format!("{}:/lab/vmlinux", kernel.display()))
        .arg("--file")
        .arg(format!("{}:/lab/rootfs.ext4", rootfs.display()))
        .arg("--timeout")
        .arg(timeout.to_string())
        .arg("--out")
        .arg(&dir)
        .arg("--")
        .arg(
            me.file_name()
                .map_or("vmm-bench".into(), |n| n.to_string_lossy().into_owned()),
        )
        .args(["boot", "--in-l1", "--runs"])
        .arg(o.runs.to_string())
        .arg("--mem")
        .arg(o.mem_mib.to_string())
        .args(["--variants", variants, "--out", "/out"])
        .args([
            "--vmm",
            "/lab/bin/vmm",
            "--kernel",
            "/lab/vmlinux",
            "--rootfs",
            "/lab/rootfs.ext4",
        ])
        .stdin(Stdio::null());
    eprintln!("vmm-bench: {}", command_line(&cmd));
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {}: {e}", lab.display()))?;
    for (name, dest) in [("boot.json", &o.json), ("boot.md", &o.markdown)] {
        let src = dir.join(name);
        if !src.is_file() {
            continue;
        }
        if let Some(dest) = dest {
            std::fs::copy(&src, dest)
                .map_err(|e| format!("cannot copy {} to {}: {e}", src.display(), dest.display()))?;
            eprintln!("vmm-bench: wrote {}", dest.display());
        } else {
            eprintln!("vmm-bench: {}", src.display());
        }
    }
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "the lab run failed ({status}); see its output above"
        ))
    }
}

/// Parse `vmm,vmm-pvh,qemu`.
pub fn parse_variants(s: &str) -> Result<Vec<Variant>, String> {
    s.split(',')
        .map(|v| match v.trim() {
            "vmm" => Ok(Variant::Vmm),
            "vmm-pvh" => Ok(Variant::VmmPvh),
            "qemu" => Ok(Variant::Qemu),
            other => Err(format!("unknown variant {other:?} (vmm, vmm-pvh, qemu)")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_vmms_get_the_same_kernel_command_line() {
        let o = InL1Opts {
            runs: 1,
            mem_mib: 256,
            vmm: "/lab/bin/vmm".into(),
            qemu: "qemu-system-x86_64".into(),
            kernel: "/lab/vmlinux".into(),
            rootfs: "/lab/rootfs.ext4".into(),
            out: None,
            variants: vec![Variant::Vmm, Variant::Qemu],
        };
        let disk = Path::new("/tmp/d.ext4");
        let line = guest_cmdline(&o.kernel, disk);
        assert!(
            line.starts_with("console=ttyS0 ") && line.contains("root=/dev/vda rw"),
            "{line}"
        );
        assert!(line.ends_with(RUN));
        let q = command_line(&command(Variant::Qemu, &o, disk));
        assert!(q.contains(&format!("-append '{line}'")), "{q}");
        let v = command_line(&command(Variant::VmmPvh, &o, disk));
        assert!(
            v.contains("--rootfs /tmp/d.ext4 --mem 256M") && v.ends_with("--boot pvh"),
            "{v}"
        );
        assert_eq!(
            parse_variants("vmm,qemu").unwrap(),
            vec![Variant::Vmm, Variant::Qemu]
        );
        assert!(parse_variants("xen").is_err());
    }
}
