//! Signals on the blocking host (threads, no async runtime) against the
//! testkit: the iterator, handles on other threads, matching, groups,
//! heartbeat, slow consumers, large payloads, reconnect, one-shot emit.

use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use dflockd_client::Error;
use dflockd_client::blocking::{BlockingConnection, ConnectOptions};
use dflockd_client::blocking::{MAX_SIGNAL_LINE, Reconnect, Signal, SignalEvent, SignalOptions};
use dflockd_client::blocking::{SignalConn, emit};
use dflockd_client::protocol::{Arg, InvalidArgument, Rule};
use dflockd_testkit::TestServer;

/// Generous bound on anything that should happen promptly.
const PROMPT: Duration = Duration::from_secs(15);

fn server() -> TestServer {
    TestServer::builder()
        .start_blocking()
        .expect("start testkit")
}

fn listener<const N: usize, const P: usize>(
    server: &TestServer,
    opts: SignalOptions,
) -> SignalConn<N, P> {
    SignalConn::connect(server.addr(), &ConnectOptions::default(), opts).expect("connect")
}

fn plain(server: &TestServer) -> SignalConn {
    listener(server, SignalOptions::default())
}

fn next_signal<const N: usize, const P: usize>(conn: &SignalConn<N, P>) -> Signal {
    match conn.recv_timeout(PROMPT) {
        Ok(Ok(SignalEvent::Signal(s))) => s,
        other => panic!("expected a signal, got {other:?}"),
    }
}

fn expect_signal<const N: usize, const P: usize>(
    conn: &SignalConn<N, P>,
    channel: &str,
    payload: &str,
) {
    let s = next_signal(conn);
    assert_eq!((s.channel.as_str(), s.payload.as_str()), (channel, payload));
}

#[test]
fn iterator_with_listen_and_emit_from_other_threads() {
    let server = server();
    let sub = plain(&server);
    let handle = sub.handle();
    std::thread::spawn(move || handle.listen("orders.>", None))
        .join()
        .unwrap()
        .unwrap();
    let handle = sub.handle();
    let publisher = std::thread::spawn(move || {
        (0..20)
            .map(|i| handle.emit("orders.eu", &format!("order {i}")).unwrap())
            .sum::<u64>()
    });
    let got: Vec<Signal> = sub
        .take(20)
        .map(|item| item.unwrap().into_signal().unwrap())
        .collect();
    assert_eq!(publisher.join().unwrap(), 20);
    for (i, s) in got.iter().enumerate() {
        assert_eq!(s.channel, "orders.eu");
        assert_eq!(s.payload, format!("order {i}"));
    }
}

#[test]
fn matching_overlap_counts_and_unlisten() {
    let server = server();
    let sub = plain(&server);
    let publisher = plain(&server);
    sub.listen("a.b", None).unwrap();
    sub.listen("a.*", None).unwrap();
    sub.listen("a.>", None).unwrap();
    sub.listen("x.*.z", None).unwrap();
    assert_eq!(
        publisher.emit("a.b", "one").unwrap(),
        1,
        "one per connection"
    );
    assert_eq!(publisher.emit("a.b.c", "two").unwrap(), 1);
    assert_eq!(publisher.emit("a", "none").unwrap(), 0);
    assert_eq!(publisher.emit("x.y.z", "three").unwrap(), 1);
    assert_eq!(publisher.emit("x.y.y", "none").unwrap(), 0);
    expect_signal(&sub, "a.b", "one");
    expect_signal(&sub, "a.b.c", "two");
    expect_signal(&sub, "x.y.z", "three");
    sub.unlisten("x.*.z", None).unwrap();
    assert_eq!(publisher.emit("x.y.z", "gone").unwrap(), 0);
    assert!(matches!(
        sub.recv_timeout(Duration::from_millis(1)),
        Err(RecvTimeoutError::Timeout)
    ));
}

