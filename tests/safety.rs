//! Lease safety under faults (issue 13), judged from a history.
//!
//! * Deadline tests: every adapter's requests end at their timeout against
//!   a server that trickles bytes and never ends its line; a black-holed
//!   guard reports the loss at its deadline; a blocking guard whose renews
//!   run back to back still sees its release (issue 12, defect 9).
//! * `randomized_faults_keep_leases_safe`: seeded, bounded runs — tokio and
//!   blocking clients contend for a few keys with 1–3 s leases, each
//!   through its own [`FaultProxy`] that injects faults at random moments.
//!   The history (timestamps on one clock, this process's) is judged: no
//!   overlap (definite holding intervals, from the grant to the last sample
//!   that found `token()` set, never cover an instant more than the key's
//!   limit); every loss reported by its conservative deadline + 5 ms (no
//!   sample that began more than 5 ms after the deadline in force found the
//!   guard holding); nothing stranded on the server at the end; fences
//!   never going back (where the server issues fences). "Max loss
//!   lateness" is when `wait_lost_timeout`/`lost()` returned, against the
//!   deadline: it includes the observing thread's scheduling delay, which
//!   is printed too (observer oversleep). It prints
//!   `safety <server>: R runs, O overlaps, L late losses, S stranded, max loss lateness X ms`.
//!
//! Environment: `SAFETY_SEED` replays a run (the seed is printed),
//! `SAFETY_SECS` sets the randomized budget (default 4 s: one run; soak
//! with 600),
//! `DFLOCKD_REAL_SERVER=/path/to/dflockd-<name>` runs everything against
//! that real server (the testkit's real-binary mode starts it on a free
//! loopback port) instead of the in-process testkit.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dflockd_client::Error;
use dflockd_client::blocking;
use dflockd_testkit::proxy::Direction;
use dflockd_testkit::{FaultProxy, TestServer};

// ---- the server under test ---------------------------------------------------

struct Target {
    name: &'static str,
    addr: SocketAddr,
    fences: bool,
    server: TestServer,
}

impl Target {
    /// Whether the server's tokens are fencing tokens (v2 and the testkit).
    fn has_fences(&self) -> bool {
        self.fences
    }
}

/// The testkit, or the real server named by `DFLOCKD_REAL_SERVER` (the
/// testkit's real-binary mode starts it on a free loopback port).
fn target() -> Target {
    let server = TestServer::builder()
        .start_blocking()
        .expect("start the server under test");
    let generation = server.generation();
    Target {
        name: generation.name(),
        addr: server.addr(),
        fences: generation.has_fences(),
        server,
    }
}

/// Keys starting with `prefix` that still have a holder or a waiter, from
/// the server's `stats`.
fn stranded(server: &TestServer, prefix: &str) -> Vec<String> {
    let stats = server.stats();
    let locks = stats
        .locks
        .iter()
        .filter(|l| l.key.starts_with(prefix))
        .map(|l| format!("lock {} (waiters {})", l.key, l.waiters));
    let sems = stats
        .semaphores
        .iter()
        .filter(|l| l.key.starts_with(prefix))
        .map(|l| {
            format!(
                "semaphore {} (holders {}, waiters {})",
                l.key, l.holders, l.waiters
            )
        });
    locks.chain(sems).collect()
}

// ---- deadline tests ------------------------------------------------------------

/// A server that answers every connection with one byte every 50 ms and
/// never a newline.
fn trickling_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                while s.write_all(b"o").is_ok() {
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
        }
    });
    addr
}

const IO: Duration = Duration::from_secs(1);
/// Generous bound for a loaded CI machine; the measured overshoot is
/// printed (and published in RELIABILITY.md).
const OVERSHOOT_LIMIT: Duration = Duration::from_millis(500);

fn report_overshoot(adapter: &str, elapsed: Duration, timeout: Duration) {
    let over = elapsed.saturating_sub(timeout);
    println!(
        "timeout overshoot {adapter}: {} ms (timeout {} ms, returned after {} ms)",
        over.as_millis(),
        timeout.as_millis(),
        elapsed.as_millis()
    );
    assert!(
        elapsed < timeout + OVERSHOOT_LIMIT,
        "{adapter}: returned after {elapsed:?}, timeout {timeout:?}"
    );
}

