//! Runtime adapters: transports, timers and connect helpers, one module per
//! runtime, each behind its feature. They add scheduling, never protocol
//! logic. Published at the crate root as [`crate::tokio`],
//! [`crate::blocking`], `crate::wasi` and `crate::embassy`.

#[cfg(feature = "std")]
pub mod blocking;
#[cfg(feature = "embassy-time")]
pub mod embassy;
#[cfg(feature = "std")]
pub(crate) mod host;
#[cfg(feature = "tokio")]
pub mod tokio;
#[cfg(all(feature = "wasi", target_os = "wasi", target_env = "p2"))]
pub mod wasi;

#[cfg(any(
    feature = "std",
    all(feature = "wasi", target_os = "wasi", target_env = "p2")
))]
pub use self::host_common::*;

/// What every host adapter (tokio, blocking, WASI) shares: the auth token,
/// the connect options and their defaults.
#[cfg(any(
    feature = "std",
    all(feature = "wasi", target_os = "wasi", target_env = "p2")
))]
mod host_common {
    use std::string::String;

    /// A shared authentication token that never shows in `Debug` output or
    /// logs.
    #[derive(Clone, PartialEq, Eq)]
    pub struct AuthToken(String);

    impl AuthToken {
        /// Wraps a token.
        pub fn new(token: impl Into<String>) -> Self {
            Self(token.into())
        }

        /// The token text, for sending.
        pub fn expose(&self) -> &str {
            &self.0
        }
    }

    impl core::fmt::Debug for AuthToken {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str("AuthToken(<redacted>)")
        }
    }

    impl From<&str> for AuthToken {
        fn from(s: &str) -> Self {
            Self::new(s)
        }
    }

    impl From<String> for AuthToken {
        fn from(s: String) -> Self {
            Self(s)
        }
    }

    /// How every host adapter (tokio, blocking, WASI) connects, and how long a
    /// request may take.
    #[derive(Debug, Clone)]
    pub struct ConnectOptions {
        /// Gives up connecting (name resolution included, where the runtime
        /// resolves names) after this long. Default 10 s.
        pub connect_timeout: core::time::Duration,
        /// How long a request may take beyond the time the server may block
        /// on purpose (an acquire's or wait's timeout). Default 10 s. The
        /// blocking connection gives each request this deadline; the tokio and
        /// WASI connections leave request bounds to their `timeout` helper and
        /// the high-level APIs to their own `io_timeout` option.
        pub io_timeout: core::time::Duration,
        /// Sent with `auth` as the first request when set. Never logged.
        pub auth_token: Option<AuthToken>,
    }

    impl Default for ConnectOptions {
        fn default() -> Self {
            Self {
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                io_timeout: DEFAULT_IO_TIMEOUT,
                auth_token: None,
            }
        }
    }

    impl ConnectOptions {
        /// The token to send with `auth` after connecting, if any.
        pub(crate) fn token(&self) -> Option<&str> {
            self.auth_token.as_ref().map(AuthToken::expose)
        }
    }

    /// Default connect timeout of every host adapter: 10 s, as the other clients.
    pub const DEFAULT_CONNECT_TIMEOUT: core::time::Duration = core::time::Duration::from_secs(10);

    /// Default line buffer of host connections, in bytes.
    pub const DEFAULT_LINE_BUF: usize = 1024;

    /// Default client-side request timeout of every host adapter: 10 s.
    pub const DEFAULT_IO_TIMEOUT: core::time::Duration = crate::lock::DEFAULT_IO_TIMEOUT;
}
