//! The host<->agent protocol: frames on a byte stream, JSON control messages.
//!
//! A connection carries exactly one operation. Every frame is a 5-byte header
//! — the stream (`u8`) and the payload length (`u32`, little endian) —
//! followed by the payload, at most [`MAX_FRAME`] bytes:
//!
//! | stream | direction | payload |
//! |---|---|---|
//! | 0 [`Stream::Control`] | both | one JSON message: [`Request`], [`HostControl`] (host) or [`Response`] (agent) |
//! | 1 [`Stream::Stdin`] | host → agent | stdin of a process, or layer data; a zero-length frame is EOF |
//! | 2 [`Stream::Stdout`] | agent → host | stdout of a process |
//! | 3 [`Stream::Stderr`] | agent → host | stderr of a process |
//!
//! The host opens with one [`Request`]; the agent answers with
//! [`Response`]s as described on each request variant and closes the
//! connection after its final answer. Both sides validate everything they
//! receive: [`Request::validate`] is the agent's check and the host can run it
//! before sending.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Protocol revision, reported by [`Response::Pong`].
pub const PROTOCOL_VERSION: u32 = 1;
/// The vsock port the agent listens on by default.
pub const DEFAULT_PORT: u32 = 1024;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 5;
/// Largest payload of any frame; larger frames are rejected unread.
pub const MAX_FRAME: usize = 1 << 20;
/// Size of the data frames the agent sends and the client writes (a hint:
/// any size up to [`MAX_FRAME`] is accepted).
pub const DATA_CHUNK: usize = 64 * 1024;
/// Most layers in one container.
pub const MAX_LAYERS: usize = 64;
/// Most `argv` entries.
pub const MAX_ARGS: usize = 4096;
/// Most `env` entries.
pub const MAX_ENV: usize = 4096;
/// Longest single `argv` / `env` entry or path, in bytes.
pub const MAX_STRING: usize = 64 * 1024;
/// Largest layer image accepted by `put_layer` (64 GiB).
pub const MAX_LAYER_SIZE: u64 = 64 << 30;