#[test]
fn blocking_requests_end_at_their_deadline_against_a_trickling_server() {
    let addr = trickling_server();
    let opts = blocking::ConnectOptions {
        io_timeout: IO,
        ..Default::default()
    };

    let mut conn = blocking::BlockingConnection::<256, 0>::connect(addr, &opts).unwrap();
    let t = Instant::now();
    let r = conn.acquire(dflockd_client::Kind::Lock, "k", 0, None);
    assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
    report_overshoot("blocking BlockingConnection::acquire", t.elapsed(), IO);

    let lock = blocking::DistributedLock::builder("k")
        .server(addr.to_string())
        .io_timeout(IO)
        .build();
    let t = Instant::now();
    let r = lock.try_acquire();
    assert!(r.is_err(), "{r:?}");
    report_overshoot("blocking DistributedLock::try_acquire", t.elapsed(), IO);

    let signal_opts = dflockd_client::tokio::SignalOptions {
        io_timeout: IO,
        ..Default::default()
    };
    let sig: dflockd_client::blocking::SignalConn =
        dflockd_client::blocking::SignalConn::connect(addr, &opts, signal_opts).unwrap();
    let t = Instant::now();
    let r = sig.listen("chan", None);
    assert!(r.is_err(), "{r:?}");
    report_overshoot("blocking SignalConn::listen", t.elapsed(), IO);
}

#[tokio::test]
async fn tokio_requests_end_at_their_deadline_against_a_trickling_server() {
    let addr = trickling_server();
    let lock = dflockd_client::tokio::DistributedLock::builder("k")
        .server(addr.to_string())
        .io_timeout(IO)
        .build();
    let t = Instant::now();
    let r = lock.try_acquire().await;
    assert!(r.is_err(), "{r:?}");
    report_overshoot("tokio DistributedLock::try_acquire", t.elapsed(), IO);

    let sig: dflockd_client::tokio::SignalConn = dflockd_client::tokio::SignalConn::connect(
        &addr.to_string(),
        &dflockd_client::tokio::ConnectOptions::default(),
        dflockd_client::tokio::SignalOptions {
            io_timeout: IO,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let t = Instant::now();
    let r = sig.listen("chan", None).await;
    assert!(r.is_err(), "{r:?}");
    report_overshoot("tokio SignalConn::listen", t.elapsed(), IO);
}

/// A guard behind a black-holed network reports the loss at its
/// conservative deadline, on both host adapters.
#[test]
fn blackholed_guards_report_the_loss_at_their_deadline() {
    let server = target();
    let proxy = FaultProxy::builder(server.addr).start_blocking().unwrap();
    let lease = Duration::from_secs(1);
    let key = format!("safety-bh-{}", std::process::id());

    let lock = blocking::DistributedLock::builder(key.clone())
        .server(proxy.addr().to_string())
        .lease_ttl(lease)
        .build();
    let guard = lock.try_acquire().unwrap().expect("free");
    proxy.blackhole();
    assert!(
        guard.wait_lost_timeout(Duration::from_secs(5)),
        "never lost"
    );
    let late = Instant::now().saturating_duration_since(guard.deadline());
    println!("blocking loss lateness: {} µs", late.as_micros());
    assert!(guard.token().is_none());
    assert!(late < Duration::from_millis(50), "{late:?} late");
    drop(guard);
    proxy.pass();
    proxy.cut();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let lock = dflockd_client::tokio::DistributedLock::builder(key.clone())
            .server(proxy.addr().to_string())
            .lease_ttl(lease)
            .acquire_timeout(Duration::from_secs(3))
            .build();
        let guard = lock.acquire().await.unwrap().expect("free again");
        proxy.blackhole();
        tokio::time::timeout(Duration::from_secs(5), guard.lost())
            .await
            .expect("never lost");
        let late = Instant::now().saturating_duration_since(guard.deadline());
        println!("tokio loss lateness: {} µs", late.as_micros());
        assert!(guard.is_lost() && guard.token().is_none());
        assert!(late < Duration::from_millis(50), "{late:?} late");
    });
}

