//! A running process's I/O over the connection: stdout/stderr frames out,
//! stdin frames and signals in, until the process ends.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::container::Started;
use crate::protocol::{decode_message, read_frame, write_frame, HostControl, Stream, DATA_CHUNK};
use crate::server::Conn;
use crate::sys::{self, WaitStatus};

/// How long output is still collected after the process ended, for
/// descendants that keep the pipes open (exec'd processes' children).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// Runs the I/O of `started` until it ends; returns its wait status (`None`
/// if reaping failed). When the host hangs up, the process is killed.
pub fn pump(conn: &Conn, started: &mut Started) -> Option<WaitStatus> {
    let done = Arc::new(AtomicBool::new(false));
    let reader = conn.try_clone().ok().map(|input| {
        let stdin = started.stdin.take();
        let pidfd = started.pidfd.clone();
        let done = done.clone();
        std::thread::spawn(move || host_input(input, stdin, &pidfd, &done))
    });
    if reader.is_none() {
        // No way to read the host: no stdin, no signals.
        started.stdin = None;
    }
    let status = output(conn, started);
    done.store(true, Ordering::SeqCst);
    // Wake the input thread out of its read (it ends at EOF).
    conn.shutdown_read();
    if let Some(r) = reader {
        let _ = r.join();
    }
    status
}

/// Forwards host frames: stdin data to the process, signals to it. Ends at
/// EOF or error of the connection, or when `done` is set.
fn host_input(mut conn: Conn, stdin: Option<OwnedFd>, pidfd: &OwnedFd, done: &AtomicBool) {
    let mut stdin = stdin.map(File::from);
    if let Some(f) = &stdin {
        // Writes must not block forever on a process that stopped reading.
        let _ = set_nonblocking(f);
    }
    while !done.load(Ordering::SeqCst) {
        let frame = match read_frame(&mut conn) {
            Ok(Some(f)) => f,
            // EOF, or a broken stream: no more input (stdin EOF).
            Ok(None) | Err(_) => break,
        };
        match frame.stream {
            Stream::Stdin if frame.payload.is_empty() => stdin = None,
            Stream::Stdin => {
                if let Some(f) = &mut stdin {
                    if write_all_nonblocking(f, &frame.payload, done).is_err() {
                        // The process closed its stdin: discard the rest.
                        stdin = None;
                    }
                }
            }
            Stream::Control => match decode_message::<HostControl>(&frame) {
                Ok(msg) if msg.validate().is_ok() => {
                    let HostControl::Signal { signal } = msg;
                    let _ = sys::pidfd_signal(pidfd.as_fd(), signal);
                }
                // Malformed or invalid: ignored (the host sees no effect).
                _ => {}
            },
            Stream::Stdout | Stream::Stderr => {}
        }
    }
}

fn set_nonblocking(f: &File) -> io::Result<()> {
    sys::set_nonblocking(f.as_raw_fd()).map_err(|e| e.source)
}

fn write_all_nonblocking(f: &mut File, mut data: &[u8], done: &AtomicBool) -> io::Result<()> {
    while !data.is_empty() {
        match f.write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if done.load(Ordering::SeqCst) {
                    return Err(e);
                }
                let _ = sys::poll(&[(f.as_raw_fd(), libc::POLLOUT)], 100);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends stdout/stderr until the process has ended and its pipes are
/// closed (or [`DRAIN_AFTER_EXIT`] passed), then reaps it.
fn output(conn: &Conn, started: &Started) -> Option<WaitStatus> {
    let mut writer = conn.try_clone().ok();
    let mut pipes: Vec<(File, Stream)> = Vec::new();
    for (fd, stream) in [
        (&started.stdout, Stream::Stdout),
        (&started.stderr, Stream::Stderr),
    ] {
        if let Ok(d) = fd.try_clone() {
            pipes.push((File::from(d), stream));
        }
    }
    let pidfd = started.pidfd.as_raw_fd();
    let mut exited_at: Option<Instant> = None;
    let mut buf = vec![0u8; DATA_CHUNK];
    let mut host_gone = writer.is_none();
    let kill = || {
        let _ = sys::pidfd_signal(started.pidfd.as_fd(), libc::SIGKILL);
    };
    if host_gone {
        kill();
    }
    loop {
        if let Some(t) = exited_at {
            if pipes.is_empty() || t.elapsed() >= DRAIN_AFTER_EXIT {
                break;
            }
        }
        let mut fds: Vec<(i32, i16)> = pipes
            .iter()
            .map(|(f, _)| (f.as_raw_fd(), libc::POLLIN))
            .collect();
        let n_pipes = fds.len();
        if exited_at.is_none() {
            fds.push((pidfd, libc::POLLIN));
        }
        // Hang-up detection: a host that closed the connection fully.
        if !host_gone {
            fds.push((conn.raw_fd(), 0));
        }
        let timeout = if exited_at.is_some() { 100 } else { -1 };
        let Ok(revents) = sys::poll(&fds, timeout) else {
            break;
        };
        if exited_at.is_none() && revents[n_pipes] != 0 {
            exited_at = Some(Instant::now());
        }
        if !host_gone && revents[revents.len() - 1] & (libc::POLLHUP | libc::POLLERR) != 0 {
            host_gone = true;
            kill();
        }
        let mut closed = Vec::new();
        for (i, (pipe, stream)) in pipes.iter_mut().enumerate() {
            if revents[i] == 0 {
                continue;
            }
            match pipe.read(&mut buf) {
                Ok(0) => closed.push(i),
                Ok(n) => {
                    if let (false, Some(w)) = (host_gone, writer.as_mut()) {
                        if write_frame(w, *stream, &buf[..n]).is_err() {
                            host_gone = true;
                            kill();
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => closed.push(i),
            }
        }
        for i in closed.into_iter().rev() {
            pipes.remove(i);
        }
        if host_gone {
            writer = None;
        }
    }
    sys::wait_pidfd(started.pidfd.as_fd(), false).ok().flatten()
}
