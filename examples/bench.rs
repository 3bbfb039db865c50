//! Load generator: acquire+release cycles from many workers, with latency
//! percentiles, a plain TCP ping-pong baseline, and CPU time per op.
//!
//! ```sh
//! cargo run --release --example bench -- --workers 10 --rounds 500
//! cargo run --release --example bench -- --servers 127.0.0.1:6388 --workers 10 --rounds 500
//! cargo run --release --example bench -- --mode blocking --workers 1 --rounds 5000
//! cargo run --release --example bench -- --api client --workers 1 --rounds 5000
//! cargo run --release --example bench --features rustls -- --api client --tls --workers 10
//! ```
//!
//! Each worker has its own key unless `--contended`; one op is an acquire
//! followed by a release. `--api conn` (the default) is the low-level path:
//! each worker opens one connection before the clock starts and sends
//! `acquire` and `release` on it. `--api client` goes through a `Client`'s
//! `DistributedLock` (`acquire()`, then `LeaseGuard::release()`), whose
//! pool hands the connection of the last clean release to the next
//! acquire; each worker runs one untimed cycle first, so the pool is warm
//! as the `conn` path's connections are. `--tls` (feature `rustls`, testkit
//! only) serves TLS with a certificate generated at start. Keys are routed across
//! `--servers` by CRC-32, as every dflockd client does. With no reachable
//! `--servers`, the in-process testkit is started (on its own threads, so
//! client and server CPU time are measured apart).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use dflockd_client::Kind;
use dflockd_client::blocking::{BlockingConnection, ConnectOptions as BlockingOptions};
use dflockd_client::routing::{Crc32Mod, route};
use dflockd_client::tokio::{ConnectOptions, connect};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    Tokio,
    Blocking,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Api {
    /// One connection per worker, raw acquire/release requests.
    Conn,
    /// `Client::lock(key).acquire()` and `LeaseGuard::release()`.
    Client,
}

#[derive(Debug, Parser)]
#[command(about = "dflockd client load generator")]
struct Args {
    /// Comma-separated server addresses; the in-process testkit when none is reachable.
    #[arg(long, value_delimiter = ',')]
    servers: Vec<String>,
    /// Concurrent workers, each with its own connection.
    #[arg(long, default_value_t = 10)]
    workers: usize,
    /// Acquire+release cycles per worker.
    #[arg(long, default_value_t = 500)]
    rounds: usize,
    /// Key prefix.
    #[arg(long, default_value = "bench")]
    key: String,
    /// Acquire timeout in seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Lease TTL in seconds.
    #[arg(long, default_value_t = 30)]
    lease: u64,
    /// tokio tasks or blocking threads.
    #[arg(long, value_enum, default_value_t = Mode::Tokio)]
    mode: Mode,
    /// All workers on one key.
    #[arg(long)]
    contended: bool,
    /// The low-level connection, or the `Client` handle.
    #[arg(long, value_enum, default_value_t = Api::Conn)]
    api: Api,
    /// TLS (feature `rustls`; the testkit serves a generated certificate).
    #[arg(long)]
    tls: bool,
    /// The client's `pool_max_idle` (default: the library's, 8).
    #[arg(long)]
    pool_max_idle: Option<usize>,
}

/// How the workers connect.
#[derive(Clone)]
struct Target {
    servers: Vec<String>,
    #[cfg(feature = "rustls")]
    tls: Option<dflockd_client::tls_rustls::RustlsConnector>,
}

impl Target {
    fn tls(&self) -> bool {
        #[cfg(feature = "rustls")]
        return self.tls.is_some();
        #[cfg(not(feature = "rustls"))]
        false
    }
}

#[cfg(feature = "rustls")]
#[path = "../tests/tls_support/mod.rs"]
mod tls_support;

