//! The virtio-vsock packet header (`struct virtio_vsock_hdr`, virtio 1.x
//! "Socket Device") and the checks every header from the guest passes.
//!
//! All fields are little endian; the header is 44 bytes, packed:
//!
//! | offset | field       | type  |
//! |-------:|-------------|-------|
//! | 0      | `src_cid`   | le64  |
//! | 8      | `dst_cid`   | le64  |
//! | 16     | `src_port`  | le32  |
//! | 20     | `dst_port`  | le32  |
//! | 24     | `len`       | le32  |
//! | 28     | `type`      | le16  |
//! | 30     | `op`        | le16  |
//! | 32     | `flags`     | le32  |
//! | 36     | `buf_alloc` | le32  |
//! | 40     | `fwd_cnt`   | le32  |

/// Length of `struct virtio_vsock_hdr`.
pub(super) const HDR_LEN: usize = 44;
/// Longest payload of one packet in either direction (the largest a Linux
/// driver sends, `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// The CID of the host: the only destination the guest can reach here.
pub const HOST_CID: u64 = 2;
/// `VIRTIO_VSOCK_TYPE_STREAM`, the only socket type offered.
pub(super) const TYPE_STREAM: u16 = 1;
/// SHUTDOWN flag: the sender will receive no more data.
pub(super) const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub(super) const SHUTDOWN_SEND: u32 = 2;
/// Both SHUTDOWN flags.
pub(super) const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// The operations of a stream socket (`VIRTIO_VSOCK_OP_*`); 0 (INVALID) and
/// anything above 7 are not operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    /// Open a connection.
    Request,
    /// Accept a connection.
    Response,
    /// Refuse or abort a connection.
    Rst,
    /// Stop sending and/or receiving (flags say which).
    Shutdown,
    /// Payload bytes.
    Rw,
    /// The sender's `buf_alloc` and `fwd_cnt` changed.
    CreditUpdate,
    /// Ask the peer for a CREDIT_UPDATE.
    CreditRequest,
}

impl Op {
    /// The operation with wire value `v`, if there is one.
    pub(super) fn from_raw(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::Request,
            2 => Self::Response,
            3 => Self::Rst,
            4 => Self::Shutdown,
            5 => Self::Rw,
            6 => Self::CreditUpdate,
            7 => Self::CreditRequest,
            _ => return None,
        })
    }

    /// The wire value.
    pub(super) fn raw(self) -> u16 {
        match self {
            Self::Request => 1,
            Self::Response => 2,
            Self::Rst => 3,
            Self::Shutdown => 4,
            Self::Rw => 5,
            Self::CreditUpdate => 6,
            Self::CreditRequest => 7,
        }
    }
}

/// A decoded `virtio_vsock_hdr`. Values are as on the wire, unchecked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

fn le16(b: &[u8; HDR_LEN], at: usize) -> u16 {
    let mut v = [0u8; 2];
    v.copy_from_slice(&b[at..at + 2]);
    u16::from_le_bytes(v)
}

