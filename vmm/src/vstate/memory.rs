//! Guest memory: the layout's RAM ranges mapped with `vm-memory` and
//! registered with KVM as memory slots.

use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd};
use std::thread::JoinHandle;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::x86_64::layout::ram_ranges;

/// Errors of [`self`].
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Mapping guest memory failed.
    #[error("cannot map {size} MiB of guest memory: {detail}")]
    Map {
        /// Requested size in MiB.
        size: u64,
        /// What mmap said.
        detail: String,
    },
    /// KVM refused a memory slot.
    #[error("KVM refused memory slot {slot} ({size:#x} bytes at {addr:#x}): {source}")]
    SetSlot {
        /// Slot number.
        slot: u32,
        /// Guest address.
        addr: u64,
        /// Size.
        size: u64,
        /// Why.
        source: kvm_ioctls::Error,
    },
    /// The helper thread that registers memory slots could not be set up.
    #[error("cannot register guest memory in the background: {0}")]
    Helper(std::io::Error),
    /// The host does not have that much memory.
    #[error("--mem {want_mib} MiB is more than this host's {host_mib} MiB of RAM")]
    MoreThanHost {
        /// Requested MiB.
        want_mib: u64,
        /// Host MemTotal in MiB.
        host_mib: u64,
    },
}

/// Map `size` bytes of guest RAM according to the layout.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    if let Some(host) = host_memory_bytes() {
        if size > host {
            return Err(MemoryError::MoreThanHost {
                want_mib: size >> 20,
                host_mib: host >> 20,
            });
        }
    }
    let map_err = |detail: String| MemoryError::Map {
        size: size >> 20,
        detail,
    };
    let ranges = ram_ranges(size)
        .into_iter()
        .map(|(start, len)| {
            usize::try_from(len)
                .map(|len| (GuestAddress(start), len))
                .map_err(|_| map_err("larger than the address space".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| map_err(e.to_string()))
}

/// Register every region of `mem` with KVM, one slot each.
pub fn register_with_kvm(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in (0u32..).zip(mem.iter()) {
        let addr = region.start_addr().raw_value();
        let size = region.len();
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| MemoryError::Map {
                size: size >> 20,
                detail: e.to_string(),
            })?;
        let desc = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: addr,
            memory_size: size,
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem` of exactly `size`
        // bytes; the caller keeps `mem` alive for as long as the VM exists.
        unsafe { vm.set_user_memory_region(desc) }.map_err(|source| MemoryError::SetSlot {
            slot,
            addr,
            size,
            source,
        })?;
    }
    Ok(())
}

/// Memory slots being registered with KVM on a helper thread.
pub struct PendingSlots(Option<JoinHandle<Result<(), MemoryError>>>);

impl PendingSlots {
    /// Wait until every slot is registered.
    pub fn wait(mut self) -> Result<(), MemoryError> {
        match self.0.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(MemoryError::Helper(std::io::Error::other(
                "the thread registering guest memory panicked",
            ))),
            None => Ok(()),
        }
    }
}

impl Drop for PendingSlots {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            let _ = h.join();
        }
    }
}

/// [`register_with_kvm`] on a helper thread. Installing a slot makes KVM wait
/// for an SRCU grace period (milliseconds, longer on an idle host), which can
/// overlap the rest of the VM's set-up; call [`PendingSlots::wait`] before
/// running a vCPU. The thread works on a duplicate of the VM fd and a clone
/// of `mem`, so nothing it uses can go away under it.
pub fn register_with_kvm_in_background(
    kvm: &Kvm,
    vm: &VmFd,
    mem: &GuestMemoryMmap,
) -> Result<PendingSlots, MemoryError> {
    // SAFETY: `vm` owns this fd and outlives the borrow, which only lasts for
    // the dup below.
    let dup = unsafe { BorrowedFd::borrow_raw(vm.as_raw_fd()) }
        .try_clone_to_owned()
        .map_err(MemoryError::Helper)?;
    // SAFETY: `dup` is a fresh duplicate of a VM fd; ownership passes to the
    // new VmFd, which closes it.
    let vm = unsafe { kvm.create_vmfd_from_rawfd(dup.into_raw_fd()) }
        .map_err(|e| MemoryError::Helper(std::io::Error::from_raw_os_error(e.errno())))?;
    let mem = mem.clone();
    std::thread::Builder::new()
        .name("memslots".into())
        .spawn(move || register_with_kvm(&vm, &mem))
        .map(|h| PendingSlots(Some(h)))
        .map_err(MemoryError::Helper)
}

/// Total host RAM (MemTotal) in bytes, if /proc/meminfo says.
pub fn host_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_total(&meminfo)
}

fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::cast_possible_truncation)]
    use super::*;
    use crate::arch::x86_64::layout::MMIO_GAP_START;

    #[test]
    fn memory_follows_the_layout() {
        let m = create_guest_memory(64 << 20).unwrap();
        assert_eq!(m.num_regions(), 1);
        assert_eq!(m.last_addr().raw_value(), (64 << 20) - 1);
    }

    #[test]
    fn big_guest_gets_a_region_above_four_gib() {
        // Mappings are lazy (MAP_NORESERVE), so this costs no RAM.
        let size = MMIO_GAP_START + (1 << 30);
        if host_memory_bytes().is_some_and(|h| h < size) {
            assert!(matches!(
                create_guest_memory(size),
                Err(MemoryError::MoreThanHost { .. })
            ));
            return;
        }
        let m = create_guest_memory(size).unwrap();
        assert_eq!(m.num_regions(), 2);
        assert!(m.address_in_range(GuestAddress(1 << 32)));
        assert!(!m.address_in_range(GuestAddress(MMIO_GAP_START)));
    }

    #[test]
    fn absurd_sizes_are_refused() {
        assert!(matches!(
            create_guest_memory(1 << 50),
            Err(MemoryError::MoreThanHost { .. })
        ));
    }

    #[test]
    fn background_registration_is_in_place_when_wait_returns() {
        if !std::path::Path::new("/dev/kvm").exists() {
            return;
        }
        let kvm = crate::vstate::kvm::KvmContext::open(std::path::Path::new("/dev/kvm")).unwrap();
        let vm = crate::vstate::vm::Vm::new(&kvm).unwrap();
        let mem = create_guest_memory(16 << 20).unwrap();
        register_with_kvm_in_background(kvm.kvm(), vm.fd(), &mem)
            .unwrap()
            .wait()
            .unwrap();
        // Another slot over the same guest range is refused: the first one is there.
        let host = mem.get_host_address(GuestAddress(0)).unwrap();
        let overlap = kvm_userspace_memory_region {
            slot: 1,
            guest_phys_addr: 0,
            memory_size: 4096,
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the range is mapped by `mem`, which outlives `vm`.
        let err = unsafe { vm.fd().set_user_memory_region(overlap) }.unwrap_err();
        assert_eq!(err.errno(), libc::EEXIST);
    }

    #[test]
    fn meminfo_parsing() {
        assert_eq!(
            parse_mem_total("MemTotal:       24578560 kB\nMemFree: 1 kB\n"),
            Some(24578560 * 1024)
        );
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: lots\n"), None);
    }
}
