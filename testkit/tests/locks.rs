//! Lock, semaphore, lease and two-phase behaviour over the raw protocol.

mod common;

use std::time::{Duration, Instant};

use common::{Client, T, token_of, wait_until};
use dflockd_testkit::TestServer;

async fn server() -> TestServer {
    TestServer::builder().start().await.expect("start")
}

fn waiters(s: &TestServer, key: &str) -> usize {
    s.stats()
        .locks
        .iter()
        .find(|l| l.key == key)
        .map_or(0, |l| l.waiters)
}

#[tokio::test]
async fn ping_lock_renew_release() {
    let s = server().await;
    let mut c = Client::connect(s.addr()).await;
    assert_eq!(c.req("ping", "_", "_").await, "ok");
    let reply = c.req("l", "k", "5").await;
    let tok = token_of(&reply, "ok");
    assert!(reply.ends_with(" 33"), "default lease: {reply}");
    assert_eq!(c.req("n", "k", &tok).await, "ok 33");
    assert_eq!(c.req("n", "k", &format!("{tok} 7")).await, "ok 7");
    assert_eq!(
        c.req("r", "k", "ffffffffffffffffffffffffffffffff").await,
        "error"
    );
    assert_eq!(c.req("r", "k", &tok).await, "ok");
    assert_eq!(c.req("r", "k", &tok).await, "error");
    assert_eq!(c.req("n", "k", &tok).await, "error");
    assert_eq!(c.req("r", "nokey", &tok).await, "error");
    // Explicit lease, and fencing-shaped tokens increase.
    let t2 = token_of(&c.req("l", "k", "0 9").await, "ok");
    assert!(t2[..16] > tok[..16]);
    assert_eq!(c.req("l", "k", "0").await, "timeout");
}

#[tokio::test]
async fn fifo_with_five_contenders() {
    let s = server().await;
    let mut holder = Client::connect(s.addr()).await;
    let mut tok = holder.lock("fifo", "0").await;
    let mut cs = Vec::new();
    for i in 0..5 {
        let mut c = Client::connect(s.addr()).await;
        c.send("l", "fifo", "30").await;
        wait_until("waiter queued", || waiters(&s, "fifo") == i + 1).await;
        cs.push(c);
    }
    assert_eq!(holder.req("r", "fifo", &tok).await, "ok");
    for (i, c) in cs.iter_mut().enumerate() {
        tok = token_of(&c.expect_line().await, "ok");
        assert_eq!(waiters(&s, "fifo"), 4 - i, "only the head was granted");
        assert_eq!(c.req("r", "fifo", &tok).await, "ok");
    }
}

#[tokio::test]
async fn semaphore_limit_and_separate_key_spaces() {
    let s = server().await;
    let mut a = Client::connect(s.addr()).await;
    let t1 = token_of(&a.req("sl", "sem", "0 2").await, "ok");
    let t2 = token_of(&a.req("sl", "sem", "0 2 9").await, "ok");
    assert_ne!(t1, t2);
    assert_eq!(a.req("sl", "sem", "0 2").await, "timeout");
    assert_eq!(a.req("sl", "sem", "0 3").await, "error_limit_mismatch");
    assert_eq!(a.req("se", "sem", "3").await, "error_limit_mismatch");
    // Locks and semaphores are separate key spaces (v1.14+).
    let lt = a.lock("sem", "0").await;
    assert_eq!(
        a.req("r", "sem", &t1).await,
        "error",
        "lock space has no such token"
    );
    assert_eq!(a.req("sn", "sem", &lt).await, "error");
    assert_eq!(a.req("sn", "sem", &format!("{t1} 5")).await, "ok 5");
    let st = s.stats();
    assert_eq!(st.semaphores.len(), 1);
    assert_eq!((st.semaphores[0].limit, st.semaphores[0].holders), (2, 2));
    assert_eq!(st.locks.len(), 1);
    // A blocked waiter gets the slot on release.
    let mut b = Client::connect(s.addr()).await;
    b.send("sl", "sem", "30 2").await;
    wait_until("sem waiter", || s.stats().semaphores[0].waiters == 1).await;
    assert_eq!(a.req("sr", "sem", &t1).await, "ok");
    token_of(&b.expect_line().await, "ok");
    assert_eq!(a.req("sr", "sem", &t1).await, "error");
}

#[tokio::test]
async fn lease_expiry_hands_over_and_renew_fails() {
    let s = server().await;
    let mut a = Client::connect(s.addr()).await;
    let mut b = Client::connect(s.addr()).await;
    let ta = a.lock("exp", "0 1").await;
    let start = Instant::now();
    b.send("l", "exp", "20").await;
    let tb = token_of(&b.expect_line().await, "ok");
    let took = start.elapsed();
    assert!(took < Duration::from_secs(8), "hand-over took {took:?}");
    assert_ne!(ta, tb);
    assert_eq!(a.req("n", "exp", &ta).await, "error", "renew after expiry");
    assert_eq!(a.req("r", "exp", &ta).await, "error");
    assert_eq!(b.req("r", "exp", &tb).await, "ok");
}

