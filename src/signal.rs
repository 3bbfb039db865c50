//! Signals (pub/sub) on the `no_std` core: subscriptions, a bounded queue
//! of received signals with a drop counter, and a `ping` heartbeat driven by
//! the caller's [`Timer`].
//!
//! ```no_run
//! # async fn demo<T: embedded_io_async::Read + embedded_io_async::Write>(
//! #     io: T, timer: impl dflockd_client::time::Timer,
//! # ) -> Result<(), dflockd_client::Error<T::Error>> {
//! use dflockd_client::Connection;
//! use dflockd_client::signal::SignalConn;
//!
//! // 512-byte line buffer, 2 KiB of queue for received signals.
//! let mut sigs = SignalConn::new(Connection::<_, 512, 2048>::new(io), timer);
//! sigs.listen("orders.>", None).await?;
//! sigs.listen("jobs", Some("workers")).await?; // queue group
//! let delivered = sigs.emit("orders.eu.created", r#"{"id":42}"#).await?;
//! loop {
//!     let sig = sigs.next().await?; // pings every 15 s while idle
//!     // sig.channel, sig.payload
//! #   let _ = (delivered, sig); break;
//! }
//! # Ok(()) }
//! ```
//!
//! # Delivery, queueing and drops
//!
//! `sig` pushes are queued by the [`Connection`] in its `P`-byte push
//! queue, also while a reply is awaited (a push may arrive before the reply
//! to the `emit` that caused it; no reply is ever lost behind pushes). A
//! signal that does not fit — the queue is full, or the push line is longer
//! than the `N`-byte line buffer — is counted in
//! [`dropped_signals`](SignalConn::dropped_signals), never truncated.
//!
//! # Heartbeat
//!
//! The server closes a connection that sends nothing for its read timeout
//! (23 s by default), and pushes do not count. [`SignalConn::next`] and
//! [`SignalConn::wait`] therefore send a `ping` whenever the connection has
//! sent nothing for the [`Heartbeat`] interval (15 s by default), which must
//! be below the server's read timeout.

use core::time::Duration;

use embassy_futures::select::{Either, select};
use embedded_io_async::{Read, Write};

use crate::conn::{Connection, Result};
use crate::error::Error;
use crate::protocol::{ProtocolError, Request, Signal};
use crate::time::{Instant, Timer};

pub mod driver;

use driver::{Keepalive, keepalive_reply};

/// Default heartbeat interval: a `ping` after 15 s without a request, as the
/// other dflockd clients do.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);

pub use crate::lock::DEFAULT_READ_TIMEOUT;

/// A heartbeat interval checked against the server's idle read timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Heartbeat {
    interval: Duration,
}

/// The heartbeat interval is zero, or not below the server's read timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct InvalidHeartbeat {
    /// The interval asked for.
    pub interval: Duration,
    /// The server read timeout it must stay below.
    pub read_timeout: Duration,
}

impl core::fmt::Display for InvalidHeartbeat {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "heartbeat interval {:?} must be non-zero and below the server read timeout {:?}",
            self.interval, self.read_timeout
        )
    }
}

impl core::error::Error for InvalidHeartbeat {}

impl Heartbeat {
    /// Every 15 s: below the server's default 23 s read timeout.
    pub const DEFAULT: Heartbeat = Heartbeat {
        interval: DEFAULT_HEARTBEAT,
    };

    /// A heartbeat every `interval`, which must be non-zero and strictly
    /// below `read_timeout` (the server's `--read-timeout`).
    pub const fn new(
        interval: Duration,
        read_timeout: Duration,
    ) -> core::result::Result<Self, InvalidHeartbeat> {
        if interval.is_zero() || interval.as_nanos() >= read_timeout.as_nanos() {
            return Err(InvalidHeartbeat {
                interval,
                read_timeout,
            });
        }
        Ok(Heartbeat { interval })
    }

