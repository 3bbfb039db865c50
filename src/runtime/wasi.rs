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
//! use dflockd_client::wasi::{ConnectOptions, WasiTimer, connect};
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
//! [`connect`] and [`connect_stream`] take `host:port`: an IPv4 address
//! (`127.0.0.1:6388`), an IPv6 address in brackets (`[::1]:6388`),
//! `localhost` (mapped to 127.0.0.1 without a lookup) or a DNS name
//! (`dflockd.internal:6388`). A name is resolved through
//! `wasi:sockets/ip-name-lookup`, which the host must allow
//! (`wasmtime run -S allow-ip-name-lookup=y`; without it the lookup fails
//! with an error naming the flag, see [`is_name_lookup_denied`] and
//! [`NAME_LOOKUP_DENIED_HINT`]). Each address it yields (IPv4 and IPv6, at
//! most [`MAX_ADDRESSES`], in the resolver's order) is tried in turn within
//! the one connect timeout, each attempt getting an equal share of the
//! time left, so an unreachable first address does not use it all up.
//!
//! # TLS
//!
//! With feature `tls`, hand a [`connect_stream`] stream to
//! `tls::handshake_with_clock::<tls::SystemClock, _, _>` with [`WasiRng`]:
//! the guest has a trusted wall clock, so the certificates' validity period
//! is checked too (plain `tls::handshake` skips it, for firmware).

use std::format;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::string::String;
use std::sync::OnceLock;
use std::vec;
use std::vec::Vec;

use core::future::Future;
use core::time::Duration;

use wasip2::io::poll::Pollable;
use wasip2::sockets::instance_network::instance_network;
use wasip2::sockets::network::{
    ErrorCode, IpAddress, IpAddressFamily, IpSocketAddress, Ipv4SocketAddress, Ipv6SocketAddress,
};
use wasip2::sockets::tcp::{ShutdownType, TcpSocket};
use wstd::io::{AsyncInputStream, AsyncOutputStream, AsyncPollable, AsyncRead, AsyncWrite};
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

/// What to tell the operator when resolving a host name failed the way a
/// host that does not allow name lookups fails them.
pub const NAME_LOOKUP_DENIED_HINT: &str = "name lookups need the WASI host's permission: \
     run the guest with `wasmtime run -S allow-ip-name-lookup=y ...` \
     (or `wasmtime serve -S allow-ip-name-lookup ...`), or give an IP address";

/// The host refused to resolve a name, or its resolver failed for good
/// (wasmtime answers `permanent-resolver-failure` when
/// `-S allow-ip-name-lookup=y` is missing): the inner error of the
/// [`io::Error`] that [`is_name_lookup_denied`] recognises. Its `Debug`
/// is its message, so the flag shows however the error is printed.
pub struct NameLookupDenied {
    /// The name that was looked up.
    pub name: String,
    /// What the host answered.
    pub code: ErrorCode,
}

impl core::fmt::Display for NameLookupDenied {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "cannot resolve `{}` ({:?}): {NAME_LOOKUP_DENIED_HINT}",
            self.name, self.code
        )
    }
}

impl core::fmt::Debug for NameLookupDenied {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for NameLookupDenied {}

/// Whether `err` is a name lookup the host refused (see
/// [`NAME_LOOKUP_DENIED_HINT`]); its message names the flag already.
pub fn is_name_lookup_denied(err: &Error<io::Error>) -> bool {
    matches!(err, Error::Io(e) if e.get_ref().is_some_and(|inner| inner.is::<NameLookupDenied>()))
}

// ---- transport --------------------------------------------------------------

/// The transport: a WASI TCP stream seen through `embedded_io_async`,
/// either one [`connect_stream`] opened (IPv4 or IPv6) or a
/// `wstd::net::TcpStream` handed to [`WasiStream::new`].
///
/// Reads are cancel-safe: wstd only awaits readiness and copies the bytes
/// after it, so a dropped read loses nothing (which
/// [`Connection::next_signal`] and [`Lease::hold`](crate::lock::Lease::hold)
/// rely on).
pub struct WasiStream {
    inner: Inner,
}

enum Inner {
    Wstd(TcpStream),
    Socket(Socket),
}

/// A connected `wasi:sockets` TCP socket with its two streams (which must
/// be dropped before the socket: fields drop in order).
struct Socket {
    input: AsyncInputStream,
    output: AsyncOutputStream,
    socket: TcpSocket,
    peer: SocketAddr,
}

impl Drop for Socket {
    fn drop(&mut self) {
        let _ = self.socket.shutdown(ShutdownType::Both);
    }
}

impl core::fmt::Debug for WasiStream {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut d = f.debug_struct("WasiStream");
        match &self.inner {
            Inner::Wstd(s) => d.field("peer", &s.peer_addr().ok()),
            Inner::Socket(s) => d.field("peer", &s.peer),
        };
        d.finish()
    }
}

