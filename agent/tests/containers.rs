//! The agent's container machinery on this host (as root): each test starts
//! the real `vmm-agent` binary in a private mount namespace, listening on a
//! Unix socket (vsock is the only part not exercised here), uploads a layer
//! made at test time (busybox-static plus a syscall probe, as ext4), and
//! runs containers through the protocol client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use vmm_agent::cgroup::Hierarchy;
use vmm_agent::client::{self, Output, Process};
use vmm_agent::protocol::{ContainerState, ExecSpec, Limits, PutLayer, Request, Response, RunSpec};

fn skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED {test}: needs root (namespaces, mounts, cgroups)");
        return true;
    }
    false
}

fn run_cmd(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Layer {
    path: PathBuf,
    diff_id: String,
    sha256: String,
    size: u64,
}

/// The test image: busybox, the probe, /etc/passwd and /etc/group.
fn layer() -> &'static Layer {
    static LAYER: OnceLock<Layer> = OnceLock::new();
    LAYER.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("agent-layer");
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.join("root");
        for d in ["bin", "etc", "tmp", "root"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("busybox-static is needed (apt-get install busybox-static)");
        std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
        for applet in [
            "sh", "echo", "cat", "hostname", "ls", "grep", "sleep", "dd", "id", "kill", "true",
        ] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        let probe_src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/probe.c");
        run_cmd(
            Command::new("cc")
                .args(["-static", "-O", "-o"])
                .arg(root.join("bin/probe"))
                .arg(&probe_src),
        );
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        )
        .unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
        let path = dir.join("layer.ext4");
        run_cmd(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-d"])
                .arg(&root)
                .arg(&path)
                .arg("16M"),
        );
        let data = std::fs::read(&path).unwrap();
        use sha2::Digest;
        let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        Layer {
            sha256: format!("sha256:{}", hex(&sha2::Sha256::digest(&data))),
            // A made-up diff-id: the agent does not see the tar.
            diff_id: format!("sha256:{}", hex(&sha2::Sha256::digest(b"test layer"))),
            size: data.len() as u64,
            path,
        }
    })
}

/// One agent, killed and cleaned up on drop.
struct Agent {
    child: Child,
    sock: PathBuf,
    dir: PathBuf,
    cgroup_name: String,
}