    /// The interval.
    pub const fn interval(&self) -> Duration {
        self.interval
    }
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What [`SignalConn::wait`] woke up for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Wake {
    /// At least one signal is queued: take it with
    /// [`try_next`](SignalConn::try_next).
    Signal,
    /// The heartbeat is due: send it with
    /// [`keepalive`](SignalConn::keepalive).
    HeartbeatDue,
}

/// A signal (pub/sub) connection: a [`Connection`] plus the timer that
/// drives its heartbeat.
///
/// `N` is the line buffer (it must hold `sig <channel> <payload>` for the
/// largest signal you want; longer ones are counted dropped) and `P` the
/// bytes of queue for received signals (each takes its channel and payload
/// plus 5 bytes). Nothing is allocated.
///
/// Every request (listen, unlisten, emit, ping) counts as activity for the
/// heartbeat. Requests sent through [`connection_mut`](Self::connection_mut)
/// do not; the heartbeat then merely comes early.
pub struct SignalConn<T, Tm, const N: usize, const P: usize> {
    conn: Connection<T, N, P>,
    timer: Tm,
    keepalive: Keepalive,
}

impl<T, Tm, const N: usize, const P: usize> core::fmt::Debug for SignalConn<T, Tm, N, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SignalConn")
            .field("conn", &self.conn)
            .field("keepalive", &self.keepalive)
            .finish_non_exhaustive()
    }
}

impl<T: Read + Write, Tm: Timer, const N: usize, const P: usize> SignalConn<T, Tm, N, P> {
    /// Wraps a connected (and, if needed, authenticated) connection, with
    /// the default 15 s heartbeat. Sends nothing.
    pub fn new(conn: Connection<T, N, P>, timer: Tm) -> Self {
        Self::with_heartbeat(conn, timer, Heartbeat::DEFAULT)
    }

    /// Like [`new`](Self::new), with a heartbeat checked against the
    /// server's read timeout (see [`Heartbeat::new`]).
    pub fn with_heartbeat(conn: Connection<T, N, P>, timer: Tm, heartbeat: Heartbeat) -> Self {
        let keepalive = Keepalive::new(heartbeat, timer.now());
        Self {
            conn,
            timer,
            keepalive,
        }
    }

    /// The connection inside, e.g. to read its state.
    pub fn connection(&self) -> &Connection<T, N, P> {
        &self.conn
    }

    /// The connection inside, for requests not wrapped here.
    pub fn connection_mut(&mut self) -> &mut Connection<T, N, P> {
        &mut self.conn
    }

    /// Gives the connection back.
    pub fn into_inner(self) -> Connection<T, N, P> {
        self.conn
    }

    /// The heartbeat in use.
    pub fn heartbeat(&self) -> Heartbeat {
        self.keepalive.heartbeat()
    }

    /// Whether the connection can still carry requests.
    pub fn is_usable(&self) -> bool {
        self.conn.is_usable()
    }

    /// Signals dropped so far: the queue was full, or the push line did not
    /// fit the line buffer. Readable at any time.
    pub fn dropped_signals(&self) -> u64 {
        self.conn.dropped_signals()
    }

    /// Signals received and waiting in the queue.
    pub fn queued_signals(&self) -> usize {
        self.conn.queued_signals()
    }

    /// When the next heartbeat is due: the heartbeat interval after the
    /// last request sent.
    pub fn next_heartbeat(&self) -> Instant {
        self.keepalive.due()
    }

    fn sent(&mut self) {
        self.keepalive.sent(self.timer.now());
    }

    /// `listen`: subscribes to `pattern`, optionally as a member of the
    /// queue `group`. The pattern is checked before anything is sent (`*`
    /// and `>` must be whole dot-separated tokens, `>` only last): a bad one
    /// is [`Error::InvalidArgument`] and the connection stays usable.
    /// Listening twice on the same pattern and group is a no-op.
    ///
    /// Signals that arrive before the reply are queued. Not cancel-safe: if
    /// the future is dropped after sending, the connection is unusable.
    pub async fn listen(&mut self, pattern: &str, group: Option<&str>) -> Result<(), T::Error> {
        Request::Listen { pattern, group }.validate()?;
        self.sent();
        self.conn.listen(pattern, group).await
    }

