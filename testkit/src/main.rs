//! `dflockd-testkit` binary: a standalone dflockd-compatible server.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use clap::builder::BoolishValueParser;
use dflockd_testkit::{Config, TestServer};

/// dflockd-compatible lock server for tests (flags as the real dflockd).
#[derive(Debug, Parser)]
#[command(name = "dflockd-testkit", version)]
struct Args {
    /// Bind address.
    #[arg(long, env = "DFLOCKD_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Bind port.
    #[arg(long, env = "DFLOCKD_PORT", default_value_t = 6388)]
    port: u16,
    /// Default lock lease duration (seconds).
    #[arg(long, env = "DFLOCKD_DEFAULT_LEASE_TTL_S", default_value_t = 33)]
    default_lease_ttl: u64,
    /// Lease expiry check interval (seconds; accepted, leases expire at exact deadlines).
    #[arg(long, env = "DFLOCKD_LEASE_SWEEP_INTERVAL_S", default_value_t = 1)]
    lease_sweep_interval: u64,
    /// Lock state GC interval (seconds).
    #[arg(long, env = "DFLOCKD_GC_LOOP_SLEEP", default_value_t = 5)]
    gc_interval: u64,
    /// Idle seconds before pruning lock state.
    #[arg(long, env = "DFLOCKD_GC_MAX_UNUSED_TIME", default_value_t = 60)]
    gc_max_idle: u64,
    /// Maximum number of unique lock + semaphore keys.
    #[arg(long, env = "DFLOCKD_MAX_LOCKS", default_value_t = 1024)]
    max_locks: usize,
    /// Maximum concurrent connections (0 = unlimited).
    #[arg(long, env = "DFLOCKD_MAX_CONNECTIONS", default_value_t = 0)]
    max_connections: usize,
    /// Maximum waiters per lock/semaphore key (0 = unlimited).
    #[arg(long, env = "DFLOCKD_MAX_WAITERS", default_value_t = 0)]
    max_waiters: usize,
    /// Maximum signal subscriptions per connection (0 = unlimited).
    #[arg(long, env = "DFLOCKD_MAX_SUBSCRIPTIONS", default_value_t = 0)]
    max_subscriptions: usize,
    /// Client read timeout (seconds).
    #[arg(long, env = "DFLOCKD_READ_TIMEOUT_S", default_value_t = 23)]
    read_timeout: u64,
    /// Client write timeout (seconds, 0 = none).
    #[arg(long, env = "DFLOCKD_WRITE_TIMEOUT_S", default_value_t = 5)]
    write_timeout: u64,
    /// Graceful shutdown drain timeout (seconds, 0 = wait forever).
    #[arg(long, env = "DFLOCKD_SHUTDOWN_TIMEOUT_S", default_value_t = 30)]
    shutdown_timeout: u64,
    /// Release locks when a client disconnects (default true).
    #[arg(
        long,
        env = "DFLOCKD_AUTO_RELEASE_ON_DISCONNECT",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new()
    )]
    auto_release_on_disconnect: Option<bool>,
    /// Keep locks of a disconnected client until their lease expires.
    #[arg(long, conflicts_with = "auto_release_on_disconnect")]
    no_auto_release_on_disconnect: bool,
    /// Shared secret token for client authentication.
    #[arg(long, env = "DFLOCKD_AUTH_TOKEN")]
    auth_token: Option<String>,
    /// File containing the auth token (trailing whitespace stripped).
    #[arg(long, env = "DFLOCKD_AUTH_TOKEN_FILE")]
    auth_token_file: Option<PathBuf>,
    /// TLS certificate PEM file (chain, leaf first); requires --tls-key.
    #[arg(long, env = "DFLOCKD_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// TLS private key PEM file; requires --tls-cert.
    #[arg(long, env = "DFLOCKD_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Enable debug logging (accepted, no effect).
    #[arg(long, env = "DFLOCKD_DEBUG", value_parser = BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    debug: Option<bool>,
}

