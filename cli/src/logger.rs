//! Notes, warnings and `-v` tracing on stderr, through the `log` crate
//! (the library logs its requests and renewals there too).
//!
//! Default: dflock's warnings only. `-q`: nothing. `-v`: everything,
//! with the time since start. The library never logs tokens.

use std::io::Write as _;
use std::time::Instant;

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Stderr {
    verbose: bool,
    quiet: bool,
    start: Instant,
}

impl Log for Stderr {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        if self.verbose {
            return true;
        }
        !self.quiet && m.level() <= Level::Warn && !is_library(m.target())
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = if self.verbose {
            let from = if is_library(r.target()) {
                "client"
            } else {
                "dflock"
            };
            writeln!(
                err,
                "dflock [{:>8.3}s {from} {}] {}",
                self.start.elapsed().as_secs_f64(),
                r.level().as_str().to_lowercase(),
                r.args()
            )
        } else {
            writeln!(err, "dflock: warning: {}", r.args())
        };
    }

    fn flush(&self) {}
}

/// Whether a record comes from the library (its warnings duplicate
/// dflock's own, so they show with `-v` only).
fn is_library(target: &str) -> bool {
    target.starts_with("dflockd_client")
}

/// Installs the logger.
pub fn init(verbose: bool, quiet: bool) {
    let logger = Stderr {
        verbose,
        quiet,
        start: Instant::now(),
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(if verbose {
            LevelFilter::Trace
        } else if quiet {
            LevelFilter::Off
        } else {
            LevelFilter::Warn
        });
    }
}
