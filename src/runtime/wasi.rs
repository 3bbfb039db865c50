//! WASI 0.2 adapter (feature `wasi`, target `wasm32-wasip2`): TCP transport
//! over `wstd::net::TcpStream`, a [`Timer`] over wstd's monotonic clock, a
//! connect helper with a timeout, and an RNG over `wasi:random`.
//!
//! The guest is single-threaded: nothing here spawns. Lease renewal runs
//! cooperatively with [`Lease::hold`](crate::lock::Lease::hold) and signal
//! heartbeats with the core [`SignalConn`](crate::signal::SignalConn), both
//! driven by [`WasiTimer`] inside `wstd::runtime::block_on` (or
//! `#[wstd::main]` / `#[wstd::http_server]`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), dflockd_client::Error<std::io::Error>> {
//! use core::time::Duration;
//! use dflockd_client::lock::LockSpec;
//! use dflockd_client::runtime::wasi::{ConnectOptions, WasiTimer, connect};
//!
//! let timer = WasiTimer;
//! let mut conn = connect::<256, 0>("127.0.0.1:6388", &ConnectOptions::default()).await?;
//! let spec = LockSpec::lock("orders").lease_ttl(Duration::from_secs(10));
//! if let Some(mut lease) = spec.acquire(&mut conn, &timer).await? {
//!     lease.hold(&mut conn, &timer, async { /* critical section */ }).await?;
//!     lease.release(&mut conn, &timer).await?;
//! }
//! # Ok(()) }
//! ```
//!
//! # Network access
//!
//! A WASI host gives a guest no network unless told to: without
//! `-S inherit-network=y` (`wasmtime run`) or `-S inherit-network`
//! (`wasmtime serve`), connecting fails with
//! [`io::ErrorKind::PermissionDenied`]. [`is_network_denied`] recognises
//! that error and [`NETWORK_DENIED_HINT`] says what to do about it.
//!
//! # Addresses
//!
//! wstd connects to IPv4 addresses only, and WASI has no resolver that std
//! uses: give `a.b.c.d:port` (or `localhost:port`, mapped to 127.0.0.1).
//! Anything else is [`Error::Config`] (IPv6 is an [`Error::Io`] with
//! [`io::ErrorKind::Unsupported`]).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::OnceLock;

use core::future::Future;
use core::time::Duration;

use wstd::io::{AsyncRead, AsyncWrite};
use wstd::net::TcpStream;

use crate::time::{Instant, Timer, with_deadline};
use crate::{ConfigError, Connection, Error};

/// What to tell the operator when the host denied network access.
pub const NETWORK_DENIED_HINT: &str = "the WASI host denied network access (PermissionDenied): \
     run the guest with `wasmtime run -S inherit-network=y ...` \
     (or `wasmtime serve -S cli -S inherit-network ...` for a wasi:http component)";

/// Whether `err` is the host refusing network access to the guest (the
/// `inherit-network` flag is missing). See [`NETWORK_DENIED_HINT`].
pub fn is_network_denied(err: &Error<io::Error>) -> bool {
    matches!(err, Error::Io(e) if e.kind() == io::ErrorKind::PermissionDenied)
}

// ---- transport --------------------------------------------------------------

/// The transport: a `wstd::net::TcpStream` seen through `embedded_io_async`.
///
/// Reads are cancel-safe: wstd only awaits readiness and copies the bytes
/// after it, so a dropped read loses nothing (which
/// [`Connection::next_signal`] and [`Lease::hold`](crate::lock::Lease::hold)
/// rely on).
pub struct WasiStream {
    inner: TcpStream,
}

impl core::fmt::Debug for WasiStream {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("WasiStream")
            .field("peer", &self.inner.peer_addr().ok())
            .finish()
    }
}

impl WasiStream {
    /// Wraps a connected stream.
    pub fn new(inner: TcpStream) -> Self {
        Self { inner }
    }

    /// The wstd stream.
    pub fn get_ref(&self) -> &TcpStream {
        &self.inner
    }

    /// Gives the wstd stream back.
    pub fn into_inner(self) -> TcpStream {
        self.inner
    }
}

impl embedded_io_async::ErrorType for WasiStream {
    type Error = io::Error;
}

impl embedded_io_async::Read for WasiStream {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, io::Error> {
        // wstd retries zero-byte reads until data arrives: never ask for 0.
        if buf.is_empty() {
            return Ok(0);
        }
        self.inner.read(buf).await
    }
}

impl embedded_io_async::Write for WasiStream {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, io::Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.inner.write(buf).await
    }

    async fn flush(&mut self) -> Result<(), io::Error> {
        self.inner.flush().await
    }
}

/// A connection over WASI TCP.
pub type WasiConnection<const N: usize = { super::DEFAULT_LINE_BUF }, const P: usize = 0> =
    Connection<WasiStream, N, P>;

// ---- connect ------------------------------------------------------------------

/// How to connect (shared with the tokio adapter).
pub use super::ConnectOptions;

