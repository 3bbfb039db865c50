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
use std::net::{SocketAddr, ToSocketAddrs};
use std::string::String;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError, TrySendError};
use std::time::Duration;
use std::vec::Vec;

use super::{
    BlockingTransport, ConnectOptions, HostConnection, HostStream, StdTimer, block_on, open_host,
    timeout_kind,
};
use crate::protocol::Request;
use crate::runtime::host::HostTls;
use crate::runtime::host::signal::{
    Cmd, Command, CommandResult, DEFAULT_PUSH_QUEUE, DEFAULT_SIGNAL_LINE_BUF, Link, Port,
    SignalOptions, Wake, boxed, run, send, signal_api,
};
use crate::runtime::host::sock::is_timeout;
use crate::time::{Instant, Timer};
use crate::{Connection, Error};

use super::Result;

type Reply = mpsc::SyncSender<CommandResult>;

/// Longest slice the connection's thread blocks in a read before it looks
/// at commands again.
const TICK: Duration = Duration::from_millis(20);

signal_api! {
    async: [],
    await: [],
    addr: impl ToSocketAddrs,
    addr_doc: "`host:port`; each resolved address is tried in turn; ",
    who: "thread",
    starts: "starts the connection's thread",
    links: [
        "[`BlockingConnection::connect`](crate::blocking::BlockingConnection::connect)",
        "[`BlockingConnection::connect_tls`](crate::blocking::BlockingConnection::connect_tls)",
    ],
    conn: "A blocking signal connection: an [`Iterator`] of [`Item`]s \
           (`Result<SignalEvent, Error>`).",
    try_recv: [],
    notes: { request: "Blocks for one round trip, at most the request timeout." },
}

impl SignalHandle {
    fn call(&self, cmd: Cmd) -> CommandResult {
        let (reply, rx) = mpsc::sync_channel(1);
        self.tx
            .send(Command(cmd.checked()?, reply))
            .map_err(|_| Error::Disconnected)?;
        rx.recv().map_err(|_| Error::Disconnected)?
    }
}

impl<const N: usize, const P: usize> SignalConn<N, P> {
    /// Waits at most `timeout` for the next item.
    /// [`RecvTimeoutError::Disconnected`] once the iterator has ended.
    pub fn recv_timeout(&self, timeout: Duration) -> core::result::Result<Item, RecvTimeoutError> {
        self.rx.recv_timeout(timeout)
    }

    /// [`connect`](Self::connect) or [`connect_tls`](Self::connect_tls)
    /// by the TLS choice: the constructor for callers that hold their
    /// servers, auth, TLS and timeouts once (the `Client`).
    pub(crate) fn connect_with(
        addr: impl ToSocketAddrs,
        connect_opts: &ConnectOptions,
        tls: Option<HostTls>,
        opts: SignalOptions,
    ) -> Result<Self> {
        let heartbeat = opts.check::<N, P>()?;
        let addr: Vec<_> = addr.to_socket_addrs().map_err(Error::Io)?.collect();
        let (tx, cmd_rx) = mpsc::channel();
        let (out, rx) = mpsc::sync_channel(opts.queue);
        let mut worker = Worker {
            addr,
            connect: connect_opts.clone(),
            tls,
            io_timeout: opts.io_timeout,
            cmd_rx,
            out,
        };
        let conn = block_on(worker.open::<N, P>())?;
        let dropped = Arc::default();
        let shared = Arc::clone(&dropped);
        std::thread::Builder::new()
            .name(String::from("dflockd-signals"))
            .spawn(move || block_on(run(worker, conn, heartbeat, opts.reconnect, shared)))
            .map_err(Error::Io)?;
        let handle = SignalHandle { tx, dropped };
        Ok(Self { rx, handle })
    }
}

impl<const N: usize, const P: usize> Iterator for SignalConn<N, P> {
    type Item = Item;

    /// Blocks until the next item; `None` once the stream has ended.
    fn next(&mut self) -> Option<Item> {
        self.rx.recv().ok()
    }
}

