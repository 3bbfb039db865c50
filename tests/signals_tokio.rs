//! Signals on tokio against the in-process testkit or a real server
//! (`DFLOCKD_REAL_SERVER`): matching, groups, delivery counts, heartbeat,
//! slow consumers, payloads, reconnect. On a server without signals
//! (v1.10.0, v2) the tests that need them print why they skip; the others
//! assert what the client gets there instead: the server's `error`, at once,
//! on a connection that stays up.

use std::fmt::Debug;
use std::time::Duration;

use dflockd_client::Error;
use dflockd_client::protocol::{Arg, InvalidArgument, Rule};
use dflockd_client::tokio::{ConnectOptions, TokioConnection, connect};
use dflockd_client::tokio::{MAX_SIGNAL_LINE, Reconnect, Signal, SignalEvent, SignalOptions};
use dflockd_client::tokio::{SignalConn, emit};
use dflockd_testkit::TestServer;
use tokio::time::timeout;

#[path = "support/generation.rs"]
mod generation;

/// Generous bound on anything that should happen promptly.
const PROMPT: Duration = Duration::from_secs(15);

async fn server() -> TestServer {
    TestServer::builder().start().await.expect("start testkit")
}

/// A server for a test that needs signals; `None`, with the reason printed,
/// on one without them (see `without_signals_each_command_is_a_server_error`).
async fn signal_server() -> Option<TestServer> {
    let server = server().await;
    generation::has_signals(&server).then_some(server)
}

/// [`generation::answered`] for a request that must come back within
/// [`PROMPT`].
async fn answered<T: Debug>(
    server: &TestServer,
    request: impl Future<Output = Result<T, Error<std::io::Error>>>,
) -> Option<T> {
    generation::answered(server, timeout(PROMPT, request).await.expect("in time"))
}

async fn listener<const N: usize, const P: usize>(
    server: &TestServer,
    opts: SignalOptions,
) -> SignalConn<N, P> {
    SignalConn::connect(&server.addr().to_string(), &ConnectOptions::default(), opts)
        .await
        .expect("connect signal conn")
}

async fn plain(server: &TestServer) -> SignalConn {
    listener(server, SignalOptions::default()).await
}

/// The next item, which must be a signal.
async fn next_signal<const N: usize, const P: usize>(conn: &mut SignalConn<N, P>) -> Signal {
    match timeout(PROMPT, conn.recv()).await {
        Ok(Some(Ok(SignalEvent::Signal(s)))) => s,
        other => panic!("expected a signal, got {other:?}"),
    }
}

async fn expect_signal<const N: usize, const P: usize>(
    conn: &mut SignalConn<N, P>,
    channel: &str,
    payload: &str,
) {
    let s = next_signal(conn).await;
    assert_eq!((s.channel.as_str(), s.payload.as_str()), (channel, payload));
}

fn assert_invalid<T: std::fmt::Debug>(r: Result<T, Error<std::io::Error>>, arg: Arg, rule: Rule) {
    match r {
        Err(Error::InvalidArgument(InvalidArgument { arg: a, rule: r })) => {
            assert_eq!((a, r), (arg, rule))
        }
        other => panic!("expected InvalidArgument({arg:?}, {rule:?}), got {other:?}"),
    }
}

#[tokio::test]
async fn exact_star_and_gt_matching() {
    let Some(server) = signal_server().await else {
        return;
    };
    let mut sub = plain(&server).await;
    let publisher = plain(&server).await;
    sub.listen("orders.eu", None).await.unwrap();
    sub.listen("metrics.*", None).await.unwrap();
    sub.listen("logs.>", None).await.unwrap();

    let cases = [
        ("orders.eu", 1),
        ("orders.us", 0),
        ("orders.eu.x", 0),
        ("metrics.cpu", 1),
        ("metrics", 0),
        ("metrics.cpu.core0", 0),
        ("logs", 0),
        ("logs.app", 1),
        ("logs.app.err.deep", 1),
    ];
    for (channel, want) in cases {
        assert_eq!(
            publisher.emit(channel, "p").await.unwrap(),
            want,
            "{channel}"
        );
    }
    for (channel, want) in cases {
        if want == 1 {
            expect_signal(&mut sub, channel, "p").await;
        }
    }
    assert!(sub.try_recv().is_none());
}