/// Issue 12, defect 9: with a round trip as long as the renew interval the
/// blocking renew thread renews back to back; a release must still be seen
/// (it used to wait forever).
#[test]
fn blocking_release_is_seen_when_renews_run_back_to_back() {
    let server = target();
    let proxy = FaultProxy::builder(server.addr).start_blocking().unwrap();
    let key = format!("safety-d9-{}", std::process::id());
    let lock = blocking::DistributedLock::builder(key)
        .server(proxy.addr().to_string())
        .lease_ttl(Duration::from_secs(3))
        .io_timeout(Duration::from_secs(5))
        .build();
    let guard = lock.try_acquire().unwrap().expect("free");
    // A 1.4 s round trip: longer than the renew interval (1.5 s less the
    // round trip and jitter), shorter than half the lease: every renew
    // succeeds and the next one is due before its reply is in.
    proxy.latency(Direction::Both, Duration::from_millis(700), Duration::ZERO);
    std::thread::sleep(Duration::from_millis(4000));
    assert!(!guard.is_lost(), "renews should keep the lease");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(guard.release());
    });
    // One renew in flight (1.4 s) plus the release's round trip (1.4 s).
    let out = rx
        .recv_timeout(Duration::from_secs(8))
        .expect("release never returned: the renew thread starved it");
    assert!(out.is_ok(), "{out:?}");
}

// ---- the fault matrix ----------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Fault {
    Blackhole,
    Latency,
    Trickle,
    Pause,
    Cut,
    DropAfter,
}

impl Fault {
    const ALL: [Fault; 6] = [
        Fault::Blackhole,
        Fault::Latency,
        Fault::Trickle,
        Fault::Pause,
        Fault::Cut,
        Fault::DropAfter,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::Blackhole => "black hole 2.5 s",
            Fault::Latency => "latency 100 ms each way",
            Fault::Trickle => "trickle 1 byte / 20 ms",
            Fault::Pause => "server paused 2.5 s",
            Fault::Cut => "cut",
            Fault::DropAfter => "drop after 3 bytes",
        }
    }

    fn inject(self, p: &FaultProxy) {
        match self {
            Fault::Blackhole => p.blackhole(),
            Fault::Latency => {
                p.latency(Direction::Both, Duration::from_millis(100), Duration::ZERO)
            }
            Fault::Trickle => p.trickle(Direction::Both, 1, Duration::from_millis(20)),
            Fault::Pause => p.pause(),
            Fault::Cut => p.cut(),
            Fault::DropAfter => p.drop_after(Some(3)),
        }
    }
}

/// Either host guard, asked from a plain thread.
enum AnyGuard {
    Blocking(blocking::LeaseGuard),
    Tokio(dflockd_client::tokio::LeaseGuard),
}

impl AnyGuard {
    fn held(&self) -> bool {
        match self {
            AnyGuard::Blocking(g) => g.token().is_some(),
            AnyGuard::Tokio(g) => g.token().is_some(),
        }
    }
    fn deadline(&self) -> Instant {
        match self {
            AnyGuard::Blocking(g) => g.deadline(),
            AnyGuard::Tokio(g) => g.deadline(),
        }
    }
}

