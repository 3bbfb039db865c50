//! An allocation-free scripted transport whose reads are split at
//! fuzzer-chosen sizes, and a line model of the server's byte stream.

use dflockd_client::protocol::{ProtocolError, Reply, is_push, parse_push, trim_cr};
use dflockd_client::{Error, Signal};

/// The transport's error (end of input with `fail_at_end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireError;

impl core::fmt::Display for WireError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("wire error")
    }
}

impl core::error::Error for WireError {}

impl embedded_io_async::Error for WireError {
    fn kind(&self) -> embedded_io_async::ErrorKind {
        embedded_io_async::ErrorKind::Other
    }
}

/// Serves `input` in reads of the sizes in `chunks` (cycled; 0 counts as 1)
/// and keeps the last 512 bytes written in a fixed array.
pub struct Wire<'a> {
    input: &'a [u8],
    pos: usize,
    chunks: &'a [u8],
    reads: usize,
    fail_at_end: bool,
    /// Bytes written since the last [`take_written`](Self::take_written).
    pub written: [u8; 512],
    /// How many of `written` are valid (saturates at 512).
    pub written_len: usize,
}

impl<'a> Wire<'a> {
    /// A transport over `input`.
    pub fn new(input: &'a [u8], chunks: &'a [u8], fail_at_end: bool) -> Self {
        Self {
            input,
            pos: 0,
            chunks,
            reads: 0,
            fail_at_end,
            written: [0; 512],
            written_len: 0,
        }
    }

    /// The bytes written since the last call.
    pub fn take_written(&mut self) -> &[u8] {
        let n = core::mem::take(&mut self.written_len);
        &self.written[..n]
    }
}

impl embedded_io_async::ErrorType for Wire<'_> {
    type Error = WireError;
}

impl embedded_io_async::Read for Wire<'_> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, WireError> {
        let left = &self.input[self.pos..];
        if left.is_empty() {
            return if self.fail_at_end {
                Err(WireError)
            } else {
                Ok(0)
            };
        }
        let chunk = match self.chunks {
            [] => usize::MAX,
            c => usize::from(c[self.reads % c.len()].max(1)),
        };
        self.reads += 1;
        let n = left.len().min(buf.len()).min(chunk);
        buf[..n].copy_from_slice(&left[..n]);
        self.pos += n;
        Ok(n)
    }
}

impl embedded_io_async::Write for Wire<'_> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, WireError> {
        for &b in buf {
            if self.written_len < self.written.len() {
                self.written[self.written_len] = b;
                self.written_len += 1;
            }
        }
        Ok(buf.len())
    }

    async fn flush(&mut self) -> Result<(), WireError> {
        Ok(())
    }
}

/// An outcome in a form both the connection's result and the model give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A reply, in its `Debug` form.
    Reply(String),
    /// A signal: channel and payload.
    Signal(String, String),
    /// The stats JSON.
    Json(String),
    /// The transport failed.
    Io,
    /// End of stream.
    Disconnected,
    /// A line longer than the buffer.
    LineTooLong,
    /// A malformed reply.
    Protocol(ProtocolError),
    /// An error status (stats only).
    Server,
    /// `error_auth` (stats only).
    Auth,
    /// The connection was unusable.
    Unusable,
    /// Anything else (never expected).
    Other(String),
}

impl Outcome {
    /// The outcome of a failed connection call.
    pub fn from_error(e: &Error<WireError>) -> Self {
        match e {
            Error::Io(_) => Outcome::Io,
            Error::Disconnected => Outcome::Disconnected,
            Error::LineTooLong => Outcome::LineTooLong,
            Error::Protocol(p) => Outcome::Protocol(*p),
            Error::Server(_) => Outcome::Server,
            Error::Auth => Outcome::Auth,
            Error::Unusable => Outcome::Unusable,
            other => Outcome::Other(format!("{other:?}")),
        }
    }

