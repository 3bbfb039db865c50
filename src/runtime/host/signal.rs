//! Signals (pub/sub) on hosts: a background task ([`tokio`](crate::tokio))
//! or thread ([`blocking`](crate::blocking)) owns the connection, keeps it alive with the
//! `ping` heartbeat, and hands received signals to a `Stream` or an
//! `Iterator`; cloneable handles listen, unlisten and emit from anywhere.
//!
//! Both hosts share the types here: the owned [`Signal`], the stream item
//! [`SignalEvent`], the [`SignalOptions`] and the optional
//! [`Reconnect`] policy; the public API, written once in `signal_api!`;
//! and the one loop, [`run`], that carries out what the core
//! [`SignalDriver`] decides. A runtime only supplies a [`Port`]:
//! connecting, a request within the request timeout, and one wait over its
//! command channel, the consumer's queue, the socket and the clock.
//!
//! # Delivery and drops
//!
//! Received signals wait in a bounded queue of [`SignalOptions::queue`]
//! signals. When it is full the host stops reading the socket (and still
//! runs commands and sends the heartbeat), so a
//! consumer that stops reading is, as on the server's side, soon dropped by
//! the server (its push buffer holds 64 lines); the stream then yields the
//! disconnect as an `Err` item instead of ending silently. Signals longer
//! than the line buffer `N` are counted in `dropped_signals()`, never
//! truncated; the count is kept over reconnects. When the connection is
//! lost, the signals it already received are delivered first, then the
//! error.
//!
//! # Reconnect
//!
//! Off by default. With [`SignalOptions::reconnect`] set, a lost connection
//! is reported as an `Err` item, then re-established with exponential
//! backoff ([`Reconnect::backoff`]; after `max_attempts` failures the last
//! error is yielded and the stream ends); every subscription is made again,
//! in the order it was first made, and the stream yields
//! [`SignalEvent::Reconnected`] with the length of the gap. Signals emitted
//! during the gap are lost (the server has no replay). While disconnected,
//! `listen` and `emit` fail at once with [`Error::Disconnected`];
//! `unlisten` succeeds and the subscription is not made again.

use std::boxed::Box;
use std::io;
use std::string::String;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::vec::Vec;

use core::time::Duration;

use embedded_io_async::{ErrorType, Read, Write};

use crate::protocol::{ProtocolError, Request};
pub use crate::signal::driver::Reconnect;
use crate::signal::driver::{
    Action, Admit, Outcome, SignalDriver, SubscriptionStore, keepalive_reply,
};
use crate::signal::{DEFAULT_HEARTBEAT, DEFAULT_READ_TIMEOUT, Heartbeat};
use crate::time::{Instant, Timer};
use crate::{ConfigError, Connection, Error};

type Result<T> = core::result::Result<T, Error<io::Error>>;

/// An item of a host signal stream.
pub type Item = Result<SignalEvent>;

/// Default line buffer of host signal connections: 4 KiB, room for
/// payloads up to about 4000 bytes. Use [`MAX_SIGNAL_LINE`] for any payload.
pub const DEFAULT_SIGNAL_LINE_BUF: usize = 4096;

/// A line buffer that fits every push the server can send (its 64 KiB line
/// cap plus the line end).
pub const MAX_SIGNAL_LINE: usize = crate::protocol::validate::MAX_LONG_LINE + 2;

/// Default bytes of the connection's own push queue, used for signals that
/// arrive while a reply is awaited or while the consumer is behind.
pub const DEFAULT_PUSH_QUEUE: usize = 16 * 1024;

/// A received signal, owned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Signal {
    /// The literal channel it was emitted on.
    pub channel: String,
    /// The payload, byte for byte.
    pub payload: String,
}

impl From<crate::Signal<'_>> for Signal {
    fn from(s: crate::Signal<'_>) -> Self {
        Self {
            channel: s.channel.into(),
            payload: s.payload.into(),
        }
    }
}

