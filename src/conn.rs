//! The connection layer: one transport, one line buffer, one request in
//! flight, and `sig` pushes kept apart from replies.

use core::future::Future;
use core::marker::PhantomData;
use core::pin::Pin;
use core::task::{Context, Poll};

use embedded_io_async::{Read, Write};

use crate::error::{Error, ServerError};
use crate::protocol::{
    Expect, Grant, Kind, ProtocolError, Reply, Request, Secret, Signal, Status, is_push,
    parse_push, parse_reply, trim_cr,
};

/// Result type of connection methods.
pub type Result<T, E> = core::result::Result<T, Error<E>>;

/// Smallest line buffer a [`Connection`] accepts: room for any lock reply
/// (the longest is `ok <32-char token> <20-digit lease>`, 56 bytes).
///
/// The longest status a v2 cluster follower sends is
/// `error_not_leader <host:port>` with up to
/// [`MAX_LEADER_ADDR`](crate::MAX_LEADER_ADDR) bytes of address: 278 bytes
/// with its line end `\r\n`. A connection that may talk to a cluster follower
/// needs a line buffer of at least
/// [`cluster::CLUSTER_MIN_LINE_BUF`](crate::cluster::CLUSTER_MIN_LINE_BUF);
/// with less, such a reply is [`Error::LineTooLong`].
pub const MIN_LINE_BUF: usize = 64;

/// What an enqueue got: the lease at once, or a place in the queue. One
/// name at every layer: [`Connection::enqueue`] gives `Enqueued<Grant>`,
/// [`LockSpec::enqueue`](crate::lock::LockSpec::enqueue) gives
/// `Enqueued<Lease>`; the host APIs' `Enqueued` also holds the queued
/// connection for its `wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Enqueued<T = Grant> {
    /// Granted immediately (`acquired <token> <lease>`); no `wait` needed.
    Acquired(T),
    /// Queued (`queued`); collect the grant with `wait`.
    Queued,
}

/// Bounded FIFO of received `sig` pushes, stored as `[len: u32 LE][channel SP payload]`.
struct PushQueue<const P: usize> {
    buf: [u8; P],
    head: usize,
    tail: usize,
    len: usize,
    dropped: u64,
}

impl<const P: usize> PushQueue<P> {
    const fn new() -> Self {
        Self {
            buf: [0; P],
            head: 0,
            tail: 0,
            len: 0,
            dropped: 0,
        }
    }

    /// Stores `body` (`channel SP payload`), or counts it dropped when it
    /// does not fit. Never truncates.
    fn push(&mut self, body: &[u8]) {
        let need = 4 + body.len();
        if self.tail + need > P && self.head > 0 {
            shift_to_front(&mut self.buf, self.head, self.tail);
            self.tail -= self.head;
            self.head = 0;
        }
        if self.tail + need > P {
            self.dropped = self.dropped.saturating_add(1);
            warn!("signal dropped: push queue full ({} bytes)", P);
            return;
        }
        let len = body.len() as u32;
        self.buf[self.tail..self.tail + 4].copy_from_slice(&len.to_le_bytes());
        self.buf[self.tail + 4..self.tail + need].copy_from_slice(body);
        self.tail += need;
        self.len += 1;
    }

    fn pop(&mut self) -> Option<&[u8]> {
        if self.len == 0 {
            return None;
        }
        let mut len = [0u8; 4];
        len.copy_from_slice(&self.buf[self.head..self.head + 4]);
        let start = self.head + 4;
        let end = start + u32::from_le_bytes(len) as usize;
        self.len -= 1;
        if self.len == 0 {
            self.head = 0;
            self.tail = 0;
        } else {
            self.head = end;
        }
        Some(&self.buf[start..end])
    }
}

