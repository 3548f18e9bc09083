//! Containers in tenant VMs, end to end in the lab (docs/containers.md, docs/lab.md).
//!
//! Two L1 boots, each shared by a group of tests through a `OnceLock`:
//!
//! - **vsock** (`tests/lab/scenarios/containers-vsock.sh`): a guest with socat (a test rootfs
//!   made with `mkrootfs.sh --add-bin socat`) and socat in L1 move data through vmm's
//!   virtio-vsock: 32 MiB each way with sha256 checks, 32 parallel streams each way, the
//!   guest closing or being killed mid-stream, then fresh connections and a clean shutdown.
//! - **containers** (`tests/lab/scenarios/containers-run.sh`): `vmm run` of images this file
//!   builds (busybox as an OCI layout, as a `docker save` archive, a 3-layer image with
//!   whiteouts, and bad ones), throw-away VMs and two tenants, exit statuses and signals, a
//!   memory limit, exec/ps, what one tenant can see of the other, bad input.
//!
//! The scenarios only run the cases and record facts (`FACT` lines, `/out` files); the
//! assertions are here. A third boot, `containers-bench.sh`, is the start-up benchmark of
//! docs/performance.md: `cargo test --release -p vmm --test lab_containers -- --ignored
//! --nocapture bench_container_start`; it is not a timed test.
//!
//! Set `VMM_SKIP_LAB=1` to skip these tests (they print SKIPPED); without it they fail
//! loudly when the lab is unavailable. Host packages they need (socat; crun for the
//! benchmark) are installed with apt-get when missing, as `tests/lab/lab prepare` does.

// Test code: `expect` with context is how these tests fail (clippy.toml's
// allow-expect-in-tests does not reach helper functions outside #[test]s).
#![allow(clippy::expect_used)]

mod common;

use common::{lab_skipped, prepare, repo_root, scenario, LabResult, LabRun};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The vmm binary under test.
const VMM: &str = env!("CARGO_BIN_EXE_vmm");
/// `vmm run` and friends hand over to this binary, next to `vmm`.
const VMM_CONTAINERS: &str = env!("CARGO_BIN_EXE_vmm-containers");

/// Bytes each way in the large vsock round trips (as the scenario's default).
const BIG: u64 = 32 << 20;
/// Parallel vsock streams (as the scenario's default).
const PAR: u64 = 32;

// ---------------------------------------------------------------------------------------
// Host-side fixtures
// ---------------------------------------------------------------------------------------

/// A fresh directory for this file's fixtures.
fn work_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("lab_containers")
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

