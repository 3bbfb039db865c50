//! Signals on the blocking host (threads, no async runtime) against the
//! testkit or a real server (`DFLOCKD_REAL_SERVER`): the iterator, handles
//! on other threads, matching, groups, heartbeat, slow consumers, large
//! payloads, reconnect, one-shot emit. On a server without signals (v1.10.0,
//! v2) the tests that need them print why they skip; the others assert what
//! the client gets there instead: the server's `error` on a connection that
//! stays up.

use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use dflockd_client::Error;
use dflockd_client::blocking::{BlockingConnection, ConnectOptions};
use dflockd_client::blocking::{MAX_SIGNAL_LINE, Signal, SignalEvent, SignalOptions};
use dflockd_client::blocking::{SignalConn, emit};
use dflockd_client::protocol::{Arg, InvalidArgument, Rule};
use dflockd_testkit::TestServer;
use generation::answered;

#[path = "support/generation.rs"]
mod generation;

/// Generous bound on anything that should happen promptly.
const PROMPT: Duration = Duration::from_secs(15);

fn server() -> TestServer {
    TestServer::builder()
        .start_blocking()
        .expect("start testkit")
}

/// A server for a test that needs signals; `None`, with the reason printed,
/// on one without them (see `without_signals_each_command_is_a_server_error`).
fn signal_server() -> Option<TestServer> {
    let server = server();
    generation::has_signals(&server).then_some(server)
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
    let Some(server) = signal_server() else {
        return;
    };
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
    let Some(server) = signal_server() else {
        return;
    };
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
    let Some(server) = signal_server() else {
        return;
    };
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
    answered(&server, idle.listen("hb", None));
    assert!(idle.next_signal(PROMPT).is_err(), "idle connection closed");

    let opts = SignalOptions {
        heartbeat: Duration::from_millis(300),
        read_timeout: Duration::from_secs(1),
        ..SignalOptions::default()
    };
    let sub: SignalConn = listener(&server, opts);
    answered(&server, sub.listen("hb", None));
    // Idle well past the read timeout: the sleep is the point of the test.
    std::thread::sleep(Duration::from_secs(3));
    assert!(sub.try_recv().is_none(), "no error: still connected");
    // v1.10.0 answers each `ping` with `error`, which resets its idle timer
    // all the same: there the connection still answers afterwards.
    match answered(
        &server,
        emit(server.addr(), "hb", "alive", &Default::default()),
    ) {
        Some(n) => {
            assert_eq!(n, 1);
            expect_signal(&sub, "hb", "alive");
        }
        None => {
            answered(&server, sub.listen("hb", None));
            assert!(sub.try_recv().is_none(), "no error: still connected");
        }
    }
}

#[test]
fn a_consumer_that_never_reads_is_dropped_and_told() {
    let Some(server) = signal_server() else {
        return;
    };
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
    if answered(&server, sub.listen("a.*.c", None)).is_some() {
        assert_eq!(server.stats().signal_channels.len(), 1);
    }
}

#[test]
fn payloads_round_trip_and_large_ones_need_a_large_buffer() {
    let Some(server) = signal_server() else {
        return;
    };
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
    let Some(server) = signal_server() else {
        return;
    };
    let sub: SignalConn = listener(&server, generation::reconnecting());
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
    answered(&server, sub.listen("x", None));
    server.disconnect_all_clients();
    match sub.recv_timeout(PROMPT) {
        Ok(Err(e)) => assert!(!e.is_recoverable(), "{e:?}"),
        other => panic!("expected the disconnect, got {other:?}"),
    }
    assert!(sub.next().is_none());
    assert!(matches!(sub.emit("x", "y"), Err(Error::Disconnected)));
}

/// A server without signals (v1.10.0, v2) answers `listen`, `unlisten` and
/// `signal` with `error` and keeps the connection: each of them gets
/// `Error::Server(ServerError::Error)`, from the connection, a handle on
/// another thread and the one-shot `emit`; nothing is delivered, nothing is
/// resubscribed after a reconnect, and the same holds on the new connection.
#[test]
fn without_signals_each_command_is_a_server_error() {
    let server = server();
    if !generation::lacks_signals(&server) {
        return;
    }
    let sub: SignalConn = listener(&server, generation::reconnecting());
    for round in 0..2 {
        answered(&server, sub.listen("a.*", None));
        answered(&server, sub.listen("jobs", Some("g")));
        answered(&server, sub.unlisten("a.*", None));
        answered(&server, sub.emit("a.b", "x"));
        let handle = sub.handle();
        let r = std::thread::spawn(move || handle.emit("a.b", "from a thread")).join();
        answered(&server, r.unwrap());
        answered(
            &server,
            emit(server.addr(), "a.b", "x", &Default::default()),
        );
        assert!(
            sub.try_recv().is_none(),
            "round {round}: connected, nothing delivered"
        );
        if round == 0 {
            server.disconnect_all_clients();
            match sub.recv_timeout(PROMPT) {
                Ok(Err(e)) => assert!(!e.is_recoverable(), "{e:?}"),
                other => panic!("expected the disconnect, got {other:?}"),
            }
            match sub.recv_timeout(PROMPT) {
                Ok(Ok(SignalEvent::Reconnected { attempts, .. })) => assert!(attempts >= 1),
                other => panic!("expected Reconnected, got {other:?}"),
            }
        }
    }
}
