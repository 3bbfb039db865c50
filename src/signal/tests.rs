extern crate std;

use core::cell::{Cell, RefCell};
use core::future::poll_fn;
use core::task::Poll;
use std::collections::VecDeque;
use std::rc::Rc;
use std::string::String;
use std::vec::Vec;

use embassy_futures::block_on;

use super::*;
use crate::protocol::{Arg, InvalidArgument, Rule};
use crate::testing::{ScriptError, Scripted};

/// A virtual clock: `sleep_until` jumps straight to the deadline.
#[derive(Default)]
struct FakeTimer {
    now: Cell<u64>,
}

impl Timer for FakeTimer {
    fn now(&self) -> Instant {
        Instant::from_millis(self.now.get())
    }
    async fn sleep_until(&self, deadline: Instant) {
        if deadline.as_millis() > self.now.get() {
            self.now.set(deadline.as_millis());
        }
    }
}

/// A server stand-in: reads are pending while it has nothing to say; each
/// complete request (three lines) releases the next scripted reply.
#[derive(Clone, Default)]
struct Peer {
    inner: Rc<RefCell<PeerState>>,
}

#[derive(Default)]
struct PeerState {
    input: VecDeque<u8>,
    replies: VecDeque<Vec<u8>>,
    written: Vec<u8>,
    newlines: usize,
}

impl Peer {
    fn push(&self, bytes: &str) {
        self.inner.borrow_mut().input.extend(bytes.as_bytes());
    }
    fn reply(&self, bytes: &str) {
        self.inner
            .borrow_mut()
            .replies
            .push_back(bytes.as_bytes().to_vec());
    }
    fn written(&self) -> String {
        String::from_utf8(self.inner.borrow().written.clone()).unwrap()
    }
}

impl embedded_io_async::ErrorType for Peer {
    type Error = ScriptError;
}

impl embedded_io_async::Read for Peer {
    async fn read(&mut self, buf: &mut [u8]) -> core::result::Result<usize, ScriptError> {
        poll_fn(|_| {
            let mut st = self.inner.borrow_mut();
            if st.input.is_empty() {
                return Poll::Pending;
            }
            let n = st.input.len().min(buf.len());
            for b in buf.iter_mut().take(n) {
                *b = st.input.pop_front().unwrap();
            }
            Poll::Ready(Ok(n))
        })
        .await
    }
}

impl embedded_io_async::Write for Peer {
    async fn write(&mut self, buf: &[u8]) -> core::result::Result<usize, ScriptError> {
        let mut st = self.inner.borrow_mut();
        st.written.extend_from_slice(buf);
        for &b in buf {
            if b == b'\n' {
                st.newlines += 1;
                if st.newlines == 3 {
                    st.newlines = 0;
                    if let Some(r) = st.replies.pop_front() {
                        st.input.extend(r);
                    }
                }
            }
        }
        Ok(buf.len())
    }
    async fn flush(&mut self) -> core::result::Result<(), ScriptError> {
        Ok(())
    }
}

fn sig_conn<'t, const N: usize, const P: usize>(
    peer: &Peer,
    timer: &'t FakeTimer,
) -> SignalConn<Peer, &'t FakeTimer, N, P> {
    SignalConn::new(Connection::new(peer.clone()), timer)
}

#[test]
fn heartbeat_must_stay_below_read_timeout() {
    let s = Duration::from_secs;
    assert!(Heartbeat::new(s(15), DEFAULT_READ_TIMEOUT).is_ok());
    assert!(Heartbeat::new(s(22), s(23)).is_ok());
    assert!(Heartbeat::new(s(23), s(23)).is_err());
    assert!(Heartbeat::new(s(30), s(23)).is_err());
    assert!(Heartbeat::new(Duration::ZERO, s(23)).is_err());
    assert_eq!(Heartbeat::default().interval(), s(15));
    assert!(Heartbeat::DEFAULT.interval() < DEFAULT_READ_TIMEOUT);
}

#[test]
fn commands_encode_and_parse() {
    let peer = Peer::default();
    let timer = FakeTimer::default();
    let mut c = sig_conn::<128, 256>(&peer, &timer);
    peer.reply("ok\n");
    peer.reply("ok\n");
    peer.reply("ok 3\n");
    peer.reply("ok\n");
    block_on(async {
        c.listen("a.*.c", None).await.unwrap();
        c.listen("jobs", Some("workers")).await.unwrap();
        assert_eq!(c.emit("a.b.c", "hello world").await.unwrap(), 3);
        c.unlisten("jobs", Some("workers")).await.unwrap();
    });
    assert_eq!(
        peer.written(),
        "listen\na.*.c\n\nlisten\njobs\nworkers\nsignal\na.b.c\nhello world\nunlisten\njobs\nworkers\n"
    );
}