impl Agent {
    fn start(name: &str) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("agent-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("agent.sock");
        let cgroup_name = format!("vmm-agent-test-{}-{name}", std::process::id());
        let mut child = Command::new("unshare")
            .args(["--mount", "--propagation", "private"])
            .arg(env!("CARGO_BIN_EXE_vmm-agent"))
            .arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--cgroup-name", &cgroup_name])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start vmm-agent under unshare");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "VMM-AGENT-READY", "agent did not start");
        let agent = Self {
            child,
            sock,
            dir,
            cgroup_name,
        };
        let l = layer();
        let req = PutLayer {
            diff_id: l.diff_id.clone(),
            size: l.size,
            sha256: l.sha256.clone(),
        };
        let mut f = std::fs::File::open(&l.path).unwrap();
        let had = client::put_layer(&mut agent.connect(), &req, &mut f).unwrap();
        assert!(!had, "fresh agent");
        agent
    }

    fn connect(&self) -> UnixStream {
        let s = client::connect_unix(&self.sock).unwrap();
        // Bounds every test: nothing here takes a minute.
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s
    }

    fn request(&self, req: &Request) -> Result<Response, client::ClientError> {
        client::request(&mut self.connect(), req)
    }

    fn run(&self, spec: RunSpec) -> Output {
        self.try_run(spec).unwrap()
    }

    fn try_run(&self, spec: RunSpec) -> Result<Output, client::ClientError> {
        client::run_collect(self.connect(), &Request::Run(spec), b"")
    }

    fn alive(&self) -> bool {
        matches!(self.request(&Request::Ping), Ok(Response::Pong { .. }))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(h) = Hierarchy::detect(&self.cgroup_name) {
            // Containers of a failed test may still run.
            let _ = h.clear();
            let _ = h.remove();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spec(id: &str, script: &str) -> RunSpec {
    RunSpec {
        id: id.into(),
        layers: vec![layer().diff_id.clone()],
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: vec![],
        cwd: None,
        user: None,
        hostname: None,
        limits: Limits::default(),
        stdin: true,
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn output_exit_codes_and_stdin() {
    if skip("output_exit_codes_and_stdin") {
        return;
    }
    let a = Agent::start("basic");
    let out = a.run(spec("c1", "echo hello; echo oops >&2; exit 3"));
    assert_eq!(text(&out.stdout), "hello\n");
    assert_eq!(text(&out.stderr), "oops\n");
    assert_eq!(
        (out.status.code, out.status.signal, out.status.oom_killed),
        (Some(3), None, false)
    );
    assert!(out.pid > 1, "pid in the agent's namespace: {}", out.pid);

    let out = a.run(spec("c1", "true"));
    assert_eq!(out.status.code, Some(0), "an exited id can be reused");

    let mut s = spec("cat", "cat; echo end");
    s.stdin = true;
    let out = client::run_collect(a.connect(), &Request::Run(s), b"line 1\nline 2\n").unwrap();
    assert_eq!(text(&out.stdout), "line 1\nline 2\nend\n");

    // Large output passes through intact (several frames).
    let out = a.run(spec(
        "big",
        "dd if=/dev/zero bs=1024 count=3000 2>/dev/null",
    ));
    assert_eq!(out.stdout.len(), 3000 * 1024);
    assert_eq!(out.status.code, Some(0));
}

#[test]
fn kill_by_signal_is_reported() {
    if skip("kill_by_signal_is_reported") {
        return;
    }
    let a = Agent::start("signal");
    let p = Process::start(a.connect(), &Request::Run(spec("sleeper", "exec sleep 60"))).unwrap();
    let mut input = p.input().unwrap();
    let t = Instant::now();
    input.signal(libc::SIGKILL).unwrap();
    let (mut o, mut e) = (Vec::new(), Vec::new());
    let st = p.wait(&mut o, &mut e).unwrap();
    assert_eq!((st.code, st.signal, st.oom_killed), (None, Some(9), false));
    assert!(t.elapsed() < Duration::from_secs(10));

    // A shell that kills itself with a signal it handles by default (PID 1
    // ignores signals without handlers, so the test uses a child).
    let out = a.run(spec("selfkill", "sh -c 'kill -TERM $$'; echo status $?"));
    assert_eq!(text(&out.stdout), "status 143\n");
}

#[test]
fn namespaces_hostname_pid1_and_network() {
    if skip("namespaces_hostname_pid1_and_network") {
        return;
    }
    let a = Agent::start("ns");
    let mut s = spec("ns1", "hostname; echo pid $$; ls /sys/class/net; cat /proc/1/cmdline; echo; ls /proc | grep -c '^[0-9]'");
    s.hostname = Some("box-1".into());
    let out = a.run(s);
    let lines: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    assert_eq!(lines[0], "box-1", "{lines:?}");
    assert_eq!(lines[1], "pid 1", "the container's init is PID 1");
    assert_eq!(
        lines[2], "lo",
        "only loopback in the container's netns: {lines:?}"
    );
    assert!(lines[3].starts_with("sh\0-c"), "{lines:?}");
    // sh, ls and grep: nothing of the host is visible.
    assert!(lines[4].parse::<u32>().unwrap() <= 4, "{lines:?}");

    // The default hostname is the id; the root is writable and private.
    let out = a.run(spec(
        "writer",
        "hostname; echo data > /newfile && cat /newfile; ls /dev",
    ));
    let t = text(&out.stdout);
    assert!(t.starts_with("writer\ndata\n"), "{t}");
    for dev in [
        "null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm",
    ] {
        assert!(t.lines().any(|l| l == dev), "/dev/{dev} missing: {t}");
    }
    let out = a.run(spec("reader", "cat /newfile 2>&1; echo rc $?"));
    assert!(
        text(&out.stdout).ends_with("rc 1\n"),
        "another container's write leaked"
    );
    let out = a.run(spec(
        "lo",
        "echo probe > /proc/sys/kernel/hostname; echo rc $?; grep -c . /proc/kcore",
    ));
    assert!(
        text(&out.stdout).starts_with("rc 1\n"),
        "/proc/sys must be read-only: {}",
        text(&out.stdout)
    );
}

#[test]
fn memory_limit_kills_only_the_container() {
    if skip("memory_limit_kills_only_the_container") {
        return;
    }
    let a = Agent::start("oom");
    let bystander = Process::start(
        a.connect(),
        &Request::Run(spec("bystander", "exec sleep 60")),
    )
    .unwrap();
    let mut s = spec("hog", "exec dd if=/dev/zero of=/dev/null bs=256M count=1");
    s.limits.memory_bytes = Some(32 << 20);
    let out = a.run(s);
    assert_eq!(out.status.signal, Some(libc::SIGKILL), "{out:?}");
    assert!(out.status.oom_killed, "{out:?}");
    // The agent and the other container are still there.
    assert!(a.alive());
    let exec = ExecSpec {
        id: "bystander".into(),
        argv: vec!["echo".into(), "still here".into()],
        env: vec![],
        cwd: None,
        user: None,
        stdin: false,
    };
    let out = client::run_collect(a.connect(), &Request::Exec(exec), b"").unwrap();
    assert_eq!(text(&out.stdout), "still here\n");
    bystander.input().unwrap().signal(libc::SIGKILL).unwrap();
    let st = bystander.wait(&mut Vec::new(), &mut Vec::new()).unwrap();
    assert_eq!((st.signal, st.oom_killed), (Some(9), false));

    // Within the limit, nothing happens.
    let mut s = spec(
        "small",
        "dd if=/dev/zero of=/dev/null bs=1M count=1 2>/dev/null; echo ok",
    );
    s.limits.memory_bytes = Some(32 << 20);
    let out = a.run(s);
    assert_eq!(
        (text(&out.stdout).as_str(), out.status.oom_killed),
        ("ok\n", false)
    );
}

#[test]
fn pids_and_cpu_limits() {
    if skip("pids_and_cpu_limits") {
        return;
    }
    let a = Agent::start("pids");
    let mut s = spec(
        "forker",
        "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 3 & done 2>&1; kill $(jobs -p) 2>/dev/null; echo end",
    );
    s.limits.pids = Some(5);
    s.limits.cpu = Some(0.5);
    let out = a.run(s);
    // busybox sh gives up at the first failed fork.
    let t = text(&out.stdout) + &text(&out.stderr);
    assert!(
        t.contains("can't fork"),
        "pids.max did not stop the forks: {t}"
    );
    assert!(!t.contains("end"), "{t}");
    assert!(a.alive());
}

#[test]
fn seccomp_capabilities_and_users() {
    if skip("seccomp_capabilities_and_users") {
        return;
    }
    let a = Agent::start("sec");
    let out = a.run(RunSpec {
        argv: vec!["probe".into()],
        ..spec("probe", "")
    });
    let t = text(&out.stdout);
    let result = |name: &str| {
        t.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing in {t}"))
            .to_string()
    };
    for name in [
        "keyctl",
        "add_key",
        "request_key",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "kexec_load",
        "init_module",
        "reboot",
        "swapon",
        "clock_settime",
        "acct",
        "iopl",
        "io_uring_setup",
        "open_by_handle_at",
        "unshare_user",
        "socket_vsock",
    ] {
        assert_eq!(result(name), "EPERM", "{name}: {t}");
    }
    assert_eq!(result("x32_keyctl"), "ENOSYS");
    assert_eq!(result("clone3"), "ENOSYS");
    assert_eq!(result("getpid"), "ok");
    assert_eq!(result("socket_unix"), "ok");

    let status = "grep -E '^(Cap(Eff|Prm|Bnd|Inh|Amb)|NoNewPrivs|Seccomp):' /proc/self/status; id";
    let out = a.run(spec("root-caps", status));
    let t = text(&out.stdout);
    for want in [
        "CapEff:\t00000000a80425fb",
        "CapBnd:\t00000000a80425fb",
        "CapInh:\t0000000000000000",
        "CapAmb:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
        "uid=0(root) gid=0(root)",
    ] {
        assert!(t.contains(want), "{want:?} not in {t}");
    }
    let mut s = spec("nobody-caps", status);
    s.user = Some("nobody".into());
    let t = text(&a.run(s).stdout);
    for want in [
        "CapEff:\t0000000000000000",
        "CapBnd:\t00000000a80425fb",
        "uid=65534(nobody) gid=65534(nogroup)",
    ] {
        assert!(t.contains(want), "{want:?} not in {t}");
    }
    let mut s = spec("numeric", "id -u; id -g; pwd; echo $HOME");
    s.user = Some("1000:1000".into());
    s.cwd = Some("/work/dir".into());
    assert_eq!(text(&a.run(s).stdout), "1000\n1000\n/work/dir\n/\n");
}

#[test]
fn exec_ps_and_errors() {
    if skip("exec_ps_and_errors") {
        return;
    }
    let a = Agent::start("exec");
    let mut s = spec("svc", "echo ready; exec sleep 60");
    s.hostname = Some("svc-host".into());
    let main = Process::start(a.connect(), &Request::Run(s)).unwrap();
    let exec = |argv: &[&str]| {
        let e = ExecSpec {
            id: "svc".into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec!["GREETING=hi".into()],
            cwd: Some("/tmp".into()),
            user: None,
            stdin: true,
        };
        client::run_collect(a.connect(), &Request::Exec(e), b"input\n")
    };
    let out = exec(&[
        "sh",
        "-c",
        "hostname; cat /proc/1/cmdline; echo; echo $$ $GREETING; pwd; cat",
    ])
    .unwrap();
    let t = text(&out.stdout);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines[0], "svc-host");
    assert_eq!(
        lines[1], "sleep\u{0}60\u{0}",
        "PID 1 is the container's init"
    );
    assert!(
        lines[2].ends_with(" hi") && !lines[2].starts_with("1 "),
        "{t}"
    );
    assert_eq!(&lines[3..], ["/tmp", "input"]);
    let out = exec(&["sh", "-c", "exit 7"]).unwrap();
    assert_eq!(out.status.code, Some(7));

    let Response::Containers { containers } = a.request(&Request::Ps).unwrap() else {
        panic!("not a ps answer")
    };
    let svc = containers.iter().find(|c| c.id == "svc").unwrap();
    assert_eq!(svc.state, ContainerState::Running);
    assert_eq!(svc.argv[0], "sh");

    // Errors: each one an `error` answer naming the problem.
    let err = |r: Result<Output, client::ClientError>| match r {
        Err(client::ClientError::Agent(m)) => m,
        other => panic!("expected an agent error, got {other:?}"),
    };
    let m = err(a.try_run(spec("svc", "true")));
    assert!(m.contains("already running"), "{m}");
    let m = err(exec(&["no-such-command"]));
    assert!(
        m.contains("execute the command") && m.contains("No such file"),
        "{m}"
    );
    let mut s = spec("missing", "true");
    s.layers = vec![format!("sha256:{}", "0".repeat(64))];
    let m = err(a.try_run(s));
    assert!(m.contains("not present"), "{m}");
    let m = err(a.try_run(spec("../escape", "true")));
    assert!(m.contains("invalid id"), "{m}");
    let mut s = spec("baduser", "true");
    s.user = Some("nosuchuser".into());
    let m = err(a.try_run(s));
    assert!(m.contains("resolve user"), "{m}");
    let m = err(exec(&["true"]).and_then(|_| {
        client::run_collect(
            a.connect(),
            &Request::Exec(ExecSpec {
                id: "nope".into(),
                argv: vec!["true".into()],
                env: vec![],
                cwd: None,
                user: None,
                stdin: false,
            }),
            b"",
        )
    }));
    assert!(m.contains("no running container nope"), "{m}");

    main.input().unwrap().signal(libc::SIGKILL).unwrap();
    let mut o = Vec::new();
    main.wait(&mut o, &mut Vec::new()).unwrap();
    assert_eq!(text(&o), "ready\n");
    let Response::Containers { containers } = a.request(&Request::Ps).unwrap() else {
        panic!("not a ps answer")
    };
    let svc = containers.iter().find(|c| c.id == "svc").unwrap();
    assert_eq!(svc.state, ContainerState::Exited);
    assert_eq!(svc.exit.and_then(|e| e.signal), Some(9));
    let failed = containers.iter().find(|c| c.id == "baduser").unwrap();
    assert!(failed
        .error
        .as_deref()
        .unwrap_or("")
        .contains("resolve user"));
}

#[test]
fn layers_are_verified_and_idempotent() {
    if skip("layers_are_verified_and_idempotent") {
        return;
    }
    let a = Agent::start("layers");
    let l = layer();
    let req = PutLayer {
        diff_id: l.diff_id.clone(),
        size: l.size,
        sha256: l.sha256.clone(),
    };
    let mut f = std::fs::File::open(&l.path).unwrap();
    assert!(
        client::put_layer(&mut a.connect(), &req, &mut f).unwrap(),
        "already present"
    );

    let bad = PutLayer {
        diff_id: format!("sha256:{}", "1".repeat(64)),
        size: 4096,
        sha256: format!("sha256:{}", "2".repeat(64)),
    };
    let data = vec![0u8; 4096];
    match client::put_layer(&mut a.connect(), &bad, &mut &data[..]) {
        Err(client::ClientError::Agent(m)) => assert!(m.contains("sha256 mismatch"), "{m}"),
        other => panic!("{other:?}"),
    }
    let Response::Layers { layers } = a.request(&Request::Layers).unwrap() else {
        panic!("not a layers answer")
    };
    assert_eq!(
        layers,
        std::slice::from_ref(&l.diff_id),
        "the refused layer left nothing"
    );
    assert!(std::fs::read_dir(a.dir.join("state/layers/.tmp"))
        .unwrap()
        .next()
        .is_none());
}
