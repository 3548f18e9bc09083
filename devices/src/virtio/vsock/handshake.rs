//! The handshake of a host client: one line, `CONNECT <port>\n`.
//!
//! The line is peeked, and only once it has arrived whole is exactly the
//! line consumed: bytes the client sends after it stay in the socket and
//! reach the guest once the connection is established.

use std::io::{self, Read};
use std::os::unix::net::UnixStream;

use super::host;

/// Longest `CONNECT` line, newline included ("CONNECT 4294967294\n" is 19).
pub(super) const CONNECT_LINE_MAX: usize = 32;

/// Why a host client's handshake failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum LineError {
    /// The client closed before sending a whole line.
    #[error("closed before a whole CONNECT line")]
    Closed,
    /// No newline within `CONNECT_LINE_MAX` bytes.
    #[error("CONNECT line longer than {CONNECT_LINE_MAX} bytes")]
    TooLong,
    /// Not `CONNECT <decimal port>`.
    #[error("malformed CONNECT line {0:?}")]
    Malformed(String),
    /// The port is not a valid vsock port (0..=4294967294).
    #[error("invalid port {0:?}")]
    BadPort(String),
    /// Reading failed.
    #[error("reading the CONNECT line: {0}")]
    Io(io::Error),
}

impl LineError {
    /// The reason sent to the client in its `ERR` line.
    pub(super) fn reason(&self) -> &'static str {
        match self {
            Self::Closed | Self::Io(_) => "closed",
            Self::TooLong => "line too long",
            Self::Malformed(_) => "malformed CONNECT line",
            Self::BadPort(_) => "invalid port",
        }
    }
}

/// Parse `CONNECT <port>` (without the newline).
pub(super) fn parse_connect(line: &[u8]) -> Result<u32, LineError> {
    let text = || String::from_utf8_lossy(line).into_owned();
    let digits = line
        .strip_prefix(b"CONNECT ")
        .ok_or_else(|| LineError::Malformed(text()))?;
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(LineError::Malformed(text()));
    }
    // ASCII digits: valid UTF-8; at most 10 of them: fits a u64.
    let port = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse::<u64>().ok())
        .and_then(|p| u32::try_from(p).ok())
        // u32::MAX is VMADDR_PORT_ANY.
        .filter(|&p| p != u32::MAX)
        .ok_or_else(|| LineError::BadPort(String::from_utf8_lossy(digits).into_owned()))?;
    Ok(port)
}

/// Read a client's `CONNECT <port>\n` line if it has all arrived: peek,
/// then consume exactly the line, leaving any bytes after it for the guest.
/// `Ok(None)` while incomplete; `closing` says the client has shut down its
/// sending side, so an incomplete line stays incomplete.
pub(super) fn read_connect(stream: &UnixStream, closing: bool) -> Result<Option<u32>, LineError> {
    let mut buf = [0u8; CONNECT_LINE_MAX];
    let n = loop {
        match host::peek(stream, &mut buf) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return if closing {
                    Err(LineError::Closed)
                } else {
                    Ok(None)
                };
            }
            Err(e) => return Err(LineError::Io(e)),
        }
    };
    if n == 0 {
        return Err(LineError::Closed);
    }
    let Some(end) = buf
        .get(..n)
        .and_then(|b| b.iter().position(|&c| c == b'\n'))
    else {
        return match (n >= CONNECT_LINE_MAX, closing) {
            (true, _) => Err(LineError::TooLong),
            (false, true) => Err(LineError::Closed),
            (false, false) => Ok(None),
        };
    };
    let line = buf.get_mut(..=end).ok_or(LineError::TooLong)?;
    // The bytes were peeked: they are there to read.
    let mut reader = stream;
    reader.read_exact(line).map_err(LineError::Io)?;
    parse_connect(line.get(..end).unwrap_or_default()).map(Some)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write;

    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 0").unwrap(), 0);
        assert_eq!(parse_connect(b"CONNECT 1234").unwrap(), 1234);
        assert_eq!(parse_connect(b"CONNECT 4294967294").unwrap(), u32::MAX - 1);
        for bad in [
            &b""[..],
            b"CONNECT",
            b"CONNECT ",
            b"connect 1",
            b"CONNECT  1",
            b"CONNECT +1",
            b"CONNECT -1",
            b"CONNECT 1 ",
            b"CONNECT 1\r",
            b"CONNECT 0x10",
            b"CONNECT 12345678901",
            b"CONNECT \xff",
        ] {
            assert!(
                matches!(parse_connect(bad), Err(LineError::Malformed(_))),
                "{bad:?}"
            );
        }
        for bad in [&b"CONNECT 4294967295"[..], b"CONNECT 9999999999"] {
            assert!(
                matches!(parse_connect(bad), Err(LineError::BadPort(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn reads_exactly_the_line() {
        let (mut a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        assert!(read_connect(&b, false).unwrap().is_none());
        a.write_all(b"CONNECT 5").unwrap();
        assert!(read_connect(&b, false).unwrap().is_none());
        assert!(matches!(read_connect(&b, true), Err(LineError::Closed)));
        a.write_all(b"2\nearly data").unwrap();
        assert_eq!(read_connect(&b, false).unwrap(), Some(52));
        let mut rest = [0u8; 10];
        (&b).read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"early data");

        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&[b'A'; CONNECT_LINE_MAX]).unwrap();
        assert!(matches!(read_connect(&b, false), Err(LineError::TooLong)));
        drop(a);
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        assert!(matches!(read_connect(&b, false), Err(LineError::Closed)));
    }
}
