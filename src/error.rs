//! The one error type of the client, generic over the transport's error.

use core::fmt;

use crate::protocol::{InvalidArgument, ProtocolError, Status};
use crate::time::Elapsed;

/// Longest status text kept by [`ServerError::Unknown`]; longer text is cut
/// at a character boundary.
pub const STATUS_TEXT_CAP: usize = 64;

/// Owned copy of status text, cut to [`STATUS_TEXT_CAP`] bytes.
pub type StatusText = heapless::String<STATUS_TEXT_CAP>;

/// Longest leader address an `error_not_leader <host:port>` reply can
/// carry: a 253-byte DNS name, `:` and a 5-digit port (259 bytes: the name
/// and 6 more). The connection that read the reply keeps all of it
/// ([`Connection::leader_hint`](crate::Connection::leader_hint)), and so
/// does [`ServerError::NotLeader`] where `std` is linked.
pub const MAX_LEADER_ADDR: usize = 253 + 6;

/// The leader address of an `error_not_leader <host:port>` reply.
///
/// **Where `std` is linked** (features `std`, `tokio`, WASI) it keeps the
/// whole address (up to [`MAX_LEADER_ADDR`] bytes; longer text is cut at a
/// character boundary) in a boxed string: `as_str()`.
///
/// **On `no_std`** there is no heap, and keeping 259 bytes inline would make
/// every [`Error`] (and every future that holds a `Result`) about 290
/// bytes. There this type is an empty marker, "the server named a leader",
/// and the address stays in the connection's line buffer until its next
/// request: read it with
/// [`Connection::leader_hint`](crate::Connection::leader_hint), which works
/// the same everywhere (the cluster client reads it there on every
/// platform). `as_str` and `new` exist only where `std` is linked.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LeaderAddr(LeaderRepr);

#[cfg(any(
    feature = "std",
    test,
    all(feature = "wasi", target_os = "wasi", target_env = "p2")
))]
type LeaderRepr = std::boxed::Box<str>;

/// On `no_std`: nothing (the address is in the connection).
#[cfg(not(any(
    feature = "std",
    test,
    all(feature = "wasi", target_os = "wasi", target_env = "p2")
)))]
type LeaderRepr = ();

#[cfg(any(
    feature = "std",
    test,
    all(feature = "wasi", target_os = "wasi", target_env = "p2")
))]
mod leader_text {
    use super::{LeaderAddr, MAX_LEADER_ADDR};
    use core::fmt;

    impl LeaderAddr {
        /// Keeps `s` (cut to [`MAX_LEADER_ADDR`] bytes at a character
        /// boundary). Only where `std` is linked.
        pub fn new(s: &str) -> Self {
            let mut end = s.len().min(MAX_LEADER_ADDR);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            Self(std::boxed::Box::from(&s[..end]))
        }

        /// The address as text. Only where `std` is linked; on `no_std`
        /// read [`Connection::leader_hint`](crate::Connection::leader_hint).
        pub fn as_str(&self) -> &str {
            &self.0
        }
    }

    impl core::ops::Deref for LeaderAddr {
        type Target = str;
        fn deref(&self) -> &str {
            self.as_str()
        }
    }

    impl fmt::Debug for LeaderAddr {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            fmt::Debug::fmt(self.as_str(), f)
        }
    }

    impl fmt::Display for LeaderAddr {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.as_str())
        }
    }

    impl PartialEq<str> for LeaderAddr {
        fn eq(&self, other: &str) -> bool {
            self.as_str() == other
        }
    }

    impl PartialEq<&str> for LeaderAddr {
        fn eq(&self, other: &&str) -> bool {
            self.as_str() == *other
        }
    }

    pub(super) fn leader_addr(s: &str) -> LeaderAddr {
        LeaderAddr::new(s)
    }
}

#[cfg(not(any(
    feature = "std",
    test,
    all(feature = "wasi", target_os = "wasi", target_env = "p2")
)))]
mod leader_text {
    use super::LeaderAddr;
    use core::fmt;