impl WasiStream {
    /// Wraps a stream connected with wstd.
    pub fn new(inner: TcpStream) -> Self {
        Self {
            inner: Inner::Wstd(inner),
        }
    }

    /// The wstd stream, when this wraps one ([`new`](Self::new)); `None`
    /// for a stream [`connect_stream`] opened.
    pub fn get_ref(&self) -> Option<&TcpStream> {
        match &self.inner {
            Inner::Wstd(s) => Some(s),
            Inner::Socket(_) => None,
        }
    }

    /// Gives the wstd stream back, when this wraps one; otherwise `self`.
    pub fn into_inner(self) -> Result<TcpStream, Self> {
        match self.inner {
            Inner::Wstd(s) => Ok(s),
            inner => Err(Self { inner }),
        }
    }

    /// The peer's address, for a stream [`connect_stream`] opened.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        match &self.inner {
            Inner::Wstd(_) => None,
            Inner::Socket(s) => Some(s.peer),
        }
    }
}

impl embedded_io_async::ErrorType for WasiStream {
    type Error = io::Error;
}

impl embedded_io_async::Read for WasiStream {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, io::Error> {
        match &mut self.inner {
            // wstd retries zero-byte reads until data arrives: never ask for 0.
            _ if buf.is_empty() => Ok(0),
            Inner::Wstd(s) => s.read(buf).await,
            Inner::Socket(s) => s.input.read(buf).await,
        }
    }
}

impl embedded_io_async::Write for WasiStream {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, io::Error> {
        match &mut self.inner {
            _ if buf.is_empty() => Ok(0),
            Inner::Wstd(s) => s.write(buf).await,
            Inner::Socket(s) => s.output.write(buf).await,
        }
    }

    async fn flush(&mut self) -> Result<(), io::Error> {
        match &mut self.inner {
            Inner::Wstd(s) => s.flush().await,
            Inner::Socket(s) => s.output.flush().await,
        }
    }
}

/// A connection over WASI TCP.
pub type WasiConnection<const N: usize = { super::DEFAULT_LINE_BUF }, const P: usize = 0> =
    Connection<WasiStream, N, P>;

// ---- connect ------------------------------------------------------------------

/// How to connect (one type for every host adapter), the token and the defaults.
pub use super::{
    AuthToken, ConnectOptions, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IO_TIMEOUT, DEFAULT_LINE_BUF,
};

/// Most addresses of one name that [`connect_stream`] tries.
pub const MAX_ADDRESSES: usize = 8;

/// The longest host name accepted (DNS: 253 bytes).
const MAX_NAME: usize = 253;

/// What `host:port` names.
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    Addr(SocketAddr),
    Name(&'a str, u16),
}

/// `addr` is `host:port` such as 127.0.0.1:6388, [::1]:6388 or
/// dflockd.example:6388; anything else is a [`ConfigError`] naming the rule.
fn parse_target(addr: &str) -> Result<Target<'_>, ConfigError> {
    let invalid = |rule: &'static str| ConfigError::new("addr", rule);
    let bad_port = || invalid("the port must be 1 to 65535");
    if let Ok(a) = addr.parse::<SocketAddr>() {
        if a.port() == 0 {
            return Err(bad_port());
        }
        return Ok(Target::Addr(a));
    }
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| invalid("must be host:port"))?;
    let port = port.parse().ok().filter(|p| *p != 0).ok_or_else(bad_port)?;
    if host.is_empty() {
        return Err(invalid("must name a host before the port"));
    }
    if host.contains(':') || host.starts_with('[') {
        return Err(invalid("an IPv6 address goes in brackets: [::1]:6388"));
    }
    if host.len() > MAX_NAME {
        return Err(invalid("host names are at most 253 bytes"));
    }
    if host.contains(|c: char| c.is_whitespace() || c.is_control() || c == '/') {
        return Err(invalid(
            "a host name has no spaces, control characters or '/'",
        ));
    }
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(Target::Addr((Ipv4Addr::LOCALHOST, port).into()));
    }
    Ok(Target::Name(host, port))
}