#[test]
fn queue_group_round_robin_across_three_members() {
    let server = server();
    let members: Vec<SignalConn> = (0..3).map(|_| plain(&server)).collect();
    for m in &members {
        m.listen("jobs", Some("workers")).unwrap();
        m.listen("end", None).unwrap();
    }
    let opts = ConnectOptions::default();
    for i in 0..9 {
        assert_eq!(
            emit(server.addr(), "jobs", &format!("job {i}"), &opts).unwrap(),
            1
        );
    }
    assert_eq!(emit(server.addr(), "end", "end", &opts).unwrap(), 3);
    let mut all = Vec::new();
    for m in &members {
        let mut got = Vec::new();
        loop {
            let s = next_signal(m);
            if s.channel == "end" {
                break;
            }
            got.push(s.payload);
        }
        assert_eq!(got.len(), 3, "{got:?}");
        all.extend(got);
    }
    all.sort();
    let mut want: Vec<String> = (0..9).map(|i| format!("job {i}")).collect();
    want.sort();
    assert_eq!(all, want);
}

#[test]
fn heartbeat_keeps_an_idle_listener_alive() {
    let server = TestServer::builder()
        .read_timeout(Duration::from_secs(1))
        .start_blocking()
        .unwrap();
    // Control: a silent connection is closed by the server.
    let mut idle = BlockingConnection::<256, 256>::connect(server.addr(), &Default::default())
        .expect("connect");
    idle.listen("hb", None).unwrap();
    assert!(idle.next_signal(PROMPT).is_err(), "idle connection closed");

    let opts = SignalOptions {
        heartbeat: Duration::from_millis(300),
        read_timeout: Duration::from_secs(1),
        ..SignalOptions::default()
    };
    let sub: SignalConn = listener(&server, opts);
    sub.listen("hb", None).unwrap();
    // Idle well past the read timeout: the sleep is the point of the test.
    std::thread::sleep(Duration::from_secs(3));
    assert!(sub.try_recv().is_none(), "no error: still connected");
    assert_eq!(
        emit(server.addr(), "hb", "alive", &Default::default()).unwrap(),
        1
    );
    expect_signal(&sub, "hb", "alive");
}

#[test]
fn a_consumer_that_never_reads_is_dropped_and_told() {
    let server = server();
    let opts = SignalOptions {
        queue: 2,
        ..SignalOptions::default()
    };
    let slow: SignalConn<MAX_SIGNAL_LINE, { 2 * MAX_SIGNAL_LINE }> = listener(&server, opts);
    slow.listen("flood", None).unwrap();
    let publisher = plain(&server);
    let payload = "y".repeat(60_000);
    let dropped = (0..5000).any(|_| publisher.emit("flood", &payload).unwrap() == 0);
    assert!(dropped, "server never dropped the slow consumer");
    let mut signals = 0;
    let err = loop {
        match slow.recv_timeout(PROMPT) {
            Ok(Ok(SignalEvent::Signal(s))) => {
                assert_eq!(s.payload.len(), 60_000);
                signals += 1;
            }
            Ok(Ok(other)) => panic!("unexpected {other:?}"),
            Ok(Err(e)) => break e,
            Err(e) => panic!("no disconnect reported: {e:?}"),
        }
    };
    assert!(!err.is_recoverable(), "{err:?}");
    assert!(signals > 0);
    assert!(matches!(
        slow.recv_timeout(PROMPT),
        Err(RecvTimeoutError::Disconnected)
    ));
}