/// A dflockd connection over any `embedded_io_async` transport.
///
/// * `N` — the line buffer: the longest reply or push line it can hold
///   (at least [`MIN_LINE_BUF`]; 128 bytes fit every lock reply; signals
///   need room for `sig <channel> <payload>`). Requests are encoded into its
///   free tail, so one request is one `write` when it fits.
/// * `P` — bytes of queue for `sig` pushes that arrive while a reply is
///   awaited (0 for lock-only connections: every push is counted dropped).
///
/// Strictly one request is in flight; exactly one reply line is read for it,
/// with any pushes before it queued. Nothing is allocated; memory is
/// `N + P` bytes plus the transport and a few words of state.
///
/// # Cancel safety
///
/// Request methods are **not** cancel-safe: a future dropped after it began
/// writing leaves the request's reply unread, so the connection marks itself
/// unusable and every later call returns [`Error::Unusable`] (the server
/// releases what the connection held when it is closed).
/// [`next_signal`](Self::next_signal) is cancel-safe when the transport's
/// `read` is (tokio, embassy-net and the std adapter are): no push is lost.
pub struct Connection<T, const N: usize, const P: usize = 0> {
    io: T,
    buf: [u8; N],
    start: usize,
    end: usize,
    /// Set while a request is in flight and after any error that lost the
    /// framing; cleared when a reply was read and parsed.
    poisoned: bool,
    /// Skipping the rest of a push line longer than the buffer.
    discarding: bool,
    /// The leader address of the last reply if it was
    /// `error_not_leader <addr>`: its range in `buf` (empty when none;
    /// `u32` keeps the state within a few words on 64-bit hosts).
    /// Cleared before anything can overwrite those bytes.
    hint: (u32, u32),
    pushes: PushQueue<P>,
}

impl<T, const N: usize, const P: usize> core::fmt::Debug for Connection<T, N, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Connection")
            .field("line_buf", &N)
            .field("push_buf", &P)
            .field("buffered", &(self.end - self.start))
            .field("usable", &!self.poisoned)
            .field("queued_signals", &self.pushes.len)
            .field("dropped_signals", &self.pushes.dropped)
            .finish_non_exhaustive()
    }
}

/// Moves `buf[from..to]` to the front of `buf`, like `copy_within`, but in
/// non-overlapping `memcpy` steps: `copy_within` links `memmove`, which on
/// thumbv7em costs 1.5 KB of flash for this one use.
fn shift_to_front(buf: &mut [u8], from: usize, to: usize) {
    let len = to - from;
    let mut moved = 0;
    while moved < len {
        // Source and destination are `from` bytes apart: chunks of at most
        // `from` bytes never overlap.
        let chunk = from.min(len - moved);
        let (dst, src) = buf.split_at_mut(moved + from);
        dst[moved..moved + chunk].copy_from_slice(&src[..chunk]);
        moved += chunk;
    }
}

fn find_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

/// What a typed command's reply carried, by reply shape (the table in
/// [`Connection::exchange`]): owned, so it outlives the line buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value {
    /// `ok`.
    Unit,
    /// `ok <token> <lease>`, or `timeout` (`None`).
    Grant(Option<Grant>),
    /// `acquired <token> <lease>` or `queued`.
    Enqueued(Enqueued),
    /// `ok <n>`: seconds remaining, or deliveries.
    Number(u64),
}

/// The output a typed command picks out of a [`Value`]; any other shape is
/// [`ProtocolError::Unexpected`].
pub(crate) trait FromValue: Sized {
    fn from_value(value: Value) -> Option<Self>;

    /// The output of a request's result; any other shape is
    /// [`ProtocolError::Unexpected`].
    fn pick<E>(result: Result<Value, E>) -> Result<Self, E> {
        result.and_then(|v| Self::from_value(v).ok_or(Error::Protocol(ProtocolError::Unexpected)))
    }
}

impl FromValue for () {
    fn from_value(value: Value) -> Option<Self> {
        matches!(value, Value::Unit).then_some(())
    }
}

impl FromValue for Option<Grant> {
    fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::Grant(g) => Some(g),
            _ => None,
        }
    }
}

impl FromValue for Enqueued {
    fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::Enqueued(e) => Some(e),
            _ => None,
        }
    }
}

impl FromValue for u64 {
    fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::Number(n) => Some(n),
            _ => None,
        }
    }
}

/// The future of every typed command: the shared request future and a
/// by-type pick of its output. Hand-written, so a command adds no state
/// machine of its own.
struct Call<F, O, R = ()> {
    fut: F,
    /// For a non-lock command, an argument refused when the call was made
    /// (the shared future checks only lock requests): returned at the
    /// first poll, without polling `fut` (nothing is sent). `()` for the
    /// lock commands, which `send` checks, so their futures carry nothing.
    refused: R,
    out: PhantomData<fn() -> O>,
}

