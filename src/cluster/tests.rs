extern crate std;

use super::*;
use crate::lock::XorShift32;
use crate::protocol::Kind;
use crate::testing::Scripted;
use core::cell::{Cell, RefCell};
use std::string::String;
use std::vec::Vec;

const TOK: &str = "00000000000000070123456789abcdef";

/// A clock that only moves when slept on; records every sleep.
#[derive(Default)]
struct FakeTimer {
    now: Cell<u64>,
    sleeps: RefCell<Vec<u64>>,
}

impl Timer for FakeTimer {
    fn now(&self) -> Instant {
        Instant::from_millis(self.now.get())
    }
    async fn sleep_until(&self, deadline: Instant) {
        let now = self.now.get();
        if deadline.as_millis() > now {
            self.sleeps.borrow_mut().push(deadline.as_millis() - now);
            self.now.set(deadline.as_millis());
        }
    }
}

/// Serves one scripted transport per dial, per member; a member with no
/// script left refuses the connection.
#[derive(Default)]
struct ScriptConnector {
    scripts: RefCell<Vec<(String, Vec<u8>)>>,
    dials: RefCell<Vec<String>>,
}

impl ScriptConnector {
    fn serve(self, addr: &str, input: &str) -> Self {
        self.scripts
            .borrow_mut()
            .push((addr.into(), input.as_bytes().to_vec()));
        self
    }
}

impl Connector for &ScriptConnector {
    type Io = Scripted;
    async fn connect(&self, addr: &str) -> Result<Scripted, Error<crate::testing::ScriptError>> {
        self.dials.borrow_mut().push(addr.into());
        let mut scripts = self.scripts.borrow_mut();
        match scripts.iter().position(|(a, _)| a == addr) {
            Some(i) => Ok(Scripted::new(scripts.remove(i).1)),
            None => Err(Error::Io(crate::testing::ScriptError)),
        }
    }
}

const MEMBERS: [&str; 3] = ["a:1", "b:2", "c:3"];

fn lane<'c>(c: &'c ScriptConnector, timer: &'c FakeTimer) -> TestLane<'c> {
    ClusterConn::new(
        c,
        MEMBERS,
        timer,
        StableRef::new("client-1").unwrap(),
        RedirectPolicy::DEFAULT.with_budget(6),
        Duration::from_secs(5),
    )
    .unwrap()
}

type TestLane<'c> =
    ClusterConn<&'c ScriptConnector, [&'static str; 3], &'c FakeTimer, CLUSTER_MIN_LINE_BUF>;

/// A connector whose a:1 grants `k` (and then `serve`s more).
fn granting() -> ScriptConnector {
    ScriptConnector::default().serve("a:1", &std::format!("ok\nok {TOK} 5\n"))
}

/// A lane holding a 5 s lease on `k`, acquired without waiting (from
/// [`granting`]).
fn leased<'c>(c: &'c ScriptConnector, timer: &'c FakeTimer) -> (TestLane<'c>, Lease<'static>) {
    let mut l = lane(c, timer);
    let spec = LockSpec::lock("k").lease_ttl(Duration::from_secs(5));
    let lease = block(l.acquire(&spec, Duration::ZERO)).unwrap().unwrap();
    (l, lease)
}

fn written<C: Connector<Io = Scripted>, M, T, const N: usize>(
    l: &mut ClusterConn<C, M, T, N>,
) -> String {
    let (_, conn) = l.conn.as_mut().unwrap();
    String::from_utf8(conn.transport_mut().written.clone()).unwrap()
}

fn block<F: Future>(f: F) -> F::Output {
    embassy_futures::block_on(f)
}

#[test]
fn router_follows_member_hints_at_once() {
    let mut r = Router::new(3, RedirectPolicy::DEFAULT).unwrap();
    assert_eq!(
        r.start(),
        Route {
            member: 0,
            delay: Duration::ZERO
        }
    );
    assert_eq!(
        r.redirected(0, Some(2)),
        Next::Retry(Route {
            member: 2,
            delay: Duration::ZERO
        })
    );
    r.answered(2, true);
    assert_eq!(r.leader(), Some(2));
    // The next operation starts at the cached leader.
    assert_eq!(r.start().member, 2);
}

