//! Conformance suite: every row of PROTOCOL.md's command table, FIFO,
//! semaphores, leases, two-phase, disconnect, auth, stats and signals.
//!
//! Runs against the in-process testkit by default; against a real dflockd
//! binary, started per test with the settings the test needs, when
//! `DFLOCKD_REAL_SERVER=/path/to/dflockd` is set (see `scripts/real-servers`);
//! and against any running dflockd when `DFLOCKD_ADDR=host:port` is set
//! (plus `DFLOCKD_AUTH_TOKEN` when that server needs auth, and optionally
//! `DFLOCKD_SERVER_NAME=v1.10.0|v1.14-signals|v2-cluster`, else probed):
//!
//! ```sh
//! cargo test --test conformance
//! DFLOCKD_REAL_SERVER=target/dflockd-servers/dflockd-v1.14-signals cargo test --test conformance
//! DFLOCKD_ADDR=127.0.0.1:6388 cargo test --test conformance
//! ```
//!
//! A test skips with a printed reason only where the server lacks what it
//! checks: a feature of a later protocol generation (signals, ping), or,
//! against a fixed `DFLOCKD_ADDR` server, a setting it cannot be started with
//! (a short lease TTL default, `--max-locks`, an auth token, draining).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dflockd_client::stats::Stats;
use dflockd_client::tokio::AuthToken;
use dflockd_client::tokio::{ConnectOptions, TokioConnection, connect};
use dflockd_client::{Enqueued, Error, Kind, ServerError};
use dflockd_testkit::{Generation, TestServer, TestServerBuilder};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

type Conn = TokioConnection<4096, 16384>;

/// Generous bound on anything that should happen promptly.
const PROMPT: Duration = Duration::from_secs(15);

/// The server under test: a fixed one from `DFLOCKD_ADDR`, or a
/// [`TestServer`] (the testkit, or the real binary of `DFLOCKD_REAL_SERVER`).
struct Target {
    addr: String,
    token: Option<String>,
    generation: Generation,
    _server: Option<TestServer>,
}

fn fixed_server() -> Option<String> {
    std::env::var("DFLOCKD_ADDR").ok().filter(|a| !a.is_empty())
}

impl Target {
    async fn new() -> Target {
        Self::with(|b| b).await
    }

    /// A target whose server is configured by `cfg` (ignored for a fixed
    /// `DFLOCKD_ADDR` server).
    async fn with(cfg: impl FnOnce(TestServerBuilder) -> TestServerBuilder) -> Target {
        match fixed_server() {
            Some(addr) => {
                let token = std::env::var("DFLOCKD_AUTH_TOKEN").ok();
                let mut t = Target {
                    addr,
                    token,
                    generation: Generation::Testkit,
                    _server: None,
                };
                t.generation = t.probe_generation().await;
                t
            }
            None => {
                let server = cfg(TestServer::builder())
                    .start()
                    .await
                    .expect("start the server under test");
                Target {
                    addr: server.addr().to_string(),
                    token: server.config().auth_token.clone(),
                    generation: server.generation(),
                    _server: Some(server),
                }
            }
        }
    }

    /// A target that needs server settings, which a fixed `DFLOCKD_ADDR`
    /// server may not have: skipped there, with the reason printed.
    async fn configured(
        why: &str,
        cfg: impl FnOnce(TestServerBuilder) -> TestServerBuilder,
    ) -> Option<Target> {
        if fixed_server().is_some() {
            println!("skipped {} against DFLOCKD_ADDR: needs {why}", test_name());
            return None;
        }
        Some(Self::with(cfg).await)
    }

    /// The generation of a fixed server: `DFLOCKD_SERVER_NAME`, else probed
    /// (no `ping` before v1.14; no signals on v2).
    async fn probe_generation(&self) -> Generation {
        if let Some(g) = std::env::var("DFLOCKD_SERVER_NAME")
            .ok()
            .and_then(|n| Generation::from_version(&n))
        {
            return g;
        }
        let mut c = self.conn().await;
        if c.ping().await.is_err() {
            return Generation::V1_10;
        }
        match c.listen(&key("probe"), None).await {
            Ok(()) => Generation::V1_14,
            Err(_) => Generation::V2,
        }
    }

    /// False (and prints why) when the server lacks `feature`.
    fn has(&self, feature: &str, present: bool) -> bool {
        if !present {
            println!(
                "skipped {} against {}: no {feature} in this protocol generation",
                test_name(),
                self.generation.name()
            );
        }
        present
    }
    async fn conn(&self) -> Conn {
        let opts = ConnectOptions {
            auth_token: self.token.as_deref().map(AuthToken::from),
            ..ConnectOptions::default()
        };
        connect(&self.addr, &opts).await.expect("connect")
    }

