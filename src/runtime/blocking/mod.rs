//! Blocking adapter: `std::net::TcpStream` driving the same async core with
//! a minimal block-on (no runtime, no threads).
//!
//! ```no_run
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use dflockd_client::Kind;
//! use dflockd_client::blocking::{BlockingConnection, ConnectOptions};
//!
//! let mut conn = BlockingConnection::<1024, 0>::connect("127.0.0.1:6388", &ConnectOptions::default())?;
//! if let Some(grant) = conn.acquire(Kind::Lock, "orders", 10, None)? {
//!     conn.release(Kind::Lock, "orders", &grant.token)?;
//! }
//! # Ok(()) }
//! ```

mod client;
mod cluster;
mod lock;
mod signal;

pub use self::client::{Client, ClientBuilder};
pub use self::cluster::{ClusterClient, ClusterGuard, ClusterLock, StdConnector};
pub use self::lock::{DistributedLock, DistributedSemaphore, Enqueued, LeaseGuard};
#[cfg(feature = "rustls")]
pub use self::signal::emit_tls;
pub use self::signal::{Item, SignalConn, SignalHandle, emit};
/// The names both host adapters share (the same types in `tokio` and
/// `blocking`).
pub use crate::runtime::host::shared::*;

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::runtime::host::sock::{Bounded, is_timeout, poll_until};
use crate::runtime::host::stream::on_arm;
use crate::runtime::host::{HostTls, timer_instant};
use crate::time::{Instant, Timer};
use crate::{Connection, Error, Grant, Kind, Token};

/// Runs a future to completion on the current thread, parking it while the
/// future is pending.
///
/// Allocation-free after the first call on a thread (the waker is cached
/// per thread), so request/reply cycles on an established blocking
/// connection allocate nothing. The blocking transport's futures complete
/// on their first poll.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    use std::thread::Thread;

    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    std::thread_local! {
        static WAKER: Waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    }

    let mut fut = core::pin::pin!(fut);
    WAKER.with(|waker| {
        let mut cx = Context::from_waker(waker);
        loop {
            match fut.as_mut().poll(&mut cx) {
                Poll::Ready(out) => return out,
                Poll::Pending => std::thread::park(),
            }
        }
    })
}

/// The transport: a `std::net::TcpStream` behind the `embedded_io_async`
/// traits. Its futures complete on their first poll (the IO blocks).
///
/// Reads and writes are bounded by the deadline last given to
/// [`BlockingTransport::set_deadline`] (one deadline for a whole request,
/// however the server spreads its bytes): on Unix each read first waits
/// with `poll(2)` for the time left, and a write that would block (on a
/// non-blocking socket, as this crate's own connections are) waits the
/// same way. No socket option is changed per request.
#[derive(Debug)]
pub struct StdStream(pub TcpStream, Option<std::time::Instant>);

impl StdStream {
    /// Wraps a connected socket (blocking or not), with no deadline.
    pub fn new(tcp: TcpStream) -> Self {
        Self(tcp, None)
    }
}

impl From<TcpStream> for StdStream {
    fn from(tcp: TcpStream) -> Self {
        Self::new(tcp)
    }
}

impl embedded_io_async::ErrorType for StdStream {
    type Error = io::Error;
}

impl embedded_io_async::Read for StdStream {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        io::Read::read(&mut Bounded(&self.0, self.1), buf)
    }
}