fn socket_error(code: ErrorCode) -> io::Error {
    use io::ErrorKind as K;
    let kind = match code {
        ErrorCode::AccessDenied => K::PermissionDenied,
        ErrorCode::NotSupported => K::Unsupported,
        ErrorCode::InvalidArgument => K::InvalidInput,
        ErrorCode::OutOfMemory => K::OutOfMemory,
        ErrorCode::Timeout => K::TimedOut,
        ErrorCode::WouldBlock => K::WouldBlock,
        ErrorCode::InvalidState => K::InvalidData,
        ErrorCode::AddressInUse => K::AddrInUse,
        ErrorCode::AddressNotBindable => K::AddrNotAvailable,
        ErrorCode::RemoteUnreachable => K::HostUnreachable,
        ErrorCode::ConnectionRefused => K::ConnectionRefused,
        ErrorCode::ConnectionReset => K::ConnectionReset,
        ErrorCode::ConnectionAborted => K::ConnectionAborted,
        _ => K::Other,
    };
    io::Error::new(kind, format!("wasi:sockets: {code:?}"))
}

fn lookup_error(name: &str, code: ErrorCode) -> io::Error {
    let (kind, why) = match code {
        ErrorCode::NameUnresolvable => {
            (io::ErrorKind::NotFound, "no such name or no address for it")
        }
        ErrorCode::TemporaryResolverFailure => (io::ErrorKind::Other, "temporary resolver failure"),
        ErrorCode::PermanentResolverFailure | ErrorCode::AccessDenied => {
            let name = name.into();
            return io::Error::other(NameLookupDenied { name, code });
        }
        other => return socket_error(other),
    };
    io::Error::new(kind, format!("cannot resolve `{name}`: {why}"))
}

/// Calls `op` until it stops answering `would-block`, waiting for the
/// pollable of `subscribe` in between.
async fn ready<T>(
    mut op: impl FnMut() -> Result<T, ErrorCode>,
    subscribe: impl Fn() -> Pollable,
) -> Result<T, ErrorCode> {
    loop {
        match op() {
            Err(ErrorCode::WouldBlock) => AsyncPollable::new(subscribe()).wait_for().await,
            done => return done,
        }
    }
}

/// Resolves `name` through `wasi:sockets/ip-name-lookup`: its addresses in
/// the resolver's order, at most [`MAX_ADDRESSES`].
async fn resolve(name: &str, port: u16) -> Result<Vec<SocketAddr>, io::Error> {
    let stream = wasip2::sockets::ip_name_lookup::resolve_addresses(&instance_network(), name)
        .map_err(|code| lookup_error(name, code))?;
    let mut out = Vec::new();
    while out.len() < MAX_ADDRESSES {
        let next = ready(|| stream.resolve_next_address(), || stream.subscribe());
        let ip = match next.await.map_err(|code| lookup_error(name, code))? {
            Some(IpAddress::Ipv4((a, b, c, d))) => IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            Some(IpAddress::Ipv6((a, b, c, d, e, f, g, h))) => {
                IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h))
            }
            None => break,
        };
        out.push(SocketAddr::new(ip, port));
    }
    if out.is_empty() {
        return Err(lookup_error(name, ErrorCode::NameUnresolvable));
    }
    Ok(out)
}

/// One TCP connect through `wasi:sockets` (IPv4 or IPv6).
async fn connect_addr(addr: SocketAddr) -> Result<WasiStream, io::Error> {
    let (family, remote) = match addr {
        SocketAddr::V4(a) => {
            let [x, y, z, w] = a.ip().octets();
            let remote = Ipv4SocketAddress {
                port: a.port(),
                address: (x, y, z, w),
            };
            (IpAddressFamily::Ipv4, IpSocketAddress::Ipv4(remote))
        }
        SocketAddr::V6(a) => {
            let [s0, s1, s2, s3, s4, s5, s6, s7] = a.ip().segments();
            let remote = Ipv6SocketAddress {
                port: a.port(),
                flow_info: a.flowinfo(),
                address: (s0, s1, s2, s3, s4, s5, s6, s7),
                scope_id: a.scope_id(),
            };
            (IpAddressFamily::Ipv6, IpSocketAddress::Ipv6(remote))
        }
    };
    let socket =
        wasip2::sockets::tcp_create_socket::create_tcp_socket(family).map_err(socket_error)?;
    socket
        .start_connect(&instance_network(), remote)
        .map_err(socket_error)?;
    let (input, output) = ready(|| socket.finish_connect(), || socket.subscribe())
        .await
        .map_err(socket_error)?;
    Ok(WasiStream {
        inner: Inner::Socket(Socket {
            input: AsyncInputStream::new(input),
            output: AsyncOutputStream::new(output),
            socket,
            peer: addr,
        }),
    })
}

