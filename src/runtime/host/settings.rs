//! The settings of host locks, split in two: the client-wide part
//! ([`ClientConfig`]: servers, routing, auth, TLS, timeouts, the pool),
//! shared in an `Arc` by a [`Client`](super::client::Client) and every lock
//! made from it, and the per-lock part ([`Settings`]: key, kind,
//! [`LockOptions`]). Also the per-object [`LockBuilder`], which gives each
//! lock a client-wide part of its own.

use std::io;
use std::marker::PhantomData;
use std::string::String;
use std::sync::Arc;
use std::time::Duration;
use std::vec::Vec;

use super::HostTls;
use super::pool::{DEFAULT_POOL_IDLE_TIMEOUT, DEFAULT_POOL_MAX_IDLE, Pool, max_age};
use crate::lock::{LockOptions, LockSpec};
use crate::routing::{Crc32Mod, RouteError, Strategy, route};
use crate::runtime::ConnectOptions;
use crate::{ConfigError, Error, Kind};
use core::any::Any;
use std::sync::OnceLock;

/// The server used when none is given: `127.0.0.1:6388`.
pub const DEFAULT_SERVER: &str = "127.0.0.1:6388";

/// Line buffer of the connections the host lock APIs open.
pub(crate) const LINE: usize = 256;

/// The client-wide settings: where and how to connect, and how to pool.
/// Held in an `Arc` by a `Client` and every lock made from it.
pub struct ClientConfig {
    pub(crate) servers: Vec<String>,
    pub(crate) strategy: Arc<dyn Strategy + Send + Sync>,
    /// The connect timeout, the reply timeout and the `auth` token.
    pub(crate) connect: ConnectOptions,
    pub(crate) tls: Option<TlsSetting>,
    pub(crate) read_timeout: Duration,
    pub(crate) pool_max_idle: usize,
    pub(crate) pool_idle_timeout: Duration,
    /// The pool of idle connections, made by the first acquire (it knows
    /// the connection type; see [`pool`](Self::pool)).
    pub(crate) pool: OnceLock<Arc<dyn Any + Send + Sync>>,
}

impl core::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("servers", &self.servers)
            .field("connect", &self.connect)
            .field("tls", &self.tls)
            .field("read_timeout", &self.read_timeout)
            .field("pool_max_idle", &self.pool_max_idle)
            .field("pool_idle_timeout", &self.pool_idle_timeout)
            .finish_non_exhaustive()
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            strategy: Arc::new(Crc32Mod),
            connect: ConnectOptions::default(),
            tls: None,
            read_timeout: LockOptions::DEFAULT.read_timeout,
            pool_max_idle: DEFAULT_POOL_MAX_IDLE,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            pool: OnceLock::new(),
        }
    }
}

impl ClientConfig {
    /// The config to share: the server list [`DEFAULT_SERVER`] when empty.
    pub(crate) fn finish(mut self) -> Arc<Self> {
        if self.servers.is_empty() {
            self.servers.push(DEFAULT_SERVER.into());
        }
        Arc::new(self)
    }

    /// A lock or semaphore under this config, sharing it and so the pool.
    pub(crate) fn make<L: sealed::FromSettings>(
        self: &Arc<Self>,
        key: String,
        kind: Kind,
        options: LockOptions,
    ) -> L {
        L::from_settings(Settings::new(self.clone(), key, kind, options))
    }

    /// The pool of idle `C` connections to these servers, made on first
    /// use with these pool options and shared by every lock of this config.
    /// `None` only if the config was first used with another connection
    /// type (never: a config belongs to one runtime's locks).
    pub(crate) fn pool<C: Send + 'static>(&self) -> Option<Arc<Pool<C>>> {
        let pool = self.pool.get_or_init(|| {
            Arc::new(Pool::<C>::new(
                self.servers.len(),
                self.pool_max_idle,
                max_age(self.pool_idle_timeout, self.read_timeout),
            ))
        });
        pool.clone().downcast().ok()
    }

    /// How to connect to the server at `addr`: the address, the connect
    /// options and the TLS connector for it, if TLS is on.
    pub(crate) fn dial<'a>(&'a self, addr: &'a str) -> Result<Dial<'a>, Error<io::Error>> {
        let tls = self.tls.as_ref().map(|t| t.for_addr(addr)).transpose()?;
        Ok((addr, &self.connect, tls))
    }
}