#[tokio::test]
async fn overlapping_patterns_deliver_once_per_connection() {
    let Some(server) = signal_server().await else {
        return;
    };
    let mut sub = plain(&server).await;
    for p in ["a.b", "a.*", "a.>", ">", "*.b"] {
        sub.listen(p, None).await.unwrap();
    }
    // Listening twice is a no-op.
    sub.listen("a.b", None).await.unwrap();
    assert_eq!(sub.emit("a.b", "once").await.unwrap(), 1);
    // A marker matched only by `>` proves no duplicate came in between.
    assert_eq!(sub.emit("zzz", "marker").await.unwrap(), 1);
    expect_signal(&mut sub, "a.b", "once").await;
    expect_signal(&mut sub, "zzz", "marker").await;
}

#[tokio::test]
async fn queue_group_round_robin_across_three_members() {
    let Some(server) = signal_server().await else {
        return;
    };
    let mut members = Vec::new();
    for _ in 0..3 {
        let m = plain(&server).await;
        m.listen("jobs.*", Some("workers")).await.unwrap();
        m.listen("end", None).await.unwrap();
        members.push(m);
    }
    let addr = server.addr().to_string();
    let opts = ConnectOptions::default();
    for i in 0..9 {
        let n = emit(&addr, "jobs.run", &format!("job {i}"), &opts)
            .await
            .unwrap();
        assert_eq!(n, 1, "a group counts as one delivery");
    }
    assert_eq!(emit(&addr, "end", "end", &opts).await.unwrap(), 3);
    let mut seen = Vec::new();
    for m in &mut members {
        let mut got = Vec::new();
        loop {
            let s = next_signal(m).await;
            if s.channel == "end" {
                break;
            }
            got.push(s.payload);
        }
        assert_eq!(
            got.len(),
            3,
            "round robin gives each member 3 of 9: {got:?}"
        );
        seen.extend(got);
    }
    seen.sort();
    let mut want: Vec<String> = (0..9).map(|i| format!("job {i}")).collect();
    want.sort();
    assert_eq!(seen, want, "every job delivered exactly once");
}

#[tokio::test]
async fn delivery_counts_and_unlisten() {
    let Some(server) = signal_server().await else {
        return;
    };
    let a = plain(&server).await;
    let b = plain(&server).await;
    let g1 = plain(&server).await;
    let g2 = plain(&server).await;
    a.listen("c", None).await.unwrap();
    b.listen("c.>", None).await.unwrap();
    g1.listen("c", Some("g")).await.unwrap();
    g2.listen("c", Some("g")).await.unwrap();
    let p = plain(&server).await;
    assert_eq!(p.emit("c", "x").await.unwrap(), 2, "a + group g");
    assert_eq!(p.emit("c.d", "x").await.unwrap(), 1, "b");
    assert_eq!(p.emit("nobody", "x").await.unwrap(), 0);

    a.unlisten("c", None).await.unwrap();
    assert_eq!(p.emit("c", "x").await.unwrap(), 1, "group g only");
    // Unlisten needs the same group.
    g1.unlisten("c", None).await.unwrap();
    assert_eq!(p.emit("c", "x").await.unwrap(), 1);
    g1.unlisten("c", Some("g")).await.unwrap();
    g2.unlisten("c", Some("g")).await.unwrap();
    assert_eq!(p.emit("c", "x").await.unwrap(), 0);
    // Unlisten of something never listened to is fine.
    a.unlisten("never.*", None).await.unwrap();
}

