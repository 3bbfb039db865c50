extern crate std;

use std::string::String;
use std::vec::Vec;

use super::*;
use crate::protocol::Request;

type Text = heapless::String<16>;

/// A fixed-capacity store, as firmware would keep it: nothing allocated.
#[derive(Debug, Default)]
struct Subs(heapless::Vec<(Text, Option<Text>), 8>);

impl SubscriptionStore for Subs {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn get(&self, index: usize) -> Option<(&str, Option<&str>)> {
        let (pattern, group) = self.0.get(index)?;
        Some((pattern.as_str(), group.as_ref().map(Text::as_str)))
    }
    fn push(&mut self, pattern: &str, group: Option<&str>) {
        let text = |s: &str| Text::try_from(s).expect("test strings fit");
        let entry = (text(pattern), group.map(text));
        self.0.push(entry).expect("the test store has room");
    }
    fn remove(&mut self, index: usize) {
        self.0.remove(index);
    }
}

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

fn hb(secs: u64) -> Heartbeat {
    Heartbeat::new(Duration::from_secs(secs), Duration::from_secs(23)).unwrap()
}

fn policy(max_attempts: Option<u32>) -> Reconnect {
    Reconnect {
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(500),
        max_attempts,
    }
}

fn driver(reconnect: Option<Reconnect>) -> SignalDriver<Subs> {
    SignalDriver::new(hb(15), reconnect, Subs::default(), at(0))
}

fn listen(d: &mut SignalDriver<Subs>, now: u64, pattern: &str, group: Option<&str>) {
    let op = Request::Listen { pattern, group };
    assert_eq!(d.admit(at(now), op), Admit::Send);
    assert!(!d.completed(at(now), op, Outcome::Done, 0));
}

fn subs(d: &SignalDriver<Subs>) -> Vec<(&str, Option<&str>)> {
    (0..d.subscriptions().len())
        .filter_map(|i| d.subscriptions().get(i))
        .collect()
}

/// Takes the driver from a loss at `now` through draining and reporting.
fn lose(d: &mut SignalDriver<Subs>, now: u64, dropped: u64) {
    d.lost(at(now), dropped);
    assert_eq!(d.poll(at(now)), Action::Drain);
    d.drained();
    assert_eq!(d.poll(at(now)), Action::ReportLost);
    d.reported(at(now));
}

#[test]
fn heartbeat_is_due_after_the_interval_without_a_request() {
    let mut d = driver(None);
    assert_eq!(
        d.poll(at(0)),
        Action::Serve {
            heartbeat_at: at(15_000)
        }
    );
    assert_eq!(
        d.poll(at(14_999)),
        Action::Serve {
            heartbeat_at: at(15_000)
        }
    );
    assert_eq!(d.poll(at(15_000)), Action::Ping);
    // The ping counts as sent: the next one is an interval later.
    assert_eq!(
        d.poll(at(15_001)),
        Action::Serve {
            heartbeat_at: at(30_000)
        }
    );
    d.completed(at(15_002), Request::Ping, Outcome::Done, 0);
    // A command also resets the clock.
    assert_eq!(
        d.admit(
            at(20_000),
            Request::Signal {
                channel: "a",
                payload: "x"
            }
        ),
        Admit::Send
    );
    assert_eq!(
        d.poll(at(29_999)),
        Action::Serve {
            heartbeat_at: at(35_000)
        }
    );
    assert_eq!(d.poll(at(35_000)), Action::Ping);
}

#[test]
fn keepalive_alone_and_the_ping_reply() {
    let mut k = Keepalive::new(hb(5), at(1_000));
    assert_eq!(k.due(), at(6_000));
    assert!(!k.is_due(at(5_999)));
    assert!(k.is_due(at(6_000)));
    k.sent(at(7_000));
    assert_eq!(k.due(), at(12_000));
    let old_server: Result<(), Error<()>> = Err(Error::Server(ServerError::Error));
    assert!(keepalive_reply(old_server).is_ok());
    assert!(keepalive_reply::<()>(Err(Error::Disconnected)).is_err());
}