/// CPU time (user, sys) of the calling thread, or of the whole process.
fn cpu_time(who: libc::c_int) -> (Duration, Duration) {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let u = unsafe {
        if libc::getrusage(who, u.as_mut_ptr()) != 0 {
            return (Duration::ZERO, Duration::ZERO);
        }
        u.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (tv(u.ru_utime), tv(u.ru_stime))
}

/// CPU nanoseconds (user, sys) spent by client threads; each thread adds
/// its own when it ends.
static CLIENT_USER_NS: AtomicU64 = AtomicU64::new(0);
static CLIENT_SYS_NS: AtomicU64 = AtomicU64::new(0);

fn add_thread_cpu() {
    let (user, sys) = cpu_time(libc::RUSAGE_THREAD);
    CLIENT_USER_NS.fetch_add(user.as_nanos() as u64, Ordering::Relaxed);
    CLIENT_SYS_NS.fetch_add(sys.as_nanos() as u64, Ordering::Relaxed);
}

/// A grant-sized reply line for the ping-pong baseline.
const REPLY: &[u8] = b"ok 0123456789abcdef0123456789abcdef 30\n";

/// Round trips of a request-sized line over plain loopback TCP, in ms.
fn tcp_ping_pong(samples: usize) -> Vec<f64> {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo server");
    let addr = listener.local_addr().expect("echo addr");
    let echo = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_nodelay(true).ok();
        let mut buf = [0u8; 64];
        let reply = REPLY;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if s.write_all(reply).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut c = TcpStream::connect(addr).expect("connect echo");
    c.set_nodelay(true).ok();
    let req = b"l\nbench-0\n30 30\n";
    let mut buf = [0u8; 64];
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples + 100 {
        let t = Instant::now();
        c.write_all(req).expect("echo write");
        let mut got = 0;
        while got < REPLY.len() {
            got += c.read(&mut buf[got..]).expect("echo read");
        }
        out.push(t.elapsed().as_secs_f64() * 1e3);
    }
    drop(c);
    echo.join().ok();
    out.split_off(100) // drop the warm-up
}

struct Summary {
    mean: f64,
    min: f64,
    max: f64,
    p50: f64,
    p99: f64,
    stdev: f64,
}

fn summarize(mut v: Vec<f64>) -> Summary {
    v.sort_by(f64::total_cmp);
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    let pct = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    Summary {
        mean,
        min: v[0],
        max: v[v.len() - 1],
        p50: pct(0.50),
        p99: pct(0.99),
        stdev: var.sqrt(),
    }
}

fn reachable(servers: &[String]) -> bool {
    !servers.is_empty()
        && servers.iter().all(|s| {
            s.to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .is_some_and(|a: SocketAddr| {
                    TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok()
                })
        })
}

fn worker_key(args: &Args, i: usize) -> String {
    if args.contended {
        format!("{}-contended", args.key)
    } else {
        format!("{}-{i}", args.key)
    }
}

fn server_for<'a>(servers: &'a [String], key: &str) -> &'a str {
    let list: Vec<&str> = servers.iter().map(String::as_str).collect();
    let i = route(&Crc32Mod, key, &list).expect("at least one server");
    &servers[i]
}

/// `rounds` acquire+release cycles on one raw connection, in ms each.
async fn conn_cycles<T>(
    mut conn: dflockd_client::Connection<T, 256, 0>,
    key: String,
    (rounds, timeout, lease): (usize, u64, u64),
) -> Vec<f64>
where
    T: embedded_io_async::Read + embedded_io_async::Write,
    T::Error: std::fmt::Debug,
{
    let mut lat = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let g = conn
            .acquire(Kind::Lock, &key, timeout, Some(lease))
            .await
            .expect("acquire")
            .expect("granted");
        conn.release(Kind::Lock, &key, &g.token)
            .await
            .expect("release");
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    lat
}

fn client_options(args: &Args) -> dflockd_client::lock::LockOptions {
    let mut o = dflockd_client::lock::LockOptions::default();
    o.acquire_timeout = Duration::from_secs(args.timeout);
    o.lease_ttl = Some(Duration::from_secs(args.lease));
    o
}

fn tokio_client(args: &Args, target: &Target) -> dflockd_client::tokio::Client {
    let mut b = dflockd_client::tokio::Client::builder().servers(target.servers.clone());
    if let Some(n) = args.pool_max_idle {
        b = b.pool_max_idle(n);
    }
    #[cfg(feature = "rustls")]
    if let Some(tls) = &target.tls {
        b = b.tls(tls.clone());
    }
    b.build()
}

