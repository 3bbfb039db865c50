//! `dflockd-testkit`: an in-process, dflockd-compatible lock server for tests.
//!
//! It implements the dflockd wire protocol (see the repository's
//! `PROTOCOL.md`) with the real server's rules: argument parsing and
//! validation, error statuses, when connections are closed, strict FIFO per
//! key, leases that expire at their exact deadline, two-phase `e`/`w`
//! bound to the connection, semaphores, signals (pub/sub), authentication,
//! limits, idle read timeout and graceful draining.
//!
//! # From a tokio test
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::time::Duration;
//! use dflockd_testkit::TestServer;
//!
//! let server = TestServer::builder()
//!     .read_timeout(Duration::from_secs(1))
//!     .default_lease_ttl(Duration::from_secs(5))
//!     .start()
//!     .await?;
//! let addr = server.addr(); // 127.0.0.1:<ephemeral port>
//! // ... connect a client to `addr` ...
//! server.disconnect_all_clients(); // simulate a cut connection
//! println!("{}", server.stats_json());
//! server.shutdown().await; // graceful: `error_draining`, then close
//! # let _ = addr; Ok(()) }
//! ```
//!
//! # Cluster mode
//!
//! [`TestCluster`] stands in for a dflockd v2 Raft cluster: N loopback
//! nodes sharing one lock state, followers answering writes with
//! `error_not_leader <leader>`, `barrier`, `stable-ref` with orphan
//! re-attach, a fencing counter from 1, and crashes and elections on
//! command. See its docs for what it models and what it does not.
//!
//! # From a plain (blocking) `#[test]`
//!
//! [`TestServerBuilder::start_blocking`] runs the server on its own tokio
//! runtime in a background thread, so no runtime is needed by the caller:
//!
//! ```no_run
//! let server = dflockd_testkit::TestServer::builder()
//!     .auth_token("s3cret")
//!     .start_blocking()
//!     .expect("start test server");
//! let addr = server.addr();
//! // ... use a blocking client against `addr` ...
//! drop(server); // stops: listener and every connection closed, thread joined
//! # let _ = addr;
//! ```
//!
//! Dropping a [`TestServer`] stops it at once. For a server started with
//! [`TestServerBuilder::start`] the stop happens asynchronously on the
//! caller's runtime (the drop never blocks); for one started with
//! [`TestServerBuilder::start_blocking`] the drop joins the server thread,
//! which takes milliseconds, and is safe inside an async context too.
//!
//! # Fault injection
//!
//! [`FaultProxy`] sits between a client and any server (this one or a real
//! dflockd) and injects latency, black holes, cuts, trickling, a paused
//! server and connections dropped after K bytes, controlled from the test;
//! see the [`proxy`] module. `dflockd-testkit proxy --upstream HOST:PORT`
//! runs it standalone with a line-based control socket, for tests in other
//! languages.
//!
//! # The binary
//!
//! `cargo run -p dflockd-testkit -- --port 6388` starts a standalone server,
//! prints `dflockd-testkit listening on <addr>` once it accepts connections,
//! and shuts down gracefully on SIGINT/SIGTERM. Flags (each also read from
//! an environment variable, as the real server does; an explicit flag
//! wins over the variable):
//!
//! | flag | environment variable | default | |
//! |---|---|---|---|
//! | `--host` | `DFLOCKD_HOST` | `127.0.0.1` | bind address |
//! | `--port` | `DFLOCKD_PORT` | `6388` | bind port (`0` = ephemeral) |
//! | `--default-lease-ttl` | `DFLOCKD_DEFAULT_LEASE_TTL_S` | `33` | seconds |
//! | `--lease-sweep-interval` | `DFLOCKD_LEASE_SWEEP_INTERVAL_S` | `1` | accepted, unused (leases expire at exact deadlines) |
//! | `--gc-interval` | `DFLOCKD_GC_LOOP_SLEEP` | `5` | seconds between idle-key GC runs |
//! | `--gc-max-idle` | `DFLOCKD_GC_MAX_UNUSED_TIME` | `60` | idle seconds before a key is pruned |
//! | `--max-locks` | `DFLOCKD_MAX_LOCKS` | `1024` | distinct lock + semaphore keys |
//! | `--max-connections` | `DFLOCKD_MAX_CONNECTIONS` | `0` | 0 = unlimited |
//! | `--max-waiters` | `DFLOCKD_MAX_WAITERS` | `0` | per key, 0 = unlimited |
//! | `--max-subscriptions` | `DFLOCKD_MAX_SUBSCRIPTIONS` | `0` | per connection, 0 = unlimited |
//! | `--read-timeout` | `DFLOCKD_READ_TIMEOUT_S` | `23` | idle seconds before `error` + close |
//! | `--write-timeout` | `DFLOCKD_WRITE_TIMEOUT_S` | `5` | 0 = none |
//! | `--shutdown-timeout` | `DFLOCKD_SHUTDOWN_TIMEOUT_S` | `30` | drain limit, 0 = wait forever |
//! | `--auth-token` | `DFLOCKD_AUTH_TOKEN` | unset | shared secret |
//! | `--auth-token-file` | `DFLOCKD_AUTH_TOKEN_FILE` | unset | file holding the token |
//! | `--auto-release-on-disconnect[=BOOL]` / `--no-auto-release-on-disconnect` | `DFLOCKD_AUTO_RELEASE_ON_DISCONNECT` | on | |
//! | `--tls-cert` / `--tls-key` | `DFLOCKD_TLS_CERT`, `DFLOCKD_TLS_KEY` | unset | PEM certificate chain and key: serve TLS only |
//! | `--debug` | `DFLOCKD_DEBUG` | off | accepted, no effect |
//!
//! # Behaviour and differences from the real server
//!
//! * **Separate key spaces** (v1.14+ behaviour): lock keys (`l r n e w`) and
//!   semaphore keys (`sl sr sn se sw`) never collide; `error_limit_mismatch`
//!   only happens between semaphore requests with different limits. v1.10
//!   shared one namespace. Both kinds count against `--max-locks`.
//! * **Signals** (v1.11–v1.16): `listen`/`unlisten`/`signal` with `*`/`>`
//!   patterns and queue groups; each connection has 64 pending pushes and a
//!   connection that overflows them is closed. A connection subscribed both
//!   with and without a group gets one push per matching group plus one
//!   non-grouped push. A push that could not be delivered is not counted in
//!   `ok <n>`.
//! * `ping` → `ok`; `error_draining` during graceful shutdown (also to
//!   blocked `l`/`w` requests, which are then closed), as v2 does: the
//!   v1.10 and v1.14 servers have no `error_draining` (they stop accepting
//!   and let open connections run until the drain limit). Lines may be 256
//!   bytes, the `auth` token and `signal` payload lines 64 KiB (v1.15+;
//!   v1.11 to v1.14 cap every line at 256 bytes, v2 all but `auth`).
//! * **A two-phase grant that expires before `w` collects it** is dropped
//!   with its enqueue record when its lease ends, as the real servers'
//!   lease sweep drops both: `w` then gets `error_not_enqueued`. The real
//!   servers sweep every `--lease-sweep-interval` (1 s): a `w` that comes
//!   after the expiry but before the sweep gets `error_lease_expired`
//!   there (v1.14, v2), which the testkit never answers. v1.10 does the
//!   same for a grant made at `e`, but for a grant made to a queued waiter
//!   it answers `ok` with the stale token although the lock already belongs
//!   to the next holder (a v1.10 server defect: a later renew or release
//!   of that token fails); before its sweep it even revives such a lease.
//! * **`--max-subscriptions`** is checked before the duplicate check, as
//!   in the real server: at the limit even a repeated `listen` gets
//!   `error`; below it a repeated `listen` is a no-op that does not count.
//! * **Queue groups** are the `listen`/`unlisten` argument trimmed of
//!   surrounding whitespace; inner whitespace is part of the name (`"two
//!   words"` is one group), as in the real server.
//! * **Renewing an expired lease** gets `error`, as v1.x and a single v2
//!   node answer; v2 in cluster mode answers `error_lease_expired` before
//!   its sweep removed the lease.
//! * **Tokens** have the v2 fencing shape: 32 lowercase hex digits whose
//!   first 16 are a big-endian counter that increases on every grant.
//! * **Leases** expire at their exact deadline (no sweep interval), and an
//!   expired lease can neither be renewed nor released (`error`), even in
//!   the instant before the expiry timer ran.
//! * **Disconnect**: pending waits of a closed connection are always
//!   cancelled; with `--no-auto-release-on-disconnect` only its held locks
//!   stay until their lease expires (v1.10 also left its waiters queued).
//!   A blocking `l`/`w` notices the peer closing while it waits.
//! * **Idle timeout** counts received bytes only (pushes sent do not count)
//!   and is suspended while a blocking request waits, as in the real server.
//! * **Stats** lists keys sorted by key (the real server in map order). As
//!   in the real server, a key is listed by its limit: limit 1 under
//!   `locks`/`idle_locks`, so a semaphore of limit 1 shows there too (with
//!   its holder's connection and lease), larger limits under
//!   `semaphores`/`idle_semaphores`.
//! * **TLS** (`--tls-cert`/`--tls-key`, [`TestServerBuilder::tls`]) uses
//!   rustls with the `ring` provider: TLS 1.3 and 1.2, rustls' default
//!   cipher suites and groups (X25519, secp256r1, secp384r1), no client
//!   certificates. A client that does not complete the handshake within
//!   the read timeout is dropped; a plaintext client's connection is closed
//!   (after rustls' alert) without a dflockd reply, as Go's `crypto/tls`
//!   closes it.
#![deny(missing_docs)]

