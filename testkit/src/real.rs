//! A real `dflockd` binary run in place of the in-process server.
//!
//! [`TestServerBuilder::real_server`](crate::TestServerBuilder::real_server)
//! (or the `DFLOCKD_REAL_SERVER` environment variable) makes a
//! [`TestServer`](crate::TestServer) spawn the given binary on a free
//! loopback port with the builder's configuration translated into the real
//! server's flags, so one test suite runs unchanged against the testkit and
//! against the real Go server.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::stats::Stats;

/// Environment variable naming a real `dflockd` binary that
/// [`TestServer::builder`](crate::TestServer::builder) runs instead of the
/// in-process server.
pub const REAL_SERVER_ENV: &str = "DFLOCKD_REAL_SERVER";

/// How long a spawned server may take to accept its first connection.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on one `stats` round trip to a real server.
const STATS_TIMEOUT: Duration = Duration::from_secs(10);

/// The protocol generation of the server behind a
/// [`TestServer`](crate::TestServer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Generation {
    /// The in-process testkit: every feature (signals, ping, fencing-shaped
    /// tokens, `error_lease_expired`).
    Testkit,
    /// dflockd 1.x before signals (v1.10.0): no `listen`/`signal`, no `ping`,
    /// one key space for locks and semaphores.
    V1_10,
    /// dflockd 1.x with signals (v1.11 to v1.16; `v1.14-signals`): signals,
    /// `ping`, `error_lease_expired`, separate key spaces.
    V1_14,
    /// dflockd v2 (`v2-cluster`): fencing tokens, `barrier`, `stable-ref`,
    /// no signals.
    V2,
}

impl Generation {
    /// Reads the generation from a version string as printed by
    /// `dflockd --version` (`v1.10.0`, `v1.14-signals`, `dflockd v2.1.1`…).
    ///
    /// Returns `None` when no `vMAJOR.MINOR` can be found.
    pub fn from_version(version: &str) -> Option<Generation> {
        let at = version.find(|c: char| c.is_ascii_digit())?;
        let mut parts = version[at..].split(|c: char| !c.is_ascii_digit());
        let major: u32 = parts.next()?.parse().ok()?;
        let minor: u32 = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
        match (major, minor) {
            (1, 0..=10) => Some(Generation::V1_10),
            (1, _) => Some(Generation::V1_14),
            (2.., _) => Some(Generation::V2),
            _ => None,
        }
    }

    /// The server has `listen`, `unlisten` and `signal`.
    pub fn has_signals(self) -> bool {
        matches!(self, Generation::Testkit | Generation::V1_14)
    }

    /// The server answers `ping`.
    pub fn has_ping(self) -> bool {
        !matches!(self, Generation::V1_10)
    }

    /// Graceful shutdown answers requests with `error_draining` (the v1.x
    /// servers here only stop accepting and let connections run out).
    pub fn has_draining(self) -> bool {
        matches!(self, Generation::Testkit | Generation::V2)
    }

    /// Tokens carry a fence: their first 16 hex digits grow on every grant.
    pub fn has_fences(self) -> bool {
        matches!(self, Generation::Testkit | Generation::V2)
    }

    /// The name CI uses for this generation (`testkit`, `v1.10.0`,
    /// `v1.14-signals`, `v2-cluster`).
    pub fn name(self) -> &'static str {
        match self {
            Generation::Testkit => "testkit",
            Generation::V1_10 => "v1.10.0",
            Generation::V1_14 => "v1.14-signals",
            Generation::V2 => "v2-cluster",
        }
    }
}

/// The real server binary named by `DFLOCKD_REAL_SERVER`, if any.
pub(crate) fn from_env() -> Option<PathBuf> {
    std::env::var_os(REAL_SERVER_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Asks a binary for its version (`--version`) and maps it to a generation.
pub(crate) fn probe_generation(binary: &Path) -> io::Result<Generation> {
    let out = Command::new(binary)
        .arg("--version")
        .env_clear_dflockd()
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", binary.display())))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Generation::from_version(&text).ok_or_else(|| {
        io::Error::other(format!(
            "{}: cannot tell the dflockd version from {:?}",
            binary.display(),
            text.trim()
        ))
    })
}

/// Removes every `DFLOCKD_*` variable: the real server reads its flags from
/// them too, and a test's own settings (say `DFLOCKD_AUTH_TOKEN`) must not
/// configure the server behind the test's back.
trait EnvClear {
    fn env_clear_dflockd(&mut self) -> &mut Self;
}