fn config(args: Args) -> Result<Config, String> {
    let auth_token = match (args.auth_token, args.auth_token_file) {
        (Some(t), _) if !t.is_empty() => Some(t),
        (_, Some(path)) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("reading auth token file {}: {e}", path.display()))?;
            Some(text.trim().to_owned()).filter(|t| !t.is_empty())
        }
        _ => None,
    };
    let secs = Duration::from_secs;
    Ok(Config {
        host: args.host,
        port: args.port,
        default_lease_ttl: secs(args.default_lease_ttl),
        lease_sweep_interval: secs(args.lease_sweep_interval),
        gc_interval: secs(args.gc_interval),
        gc_max_idle: secs(args.gc_max_idle),
        max_locks: args.max_locks,
        max_connections: args.max_connections,
        max_waiters: args.max_waiters,
        max_subscriptions: args.max_subscriptions,
        read_timeout: secs(args.read_timeout),
        write_timeout: secs(args.write_timeout),
        shutdown_timeout: secs(args.shutdown_timeout),
        auth_token,
        auto_release_on_disconnect: !args.no_auto_release_on_disconnect
            && args.auto_release_on_disconnect.unwrap_or(true),
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
    })
}

/// Installs the SIGINT/SIGTERM handlers now (before the startup line is
/// printed, so a script that signals right after it is handled) and
/// returns a future that resolves on the first of them.
#[cfg(unix)]
fn termination() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn termination() -> std::io::Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// `dflockd-testkit proxy`: a fault proxy with a line-based control socket.
#[derive(Debug, Parser)]
#[command(name = "dflockd-testkit proxy")]
struct ProxyArgs {
    /// The server to forward to (`host:port`).
    #[arg(long)]
    upstream: String,
    /// Where clients connect.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Where the control socket listens (one command per line: pass,
    /// latency DIR MS [JITTER_MS], trickle DIR BYTES MS, blackhole, pause,
    /// resume, cut, drop-after BYTES|off, connections).
    #[arg(long, default_value = "127.0.0.1:0")]
    control: String,
    /// Seed of the latency jitter.
    #[arg(long, default_value_t = 0x5EED)]
    seed: u64,
}

fn resolve(what: &str, addr: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .map_err(|e| format!("{what} {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{what} {addr}: resolves to nothing"))
}

/// Serves one control connection: a command per line, a reply per line.
fn control_client(stream: std::net::TcpStream, proxy: &dflockd_testkit::FaultProxy) {
    use std::io::{BufRead, BufReader, Write};
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        let reply = match line.parse::<dflockd_testkit::proxy::Command>() {
            Ok(cmd) => proxy.apply(&cmd),
            Err(e) => format!("error {e}"),
        };
        if writeln!(out, "{reply}").is_err() {
            return;
        }
    }
}

fn run_proxy(args: &[String]) -> ExitCode {
    let args = ProxyArgs::parse_from(args);
    let run = || -> Result<(), String> {
        let upstream = resolve("upstream", &args.upstream)?;
        let listen = resolve("listen", &args.listen)?;
        let proxy = dflockd_testkit::FaultProxy::builder(upstream)
            .listen(listen)
            .seed(args.seed)
            .start_blocking()
            .map_err(|e| format!("listen {listen}: {e}"))?;
        let control = std::net::TcpListener::bind(resolve("control", &args.control)?)
            .map_err(|e| format!("control {}: {e}", args.control))?;
        let control_addr = control.local_addr().map_err(|e| e.to_string())?;
        println!(
            "dflockd-testkit proxy listening on {} control on {control_addr}",
            proxy.addr()
        );
        std::thread::scope(|scope| {
            for stream in control.incoming().flatten() {
                let proxy = &proxy;
                scope.spawn(move || control_client(stream, proxy));
            }
        });
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dflockd-testkit proxy: {e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("proxy") {
        return run_proxy(&argv[1..]);
    }
    let args = Args::parse();
    let _ = args.debug;
    let cfg = match config(args) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("dflockd-testkit: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dflockd-testkit: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let server = match TestServer::builder().config(cfg).start().await {
            Ok(server) => server,
            Err(e) => {
                eprintln!("dflockd-testkit: {e}");
                return ExitCode::FAILURE;
            }
        };
        let terminated = match termination() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("dflockd-testkit: installing signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!("dflockd-testkit listening on {}", server.addr());
        terminated.await;
        eprintln!("dflockd-testkit: shutting down");
        server.shutdown().await;
        ExitCode::SUCCESS
    })
}