mod cluster;
mod config;
mod conn;
mod latch;
mod locks;
mod protocol;
pub mod proxy;
mod real;
mod server;
mod signals;
mod stats;
mod tls;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub use cluster::{Hint, TestCluster, TestClusterBuilder};
pub use config::Config;
pub use proxy::{FaultProxy, FaultProxyBuilder};
pub use real::{Generation, REAL_SERVER_ENV};
pub use stats::{IdleInfo, LockInfo, SemaphoreInfo, SignalChannelInfo, Stats};

use server::Shared;

/// A running dflockd-compatible server: the in-process testkit, or a real
/// `dflockd` binary (see [`TestServerBuilder::real_server`]). Stops when
/// dropped.
pub struct TestServer {
    addr: SocketAddr,
    config: Config,
    backend: Backend,
}

enum Backend {
    InProcess {
        shared: Arc<Shared>,
        thread: Option<JoinHandle<()>>,
    },
    Real(std::sync::Mutex<real::RealProcess>),
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("TestServer");
        d.field("addr", &self.addr)
            .field("generation", &self.generation());
        // The config holds the auth token: show only whether one is set.
        d.field("auth", &self.config.auth_token.is_some()).finish()
    }
}

/// Builder for a [`TestServer`]; starts from [`Config::default`].
///
/// [`TestServer::builder`] and [`TestServerBuilder::new`] read the
/// `DFLOCKD_REAL_SERVER` environment variable: when it names a binary, the
/// server started is that real `dflockd` (see [`real_server`](Self::real_server)).
#[derive(Debug, Clone)]
pub struct TestServerBuilder {
    config: Config,
    real: Option<std::path::PathBuf>,
}