/// Where and how to connect: see [`ClientConfig::dial`].
pub(crate) type Dial<'a> = (&'a str, &'a ConnectOptions, Option<HostTls>);

/// Everything a host lock needs; shared by its guards. `options` carries
/// the client's `io_timeout` and `read_timeout`.
#[derive(Debug)]
pub struct Settings {
    pub(crate) key: String,
    pub(crate) kind: Kind,
    pub(crate) options: LockOptions,
    pub(crate) config: Arc<ClientConfig>,
}

/// TLS of a host lock: the connector, and where the server name comes from.
/// Never built without the `rustls` feature.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "rustls"), allow(dead_code))]
pub(crate) struct TlsSetting {
    pub(crate) connector: HostTls,
    /// Check each server against the host part of its address instead of
    /// the connector's name.
    pub(crate) name_per_server: bool,
}

impl TlsSetting {
    /// The connector for the server at `addr`.
    #[cfg(feature = "rustls")]
    fn for_addr(&self, addr: &str) -> Result<HostTls, Error<io::Error>> {
        if self.name_per_server {
            self.connector.with_server_name(host_of(addr)).map_err(|_| {
                Error::Config(ConfigError::new(
                    "servers",
                    "each host must be a DNS name or an IP address (tls_per_server)",
                ))
            })
        } else {
            Ok(self.connector.clone())
        }
    }

    #[cfg(not(feature = "rustls"))]
    fn for_addr(&self, _addr: &str) -> Result<HostTls, Error<io::Error>> {
        match self.connector {}
    }
}

/// The host part of `host:port`, `[v6]:port` or a bare host.
#[cfg_attr(not(feature = "rustls"), allow(dead_code))]
fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(host, _)| host);
    }
    match addr.rsplit_once(':') {
        // More than one colon without brackets: a bare IPv6 address.
        Some((host, _)) if !host.contains(':') => host,
        _ => addr,
    }
}

impl Settings {
    /// A lock's settings under `config`, whose timeouts replace those of
    /// `options`.
    pub(crate) fn new(
        config: Arc<ClientConfig>,
        key: String,
        kind: Kind,
        mut options: LockOptions,
    ) -> Self {
        options.io_timeout = config.connect.io_timeout;
        options.read_timeout = config.read_timeout;
        Self {
            key,
            kind,
            options,
            config,
        }
    }

    pub(crate) fn spec(&self) -> LockSpec<'_> {
        LockSpec::new(&self.key, self.kind).with_options(self.options)
    }

    /// Where and how to connect: the server that owns the key, the
    /// connect options and the TLS connector for it.
    pub(crate) fn dial(&self) -> Result<Dial<'_>, Error<io::Error>> {
        self.config.dial(&self.config.servers[self.server_index()?])
    }

    /// The index of the server that owns the key.
    pub(crate) fn server_index(&self) -> Result<usize, Error<io::Error>> {
        let list: Vec<&str> = self.config.servers.iter().map(String::as_str).collect();
        route(&*self.config.strategy, &self.key, &list).map_err(route_error)
    }
}

fn route_error(e: RouteError) -> Error<io::Error> {
    Error::Config(match e {
        RouteError::NoServers => ConfigError::new("servers", "must not be empty"),
        RouteError::OutOfRange { .. } => ConfigError::new(
            "strategy",
            "must return an index below the number of servers",
        ),
    })
}

/// Builder setters that store their argument, one line each:
/// `docs name(arg: Type) => field.path = value;` expands to
/// `pub fn name(mut self, arg: Type) -> Self` doing `self.field.path =
/// value`. The one way every host builder's setter is written.
macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident($arg:ident: $ty:ty) => $($field:ident).+ = $value:expr;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, $arg: $ty) -> Self {
                self.$($field).+ = $value;
                self
            }
        )*
    };
}
pub(crate) use setters;

