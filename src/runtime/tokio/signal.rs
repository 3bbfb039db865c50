//! Signals on tokio: a [`SignalConn`] is a `Stream` of signals, fed by a
//! background task that owns the connection and sends the heartbeat;
//! [`SignalHandle`]s listen, unlisten and emit from any task.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use dflockd_client::tokio::SignalEvent;
//! use dflockd_client::tokio::SignalConn;
//! use dflockd_client::tokio::ConnectOptions;
//!
//! let mut sigs: SignalConn =
//!     SignalConn::connect("127.0.0.1:6388", &ConnectOptions::default(), Default::default())
//!         .await?;
//! sigs.listen("orders.>", None).await?;
//! let publisher = sigs.handle(); // Clone + Send: use it from other tasks
//! tokio::spawn(async move { publisher.emit("orders.eu", "created 42").await });
//! while let Some(item) = sigs.recv().await {
//!     match item? {
//!         SignalEvent::Signal(sig) => println!("{}: {}", sig.channel, sig.payload),
//!         other => println!("{other:?}"),
//!     }
//! }
//! # Ok(()) }
//! ```

use std::boxed::Box;
use std::io;
use std::string::String;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ::tokio::sync::{mpsc, oneshot};
use ::tokio::time::{Instant, sleep_until, timeout};

use super::{ConnectOptions, HostStream, TokioTimer, connect_host, open_host};
use crate::protocol::Request;
use crate::runtime::host::HostTls;
use crate::runtime::host::signal::{
    Command, CommandResult, DEFAULT_PUSH_QUEUE, DEFAULT_SIGNAL_LINE_BUF, SignalEvent,
    SignalOptions, Subscriptions, dup_error,
};
use crate::signal::{Heartbeat, Wake};
use crate::time::Timer;
use crate::{Connection, Error};

use super::Result;

/// An item of the signal stream.
pub type Item = Result<SignalEvent>;

type Core<const N: usize, const P: usize> = crate::signal::SignalConn<HostStream, TokioTimer, N, P>;
type Reply = oneshot::Sender<CommandResult>;

#[derive(Debug, Default)]
struct Shared {
    /// Signals dropped by earlier connections (before a reconnect).
    dropped_before: AtomicU64,
    /// Signals dropped by the current connection.
    dropped_now: AtomicU64,
}

/// Listens, unlistens and emits through a [`SignalConn`]'s connection from
/// any task. Cheap to clone.
///
/// The connection stays open while the [`SignalConn`] or any handle lives.
#[derive(Debug, Clone)]
pub struct SignalHandle {
    tx: mpsc::Sender<Command<Reply>>,
    shared: Arc<Shared>,
}

impl SignalHandle {
    async fn call(&self, cmd: impl FnOnce(Reply) -> Command<Reply>) -> CommandResult {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(cmd(reply))
            .await
            .map_err(|_| Error::Disconnected)?;
        rx.await.map_err(|_| Error::Disconnected)?
    }

    /// Subscribes to `pattern` (`*` matches one dot-separated token, `>`
    /// one or more trailing tokens), optionally as a member of the queue
    /// `group` (each signal then goes to one member of the group, round
    /// robin). Listening twice on the same pattern and group is a no-op;
    /// groups are trimmed of surrounding whitespace, as the server trims
    /// them, so `"g "` and `"g"` are one group (also for `unlisten` and the
    /// subscriptions made again after a reconnect).
    ///
    /// The pattern and group are checked before anything is sent
    /// ([`Error::InvalidArgument`]). While a reconnect is under way this is
    /// [`Error::Disconnected`].
    ///
    /// Cancel-safe: if the future is dropped, the request may still be made
    /// (the connection's task completes it) and the connection stays
    /// usable.
    pub async fn listen(&self, pattern: &str, group: Option<&str>) -> Result<()> {
        Request::Listen { pattern, group }.validate()?;
        self.call(|reply| Command::Listen {
            pattern: pattern.into(),
            group: group.map(Into::into),
            reply,
        })
        .await
        .map(drop)
    }