/// Runs a repository script and returns its stdout; panics with its stderr when it fails.
fn script(cmd: &mut Command) -> String {
    let out = cmd
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The last line a script printed (the image path, for the rootfs builders).
fn last_line(stdout: &str) -> PathBuf {
    let line = stdout.lines().last().unwrap_or_default().trim();
    let path = PathBuf::from(line);
    assert!(path.is_file(), "the script printed {line:?}, not a file");
    path
}

/// Installs Debian packages that are missing (rootfs-tools/lib.sh's ensure_pkgs, apt-get).
fn ensure_packages(pkgs: &[&str]) {
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg("prog=lab_containers; . rootfs-tools/lib.sh; ensure_pkgs \"$@\"")
        .arg("ensure_pkgs")
        .args(pkgs);
    script(&mut cmd);
}

/// The tenant VM's root file system (rootfs-tools/mkagentfs.sh; cached).
fn agentfs() -> PathBuf {
    last_line(&script(&mut Command::new(
        repo_root().join("rootfs-tools/mkagentfs.sh"),
    )))
}

/// The test rootfs with socat added (cached by mkrootfs.sh).
fn socat_rootfs() -> PathBuf {
    ensure_packages(&["socat"]);
    last_line(&script(
        Command::new(repo_root().join("rootfs-tools/mkrootfs.sh"))
            .args(["--add-bin", "/usr/bin/socat"]),
    ))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The busybox image of tests/lab/make-oci-image.sh in `format`, at `out`; returns its
/// layer's diff-id.
fn busybox_image(format: &str, out: &Path) -> String {
    let stdout = script(
        Command::new(repo_root().join("tests/lab/make-oci-image.sh"))
            .args(["--format", format, "-o"])
            .arg(out),
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("DIFF_ID="))
        .expect("make-oci-image.sh prints DIFF_ID=")
        .to_string()
}

/// The uncompressed layer `diff_id` from an OCI layout packed in a tar.
fn layer_from_oci_tar(archive: &Path, diff_id: &str) -> Vec<u8> {
    let hex = diff_id.trim_start_matches("sha256:");
    let file = std::fs::File::open(archive).expect("open the busybox image");
    let mut tar = tar::Archive::new(file);
    for entry in tar.entries().expect("read the busybox image") {
        let mut entry = entry.expect("a tar entry");
        let path = entry.path().expect("a tar path").into_owned();
        if path.ends_with(format!("blobs/sha256/{hex}")) {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).expect("read the layer");
            return bytes;
        }
    }
    panic!("{} has no blob {hex}", archive.display());
}

/// A layer tar being built: root-owned entries with mtime 0.
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Self {
        Self(tar::Builder::new(Vec::new()))
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    }

    fn dir(mut self, path: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, 0o755, 0);
        self.0
            .append_data(&mut h, path, std::io::empty())
            .expect("append a directory");
        self
    }

    fn file(mut self, path: &str, data: &[u8]) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, 0o644, data.len() as u64);
        self.0
            .append_data(&mut h, path, data)
            .expect("append a file");
        self
    }

    /// An entry named exactly `name`, bypassing the tar crate's path checks (which refuse
    /// `..`): what a hostile image can contain.
    fn raw_file(mut self, name: &[u8], data: &[u8]) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, 0o644, data.len() as u64);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        self.0.append(&h, data).expect("append a raw entry");
        self
    }

    fn finish(self) -> Vec<u8> {
        self.0.into_inner().expect("finish the layer tar")
    }
}

/// An OCI image layout, packed in a tar, with these (uncompressed) layers, bottom first.
/// Layers at the indexes in `gzip` are stored gzip-compressed.
fn oci_layout_tar(layers: &[Vec<u8>], gzip: &[usize]) -> Vec<u8> {
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        diff_ids.push(format!("\"sha256:{}\"", sha256_hex(layer)));
        let (blob, media) = if gzip.contains(&i) {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(layer).expect("gzip a layer");
            (
                gz.finish().expect("gzip a layer"),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        } else {
            (layer.clone(), "application/vnd.oci.image.layer.v1.tar")
        };
        descriptors.push(format!(
            r#"{{"mediaType":"{media}","digest":"sha256:{}","size":{}}}"#,
            sha256_hex(&blob),
            blob.len()
        ));
        blobs.push((sha256_hex(&blob), blob));
    }
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"]}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        diff_ids.join(",")
    )
    .into_bytes();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{}","size":{}}},"layers":[{}]}}"#,
        sha256_hex(&config),
        config.len(),
        descriptors.join(",")
    )
    .into_bytes();
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
        sha256_hex(&manifest),
        manifest.len()
    );
    blobs.push((sha256_hex(&config), config));
    blobs.push((sha256_hex(&manifest), manifest));
    let mut out = Layer::new()
        .file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
        .file("index.json", index.as_bytes())
        .dir("blobs")
        .dir("blobs/sha256");
    for (hex, blob) in &blobs {
        out = out.file(&format!("blobs/sha256/{hex}"), blob);
    }
    out.finish()
}

/// A classic `docker save` archive of one image with these layers, bottom first.
fn docker_save_tar(layers: &[Vec<u8>]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("\"sha256:{}\"", sha256_hex(l)))
        .collect();
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["sh"]}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        diff_ids.join(",")
    );
    let config_hex = sha256_hex(config.as_bytes());
    let paths: Vec<String> = layers
        .iter()
        .map(|l| format!("{}/layer.tar", sha256_hex(l)))
        .collect();
    let manifest = format!(
        r#"[{{"Config":"{config_hex}.json","RepoTags":["test:truncated"],"Layers":[{}]}}]"#,
        paths
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut out = Layer::new()
        .file("manifest.json", manifest.as_bytes())
        .file(&format!("{config_hex}.json"), config.as_bytes());
    for (layer, path) in layers.iter().zip(&paths) {
        out = out
            .dir(path.trim_end_matches("/layer.tar"))
            .file(path, layer);
    }
    out.finish()
}

