extern crate std;

use std::vec::Vec;

use embassy_futures::block_on;

use super::*;
use crate::protocol::{Arg, InvalidArgument, Rule, Token};
use crate::testing::{ScriptError, Scripted};

const TOK: &str = "0123456789abcdef0123456789abcdef";

fn tok() -> Token {
    TOK.parse().unwrap()
}

type Conn<const N: usize = 128, const P: usize = 0> = Connection<Scripted, N, P>;

fn conn(input: &str) -> Conn {
    Connection::new(Scripted::new(input.as_bytes()))
}

fn written<const N: usize, const P: usize>(
    c: &mut Connection<Scripted, N, P>,
) -> std::string::String {
    std::string::String::from_utf8(c.transport_mut().written.clone()).unwrap()
}

#[test]
fn typed_commands_round_trip() {
    let t = tok();
    let grant = Grant {
        token: t,
        lease: 30,
    };
    let input = std::format!(
        "ok\nok {TOK} 30\r\ntimeout\nok\nok 12\nacquired {TOK} 30\nqueued\nok {TOK} 30\nok\nok\nok\nok 3\n"
    );
    let mut c = conn(&input);
    block_on(async {
        c.auth("secret").await.unwrap();
        assert_eq!(
            c.acquire(Kind::Lock, "k", 10, Some(30)).await.unwrap(),
            Some(grant)
        );
        assert_eq!(
            c.acquire(Kind::Semaphore { limit: 2 }, "s", 0, None)
                .await
                .unwrap(),
            None
        );
        c.release(Kind::Lock, "k", &t).await.unwrap();
        assert_eq!(c.renew(Kind::Lock, "k", &t, None).await.unwrap(), 12);
        assert_eq!(
            c.enqueue(Kind::Lock, "k", None).await.unwrap(),
            Enqueued::Acquired(grant)
        );
        assert_eq!(
            c.enqueue(Kind::Lock, "q", None).await.unwrap(),
            Enqueued::Queued
        );
        assert_eq!(c.wait(Kind::Lock, "q", 5).await.unwrap(), Some(grant));
        c.ping().await.unwrap();
        c.listen("a.*", Some("g")).await.unwrap();
        c.unlisten("a.*", Some("g")).await.unwrap();
        assert_eq!(c.emit("a.b", "hi there").await.unwrap(), 3);
        assert!(matches!(c.ping().await, Err(Error::Disconnected)));
    });
    let w = written(&mut c);
    assert!(
        w.starts_with("auth\n_\nsecret\nl\nk\n10 30\nsl\ns\n0 2\n"),
        "{w}"
    );
    assert!(w.contains(&std::format!(
        "r\nk\n{TOK}\nn\nk\n{TOK}\ne\nk\n\ne\nq\n\nw\nq\n5\n"
    )));
    assert!(w.ends_with(
        "ping\n_\n_\nlisten\na.*\ng\nunlisten\na.*\ng\nsignal\na.b\nhi there\nping\n_\n_\n"
    ));
}

#[test]
fn one_write_per_request() {
    let mut c = conn(&std::format!("ok {TOK} 33\nok\n"));
    block_on(async {
        c.acquire(Kind::Lock, "k", 10, None).await.unwrap();
        c.release(Kind::Lock, "k", &tok()).await.unwrap();
    });
    assert_eq!(c.transport_mut().writes, 2);
}

#[test]
fn large_requests_are_written_in_pieces() {
    // A payload larger than the line buffer is still sent whole.
    let payload = "p".repeat(1000);
    let mut c = conn("ok 1\n");
    assert_eq!(block_on(c.emit("ch", &payload)).unwrap(), 1);
    assert_eq!(written(&mut c), std::format!("signal\nch\n{payload}\n"));
}

#[test]
fn split_writes_are_completed() {
    let mut c = conn("ok\n");
    c.transport_mut().write_chunk = 1;
    block_on(c.listen("a.>", None)).unwrap();
    assert_eq!(written(&mut c), "listen\na.>\n\n");
}