/// The lease setters of [`LockBuilder`] and the cluster locks (both keep
/// `options: LockOptions`); each says what the acquire timeout and the
/// lease TTL mean for it, and writes its own `options`.
macro_rules! lease_setters {
    ($(#[$acquire:meta])* acquire_timeout, $(#[$ttl:meta])* lease_ttl) => {
        $crate::runtime::host::settings::setters! {
            $(#[$acquire])*
            acquire_timeout(timeout: core::time::Duration) => options.acquire_timeout = timeout;
            $(#[$ttl])*
            lease_ttl(ttl: core::time::Duration) => options.lease_ttl = Some(ttl);
            /// When to renew, as a fraction of the lease (default 0.5).
            renew_ratio(ratio: $crate::lock::RenewRatio) => options.renew_ratio = ratio;
            /// Random early renew, as a fraction of the renew interval
            /// (default 10 %).
            early_jitter(jitter: $crate::lock::Jitter) => options.early_jitter = jitter;
        }
    };
}
pub(crate) use lease_setters;

/// The client-wide setters, shared by [`LockBuilder`] and
/// [`ClientBuilder`](super::client::ClientBuilder) (both keep a
/// `config: ClientConfig`).
macro_rules! config_setters {
    () => {
        /// Adds a server (`host:port`). Without any, [`DEFAULT_SERVER`](crate::blocking::DEFAULT_SERVER).
        pub fn server(mut self, addr: impl Into<std::string::String>) -> Self {
            self.config.servers.push(addr.into());
            self
        }

        /// Replaces the server list. Keys are routed across it by the
        /// strategy: list the servers in the same order in every client.
        pub fn servers<I, S>(mut self, addrs: I) -> Self
        where
            I: IntoIterator<Item = S>,
            S: Into<std::string::String>,
        {
            self.config.servers = addrs.into_iter().map(Into::into).collect();
            self
        }

        $crate::runtime::host::settings::setters! {
            /// Sets the routing strategy (default [`Crc32Mod`](crate::routing::Crc32Mod), as the other
            /// clients). A closure `Fn(&str, &[&str]) -> usize` works; an index out
            /// of range makes acquires fail with [`Error::Config`](crate::Error::Config).
            strategy(strategy: impl $crate::routing::Strategy + Send + Sync + 'static)
                => config.strategy = std::sync::Arc::new(strategy);

            /// Authenticates every connection with this token. Never logged.
            auth_token(token: impl Into<$crate::runtime::AuthToken>)
                => config.connect.auth_token = Some(token.into());

            /// Connects over TLS (feature `rustls`), verified by `connector`:
            /// chain, validity period and server name, with the name taken from the
            /// connector. With several servers, every one of them must present a
            /// certificate valid for that name (one name in the subjectAltName of
            /// all, or a wildcard); when each server has a certificate of its own,
            /// use [`tls_per_server`](Self::tls_per_server).
            ///
            /// The TCP connect, the handshake and the `auth` each get the
            /// [`connect_timeout`](Self::connect_timeout). A certificate that fails
            /// verification makes every acquire fail with [`Error::Io`](crate::Error::Io); see
            /// [`rustls_error`](crate::tls_rustls::rustls_error) for the reason.
            /// Without this option the connections are plain TCP.
            #[cfg(feature = "rustls")]
            tls(connector: $crate::runtime::host::rustls::RustlsConnector)
                => config.tls = Some($crate::runtime::host::settings::TlsSetting {
                    connector,
                    name_per_server: false,
                });

            /// [`tls`](Self::tls), but each server's certificate is checked against
            /// the host part of its own address (`locks-2.example.com` for
            /// `locks-2.example.com:6388`, `10.0.0.2` for `10.0.0.2:6388`, which
            /// then needs an IP address subjectAltName). The connector's own name
            /// is not used; its roots and configuration are.
            #[cfg(feature = "rustls")]
            tls_per_server(connector: $crate::runtime::host::rustls::RustlsConnector)
                => config.tls = Some($crate::runtime::host::settings::TlsSetting {
                    connector,
                    name_per_server: true,
                });

            /// Gives up connecting after this long (default 10 s).
            connect_timeout(timeout: core::time::Duration) => config.connect.connect_timeout = timeout;

            /// The server's idle read timeout (`--read-timeout`, default 23 s):
            /// renews are sent often enough that a held connection is never
            /// silent that long, and an idle pooled connection is closed after two
            /// thirds of it at the latest. Zero: no bound.
            read_timeout(timeout: core::time::Duration) => config.read_timeout = timeout;

            /// Client-side reply timeout beyond server-side blocking (default
            /// 10 s): a dead server gives [`Error::Timeout`](crate::Error::Timeout).
            io_timeout(timeout: core::time::Duration) => config.connect.io_timeout = timeout;
        }
    };
}
pub(crate) use config_setters;

pub(crate) mod sealed {
    /// Host lock types a [`LockBuilder`](super::LockBuilder) can build.
    pub trait FromSettings {
        fn from_settings(settings: super::Settings) -> Self;
    }
}

/// Builds a host `DistributedLock` or `DistributedSemaphore` (tokio or
/// blocking): servers and routing, authentication, TLS (feature `rustls`,
#[cfg_attr(feature = "rustls", doc = "see [`tls`](Self::tls)),")]
#[cfg_attr(not(feature = "rustls"), doc = "see `tls`),")]
/// timeouts and the lease options of [`LockOptions`].
///
/// ```no_run
/// # fn demo() {
/// use std::time::Duration;
/// use dflockd_client::blocking::DistributedLock;
///
/// let lock = DistributedLock::builder("orders")
///     .servers(["10.0.0.1:6388", "10.0.0.2:6388"])
///     .auth_token("s3cret")
///     .acquire_timeout(Duration::from_secs(5))
///     .lease_ttl(Duration::from_secs(30))
///     .build();
/// # let _ = lock; }
/// ```
///
/// The lock gets a client-wide part of its own, with a pool of idle
/// connections shared by its clones (see
/// [`Client`](crate::blocking::Client) for the pool; the defaults apply).
/// To share servers, TLS, auth and the pool between many locks, make them
/// from one `Client`.
pub struct LockBuilder<L> {
    config: ClientConfig,
    key: String,
    kind: Kind,
    options: LockOptions,
    _target: PhantomData<fn() -> L>,
}

impl<L> core::fmt::Debug for LockBuilder<L> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LockBuilder")
            .field("key", &self.key)
            .field("kind", &self.kind)
            .field("options", &self.options)
            .field("config", &self.config)
            .finish()
    }
}

impl<L: sealed::FromSettings> LockBuilder<L> {
    pub(crate) fn new(key: String, kind: Kind) -> Self {
        Self {
            config: ClientConfig::default(),
            key,
            kind,
            options: LockOptions::DEFAULT,
            _target: PhantomData,
        }
    }

    config_setters!();

    lease_setters! {
        /// How long the server may block an acquire or wait (default 10 s).
        acquire_timeout,
        /// The lease TTL (default: the server's). Sent in whole seconds,
        /// rounded up.
        lease_ttl
    }

    /// Replaces all lease options at once (its `read_timeout` and
    /// `io_timeout` included).
    pub fn options(mut self, options: LockOptions) -> Self {
        self.options = options;
        self.config.read_timeout = options.read_timeout;
        self.config.connect.io_timeout = options.io_timeout;
        self
    }

    /// Builds the lock. Nothing is connected until it is acquired.
    pub fn build(self) -> L {
        self.config.finish().make(self.key, self.kind, self.options)
    }
}

#[cfg(test)]
mod tests {
    use super::{RouteError, host_of, route_error};
    use crate::Error;

    #[test]
    fn routing_mistakes_name_the_option() {
        let option = |e| match route_error(e) {
            Error::Config(c) => c.option,
            other => panic!("{other:?}"),
        };
        assert_eq!(option(RouteError::NoServers), "servers");
        let out = RouteError::OutOfRange {
            index: 2,
            servers: 2,
        };
        assert_eq!(option(out), "strategy");
    }

    #[test]
    fn host_part_of_addresses() {
        assert_eq!(host_of("locks.example.com:6388"), "locks.example.com");
        assert_eq!(host_of("10.0.0.2:6388"), "10.0.0.2");
        assert_eq!(host_of("[::1]:6388"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
        assert_eq!(host_of("::1"), "::1");
    }
}