/// An item of a host signal stream (besides errors).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignalEvent {
    /// A signal arrived.
    Signal(Signal),
    /// The connection was lost and is back, with every subscription made
    /// again ([`SignalOptions::reconnect`] only). Signals emitted during
    /// the gap were not received.
    Reconnected {
        /// From noticing the loss to being subscribed again.
        gap: Duration,
        /// Connection attempts it took (1 = the first succeeded).
        attempts: u32,
    },
}

impl SignalEvent {
    /// The signal, if this is one.
    pub fn into_signal(self) -> Option<Signal> {
        match self {
            SignalEvent::Signal(s) => Some(s),
            SignalEvent::Reconnected { .. } => None,
        }
    }
}

/// Options of a host signal connection.
#[derive(Debug, Clone)]
pub struct SignalOptions {
    /// `ping` after this long without a request. Default 15 s; must be
    /// below [`read_timeout`](Self::read_timeout).
    pub heartbeat: Duration,
    /// The server's idle read timeout (`--read-timeout`). Default 23 s.
    pub read_timeout: Duration,
    /// Received signals held for the consumer (at least 1). Default 64.
    pub queue: usize,
    /// Longest wait for the reply to a request (listen, emit, ping) before
    /// the connection is given up as dead. Default 10 s.
    pub io_timeout: Duration,
    /// Automatic reconnect; `None` (the default) ends the stream after
    /// reporting the lost connection.
    pub reconnect: Option<Reconnect>,
}

impl Default for SignalOptions {
    fn default() -> Self {
        Self {
            heartbeat: DEFAULT_HEARTBEAT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            queue: 64,
            io_timeout: crate::lock::DEFAULT_IO_TIMEOUT,
            reconnect: None,
        }
    }
}

impl SignalOptions {
    /// Checks the options for a connection with line buffer `N` and push
    /// queue `P`: `P` holds a line (at compile time), the heartbeat is
    /// below the read timeout, the queue holds a signal, the request
    /// timeout is non-zero.
    pub(crate) fn check<const N: usize, const P: usize>(&self) -> Result<Heartbeat> {
        const {
            assert!(
                P >= N,
                "the push queue P must hold at least one line of N bytes"
            )
        };
        let hb = Heartbeat::new(self.heartbeat, self.read_timeout).map_err(|_| {
            ConfigError::new("heartbeat", "must be non-zero and below `read_timeout`")
        })?;
        if self.queue == 0 {
            return Err(ConfigError::new("queue", "must hold at least one signal").into());
        }
        if self.io_timeout.is_zero() {
            return Err(ConfigError::new("io_timeout", "must be non-zero").into());
        }
        Ok(hb)
    }
}