#[tokio::test]
async fn two_phase() {
    let s = server().await;
    let mut a = Client::connect(s.addr()).await;
    let mut b = Client::connect(s.addr()).await;
    // Immediate acquisition through e.
    let t = token_of(&a.req("e", "tp", "").await, "acquired");
    assert_eq!(a.req("e", "tp", "").await, "error_already_enqueued");
    assert_eq!(b.req("e", "tp", "7").await, "queued");
    assert_eq!(b.req("e", "tp", "7").await, "error_already_enqueued");
    let wa = a.req("w", "tp", "0").await;
    assert_eq!(token_of(&wa, "ok"), t);
    assert!(wa.ends_with(" 33"));
    assert_eq!(a.req("w", "tp", "0").await, "error_not_enqueued");
    // b waits, a releases.
    b.send("w", "tp", "20").await;
    wait_until("b waiting", || waiters(&s, "tp") == 1).await;
    assert_eq!(a.req("r", "tp", &t).await, "ok");
    let wb = b.expect_line().await;
    let tb = token_of(&wb, "ok");
    assert!(wb.ends_with(" 7"), "{wb}");
    // w timeout removes the waiter.
    assert_eq!(a.req("e", "tp", "").await, "queued");
    assert_eq!(a.req("w", "tp", "0").await, "timeout");
    assert_eq!(a.req("w", "tp", "1").await, "error_not_enqueued");
    assert_eq!(waiters(&s, "tp"), 0);
    // e/w are bound to the connection.
    assert_eq!(a.req("e", "tp", "").await, "queued");
    assert_eq!(b.req("w", "tp", "0").await, "error_not_enqueued");
    assert_eq!(b.req("r", "tp", &tb).await, "ok");
    token_of(&a.req("w", "tp", "5").await, "ok");
    // Semaphore flavour.
    token_of(&a.req("se", "stp", "2").await, "acquired");
    token_of(&a.req("sw", "stp", "1").await, "ok");
    assert_eq!(a.req("sw", "stp", "1").await, "error_not_enqueued");
}

#[tokio::test]
async fn wait_after_lease_expired() {
    let s = server().await;
    let mut a = Client::connect(s.addr()).await;
    token_of(&a.req("e", "le", "1").await, "acquired");
    wait_until("lease expired", || s.stats().locks.is_empty()).await;
    // The expiry drops the enqueue record, as the real servers' sweep does.
    assert_eq!(a.req("w", "le", "1").await, "error_not_enqueued");
    // A queued grant that expires before w collects it.
    let mut b = Client::connect(s.addr()).await;
    let tb = b.lock("le2", "0").await;
    assert_eq!(a.req("e", "le2", "1").await, "queued");
    assert_eq!(b.req("r", "le2", &tb).await, "ok");
    wait_until("granted", || s.stats().locks.iter().any(|l| l.key == "le2")).await;
    wait_until("grant expired", || s.stats().locks.is_empty()).await;
    assert_eq!(a.req("w", "le2", "1").await, "error_not_enqueued");
    // The place in line is gone with it: enqueue again works.
    assert_eq!(
        a.req("e", "le2", "1").await.split(' ').next(),
        Some("acquired")
    );
}

#[tokio::test]
async fn disconnect_releases_and_cancels() {
    let s = server().await;
    let mut a = Client::connect(s.addr()).await;
    let mut b = Client::connect(s.addr()).await;
    a.lock("dc", "0").await;
    b.send("l", "dc", "20").await;
    wait_until("b queued", || waiters(&s, "dc") == 1).await;
    drop(a);
    token_of(&b.expect_line().await, "ok");
    // A waiter that disconnects leaves the queue.
    let mut c = Client::connect(s.addr()).await;
    c.send("l", "dc", "20").await;
    let mut d = Client::connect(s.addr()).await;
    assert_eq!(d.req("e", "dc", "").await, "queued");
    wait_until("c and d queued", || waiters(&s, "dc") == 2).await;
    drop(c);
    drop(d);
    wait_until("waiters gone", || waiters(&s, "dc") == 0).await;
    wait_until("connections closed", || s.connection_count() == 1).await;
}

#[tokio::test]
async fn auto_release_off_keeps_lock_until_expiry() {
    let s = TestServer::builder()
        .auto_release_on_disconnect(false)
        .start()
        .await
        .unwrap();
    let mut a = Client::connect(s.addr()).await;
    let mut b = Client::connect(s.addr()).await;
    a.lock("ar", "0 2").await;
    drop(a);
    wait_until("a closed", || s.connection_count() == 1).await;
    assert_eq!(b.req("l", "ar", "0").await, "timeout");
    token_of(&b.req("l", "ar", "20").await, "ok");
}

