//! The guest agent binary (see docs/agent.md).
//!
//! ```text
//! vmm-agent [--listen vsock:PORT|unix:PATH] [--state-dir DIR] [--cgroup-name NAME]
//!           [--max-connections N]
//! vmm-agent client (--vsock SOCKET[:PORT] | --unix PATH) [-v] OPERATION
//!     ping | layers | ps | put-layer FILE DIFF_ID | run JSON | exec JSON
//! ```

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use sha2::{Digest, Sha256};
use vmm_agent::client::{self, ClientError, Process};
use vmm_agent::init;
use vmm_agent::protocol::{ExecSpec, PutLayer, Request, RunSpec, DEFAULT_PORT};
use vmm_agent::server::{self, Config, Listen};

const USAGE: &str = "usage:
  vmm-agent [--listen vsock:PORT|unix:PATH] [--state-dir DIR] [--cgroup-name NAME] [--max-connections N]
  vmm-agent client (--vsock SOCKET[:PORT] | --unix PATH) [-v] OPERATION
      OPERATION: ping | layers | ps | put-layer FILE DIFF_ID | run JSON | exec JSON";

fn usage(msg: &str) -> ExitCode {
    eprintln!("vmm-agent: {msg}\n{USAGE}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some(init::INIT_ARG) => init::main(),
        Some("client") => client_main(&args[1..]),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => agent_main(&args),
    }
}

fn agent_main(args: &[String]) -> ExitCode {
    let mut config = Config {
        listen: Listen::Vsock(DEFAULT_PORT),
        state_dir: PathBuf::from("/var/lib/vmm-agent"),
        cgroup_name: "vmm".into(),
        max_connections: 64,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(v) = it.next() else {
            return usage(&format!("{a} needs a value"));
        };
        match a.as_str() {
            "--listen" => {
                config.listen = if let Some(p) = v.strip_prefix("unix:") {
                    Listen::Unix(p.into())
                } else if let Some(Ok(port)) = v.strip_prefix("vsock:").map(str::parse) {
                    Listen::Vsock(port)
                } else {
                    return usage(&format!("bad --listen {v:?}"));
                }
            }
            "--state-dir" => config.state_dir = v.into(),
            "--cgroup-name" => {
                if vmm_agent::protocol::validate_id(v).is_err() {
                    return usage(&format!("bad --cgroup-name {v:?}"));
                }
                config.cgroup_name = v.clone();
            }
            "--max-connections" => match v.parse() {
                Ok(n) if n > 0 => config.max_connections = n,
                _ => return usage(&format!("bad --max-connections {v:?}")),
            },
            _ => return usage(&format!("unknown option {a:?}")),
        }
    }
    match server::serve(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmm-agent: error: {e}");
            ExitCode::from(1)
        }
    }
}

fn client_main(args: &[String]) -> ExitCode {
    let mut target = None;
    let mut verbose = false;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--vsock" | "--unix" if i + 1 < args.len() => {
                target = Some((args[i] == "--vsock", args[i + 1].clone()));
                i += 2;
            }
            "-v" => {
                verbose = true;
                i += 1;
            }
            _ => break,
        }
    }
    let Some((vsock, addr)) = target else {
        return usage("client needs --vsock SOCKET[:PORT] or --unix PATH");
    };
    let connect = || {
        if vsock {
            let (path, port) = match addr.rsplit_once(':').map(|(p, n)| (p, n.parse::<u32>())) {
                Some((p, Ok(n))) => (p.to_string(), n),
                _ => (addr.clone(), DEFAULT_PORT),
            };
            client::connect_vsock(path.as_ref(), port, Duration::from_secs(10))
        } else {
            client::connect_unix(addr.as_ref())
        }
    };
    match run_client(&args[i..], connect, verbose) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vmm-agent client: {e}");
            ExitCode::from(1)
        }
    }
}

type Connect<'a> = dyn Fn() -> Result<std::os::unix::net::UnixStream, ClientError> + 'a;

fn run_client(
    op: &[String],
    connect: impl Fn() -> Result<std::os::unix::net::UnixStream, ClientError>,
    verbose: bool,
) -> Result<ExitCode, ClientError> {
    let connect: &Connect = &connect;
    let bad = |m: &str| ClientError::Agent(format!("usage: {m}"));
    let simple = |req: Request| -> Result<ExitCode, ClientError> {
        let answer = client::request(&mut connect()?, &req)?;
        println!("{}", serde_json::to_string(&answer).unwrap_or_default());
        Ok(ExitCode::SUCCESS)
    };
    match op.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["ping"] => simple(Request::Ping),
        ["layers"] => simple(Request::Layers),
        ["ps"] => simple(Request::Ps),
        ["put-layer", file, diff_id] => {
            let read = |ctx: &str, e: std::io::Error| ClientError::Io {
                context: format!("{ctx} {file}"),
                source: e,
            };
            let mut f = std::fs::File::open(file).map_err(|e| read("open", e))?;
            let mut h = Sha256::new();
            let size = std::io::copy(&mut f, &mut h).map_err(|e| read("read", e))?;
            let sha256 = format!(
                "sha256:{}",
                h.finalize()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            );
            let mut f = std::fs::File::open(file).map_err(|e| read("open", e))?;
            let req = PutLayer {
                diff_id: diff_id.to_string(),
                size,
                sha256,
            };
            let had = client::put_layer(&mut connect()?, &req, &mut f)?;
            println!("{} {}", req.diff_id, if had { "present" } else { "stored" });
            Ok(ExitCode::SUCCESS)
        }
        [kind @ ("run" | "exec"), json] => {
            let req = if *kind == "run" {
                Request::Run(
                    serde_json::from_str::<RunSpec>(json).map_err(|e| bad(&e.to_string()))?,
                )
            } else {
                Request::Exec(
                    serde_json::from_str::<ExecSpec>(json).map_err(|e| bad(&e.to_string()))?,
                )
            };
            let p = Process::start(connect()?, &req)?;
            if verbose {
                eprintln!("vmm-agent client: started pid {}", p.pid());
            }
            let mut input = p.input()?;
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                let mut stdin = std::io::stdin();
                while let Ok(n) = stdin.read(&mut buf) {
                    if n == 0 || input.write(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = input.eof();
            });
            let status = p.wait(&mut std::io::stdout(), &mut std::io::stderr())?;
            let _ = std::io::stdout().flush();
            if verbose {
                eprintln!(
                    "vmm-agent client: exited {}",
                    serde_json::to_string(&status).unwrap_or_default()
                );
            }
            let code = match (status.code, status.signal) {
                (Some(c), _) => c,
                (None, Some(s)) => 128 + s,
                _ => 255,
            };
            Ok(ExitCode::from(u8::try_from(code & 0xff).unwrap_or(255)))
        }
        _ => Err(bad(
            "ping | layers | ps | put-layer FILE DIFF_ID | run JSON | exec JSON",
        )),
    }
}