    /// Drops the subscription made with the same pattern and group (`Ok`
    /// also when there was none). Cancel-safe like [`listen`](Self::listen).
    pub async fn unlisten(&self, pattern: &str, group: Option<&str>) -> Result<()> {
        Request::Unlisten { pattern, group }.validate()?;
        self.call(|reply| Command::Unlisten {
            pattern: pattern.into(),
            group: group.map(Into::into),
            reply,
        })
        .await
        .map(drop)
    }

    /// Publishes `payload` on the literal `channel`; returns the number of
    /// deliveries (each queue group counts once). A wildcard channel or an
    /// empty, blank or multi-line payload is [`Error::InvalidArgument`]
    /// before anything is sent. Cancel-safe like [`listen`](Self::listen)
    /// (a dropped emit may still be published).
    pub async fn emit(&self, channel: &str, payload: &str) -> Result<u64> {
        Request::Signal { channel, payload }.validate()?;
        self.call(|reply| Command::Emit {
            channel: channel.into(),
            payload: payload.into(),
            reply,
        })
        .await
    }

    /// Signals dropped so far, over every connection: the connection's
    /// queue was full, or a push was longer than the line buffer.
    pub fn dropped_signals(&self) -> u64 {
        self.shared.dropped_before.load(Ordering::Relaxed)
            + self.shared.dropped_now.load(Ordering::Relaxed)
    }
}

/// A signal connection on tokio: a [`Stream`](futures_core::Stream) of
/// [`Item`]s (`Result<SignalEvent, Error>`), also readable with
/// [`recv`](Self::recv).
///
/// `N` is the line buffer: a signal whose `sig <channel> <payload>` line is
/// longer is counted dropped (use [`MAX_SIGNAL_LINE`](super::MAX_SIGNAL_LINE)
/// for 64 KiB payloads). `P` is the connection's own push queue in bytes:
/// at least `N` (checked at compile time), where signals wait while a reply
/// is awaited or the consumer is behind; for 64 KiB payloads use
/// `SignalConn<MAX_SIGNAL_LINE, { 2 * MAX_SIGNAL_LINE }>`.
///
/// A background task owns the connection: it reads signals into a queue of
/// [`SignalOptions::queue`] items, sends the `ping` heartbeat, and runs the
/// commands of every [`SignalHandle`]. The stream ends (`None`) after the
/// error that lost the connection (unless reconnecting), or once every
/// handle and the `SignalConn` are dropped, which closes the connection.
#[derive(Debug)]
pub struct SignalConn<const N: usize = DEFAULT_SIGNAL_LINE_BUF, const P: usize = DEFAULT_PUSH_QUEUE>
{
    rx: mpsc::Receiver<Item>,
    handle: SignalHandle,
}

impl<const N: usize, const P: usize> SignalConn<N, P> {
    /// Connects to `addr` (authenticating when `connect` has a token) and
    /// starts the background task on the current tokio runtime.
    ///
    /// Errors: invalid options ([`Error::Config`], e.g. a heartbeat not
    /// below the server read timeout), and everything
    /// [`connect`](crate::tokio::connect()) returns.
    ///
    /// Cancel-safe: dropping the future closes the half-open connection.
    pub async fn connect(
        addr: &str,
        connect_opts: &ConnectOptions,
        opts: SignalOptions,
    ) -> Result<Self> {
        Self::start(addr, connect_opts, None, opts).await
    }

    /// [`connect`](Self::connect) over TLS (feature `rustls`): the
    /// handshake is verified by `tls` (chain, validity period and the
    /// connector's server name) before `auth` and any subscription. A
    /// reconnect (see [`SignalOptions::reconnect`]) runs the same
    /// verification again.
    ///
    /// Errors as [`connect_tls`](crate::tokio::connect_tls): a
    /// certificate that fails verification is [`Error::Io`] whose
    /// [`rustls_error`](crate::tls_rustls::rustls_error) tells
    /// why; a peer that does not speak TLS gives [`Error::Timeout`] or
    /// [`Error::Io`].
    ///
    /// Cancel-safe: dropping the future closes the half-open connection.
    #[cfg(feature = "rustls")]
    pub async fn connect_tls(
        addr: &str,
        connect_opts: &ConnectOptions,
        tls: &crate::runtime::host::rustls::RustlsConnector,
        opts: SignalOptions,
    ) -> Result<Self> {
        Self::start(addr, connect_opts, Some(tls.clone()), opts).await
    }