#[test]
fn statuses_become_typed_errors() {
    type Check = fn(&Error<ScriptError>) -> bool;
    let cases: &[(&str, Check, bool)] = &[
        (
            "error\n",
            |e| matches!(e, Error::Server(ServerError::Error)),
            true,
        ),
        ("error_auth\n", |e| matches!(e, Error::Auth), false),
        (
            "error_max_locks\n",
            |e| matches!(e, Error::Server(ServerError::MaxLocks)),
            true,
        ),
        (
            "error_max_waiters\n",
            |e| matches!(e, Error::Server(ServerError::MaxWaiters)),
            true,
        ),
        (
            "error_limit_mismatch\n",
            |e| matches!(e, Error::Server(ServerError::LimitMismatch)),
            true,
        ),
        (
            "error_not_enqueued\n",
            |e| matches!(e, Error::Server(ServerError::NotEnqueued)),
            true,
        ),
        (
            "error_already_enqueued\n",
            |e| matches!(e, Error::Server(ServerError::AlreadyEnqueued)),
            true,
        ),
        (
            "error_lease_expired\n",
            |e| matches!(e, Error::Server(ServerError::LeaseExpired)),
            true,
        ),
        (
            "error_draining\n",
            |e| matches!(e, Error::Server(ServerError::Draining)),
            false,
        ),
        (
            "error_not_leader h:1\n",
            |e| matches!(e, Error::Server(ServerError::NotLeader(Some(a))) if a == "h:1"),
            true,
        ),
        (
            "error_brand_new\n",
            |e| matches!(e, Error::Server(ServerError::Unknown(s)) if s == "error_brand_new"),
            true,
        ),
    ];
    for (line, check, usable) in cases {
        let mut c = conn(&std::format!("{line}ok\n"));
        let err = block_on(c.acquire(Kind::Lock, "k", 1, None)).unwrap_err();
        assert!(check(&err), "{line}: {err:?}");
        assert_eq!(err.is_recoverable(), *usable, "{line}");
        assert_eq!(c.is_usable(), *usable, "{line}");
        if *usable {
            block_on(c.ping()).unwrap();
        } else {
            assert!(matches!(block_on(c.ping()), Err(Error::Unusable)));
        }
    }
}

#[test]
fn invalid_arguments_send_nothing_and_keep_the_connection() {
    let mut c = conn("ok\n");
    block_on(async {
        let e = c.acquire(Kind::Lock, "bad key", 1, None).await.unwrap_err();
        assert!(matches!(
            e,
            Error::InvalidArgument(InvalidArgument {
                arg: Arg::Key,
                rule: Rule::Whitespace
            })
        ));
        assert!(e.is_recoverable());
        let e = c.emit("a.*", "x").await.unwrap_err();
        assert!(matches!(
            e,
            Error::InvalidArgument(InvalidArgument {
                arg: Arg::Channel,
                rule: Rule::Wildcard
            })
        ));
        let e = c
            .acquire(Kind::Semaphore { limit: 0 }, "k", 1, None)
            .await
            .unwrap_err();
        assert!(matches!(
            e,
            Error::InvalidArgument(InvalidArgument {
                arg: Arg::Limit,
                rule: Rule::Zero
            })
        ));
        assert!(c.transport_mut().written.is_empty());
        c.ping().await.unwrap();
    });
}

#[test]
fn malformed_reply_is_a_protocol_error() {
    for line in ["ok nothex 3\n", "ok\n", "ok \u{fffd}\n", "queued\n"] {
        let mut c = conn(line);
        let e = block_on(c.acquire(Kind::Lock, "k", 1, None)).unwrap_err();
        assert!(matches!(e, Error::Protocol(_)), "{line:?}: {e:?}");
        assert!(!c.is_usable());
    }
    let mut c: Conn = Connection::new(Scripted::new(&b"ok \xff\xfe\n"[..]));
    let e = block_on(c.ping()).unwrap_err();
    assert!(matches!(e, Error::Protocol(ProtocolError::NotUtf8)));
}

#[test]
fn byte_at_a_time_reads() {
    let input = std::format!("sig a.b x y\nok {TOK} 7\r\nsig c d\nok 5\n");
    let mut c: Conn<64, 64> = Connection::new(Scripted::byte_at_a_time(input.as_bytes()));
    block_on(async {
        let g = c.acquire(Kind::Lock, "k", 1, None).await.unwrap().unwrap();
        assert_eq!(g.lease, 7);
        assert_eq!(c.renew(Kind::Lock, "k", &g.token, None).await.unwrap(), 5);
    });
    assert_eq!(c.queued_signals(), 2);
    let s = c.try_next_signal().unwrap();
    assert_eq!((s.channel, s.payload), ("a.b", "x y"));
    let s = c.try_next_signal().unwrap();
    assert_eq!((s.channel, s.payload), ("c", "d"));
    assert!(c.try_next_signal().is_none());
}

