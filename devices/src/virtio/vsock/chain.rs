//! Descriptor chains of the two data queues, checked as a whole.
//!
//! Transmit (guest to device): every descriptor device-readable and inside
//! guest memory, at most a queue's worth of them; the header and payload are
//! copied once into a bounce buffer of `HDR_LEN + MAX_PAYLOAD` bytes, so the
//! guest cannot change them after they were checked.
//!
//! Receive (device to guest): every descriptor device-writable and inside
//! guest memory; the buffers are collected into a scratch vector allocated
//! once with room for a queue's worth, and the packet written across them.

use std::ops::Deref;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemory, GuestMemoryError, GuestMemoryMmap, Permissions,
};

use super::packet::{Header, HDR_LEN, MAX_PAYLOAD};

/// Why a chain was refused. Descriptor numbers count from 0 at the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum ChainError {
    /// No descriptor at all (head index out of range, bad indirect table).
    #[error("empty descriptor chain")]
    Empty,
    /// More descriptors than the queue has.
    #[error("descriptor chain longer than {0} descriptors")]
    TooLong(u16),
    /// The chain stops at a descriptor that still has NEXT set: an index out
    /// of range, a loop, or a bad or nested indirect table.
    #[error("descriptor chain is truncated")]
    Truncated,
    /// A descriptor the device must read is device-writable, or the reverse.
    #[error("descriptor {0} has the wrong direction")]
    WrongDirection(usize),
    /// A descriptor points outside guest memory.
    #[error("descriptor {0} is outside guest memory")]
    OutOfMemory(usize),
    /// The chain cannot hold what it must: a header (transmit), a header and
    /// one payload byte (receive).
    #[error("{0} bytes: too short for a packet")]
    TooShort(u64),
    /// The header announces more than the largest payload.
    #[error("payload length {0} above the maximum of {MAX_PAYLOAD}")]
    PayloadTooBig(u32),
    /// The header announces more payload than the chain carries.
    #[error("payload length {len} but only {avail} bytes follow the header")]
    PayloadBeyondChain {
        /// The announced length.
        len: u32,
        /// What the descriptors hold after the header.
        avail: u64,
    },
}

/// Walk `chain`, calling `f(number, descriptor)` on each of at most `max`
/// descriptors; refuse empty and truncated chains. Bounded work: the chain
/// iterator itself stops after a queue's worth of descriptors.
fn walk<M, F>(chain: DescriptorChain<M>, max: u16, mut f: F) -> Result<(), ChainError>
where
    M: Deref,
    M::Target: GuestMemory,
    F: FnMut(usize, &Descriptor) -> Result<(), ChainError>,
{
    let mut last: Option<Descriptor> = None;
    for (i, d) in chain.enumerate() {
        if i >= usize::from(max) {
            return Err(ChainError::TooLong(max));
        }
        f(i, &d)?;
        last = Some(d);
    }
    match last {
        None => Err(ChainError::Empty),
        // The iterator stops silently on a bad next index and after a
        // queue's worth of descriptors (loops): the last one then still
        // points further.
        Some(d) if d.has_next() => Err(ChainError::Truncated),
        Some(_) => Ok(()),
    }
}

/// A transmit chain whose header could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TxPacket {
    /// Header and `len` payload bytes, at `buf[HDR_LEN..HDR_LEN + len]`.
    Ok {
        /// The header, unchecked.
        hdr: Header,
        /// Payload length (`hdr.len`, at most `MAX_PAYLOAD`).
        len: usize,
    },
    /// The header was read but the rest of the chain is malformed: the
    /// connection it names (if any) is reset.
    BadPayload {
        /// The header, unchecked.
        hdr: Header,
        /// What is wrong.
        error: ChainError,
    },
}