/// The public API of the host signal types, documented once and expanded
/// in the tokio adapter (`async`) and the blocking one (plain functions).
///
/// The expanding module provides `mpsc` (its channel module: `Sender`,
/// `Receiver`), `Reply`, `Result`, `ConnectOptions`, the private
/// `SignalHandle::call` (one command's round trip, the command checked
/// first with `Cmd::checked`),
/// `SignalConn::connect_with` and `emit_over` (one signal on a fresh
/// connection, checked first), and its own way to wait for an item.
/// `addr` is the address type, `who` where handles are used from, `links`
/// the adapter's `connect` and `connect_tls` (doc links), `conn` the first
/// paragraph of `SignalConn`'s doc, and the notes say what the adapter's
/// connect, requests and one-shot emit do on cancellation or how long
/// they block (the connect and emit notes are optional).
macro_rules! signal_api {
    (
        async: [$($async:tt)?],
        await: [$($await:tt)*],
        addr: $addr:ty,
        addr_doc: $addr_doc:literal,
        who: $who:literal,
        starts: $starts:literal,
        links: [$connect:literal, $connect_tls:literal $(,)?],
        conn: $conn:literal,
        try_recv: [$($mut:tt)?],
        notes: {
            $(connect: $connect_note:literal,)?
            request: $request:literal
            $(, emit: $emit:literal)? $(,)?
        } $(,)?
    ) => {
        pub use $crate::runtime::host::signal::Item;

        #[doc = concat!(
            "Listens, unlistens and emits through a [`SignalConn`]'s connection from any ",
            $who, ". Cheap to clone.",
        )]
        ///
        /// The connection stays open while the [`SignalConn`] or any handle lives.
        #[derive(Debug, Clone)]
        pub struct SignalHandle {
            tx: mpsc::Sender<$crate::runtime::host::signal::Command<Reply>>,
            dropped: std::sync::Arc<core::sync::atomic::AtomicU64>,
        }

        impl SignalHandle {
            /// Subscribes to `pattern` (`*` matches one dot-separated token, `>`
            /// one or more trailing tokens), optionally as a member of the queue
            /// `group` (each signal then goes to one member of the group, round
            /// robin). Listening twice on the same pattern and group is a no-op;
            /// groups are trimmed of surrounding whitespace, as the server trims
            /// them, so `"g "` and `"g"` are one group (also for `unlisten` and the
            /// subscriptions made again after a reconnect).
            ///
            /// The pattern and group are checked before anything is sent
            /// ([`Error::InvalidArgument`](crate::Error::InvalidArgument)). While a
            /// reconnect is under way this is [`Error::Disconnected`](crate::Error::Disconnected).
            ///
            #[doc = $request]
            pub $($async)? fn listen(&self, pattern: &str, group: Option<&str>) -> Result<()> {
                let cmd = Cmd::Listen(pattern.into(), group.map(Into::into));
                self.call(cmd)$($await)*.map(drop)
            }

            /// Drops the subscription made with the same pattern and group (`Ok`
            /// also when there was none, and at once while a reconnect is under way:
            /// the subscription is then not made again).
            ///
            #[doc = $request]
            pub $($async)? fn unlisten(&self, pattern: &str, group: Option<&str>) -> Result<()> {
                let cmd = Cmd::Unlisten(pattern.into(), group.map(Into::into));
                self.call(cmd)$($await)*.map(drop)
            }

            /// Publishes `payload` on the literal `channel`; returns the number of
            /// deliveries (each queue group counts once). A wildcard channel or an
            /// empty, blank or multi-line payload is
            /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) before
            /// anything is sent; while a reconnect is under way this is
            /// [`Error::Disconnected`](crate::Error::Disconnected).
            ///
            #[doc = $request]
            pub $($async)? fn emit(&self, channel: &str, payload: &str) -> Result<u64> {
                self.call(Cmd::Emit(channel.into(), payload.into()))$($await)*
            }

            /// Signals dropped so far, over every connection: the connection's
            /// queue was full, or a push was longer than the line buffer.
            pub fn dropped_signals(&self) -> u64 {
                self.dropped.load(core::sync::atomic::Ordering::Relaxed)
            }
        }

        #[doc = $conn]
        ///
        /// `N` is the line buffer: a signal whose `sig <channel> <payload>` line is
        /// longer is counted dropped (use [`MAX_SIGNAL_LINE`](super::MAX_SIGNAL_LINE)
        /// for 64 KiB payloads). `P` is the connection's own push queue in bytes:
        /// at least `N` (checked at compile time), where signals wait while a reply
        /// is awaited or the consumer is behind; for 64 KiB payloads use
        /// `SignalConn<MAX_SIGNAL_LINE, { 2 * MAX_SIGNAL_LINE }>`.
        ///
        /// The connection's owner reads signals into a queue of
        /// [`SignalOptions::queue`] items, sends the `ping` heartbeat, runs the
        /// commands of every [`SignalHandle`], and reconnects if
        /// [`SignalOptions::reconnect`] says so. Signals already received are
        /// delivered before the error that lost the connection; the items end after
        /// that error (unless reconnecting), or once every handle and the
        /// `SignalConn` are dropped, which closes the connection.
        #[derive(Debug)]
        pub struct SignalConn<
            const N: usize = DEFAULT_SIGNAL_LINE_BUF,
            const P: usize = DEFAULT_PUSH_QUEUE,
        > {
            rx: mpsc::Receiver<Item>,
            handle: SignalHandle,
        }

        impl<const N: usize, const P: usize> SignalConn<N, P> {
            #[doc = concat!(
                "Connects to `addr` (", $addr_doc,
                "authenticating when `connect` has a token) and ", $starts, ".",
            )]
            ///
            /// Errors: invalid options ([`Error::Config`](crate::Error::Config), e.g.
            /// a heartbeat not below the server read timeout), and everything
            #[doc = concat!($connect, " returns.")]
            ///
            $(#[doc = $connect_note])?
            pub $($async)? fn connect(
                addr: $addr,
                connect_opts: &ConnectOptions,
                opts: SignalOptions,
            ) -> Result<Self> {
                Self::connect_with(addr, connect_opts, None, opts)$($await)*
            }

            /// [`connect`](Self::connect) over TLS (feature `rustls`): the
            /// handshake is verified by `tls` (chain, validity period and the
            /// connector's server name) before `auth` and any subscription. A
            /// reconnect (see [`SignalOptions::reconnect`]) runs the same
            /// verification again.
            ///
            #[doc = concat!("Errors as ", $connect_tls, ": a certificate that fails verification")]
            /// is [`Error::Io`](crate::Error::Io) whose
            /// [`rustls_error`](crate::tls_rustls::rustls_error) tells why; a peer
            /// that does not speak TLS gives [`Error::Timeout`](crate::Error::Timeout)
            /// or [`Error::Io`](crate::Error::Io).
            ///
            $(#[doc = $connect_note])?
            #[cfg(feature = "rustls")]
            pub $($async)? fn connect_tls(
                addr: $addr,
                connect_opts: &ConnectOptions,
                tls: &$crate::runtime::host::rustls::RustlsConnector,
                opts: SignalOptions,
            ) -> Result<Self> {
                Self::connect_with(addr, connect_opts, Some(tls.clone()), opts)$($await)*
            }

            #[doc = concat!("A handle for listening and emitting from other ", $who, "s.")]
            pub fn handle(&self) -> SignalHandle {
                self.handle.clone()
            }

            /// The next item if one is ready, without waiting.
            pub fn try_recv(&$($mut)? self) -> Option<Item> {
                self.rx.try_recv().ok()
            }

            /// See [`SignalHandle::listen`].
            ///
            #[doc = $request]
            pub $($async)? fn listen(&self, pattern: &str, group: Option<&str>) -> Result<()> {
                self.handle.listen(pattern, group)$($await)*
            }

            /// See [`SignalHandle::unlisten`].
            ///
            #[doc = $request]
            pub $($async)? fn unlisten(&self, pattern: &str, group: Option<&str>) -> Result<()> {
                self.handle.unlisten(pattern, group)$($await)*
            }

            /// See [`SignalHandle::emit`].
            ///
            #[doc = $request]
            pub $($async)? fn emit(&self, channel: &str, payload: &str) -> Result<u64> {
                self.handle.emit(channel, payload)$($await)*
            }

            /// See [`SignalHandle::dropped_signals`].
            pub fn dropped_signals(&self) -> u64 {
                self.handle.dropped_signals()
            }
        }

        /// Publishes one signal on a fresh connection and closes it: for
        /// publishers that do not listen. Returns the number of deliveries.
        ///
        /// The channel and payload are checked before connecting; the
        /// connect is bounded by `opts.connect_timeout`, the reply by
        /// `opts.io_timeout`.
        $(#[doc = $emit])?
        pub $($async)? fn emit(
            addr: $addr,
            channel: &str,
            payload: &str,
            opts: &ConnectOptions,
        ) -> Result<u64> {
            emit_over(addr, channel, payload, opts, None)$($await)*
        }

        #[doc = concat!(
            "[`emit`] over TLS (feature `rustls`), verified by `tls` as ", $connect_tls, " does.",
        )]
        ///
        $(#[doc = $emit])?
        #[cfg(feature = "rustls")]
        pub $($async)? fn emit_tls(
            addr: $addr,
            channel: &str,
            payload: &str,
            opts: &ConnectOptions,
            tls: &$crate::runtime::host::rustls::RustlsConnector,
        ) -> Result<u64> {
            emit_over(addr, channel, payload, opts, Some(tls))$($await)*
        }
    };
}
pub(crate) use signal_api;

