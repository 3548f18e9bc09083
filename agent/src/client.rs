//! Host side: connecting to the agent through vmm's vsock Unix socket
//! (docs/vsock.md's `CONNECT` handshake) and running its operations.
//!
//! ```no_run
//! use vmm_agent::client::{self, Process};
//! use vmm_agent::protocol::{Request, RunSpec};
//! # fn spec() -> RunSpec { unimplemented!() }
//! let s = client::connect_vsock("/run/vm.sock".as_ref(), 1024, std::time::Duration::from_secs(5))?;
//! let mut p = Process::start(s, &Request::Run(spec()))?;
//! p.input()?.eof()?;
//! let status = p.wait(&mut std::io::stdout(), &mut std::io::stderr())?;
//! # Ok::<(), client::ClientError>(())
//! ```

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::protocol::{
    decode_message, read_frame, read_message, write_eof, write_frame, write_message, ExitStatus,
    HostControl, ProtocolError, PutLayer, Request, Response, Stream, DATA_CHUNK,
};

/// Errors of the host side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting or the handshake's I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// vmm refused the `CONNECT` (its `ERR ...` line).
    #[error("vsock CONNECT refused: {0}")]
    Refused(String),
    /// Framing or encoding.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The agent answered `error`.
    #[error("agent: {0}")]
    Agent(String),
    /// The agent answered something the operation does not expect.
    #[error("unexpected answer from the agent: {0:?}")]
    Unexpected(Box<Response>),
}

type Result<T> = std::result::Result<T, ClientError>;

fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> ClientError {
    let context = context.into();
    move |source| ClientError::Io { context, source }
}

/// Connects to guest vsock `port` through vmm's Unix socket `socket`
/// (`CONNECT <port>\n`, `OK <n>\n`); the handshake is bounded by `timeout`.
pub fn connect_vsock(socket: &Path, port: u32, timeout: Duration) -> Result<UnixStream> {
    let mut s =
        UnixStream::connect(socket).map_err(io_ctx(format!("connect {}", socket.display())))?;
    s.set_read_timeout(Some(timeout))
        .map_err(io_ctx("set a read timeout"))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(io_ctx("send CONNECT"))?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 64 {
        let n = s.read(&mut b).map_err(io_ctx("read the CONNECT answer"))?;
        if n == 0 || b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    if !line.starts_with("OK ") {
        return Err(ClientError::Refused(line));
    }
    s.set_read_timeout(None)
        .map_err(io_ctx("clear the read timeout"))?;
    Ok(s)
}

/// Connects to an agent listening on a Unix socket itself (`--listen unix:`).
pub fn connect_unix(path: &Path) -> Result<UnixStream> {
    UnixStream::connect(path).map_err(io_ctx(format!("connect {}", path.display())))
}

fn answer<S: Read + ?Sized>(s: &mut S) -> Result<Response> {
    match read_message(s, "answer")? {
        Response::Error { message } => Err(ClientError::Agent(message)),
        r => Ok(r),
    }
}

/// Sends a one-answer request (`ping`, `layers`, `ps`) and returns the
/// answer (`error` becomes [`ClientError::Agent`]).
pub fn request<S: Read + Write + ?Sized>(s: &mut S, req: &Request) -> Result<Response> {
    write_message(s, req)?;
    answer(s)
}

/// Uploads a layer image: `size` bytes from `data`. Returns whether the
/// agent had it already.
pub fn put_layer<S: Read + Write + ?Sized>(
    s: &mut S,
    req: &PutLayer,
    data: &mut dyn Read,
) -> Result<bool> {
    write_message(s, &Request::PutLayer(req.clone()))?;
    match answer(s)? {
        Response::LayerStored {
            already_present, ..
        } => return Ok(already_present),
        Response::SendData => {}
        r => return Err(ClientError::Unexpected(Box::new(r))),
    }
    let mut buf = vec![0u8; DATA_CHUNK];
    let mut left = req.size;
    while left > 0 {
        let want = usize::try_from(left.min(DATA_CHUNK as u64)).unwrap_or(DATA_CHUNK);
        let n = data
            .read(&mut buf[..want])
            .map_err(io_ctx("read the layer"))?;
        if n == 0 {
            return Err(ClientError::Io {
                context: "read the layer".into(),
                source: io::Error::new(io::ErrorKind::UnexpectedEof, "shorter than its size"),
            });
        }
        write_frame(s, Stream::Stdin, &buf[..n])?;
        left -= n as u64;
    }
    write_eof(s)?;
    match answer(s)? {
        Response::LayerStored { .. } => Ok(false),
        r => Err(ClientError::Unexpected(Box::new(r))),
    }
}

/// A process started by `run` or `exec`.
#[derive(Debug)]
pub struct Process {
    stream: UnixStream,
    pid: i32,
}

/// The host → agent half of a [`Process`]: stdin and signals.
#[derive(Debug)]
pub struct Input(UnixStream);

impl Input {
    /// Sends stdin data.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        Ok(crate::protocol::write_data(
            &mut self.0,
            Stream::Stdin,
            data,
        )?)
    }

    /// Ends stdin.
    pub fn eof(&mut self) -> Result<()> {
        Ok(write_eof(&mut self.0)?)
    }

    /// Sends a signal.
    pub fn signal(&mut self, signal: i32) -> Result<()> {
        Ok(write_message(&mut self.0, &HostControl::Signal { signal })?)
    }
}

