//! In-memory transports for tests, fuzzing and benchmarks (feature
//! `testing`, which implies `std`).

use std::vec::Vec;

/// The scripted transport's error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScriptError;

impl core::fmt::Display for ScriptError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("scripted transport error")
    }
}

impl core::error::Error for ScriptError {}

impl embedded_io_async::Error for ScriptError {
    fn kind(&self) -> embedded_io_async::ErrorKind {
        embedded_io_async::ErrorKind::Other
    }
}

/// A transport that serves scripted input and records what is written.
///
/// Reads return at most `read_chunk` bytes at a time (1 = byte at a time);
/// at the end of the input they return EOF (`Ok(0)`), or an error when
/// [`fail_at_end`](Self::fail_at_end) is set. Writes accept at most
/// `write_chunk` bytes per call, to exercise split writes.
#[derive(Debug, Clone)]
pub struct Scripted {
    input: Vec<u8>,
    pos: usize,
    /// Largest read returned.
    pub read_chunk: usize,
    /// Largest write accepted.
    pub write_chunk: usize,
    /// Fail reads with [`ScriptError`] instead of EOF at the end of input.
    pub fail_at_end: bool,
    /// Everything written so far.
    pub written: Vec<u8>,
    /// Number of `write` calls.
    pub writes: usize,
}

impl Scripted {
    /// Serves `input`, in reads as large as the caller asks.
    pub fn new(input: impl Into<Vec<u8>>) -> Self {
        Self {
            input: input.into(),
            pos: 0,
            read_chunk: usize::MAX,
            write_chunk: usize::MAX,
            fail_at_end: false,
            written: Vec::new(),
            writes: 0,
        }
    }

    /// Serves `input` one byte per read.
    pub fn byte_at_a_time(input: impl Into<Vec<u8>>) -> Self {
        Self {
            read_chunk: 1,
            ..Self::new(input)
        }
    }

    /// Bytes of input not yet read.
    pub fn remaining(&self) -> usize {
        self.input.len() - self.pos
    }

    /// Appends more input.
    pub fn feed(&mut self, more: &[u8]) {
        self.input.extend_from_slice(more);
    }
}

impl embedded_io_async::ErrorType for Scripted {
    type Error = ScriptError;
}

impl embedded_io_async::Read for Scripted {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, ScriptError> {
        let left = &self.input[self.pos..];
        if left.is_empty() {
            return if self.fail_at_end {
                Err(ScriptError)
            } else {
                Ok(0)
            };
        }
        let n = left.len().min(buf.len()).min(self.read_chunk);
        buf[..n].copy_from_slice(&left[..n]);
        self.pos += n;
        Ok(n)
    }
}

impl embedded_io_async::Write for Scripted {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, ScriptError> {
        let n = buf.len().min(self.write_chunk);
        self.written.extend_from_slice(&buf[..n]);
        self.writes += 1;
        Ok(n)
    }

    async fn flush(&mut self) -> Result<(), ScriptError> {
        Ok(())
    }
}

/// A transport that answers every request with the same reply, without
/// storing anything: for allocation tests and benchmarks of a full round
/// trip. Each request must be written before its reply is read.
#[derive(Debug, Clone)]
pub struct Responder {
    reply: &'static [u8],
    owed: usize,
    at: usize,
    newlines: usize,
    /// Bytes written so far.
    pub bytes_written: usize,
}

impl Responder {
    /// Answers every three-line request with `reply` (which must end in `\n`).
    pub const fn new(reply: &'static [u8]) -> Self {
        Self {
            reply,
            owed: 0,
            at: 0,
            newlines: 0,
            bytes_written: 0,
        }
    }
}

impl embedded_io_async::ErrorType for Responder {
    type Error = ScriptError;
}

impl embedded_io_async::Read for Responder {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, ScriptError> {
        if self.owed == 0 {
            return Ok(0);
        }
        let left = &self.reply[self.at..];
        let n = left.len().min(buf.len());
        buf[..n].copy_from_slice(&left[..n]);
        self.at += n;
        if self.at == self.reply.len() {
            self.at = 0;
            self.owed -= 1;
        }
        Ok(n)
    }
}

impl embedded_io_async::Write for Responder {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, ScriptError> {
        for &b in buf {
            if b == b'\n' {
                self.newlines += 1;
                if self.newlines == 3 {
                    self.newlines = 0;
                    self.owed += 1;
                }
            }
        }
        self.bytes_written += buf.len();
        Ok(buf.len())
    }

    async fn flush(&mut self) -> Result<(), ScriptError> {
        Ok(())
    }
}