impl EnvClear for Command {
    fn env_clear_dflockd(&mut self) -> &mut Self {
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("DFLOCKD_") {
                self.env_remove(k);
            }
        }
        self
    }
}

/// A running real server process; killed when dropped.
///
/// Clients reach it through a [`Relay`] on another loopback port, so that a
/// test can cut every client connection (as the in-process server's
/// `disconnect_all_clients` does) without touching the server.
pub(crate) struct RealProcess {
    child: Child,
    log: PathBuf,
    pub(crate) generation: Generation,
    token: Option<String>,
    tls: bool,
    /// The server's own address (the relay forwards here).
    upstream: SocketAddr,
    pub(crate) relay: Relay,
}

impl std::fmt::Debug for RealProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealProcess")
            .field("pid", &self.child.id())
            .field("generation", &self.generation)
            .field("log", &self.log)
            .finish()
    }
}

/// Whole seconds for a flag, rounded up (the real server takes integers).
fn secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The real server's flags for `cfg` on `port`. Only settings that differ
/// from the defaults are passed, so older servers that lack a flag still
/// start when the test does not use it.
fn flags(cfg: &Config, port: u16) -> Vec<String> {
    let d = Config::default();
    let mut f = vec![
        "--host".to_owned(),
        cfg.host.clone(),
        "--port".to_owned(),
        port.to_string(),
    ];
    let mut dur = |name: &str, v: Duration, def: Duration| {
        if v != def {
            f.push(format!("--{name}={}", secs(v)));
        }
    };
    dur(
        "default-lease-ttl",
        cfg.default_lease_ttl,
        d.default_lease_ttl,
    );
    dur(
        "lease-sweep-interval",
        cfg.lease_sweep_interval,
        d.lease_sweep_interval,
    );
    dur("gc-interval", cfg.gc_interval, d.gc_interval);
    dur("gc-max-idle", cfg.gc_max_idle, d.gc_max_idle);
    dur("read-timeout", cfg.read_timeout, d.read_timeout);
    dur("write-timeout", cfg.write_timeout, d.write_timeout);
    // A test that does not ask for a drain limit gets a short one, so a
    // stopped server never keeps the suite waiting 30 s.
    let shutdown = if cfg.shutdown_timeout == d.shutdown_timeout {
        Duration::from_secs(1)
    } else {
        cfg.shutdown_timeout
    };
    f.push(format!("--shutdown-timeout={}", secs(shutdown)));
    let mut num = |name: &str, v: usize, def: usize| {
        if v != def {
            f.push(format!("--{name}={v}"));
        }
    };
    num("max-locks", cfg.max_locks, d.max_locks);
    num("max-connections", cfg.max_connections, d.max_connections);
    num("max-waiters", cfg.max_waiters, d.max_waiters);
    num(
        "max-subscriptions",
        cfg.max_subscriptions,
        d.max_subscriptions,
    );
    if let Some(t) = &cfg.auth_token {
        f.push(format!("--auth-token={t}"));
    }
    if !cfg.auto_release_on_disconnect {
        f.push("--auto-release-on-disconnect=false".to_owned());
    }
    if let (Some(c), Some(k)) = (&cfg.tls_cert, &cfg.tls_key) {
        f.push(format!("--tls-cert={}", c.display()));
        f.push(format!("--tls-key={}", k.display()));
    }
    f
}

/// A free loopback port: bound, read and released. Another process may take
/// it in between; [`spawn`] waits for the server's own `listening` line and
/// retries with another port when the server cannot bind it.
fn free_port(host: &str) -> io::Result<u16> {
    Ok(TcpListener::bind((host, 0))?.local_addr()?.port())
}

/// Whether the server's log says its listener is bound (`msg=listening`,
/// written by every generation right after its `net.Listen` succeeded).
fn has_listened(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|s| s.contains("msg=listening"))
}

