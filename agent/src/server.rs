//! The agent's server: the listener (vsock, or a Unix socket for tests),
//! one thread per connection (bounded), and the dispatch of requests.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::cgroup::{CgroupError, Hierarchy};
use crate::container::Containers;
use crate::layers::{LayerError, LayerStore};
use crate::protocol::{
    read_frame, read_message, write_message, ProtocolError, Request, Response, Stream,
    PROTOCOL_VERSION,
};
use crate::stream::pump;
use crate::sys;

/// How long a connection may stay silent while a request or layer data is
/// expected.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors that stop the agent from serving.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listening socket could not be set up.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The state directory or layer store could not be set up.
    #[error("layer store: {0}")]
    Layers(#[from] LayerError),
    /// The cgroup hierarchy could not be set up.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// Another set-up step failed.
    #[error("{step}: {source}")]
    Setup {
        /// The step.
        step: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Where the agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// AF_VSOCK, any CID, this port.
    Vsock(u32),
    /// A Unix socket at this path (tests, hosts without vsock).
    Unix(PathBuf),
}

/// The agent's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: Listen,
    /// State directory on the scratch disk.
    pub state_dir: PathBuf,
    /// Name of the agent's parent cgroup.
    pub cgroup_name: String,
    /// Most connections served at once.
    pub max_connections: usize,
}

/// A connection (vsock or Unix stream socket).
#[derive(Debug)]
pub struct Conn(File);

impl Conn {
    /// Wraps a connected socket.
    pub fn new(fd: OwnedFd) -> Self {
        Self(File::from(fd))
    }

    /// A second handle on the same connection.
    pub fn try_clone(&self) -> io::Result<Self> {
        self.0.try_clone().map(Self)
    }

    /// The descriptor.
    pub fn raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// shutdown(SHUT_RD): wakes a blocked reader with EOF.
    pub fn shutdown_read(&self) {
        sys::shutdown_read(self.raw_fd());
    }

    /// SO_RCVTIMEO (None: block forever).
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        sys::set_read_timeout(self.raw_fd(), t)
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Listener {
    Vsock(OwnedFd),
    Unix(UnixListener),
}

impl Listener {
    fn bind(listen: &Listen) -> Result<Self, ServerError> {
        match listen {
            Listen::Unix(p) => {
                let _ = std::fs::remove_file(p);
                UnixListener::bind(p)
                    .map(Self::Unix)
                    .map_err(|source| ServerError::Listen {
                        addr: format!("unix:{}", p.display()),
                        source,
                    })
            }
            Listen::Vsock(port) => {
                sys::vsock_listen(*port)
                    .map(Self::Vsock)
                    .map_err(|source| ServerError::Listen {
                        addr: format!("vsock:{port}"),
                        source,
                    })
            }
        }
    }

