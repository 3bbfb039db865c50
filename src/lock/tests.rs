//! The cooperative lease core on a single-threaded executor
//! (`embassy_futures::block_on`) with a fake clock and a fake server.
//!
//! Time only moves when the caller's future (or the test) moves it, so
//! every schedule is deterministic.

use core::cell::{Cell, RefCell};
use core::task::Poll;
use std::rc::Rc;
use std::string::String;
use std::vec::Vec;
use std::{format, vec};

use embassy_futures::{block_on, yield_now};

use super::*;
use crate::testing::ScriptError;

const TOKEN: &str = "0000000000000007abcdef0123456789";

#[derive(Clone, Default)]
struct Clock(Rc<Cell<u64>>);

impl Clock {
    fn now_ms(&self) -> u64 {
        self.0.get()
    }
    fn advance(&self, ms: u64) {
        self.0.set(self.0.get() + ms);
    }
}

impl Timer for Clock {
    fn now(&self) -> Instant {
        Instant::from_millis(self.0.get())
    }
    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> {
        let clock = self.clone();
        core::future::poll_fn(move |_| {
            if clock.now() >= deadline {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

/// A one-lease server on the fake clock.
struct Server {
    clock: Clock,
    ttl_s: u64,
    latency_ms: u64,
    /// Close the connection after this long without a request.
    idle_ms: Option<u64>,
    last_rx: u64,
    lease_until: u64,
    written: Vec<u8>,
    out: Vec<u8>,
    out_ready_at: u64,
    closed: bool,
    /// Stop answering (requests are read, replies never come).
    silent: bool,
    /// Answer renews with `renew_refusal`.
    refuse_renew: bool,
    renew_refusal: &'static str,
    renews: Vec<u64>,
    longest_silence: u64,
}

impl Server {
    fn new(clock: &Clock, ttl_s: u64) -> Rc<RefCell<Server>> {
        Rc::new(RefCell::new(Server {
            clock: clock.clone(),
            ttl_s,
            latency_ms: 20,
            idle_ms: None,
            last_rx: clock.now_ms(),
            lease_until: 0,
            written: Vec::new(),
            out: Vec::new(),
            out_ready_at: 0,
            closed: false,
            silent: false,
            refuse_renew: false,
            renew_refusal: "error\n",
            renews: Vec::new(),
            longest_silence: 0,
        }))
    }

    fn check_idle(&mut self) {
        let now = self.clock.now_ms();
        if let Some(idle) = self.idle_ms
            && now.saturating_sub(self.last_rx) >= idle
        {
            self.closed = true;
        }
    }

    fn handle(&mut self, cmd: &str, _key: &str, arg: &str) {
        let now = self.clock.now_ms();
        let reply = match cmd {
            "l" | "sl" => {
                self.lease_until = now + self.ttl_s * 1000;
                format!("ok {TOKEN} {}\n", self.ttl_s)
            }
            "n" | "sn" => {
                self.renews.push(now);
                if self.refuse_renew {
                    self.renew_refusal.into()
                } else if now >= self.lease_until || !arg.starts_with(TOKEN) {
                    "error\n".into()
                } else {
                    self.lease_until = now + self.ttl_s * 1000;
                    format!("ok {}\n", self.ttl_s)
                }
            }
            "r" | "sr" => {
                if now < self.lease_until {
                    self.lease_until = 0;
                    "ok\n".into()
                } else {
                    "error\n".into()
                }
            }
            _ => "error\n".into(),
        };
        if !self.silent {
            self.out.extend_from_slice(reply.as_bytes());
            self.out_ready_at = now + self.latency_ms;
        }
    }
}

struct Link(Rc<RefCell<Server>>);

impl embedded_io_async::ErrorType for Link {
    type Error = ScriptError;
}

impl embedded_io_async::Read for Link {
    async fn read(&mut self, buf: &mut [u8]) -> core::result::Result<usize, ScriptError> {
        core::future::poll_fn(|_| {
            let mut s = self.0.borrow_mut();
            s.check_idle();
            if s.closed {
                return Poll::Ready(Ok(0));
            }
            if s.out.is_empty() || s.clock.now_ms() < s.out_ready_at {
                return Poll::Pending;
            }
            let n = s.out.len().min(buf.len());
            buf[..n].copy_from_slice(&s.out[..n]);
            s.out.drain(..n);
            Poll::Ready(Ok(n))
        })
        .await
    }
}

impl embedded_io_async::Write for Link {
    async fn write(&mut self, buf: &[u8]) -> core::result::Result<usize, ScriptError> {
        let mut s = self.0.borrow_mut();
        s.check_idle();
        if s.closed {
            return Err(ScriptError);
        }
        let now = s.clock.now_ms();
        s.longest_silence = s.longest_silence.max(now - s.last_rx);
        s.last_rx = now;
        s.written.extend_from_slice(buf);
        loop {
            let text = String::from_utf8_lossy(&s.written).into_owned();
            let lines: Vec<&str> = text.splitn(4, '\n').collect();
            if lines.len() < 4 {
                break;
            }
            let consumed = lines[0].len() + lines[1].len() + lines[2].len() + 3;
            s.handle(lines[0], lines[1], lines[2]);
            s.written.drain(..consumed);
        }
        Ok(buf.len())
    }
    async fn flush(&mut self) -> core::result::Result<(), ScriptError> {
        Ok(())
    }
}

type Conn = Connection<Link, 128>;

fn setup(ttl_s: u64) -> (Clock, Rc<RefCell<Server>>, Conn) {
    let clock = Clock::default();
    clock.advance(1_000);
    let server = Server::new(&clock, ttl_s);
    let conn = Connection::new(Link(server.clone()));
    (clock, server, conn)
}

/// The caller's work: advances the fake clock by `step` ms per poll until
/// `until` ms, then returns how many steps it took.
async fn work(clock: &Clock, step: u64, until: u64) -> u64 {
    let mut steps = 0;
    while clock.now_ms() < until {
        clock.advance(step);
        steps += 1;
        yield_now().await;
    }
    steps
}

fn acquire<'k>(spec: &LockSpec<'k>, conn: &mut Conn, clock: &Clock) -> Lease<'k> {
    // The fake reply only arrives once the clock moves.
    let c = clock.clone();
    block_on(async {
        match select(spec.acquire(conn, clock), async {
            loop {
                c.advance(1);
                yield_now().await;
            }
        })
        .await
        {
            Either::First(r) => r.unwrap().unwrap(),
            Either::Second(()) => unreachable!(),
        }
    })
}

#[test]
fn hold_renews_a_short_lease_for_many_ttls() {
    let (clock, server, mut conn) = setup(2);
    let spec = LockSpec::lock("k").lease_ttl(Duration::from_secs(2));
    let mut lease = acquire(&spec, &mut conn, &clock);
    assert_eq!(lease.ttl(), Duration::from_secs(2));
    assert_eq!(lease.fence(), 7);
    let start = clock.now_ms();
    let steps = block_on(lease.hold(&mut conn, &clock, work(&clock, 10, start + 20_000))).unwrap();
    assert!(steps >= 1_999);
    let s = server.borrow();
    // Renewed about every second: before ratio x ttl, never later.
    assert!(s.renews.len() >= 19, "{:?}", s.renews);
    let mut prev = start;
    for &t in &s.renews {
        assert!(t - prev <= 1_000, "renew gap {} ms", t - prev);
        // Jitter is at most 10 % of the interval, rtt is 20 ms.
        assert!(t - prev >= 1_000 - 100 - 40, "renew gap {} ms", t - prev);
        prev = t;
    }
    assert!(clock.now() < lease.deadline());
    assert_eq!(lease.rtt(), Duration::from_millis(20));
    drop(s);
    block_on(async {
        let mut rel = pin!(lease.release(&mut conn, &clock));
        loop {
            if let Poll::Ready(r) = embassy_futures::poll_once(rel.as_mut()) {
                return r;
            }
            clock.advance(5);
        }
    })
    .unwrap();
}

#[test]
fn idle_timeout_bounds_the_schedule() {
    // A 60 s lease against a server that drops connections idle for 3 s.
    let (clock, server, mut conn) = setup(60);
    server.borrow_mut().idle_ms = Some(3_000);
    let spec = LockSpec::lock("k")
        .lease_ttl(Duration::from_secs(60))
        .read_timeout(Duration::from_secs(3));
    let mut lease = acquire(&spec, &mut conn, &clock);
    let start = clock.now_ms();
    block_on(lease.hold(&mut conn, &clock, work(&clock, 10, start + 70_000))).unwrap();
    let s = server.borrow();
    assert!(!s.closed);
    assert!(s.longest_silence < 3_000, "{}", s.longest_silence);
    assert!(s.renews.len() >= 23, "{}", s.renews.len());
    assert!(clock.now() < lease.deadline());
}

#[test]
fn cut_connection_is_noticed_at_once_and_the_future_dropped() {
    let (clock, server, mut conn) = setup(10);
    let spec = LockSpec::lock("k");
    let mut lease = acquire(&spec, &mut conn, &clock);
    let start = clock.now_ms();
    let dropped = Cell::new(false);
    struct OnDrop<'a>(&'a Cell<bool>);
    impl Drop for OnDrop<'_> {
        fn drop(&mut self) {
            self.0.set(true);
        }
    }
    let s2 = server.clone();
    let c2 = clock.clone();
    let fut = async {
        let _guard = OnDrop(&dropped);
        loop {
            c2.advance(10);
            if c2.now_ms() == start + 2_000 {
                s2.borrow_mut().closed = true;
            }
            yield_now().await;
        }
    };
    let r: Result<(), ScriptError> = block_on(lease.hold(&mut conn, &clock, fut));
    assert!(matches!(r, Err(Error::LeaseLost)));
    assert!(dropped.get());
    // Noticed right away: well before the first renew (5 s) and the
    // deadline (10 s).
    assert!(
        clock.now_ms() <= start + 2_020,
        "{}",
        clock.now_ms() - start
    );
    assert!(server.borrow().renews.is_empty());
}

#[test]
fn silent_server_loses_the_lease_at_the_deadline() {
    let (clock, server, mut conn) = setup(4);
    let spec = LockSpec::lock("k").early_jitter(Jitter::NONE);
    let mut lease = acquire(&spec, &mut conn, &clock);
    let deadline = lease.deadline();
    server.borrow_mut().silent = true;
    let r = block_on(lease.hold(&mut conn, &clock, work(&clock, 10, u64::MAX)));
    assert!(matches!(r, Err(Error::LeaseLost)));
    let now = clock.now();
    assert!(now >= deadline);
    assert!(now.as_millis() <= deadline.as_millis() + 10);
    assert_eq!(server.borrow().renews.len(), 1);
}

#[test]
fn refused_renew_loses_the_lease() {
    let (clock, server, mut conn) = setup(4);
    let spec = LockSpec::lock("k");
    let mut lease = acquire(&spec, &mut conn, &clock);
    server.borrow_mut().refuse_renew = true;
    let r = block_on(lease.hold(&mut conn, &clock, work(&clock, 10, u64::MAX)));
    assert!(matches!(r, Err(Error::LeaseLost)));
    assert!(clock.now() < lease.deadline());
    // The connection is still usable after a refused renew.
    assert!(conn.is_usable());
}

/// Runs `fut` while the fake clock ticks (the fake replies need time).
fn ticking<F: Future>(clock: &Clock, fut: F) -> F::Output {
    let c = clock.clone();
    block_on(async {
        match select(fut, async {
            loop {
                c.advance(1);
                yield_now().await;
            }
        })
        .await
        {
            Either::First(out) => out,
            Either::Second(()) => unreachable!(),
        }
    })
}

#[test]
fn renew_answered_error_lease_expired_is_lease_lost() {
    // v2 in cluster mode answers a renew of an expired, not yet swept,
    // lease with `error_lease_expired`.
    let (clock, server, mut conn) = setup(4);
    let spec = LockSpec::lock("k");
    let mut lease = acquire(&spec, &mut conn, &clock);
    {
        let mut s = server.borrow_mut();
        s.refuse_renew = true;
        s.renew_refusal = "error_lease_expired\n";
    }
    let r = ticking(&clock, lease.renew(&mut conn, &clock));
    assert!(matches!(r, Err(Error::LeaseLost)), "{r:?}");
    assert!(conn.is_usable());
}

#[test]
fn one_second_lease_after_a_long_wait_renews() {
    let (clock, server, mut conn) = setup(1);
    let spec = LockSpec::lock("k").lease_ttl(Duration::from_secs(1));
    // The grant arrives 3 s after the request was sent.
    let sent = clock.now();
    clock.advance(3_000);
    let grant = Grant {
        token: Token::parse(TOKEN.as_bytes()).unwrap(),
        lease: 1,
    };
    server.borrow_mut().lease_until = clock.now_ms() + 1_000;
    let mut lease = Lease::from_grant(&spec, grant, sent, clock.now());
    assert!(lease.deadline() > clock.now());
    assert!(lease.next_renew_at() <= clock.now(), "renewed at once");
    ticking(&clock, lease.renew(&mut conn, &clock)).expect("renewed");
    assert_eq!(server.borrow().renews.len(), 1);
}

#[test]
fn future_finishing_first_returns_its_output() {
    let (clock, server, mut conn) = setup(30);
    let spec = LockSpec::lock("k");
    let mut lease = acquire(&spec, &mut conn, &clock);
    let out = block_on(lease.hold(&mut conn, &clock, async { 7 })).unwrap();
    assert_eq!(out, 7);
    assert!(server.borrow().renews.is_empty());
    assert!(conn.is_usable());
}

#[test]
fn schedule_math() {
    let spec = LockSpec::lock("k")
        .renew_ratio(RenewRatio::new(0.5).unwrap())
        .early_jitter(Jitter::NONE)
        .read_timeout(Duration::ZERO);
    let grant = Grant {
        token: Token::parse(TOKEN.as_bytes()).unwrap(),
        lease: 10,
    };
    // Immediate grant: counted from the send time, rtt = 40 ms.
    let l = Lease::from_grant(
        &spec,
        grant,
        Instant::from_millis(1_000),
        Instant::from_millis(1_040),
    );
    assert_eq!(l.deadline(), Instant::from_millis(11_000));
    assert_eq!(l.next_renew_at(), Instant::from_millis(1_000 + 5_000 - 40));
    // A grant after a long server-side wait: counted from GRANT_SLACK
    // before it arrived.
    let l = Lease::from_grant(
        &spec,
        grant,
        Instant::from_millis(1_000),
        Instant::from_millis(9_000),
    );
    assert_eq!(l.deadline(), Instant::from_millis(18_000));
    assert_eq!(l.rtt(), GRANT_SLACK);
    // A short lease after a long wait: the slack is a quarter of the lease,
    // so the lease is not over on arrival (a 1 s lease after a 3 s wait).
    let short = Grant { lease: 1, ..grant };
    let l = Lease::from_grant(
        &spec,
        short,
        Instant::from_millis(1_000),
        Instant::from_millis(4_000),
    );
    assert_eq!(l.deadline(), Instant::from_millis(4_750));
    assert_eq!(l.rtt(), Duration::from_millis(250));
    assert!(!l.is_expired(Instant::from_millis(4_000)));
    // The idle timeout is the tighter bound.
    let spec = spec
        .read_timeout(Duration::from_secs(4))
        .lease_ttl(Duration::from_secs(10));
    let l = Lease::from_grant(
        &spec,
        grant,
        Instant::from_millis(0),
        Instant::from_millis(0),
    );
    assert_eq!(l.next_renew_at(), Instant::from_millis(3_000));
    // Jitter stays within 10 % of the interval.
    let spec = spec
        .read_timeout(Duration::ZERO)
        .early_jitter(Jitter::default());
    let mut l = Lease::from_grant(
        &spec,
        grant,
        Instant::from_millis(0),
        Instant::from_millis(0),
    );
    let mut rng = XorShift32::new(1);
    let mut seen = vec![];
    for _ in 0..200 {
        l.reschedule(&mut rng);
        let t = l.next_renew_at().as_millis();
        assert!((4_500..=5_000).contains(&t), "{t}");
        seen.push(t);
    }
    seen.sort_unstable();
    seen.dedup();
    assert!(seen.len() > 50);
}

#[test]
fn ratios_are_validated() {
    assert!(RenewRatio::new(0.0).is_err());
    assert!(RenewRatio::new(1.0).is_err());
    assert!(RenewRatio::new(f32::NAN).is_err());
    assert!(RenewRatio::new(-0.5).is_err());
    assert_eq!(RenewRatio::new(0.75).unwrap().permille(), 750);
    assert_eq!(RenewRatio::new(0.0001).unwrap().permille(), 1);
    assert!(RenewRatio::from_permille(1000).is_err());
    assert!(Jitter::new(0.0).is_ok());
    assert!(Jitter::new(1.0).is_err());
    assert_eq!(Jitter::default().permille(), 100);
    assert_eq!(RenewRatio::default(), RenewRatio::HALF);
    assert_eq!(
        LockOptions::default().acquire_timeout,
        Duration::from_secs(10)
    );
    assert_eq!(LockOptions::default().read_timeout, Duration::from_secs(23));
}

#[test]
fn lease_is_small() {
    // A lease and its schedule: well under the per-connection budget.
    assert!(core::mem::size_of::<Lease<'static>>() <= 192);
}
