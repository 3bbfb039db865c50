//! Signals without an async runtime: a [`SignalConn`] is an `Iterator` of
//! signals, fed by a thread that owns the connection and sends the
//! heartbeat; [`SignalHandle`]s listen, unlisten and emit from any thread.
//!
//! ```no_run
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use dflockd_client::blocking::ConnectOptions;
//! use dflockd_client::blocking::SignalEvent;
//! use dflockd_client::blocking::SignalConn;
//!
//! let sigs: SignalConn =
//!     SignalConn::connect("127.0.0.1:6388", &ConnectOptions::default(), Default::default())?;
//! sigs.listen("orders.>", None)?;
//! let publisher = sigs.handle(); // Clone + Send: use it from other threads
//! std::thread::spawn(move || publisher.emit("orders.eu", "created 42"));
//! for item in sigs {
//!     match item? {
//!         SignalEvent::Signal(sig) => println!("{}: {}", sig.channel, sig.payload),
//!         other => println!("{other:?}"),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! The connection's thread waits for signals in slices of at most 20 ms,
//! so a command from a handle starts within about 20 ms.

use std::boxed::Box;
use std::io;
use std::net::ToSocketAddrs;
use std::string::String;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError, TrySendError};
use std::time::{Duration, Instant};

use super::{
    BlockingTransport, ConnectOptions, HostConnection, HostStream, StdTimer, block_on, open_host,
};
use crate::protocol::Request;
use crate::runtime::host::HostTls;
use crate::runtime::host::signal::{
    Command, CommandResult, DEFAULT_PUSH_QUEUE, DEFAULT_SIGNAL_LINE_BUF, SignalEvent,
    SignalOptions, Subscriptions, dup_error,
};
use crate::signal::Heartbeat;
use crate::time::Timer;
use crate::{Connection, Error};

use super::Result;

/// An item of the signal iterator.
pub type Item = Result<SignalEvent>;

type Core<const N: usize, const P: usize> = crate::signal::SignalConn<HostStream, StdTimer, N, P>;
type Reply = mpsc::SyncSender<CommandResult>;

/// Longest slice the connection's thread blocks in a read before it looks
/// at commands again.
const TICK: Duration = Duration::from_millis(20);

#[derive(Debug, Default)]
struct Shared {
    dropped_before: AtomicU64,
    dropped_now: AtomicU64,
}

/// Listens, unlistens and emits through a [`SignalConn`]'s connection from
/// any thread. Cheap to clone.
///
/// The connection stays open while the [`SignalConn`] or any handle lives.
#[derive(Debug, Clone)]
pub struct SignalHandle {
    tx: mpsc::Sender<Command<Reply>>,
    shared: Arc<Shared>,
}

impl SignalHandle {
    fn call(&self, cmd: impl FnOnce(Reply) -> Command<Reply>) -> CommandResult {
        let (reply, rx) = mpsc::sync_channel(1);
        self.tx.send(cmd(reply)).map_err(|_| Error::Disconnected)?;
        rx.recv().map_err(|_| Error::Disconnected)?
    }

    /// Subscribes to `pattern` (`*` matches one dot-separated token, `>`
    /// one or more trailing tokens), optionally as a member of the queue
    /// `group` (each signal then goes to one member of the group, round
    /// robin). Listening twice on the same pattern and group is a no-op;
    /// groups are trimmed of surrounding whitespace, as the server trims
    /// them, so `"g "` and `"g"` are one group (also for `unlisten` and the
    /// subscriptions made again after a reconnect).
    ///
    /// Checked before anything is sent ([`Error::InvalidArgument`]). While
    /// a reconnect is under way this is [`Error::Disconnected`]. Blocks for
    /// one round trip, at most the request timeout.
    pub fn listen(&self, pattern: &str, group: Option<&str>) -> Result<()> {
        Request::Listen { pattern, group }.validate()?;
        self.call(|reply| Command::Listen {
            pattern: pattern.into(),
            group: group.map(Into::into),
            reply,
        })
        .map(drop)
    }

    /// Drops the subscription made with the same pattern and group (`Ok`
    /// also when there was none).
    pub fn unlisten(&self, pattern: &str, group: Option<&str>) -> Result<()> {
        Request::Unlisten { pattern, group }.validate()?;
        self.call(|reply| Command::Unlisten {
            pattern: pattern.into(),
            group: group.map(Into::into),
            reply,
        })
        .map(drop)
    }