#[test]
fn router_backs_off_on_bare_or_stale_hints_and_gives_up_at_the_budget() {
    let policy = RedirectPolicy::DEFAULT.with_budget(5);
    let mut r = Router::new(3, policy).unwrap();
    r.start();
    // Bare: next member, after 50 ms.
    assert_eq!(
        r.redirected(0, None),
        Next::Retry(Route {
            member: 1,
            delay: Duration::from_millis(50)
        })
    );
    // A hint naming the answering node itself is stale: doubling backoff.
    assert_eq!(
        r.redirected(1, Some(1)),
        Next::Retry(Route {
            member: 2,
            delay: Duration::from_millis(100)
        })
    );
    // Member 2 is down; member 0 then names it again: stale.
    assert_eq!(
        r.failed(2),
        Next::Retry(Route {
            member: 0,
            delay: Duration::ZERO
        })
    );
    assert_eq!(
        r.redirected(0, Some(2)),
        Next::Retry(Route {
            member: 1,
            delay: Duration::from_millis(200)
        })
    );
    assert_eq!(r.redirected(1, None), Next::GiveUp { attempts: 5 });
    assert_eq!(r.leader(), None);
}

#[test]
fn router_backs_off_once_every_member_failed() {
    let mut r = Router::new(2, RedirectPolicy::DEFAULT).unwrap();
    r.start();
    assert_eq!(
        r.failed(0).clone(),
        Next::Retry(Route {
            member: 1,
            delay: Duration::ZERO
        })
    );
    assert_eq!(
        r.failed(1),
        Next::Retry(Route {
            member: 0,
            delay: Duration::from_millis(50)
        })
    );
    let policy = RedirectPolicy::DEFAULT
        .with_backoff(Duration::from_millis(400), Duration::from_millis(500));
    let mut r = Router::new(1, policy).unwrap();
    r.start();
    assert_eq!(
        r.failed(0),
        Next::Retry(Route {
            member: 0,
            delay: Duration::from_millis(400)
        })
    );
    assert_eq!(
        r.failed(0),
        Next::Retry(Route {
            member: 0,
            delay: Duration::from_millis(500)
        })
    );
}

#[test]
fn router_rejects_bad_member_counts() {
    assert_eq!(
        Router::new(0, RedirectPolicy::DEFAULT).unwrap_err().rule,
        Rule::Empty
    );
    assert!(Router::new(33, RedirectPolicy::DEFAULT).is_err());
    assert!(validate_members(&[" "]).is_err());
}

#[test]
fn stable_refs() {
    assert_eq!(StableRef::new("me").unwrap().as_str(), "me");
    assert!(StableRef::new("").is_err());
    assert!(StableRef::new("a\nb").is_err());
    let mut rng = XorShift32::new(7);
    let a = StableRef::random(&mut rng);
    let b = StableRef::random(&mut rng);
    assert_ne!(a, b);
    assert_eq!(a.as_str().len(), "dflockd-rs-".len() + 32);
    assert!(validate::stable_ref(a.as_str()).is_ok());
}

#[test]
fn barrier_and_stable_ref_encode_as_the_server_reads_them() {
    let mut out = [0u8; 64];
    let n = Request::Barrier.encode(&mut out).unwrap();
    assert_eq!(&out[..n], b"barrier\n_\n_\n");
    let n = Request::StableRef { reference: "c-1" }
        .encode(&mut out)
        .unwrap();
    assert_eq!(&out[..n], b"stable-ref\nc-1\n_\n");
    assert!(
        Request::StableRef { reference: "" }
            .encode(&mut out)
            .is_err()
    );
}