impl Default for TestServerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl TestServerBuilder {
    /// A builder with the default configuration (`127.0.0.1:0`), running the
    /// real server named by `DFLOCKD_REAL_SERVER` when that is set.
    pub fn new() -> Self {
        Self {
            config: Config::default(),
            real: real::from_env(),
        }
    }

    /// Runs this real `dflockd` binary instead of the in-process server.
    ///
    /// The binary is started on a free loopback port (or [`port`](Self::port))
    /// with the builder's settings as its flags (durations rounded up to whole
    /// seconds, only the settings that differ from the defaults, and a drain
    /// limit of 1 s unless one is set), waited for until it accepts a
    /// connection, and killed when the [`TestServer`] drops. Its generation
    /// comes from `--version`. [`TestServer::stats`] then asks the server over
    /// the wire. Clients reach the server through a small relay on another
    /// loopback port ([`TestServer::addr`]), which is how
    /// [`TestServer::disconnect_all_clients`] cuts their connections.
    pub fn real_server(mut self, binary: impl Into<std::path::PathBuf>) -> Self {
        self.real = Some(binary.into());
        self
    }

    /// Runs the in-process server even when `DFLOCKD_REAL_SERVER` is set
    /// (for tests of testkit-only behaviour).
    pub fn in_process(mut self) -> Self {
        self.real = None;
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Bind address (default `127.0.0.1`).
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.config.host = host.into();
        self
    }