/// `n` bytes that differ from run to run (so a layer made of them is never in a cache).
fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("read /dev/urandom");
    b
}

/// A random word for the tenant-isolation check.
fn token() -> String {
    format!("vmm-token-{}", &sha256_hex(&random_bytes(32))[..24])
}

// ---------------------------------------------------------------------------------------
// Facts from a scenario's output
// ---------------------------------------------------------------------------------------

/// One `FACT NAME REST` line: the rest, and its `key=value` words.
#[derive(Debug, Clone)]
struct Fact {
    rest: String,
    fields: BTreeMap<String, String>,
}

impl Fact {
    fn get(&self, key: &str) -> &str {
        self.fields
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("fact {:?} has no {key}=", self.rest))
    }

    fn num(&self, key: &str) -> f64 {
        let v = self.get(key);
        v.parse()
            .unwrap_or_else(|_| panic!("fact {:?}: {key}={v:?} is not a number", self.rest))
    }
}

fn facts(run: &LabResult) -> BTreeMap<String, Fact> {
    let mut map = BTreeMap::new();
    for line in run.stdout.lines() {
        let Some(rest) = line.strip_prefix("FACT ") else {
            continue;
        };
        let (name, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let fields = rest
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        map.insert(
            name.to_string(),
            Fact {
                rest: rest.trim().to_string(),
                fields,
            },
        );
    }
    map
}

/// A finished lab run and its facts.
struct Lab {
    run: LabResult,
    facts: BTreeMap<String, Fact>,
}

impl Lab {
    fn fact(&self, name: &str) -> &Fact {
        self.facts.get(name).unwrap_or_else(|| {
            panic!(
                "the scenario printed no `FACT {name}` line\n{}",
                self.run.describe()
            )
        })
    }

    fn out(&self, name: &str) -> String {
        self.run.out_file(name)
    }

    /// A case recorded by containers-run.sh's `run`.
    fn case(&self, name: &str) -> Case {
        let status = self.out(&format!("{name}.status"));
        Case {
            name: name.to_string(),
            cmd: self.out(&format!("{name}.cmd")).trim().to_string(),
            status: status
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("case {name}: status {status:?} is not a number")),
            stdout: self.out(&format!("{name}.stdout")),
            stderr: self.out(&format!("{name}.stderr")),
        }
    }
}

/// What one command in containers-run.sh did.
struct Case {
    name: String,
    cmd: String,
    status: i32,
    stdout: String,
    stderr: String,
}

impl Case {
    fn describe(&self) -> String {
        format!(
            "case {}: `{}` exited with {}\n--- stdout:\n{}--- stderr:\n{}",
            self.name, self.cmd, self.status, self.stdout, self.stderr
        )
    }

    fn assert_status(&self, want: i32) -> &Self {
        assert_eq!(self.status, want, "{}", self.describe());
        self
    }

    fn assert_stdout(&self, want: &str) -> &Self {
        assert_eq!(self.stdout.trim_end(), want, "{}", self.describe());
        self
    }

    fn assert_stdout_has(&self, line: &str) -> &Self {
        assert!(
            self.stdout.lines().any(|l| l == line),
            "stdout lacks the line {line:?}\n{}",
            self.describe()
        );
        self
    }

    fn assert_stderr_has(&self, text: &str) -> &Self {
        assert!(
            self.stderr.contains(text),
            "stderr lacks {text:?}\n{}",
            self.describe()
        );
        self
    }
}

/// Runs `make` once for every test sharing `cell`; a failure is kept, so that each of
/// them fails with its message instead of booting L1 again.
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

// ---------------------------------------------------------------------------------------
// The lab runs
// ---------------------------------------------------------------------------------------

fn vsock_lab(test: &str) -> Option<&'static Lab> {
    static LAB: OnceLock<Result<Lab, String>> = OnceLock::new();
    if lab_skipped(test) {
        return None;
    }
    Some(shared(&LAB, || {
        let p = prepare();
        let run = LabRun::new("containers-vsock")
            .bin(VMM)
            .bin("/usr/bin/socat")
            .file(&p.guest_vmlinux, "/lab/vmlinux")
            .file(socat_rootfs(), "/lab/socat-rootfs.ext4")
            .mem(2048)
            .collect_out()
            // Normally about five minutes under emulation; the limit allows a loaded host.
            .timeout(1200)
            .script(scenario("containers-vsock.sh"), Vec::<String>::new())
            .run();
        run.assert_kind("scenario");
        run.assert_status(0);
        let facts = facts(&run);
        Lab { run, facts }
    }))
}

