//! Runtime adapters: transports, timers and connect helpers, one module per
//! runtime, each behind its feature. They add scheduling, never protocol
//! logic.

#[cfg(feature = "std")]
pub mod blocking;
#[cfg(feature = "std")]
pub mod blocking_lock;
#[cfg(feature = "std")]
pub mod cluster_blocking;
#[cfg(feature = "std")]
mod cluster_common;
#[cfg(feature = "tokio")]
pub mod cluster_tokio;
#[cfg(feature = "embassy-time")]
pub mod embassy;
#[cfg(feature = "std")]
mod lock_builder;
#[cfg(feature = "std")]
pub mod signal;
#[cfg(feature = "rustls")]
pub mod tls_rustls;
#[cfg(feature = "tokio")]
pub mod tokio;
#[cfg(feature = "tokio")]
pub mod tokio_lock;
#[cfg(all(feature = "wasi", target_os = "wasi", target_env = "p2"))]
pub mod wasi;

#[cfg(feature = "std")]
pub use cluster_common::{ClusterBuilder, Renewal};
#[cfg(feature = "std")]
pub use lock_builder::{DEFAULT_SERVER, LockBuilder};

#[cfg(any(
    feature = "std",
    all(feature = "wasi", target_os = "wasi", target_env = "p2")
))]
mod auth_token {
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
}

#[cfg(any(
    feature = "std",
    all(feature = "wasi", target_os = "wasi", target_env = "p2")
))]
pub use auth_token::AuthToken;

/// How the async adapters (tokio, WASI) connect.
#[cfg(any(
    feature = "tokio",
    all(feature = "wasi", target_os = "wasi", target_env = "p2")
))]
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Gives up connecting (name resolution included, where the runtime
    /// resolves names) after this long. Default 10 s.
    pub connect_timeout: core::time::Duration,
    /// Sent with `auth` as the first request when set. Never logged.
    pub auth_token: Option<AuthToken>,
}

#[cfg(any(
    feature = "tokio",
    all(feature = "wasi", target_os = "wasi", target_env = "p2")
))]
impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            auth_token: None,
        }
    }
}

/// Default connect timeout of every host adapter: 10 s, as the other clients.
pub const DEFAULT_CONNECT_TIMEOUT: core::time::Duration = core::time::Duration::from_secs(10);

/// Default line buffer of host connections, in bytes.
pub const DEFAULT_LINE_BUF: usize = 1024;