    /// Bind port (default `0`: an ephemeral port, see [`TestServer::addr`]).
    pub fn port(mut self, port: u16) -> Self {
        self.config.port = port;
        self
    }

    /// Lease used when a request names none (default 33 s).
    pub fn default_lease_ttl(mut self, ttl: Duration) -> Self {
        self.config.default_lease_ttl = ttl;
        self
    }

    /// Accepted for compatibility; leases expire at exact deadlines.
    pub fn lease_sweep_interval(mut self, interval: Duration) -> Self {
        self.config.lease_sweep_interval = interval;
        self
    }

    /// Interval of the idle-key GC (default 5 s).
    pub fn gc_interval(mut self, interval: Duration) -> Self {
        self.config.gc_interval = interval;
        self
    }

    /// Idle time before an unused key is pruned (default 60 s).
    pub fn gc_max_idle(mut self, idle: Duration) -> Self {
        self.config.gc_max_idle = idle;
        self
    }

    /// Maximum distinct lock plus semaphore keys (default 1024).
    pub fn max_locks(mut self, n: usize) -> Self {
        self.config.max_locks = n;
        self
    }

    /// Maximum concurrent connections (default 0 = unlimited).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.config.max_connections = n;
        self
    }

    /// Maximum waiters per key (default 0 = unlimited).
    pub fn max_waiters(mut self, n: usize) -> Self {
        self.config.max_waiters = n;
        self
    }

    /// Maximum signal subscriptions per connection (default 0 = unlimited).
    pub fn max_subscriptions(mut self, n: usize) -> Self {
        self.config.max_subscriptions = n;
        self
    }

    /// Idle read timeout (default 23 s).
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.config.read_timeout = timeout;
        self
    }

    /// Write timeout (default 5 s; zero = none).
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.config.write_timeout = timeout;
        self
    }

    /// Graceful shutdown drain limit (default 30 s; zero = wait forever).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout = timeout;
        self
    }

    /// Requires `auth <token>` as the first command of every connection.
    pub fn auth_token(mut self, token: impl Into<String>) -> Self {
        self.config.auth_token = Some(token.into());
        self
    }

    /// Serves TLS only, with this PEM certificate chain (leaf first) and
    /// PEM private key, as `--tls-cert` / `--tls-key`.
    pub fn tls(
        mut self,
        cert_pem: impl Into<std::path::PathBuf>,
        key_pem: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.config.tls_cert = Some(cert_pem.into());
        self.config.tls_key = Some(key_pem.into());
        self
    }

    /// Release held locks when a connection closes (default `true`).
    pub fn auto_release_on_disconnect(mut self, on: bool) -> Self {
        self.config.auto_release_on_disconnect = on;
        self
    }

    /// Starts the real server of [`real_server`](Self::real_server).
    fn start_real(&self, binary: &std::path::Path) -> io::Result<TestServer> {
        let (addr, proc) = real::spawn(binary, &self.config)?;
        let mut config = self.config.clone();
        config.port = addr.port();
        Ok(TestServer {
            addr,
            config,
            backend: Backend::Real(std::sync::Mutex::new(proc)),
        })
    }

    /// Starts the server on the current tokio runtime.
    ///
    /// Fails if the configuration is invalid or the address cannot be bound.
    pub async fn start(self) -> io::Result<TestServer> {
        self.config.validate()?;
        if let Some(binary) = &self.real {
            let this = self.clone();
            let binary = binary.clone();
            return tokio::task::spawn_blocking(move || this.start_real(&binary))
                .await
                .map_err(io::Error::other)?;
        }
        let tls = tls::acceptor(&self.config)?;
        let listener =
            tokio::net::TcpListener::bind((self.config.host.as_str(), self.config.port)).await?;
        let addr = listener.local_addr()?;
        let mut config = self.config.clone();
        config.port = addr.port();
        let shared = Arc::new(Shared::new(self.config));
        tokio::spawn(server::run(shared.clone(), listener, tls));
        Ok(TestServer {
            addr,
            config,
            backend: Backend::InProcess {
                shared,
                thread: None,
            },
        })
    }

    /// Starts the server on its own tokio runtime in a background thread.
    ///
    /// Usable from plain `#[test]` functions (no runtime needed) and from
    /// async code alike.
    pub fn start_blocking(self) -> io::Result<TestServer> {
        self.config.validate()?;
        if let Some(binary) = &self.real {
            return self.start_real(binary);
        }
        let tls = tls::acceptor(&self.config)?;
        let listener = std::net::TcpListener::bind((self.config.host.as_str(), self.config.port))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let mut config = self.config.clone();
        config.port = addr.port();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("dflockd-testkit-worker")
            .enable_all()
            .build()?;
        let shared = Arc::new(Shared::new(self.config));
        let task_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("dflockd-testkit".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => server::run(task_shared, listener, tls).await,
                        Err(_) => task_shared.stopped.trigger(),
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(TestServer {
            addr,
            config,
            backend: Backend::InProcess {
                shared,
                thread: Some(thread),
            },
        })
    }
}