#[test]
fn a_write_to_a_follower_is_redirected_to_the_hinted_member() {
    let c = ScriptConnector::default()
        .serve("a:1", "ok\nerror_not_leader c:3\n")
        .serve("c:3", &std::format!("ok\nok {TOK} 5\nok 5\n"));
    let timer = FakeTimer::default();
    let mut l = lane(&c, &timer);
    let spec = LockSpec::lock("k").lease_ttl(Duration::from_secs(5));
    let mut lease = block(l.acquire(&spec, Duration::from_secs(2)))
        .unwrap()
        .unwrap();
    assert_eq!(lease.fence(), 7);
    assert_eq!(*c.dials.borrow(), ["a:1", "c:3"]);
    assert_eq!(l.connected_addr(), Some("c:3"));
    assert_eq!(l.router().leader(), Some(2));
    assert!(
        timer.sleeps.borrow().is_empty(),
        "a member hint is followed at once"
    );
    assert_eq!(
        written(&mut l),
        std::format!("stable-ref\nclient-1\n_\nl\nk\n2 5\n")
    );
    block(l.renew(&mut lease)).unwrap();
    assert!(written(&mut l).ends_with(&std::format!("n\nk\n{TOK} 5\n")));
}

#[test]
fn auth_goes_before_stable_ref() {
    struct Authed<'a>(&'a ScriptConnector);
    impl Connector for Authed<'_> {
        type Io = Scripted;
        async fn connect(
            &self,
            addr: &str,
        ) -> Result<Scripted, Error<crate::testing::ScriptError>> {
            (&self.0).connect(addr).await
        }
        fn auth_token(&self) -> Option<&str> {
            Some("s3cret")
        }
    }
    let c = ScriptConnector::default().serve("a:1", "ok\nok\nok\n");
    let timer = FakeTimer::default();
    let mut l: ClusterConn<_, _, _, 512> = ClusterConn::new(
        Authed(&c),
        ["a:1"],
        &timer,
        StableRef::new("r").unwrap(),
        RedirectPolicy::DEFAULT,
        Duration::from_secs(1),
    )
    .unwrap();
    block(l.ping()).unwrap();
    assert_eq!(
        written(&mut l),
        "auth\n_\ns3cret\nstable-ref\nr\n_\nping\n_\n_\n"
    );
}

#[test]
fn no_leader_is_a_typed_error_after_the_budget_with_backoff() {
    // Every node answers every write with a bare error_not_leader.
    let mut c = ScriptConnector::default();
    for _ in 0..3 {
        for m in MEMBERS {
            c = c.serve(m, "ok\nerror_not_leader\n");
        }
    }
    let timer = FakeTimer::default();
    let mut l = lane(&c, &timer);
    let err = block(l.barrier()).unwrap_err();
    assert!(matches!(err, Error::NoLeader { attempts: 6 }), "{err:?}");
    // One connection per attempt (each redirect drops the follower), and a
    // doubling backoff between them: no tight loop.
    assert_eq!(l.connects(), 6);
    assert_eq!(*timer.sleeps.borrow(), [50, 100, 200, 400, 800]);
}

#[test]
fn dead_members_are_skipped_and_the_hint_cache_cleared() {
    // a:1 refuses; b:2 answers.
    let c = ScriptConnector::default().serve("b:2", "ok\nok\n");
    let timer = FakeTimer::default();
    let mut l = lane(&c, &timer);
    block(l.barrier()).unwrap();
    assert_eq!(*c.dials.borrow(), ["a:1", "b:2"]);
    assert_eq!(l.router().leader(), Some(1));
}

#[test]
fn a_renew_the_server_refuses_is_lease_lost_never_a_reacquire() {
    for reply in ["error", "error_lease_expired"] {
        let c = ScriptConnector::default().serve("a:1", &std::format!("ok\nok {TOK} 5\n{reply}\n"));
        let timer = FakeTimer::default();
        let (mut l, mut lease) = leased(&c, &timer);
        let err = block(l.renew(&mut lease)).unwrap_err();
        assert!(matches!(err, Error::LeaseLost), "{reply}: {err:?}");
        assert!(
            !written(&mut l).contains("\nl\nk\n0 5\nn\nk\n")
                || written(&mut l).matches("l\nk").count() == 1
        );
    }
}