    async fn start(
        addr: &str,
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
        let core = open::<N, P>(addr, connect_opts, tls.as_ref(), heartbeat).await?;
        let (tx, cmd_rx) = mpsc::channel(16);
        let (out, rx) = mpsc::channel(opts.queue);
        let shared = Arc::new(Shared::default());
        let task = Task {
            addr: addr.into(),
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
        ::tokio::spawn(task.run(core));
        Ok(Self {
            rx,
            handle: SignalHandle { tx, shared },
        })
    }

    /// A handle for listening and emitting from other tasks.
    pub fn handle(&self) -> SignalHandle {
        self.handle.clone()
    }

    /// Waits for the next item: a signal, a reconnect event, or the error
    /// that lost the connection. `None` once the stream has ended.
    ///
    /// Cancel-safe: no item is lost when the future is dropped.
    pub async fn recv(&mut self) -> Option<Item> {
        self.rx.recv().await
    }

    /// The next item if one is ready, without waiting.
    pub fn try_recv(&mut self) -> Option<Item> {
        self.rx.try_recv().ok()
    }

    /// See [`SignalHandle::listen`]; cancel-safe in the same way (the
    /// connection's task finishes a request it has started, and the
    /// connection stays usable).
    pub async fn listen(&self, pattern: &str, group: Option<&str>) -> Result<()> {
        self.handle.listen(pattern, group).await
    }

    /// See [`SignalHandle::unlisten`]; cancel-safe in the same way (the
    /// connection's task finishes a request it has started, and the
    /// connection stays usable).
    pub async fn unlisten(&self, pattern: &str, group: Option<&str>) -> Result<()> {
        self.handle.unlisten(pattern, group).await
    }

    /// See [`SignalHandle::emit`]; cancel-safe in the same way (the
    /// connection's task finishes a request it has started, and the
    /// connection stays usable).
    pub async fn emit(&self, channel: &str, payload: &str) -> Result<u64> {
        self.handle.emit(channel, payload).await
    }

    /// See [`SignalHandle::dropped_signals`].
    pub fn dropped_signals(&self) -> u64 {
        self.handle.dropped_signals()
    }
}

impl<const N: usize, const P: usize> futures_core::Stream for SignalConn<N, P> {
    type Item = Item;