#[test]
fn invalid_arguments_are_rejected_before_sending() {
    let server = server();
    let sub = plain(&server);
    let invalid = |r: Result<(), Error<std::io::Error>>, arg, rule| match r {
        Err(Error::InvalidArgument(InvalidArgument { arg: a, rule: r })) => {
            assert_eq!((a, r), (arg, rule))
        }
        other => panic!("{other:?}"),
    };
    invalid(sub.listen("a.>.b", None), Arg::Pattern, Rule::BadWildcard);
    invalid(sub.listen("a.b*", None), Arg::Pattern, Rule::BadWildcard);
    invalid(sub.unlisten("a.b>", None), Arg::Pattern, Rule::BadWildcard);
    invalid(sub.emit("a.*", "x").map(drop), Arg::Channel, Rule::Wildcard);
    invalid(
        emit("127.0.0.1:1", "a.>", "x", &Default::default()).map(drop),
        Arg::Channel,
        Rule::Wildcard,
    );
    assert!(server.stats().signal_channels.is_empty());
    sub.listen("a.*.c", None).unwrap();
    assert_eq!(server.stats().signal_channels.len(), 1);
}

#[test]
fn payloads_round_trip_and_large_ones_need_a_large_buffer() {
    let server = server();
    let big: SignalConn<MAX_SIGNAL_LINE, { 2 * MAX_SIGNAL_LINE }> =
        listener(&server, SignalOptions::default());
    let small: SignalConn<512, 2048> = listener(&server, SignalOptions::default());
    big.listen("p", None).unwrap();
    small.listen("p", None).unwrap();
    let large: String = "{\"k\": \"ü v\"} ".chars().cycle().take(60_000).collect();
    let payloads = [
        " spaced  out ",
        "ünïcödé ✓ 🚀",
        r#"{"a": [1, 2, {"b": "c d"}]}"#,
        large.as_str(),
        "after",
    ];
    for p in payloads {
        assert_eq!(emit(server.addr(), "p", p, &Default::default()).unwrap(), 2);
    }
    for p in payloads {
        let s = next_signal(&big);
        assert!(s.payload == p, "payload of {} bytes differs", p.len());
    }
    for p in payloads {
        if p.len() < 500 {
            expect_signal(&small, "p", p);
        }
    }
    assert_eq!(big.dropped_signals(), 0);
    assert_eq!(small.dropped_signals(), 1);
}

#[test]
fn reconnect_restores_subscriptions_and_reports_the_gap() {
    let server = server();
    let opts = SignalOptions {
        reconnect: Some(Reconnect {
            initial_backoff: Duration::from_millis(20),
            ..Reconnect::default()
        }),
        ..SignalOptions::default()
    };
    let sub: SignalConn = listener(&server, opts);
    sub.listen("r.*", None).unwrap();
    sub.listen("q", Some("g")).unwrap();
    server.disconnect_all_clients();
    match sub.recv_timeout(PROMPT) {
        Ok(Err(e)) => assert!(!e.is_recoverable(), "{e:?}"),
        other => panic!("expected the disconnect, got {other:?}"),
    }
    match sub.recv_timeout(PROMPT) {
        Ok(Ok(SignalEvent::Reconnected { gap, attempts })) => {
            assert!(attempts >= 1);
            assert!(gap < PROMPT);
        }
        other => panic!("expected Reconnected, got {other:?}"),
    }
    let o = ConnectOptions::default();
    assert_eq!(emit(server.addr(), "r.x", "back", &o).unwrap(), 1);
    assert_eq!(emit(server.addr(), "q", "job", &o).unwrap(), 1);
    expect_signal(&sub, "r.x", "back");
    expect_signal(&sub, "q", "job");
    assert_eq!(sub.emit("r.y", "self").unwrap(), 1);
    expect_signal(&sub, "r.y", "self");
}

#[test]
fn disconnect_without_reconnect_ends_the_iterator_after_the_error() {
    let server = server();
    let mut sub = plain(&server);
    sub.listen("x", None).unwrap();
    server.disconnect_all_clients();
    match sub.recv_timeout(PROMPT) {
        Ok(Err(e)) => assert!(!e.is_recoverable(), "{e:?}"),
        other => panic!("expected the disconnect, got {other:?}"),
    }
    assert!(sub.next().is_none());
    assert!(matches!(sub.emit("x", "y"), Err(Error::Disconnected)));
}
