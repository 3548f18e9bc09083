//! Parsing and validation of one virtio-blk request (a descriptor chain).
//!
//! The guest is untrusted. A chain is copied once into a bounded scratch
//! buffer (so the guest cannot change it between validation and use), then
//! checked as a whole before any byte of the disk or of guest memory is
//! touched: layout (header, data, status), descriptor directions, lengths and
//! guest addresses.

use std::ops::Range;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use super::SECTOR_SIZE;
use crate::virtio::queue::{check_buffer, walk, ChainError, Direction};

/// Size of the request header (`struct virtio_blk_outhdr`): type, reserved,
/// sector.
pub(super) const HEADER_LEN: u32 = 16;

/// What the driver asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RequestType {
    /// Read sectors into guest memory.
    In,
    /// Write sectors from guest memory.
    Out,
    /// Make previous writes durable.
    Flush,
    /// Return the device serial.
    GetId,
    /// Anything else: answered with VIRTIO_BLK_S_UNSUPP.
    Unsupported(u32),
}

impl RequestType {
    fn from_raw(t: u32) -> Self {
        match t {
            VIRTIO_BLK_T_IN => Self::In,
            VIRTIO_BLK_T_OUT => Self::Out,
            VIRTIO_BLK_T_FLUSH => Self::Flush,
            VIRTIO_BLK_T_GET_ID => Self::GetId,
            other => Self::Unsupported(other),
        }
    }
}

/// Why a chain was refused. Each variant says what the guest got wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum RequestError {
    /// The chain is malformed (empty, too long, truncated), or a data
    /// descriptor has the wrong direction or lies outside guest memory.
    /// Descriptor numbers count the header as 0.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The last descriptor cannot hold the status byte.
    #[error("status descriptor is not device-writable, empty or outside guest memory")]
    BadStatus,
    /// No header, a device-writable header, a short one or one outside guest memory.
    #[error("missing, device-writable, short or unreadable request header")]
    BadHeader,
    /// A data descriptor is empty.
    #[error("data descriptor {0} is empty")]
    EmptyData(usize),
    /// The data length does not suit the request: zero, or (for reads and
    /// writes) not whole sectors.
    #[error("data length {0} does not suit the request")]
    BadDataLength(u64),
}

/// A refused chain: where to report the failure, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Refused {
    /// The status byte, when the chain has a usable one.
    pub status: Option<GuestAddress>,
    /// What was wrong.
    pub error: RequestError,
}

/// A validated request. Data descriptors are `descs[data]` of the scratch
/// buffer the request was parsed with; all of them have the right direction,
/// are non-empty and lie inside guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Request {
    pub kind: RequestType,
    pub sector: u64,
    pub data: Range<usize>,
    pub data_len: u64,
    pub status: GuestAddress,
}

/// Copy the descriptors of `chain` into `descs` (cleared first), refusing
/// chains longer than `max` descriptors, empty and truncated ones. Bounded
/// work and no allocation beyond `descs`' existing capacity when it is at
/// least `max`.
fn collect<M>(
    chain: DescriptorChain<M>,
    max: u16,
    descs: &mut Vec<Descriptor>,
) -> Result<(), ChainError>
where
    M: std::ops::Deref,
    M::Target: GuestMemory,
{
    descs.clear();
    walk(chain, max, |_, &d| {
        descs.push(d);
        Ok(())
    })
}

/// Parse the chain into a request, using `descs` as scratch space. `max` is
/// the queue size, the longest chain a driver may build.
pub(super) fn parse<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    max: u16,
    descs: &mut Vec<Descriptor>,
) -> Result<Request, Refused>
where
    M: std::ops::Deref,
    M::Target: GuestMemory,
{
    let refuse_silently = |error| Refused {
        status: None,
        error,
    };
    collect(chain, max, descs).map_err(|e| refuse_silently(e.into()))?;

    // The status byte first: every later failure can then be reported.
    let Some((&status_desc, rest)) = descs.split_last() else {
        return Err(refuse_silently(ChainError::Empty.into()));
    };
    if !status_desc.is_write_only()
        || status_desc.len() == 0
        || !mem.check_range(status_desc.addr(), 1, Permissions::Write)
    {
        return Err(refuse_silently(RequestError::BadStatus));
    }
    let status = status_desc.addr();
    let refuse = |error| Refused {
        status: Some(status),
        error,
    };

    let Some((&header, data_descs)) = rest.split_first() else {
        return Err(refuse(RequestError::BadHeader));
    };
    if header.is_write_only() || header.len() < HEADER_LEN {
        return Err(refuse(RequestError::BadHeader));
    }
    let mut raw = [0u8; HEADER_LEN as usize];
    mem.read_slice(&mut raw, header.addr())
        .map_err(|_| refuse(RequestError::BadHeader))?;
    // type (le32), reserved (le32), sector (le64).
    let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = raw;
    let kind = RequestType::from_raw(u32::from_le_bytes([t0, t1, t2, t3]));
    let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);

    let data_len = match kind {
        RequestType::In | RequestType::GetId => {
            check_data(mem, data_descs, Direction::DeviceWrites)
        }
        RequestType::Out => check_data(mem, data_descs, Direction::DeviceReads),
        // Flush carries no data and unsupported requests are not looked at:
        // their data descriptors, if any, are never touched.
        RequestType::Flush | RequestType::Unsupported(_) => Ok(0),
    }
    .map_err(refuse)?;

    let whole_sectors = data_len > 0 && data_len % SECTOR_SIZE == 0;
    let length_ok = match kind {
        RequestType::In | RequestType::Out => whole_sectors,
        RequestType::GetId => data_len > 0,
        RequestType::Flush | RequestType::Unsupported(_) => true,
    };
    if !length_ok {
        return Err(refuse(RequestError::BadDataLength(data_len)));
    }

    // Data descriptors sit between the header (index 0) and the status.
    let data = match kind {
        RequestType::Flush | RequestType::Unsupported(_) => 1..1,
        _ => 1..1 + data_descs.len(),
    };
    Ok(Request {
        kind,
        sector,
        data,
        data_len,
        status,
    })
}

/// Check direction, length and placement of data descriptors; return their
/// total length.
fn check_data(
    mem: &GuestMemoryMmap,
    data: &[Descriptor],
    dir: Direction,
) -> Result<u64, RequestError> {
    let mut total = 0u64;
    for (i, d) in data.iter().enumerate() {
        // Descriptor numbers in messages count the header as 0.
        let n = i + 1;
        // Direction first, then emptiness, then placement.
        if check_buffer(mem, n, d, dir)? == 0 {
            return Err(RequestError::EmptyData(n));
        }
        // At most `max` (u16) descriptors of at most u32::MAX bytes each:
        // the sum cannot overflow a u64.
        total += u64::from(d.len());
    }
    Ok(total)
}
