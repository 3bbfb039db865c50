//! Signals (listen / unlisten / signal) over the raw protocol.

mod common;

use common::{Client, wait_until};
use dflockd_testkit::TestServer;

async fn server() -> TestServer {
    TestServer::builder().start().await.expect("start")
}

#[tokio::test]
async fn exact_and_wildcard_matching_one_push_per_connection() {
    let s = server().await;
    let mut sub = Client::connect(s.addr()).await;
    let mut em = Client::connect(s.addr()).await;
    assert_eq!(sub.req("listen", "a.b", "").await, "ok");
    assert_eq!(sub.req("listen", "a.*", "").await, "ok");
    assert_eq!(sub.req("listen", "a.>", "").await, "ok");
    assert_eq!(em.req("signal", "a.b", "hello world").await, "ok 1");
    assert_eq!(em.req("signal", "a.x", "2").await, "ok 1");
    assert_eq!(em.req("signal", "a.x.y", "3").await, "ok 1");
    assert_eq!(em.req("signal", "a", "none").await, "ok 0");
    assert_eq!(em.req("signal", "b.b", "none").await, "ok 0");
    assert_eq!(sub.expect_line().await, "sig a.b hello world");
    assert_eq!(sub.expect_line().await, "sig a.x 2");
    assert_eq!(sub.expect_line().await, "sig a.x.y 3");
    // Requests still work between pushes.
    assert_eq!(sub.req("ping", "_", "_").await, "ok");
    // `*` is exactly one token, `>` one or more.
    let mut one = Client::connect(s.addr()).await;
    assert_eq!(one.req("listen", "*.end", "").await, "ok");
    assert_eq!(em.req("signal", "x.end", "p").await, "ok 1");
    assert_eq!(em.req("signal", "x.y.end", "p").await, "ok 0");
    assert_eq!(one.expect_line().await, "sig x.end p");
}

#[tokio::test]
async fn invalid_patterns_and_signals() {
    let s = server().await;
    let mut c = Client::connect(s.addr()).await;
    for bad in ["a.>.b", "a*", "a.b>", "", "a b"] {
        assert_eq!(c.req("listen", bad, "").await, "error", "listen {bad:?}");
    }
    assert_eq!(c.req("unlisten", "a.>.b", "").await, "error");
    assert_eq!(c.req("signal", "a.*", "x").await, "error");
    assert_eq!(c.req("signal", "a.>", "x").await, "error");
    assert_eq!(c.req("signal", "a", "").await, "error");
    assert_eq!(c.req("signal", "a", "   ").await, "error");
    assert_eq!(c.req("ping", "_", "_").await, "ok");
}

#[tokio::test]
async fn duplicate_listen_and_unlisten() {
    let s = server().await;
    let mut sub = Client::connect(s.addr()).await;
    let mut em = Client::connect(s.addr()).await;
    assert_eq!(sub.req("listen", "d", "").await, "ok");
    assert_eq!(sub.req("listen", "d", "").await, "ok");
    assert_eq!(s.stats().signal_channels.len(), 1);
    assert_eq!(s.stats().signal_channels[0].listeners, 1);
    assert_eq!(em.req("signal", "d", "once").await, "ok 1");
    assert_eq!(sub.expect_line().await, "sig d once");
    assert_eq!(sub.req("unlisten", "d", "").await, "ok");
    assert_eq!(sub.req("unlisten", "d", "").await, "ok");
    assert_eq!(sub.req("unlisten", "never", "g").await, "ok");
    assert_eq!(em.req("signal", "d", "gone").await, "ok 0");
    assert!(s.stats().signal_channels.is_empty());
    assert_eq!(sub.req("ping", "_", "_").await, "ok", "no stray push");
}