#[test]
fn a_ping_answered_with_anything_else_loses_the_connection() {
    let mut d = driver(None);
    assert_eq!(d.poll(at(15_000)), Action::Ping);
    assert!(d.completed(at(15_010), Request::Ping, Outcome::Failed, 3));
    assert_eq!(d.poll(at(15_010)), Action::Drain);
    assert_eq!(d.dropped(99), 3);
}

#[test]
fn backoff_doubles_up_to_the_cap_and_gives_up_after_max_attempts() {
    let r = Reconnect::default();
    assert_eq!(r.backoff(1), Duration::from_millis(100));
    assert_eq!(r.backoff(2), Duration::from_millis(200));
    assert_eq!(r.backoff(4), Duration::from_millis(800));
    assert_eq!(r.backoff(10), Duration::from_secs(5));
    assert_eq!(r.backoff(u32::MAX), Duration::from_secs(5));
    assert!(!r.gives_up_after(1000));

    // The driver's schedule: 100, 200, 400, 500 (cap) ms after each failure.
    let mut d = driver(Some(policy(Some(4))));
    lose(&mut d, 1_000, 0);
    let mut now = 1_000;
    let mut waits = Vec::new();
    for attempt in 1..=4 {
        let Action::BackOff { until } = d.poll(at(now)) else {
            panic!("expected a backoff before attempt {attempt}");
        };
        waits.push(until.as_millis() - now);
        // Not a moment early.
        assert_eq!(d.poll(at(until.as_millis() - 1)), Action::BackOff { until });
        now = until.as_millis();
        assert_eq!(d.poll(at(now)), Action::Connect { attempt });
        now += 7;
        d.connect_failed(at(now));
    }
    assert_eq!(waits, [100, 200, 400, 500]);
    assert_eq!(d.poll(at(now)), Action::GiveUp);
    assert_eq!(d.poll(at(now)), Action::End);
}

#[test]
fn without_a_policy_the_stream_ends_after_reporting() {
    let mut d = driver(None);
    lose(&mut d, 500, 0);
    assert_eq!(d.poll(at(10_000)), Action::End);
}

#[test]
fn received_signals_are_delivered_before_the_error() {
    let mut d = driver(Some(policy(None)));
    d.lost(at(100), 0);
    // Draining holds until the host says it handed everything over.
    assert_eq!(d.poll(at(100)), Action::Drain);
    assert_eq!(d.poll(at(5_000)), Action::Drain);
    d.reported(at(5_000)); // out of order: ignored
    assert_eq!(d.poll(at(5_000)), Action::Drain);
    d.drained();
    assert_eq!(d.poll(at(5_000)), Action::ReportLost);
    d.reported(at(5_000));
    assert_eq!(d.poll(at(5_000)), Action::BackOff { until: at(5_100) });
}