/// The subscriptions a reconnect makes again, in order (the driver decides
/// what goes in; groups arrive trimmed as the server trims them).
#[derive(Debug, Default)]
pub(crate) struct Subscriptions(Vec<(String, Option<String>)>);

impl SubscriptionStore for Subscriptions {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn get(&self, index: usize) -> Option<(&str, Option<&str>)> {
        self.0.get(index).map(|(p, g)| (p.as_str(), g.as_deref()))
    }
    fn push(&mut self, pattern: &str, group: Option<&str>) {
        self.0.push((pattern.into(), group.map(Into::into)));
    }
    fn remove(&mut self, index: usize) {
        self.0.remove(index);
    }
}

/// A copy of `e` for a second recipient (the stream, when a command's
/// caller gets the original).
fn dup_error(e: &Error<io::Error>) -> Error<io::Error> {
    match e {
        Error::Io(io) => Error::Io(io::Error::new(io.kind(), std::format!("{io}"))),
        Error::Timeout => Error::Timeout,
        Error::LineTooLong => Error::LineTooLong,
        Error::Protocol(p) => Error::Protocol(*p),
        Error::Server(s) => Error::Server(s.clone()),
        Error::Auth => Error::Auth,
        Error::Config(c) => Error::Config(*c),
        _ => Error::Disconnected,
    }
}