/// One cell: a guard with a 1 s lease through a proxy; 200 ms in, the
/// fault for 2.5 s; a contender straight to the server asks for the key
/// meanwhile. Returns the outcome and whether it was safe.
fn matrix_cell(server: SocketAddr, key: &str, fault: Fault, adapter: Adapter) -> (String, bool) {
    let proxy = FaultProxy::builder(server).start_blocking().unwrap();
    let lease = Duration::from_secs(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let guard = match adapter {
        Adapter::Blocking => blocking::DistributedLock::builder(key)
            .server(proxy.addr().to_string())
            .lease_ttl(lease)
            .acquire_timeout(Duration::from_secs(5))
            .build()
            .acquire()
            .map(|g| g.map(AnyGuard::Blocking)),
        Adapter::Tokio => rt.block_on(async {
            dflockd_client::tokio::DistributedLock::builder(key)
                .server(proxy.addr().to_string())
                .lease_ttl(lease)
                .acquire_timeout(Duration::from_secs(5))
                .build()
                .acquire()
                .await
                .map(|g| g.map(AnyGuard::Tokio))
        }),
    };
    let Ok(Some(guard)) = guard else {
        return (
            format!("no grant: {guard:?}", guard = guard.map(|_| ())),
            false,
        );
    };
    std::thread::sleep(Duration::from_millis(200));
    let mut last_claim = guard.held().then(Instant::now);
    fault.inject(&proxy);
    let fault_at = Instant::now();
    let contender_key = key.to_owned();
    let contender = std::thread::spawn(move || {
        let got = blocking::DistributedLock::builder(contender_key)
            .server(server.to_string())
            .lease_ttl(Duration::from_secs(5))
            .acquire_timeout(Duration::from_secs(4))
            .build()
            .acquire();
        let at = Instant::now();
        match got {
            Ok(Some(g)) => {
                let _ = g.release();
                Some(at)
            }
            _ => None,
        }
    });
    let mut lost: Option<(Instant, Instant)> = None;
    while fault_at.elapsed() < Duration::from_millis(2500) {
        let t0 = Instant::now();
        if guard.held() {
            last_claim = Some(t0);
        } else if lost.is_none() {
            lost = Some((t0, guard.deadline()));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    proxy.pass();
    drop(guard);
    let granted = contender.join().unwrap_or(None);
    let safe = match (granted, last_claim) {
        (Some(g), Some(c)) => c < g,
        _ => true,
    };
    let outcome = match lost {
        None => "held (renewed through it)".to_owned(),
        Some((at, deadline)) => {
            let late = lateness(at, deadline);
            if late < 0 {
                format!("lost at the close, {} ms before the deadline", -late / 1000)
            } else {
                format!("lost at the deadline +{:.1} ms", late as f64 / 1000.0)
            }
        }
    };
    let contender = match (granted, lost, last_claim) {
        (Some(g), Some(_), Some(c)) => format!(
            "contender granted {:.1} ms after the guard last said held",
            lateness(g, c) as f64 / 1000.0
        ),
        (Some(g), _, _) => format!(
            "contender granted {} ms after the fault (guard released)",
            g.duration_since(fault_at).as_millis()
        ),
        (None, _, _) => "contender not granted".to_owned(),
    };
    (format!("{outcome}; {contender}"), safe)
}

/// Every fault against both host adapters (cells run in parallel): prints
/// one `fault matrix` row per cell for RELIABILITY.md and checks that no
/// guard claimed the lease once the contender had it.
#[test]
fn fault_matrix() {
    let server = target();
    let rows: Vec<(String, bool)> = std::thread::scope(|s| {
        let mut cells = Vec::new();
        for (i, fault) in Fault::ALL.into_iter().enumerate() {
            for adapter in [Adapter::Blocking, Adapter::Tokio] {
                let key = format!("safety-matrix-{}-{i}-{adapter:?}", std::process::id());
                let addr = server.addr;
                cells.push(s.spawn(move || {
                    let (out, safe) = matrix_cell(addr, &key, fault, adapter);
                    (
                        format!(
                            "fault matrix {}: {} | {adapter:?} | {out}{}",
                            server.name,
                            fault.name(),
                            if safe { "" } else { " | OVERLAP" }
                        ),
                        safe,
                    )
                }));
            }
        }
        cells.into_iter().map(|c| c.join().unwrap()).collect()
    });
    for (row, _) in &rows {
        println!("{row}");
    }
    assert!(rows.iter().all(|(_, safe)| *safe), "an unsafe cell above");
}

// ---- the randomized suite ------------------------------------------------------

/// xorshift64*: small, seeded, good enough for choosing faults.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// One granted guard's life, on the test's clock.
#[derive(Debug, Clone)]
struct Hold {
    key: String,
    /// 1 for locks, the limit for semaphores.
    limit: usize,
    client: usize,
    /// When `acquire` had started, and when it returned the guard.
    asked: Instant,
    granted: Instant,
    /// The start of the last sample that found the guard held: it claimed
    /// the lease at some instant at or after this.
    last_claim: Instant,
    /// The fence the guard showed when acquire returned; `None` when the
    /// guard was already lost then (a grant that arrived past its deadline
    /// under faults): such a hold never claimed the lock, so fence order
    /// does not apply to it.
    fence: Option<u64>,
    /// Loss observed: when, and how long after the guard's deadline.
    lost: Option<(Instant, i128)>,
    /// The latest a sample found the guard claiming the lease after the
    /// deadline in force, in µs past it (a late report when over 5 ms).
    late_claim: Option<i128>,
    /// The longest a 5 ms timed wait of the observing thread overslept,
    /// in µs: the scheduling delay every wake-up here includes.
    oversleep_us: i128,
}

impl Hold {
    /// A sample that began at `t0`, with `deadline` in force, found the
    /// guard holding.
    fn claimed(&mut self, t0: Instant, deadline: Instant) {
        self.last_claim = t0;
        let past = lateness(t0, deadline);
        if past > 0 {
            self.late_claim = Some(self.late_claim.map_or(past, |m| m.max(past)));
        }
    }

    /// A 5 ms timed wait that began at `w` timed out now.
    fn overslept(&mut self, w: Instant) {
        let over = w.elapsed().as_micros() as i128 - SAMPLE.as_micros() as i128;
        self.oversleep_us = self.oversleep_us.max(over);
    }
}

#[derive(Default)]
struct History {
    holds: Vec<Hold>,
    errors: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Adapter {
    Tokio,
    Blocking,
}

struct Client {
    id: usize,
    adapter: Adapter,
    proxy: FaultProxy,
    /// Held while a client acquires: a pause (which holds replies) is only
    /// injected while the client is not waiting for a grant, so no grant
    /// is delivered later than the grant slack (see RELIABILITY.md).
    acquiring: Mutex<()>,
    /// Whether the client holds a guard now (faults prefer holders).
    holding: AtomicBool,
}

struct Run {
    prefix: String,
    keys: Vec<(String, usize)>,
    clients: Vec<Client>,
    stop: AtomicBool,
    history: Mutex<History>,
}

const SAMPLE: Duration = Duration::from_millis(5);

/// The options every client of the suite uses, through its own proxy.
macro_rules! configure {
    ($builder:expr, $client:expr, $lease:expr) => {
        $builder
            .server($client.proxy.addr().to_string())
            .lease_ttl($lease)
            .io_timeout(Duration::from_secs(1))
            .connect_timeout(Duration::from_secs(1))
    };
}

impl Run {
    fn record(&self, hold: Hold) {
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .holds
            .push(hold);
    }

    fn error(&self, e: String) {
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .errors
            .push(e);
    }

    /// Waits while the client's proxy is paused, then returns the gate
    /// held for the acquire.
    fn gate<'c>(&self, c: &'c Client) -> Option<std::sync::MutexGuard<'c, ()>> {
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return None;
            }
            let g = c.acquiring.lock().unwrap_or_else(|e| e.into_inner());
            if !c.proxy.faults().paused {
                return Some(g);
            }
            drop(g);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn blocking_client(&self, c: &Client, mut rng: Rng) {
        while !self.stop.load(Ordering::SeqCst) {
            let (key, limit) = self.keys[rng.below(self.keys.len() as u64) as usize].clone();
            let lease = Duration::from_secs(1 + rng.below(3));
            let wait = Duration::from_millis(rng.below(2) * 1000);
            let hold_for = rng.ms(100, 4000);
            let Some(gate) = self.gate(c) else { return };
            let asked = Instant::now();
            let got = if limit == 1 {
                configure!(blocking::DistributedLock::builder(key.clone()), c, lease)
                    .build()
                    .acquire_within(wait)
            } else {
                configure!(
                    blocking::DistributedSemaphore::builder(key.clone(), limit as u32),
                    c,
                    lease
                )
                .build()
                .acquire_within(wait)
            };
            let granted = Instant::now();
            drop(gate);
            let guard = match got {
                Ok(Some(g)) => g,
                Ok(None) | Err(_) => {
                    std::thread::sleep(rng.ms(5, 50));
                    continue;
                }
            };
            let mut hold = Hold {
                key,
                limit,
                client: c.id,
                asked,
                granted,
                last_claim: granted,
                fence: guard.fence().map(u64::from),
                lost: None,
                late_claim: None,
                oversleep_us: 0,
            };
            let until = granted + hold_for;
            c.holding.store(true, Ordering::SeqCst);
            while Instant::now() < until && !self.stop.load(Ordering::SeqCst) {
                let d0 = guard.deadline();
                let t0 = Instant::now();
                if guard.token().is_some() {
                    hold.claimed(t0, d0);
                }
                let w = Instant::now();
                if guard.wait_lost_timeout(SAMPLE) {
                    let at = Instant::now();
                    hold.lost = Some((at, lateness(at, guard.deadline())));
                    if guard.token().is_some() {
                        self.error(format!("client {}: lost but token() is Some", c.id));
                    }
                    break;
                }
                hold.overslept(w);
            }
            c.holding.store(false, Ordering::SeqCst);
            self.record(hold.clone());
            if hold.lost.is_none() {
                let _ = guard.release();
            }
        }
    }

    // The gate is a std mutex on purpose: the fault injector (another
    // thread) only ever `try_lock`s it, and this client runs alone on its
    // own current-thread runtime.
    #[allow(clippy::await_holding_lock)]
    async fn tokio_client(&self, c: &Client, mut rng: Rng) {
        while !self.stop.load(Ordering::SeqCst) {
            let (key, limit) = self.keys[rng.below(self.keys.len() as u64) as usize].clone();
            let lease = Duration::from_secs(1 + rng.below(3));
            let wait = Duration::from_millis(rng.below(2) * 1000);
            let hold_for = rng.ms(100, 4000);
            let Some(gate) = self.gate(c) else { return };
            let asked = Instant::now();
            let got = if limit == 1 {
                configure!(
                    dflockd_client::tokio::DistributedLock::builder(key.clone()),
                    c,
                    lease
                )
                .build()
                .acquire_within(wait)
                .await
            } else {
                configure!(
                    dflockd_client::tokio::DistributedSemaphore::builder(key.clone(), limit as u32),
                    c,
                    lease
                )
                .build()
                .acquire_within(wait)
                .await
            };
            let granted = Instant::now();
            drop(gate);
            let guard = match got {
                Ok(Some(g)) => g,
                Ok(None) | Err(_) => {
                    tokio::time::sleep(rng.ms(5, 50)).await;
                    continue;
                }
            };
            let mut hold = Hold {
                key,
                limit,
                client: c.id,
                asked,
                granted,
                last_claim: granted,
                fence: guard.fence().map(u64::from),
                lost: None,
                late_claim: None,
                oversleep_us: 0,
            };
            let until = granted + hold_for;
            c.holding.store(true, Ordering::SeqCst);
            while Instant::now() < until && !self.stop.load(Ordering::SeqCst) {
                let d0 = guard.deadline();
                let t0 = Instant::now();
                if guard.token().is_some() {
                    hold.claimed(t0, d0);
                }
                let w = Instant::now();
                let lost = tokio::select! {
                    () = guard.lost() => true,
                    () = tokio::time::sleep(SAMPLE) => false,
                };
                if lost {
                    let at = Instant::now();
                    hold.lost = Some((at, lateness(at, guard.deadline())));
                    if guard.token().is_some() {
                        self.error(format!("client {}: lost but token() is Some", c.id));
                    }
                    break;
                }
                hold.overslept(w);
            }
            c.holding.store(false, Ordering::SeqCst);
            self.record(hold.clone());
            if hold.lost.is_none() {
                let _ = guard.release().await;
            }
        }
    }

    /// Injects random faults into one client's proxy, one after another
    /// with 0.1–1 s between them; three times in four it first waits (up
    /// to 2 s) for the client to hold a guard.
    fn faults(&self, c: &Client, mut rng: Rng) -> Vec<String> {
        let mut log = Vec::new();
        let t0 = Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            sleep_unless(&self.stop, rng.ms(100, 1000));
            if rng.below(4) != 0 {
                let until = Instant::now() + Duration::from_secs(2);
                while !c.holding.load(Ordering::SeqCst)
                    && Instant::now() < until
                    && !self.stop.load(Ordering::SeqCst)
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            let p = &c.proxy;
            let kind = rng.below(6);
            let dur = match kind {
                0 => {
                    p.blackhole();
                    rng.ms(300, 3500)
                }
                1 => {
                    p.latency(Direction::Both, rng.ms(5, 150), rng.ms(0, 50));
                    rng.ms(500, 3000)
                }
                2 => {
                    p.trickle(Direction::Both, 1, rng.ms(1, 8));
                    rng.ms(300, 2000)
                }
                3 => {
                    // Only while the client is not waiting for a grant.
                    let Ok(_gate) = c.acquiring.try_lock() else {
                        continue;
                    };
                    p.pause();
                    rng.ms(300, 3500)
                }
                4 => {
                    p.cut();
                    Duration::ZERO
                }
                _ => {
                    p.drop_after(Some(rng.below(80)));
                    rng.ms(200, 1500)
                }
            };
            log.push(format!(
                "{:>6} ms client {} ({:?}) fault {} for {} ms",
                t0.elapsed().as_millis(),
                c.id,
                c.adapter,
                [
                    "blackhole",
                    "latency",
                    "trickle",
                    "pause",
                    "cut",
                    "drop-after"
                ][kind as usize],
                dur.as_millis()
            ));
            sleep_unless(&self.stop, dur);
            p.pass();
        }
        c.proxy.pass();
        log
    }
}

fn lateness(at: Instant, deadline: Instant) -> i128 {
    if at >= deadline {
        (at - deadline).as_micros() as i128
    } else {
        -((deadline - at).as_micros() as i128)
    }
}

fn sleep_unless(stop: &AtomicBool, dur: Duration) {
    let until = Instant::now() + dur;
    while !stop.load(Ordering::SeqCst) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
}

/// What a run's history shows.
#[derive(Default, Debug)]
struct Verdict {
    holds: usize,
    overlaps: usize,
    late: usize,
    stranded: usize,
    losses: usize,
    fence_regressions: usize,
    /// Microseconds; the largest lateness of a loss observed.
    max_lateness_us: Option<i128>,
    /// Microseconds; the largest oversleep of the observing threads.
    max_oversleep_us: i128,
    details: Vec<String>,
}

/// Judges a history: definite holding intervals `[granted, last_claim]`
/// never cover an instant more than `limit` times per key; no claim more
/// than 5 ms after the deadline; fences increasing for grants that cannot
/// have been reordered.
fn judge(history: &History, fences: bool) -> Verdict {
    let mut v = Verdict {
        holds: history.holds.len(),
        ..Default::default()
    };
    v.details.extend(history.errors.iter().cloned());
    let mut keys: Vec<&str> = history.holds.iter().map(|h| h.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        let holds: Vec<&Hold> = history.holds.iter().filter(|h| h.key == key).collect();
        let limit = holds[0].limit;
        // Sweep: +1 at granted, -1 after last_claim (closed intervals).
        let mut events: Vec<(Instant, i32, usize)> = Vec::new();
        for (i, h) in holds.iter().enumerate() {
            if h.last_claim >= h.granted {
                events.push((h.granted, 1, i));
                events.push((h.last_claim, -1, i));
            }
        }
        events.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut open: Vec<usize> = Vec::new();
        for (at, d, i) in events {
            if d > 0 {
                open.push(i);
                if open.len() > limit {
                    v.overlaps += 1;
                    let who: Vec<String> = open
                        .iter()
                        .map(|&j| {
                            let h = holds[j];
                            format!(
                                "client {} [{:?} .. {:?}] fence {:?}",
                                h.client,
                                h.granted.duration_since(holds[0].asked),
                                h.last_claim.duration_since(holds[0].asked),
                                h.fence
                            )
                        })
                        .collect();
                    v.details.push(format!(
                        "overlap on {key} at {:?}: {}",
                        at.duration_since(holds[0].asked),
                        who.join("; ")
                    ));
                }
            } else {
                open.retain(|&j| j != i);
            }
        }
        if fences && limit == 1 {
            for a in &holds {
                for b in &holds {
                    let (Some(fa), Some(fb)) = (a.fence, b.fence) else {
                        continue;
                    };
                    if b.asked > a.granted && fb <= fa {
                        v.fence_regressions += 1;
                        v.details
                            .push(format!("fence went back on {key}: {fa} then {fb}"));
                    }
                }
            }
        }
    }
    for h in &history.holds {
        v.max_oversleep_us = v.max_oversleep_us.max(h.oversleep_us);
        if let Some((_, late)) = h.lost {
            v.losses += 1;
            v.max_lateness_us = Some(v.max_lateness_us.map_or(late, |m| m.max(late)));
        }
        // Late: the guard still said "held" more than 5 ms after its
        // deadline (what `is_lost`/`token`/`fence` report).
        if let Some(past) = h.late_claim.filter(|&p| p > 5_000) {
            v.late += 1;
            v.details.push(format!(
                "late loss on {} by client {}: still held {} µs after the deadline",
                h.key, h.client, past
            ));
        }
    }
    v
}

fn one_run(server: &Target, seed: u64, run: u64, secs: Duration) -> Verdict {
    let mut rng = Rng(seed ^ run.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let prefix = format!("safety-{seed:x}-{run}-");
    let keys = vec![
        (format!("{prefix}a"), 1),
        (format!("{prefix}b"), 1),
        (format!("{prefix}s"), 2),
    ];
    let clients = (0..4)
        .map(|id| Client {
            id,
            adapter: if id % 2 == 0 {
                Adapter::Tokio
            } else {
                Adapter::Blocking
            },
            proxy: FaultProxy::builder(server.addr)
                .seed(rng.next())
                .start_blocking()
                .expect("start a proxy"),
            acquiring: Mutex::new(()),
            holding: AtomicBool::new(false),
        })
        .collect();
    let run_state = Run {
        prefix,
        keys,
        clients,
        stop: AtomicBool::new(false),
        history: Mutex::new(History::default()),
    };
    let r = &run_state;
    let mut fault_log = Vec::new();
    std::thread::scope(|s| {
        for c in &r.clients {
            let crng = Rng(rng.next() | 1);
            s.spawn(move || match c.adapter {
                Adapter::Blocking => r.blocking_client(c, crng),
                Adapter::Tokio => tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime")
                    .block_on(r.tokio_client(c, crng)),
            });
        }
        let injectors: Vec<_> = r
            .clients
            .iter()
            .map(|c| {
                let frng = Rng(rng.next() | 1);
                s.spawn(move || r.faults(c, frng))
            })
            .collect();
        std::thread::sleep(secs);
        r.stop.store(true, Ordering::SeqCst);
        for i in injectors {
            fault_log.extend(i.join().unwrap_or_default());
        }
    });
    fault_log.sort();
    // Every guard is released or dropped; close every proxied connection.
    for c in &run_state.clients {
        c.proxy.cut();
    }
    let history = run_state
        .history
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    let mut v = judge(&history, server.has_fences());
    // Stranded: the server must show nothing of this run once the
    // connections are gone (give it a few seconds to notice the closes).
    let deadline = Instant::now() + Duration::from_secs(5);
    let left = loop {
        let left = stranded(&server.server, &run_state.prefix);
        if left.is_empty() || Instant::now() >= deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    v.stranded = left.len();
    v.details
        .extend(left.into_iter().map(|l| format!("stranded {l}")));
    if !v.details.is_empty() {
        v.details.push(format!("faults of run {run}:"));
        v.details.extend(fault_log);
    }
    v
}

#[test]
fn randomized_faults_keep_leases_safe() {
    let seed = std::env::var("SAFETY_SEED")
        .ok()
        .and_then(|s| {
            s.strip_prefix("0x")
                .map_or_else(|| s.parse().ok(), |h| u64::from_str_radix(h, 16).ok())
        })
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let budget = Duration::from_secs(
        std::env::var("SAFETY_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(4),
    );
    let server = target();
    println!(
        "safety seed {seed} (replay: SAFETY_SEED={seed}), budget {} s, server {}",
        budget.as_secs(),
        server.name
    );
    let start = Instant::now();
    let (mut runs, mut overlaps, mut late, mut stranded_n, mut regress, mut holds, mut losses) =
        (0u64, 0, 0, 0, 0, 0, 0);
    let mut oversleep = 0i128;
    let mut max_late: Option<i128> = None;
    let mut details = Vec::new();
    // A run is ~6 s of contention plus teardown; at least one run.
    loop {
        let left = budget.saturating_sub(start.elapsed());
        if runs > 0 && left < Duration::from_secs(4) {
            break;
        }
        let secs = left
            .saturating_sub(Duration::from_secs(1))
            .clamp(Duration::from_secs(3), Duration::from_secs(6));
        let v = one_run(&server, seed, runs, secs);
        runs += 1;
        overlaps += v.overlaps;
        late += v.late;
        stranded_n += v.stranded;
        regress += v.fence_regressions;
        holds += v.holds;
        losses += v.losses;
        oversleep = oversleep.max(v.max_oversleep_us);
        if let Some(m) = v.max_lateness_us {
            max_late = Some(max_late.map_or(m, |x| x.max(m)));
        }
        details.extend(v.details);
    }
    for d in &details {
        println!("  {d}");
    }
    println!(
        "safety {} details: {holds} holds, {losses} losses, {regress} fence regressions, observer oversleep up to {:.1} ms, seed {seed}",
        server.name,
        oversleep as f64 / 1000.0
    );
    println!(
        "safety {}: {runs} runs, {overlaps} overlaps, {late} late losses, {stranded_n} stranded, max loss lateness {:.1} ms",
        server.name,
        max_late.map_or(0.0, |us| us as f64 / 1000.0)
    );
    assert_eq!(
        (overlaps, late, stranded_n, regress),
        (0, 0, 0, 0),
        "seed {seed}: see the details above"
    );
}
