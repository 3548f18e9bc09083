//! The main thread's event loop: virtio queue notifications and backends,
//! console input, signals, and the VM's exit request.

use std::collections::VecDeque;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use devices::legacy::{SerialDevice, I8042};
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::device_manager::KbdSink;

use crate::exit::{ExitReason, ExitSignal};

/// Errors of [`self`].
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    /// The epoll-based event manager failed.
    #[error("event loop: {0}")]
    EventManager(event_manager::Error),
    /// Signal handling could not be set up.
    #[error("cannot set up signal handling: {0}")]
    Signals(std::io::Error),
}

/// The subscriber type of our event manager.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// The event loop.
pub struct EventLoop {
    em: EventManager<Subscriber>,
    exit: Arc<ExitSignal>,
}

impl EventLoop {
    /// An event loop that ends when `exit` is requested.
    pub fn new(exit: Arc<ExitSignal>) -> Result<Self, EventLoopError> {
        let mut em: EventManager<Subscriber> =
            EventManager::new().map_err(EventLoopError::EventManager)?;
        let watcher: Subscriber = Arc::new(Mutex::new(ExitWatcher { exit: exit.clone() }));
        em.add_subscriber(watcher);
        Ok(Self { em, exit })
    }

    /// Add a subscriber (a device, the console, signals).
    pub fn add(&mut self, s: Subscriber) {
        self.em.add_subscriber(s);
    }

    /// Run until an exit is requested; returns its reason.
    pub fn run(&mut self) -> Result<ExitReason, EventLoopError> {
        loop {
            if let Some(r) = self.exit.reason() {
                return Ok(r);
            }
            match self.em.run() {
                Ok(_) => {}
                Err(event_manager::Error::Epoll(e)) if e.errno() == libc::EINTR => {}
                Err(e) => return Err(EventLoopError::EventManager(e)),
            }
        }
    }
}

struct ExitWatcher {
    exit: Arc<ExitSignal>,
}

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, _: Events, _: &mut EventOps) {
        // Reading resets the counter; the loop looks at the reason itself.
        let _ = self.exit.event_fd().read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(
            self.exit.event_fd(),
            event_manager::EventSet::IN,
        )) {
            log::error!("cannot watch the exit event: {e:?}");
        }
    }
}

/// Most console input held while the guest is not reading.
const PENDING_MAX: usize = 4096;
/// Ctrl-A: the escape key on an interactive console.
const ESCAPE: u8 = 0x01;

/// How long the guest's receive interrupt must stay enabled before input
/// flows: Linux's 8250 driver enables it for a moment while it probes the
/// port (and then reads the receive register to clear it), and only for good
/// once the console is opened.
const RX_SETTLE: Duration = Duration::from_millis(50);

/// Forwards vmm's stdin to the serial port, holding what the UART FIFO cannot
/// take yet, and all of it until the guest's driver is ready for input (see
/// [`RX_SETTLE`]). On a terminal, Ctrl-A x stops vmm and Ctrl-A Ctrl-A sends Ctrl-A.
pub struct ConsoleInput {
    stdin: RawFd,
    interactive: bool,
    serial: Arc<Mutex<SerialDevice>>,
    rx_room: EventFd,
    settle: TimerFd,
    settle_armed: bool,
    settled: bool,
    pending: VecDeque<u8>,
    watching_stdin: bool,
    stdin_open: bool,
    escape: bool,
    exit: Arc<ExitSignal>,
}

impl ConsoleInput {
    /// Forward `stdin` (a terminal when `interactive`) into `serial`.
    pub fn new(
        stdin: RawFd,
        interactive: bool,
        serial: Arc<Mutex<SerialDevice>>,
        rx_room: EventFd,
        exit: Arc<ExitSignal>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            stdin,
            interactive,
            serial,
            rx_room,
            settle: TimerFd::new().map_err(std::io::Error::from)?,
            settle_armed: false,
            settled: false,
            pending: VecDeque::new(),
            watching_stdin: false,
            stdin_open: true,
            escape: false,
            exit,
        })
    }

    fn feed(&mut self) {
        let mut serial = devices::bus::lock(&self.serial);
        if !serial.rx_open() {
            self.settled = false;
            return;
        }
        if !self.settled {
            if !self.settle_armed {
                match self.settle.reset(RX_SETTLE, None) {
                    Ok(()) => self.settle_armed = true,
                    Err(e) => {
                        log::warn!("console input: no settle timer ({e}); feeding at once");
                        self.settled = true;
                    }
                }
            }
            if !self.settled {
                return;
            }
        }
        if self.pending.is_empty() {
            return;
        }
        let (a, b) = self.pending.as_slices();
        let mut n = serial.enqueue(a);
        if n == a.len() {
            n += serial.enqueue(b);
        }
        drop(serial);
        self.pending.drain(..n);
    }

    fn take_input(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.interactive {
                if self.escape {
                    self.escape = false;
                    if b == b'x' || b == b'X' {
                        eprintln!("\r\nvmm: Ctrl-A x: stopping the VM");
                        self.exit.request(ExitReason::Signal(libc::SIGINT));
                        return;
                    }
                    if b != ESCAPE {
                        continue;
                    }
                } else if b == ESCAPE {
                    self.escape = true;
                    continue;
                }
            }
            self.pending.push_back(b);
        }
    }

    fn update_interest(&mut self, ops: &mut EventOps) {
        let want = self.stdin_open && self.pending.len() < PENDING_MAX;
        if want != self.watching_stdin {
            let ev = Events::new_raw(self.stdin, event_manager::EventSet::IN);
            let r = if want { ops.add(ev) } else { ops.remove(ev) };
            if let Err(e) = r {
                log::warn!("console input: {e:?}");
            }
            self.watching_stdin = want;
        }
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.rx_room.as_raw_fd() {
            let _ = self.rx_room.read();
        } else if events.fd() == self.settle.as_raw_fd() {
            let _ = self.settle.wait();
            self.settle_armed = false;
            // Still enabled after the settle time: the driver is ready.
            self.settled = devices::bus::lock(&self.serial).rx_open();
        } else if events.fd() == self.stdin {
            let mut buf = [0u8; 512];
            let room = PENDING_MAX
                .saturating_sub(self.pending.len())
                .min(buf.len());
            // SAFETY: stdin stays open for the life of the process; the
            // ManuallyDrop keeps this temporary File from closing it.
            let mut f =
                std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(self.stdin) });
            match f.read(&mut buf[..room]) {
                Ok(0) => self.stdin_open = false,
                Ok(n) => self.take_input(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    log::warn!("console input closed: {e}");
                    self.stdin_open = false;
                }
            }
        }
        self.feed();
        self.update_interest(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for fd in [self.rx_room.as_raw_fd(), self.settle.as_raw_fd()] {
            if let Err(e) = ops.add(Events::new_raw(fd, event_manager::EventSet::IN)) {
                log::warn!("console input: {e:?}");
            }
        }
        self.update_interest(ops);
    }
}

