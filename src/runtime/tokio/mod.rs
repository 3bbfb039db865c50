//! tokio adapter: TCP transport, timer and connect helper.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use dflockd_client::Kind;
//! use dflockd_client::tokio::{ConnectOptions, connect};
//!
//! let mut conn = connect::<1024, 0>("127.0.0.1:6388", &ConnectOptions::default()).await?;
//! if let Some(grant) = conn.acquire(Kind::Lock, "orders", 10, None).await? {
//!     conn.release(Kind::Lock, "orders", &grant.token).await?;
//! }
//! # Ok(()) }
//! ```

mod client;
mod cluster;
mod lock;
mod signal;

pub use self::client::{Client, ClientBuilder};
pub use self::cluster::{ClusterClient, ClusterGuard, ClusterLock, TokioConnector};
pub use self::lock::{DistributedLock, DistributedSemaphore, Enqueued, LeaseGuard};
#[cfg(feature = "rustls")]
pub use self::signal::emit_tls;
pub use self::signal::{Item, SignalConn, SignalHandle, emit};
/// The names both host adapters share (the same types in `tokio` and
/// `blocking`).
pub use crate::runtime::host::shared::*;

use std::io;
use std::time::Duration;

use embedded_io_adapters::tokio_1::FromTokio;
use tokio::net::TcpStream;

#[cfg(feature = "rustls")]
use crate::runtime::host::rustls::tokio_handshake;
use crate::runtime::host::{std_instant, timer_instant};
use crate::time::{Instant, Timer, with_deadline};
use crate::{Connection, Error};

/// The transport: a tokio `TcpStream` seen through `embedded_io_async`.
pub type TokioStream = FromTokio<TcpStream>;

/// A connection over tokio TCP.
pub type TokioConnection<
    const N: usize = { crate::runtime::DEFAULT_LINE_BUF },
    const P: usize = 0,
> = Connection<TokioStream, N, P>;

/// How to connect (one type for every host adapter).
pub use crate::runtime::ConnectOptions;

/// Result of the tokio API.
pub type Result<T> = core::result::Result<T, Error<io::Error>>;

/// Opens a TCP connection to `addr` (`host:port`; names are resolved) with
/// `TCP_NODELAY`, and authenticates when a token is given.
///
/// Errors: [`Error::Timeout`] when the connect timeout passes,
/// [`Error::Io`] when resolution or connecting fails, [`Error::Auth`] when
/// the server refuses the token.
///
/// Cancel-safe: dropping the future drops the half-made connection, which
/// closes it; nothing is left on the server.
pub async fn connect<const N: usize, const P: usize>(
    addr: &str,
    opts: &ConnectOptions,
) -> Result<TokioConnection<N, P>> {
    authenticate(FromTokio::new(tcp(addr, opts).await?), opts).await
}

/// TCP to `addr` within the connect timeout, with `TCP_NODELAY`.
async fn tcp(addr: &str, opts: &ConnectOptions) -> Result<TcpStream> {
    let connect = async { TcpStream::connect(addr).await.map_err(Error::Io) };
    let stream = timeout(opts.connect_timeout, connect).await?;
    stream.set_nodelay(true).map_err(Error::Io)?;
    Ok(stream)
}

/// A connection over a freshly opened `transport`, `auth` sent within the
/// connect timeout when a token is given.
async fn authenticate<T, const N: usize, const P: usize>(
    transport: T,
    opts: &ConnectOptions,
) -> Result<Connection<T, N, P>>
where
    T: embedded_io_async::Read<Error = io::Error> + embedded_io_async::Write<Error = io::Error>,
{
    let mut conn = Connection::new(transport);
    timeout(opts.connect_timeout, conn.authenticate(opts.token())).await?;
    Ok(conn)
}

/// Runs a request future with a client-side deadline: [`Error::Timeout`]
/// when `dur` passes first (the connection is then unusable), so a dead or
/// silent server never hangs the caller.
///
/// As cancel-safe as `fut`: dropping this future drops `fut`.
pub async fn timeout<T, F>(dur: Duration, fut: F) -> Result<T>
where
    F: Future<Output = Result<T>>,
{
    with_deadline(&TokioTimer, TokioTimer.now() + dur, fut).await?
}

/// The tokio instant of a [`TokioTimer`] instant.
pub(crate) fn tokio_instant(t: Instant) -> tokio::time::Instant {
    tokio::time::Instant::from_std(std_instant(t))
}