/// A request from a handle, checked before it is queued.
pub(crate) enum Cmd {
    Listen(String, Option<String>),
    Unlisten(String, Option<String>),
    Emit(String, String),
}

impl Cmd {
    /// The command, checked ([`Error::InvalidArgument`]) before it is
    /// queued: the one check of every handle's request.
    pub(crate) fn checked(self) -> Result<Self> {
        self.request().validate()?;
        Ok(self)
    }

    fn request(&self) -> Request<'_> {
        match self {
            Cmd::Listen(pattern, group) => Request::Listen {
                pattern,
                group: group.as_deref(),
            },
            Cmd::Unlisten(pattern, group) => Request::Unlisten {
                pattern,
                group: group.as_deref(),
            },
            Cmd::Emit(channel, payload) => Request::Signal { channel, payload },
        }
    }
}

/// A [`Cmd`] and where its answer goes: `()` for listen/unlisten, the
/// delivery count for emit (0 for the others).
pub(crate) struct Command<R>(pub(crate) Cmd, pub(crate) R);

/// The answer to a [`Command`].
pub(crate) type CommandResult = Result<u64>;

/// What each runtime's [`Port`] holds: where and how to (re)connect, the
/// request timeout, the handles' commands (`C`) and the consumer's queue
/// (`O`).
pub(crate) struct Link<A, C, O> {
    pub(crate) addr: A,
    pub(crate) connect: crate::runtime::ConnectOptions,
    /// Verifies every (re)connection when set.
    pub(crate) tls: Option<super::HostTls>,
    pub(crate) io_timeout: Duration,
    pub(crate) cmd_rx: C,
    pub(crate) out: O,
}

/// What a [`Port::wait`] ended with.
pub(crate) enum Wake<R> {
    /// A command from a handle.
    Command(Command<R>),
    /// Something moved (a signal arrived, the held item was handed over) or
    /// the time is up: ask the driver again.
    Progress,
    /// Every handle is gone: close.
    Closed,
    /// Reading the connection failed.
    Lost(Error<io::Error>),
}

/// What one runtime (a tokio task, a std thread) gives the shared signal
/// loop [`run`]: connecting, a request within the request timeout, and one
/// wait over its channels, the socket and the clock.
pub(crate) trait Port {
    /// The runtime's transport.
    type Stream: Read + Write + ErrorType<Error = io::Error>;
    /// Where a command's answer goes.
    type Reply;
    /// The runtime's clock.
    type Timer: Timer + Default;

    /// The time on the runtime's clock.
    fn now(&self) -> Instant {
        Self::Timer::default().now()
    }

    /// Sends a command's answer (a caller that gave up is ignored).
    fn answer(reply: Self::Reply, result: CommandResult);

    /// A new connection, authenticated, built in a box.
    async fn open<const N: usize, const P: usize>(
        &mut self,
    ) -> Result<Box<Connection<Self::Stream, N, P>>>;