/// The random word the bystander container writes (see `tenants_cannot_see_each_other`).
fn run_token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(token)
}

fn containers_lab(test: &str) -> Option<&'static Lab> {
    static LAB: OnceLock<Result<Lab, String>> = OnceLock::new();
    if lab_skipped(test) {
        return None;
    }
    Some(shared(&LAB, || {
        let p = prepare();
        let dir = work_dir("images");
        let oci = dir.join("busybox-oci.tar");
        let diff_id = busybox_image("oci-tar", &oci);
        let docker = dir.join("busybox-docker.tar");
        assert_eq!(busybox_image("docker", &docker), diff_id);
        let busybox = layer_from_oci_tar(&oci, &diff_id);

        // Layer 2 adds files; layer 3 (gzip-compressed) deletes one, makes a directory
        // opaque, replaces and adds files.
        let files = Layer::new()
            .dir("data")
            .file("data/keep", b"keep\n")
            .file("data/gone", b"gone\n")
            .dir("opaque")
            .file("opaque/old1", b"old1\n")
            .dir("opaque/sub")
            .file("opaque/sub/old2", b"old2\n")
            .file("etc/motd", b"layer 2\n")
            .finish();
        let whiteouts = Layer::new()
            .dir("data")
            .file("data/.wh.gone", b"")
            .dir("opaque")
            .file("opaque/.wh..wh..opq", b"")
            .file("opaque/new", b"new\n")
            .file("etc/motd", b"layer 3\n")
            .file("added", b"added in layer 3\n")
            .finish();
        let layers = dir.join("layers.tar");
        write_file(&layers, &oci_layout_tar(&[busybox, files, whiteouts], &[2]));

        // A docker-save archive cut short, in the middle of its (fresh) layer.
        let big = Layer::new()
            .file("random.bin", &random_bytes(1 << 20))
            .finish();
        let full = docker_save_tar(&[big]);
        let truncated = dir.join("truncated.tar");
        write_file(&truncated, &full[..full.len() * 6 / 10]);

        // A layer whose entry climbs out of the layer root to L1's /tmp.
        let dotdot_layer = Layer::new()
            .file("ok", b"fine\n")
            .raw_file(
                b"../../../../../../../../../../tmp/vmm-escape",
                b"escaped\n",
            )
            .finish();
        let dotdot = dir.join("dotdot.tar");
        write_file(&dotdot, &oci_layout_tar(&[dotdot_layer], &[]));

        let run = LabRun::new("containers-run")
            .bin(VMM)
            .bin(VMM_CONTAINERS)
            .bin("/sbin/mkfs.ext4")
            .bin("/sbin/debugfs")
            // GNU grep as ggrep (`--bin PATH:DEST`): it skips the holes of sparse files
            .bin("/usr/bin/grep:/lab/bin/ggrep")
            .file(&p.guest_vmlinux, "/lab/vmlinux")
            .file(agentfs(), "/lab/agentfs.ext4")
            .file(&oci, "/lab/img/busybox-oci.tar")
            .file(&docker, "/lab/img/busybox-docker.tar")
            .file(&layers, "/lab/img/layers.tar")
            .file(&truncated, "/lab/img/truncated.tar")
            .file(&dotdot, "/lab/img/dotdot.tar")
            .mem(3072)
            .collect_out()
            // Normally a few minutes under emulation; the limit allows a loaded host.
            .timeout(1500)
            .script(scenario("containers-run.sh"), [run_token()])
            .run();
        run.assert_kind("scenario");
        run.assert_status(0);
        let facts = facts(&run);
        Lab { run, facts }
    }))
}

// ---------------------------------------------------------------------------------------
// vsock
// ---------------------------------------------------------------------------------------

