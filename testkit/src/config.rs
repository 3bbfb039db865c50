//! Server configuration ([`Config`]), mirroring the real server's flags.

use std::path::PathBuf;
use std::time::Duration;

/// Configuration of a test server.
///
/// Every field corresponds to a flag of the real `dflockd` server (and of
/// the `dflockd-testkit` binary); the defaults are the real server's, except
/// that [`Config::default`] binds port `0` (an ephemeral port) while the
/// binary binds `6388`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Bind address (`--host`, default `127.0.0.1`).
    pub host: String,
    /// Bind port (`--port`; `0` picks an ephemeral port; the binary defaults to `6388`).
    pub port: u16,
    /// Lease used when a request names none (`--default-lease-ttl`, default 33 s).
    /// Replies report leases in whole seconds.
    pub default_lease_ttl: Duration,
    /// `--lease-sweep-interval` (default 1 s). Accepted for compatibility:
    /// this server expires every lease at its exact deadline instead of
    /// sweeping periodically, so the value is not used.
    pub lease_sweep_interval: Duration,
    /// How often idle key state is pruned (`--gc-interval`, default 5 s).
    pub gc_interval: Duration,
    /// Idle time after which key state with no holder and no waiter is
    /// pruned (`--gc-max-idle`, default 60 s).
    pub gc_max_idle: Duration,
    /// Maximum number of distinct lock plus semaphore keys (`--max-locks`, default 1024).
    pub max_locks: usize,
    /// Maximum concurrent connections (`--max-connections`, default 0 = unlimited).
    pub max_connections: usize,
    /// Maximum waiters per key (`--max-waiters`, default 0 = unlimited).
    pub max_waiters: usize,
    /// Maximum signal subscriptions per connection (`--max-subscriptions`,
    /// default 0 = unlimited).
    pub max_subscriptions: usize,
    /// Idle read timeout (`--read-timeout`, default 23 s): a connection from
    /// which no byte arrives for this long while the server waits for a
    /// request gets `error` and is closed.
    pub read_timeout: Duration,
    /// Write timeout (`--write-timeout`, default 5 s, zero = none): a write
    /// to a client that does not read for this long closes the connection.
    pub write_timeout: Duration,
    /// Graceful shutdown drain limit (`--shutdown-timeout`, default 30 s,
    /// zero = wait forever): after this long the remaining connections are
    /// closed.
    pub shutdown_timeout: Duration,
    /// Shared secret required as the first command (`--auth-token`).
    pub auth_token: Option<String>,
    /// Release locks and semaphore slots of a connection when it closes
    /// (`--auto-release-on-disconnect`, default on).
    pub auto_release_on_disconnect: bool,
    /// `--tls-cert`: PEM certificate chain (leaf first). With
    /// [`Config::tls_key`], the server speaks only TLS (rustls, TLS 1.3 and
    /// 1.2); a plaintext client's connection is closed after the failed
    /// handshake.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`: PEM private key (PKCS#8, PKCS#1 or SEC1) of
    /// [`Config::tls_cert`].
    pub tls_key: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: 0,
            default_lease_ttl: Duration::from_secs(33),
            lease_sweep_interval: Duration::from_secs(1),
            gc_interval: Duration::from_secs(5),
            gc_max_idle: Duration::from_secs(60),
            max_locks: 1024,
            max_connections: 0,
            max_waiters: 0,
            max_subscriptions: 0,
            read_timeout: Duration::from_secs(23),
            write_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(30),
            auth_token: None,
            auto_release_on_disconnect: true,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl Config {
    /// Checks the values the real server rejects at startup.
    pub fn validate(&self) -> std::io::Result<()> {
        let bad = |msg: &str| {
            Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                msg.to_owned(),
            ))
        };
        if self.max_locks == 0 {
            return bad("max_locks must be > 0");
        }
        if self.default_lease_ttl.is_zero() {
            return bad("default_lease_ttl must be > 0");
        }
        if self.read_timeout.is_zero() {
            return bad("read_timeout must be > 0");
        }
        if self.gc_interval.is_zero() {
            return bad("gc_interval must be > 0");
        }
        if self.gc_max_idle.is_zero() {
            return bad("gc_max_idle must be > 0");
        }
        if self.lease_sweep_interval.is_zero() {
            return bad("lease_sweep_interval must be > 0");
        }
        if self
            .auth_token
            .as_deref()
            .is_some_and(|t| t.contains(['\n', '\r']))
        {
            return bad("auth_token must not contain a line break");
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("both tls_cert and tls_key must be provided together");
        }
        Ok(())
    }
}