fn emit_over(
    addr: impl ToSocketAddrs,
    channel: &str,
    payload: &str,
    opts: &ConnectOptions,
    tls: Option<&HostTls>,
) -> Result<u64> {
    Request::Signal { channel, payload }.validate()?;
    HostConnection::<128, 0>::connect_host(addr, opts, tls)?.emit(channel, payload)
}

/// Bounds what follows (a request, or a wait for the socket) by one
/// deadline, `timeout` from now. No syscall on this crate's transports.
fn arm<const N: usize, const P: usize>(
    conn: &mut Connection<HostStream, N, P>,
    timeout: Duration,
) -> Result<()> {
    conn.transport_mut()
        .set_deadline(std::time::Instant::now().checked_add(timeout))
        .map_err(Error::Io)
}

/// The connection's thread: the blocking side of the shared signal loop.
/// Its futures block; `block_on` drives them.
type Worker = Link<Vec<SocketAddr>, mpsc::Receiver<Command<Reply>>, mpsc::SyncSender<Item>>;

impl Worker {
    /// A command if one comes within `dur`.
    fn command_within(&self, dur: Duration) -> Wake<Reply> {
        match self.cmd_rx.recv_timeout(dur) {
            Ok(cmd) => Wake::Command(cmd),
            Err(RecvTimeoutError::Timeout) => Wake::Progress,
            Err(RecvTimeoutError::Disconnected) => Wake::Closed,
        }
    }
}

impl Port for Worker {
    type Stream = HostStream;
    type Reply = Reply;
    type Timer = StdTimer;

    async fn open<const N: usize, const P: usize>(
        &mut self,
    ) -> Result<Box<Connection<HostStream, N, P>>> {
        let mut conn = boxed(open_host(&self.addr[..], &self.connect, self.tls.as_ref())?);
        arm(&mut conn, self.connect.io_timeout)?;
        conn.authenticate(self.connect.token())
            .await
            .map_err(timeout_kind)?;
        Ok(conn)
    }

    async fn request<const N: usize, const P: usize>(
        &mut self,
        conn: &mut Connection<HostStream, N, P>,
        req: Request<'_>,
    ) -> Result<u64> {
        arm(conn, self.io_timeout)?;
        send(conn, req).await.map_err(timeout_kind)
    }

    async fn wait<const N: usize, const P: usize>(
        &mut self,
        conn: Option<&mut Connection<HostStream, N, P>>,
        held: &mut Option<Item>,
        until: Option<Instant>,
    ) -> Wake<Reply> {
        // Commands first.
        match self.cmd_rx.try_recv() {
            Ok(cmd) => return Wake::Command(cmd),
            Err(TryRecvError::Disconnected) => return Wake::Closed,
            Err(TryRecvError::Empty) => {}
        }
        // Without a deadline, one slice.
        let left = until.map_or(TICK, |t| t.saturating_duration_since(StdTimer.now()));
        if left.is_zero() {
            return Wake::Progress;
        }
        // Hand over what was received; wait a slice for room if need be.
        if let Some(item) = held.take() {
            return match self.out.try_send(item) {
                // A consumer that is gone takes everything.
                Ok(()) | Err(TrySendError::Disconnected(_)) => Wake::Progress,
                Err(TrySendError::Full(back)) => {
                    *held = Some(back);
                    self.command_within(left.min(TICK))
                }
            };
        }
        let Some(conn) = conn else {
            return self.command_within(left);
        };
        // Wait a slice for the socket.
        let slice = left.clamp(Duration::from_millis(1), TICK);
        if let Err(e) = arm(conn, slice) {
            return Wake::Lost(e);
        }
        match conn.wait_signal().await {
            Ok(()) => Wake::Progress,
            // Nothing came in this slice; the connection is intact.
            Err(Error::Io(e)) if is_timeout(&e) => Wake::Progress,
            Err(e) => Wake::Lost(e),
        }
    }

    fn answer(reply: Reply, result: CommandResult) {
        let _ = reply.send(result);
    }
}
