//! Builds a VM from a [`VmConfig`] in order — KVM, guest memory, VM,
//! devices, kernel and boot information, vCPUs — then runs it until it stops.

mod cmdline;
mod net;

pub use cmdline::{build_cmdline, default_cmdline, kernel_ip_param};
use net::open_taps;
pub use net::stable_mac;

use std::fs::File;
use std::io::IsTerminal;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::legacy::ConsoleOutput;
use devices::tap::Tap;
use devices::virtio::block::{Block, BlockError};
use devices::virtio::net::Net;
use devices::virtio::vsock::Vsock;
use vm_memory::GuestMemoryMmap;

use crate::arch::x86_64::acpi::{self, AcpiError};
use crate::arch::x86_64::boot::{self, BootError, LoadedKernel};
use crate::arch::x86_64::mptable::{self, MptableError};
use crate::arch::x86_64::regs::{self, EntryMode, RegsError};
use crate::config::{BootProtocol, ConfigError, ConsoleConfig, OnReboot, VmConfig};
use crate::device_manager::{DeviceManager, DeviceManagerError};
use crate::event_loop::{self, ConsoleInput, EventLoop, EventLoopError, SignalWatcher};
use crate::exit::ExitReason;
use crate::exit::ExitSignal;
use crate::terminal::RawTerminal;
use crate::vstate::kvm::{HostKind, KvmContext, KvmError};
use crate::vstate::memory::{self, MemoryError};
use crate::vstate::vcpu::{BootEntry, Vcpu, VcpuError, VcpuHandle};
use crate::vstate::vm::{Vm, VmError};