/// The renew lands on the new leader with the same token, and leaves the
/// lease held for the driver's loop: the attempts that failed before it do
/// not mark it lost (each attempt used to apply its
/// failure to the driver, so `LeaseDriver::next` said `Lost` after a renew
/// that worked).
#[test]
fn a_renew_cut_by_a_dead_leader_lands_on_the_new_leader_with_the_same_token() {
    let c = granting() // then EOF: killed
        .serve("b:2", "ok\nerror_not_leader c:3\n")
        .serve("c:3", "ok\nok 5\nok 5\n");
    let timer = FakeTimer::default();
    let (mut l, mut lease) = leased(&c, &timer);
    let fence = lease.fence();
    block(l.renew(&mut lease)).unwrap();
    assert_eq!(lease.fence(), fence);
    assert_eq!(l.connected_addr(), Some("c:3"));
    assert_eq!(
        written(&mut l),
        std::format!("stable-ref\nclient-1\n_\nn\nk\n{TOK} 5\n")
    );
    let mut driver = lease.into_driver();
    let next = driver.next(timer.now());
    assert!(matches!(next, crate::lock::Action::Wait { .. }), "{next:?}");
    // The driver's own shape: the seconds granted, applied by the driver.
    timer.now.set(driver.next_renew_at().as_millis());
    assert!(matches!(
        driver.next(timer.now()),
        crate::lock::Action::Renew { .. }
    ));
    let secs = block(l.renew_reply("k", &mut driver));
    assert!(matches!(secs, Ok(5)), "{secs:?}");
    driver.renewed(Ok(secs), timer.now()).unwrap();
    assert_eq!(driver.deadline().as_millis(), timer.now.get() + 5_000);
}

/// Nothing is held past the deadline: a renew that fails there in any way
/// (here: the lane reconnects, the next member refuses the handshake) is
/// `LeaseLost`, as for `Lease::renew`. It used to pass `Error::Auth` on.
#[test]
fn a_renew_failing_after_the_deadline_is_lease_lost() {
    let c = granting().serve("b:2", "error_auth\n");
    let timer = FakeTimer::default();
    let (mut l, mut lease) = leased(&c, &timer);
    l.disconnect();
    timer.now.set(6_000);
    let err = block(l.renew(&mut lease)).unwrap_err();
    assert!(matches!(err, Error::LeaseLost), "{err:?}");
    assert_eq!(*c.dials.borrow(), ["a:1", "a:1", "b:2"]);
}

#[test]
fn a_release_retried_after_a_failover_counts_the_first_attempt() {
    let c = granting().serve("b:2", "ok\nerror\n");
    let timer = FakeTimer::default();
    let (mut l, lease) = leased(&c, &timer);
    block(l.release(lease)).unwrap();
}

#[test]
fn a_wait_cut_by_a_dead_leader_is_resent_with_what_is_left_of_its_timeout() {
    // The first leader dies while the acquire blocks (EOF, after 3 s);
    // the new leader gets the rest of the 10 s budget.
    struct Slow<'a>(&'a ScriptConnector, &'a FakeTimer);
    impl Connector for Slow<'_> {
        type Io = Scripted;
        async fn connect(
            &self,
            addr: &str,
        ) -> Result<Scripted, Error<crate::testing::ScriptError>> {
            if addr == "b:2" {
                // Three seconds pass before the client notices the death.
                self.1.now.set(self.1.now.get() + 3000);
            }
            (&self.0).connect(addr).await
        }
    }
    let c = ScriptConnector::default()
        .serve("a:1", "ok\n")
        .serve("b:2", &std::format!("ok\nok {TOK} 5\n"));
    let timer = FakeTimer::default();
    let mut l: ClusterConn<_, _, _, CLUSTER_MIN_LINE_BUF> = ClusterConn::new(
        Slow(&c, &timer),
        MEMBERS,
        &timer,
        StableRef::new("client-1").unwrap(),
        RedirectPolicy::DEFAULT,
        Duration::from_secs(5),
    )
    .unwrap();
    let spec = LockSpec::lock("k");
    let lease = block(l.acquire(&spec, Duration::from_secs(10))).unwrap();
    assert!(lease.is_some());
    assert_eq!(written(&mut l), "stable-ref\nclient-1\n_\nl\nk\n7\n");
}