    const SHOWN: &str = "(in the connection: Connection::leader_hint)";

    impl fmt::Debug for LeaderAddr {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(SHOWN)
        }
    }

    impl fmt::Display for LeaderAddr {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(SHOWN)
        }
    }

    pub(super) fn leader_addr(_: &str) -> LeaderAddr {
        LeaderAddr(())
    }
}

use leader_text::leader_addr;

#[cfg(feature = "defmt")]
impl defmt::Format for LeaderAddr {
    fn format(&self, f: defmt::Formatter<'_>) {
        #[cfg(any(
            feature = "std",
            test,
            all(feature = "wasi", target_os = "wasi", target_env = "p2")
        ))]
        defmt::write!(f, "{=str}", self.as_str());
        #[cfg(not(any(
            feature = "std",
            test,
            all(feature = "wasi", target_os = "wasi", target_env = "p2")
        )))]
        defmt::write!(f, "(Connection::leader_hint)");
    }
}

fn status_text(s: &str) -> StatusText {
    let mut end = s.len().min(STATUS_TEXT_CAP);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    StatusText::try_from(&s[..end]).unwrap_or_default()
}

/// An error status sent by the server (other than `error_auth`, which is
/// [`Error::Auth`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ServerError {
    /// `error`: bad request, not the holder, lease already expired, or a
    /// command the server does not know (`ping` before v1.14, signals on v2).
    Error,
    /// `error_max_locks`: the server's key limit is reached.
    MaxLocks,
    /// `error_max_waiters`: the key's waiter limit is reached.
    MaxWaiters,
    /// `error_limit_mismatch`: the semaphore exists with another limit (or,
    /// on v1.10 servers, the key is held as a lock).
    LimitMismatch,
    /// `error_not_enqueued`: `wait` without a pending `enqueue` on this
    /// connection (or after a previous wait timed out).
    NotEnqueued,
    /// `error_already_enqueued`: this connection already waits on the key.
    AlreadyEnqueued,
    /// `error_lease_expired`: the lease granted while enqueued expired before
    /// `wait` collected it.
    LeaseExpired,
    /// `error_draining`: the server is shutting down.
    Draining,
    /// `error_not_leader`: a cluster follower; `Some` when it named the
    /// leader (a hint: it may be stale). Where `std` is linked the
    /// [`LeaderAddr`] holds the whole address (up to [`MAX_LEADER_ADDR`]
    /// bytes); on `no_std` it is a marker and the address is read from the
    /// connection with
    /// [`Connection::leader_hint`](crate::Connection::leader_hint).
    NotLeader(Option<LeaderAddr>),
    /// A status this client does not know, kept verbatim (up to 64 bytes).
    Unknown(StatusText),
}

impl ServerError {
    /// Converts a parsed status. `error_auth` has no `ServerError` form and
    /// becomes [`Error::Auth`] one level up; here it maps to `Unknown`.
    pub(crate) fn from_status(status: Status<'_>) -> Self {
        match status {
            Status::Error => ServerError::Error,
            Status::MaxLocks => ServerError::MaxLocks,
            Status::MaxWaiters => ServerError::MaxWaiters,
            Status::LimitMismatch => ServerError::LimitMismatch,
            Status::NotEnqueued => ServerError::NotEnqueued,
            Status::AlreadyEnqueued => ServerError::AlreadyEnqueued,
            Status::LeaseExpired => ServerError::LeaseExpired,
            Status::Draining => ServerError::Draining,
            Status::NotLeader(addr) => ServerError::NotLeader(addr.map(leader_addr)),
            Status::Auth => ServerError::Unknown(status_text("error_auth")),
            Status::Unknown(s) => ServerError::Unknown(status_text(s)),
        }
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Error => f.write_str("server replied `error`"),
            ServerError::MaxLocks => f.write_str("server key limit reached (error_max_locks)"),
            ServerError::MaxWaiters => f.write_str("key waiter limit reached (error_max_waiters)"),
            ServerError::LimitMismatch => {
                f.write_str("semaphore exists with another limit (error_limit_mismatch)")
            }
            ServerError::NotEnqueued => {
                f.write_str("not enqueued on this key (error_not_enqueued)")
            }
            ServerError::AlreadyEnqueued => {
                f.write_str("already enqueued on this key (error_already_enqueued)")
            }
            ServerError::LeaseExpired => {
                f.write_str("lease expired before it was collected (error_lease_expired)")
            }
            ServerError::Draining => f.write_str("server is shutting down (error_draining)"),
            ServerError::NotLeader(None) => f.write_str("server is not the cluster leader"),
            ServerError::NotLeader(Some(addr)) => {
                write!(f, "server is not the cluster leader; leader is {addr}")
            }
            ServerError::Unknown(s) => write!(f, "server replied with unknown status `{s}`"),
        }
    }
}