#[tokio::test]
async fn own_pushes_interleave_with_emit_replies() {
    let Some(server) = signal_server().await else {
        return;
    };
    let mut sub = plain(&server).await;
    sub.listen("self.>", None).await.unwrap();
    let handle = sub.handle();
    // The push for each emit may arrive before its reply; nothing is lost.
    let emits = tokio::spawn(async move {
        for i in 0..50 {
            assert_eq!(handle.emit("self.x", &format!("m{i}")).await.unwrap(), 1);
        }
    });
    for i in 0..50 {
        expect_signal(&mut sub, "self.x", &format!("m{i}")).await;
    }
    timeout(PROMPT, emits).await.unwrap().unwrap();
    assert_eq!(sub.dropped_signals(), 0);
}

#[tokio::test]
async fn usable_as_a_stream() {
    use std::future::poll_fn;
    use std::pin::Pin;

    use futures_core::Stream;

    let Some(server) = signal_server().await else {
        return;
    };
    let mut sub = plain(&server).await;
    sub.listen("s", None).await.unwrap();
    sub.emit("s", "via stream").await.unwrap();
    let item = timeout(PROMPT, poll_fn(|cx| Pin::new(&mut sub).poll_next(cx)))
        .await
        .unwrap();
    match item {
        Some(Ok(SignalEvent::Signal(s))) => assert_eq!(s.payload, "via stream"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn heartbeat_keeps_an_idle_listener_alive() {
    let server = TestServer::builder()
        .read_timeout(Duration::from_secs(1))
        .start()
        .await
        .unwrap();
    let addr = server.addr().to_string();

    // Without a heartbeat the server closes an idle connection.
    let mut idle: TokioConnection<256, 1024> =
        connect(&addr, &ConnectOptions::default()).await.unwrap();
    answered(&server, idle.listen("hb", None)).await;
    let r = timeout(PROMPT, idle.next_signal()).await.unwrap();
    assert!(r.is_err(), "idle connection should be closed: {r:?}");

    let opts = SignalOptions {
        heartbeat: Duration::from_millis(300),
        read_timeout: Duration::from_secs(1),
        ..SignalOptions::default()
    };
    let mut sub: SignalConn = listener(&server, opts).await;
    answered(&server, sub.listen("hb", None)).await;
    // Stay idle well past the read timeout (this sleep is the point of the
    // test, not a wait for an event).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(sub.try_recv().is_none(), "no error: still connected");
    // v1.10.0 answers each `ping` with `error`, which resets its idle timer
    // all the same: there the connection still answers afterwards.
    let o = ConnectOptions::default();
    match answered(&server, emit(&addr, "hb", "still here", &o)).await {
        Some(n) => {
            assert_eq!(n, 1);
            expect_signal(&mut sub, "hb", "still here").await;
        }
        None => {
            answered(&server, sub.listen("hb", None)).await;
            assert!(sub.try_recv().is_none(), "no error: still connected");
        }
    }
}

#[tokio::test]
async fn heartbeat_must_be_below_the_server_read_timeout() {
    let server = server().await;
    let opts = SignalOptions {
        heartbeat: Duration::from_secs(25),
        ..SignalOptions::default()
    };
    let r = SignalConn::<256, 256>::connect(&server.addr().to_string(), &Default::default(), opts)
        .await;
    match r {
        Err(Error::Config(c)) => assert_eq!(c.option, "heartbeat", "{c}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_consumer_that_never_reads_is_dropped_and_told() {
    let Some(server) = signal_server().await else {
        return;
    };
    let opts = SignalOptions {
        queue: 2,
        ..SignalOptions::default()
    };
    let mut slow: SignalConn<MAX_SIGNAL_LINE, { 2 * MAX_SIGNAL_LINE }> =
        listener(&server, opts).await;
    slow.listen("flood", None).await.unwrap();
    let publisher = plain(&server).await;
    let payload = "x".repeat(60_000);
    // Publish until the server drops the listener (a delivery count of 0).
    let dropped = timeout(Duration::from_secs(60), async {
        for _ in 0..5000 {
            if publisher.emit("flood", &payload).await.unwrap() == 0 {
                return true;
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(dropped, "server never dropped the slow consumer");
    // The consumer now reads: what was received, then the disconnect.
    let mut signals = 0;
    let err = timeout(PROMPT * 2, async {
        loop {
            match slow.recv().await {
                Some(Ok(SignalEvent::Signal(s))) => {
                    assert_eq!(s.payload.len(), 60_000);
                    signals += 1;
                }
                Some(Ok(other)) => panic!("unexpected {other:?}"),
                Some(Err(e)) => return e,
                None => panic!("stream ended without reporting the disconnect"),
            }
        }
    })
    .await
    .unwrap();
    assert!(!err.is_recoverable(), "{err:?}");
    assert!(signals > 0);
    assert!(timeout(PROMPT, slow.recv()).await.unwrap().is_none());
    assert!(matches!(
        slow.emit("flood", "x").await,
        Err(Error::Disconnected)
    ));
}

#[tokio::test]
async fn invalid_patterns_and_wildcard_emits_are_rejected_before_sending() {
    let server = server().await;
    let sub = plain(&server).await;
    for p in ["a.>.b", "a*", "a.b>", "", "a b"] {
        assert!(
            matches!(sub.listen(p, None).await, Err(Error::InvalidArgument(_))),
            "{p:?}"
        );
    }
    assert_invalid(
        sub.listen("a.>.b", None).await,
        Arg::Pattern,
        Rule::BadWildcard,
    );
    assert_invalid(
        sub.unlisten("a*", None).await,
        Arg::Pattern,
        Rule::BadWildcard,
    );
    assert_invalid(sub.listen("ok", Some("")).await, Arg::Group, Rule::Empty);
    assert_invalid(sub.emit("a.*", "x").await, Arg::Channel, Rule::Wildcard);
    assert_invalid(sub.emit("a.>", "x").await, Arg::Channel, Rule::Wildcard);
    assert_invalid(sub.emit("a", "   ").await, Arg::Payload, Rule::Blank);
    assert_invalid(sub.emit("a", "x\ny").await, Arg::Payload, Rule::LineBreak);
    // The one-shot emit checks before it even connects (nothing listens
    // on port 1).
    assert_invalid(
        emit("127.0.0.1:1", "a.*", "x", &ConnectOptions::default()).await,
        Arg::Channel,
        Rule::Wildcard,
    );
    // Nothing reached the server, and the connection is still usable.
    assert!(server.stats().signal_channels.is_empty());
    if answered(&server, sub.listen("a.*", None)).await.is_some() {
        assert_eq!(server.stats().signal_channels.len(), 1);
    }
}

#[tokio::test]
async fn payloads_round_trip_byte_for_byte() {
    let Some(server) = signal_server().await else {
        return;
    };
    let mut sub = plain(&server).await;
    sub.listen("p", None).await.unwrap();
    let payloads = [
        "hello world",
        " leading and trailing ",
        "tabs\tand  double  spaces",
        "héllo wörld ✓ 日本語 🚀",
        r#"{"id": 42, "tags": ["a b", "ü"], "nested": {"x": null, "y": [1.5, true]}}"#,
        "sig p nested-looking payload",
    ];
    for p in payloads {
        assert_eq!(sub.emit("p", p).await.unwrap(), 1);
    }
    for p in payloads {
        expect_signal(&mut sub, "p", p).await;
    }
}

#[tokio::test]
async fn large_payload_fits_a_large_buffer_and_is_counted_dropped_in_a_small_one() {
    let Some(server) = signal_server().await else {
        return;
    };
    let addr = server.addr().to_string();
    let opts = ConnectOptions::default();
    let payload: String = "0123456789abcdé {}\""
        .chars()
        .cycle()
        .take(60_000)
        .collect();

    let mut big: SignalConn<MAX_SIGNAL_LINE, { 2 * MAX_SIGNAL_LINE }> =
        listener(&server, SignalOptions::default()).await;
    let mut small: SignalConn<1024, 4096> = listener(&server, SignalOptions::default()).await;
    big.listen("big", None).await.unwrap();
    small.listen("big", None).await.unwrap();

    assert_eq!(emit(&addr, "big", &payload, &opts).await.unwrap(), 2);
    assert_eq!(emit(&addr, "big", "after", &opts).await.unwrap(), 2);

    let s = next_signal(&mut big).await;
    assert_eq!(s.payload.len(), payload.len());
    assert!(s.payload == payload, "60 KB payload differs");
    expect_signal(&mut big, "big", "after").await;
    assert_eq!(big.dropped_signals(), 0);

    // Never truncated: the small buffer skips it whole and counts it.
    expect_signal(&mut small, "big", "after").await;
    assert_eq!(small.dropped_signals(), 1);
}

#[tokio::test]
async fn disconnect_without_reconnect_is_reported_then_the_stream_ends() {
    let server = server().await;
    let mut sub = plain(&server).await;
    answered(&server, sub.listen("x", None)).await;
    server.disconnect_all_clients();
    match timeout(PROMPT, sub.recv()).await.unwrap() {
        Some(Err(e)) => assert!(!e.is_recoverable(), "{e:?}"),
        other => panic!("expected the disconnect, got {other:?}"),
    }
    assert!(timeout(PROMPT, sub.recv()).await.unwrap().is_none());
}

#[tokio::test]
async fn reconnect_restores_every_subscription_and_reports_the_gap() {
    let Some(server) = signal_server().await else {
        return;
    };
    let addr = server.addr().to_string();
    let mut sub: SignalConn = listener(&server, generation::reconnecting()).await;
    sub.listen("r.>", None).await.unwrap();
    sub.listen("jobs", Some("g")).await.unwrap();
    sub.listen("gone", None).await.unwrap();
    sub.unlisten("gone", None).await.unwrap();

    for round in 0..2 {
        server.disconnect_all_clients();
        match timeout(PROMPT, sub.recv()).await.unwrap() {
            Some(Err(e)) => assert!(!e.is_recoverable(), "{e:?}"),
            other => panic!("expected the disconnect, got {other:?}"),
        }
        // The handle fails fast during the gap and works once reconnected,
        // before the consumer has read the Reconnected event.
        timeout(PROMPT, async {
            loop {
                match sub.emit("r.probe", "p").await {
                    Ok(n) => break assert_eq!(n, 1),
                    Err(Error::Disconnected) => tokio::time::sleep(Duration::from_millis(10)).await,
                    Err(e) => panic!("{e:?}"),
                }
            }
        })
        .await
        .expect("reconnected");
        match timeout(PROMPT, sub.recv()).await.unwrap() {
            Some(Ok(SignalEvent::Reconnected { gap, attempts })) => {
                assert!(attempts >= 1);
                assert!(gap < PROMPT);
            }
            other => panic!("expected Reconnected, got {other:?}"),
        }
        expect_signal(&mut sub, "r.probe", "p").await;
        let o = ConnectOptions::default();
        assert_eq!(
            emit(&addr, "r.a.b", "back", &o).await.unwrap(),
            1,
            "{round}"
        );
        assert_eq!(emit(&addr, "jobs", "job", &o).await.unwrap(), 1);
        assert_eq!(emit(&addr, "gone", "no", &o).await.unwrap(), 0);
        expect_signal(&mut sub, "r.a.b", "back").await;
        expect_signal(&mut sub, "jobs", "job").await;
        // The handle works on the new connection.
        assert_eq!(sub.emit("r.self", "me").await.unwrap(), 1);
        expect_signal(&mut sub, "r.self", "me").await;
    }
}

#[tokio::test]
async fn reconnect_gives_up_after_max_attempts() {
    let server = server().await;
    let opts = SignalOptions {
        reconnect: Some(Reconnect {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            max_attempts: Some(3),
        }),
        ..SignalOptions::default()
    };
    let mut sub: SignalConn = listener(&server, opts).await;
    answered(&server, sub.listen("x", None)).await;
    server.stop().await;
    let mut errors = 0;
    timeout(PROMPT, async {
        while let Some(item) = sub.recv().await {
            assert!(item.is_err(), "{item:?}");
            errors += 1;
        }
    })
    .await
    .unwrap();
    assert_eq!(errors, 2, "the disconnect, then the last failed attempt");
    assert!(matches!(sub.emit("x", "y").await, Err(Error::Disconnected)));
}

#[tokio::test]
async fn one_shot_emit() {
    let Some(server) = signal_server().await else {
        return;
    };
    let mut sub = plain(&server).await;
    sub.listen("news.*", None).await.unwrap();
    let addr = server.addr().to_string();
    let n = emit(&addr, "news.today", "it works", &ConnectOptions::default())
        .await
        .unwrap();
    assert_eq!(n, 1);
    expect_signal(&mut sub, "news.today", "it works").await;
    assert_eq!(
        emit(&addr, "news", "nobody", &ConnectOptions::default())
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn handles_work_from_other_tasks_and_close_with_the_last_one() {
    let server = server().await;
    let mut sub = plain(&server).await;
    let h = sub.handle();
    let listener_task = tokio::spawn(async move { h.listen("t.*", None).await });
    answered(&server, async { listener_task.await.unwrap() }).await;
    let h2 = sub.handle();
    let emitter = tokio::spawn(async move { h2.emit("t.1", "from a task").await });
    if let Some(n) = answered(&server, async { emitter.await.unwrap() }).await {
        assert_eq!(n, 1);
        expect_signal(&mut sub, "t.1", "from a task").await;
    }
    assert_eq!(server.connection_count(), 1);
    drop(sub);
    timeout(PROMPT, async {
        while server.connection_count() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("connection closed once every handle is gone");
}

/// A server without signals (v1.10.0, v2) answers `listen`, `unlisten` and
/// `signal` with `error` and keeps the connection: each of them gets
/// `Error::Server(ServerError::Error)` promptly, from the connection, its
/// handles and the one-shot `emit`; nothing is delivered, nothing is
/// resubscribed after a reconnect, and the same holds on the new connection.
#[tokio::test]
async fn without_signals_each_command_is_a_server_error() {
    let server = server().await;
    if !generation::lacks_signals(&server) {
        return;
    }
    let addr = server.addr().to_string();
    let mut sub: SignalConn = listener(&server, generation::reconnecting()).await;
    for round in 0..2 {
        answered(&server, sub.listen("a.*", None)).await;
        answered(&server, sub.listen("jobs", Some("g"))).await;
        answered(&server, sub.unlisten("a.*", None)).await;
        answered(&server, sub.emit("a.b", "x")).await;
        let handle = sub.handle();
        let task = tokio::spawn(async move { handle.emit("a.b", "from a task").await });
        answered(&server, async { task.await.unwrap() }).await;
        answered(&server, emit(&addr, "a.b", "x", &ConnectOptions::default())).await;
        assert!(
            sub.try_recv().is_none(),
            "round {round}: connected, nothing delivered"
        );
        if round == 0 {
            server.disconnect_all_clients();
            match timeout(PROMPT, sub.recv()).await.unwrap() {
                Some(Err(e)) => assert!(!e.is_recoverable(), "{e:?}"),
                other => panic!("expected the disconnect, got {other:?}"),
            }
            match timeout(PROMPT, sub.recv()).await.unwrap() {
                Some(Ok(SignalEvent::Reconnected { attempts, .. })) => assert!(attempts >= 1),
                other => panic!("expected Reconnected, got {other:?}"),
            }
        }
    }
}