#[test]
fn semantic_errors_end_the_operation_at_once() {
    let c = ScriptConnector::default().serve("a:1", "ok\nerror_max_locks\n");
    let timer = FakeTimer::default();
    let mut l = lane(&c, &timer);
    let spec = LockSpec::new("k", Kind::Semaphore { limit: 2 });
    let err = block(l.acquire(&spec, Duration::ZERO)).unwrap_err();
    assert!(matches!(err, Error::Server(ServerError::MaxLocks)));
    assert_eq!(l.connects(), 1);
}

/// Issue 12 defect 6: a leader address of 253 + 6 bytes survives whole in a
/// connection with the cluster line buffer; `MIN_LINE_BUF` is too small
/// for it, as documented.
#[test]
fn the_longest_not_leader_reply_fits_the_cluster_line_buffer() {
    let addr = std::format!("{}.example.com:65535", "h".repeat(241));
    assert_eq!(addr.len(), MAX_LEADER_ADDR);
    let line = std::format!("error_not_leader {addr}\r\n");
    assert_eq!(line.len(), CLUSTER_MIN_LINE_BUF);
    let mut conn: Connection<Scripted, CLUSTER_MIN_LINE_BUF> =
        Connection::new(Scripted::new(line.clone()));
    match block(conn.ping()) {
        // Where std is linked the error keeps it too (boxed).
        Err(Error::Server(ServerError::NotLeader(Some(a)))) => assert_eq!(a.as_str(), addr),
        other => panic!("{other:?}"),
    }
    // On every platform (and the only place on no_std): the connection.
    assert_eq!(conn.leader_hint(), Some(addr.as_str()));
    let mut small: Connection<Scripted, { crate::MIN_LINE_BUF }> =
        Connection::new(Scripted::new(line));
    assert!(matches!(block(small.ping()), Err(Error::LineTooLong)));
}

#[test]
fn bad_arguments_are_refused_before_dialling() {
    let c = ScriptConnector::default();
    let timer = FakeTimer::default();
    let mut l = lane(&c, &timer);
    let spec = LockSpec::lock("a key");
    assert!(matches!(
        block(l.acquire(&spec, Duration::ZERO)),
        Err(Error::InvalidArgument(_))
    ));
    let spec = LockSpec::new(
        "k",
        Kind::Semaphore {
            limit: (1 << 20) + 1,
        },
    );
    assert!(matches!(
        block(l.enqueue(&spec)),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(l.connects(), 0);
}

/// Issue 12 defect 6 end to end: a member whose address is the longest a
/// redirect can name (253 + 6 bytes) is followed at once, whether the
/// follower redirects the request or already the `stable-ref` handshake.
/// The lane reads the hint from the connection (the only place it is kept
/// on `no_std`), not from the error.
#[test]
fn the_longest_leader_address_is_followed_from_the_connection() {
    let long: &'static str = std::boxed::Box::leak(
        std::format!("{}.example.com:65535", "h".repeat(241)).into_boxed_str(),
    );
    assert_eq!(long.len(), MAX_LEADER_ADDR);
    let members = ["a:1", "b:2", long];
    for follower in [
        std::format!("ok\nerror_not_leader {long}\r\n"),
        std::format!("error_not_leader {long}\r\n"),
    ] {
        let c = ScriptConnector::default()
            .serve("a:1", &follower)
            .serve(long, &std::format!("ok\nok {TOK} 5\n"));
        let timer = FakeTimer::default();
        let mut l: ClusterConn<_, _, _, CLUSTER_MIN_LINE_BUF> = ClusterConn::new(
            &c,
            members,
            &timer,
            StableRef::new("client-1").unwrap(),
            RedirectPolicy::DEFAULT.with_budget(6),
            Duration::from_secs(5),
        )
        .unwrap();
        let spec = LockSpec::lock("k");
        let lease = block(l.acquire(&spec, Duration::from_secs(2))).unwrap();
        assert!(lease.is_some());
        assert_eq!(*c.dials.borrow(), ["a:1", long]);
        assert_eq!(l.router().leader(), Some(2));
        assert!(timer.sleeps.borrow().is_empty(), "followed at once");
    }
}