impl core::error::Error for ServerError {}

/// A configuration mistake caught before anything was sent or connected:
/// which option, and the rule it broke. Host adapters return it as
/// [`Error::Config`] (a signal option out of range, a routing strategy
/// returning an index outside the server list, a TLS server name that is
/// neither a DNS name nor an IP address, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub struct ConfigError {
    /// The option, as its builder method or field is named (`heartbeat`,
    /// `strategy`, `server_name`, ...).
    pub option: &'static str,
    /// The rule it broke, as a sentence fragment (`must be non-zero`).
    pub rule: &'static str,
}

impl ConfigError {
    /// `option` broke `rule`.
    pub const fn new(option: &'static str, rule: &'static str) -> Self {
        Self { option, rule }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid option `{}`: {}", self.option, self.rule)
    }
}

impl core::error::Error for ConfigError {}

/// For callers that return `std::io::Result`: an
/// [`InvalidInput`](std::io::ErrorKind::InvalidInput) error carrying the
/// [`ConfigError`].
#[cfg(feature = "std")]
impl From<ConfigError> for std::io::Error {
    fn from(e: ConfigError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, e)
    }
}

/// Everything that can go wrong on a connection.
///
/// `E` is the transport's error type. [`Error::is_recoverable`] tells
/// whether the connection may be used again. It holds no leader address on
/// `no_std` (see [`LeaderAddr`]), so it stays small there (72 bytes on
/// thumbv7em with embassy-net's error; `ServerError::Unknown`'s 64 bytes of
/// status text are the largest part).
#[derive(Debug)]
#[non_exhaustive]
pub enum Error<E> {
    /// The transport failed; its error is kept.
    Io(E),
    /// The server closed the connection (EOF before or inside a reply).
    Disconnected,
    /// A reply line did not fit the line buffer; framing is lost.
    LineTooLong,
    /// The reply could not be parsed.
    Protocol(ProtocolError),
    /// An argument was rejected before anything was sent.
    InvalidArgument(InvalidArgument),
    /// An option of a host adapter was rejected before connecting.
    Config(ConfigError),
    /// The server answered with an error status.
    Server(ServerError),
    /// Authentication required or failed (`error_auth`); the server closes
    /// the connection.
    Auth,
    /// A client-side deadline passed before the server answered (connect
    /// timeout, dead server). The connection is abandoned.
    Timeout,
    /// The connection was left mid-request (a future was dropped, or an
    /// earlier error lost the framing) and must not be used again.
    Unusable,
    /// A held lease was lost: a renew failed or its deadline passed.
    LeaseLost,
    /// A cluster client found no leader within its redirect budget: every
    /// attempt was redirected (`error_not_leader`) or failed to connect.
    /// `attempts` counts the requests and connects it made.
    NoLeader {
        /// Connection attempts and requests made before giving up.
        attempts: u32,
    },
}