fn assert_hashes(f: &Fact, what: &str) {
    assert_eq!(f.get("status"), "0", "{what}: socat failed: {}", f.rest);
    assert_eq!(f.num("bytes"), BIG as f64, "{what}: size: {}", f.rest);
    let (sent, got) = (f.get("sent"), f.get("got"));
    assert_eq!(
        sent.len(),
        64,
        "{what}: no sha256 of the sent data: {}",
        f.rest
    );
    assert_eq!(sent, got, "{what}: the data changed on the way: {}", f.rest);
}

#[test]
fn vsock_32mib_host_to_guest() {
    let Some(lab) = vsock_lab("vsock_32mib_host_to_guest") else {
        return;
    };
    assert_hashes(lab.fact("h2g"), "host -> guest");
}

#[test]
fn vsock_32mib_guest_to_host() {
    let Some(lab) = vsock_lab("vsock_32mib_guest_to_host") else {
        return;
    };
    assert_hashes(lab.fact("g2h"), "guest -> host");
}

#[test]
fn vsock_parallel_streams() {
    let Some(lab) = vsock_lab("vsock_parallel_streams") else {
        return;
    };
    let echo = lab.fact("par-echo");
    assert_eq!(echo.num("streams"), PAR as f64, "{}", echo.rest);
    assert_eq!(
        echo.get("failed"),
        "0",
        "echo clients failed: {}",
        echo.rest
    );
    assert_eq!(
        echo.num("identical"),
        PAR as f64,
        "echoed streams differ from what was sent: {}\n{}",
        echo.rest,
        lab.run.describe()
    );
    let g2h = lab.fact("par-g2h");
    assert_eq!(g2h.num("sent"), PAR as f64, "{}", g2h.rest);
    assert_eq!(
        g2h.num("got"),
        PAR as f64,
        "L1 did not get every stream: {}",
        g2h.rest
    );
    assert_eq!(g2h.get("guest-failed"), "0", "{}", g2h.rest);
    assert_eq!(
        g2h.get("connect-timeouts"),
        "0",
        "guest connects timed out: {}",
        g2h.rest
    );
    assert_eq!(
        g2h.get("identical"),
        "yes",
        "stream digests differ: {}",
        g2h.rest
    );
}

#[test]
fn vsock_guest_closing_mid_stream() {
    let Some(lab) = vsock_lab("vsock_guest_closing_mid_stream") else {
        return;
    };
    // L1 sends 32 MiB; the guest reads 1 MiB, answers a line and closes (5005) or is
    // SIGKILLed (5006). L1's socat must end (EOF or EPIPE), not wait for its time limit.
    for port in ["5005", "5006"] {
        let f = lab.fact(&format!("close-{port}"));
        let status = f.get("status");
        assert!(
            status == "0" || status == "1",
            "port {port}: L1's socat did not end by EOF or error (124 = its time limit): {}",
            f.rest
        );
        assert_eq!(f.get("guest-read"), "1048576", "port {port}: {}", f.rest);
        if port == "5005" {
            // A graceful close delivers what the guest wrote before it; a SIGKILL may not.
            assert!(
                f.get("said").contains("guest-closing"),
                "the guest's last words did not arrive: {}",
                f.rest
            );
        }
        assert_eq!(f.get("alive"), "yes", "vmm died: {}", f.rest);
    }
    // The guest streams zeros to L1 and its socat is SIGKILLed: L1 sees EOF after the
    // bytes sent so far, all intact.
    let f = lab.fact("g2h-killed");
    assert_eq!(f.get("guest"), "killed", "{}", f.rest);
    assert_eq!(
        f.get("listener-status"),
        "0",
        "L1's listener did not see EOF: {}",
        f.rest
    );
    assert!(f.num("bytes") >= 1048576.0, "{}", f.rest);
    assert_eq!(
        f.get("zeros"),
        "yes",
        "the stream was corrupted: {}",
        f.rest
    );
    assert_eq!(f.get("alive"), "yes", "vmm died: {}", f.rest);
}

