//! The blocking `Client` keeps a lease's renewal thread with its pooled
//! connection: sequential cycles (and a queued two-phase acquire) reuse
//! one thread, and the thread of a
//! pooled connection that is closed or expires ends. Threads are seen by
//! name (`dflockd-lease`) in `/proc/self/task`, so this file holds one
//! test: no other test's threads run in its process. A new thread bears
//! its parent's name until it sets its own (the pool's reaper, started
//! from a renewal thread, briefly looks like one), so the test waits for
//! the names to settle rather than reading them once.
//!
//! Every wait is on an event with a generous upper bound.
#![cfg(target_os = "linux")]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use dflockd_client::blocking::{BlockingConnection, Client, ConnectOptions};
use dflockd_client::{Error, Kind};
use dflockd_testkit::{FaultProxy, TestServer};

const BOUND: Duration = Duration::from_secs(20);

/// The thread ids of the renewal threads alive now.
fn lease_threads() -> BTreeSet<u64> {
    let tasks = std::fs::read_dir("/proc/self/task").expect("read /proc/self/task");
    tasks
        .filter_map(|t| {
            let t = t.ok()?;
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            let tid = t.file_name().to_str()?.parse().ok()?;
            (comm.trim_end() == "dflockd-lease").then_some(tid)
        })
        .collect()
}

/// Waits until `cond` holds, at most `BOUND`.
fn until(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < BOUND, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn renewal_threads_are_pooled_with_their_connections_and_end_with_them() {
    let server = TestServer::builder()
        .start_blocking()
        .expect("start testkit");
    let proxy = FaultProxy::builder(server.addr())
        .start_blocking()
        .expect("start proxy");
    let client = Client::builder()
        .server(proxy.addr().to_string())
        .pool_idle_timeout(Duration::from_millis(500))
        .build();
    let lock = client.lock("worker-reuse");

    // Twenty cycles: one connection, and one renewal thread seen while
    // each guard is held.
    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        let guard = lock.acquire().unwrap().expect("granted");
        until("one renewal thread", || lease_threads().len() == 1);
        seen.extend(lease_threads());
        guard.release().unwrap();
    }
    assert_eq!(seen.len(), 1, "one renewal thread for 20 cycles: {seen:?}");
    assert_eq!(proxy.accepted(), 1, "twenty cycles, one connection");
    let first = seen;

    // A dropped guard is released in the background; its thread goes
    // back into the pool with the connection and serves the next lease.
    drop(lock.acquire().unwrap().expect("granted"));
    until("the dropped guard's release", || {
        client.idle_connections() == 1
    });
    let guard = lock.acquire().unwrap().expect("granted");
    until("the same thread", || lease_threads() == first);
    guard.release().unwrap();
    assert_eq!(proxy.accepted(), 1);

    // A two-phase acquire that is queued keeps the pooled connection's
    // thread for its grant (the key is held first on a raw connection,
    // which has no renewal thread).
    let mut holder =
        BlockingConnection::<256, 0>::connect(server.addr(), &ConnectOptions::default()).unwrap();
    let held = holder
        .acquire(Kind::Lock, "worker-reuse", 0, None)
        .unwrap()
        .expect("free");
    let queued = lock.enqueue().unwrap();
    assert!(!queued.is_acquired());
    holder
        .release(Kind::Lock, "worker-reuse", &held.token)
        .unwrap();
    let guard = queued.wait().unwrap().expect("granted");
    until("the pooled thread", || lease_threads() == first);
    guard.release().unwrap();
    assert_eq!(proxy.accepted(), 1);

    // The server closes the pooled connection: the next acquire drops it,
    // which ends its thread, and connects anew with a new thread.
    proxy.cut();
    until("the cut", || proxy.connections() == 0);
    let guard = lock.acquire().unwrap().expect("granted");
    until("the closed connection's thread to end", || {
        lease_threads().is_disjoint(&first)
    });
    until("the new lease's thread", || lease_threads().len() == 1);
    let second = lease_threads();
    assert_eq!(proxy.accepted(), 2);
    guard.release().unwrap();
    assert_eq!(client.idle_connections(), 1);
    // Parked with its connection (not ended).
    until("the parked thread", || lease_threads() == second);

    // Expiry: the reaper closes the idle connection, and its parked thread
    // ends.
    until("the idle connection to expire", || {
        client.idle_connections() == 0 && proxy.connections() == 0
    });
    until("the expired connection's thread to end", || {
        lease_threads().is_empty()
    });

    // A lost lease: its connection is not pooled and its thread ends.
    let guard = lock.acquire().unwrap().expect("granted");
    until("its thread", || lease_threads().len() == 1);
    proxy.cut();
    assert!(guard.wait_lost_timeout(BOUND), "loss noticed");
    assert!(matches!(guard.release(), Err(Error::LeaseLost)));
    assert_eq!(client.idle_connections(), 0);
    until("the lost lease's thread to end", || {
        lease_threads().is_empty()
    });
}
