//! The `Client` handle (tokio and blocking) and its pool of idle
//! connections, against the testkit (or the real server named by
//! `DFLOCKD_REAL_SERVER`). Connections are counted by a `FaultProxy` in
//! front of the server (`accepted()`: connections opened; `connections()`:
//! open now), so each test sees exactly its own.
//!
//! Every wait is on an event (a count reaching a value, a guard's loss)
//! with a generous upper bound.
#![cfg(feature = "tokio")]

use std::time::{Duration, Instant};

use dflockd_client::Error;
use dflockd_client::lock::LockOptions;
use dflockd_client::tokio::Client;
use dflockd_testkit::{FaultProxy, TestServer};
use tokio::time::timeout;

const BOUND: Duration = Duration::from_secs(20);

async fn server() -> TestServer {
    TestServer::builder().start().await.expect("start testkit")
}

async fn proxy(server: &TestServer) -> FaultProxy {
    FaultProxy::builder(server.addr())
        .start()
        .await
        .expect("start proxy")
}

/// A testkit (or real) server, a proxy counting connections in front of
/// it, and a default client of the proxy.
async fn setup() -> (TestServer, FaultProxy, Client) {
    let server = server().await;
    let proxy = proxy(&server).await;
    let client = Client::new(proxy.addr().to_string());
    (server, proxy, client)
}

/// [`setup`]'s server and proxy on their own threads, for the tests that
/// run their own runtimes or none.
fn setup_threads() -> (TestServer, FaultProxy) {
    let server = TestServer::builder()
        .start_blocking()
        .expect("start testkit");
    let proxy = FaultProxy::builder(server.addr())
        .start_blocking()
        .expect("start proxy");
    (server, proxy)
}

/// One acquire + release through `lock`.
async fn cycle(lock: &dflockd_client::tokio::DistributedLock) {
    let guard = lock.acquire().await.unwrap().expect("granted");
    guard.release().await.unwrap();
}

