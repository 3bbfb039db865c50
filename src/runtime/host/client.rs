//! The client handle of the host adapters: servers, routing, auth, TLS,
//! timeouts and a pool of idle connections, set once and shared by every
//! lock made from it, like `redis::Client` or `etcd_client::Client`.
//!
//! Everything but the runtime lives here: a `Client` is its shared
//! [`ClientConfig`] (which holds the pool), and the `client_types!` macro
//! gives `dflockd_client::tokio::Client` and
//! `dflockd_client::blocking::Client` the same methods, written once.
//! The adapters add the signal connection (async or not).

use core::time::Duration;
use std::io;
use std::string::String;

use super::HostTls;
use super::settings::{ClientConfig, DEFAULT_SERVER};
use super::signal::SignalOptions;
use crate::Error;
use crate::runtime::ConnectOptions;

/// What a client knows beyond its config: the pool of its connections
/// `C`, the signal connection's setup.
impl ClientConfig {
    /// Idle connections now; their max per server; their max age.
    pub(crate) fn pool_figures<C: Send + 'static>(&self) -> (usize, usize, Duration) {
        self.pool::<C>().map_or((0, 0, Duration::ZERO), |p| {
            (p.idle(), p.max_idle(), p.max_age())
        })
    }

    /// Where and how the signal connection connects: the first server, the
    /// client's connect options and TLS, and `opts` with the client's
    /// `read_timeout` and `io_timeout`.
    pub(crate) fn signal_setup(
        &self,
        mut opts: SignalOptions,
    ) -> Result<(&str, &ConnectOptions, Option<HostTls>, SignalOptions), Error<io::Error>> {
        let addr = self.servers.first().map_or(DEFAULT_SERVER, String::as_str);
        opts.read_timeout = self.read_timeout;
        opts.io_timeout = self.connect.io_timeout;
        let (addr, connect, tls) = self.dial(addr)?;
        Ok((addr, connect, tls, opts))
    }

    /// [`SignalOptions::default`], with a heartbeat below the client's
    /// read timeout.
    pub(crate) fn default_signal_options(&self) -> SignalOptions {
        let mut opts = SignalOptions::default();
        let read = self.read_timeout;
        if !read.is_zero() && opts.heartbeat >= read {
            opts.heartbeat = read * 2 / 3;
        }
        opts
    }
}