/// Opens a TCP connection to `addr` (see [Addresses](self#addresses))
/// within `timeout`, without speaking to the server: the building block for
/// [`connect`] and for TLS (see [TLS](self#tls)). A name is resolved first, and its addresses are tried in turn,
/// all within `timeout`.
///
/// Errors: [`Error::Timeout`] when the timeout passes; [`Error::Config`]
/// when the address is not usable (naming the rule); [`Error::Io`] when
/// the name does not resolve ([`io::ErrorKind::NotFound`]; see
/// [`is_name_lookup_denied`] for a host that does not allow lookups), or
/// connecting fails (the last address's error) — with
/// [`io::ErrorKind::PermissionDenied`] when the host grants no network (see
/// [`is_network_denied`]).
///
/// # Cancel safety
///
/// Cancel-safe: dropping the future drops the half-open socket; nothing is
/// left on the server.
pub async fn connect_stream(addr: &str, timeout: Duration) -> Result<WasiStream, Error<io::Error>> {
    let deadline = WasiTimer.now() + timeout;
    let addrs = match parse_target(addr)? {
        Target::Addr(a) => vec![a],
        Target::Name(name, port) => until(deadline, resolve(name, port)).await?,
    };
    let mut last = Error::Timeout;
    for (i, a) in addrs.iter().enumerate() {
        let now = WasiTimer.now();
        let left = deadline.saturating_duration_since(now);
        if left.is_zero() {
            break;
        }
        // An equal share of the time left for each address still to try.
        match until(now + left / (addrs.len() - i) as u32, connect_addr(*a)).await {
            // No network at all: every other address fails the same way.
            Err(Error::Io(e)) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Err(Error::Io(e));
            }
            Err(e) => last = e,
            stream => return stream,
        }
    }
    Err(last)
}

/// An IO step until `deadline`: [`Error::Timeout`] when it passes first.
async fn until<T>(
    deadline: Instant,
    step: impl Future<Output = io::Result<T>>,
) -> Result<T, Error<io::Error>> {
    with_deadline(&WasiTimer, deadline, step)
        .await?
        .map_err(Error::Io)
}

/// Opens a connection to `addr` (an address or a name, see
/// [Addresses](self#addresses)) and authenticates when a token is given; connect and auth each get
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
    let mut conn = Connection::new(connect_stream(addr, opts.connect_timeout).await?);
    timeout(opts.connect_timeout, conn.authenticate(opts.token())).await?;
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
    with_deadline(&WasiTimer, WasiTimer.now() + dur, fut).await?
}

// ---- time ---------------------------------------------------------------------

/// Longest single sleep handed to the host (wstd counts nanoseconds in a
/// `u64`); longer waits loop.
const MAX_SLEEP: Duration = Duration::from_secs(24 * 3600);

/// [`Timer`] over WASI's monotonic clock (`wasi:clocks`), through wstd.
///
/// Its epoch is the first use in the instance, shared by every `WasiTimer`.
/// Sleeping needs the wstd runtime (`wstd::runtime::block_on`,
/// `#[wstd::main]`, `#[wstd::http_server]`); reading the clock does not.
#[derive(Debug, Clone, Copy, Default)]
pub struct WasiTimer;

impl Timer for WasiTimer {
    fn now(&self) -> Instant {
        static EPOCH: OnceLock<wstd::time::Instant> = OnceLock::new();
        let epoch = *EPOCH.get_or_init(wstd::time::Instant::now);
        // The core's `Instant + Duration` saturates.
        Instant::default() + wstd::time::Instant::now().duration_since(epoch).into()
    }

    // An async fn, so nothing runs before the first poll: wstd registers a
    // sleep with the runtime when it is created.
    async fn sleep_until(&self, deadline: Instant) {
        loop {
            let left = deadline.saturating_duration_since(self.now());
            if left.is_zero() {
                return;
            }
            wstd::task::sleep(left.min(MAX_SLEEP).into()).await;
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
        rand_core::impls::next_u32_via_fill(self)
    }

    fn next_u64(&mut self) -> u64 {
        rand_core::impls::next_u64_via_fill(self)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        wstd::rand::get_random_bytes(dest);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for WasiRng {}

impl crate::lock::Rng for WasiRng {
    fn next_u32(&mut self) -> u32 {
        rand_core::RngCore::next_u32(self)
    }
}