fn le32(b: &[u8; HDR_LEN], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn le64(b: &[u8; HDR_LEN], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

impl Header {
    /// Decode the 44 header bytes.
    pub(super) fn decode(b: &[u8; HDR_LEN]) -> Self {
        Self {
            src_cid: le64(b, 0),
            dst_cid: le64(b, 8),
            src_port: le32(b, 16),
            dst_port: le32(b, 20),
            len: le32(b, 24),
            type_: le16(b, 28),
            op: le16(b, 30),
            flags: le32(b, 32),
            buf_alloc: le32(b, 36),
            fwd_cnt: le32(b, 40),
        }
    }

    /// Encode into the 44 header bytes.
    pub(super) fn encode(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// A packet from the host (port `host_port`) to the guest `guest_cid`
    /// (port `guest_port`).
    pub(super) fn to_guest(guest_cid: u64, host_port: u32, guest_port: u32, op: Op) -> Self {
        Self {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: host_port,
            dst_port: guest_port,
            type_: TYPE_STREAM,
            op: op.raw(),
            ..Self::default()
        }
    }
}

/// What is wrong with a header from the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum PacketError {
    /// The source is not the guest's own CID (spoofing): dropped silently.
    #[error("source CID {0} is not the guest's")]
    SrcCid(u64),
    /// The destination is not the host: dropped silently.
    #[error("destination CID {0} is not the host ({HOST_CID})")]
    DstCid(u64),
    /// Not a stream packet (SEQPACKET is not offered).
    #[error("socket type {0} is not STREAM")]
    Type(u16),
    /// INVALID (0) or a value beyond CREDIT_REQUEST.
    #[error("unknown operation {0}")]
    UnknownOp(u16),
    /// Only RW carries a payload.
    #[error("{len}-byte payload on operation {op:?}")]
    UnexpectedPayload {
        /// The operation.
        op: Op,
        /// The offending length.
        len: u32,
    },
    /// Flags other than SHUTDOWN's two, or flags on another operation.
    #[error("flags {flags:#x} not valid on operation {op:?}")]
    Flags {
        /// The operation.
        op: Op,
        /// The offending flags.
        flags: u32,
    },
}

impl PacketError {
    /// Whether the packet may be answered (with RST): not when its
    /// addresses are not the guest's and the host's.
    pub(super) fn answerable(self) -> bool {
        !matches!(self, Self::SrcCid(_) | Self::DstCid(_))
    }
}

/// Check a header the guest sent from CID `guest_cid`; return its operation.
pub(super) fn check(hdr: &Header, guest_cid: u64) -> Result<Op, PacketError> {
    if hdr.src_cid != guest_cid {
        return Err(PacketError::SrcCid(hdr.src_cid));
    }
    if hdr.dst_cid != HOST_CID {
        return Err(PacketError::DstCid(hdr.dst_cid));
    }
    if hdr.type_ != TYPE_STREAM {
        return Err(PacketError::Type(hdr.type_));
    }
    let op = Op::from_raw(hdr.op).ok_or(PacketError::UnknownOp(hdr.op))?;
    if op != Op::Rw && hdr.len != 0 {
        return Err(PacketError::UnexpectedPayload { op, len: hdr.len });
    }
    let allowed = if op == Op::Shutdown { SHUTDOWN_BOTH } else { 0 };
    if hdr.flags & !allowed != 0 {
        return Err(PacketError::Flags {
            op,
            flags: hdr.flags,
        });
    }
    Ok(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 52,
            type_: TYPE_STREAM,
            op: Op::Rw.raw(),
            len: 10,
            ..Header::default()
        }
    }

    #[test]
    fn header_round_trips_little_endian() {
        let h = Header {
            src_cid: 0x0102_0304_0506_0708,
            dst_cid: 2,
            src_port: 0xaabb_ccdd,
            dst_port: 7,
            len: 0x1234,
            type_: 1,
            op: 5,
            flags: 3,
            buf_alloc: 0x0001_0000,
            fwd_cnt: 0xffff_fffe,
        };
        let b = h.encode();
        assert_eq!(b[0], 0x08);
        assert_eq!(b[7], 0x01);
        assert_eq!(&b[16..20], &[0xdd, 0xcc, 0xbb, 0xaa]);
        assert_eq!(&b[28..32], &[1, 0, 5, 0]);
        assert_eq!(Header::decode(&b), h);
        for v in 0..=u16::MAX {
            if let Some(op) = Op::from_raw(v) {
                assert_eq!(op.raw(), v);
                assert!((1..=7).contains(&v));
            } else {
                assert!(v == 0 || v > 7);
            }
        }
    }

    #[test]
    fn checks_every_field() {
        assert_eq!(check(&good(), 3), Ok(Op::Rw));
        let with = |f: &dyn Fn(&mut Header)| {
            let mut h = good();
            f(&mut h);
            check(&h, 3)
        };
        assert_eq!(with(&|h| h.src_cid = 4), Err(PacketError::SrcCid(4)));
        assert_eq!(
            with(&|h| h.src_cid = 3 | 1 << 32),
            Err(PacketError::SrcCid(3 | 1 << 32))
        );
        assert_eq!(with(&|h| h.dst_cid = 3), Err(PacketError::DstCid(3)));
        assert_eq!(with(&|h| h.type_ = 2), Err(PacketError::Type(2)));
        assert_eq!(with(&|h| h.op = 0), Err(PacketError::UnknownOp(0)));
        assert_eq!(with(&|h| h.op = 8), Err(PacketError::UnknownOp(8)));
        assert_eq!(
            with(&|h| h.op = Op::Request.raw()),
            Err(PacketError::UnexpectedPayload {
                op: Op::Request,
                len: 10
            })
        );
        assert_eq!(
            with(&|h| h.flags = 1),
            Err(PacketError::Flags {
                op: Op::Rw,
                flags: 1
            })
        );
        let shutdown = |flags| {
            with(&|h: &mut Header| {
                h.op = Op::Shutdown.raw();
                h.len = 0;
                h.flags = flags;
            })
        };
        assert_eq!(shutdown(3), Ok(Op::Shutdown));
        assert_eq!(
            shutdown(4),
            Err(PacketError::Flags {
                op: Op::Shutdown,
                flags: 4
            })
        );
        assert!(!PacketError::SrcCid(1).answerable());
        assert!(!PacketError::DstCid(1).answerable());
        assert!(PacketError::Type(2).answerable());
    }
}