impl embedded_io_async::Write for StdStream {
    async fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::Write::write(&mut Bounded(&self.0, self.1), buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A blocking transport that [`BlockingConnection`] can drive: the
/// `embedded_io_async` traits over a socket whose reads can be bounded in
/// time. Implemented by [`StdStream`] and, with the `rustls` feature, by
#[cfg_attr(feature = "rustls", doc = "[`StdTlsStream`].")]
#[cfg_attr(not(feature = "rustls"), doc = "`StdTlsStream`.")]
pub trait BlockingTransport:
    embedded_io_async::Read<Error = io::Error> + embedded_io_async::Write<Error = io::Error>
{
    /// Bounds every following blocking read (`None` = no bound).
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()>;

    /// Bounds every following read and write by one instant (`None` = no
    /// bound): a request sent after this call ends with an
    /// [`io::ErrorKind::TimedOut`] error at the deadline, however the peer
    /// spreads its bytes. [`BlockingConnection`] calls it once per request.
    ///
    /// The default sets the read timeout to the time left, which bounds
    /// each read rather than the request (and costs a syscall); this
    /// crate's transports keep the deadline themselves and change no
    /// socket option.
    fn set_deadline(&mut self, deadline: Option<std::time::Instant>) -> io::Result<()> {
        self.set_read_timeout(deadline.map(|d| {
            d.saturating_duration_since(std::time::Instant::now())
                .max(Duration::from_millis(1))
        }))
    }

    /// Waits up to `timeout` until a read would return data (or end of
    /// stream) without blocking, consuming nothing the connection needs.
    /// `Ok(false)` when the time passed first.
    fn wait_readable(&mut self, timeout: Duration) -> io::Result<bool>;
}

impl BlockingTransport for StdStream {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.0.set_read_timeout(timeout)
    }

    fn set_deadline(&mut self, deadline: Option<std::time::Instant>) -> io::Result<()> {
        self.1 = deadline;
        Ok(())
    }

    fn wait_readable(&mut self, timeout: Duration) -> io::Result<bool> {
        // Consumes nothing: a timeout here loses nothing.
        poll_until(&self.0, false, Some(std::time::Instant::now() + timeout))
    }
}

pub use crate::runtime::ConnectOptions;

fn timeout_kind(e: Error<io::Error>) -> Error<io::Error> {
    match e {
        Error::Io(e) if is_timeout(&e) => Error::Timeout,
        e => e,
    }
}

/// A blocking connection: every method of [`Connection`], run to completion
/// on the calling thread, each request with one deadline (the reply
/// timeout, plus the time the server may block on purpose) so that a dead,
/// silent or trickling server gives [`Error::Timeout`] at that deadline
/// instead of a hang. No socket option is changed per request.
///
/// `T` is the transport: [`StdStream`] (plain TCP, the default) or, with
/// the `rustls` feature,
#[cfg_attr(
    feature = "rustls",
    doc = "[`StdTlsStream`] (see [`connect_tls`](BlockingConnection::connect_tls))."
)]
#[cfg_attr(not(feature = "rustls"), doc = "`StdTlsStream` (see `connect_tls`).")]
#[derive(Debug)]
pub struct BlockingConnection<
    const N: usize = { crate::runtime::DEFAULT_LINE_BUF },
    const P: usize = 0,
    T = StdStream,
> {
    inner: Connection<T, N, P>,
    io_timeout: Duration,
}

/// Result of blocking calls.
pub type Result<T> = core::result::Result<T, Error<io::Error>>;