impl Process {
    /// Sends a `run` or `exec` request and waits for `started`.
    pub fn start(mut stream: UnixStream, req: &Request) -> Result<Self> {
        write_message(&mut stream, req)?;
        match answer(&mut stream)? {
            Response::Started { pid } => Ok(Self { stream, pid }),
            r => Err(ClientError::Unexpected(Box::new(r))),
        }
    }

    /// The process's pid in the guest.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// A handle for stdin and signals (usable from another thread).
    pub fn input(&self) -> Result<Input> {
        self.stream
            .try_clone()
            .map(Input)
            .map_err(io_ctx("clone the connection"))
    }

    /// Copies stdout and stderr until the process ends; returns how.
    pub fn wait(mut self, stdout: &mut dyn Write, stderr: &mut dyn Write) -> Result<ExitStatus> {
        loop {
            let frame =
                read_frame(&mut self.stream)?.ok_or(ProtocolError::Closed("exit status"))?;
            match frame.stream {
                Stream::Stdout => stdout
                    .write_all(&frame.payload)
                    .map_err(io_ctx("write stdout"))?,
                Stream::Stderr => stderr
                    .write_all(&frame.payload)
                    .map_err(io_ctx("write stderr"))?,
                Stream::Control => match decode_message::<Response>(&frame)? {
                    Response::Exited(st) => return Ok(st),
                    Response::Error { message } => return Err(ClientError::Agent(message)),
                    r => return Err(ClientError::Unexpected(Box::new(r))),
                },
                Stream::Stdin => {}
            }
        }
    }
}

/// Output of [`run_collect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The guest pid.
    pub pid: i32,
    /// All of stdout.
    pub stdout: Vec<u8>,
    /// All of stderr.
    pub stderr: Vec<u8>,
    /// How it ended.
    pub status: ExitStatus,
}

/// Runs `req` (`run` or `exec`) with `stdin` as its whole input and
/// collects its output.
pub fn run_collect(stream: UnixStream, req: &Request, stdin: &[u8]) -> Result<Output> {
    let p = Process::start(stream, req)?;
    let pid = p.pid();
    let mut input = p.input()?;
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write(&data).and_then(|()| input.eof());
    });
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let status = p.wait(&mut stdout, &mut stderr);
    let _ = feeder.join();
    Ok(Output {
        pid,
        stdout,
        stderr,
        status: status?,
    })
}
