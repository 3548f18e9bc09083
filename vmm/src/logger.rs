//! A minimal stderr logger: `vmm: [  12.345 ms] message`, times since vmm started.

use std::io::Write;
use std::sync::OnceLock;
use std::time::Instant;

struct Logger {
    start: Instant,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let ms = self.start.elapsed().as_secs_f64() * 1000.0;
        let level = match r.level() {
            log::Level::Error => "error: ",
            log::Level::Warn => "warning: ",
            _ => "",
        };
        // \r first: the terminal may be in raw mode. Formatted first and
        // written at once: stderr is unbuffered, and formatting straight into
        // it costs a write(2) per fragment.
        let line = format!("\rvmm: [{ms:9.3} ms] {level}{}\n", r.args());
        let _ = std::io::stderr().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Install the logger: 0 = warnings and errors, 1 = info (-v), 2 = debug, 3+ = trace.
pub fn init(verbosity: u8, start: Instant) {
    let logger = LOGGER.get_or_init(|| Logger { start });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(match verbosity {
            0 => log::LevelFilter::Warn,
            1 => log::LevelFilter::Info,
            2 => log::LevelFilter::Debug,
            _ => log::LevelFilter::Trace,
        });
    }
}