    /// Publishes `payload` on the literal `channel`; returns the number of
    /// deliveries (each queue group counts once). A wildcard channel or an
    /// empty, blank or multi-line payload is [`Error::InvalidArgument`]
    /// before anything is sent.
    pub fn emit(&self, channel: &str, payload: &str) -> Result<u64> {
        Request::Signal { channel, payload }.validate()?;
        self.call(|reply| Command::Emit {
            channel: channel.into(),
            payload: payload.into(),
            reply,
        })
    }

    /// Signals dropped so far, over every connection: the connection's
    /// queue was full, or a push was longer than the line buffer.
    pub fn dropped_signals(&self) -> u64 {
        self.shared.dropped_before.load(Ordering::Relaxed)
            + self.shared.dropped_now.load(Ordering::Relaxed)
    }
}

/// A blocking signal connection: an [`Iterator`] of [`Item`]s
/// (`Result<SignalEvent, Error>`).
///
/// `N` is the line buffer: a signal whose `sig <channel> <payload>` line is
/// longer is counted dropped (use [`MAX_SIGNAL_LINE`](super::MAX_SIGNAL_LINE)
/// for 64 KiB payloads). `P` is the connection's own push queue in bytes:
/// at least `N` (checked at compile time), where signals wait while a reply
/// is awaited or the consumer is behind; for 64 KiB payloads use
/// `SignalConn<MAX_SIGNAL_LINE, { 2 * MAX_SIGNAL_LINE }>`.
///
/// A thread owns the connection: it reads signals into a queue of
/// [`SignalOptions::queue`] items, sends the `ping` heartbeat, and runs the
/// commands of every [`SignalHandle`]. The iterator ends after the error
/// that lost the connection (unless reconnecting), or when every handle and
/// the `SignalConn` are dropped, which closes the connection and ends the
/// thread.
#[derive(Debug)]
pub struct SignalConn<const N: usize = DEFAULT_SIGNAL_LINE_BUF, const P: usize = DEFAULT_PUSH_QUEUE>
{
    rx: mpsc::Receiver<Item>,
    handle: SignalHandle,
}

impl<const N: usize, const P: usize> SignalConn<N, P> {
    /// Connects to `addr` (`host:port`; each resolved address is tried in
    /// turn; authenticating when `connect` has a token) and starts the
    /// connection's thread.
    ///
    /// Errors: invalid options ([`Error::Io`] with
    /// [`InvalidInput`](io::ErrorKind::InvalidInput), e.g. a heartbeat not
    /// below the server read timeout), and everything
    /// [`BlockingConnection::connect`](crate::blocking::BlockingConnection::connect)
    /// returns.
    pub fn connect(
        addr: impl ToSocketAddrs,
        connect_opts: &ConnectOptions,
        opts: SignalOptions,
    ) -> Result<Self> {
        Self::start(addr, connect_opts, None, opts)
    }

    /// [`connect`](Self::connect) over TLS (feature `rustls`): the
    /// handshake is verified by `tls` (chain, validity period and the
    /// connector's server name) before `auth` and any subscription. A
    /// reconnect (see [`SignalOptions::reconnect`]) runs the same
    /// verification again.
    ///
    /// Errors as [`BlockingConnection::connect_tls`](crate::blocking::BlockingConnection::connect_tls):
    /// a certificate that fails verification is [`Error::Io`] whose
    /// [`rustls_error`](crate::tls_rustls::rustls_error) tells
    /// why; a peer that does not speak TLS gives [`Error::Timeout`] or
    /// [`Error::Io`].
    #[cfg(feature = "rustls")]
    pub fn connect_tls(
        addr: impl ToSocketAddrs,
        connect_opts: &ConnectOptions,
        tls: &crate::runtime::host::rustls::RustlsConnector,
        opts: SignalOptions,
    ) -> Result<Self> {
        Self::start(addr, connect_opts, Some(tls.clone()), opts)
    }