/// Waits until `cond` holds, at most `BOUND`.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < BOUND, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_cycles_reuse_one_connection() {
    let (_server, proxy, client) = setup().await;
    let lock = client.lock("reuse");
    for _ in 0..5 {
        let guard = lock.acquire().await.unwrap().expect("granted");
        guard.release().await.unwrap();
        assert_eq!(client.idle_connections(), 1);
    }
    // Locks made from the same client share the pool.
    let other = client.lock("reuse-2");
    other
        .try_acquire()
        .await
        .unwrap()
        .expect("granted")
        .release()
        .await
        .unwrap();
    let sem = client.semaphore("reuse-sem", 3);
    sem.acquire()
        .await
        .unwrap()
        .expect("slot")
        .release()
        .await
        .unwrap();
    assert_eq!(proxy.accepted(), 1, "seven cycles, one connection");
    assert_eq!(proxy.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_guard_is_released_and_its_connection_reused() {
    let (_server, proxy, client) = setup().await;
    let lock = client.lock("dropped-guard");
    drop(lock.acquire().await.unwrap().expect("granted"));
    until("the background release", || client.idle_connections() == 1).await;
    lock.try_acquire()
        .await
        .unwrap()
        .expect("released")
        .release()
        .await
        .unwrap();
    assert_eq!(proxy.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reuse_after_a_lost_lease() {
    let (server, proxy, client) = setup().await;
    let lock = client.lock("lost");
    // The lease is taken on a reused connection, with the hang-up watch
    // its first lease made.
    cycle(&lock).await;
    let guard = lock.acquire().await.unwrap().expect("granted");
    assert!(!guard.is_lost());
    proxy.cut();
    timeout(BOUND, guard.lost()).await.expect("loss noticed");
    assert!(guard.is_lost());
    assert!(matches!(guard.release().await, Err(Error::LeaseLost)));
    assert_eq!(client.idle_connections(), 0);
    until("the server to free the lock", || {
        server
            .stats()
            .locks
            .iter()
            .all(|l| l.key != "lost" || l.owner_conn_id == 0)
    })
    .await;
    cycle(&lock).await;
    assert_eq!(
        proxy.accepted(),
        2,
        "the lost lease's connection was not reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reuse_after_a_dropped_acquire() {
    let (_server, proxy, client) = setup().await;
    let lock = client.lock("abandoned");
    // One clean cycle fills the pool.
    cycle(&lock).await;
    let holder = client
        .lock("abandoned")
        .acquire()
        .await
        .unwrap()
        .expect("granted");
    assert_eq!(proxy.accepted(), 1, "the holder took the pooled connection");
    // A waiting acquire, abandoned.
    let waiting = timeout(Duration::from_millis(200), lock.acquire()).await;
    assert!(waiting.is_err(), "held elsewhere: still waiting");
    assert_eq!(proxy.accepted(), 2);
    until("the abandoned connection to close", || {
        proxy.connections() == 1
    })
    .await;
    assert_eq!(client.idle_connections(), 0);
    holder.release().await.unwrap();
    assert_eq!(client.idle_connections(), 1);
    lock.try_acquire()
        .await
        .unwrap()
        .expect("free")
        .release()
        .await
        .unwrap();
    assert_eq!(proxy.accepted(), 2, "the holder's connection was reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reuse_after_an_error() {
    let (_server, proxy, client) = setup().await;
    let sem = client.semaphore("mismatch", 2);
    let held = sem.acquire().await.unwrap().expect("slot");
    // A second holder cycles cleanly, leaving one pooled connection.
    sem.acquire()
        .await
        .unwrap()
        .expect("slot")
        .release()
        .await
        .unwrap();
    assert_eq!(client.idle_connections(), 1);
    // The pooled connection carries a request that fails: it is closed.
    let wrong = client.semaphore("mismatch", 3);
    assert!(matches!(wrong.try_acquire().await, Err(Error::Server(_))));
    assert_eq!(client.idle_connections(), 0);
    until("the failed connection to close", || {
        proxy.connections() == 1
    })
    .await;
    held.release().await.unwrap();
    assert_eq!(proxy.accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let server = server().await;
    let proxy = proxy(&server).await;
    let client = Client::builder()
        .server(proxy.addr().to_string())
        .pool_idle_timeout(Duration::from_millis(300))
        .build();
    assert_eq!(client.pool_idle_lifetime(), Duration::from_millis(300));
    let lock = client.lock("idle");
    let start = Instant::now();
    cycle(&lock).await;
    assert_eq!(client.idle_connections(), 1);
    // Closed by the pool, with nobody acquiring.
    until("the idle connection to close", || proxy.connections() == 0).await;
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "closed early"
    );
    assert_eq!(client.idle_connections(), 0);
    cycle(&lock).await;
    assert_eq!(proxy.accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_lifetime_stays_below_the_read_timeout() {
    let client = Client::builder()
        .read_timeout(Duration::from_secs(3))
        .pool_idle_timeout(Duration::from_secs(60))
        .build();
    assert_eq!(client.pool_idle_lifetime(), Duration::from_secs(2));
    assert_eq!(
        Client::new("127.0.0.1:1").pool_idle_lifetime(),
        Duration::from_secs(15)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_server_closed_does_not_fail_the_next_acquire() {
    let (_server, proxy, client) = setup().await;
    let lock = client.lock("server-closed");
    cycle(&lock).await;
    assert_eq!(client.idle_connections(), 1);
    proxy.cut();
    until("the cut", || proxy.connections() == 0).await;
    let guard = lock
        .acquire()
        .await
        .expect("no error from a dead pooled connection");
    guard.expect("granted").release().await.unwrap();
    assert_eq!(proxy.accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_read_timeout_shorter_than_configured_does_not_fail_acquires() {
    // The server times idle connections out after 1 s; the client thinks 23 s.
    let server = TestServer::builder()
        .read_timeout(Duration::from_secs(1))
        .start()
        .await
        .expect("start testkit");
    let client = Client::new(server.addr().to_string());
    let lock = client.lock("short-read-timeout");
    cycle(&lock).await;
    assert_eq!(client.idle_connections(), 1);
    until("the server's idle close", || server.connection_count() == 0).await;
    let guard = lock
        .acquire()
        .await
        .expect("no error from a timed-out connection");
    guard.expect("granted").release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_keeps_at_most_max_idle_per_server() {
    let server = server().await;
    let proxy = proxy(&server).await;
    let client = Client::builder()
        .server(proxy.addr().to_string())
        .pool_max_idle(2)
        .build();
    assert_eq!(client.pool_max_idle(), 2);
    let mut guards = Vec::new();
    for i in 0..4 {
        let lock = client.lock(format!("bound-{i}"));
        guards.push(lock.acquire().await.unwrap().expect("granted"));
    }
    assert_eq!(proxy.accepted(), 4);
    for g in guards {
        g.release().await.unwrap();
    }
    assert_eq!(client.idle_connections(), 2);
    until("the surplus to close", || proxy.connections() == 2).await;

    // Zero turns the pool off.
    let off = Client::builder()
        .server(proxy.addr().to_string())
        .pool_max_idle(0)
        .build();
    let lock = off.lock("no-pool");
    cycle(&lock).await;
    cycle(&lock).await;
    assert_eq!(off.idle_connections(), 0);
    assert_eq!(proxy.accepted(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_options_per_lock_and_timeouts_per_client() {
    let server = server().await;
    let client = Client::builder().server(server.addr().to_string()).build();
    let mut options = LockOptions::default();
    options.lease_ttl = Some(Duration::from_secs(7));
    options.acquire_timeout = Duration::ZERO;
    let lock = client.lock_with("options", options);
    let guard = lock.acquire().await.unwrap().expect("granted");
    assert_eq!(guard.ttl(), Duration::from_secs(7));
    // acquire_timeout zero: tries once.
    let start = Instant::now();
    assert!(lock.acquire().await.unwrap().is_none());
    assert!(start.elapsed() < Duration::from_secs(5));
    guard.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_across_servers_pools_per_server() {
    let (a, b) = (server().await, server().await);
    let (pa, pb) = (proxy(&a).await, proxy(&b).await);
    let client = Client::builder()
        .servers([pa.addr().to_string(), pb.addr().to_string()])
        .build();
    // CRC-32 over two servers: find one key per server.
    let mut keys = [None, None];
    for i in 0.. {
        let key = format!("route-{i}");
        let idx =
            dflockd_client::routing::route(&dflockd_client::routing::Crc32Mod, &key, &["a", "b"])
                .unwrap();
        keys[idx].get_or_insert(key);
        if keys.iter().all(Option::is_some) {
            break;
        }
    }
    for _ in 0..3 {
        for key in keys.iter().flatten() {
            let lock = client.lock(key.clone());
            cycle(&lock).await;
        }
    }
    assert_eq!((pa.accepted(), pb.accepted()), (1, 1));
    assert_eq!(client.idle_connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_through_the_client() {
    let server = server().await;
    if !server.generation().has_signals() {
        eprintln!("skipped: {:?} has no signals", server.generation());
        return;
    }
    let client = Client::new(server.addr().to_string());
    let mut conn = client.signals().await.unwrap();
    conn.listen("orders.*", None).await.unwrap();
    let handle = conn.handle();
    assert_eq!(handle.emit("orders.created", "42").await.unwrap(), 1);
    let item = timeout(BOUND, conn.recv()).await.expect("in time");
    let signal = item
        .expect("open")
        .expect("a signal")
        .into_signal()
        .expect("signal");
    assert_eq!(
        (signal.channel.as_str(), signal.payload.as_str()),
        ("orders.created", "42")
    );
}

// ---- blocking ------------------------------------------------------------------

/// A pooled connection belongs to the runtime that opened it (its socket
/// and its request timer are driven there): another runtime opens its own,
/// and one pooled by a runtime that has ended never fails an acquire.
#[test]
fn a_pooled_connection_is_reused_only_on_the_runtime_that_opened_it() {
    let (_server, proxy) = setup_threads();
    let client = Client::new(proxy.addr().to_string());
    let lock = client.lock("runtimes");
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime")
    };
    runtime().block_on(cycle(&lock)); // that runtime ends here
    assert_eq!(client.idle_connections(), 1);
    runtime().block_on(async {
        cycle(&lock).await;
        cycle(&lock).await;
    });
    assert_eq!(proxy.accepted(), 2, "one connection per runtime");
    assert_eq!(client.idle_connections(), 1);
}

#[test]
fn blocking_client_reuses_connections_and_closes_after_errors() {
    use dflockd_client::blocking::Client;
    let (_server, proxy) = setup_threads();
    let client = Client::new(proxy.addr().to_string());
    let lock = client.lock("blocking-reuse");
    for _ in 0..5 {
        lock.acquire().unwrap().expect("granted").release().unwrap();
    }
    assert_eq!(proxy.accepted(), 1, "five cycles, one connection");
    assert_eq!(client.idle_connections(), 1);

    // run() releases cleanly too.
    assert_eq!(lock.run(|_| 7).unwrap(), Some(7));
    assert_eq!(proxy.accepted(), 1);

    // The server closes the idle connection: the next acquire still works.
    proxy.cut();
    let start = Instant::now();
    while proxy.connections() != 0 {
        assert!(start.elapsed() < BOUND, "cut");
        std::thread::sleep(Duration::from_millis(5));
    }
    lock.acquire()
        .expect("no error")
        .expect("granted")
        .release()
        .unwrap();
    assert_eq!(proxy.accepted(), 2);

    // A lost lease's connection is not reused.
    let guard = lock.acquire().unwrap().expect("granted");
    proxy.cut();
    assert!(guard.wait_lost_timeout(BOUND), "loss noticed");
    assert!(matches!(guard.release(), Err(Error::LeaseLost)));
    assert_eq!(client.idle_connections(), 0);
}

#[test]
fn blocking_client_signals() {
    use dflockd_client::blocking::Client;
    let server = TestServer::builder()
        .start_blocking()
        .expect("start testkit");
    if !server.generation().has_signals() {
        eprintln!("skipped: {:?} has no signals", server.generation());
        return;
    }
    let client = Client::new(server.addr().to_string());
    let conn = client.signals().unwrap();
    conn.listen("jobs.>", None).unwrap();
    assert_eq!(conn.emit("jobs.a.b", "x").unwrap(), 1);
    let item = conn.recv_timeout(BOUND).expect("in time");
    let signal = item.expect("a signal").into_signal().expect("signal");
    assert_eq!(signal.channel, "jobs.a.b");
}

// ---- TLS -----------------------------------------------------------------------

#[cfg(feature = "rustls")]
mod tls_support;

#[cfg(feature = "rustls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_over_tls_reuses_the_handshaken_connection() {
    use dflockd_client::tls_rustls::RustlsConnector;
    let pki = tls_support::pki();
    let server = TestServer::builder()
        .tls(&pki.cert, &pki.key)
        .start()
        .await
        .expect("start TLS testkit");
    let proxy = proxy(&server).await;
    let tls =
        RustlsConnector::from_ca_der(&pki.ca_der, tls_support::SERVER_NAME).expect("connector");
    let client = Client::builder()
        .server(proxy.addr().to_string())
        .tls(tls.clone())
        .build();
    let lock = client.lock("tls-client");
    for _ in 0..3 {
        cycle(&lock).await;
    }
    assert_eq!(proxy.accepted(), 1, "one handshake for three cycles");
    // A cut TLS connection in the pool does not fail the next acquire.
    proxy.cut();
    until("the cut", || proxy.connections() == 0).await;
    lock.acquire()
        .await
        .expect("no error")
        .expect("granted")
        .release()
        .await
        .unwrap();
    assert_eq!(proxy.accepted(), 2);

    // Blocking, per-server names (the proxy's host part is 127.0.0.1, which
    // the certificate does not name: the handshake must fail).
    let blocking = dflockd_client::blocking::Client::builder()
        .server(proxy.addr().to_string())
        .tls_per_server(tls.clone())
        .build();
    let err =
        tokio::task::spawn_blocking(move || blocking.lock("tls-client").try_acquire().map(|_| ()))
            .await
            .unwrap();
    assert!(err.is_err(), "127.0.0.1 is not in the certificate");
    let blocking = dflockd_client::blocking::Client::builder()
        .server(format!("localhost:{}", proxy.addr().port()))
        .tls_per_server(tls)
        .build();
    let accepted = proxy.accepted();
    tokio::task::spawn_blocking(move || {
        let lock = blocking.lock("tls-client");
        for _ in 0..3 {
            lock.acquire().unwrap().expect("granted").release().unwrap();
        }
    })
    .await
    .unwrap();
    assert_eq!(proxy.accepted(), accepted + 1);
}