/// Errors of framing, encoding and validation.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// Reading or writing the stream failed.
    #[error("connection I/O: {0}")]
    Io(#[from] io::Error),
    /// The stream ended inside a frame.
    #[error("connection closed inside a frame ({got} of {expected} bytes)")]
    Truncated {
        /// Bytes the frame part needed.
        expected: usize,
        /// Bytes that arrived.
        got: usize,
    },
    /// The stream ended where a frame was required.
    #[error("connection closed before the expected {0}")]
    Closed(&'static str),
    /// A header announced a payload over the limit.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge {
        /// The announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A header named no known stream.
    #[error("unknown stream {0} in frame header")]
    UnknownStream(u8),
    /// A data frame arrived where a control message was expected.
    #[error("expected a control frame, got a {0:?} frame")]
    NotControl(Stream),
    /// A control payload was not the expected JSON message.
    #[error("malformed control message: {0}")]
    Json(#[from] serde_json::Error),
    /// A message was well-formed but a field is not acceptable.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// Why (includes the offending value, shortened).
        reason: String,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, ProtocolError>;

/// The stream a frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Stream {
    /// JSON control messages.
    Control = 0,
    /// Host → agent data: stdin of a process, or a layer's bytes.
    Stdin = 1,
    /// Agent → host: stdout.
    Stdout = 2,
    /// Agent → host: stderr.
    Stderr = 3,
}

impl Stream {
    /// The stream of a header byte.
    pub fn from_u8(b: u8) -> Result<Self> {
        match b {
            0 => Ok(Self::Control),
            1 => Ok(Self::Stdin),
            2 => Ok(Self::Stdout),
            3 => Ok(Self::Stderr),
            other => Err(ProtocolError::UnknownStream(other)),
        }
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Its stream.
    pub stream: Stream,
    /// Its payload (at most [`MAX_FRAME`] bytes).
    pub payload: Vec<u8>,
}

/// Writes one frame (header and payload). Payloads over [`MAX_FRAME`] are
/// refused before anything is written.
pub fn write_frame<W: Write + ?Sized>(w: &mut W, stream: Stream, payload: &[u8]) -> Result<()> {
    if payload.len() > MAX_FRAME {
        return Err(ProtocolError::FrameTooLarge {
            len: payload.len() as u64,
            max: MAX_FRAME,
        });
    }
    let len = u32::try_from(payload.len()).map_err(|_| ProtocolError::FrameTooLarge {
        len: payload.len() as u64,
        max: MAX_FRAME,
    })?;
    let mut buf = Vec::with_capacity(HEADER_LEN + payload.len());
    buf.push(stream as u8);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Writes `data` as frames of at most [`DATA_CHUNK`] bytes (nothing for an
/// empty slice: use [`write_eof`] to send EOF).
pub fn write_data<W: Write + ?Sized>(w: &mut W, stream: Stream, data: &[u8]) -> Result<()> {
    for chunk in data.chunks(DATA_CHUNK) {
        write_frame(w, stream, chunk)?;
    }
    Ok(())
}

/// Writes the zero-length frame that ends a host → agent data stream.
pub fn write_eof<W: Write + ?Sized>(w: &mut W) -> Result<()> {
    write_frame(w, Stream::Stdin, &[])
}

/// Reads until `buf` is full; returns how many bytes arrived before EOF.
fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(got)
}

/// Reads one frame. `Ok(None)` is a clean end of the stream (EOF before any
/// header byte); EOF inside a frame is [`ProtocolError::Truncated`]. A header
/// announcing more than [`MAX_FRAME`] bytes or an unknown stream is refused
/// before the payload is read (the connection is then unusable).
pub fn read_frame<R: Read + ?Sized>(r: &mut R) -> Result<Option<Frame>> {
    let mut header = [0u8; HEADER_LEN];
    let got = read_full(r, &mut header)?;
    if got == 0 {
        return Ok(None);
    }
    if got < HEADER_LEN {
        return Err(ProtocolError::Truncated {
            expected: HEADER_LEN,
            got,
        });
    }
    let stream = Stream::from_u8(header[0])?;
    let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]);
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= MAX_FRAME)
        .ok_or(ProtocolError::FrameTooLarge {
            len: u64::from(len),
            max: MAX_FRAME,
        })?;
    let mut payload = vec![0u8; len];
    let got = read_full(r, &mut payload)?;
    if got < len {
        return Err(ProtocolError::Truncated { expected: len, got });
    }
    Ok(Some(Frame { stream, payload }))
}

/// Writes one control message.
pub fn write_message<W: Write + ?Sized, T: Serialize>(w: &mut W, msg: &T) -> Result<()> {
    let json = serde_json::to_vec(msg)?;
    write_frame(w, Stream::Control, &json)
}

/// Decodes a control frame's payload.
pub fn decode_message<T: DeserializeOwned>(frame: &Frame) -> Result<T> {
    if frame.stream != Stream::Control {
        return Err(ProtocolError::NotControl(frame.stream));
    }
    Ok(serde_json::from_slice(&frame.payload)?)
}

/// Reads one frame that must be a control message of type `T`. `what` names
/// the message for the error when the stream ends instead.
pub fn read_message<R: Read + ?Sized, T: DeserializeOwned>(
    r: &mut R,
    what: &'static str,
) -> Result<T> {
    let frame = read_frame(r)?.ok_or(ProtocolError::Closed(what))?;
    decode_message(&frame)
}

/// The first message of every connection (host → agent), tagged by `"op"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Liveness and identity. Answer: [`Response::Pong`].
    Ping,
    /// The layers the agent holds. Answer: [`Response::Layers`].
    Layers,
    /// Store a layer image. Answer: [`Response::LayerStored`] with
    /// `already_present: true` at once when the agent has it (send no data);
    /// otherwise [`Response::SendData`], after which the host sends exactly
    /// `size` bytes as [`Stream::Stdin`] frames and one empty frame (EOF), and
    /// the agent answers [`Response::LayerStored`] once the file is verified
    /// and mounted, or [`Response::Error`].
    PutLayer(PutLayer),
    /// Start a container. Answers: [`Response::Started`], then
    /// [`Stream::Stdout`]/[`Stream::Stderr`] frames, then one of
    /// [`Response::Exited`] or [`Response::Error`]. Meanwhile the host may
    /// send [`Stream::Stdin`] frames (empty = EOF) and [`HostControl`]
    /// messages.
    Run(RunSpec),
    /// Start a process in a running container; answers as for `Run`.
    Exec(ExecSpec),
    /// List containers. Answer: [`Response::Containers`].
    Ps,
}

/// Host → agent control messages while a process runs (`"op"`-tagged).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum HostControl {
    /// Send signal `signal` (1..=64) to the process.
    Signal {
        /// The signal number.
        signal: i32,
    },
}

/// `put_layer`'s arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutLayer {
    /// The layer's diff-id, `sha256:<64 lowercase hex>` (the file's name).
    pub diff_id: String,
    /// The ext4 image's size in bytes.
    pub size: u64,
    /// The ext4 image's own digest, `sha256:<64 lowercase hex>`.
    pub sha256: String,
}

/// Resource limits of a container (each optional: absent = unlimited).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// memory.max in bytes (swap is disabled for the container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// CPU bandwidth in cores (0.01 ..= 1024), e.g. 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// Most tasks (processes and threads) in the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

fn yes() -> bool {
    true
}