fn log_tail(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// Starts `binary` with `cfg` on a free port and waits until it accepts a
/// connection.
pub(crate) fn spawn(binary: &Path, cfg: &Config) -> io::Result<(SocketAddr, RealProcess)> {
    let generation = probe_generation(binary)?;
    let mut last_err = None;
    for _ in 0..5 {
        let port = if cfg.port == 0 {
            free_port(&cfg.host)?
        } else {
            cfg.port
        };
        // One file per start: a finished server on the same port removes its
        // own log when dropped, which must not be this one.
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        let log = std::env::temp_dir().join(format!(
            "dflockd-real-{}-{port}-{}-{}.log",
            generation.name(),
            std::process::id(),
            STARTS.fetch_add(1, Ordering::Relaxed)
        ));
        let child = Command::new(binary)
            .args(flags(cfg, port))
            .env_clear_dflockd()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log)?)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", binary.display())))?;
        let addr: SocketAddr = format!("{}:{port}", cfg.host)
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("host: {e}")))?;
        let mut proc = RealProcess {
            child,
            log,
            generation,
            token: cfg.auth_token.clone(),
            tls: cfg.tls_cert.is_some(),
            upstream: addr,
            relay: Relay::start(addr)?,
        };
        let start = Instant::now();
        loop {
            if let Some(status) = proc.child.try_wait()? {
                last_err = Some(io::Error::other(format!(
                    "{} exited at start ({status}): {}",
                    binary.display(),
                    log_tail(&proc.log)
                )));
                break;
            }
            // The port was free when picked, but another test may bind it
            // before the server does: then the server exits and a bare
            // connect would reach that other test's listener. The server
            // logs `listening` only once its own bind succeeded.
            if has_listened(&proc.log)
                && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            {
                return Ok((proc.relay.addr, proc));
            }
            if start.elapsed() > START_TIMEOUT {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} did not accept connections on {addr} within {START_TIMEOUT:?}",
                        binary.display()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if cfg.port != 0 {
            break;
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("real server did not start")))
}

impl RealProcess {
    /// The server's `stats`, over the wire, without the connection that
    /// asked for them (`connections` counts the others only).
    ///
    /// It connects to the server directly (not through the relay) and, for a
    /// TLS server, speaks TLS without verifying the certificate: the peer is
    /// the process this testkit just started on loopback.
    pub(crate) fn stats(&self) -> io::Result<Stats> {
        let s = TcpStream::connect_timeout(&self.upstream, STATS_TIMEOUT)?;
        s.set_read_timeout(Some(STATS_TIMEOUT))?;
        s.set_write_timeout(Some(STATS_TIMEOUT))?;
        if self.tls {
            let conn = crate::tls::loopback_client()?;
            self.stats_over(rustls_stream(conn, s))
        } else {
            self.stats_over(s)
        }
    }

    fn stats_over(&self, s: impl Read + Write) -> io::Result<Stats> {
        let mut reader = BufReader::new(s);
        let mut line = String::new();
        if let Some(t) = &self.token {
            reader
                .get_mut()
                .write_all(format!("auth\n_\n{t}\n").as_bytes())?;
            reader.read_line(&mut line)?;
            if line.trim_end() != "ok" {
                return Err(io::Error::other(format!("auth: {:?}", line.trim_end())));
            }
            line.clear();
        }
        reader.get_mut().write_all(b"stats\n_\n_\n")?;
        reader.read_line(&mut line)?;
        let json = line
            .trim_end()
            .strip_prefix("ok ")
            .ok_or_else(|| io::Error::other(format!("stats: {:?}", line.trim_end())))?;
        let mut stats: Stats = serde_json::from_str(json).map_err(io::Error::other)?;
        stats.connections = stats.connections.saturating_sub(1);
        Ok(stats)
    }

    /// Sends `SIGTERM` (a graceful drain in the real server).
    pub(crate) fn terminate(&self) {
        #[cfg(unix)]
        {
            // The pid is our own child's, not yet reaped: it cannot have been reused.
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        #[cfg(not(unix))]
        {
            let _ = self.child.id();
        }
    }

    /// Waits for the process to exit, polling; kills it after `limit`.
    pub(crate) fn wait_exit(&mut self, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                self.relay.stop();
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.kill();
    }

    /// Kills the process at once and reaps it; the relay stops too.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.relay.stop();
    }

    /// True once the process has exited (then the relay is stopped too).
    pub(crate) fn has_exited(&mut self) -> bool {
        let exited = matches!(self.child.try_wait(), Ok(Some(_)));
        if exited {
            self.relay.stop();
        }
        exited
    }
}

impl Drop for RealProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn rustls_stream(
    conn: tokio_rustls::rustls::ClientConnection,
    sock: TcpStream,
) -> tokio_rustls::rustls::StreamOwned<tokio_rustls::rustls::ClientConnection, TcpStream> {
    tokio_rustls::rustls::StreamOwned::new(conn, sock)
}