/// Defines a runtime's `Client` and `ClientBuilder`: `$lock` and `$sem`
/// are its lock types, `$conn` the connection they pool, `$rt` its name
/// in the docs. The `Client` docs are the shared `client.md` and the
/// runtime's own example, `client-$rt.md`. The runtime adds the signal
/// connection.
macro_rules! client_types {
    ($lock:ty, $sem:ty, $conn:ty, $rt:literal) => {
        #[doc = include_str!("../host/client.md")]
        #[doc = include_str!(concat!("../host/client-", $rt, ".md"))]
        #[derive(Clone)]
        pub struct Client(std::sync::Arc<crate::runtime::host::settings::ClientConfig>);

        impl core::fmt::Debug for Client {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.debug_struct("Client")
                    .field("config", &self.0)
                    .field("idle_connections", &self.idle_connections())
                    .finish()
            }
        }

        impl Client {
            /// A client of the one server at `addr` (`host:port`) with the
            /// defaults: plain TCP, no auth, the default timeouts and pool.
            pub fn new(addr: impl Into<std::string::String>) -> Self {
                Self::builder().server(addr).build()
            }

            /// A builder; see [`ClientBuilder`] for the options and defaults.
            pub fn builder() -> ClientBuilder {
                ClientBuilder {
                    config: Default::default(),
                }
            }

            /// An exclusive lock on `key` with the default
            /// [`LockOptions`](crate::lock::LockOptions) (10 s acquire timeout,
            /// the server's lease), sharing the client's settings and pool.
            /// Nothing is sent until it is acquired.
            pub fn lock(&self, key: impl Into<std::string::String>) -> $lock {
                self.lock_with(key, crate::lock::LockOptions::DEFAULT)
            }

            /// [`lock`](Self::lock) with other lease options. Their
            /// `read_timeout` and `io_timeout` are replaced by the client's (one
            /// server setting, one reply bound for every lock).
            ///
            /// ```no_run
            #[doc = concat!(" # fn demo(client: &dflockd_client::", $rt, "::Client) {")]
            /// use std::time::Duration;
            /// use dflockd_client::lock::LockOptions;
            ///
            /// let mut options = LockOptions::default();
            /// options.lease_ttl = Some(Duration::from_secs(60));
            /// options.acquire_timeout = Duration::from_secs(2);
            /// let lock = client.lock_with("orders", options);
            /// # let _ = lock; }
            /// ```
            pub fn lock_with(
                &self,
                key: impl Into<std::string::String>,
                options: crate::lock::LockOptions,
            ) -> $lock {
                self.0.make(key.into(), crate::Kind::Lock, options)
            }

            /// A counting semaphore on `key` admitting `limit` holders, with the
            /// default [`LockOptions`](crate::lock::LockOptions). All clients of
            /// a key must use the same limit.
            pub fn semaphore(&self, key: impl Into<std::string::String>, limit: u32) -> $sem {
                self.semaphore_with(key, limit, crate::lock::LockOptions::DEFAULT)
            }

            /// [`semaphore`](Self::semaphore) with other lease options (timeouts
            /// as in [`lock_with`](Self::lock_with)).
            pub fn semaphore_with(
                &self,
                key: impl Into<std::string::String>,
                limit: u32,
                options: crate::lock::LockOptions,
            ) -> $sem {
                self.0
                    .make(key.into(), crate::Kind::Semaphore { limit }, options)
            }

            /// The servers, in routing order.
            pub fn servers(&self) -> &[std::string::String] {
                &self.0.servers
            }

            /// Idle connections in the pool now, over all servers.
            pub fn idle_connections(&self) -> usize {
                self.0.pool_figures::<$conn>().0
            }

            /// Idle connections kept per server at most
            /// ([`ClientBuilder::pool_max_idle`]).
            pub fn pool_max_idle(&self) -> usize {
                self.0.pool_figures::<$conn>().1
            }

            /// How long a pooled connection may sit idle: the
            /// [`pool_idle_timeout`](ClientBuilder::pool_idle_timeout), at most
            /// two thirds of the [`read_timeout`](ClientBuilder::read_timeout).
            pub fn pool_idle_lifetime(&self) -> core::time::Duration {
                self.0.pool_figures::<$conn>().2
            }
        }

        #[doc = concat!("Builds a ", $rt, " [`Client`] (`Client::builder()`).")]
        ///
        /// Defaults: [`DEFAULT_SERVER`](crate::blocking::DEFAULT_SERVER)
        /// when no server is given, CRC-32 routing, no auth, plain TCP,
        /// connect timeout 10 s, `io_timeout` 10 s, `read_timeout` 23 s (the
        /// server's default), a pool of 8 idle connections per server, each
        /// idle for 15 s at most.
        #[derive(Debug)]
        pub struct ClientBuilder {
            config: crate::runtime::host::settings::ClientConfig,
        }

        impl ClientBuilder {
            crate::runtime::host::settings::config_setters!();

            crate::runtime::host::settings::setters! {
                /// Idle connections kept per server for reuse (default
                /// [`DEFAULT_POOL_MAX_IDLE`](crate::blocking::DEFAULT_POOL_MAX_IDLE),
                /// 8). Zero turns the pool off: every acquire opens its own
                /// connection and every release closes it. This bounds idle
                /// connections only; locks held at once each have their own.
                pool_max_idle(max: usize) => config.pool_max_idle = max;

                /// How long a connection may wait in the pool before it is closed
                /// (default
                /// [`DEFAULT_POOL_IDLE_TIMEOUT`](crate::blocking::DEFAULT_POOL_IDLE_TIMEOUT),
                /// 15 s). Capped at two thirds of the
                /// [`read_timeout`](Self::read_timeout), so the server never times
                /// a pooled connection out. Zero turns the pool off.
                pool_idle_timeout(timeout: core::time::Duration) => config.pool_idle_timeout = timeout;
            }

            /// Builds the client. Nothing is connected until a lock is acquired.
            pub fn build(self) -> Client {
                Client(self.config.finish())
            }
        }
    };
}
pub(crate) use client_types;

/// The pool defaults, for the docs of the builders.
const _: () = {
    assert!(super::pool::DEFAULT_POOL_MAX_IDLE == 8);
    assert!(super::pool::DEFAULT_POOL_IDLE_TIMEOUT.as_secs() == 15);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_signal_heartbeat_stays_below_the_read_timeout() {
        let config = ClientConfig::default().finish();
        assert_eq!(
            config.default_signal_options().heartbeat,
            Duration::from_secs(15)
        );
        let short = ClientConfig {
            read_timeout: Duration::from_secs(9),
            ..ClientConfig::default()
        };
        let config = short.finish();
        assert_eq!(
            config.default_signal_options().heartbeat,
            Duration::from_secs(6)
        );
        let (addr, _, tls, opts) = config.signal_setup(SignalOptions::default()).unwrap();
        assert_eq!(addr, DEFAULT_SERVER);
        assert!(tls.is_none());
        assert_eq!(opts.read_timeout, Duration::from_secs(9));
    }
}
