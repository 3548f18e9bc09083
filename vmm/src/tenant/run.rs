//! Running containers in a tenant VM: `vmm run`, `vmm exec`, `vmm ps`.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use vmm_agent::client::{self, Process};
use vmm_agent::protocol::{
    ContainerInfo, ExecSpec, ExitStatus, Limits, PutLayer, Request, Response, RunSpec, DEFAULT_PORT,
};

use super::{Tenant, TenantError, TenantSpec};
use crate::image::{ImageRef, Store};

/// Errors of [`self`].
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The tenant could not be started or reached.
    #[error(transparent)]
    Tenant(#[from] TenantError),
    /// The image could not be imported.
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    /// No image cache directory.
    #[error("no image cache directory: set VMM_CACHE or HOME")]
    NoCache,
    /// Reading a layer file failed.
    #[error("cannot read layer {path}: {source}")]
    Layer {
        /// The layer image.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The image gives no command and none was given.
    #[error("image {0} has no Entrypoint or Cmd: give a command after --")]
    NoCommand(String),
    /// The agent failed the operation.
    #[error("{0}")]
    Agent(#[from] client::ClientError),
}

/// What `vmm run` runs.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Command (replaces the image's Cmd; Entrypoint is kept unless `entrypoint` is set).
    pub argv: Vec<String>,
    /// Extra `KEY=VALUE` environment entries.
    pub env: Vec<String>,
    /// Working directory.
    pub workdir: Option<String>,
    /// `user[:group]`.
    pub user: Option<String>,
    /// Container resource limits.
    pub limits: Limits,
    /// Container id (generated when absent).
    pub id: Option<String>,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn connect(t: &Tenant) -> Result<std::os::unix::net::UnixStream, RunError> {
    Ok(client::connect_vsock(
        &t.socket(),
        DEFAULT_PORT,
        CONNECT_TIMEOUT,
    )?)
}

fn file_sha256(path: &Path) -> Result<(String, u64), RunError> {
    let err = |source| RunError::Layer {
        path: path.into(),
        source,
    };
    let mut f = File::open(path).map_err(err)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((format!("sha256:{hex}"), size))
}

/// Make sure the tenant's agent holds every layer of `image`; returns how
/// many it had to be sent.
pub fn upload_layers(t: &Tenant, image: &ImageRef) -> Result<usize, RunError> {
    let have = match client::request(&mut connect(t)?, &Request::Layers)? {
        Response::Layers { layers } => layers,
        r => return Err(client::ClientError::Unexpected(Box::new(r)).into()),
    };
    let mut sent = 0;
    for layer in &image.layers {
        let id = layer.diff_id.to_string();
        if have.contains(&id) {
            continue;
        }
        let (sha256, size) = file_sha256(&layer.path)?;
        let mut f = File::open(&layer.path).map_err(|source| RunError::Layer {
            path: layer.path.clone(),
            source,
        })?;
        let req = PutLayer {
            diff_id: id,
            size,
            sha256,
        };
        if !client::put_layer(&mut connect(t)?, &req, &mut f)? {
            sent += 1;
        }
    }
    Ok(sent)
}

/// The container's command from the options and the image config.
pub fn command(image: &ImageRef, argv: &[String]) -> Result<Vec<String>, RunError> {
    let mut cmd = image.config.entrypoint.clone().unwrap_or_default();
    if argv.is_empty() {
        cmd.extend(image.config.cmd.clone().unwrap_or_default());
    } else {
        cmd.extend(argv.iter().cloned());
    }
    if cmd.is_empty() {
        return Err(RunError::NoCommand(image.name.clone()));
    }
    Ok(cmd)
}

fn random_id() -> String {
    let mut b = [0u8; 6];
    if let Ok(mut f) = File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    let pid = std::process::id().to_le_bytes();
    b[0] ^= pid[0];
    b[1] ^= pid[1];
    format!(
        "c{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

/// The exit status `vmm run` returns for a container's end: its code, or
/// 128 + the signal that killed it.
pub fn exit_code(st: &ExitStatus) -> i32 {
    match (st.code, st.signal) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        (None, None) => 1,
    }
}

/// Stream a started process: stdin from ours, output to ours, SIGINT/SIGTERM/
/// SIGHUP forwarded to the process.
fn stream(p: Process) -> Result<ExitStatus, RunError> {
    let mut input = p.input()?;
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if input.write(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = input.eof();
    });
    let mut signals = p.input()?;
    forward_signals(move |sig| {
        let _ = signals.signal(sig);
    });
    let status = p.wait(&mut std::io::stdout(), &mut std::io::stderr())?;
    let _ = std::io::stdout().flush();
    Ok(status)
}

/// Forward SIGINT, SIGTERM and SIGHUP to `f` from a thread. The signals are
/// blocked in the calling thread first (and so in threads it starts later).
fn forward_signals(mut f: impl FnMut(i32) + Send + 'static) {
    // SAFETY: zeroed sigset_t is a valid starting value for sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is ours; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    std::thread::spawn(move || loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: waits for one of the blocked signals in `set`.
        if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
            f(sig);
        }
    });
}