    fn start(
        addr: impl ToSocketAddrs,
        connect_opts: &ConnectOptions,
        tls: Option<HostTls>,
        opts: SignalOptions,
    ) -> Result<Self> {
        const {
            assert!(
                P >= N,
                "the push queue P must hold at least one line of N bytes"
            )
        };
        let heartbeat = opts.check()?;
        let addrs: std::vec::Vec<_> = addr.to_socket_addrs().map_err(Error::Io)?.collect();
        let core = open::<N, P>(&addrs, connect_opts, tls.as_ref(), heartbeat)?;
        let (tx, cmd_rx) = mpsc::channel();
        let (out, rx) = mpsc::sync_channel(opts.queue);
        let shared = Arc::new(Shared::default());
        let mut worker = Worker {
            addrs,
            connect: connect_opts.clone(),
            tls,
            opts,
            heartbeat,
            cmd_rx,
            out,
            shared: shared.clone(),
            subs: Subscriptions::default(),
            held: None,
        };
        std::thread::Builder::new()
            .name(String::from("dflockd-signals"))
            .spawn(move || worker.run(core))
            .map_err(Error::Io)?;
        Ok(Self {
            rx,
            handle: SignalHandle { tx, shared },
        })
    }

    /// A handle for listening and emitting from other threads.
    pub fn handle(&self) -> SignalHandle {
        self.handle.clone()
    }

    /// Waits at most `timeout` for the next item.
    /// [`RecvTimeoutError::Disconnected`] once the iterator has ended.
    pub fn recv_timeout(&self, timeout: Duration) -> core::result::Result<Item, RecvTimeoutError> {
        self.rx.recv_timeout(timeout)
    }

    /// The next item if one is ready, without waiting.
    pub fn try_recv(&self) -> Option<Item> {
        self.rx.try_recv().ok()
    }

    /// See [`SignalHandle::listen`].
    pub fn listen(&self, pattern: &str, group: Option<&str>) -> Result<()> {
        self.handle.listen(pattern, group)
    }

    /// See [`SignalHandle::unlisten`].
    pub fn unlisten(&self, pattern: &str, group: Option<&str>) -> Result<()> {
        self.handle.unlisten(pattern, group)
    }

    /// See [`SignalHandle::emit`].
    pub fn emit(&self, channel: &str, payload: &str) -> Result<u64> {
        self.handle.emit(channel, payload)
    }

    /// See [`SignalHandle::dropped_signals`].
    pub fn dropped_signals(&self) -> u64 {
        self.handle.dropped_signals()
    }
}

impl<const N: usize, const P: usize> Iterator for SignalConn<N, P> {
    type Item = Item;

    /// Blocks until the next item; `None` once the stream has ended.
    fn next(&mut self) -> Option<Item> {
        self.rx.recv().ok()
    }
}

/// Publishes one signal on a fresh connection and closes it: for
/// publishers that do not listen. Returns the number of deliveries. The
/// channel and payload are checked before connecting.
pub fn emit(
    addr: impl ToSocketAddrs,
    channel: &str,
    payload: &str,
    opts: &ConnectOptions,
) -> Result<u64> {
    Request::Signal { channel, payload }.validate()?;
    HostConnection::<128, 0>::connect_host(addr, opts, None)?.emit(channel, payload)
}

/// [`emit`] over TLS (feature `rustls`), verified by `tls` as
/// [`BlockingConnection::connect_tls`](crate::blocking::BlockingConnection::connect_tls)
/// does.
#[cfg(feature = "rustls")]
pub fn emit_tls(
    addr: impl ToSocketAddrs,
    channel: &str,
    payload: &str,
    opts: &ConnectOptions,
    tls: &crate::runtime::host::rustls::RustlsConnector,
) -> Result<u64> {
    Request::Signal { channel, payload }.validate()?;
    HostConnection::<128, 0>::connect_host(addr, opts, Some(tls))?.emit(channel, payload)
}