/// Opens TCP to the first address of `addr` that answers, with
/// `TCP_NODELAY`, the write timeout set and, on Unix, in non-blocking mode
/// (once per connection): reads wait with `poll(2)` for the request's
/// deadline, and a write that would block waits the same way instead of
/// outliving it.
fn open_plain(addr: impl ToSocketAddrs, opts: &ConnectOptions) -> Result<StdStream> {
    let mut last = None;
    for a in addr.to_socket_addrs().map_err(Error::Io)? {
        match TcpStream::connect_timeout(&a, opts.connect_timeout) {
            Ok(tcp) => {
                tcp.set_nodelay(true).map_err(Error::Io)?;
                tcp.set_write_timeout(Some(opts.io_timeout))
                    .map_err(Error::Io)?;
                #[cfg(unix)]
                tcp.set_nonblocking(true).map_err(Error::Io)?;
                return Ok(StdStream::new(tcp));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => timeout_kind(Error::Io(e)),
        None => Error::Io(io::Error::new(
            io::ErrorKind::NotFound,
            "address resolved to nothing",
        )),
    })
}

/// TCP to `addr`, then the TLS handshake verified by `tls` within the
/// connect timeout.
#[cfg(feature = "rustls")]
fn open_tls(
    addr: impl ToSocketAddrs,
    opts: &ConnectOptions,
    tls: &crate::runtime::host::rustls::RustlsConnector,
) -> Result<StdTlsStream> {
    StdTlsStream::handshake(open_plain(addr, opts)?.0, tls, opts.connect_timeout)
        .map_err(|e| timeout_kind(Error::Io(e)))
}

impl<const N: usize, const P: usize> BlockingConnection<N, P> {
    /// Connects to `addr` (`host:port`; names are resolved, each address is
    /// tried in turn), sets `TCP_NODELAY` and authenticates when a token is
    /// given.
    pub fn connect(addr: impl ToSocketAddrs, opts: &ConnectOptions) -> Result<Self> {
        Self::open(open_plain(addr, opts)?, opts)
    }

    /// Wraps an already connected stream. Reads are bounded by each
    /// request's deadline; writes too when the socket is non-blocking (a
    /// blocking socket's write is bounded by its own write timeout).
    pub fn from_stream(stream: TcpStream, io_timeout: Duration) -> Self {
        Self::from_transport(StdStream::new(stream), io_timeout)
    }
}

/// The request methods of [`BlockingConnection`]: each the [`Connection`]
/// method of the same name, given one deadline (the reply timeout plus the
/// seconds, `held`, the server may block on purpose) and run to completion.
macro_rules! requests {
    ($($name:ident $(<$lt:lifetime>)? ($($arg:ident: $ty:ty),*) -> $out:ty $(, held $held:ident)?;)*) => {$(
        #[doc = concat!("See [`Connection::", stringify!($name), "`].")]
        pub fn $name $(<$lt>)? (&mut self, $($arg: $ty),*) -> Result<$out> {
            self.run(0 $(+ $held)?, |c| c.$name($($arg),*))
        }
    )*};
}

impl<const N: usize, const P: usize, T: BlockingTransport> BlockingConnection<N, P, T> {
    /// Wraps an already connected (and, for TLS, handshaken) transport.
    pub fn from_transport(transport: T, io_timeout: Duration) -> Self {
        Self {
            inner: Connection::new(transport),
            io_timeout,
        }
    }

    /// A connection over a freshly opened `transport`: the reply timeout
    /// of `opts`, and `auth` sent when it has a token.
    fn open(transport: T, opts: &ConnectOptions) -> Result<Self> {
        let mut conn = Self::from_transport(transport, opts.io_timeout);
        conn.run(0, |c| c.authenticate(opts.token()))?;
        Ok(conn)
    }

    /// The async connection inside, for anything not wrapped here.
    pub fn get_mut(&mut self) -> &mut Connection<T, N, P> {
        &mut self.inner
    }

    /// Gives a request the server may hold for `server_secs` one deadline
    /// (the reply timeout beyond that), then runs it.
    fn run<'c, R, F: Future<Output = Result<R>>>(
        &'c mut self,
        server_secs: u64,
        f: impl FnOnce(&'c mut Connection<T, N, P>) -> F,
    ) -> Result<R> {
        let wait = self
            .io_timeout
            .saturating_add(Duration::from_secs(server_secs));
        block_on(self.request(std::time::Instant::now().checked_add(wait), f))
    }

    /// Runs the request `f` with one `deadline` (`None`: no bound) given to
    /// the transport first; its future blocks whichever thread polls it.
    async fn request<'c, R, F: Future<Output = Result<R>>>(
        &'c mut self,
        deadline: Option<std::time::Instant>,
        f: impl FnOnce(&'c mut Connection<T, N, P>) -> F,
    ) -> Result<R> {
        let transport = self.inner.transport_mut();
        transport.set_deadline(deadline).map_err(Error::Io)?;
        f(&mut self.inner).await.map_err(timeout_kind)
    }

    /// Whether the connection can still carry requests.
    pub fn is_usable(&self) -> bool {
        self.inner.is_usable()
    }

    requests! {
        auth(token: &str) -> ();
        acquire(kind: Kind, key: &str, timeout: u64, lease: Option<u64>) -> Option<Grant>, held timeout;
        release(kind: Kind, key: &str, token: &Token) -> ();
        renew(kind: Kind, key: &str, token: &Token, lease: Option<u64>) -> u64;
        enqueue(kind: Kind, key: &str, lease: Option<u64>) -> crate::Enqueued;
        wait(kind: Kind, key: &str, timeout: u64) -> Option<Grant>, held timeout;
        ping() -> ();
        stats<'b>(out: &'b mut [u8]) -> &'b str;
        listen(pattern: &str, group: Option<&str>) -> ();
        unlisten(pattern: &str, group: Option<&str>) -> ();
        emit(channel: &str, payload: &str) -> u64;
    }

    /// Waits up to `timeout` for the next signal; `Ok(None)` when none came.
    pub fn next_signal(&mut self, timeout: Duration) -> Result<Option<crate::Signal<'_>>> {
        if self.inner.queued_signals() == 0
            && !self
                .inner
                .transport_mut()
                .wait_readable(timeout)
                .map_err(Error::Io)?
        {
            return Ok(None);
        }
        self.run(0, |c| c.next_signal()).map(Some)
    }

    /// Signals dropped so far (see [`Connection::dropped_signals`]).
    pub fn dropped_signals(&self) -> u64 {
        self.inner.dropped_signals()
    }
}