/// `run`'s arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// Container id: `[a-zA-Z0-9_.-]{1,64}`, not `.` or `..`; unique among
    /// running containers (an exited container's id may be reused).
    pub id: String,
    /// Layer diff-ids, bottom to top; each must have been stored with
    /// `put_layer`. At least one.
    pub layers: Vec<String>,
    /// The command; `argv[0]` without a `/` is looked up in the `PATH` of
    /// `env`.
    pub argv: Vec<String>,
    /// `KEY=VALUE` entries; `PATH` defaults to
    /// `/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`,
    /// `HOME` to the user's home in the container's `/etc/passwd` (or `/`).
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory (absolute); default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// `user`, `user:group`, `uid` or `uid:gid`; names are looked up in the
    /// container's `/etc/passwd` and `/etc/group`. Default `0:0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The container's hostname; default: the id (at most 64 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Resource limits.
    #[serde(default)]
    pub limits: Limits,
    /// Whether the process gets stdin from the host (default true); when
    /// false its stdin is `/dev/null` and stdin frames are discarded.
    #[serde(default = "yes")]
    pub stdin: bool,
}

/// `exec`'s arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecSpec {
    /// The running container.
    pub id: String,
    /// As in [`RunSpec::argv`].
    pub argv: Vec<String>,
    /// As in [`RunSpec::env`] (the container's run env is not inherited).
    #[serde(default)]
    pub env: Vec<String>,
    /// As in [`RunSpec::cwd`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// As in [`RunSpec::user`]; default: the container's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// As in [`RunSpec::stdin`].
    #[serde(default = "yes")]
    pub stdin: bool,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// The signal that killed it, when killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Whether the container's memory cgroup OOM-killed a process of it
    /// during this process's life (for `exec`: any process of the container).
    #[serde(default)]
    pub oom_killed: bool,
}

/// State of a container in [`Response::Containers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    /// Being set up.
    Starting,
    /// Its init process runs.
    Running,
    /// Its init process ended (or it failed to start).
    Exited,
}

/// One container in [`Response::Containers`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    /// Its id.
    pub id: String,
    /// Its init's pid in the agent's pid namespace (0 before it started).
    pub pid: i32,
    /// Its command.
    pub argv: Vec<String>,
    /// Its state.
    pub state: ContainerState,
    /// How it ended, once exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitStatus>,
    /// Why it failed to start, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Agent → host control messages, tagged by `"type"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// Answer to `ping`.
    Pong {
        /// The agent's version (its crate version).
        version: String,
        /// [`PROTOCOL_VERSION`].
        protocol: u32,
        /// The guest kernel's release (`uname -r`).
        kernel: String,
    },
    /// Answer to `layers`: diff-ids, sorted.
    Layers {
        /// `sha256:<hex>` each.
        layers: Vec<String>,
    },
    /// `put_layer`: send the data now.
    SendData,
    /// `put_layer`: the layer is stored, verified and mounted.
    LayerStored {
        /// Its diff-id.
        diff_id: String,
        /// Its size in bytes.
        size: u64,
        /// True when the agent had it already (no data was read).
        already_present: bool,
    },
    /// `run`/`exec`: the process started.
    Started {
        /// Its pid in the agent's pid namespace.
        pid: i32,
    },
    /// `run`/`exec`: the process ended; the last message.
    Exited(ExitStatus),
    /// Answer to `ps`.
    Containers {
        /// Running ones and the most recent exited ones, by id.
        containers: Vec<ContainerInfo>,
    },
    /// The operation failed; the last message.
    Error {
        /// What failed: the step, the path or value, the errno.
        message: String,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ProtocolError {
    ProtocolError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// A string shortened for error messages (at most 80 chars, escaped).
pub fn shorten(s: &str) -> String {
    let mut out: String = s.chars().take(80).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    format!("{out:?}")
}

/// Checks a container id: `[a-zA-Z0-9_.-]{1,64}`, not `.` or `..`.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
        && id != "."
        && id != "..";
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "id",
            format!("{} is not [a-zA-Z0-9_.-]{{1,64}}", shorten(id)),
        ))
    }
}

/// Checks a digest `sha256:<64 lowercase hex>` and returns the hex part.
pub fn digest_hex<'a>(field: &'static str, digest: &'a str) -> Result<&'a str> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .ok_or_else(|| {
            invalid(
                field,
                format!("{} is not sha256:<64 lowercase hex>", shorten(digest)),
            )
        })
}

fn check_string(field: &'static str, s: &str) -> Result<()> {
    if s.len() > MAX_STRING {
        return Err(invalid(
            field,
            format!("{} bytes exceeds {MAX_STRING}", s.len()),
        ));
    }
    if s.contains('\0') {
        return Err(invalid(
            field,
            format!("{} contains a NUL byte", shorten(s)),
        ));
    }
    Ok(())
}