    async fn stats(&self) -> Stats {
        let mut c = self.conn().await;
        let mut buf = vec![0u8; 1 << 20];
        let json = c.stats(&mut buf).await.expect("stats");
        Stats::parse(json).expect("stats JSON")
    }

    /// Waits until `key` has `n` waiters (lock or semaphore), by stats.
    async fn waiters(&self, key: &str, n: u64) {
        timeout(PROMPT, async {
            loop {
                let s = self.stats().await;
                let w = s.locks.iter().find(|l| l.key == key).map(|l| l.waiters);
                let w = w.or_else(|| {
                    s.semaphores
                        .iter()
                        .find(|l| l.key == key)
                        .map(|l| l.waiters)
                });
                if w == Some(n) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{key} never had {n} waiters"));
    }
}

/// The running test's name (libtest names each test's thread after it).
fn test_name() -> String {
    std::thread::current().name().unwrap_or("?").to_owned()
}

/// A key unique to this run, so a shared real server sees no collisions.
fn key(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "conf-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn is_server(e: &Error<std::io::Error>, want: ServerError) -> bool {
    matches!(e, Error::Server(s) if *s == want)
}

// ---- l / r / n ---------------------------------------------------------

#[tokio::test]
async fn lock_acquire_release() {
    let t = Target::new().await;
    let k = key("lock");
    let mut a = t.conn().await;
    let g = a
        .acquire(Kind::Lock, &k, 0, None)
        .await
        .unwrap()
        .expect("free lock granted");
    assert!(g.lease > 0);
    a.release(Kind::Lock, &k, &g.token).await.unwrap();
    // Releasing again: not the holder any more.
    let e = a.release(Kind::Lock, &k, &g.token).await.unwrap_err();
    assert!(is_server(&e, ServerError::Error), "{e:?}");
    assert!(a.is_usable());
}

#[tokio::test]
async fn lock_with_lease_and_timeout() {
    let t = Target::new().await;
    let k = key("lease");
    let mut a = t.conn().await;
    let mut b = t.conn().await;
    let g = a
        .acquire(Kind::Lock, &k, 0, Some(7))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(g.lease, 7);
    // Held: try-once and a 1 s wait both time out.
    assert_eq!(b.acquire(Kind::Lock, &k, 0, None).await.unwrap(), None);
    assert_eq!(b.acquire(Kind::Lock, &k, 1, None).await.unwrap(), None);
    a.release(Kind::Lock, &k, &g.token).await.unwrap();
    assert!(b.acquire(Kind::Lock, &k, 0, None).await.unwrap().is_some());
}

#[tokio::test]
async fn tokens_differ_per_grant() {
    let t = Target::new().await;
    let k = key("tokens");
    let mut a = t.conn().await;
    let g1 = a.acquire(Kind::Lock, &k, 0, None).await.unwrap().unwrap();
    a.release(Kind::Lock, &k, &g1.token).await.unwrap();
    let g2 = a.acquire(Kind::Lock, &k, 0, None).await.unwrap().unwrap();
    assert_ne!(g1.token, g2.token);
    a.release(Kind::Lock, &k, &g2.token).await.unwrap();
}

#[tokio::test]
async fn renew_reports_remaining_and_rejects_strangers() {
    let t = Target::new().await;
    let k = key("renew");
    let mut a = t.conn().await;
    let g = a
        .acquire(Kind::Lock, &k, 0, Some(20))
        .await
        .unwrap()
        .unwrap();
    let left = a.renew(Kind::Lock, &k, &g.token, None).await.unwrap();
    assert!(left > 0, "{left}");
    let left = a.renew(Kind::Lock, &k, &g.token, Some(50)).await.unwrap();
    assert!((45..=50).contains(&left), "{left}");
    let stranger = "ffffffffffffffffffffffffffffffff".parse().unwrap();
    let e = a.renew(Kind::Lock, &k, &stranger, None).await.unwrap_err();
    assert!(is_server(&e, ServerError::Error), "{e:?}");
    let e = a.release(Kind::Lock, &k, &stranger).await.unwrap_err();
    assert!(is_server(&e, ServerError::Error), "{e:?}");
    a.release(Kind::Lock, &k, &g.token).await.unwrap();
}

// ---- FIFO ------------------------------------------------------------------

#[tokio::test]
async fn fifo_with_five_blocking_contenders() {
    let t = Arc::new(Target::new().await);
    let k = key("fifo");
    let mut holder = t.conn().await;
    let g = holder
        .acquire(Kind::Lock, &k, 0, None)
        .await
        .unwrap()
        .unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..5u64 {
        let mut c = t.conn().await;
        let (k2, order) = (k.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let g = c
                .acquire(Kind::Lock, &k2, 30, None)
                .await
                .unwrap()
                .expect("granted in turn");
            order.lock().unwrap().push(i);
            c.release(Kind::Lock, &k2, &g.token).await.unwrap();
        }));
        // Arrival order is known: wait until the server queued this one.
        t.waiters(&k, i + 1).await;
    }
    holder.release(Kind::Lock, &k, &g.token).await.unwrap();
    for task in tasks {
        timeout(PROMPT, task).await.unwrap().unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
}

// ---- semaphores ----------------------------------------------------------

#[tokio::test]
async fn semaphore_limit_with_n_plus_two_contenders() {
    let t = Target::new().await;
    let k = key("sem");
    let sem = Kind::Semaphore { limit: 3 };
    let mut conns = Vec::new();
    for _ in 0..5 {
        conns.push(t.conn().await);
    }
    let mut grants = Vec::new();
    for c in conns.iter_mut().take(3) {
        grants.push(
            c.acquire(sem, &k, 0, None)
                .await
                .unwrap()
                .expect("slot free"),
        );
    }
    for c in conns.iter_mut().skip(3) {
        assert_eq!(
            c.acquire(sem, &k, 0, None).await.unwrap(),
            None,
            "over the limit"
        );
    }
    let s = t.stats().await;
    let info = s
        .semaphores
        .iter()
        .find(|s| s.key == k)
        .expect("semaphore in stats");
    assert_eq!((info.limit, info.holders), (3, 3));
    // Renew and release a slot; the next contender gets it.
    assert!(
        conns[0]
            .renew(sem, &k, &grants[0].token, None)
            .await
            .unwrap()
            > 0
    );
    conns[0].release(sem, &k, &grants[0].token).await.unwrap();
    assert!(conns[3].acquire(sem, &k, 0, None).await.unwrap().is_some());
    assert_eq!(conns[4].acquire(sem, &k, 0, None).await.unwrap(), None);
}

#[tokio::test]
async fn semaphore_limit_mismatch() {
    let t = Target::new().await;
    let k = key("mismatch");
    let mut a = t.conn().await;
    let mut b = t.conn().await;
    let _g = a
        .acquire(Kind::Semaphore { limit: 2 }, &k, 0, None)
        .await
        .unwrap()
        .unwrap();
    let e = b
        .acquire(Kind::Semaphore { limit: 5 }, &k, 0, None)
        .await
        .unwrap_err();
    assert!(is_server(&e, ServerError::LimitMismatch), "{e:?}");
    let e = b
        .enqueue(Kind::Semaphore { limit: 5 }, &k, None)
        .await
        .unwrap_err();
    assert!(is_server(&e, ServerError::LimitMismatch), "{e:?}");
}

#[tokio::test]
async fn semaphore_fifo_and_two_phase() {
    let t = Target::new().await;
    let k = key("sem2p");
    let sem = Kind::Semaphore { limit: 1 };
    let mut a = t.conn().await;
    let mut b = t.conn().await;
    let Enqueued::Acquired(g) = a.enqueue(sem, &k, Some(10)).await.unwrap() else {
        panic!("free semaphore must be acquired at once")
    };
    assert_eq!(g.lease, 10);
    assert_eq!(b.enqueue(sem, &k, None).await.unwrap(), Enqueued::Queued);
    a.release(sem, &k, &g.token).await.unwrap();
    let g2 = b
        .wait(sem, &k, 5)
        .await
        .unwrap()
        .expect("granted after release");
    b.release(sem, &k, &g2.token).await.unwrap();
}

// ---- leases --------------------------------------------------------------

#[tokio::test]
async fn lease_expiry_hands_over_and_renew_after_expiry_fails() {
    let t = Target::new().await;
    let k = key("expiry");
    let mut a = t.conn().await;
    let mut b = t.conn().await;
    let g = a
        .acquire(Kind::Lock, &k, 0, Some(1))
        .await
        .unwrap()
        .unwrap();
    // b blocks; the lease lapses after 1 s and the server hands over.
    let g2 = timeout(PROMPT, b.acquire(Kind::Lock, &k, 10, None))
        .await
        .unwrap()
        .unwrap()
        .expect("granted when the lease expired");
    assert_ne!(g.token, g2.token);
    let e = a.renew(Kind::Lock, &k, &g.token, None).await.unwrap_err();
    assert!(
        is_server(&e, ServerError::Error),
        "renew after expiry: {e:?}"
    );
    let e = a.release(Kind::Lock, &k, &g.token).await.unwrap_err();
    assert!(
        is_server(&e, ServerError::Error),
        "release after expiry: {e:?}"
    );
}

#[tokio::test]
async fn default_lease_ttl_applies() {
    let Some(t) = Target::configured("a known --default-lease-ttl", |b| {
        b.default_lease_ttl(Duration::from_secs(9))
    })
    .await
    else {
        return;
    };
    let k = key("default-ttl");
    let mut a = t.conn().await;
    assert_eq!(
        a.acquire(Kind::Lock, &k, 0, None)
            .await
            .unwrap()
            .unwrap()
            .lease,
        9
    );
    match a
        .enqueue(Kind::Lock, &key("default-ttl-2p"), None)
        .await
        .unwrap()
    {
        Enqueued::Acquired(g) => assert_eq!(g.lease, 9),
        Enqueued::Queued => panic!("a free key must be acquired at once"),
    }
}

// ---- two-phase -------------------------------------------------------------

#[tokio::test]
async fn two_phase_with_work_between_enqueue_and_wait() {
    let t = Target::new().await;
    let k = key("2p");
    let mut a = t.conn().await;
    let mut b = t.conn().await;
    let g = a.acquire(Kind::Lock, &k, 0, None).await.unwrap().unwrap();
    assert_eq!(
        b.enqueue(Kind::Lock, &k, Some(15)).await.unwrap(),
        Enqueued::Queued
    );
    // The caller's work between the phases; the place in line is kept.
    let e = b.enqueue(Kind::Lock, &k, None).await.unwrap_err();
    assert!(is_server(&e, ServerError::AlreadyEnqueued), "{e:?}");
    a.release(Kind::Lock, &k, &g.token).await.unwrap();
    let g2 = b.wait(Kind::Lock, &k, 5).await.unwrap().expect("granted");
    assert_eq!(g2.lease, 15);
    b.release(Kind::Lock, &k, &g2.token).await.unwrap();
}

#[tokio::test]
async fn wait_errors_and_timeout() {
    let t = Target::new().await;
    let k = key("wait");
    let mut a = t.conn().await;
    let mut b = t.conn().await;
    let e = b.wait(Kind::Lock, &k, 0).await.unwrap_err();
    assert!(is_server(&e, ServerError::NotEnqueued), "{e:?}");
    let _g = a.acquire(Kind::Lock, &k, 0, None).await.unwrap().unwrap();
    assert_eq!(
        b.enqueue(Kind::Lock, &k, None).await.unwrap(),
        Enqueued::Queued
    );
    assert_eq!(b.wait(Kind::Lock, &k, 1).await.unwrap(), None);
    // After a wait timeout the waiter is gone.
    let e = b.wait(Kind::Lock, &k, 0).await.unwrap_err();
    assert!(is_server(&e, ServerError::NotEnqueued), "{e:?}");
}

#[tokio::test]
async fn enqueue_and_wait_are_bound_to_the_connection() {
    let t = Target::new().await;
    let k = key("bound");
    let mut a = t.conn().await;
    let mut b = t.conn().await;
    let _g = a.acquire(Kind::Lock, &k, 0, None).await.unwrap().unwrap();
    let mut c = t.conn().await;
    assert_eq!(
        c.enqueue(Kind::Lock, &k, None).await.unwrap(),
        Enqueued::Queued
    );
    let e = b.wait(Kind::Lock, &k, 0).await.unwrap_err();
    assert!(is_server(&e, ServerError::NotEnqueued), "{e:?}");
}

#[tokio::test]
async fn lease_expired_before_wait_collected_it() {
    let t = Target::new().await;
    let k = key("2p-expired");
    let mut a = t.conn().await;
    let mut b = t.conn().await;
    let g = a.acquire(Kind::Lock, &k, 0, None).await.unwrap().unwrap();
    assert_eq!(
        b.enqueue(Kind::Lock, &k, Some(1)).await.unwrap(),
        Enqueued::Queued
    );
    a.release(Kind::Lock, &k, &g.token).await.unwrap();
    // b was granted at release with a 1 s lease it never collected. The
    // probe gets the lock once the server's lease sweep (the testkit: the
    // exact expiry) took it from b, dropping b's enqueue record too.
    let mut probe = t.conn().await;
    let g3 = timeout(PROMPT, probe.acquire(Kind::Lock, &k, 10, None))
        .await
        .unwrap()
        .unwrap()
        .expect("the uncollected lease expired");
    let r = b.wait(Kind::Lock, &k, 0).await;
    if t.generation == Generation::V1_10 {
        // A v1.10 defect: `ok` with the stale grant, though the lock is
        // the probe's; renewing it fails.
        let stale = r.expect("v1.10 answers ok").expect("with a grant");
        assert_ne!(stale.token, g3.token);
        let e = b
            .renew(Kind::Lock, &k, &stale.token, None)
            .await
            .unwrap_err();
        assert!(is_server(&e, ServerError::Error), "{e:?}");
    } else {
        let e = r.unwrap_err();
        assert!(is_server(&e, ServerError::NotEnqueued), "{e:?}");
    }
    probe.release(Kind::Lock, &k, &g3.token).await.unwrap();
}

// ---- disconnect ------------------------------------------------------------

#[tokio::test]
async fn disconnect_releases_held_locks() {
    let t = Target::new().await;
    let k = key("disconnect");
    let mut a = t.conn().await;
    let mut b = t.conn().await;
    a.acquire(Kind::Lock, &k, 0, None).await.unwrap().unwrap();
    let waiter = tokio::spawn(async move {
        let k2 = k;
        b.acquire(Kind::Lock, &k2, 30, None).await
    });
    drop(a);
    let g = timeout(PROMPT, waiter).await.unwrap().unwrap().unwrap();
    assert!(g.is_some(), "lock released on disconnect");
}

#[tokio::test]
async fn no_auto_release_keeps_the_lock_until_its_lease_ends() {
    let Some(t) = Target::configured("--no-auto-release-on-disconnect", |b| {
        b.auto_release_on_disconnect(false)
    })
    .await
    else {
        return;
    };
    let k = key("no-auto");
    let mut a = t.conn().await;
    let mut b = t.conn().await;
    a.acquire(Kind::Lock, &k, 0, Some(2))
        .await
        .unwrap()
        .unwrap();
    drop(a);
    // Still held right after the disconnect, granted once the lease ends.
    assert_eq!(b.acquire(Kind::Lock, &k, 0, None).await.unwrap(), None);
    let g = timeout(PROMPT, b.acquire(Kind::Lock, &k, 10, None))
        .await
        .unwrap()
        .unwrap();
    assert!(g.is_some());
}

// ---- limits ----------------------------------------------------------------

#[tokio::test]
async fn max_locks_and_max_waiters() {
    let Some(t) = Target::configured("--max-locks and --max-waiters", |b| {
        b.max_locks(2).max_waiters(1)
    })
    .await
    else {
        return;
    };
    let mut a = t.conn().await;
    let (k1, k2) = (key("ml1"), key("ml2"));
    a.acquire(Kind::Lock, &k1, 0, None).await.unwrap().unwrap();
    a.acquire(Kind::Lock, &k2, 0, None).await.unwrap().unwrap();
    let e = a
        .acquire(Kind::Lock, &key("ml3"), 0, None)
        .await
        .unwrap_err();
    assert!(is_server(&e, ServerError::MaxLocks), "{e:?}");
    let mut b = t.conn().await;
    let mut c = t.conn().await;
    assert_eq!(
        b.enqueue(Kind::Lock, &k1, None).await.unwrap(),
        Enqueued::Queued
    );
    let e = c.enqueue(Kind::Lock, &k1, None).await.unwrap_err();
    assert!(is_server(&e, ServerError::MaxWaiters), "{e:?}");
    let e = c.acquire(Kind::Lock, &k1, 1, None).await.unwrap_err();
    assert!(is_server(&e, ServerError::MaxWaiters), "{e:?}");
}

// ---- auth --------------------------------------------------------------------

async fn auth_target() -> Option<Target> {
    if fixed_server().is_some() {
        if std::env::var("DFLOCKD_AUTH_TOKEN").is_err() {
            println!("skipped against DFLOCKD_ADDR: needs DFLOCKD_AUTH_TOKEN");
            return None;
        }
        return Some(Target::new().await);
    }
    Some(Target::with(|b| b.auth_token("conformance-secret")).await)
}

#[tokio::test]
async fn auth_success_and_failure() {
    let Some(t) = auth_target().await else { return };
    // Right token: commands work.
    let mut ok = t.conn().await;
    let k = key("authed");
    let g = ok.acquire(Kind::Lock, &k, 0, None).await.unwrap().unwrap();
    ok.release(Kind::Lock, &k, &g.token).await.unwrap();
    // Wrong token: error_auth, and the server closes the connection.
    let opts = ConnectOptions {
        auth_token: Some(AuthToken::from("wrong-token")),
        ..ConnectOptions::default()
    };
    let e = connect::<256, 0>(&t.addr, &opts).await.unwrap_err();
    assert!(matches!(e, Error::Auth), "{e:?}");
    // No auth at all: the first command gets error_auth, then EOF.
    let mut raw = connect::<256, 0>(&t.addr, &ConnectOptions::default())
        .await
        .unwrap();
    let e = raw
        .acquire(Kind::Lock, &key("noauth"), 0, None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Auth), "{e:?}");
    assert!(!e.is_recoverable());
    let mut line = String::new();
    let stream = TcpStream::connect(&t.addr).await.unwrap();
    let (r, mut w) = stream.into_split();
    w.write_all(b"ping\n_\n_\n").await.unwrap();
    let mut r = BufReader::new(r);
    r.read_line(&mut line).await.unwrap();
    assert_eq!(line, "error_auth\n");
    line.clear();
    let n = timeout(PROMPT, r.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "closed after error_auth");
}

#[tokio::test]
async fn auth_without_server_token_is_error() {
    let Some(t) = Target::configured("a server without --auth-token", |b| b).await else {
        return;
    };
    let mut a = t.conn().await;
    let e = a.auth("anything").await.unwrap_err();
    assert!(is_server(&e, ServerError::Error), "{e:?}");
}

// ---- stats, ping, malformed ------------------------------------------------

#[tokio::test]
async fn stats_shape() {
    let t = Target::new().await;
    let k = key("stats");
    let s = key("stats-sem");
    let mut a = t.conn().await;
    let g = a.acquire(Kind::Lock, &k, 0, None).await.unwrap().unwrap();
    let _sg = a
        .acquire(Kind::Semaphore { limit: 2 }, &s, 0, None)
        .await
        .unwrap()
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let json = a.stats(&mut buf).await.unwrap();
    let raw: serde_json::Value = serde_json::from_str(json).unwrap();
    for field in [
        "connections",
        "locks",
        "semaphores",
        "idle_locks",
        "idle_semaphores",
    ] {
        assert!(raw.get(field).is_some(), "stats lacks {field}: {json}");
    }
    let stats = Stats::parse(json).unwrap();
    assert!(stats.connections >= 1);
    let lock = stats
        .locks
        .iter()
        .find(|l| l.key == k)
        .expect("held lock listed");
    assert!(lock.lease_expires_in_s > 0.0);
    let sem = stats
        .semaphores
        .iter()
        .find(|l| l.key == s)
        .expect("semaphore listed");
    assert_eq!((sem.limit, sem.holders), (2, 1));
    a.release(Kind::Lock, &k, &g.token).await.unwrap();
}

#[tokio::test]
async fn stats_lists_a_key_by_its_limit() {
    let t = Target::new().await;
    let one = key("sem-of-one");
    let sem = Kind::Semaphore { limit: 1 };
    let mut a = t.conn().await;
    let g = a.acquire(sem, &one, 0, None).await.unwrap().unwrap();
    // A semaphore of limit 1 is listed as a lock, with its holder.
    let s = t.stats().await;
    let info = s.locks.iter().find(|l| l.key == one).expect("under locks");
    assert!(info.owner_conn_id > 0 && info.lease_expires_in_s > 0.0);
    assert!(!s.semaphores.iter().any(|l| l.key == one));
    a.release(sem, &one, &g.token).await.unwrap();
    let s = t.stats().await;
    assert!(
        s.idle_locks.iter().any(|l| l.key == one),
        "under idle_locks"
    );
    assert!(!s.idle_semaphores.iter().any(|l| l.key == one));
}

#[tokio::test]
async fn ping_is_ok() {
    let t = Target::new().await;
    if !t.has("ping", t.generation.has_ping()) {
        return;
    }
    let mut a = t.conn().await;
    a.ping().await.expect("ping");
}

async fn raw_exchange(addr: &str, request: &[u8]) -> (String, bool) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (r, mut w) = stream.into_split();
    w.write_all(request).await.unwrap();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    timeout(PROMPT, r.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    let mut rest = String::new();
    let closed = matches!(
        timeout(Duration::from_millis(500), r.read_line(&mut rest)).await,
        Ok(Ok(0))
    );
    (line, closed)
}

#[tokio::test]
async fn malformed_requests_get_error() {
    let Some(t) = Target::configured("no auth token (raw requests)", |b| b).await else {
        return;
    };
    for req in [
        &b"bogus\nk\n1\n"[..],
        b"l\nk\nnot-a-number\n",
        b"l\nk\n-1\n",
        b"l\nk\n1 0\n",
        b"l\n\n1\n",
        b"l\nk\n1 2 3\n",
        b"sl\nk\n1 0\n",
        b"signal\na.*\nx\n",
        b"signal\na\n   \n",
        b"listen\na.>.b\n\n",
    ] {
        let (line, _) = raw_exchange(&t.addr, req).await;
        assert_eq!(line, "error\n", "{:?}", String::from_utf8_lossy(req));
    }
    // An over-long line loses framing: error, then the server closes.
    let mut long = b"l\n".to_vec();
    long.extend(std::iter::repeat_n(b'k', 300));
    long.extend_from_slice(b"\n1\n");
    let (line, closed) = raw_exchange(&t.addr, &long).await;
    assert_eq!(line, "error\n");
    assert!(closed, "connection closed after an over-long line");
}

#[tokio::test]
async fn idle_read_timeout_writes_error_and_closes() {
    let Some(t) = Target::configured("a short --read-timeout", |b| {
        b.read_timeout(Duration::from_secs(1))
    })
    .await
    else {
        return;
    };
    // Say nothing: the server writes `error` and closes.
    let stream = TcpStream::connect(&t.addr).await.unwrap();
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    timeout(PROMPT, r.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line, "error\n");
    line.clear();
    assert_eq!(
        timeout(PROMPT, r.read_line(&mut line))
            .await
            .unwrap()
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn draining_server_answers_error_draining() {
    let Some(t) = Target::configured("a graceful shutdown", |b| b).await else {
        return;
    };
    if !t.has("error_draining", t.generation.has_draining()) {
        return;
    }
    let mut a = t.conn().await;
    a.ping().await.unwrap();
    let server = t._server.as_ref().unwrap();
    server.begin_shutdown();
    // A real server drains once its SIGTERM handler ran: until then a
    // request still gets `ok`.
    let e = timeout(PROMPT, async {
        loop {
            match a.ping().await {
                Ok(()) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(e) => return e,
            }
        }
    })
    .await
    .expect("the server drains");
    assert!(is_server(&e, ServerError::Draining), "{e:?}");
    assert!(!e.is_recoverable());
}

// ---- signals -----------------------------------------------------------------

type SigConn = TokioConnection<4096, 16384>;

/// Subscribes, or skips on servers without signals (v2).
async fn listener(t: &Target, pattern: &str, group: Option<&str>) -> Option<SigConn> {
    if !t.has("signals", t.generation.has_signals()) {
        return None;
    }
    let mut c = t.conn().await;
    c.listen(pattern, group).await.expect("listen");
    Some(c)
}

async fn next(c: &mut SigConn) -> (String, String) {
    let s = timeout(PROMPT, c.next_signal())
        .await
        .expect("signal arrives")
        .unwrap();
    (s.channel.to_owned(), s.payload.to_owned())
}

/// True when no signal arrives within a short grace period.
async fn quiet(c: &mut SigConn) -> bool {
    timeout(Duration::from_millis(300), c.next_signal())
        .await
        .is_err()
}

#[tokio::test]
async fn signals_exact_star_and_tail() {
    let t = Target::new().await;
    let ns = key("sig");
    let Some(mut exact) = listener(&t, &format!("{ns}.a.b"), None).await else {
        return;
    };
    let mut star = listener(&t, &format!("{ns}.*.b"), None).await.unwrap();
    let mut tail = listener(&t, &format!("{ns}.>"), None).await.unwrap();
    let mut emitter = t.conn().await;

    let n = emitter.emit(&format!("{ns}.a.b"), "one").await.unwrap();
    assert_eq!(n, 3);
    for c in [&mut exact, &mut star, &mut tail] {
        assert_eq!(next(c).await, (format!("{ns}.a.b"), "one".to_owned()));
    }
    let n = emitter
        .emit(&format!("{ns}.x.y.z"), "two words")
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(next(&mut tail).await.1, "two words");
    assert!(quiet(&mut exact).await && quiet(&mut star).await);
    // `>` needs at least one token after the prefix.
    assert_eq!(emitter.emit(&ns, "bare").await.unwrap(), 0);
}

#[tokio::test]
async fn signals_overlapping_patterns_deliver_once_per_connection() {
    let t = Target::new().await;
    let ns = key("overlap");
    let Some(mut c) = listener(&t, &format!("{ns}.a"), None).await else {
        return;
    };
    c.listen(&format!("{ns}.*"), None).await.unwrap();
    c.listen(&format!("{ns}.>"), None).await.unwrap();
    c.listen(&format!("{ns}.a"), None).await.unwrap(); // duplicate: a no-op
    let mut e = t.conn().await;
    assert_eq!(e.emit(&format!("{ns}.a"), "once").await.unwrap(), 1);
    assert_eq!(next(&mut c).await.1, "once");
    assert!(quiet(&mut c).await);
}

#[tokio::test]
async fn signals_queue_group_round_robin_and_counts() {
    let t = Target::new().await;
    let ch = key("grp");
    let Some(m0) = listener(&t, &ch, Some("workers")).await else {
        return;
    };
    let mut members = vec![m0];
    for _ in 0..2 {
        members.push(listener(&t, &ch, Some("workers")).await.unwrap());
    }
    let mut solo = listener(&t, &ch, None).await.unwrap();
    let mut e = t.conn().await;
    for i in 0..6 {
        // One delivery to the group, one to the ungrouped listener.
        assert_eq!(e.emit(&ch, &format!("job {i}")).await.unwrap(), 2);
    }
    let mut per_member = Vec::new();
    for m in members.iter_mut() {
        let mut got = Vec::new();
        while let Ok(Ok(s)) = timeout(Duration::from_millis(300), m.next_signal()).await {
            got.push(s.payload.to_owned());
        }
        per_member.push(got);
    }
    let counts: Vec<usize> = per_member.iter().map(Vec::len).collect();
    assert_eq!(counts, vec![2, 2, 2], "round robin: {per_member:?}");
    let mut all: Vec<String> = per_member.concat();
    all.sort();
    assert_eq!(all, (0..6).map(|i| format!("job {i}")).collect::<Vec<_>>());
    for i in 0..6 {
        assert_eq!(next(&mut solo).await.1, format!("job {i}"));
    }
}

#[tokio::test]
async fn signals_unlisten() {
    let t = Target::new().await;
    let ch = key("unl");
    let Some(mut c) = listener(&t, &ch, None).await else {
        return;
    };
    let mut e = t.conn().await;
    assert_eq!(e.emit(&ch, "before").await.unwrap(), 1);
    assert_eq!(next(&mut c).await.1, "before");
    c.unlisten(&ch, None).await.unwrap();
    c.unlisten(&ch, None).await.unwrap(); // not subscribed: still ok
    assert_eq!(e.emit(&ch, "after").await.unwrap(), 0);
    assert!(quiet(&mut c).await);
}

#[tokio::test]
async fn signals_max_subscriptions_counts_before_duplicates() {
    // Servers without signals have no --max-subscriptions flag either.
    let t = Target::new().await;
    if !t.has("signals", t.generation.has_signals()) {
        return;
    }
    drop(t);
    let Some(t) = Target::configured("--max-subscriptions", |b| b.max_subscriptions(2)).await
    else {
        return;
    };
    let ns = key("maxsub");
    let (a, b) = (format!("{ns}.a"), format!("{ns}.b"));
    let mut c = t.conn().await;
    c.listen(&a, None).await.unwrap();
    c.listen(&a, None).await.unwrap(); // a duplicate below the limit: a no-op
    c.listen(&a, Some("g")).await.unwrap();
    let e = c.listen(&b, None).await.unwrap_err();
    assert!(is_server(&e, ServerError::Error), "{e:?}");
    // The count comes first: at the limit even a duplicate is refused.
    let e = c.listen(&a, None).await.unwrap_err();
    assert!(is_server(&e, ServerError::Error), "{e:?}");
    c.unlisten(&a, None).await.unwrap();
    c.listen(&b, None).await.unwrap();
}

#[tokio::test]
async fn signal_to_self_may_arrive_before_the_reply() {
    let t = Target::new().await;
    let ch = key("self");
    let Some(mut c) = listener(&t, &ch, None).await else {
        return;
    };
    for i in 0..20 {
        assert_eq!(c.emit(&ch, &format!("p{i}")).await.unwrap(), 1);
    }
    for i in 0..20 {
        assert_eq!(next(&mut c).await.1, format!("p{i}"));
    }
    assert_eq!(c.dropped_signals(), 0);
}
