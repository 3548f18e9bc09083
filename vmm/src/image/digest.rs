//! Content digests, hashing readers and layer compression detection.

use std::fmt;
use std::io::{self, BufRead, Read};

use flate2::bufread::MultiGzDecoder;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// A `sha256:<64 lowercase hex digits>` content digest. The hex part is safe
/// to use as a file name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Digest(String);

impl Digest {
    /// Parse `sha256:<hex>`; `Err` says why it is not one.
    pub fn parse(s: &str) -> Result<Digest, String> {
        match s.split_once(':') {
            Some(("sha256", hex)) => {
                Self::from_hex(hex).ok_or_else(|| format!("malformed digest {s:?}"))
            }
            Some((alg, _)) => Err(format!("unsupported digest algorithm {alg:?} in {s:?}")),
            None => Err(format!("malformed digest {s:?}")),
        }
    }

    /// A digest from its 64 lowercase hex digits.
    pub fn from_hex(hex: &str) -> Option<Digest> {
        let ok = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| Digest(hex.to_owned()))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(to_hex(&Sha256::digest(bytes)))
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, for messages.
    pub fn short(&self) -> &str {
        self.0.get(..12).unwrap_or(&self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

fn to_hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A reader that hashes and counts what passes through it and fails once
/// more than `limit` bytes have been read.
pub struct HashReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    limit: u64,
    exceeded: bool,
}

impl<R: Read> HashReader<R> {
    /// Wrap `inner`; reading more than `limit` bytes is an error.
    pub fn new(inner: R, limit: u64) -> Self {
        HashReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
            limit,
            exceeded: false,
        }
    }

    /// Whether reading stopped because `limit` was passed.
    pub fn exceeded(&self) -> bool {
        self.exceeded
    }

    /// The inner reader.
    pub fn inner_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Read the rest of the input, then return its digest, its length and
    /// the inner reader.
    pub fn finish(mut self) -> io::Result<(Digest, u64, R)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((
            Digest(to_hex(&self.hasher.finalize())),
            self.count,
            self.inner,
        ))
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(buf.get(..n).unwrap_or_default());
        self.count = self.count.saturating_add(n as u64);
        if self.count > self.limit {
            self.exceeded = true;
            return Err(io::Error::other(format!(
                "more than {} bytes of data",
                self.limit
            )));
        }
        Ok(n)
    }
}

/// How a layer blob is compressed, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (one or more members).
    Gzip,
    /// Recognised but not supported (the name of the format).
    Unsupported(&'static str),
}

/// Look at the first bytes of `r` (without consuming them).
pub fn detect(r: &mut impl BufRead) -> io::Result<Compression> {
    let head = r.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Unsupported("zstd")
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Compression::Unsupported("xz")
    } else if head.starts_with(b"BZh") {
        Compression::Unsupported("bzip2")
    } else {
        Compression::None
    })
}

/// A decompressing reader over a [`BufRead`].
pub enum Decoder<R: BufRead> {
    /// Passes bytes through.
    Plain(R),
    /// Decompresses gzip, all members.
    Gzip(MultiGzDecoder<R>),
}

impl<R: BufRead> Decoder<R> {
    /// A decoder for `compression` (`None` for unsupported ones).
    pub fn new(r: R, compression: Compression) -> Option<Self> {
        match compression {
            Compression::None => Some(Decoder::Plain(r)),
            Compression::Gzip => Some(Decoder::Gzip(MultiGzDecoder::new(r))),
            Compression::Unsupported(_) => None,
        }
    }

    /// The compressed reader.
    pub fn get_mut(&mut self) -> &mut R {
        match self {
            Decoder::Plain(r) => r,
            Decoder::Gzip(d) => d.get_mut(),
        }
    }

    /// The compressed reader.
    pub fn into_inner(self) -> R {
        match self {
            Decoder::Plain(r) => r,
            Decoder::Gzip(d) => d.into_inner(),
        }
    }
}

impl<R: BufRead> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(d) => d.read(buf),
        }
    }
}