#[test]
fn eof_at_every_offset_is_disconnected() {
    let full = std::format!("ok {TOK} 30\n");
    for cut in 0..full.len() {
        let mut c = conn(&full[..cut]);
        let e = block_on(c.acquire(Kind::Lock, "k", 1, None)).unwrap_err();
        assert!(matches!(e, Error::Disconnected), "cut {cut}: {e:?}");
        assert!(!e.is_recoverable());
        assert!(matches!(block_on(c.ping()), Err(Error::Unusable)));
    }
}

#[test]
fn transport_errors_keep_the_transport_error() {
    let mut c = conn("ok");
    c.transport_mut().fail_at_end = true;
    assert!(matches!(block_on(c.ping()), Err(Error::Io(ScriptError))));
}

#[test]
fn reply_longer_than_buffer() {
    let long = std::format!("error_{}\nok\n", "x".repeat(200));
    let mut c: Conn<64> = Connection::new(Scripted::new(long.as_bytes()));
    let e = block_on(c.ping()).unwrap_err();
    assert!(matches!(e, Error::LineTooLong));
    assert!(!e.is_recoverable());
    assert!(matches!(block_on(c.ping()), Err(Error::Unusable)));
}

#[test]
fn over_long_push_is_skipped_and_counted() {
    let input = std::format!("sig ch {}\nsig ch small\nok\n", "p".repeat(500));
    for chunk in [1, 7, usize::MAX] {
        let mut c: Conn<64, 256> = Connection::new(Scripted::new(input.as_bytes()));
        c.transport_mut().read_chunk = chunk;
        block_on(c.ping()).unwrap();
        assert_eq!(c.dropped_signals(), 1);
        assert_eq!(c.try_next_signal().unwrap().payload, "small");
    }
}

#[test]
fn full_push_queue_drops_and_counts() {
    // Each record is 4 + len("ch nn") = 9 bytes; 32 bytes hold 3.
    let mut input = std::string::String::new();
    for i in 0..5 {
        input.push_str(&std::format!("sig ch {i:02}\n"));
    }
    input.push_str("ok\n");
    let mut c: Conn<64, 32> = Connection::new(Scripted::new(input.as_bytes()));
    block_on(c.ping()).unwrap();
    assert_eq!(c.queued_signals(), 3);
    assert_eq!(c.dropped_signals(), 2);
    let got: Vec<_> = core::iter::from_fn(|| {
        c.try_next_signal()
            .map(|s| std::string::String::from(s.payload))
    })
    .collect();
    assert_eq!(got, ["00", "01", "02"]);
}

#[test]
fn no_push_queue_counts_every_push() {
    let mut c = conn("sig a 1\nsig b 2\nok\n");
    block_on(c.ping()).unwrap();
    assert_eq!(c.queued_signals(), 0);
    assert_eq!(c.dropped_signals(), 2);
}

#[test]
fn malformed_push_is_dropped_not_fatal() {
    let mut c: Conn<64, 64> =
        Connection::new(Scripted::new(&b"sig nopayload\nsig a \xff\nok\n"[..]));
    block_on(c.ping()).unwrap();
    assert_eq!(c.dropped_signals(), 2);
    assert!(c.is_usable());
}

#[test]
fn next_signal_reads_pushes() {
    let mut c: Conn<64, 64> =
        Connection::new(Scripted::new(&b"sig a.b hello\r\nsig c {\"x\": 1}\n"[..]));
    block_on(async {
        let s = c.next_signal().await.unwrap();
        assert_eq!((s.channel, s.payload), ("a.b", "hello"));
        let s = c.next_signal().await.unwrap();
        assert_eq!((s.channel, s.payload), ("c", "{\"x\": 1}"));
        assert!(matches!(c.next_signal().await, Err(Error::Disconnected)));
    });
}

#[test]
fn next_signal_rejects_unsolicited_reply() {
    let mut c: Conn<64, 64> = Connection::new(Scripted::new(&b"ok\n"[..]));
    let e = block_on(c.next_signal()).unwrap_err();
    assert!(matches!(e, Error::Protocol(ProtocolError::Unsolicited)));
}