/// Handles SIGTERM, SIGINT and SIGHUP (read through a signalfd; the signals
/// are blocked in every thread so they only arrive here). The first asks the
/// guest to shut down by pressing Ctrl-Alt-Del on its keyboard and arms a
/// timer; the VM is stopped when the timer fires or a second signal comes.
pub struct SignalWatcher {
    fd: OwnedFd,
    timer: TimerFd,
    timeout: Duration,
    exit: Arc<ExitSignal>,
    i8042: Arc<Mutex<I8042<KbdSink>>>,
}

/// The signals that stop vmm.
pub const STOP_SIGNALS: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

fn sigset(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: an all-zero sigset_t is a valid value to initialise with sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t we own.
    unsafe { libc::sigemptyset(&mut set) };
    for s in signals {
        // SAFETY: as above; `s` is a valid signal number.
        unsafe { libc::sigaddset(&mut set, *s) };
    }
    set
}

/// Block the stop signals in this thread (and the threads it starts later).
/// Call before starting any thread.
pub fn block_stop_signals() -> std::io::Result<()> {
    let set = sigset(&STOP_SIGNALS);
    // SAFETY: `set` is a valid sigset; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

impl SignalWatcher {
    /// A signalfd for the stop signals (which must already be blocked); the
    /// guest gets `timeout` to shut down after the first one.
    pub fn new(
        exit: Arc<ExitSignal>,
        i8042: Arc<Mutex<I8042<KbdSink>>>,
        timeout: Duration,
    ) -> Result<Self, EventLoopError> {
        let set = sigset(&STOP_SIGNALS);
        // SAFETY: `set` is valid; -1 asks for a new fd.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(EventLoopError::Signals(std::io::Error::last_os_error()));
        }
        // SAFETY: signalfd returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let timer = TimerFd::new().map_err(|e| EventLoopError::Signals(e.into()))?;
        Ok(Self {
            fd,
            timer,
            timeout,
            exit,
            i8042,
        })
    }

    fn on_signal(&mut self, sig: i32) {
        if !self.exit.note_shutdown_signal(sig) {
            log::warn!("signal {sig} again: stopping the VM now");
            self.exit.request(ExitReason::Signal(sig));
            return;
        }
        log::warn!(
            "signal {sig}: asking the guest to shut down (Ctrl-Alt-Del); it is stopped in {:.1} s, or at once on another signal",
            self.timeout.as_secs_f64()
        );
        devices::bus::lock(&self.i8042).send_ctrl_alt_del();
        if let Err(e) = self
            .timer
            .reset(self.timeout.max(Duration::from_millis(1)), None)
        {
            log::error!("cannot arm the shutdown timer ({e}): stopping the VM now");
            self.exit.request(ExitReason::Signal(sig));
        }
    }

    fn next_signal(&self) -> Option<i32> {
        // SAFETY: signalfd_siginfo is plain data; all zeroes is valid.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reading at most `size` bytes into `info`, which is that big.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        (n == size as isize).then_some(info.ssi_signo as i32)
    }
}

impl MutEventSubscriber for SignalWatcher {
    fn process(&mut self, events: Events, _: &mut EventOps) {
        if events.fd() == self.timer.as_raw_fd() {
            let _ = self.timer.wait();
            let sig = self.exit.shutdown_signal().unwrap_or(libc::SIGTERM);
            log::warn!(
                "the guest did not shut down within {:.1} s of signal {sig}: stopping it",
                self.timeout.as_secs_f64()
            );
            self.exit.request(ExitReason::Signal(sig));
            return;
        }
        while let Some(sig) = self.next_signal() {
            self.on_signal(sig);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for fd in [self.fd.as_raw_fd(), self.timer.as_raw_fd()] {
            if let Err(e) = ops.add(Events::new_raw(fd, event_manager::EventSet::IN)) {
                log::error!("cannot watch signals: {e:?}");
            }
        }
    }
}
