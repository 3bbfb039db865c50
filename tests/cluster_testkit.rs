//! The cluster clients against the testkit's cluster mode (fast, in
//! process): redirects, failover while held and while waiting, no leader,
//! orphan re-attach, fences. The real v2 cluster is the judge:
//! tests/cluster_real.rs.

use std::time::{Duration, Instant};

use dflockd_client::Error;
use dflockd_client::cluster::RedirectPolicy;
use dflockd_client::tokio::ClusterClient;
use dflockd_testkit::{Hint, TestCluster};

fn client(cluster: &TestCluster) -> ClusterClient {
    ClusterClient::builder(cluster.addrs())
        .connect_timeout(Duration::from_secs(1))
        .io_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

async fn eventually(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < end, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_redirects_to_the_leader() {
    let cluster = TestCluster::builder().start().await.unwrap();
    cluster.set_leader(Some(1));
    let c = client(&cluster);
    let g = c.lock("k").try_acquire().await.unwrap().unwrap();
    assert_eq!(g.granted_by(), cluster.addr(1));
    assert_eq!(g.fence(), Some(1.into()));
    assert_eq!(cluster.accepted(0), 1, "asked node 0 once");
    assert_eq!(c.leader(), Some(cluster.addr(1).as_str()));
    c.barrier().await.unwrap();
    let stats = c.stats().await.unwrap();
    assert!(stats.contains("\"role\":\"leader\""), "{stats}");
    g.release().await.unwrap();
    assert_eq!(cluster.holders("k"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lease_survives_a_leader_crash() {
    let cluster = TestCluster::builder().start().await.unwrap();
    let c = client(&cluster);
    let mut g = c
        .lock("held")
        .lease_ttl(Duration::from_secs(2))
        .acquire()
        .await
        .unwrap()
        .unwrap();
    let fence = g.fence().unwrap();
    cluster.stop_node(0);
    tokio::time::sleep(Duration::from_millis(300)).await; // the election
    cluster.set_leader(Some(2));
    cluster.reset_hints();
    let r = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match g.next_renewal().await {
                Some(r) if r.member == cluster.addr(2) => return r,
                Some(_) => {}
                None => panic!("lost"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(r.fence, fence);
    let other = client(&cluster);
    assert!(other.lock("held").try_acquire().await.unwrap().is_none());
    g.release().await.unwrap();
    let next = other.lock("held").try_acquire().await.unwrap().unwrap();
    assert!(next.fence().unwrap() > fence);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renew_refused_after_failover_reports_the_loss() {
    let cluster = TestCluster::builder().start().await.unwrap();
    let c = client(&cluster);
    let g = c
        .lock("gone")
        .lease_ttl(Duration::from_secs(1))
        .acquire()
        .await
        .unwrap()
        .unwrap();
    // No leader for longer than the lease: the lease is gone.
    cluster.stop_node(0);
    tokio::time::timeout(Duration::from_secs(5), g.lost())
        .await
        .unwrap();
    assert!(g.is_lost());
    assert_eq!(g.fence(), None);
    cluster.set_leader(Some(1));
    cluster.reset_hints();
    assert!(matches!(g.release().await, Err(Error::LeaseLost)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_moves_to_the_new_leader_with_its_queue_place() {
    let cluster = TestCluster::builder().start().await.unwrap();
    let holder = client(&cluster);
    let held = holder.lock("q").try_acquire().await.unwrap().unwrap();
    let waiter = client(&cluster);
    let started = Instant::now();
    let timeout = Duration::from_secs(10);
    let task = tokio::spawn({
        let l = waiter.lock("q");
        async move { l.acquire_within(timeout).await }
    });
    eventually(Duration::from_secs(3), "queued", || {
        cluster.waiters("q") == 1
    })
    .await;
    cluster.set_leader(Some(1));
    // Still one waiter: re-attached by its stable ref, not queued twice.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(cluster.waiters("q"), 1);
    held.release().await.unwrap();
    let got = task.await.unwrap().unwrap().unwrap();
    assert!(started.elapsed() < timeout);
    assert_eq!(got.granted_by(), cluster.addr(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_leader_ends_in_a_typed_error_after_the_budget() {
    let cluster = TestCluster::builder().start().await.unwrap();
    cluster.stop_node(0); // the others keep naming the dead node
    let c = ClusterClient::builder(cluster.addrs())
        .redirect_policy(RedirectPolicy::DEFAULT.with_budget(6))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = c.barrier().await.unwrap_err();
    assert!(matches!(err, Error::NoLeader { attempts: 6 }), "{err:?}");
    assert!(c.dials() <= 6, "{} dials", c.dials());
    assert!(started.elapsed() >= Duration::from_millis(150));
    // A bare hint is no better.
    cluster.set_hint(1, Hint::Bare);
    cluster.set_hint(2, Hint::Bare);
    assert!(matches!(c.barrier().await, Err(Error::NoLeader { .. })));
    // Once elected, the same client works.
    cluster.set_leader(Some(2));
    cluster.reset_hints();
    c.barrier().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_ttl_hands_the_lock_back_to_the_same_ref() {
    let cluster = TestCluster::builder()
        .orphan_ttl(Duration::from_secs(30))
        .start()
        .await
        .unwrap();
    let build = |r: &str| {
        ClusterClient::builder(cluster.addrs())
            .stable_ref(r)
            .build()
            .unwrap()
    };
    let a = build("worker-a");
    let g = a.lock("o").try_acquire().await.unwrap().unwrap();
    let token = g.token();
    a.disconnect().await;
    std::mem::forget(g);
    eventually(Duration::from_secs(2), "orphaned", || {
        cluster.holders("o") == 1
    })
    .await;
    let b = build("worker-b");
    assert!(b.lock("o").try_acquire().await.unwrap().is_none());
    let again = build("worker-a")
        .lock("o")
        .try_acquire()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.token(), token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stable_refs_are_random_by_default_and_invalid_ones_refused() {
    let cluster = TestCluster::builder().start().await.unwrap();
    let a = client(&cluster);
    let b = client(&cluster);
    assert_ne!(a.stable_ref(), b.stable_ref());
    let bad = ClusterClient::builder(cluster.addrs())
        .stable_ref("")
        .build();
    assert!(matches!(bad, Err(Error::InvalidArgument(_))));
    let none = ClusterClient::builder(Vec::<String>::new()).build();
    assert!(matches!(none, Err(Error::InvalidArgument(_))));
}

#[test]
fn blocking_client_follows_redirects_and_barriers() {
    use dflockd_client::blocking::ClusterClient as Blocking;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cluster = rt.block_on(TestCluster::builder().start()).unwrap();
    cluster.set_leader(Some(2));
    let c = Blocking::builder(cluster.addrs()).build().unwrap();
    let g = c.lock("b").try_acquire().unwrap().unwrap();
    assert_eq!(c.leader(), Some(cluster.addr(2).as_str()));
    c.barrier().unwrap();
    assert!(c.stats().unwrap().contains("\"key\":\"b\""));
    g.release().unwrap();
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renew_never_waits_behind_a_blocked_acquire() {
    let cluster = TestCluster::builder().start().await.unwrap();
    let other = client(&cluster);
    let _blocker = other.lock("busy").try_acquire().await.unwrap().unwrap();
    let c = client(&cluster);
    let mut held = c
        .lock("mine")
        .lease_ttl(Duration::from_secs(1))
        .acquire()
        .await
        .unwrap()
        .unwrap();
    // This client's acquire lane now blocks on the server for 4 s ...
    let blocked = tokio::spawn({
        let l = c.lock("busy");
        async move { l.acquire_within(Duration::from_secs(4)).await }
    });
    // ... while its 1 s lease keeps being renewed on the control lane.
    let started = Instant::now();
    let mut renewals = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let r = tokio::time::timeout(Duration::from_secs(1), held.next_renewal())
            .await
            .expect("a renew within the lease while the acquire blocks")
            .expect("held");
        renewals = r.count;
    }
    assert!(renewals >= 4, "{renewals} renewals in 3 s");
    assert!(!blocked.is_finished(), "the acquire is still blocked");
    assert!(blocked.await.unwrap().unwrap().is_none());
    held.release().await.unwrap();
}

/// The blocking guard offers what the tokio one does, minus `async`:
/// `granted_by`, `next_renewal`, `wait_lost`, and a loss wakes its waiter.
#[test]
fn blocking_guard_reports_renewals_and_the_loss() {
    use dflockd_client::blocking::ClusterClient as Blocking;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cluster = rt.block_on(TestCluster::builder().start()).unwrap();
    cluster.set_leader(Some(1));
    let c = Blocking::builder(cluster.addrs())
        .connect_timeout(Duration::from_secs(1))
        .io_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let lock = c.lock("renewed").lease_ttl(Duration::from_secs(1));
    let mut g = lock.acquire().unwrap().unwrap();
    assert_eq!(g.granted_by(), cluster.addr(1));
    let r = g.next_renewal().expect("renewed while held");
    assert_eq!((r.count, r.member.as_str()), (1, cluster.addr(1).as_str()));
    assert_eq!(g.last_renewal(), Some(r));
    assert_eq!(g.next_renewal().map(|r| r.count), Some(2));
    assert!(!g.wait_lost_timeout(Duration::from_millis(50)));
    g.release().unwrap();
    assert_eq!(cluster.holders("renewed"), 0);

    let mut g = lock.acquire().unwrap().unwrap();
    cluster.stop_node(1); // no leader for longer than the lease
    let started = Instant::now();
    g.wait_lost();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(g.is_lost());
    assert_eq!(g.next_renewal(), None);
    assert!(matches!(g.release(), Err(Error::LeaseLost)));
    drop(cluster);
}

/// An acquire whose future is dropped leaves nothing held: the waiter is
/// dropped (or a grant made meanwhile given back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_acquire_leaves_nothing_held() {
    let cluster = TestCluster::builder().start().await.unwrap();
    let held = client(&cluster).lock("c").try_acquire().await;
    let held = held.unwrap().unwrap();
    let waiting = tokio::spawn({
        let lock = client(&cluster).lock("c");
        async move { lock.acquire_within(Duration::from_secs(10)).await }
    });
    eventually(Duration::from_secs(3), "queued", || {
        cluster.waiters("c") == 1
    })
    .await;
    waiting.abort(); // drops the acquire's future while it waits
    assert!(waiting.await.unwrap_err().is_cancelled());
    held.release().await.unwrap();
    eventually(Duration::from_secs(3), "nothing held or queued", || {
        cluster.holders("c") == 0 && cluster.waiters("c") == 0
    })
    .await;
    let again = client(&cluster).lock("c").try_acquire().await.unwrap();
    assert!(again.is_some(), "the key is free");
}

/// A guard whose renewal task is gone (its runtime shut down) reports the
/// lease lost at once, long before the lease deadline.
#[test]
fn a_guard_whose_task_is_gone_is_lost() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cluster = rt.block_on(TestCluster::builder().start()).unwrap();
    let task_rt = tokio::runtime::Runtime::new().unwrap();
    let c = task_rt.block_on(async { client(&cluster) });
    let g = task_rt
        .block_on(
            c.lock("orphan")
                .lease_ttl(Duration::from_secs(30))
                .acquire(),
        )
        .unwrap()
        .unwrap();
    assert!(!g.is_lost());
    drop(task_rt);
    assert!(g.is_lost());
    assert_eq!(g.token(), None);
    drop(cluster);
}

/// Bad keys come back as a typed error, on both clients, before anything
/// is dialled; any other key works, a NUL byte included (it once made the
/// blocking client's thread name panic).
#[test]
fn keys_are_checked_before_sending_and_never_panic() {
    use dflockd_client::blocking::ClusterClient as Blocking;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cluster = rt.block_on(TestCluster::builder().start()).unwrap();
    let c = Blocking::builder(cluster.addrs()).build().unwrap();
    for key in ["", "two words"] {
        let got = c.lock(key).try_acquire();
        assert!(matches!(got, Err(Error::InvalidArgument(_))), "{key:?}");
        let got = rt.block_on(client(&cluster).lock(key).try_acquire());
        assert!(matches!(got, Err(Error::InvalidArgument(_))), "{key:?}");
    }
    assert_eq!(cluster.accepted(0), 0, "nothing dialled");
    let g = c.lock("a\0b").try_acquire().unwrap().unwrap();
    assert_eq!(g.key(), "a\0b");
    g.release().unwrap();
    drop(cluster);
}