    /// Runs `req` on `conn` within the request timeout ([`send`]).
    async fn request<const N: usize, const P: usize>(
        &mut self,
        conn: &mut Connection<Self::Stream, N, P>,
        req: Request<'_>,
    ) -> Result<u64>;

    /// Waits for the first of: a command; the consumer taking `held` (when
    /// set); a signal on `conn` (when given: never while an item is held);
    /// `until`. May also return [`Wake::Progress`] early.
    async fn wait<const N: usize, const P: usize>(
        &mut self,
        conn: Option<&mut Connection<Self::Stream, N, P>>,
        held: &mut Option<Item>,
        until: Option<Instant>,
    ) -> Wake<Self::Reply>;
}

/// Sends `req` (a signal request or the ping) on `conn` and reads its
/// reply (the ping's as [`keepalive_reply`] counts it).
pub(crate) async fn send<T: Read + Write, const N: usize, const P: usize>(
    conn: &mut Connection<T, N, P>,
    req: Request<'_>,
) -> core::result::Result<u64, Error<T::Error>> {
    match req {
        Request::Listen { pattern, group } => conn.listen(pattern, group).await.map(|()| 0),
        Request::Unlisten { pattern, group } => conn.unlisten(pattern, group).await.map(|()| 0),
        Request::Signal { channel, payload } => conn.emit(channel, payload).await,
        Request::Ping => keepalive_reply(conn.ping().await).map(|()| 0),
        // Never built by this module: nothing is sent.
        _ => Err(Error::Protocol(ProtocolError::Unexpected)),
    }
}

/// Builds a connection straight into a box, outside any future: its
/// buffers (up to 200 KB) never sit in the task's or thread's future.
#[inline(never)]
pub(crate) fn boxed<T: Read + Write, const N: usize, const P: usize>(
    stream: T,
) -> Box<Connection<T, N, P>> {
    Box::new(Connection::new(stream))
}

/// The connection's task or thread: carries out what the core
/// [`SignalDriver`] decides, on `conn` (already open) and its successors,
/// until the stream ends or every handle is gone; keeps the count of
/// dropped signals in `dropped` for the handles.
pub(crate) async fn run<R: Port, const N: usize, const P: usize>(
    port: R,
    conn: Box<Connection<R::Stream, N, P>>,
    heartbeat: Heartbeat,
    reconnect: Option<Reconnect>,
    dropped: Arc<AtomicU64>,
) {
    let mut state = Loop {
        driver: SignalDriver::new(heartbeat, reconnect, Subscriptions::default(), port.now()),
        port,
        conn,
        held: None,
        error: Error::Disconnected,
    };
    state.drive(&dropped).await;
}

/// What the signal loop ([`run`]) works with.
struct Loop<R: Port, const N: usize, const P: usize> {
    port: R,
    driver: SignalDriver<Subscriptions>,
    /// The connection; after a loss the lost one, until a new one is open.
    conn: Box<Connection<R::Stream, N, P>>,
    /// An item waiting for room in the consumer's queue.
    held: Option<Item>,
    /// The error to report: the one that lost the connection, or the last
    /// failed reconnect attempt's.
    error: Error<io::Error>,
}

