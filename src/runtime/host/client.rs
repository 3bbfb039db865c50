//! The client handle of the host adapters: servers, routing, auth, TLS,
//! timeouts and a pool of idle connections, set once and shared by every
//! lock made from it. Published as `dflockd_client::tokio::Client` and
//! `dflockd_client::blocking::Client` (the same type over a runtime
//! marker), like `redis::Client` or `etcd_client::Client`.

use core::marker::PhantomData;
use core::time::Duration;
use std::io;
use std::string::String;
use std::sync::Arc;

use super::HostTls;
use super::pool::Pool;
use super::settings::{ClientConfig, Settings, config_setters, sealed::FromSettings};
use super::signal::SignalOptions;
use crate::lock::LockOptions;
use crate::runtime::ConnectOptions;
use crate::{Error, Kind};

pub(crate) mod sealed {
    use super::super::settings::sealed::FromSettings;

    /// The runtimes a [`Client`](super::Client) works on: `Tokio` and
    /// `Blocking`. Sealed.
    pub trait Adapter: 'static {
        /// The connection the pool keeps.
        type Conn: Send + 'static;
        /// The runtime's `DistributedLock`.
        type Lock: FromSettings<Conn = Self::Conn>;
        /// The runtime's `DistributedSemaphore`.
        type Semaphore: FromSettings<Conn = Self::Conn>;
    }
}

/// A handle on a set of dflockd servers: servers and routing strategy,
/// authentication, TLS, timeouts and a pool of idle connections, set once.
/// Every lock and semaphore made from it shares them. Cheap to clone (an
/// `Arc`); the clones share the pool.
///
/// Use it as `dflockd_client::tokio::Client` or
/// `dflockd_client::blocking::Client` (same methods, minus `async` on the
/// blocking side).
///
/// # The pool
///
/// Each acquire takes an idle connection to the key's server from the pool,
/// or opens one (TCP, TLS handshake, `auth`). When a lease is released
/// cleanly (the server confirmed the release), its connection goes back to
/// the pool for the next acquire. A connection whose wait was abandoned,
/// whose lease was lost, whose request failed or whose state is unknown
/// (a guard dropped while a renew was in flight, a release that failed) is
/// closed, never reused: the server then frees whatever it held.
///
/// At most [`pool_max_idle`](ClientBuilder::pool_max_idle) connections per
/// server wait in the pool (default
/// [`DEFAULT_POOL_MAX_IDLE`](super::pool::DEFAULT_POOL_MAX_IDLE), 8), each
/// for at most [`pool_idle_timeout`](ClientBuilder::pool_idle_timeout)
/// (default 15 s) and never longer than two thirds of the server's
/// [`read_timeout`](ClientBuilder::read_timeout) (default 23 s): a pooled
/// connection is closed before the server could time it out (closed, not
/// pinged; a background thread of the pool does it even when nobody
/// acquires). When taken from the pool a connection is probed first (one
/// non-blocking system call); one the server closed meanwhile is dropped
/// and the next one tried, or a new one opened, so a server restart or a
/// server-side idle close never fails an acquire.
///
/// # Signals
///
/// [`signals`](Self::signals) opens a signal connection with the client's
/// auth, TLS and timeouts to the FIRST server of the list: the server
/// delivers a signal only to its own connections, so signals are not
/// sharded; every emitter and listener of a channel must use the same
/// server.
///
/// ```no_run
/// # async fn demo() -> Result<(), dflockd_client::Error<std::io::Error>> {
/// use std::time::Duration;
/// use dflockd_client::tokio::Client;
///
/// let client = Client::builder()
///     .servers(["10.0.0.1:6388", "10.0.0.2:6388"])
///     .auth_token("s3cret")
///     .connect_timeout(Duration::from_secs(2))
///     .build();
/// let orders = client.lock("orders");
/// if let Some(guard) = orders.acquire().await? {
///     // ... critical section; the lease is renewed in the background ...
///     guard.release().await?; // the connection goes back to the pool
/// }
/// let pool = client.semaphore("db-pool", 5);
/// # let _ = pool; Ok(()) }
/// ```
pub struct Client<A: sealed::Adapter> {
    config: Arc<ClientConfig>,
    pool: Arc<Pool<A::Conn>>,
}

impl<A: sealed::Adapter> Clone for Client<A> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            pool: self.pool.clone(),
        }
    }
}

impl<A: sealed::Adapter> core::fmt::Debug for Client<A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.config)
            .field("pool", &self.pool)
            .finish()
    }
}

impl<A: sealed::Adapter> Client<A> {
    /// A client of the one server at `addr` (`host:port`) with the
    /// defaults: plain TCP, no auth, the default timeouts and pool.
    pub fn new(addr: impl Into<String>) -> Self {
        Self::builder().server(addr).build()
    }

    /// A builder; without any server it uses
    /// [`DEFAULT_SERVER`](crate::blocking::DEFAULT_SERVER).
    pub fn builder() -> ClientBuilder<A> {
        ClientBuilder {
            config: ClientConfig::default(),
            _adapter: PhantomData,
        }
    }

    fn make<L: FromSettings<Conn = A::Conn>>(
        &self,
        key: String,
        kind: Kind,
        options: LockOptions,
    ) -> L {
        let settings = Settings::new(self.config.clone(), key, kind, options);
        L::from_settings(settings, self.pool.clone())
    }

    /// An exclusive lock on `key` with the default [`LockOptions`] (10 s
    /// acquire timeout, the server's lease). Nothing is sent until it is
    /// acquired.
    pub fn lock(&self, key: impl Into<String>) -> A::Lock {
        self.lock_with(key, LockOptions::DEFAULT)
    }