#[test]
fn reconnect_resubscribes_in_order_then_reports_the_gap() {
    let mut d = driver(Some(policy(None)));
    listen(&mut d, 1, "a.>", None);
    listen(&mut d, 2, "jobs", Some(" workers "));
    listen(&mut d, 3, "b", None);
    listen(&mut d, 4, "a.>", None); // already held
    lose(&mut d, 1_000, 0);
    assert_eq!(d.poll(at(1_100)), Action::Connect { attempt: 1 });
    d.connected(at(1_150));
    let mut made = Vec::new();
    let mut now = 1_150;
    // Bounded: a driver that never finishes resubscribing fails, not hangs.
    for step in 0.. {
        assert!(step < 10, "still resubscribing after {made:?}");
        match d.poll(at(now)) {
            Action::Resubscribe { pattern, group } => {
                made.push((String::from(pattern), group.map(String::from)));
                now += 10;
                d.resubscribed(at(now), Outcome::Done);
            }
            Action::Reconnected { gap, attempts } => {
                assert_eq!(gap, Duration::from_millis(now - 1_000));
                assert_eq!(attempts, 1);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        made,
        [
            (String::from("a.>"), None),
            (String::from("jobs"), Some(String::from("workers"))),
            (String::from("b"), None),
        ]
    );
    assert!(d.is_connected());
    // The subscriptions are still held for the next reconnect.
    assert_eq!(subs(&d).len(), 3);
}

#[test]
fn a_failed_resubscription_is_a_failed_attempt() {
    let mut d = driver(Some(policy(Some(2))));
    listen(&mut d, 1, "a", None);
    lose(&mut d, 0, 0);
    assert_eq!(d.poll(at(100)), Action::Connect { attempt: 1 });
    d.connected(at(110));
    assert!(matches!(d.poll(at(110)), Action::Resubscribe { .. }));
    d.resubscribed(at(120), Outcome::Broken);
    assert_eq!(d.poll(at(120)), Action::BackOff { until: at(320) });
    assert_eq!(d.poll(at(320)), Action::Connect { attempt: 2 });
    d.connect_failed(at(330));
    assert_eq!(d.poll(at(330)), Action::GiveUp);
}

#[test]
fn listen_and_emit_are_refused_while_disconnected_and_unlisten_forgets() {
    let mut d = driver(Some(policy(None)));
    listen(&mut d, 1, "a", None);
    listen(&mut d, 2, "b", Some("g"));
    lose(&mut d, 10, 0);
    let l = Request::Listen {
        pattern: "c",
        group: None,
    };
    let e = Request::Signal {
        channel: "a",
        payload: "x",
    };
    assert_eq!(d.admit(at(20), l), Admit::Refuse);
    assert_eq!(d.admit(at(20), e), Admit::Refuse);
    let u = Request::Unlisten {
        pattern: "b",
        group: Some("g\t"),
    };
    assert_eq!(d.admit(at(20), u), Admit::Done);
    assert_eq!(subs(&d), [("a", None)]);
    // Only the remaining one is made again.
    assert_eq!(d.poll(at(110)), Action::Connect { attempt: 1 });
    d.connected(at(110));
    assert_eq!(
        d.poll(at(110)),
        Action::Resubscribe {
            pattern: "a",
            group: None
        }
    );
    d.resubscribed(at(111), Outcome::Done);
    assert!(matches!(d.poll(at(111)), Action::Reconnected { .. }));
    // Connected again: commands are sent.
    assert_eq!(d.admit(at(112), e), Admit::Send);
}

#[test]
fn subscriptions_follow_the_replies() {
    let mut d = driver(None);
    listen(&mut d, 1, "a.>", None);
    listen(&mut d, 1, "a.>", Some("g"));
    // A refused listen is not remembered.
    let bad = Request::Listen {
        pattern: "c",
        group: None,
    };
    assert_eq!(d.admit(at(2), bad), Admit::Send);
    assert!(!d.completed(at(2), bad, Outcome::Failed, 0));
    assert_eq!(subs(&d), [("a.>", None), ("a.>", Some("g"))]);
    let u = Request::Unlisten {
        pattern: "a.>",
        group: None,
    };
    d.completed(at(3), u, Outcome::Done, 0);
    assert_eq!(subs(&d), [("a.>", Some("g"))]);
    // A failed request keeps the connection; a broken one loses it.
    assert!(d.is_connected());
    assert!(d.completed(at(4), u, Outcome::Broken, 2));
    assert!(!d.is_connected());
    // Once lost, nothing more is lost.
    assert!(!d.completed(at(5), u, Outcome::Broken, 2));
}

#[test]
fn drops_are_kept_over_reconnects() {
    let mut d = driver(Some(policy(None)));
    assert_eq!(d.dropped(4), 4);
    lose(&mut d, 0, 4);
    assert_eq!(d.dropped(4), 4); // the lost connection's count is in
    assert_eq!(d.poll(at(100)), Action::Connect { attempt: 1 });
    d.connected(at(100));
    assert!(matches!(d.poll(at(100)), Action::Reconnected { .. }));
    assert_eq!(d.dropped(0), 4);
    assert_eq!(d.dropped(2), 6);
    lose(&mut d, 200, 2);
    assert_eq!(d.dropped(0), 6);
}

#[test]
fn outcome_of_a_result() {
    let ok: Result<u64, Error<()>> = Ok(1);
    assert_eq!(Outcome::of(&ok, true), Outcome::Done);
    let refused: Result<u64, Error<()>> = Err(Error::Server(ServerError::Error));
    assert_eq!(Outcome::of(&refused, true), Outcome::Failed);
    assert_eq!(Outcome::of(&refused, false), Outcome::Broken);
    let gone: Result<u64, Error<()>> = Err(Error::Disconnected);
    assert_eq!(Outcome::of(&gone, true), Outcome::Broken);
}