impl<R: Port, const N: usize, const P: usize> Loop<R, N, P> {
    /// Carries out the driver's actions until it says `End` (`Some`) or
    /// every handle is gone (`None`).
    async fn drive(&mut self, dropped: &AtomicU64) -> Option<()> {
        loop {
            let all = self.driver.dropped(self.conn.dropped_signals());
            dropped.store(all, Ordering::Relaxed);
            match self.driver.poll(self.port.now()) {
                Action::Serve { heartbeat_at } => {
                    self.take_signal();
                    self.step(Some(heartbeat_at)).await?;
                }
                Action::Ping => {
                    let r = self.port.request(&mut self.conn, Request::Ping).await;
                    let outcome = Outcome::of(&r, self.conn.is_usable());
                    let (now, current) = (self.port.now(), self.conn.dropped_signals());
                    self.driver.completed(now, Request::Ping, outcome, current);
                    if let Err(e) = r {
                        self.error = e;
                    }
                }
                Action::Drain => {
                    self.take_signal();
                    if self.held.is_some() {
                        self.step(None).await?;
                    } else {
                        warn!("signal connection lost");
                        self.driver.drained();
                    }
                }
                // After giving up, `reported` changes nothing and the driver
                // says `End`.
                Action::ReportLost | Action::GiveUp => {
                    let error = core::mem::replace(&mut self.error, Error::Disconnected);
                    self.held = Some(Err(error));
                    while self.held.is_some() {
                        self.step(None).await?;
                    }
                    self.driver.reported(self.port.now());
                }
                Action::BackOff { until } => self.step(Some(until)).await?,
                Action::Connect { attempt } => match self.port.open::<N, P>().await {
                    Ok(new) => {
                        self.conn = new;
                        self.driver.connected(self.port.now());
                    }
                    Err(e) => {
                        debug!("reconnect attempt {} failed", attempt);
                        self.error = e;
                        self.driver.connect_failed(self.port.now());
                    }
                },
                Action::Resubscribe { pattern, group } => {
                    let req = Request::Listen { pattern, group };
                    let r = self.port.request(&mut self.conn, req).await;
                    let outcome = Outcome::of(&r, self.conn.is_usable());
                    if let Err(e) = r {
                        self.error = e;
                    }
                    self.driver.resubscribed(self.port.now(), outcome);
                }
                Action::Reconnected { gap, attempts } => {
                    debug!("signal connection back after {} attempts", attempts);
                    self.held = Some(Ok(SignalEvent::Reconnected { gap, attempts }));
                }
                Action::End => return Some(()),
            }
        }
    }

    /// Takes the next signal the connection received, unless an item is
    /// held already.
    fn take_signal(&mut self) {
        if self.held.is_none() {
            let next = self.conn.try_next_signal();
            self.held = next.map(|s| Ok(SignalEvent::Signal(s.into())));
        }
    }

    /// Waits once, until `until` at the latest, watching the socket only
    /// while connected and nothing is held (a full queue stops reading),
    /// and takes in what came: a command (the driver runs or refuses it),
    /// the lost connection, the held item handed over. `None` when every
    /// handle is gone.
    async fn step(&mut self, until: Option<Instant>) -> Option<()> {
        let watch = self.driver.is_connected() && self.held.is_none();
        let conn = watch.then_some(&mut *self.conn);
        match self.port.wait(conn, &mut self.held, until).await {
            Wake::Command(cmd) => self.execute(cmd).await,
            Wake::Progress => {}
            Wake::Closed => return None,
            Wake::Lost(e) => {
                self.driver
                    .lost(self.port.now(), self.conn.dropped_signals());
                self.error = e;
            }
        }
        Some(())
    }

    /// Runs (or refuses) a command and answers it; when it lost the
    /// connection, a copy of its error is the one to report.
    async fn execute(&mut self, Command(cmd, reply): Command<R::Reply>) {
        let req = cmd.request();
        let result = match self.driver.admit(self.port.now(), req) {
            Admit::Send => self.port.request(&mut self.conn, req).await,
            Admit::Done => Ok(0),
            Admit::Refuse => Err(Error::Disconnected),
        };
        let outcome = Outcome::of(&result, self.conn.is_usable());
        let (now, current) = (self.port.now(), self.conn.dropped_signals());
        if self.driver.completed(now, req, outcome, current)
            && let Err(e) = &result
        {
            self.error = dup_error(e);
        }
        R::answer(reply, result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked() {
        assert!(SignalOptions::default().check::<1, 1>().is_ok());
        let bad = SignalOptions {
            heartbeat: Duration::from_secs(30),
            ..SignalOptions::default()
        };
        assert!(matches!(bad.check::<1, 1>(), Err(Error::Config(c)) if c.option == "heartbeat"));
        let bad = SignalOptions {
            queue: 0,
            ..SignalOptions::default()
        };
        assert!(matches!(bad.check::<1, 1>(), Err(Error::Config(c)) if c.option == "queue"));
        let bad = SignalOptions {
            io_timeout: Duration::ZERO,
            ..SignalOptions::default()
        };
        assert!(matches!(bad.check::<1, 1>(), Err(Error::Config(c)) if c.option == "io_timeout"));
    }
}