fn timeout_kind(e: Error<io::Error>) -> Error<io::Error> {
    match e {
        Error::Io(e) if is_timeout(&e) => Error::Timeout,
        e => e,
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn open<const N: usize, const P: usize>(
    addrs: &[std::net::SocketAddr],
    opts: &ConnectOptions,
    tls: Option<&HostTls>,
    heartbeat: Heartbeat,
) -> Result<Box<Core<N, P>>> {
    let mut stream = open_host(addrs, opts, tls)?;
    stream
        .set_deadline(std::time::Instant::now().checked_add(opts.io_timeout))
        .map_err(Error::Io)?;
    let mut core = Box::new(Core::with_heartbeat(
        Connection::new(stream),
        StdTimer,
        heartbeat,
    ));
    if let Some(token) = &opts.auth_token {
        block_on(core.connection_mut().auth(token.expose())).map_err(timeout_kind)?;
    }
    Ok(core)
}

/// Runs a request with one deadline, the request timeout from now, for all
/// of it.
macro_rules! request {
    ($worker:ident, $core:ident, $fut:expr) => {
        arm($core, $worker.opts.io_timeout).and_then(|()| block_on($fut).map_err(timeout_kind))
    };
}

enum Exit {
    Closed,
    Lost(Error<io::Error>),
}

struct Worker {
    addrs: std::vec::Vec<std::net::SocketAddr>,
    connect: ConnectOptions,
    /// Verifies every (re)connection when set.
    tls: Option<HostTls>,
    opts: SignalOptions,
    heartbeat: Heartbeat,
    cmd_rx: mpsc::Receiver<Command<Reply>>,
    out: mpsc::SyncSender<Item>,
    shared: Arc<Shared>,
    subs: Subscriptions,
    /// A signal taken from the connection, waiting for room in `out`.
    held: Option<Item>,
}

impl Worker {
    fn run<const N: usize, const P: usize>(&mut self, mut core: Box<Core<N, P>>) {
        loop {
            let lost = match self.serve(&mut core) {
                Exit::Closed => return,
                Exit::Lost(e) => e,
            };
            let lost_at = Instant::now();
            warn!("signal connection lost");
            self.shared
                .dropped_before
                .fetch_add(core.dropped_signals(), Ordering::Relaxed);
            self.shared.dropped_now.store(0, Ordering::Relaxed);
            // Signals already received are still delivered, before the error.
            if let Some(held) = self.held.take()
                && !self.deliver(held)
            {
                return;
            }
            while let Some(sig) = core.try_next() {
                let item = Ok(SignalEvent::Signal(sig.into()));
                if !self.deliver(item) {
                    return;
                }
            }
            if !self.deliver(Err(lost)) {
                return;
            }
            let Some(policy) = self.opts.reconnect.clone() else {
                return;
            };
            let mut attempts = 0u32;
            core = loop {
                attempts = attempts.saturating_add(1);
                if !self.idle_for(policy.backoff(attempts)) {
                    return;
                }
                match self.reopen::<N, P>() {
                    Ok(core) => break core,
                    Err(e) if policy.gives_up_after(attempts) => {
                        self.deliver(Err(e));
                        return;
                    }
                    Err(_) => debug!("reconnect attempt {} failed", attempts),
                }
            };
            debug!(
                "signal connection re-established after {} attempts",
                attempts
            );
            // Handed over by `serve`, which runs commands meanwhile.
            self.held = Some(Ok(SignalEvent::Reconnected {
                gap: lost_at.elapsed(),
                attempts,
            }));
        }
    }

    fn reopen<const N: usize, const P: usize>(&mut self) -> Result<Box<Core<N, P>>> {
        let mut core = open::<N, P>(
            &self.addrs,
            &self.connect,
            self.tls.as_ref(),
            self.heartbeat,
        )?;
        arm(&mut core, self.opts.io_timeout)?;
        for (pattern, group) in self.subs.iter() {
            arm(&mut core, self.opts.io_timeout)?;
            block_on(core.listen(pattern, group)).map_err(timeout_kind)?;
        }
        Ok(core)
    }

    /// Offers `item` to the consumer without blocking; gives it back when
    /// the consumer's queue is full. A dropped consumer takes everything.
    fn offer(&self, item: Item) -> Option<Item> {
        match self.out.try_send(item) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => None,
            Err(TrySendError::Full(item)) => Some(item),
        }
    }

    /// Hands `item` to the consumer while disconnected, answering commands
    /// meanwhile. `false` when every handle is gone.
    fn deliver(&mut self, item: Item) -> bool {
        let mut item = item;
        loop {
            match self.offer(item) {
                None => return true,
                Some(back) => item = back,
            }
            match self.cmd_rx.recv_timeout(TICK) {
                Ok(cmd) => refuse(&mut self.subs, cmd),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
    }

    /// Waits `dur` while disconnected, answering commands. `false` when
    /// every handle is gone.
    fn idle_for(&mut self, dur: Duration) -> bool {
        let until = Instant::now() + dur;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            match self.cmd_rx.recv_timeout(left) {
                Ok(cmd) => refuse(&mut self.subs, cmd),
                Err(RecvTimeoutError::Timeout) => return true,
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
    }

    /// The connected phase: runs commands, moves signals to the consumer,
    /// sends heartbeats.
    fn serve<const N: usize, const P: usize>(&mut self, core: &mut Core<N, P>) -> Exit {
        loop {
            self.shared
                .dropped_now
                .store(core.dropped_signals(), Ordering::Relaxed);
            // Commands first.
            loop {
                match self.cmd_rx.try_recv() {
                    Ok(cmd) => {
                        if let Err(e) = self.execute(core, cmd) {
                            return Exit::Lost(e);
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return Exit::Closed,
                }
            }
            let until_heartbeat = core
                .next_heartbeat()
                .saturating_duration_since(StdTimer.now());
            if until_heartbeat.is_zero() {
                if let Err(e) = request!(self, core, core.keepalive()) {
                    return Exit::Lost(e);
                }
                continue;
            }
            // Hand over what was received; wait for room if need be.
            if let Some(item) = self.held.take() {
                if let Some(back) = self.offer(item) {
                    self.held = Some(back);
                    match self.cmd_rx.recv_timeout(until_heartbeat.min(TICK)) {
                        Ok(cmd) => {
                            if let Err(e) = self.execute(core, cmd) {
                                return Exit::Lost(e);
                            }
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return Exit::Closed,
                    }
                }
                continue;
            }
            if let Some(sig) = core.try_next() {
                let item = Ok(SignalEvent::Signal(sig.into()));
                self.held = Some(item);
                continue;
            }
            // Wait a slice for the socket.
            let slice = until_heartbeat.clamp(Duration::from_millis(1), TICK);
            if let Err(e) = arm(core, slice) {
                return Exit::Lost(e);
            }
            match block_on(core.connection_mut().wait_signal()) {
                Ok(()) => {}
                // Nothing came in this slice; the connection is intact.
                Err(Error::Io(e)) if is_timeout(&e) => {}
                Err(e) => return Exit::Lost(e),
            }
        }
    }

    /// Runs a command; `Err` when it lost the connection (its caller gets
    /// the error too).
    fn execute<const N: usize, const P: usize>(
        &mut self,
        core: &mut Core<N, P>,
        cmd: Command<Reply>,
    ) -> Result<()> {
        let (result, reply) = match cmd {
            Command::Listen {
                pattern,
                group,
                reply,
            } => {
                let r = request!(self, core, core.listen(&pattern, group.as_deref()));
                if r.is_ok() {
                    self.subs.add(&pattern, group.as_deref());
                }
                (r.map(|()| 0), reply)
            }
            Command::Unlisten {
                pattern,
                group,
                reply,
            } => {
                let r = request!(self, core, core.unlisten(&pattern, group.as_deref()));
                if r.is_ok() {
                    self.subs.remove(&pattern, group.as_deref());
                }
                (r.map(|()| 0), reply)
            }
            Command::Emit {
                channel,
                payload,
                reply,
            } => (request!(self, core, core.emit(&channel, &payload)), reply),
        };
        let fatal = match &result {
            Err(e) if !e.is_recoverable() || !core.is_usable() => Some(dup_error(e)),
            _ => None,
        };
        let _ = reply.send(result);
        fatal.map_or(Ok(()), Err)
    }
}

/// Bounds what follows (a request, or a wait for the socket) by one
/// deadline, `timeout` from now. No syscall on this crate's transports.
fn arm<const N: usize, const P: usize>(core: &mut Core<N, P>, timeout: Duration) -> Result<()> {
    core.connection_mut()
        .transport_mut()
        .set_deadline(std::time::Instant::now().checked_add(timeout))
        .map_err(Error::Io)
}

/// Answers a command while disconnected.
fn refuse(subs: &mut Subscriptions, cmd: Command<Reply>) {
    match cmd {
        Command::Unlisten {
            pattern,
            group,
            reply,
        } => {
            subs.remove(&pattern, group.as_deref());
            let _ = reply.send(Ok(0));
        }
        Command::Listen { reply, .. } | Command::Emit { reply, .. } => {
            let _ = reply.send(Err(Error::Disconnected));
        }
    }
}