/// What a [`Call`] may have refused before it was first polled.
trait Refusal {
    fn take(&mut self) -> Option<crate::protocol::InvalidArgument>;
}

impl Refusal for () {
    fn take(&mut self) -> Option<crate::protocol::InvalidArgument> {
        None
    }
}

impl Refusal for Option<crate::protocol::InvalidArgument> {
    fn take(&mut self) -> Option<crate::protocol::InvalidArgument> {
        Option::take(self)
    }
}

impl<F, O, R, E> Future for Call<F, O, R>
where
    F: Future<Output = Result<Value, E>>,
    O: FromValue,
    R: Refusal,
{
    type Output = Result<O, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `fut` is structurally pinned: never moved out of `self`;
        // `refused` is plain data, never pinned; `Call` has no Drop impl
        // and is `Unpin` only when `F` is.
        let this = unsafe { self.get_unchecked_mut() };
        if let Some(refused) = this.refused.take() {
            return Poll::Ready(Err(refused.into()));
        }
        // SAFETY: as above; `this.fut` is never moved.
        let fut = unsafe { Pin::new_unchecked(&mut this.fut) };
        fut.poll(cx).map(O::pick)
    }
}

impl<T: Read + Write, const N: usize, const P: usize> Connection<T, N, P> {
    /// Wraps a connected transport. Sends nothing.
    pub const fn new(io: T) -> Self {
        const { assert!(N >= MIN_LINE_BUF, "line buffer must be at least 64 bytes") };
        Self {
            io,
            buf: [0; N],
            start: 0,
            end: 0,
            poisoned: false,
            discarding: false,
            hint: (0, 0),
            pushes: PushQueue::new(),
        }
    }

    /// Whether the connection can still carry requests.
    pub fn is_usable(&self) -> bool {
        !self.poisoned
    }

