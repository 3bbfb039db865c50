//! Standard output, line by line and flushed at once (a pipe reader sees
//! each signal as it arrives). A closed pipe ends dflock quietly.

use std::io::{self, Write as _};

use crate::exit::Failure;

/// Exit status when stdout is a closed pipe: 128 + SIGPIPE, as a shell
/// reports a process that SIGPIPE ended.
pub const BROKEN_PIPE: i32 = 128 + 13;

/// Line-oriented stdout.
pub struct Out(io::Stdout);

impl Out {
    /// Stdout.
    pub fn new() -> Self {
        Self(io::stdout())
    }

    /// Writes `line` and a newline, and flushes.
    pub fn line(&mut self, line: &str) -> Result<(), Failure> {
        let mut lock = self.0.lock();
        writeln!(lock, "{line}")
            .and_then(|()| lock.flush())
            .map_err(|e| match e.kind() {
                io::ErrorKind::BrokenPipe => Failure::new(BROKEN_PIPE, ""),
                _ => Failure::new(crate::exit::FAILURE, format!("writing stdout: {e}")),
            })
    }
}