fn run_tokio(args: &Args, target: &Target) -> Vec<Vec<f64>> {
    let servers = &target.servers;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-client")
        .on_thread_stop(add_thread_cpu)
        .enable_all()
        .build()
        .expect("client runtime");
    let plan = (args.rounds, args.timeout, args.lease);
    let lat = rt.block_on(async {
        let mut tasks = Vec::new();
        if args.api == Api::Client {
            let client = tokio_client(args, target);
            let opts = client_options(args);
            let locks: Vec<_> = (0..args.workers)
                .map(|i| client.lock_with(worker_key(args, i), opts))
                .collect();
            for lock in &locks {
                // Warm-up: the first cycle connects.
                lock.acquire()
                    .await
                    .expect("acquire")
                    .expect("granted")
                    .release()
                    .await
                    .expect("release");
            }
            for lock in locks {
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(plan.0);
                    for _ in 0..plan.0 {
                        let t = Instant::now();
                        let g = lock.acquire().await.expect("acquire").expect("granted");
                        g.release().await.expect("release");
                        lat.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    lat
                }));
            }
        }
        for i in (0..args.workers).filter(|_| args.api == Api::Conn) {
            let key = worker_key(args, i);
            let addr = server_for(servers, &key).to_owned();
            let opts = ConnectOptions::default();
            #[cfg(feature = "rustls")]
            if let Some(tls) = &target.tls {
                let conn = dflockd_client::tokio::connect_tls::<256, 0>(&addr, &opts, tls)
                    .await
                    .expect("connect");
                tasks.push(tokio::spawn(conn_cycles(conn, key, plan)));
                continue;
            }
            let conn = connect::<256, 0>(&addr, &opts).await.expect("connect");
            tasks.push(tokio::spawn(conn_cycles(conn, key, plan)));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await.expect("worker"));
        }
        all
    });
    drop(rt); // runs on_thread_stop on every client thread
    lat
}

/// `rounds` acquire+release cycles on one raw blocking connection.
fn blocking_cycles<T: dflockd_client::blocking::BlockingTransport>(
    mut conn: BlockingConnection<256, 0, T>,
    key: &str,
    (rounds, timeout, lease): (usize, u64, u64),
) -> Vec<f64> {
    let mut lat = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let g = conn
            .acquire(Kind::Lock, key, timeout, Some(lease))
            .expect("acquire")
            .expect("granted");
        conn.release(Kind::Lock, key, &g.token).expect("release");
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    lat
}

/// `rounds` cycles through a `Client`'s lock (after one untimed cycle).
fn client_cycles(lock: &dflockd_client::blocking::DistributedLock, rounds: usize) -> Vec<f64> {
    let mut lat = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let g = lock.acquire().expect("acquire").expect("granted");
        g.release().expect("release");
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    lat
}

