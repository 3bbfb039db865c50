//! The builder shared by the host lock APIs (`tokio_lock` and
//! `blocking_lock`).

use std::io;
use std::marker::PhantomData;
use std::string::String;
use std::sync::Arc;
use std::time::Duration;
use std::vec::Vec;

use super::HostTls;
use crate::lock::{Jitter, LockOptions, LockSpec, RenewRatio};
use crate::routing::{Crc32Mod, RouteError, Strategy, route};
use crate::runtime::{AuthToken, DEFAULT_CONNECT_TIMEOUT};
use crate::{ConfigError, Error, Kind};

/// The server used when none is given: `127.0.0.1:6388`.
pub const DEFAULT_SERVER: &str = "127.0.0.1:6388";

/// Line buffer of the connections the host lock APIs open.
pub(crate) const LINE: usize = 256;

/// Everything a host lock needs; shared by its guards.
pub struct Settings {
    pub(crate) key: String,
    pub(crate) kind: Kind,
    pub(crate) servers: Vec<String>,
    pub(crate) strategy: Arc<dyn Strategy + Send + Sync>,
    pub(crate) auth_token: Option<AuthToken>,
    pub(crate) connect_timeout: Duration,
    pub(crate) options: LockOptions,
    pub(crate) tls: Option<TlsSetting>,
}

/// TLS of a host lock: the connector, and where the server name comes from.
/// Never built without the `rustls` feature.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "rustls"), allow(dead_code))]
pub(crate) struct TlsSetting {
    connector: HostTls,
    /// Check each server against the host part of its address instead of
    /// the connector's name.
    name_per_server: bool,
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

impl core::fmt::Debug for Settings {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Settings")
            .field("key", &self.key)
            .field("kind", &self.kind)
            .field("servers", &self.servers)
            .field("auth_token", &self.auth_token)
            .field("connect_timeout", &self.connect_timeout)
            .field("options", &self.options)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl Settings {
    pub(crate) fn new(key: String, kind: Kind) -> Self {
        Self {
            key,
            kind,
            servers: Vec::new(),
            strategy: Arc::new(Crc32Mod),
            auth_token: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            options: LockOptions::DEFAULT,
            tls: None,
        }
    }

    pub(crate) fn spec(&self) -> LockSpec<'_> {
        LockSpec::new(&self.key, self.kind).with_options(self.options)
    }

    /// The TLS connector for the server at `addr`, if TLS is on.
    pub(crate) fn tls_for(&self, addr: &str) -> Result<Option<HostTls>, Error<io::Error>> {
        self.tls.as_ref().map(|t| t.for_addr(addr)).transpose()
    }

    /// The address of the server that owns the key.
    pub(crate) fn server(&self) -> Result<&str, Error<io::Error>> {
        let list: Vec<&str> = self.servers.iter().map(String::as_str).collect();
        match route(&*self.strategy, &self.key, &list) {
            Ok(i) => Ok(list[i]),
            Err(e) => Err(route_error(e)),
        }
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

pub(crate) mod sealed {
    /// Host lock types a [`LockBuilder`](super::LockBuilder) can build.
    pub trait FromSettings {
        fn from_settings(settings: super::Settings) -> Self;
    }
}

/// Builds a host `DistributedLock` or `DistributedSemaphore` (tokio or
/// blocking): servers and routing, authentication, TLS (feature `rustls`,
/// see [`tls`](Self::tls)), timeouts and the lease options of
/// [`LockOptions`].
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
pub struct LockBuilder<L> {
    settings: Settings,
    _target: PhantomData<fn() -> L>,
}

impl<L> core::fmt::Debug for LockBuilder<L> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_tuple("LockBuilder").field(&self.settings).finish()
    }
}

impl<L: sealed::FromSettings> LockBuilder<L> {
    pub(crate) fn new(key: String, kind: Kind) -> Self {
        Self {
            settings: Settings::new(key, kind),
            _target: PhantomData,
        }
    }