/// `vmm run`: import the image, start the tenant (or a throw-away VM when
/// `tenant` is None), send the layers it lacks, run the container and stream
/// it. Returns the container's exit status.
pub fn run(
    image_path: &Path,
    tenant: Option<&Tenant>,
    spec: &TenantSpec,
    opts: &RunOptions,
    boot_timeout: Duration,
) -> Result<i32, RunError> {
    let store = Store::new(Store::default_dir().ok_or(RunError::NoCache)?)?;
    let image = store.import(image_path)?;
    let argv = command(&image, &opts.argv)?;

    // A throw-away tenant lives in a temporary state directory and dies with us.
    let mut temp_root = None;
    let throwaway;
    let (t, child) = match tenant {
        Some(t) => (t, t.up(spec, true, boot_timeout)?),
        None => {
            let root = std::env::temp_dir().join(format!("vmm-run-{}", std::process::id()));
            throwaway = Tenant::new(&root, "run")?;
            temp_root = Some(root);
            let child = throwaway.up(spec, false, boot_timeout)?;
            (&throwaway, child)
        }
    };
    let result = (|| {
        upload_layers(t, &image)?;
        let mut env = image.config.env.clone();
        env.extend(opts.env.iter().cloned());
        let id = opts.id.clone().unwrap_or_else(random_id);
        let req = Request::Run(RunSpec {
            id: id.clone(),
            layers: image.layers.iter().map(|l| l.diff_id.to_string()).collect(),
            argv,
            env,
            cwd: opts.workdir.clone().or(image.config.working_dir.clone()),
            user: opts.user.clone().or(image.config.user.clone()),
            hostname: None,
            limits: opts.limits.clone(),
            stdin: true,
        });
        let p = Process::start(connect(t)?, &req)?;
        let status = stream(p)?;
        if status.oom_killed {
            if status.signal == Some(libc::SIGKILL) {
                eprintln!("vmm: container {id} was killed: out of memory (its memory limit)");
            } else {
                eprintln!(
                    "vmm: a process of container {id} was killed: out of memory (its memory limit)"
                );
            }
        }
        Ok(exit_code(&status))
    })();
    if let Some(mut c) = child {
        // SAFETY: signalling our own child, still alive or a zombie.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let _ = c.wait();
        // The whole temporary state root, not only the tenant's directory in it.
        let _ = std::fs::remove_dir_all(temp_root.as_deref().unwrap_or(&t.dir));
    }
    result
}

/// `vmm exec`: run a command in a running container of a tenant.
pub fn exec(t: &Tenant, id: &str, argv: Vec<String>, env: Vec<String>) -> Result<i32, RunError> {
    if t.running_pid().is_none() {
        return Err(TenantError::NotRunning(t.name.clone()).into());
    }
    let req = Request::Exec(ExecSpec {
        id: id.into(),
        argv,
        env,
        cwd: None,
        user: None,
        stdin: true,
    });
    let p = Process::start(connect(t)?, &req).map_err(|e| TenantError::Agent(t.name.clone(), e))?;
    Ok(exit_code(&stream(p)?))
}

/// `vmm ps`: the containers of a tenant.
pub fn ps(t: &Tenant) -> Result<Vec<ContainerInfo>, RunError> {
    if t.running_pid().is_none() {
        return Err(TenantError::NotRunning(t.name.clone()).into());
    }
    match client::request(&mut connect(t)?, &Request::Ps)? {
        Response::Containers { containers } => Ok(containers),
        r => Err(client::ClientError::Unexpected(Box::new(r)).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::ImageConfig;

    fn image(entrypoint: Option<Vec<&str>>, cmd: Option<Vec<&str>>) -> ImageRef {
        let v = |x: Option<Vec<&str>>| x.map(|v| v.into_iter().map(String::from).collect());
        ImageRef {
            name: "img".into(),
            id: crate::image::Digest::from_hex(&"0".repeat(64)).unwrap(),
            layers: vec![],
            config: ImageConfig {
                entrypoint: v(entrypoint),
                cmd: v(cmd),
                ..Default::default()
            },
        }
    }

    #[test]
    fn command_from_image_and_arguments() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let img = image(None, Some(vec!["sh"]));
        assert_eq!(command(&img, &[]).unwrap(), s(&["sh"]));
        assert_eq!(
            command(&img, &s(&["echo", "hi"])).unwrap(),
            s(&["echo", "hi"])
        );
        let ep = image(Some(vec!["/entry"]), Some(vec!["--default"]));
        assert_eq!(command(&ep, &[]).unwrap(), s(&["/entry", "--default"]));
        assert_eq!(command(&ep, &s(&["x"])).unwrap(), s(&["/entry", "x"]));
        assert!(matches!(
            command(&image(None, None), &[]),
            Err(RunError::NoCommand(_))
        ));
    }

    #[test]
    fn exit_codes() {
        let st = |code, signal| ExitStatus {
            code,
            signal,
            oom_killed: false,
        };
        assert_eq!(exit_code(&st(Some(3), None)), 3);
        assert_eq!(exit_code(&st(None, Some(9))), 137);
        assert_eq!(exit_code(&st(None, None)), 1);
    }

    #[test]
    fn ids_are_valid_agent_ids() {
        let id = random_id();
        assert!(vmm_agent::protocol::validate_id(&id).is_ok(), "{id}");
        assert_ne!(random_id(), random_id());
    }
}