#[tokio::test]
async fn groups_round_robin_and_count_once() {
    let s = server().await;
    let mut g1 = Client::connect(s.addr()).await;
    let mut g2 = Client::connect(s.addr()).await;
    let mut solo = Client::connect(s.addr()).await;
    let mut em = Client::connect(s.addr()).await;
    assert_eq!(g1.req("listen", "jobs.*", "workers").await, "ok");
    assert_eq!(g2.req("listen", "jobs.*", "workers").await, "ok");
    for i in 0..4 {
        assert_eq!(em.req("signal", "jobs.run", &format!("j{i}")).await, "ok 1");
    }
    let mut got = Vec::new();
    for c in [&mut g1, &mut g2] {
        let a = c.expect_line().await;
        let b = c.expect_line().await;
        assert_eq!(
            c.req("ping", "_", "_").await,
            "ok",
            "exactly two pushes each"
        );
        got.push(a);
        got.push(b);
    }
    got.sort();
    assert_eq!(
        got,
        [
            "sig jobs.run j0",
            "sig jobs.run j1",
            "sig jobs.run j2",
            "sig jobs.run j3"
        ]
    );
    // Non-grouped listener plus the group: two deliveries.
    assert_eq!(solo.req("listen", "jobs.run", "").await, "ok");
    assert_eq!(em.req("signal", "jobs.run", "both").await, "ok 2");
    assert_eq!(solo.expect_line().await, "sig jobs.run both");
    let st = s.stats();
    let grp = st
        .signal_channels
        .iter()
        .find(|c| c.group == "workers")
        .expect("group in stats");
    assert_eq!((grp.pattern.as_str(), grp.listeners), ("jobs.*", 2));
    let json = s.stats_json();
    assert!(json.contains(r#""signal_channels":[{"pattern":"jobs.*","group":"workers","listeners":2},{"pattern":"jobs.run","listeners":1}]"#), "{json}");
}

#[tokio::test]
async fn emitter_subscribed_to_itself() {
    let s = server().await;
    let mut c = Client::connect(s.addr()).await;
    assert_eq!(c.req("listen", "self", "").await, "ok");
    c.send("signal", "self", "me").await;
    let mut lines = vec![c.expect_line().await, c.expect_line().await];
    lines.sort();
    assert_eq!(lines, ["ok 1", "sig self me"]);
}

#[tokio::test]
async fn max_subscriptions() {
    let s = TestServer::builder()
        .max_subscriptions(2)
        .start()
        .await
        .unwrap();
    let mut c = Client::connect(s.addr()).await;
    assert_eq!(c.req("listen", "a", "").await, "ok");
    assert_eq!(c.req("listen", "a", "").await, "ok", "duplicate is a no-op");
    assert_eq!(c.req("listen", "a", "g").await, "ok");
    assert_eq!(c.req("listen", "b", "").await, "error");
    // As the real server: the count is checked first, so at the limit even
    // a duplicate is refused.
    assert_eq!(c.req("listen", "a", "").await, "error");
    assert_eq!(c.req("unlisten", "a", "").await, "ok");
    assert_eq!(c.req("listen", "b", "").await, "ok");
}

#[tokio::test]
async fn slow_consumer_is_dropped() {
    let s = server().await;
    let mut slow = Client::connect(s.addr()).await;
    let mut em = Client::connect(s.addr()).await;
    assert_eq!(slow.req("listen", "flood", "").await, "ok");
    let payload = "x".repeat(60 * 1024);
    let mut sent = 0;
    while !s.stats().signal_channels.is_empty() {
        assert!(sent < 20_000, "slow consumer never dropped");
        em.req("signal", "flood", &payload).await;
        sent += 1;
    }
    wait_until("slow consumer closed", || s.connection_count() == 1).await;
    assert_eq!(em.req("signal", "flood", "after").await, "ok 0");
    // The dropped connection ends with EOF after whatever was buffered.
    while slow.line().await.is_some() {}
}

#[tokio::test]
async fn subscriptions_end_with_connection() {
    let s = server().await;
    let mut sub = Client::connect(s.addr()).await;
    let mut em = Client::connect(s.addr()).await;
    assert_eq!(sub.req("listen", "bye.>", "g").await, "ok");
    drop(sub);
    wait_until("subscription removed", || {
        s.stats().signal_channels.is_empty()
    })
    .await;
    assert_eq!(em.req("signal", "bye.now", "x").await, "ok 0");
}