    /// Adds a server (`host:port`). Without any, [`DEFAULT_SERVER`].
    pub fn server(mut self, addr: impl Into<String>) -> Self {
        self.settings.servers.push(addr.into());
        self
    }

    /// Replaces the server list. Keys are routed across it by the
    /// strategy: list the servers in the same order in every client.
    pub fn servers<I, S>(mut self, addrs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.settings.servers = addrs.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the routing strategy (default [`Crc32Mod`], as the other
    /// clients). A closure `Fn(&str, &[&str]) -> usize` works; an index out
    /// of range makes acquires fail with [`Error::Config`].
    pub fn strategy(mut self, strategy: impl Strategy + Send + Sync + 'static) -> Self {
        self.settings.strategy = Arc::new(strategy);
        self
    }

    /// Authenticates every connection with this token. Never logged.
    pub fn auth_token(mut self, token: impl Into<AuthToken>) -> Self {
        self.settings.auth_token = Some(token.into());
        self
    }

    /// Connects over TLS (feature `rustls`), verified by `connector`:
    /// chain, validity period and server name, with the name taken from the
    /// connector. With several servers, every one of them must present a
    /// certificate valid for that name (one name in the subjectAltName of
    /// all, or a wildcard); when each server has a certificate of its own,
    /// use [`tls_per_server`](Self::tls_per_server).
    ///
    /// The TCP connect, the handshake and the `auth` each get the
    /// [`connect_timeout`](Self::connect_timeout). A certificate that fails
    /// verification makes every acquire fail with [`Error::Io`]; see
    /// [`rustls_error`](super::rustls::rustls_error) for the reason.
    /// Without this option the connections are plain TCP.
    #[cfg(feature = "rustls")]
    pub fn tls(mut self, connector: super::rustls::RustlsConnector) -> Self {
        self.settings.tls = Some(TlsSetting {
            connector,
            name_per_server: false,
        });
        self
    }

    /// [`tls`](Self::tls), but each server's certificate is checked against
    /// the host part of its own address (`locks-2.example.com` for
    /// `locks-2.example.com:6388`, `10.0.0.2` for `10.0.0.2:6388`, which
    /// then needs an IP address subjectAltName). The connector's own name
    /// is not used; its roots and configuration are.
    #[cfg(feature = "rustls")]
    pub fn tls_per_server(mut self, connector: super::rustls::RustlsConnector) -> Self {
        self.settings.tls = Some(TlsSetting {
            connector,
            name_per_server: true,
        });
        self
    }

    /// Gives up connecting after this long (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// How long the server may block an acquire or wait (default 10 s).
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.settings.options.acquire_timeout = timeout;
        self
    }

    /// The lease TTL (default: the server's). Sent in whole seconds,
    /// rounded up.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.settings.options.lease_ttl = Some(ttl);
        self
    }

    /// When to renew, as a fraction of the lease (default 0.5).
    pub fn renew_ratio(mut self, ratio: RenewRatio) -> Self {
        self.settings.options.renew_ratio = ratio;
        self
    }

    /// Random early renew, as a fraction of the renew interval
    /// (default 10 %).
    pub fn early_jitter(mut self, jitter: Jitter) -> Self {
        self.settings.options.early_jitter = jitter;
        self
    }

    /// The server's idle read timeout (default 23 s): renews are sent
    /// often enough that the connection is never silent that long.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.settings.options.read_timeout = timeout;
        self
    }

    /// Client-side reply timeout beyond server-side blocking (default
    /// 10 s): a dead server gives [`Error::Timeout`].
    pub fn io_timeout(mut self, timeout: Duration) -> Self {
        self.settings.options.io_timeout = timeout;
        self
    }

    /// Replaces all lease options at once.
    pub fn options(mut self, options: LockOptions) -> Self {
        self.settings.options = options;
        self
    }

    /// Builds the lock. Nothing is connected until it is acquired.
    pub fn build(mut self) -> L {
        if self.settings.servers.is_empty() {
            self.settings.servers.push(DEFAULT_SERVER.into());
        }
        L::from_settings(self.settings)
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