fn parse_addr(addr: &str) -> Result<SocketAddrV4, Error<io::Error>> {
    let invalid = || {
        Error::Config(ConfigError::new(
            "addr",
            "must be an IPv4 address and port such as 127.0.0.1:6388 \
             (WASI has no name resolution here; `localhost` is accepted)",
        ))
    };
    match addr.parse::<SocketAddr>() {
        Ok(SocketAddr::V4(a)) => Ok(a),
        Ok(SocketAddr::V6(_)) => Err(Error::Io(io::Error::new(
            io::ErrorKind::Unsupported,
            "IPv6 is not supported by wstd's TcpStream",
        ))),
        Err(_) => {
            let (host, port) = addr.rsplit_once(':').ok_or_else(invalid)?;
            let port: u16 = port.parse().map_err(|_| invalid())?;
            if host.eq_ignore_ascii_case("localhost") {
                Ok(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
            } else {
                Err(invalid())
            }
        }
    }
}

/// Opens a TCP connection to `addr` (`a.b.c.d:port` or `localhost:port`)
/// within `timeout`, without speaking to the server: the building block for
/// [`connect`] and for TLS (hand the stream to
/// `tls::handshake`, feature `tls`).
///
/// Errors: [`Error::Timeout`] when the timeout passes; [`Error::Config`]
/// when the address is not of the form above; [`Error::Io`] when the
/// address is IPv6 or connecting fails — with
/// [`io::ErrorKind::PermissionDenied`] when the host grants no network (see
/// [`is_network_denied`]).
///
/// # Cancel safety
///
/// Cancel-safe: dropping the future drops the half-open socket; nothing is
/// left on the server.
pub async fn connect_stream(addr: &str, timeout: Duration) -> Result<WasiStream, Error<io::Error>> {
    let addr = parse_addr(addr)?;
    let timer = WasiTimer;
    let deadline = timer.now() + timeout;
    let stream = with_deadline(
        &timer,
        deadline,
        TcpStream::connect_addr(SocketAddr::V4(addr)),
    )
    .await
    .map_err(|_| Error::Timeout)?
    .map_err(Error::Io)?;
    Ok(WasiStream::new(stream))
}

/// Opens a connection to `addr` (`a.b.c.d:port` or `localhost:port`) and
/// authenticates when a token is given; connect and auth each get
/// `opts.connect_timeout`.
///
/// Errors: as [`connect_stream`], plus [`Error::Auth`] when the server
/// refuses the token.
///
/// # Cancel safety
///
/// Cancel-safe: dropping the future drops the connection; the server keeps
/// nothing for it.
pub async fn connect<const N: usize, const P: usize>(
    addr: &str,
    opts: &ConnectOptions,
) -> Result<WasiConnection<N, P>, Error<io::Error>> {
    let stream = connect_stream(addr, opts.connect_timeout).await?;
    let mut conn = Connection::new(stream);
    if let Some(token) = &opts.auth_token {
        timeout(opts.connect_timeout, conn.auth(token.expose())).await?;
    }
    Ok(conn)
}

/// Runs a request future with a client-side deadline: [`Error::Timeout`]
/// when `dur` passes first (a request future dropped this way leaves its
/// connection unusable), so a dead or silent server never hangs the guest.
///
/// # Cancel safety
///
/// As cancel-safe as `fut`: dropping this drops `fut`.
pub async fn timeout<T, E, F>(dur: Duration, fut: F) -> Result<T, Error<E>>
where
    F: Future<Output = Result<T, Error<E>>>,
{
    let timer = WasiTimer;
    let deadline = timer.now() + dur;
    with_deadline(&timer, deadline, fut)
        .await
        .map_err(|_| Error::Timeout)?
}

// ---- time ---------------------------------------------------------------------

fn epoch() -> wstd::time::Instant {
    static EPOCH: OnceLock<wstd::time::Instant> = OnceLock::new();
    *EPOCH.get_or_init(wstd::time::Instant::now)
}

/// Longest single sleep handed to the host; longer waits loop.
const MAX_SLEEP_MS: u64 = 24 * 3600 * 1000;

/// [`Timer`] over WASI's monotonic clock (`wasi:clocks`), through wstd.
///
/// Its epoch is the first use in the instance, shared by every `WasiTimer`.
/// Sleeping needs the wstd runtime (`wstd::runtime::block_on`,
/// `#[wstd::main]`, `#[wstd::http_server]`); reading the clock does not.
#[derive(Debug, Clone, Copy, Default)]
pub struct WasiTimer;

impl Timer for WasiTimer {
    fn now(&self) -> Instant {
        let ms = wstd::time::Instant::now()
            .duration_since(epoch())
            .as_millis();
        Instant::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> {
        // Lazily: wstd registers the timer with the runtime when created.
        let this = *self;
        async move {
            loop {
                let now = this.now();
                if now >= deadline {
                    return;
                }
                let left = deadline.as_millis() - now.as_millis();
                let step = left.min(MAX_SLEEP_MS);
                wstd::task::sleep(wstd::time::Duration::from_millis(step)).await;
            }
        }
    }
}

// ---- randomness -------------------------------------------------------------

/// Cryptographically secure random numbers from `wasi:random`: for the TLS
/// handshake (`tls::handshake`, feature `tls`, takes any
/// `CryptoRngCore`) and as the renew jitter source
/// ([`Lease::hold_with_rng`](crate::lock::Lease::hold_with_rng)).
#[derive(Debug, Clone, Copy, Default)]
pub struct WasiRng;

impl rand_core::RngCore for WasiRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        wstd::rand::get_random_bytes(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        wstd::rand::get_random_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        wstd::rand::get_random_bytes(dest);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        wstd::rand::get_random_bytes(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for WasiRng {}

impl crate::lock::Rng for WasiRng {
    fn next_u32(&mut self) -> u32 {
        rand_core::RngCore::next_u32(self)
    }
}