#[test]
fn vsock_keeps_working_and_shuts_down_cleanly() {
    let Some(lab) = vsock_lab("vsock_keeps_working_and_shuts_down_cleanly") else {
        return;
    };
    for step in ["h2g", "g2h", "par-echo", "par-g2h", "g2h-killed"] {
        let f = lab.fact(&format!("alive-{step}"));
        assert_eq!(f.get("vmm"), "yes", "vmm died after {step}");
        assert_eq!(
            f.get("guest"),
            "pong-42",
            "a new connection after {step} failed: {}",
            f.rest
        );
    }
    let after = lab.fact("after");
    assert_eq!(after.get("status"), "0", "{}", after.rest);
    assert_eq!(after.get("sent"), after.get("got"), "{}", after.rest);
    assert_eq!(lab.fact("after-echo").rest, "pong-42");
    assert_eq!(lab.fact("refused").rest, "ERR connection refused");
    assert_eq!(
        lab.fact("vmm-exit").rest,
        "0",
        "vmm did not shut the guest down cleanly on SIGTERM\n{}",
        lab.run.describe()
    );
}

// ---------------------------------------------------------------------------------------
// vmm run
// ---------------------------------------------------------------------------------------

#[test]
fn run_oci_layout_directory_in_a_throwaway_vm() {
    let Some(lab) = containers_lab("run_oci_layout_directory_in_a_throwaway_vm") else {
        return;
    };
    let c = lab.case("oci-dir");
    c.assert_status(0);
    let line = c.stdout.trim_end();
    let host = line
        .strip_prefix("hello from ")
        .and_then(|l| l.strip_suffix(" pid 1"))
        .unwrap_or_else(|| panic!("unexpected output\n{}", c.describe()));
    // The hostname is the generated container id.
    assert!(
        host.starts_with('c') && host.len() == 13,
        "{}",
        c.describe()
    );
    assert_eq!(
        lab.out("throwaway.left"),
        "",
        "throw-away VMs left their state directories"
    );
}

#[test]
fn run_docker_save_archive_with_nonzero_exit() {
    let Some(lab) = containers_lab("run_docker_save_archive_with_nonzero_exit") else {
        return;
    };
    lab.case("docker-exit")
        .assert_status(3)
        .assert_stdout("root:x:0:0:root:/root:/bin/sh")
        .assert_stderr_has("to-stderr");
}

#[test]
fn exit_status_and_output_streams() {
    let Some(lab) = containers_lab("exit_status_and_output_streams") else {
        return;
    };
    let c = lab.case("t1-exit");
    c.assert_status(7).assert_stdout("out-line");
    assert_eq!(c.stderr.trim_end(), "err-line", "{}", c.describe());
    lab.case("t1-env")
        .assert_status(0)
        .assert_stdout("hi-there in /work as 0");
}

#[test]
fn killed_by_signal() {
    let Some(lab) = containers_lab("killed_by_signal") else {
        return;
    };
    // A fault: the kernel's SIGSEGV kills even a pid namespace's init: 128 + 11.
    lab.case("t1-segv").assert_status(139);
    // PID 1 of the container ignores signals it has no handler for from inside its
    // namespace, SIGKILL included (as in docker): the shell goes on.
    lab.case("t1-pid1-kill")
        .assert_status(0)
        .assert_stdout("pid 1 survived");
    // SIGTERM to `vmm run` on the host reaches the container's handler.
    lab.case("t1-bystander")
        .assert_status(42)
        .assert_stdout_has("got-TERM");
}

#[test]
fn memory_limit_kills_only_the_container() {
    let Some(lab) = containers_lab("memory_limit_kills_only_the_container") else {
        return;
    };
    lab.case("t1-oom")
        .assert_status(137)
        .assert_stderr_has("was killed: out of memory");
    // The container running next to it lives on: ps, exec, and its later SIGTERM.
    let ps = lab.case("t1-ps");
    ps.assert_status(0);
    assert!(
        ps.stdout
            .lines()
            .any(|l| l.starts_with("bystander\t") && l.contains("\tRunning\t")),
        "bystander is not running after the OOM kill\n{}",
        ps.describe()
    );
    let token = run_token();
    lab.case("t1-exec")
        .assert_status(0)
        .assert_stdout_has(&format!(
            "exec sees {token} and pid 1 sh -c trap \"echo got-TERM; exit 42\" TERM"
        ));
    lab.case("t1-bystander").assert_status(42);
    // The VM too: same vmm, same kernel, and new containers start.
    let before = lab.case("t1-bootid");
    let after = lab.case("t1-after-oom");
    before.assert_status(0);
    after
        .assert_status(0)
        .assert_stdout(before.stdout.trim_end());
    assert_eq!(
        lab.out("t1.pid"),
        lab.out("t1.pid-after"),
        "t1's vmm changed"
    );
}