    /// The outcome of a received signal.
    pub fn signal(s: &Signal<'_>) -> Self {
        Outcome::Signal(s.channel.to_owned(), s.payload.to_owned())
    }

    /// The outcome of a parsed reply.
    pub fn reply(r: &Reply<'_>) -> Self {
        Outcome::Reply(format!("{r:?}"))
    }
}

/// The server's byte stream as lines, and the connection's state as the
/// protocol says it must be: a model of `Connection<_, N, P>`.
pub struct Model<'a> {
    rest: &'a [u8],
    /// Line buffer size `N`.
    pub n: usize,
    /// Push queue size `P`.
    pub p: usize,
    /// End of input is a transport error rather than EOF.
    pub fail_at_end: bool,
    /// Signals queued: channel, payload.
    pub queue: std::collections::VecDeque<(String, String)>,
    queue_bytes: usize,
    /// Signals dropped.
    pub dropped: u64,
    /// The connection must refuse requests.
    pub poisoned: bool,
}

/// What the next read of a line finds.
pub enum Next<'a> {
    /// A whole line (without `\n`).
    Line(&'a [u8]),
    /// The stream ends after these bytes, which have no `\n` (they stay:
    /// the next read finds them again).
    End(&'a [u8]),
}

impl<'a> Model<'a> {
    /// A model over `stream` for `Connection<_, n, p>`.
    pub fn new(stream: &'a [u8], n: usize, p: usize, fail_at_end: bool) -> Self {
        Self {
            rest: stream,
            n,
            p,
            fail_at_end,
            queue: Default::default(),
            queue_bytes: 0,
            dropped: 0,
            poisoned: false,
        }
    }

    /// Takes the next line, or what is left at the end of the stream.
    pub fn next(&mut self) -> Next<'a> {
        match self.rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let line = &self.rest[..i];
                self.rest = &self.rest[i + 1..];
                Next::Line(line)
            }
            // A partial line stays buffered in the connection: every later
            // read finds it again.
            None => Next::End(self.rest),
        }
    }

    /// The error at the end of the stream.
    pub fn end(&self) -> Outcome {
        if self.fail_at_end {
            Outcome::Io
        } else {
            Outcome::Disconnected
        }
    }

    /// A push line that fit the buffer: queued, or counted dropped.
    pub fn push(&mut self, line: &[u8]) {
        match parse_push(line) {
            Ok(sig) => {
                // 4 length bytes + the body after "sig " (one CR stripped).
                let need = trim_cr(line).len();
                if self.queue_bytes + need <= self.p {
                    self.queue_bytes += need;
                    self.queue
                        .push_back((sig.channel.to_owned(), sig.payload.to_owned()));
                } else {
                    self.dropped += 1;
                }
            }
            Err(_) => self.dropped += 1,
        }
    }

    /// Pops the oldest queued signal.
    pub fn pop(&mut self) -> Option<(String, String)> {
        let s = self.queue.pop_front()?;
        self.queue_bytes -= 4 + s.0.len() + 1 + s.1.len();
        if self.queue.is_empty() {
            self.queue_bytes = 0;
        }
        Some(s)
    }

    /// Reads lines the way the connection's line reader must: pushes that
    /// fit are queued, longer pushes dropped, and the first other line is
    /// returned. `Err` is the error the connection must report.
    pub fn reply_line(&mut self) -> Result<&'a [u8], Outcome> {
        loop {
            match self.next() {
                Next::Line(line) if line.len() < self.n => {
                    if is_push(line) {
                        self.push(line);
                        continue;
                    }
                    return Ok(line);
                }
                Next::Line(line) => {
                    if is_push(line) {
                        self.dropped += 1;
                        continue;
                    }
                    self.poisoned = true;
                    return Err(Outcome::LineTooLong);
                }
                Next::End(part) => {
                    if part.len() >= self.n && !is_push(part) {
                        self.poisoned = true;
                        return Err(Outcome::LineTooLong);
                    }
                    return Err(self.end());
                }
            }
        }
    }
}