impl TestServer {
    /// A builder with the default configuration (see [`TestServerBuilder::new`]).
    pub fn builder() -> TestServerBuilder {
        TestServerBuilder::new()
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The configuration the server runs with (`port` is the bound port).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// True when this is a real `dflockd` process, not the in-process server.
    pub fn is_real(&self) -> bool {
        matches!(self.backend, Backend::Real(_))
    }

    /// The protocol generation: [`Generation::Testkit`] in process, else
    /// what the real binary's `--version` says.
    pub fn generation(&self) -> Generation {
        match &self.backend {
            Backend::InProcess { .. } => Generation::Testkit,
            Backend::Real(p) => p.lock().map_or(Generation::V1_14, |p| p.generation),
        }
    }

    /// Number of open client connections.
    ///
    /// For a real server it is the larger of the server's own count (from
    /// `stats`, not counting the connection that asked) and the relay's
    /// count of connections whose server-side close has not yet reached the
    /// client: so 0 means the server has closed every connection *and* each
    /// client has been told, as with the in-process server.
    pub fn connection_count(&self) -> usize {
        match &self.backend {
            Backend::InProcess { shared, .. } => {
                shared.connections.load(std::sync::atomic::Ordering::SeqCst)
            }
            Backend::Real(p) => {
                let relayed = p.lock().unwrap_or_else(|e| e.into_inner()).relay.live();
                usize::try_from(self.stats().connections)
                    .unwrap_or(usize::MAX)
                    .max(relayed)
            }
        }
    }

    /// The current server state, as the `stats` command reports it.
    ///
    /// For a real server this is a `stats` request over a new connection,
    /// which is left out of `connections` (over TLS for a TLS server, without
    /// verifying the certificate of the process the testkit started); it
    /// panics when the server cannot answer (a test helper: a failed `stats`
    /// is a failed test).
    pub fn stats(&self) -> Stats {
        match &self.backend {
            Backend::InProcess { shared, .. } => shared.stats(),
            Backend::Real(p) => {
                let p = p.lock().unwrap_or_else(|e| e.into_inner());
                match p.stats() {
                    Ok(s) => s,
                    Err(e) => panic!("stats from the real server at {}: {e}", self.addr),
                }
            }
        }
    }

    /// The `stats` JSON (the text after `ok ` in the `stats` reply).
    pub fn stats_json(&self) -> String {
        serde_json::to_string(&self.stats()).unwrap_or_else(|_| "{}".to_owned())
    }

    /// Abruptly closes every client connection (as a cut connection would),
    /// while the server keeps accepting new ones. Their locks are released
    /// (per `auto_release_on_disconnect`) before their sockets close.
    ///
    /// A real server is reached through a relay, which closes both sides of
    /// every relayed connection: the client sees its connection closed at
    /// once and the server sees it close shortly after (so, unlike in
    /// process, its locks may still be released a moment after the client
    /// noticed).
    pub fn disconnect_all_clients(&self) {
        match &self.backend {
            Backend::InProcess { shared, .. } => shared.kill_all_connections(),
            Backend::Real(p) => p.lock().unwrap_or_else(|e| e.into_inner()).relay.cut_all(),
        }
    }

    /// Starts a graceful shutdown without waiting: the listener closes, new
    /// requests get `error_draining` and their connection is closed, blocked
    /// `l`/`w` requests get `error_draining` at once. A real server gets
    /// `SIGTERM`.
    pub fn begin_shutdown(&self) {
        match &self.backend {
            Backend::InProcess { shared, .. } => shared.draining.trigger(),
            Backend::Real(p) => p.lock().unwrap_or_else(|e| e.into_inner()).terminate(),
        }
    }

    /// Graceful shutdown: [`begin_shutdown`](Self::begin_shutdown), then
    /// waits until every connection closed, at most `shutdown_timeout`,
    /// after which the remaining ones are closed.
    ///
    /// As in the real server, an idle connection stays open until it sends
    /// a request (answered `error_draining`), hits the read timeout, or the
    /// drain limit elapses; use [`TestServerBuilder::shutdown_timeout`] to
    /// keep that short in tests.
    pub async fn shutdown(&self) {
        self.begin_shutdown();
        match &self.backend {
            Backend::InProcess { shared, .. } => shared.stopped.wait().await,
            Backend::Real(_) => {
                while !self.real_exited() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }

    /// [`shutdown`](Self::shutdown) for synchronous code.
    ///
    /// For an in-process server started with [`TestServerBuilder::start`]
    /// and called from inside a tokio runtime, this only begins the shutdown
    /// (blocking there could deadlock the runtime that runs the server).
    pub fn shutdown_blocking(&self) {
        self.begin_shutdown();
        match &self.backend {
            Backend::InProcess { shared, thread } => {
                if thread.is_none() && tokio::runtime::Handle::try_current().is_ok() {
                    return;
                }
                shared.stopped.wait_blocking();
            }
            Backend::Real(p) => {
                let limit = self.config.shutdown_timeout.max(Duration::from_secs(1))
                    + Duration::from_secs(5);
                p.lock().unwrap_or_else(|e| e.into_inner()).wait_exit(limit);
            }
        }
    }

    /// Stops the server at once (listener and every connection closed; a
    /// real server is killed).
    pub async fn stop(&self) {
        match &self.backend {
            Backend::InProcess { shared, .. } => {
                shared.hard_stop.trigger();
                shared.stopped.wait().await;
            }
            Backend::Real(p) => p.lock().unwrap_or_else(|e| e.into_inner()).kill(),
        }
    }

    fn real_exited(&self) -> bool {
        match &self.backend {
            Backend::Real(p) => p.lock().unwrap_or_else(|e| e.into_inner()).has_exited(),
            Backend::InProcess { .. } => true,
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Backend::InProcess { shared, thread } = &mut self.backend {
            shared.hard_stop.trigger();
            if let Some(thread) = thread.take() {
                let _ = thread.join();
            }
        }
    }
}