#[test]
fn bad_patterns_and_wildcard_emits_are_rejected_before_sending() {
    let peer = Peer::default();
    let timer = FakeTimer::default();
    let mut c = sig_conn::<128, 256>(&peer, &timer);
    let bad = |arg, rule| Err::<(), _>(InvalidArgument { arg, rule });
    block_on(async {
        for p in ["a.>.b", "a*", "a.b>", "*x.y", ">>", "a..>b"] {
            let r = c.listen(p, None).await.map_err(|e| match e {
                Error::InvalidArgument(a) => a,
                e => panic!("{e:?}"),
            });
            assert_eq!(r, bad(Arg::Pattern, Rule::BadWildcard), "{p}");
        }
        for p in ["", "a b", "a\nb"] {
            assert!(matches!(
                c.listen(p, None).await,
                Err(Error::InvalidArgument(InvalidArgument {
                    arg: Arg::Pattern,
                    ..
                }))
            ));
        }
        assert!(matches!(
            c.unlisten("a.>.b", None).await,
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            c.listen("ok", Some(" ")).await,
            Err(Error::InvalidArgument(InvalidArgument {
                arg: Arg::Group,
                rule: Rule::Blank
            }))
        ));
        for ch in ["a.*", "a.>", "*", ">"] {
            assert!(matches!(
                c.emit(ch, "x").await,
                Err(Error::InvalidArgument(InvalidArgument {
                    arg: Arg::Channel,
                    rule: Rule::Wildcard
                }))
            ));
        }
        for payload in ["", "  ", "a\nb"] {
            assert!(matches!(
                c.emit("a", payload).await,
                Err(Error::InvalidArgument(InvalidArgument {
                    arg: Arg::Payload,
                    ..
                }))
            ));
        }
    });
    assert_eq!(peer.written(), "");
    assert!(c.is_usable());
    // Valid wildcard patterns pass.
    peer.reply("ok\n");
    peer.reply("ok\n");
    peer.reply("ok\n");
    block_on(async {
        c.listen("*.b.>", None).await.unwrap();
        c.listen(">", None).await.unwrap();
        c.listen("a.*", None).await.unwrap();
    });
}

#[test]
fn push_before_the_emit_reply_is_queued_and_the_reply_is_not_lost() {
    let peer = Peer::default();
    let timer = FakeTimer::default();
    let mut c = sig_conn::<128, 256>(&peer, &timer);
    peer.reply("ok\n");
    // The server pushes our own signal before it answers the emit.
    peer.reply("sig a.b first\nsig a.c second\nok 2\n");
    block_on(async {
        c.listen("a.*", None).await.unwrap();
        assert_eq!(c.emit("a.b", "first").await.unwrap(), 2);
        assert_eq!(c.queued_signals(), 2);
        let s = c.next().await.unwrap();
        assert_eq!((s.channel, s.payload), ("a.b", "first"));
        let s = c.next().await.unwrap();
        assert_eq!((s.channel, s.payload), ("a.c", "second"));
    });
    assert_eq!(c.dropped_signals(), 0);
}

#[test]
fn next_reads_pushes_byte_for_byte() {
    let peer = Peer::default();
    let timer = FakeTimer::default();
    let mut c = sig_conn::<256, 512>(&peer, &timer);
    peer.push("sig chat.room hello  there \r\nsig j {\"k\": [1, \"é\"]}\n");
    block_on(async {
        let s = c.next().await.unwrap();
        assert_eq!((s.channel, s.payload), ("chat.room", "hello  there "));
        let s = c.next().await.unwrap();
        assert_eq!((s.channel, s.payload), ("j", "{\"k\": [1, \"é\"]}"));
    });
    // Nothing sent: no heartbeat was due.
    assert_eq!(peer.written(), "");
}

