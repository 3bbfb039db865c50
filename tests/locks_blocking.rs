//! Host locks and semaphores for blocking code (renewal threads), against
//! the in-process testkit running on its own thread.
//!
//! Every wait is on an event (`wait_lost_timeout`, a thread finishing, the
//! server's stats reaching a state) with a generous upper bound; timing
//! goals are checked loosely.

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use dflockd_client::Error;
use dflockd_client::blocking::{DistributedLock, DistributedSemaphore};
use dflockd_testkit::{Stats, TestServer};

const BOUND: Duration = Duration::from_secs(20);

fn server() -> TestServer {
    TestServer::builder()
        .start_blocking()
        .expect("start testkit")
}

fn lock(server: &TestServer, key: &str) -> DistributedLock {
    DistributedLock::builder(key)
        .server(server.addr().to_string())
        .build()
}

/// Waits (polling the server's state) until `cond` holds, at most `BOUND`.
fn until(server: &TestServer, what: &str, cond: impl Fn(&Stats) -> bool) {
    let start = Instant::now();
    while !cond(&server.stats()) {
        assert!(start.elapsed() < BOUND, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
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

#[test]
fn acquire_release_and_fence() {
    let server = server();
    let lock = lock(&server, "orders");
    let guard = lock.acquire().unwrap().expect("granted");
    let first = guard.fence().expect("held");
    assert!(!guard.is_lost());
    assert!(lock.try_acquire().unwrap().is_none());
    guard.release().unwrap();
    let again = lock.try_acquire().unwrap().expect("free again");
    if server.generation().has_fences() {
        // Fences grow per grant on the testkit and v2; v1.x tokens are random.
        assert!(again.fence().unwrap() > first);
    }
    again.release().unwrap();
}

#[test]
fn fifo_fairness_across_guards() {
    let server = server();
    let lock = lock(&server, "fifo");
    let first = lock.acquire().unwrap().expect("granted");
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for i in 0..4 {
        let lock = lock.clone();
        let order = order.clone();
        threads.push(thread::spawn(move || {
            let guard = lock.acquire().unwrap().expect("granted in turn");
            order.lock().unwrap().push(i);
            guard.release().unwrap();
        }));
        until(&server, "the next waiter", |s| waiters(s, "fifo") == i + 1);
    }
    first.release().unwrap();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3]);
}

#[test]
fn semaphore_limit() {
    let server = server();
    let sem = DistributedSemaphore::builder("pool", 2)
        .server(server.addr().to_string())
        .build();
    let a = sem.acquire().unwrap().expect("slot 1");
    let b = sem.acquire().unwrap().expect("slot 2");
    assert!(sem.try_acquire().unwrap().is_none(), "limit is 2");
    a.release().unwrap();
    let c = sem.try_acquire().unwrap().expect("a slot is free");
    b.release().unwrap();
    c.release().unwrap();
}

#[test]
fn short_lease_is_held_for_many_ttls_by_renewal() {
    let server = server();
    let lock = DistributedLock::builder("renewed")
        .server(server.addr().to_string())
        .lease_ttl(Duration::from_secs(2))
        .build();
    // One cycle first: the lease below is renewed by the thread pooled
    // with the connection, which is not even woken when it is handed over.
    lock.acquire().unwrap().expect("granted").release().unwrap();
    let guard = lock.acquire().unwrap().expect("granted");
    assert!(
        !guard.wait_lost_timeout(Duration::from_millis(10_500)),
        "lease lost while renewing"
    );
    assert!(guard.token().is_some());
    assert_ne!(holder(&server.stats(), "renewed"), 0);
    assert!(lock.try_acquire().unwrap().is_none());
    guard.release().expect("still the holder");
}

#[test]
fn long_lease_survives_a_short_read_timeout() {
    let server = TestServer::builder()
        .read_timeout(Duration::from_secs(3))
        .start_blocking()
        .unwrap();
    let lock = DistributedLock::builder("idle")
        .server(server.addr().to_string())
        .lease_ttl(Duration::from_secs(60))
        .read_timeout(Duration::from_secs(3))
        .build();
    let guard = lock.acquire().unwrap().expect("granted");
    assert!(
        !guard.wait_lost_timeout(Duration::from_secs(8)),
        "connection dropped as idle"
    );
    assert_eq!(server.connection_count(), 1);
    guard.release().expect("connection still open");
}

fn lost_before_deadline(stop: bool) {
    let server = server();
    let lock = DistributedLock::builder("cut")
        .server(server.addr().to_string())
        .lease_ttl(Duration::from_secs(20))
        .build();
    let guard = lock.acquire().unwrap().expect("granted");
    let cut = Instant::now();
    if stop {
        drop(server);
    } else {
        server.disconnect_all_clients();
    }
    assert!(guard.wait_lost_timeout(BOUND), "never reported lost");
    // The last renew was at most ratio x TTL = 10 s before the cut, so the
    // deadline is at least 10 s after it.
    assert!(
        cut.elapsed() < Duration::from_secs(10),
        "{:?}",
        cut.elapsed()
    );
    guard.wait_lost();
    assert_eq!(guard.token(), None);
    assert!(matches!(guard.release(), Err(Error::LeaseLost)));
}

#[test]
fn lease_lost_when_the_connection_is_cut() {
    lost_before_deadline(false);
}

#[test]
fn lease_lost_when_the_server_stops() {
    lost_before_deadline(true);
}

#[test]
fn dropping_the_guard_releases() {
    let server = server();
    let lock = lock(&server, "dropped");
    let guard = lock.acquire().unwrap().expect("granted");
    assert_ne!(holder(&server.stats(), "dropped"), 0);
    let start = Instant::now();
    drop(guard);
    assert!(start.elapsed() < Duration::from_secs(1), "drop blocked");
    until(&server, "the release", |s| holder(s, "dropped") == 0);
    lock.try_acquire()
        .unwrap()
        .expect("free")
        .release()
        .unwrap();
}

#[test]
fn two_phase_enqueue_then_wait() {
    let server = server();
    let lock = lock(&server, "two-phase");
    let ticket = lock.enqueue().unwrap();
    assert!(ticket.is_acquired());
    let first = ticket.wait().unwrap().expect("granted");

    let ticket = lock.enqueue().unwrap();
    assert!(!ticket.is_acquired());
    assert_eq!(waiters(&server.stats(), "two-phase"), 1);
    // ... the caller's code runs here ...
    first.release().unwrap();
    let second = ticket.wait().unwrap().expect("granted after release");
    second.release().unwrap();

    // A dropped ticket leaves the queue.
    let blocker = lock.acquire().unwrap().unwrap();
    let ticket = lock.enqueue().unwrap();
    assert!(!ticket.is_acquired());
    drop(ticket);
    until(&server, "the waiter to leave", |s| {
        waiters(s, "two-phase") == 0
    });
    blocker.release().unwrap();
}

#[test]
fn scoped_run() {
    let server = server();
    let lock = lock(&server, "scoped");
    let out = lock.run(|guard| guard.fence().is_some()).unwrap();
    assert_eq!(out, Some(true));
    until(&server, "the release", |s| holder(s, "scoped") == 0);

    // Lost while running: the output is discarded.
    let out = lock.run(|guard| {
        server.disconnect_all_clients();
        assert!(guard.wait_lost_timeout(BOUND));
    });
    assert!(matches!(out, Err(Error::LeaseLost)), "{out:?}");
}

#[test]
fn silent_server_gives_a_typed_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept() {
            held.push(sock);
        }
    });
    let lock = DistributedLock::builder("silent")
        .server(addr.to_string())
        .acquire_timeout(Duration::ZERO)
        .io_timeout(Duration::from_millis(300))
        .build();
    let start = Instant::now();
    let r = lock.acquire();
    assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
    assert!(start.elapsed() < BOUND);
}