/// Errors of [`self`]: one per boot step.
#[derive(Debug, thiserror::Error)]
pub enum BuilderError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// KVM is missing or unusable.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The VM.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A device.
    #[error(transparent)]
    Devices(#[from] DeviceManagerError),
    /// A disk image.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// The kernel, initrd or command line.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// Page tables or descriptor tables.
    #[error(transparent)]
    Regs(#[from] RegsError),
    /// The MP table.
    #[error(transparent)]
    Mptable(#[from] MptableError),
    /// The ACPI tables.
    #[error(transparent)]
    Acpi(#[from] AcpiError),
    /// A vCPU.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The event loop.
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
    /// A TAP device.
    #[error(transparent)]
    Tap(#[from] devices::tap::TapError),
    /// A network device.
    #[error(transparent)]
    Net(#[from] devices::virtio::net::NetError),
    /// The vsock device.
    #[error(transparent)]
    Vsock(#[from] devices::virtio::vsock::VsockError),
    /// The console file.
    #[error("cannot open console file {path}: {source}")]
    ConsoleFile {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A host resource (event fd, stdout) could not be set up.
    #[error("{what}: {source}")]
    Host {
        /// What failed.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// More vCPUs than KVM allows here.
    #[error("--cpus {asked} is more than this host's KVM allows ({max})")]
    TooManyVcpus {
        /// Requested.
        asked: u32,
        /// KVM_CAP_MAX_VCPUS.
        max: usize,
    },
    /// The kernel command line could not be built.
    #[error("kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
}

/// What happened to a VM that ran.
#[derive(Debug)]
pub struct RunOutcome {
    /// Why it stopped.
    pub reason: ExitReason,
    /// The host's KVM kind.
    pub host: HostKind,
    /// Bytes the guest wrote to its console.
    pub console_bytes: u64,
    /// Boot markers of the last boot: (code, time since vmm started).
    pub markers: Vec<(u64, Duration)>,
    /// A stop signal asked the guest to shut down.
    pub stop_requested: bool,
    /// How many times the guest was booted (more than one with `--on-reboot restart`).
    pub boots: u64,
}

/// Pick the entry protocol.
pub fn choose_entry(
    asked: BootProtocol,
    kernel: &LoadedKernel,
    host: HostKind,
    path: &std::path::Path,
) -> Result<BootEntry, BootError> {
    let pvh = |entry| BootEntry {
        entry,
        mode: EntryMode::Pvh,
    };
    let linux = BootEntry {
        entry: kernel.entry,
        mode: EntryMode::Linux64,
    };
    match (asked, kernel.pvh_entry()) {
        (BootProtocol::Linux, _) => Ok(linux),
        (BootProtocol::Pvh, Some(e)) => Ok(pvh(e)),
        (BootProtocol::Pvh, None) => Err(BootError::NoPvhEntry(path.display().to_string())),
        (BootProtocol::Auto, Some(e)) if host == HostKind::Pvm => Ok(pvh(e)),
        (BootProtocol::Auto, _) => Ok(linux),
    }
}

fn open_console(config: &VmConfig) -> Result<ConsoleOutput, BuilderError> {
    match &config.console {
        ConsoleConfig::Stdio => ConsoleOutput::stdout().map_err(|source| BuilderError::Host {
            what: "cannot use stdout for the console",
            source,
        }),
        ConsoleConfig::File(p) => File::options()
            .create(true)
            .append(true)
            .open(p)
            .map(ConsoleOutput::File)
            .map_err(|source| BuilderError::ConsoleFile {
                path: p.display().to_string(),
                source,
            }),
        ConsoleConfig::None => Ok(ConsoleOutput::Sink),
    }
}

fn load_guest(
    config: &VmConfig,
    mem: &GuestMemoryMmap,
    dm: &DeviceManager,
    host: HostKind,
) -> Result<BootEntry, BuilderError> {
    let kernel = boot::load_kernel(mem, &config.kernel)?;
    log::info!(
        "kernel {}: {}, entry {:#x}, ends at {:#x}",
        config.kernel.display(),
        kernel.format_name(),
        kernel.entry,
        kernel.end
    );
    let initrd = match &config.initrd {
        Some(p) => Some(boot::load_initrd(mem, p, &kernel)?),
        None => None,
    };
    let entry = choose_entry(config.boot, &kernel, host, &config.kernel)?;
    let devices = if config.acpi {
        Vec::new()
    } else {
        dm.cmdline_entries()
    };
    let cmdline = build_cmdline(config, &devices)?;
    log::info!(
        "boot protocol {:?}, command line: {}",
        entry.mode,
        cmdline
            .as_cstring()
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let cmdline_len = boot::write_cmdline(mem, &cmdline, &kernel)?;
    // The MP table always (the CPUs for kernels without ACPI), ACPI unless
    // turned off.
    mptable::setup(mem, config.cpus)?;
    let rsdp = if config.acpi {
        Some(acpi::setup(mem, config.cpus, dm.virtio_info())?)
    } else {
        None
    };
    match entry.mode {
        EntryMode::Linux64 => {
            let params =
                boot::build_boot_params(&kernel, cmdline_len, initrd, config.mem_bytes, rsdp);
            boot::write_boot_params(mem, &params)?;
        }
        EntryMode::Pvh => boot::write_pvh_start_info(mem, initrd, config.mem_bytes, rsdp)?,
    }
    regs::write_gdt_idt(mem)?;
    regs::write_page_tables(mem)?;
    Ok(entry)
}

/// Stops and joins vCPU threads when dropped, whatever path we leave by.
struct VcpuThreads(Vec<VcpuHandle>);

impl Drop for VcpuThreads {
    fn drop(&mut self) {
        for h in &self.0 {
            h.stop();
        }
        for h in &mut self.0 {
            h.join();
        }
    }
}

/// Build the VM described by `config` and run it until it stops (and again
/// after each guest reboot with `--on-reboot restart`). `start` is when vmm
/// started, for boot-time markers.
pub fn run(config: &VmConfig, start: Instant) -> Result<RunOutcome, BuilderError> {
    config.validate()?;
    // Before any thread exists, so every thread inherits the mask and the
    // stop signals reach only the event loop's signalfd.
    event_loop::block_stop_signals().map_err(|source| BuilderError::Host {
        what: "cannot block signals",
        source,
    })?;

    let kvm = KvmContext::open(&config.kvm_device)?;
    log::info!(
        "KVM host: {}, up to {} vCPUs",
        kvm.host_kind(),
        kvm.max_vcpus()
    );
    if config.cpus as usize > kvm.max_vcpus() {
        return Err(BuilderError::TooManyVcpus {
            asked: config.cpus,
            max: kvm.max_vcpus(),
        });
    }

    let stdin = std::io::stdin();
    let forward_stdin = config.console == ConsoleConfig::Stdio && forwardable(&stdin);
    let interactive = forward_stdin && stdin.is_terminal();
    // Restored when this function returns, whichever way.
    let _raw = if interactive {
        RawTerminal::enter(stdin.as_raw_fd())
    } else {
        None
    };

    let taps = open_taps(config)?;

    let mut boots = 1u64;
    loop {
        // Boot markers count from vmm's start for the first boot, from the
        // restart for the others.
        let boot_start = if boots == 1 { start } else { Instant::now() };
        let mut outcome = run_once(
            config,
            &kvm,
            boot_start,
            forward_stdin.then_some(interactive),
            &taps,
        )?;
        outcome.boots = boots;
        if outcome.reason == ExitReason::Reboot
            && config.on_reboot == OnReboot::Restart
            && !outcome.stop_requested
        {
            boots += 1;
            log::info!("guest rebooted: starting boot {boots}");
            continue;
        }
        return Ok(outcome);
    }
}

/// One boot of the VM, from fresh memory and devices to its exit.
/// `stdin` is `Some(interactive)` when stdin is forwarded to the console.
fn run_once(
    config: &VmConfig,
    kvm: &KvmContext,
    start: Instant,
    stdin: Option<bool>,
    taps: &[Tap],
) -> Result<RunOutcome, BuilderError> {
    let host = kvm.host_kind();
    let mem = memory::create_guest_memory(config.mem_bytes)?;
    let vm = Vm::create(kvm)?;
    // KVM waits for a grace period to install a memory slot: let that wait
    // overlap the set-up below (the irqchip's and PIT's waits included), up
    // to the vCPUs' start.
    let slots = memory::register_with_kvm_in_background(kvm.kvm(), vm.fd(), &mem)?;
    vm.setup_platform()?;

    let exit = Arc::new(ExitSignal::new().map_err(|source| BuilderError::Host {
        what: "cannot create the exit event",
        source,
    })?);
    let mut dm = DeviceManager::new(&vm, open_console(config)?, exit.clone(), start)?;
    for disk in config.all_disks() {
        let block = Block::new(&disk.path, disk.read_only, None)?;
        dm.attach_virtio(&vm, &mem, Box::new(block))?;
        log::info!(
            "disk {}{}",
            disk.path.display(),
            if disk.read_only { " (read-only)" } else { "" }
        );
    }

    for (i, (n, tap)) in config.nets.iter().zip(taps).enumerate() {
        let mac = n.mac.unwrap_or_else(|| stable_mac(config, i));
        let net = Net::new(tap.try_clone()?, mac)?;
        dm.attach_virtio(&vm, &mem, Box::new(net))?;
        log::info!("eth{i}: MAC {}", devices::virtio::net::format_mac(&mac));
    }

    if let Some(v) = &config.vsock {
        let vsock = Vsock::new(v.cid, &v.socket)?;
        dm.attach_virtio(&vm, &mem, Box::new(vsock))?;
        log::info!(
            "vsock: guest CID {}, host socket {}",
            v.cid,
            v.socket.display()
        );
    }

    let entry = load_guest(config, &mem, &dm, host)?;

    let cpuid = kvm.supported_cpuid()?;
    let vcpus = (0..config.cpus)
        .map(|i| Vcpu::new(&vm, i, config.cpus, &cpuid, entry))
        .collect::<Result<Vec<_>, _>>()?;

    let mut event_loop = EventLoop::new(exit.clone())?;
    event_loop.add(Arc::new(Mutex::new(SignalWatcher::new(
        exit.clone(),
        dm.i8042.clone(),
        config.shutdown_timeout,
    )?)));
    for s in dm.subscribers() {
        event_loop.add(s);
    }
    if let Some(interactive) = stdin {
        let rx_room = dm
            .serial_rx_room
            .try_clone()
            .map_err(|source| BuilderError::Host {
                what: "cannot clone an event fd",
                source,
            })?;
        let input = ConsoleInput::new(
            std::io::stdin().as_raw_fd(),
            interactive,
            dm.serial.clone(),
            rx_room,
            exit.clone(),
        )
        .map_err(|source| BuilderError::Host {
            what: "cannot set up console input",
            source,
        })?;
        event_loop.add(Arc::new(Mutex::new(input)));
    }

    slots.wait()?;
    let (io, mmio) = (dm.io_bus(), dm.mmio_bus());
    let mut threads = VcpuThreads(Vec::new());
    for vcpu in vcpus {
        threads
            .0
            .push(vcpu.start(io.clone(), mmio.clone(), exit.clone())?);
    }
    log::info!(
        "guest started {:.3} ms after vmm",
        start.elapsed().as_secs_f64() * 1000.0
    );
    let reason = event_loop.run()?;
    drop(threads);
    log::info!("{reason}");

    let markers = dm
        .markers
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok(RunOutcome {
        reason,
        host,
        console_bytes: dm.console_bytes.load(Ordering::Relaxed),
        markers,
        stop_requested: exit.shutdown_signal().is_some(),
        boots: 1,
    })
}

/// stdin is forwarded when it is a terminal, a pipe or a file with data.
fn forwardable(stdin: &std::io::Stdin) -> bool {
    if stdin.is_terminal() {
        return true;
    }
    let fd = stdin.as_raw_fd();
    // SAFETY: fstat on a valid fd into a zeroed stat we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return false;
    }
    let kind = st.st_mode & libc::S_IFMT;
    kind == libc::S_IFIFO || kind == libc::S_IFSOCK
}

#[cfg(test)]
mod tests {
    #![allow(clippy::cast_possible_truncation)]
    use super::*;
    use crate::arch::x86_64::boot::KernelFormat;

    #[test]
    fn entry_protocol_choice() {
        let p = std::path::Path::new("k");
        let with_pvh = LoadedKernel {
            entry: 0x100_0000,
            end: 0,
            format: KernelFormat::Elf {
                pvh_entry: Some(0x100_1000),
            },
        };
        let without = LoadedKernel {
            format: KernelFormat::Elf { pvh_entry: None },
            ..with_pvh
        };
        let e = |asked, k: &LoadedKernel, host| {
            choose_entry(asked, k, host, p).map(|b| (b.mode, b.entry))
        };
        assert_eq!(
            e(BootProtocol::Auto, &with_pvh, HostKind::Vmx).unwrap(),
            (EntryMode::Linux64, 0x100_0000)
        );
        assert_eq!(
            e(BootProtocol::Auto, &with_pvh, HostKind::Pvm).unwrap(),
            (EntryMode::Pvh, 0x100_1000)
        );
        assert_eq!(
            e(BootProtocol::Auto, &without, HostKind::Pvm).unwrap(),
            (EntryMode::Linux64, 0x100_0000)
        );
        assert_eq!(
            e(BootProtocol::Pvh, &with_pvh, HostKind::Svm).unwrap(),
            (EntryMode::Pvh, 0x100_1000)
        );
        assert!(matches!(
            e(BootProtocol::Pvh, &without, HostKind::Vmx),
            Err(BootError::NoPvhEntry(_))
        ));
        assert_eq!(
            e(BootProtocol::Linux, &with_pvh, HostKind::Pvm).unwrap().0,
            EntryMode::Linux64
        );
    }
}