#[test]
fn stats_into_caller_buffer() {
    let json = std::format!(
        "{{\"connections\":1,\"locks\":[{}]}}",
        "{\"key\":\"k\"},".repeat(40)
    );
    let input = std::format!("sig a b\nok {json}\r\nok\n");
    for chunk in [1, 5, usize::MAX] {
        let mut c: Conn<64, 64> = Connection::new(Scripted::new(input.as_bytes()));
        c.transport_mut().read_chunk = chunk;
        let mut out = [0u8; 1024];
        let got = block_on(c.stats(&mut out)).unwrap();
        assert_eq!(got, json, "chunk {chunk}");
        assert_eq!(c.queued_signals(), 1);
        block_on(c.ping()).unwrap();
    }
    // Too small a buffer: typed error, connection unusable.
    let mut c: Conn<64> = Connection::new(Scripted::new(input.as_bytes()));
    let mut out = [0u8; 100];
    assert!(matches!(
        block_on(c.stats(&mut out)),
        Err(Error::LineTooLong)
    ));
    assert!(!c.is_usable());
}

/// Found by the `line_reader` fuzz target: an over-long push before the
/// stats reply made `stats` take the reply for a malformed push and return
/// the line after it.
#[test]
fn stats_after_an_over_long_push_reads_its_own_reply() {
    let long = "x".repeat(100);
    let input = std::format!("sig a {long}\nok {{\"n\":1}}\nok {{\"n\":2}}\n");
    for chunk in [1, 7, usize::MAX] {
        let mut c: Conn<64, 64> = Connection::new(Scripted::new(input.as_bytes()));
        c.transport_mut().read_chunk = chunk;
        let mut out = [0u8; 64];
        assert_eq!(
            block_on(c.stats(&mut out)).unwrap(),
            "{\"n\":1}",
            "chunk {chunk}"
        );
        assert_eq!(c.dropped_signals(), 1);
        assert_eq!(block_on(c.stats(&mut out)).unwrap(), "{\"n\":2}");
    }
}

/// Found by the `line_reader` fuzz target: a CR was stripped twice.
#[test]
fn stats_strips_exactly_one_cr() {
    let mut c = conn("ok {}\r\r\n");
    let mut out = [0u8; 64];
    assert_eq!(block_on(c.stats(&mut out)).unwrap(), "{}\r");
}

/// Found by the `line_reader` fuzz target: a push was checked with two
/// CRs stripped but queued with one.
#[test]
fn push_with_two_trailing_crs_is_what_parse_push_makes_of_it() {
    let mut c: Conn<64, 64> = Connection::new(Scripted::new(&b"sig c x\r\r\nsig c \r\r\n"[..]));
    let sig = block_on(c.next_signal()).unwrap();
    assert_eq!((sig.channel, sig.payload), ("c", "x\r"));
    let sig = block_on(c.next_signal()).unwrap();
    assert_eq!((sig.channel, sig.payload), ("c", "\r"));
    assert_eq!(c.dropped_signals(), 0);
}

#[test]
fn stats_error_status() {
    let mut c = conn("error\n");
    let mut out = [0u8; 64];
    assert!(matches!(
        block_on(c.stats(&mut out)),
        Err(Error::Server(ServerError::Error))
    ));
    assert!(c.is_usable());
}

#[test]
fn dropped_request_future_poisons_connection() {
    use core::future::Future;
    use core::pin::pin;
    use core::task::{Context, Waker};

    /// A transport whose reads never complete.
    struct Stall;
    impl embedded_io_async::ErrorType for Stall {
        type Error = ScriptError;
    }
    impl embedded_io_async::Read for Stall {
        async fn read(&mut self, _: &mut [u8]) -> core::result::Result<usize, ScriptError> {
            core::future::pending().await
        }
    }
    impl embedded_io_async::Write for Stall {
        async fn write(&mut self, b: &[u8]) -> core::result::Result<usize, ScriptError> {
            Ok(b.len())
        }
        async fn flush(&mut self) -> core::result::Result<(), ScriptError> {
            Ok(())
        }
    }
    let mut c: Connection<Stall, 64> = Connection::new(Stall);
    {
        let mut fut = pin!(c.ping());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
    }
    assert!(!c.is_usable());
    assert!(matches!(block_on(c.ping()), Err(Error::Unusable)));
}

#[test]
fn request_returns_statuses_as_values() {
    let mut c = conn("error_max_locks\n");
    let r = block_on(c.request(
        &Request::Acquire {
            kind: Kind::Lock,
            key: "k",
            timeout: 0,
            lease: None,
        },
        Expect::Grant,
    ))
    .unwrap();
    assert_eq!(r, Reply::Status(Status::MaxLocks));
}