/// [`Timer`] over tokio's clock (honours tokio's paused test time).
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioTimer;

impl Timer for TokioTimer {
    fn now(&self) -> Instant {
        timer_instant(tokio::time::Instant::now().into_std())
    }

    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> {
        tokio::time::sleep_until(tokio_instant(deadline))
    }
}

#[cfg(feature = "rustls")]
pub use crate::runtime::host::rustls::TokioTlsStream;

/// A connection over rustls on tokio TCP.
#[cfg(feature = "rustls")]
pub type TokioTlsConnection<
    const N: usize = { crate::runtime::DEFAULT_LINE_BUF },
    const P: usize = 0,
> = Connection<TokioTlsStream, N, P>;

/// [`connect`] over TLS (feature `rustls`): TCP with `TCP_NODELAY`, then the
/// TLS handshake verified by `tls` (chain, validity period and server
/// name), then `auth` when a token is given.
///
/// The TCP connect, the handshake and the auth each get
/// `opts.connect_timeout`, so a peer that does not speak TLS (a plaintext
/// server waits for a request line) gives [`Error::Timeout`] instead of a
/// hang; a peer that answers with anything but TLS, or a certificate that
/// fails verification, gives [`Error::Io`] whose
/// [`rustls_error`](crate::tls_rustls::rustls_error) tells why.
///
/// # Cancel safety
///
/// Cancel-safe in the sense that dropping the future only drops the
/// half-open connection; nothing is left behind on the server.
#[cfg(feature = "rustls")]
pub async fn connect_tls<const N: usize, const P: usize>(
    addr: &str,
    opts: &ConnectOptions,
    tls: &crate::runtime::host::rustls::RustlsConnector,
) -> Result<TokioTlsConnection<N, P>> {
    let handshake = tokio_handshake(tcp(addr, opts).await?, tls);
    let stream = timeout(opts.connect_timeout, handshake).await?;
    authenticate(stream, opts).await
}

crate::runtime::host::stream::host_stream! {
    /// The transport of the high-level tokio APIs
    /// ([`DistributedLock`](crate::tokio::DistributedLock),
    /// [`SignalConn`](crate::tokio::SignalConn)): plain TCP or, with
    /// the `rustls` feature, TLS, chosen when connecting. Both arms are
    /// `embedded_io_async` transports; the enum delegates to the one it holds.
    ///
    /// Without the `rustls` feature there is only the plain arm, so the enum is
    /// exactly a [`TokioStream`] (no tag, no branch).
    plain: TokioStream,
    tls: TokioTlsStream,
}

impl core::fmt::Debug for HostStream {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Plain(s) => f
                .debug_struct("Plain")
                .field("peer", &s.inner().peer_addr().ok())
                .finish(),
            #[cfg(feature = "rustls")]
            Self::Tls(s) => {
                let (tcp, session) = s.inner().get_ref();
                f.debug_struct("Tls")
                    .field("peer", &tcp.peer_addr().ok())
                    .field("protocol", &session.protocol_version())
                    .field("cipher_suite", &session.negotiated_cipher_suite())
                    .finish()
            }
        }
    }
}

/// A connection over [`HostStream`]: plain or TLS.
pub type HostConnection<const N: usize = { crate::runtime::DEFAULT_LINE_BUF }, const P: usize = 0> =
    Connection<HostStream, N, P>;

/// TCP to `addr`, then the TLS handshake when `tls` is given, each within
/// the connect timeout. No `auth`.
pub(crate) async fn open_host(
    addr: &str,
    opts: &ConnectOptions,
    tls: Option<&crate::runtime::host::HostTls>,
) -> Result<HostStream> {
    let stream = tcp(addr, opts).await?;
    match tls {
        None => Ok(FromTokio::new(stream).into()),
        #[cfg(feature = "rustls")]
        Some(tls) => Ok(timeout(opts.connect_timeout, tokio_handshake(stream, tls))
            .await?
            .into()),
        #[cfg(not(feature = "rustls"))]
        Some(never) => match *never {},
    }
}

/// [`connect`] or [`connect_tls`] (when `tls` is given) as a
/// [`HostConnection`].
pub(crate) async fn connect_host<const N: usize, const P: usize>(
    addr: &str,
    opts: &ConnectOptions,
    tls: Option<&crate::runtime::host::HostTls>,
) -> Result<HostConnection<N, P>> {
    authenticate(open_host(addr, opts, tls).await?, opts).await
}