#[cfg(feature = "rustls")]
impl BlockingTransport for StdTlsStream {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.0.sock.set_read_timeout(timeout)
    }

    fn set_deadline(&mut self, deadline: Option<std::time::Instant>) -> io::Result<()> {
        self.1 = deadline;
        Ok(())
    }

    fn wait_readable(&mut self, timeout: Duration) -> io::Result<bool> {
        // Buffered inside rustls: nothing is lost on a timeout.
        self.fill(true, Some(std::time::Instant::now() + timeout))
    }
}

/// A blocking connection over rustls (feature `rustls`).
#[cfg(feature = "rustls")]
pub type BlockingTlsConnection<
    const N: usize = { crate::runtime::DEFAULT_LINE_BUF },
    const P: usize = 0,
> = BlockingConnection<N, P, StdTlsStream>;

#[cfg(feature = "rustls")]
impl<const N: usize, const P: usize> BlockingConnection<N, P, StdTlsStream> {
    /// [`connect`](BlockingConnection::connect) over TLS: TCP, then the
    /// handshake verified by `tls` (chain, validity period, server name)
    /// within `opts.connect_timeout`, then `auth` when a token is given.
    ///
    /// A peer that does not speak TLS gives [`Error::Timeout`] (a plaintext
    /// server waits for a request line) or [`Error::Io`] with the rustls
    /// error inside (it answered with something else); a certificate that
    /// fails verification gives [`Error::Io`] too, see
    /// [`rustls_error`](crate::tls_rustls::rustls_error).
    pub fn connect_tls(
        addr: impl ToSocketAddrs,
        opts: &ConnectOptions,
        tls: &crate::runtime::host::rustls::RustlsConnector,
    ) -> Result<Self> {
        Self::open(open_tls(addr, opts, tls)?, opts)
    }
}
#[cfg(feature = "rustls")]
pub use crate::runtime::host::rustls::StdTlsStream;

crate::runtime::host::stream::host_stream! {
    /// The transport of the high-level blocking APIs
    /// ([`DistributedLock`](crate::blocking::DistributedLock),
    /// [`SignalConn`](crate::blocking::SignalConn)): plain TCP or, with
    /// the `rustls` feature, TLS, chosen when connecting. It is a
    /// [`BlockingTransport`] that delegates to the arm it holds.
    ///
    /// Without the `rustls` feature there is only the plain arm, so the enum is
    /// exactly a [`StdStream`] (no tag, no branch).
    #[derive(Debug)]
    plain: StdStream,
    tls: crate::runtime::host::rustls::StdTlsStream,
}