#[test]
fn pids_limit_stops_forks() {
    let Some(lab) = containers_lab("pids_limit_stops_forks") else {
        return;
    };
    // The shell cannot start all its `sleep`s and gives up (ash exits with 2).
    let c = lab.case("t1-pids");
    c.assert_stderr_has("can't fork");
    assert_ne!(c.status, 0, "{}", c.describe());
    assert!(!c.stdout.contains("forked"), "{}", c.describe());
}

#[test]
fn two_tenants_are_two_vms() {
    let Some(lab) = containers_lab("two_tenants_are_two_vms") else {
        return;
    };
    let pid = |t: &str| -> u32 {
        let s = lab.out(&format!("{t}.pid"));
        s.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{t}.pid is {s:?}"))
    };
    let (p1, p2) = (pid("t1"), pid("t2"));
    assert_ne!(p1, p2, "both tenants share one vmm");
    let ls = lab.case("tenant-ls");
    ls.assert_status(0)
        .assert_stdout_has(&format!("t1\trunning\tpid {p1}"))
        .assert_stdout_has(&format!("t2\trunning\tpid {p2}"));
    let id = |c: &str| {
        let case = lab.case(c);
        case.assert_status(0);
        let id = case.stdout.trim().to_string();
        assert_eq!(id.len(), 36, "not a boot id\n{}", case.describe());
        id
    };
    assert_ne!(
        id("t1-bootid"),
        id("t2-bootid"),
        "both tenants run on one kernel"
    );
}

#[test]
fn tenants_cannot_see_each_other() {
    let Some(lab) = containers_lab("tenants_cannot_see_each_other") else {
        return;
    };
    // Processes: t2's agent does not know t1's container, and t2's containers see their own
    // processes only.
    let ps = lab.case("t2-ps");
    ps.assert_status(0);
    assert!(!ps.stdout.contains("bystander"), "{}", ps.describe());
    let exec = lab.case("t2-exec-other");
    assert_ne!(exec.status, 0, "{}", exec.describe());
    assert!(exec.stdout.is_empty(), "{}", exec.describe());
    exec.assert_stderr_has("bystander");
    let look = lab.case("t2-look");
    look.assert_stderr_has("/root/token");
    let procs: Vec<&str> = look.stdout.lines().skip(1).collect();
    assert!(
        procs
            .iter()
            .all(|l| !l.contains("sleep 100000") && !l.contains("got-TERM")),
        "{}",
        look.describe()
    );
    // Files: t1's container wrote the token and synced; it is on t1's scratch disk (a file
    // of t1's VM in L1) and nowhere on t2's.
    let token = run_token();
    let count = |t: &str| -> u64 {
        let s = lab.out(&format!("{t}.token-count"));
        s.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{t}.token-count is {s:?}"))
    };
    assert!(
        count("t1") >= 1,
        "the token {token} is not on t1's scratch disk"
    );
    assert_eq!(count("t2"), 0, "the token {token} is on t2's scratch disk");
}

#[test]
fn whiteouts_give_the_right_tree() {
    let Some(lab) = containers_lab("whiteouts_give_the_right_tree") else {
        return;
    };
    lab.case("layers").assert_status(0).assert_stdout(
        "/data: keep \n/opaque: new \n/etc/motd= layer 3\n/added= added in layer 3\n\
         /data/gone absent\n/opaque/old1 absent\n/opaque/sub absent",
    );
}