#[test]
fn heartbeat_pings_while_idle_and_keeps_pushes() {
    let peer = Peer::default();
    let timer = FakeTimer::default();
    let hb = Heartbeat::new(Duration::from_secs(5), Duration::from_secs(10)).unwrap();
    let mut c =
        SignalConn::<_, _, 128, 256>::with_heartbeat(Connection::new(peer.clone()), &timer, hb);
    assert_eq!(c.next_heartbeat(), Instant::from_millis(5000));
    // Two heartbeats pass with no signal; the second ping's reply comes
    // after a push, which must be queued and returned.
    peer.reply("ok\n");
    peer.reply("sig x late\nok\n");
    block_on(async {
        let s = c.next().await.unwrap();
        assert_eq!((s.channel, s.payload), ("x", "late"));
    });
    assert_eq!(peer.written(), "ping\n_\n_\nping\n_\n_\n");
    assert_eq!(timer.now(), Instant::from_millis(10_000));
    assert_eq!(c.next_heartbeat(), Instant::from_millis(15_000));
}

#[test]
fn heartbeat_tolerates_servers_without_ping() {
    let peer = Peer::default();
    let timer = FakeTimer::default();
    let mut c = sig_conn::<128, 256>(&peer, &timer);
    peer.reply("error\n");
    peer.reply("sig x y\nok\n");
    block_on(async {
        assert_eq!(c.wait().await.unwrap(), Wake::HeartbeatDue);
        c.keepalive().await.unwrap();
        assert!(c.is_usable());
        assert_eq!(timer.now(), Instant::from_millis(15_000));
        assert_eq!(c.wait().await.unwrap(), Wake::HeartbeatDue);
        c.keepalive().await.unwrap();
        assert_eq!(c.wait().await.unwrap(), Wake::Signal);
        assert_eq!(c.try_next().map(|s| s.payload), Some("y"));
    });
}

#[test]
fn requests_postpone_the_heartbeat() {
    let peer = Peer::default();
    let timer = FakeTimer::default();
    let mut c = sig_conn::<128, 256>(&peer, &timer);
    timer.now.set(10_000);
    peer.reply("ok 0\n");
    block_on(c.emit("a", "b")).unwrap();
    assert_eq!(c.next_heartbeat(), Instant::from_millis(25_000));
}

#[test]
fn full_queue_and_long_lines_are_counted_not_truncated() {
    let peer = Peer::default();
    let timer = FakeTimer::default();
    // 64-byte queue: room for two 20-byte bodies (+4 each), not three.
    let mut c = sig_conn::<64, 64>(&peer, &timer);
    let long = "x".repeat(100);
    peer.reply(&std::format!(
        "sig a 0123456789abcdef01\nsig a 0123456789abcdef02\nsig a 0123456789abcdef03\nsig a {long}\nok 1\n"
    ));
    block_on(async {
        assert_eq!(c.emit("a", "z").await.unwrap(), 1);
        assert_eq!(c.dropped_signals(), 2);
        assert_eq!(c.next().await.unwrap().payload, "0123456789abcdef01");
        assert_eq!(c.next().await.unwrap().payload, "0123456789abcdef02");
        assert!(c.try_next().is_none());
    });
    // A long push read while idle is dropped too; the next one arrives.
    peer.push(&std::format!("sig a {long}\nsig a ok\n"));
    block_on(async {
        assert_eq!(c.next().await.unwrap().payload, "ok");
    });
    assert_eq!(c.dropped_signals(), 3);
    assert!(c.is_usable());
}

#[test]
fn server_close_is_reported() {
    let timer = FakeTimer::default();
    let mut c = SignalConn::<_, _, 128, 256>::new(
        Connection::new(Scripted::new(&b"sig a 1\n"[..])),
        &timer,
    );
    block_on(async {
        assert_eq!(c.next().await.unwrap().payload, "1");
        assert!(matches!(c.next().await, Err(Error::Disconnected)));
    });
}

#[test]
fn wait_is_cancel_safe() {
    let peer = Peer::default();
    let timer = FakeTimer::default();
    let mut c = sig_conn::<128, 256>(&peer, &timer);
    // Half a push arrives, then the wait is dropped.
    peer.push("sig a.b hel");
    {
        use core::future::Future;
        let fut = core::pin::pin!(c.wait());
        let waker = core::task::Waker::noop();
        let mut cx = core::task::Context::from_waker(waker);
        // One poll reads the partial line; the future is then dropped.
        let _ = fut.poll(&mut cx);
    }
    peer.push("lo\n");
    peer.reply("ok\n");
    block_on(async {
        let s = c.next().await.unwrap();
        assert_eq!((s.channel, s.payload), ("a.b", "hello"));
    });
    assert!(c.is_usable());
}
