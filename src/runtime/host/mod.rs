//! What the std host adapters (tokio and blocking) share and neither owns:
//! lock and signal settings and builders, the cluster builder, the
//! transport enum (`stream`), deadline-bounded socket IO (`sock`), every
//! line of rustls code (`rustls`, the tokio handshake included), and the
//! hang-up watch of lease guards. The adapters import from here, never from
//! each other; nothing here imports an adapter.

pub mod client;
pub mod cluster;
pub(crate) mod lock;
pub mod pool;
#[cfg(feature = "rustls")]
pub mod rustls;
pub mod settings;
pub mod signal;
pub(crate) mod sock;
pub(crate) mod stream;

/// The names both host adapters re-export: the same types in `tokio` and
/// `blocking`.
pub mod shared {
    pub use super::cluster::{ClusterBuilder, Renewal};
    pub use super::pool::{DEFAULT_POOL_IDLE_TIMEOUT, DEFAULT_POOL_MAX_IDLE};
    #[cfg(feature = "rustls")]
    pub use super::rustls::{RustlsConnector, rustls_error};
    pub use super::settings::{DEFAULT_SERVER, LockBuilder};
    pub use super::signal::{
        DEFAULT_PUSH_QUEUE, DEFAULT_SIGNAL_LINE_BUF, MAX_SIGNAL_LINE, Reconnect, Signal,
        SignalEvent, SignalOptions,
    };
    pub use crate::runtime::{
        AuthToken, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IO_TIMEOUT, DEFAULT_LINE_BUF,
    };
}

use std::net::TcpStream;
use std::sync::OnceLock;
use std::time::Duration;

use crate::time::Instant;

/// The process-wide epoch of the host timers (the blocking `StdTimer` and
/// the tokio `TokioTimer`): their instants count milliseconds from it.
fn epoch() -> std::time::Instant {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

/// The host timers' instant of `t`: milliseconds since the epoch, rounded
/// down (zero before it).
pub(crate) fn timer_instant(t: std::time::Instant) -> Instant {
    let ms = t.saturating_duration_since(epoch()).as_millis();
    Instant::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// The `std::time::Instant` of a host timer's instant.
pub(crate) fn std_instant(t: Instant) -> std::time::Instant {
    epoch() + Duration::from_millis(t.as_millis())
}

/// The TLS choice of the high-level host APIs: a rustls connector with the
/// `rustls` feature, an uninhabited type without it (so `None` is the only
/// value and the plain path has no TLS branch at all).
#[cfg(feature = "rustls")]
pub(crate) type HostTls = rustls::RustlsConnector;
/// The TLS choice of the high-level host APIs (uninhabited without the
/// `rustls` feature).
#[cfg(not(feature = "rustls"))]
pub(crate) type HostTls = core::convert::Infallible;

/// Watches a connection for the peer's hang-up without reading from it: a
/// duplicate of the socket's descriptor, polled with a zero timeout
/// (`POLLRDHUP | POLLHUP | POLLERR`, Linux). Lets a lease guard report a
/// closed connection at the instant it is asked, whatever its renewal
/// thread or task is doing. Elsewhere it sees nothing (the renewal side
/// still notices the close).
///
/// Because the duplicate would keep the connection open, the owner of the
/// connection shuts the socket down ([`close`](Self::close)) when it drops
/// it, so the server sees the close as before. Both adapters keep the
/// watch with the connection (made once, pooled with it) for every lease
/// it carries.
#[derive(Debug, Default)]
pub(crate) struct HangUp(Option<TcpStream>);

impl HangUp {
    /// Duplicates the descriptor of `fd` (nothing to watch on failure).
    #[cfg(unix)]
    pub(crate) fn new(fd: std::os::fd::BorrowedFd<'_>) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self(fd.try_clone_to_owned().ok().map(TcpStream::from)))
    }

    /// Nothing to watch off Unix.
    #[cfg(not(unix))]
    pub(crate) fn none() -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self(None))
    }

    /// Whether the peer closed (or reset) the connection. One `poll(2)`.
    pub(crate) fn seen(&self) -> bool {
        #[cfg(unix)]
        if let Some(sock) = &self.0 {
            use std::os::fd::AsFd;
            return hung_up(sock.as_fd(), false);
        }
        false
    }

    /// Shuts the socket down for every holder of a descriptor of it: the
    /// connection's owner is done with it.
    pub(crate) fn close(&self) {
        if let Some(sock) = &self.0 {
            let _ = sock.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Whether the peer of socket `fd` closed or reset the connection
/// (`POLLHUP | POLLERR`, and on Linux `POLLRDHUP`: the peer's FIN), or,
/// with `data_counts`, sent anything at all (`POLLIN`: a plain connection
/// that is idle between requests must have nothing to read, and end of
/// stream reads as readable; the server's idle-timeout `error` counts).
/// One `poll(2)` with a zero timeout. Without `data_counts`, other Unixes
/// see a reset but not a bare FIN.
#[cfg(unix)]
pub(crate) fn hung_up(fd: std::os::fd::BorrowedFd<'_>, data_counts: bool) -> bool {
    use std::os::fd::AsRawFd;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let fin = libc::POLLRDHUP;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let fin = 0;
    let watch = fin | if data_counts { libc::POLLIN } else { 0 };
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: watch,
        revents: 0,
    };
    // SAFETY: one valid pollfd, exclusively borrowed for the call; the
    // descriptor is borrowed for the call.
    let r = unsafe { libc::poll(&mut pfd, 1, 0) };
    r > 0 && pfd.revents & (watch | libc::POLLHUP | libc::POLLERR) != 0
}