#[tokio::test]
async fn max_locks_and_max_waiters() {
    let s = TestServer::builder()
        .max_locks(2)
        .max_waiters(1)
        .start()
        .await
        .unwrap();
    let mut a = Client::connect(s.addr()).await;
    a.lock("k1", "0").await;
    token_of(&a.req("sl", "k2", "0 2").await, "ok");
    assert_eq!(a.req("l", "k3", "0").await, "error_max_locks");
    assert_eq!(a.req("e", "k3", "").await, "error_max_locks");
    assert_eq!(a.req("sl", "k3", "0 1").await, "error_max_locks");
    let mut b = Client::connect(s.addr()).await;
    let mut c = Client::connect(s.addr()).await;
    b.send("l", "k1", "20").await;
    wait_until("b queued", || waiters(&s, "k1") == 1).await;
    assert_eq!(c.req("l", "k1", "5").await, "error_max_waiters");
    assert_eq!(c.req("l", "k1", "0").await, "error_max_waiters");
    assert_eq!(c.req("e", "k1", "").await, "error_max_waiters");
}

#[tokio::test]
async fn malformed_requests_get_error_and_keep_connection() {
    let s = server().await;
    let mut c = Client::connect(s.addr()).await;
    for (cmd, key, arg) in [
        ("bogus", "k", ""),
        ("l", "k", "x"),
        ("l", "k", "-1"),
        ("l", "k", "1 0"),
        ("l", "k", "1 2 3"),
        ("l", "k", ""),
        ("l", "", "1"),
        ("l", "a b", "1"),
        ("l", "k", "9223372037"),
        ("sl", "k", "1 0"),
        ("sl", "k", "1"),
        ("r", "k", ""),
        ("n", "k", ""),
        ("e", "k", "0"),
        ("w", "k", ""),
        ("se", "k", ""),
        ("auth", "_", "x"),
    ] {
        assert_eq!(
            c.req(cmd, key, arg).await,
            "error",
            "{cmd:?} {key:?} {arg:?}"
        );
    }
    // \r\n framing is accepted.
    c.send_raw(b"ping\r\n_\r\n_\r\n").await;
    assert_eq!(c.expect_line().await, "ok");
    // Pipelined requests are answered in order.
    c.send_raw(b"ping\n_\n\nl\npipe\n0\nbogus\n_\n\nstats\n_\n\n")
        .await;
    assert_eq!(c.expect_line().await, "ok");
    token_of(&c.expect_line().await, "ok");
    assert_eq!(c.expect_line().await, "error");
    assert!(c.expect_line().await.starts_with("ok {"));
}

#[tokio::test]
async fn over_long_line_gets_error_and_close() {
    let s = server().await;
    let mut c = Client::connect(s.addr()).await;
    let long = "k".repeat(257);
    c.send("l", &long, "1").await;
    assert_eq!(c.expect_line().await, "error");
    c.expect_eof().await;
    // 256 bytes is fine.
    let mut c = Client::connect(s.addr()).await;
    token_of(&c.req("l", &"k".repeat(256), "0").await, "ok");
    // The signal payload line may be 64 KiB, not more; the payload itself
    // only as long as its push `sig ch <payload>` fits 64 KiB (as the real
    // server checks), else `error` on an open connection.
    assert_eq!(c.req("signal", "ch", &"p".repeat(65529)).await, "ok 0");
    assert_eq!(c.req("signal", "ch", &"p".repeat(65530)).await, "error");
    assert_eq!(c.req("signal", "ch", &"p".repeat(65536)).await, "error");
    c.send("signal", "ch", &"p".repeat(65537)).await;
    assert_eq!(c.expect_line().await, "error");
    c.expect_eof().await;
    // An over-long command line without newline is cut off too.
    let mut c = Client::connect(s.addr()).await;
    c.send_raw("x".repeat(1000).as_bytes()).await;
    assert_eq!(c.expect_line().await, "error");
    c.expect_eof().await;
}

#[tokio::test]
async fn stats_shape() {
    let s = server().await;
    let mut c = Client::connect(s.addr()).await;
    c.lock("held", "0").await;
    token_of(&c.req("sl", "sem", "0 3").await, "ok");
    let t = c.lock("idle", "0").await;
    assert_eq!(c.req("r", "idle", &t).await, "ok");
    let reply = c.req("stats", "_", "").await;
    let json = reply.strip_prefix("ok ").expect("ok <json>");
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["connections"], 1);
    assert_eq!(v["locks"][0]["key"], "held");
    assert!(v["locks"][0]["owner_conn_id"].as_u64().unwrap() > 0);
    assert!(v["locks"][0]["lease_expires_in_s"].as_f64().unwrap() > 30.0);
    assert_eq!(v["locks"][0]["waiters"], 0);
    assert_eq!(v["semaphores"][0]["key"], "sem");
    assert_eq!(v["semaphores"][0]["limit"], 3);
    assert_eq!(v["semaphores"][0]["holders"], 1);
    assert_eq!(v["idle_locks"][0]["key"], "idle");
    assert!(v["idle_locks"][0]["idle_s"].is_number());
    assert!(v["idle_semaphores"].as_array().unwrap().is_empty());
    assert!(v["signal_channels"].as_array().unwrap().is_empty());
    let parsed: dflockd_testkit::Stats = serde_json::from_str(json).unwrap();
    assert_eq!(parsed.locks.len(), 1);
    let _ = T;
}