    fn accept(&self) -> io::Result<Conn> {
        match self {
            Self::Unix(l) => l.accept().map(|(s, _)| Conn::new(OwnedFd::from(s))),
            Self::Vsock(fd) => sys::accept(fd).map(Conn::new),
        }
    }
}

/// The agent's state shared by the connections.
pub struct Agent {
    layers: LayerStore,
    containers: Containers,
}

impl Agent {
    /// Opens the state directory and the cgroup hierarchy.
    pub fn open(config: &Config) -> Result<Self, ServerError> {
        let (layers, failures) = LayerStore::open(&config.state_dir)?;
        for f in failures {
            eprintln!("vmm-agent: warning: layer not mounted: {f}");
        }
        let hierarchy = Hierarchy::detect(&config.cgroup_name)?;
        hierarchy.clear()?;
        for w in hierarchy.setup()? {
            eprintln!("vmm-agent: warning: {w}");
        }
        let exe = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/proc/self/exe")
            .map_err(|source| ServerError::Setup {
                step: "open /proc/self/exe",
                source,
            })?;
        let containers = Containers::new(&config.state_dir, hierarchy, OwnedFd::from(exe))
            .map_err(|source| ServerError::Setup {
                step: "containers directory",
                source,
            })?;
        Ok(Self { layers, containers })
    }
}

/// Binds, prints `VMM-AGENT-READY`, and serves until the process ends.
pub fn serve(config: &Config) -> Result<(), ServerError> {
    let agent = Arc::new(Agent::open(config)?);
    let listener = Listener::bind(&config.listen)?;
    println!("VMM-AGENT-READY");
    let _ = io::stdout().flush();
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let mut conn = match listener.accept() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("vmm-agent: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= config.max_connections {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
            let _ = reply_error(
                &mut conn,
                &format!("too many connections (limit {})", config.max_connections),
            );
            continue;
        }
        let (agent, active) = (agent.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("vmm-agent-conn".into())
            .spawn(move || {
                handle(&agent, conn);
                active.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            eprintln!("vmm-agent: spawn a connection thread: {e}");
        }
    }
}

fn reply_error(conn: &mut Conn, message: &str) -> Result<(), ProtocolError> {
    write_message(
        conn,
        &Response::Error {
            message: message.to_string(),
        },
    )
}

/// Serves one connection: one request, its answers.
pub fn handle(agent: &Agent, mut conn: Conn) {
    let _ = conn.set_read_timeout(Some(IDLE_TIMEOUT));
    let req: Request = match read_message(&mut conn, "request") {
        Ok(r) => r,
        Err(e) => {
            let _ = reply_error(&mut conn, &format!("bad request: {e}"));
            return;
        }
    };
    if let Err(e) = req.validate() {
        let _ = reply_error(&mut conn, &format!("bad request: {e}"));
        return;
    }
    let answer = match req {
        Request::Ping => Response::Pong {
            version: env!("CARGO_PKG_VERSION").into(),
            protocol: PROTOCOL_VERSION,
            kernel: sys::kernel_release(),
        },
        Request::Layers => match agent.layers.list() {
            Ok(layers) => Response::Layers { layers },
            Err(e) => Response::Error {
                message: format!("layers: {e}"),
            },
        },
        Request::Ps => Response::Containers {
            containers: agent.containers.list(),
        },
        Request::PutLayer(p) => put_layer(agent, &mut conn, &p),
        Request::Run(spec) => {
            let _ = conn.set_read_timeout(None);
            match agent.containers.start_run(&spec, &agent.layers) {
                Err(e) => Response::Error {
                    message: e.to_string(),
                },
                Ok(mut started) => {
                    let _ = write_message(&mut conn, &Response::Started { pid: started.pid });
                    let status = pump(&conn, &mut started);
                    Response::Exited(agent.containers.finish_run(&spec.id, &started, status))
                }
            }
        }
        Request::Exec(spec) => {
            let _ = conn.set_read_timeout(None);
            match agent.containers.start_exec(&spec) {
                Err(e) => Response::Error {
                    message: e.to_string(),
                },
                Ok(mut started) => {
                    let _ = write_message(&mut conn, &Response::Started { pid: started.pid });
                    let status = pump(&conn, &mut started);
                    Response::Exited(crate::container::exit_status(&started, status))
                }
            }
        }
    };
    let _ = write_message(&mut conn, &answer);
}

fn put_layer(agent: &Agent, conn: &mut Conn, req: &crate::protocol::PutLayer) -> Response {
    let fail = |e: &dyn std::fmt::Display| Response::Error {
        message: format!("put_layer {}: {e}", req.diff_id),
    };
    let mut upload = match agent.layers.begin(req) {
        Ok(None) => {
            return Response::LayerStored {
                diff_id: req.diff_id.clone(),
                size: req.size,
                already_present: true,
            }
        }
        Ok(Some(u)) => u,
        Err(e) => return fail(&e),
    };
    if let Err(e) = write_message(conn, &Response::SendData) {
        return fail(&e);
    }
    loop {
        match read_frame(conn) {
            Ok(Some(f)) if f.stream == Stream::Stdin && f.payload.is_empty() => break,
            Ok(Some(f)) if f.stream == Stream::Stdin => {
                if let Err(e) = upload.write(&f.payload) {
                    return fail(&e);
                }
            }
            Ok(Some(f)) => {
                return fail(&format!(
                    "unexpected {:?} frame during the upload",
                    f.stream
                ))
            }
            Ok(None) => return fail(&"connection closed before the data's EOF frame"),
            Err(e) => return fail(&e),
        }
    }
    match upload.finish(&agent.layers) {
        Ok(size) => Response::LayerStored {
            diff_id: req.diff_id.clone(),
            size,
            already_present: false,
        },
        Err(e) => fail(&e),
    }
}
