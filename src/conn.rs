//! The connection layer: one transport, one line buffer, one request in
//! flight, and `sig` pushes kept apart from replies.

use embedded_io_async::{Read, Write};

use crate::error::{Error, ServerError};
use crate::protocol::{
    Expect, Grant, Kind, ProtocolError, Reply, Request, Secret, Signal, Status, is_push,
    parse_push, parse_reply, trim_cr,
};

/// Result type of connection methods.
pub type Result<T, E> = core::result::Result<T, Error<E>>;

/// Smallest line buffer a [`Connection`] accepts: room for any lock reply.
pub const MIN_LINE_BUF: usize = 64;

/// What `enqueue` got: the lease at once, or a place in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Enqueued {
    /// Granted immediately (`acquired <token> <lease>`); no `wait` needed.
    Acquired(Grant),
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
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == N && self.start > 0 {
            shift_to_front(&mut self.buf, self.start, self.end);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Reads until a whole line is buffered and consumes it, returning its
    /// range (without `\n`). A push line longer than the buffer is skipped,
    /// counted dropped and reported as `None` (never followed into the next
    /// line: a caller that saw a push coming must not get the line after
    /// it); any other over-long line is `LineTooLong`.
    ///
    /// Cancel-safe if the transport's read is: state only changes after a
    /// read completed.
    async fn read_line(&mut self) -> Result<Option<(usize, usize)>, T::Error> {
        let mut scanned = self.start;
        loop {
            if let Some(pos) = find_newline(&self.buf[scanned..self.end]) {
                let nl = scanned + pos;
                let line_start = self.start;
                self.start = nl + 1;
                if self.discarding {
                    self.discarding = false;
                    self.pushes.dropped = self.pushes.dropped.saturating_add(1);
                    warn!(
                        "signal dropped: push line longer than the {} byte buffer",
                        N
                    );
                    return Ok(None);
                }
                return Ok(Some((line_start, nl)));
            }
            if self.discarding {
                self.start = self.end;
            } else if self.end == N && self.start == 0 {
                if !is_push(&self.buf) {
                    self.poisoned = true;
                    return Err(Error::LineTooLong);
                }
                self.discarding = true;
                self.start = self.end;
            }
            // Everything unread has been scanned: no newline in it.
            self.compact();
            scanned = self.end;
            self.fill().await?;
        }
    }

    /// Queues a push line (range into the buffer) or counts it dropped.
    fn accept_push(&mut self, start: usize, end: usize) {
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
            let Some((s, e)) = self.read_line().await? else {
                continue;
            };
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
    async fn send(&mut self, req: &Request<'_>) -> Result<(), T::Error> {
        req.validate()?;
        if self.poisoned {
            return Err(Error::Unusable);
        }
        self.poisoned = true;
        trace!("send {} {}", req.command(), req.key());
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let tail = &mut self.buf[self.end..];
        match req.encode_unchecked(tail) {
            Ok(n) => self.io.write_all(&tail[..n]).await.map_err(Error::Io)?,
            Err(_) => {
                let mut scratch = [0u8; crate::protocol::ARG_SCRATCH];
                let arg = req.arg(&mut scratch);
                for part in [req.command().as_bytes(), req.key().as_bytes(), arg] {
                    self.io.write_all(part).await.map_err(Error::Io)?;
                    self.io.write_all(b"\n").await.map_err(Error::Io)?;
                }
            }
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
        self.send(req).await?;
        let (s, e) = self.read_reply_line().await?;
        let reply = parse_reply(&self.buf[s..e], expect)?;
        // Framing is intact; only a closing server ends the session.
        self.poisoned = matches!(reply, Reply::Status(Status::Auth | Status::Draining));
        if let Reply::Status(status) = reply {
            debug!("{} {}: {}", req.command(), req.key(), status);
        }
        Ok(reply)
    }

    /// Like [`request`](Self::request), with error statuses turned into `Err`.
    async fn call(&mut self, req: &Request<'_>, expect: Expect) -> Result<Reply<'_>, T::Error> {
        match self.request(req, expect).await? {
            Reply::Status(Status::Auth) => Err(Error::Auth),
            Reply::Status(status) => Err(Error::Server(ServerError::from_status(status))),
            reply => Ok(reply),
        }
    }

    async fn call_ok(&mut self, req: &Request<'_>) -> Result<(), T::Error> {
        match self.call(req, Expect::Ok).await? {
            Reply::Ok => Ok(()),
            _ => Err(Error::Protocol(ProtocolError::Unexpected)),
        }
    }

    async fn call_grant(&mut self, req: &Request<'_>) -> Result<Option<Grant>, T::Error> {
        match self.call(req, Expect::Grant).await? {
            Reply::Granted(g) => Ok(Some(g)),
            Reply::Timeout => Ok(None),
            _ => Err(Error::Protocol(ProtocolError::Unexpected)),
        }
    }

    async fn call_u64(&mut self, req: &Request<'_>, expect: Expect) -> Result<u64, T::Error> {
        match self.call(req, expect).await? {
            Reply::Remaining(n) | Reply::Count(n) => Ok(n),
            _ => Err(Error::Protocol(ProtocolError::Unexpected)),
        }
    }

    // ---- typed commands --------------------------------------------------

    /// `auth`: authenticates with the server's shared token. Must be the
    /// first request on a server started with `--auth-token`.
    ///
    /// A wrong token is [`Error::Auth`]; the server then closes the
    /// connection. The token is never logged. Not cancel-safe.
    pub async fn auth(&mut self, token: &str) -> Result<(), T::Error> {
        self.call_ok(&Request::Auth {
            token: Secret(token),
        })
        .await
    }

    /// `l` / `sl`: acquires, letting the server block up to `timeout`
    /// seconds (0 = try once). `lease` is the TTL in seconds (`None` = the
    /// server's default).
    ///
    /// `Ok(None)` when the timeout passed without a grant. Not cancel-safe:
    /// a dropped future may leave a grant on the server, held until the
    /// connection closes or the lease expires.
    pub async fn acquire(
        &mut self,
        kind: Kind,
        key: &str,
        timeout: u64,
        lease: Option<u64>,
    ) -> Result<Option<Grant>, T::Error> {
        self.call_grant(&Request::Acquire {
            kind,
            key,
            timeout,
            lease,
        })
        .await
    }

    /// `r` / `sr`: releases a held lease. [`ServerError::Error`] when this
    /// token does not hold the key (e.g. the lease expired). Not cancel-safe.
    pub async fn release(
        &mut self,
        kind: Kind,
        key: &str,
        token: &crate::Token,
    ) -> Result<(), T::Error> {
        self.call_ok(&Request::Release { kind, key, token }).await
    }

    /// `n` / `sn`: renews a held lease, optionally with a new TTL. Returns
    /// the seconds remaining. [`ServerError::Error`] when the lease is no
    /// longer held (leases are never resurrected). Not cancel-safe.
    pub async fn renew(
        &mut self,
        kind: Kind,
        key: &str,
        token: &crate::Token,
        lease: Option<u64>,
    ) -> Result<u64, T::Error> {
        self.call_u64(
            &Request::Renew {
                kind,
                key,
                token,
                lease,
            },
            Expect::Remaining,
        )
        .await
    }

    /// `e` / `se`: joins the key's queue without blocking (two-phase, first
    /// half). Either the lease at once or [`Enqueued::Queued`]; then run
    /// your code and collect the grant with [`wait`](Self::wait) on this
    /// same connection. Not cancel-safe.
    pub async fn enqueue(
        &mut self,
        kind: Kind,
        key: &str,
        lease: Option<u64>,
    ) -> Result<Enqueued, T::Error> {
        match self
            .call(&Request::Enqueue { kind, key, lease }, Expect::Enqueue)
            .await?
        {
            Reply::Acquired(g) => Ok(Enqueued::Acquired(g)),
            Reply::Queued => Ok(Enqueued::Queued),
            _ => Err(Error::Protocol(ProtocolError::Unexpected)),
        }
    }

    /// `w` / `sw`: waits up to `timeout` seconds for the grant of an earlier
    /// [`enqueue`](Self::enqueue) (two-phase, second half). `Ok(None)` on
    /// timeout, after which the server has forgotten the waiter. The lease
    /// starts when `wait` returns. Not cancel-safe.
    pub async fn wait(
        &mut self,
        kind: Kind,
        key: &str,
        timeout: u64,
    ) -> Result<Option<Grant>, T::Error> {
        self.call_grant(&Request::Wait { kind, key, timeout }).await
    }

    /// `ping`: a keep-alive that resets the server's idle read timeout
    /// (v1.14+; older servers answer `error`). Not cancel-safe.
    pub async fn ping(&mut self) -> Result<(), T::Error> {
        self.call_ok(&Request::Ping).await
    }

    /// `listen`: subscribes to `pattern` (`*` one token, `>` the rest),
    /// optionally in a queue group. Matching signals arrive as pushes; see
    /// [`next_signal`](Self::next_signal). Not cancel-safe.
    pub async fn listen(&mut self, pattern: &str, group: Option<&str>) -> Result<(), T::Error> {
        self.call_ok(&Request::Listen { pattern, group }).await
    }

    /// `unlisten`: drops the subscription made with the same pattern and
    /// group (`ok` also when there was none). Not cancel-safe.
    pub async fn unlisten(&mut self, pattern: &str, group: Option<&str>) -> Result<(), T::Error> {
        self.call_ok(&Request::Unlisten { pattern, group }).await
    }

    /// `signal`: publishes `payload` on the literal `channel` and returns
    /// how many deliveries the server made (each queue group counts once).
    /// Not cancel-safe.
    pub async fn emit(&mut self, channel: &str, payload: &str) -> Result<u64, T::Error> {
        self.call_u64(&Request::Signal { channel, payload }, Expect::Count)
            .await
    }

    /// `stats`: reads the server's statistics JSON into `out` and returns it.
    ///
    /// The stats line grows with the number of keys, so its size is the
    /// caller's choice: a line longer than `out` is [`Error::LineTooLong`]
    /// (and the connection unusable). Not cancel-safe.
    pub async fn stats<'b>(&mut self, out: &'b mut [u8]) -> Result<&'b str, T::Error> {
        self.send(&Request::Stats).await?;
        // Skip pushes until the reply line starts.
        loop {
            while self.end - self.start < 4
                && find_newline(&self.buf[self.start..self.end]).is_none()
            {
                self.compact();
                self.fill().await?;
            }
            if !is_push(&self.buf[self.start..self.end]) {
                break;
            }
            // This push line only: an over-long one is dropped, and the
            // reply after it is streamed below, whatever its length.
            if let Some((s, e)) = self.read_line().await? {
                self.accept_push(s, e);
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
            let Some((s, e)) = self.read_line().await? else {
                continue;
            };
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