impl<E> Error<E> {
    /// May the connection that returned this error be used again?
    ///
    /// True when the request was rejected before sending, or the server
    /// answered with a status that leaves the connection open. False when
    /// the transport, framing or server session is gone: reconnect.
    ///
    /// One server answer depends on the request: `error` to a request with
    /// a line over 256 bytes (a long signal payload or auth token) from a
    /// server that caps lines there closes the connection; the connection
    /// then says so ([`Connection::is_usable`](crate::Connection::is_usable)
    /// is false).
    pub fn is_recoverable(&self) -> bool {
        match self {
            Error::InvalidArgument(_) | Error::Config(_) | Error::LeaseLost => true,
            Error::Server(e) => !matches!(e, ServerError::Draining),
            Error::Io(_)
            | Error::Disconnected
            | Error::LineTooLong
            | Error::Protocol(_)
            | Error::Auth
            | Error::Timeout
            | Error::Unusable
            | Error::NoLeader { .. } => false,
        }
    }

    /// Converts the transport error with `f`, keeping every other variant.
    pub fn map_io<F, E2>(self, f: F) -> Error<E2>
    where
        F: FnOnce(E) -> E2,
    {
        match self {
            Error::Io(e) => Error::Io(f(e)),
            Error::Disconnected => Error::Disconnected,
            Error::LineTooLong => Error::LineTooLong,
            Error::Protocol(p) => Error::Protocol(p),
            Error::InvalidArgument(a) => Error::InvalidArgument(a),
            Error::Config(c) => Error::Config(c),
            Error::Server(s) => Error::Server(s),
            Error::Auth => Error::Auth,
            Error::Timeout => Error::Timeout,
            Error::Unusable => Error::Unusable,
            Error::LeaseLost => Error::LeaseLost,
            Error::NoLeader { attempts } => Error::NoLeader { attempts },
        }
    }
}

impl<E> From<InvalidArgument> for Error<E> {
    fn from(e: InvalidArgument) -> Self {
        Error::InvalidArgument(e)
    }
}

impl<E> From<ConfigError> for Error<E> {
    fn from(e: ConfigError) -> Self {
        Error::Config(e)
    }
}

impl<E> From<ProtocolError> for Error<E> {
    fn from(e: ProtocolError) -> Self {
        Error::Protocol(e)
    }
}

impl<E> From<ServerError> for Error<E> {
    fn from(e: ServerError) -> Self {
        Error::Server(e)
    }
}

/// A client-side deadline passed ([`with_deadline`](crate::time::with_deadline)
/// gave [`Elapsed`]): [`Error::Timeout`]. The one place that decision is
/// made, so `with_deadline(..).await??` bounds a request in every adapter.
impl<E> From<Elapsed> for Error<E> {
    fn from(_: Elapsed) -> Self {
        Error::Timeout
    }
}

/// Shows the transport error by its own `Display` (e.g. `transport error:
/// Connection refused (os error 111)`), so `E` must implement `Display`:
/// every transport of this crate does (`std::io::Error`, embassy-net's and
/// embedded-tls' errors).
impl<E: fmt::Display> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "transport error: {e}"),
            Error::Disconnected => f.write_str("server closed the connection"),
            Error::LineTooLong => f.write_str("reply longer than the line buffer"),
            Error::Protocol(e) => write!(f, "protocol error: {e}"),
            Error::InvalidArgument(e) => e.fmt(f),
            Error::Config(e) => e.fmt(f),
            Error::Server(e) => e.fmt(f),
            Error::Auth => f.write_str("authentication failed (error_auth)"),
            Error::Timeout => f.write_str("timed out waiting for the server"),
            Error::Unusable => f.write_str("connection is unusable after an earlier failure"),
            Error::LeaseLost => f.write_str("lease lost: renew failed or deadline passed"),
            Error::NoLeader { attempts } => {
                write!(f, "no cluster leader found after {attempts} attempts")
            }
        }
    }
}