/// Copy a transmit chain into `buf` (`HDR_LEN + MAX_PAYLOAD` bytes) and
/// check it. Descriptors beyond what `buf` holds are range-checked but not
/// copied; bytes after the announced payload are ignored.
pub(super) fn read_tx<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    max: u16,
    buf: &mut [u8],
) -> Result<TxPacket, ChainError>
where
    M: Deref,
    M::Target: GuestMemory,
{
    let mut copied = 0usize;
    let mut total = 0u64;
    let walked = walk(chain, max, |i, d| {
        if d.is_write_only() {
            return Err(ChainError::WrongDirection(i));
        }
        let len = usize::try_from(d.len()).map_err(|_| ChainError::OutOfMemory(i))?;
        let room = buf.len().saturating_sub(copied);
        let take = len.min(room);
        if take > 0 {
            let dst = buf
                .get_mut(copied..copied + take)
                .ok_or(ChainError::OutOfMemory(i))?;
            mem.read_slice(dst, d.addr())
                .map_err(|_| ChainError::OutOfMemory(i))?;
        }
        if take < len {
            let rest = d
                .addr()
                .checked_add(u64::try_from(take).map_err(|_| ChainError::OutOfMemory(i))?)
                .ok_or(ChainError::OutOfMemory(i))?;
            if !mem.check_range(rest, len - take, Permissions::Read) {
                return Err(ChainError::OutOfMemory(i));
            }
        }
        copied += take;
        total = total.saturating_add(u64::from(d.len()));
        Ok(())
    });
    let Some(raw) = buf.get(..HDR_LEN).filter(|_| copied >= HDR_LEN) else {
        return Err(walked.err().unwrap_or(ChainError::TooShort(total)));
    };
    let mut h = [0u8; HDR_LEN];
    h.copy_from_slice(raw);
    let hdr = Header::decode(&h);
    let bad = |error| Ok(TxPacket::BadPayload { hdr, error });
    if let Err(error) = walked {
        return bad(error);
    }
    let len = usize::try_from(hdr.len).unwrap_or(usize::MAX);
    if len > MAX_PAYLOAD {
        return bad(ChainError::PayloadTooBig(hdr.len));
    }
    let avail = total.saturating_sub(HDR_LEN as u64);
    if u64::from(hdr.len) > avail {
        return bad(ChainError::PayloadBeyondChain {
            len: hdr.len,
            avail,
        });
    }
    Ok(TxPacket::Ok { hdr, len })
}

/// Check a receive chain: every descriptor device-writable and inside guest
/// memory. Its non-empty buffers replace the contents of `segs` (at most
/// `max` of them: `segs` never grows beyond its initial capacity when that
/// is the queue size). Returns the chain's capacity, which is at least a
/// header and one payload byte.
pub(super) fn rx_buffers<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    max: u16,
    segs: &mut Vec<(GuestAddress, usize)>,
) -> Result<usize, ChainError>
where
    M: Deref,
    M::Target: GuestMemory,
{
    segs.clear();
    let mut cap = 0usize;
    walk(chain, max, |i, d| {
        if !d.is_write_only() {
            return Err(ChainError::WrongDirection(i));
        }
        if d.len() == 0 {
            return Ok(());
        }
        let len = usize::try_from(d.len()).map_err(|_| ChainError::OutOfMemory(i))?;
        if !mem.check_range(d.addr(), len, Permissions::Write) {
            return Err(ChainError::OutOfMemory(i));
        }
        segs.push((d.addr(), len));
        cap = cap.saturating_add(len);
        Ok(())
    })?;
    if cap <= HDR_LEN {
        return Err(ChainError::TooShort(u64::try_from(cap).unwrap_or(0)));
    }
    Ok(cap)
}

/// Write `hdr` then `payload` across `segs` (which can hold them); return
/// the number of bytes written.
pub(super) fn write_rx(
    mem: &GuestMemoryMmap,
    segs: &[(GuestAddress, usize)],
    hdr: &[u8; HDR_LEN],
    payload: &[u8],
) -> Result<u32, GuestMemoryError> {
    let mut parts = [hdr.as_slice(), payload];
    let mut written = 0usize;
    for &(addr, len) in segs {
        let mut at = addr;
        let mut room = len;
        for part in parts.iter_mut() {
            if room == 0 {
                break;
            }
            let n = part.len().min(room);
            if n == 0 {
                continue;
            }
            let (now, later) = part.split_at(n);
            mem.write_slice(now, at)?;
            *part = later;
            room -= n;
            written += n;
            at = u64::try_from(n)
                .ok()
                .and_then(|n| at.checked_add(n))
                .ok_or(GuestMemoryError::InvalidGuestAddress(at))?;
        }
        if parts.iter().all(|p| p.is_empty()) {
            break;
        }
    }
    // At most HDR_LEN + MAX_PAYLOAD bytes.
    Ok(u32::try_from(written).unwrap_or(u32::MAX))
}
