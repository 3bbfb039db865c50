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
use std::string::String;
use std::sync::Arc;

use ::tokio::sync::{mpsc, oneshot};

use super::{ConnectOptions, HostStream, TokioTimer, connect_host, open_host, timeout};
use crate::Connection;
use crate::Error;
use crate::protocol::Request;
use crate::runtime::host::HostTls;
use crate::runtime::host::signal::{
    Cmd, Command, CommandResult, DEFAULT_PUSH_QUEUE, DEFAULT_SIGNAL_LINE_BUF, Link, Port,
    SignalOptions, Wake, boxed, run, send, signal_api,
};
use crate::time::{Instant, Timer};

use super::Result;

type Reply = oneshot::Sender<CommandResult>;

signal_api! {
    async: [async],
    await: [.await],
    addr: &str,
    addr_doc: "",
    who: "task",
    starts: "starts the background task on the current tokio runtime",
    links: ["[`connect`](crate::tokio::connect())", "[`connect_tls`](crate::tokio::connect_tls)"],
    conn: "A signal connection on tokio: a [`Stream`](futures_core::Stream) of \
           [`Item`]s (`Result<SignalEvent, Error>`), also readable with [`recv`](Self::recv).",
    try_recv: [mut],
    notes: {
        connect: "Cancel-safe: dropping the future closes the half-open connection.",
        request: "Cancel-safe: if the future is dropped, the request may still be made \
                  (the connection's task completes it; a dropped emit may still be \
                  published) and the connection stays usable.",
        emit: "Cancel-safe: a dropped future closes its connection (the signal may or \
               may not have been published).",
    },
}

impl SignalHandle {
    async fn call(&self, cmd: Cmd) -> CommandResult {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command(cmd.checked()?, reply))
            .await
            .map_err(|_| Error::Disconnected)?;
        rx.await.map_err(|_| Error::Disconnected)?
    }
}

impl<const N: usize, const P: usize> SignalConn<N, P> {
    /// Waits for the next item: a signal, a reconnect event, or the error
    /// that lost the connection. `None` once the stream has ended.
    ///
    /// Cancel-safe: no item is lost when the future is dropped.
    pub async fn recv(&mut self) -> Option<Item> {
        self.rx.recv().await
    }

    /// [`connect`](Self::connect) or [`connect_tls`](Self::connect_tls)
    /// by the TLS choice: the constructor for callers that hold their
    /// servers, auth, TLS and timeouts once (the `Client`).
    pub(crate) async fn connect_with(
        addr: &str,
        connect_opts: &ConnectOptions,
        tls: Option<HostTls>,
        opts: SignalOptions,
    ) -> Result<Self> {
        let heartbeat = opts.check::<N, P>()?;
        let (tx, cmd_rx) = mpsc::channel(16);
        let (out, rx) = mpsc::channel(opts.queue);
        let mut task = Task {
            addr: addr.into(),
            connect: connect_opts.clone(),
            tls,
            io_timeout: opts.io_timeout,
            cmd_rx,
            out,
        };
        let conn = task.open::<N, P>().await?;
        let dropped = Arc::default();
        let shared = Arc::clone(&dropped);
        ::tokio::spawn(run(task, conn, heartbeat, opts.reconnect, shared));
        let handle = SignalHandle { tx, dropped };
        Ok(Self { rx, handle })
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

async fn emit_over(
    addr: &str,
    channel: &str,
    payload: &str,
    opts: &ConnectOptions,
    tls: Option<&HostTls>,
) -> Result<u64> {
    Request::Signal { channel, payload }.validate()?;
    let mut conn = connect_host::<128, 0>(addr, opts, tls).await?;
    timeout(opts.io_timeout, conn.emit(channel, payload)).await
}

/// Waits for a signal on `conn`, or forever without one.
async fn readable<const N: usize, const P: usize>(
    conn: Option<&mut Connection<HostStream, N, P>>,
) -> Result<()> {
    match conn {
        Some(conn) => conn.wait_signal().await,
        None => core::future::pending().await,
    }
}

/// The connection's task: the tokio side of the shared signal loop.
type Task = Link<String, mpsc::Receiver<Command<Reply>>, mpsc::Sender<Item>>;

impl Port for Task {
    type Stream = HostStream;
    type Reply = Reply;
    type Timer = TokioTimer;

    fn answer(reply: Reply, result: CommandResult) {
        let _ = reply.send(result);
    }

    async fn open<const N: usize, const P: usize>(
        &mut self,
    ) -> Result<Box<Connection<HostStream, N, P>>> {
        // Not `runtime::tokio::connect`: its future holds the connection by
        // value; this one boxes it at once.
        let stream = open_host(&self.addr, &self.connect, self.tls.as_ref()).await?;
        let mut conn = boxed(stream);
        let auth = conn.authenticate(self.connect.token());
        timeout(self.connect.connect_timeout, auth).await?;
        Ok(conn)
    }

    async fn request<const N: usize, const P: usize>(
        &mut self,
        conn: &mut Connection<HostStream, N, P>,
        req: Request<'_>,
    ) -> Result<u64> {
        timeout(self.io_timeout, send(conn, req)).await
    }

    async fn wait<const N: usize, const P: usize>(
        &mut self,
        conn: Option<&mut Connection<HostStream, N, P>>,
        held: &mut Option<Item>,
        until: Option<Instant>,
    ) -> Wake<Reply> {
        let holding = held.is_some();
        ::tokio::select! {
            cmd = self.cmd_rx.recv() => match cmd {
                Some(cmd) => Wake::Command(cmd),
                None => Wake::Closed,
            },
            permit = self.out.reserve(), if holding => {
                // A consumer that is gone takes everything.
                if let (Ok(permit), Some(item)) = (permit, held.take()) {
                    permit.send(item);
                }
                Wake::Progress
            }
            r = readable(conn) => match r {
                Ok(()) => Wake::Progress,
                Err(e) => Wake::Lost(e),
            },
            () = TokioTimer.sleep_until(until.unwrap_or_default()), if until.is_some() => {
                Wake::Progress
            }
        }
    }
}