impl HostStream {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => &s.0,
            #[cfg(feature = "rustls")]
            Self::Tls(s) => s.get_ref(),
        }
    }

    /// Whether the peer closed the connection or sent data nobody asked
    /// for (such as the server's idle-timeout `error`), without blocking
    /// and without losing anything a later read needs. TLS records that
    /// carry no data (session tickets) do not count.
    ///
    /// On Unix the sockets of [`open_host`] are non-blocking already, so
    /// this is one syscall; elsewhere the socket is switched for the probe.
    pub(crate) fn peer_closed(&mut self) -> bool {
        #[cfg(not(unix))]
        if self.tcp().set_nonblocking(true).is_err() {
            return false;
        }
        let closed = match self {
            Self::Plain(s) => {
                let mut probe = [0u8; 1];
                match s.0.peek(&mut probe) {
                    Ok(_) => true,
                    Err(e) => !is_timeout(&e) && e.kind() != io::ErrorKind::Interrupted,
                }
            }
            // What has arrived goes into rustls (nothing is lost); data, a
            // `close_notify`, end of stream or an error count.
            #[cfg(feature = "rustls")]
            Self::Tls(s) => !matches!(s.fill(false, None), Ok(false)),
        };
        #[cfg(not(unix))]
        if self.tcp().set_nonblocking(false).is_err() {
            return true;
        }
        closed
    }
}

impl BlockingTransport for HostStream {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        on_arm!(self, s => s.set_read_timeout(timeout))
    }

    fn set_deadline(&mut self, deadline: Option<std::time::Instant>) -> io::Result<()> {
        on_arm!(self, s => s.set_deadline(deadline))
    }

    fn wait_readable(&mut self, timeout: Duration) -> io::Result<bool> {
        on_arm!(self, s => s.wait_readable(timeout))
    }
}

/// A blocking connection over [`HostStream`]: plain or TLS.
pub type HostConnection<const N: usize = { crate::runtime::DEFAULT_LINE_BUF }, const P: usize = 0> =
    BlockingConnection<N, P, HostStream>;

/// TCP to `addr` (each resolved address in turn), then the TLS handshake
/// when `tls` is given, within the connect timeout. No `auth`; no read
/// timeout set.
pub(crate) fn open_host(
    addr: impl ToSocketAddrs,
    opts: &ConnectOptions,
    tls: Option<&HostTls>,
) -> Result<HostStream> {
    match tls {
        None => open_plain(addr, opts).map(HostStream::from),
        #[cfg(feature = "rustls")]
        Some(tls) => open_tls(addr, opts, tls).map(HostStream::from),
        #[cfg(not(feature = "rustls"))]
        Some(never) => match *never {},
    }
}

impl<const N: usize, const P: usize> BlockingConnection<N, P, HostStream> {
    /// [`connect`](BlockingConnection::connect) or
    /// [`connect_tls`](BlockingConnection::connect_tls) (when `tls` is
    /// given), as a [`HostConnection`].
    pub(crate) fn connect_host(
        addr: impl ToSocketAddrs,
        opts: &ConnectOptions,
        tls: Option<&HostTls>,
    ) -> Result<Self> {
        Self::open(open_host(addr, opts, tls)?, opts)
    }
}

pub(crate) use crate::runtime::host::std_instant;

/// [`Timer`] over `std::time::Instant`; `sleep_until` blocks the thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdTimer;

impl Timer for StdTimer {
    fn now(&self) -> Instant {
        timer_instant(std::time::Instant::now())
    }

    async fn sleep_until(&self, deadline: Instant) {
        std::thread::sleep(deadline.saturating_duration_since(self.now()));
    }
}
