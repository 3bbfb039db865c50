//! Host locks and semaphores on tokio, against the in-process testkit.
//!
//! Every wait is on an event (a guard's `lost()`, a task finishing, the
//! server's stats reaching a state) with a generous upper bound; timing
//! goals are checked loosely.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dflockd_client::Error;
use dflockd_client::lock::RenewRatio;
use dflockd_client::tokio::{DistributedLock, DistributedSemaphore};
use dflockd_testkit::{Stats, TestServer};
use tokio::time::timeout;

const BOUND: Duration = Duration::from_secs(20);

async fn server() -> TestServer {
    TestServer::builder().start().await.expect("start testkit")
}

fn lock(server: &TestServer, key: &str) -> DistributedLock {
    DistributedLock::builder(key)
        .server(server.addr().to_string())
        .build()
}

/// Waits (polling the server's state) until `cond` holds, at most `BOUND`.
async fn until(server: &TestServer, what: &str, cond: impl Fn(&Stats) -> bool) {
    let start = Instant::now();
    while !cond(&server.stats()) {
        assert!(start.elapsed() < BOUND, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn holder(stats: &Stats, key: &str) -> u64 {
    stats
        .locks
        .iter()
        .find(|l| l.key == key)
        .map_or(0, |l| l.owner_conn_id)
}

fn waiters(stats: &Stats, key: &str) -> usize {
    stats
        .locks
        .iter()
        .find(|l| l.key == key)
        .map_or(0, |l| l.waiters)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_release_and_fence() {
    let server = server().await;
    let lock = lock(&server, "orders");
    let guard = lock.acquire().await.unwrap().expect("granted");
    assert_eq!(guard.key(), "orders");
    let first = guard.fence().expect("held");
    assert!(!guard.is_lost());
    assert!(lock.try_acquire().await.unwrap().is_none());
    guard.release().await.unwrap();
    let again = lock.try_acquire().await.unwrap().expect("free again");
    if server.generation().has_fences() {
        // Fences grow per grant on the testkit and v2; v1.x tokens are random.
        assert!(again.fence().unwrap() > first);
    }
    again.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_fairness_across_guards() {
    let server = server().await;
    let lock = lock(&server, "fifo");
    let first = lock.acquire().await.unwrap().expect("granted");
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..4 {
        let lock = lock.clone();
        let order = order.clone();
        tasks.push(tokio::spawn(async move {
            let guard = lock.acquire().await.unwrap().expect("granted in turn");
            order.lock().unwrap().push(i);
            guard.release().await.unwrap();
        }));
        // Queue them in a known order.
        until(&server, "the next waiter", |s| waiters(s, "fifo") == i + 1).await;
    }
    first.release().await.unwrap();
    for t in tasks {
        timeout(BOUND, t).await.unwrap().unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphore_limit() {
    let server = server().await;
    let sem = DistributedSemaphore::builder("pool", 2)
        .server(server.addr().to_string())
        .build();
    assert_eq!(sem.limit(), 2);
    let a = sem.acquire().await.unwrap().expect("slot 1");
    let b = sem.acquire().await.unwrap().expect("slot 2");
    assert!(sem.try_acquire().await.unwrap().is_none(), "limit is 2");
    let stats = server.stats();
    let info = stats.semaphores.iter().find(|s| s.key == "pool").unwrap();
    assert_eq!((info.limit, info.holders), (2, 2));
    a.release().await.unwrap();
    let c = sem.try_acquire().await.unwrap().expect("a slot is free");
    drop(b);
    c.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lease_is_held_for_many_ttls_by_renewal() {
    let server = server().await;
    let lock = DistributedLock::builder("renewed")
        .server(server.addr().to_string())
        .lease_ttl(Duration::from_secs(2))
        .build();
    let guard = lock.acquire().await.unwrap().expect("granted");
    assert_eq!(guard.ttl(), Duration::from_secs(2));
    // More than five TTLs: only renewal keeps it.
    let lost = timeout(Duration::from_millis(10_500), guard.lost()).await;
    assert!(lost.is_err(), "lease lost while renewing");
    assert!(guard.token().is_some());
    assert_ne!(holder(&server.stats(), "renewed"), 0);
    assert!(lock.try_acquire().await.unwrap().is_none());
    guard.release().await.expect("still the holder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lease_survives_a_short_read_timeout() {
    let server = TestServer::builder()
        .read_timeout(Duration::from_secs(3))
        .start()
        .await
        .unwrap();
    let lock = DistributedLock::builder("idle")
        .server(server.addr().to_string())
        .lease_ttl(Duration::from_secs(60))
        .read_timeout(Duration::from_secs(3))
        .build();
    let guard = lock.acquire().await.unwrap().expect("granted");
    // The first renew is due at 30 s; only the idle bound keeps the
    // connection open past 3 s.
    let lost = timeout(Duration::from_secs(8), guard.lost()).await;
    assert!(lost.is_err(), "connection dropped as idle");
    assert_eq!(server.connection_count(), 1);
    guard.release().await.expect("connection still open");
}

async fn lost_before_deadline(stop: bool) {
    let server = server().await;
    let lock = DistributedLock::builder("cut")
        .server(server.addr().to_string())
        .lease_ttl(Duration::from_secs(20))
        .renew_ratio(RenewRatio::HALF)
        .build();
    let guard = lock.acquire().await.unwrap().expect("granted");
    let cut = Instant::now();
    if stop {
        server.stop().await;
    } else {
        server.disconnect_all_clients();
    }
    timeout(BOUND, guard.lost())
        .await
        .expect("lost() never fired");
    // The last renew was at most ratio x TTL = 10 s before the cut, so the
    // deadline is at least 10 s after it.
    assert!(
        cut.elapsed() < Duration::from_secs(10),
        "{:?}",
        cut.elapsed()
    );
    assert!(guard.is_lost());
    assert_eq!(guard.token(), None);
    assert!(matches!(guard.release().await, Err(Error::LeaseLost)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_lost_when_the_connection_is_cut() {
    lost_before_deadline(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_lost_when_the_server_stops() {
    lost_before_deadline(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_guard_releases() {
    let server = server().await;
    let lock = lock(&server, "dropped");
    let guard = lock.acquire().await.unwrap().expect("granted");
    assert_ne!(holder(&server.stats(), "dropped"), 0);
    drop(guard);
    until(&server, "the release", |s| holder(s, "dropped") == 0).await;
    let other = lock.try_acquire().await.unwrap().expect("free");
    other.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_acquire_leaves_nothing_stranded() {
    let server = server().await;
    let lock = lock(&server, "stranded");
    let first = lock.acquire().await.unwrap().expect("granted");

    // Dropped while queued: the server forgets the waiter.
    let waiting = tokio::spawn({
        let lock = lock.clone();
        async move { lock.acquire().await }
    });
    until(&server, "the waiter", |s| waiters(s, "stranded") == 1).await;
    waiting.abort();
    until(&server, "the waiter to leave", |s| {
        waiters(s, "stranded") == 0
    })
    .await;

    // Dropped just as the server grants: released on disconnect.
    let waiting = tokio::spawn({
        let lock = lock.clone();
        async move { lock.acquire().await }
    });
    until(&server, "the waiter", |s| waiters(s, "stranded") == 1).await;
    first.release().await.unwrap();
    waiting.abort();
    let _ = waiting.await;
    until(&server, "nothing held", |s| {
        holder(s, "stranded") == 0 && waiters(s, "stranded") == 0
    })
    .await;
    let g = lock.try_acquire().await.unwrap().expect("nothing stranded");
    g.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_phase_enqueue_then_wait() {
    let server = server().await;
    let lock = lock(&server, "two-phase");

    // Free key: granted at once, already renewed.
    let ticket = lock.enqueue().await.unwrap();
    assert!(ticket.is_acquired());
    let first = ticket.wait().await.unwrap().expect("granted");

    // Held key: queued, then granted when released.
    let ticket = lock.enqueue().await.unwrap();
    assert!(!ticket.is_acquired());
    assert_eq!(waiters(&server.stats(), "two-phase"), 1);
    // ... the caller's code runs here ...
    first.release().await.unwrap();
    let second = ticket.wait().await.unwrap().expect("granted after release");
    assert!(second.token().is_some());
    second.release().await.unwrap();

    // A wait that times out.
    let blocker = lock.acquire().await.unwrap().unwrap();
    let ticket = lock.enqueue().await.unwrap();
    assert!(ticket.wait_within(Duration::ZERO).await.unwrap().is_none());
    blocker.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_wait_leaves_nothing_stranded() {
    let server = server().await;
    let lock = lock(&server, "wait-drop");
    let first = lock.acquire().await.unwrap().unwrap();
    let ticket = lock.enqueue().await.unwrap();
    let waiting = tokio::spawn(async move { ticket.wait().await });
    until(&server, "the waiter", |s| waiters(s, "wait-drop") == 1).await;
    first.release().await.unwrap();
    waiting.abort();
    let _ = waiting.await;
    until(&server, "nothing held", |s| {
        holder(s, "wait-drop") == 0 && waiters(s, "wait-drop") == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_run() {
    let server = server().await;
    let lock = lock(&server, "scoped");
    let out = lock.run(async { 6 * 7 }).await.unwrap();
    assert_eq!(out, Some(42));
    until(&server, "the release", |s| holder(s, "scoped") == 0).await;

    // Lost while running: the body is dropped.
    let out = lock
        .run(async {
            server.disconnect_all_clients();
            std::future::pending::<()>().await
        })
        .await;
    assert!(matches!(out, Err(Error::LeaseLost)), "{out:?}");

    // Not acquired within the timeout.
    let blocker = lock.acquire().await.unwrap().unwrap();
    let quick = DistributedLock::builder("scoped")
        .server(server.addr().to_string())
        .acquire_timeout(Duration::ZERO)
        .build();
    assert_eq!(quick.run(async { 1 }).await.unwrap(), None);
    blocker.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated() {
    let server = TestServer::builder()
        .auth_token("s3cret")
        .start()
        .await
        .unwrap();
    let good = DistributedLock::builder("auth")
        .server(server.addr().to_string())
        .auth_token("s3cret")
        .build();
    good.acquire()
        .await
        .unwrap()
        .unwrap()
        .release()
        .await
        .unwrap();
    let bad = DistributedLock::builder("auth")
        .server(server.addr().to_string())
        .auth_token("wrong")
        .build();
    assert!(matches!(bad.acquire().await, Err(Error::Auth)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_server_gives_a_typed_timeout() {
    // Accepts and reads, never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let lock = DistributedLock::builder("silent")
        .server(addr.to_string())
        .acquire_timeout(Duration::ZERO)
        .io_timeout(Duration::from_millis(300))
        .build();
    let r = timeout(BOUND, lock.acquire()).await.expect("hung");
    assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
}