    /// `unlisten`: drops the subscription with the same pattern and group
    /// (`Ok` also when there was none). Signals already queued stay queued.
    /// Checked before sending like [`listen`](Self::listen). Not
    /// cancel-safe: if dropped after sending, the connection is unusable.
    pub async fn unlisten(&mut self, pattern: &str, group: Option<&str>) -> Result<(), T::Error> {
        Request::Unlisten { pattern, group }.validate()?;
        self.sent();
        self.conn.unlisten(pattern, group).await
    }

    /// `signal`: publishes `payload` on the literal `channel` and returns
    /// the number of deliveries (each queue group counts once). A wildcard
    /// channel or an empty, blank or multi-line payload is
    /// [`Error::InvalidArgument`] before anything is sent.
    ///
    /// If this connection listens on `channel`, its own push may arrive
    /// before the reply; it is queued. Not cancel-safe: if dropped after
    /// sending, the connection is unusable.
    pub async fn emit(&mut self, channel: &str, payload: &str) -> Result<u64, T::Error> {
        Request::Signal { channel, payload }.validate()?;
        self.sent();
        self.conn.emit(channel, payload).await
    }

    /// Sends the heartbeat `ping` now. A server older than v1.14 answers
    /// `error`, which is fine: the bytes reset its idle timer all the same.
    ///
    /// Not cancel-safe: if dropped after sending, the connection is
    /// unusable.
    pub async fn keepalive(&mut self) -> Result<(), T::Error> {
        self.sent();
        keepalive_reply(self.conn.ping().await)
    }

    /// Waits until a signal is queued or the heartbeat is due, sending
    /// nothing. For hosts that multiplex the connection with other work
    /// (send the heartbeat with [`keepalive`](Self::keepalive), take signals
    /// with [`try_next`](Self::try_next)).
    ///
    /// Cancel-safe when the transport's `read` is: dropping the future loses
    /// no signal and leaves the connection usable.
    pub async fn wait(&mut self) -> Result<Wake, T::Error> {
        if self.conn.queued_signals() > 0 {
            return Ok(Wake::Signal);
        }
        let due = self.keepalive.due();
        if self.timer.now() >= due {
            return Ok(Wake::HeartbeatDue);
        }
        match select(self.conn.wait_signal(), self.timer.sleep_until(due)).await {
            Either::First(r) => r.map(|()| Wake::Signal),
            Either::Second(()) => Ok(Wake::HeartbeatDue),
        }
    }

    /// Takes the oldest queued signal without reading the transport.
    pub fn try_next(&mut self) -> Option<Signal<'_>> {
        self.conn.try_next_signal()
    }

    /// Waits for the next signal, sending a `ping` heartbeat whenever the
    /// connection has been quiet for the heartbeat interval.
    ///
    /// The server closing the connection (for instance because this client
    /// read too slowly and its push buffer overflowed) is
    /// [`Error::Disconnected`] or [`Error::Io`].
    ///
    /// Cancel safety: cancel-safe while it waits (no signal is lost); if it
    /// is dropped while a heartbeat `ping` is in flight (one round trip every
    /// interval), the connection becomes unusable. Hosts that must cancel at
    /// any time use [`wait`](Self::wait) and [`keepalive`](Self::keepalive).
    pub async fn next(&mut self) -> Result<Signal<'_>, T::Error> {
        loop {
            match self.wait().await? {
                Wake::Signal => break,
                Wake::HeartbeatDue => self.keepalive().await?,
            }
        }
        self.conn
            .try_next_signal()
            .ok_or(Error::Protocol(ProtocolError::BadPush))
    }
}

#[cfg(test)]
mod tests;