fn check_argv(argv: &[String]) -> Result<()> {
    if argv.is_empty() || argv[0].is_empty() {
        return Err(invalid("argv", "empty command"));
    }
    if argv.len() > MAX_ARGS {
        return Err(invalid(
            "argv",
            format!("{} entries exceeds {MAX_ARGS}", argv.len()),
        ));
    }
    argv.iter().try_for_each(|a| check_string("argv", a))
}

fn check_env(env: &[String]) -> Result<()> {
    if env.len() > MAX_ENV {
        return Err(invalid(
            "env",
            format!("{} entries exceeds {MAX_ENV}", env.len()),
        ));
    }
    for e in env {
        check_string("env", e)?;
        match e.split_once('=') {
            Some((k, _)) if !k.is_empty() => {}
            _ => return Err(invalid("env", format!("{} is not KEY=VALUE", shorten(e)))),
        }
    }
    Ok(())
}

fn check_cwd(cwd: Option<&str>) -> Result<()> {
    if let Some(c) = cwd {
        check_string("cwd", c)?;
        if !c.starts_with('/') {
            return Err(invalid("cwd", format!("{} is not absolute", shorten(c))));
        }
    }
    Ok(())
}

fn check_user(user: Option<&str>) -> Result<()> {
    if let Some(u) = user {
        let ok = !u.is_empty()
            && u.len() <= 256
            && u.split(':').count() <= 2
            && u.split(':').all(|p| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            });
        if !ok {
            return Err(invalid(
                "user",
                format!("{} is not user[:group] or uid[:gid]", shorten(u)),
            ));
        }
    }
    Ok(())
}

/// Checks a hostname: 1..=64 bytes of `[a-zA-Z0-9.-]`.
pub fn validate_hostname(h: &str) -> Result<()> {
    let ok = (1..=64).contains(&h.len())
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "hostname",
            format!("{} is not 1-64 of [a-zA-Z0-9.-]", shorten(h)),
        ))
    }
}

impl Limits {
    /// Checks the ranges: memory >= 1 MiB, cpu 0.01..=1024, pids >= 1.
    pub fn validate(&self) -> Result<()> {
        if let Some(m) = self.memory_bytes {
            if m < (1 << 20) {
                return Err(invalid(
                    "limits.memory_bytes",
                    format!("{m} is under 1 MiB"),
                ));
            }
        }
        if let Some(c) = self.cpu {
            if !(0.01..=1024.0).contains(&c) {
                return Err(invalid("limits.cpu", format!("{c} is not in 0.01..=1024")));
            }
        }
        if self.pids == Some(0) {
            return Err(invalid("limits.pids", "0 tasks"));
        }
        Ok(())
    }
}

impl RunSpec {
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        validate_id(&self.id)?;
        if self.layers.is_empty() || self.layers.len() > MAX_LAYERS {
            return Err(invalid(
                "layers",
                format!("{} layers (1..={MAX_LAYERS} allowed)", self.layers.len()),
            ));
        }
        for (i, l) in self.layers.iter().enumerate() {
            digest_hex("layers", l)?;
            if self.layers[..i].contains(l) {
                return Err(invalid("layers", format!("{} appears twice", shorten(l))));
            }
        }
        check_argv(&self.argv)?;
        check_env(&self.env)?;
        check_cwd(self.cwd.as_deref())?;
        check_user(self.user.as_deref())?;
        if let Some(h) = &self.hostname {
            validate_hostname(h)?;
        }
        self.limits.validate()
    }
}

impl ExecSpec {
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        validate_id(&self.id)?;
        check_argv(&self.argv)?;
        check_env(&self.env)?;
        check_cwd(self.cwd.as_deref())?;
        check_user(self.user.as_deref())
    }
}

impl PutLayer {
    /// Checks the digests and the size bound.
    pub fn validate(&self) -> Result<()> {
        digest_hex("diff_id", &self.diff_id)?;
        digest_hex("sha256", &self.sha256)?;
        if self.size == 0 || self.size > MAX_LAYER_SIZE {
            return Err(invalid(
                "size",
                format!("{} bytes (1..={MAX_LAYER_SIZE} allowed)", self.size),
            ));
        }
        Ok(())
    }
}

impl Request {
    /// Checks the request's arguments (the agent does; hosts may too).
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::Ping | Self::Layers | Self::Ps => Ok(()),
            Self::PutLayer(p) => p.validate(),
            Self::Run(r) => r.validate(),
            Self::Exec(e) => e.validate(),
        }
    }
}

impl HostControl {
    /// Checks the signal number (1..=64).
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::Signal { signal } if (1..=64).contains(signal) => Ok(()),
            Self::Signal { signal } => Err(invalid("signal", format!("{signal} is not 1..=64"))),
        }
    }
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