    fn poll_next(
        mut self: core::pin::Pin<&mut Self>,
        cx: &mut core::task::Context<'_>,
    ) -> core::task::Poll<Option<Item>> {
        self.rx.poll_recv(cx)
    }
}

/// Publishes one signal on a fresh connection and closes it: for
/// publishers that do not listen. Returns the number of deliveries.
///
/// The channel and payload are checked before connecting. Cancel-safe: a
/// dropped future closes its connection (the signal may or may not have
/// been published).
pub async fn emit(addr: &str, channel: &str, payload: &str, opts: &ConnectOptions) -> Result<u64> {
    emit_over(addr, channel, payload, opts, None).await
}

/// [`emit`] over TLS (feature `rustls`), verified by `tls` as
/// [`connect_tls`](crate::tokio::connect_tls) does.
///
/// Cancel-safe as [`emit`]: a dropped future closes its connection (the
/// signal may or may not have been published).
#[cfg(feature = "rustls")]
pub async fn emit_tls(
    addr: &str,
    channel: &str,
    payload: &str,
    opts: &ConnectOptions,
    tls: &crate::runtime::host::rustls::RustlsConnector,
) -> Result<u64> {
    emit_over(addr, channel, payload, opts, Some(tls)).await
}

async fn emit_over(
    addr: &str,
    channel: &str,
    payload: &str,
    opts: &ConnectOptions,
    tls: Option<&HostTls>,
) -> Result<u64> {
    Request::Signal { channel, payload }.validate()?;
    let mut conn = connect_host::<128, 0>(addr, opts, tls).await?;
    timeout(opts.connect_timeout, conn.emit(channel, payload))
        .await
        .map_err(|_| Error::Timeout)?
}

async fn open<const N: usize, const P: usize>(
    addr: &str,
    opts: &ConnectOptions,
    tls: Option<&HostTls>,
    heartbeat: Heartbeat,
) -> Result<Box<Core<N, P>>> {
    // Not `runtime::tokio::connect`: its future holds the connection (and
    // its buffers, up to 200 KB here) by value; this one boxes it at once.
    let stream = open_host(addr, opts, tls).await?;
    let mut core = boxed_core::<N, P>(stream, heartbeat);
    if let Some(token) = &opts.auth_token {
        timeout(
            opts.connect_timeout,
            core.connection_mut().auth(token.expose()),
        )
        .await
        .map_err(|_| Error::Timeout)??;
    }
    Ok(core)
}

/// Builds the connection straight into a box, outside any future.
#[inline(never)]
fn boxed_core<const N: usize, const P: usize>(
    stream: HostStream,
    heartbeat: Heartbeat,
) -> Box<Core<N, P>> {
    Box::new(Core::with_heartbeat(
        Connection::new(stream),
        TokioTimer,
        heartbeat,
    ))
}

/// Why the connected phase ended.
enum Exit {
    /// Every handle is gone: close.
    Closed,
    /// The connection was lost.
    Lost(Error<io::Error>),
}

struct Task {
    addr: String,
    connect: ConnectOptions,
    /// Verifies every (re)connection when set.
    tls: Option<HostTls>,
    opts: SignalOptions,
    heartbeat: Heartbeat,
    cmd_rx: mpsc::Receiver<Command<Reply>>,
    out: mpsc::Sender<Item>,
    shared: Arc<Shared>,
    subs: Subscriptions,
    /// An event waiting for room in `out`, ahead of queued signals.
    held: Option<Item>,
}

impl Task {
    async fn run<const N: usize, const P: usize>(mut self, mut core: Box<Core<N, P>>) {
        loop {
            let lost = match self.serve(&mut core).await {
                Exit::Closed => return,
                Exit::Lost(e) => e,
            };
            let lost_at = Instant::now();
            warn!("signal connection lost");
            self.retire(&core);
            // What was received is still delivered, before the error.
            if let Some(held) = self.held.take()
                && !self.deliver(held).await
            {
                return;
            }
            while let Some(sig) = core.try_next() {
                let item = Ok(SignalEvent::Signal(sig.into()));
                if !self.deliver(item).await {
                    return;
                }
            }
            if !self.deliver(Err(lost)).await {
                return;
            }
            let Some(policy) = self.opts.reconnect.clone() else {
                return;
            };
            let mut attempts = 0u32;
            core = loop {
                attempts = attempts.saturating_add(1);
                if !self.idle_for(policy.backoff(attempts)).await {
                    return;
                }
                match self.reopen::<N, P>().await {
                    Ok(core) => break core,
                    Err(e) if policy.gives_up_after(attempts) => {
                        self.deliver(Err(e)).await;
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

    /// Moves the lost connection's drop count to the total.
    fn retire<const N: usize, const P: usize>(&self, core: &Core<N, P>) {
        self.shared
            .dropped_before
            .fetch_add(core.dropped_signals(), Ordering::Relaxed);
        self.shared.dropped_now.store(0, Ordering::Relaxed);
    }

    async fn reopen<const N: usize, const P: usize>(&mut self) -> Result<Box<Core<N, P>>> {
        let mut core =
            open::<N, P>(&self.addr, &self.connect, self.tls.as_ref(), self.heartbeat).await?;
        for (pattern, group) in self.subs.iter() {
            timeout(self.opts.io_timeout, core.listen(pattern, group))
                .await
                .map_err(|_| Error::Timeout)??;
        }
        Ok(core)
    }

    /// Hands `item` to the consumer, answering commands meanwhile as
    /// disconnected. `false` when every handle is gone.
    async fn deliver(&mut self, item: Item) -> bool {
        loop {
            ::tokio::select! {
                permit = self.out.reserve() => {
                    if let Ok(permit) = permit {
                        permit.send(item);
                    }
                    return true;
                }
                cmd = self.cmd_rx.recv() => match cmd {
                    Some(cmd) => refuse(&mut self.subs, cmd),
                    None => return false,
                },
            }
        }
    }

    /// Waits `dur` while disconnected, answering commands. `false` when
    /// every handle is gone.
    async fn idle_for(&mut self, dur: core::time::Duration) -> bool {
        let until = Instant::now() + dur;
        loop {
            ::tokio::select! {
                () = sleep_until(until) => return true,
                cmd = self.cmd_rx.recv() => match cmd {
                    Some(cmd) => refuse(&mut self.subs, cmd),
                    None => return false,
                },
            }
        }
    }

    /// The connected phase: runs commands, moves signals to the consumer,
    /// sends heartbeats.
    async fn serve<const N: usize, const P: usize>(&mut self, core: &mut Core<N, P>) -> Exit {
        loop {
            self.shared
                .dropped_now
                .store(core.dropped_signals(), Ordering::Relaxed);
            let due = core.next_heartbeat();
            let wake = if self.held.is_some() || core.queued_signals() > 0 {
                // An item waits for room in the consumer's queue.
                ::tokio::select! {
                    cmd = self.cmd_rx.recv() => match cmd {
                        Some(cmd) => Some(cmd),
                        None => return Exit::Closed,
                    },
                    permit = self.out.reserve() => {
                        let item = match self.held.take() {
                            Some(item) => Some(item),
                            None => core.try_next().map(|s| Ok(SignalEvent::Signal(s.into()))),
                        };
                        if let (Some(item), Ok(permit)) = (item, permit) {
                            permit.send(item);
                        }
                        continue;
                    }
                    () = Timer::sleep_until(&TokioTimer, due) => None,
                }
            } else {
                ::tokio::select! {
                    cmd = self.cmd_rx.recv() => match cmd {
                        Some(cmd) => Some(cmd),
                        None => return Exit::Closed,
                    },
                    wake = core.wait() => match wake {
                        Ok(Wake::Signal) => continue,
                        Ok(Wake::HeartbeatDue) => None,
                        Err(e) => return Exit::Lost(e),
                    },
                }
            };
            let result = match wake {
                Some(cmd) => self.execute(core, cmd).await,
                None => self.request(core.keepalive()).await,
            };
            if let Err(e) = result {
                return Exit::Lost(e);
            }
        }
    }

    /// Runs a request with the request timeout.
    async fn request<T>(&self, fut: impl Future<Output = Result<T>>) -> Result<T> {
        timeout(self.opts.io_timeout, fut)
            .await
            .map_err(|_| Error::Timeout)?
    }

    /// Runs a command; `Err` when it lost the connection (its caller gets
    /// the error too).
    async fn execute<const N: usize, const P: usize>(
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
                let r = self.request(core.listen(&pattern, group.as_deref())).await;
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
                let r = self
                    .request(core.unlisten(&pattern, group.as_deref()))
                    .await;
                if r.is_ok() {
                    self.subs.remove(&pattern, group.as_deref());
                }
                (r.map(|()| 0), reply)
            }
            Command::Emit {
                channel,
                payload,
                reply,
            } => (self.request(core.emit(&channel, &payload)).await, reply),
        };
        let fatal = match &result {
            Err(e) if !e.is_recoverable() || !core.is_usable() => Some(dup_error(e)),
            _ => None,
        };
        let _ = reply.send(result);
        fatal.map_or(Ok(()), Err)
    }
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