#[test]
fn shift_to_front_matches_copy_within() {
    for len in 0..24usize {
        for from in 1..24usize {
            let mut a: Vec<u8> = (0..48u8).collect();
            let mut b = a.clone();
            super::shift_to_front(&mut a, from, from + len);
            b.copy_within(from..from + len, 0);
            assert_eq!(a, b, "from {from} len {len}");
        }
    }
}

/// A scripted transport whose read waits forever once the script is used
/// up (until more is fed), like a socket with nothing to read.
struct Stalling(Scripted);

impl embedded_io_async::ErrorType for Stalling {
    type Error = ScriptError;
}

impl embedded_io_async::Read for Stalling {
    async fn read(&mut self, buf: &mut [u8]) -> core::result::Result<usize, ScriptError> {
        if self.0.remaining() == 0 {
            core::future::pending::<()>().await;
        }
        self.0.read(buf).await
    }
}

impl embedded_io_async::Write for Stalling {
    async fn write(&mut self, buf: &[u8]) -> core::result::Result<usize, ScriptError> {
        self.0.write(buf).await
    }
    async fn flush(&mut self) -> core::result::Result<(), ScriptError> {
        Ok(())
    }
}

#[test]
fn reply_after_a_wait_cancelled_inside_an_over_long_push() {
    use embassy_futures::select::{Either, select};
    use embassy_futures::yield_now;
    let head = std::format!("sig ch {}", "p".repeat(200));
    for stats in [true, false] {
        let mut c: Connection<Stalling, 64, 64> =
            Connection::new(Stalling(Scripted::new(head.as_bytes())));
        // The wait reads the start of the 200-byte push, then is dropped.
        block_on(async {
            match select(c.wait_signal(), yield_now()).await {
                Either::First(r) => panic!("no signal fits 64 bytes: {r:?}"),
                Either::Second(()) => {}
            }
        });
        let reply = if stats {
            "ok {\"connections\":1}"
        } else {
            "ok"
        };
        let rest = std::format!(
            "ppp\n{reply}\nsig ch short\nsig ch {}\nok\n",
            "q".repeat(100)
        );
        c.transport_mut().0.feed(rest.as_bytes());
        if stats {
            let mut out = [0u8; 256];
            let json = block_on(c.stats(&mut out)).unwrap();
            assert_eq!(json, "{\"connections\":1}");
        } else {
            block_on(c.ping()).unwrap();
        }
        assert_eq!(c.dropped_signals(), 1);
        // The next reply skips a push and another over-long one.
        block_on(c.ping()).unwrap();
        assert_eq!(c.queued_signals(), 1);
        assert_eq!(c.dropped_signals(), 2);
        assert!(c.is_usable());
    }
}

#[test]
fn error_to_an_over_long_line_makes_the_connection_unusable() {
    // Servers v1.11 to v1.14 cap every line at 256 bytes (v2 too, for
    // `signal`): `error`, then they close.
    let long = "p".repeat(257);
    let mut c = conn("error\nerror\nok 0\nerror\n");
    block_on(async {
        let e = c.emit("ch", "short").await.unwrap_err();
        assert!(matches!(e, Error::Server(ServerError::Error)));
        assert!(c.is_usable(), "a short line: the server goes on");
        let e = c.emit("ch", &long).await.unwrap_err();
        assert!(matches!(e, Error::Server(ServerError::Error)));
        assert!(!c.is_usable(), "a long line: the server closed");
        assert!(matches!(c.ping().await, Err(Error::Unusable)));
    });
    // A server with 64 KiB lines takes it and goes on.
    let mut c = conn("ok 0\nok\n");
    block_on(async {
        assert_eq!(c.emit("ch", &long).await.unwrap(), 0);
        c.ping().await.unwrap();
    });
    // The same for a long auth token (v1.10 without --auth-token).
    let mut c = conn("error\n");
    block_on(async {
        assert!(c.auth(&"t".repeat(300)).await.is_err());
        assert!(!c.is_usable());
    });
}