/// A byte relay in front of a real server: every accepted connection is
/// paired with one to the server, and bytes are copied both ways by two
/// threads. [`Relay::cut_all`] closes every pair at once (both sides see a
/// closed connection, as with a cut network path); [`Relay::stop`] also
/// closes the listener.
pub(crate) struct Relay {
    pub(crate) addr: SocketAddr,
    state: Arc<RelayState>,
}

#[derive(Default)]
struct RelayState {
    stopped: AtomicBool,
    open: Mutex<Vec<TcpStream>>,
    /// Relayed connections whose server side the client has not yet been
    /// told is closed: counted from the upstream connect until the
    /// server-to-client pump has shut the client's socket.
    live: AtomicUsize,
}

impl RelayState {
    fn cut_all(&self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        for s in open.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Relay {
    fn start(upstream: SocketAddr) -> io::Result<Relay> {
        let listener = TcpListener::bind((upstream.ip(), 0))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(RelayState::default());
        let st = state.clone();
        std::thread::Builder::new()
            .name("dflockd-testkit-relay".to_owned())
            .spawn(move || {
                for client in listener.incoming() {
                    if st.stopped.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let Ok(server) = TcpStream::connect(upstream) else {
                        continue; // dropping `client` closes it, as a refused server would
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                        continue;
                    };
                    {
                        let mut open = st.open.lock().unwrap_or_else(|e| e.into_inner());
                        open.retain(|s| s.peer_addr().is_ok());
                        if let (Ok(a), Ok(b)) = (client.try_clone(), server.try_clone()) {
                            open.push(a);
                            open.push(b);
                        }
                    }
                    st.live.fetch_add(1, Ordering::SeqCst);
                    pump(client, s2, None);
                    pump(server, c2, Some(st.clone()));
                }
            })?;
        Ok(Relay { addr, state })
    }

    /// How many relayed connections are open as their client sees them
    /// (a server-side close the relay has not passed on yet still counts).
    pub(crate) fn live(&self) -> usize {
        self.state.live.load(Ordering::SeqCst)
    }

    /// Closes every relayed connection; new ones are still accepted.
    pub(crate) fn cut_all(&self) {
        self.state.cut_all();
    }

    /// Closes the listener and every relayed connection.
    pub(crate) fn stop(&self) {
        if !self.state.stopped.swap(true, Ordering::SeqCst) {
            // Wake the accept loop so it sees `stopped` and drops the listener.
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        }
        self.state.cut_all();
    }
}

/// Copies `from` to `to` on a thread until either side closes, then closes
/// both directions of both sockets and, for the server-to-client direction,
/// takes the pair out of the relay's `live` count.
fn pump(mut from: TcpStream, mut to: TcpStream, count: Option<Arc<RelayState>>) {
    let counted = count.clone();
    let spawned = std::thread::Builder::new()
        .name("dflockd-testkit-relay-io".to_owned())
        .spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
            if let Some(st) = count {
                st.live.fetch_sub(1, Ordering::SeqCst);
            }
        });
    // Without a thread the sockets were dropped (closed) with the closure.
    if let (Err(_), Some(st)) = (spawned, counted) {
        st.live.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_from_versions() {
        assert_eq!(Generation::from_version("v1.10.0"), Some(Generation::V1_10));
        assert_eq!(
            Generation::from_version("v1.14-signals"),
            Some(Generation::V1_14)
        );
        assert_eq!(
            Generation::from_version("dflockd v1.16.2\n"),
            Some(Generation::V1_14)
        );
        assert_eq!(Generation::from_version("v2-cluster"), Some(Generation::V2));
        assert_eq!(Generation::from_version("dev"), None);
        assert!(!Generation::V2.has_signals());
        assert!(!Generation::V1_10.has_ping());
        assert!(Generation::V2.has_fences() && !Generation::V1_14.has_fences());
    }

    #[test]
    fn only_changed_settings_become_flags() {
        let f = flags(&Config::default(), 7);
        assert_eq!(
            f,
            ["--host", "127.0.0.1", "--port", "7", "--shutdown-timeout=1"]
        );
        let cfg = Config {
            read_timeout: Duration::from_millis(1500),
            auth_token: Some("s3cret".into()),
            auto_release_on_disconnect: false,
            ..Config::default()
        };
        let f = flags(&cfg, 7);
        assert!(f.contains(&"--read-timeout=2".to_owned()), "{f:?}");
        assert!(f.contains(&"--auth-token=s3cret".to_owned()));
        assert!(f.contains(&"--auto-release-on-disconnect=false".to_owned()));
    }
}
