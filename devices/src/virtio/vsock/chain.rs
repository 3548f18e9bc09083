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

use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryError, GuestMemoryMmap};

use super::packet::{Header, HDR_LEN, MAX_PAYLOAD};
use crate::virtio::queue::{read_chain, writable_buffers, ChainError, Copied, Overflow};

/// Why a transmit chain whose header could be read was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum TxError {
    /// The chain itself is malformed.
    #[error(transparent)]
    Chain(#[from] ChainError),
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
        error: TxError,
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
    let mut c = Copied::default();
    let walked = read_chain(chain, mem, max, buf, Overflow::Skip, &mut c);
    let Some(raw) = buf.get(..HDR_LEN).filter(|_| c.copied >= HDR_LEN) else {
        return Err(walked.err().unwrap_or(ChainError::TooShort {
            have: c.total,
            need: HDR_LEN,
        }));
    };
    let mut h = [0u8; HDR_LEN];
    h.copy_from_slice(raw);
    let hdr = Header::decode(&h);
    let bad = |error| Ok(TxPacket::BadPayload { hdr, error });
    if let Err(error) = walked {
        return bad(error.into());
    }
    let len = usize::try_from(hdr.len).unwrap_or(usize::MAX);
    if len > MAX_PAYLOAD {
        return bad(TxError::PayloadTooBig(hdr.len));
    }
    let avail = c.total.saturating_sub(HDR_LEN as u64);
    if u64::from(hdr.len) > avail {
        return bad(TxError::PayloadBeyondChain {
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
    let cap = writable_buffers(chain, mem, max, segs, usize::from(max))?;
    if cap <= HDR_LEN {
        return Err(ChainError::TooShort {
            have: u64::try_from(cap).unwrap_or(0),
            need: HDR_LEN + 1,
        });
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