    /// The transport, e.g. to shut it down.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.io
    }

    /// Gives the transport back.
    pub fn into_inner(self) -> T {
        self.io
    }

    /// Signals dropped so far: the push queue was full, the line did not fit
    /// the line buffer, or the push was malformed.
    pub fn dropped_signals(&self) -> u64 {
        self.pushes.dropped
    }

    /// Signals received and waiting in the push queue.
    pub fn queued_signals(&self) -> usize {
        self.pushes.len
    }

    /// The leader address named by the last reply, when it was
    /// `error_not_leader <host:port>` (a v2 cluster follower; a hint that
    /// may be stale): the whole address, up to
    /// [`MAX_LEADER_ADDR`](crate::MAX_LEADER_ADDR) bytes, read in place
    /// from the line buffer (which needs
    /// [`CLUSTER_MIN_LINE_BUF`](crate::cluster::CLUSTER_MIN_LINE_BUF) bytes
    /// for the longest one). `None` after any other reply, and once the
    /// connection sends or reads again. `stats` replies are read into the
    /// caller's buffer and leave no hint.
    ///
    /// This is where `no_std` code finds the address: there
    /// [`ServerError::NotLeader`] only says that one was named (see
    /// [`LeaderAddr`](crate::LeaderAddr)), so that [`Error`] stays small.
    pub fn leader_hint(&self) -> Option<&str> {
        let (from, to) = (self.hint.0 as usize, self.hint.1 as usize);
        let bytes = self.buf.get(from..to).filter(|b| !b.is_empty())?;
        core::str::from_utf8(bytes).ok()
    }

    // ---- reading -------------------------------------------------------

    /// Reads more bytes into the free tail of the buffer.
    async fn fill(&mut self) -> Result<(), T::Error> {
        let n = self
            .io
            .read(&mut self.buf[self.end..])
            .await
            .map_err(Error::Io)?;
        if n == 0 {
            return Err(Error::Disconnected);
        }
        self.end += n;
        Ok(())
    }

    /// Makes room at the tail: resets an empty buffer, or moves unread bytes
    /// to the front when the tail is full.
    fn compact(&mut self) {
        self.hint = (0, 0);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == N && self.start > 0 {
            shift_to_front(&mut self.buf, self.start, self.end);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Finishes skipping a push line longer than the buffer whose start was
    /// read earlier (possibly by a cancelled
    /// [`wait_signal`](Self::wait_signal)): consumes it up to its newline
    /// and counts it dropped. Every read of a reply or push goes through
    /// here first, so no reader ever takes the tail of such a line for a
    /// line of its own.
    ///
    /// Cancel-safe if the transport's read is.
    async fn finish_discard(&mut self) -> Result<(), T::Error> {
        while self.discarding {
            if let Some(pos) = find_newline(&self.buf[self.start..self.end]) {
                self.start += pos + 1;
                self.discarding = false;
                self.pushes.dropped = self.pushes.dropped.saturating_add(1);
                warn!(
                    "signal dropped: push line longer than the {} byte buffer",
                    N
                );
                return Ok(());
            }
            self.start = self.end;
            self.compact();
            self.fill().await?;
        }
        Ok(())
    }

    /// Reads until a whole line is buffered and consumes it, returning its
    /// range (without `\n`). Push lines longer than the buffer are skipped
    /// and counted dropped; any other over-long line is `LineTooLong`.
    ///
    /// One `fill` await point (the buffer work is in [`scan_line`](Self::scan_line)):
    /// each await point would inline another copy of the transport's read.
    ///
    /// Cancel-safe if the transport's read is: the buffer's state is whole
    /// at the await point, and only a completed read adds to it.
    async fn read_line(&mut self) -> Result<(usize, usize), T::Error> {
        self.hint = (0, 0);
        let mut scanned = self.start;
        loop {
            if let Some(line) = self.scan_line(&mut scanned)? {
                return Ok(line);
            }
            self.fill().await?;
        }
    }

    /// The buffer side of [`read_line`](Self::read_line): finishes skipping
    /// an over-long push (possibly begun by a cancelled
    /// [`wait_signal`](Self::wait_signal)), then takes the next whole line
    /// if one is buffered; `None` when more bytes are needed (room for them
    /// made). `scanned`: bytes up to here hold no newline.
    fn scan_line(&mut self, scanned: &mut usize) -> Result<Option<(usize, usize)>, T::Error> {
        loop {
            if self.discarding {
                if let Some(pos) = find_newline(&self.buf[self.start..self.end]) {
                    self.start += pos + 1;
                    self.discarding = false;
                    self.pushes.dropped = self.pushes.dropped.saturating_add(1);
                    warn!(
                        "signal dropped: push line longer than the {} byte buffer",
                        N
                    );
                    *scanned = self.start;
                    continue;
                }
                self.start = self.end;
                self.compact();
                *scanned = self.end;
                return Ok(None);
            }
            let from = (*scanned).max(self.start);
            if let Some(pos) = find_newline(&self.buf[from..self.end]) {
                let nl = from + pos;
                let line_start = self.start;
                self.start = nl + 1;
                *scanned = self.start;
                return Ok(Some((line_start, nl)));
            }
            if self.end == N && self.start == 0 {
                if !is_push(&self.buf) {
                    self.poisoned = true;
                    return Err(Error::LineTooLong);
                }
                self.discarding = true;
                self.start = self.end;
                continue;
            }
            // Everything unread has been scanned: no newline in it.
            self.compact();
            *scanned = self.end;
            return Ok(None);
        }
    }

    /// Queues a push line (range into the buffer) or counts it dropped.
    fn accept_push(&mut self, start: usize, end: usize) {
        if P == 0 {
            // No push queue (a lock-only connection): every push is dropped,
            // well-formed or not, so none is parsed (a lock-only firmware
            // links no push parser).
            self.pushes.dropped = self.pushes.dropped.saturating_add(1);
            warn!("signal dropped: no push queue");
            return;
        }
        let line = &self.buf[start..end];
        // Exactly what parse_push accepts (it strips one CR) is queued.
        match parse_push(line) {
            Ok(sig) => {
                trace!("push on {}", sig.channel);
                self.pushes.push(&trim_cr(line)[4..]);
            }
            Err(_) => {
                self.pushes.dropped = self.pushes.dropped.saturating_add(1);
                warn!("malformed push dropped");
            }
        }
    }

    /// Reads the next reply line, queueing pushes that come first.
    async fn read_reply_line(&mut self) -> Result<(usize, usize), T::Error> {
        loop {
            let (s, e) = self.read_line().await?;
            if is_push(&self.buf[s..e]) {
                self.accept_push(s, e);
                continue;
            }
            return Ok((s, e));
        }
    }

    // ---- writing -------------------------------------------------------

    /// Validates and writes one request: a single `write` when it fits the
    /// buffer's free tail, else its three lines in pieces.
    ///
    /// Runs only the lock requests' checks
    /// ([`Request::validate_lock_shape`]): the callers of the other requests
    /// check those and trim the queue group first
    /// ([`Request::checked_other`]: [`request`](Self::request) and the
    /// typed commands do), so a lock-only firmware links none of the
    /// signal, auth or stable-ref checks.
    async fn send(&mut self, req: &Request<'_>) -> Result<(), T::Error> {
        self.hint = (0, 0);
        req.validate_lock_shape()?;
        if self.poisoned {
            return Err(Error::Unusable);
        }
        self.poisoned = true;
        trace!("send {} {}", req.command(), req.key());
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        // One `write_all` await point for both paths (each await point would
        // inline another copy of the transport's write): the whole request
        // from the buffer's free tail, or its lines piece by piece when it
        // does not fit (a long signal payload or token).
        let end = self.end;
        let fits = req.encode_unchecked(&mut self.buf[end..]).ok();
        let mut scratch = [0u8; crate::protocol::ARG_SCRATCH];
        let pieces = if fits.is_some() { 1 } else { 6 };
        for i in 0..pieces {
            let part: &[u8] = match (fits, i) {
                (Some(n), _) => &self.buf[end..end + n],
                (None, 0) => req.command().as_bytes(),
                (None, 2) => req.key().as_bytes(),
                (None, 4) => req.arg(&mut scratch),
                _ => b"\n",
            };
            self.io.write_all(part).await.map_err(Error::Io)?;
        }
        self.io.flush().await.map_err(Error::Io)
    }

    /// Sends `req` and reads its reply line, parsed for `expect`.
    ///
    /// The low-level primitive under every typed method: error statuses come
    /// back as [`Reply::Status`], not as `Err`. Pushes that arrive first are
    /// queued. Not cancel-safe (see the type's docs).
    pub async fn request(
        &mut self,
        req: &Request<'_>,
        expect: Expect,
    ) -> Result<Reply<'_>, T::Error> {
        let req = match req.checked_other() {
            Ok(req) => req,
            Err(e) => {
                self.hint = (0, 0);
                return Err(e.into());
            }
        };
        self.round_trip(&req, expect).await
    }

    /// [`request`](Self::request) once the request's non-lock arguments
    /// were checked (`send` checks the lock ones).
    async fn round_trip(
        &mut self,
        req: &Request<'_>,
        expect: Expect,
    ) -> Result<Reply<'_>, T::Error> {
        self.send(req).await?;
        let (s, e) = self.read_reply_line().await?;
        let reply = parse_reply(&self.buf[s..e], expect)?;
        if let Reply::Status(Status::NotLeader(Some(addr))) = reply {
            // `addr` is a subslice of `buf[s..e]`: keep its range.
            // (`leader_hint` checks the range again.)
            let from = (addr.as_ptr() as usize).wrapping_sub(self.buf.as_ptr() as usize);
            // A buffer beyond 4 GiB (never on a device) keeps no hint.
            if let (Ok(a), Ok(b)) = (
                u32::try_from(from),
                u32::try_from(from.wrapping_add(addr.len())),
            ) {
                self.hint = (a, b);
            }
        }
        // Framing is intact; only a closing server ends the session: after
        // `error_auth`, `error_draining`, and `error` to a line over 256
        // bytes from a server that caps every line there (v1.11 to v1.14;
        // v2 for `signal`).
        self.poisoned = match reply {
            Reply::Status(Status::Auth | Status::Draining) => true,
            Reply::Status(Status::Error) => req.has_long_line(),
            _ => false,
        };
        if let Reply::Status(status) = reply {
            debug!("{} {}: {}", req.command(), req.key(), status);
        }
        Ok(reply)
    }

    /// The one request state machine behind every typed command: sends
    /// `req`, reads its reply line, parses it for `expect` and turns it into
    /// an owned [`Value`] (error statuses become `Err`). Each typed method
    /// wraps this future in a [`Call`], a small hand-written future that
    /// picks its output out of the value, so the whole request path is one
    /// state machine per connection type instead of one per command and
    /// call site.
    pub(crate) async fn exchange(
        &mut self,
        req: Request<'_>,
        expect: Expect,
    ) -> Result<Value, T::Error> {
        match self.round_trip(&req, expect).await? {
            Reply::Ok => Ok(Value::Unit),
            Reply::Granted(g) => Ok(Value::Grant(Some(g))),
            Reply::Timeout => Ok(Value::Grant(None)),
            Reply::Acquired(g) => Ok(Value::Enqueued(Enqueued::Acquired(g))),
            Reply::Queued => Ok(Value::Enqueued(Enqueued::Queued)),
            Reply::Remaining(n) | Reply::Count(n) => Ok(Value::Number(n)),
            Reply::Status(Status::Auth) => Err(Error::Auth),
            Reply::Status(status) => Err(Error::Server(ServerError::from_status(status))),
            Reply::Stats(_) => Err(Error::Protocol(ProtocolError::Unexpected)),
        }
    }

    /// A typed lock command (or `ping`): the shared request future, its
    /// output picked by `O`; `send` checks the arguments.
    fn call<'c, O: FromValue>(
        &'c mut self,
        req: Request<'c>,
        expect: Expect,
    ) -> Call<impl Future<Output = Result<Value, T::Error>> + 'c, O> {
        Call {
            refused: (),
            fut: self.exchange(req, expect),
            out: PhantomData,
        }
    }

    /// A typed non-lock command: its arguments checked (and its queue
    /// group trimmed) now, then the shared request future.
    fn call_checked<'c, O: FromValue>(
        &'c mut self,
        req: Request<'c>,
        expect: Expect,
    ) -> Call<
        impl Future<Output = Result<Value, T::Error>> + 'c,
        O,
        Option<crate::protocol::InvalidArgument>,
    > {
        let (req, refused) = match req.checked_other() {
            Ok(checked) => (checked, None),
            Err(e) => (req, Some(e)),
        };
        Call {
            refused,
            fut: self.exchange(req, expect),
            out: PhantomData,
        }
    }

    // ---- typed commands --------------------------------------------------

    /// `auth`: authenticates with the server's shared token. Must be the
    /// first request on a server started with `--auth-token`.
    ///
    /// A wrong token is [`Error::Auth`]; the server then closes the
    /// connection. A token over 256 bytes needs a server with 64 KiB auth
    /// lines (v1.15+, v2); older ones answer `error` and close, which leaves
    /// this connection unusable. The token is never logged. Not cancel-safe.
    pub fn auth<'c>(
        &'c mut self,
        token: &'c str,
    ) -> impl Future<Output = Result<(), T::Error>> + 'c {
        self.call_checked(
            Request::Auth {
                token: Secret(token),
            },
            Expect::Ok,
        )
    }

    /// [`auth`](Self::auth) when a token is set, nothing otherwise: the
    /// step every adapter takes right after connecting (each bounds it with
    /// its own timeout). Not cancel-safe.
    pub(crate) async fn authenticate(&mut self, token: Option<&str>) -> Result<(), T::Error> {
        match token {
            Some(token) => self.auth(token).await,
            None => Ok(()),
        }
    }

    /// `l` / `sl`: acquires, letting the server block up to `timeout`
    /// seconds (0 = try once). `lease` is the TTL in seconds (`None` = the
    /// server's default).
    ///
    /// `Ok(None)` when the timeout passed without a grant. Not cancel-safe:
    /// a dropped future may leave a grant on the server, held until the
    /// connection closes or the lease expires.
    pub fn acquire<'c>(
        &'c mut self,
        kind: Kind,
        key: &'c str,
        timeout: u64,
        lease: Option<u64>,
    ) -> impl Future<Output = Result<Option<Grant>, T::Error>> + 'c {
        self.call(
            Request::Acquire {
                kind,
                key,
                timeout,
                lease,
            },
            Expect::Grant,
        )
    }

    /// `r` / `sr`: releases a held lease. [`ServerError::Error`] when this
    /// token does not hold the key (e.g. the lease expired). Not cancel-safe.
    pub fn release<'c>(
        &'c mut self,
        kind: Kind,
        key: &'c str,
        token: &'c crate::Token,
    ) -> impl Future<Output = Result<(), T::Error>> + 'c {
        self.call(Request::Release { kind, key, token }, Expect::Ok)
    }

    /// `n` / `sn`: renews a held lease, optionally with a new TTL. Returns
    /// the seconds remaining. [`ServerError::Error`] when the lease is no
    /// longer held (leases are never resurrected). Not cancel-safe.
    pub fn renew<'c>(
        &'c mut self,
        kind: Kind,
        key: &'c str,
        token: &'c crate::Token,
        lease: Option<u64>,
    ) -> impl Future<Output = Result<u64, T::Error>> + 'c {
        self.call(
            Request::Renew {
                kind,
                key,
                token,
                lease,
            },
            Expect::Remaining,
        )
    }

    /// `e` / `se`: joins the key's queue without blocking (two-phase, first
    /// half). Either the lease at once or [`Enqueued::Queued`]; then run
    /// your code and collect the grant with [`wait`](Self::wait) on this
    /// same connection. Not cancel-safe.
    pub fn enqueue<'c>(
        &'c mut self,
        kind: Kind,
        key: &'c str,
        lease: Option<u64>,
    ) -> impl Future<Output = Result<Enqueued, T::Error>> + 'c {
        self.call(Request::Enqueue { kind, key, lease }, Expect::Enqueue)
    }

    /// `w` / `sw`: waits up to `timeout` seconds for the grant of an earlier
    /// [`enqueue`](Self::enqueue) (two-phase, second half). `Ok(None)` on
    /// timeout, after which the server has forgotten the waiter. The lease
    /// starts when `wait` returns. Not cancel-safe.
    pub fn wait<'c>(
        &'c mut self,
        kind: Kind,
        key: &'c str,
        timeout: u64,
    ) -> impl Future<Output = Result<Option<Grant>, T::Error>> + 'c {
        self.call(Request::Wait { kind, key, timeout }, Expect::Grant)
    }

    /// `ping`: a keep-alive that resets the server's idle read timeout
    /// (v1.14+; older servers answer `error`). Not cancel-safe.
    pub fn ping(&mut self) -> impl Future<Output = Result<(), T::Error>> + '_ {
        self.call(Request::Ping, Expect::Ok)
    }

    /// `listen`: subscribes to `pattern` (`*` one token, `>` the rest),
    /// optionally in a queue group. Matching signals arrive as pushes; see
    /// [`next_signal`](Self::next_signal). The group is sent trimmed of
    /// surrounding whitespace, as the server trims it (`"g "` is `"g"`).
    /// Not cancel-safe.
    pub fn listen<'c>(
        &'c mut self,
        pattern: &'c str,
        group: Option<&'c str>,
    ) -> impl Future<Output = Result<(), T::Error>> + 'c {
        self.call_checked(Request::Listen { pattern, group }, Expect::Ok)
    }

    /// `unlisten`: drops the subscription made with the same pattern and
    /// group (`ok` also when there was none). Not cancel-safe.
    pub fn unlisten<'c>(
        &'c mut self,
        pattern: &'c str,
        group: Option<&'c str>,
    ) -> impl Future<Output = Result<(), T::Error>> + 'c {
        self.call_checked(Request::Unlisten { pattern, group }, Expect::Ok)
    }

    /// `signal`: publishes `payload` on the literal `channel` and returns
    /// how many deliveries the server made (each queue group counts once).
    /// Not cancel-safe.
    ///
    /// Payloads over 256 bytes ([`MAX_LINE`](crate::protocol::validate::MAX_LINE))
    /// need a server with 64 KiB payload lines (v1.15+); servers v1.11 to
    /// v1.14 and v2 (which has no signals) answer `error` and close the
    /// connection, which is then unusable ([`Error::Unusable`] for every
    /// later call).
    pub fn emit<'c>(
        &'c mut self,
        channel: &'c str,
        payload: &'c str,
    ) -> impl Future<Output = Result<u64, T::Error>> + 'c {
        self.call_checked(Request::Signal { channel, payload }, Expect::Count)
    }

    /// `stats`: reads the server's statistics JSON into `out` and returns it.
    ///
    /// The stats line grows with the number of keys, so its size is the
    /// caller's choice: a line longer than `out` is [`Error::LineTooLong`]
    /// (and the connection unusable). Not cancel-safe.
    pub async fn stats<'b>(&mut self, out: &'b mut [u8]) -> Result<&'b str, T::Error> {
        self.send(&Request::Stats).await?;
        // Skip pushes (and the rest of an over-long one) until the reply
        // line starts.
        loop {
            self.finish_discard().await?;
            while self.end - self.start < 4
                && find_newline(&self.buf[self.start..self.end]).is_none()
            {
                self.compact();
                self.fill().await?;
            }
            if !is_push(&self.buf[self.start..self.end]) {
                break;
            }
            match find_newline(&self.buf[self.start..self.end]) {
                Some(pos) => {
                    let (s, e) = (self.start, self.start + pos);
                    self.start = e + 1;
                    self.accept_push(s, e);
                }
                None if self.end == N && self.start == 0 => {
                    self.discarding = true;
                    self.start = self.end;
                }
                None => {
                    self.compact();
                    self.fill().await?;
                }
            }
        }
        // Stream the reply line into `out`.
        let mut len = 0;
        loop {
            let avail = &self.buf[self.start..self.end];
            let (take, done) = match find_newline(avail) {
                Some(p) => (p, true),
                None => (avail.len(), false),
            };
            let Some(dst) = out.get_mut(len..len + take) else {
                self.poisoned = true;
                return Err(Error::LineTooLong);
            };
            dst.copy_from_slice(&avail[..take]);
            len += take;
            if done {
                self.start += take + 1;
                break;
            }
            self.start = self.end;
            self.compact();
            self.fill().await?;
        }
        // parse_reply strips the one trailing CR itself.
        let line_len = trim_cr(&out[..len]).len();
        let reply = parse_reply(&out[..len], Expect::Stats)?;
        self.poisoned = matches!(reply, Reply::Status(Status::Auth | Status::Draining));
        let json_start = match reply {
            Reply::Stats(json) => line_len - json.len(),
            Reply::Status(Status::Auth) => return Err(Error::Auth),
            Reply::Status(status) => return Err(Error::Server(ServerError::from_status(status))),
            _ => return Err(Error::Protocol(ProtocolError::Unexpected)),
        };
        core::str::from_utf8(&out[json_start..line_len])
            .map_err(|_| Error::Protocol(ProtocolError::NotUtf8))
    }

    // ---- pushes ----------------------------------------------------------

    /// Takes the oldest queued signal without reading the transport.
    pub fn try_next_signal(&mut self) -> Option<Signal<'_>> {
        let body = self.pushes.pop()?;
        let text = core::str::from_utf8(body).ok()?;
        let (channel, payload) = text.split_once(' ')?;
        Some(Signal { channel, payload })
    }

    /// Waits for the next signal: the oldest queued one, else the next push
    /// read from the transport. Call it only while no request is in flight
    /// (a reply line here is a [`ProtocolError::Unsolicited`] error).
    ///
    /// Cancel-safe when the transport's `read` is: dropping the future loses
    /// no push, and the connection stays usable. Use it in a `select` with a
    /// timer to send heartbeats.
    pub async fn next_signal(&mut self) -> Result<Signal<'_>, T::Error> {
        self.wait_signal().await?;
        self.try_next_signal()
            .ok_or(Error::Protocol(ProtocolError::BadPush))
    }

    /// Waits until at least one signal is queued, reading pushes from the
    /// transport, and takes none: follow with
    /// [`try_next_signal`](Self::try_next_signal). Same rules and cancel
    /// safety as [`next_signal`](Self::next_signal); useful in a loop or a
    /// `select` where returning the borrowed [`Signal`] is awkward.
    pub async fn wait_signal(&mut self) -> Result<(), T::Error> {
        if self.poisoned {
            return Err(Error::Unusable);
        }
        while self.pushes.len == 0 {
            let (s, e) = self.read_line().await?;
            if !is_push(&self.buf[s..e]) {
                self.poisoned = true;
                return Err(Error::Protocol(ProtocolError::Unsolicited));
            }
            self.accept_push(s, e);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