/// Issue 12 defect 6, kept out of `Error` (issue 17): the connection keeps
/// the leader address of `error_not_leader <addr>` (CR stripped) until its
/// next request or read, and only for that status.
#[test]
fn the_leader_hint_lives_in_the_connection_until_the_next_request() {
    let mut c = conn("error_not_leader 10.0.0.2:6388\r\nok\nerror_not_leader\nerror\n");
    assert_eq!(c.leader_hint(), None);
    let err = block_on(c.acquire(Kind::Lock, "k", 1, None)).unwrap_err();
    assert!(matches!(
        err,
        Error::Server(ServerError::NotLeader(Some(_)))
    ));
    assert_eq!(c.leader_hint(), Some("10.0.0.2:6388"));
    assert_eq!(
        c.leader_hint(),
        Some("10.0.0.2:6388"),
        "reading it is idempotent"
    );
    block_on(c.ping()).unwrap();
    assert_eq!(c.leader_hint(), None, "the next request clears it");
    let err = block_on(c.ping()).unwrap_err();
    assert!(matches!(err, Error::Server(ServerError::NotLeader(None))));
    assert_eq!(c.leader_hint(), None, "a bare error_not_leader names none");
    assert!(block_on(c.ping()).is_err());
    assert_eq!(c.leader_hint(), None);
}

/// A request refused before sending also forgets the previous hint: the
/// hint always belongs to the last reply.
#[test]
fn a_refused_request_forgets_the_leader_hint() {
    let mut c = conn("error_not_leader h:1\n");
    assert!(block_on(c.ping()).is_err());
    assert_eq!(c.leader_hint(), Some("h:1"));
    assert!(matches!(
        block_on(c.acquire(Kind::Lock, "a key", 1, None)),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(c.leader_hint(), None);
}

/// A connection without a push queue (`P = 0`, lock-only) counts every
/// push dropped, well-formed or not, without parsing it, and the reply
/// after them still arrives.
#[test]
fn a_lock_only_connection_counts_every_push_dropped() {
    let mut c: Conn<64, 0> =
        Connection::new(Scripted::new(&b"sig ch p\nsig \xff\nsig x\nok\n"[..]));
    block_on(c.ping()).unwrap();
    assert_eq!(c.dropped_signals(), 3);
    assert_eq!(c.queued_signals(), 0);
    assert!(c.try_next_signal().is_none());
    assert!(c.is_usable());
}

/// The shared request future checks only lock requests; every other
/// request is checked by its caller first (the typed commands when called,
/// `request` before sending): each is still refused with nothing sent and
/// the connection usable, and a refused typed command can be dropped
/// unpolled without harm.
#[test]
fn non_lock_requests_are_checked_before_the_shared_future() {
    let mut c = conn("ok\n");
    let refused = |e: Error<ScriptError>, arg: Arg| {
        assert!(
            matches!(e, Error::InvalidArgument(InvalidArgument { arg: a, .. }) if a == arg),
            "{e:?}"
        );
    };
    block_on(async {
        refused(c.auth(" ").await.unwrap_err(), Arg::AuthToken);
        refused(c.listen("a*", None).await.unwrap_err(), Arg::Pattern);
        refused(c.listen("a", Some(" ")).await.unwrap_err(), Arg::Group);
        refused(c.unlisten("", None).await.unwrap_err(), Arg::Pattern);
        refused(c.emit("c", " ").await.unwrap_err(), Arg::Payload);
        let stable_ref = Request::StableRef { reference: "" };
        refused(
            c.request(&stable_ref, Expect::Ok).await.unwrap_err(),
            Arg::StableRef,
        );
        let signal = Request::Signal {
            channel: "a.>",
            payload: "p",
        };
        refused(
            c.request(&signal, Expect::Count).await.unwrap_err(),
            Arg::Channel,
        );
        drop(c.listen("a*", None));
        assert!(c.transport_mut().written.is_empty());
        assert!(c.is_usable());
        c.ping().await.unwrap();
    });
}

/// The queue group is trimmed by the callers of the shared future (typed
/// `listen` / `unlisten`, `request`) and by `encode`: the same bytes on the
/// wire every way.
#[test]
fn queue_groups_are_sent_trimmed_every_way() {
    let mut c = conn("ok\nok\nok\n");
    block_on(async {
        c.listen("a", Some(" g\t")).await.unwrap();
        c.unlisten("a", Some("g ")).await.unwrap();
        let req = Request::Listen {
            pattern: "a",
            group: Some("\u{3000}g"),
        };
        c.request(&req, Expect::Ok).await.unwrap();
    });
    assert_eq!(
        written(&mut c),
        "listen\na\ng\nunlisten\na\ng\nlisten\na\ng\n"
    );
    let mut out = [0u8; 32];
    let n = Request::Unlisten {
        pattern: "a",
        group: Some(" g "),
    }
    .encode(&mut out)
    .unwrap();
    assert_eq!(&out[..n], b"unlisten\na\ng\n");
}