fn run_blocking(args: &Args, target: &Target) -> Vec<Vec<f64>> {
    let plan = (args.rounds, args.timeout, args.lease);
    let client = (args.api == Api::Client).then(|| {
        let mut b = dflockd_client::blocking::Client::builder().servers(target.servers.clone());
        if let Some(n) = args.pool_max_idle {
            b = b.pool_max_idle(n);
        }
        #[cfg(feature = "rustls")]
        if let Some(tls) = &target.tls {
            b = b.tls(tls.clone());
        }
        b.build()
    });
    let threads: Vec<_> = (0..args.workers)
        .map(|i| {
            let key = worker_key(args, i);
            let addr = server_for(&target.servers, &key).to_owned();
            let lock = client
                .as_ref()
                .map(|c| c.lock_with(key.clone(), client_options(args)));
            let target = target.clone();
            std::thread::Builder::new()
                .name("bench-client".into())
                .spawn(move || {
                    let lat = if let Some(lock) = lock {
                        client_cycles(&lock, 1);
                        START.wait();
                        client_cycles(&lock, plan.0)
                    } else {
                        let opts = BlockingOptions::default();
                        #[cfg(feature = "rustls")]
                        if let Some(tls) = &target.tls {
                            let conn = BlockingConnection::<256, 0, _>::connect_tls(
                                addr.as_str(),
                                &opts,
                                tls,
                            )
                            .expect("connect");
                            START.wait();
                            let lat = blocking_cycles(conn, &key, plan);
                            add_thread_cpu();
                            return lat;
                        }
                        let _ = &target;
                        let conn = BlockingConnection::<256, 0>::connect(addr.as_str(), &opts)
                            .expect("connect");
                        START.wait();
                        blocking_cycles(conn, &key, plan)
                    };
                    add_thread_cpu();
                    lat
                })
                .expect("spawn worker")
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("worker"))
        .collect()
}

/// Blocking workers start their timed cycles together, once all are
/// connected (set to the worker count in `main`).
static START: StartGate = StartGate::new();

/// A one-shot barrier whose size is set at run time.
struct StartGate {
    state: std::sync::Mutex<(usize, usize)>,
    cv: std::sync::Condvar,
}

impl StartGate {
    const fn new() -> Self {
        Self {
            state: std::sync::Mutex::new((0, 0)),
            cv: std::sync::Condvar::new(),
        }
    }

    fn set(&self, n: usize) {
        self.state.lock().expect("gate").0 = n;
    }

    fn wait(&self) {
        let mut s = self.state.lock().expect("gate");
        s.1 += 1;
        self.cv.notify_all();
        while s.1 < s.0 {
            s = self.cv.wait(s).expect("gate");
        }
    }
}

fn main() {
    let args = Args::parse();
    #[cfg(not(feature = "rustls"))]
    if args.tls {
        eprintln!("--tls needs the rustls feature: cargo run --example bench --features rustls");
        std::process::exit(2);
    }
    #[cfg(feature = "rustls")]
    let pki = args.tls.then(tls_support::pki);
    if args.tls && reachable(&args.servers) {
        eprintln!("--tls runs against the in-process testkit only (it needs the certificate)");
        std::process::exit(2);
    }
    let (server, servers, where_) = if reachable(&args.servers) && !args.tls {
        (None, args.servers.clone(), args.servers.join(","))
    } else {
        if !args.servers.is_empty() {
            eprintln!(
                "servers {:?} not reachable; using the in-process testkit",
                args.servers
            );
        }
        let builder = dflockd_testkit::TestServer::builder();
        #[cfg(feature = "rustls")]
        let builder = match &pki {
            Some(pki) => builder.tls(&pki.cert, &pki.key),
            None => builder,
        };
        let server = builder.start_blocking().expect("start testkit");
        let addr = server.addr().to_string();
        (
            Some(server),
            vec![addr.clone()],
            format!("{addr} in-process testkit"),
        )
    };

    let rtt = summarize(tcp_ping_pong(2000));
    println!(
        "tcp ping-pong: p50 {:.3} ms, mean {:.3} ms (one loopback round trip, 2000 samples)",
        rtt.p50, rtt.mean
    );

    let target = Target {
        servers,
        #[cfg(feature = "rustls")]
        tls: pki.as_ref().map(|p| {
            dflockd_client::tls_rustls::RustlsConnector::from_ca_der(
                &p.ca_der,
                tls_support::SERVER_NAME,
            )
            .expect("connector")
        }),
    };
    START.set(args.workers);
    let cpu_before = cpu_time(libc::RUSAGE_SELF);
    let start = Instant::now();
    let lat = match args.mode {
        Mode::Tokio => run_tokio(&args, &target),
        Mode::Blocking => run_blocking(&args, &target),
    };
    let wall = start.elapsed();
    let cpu_after = cpu_time(libc::RUSAGE_SELF);
    let total_user = cpu_after.0.saturating_sub(cpu_before.0);
    let total_sys = cpu_after.1.saturating_sub(cpu_before.1);
    let client_user = Duration::from_nanos(CLIENT_USER_NS.load(Ordering::Relaxed));
    let client_sys = Duration::from_nanos(CLIENT_SYS_NS.load(Ordering::Relaxed));

    let lat: Vec<f64> = lat.into_iter().flatten().collect();
    let ops = lat.len();
    let s = summarize(lat);
    println!(
        "bench: {} workers x {} rounds ({}, api {}{}, {}, {})",
        args.workers,
        args.rounds,
        match args.mode {
            Mode::Tokio => "tokio",
            Mode::Blocking => "blocking",
        },
        match args.api {
            Api::Conn => "conn",
            Api::Client => "client",
        },
        if target.tls() { ", TLS" } else { "" },
        if args.contended {
            "contended"
        } else {
            "uncontended"
        },
        where_
    );
    println!("  total ops : {ops}");
    println!("  wall time : {:.3} s", wall.as_secs_f64());
    println!("  throughput: {:.0} ops/s", ops as f64 / wall.as_secs_f64());
    println!("  mean      : {:.3} ms", s.mean);
    println!("  min       : {:.3} ms", s.min);
    println!("  max       : {:.3} ms", s.max);
    println!("  p50       : {:.3} ms", s.p50);
    println!("  p99       : {:.3} ms", s.p99);
    println!("  stdev     : {:.3} ms", s.stdev);
    println!(
        "  cycle/rtt : {:.2} x two round trips (p50 {:.3} ms vs 2 x {:.3} ms)",
        s.p50 / (2.0 * rtt.p50),
        s.p50,
        rtt.p50
    );
    let per_op = |d: Duration| d.as_secs_f64() * 1e6 / ops.max(1) as f64;
    println!(
        "  client cpu: {:.2} us/op (user {:.2} + sys {:.2}, client threads)",
        per_op(client_user + client_sys),
        per_op(client_user),
        per_op(client_sys)
    );
    if server.is_some() {
        let (user, sys) = (
            total_user.saturating_sub(client_user),
            total_sys.saturating_sub(client_sys),
        );
        println!(
            "  server cpu: {:.2} us/op (user {:.2} + sys {:.2}, the in-process testkit)",
            per_op(user + sys),
            per_op(user),
            per_op(sys)
        );
    }
    drop(server);
}