/// `source()` is the transport error of [`Error::Io`]; the other variants
/// have none (the ones that wrap a value already show it in full).
impl<E: core::error::Error + 'static> core::error::Error for Error<E> {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(feature = "defmt")]
impl<E: embedded_io_async::Error> defmt::Format for Error<E> {
    fn format(&self, f: defmt::Formatter<'_>) {
        match self {
            Error::Io(e) => defmt::write!(f, "Io({})", e.kind()),
            Error::Disconnected => defmt::write!(f, "Disconnected"),
            Error::LineTooLong => defmt::write!(f, "LineTooLong"),
            Error::Protocol(e) => defmt::write!(f, "Protocol({})", e),
            Error::InvalidArgument(e) => defmt::write!(f, "InvalidArgument({})", e),
            Error::Config(e) => defmt::write!(f, "Config({})", e),
            Error::Server(e) => defmt::write!(f, "Server({})", e),
            Error::Auth => defmt::write!(f, "Auth"),
            Error::Timeout => defmt::write!(f, "Timeout"),
            Error::Unusable => defmt::write!(f, "Unusable"),
            Error::LeaseLost => defmt::write!(f, "LeaseLost"),
            Error::NoLeader { attempts } => defmt::write!(f, "NoLeader({=u32})", attempts),
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::testing::ScriptError;
    use std::string::ToString;

    #[test]
    fn unknown_status_text_is_cut_safely() {
        let long = "é".repeat(100);
        let ServerError::Unknown(t) = ServerError::from_status(Status::Unknown(&long)) else {
            panic!()
        };
        assert_eq!(t.len(), 64);
        assert!(long.starts_with(t.as_str()));
    }

    /// Issue 12 defect 6: the leader address of `error_not_leader` was cut
    /// to 64 bytes; a 253-byte host name and a port must survive whole.
    #[test]
    fn not_leader_keeps_the_whole_address() {
        let host = std::format!("{}.example.com", "a".repeat(241));
        assert_eq!(host.len(), 253);
        let addr = std::format!("{host}:65535");
        assert_eq!(addr.len(), MAX_LEADER_ADDR);
        let ServerError::NotLeader(Some(kept)) =
            ServerError::from_status(Status::NotLeader(Some(&addr)))
        else {
            panic!()
        };
        assert_eq!(kept.as_str(), addr);
    }

    #[test]
    fn recoverability() {
        type E = Error<()>;
        assert!(E::Config(ConfigError::new("o", "r")).is_recoverable());
        assert!(E::Server(ServerError::Error).is_recoverable());
        assert!(!E::Server(ServerError::Draining).is_recoverable());
        assert!(!E::Disconnected.is_recoverable());
        assert!(!E::LineTooLong.is_recoverable());
        assert!(!E::Auth.is_recoverable());
        assert!(!E::Io(()).is_recoverable());
    }

    #[test]
    fn an_elapsed_deadline_is_a_timeout() {
        assert!(matches!(Error::<()>::from(Elapsed), Error::Timeout));
    }

    #[test]
    fn display() {
        let e: Error<ScriptError> = Error::Server(ServerError::NotLeader(Some(leader_addr("h:1"))));
        assert_eq!(
            e.to_string(),
            "server is not the cluster leader; leader is h:1"
        );
        let e: Error<ScriptError> = ConfigError::new("queue", "must be at least 1").into();
        assert_eq!(e.to_string(), "invalid option `queue`: must be at least 1");
    }

    #[test]
    fn transport_error_is_shown_by_display_and_is_the_source() {
        use core::error::Error as _;
        let e: Error<ScriptError> = Error::Io(ScriptError);
        assert_eq!(e.to_string(), "transport error: scripted transport error");
        let source = e.source().map(|s| s.to_string());
        assert_eq!(source.as_deref(), Some("scripted transport error"));
        assert!(Error::<ScriptError>::Timeout.source().is_none());
    }
}