    /// [`lock`](Self::lock) with other lease options. Their
    /// `read_timeout` and `io_timeout` are replaced by the client's (one
    /// server setting, one reply bound for every lock).
    ///
    /// ```no_run
    /// # fn demo(client: &dflockd_client::blocking::Client) {
    /// use std::time::Duration;
    /// use dflockd_client::lock::LockOptions;
    ///
    /// let mut options = LockOptions::default();
    /// options.lease_ttl = Some(Duration::from_secs(60));
    /// options.acquire_timeout = Duration::from_secs(2);
    /// let lock = client.lock_with("orders", options);
    /// # let _ = lock; }
    /// ```
    pub fn lock_with(&self, key: impl Into<String>, options: LockOptions) -> A::Lock {
        self.make(key.into(), Kind::Lock, options)
    }

    /// A counting semaphore on `key` admitting `limit` holders, with the
    /// default [`LockOptions`]. All clients of a key must use the same
    /// limit.
    pub fn semaphore(&self, key: impl Into<String>, limit: u32) -> A::Semaphore {
        self.semaphore_with(key, limit, LockOptions::DEFAULT)
    }

    /// [`semaphore`](Self::semaphore) with other lease options (timeouts
    /// as in [`lock_with`](Self::lock_with)).
    pub fn semaphore_with(
        &self,
        key: impl Into<String>,
        limit: u32,
        options: LockOptions,
    ) -> A::Semaphore {
        self.make(key.into(), Kind::Semaphore { limit }, options)
    }

    /// The servers, in routing order.
    pub fn servers(&self) -> &[String] {
        &self.config.servers
    }

    /// Idle connections in the pool now, over all servers.
    pub fn idle_connections(&self) -> usize {
        self.pool.idle()
    }

    /// Idle connections kept per server at most.
    pub fn pool_max_idle(&self) -> usize {
        self.pool.max_idle()
    }

    /// How long a pooled connection may sit idle: the
    /// [`pool_idle_timeout`](ClientBuilder::pool_idle_timeout), at most
    /// two thirds of the [`read_timeout`](ClientBuilder::read_timeout).
    pub fn pool_idle_lifetime(&self) -> Duration {
        self.pool.max_age()
    }

    /// Where and how the signal connection of [`signals`](Self::signals)
    /// connects: the first server, the client's connect options and TLS,
    /// and `opts` with the client's `read_timeout` and `io_timeout`.
    pub(crate) fn signal_setup(
        &self,
        mut opts: SignalOptions,
    ) -> Result<(&str, ConnectOptions, Option<HostTls>, SignalOptions), Error<io::Error>> {
        let c = &self.config;
        let addr = c
            .servers
            .first()
            .map_or(super::settings::DEFAULT_SERVER, String::as_str);
        opts.read_timeout = c.read_timeout;
        opts.io_timeout = c.io_timeout;
        Ok((addr, c.connect_options(), c.tls_for(addr)?, opts))
    }

    /// [`SignalOptions::default`], with a heartbeat below the client's
    /// read timeout.
    pub(crate) fn default_signal_options(&self) -> SignalOptions {
        let mut opts = SignalOptions::default();
        let read = self.config.read_timeout;
        if !read.is_zero() && opts.heartbeat >= read {
            opts.heartbeat = read * 2 / 3;
        }
        opts
    }
}

/// Builds a [`Client`]: `dflockd_client::tokio::Client::builder()` or
/// `dflockd_client::blocking::Client::builder()`.
///
/// Defaults: [`DEFAULT_SERVER`](crate::blocking::DEFAULT_SERVER) when no
/// server is given, CRC-32 routing, no auth, plain TCP, connect timeout
/// 10 s, `io_timeout` 10 s, `read_timeout` 23 s (the server's default),
/// pool of 8 idle connections per server, each idle for 15 s at most.
pub struct ClientBuilder<A: sealed::Adapter> {
    config: ClientConfig,
    _adapter: PhantomData<fn() -> A>,
}

impl<A: sealed::Adapter> core::fmt::Debug for ClientBuilder<A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_tuple("ClientBuilder").field(&self.config).finish()
    }
}

impl<A: sealed::Adapter> ClientBuilder<A> {
    config_setters!();

    /// Idle connections kept per server for reuse (default
    /// [`DEFAULT_POOL_MAX_IDLE`](super::pool::DEFAULT_POOL_MAX_IDLE), 8).
    /// Zero turns the pool off: every acquire opens its own connection and
    /// every release closes it. This bounds idle connections only; locks
    /// held at once each have their own connection.
    pub fn pool_max_idle(mut self, max: usize) -> Self {
        self.config.pool_max_idle = max;
        self
    }

    /// How long a connection may wait in the pool before it is closed
    /// (default
    /// [`DEFAULT_POOL_IDLE_TIMEOUT`](super::pool::DEFAULT_POOL_IDLE_TIMEOUT),
    /// 15 s). Capped at two thirds of the
    /// [`read_timeout`](Self::read_timeout), so the server never times a
    /// pooled connection out. Zero turns the pool off.
    pub fn pool_idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.pool_idle_timeout = timeout;
        self
    }

    /// Builds the client. Nothing is connected until a lock is acquired.
    pub fn build(self) -> Client<A> {
        let config = self.config.finish();
        Client {
            pool: Arc::new(config.pool()),
            config: Arc::new(config),
        }
    }
}