#[test]
fn bad_images_are_refused_cleanly() {
    let Some(lab) = containers_lab("bad_images_are_refused_cleanly") else {
        return;
    };
    for (case, image, why) in [
        ("bad-missing", "/lab/img/no-such-image.tar", ""),
        ("bad-truncated", "/lab/img/truncated.tar", "truncated"),
        ("bad-dotdot", "/lab/img/dotdot.tar", ".."),
    ] {
        let c = lab.case(case);
        c.assert_status(1);
        assert!(c.stdout.is_empty(), "{}", c.describe());
        let lines: Vec<&str> = c.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "not one line of error\n{}", c.describe());
        assert!(
            lines[0].starts_with("vmm: error: ") && lines[0].contains(image),
            "the error does not name the image\n{}",
            c.describe()
        );
        assert!(
            lines[0].contains(why),
            "the error does not say why\n{}",
            c.describe()
        );
        assert_eq!(
            lab.out(&format!("{case}.changed")),
            "",
            "{case}: files changed outside the image cache"
        );
    }
    let cache = lab.out("bad.cache");
    assert!(
        !cache.contains(".ext4"),
        "a bad image left a layer:\n{cache}"
    );
    let tmp = cache
        .split("/layers/.tmp:")
        .nth(1)
        .expect("bad.cache lists layers/.tmp");
    assert_eq!(tmp.trim(), "", "conversions left staging files:\n{cache}");
    let dir = lab.run.out_dir.as_ref().expect("out collected");
    assert!(
        !dir.join("bad.escape").exists(),
        "/tmp/vmm-escape was written"
    );
    assert!(
        !dir.join("bad.state").exists(),
        "a bad image started a tenant:\n{}",
        lab.out("bad.state")
    );
}

#[test]
fn tenants_go_down() {
    let Some(lab) = containers_lab("tenants_go_down") else {
        return;
    };
    lab.case("t1-down")
        .assert_status(0)
        .assert_stdout("tenant t1 is down");
    lab.case("t2-down")
        .assert_status(0)
        .assert_stdout("tenant t2 is down");
    lab.case("tenant-ls-after")
        .assert_status(0)
        .assert_stdout("t1\tstopped\nt2\tstopped");
    let dir = lab.run.out_dir.as_ref().expect("out collected");
    for t in ["t1", "t2"] {
        assert!(
            !dir.join(format!("{t}.still-running")).exists(),
            "{t}'s vmm still runs after `vmm tenant down`"
        );
    }
    // Each layer was converted once and cached: busybox and the two of layers.tar.
    let cache = lab.out("cache.layers");
    assert_eq!(
        cache.lines().filter(|l| l.ends_with(".ext4")).count(),
        3,
        "{cache}"
    );
}

// ---------------------------------------------------------------------------------------
// The start-up benchmark (docs/performance.md), not a timed test
// ---------------------------------------------------------------------------------------

/// Time from `vmm run` to the container's first output line, cold and warm tenant, next to
/// crun, in one L1 boot. Prints the scenario's summary; run it with --ignored --nocapture.
#[test]
#[ignore = "a benchmark (about 4 minutes): cargo test --release -p vmm --test lab_containers -- --ignored --nocapture bench_container_start"]
fn bench_container_start() {
    if lab_skipped("bench_container_start") {
        return;
    }
    ensure_packages(&["crun"]);
    let p = prepare();
    let dir = work_dir("bench");
    let oci = dir.join("busybox-oci.tar");
    busybox_image("oci-tar", &oci);
    let runs = std::env::var("BENCH_RUNS").unwrap_or_else(|_| "9".into());
    let run = LabRun::new("containers-bench")
        .bin(VMM)
        .bin(VMM_CONTAINERS)
        .bin("/sbin/mkfs.ext4")
        .bin("/sbin/debugfs")
        .bin("/usr/bin/crun")
        // GNU date (nanoseconds) as gdate: `--bin PATH:DEST`
        .bin("/usr/bin/date:/lab/bin/gdate")
        .file(&p.guest_vmlinux, "/lab/vmlinux")
        .file(agentfs(), "/lab/agentfs.ext4")
        .file(&oci, "/lab/img/busybox-oci.tar")
        .mem(3072)
        .collect_out()
        .timeout(3000)
        .script(scenario("containers-bench.sh"), [runs])
        .run();
    run.assert_kind("scenario");
    run.assert_status(0);
    let summary = run.out_file("bench.summary");
    let _ = writeln!(std::io::stderr().lock(), "{summary}");
    for kind in ["cold", "warm", "crun"] {
        assert!(
            summary
                .lines()
                .any(|l| l.starts_with(&format!("BENCH {kind} "))),
            "no {kind} result:\n{summary}"
        );
    }
}
