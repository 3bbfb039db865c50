//! Every decision of the lease driver, on plain numbers: no connection, no
//! clock, no executor.

use core::time::Duration;

use super::*;
use crate::lock::LockSpec;

const TOKEN: &str = "0000000000000007abcdef0123456789";

type E = Error<()>;

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

/// A 10 s lease granted at once at t = 1 000 (sent 1 000, received 1 040):
/// renew at half, no jitter, no idle bound, 2 s reply timeout.
fn driver() -> LeaseDriver {
    let spec = LockSpec::lock("k")
        .lease_ttl(Duration::from_secs(10))
        .early_jitter(Jitter::NONE)
        .read_timeout(Duration::ZERO)
        .io_timeout(Duration::from_secs(2));
    let grant = Grant {
        token: Token::parse(TOKEN.as_bytes()).unwrap(),
        lease: 10,
    };
    LeaseDriver::from_grant(spec.options(), spec.kind(), grant, at(1_000), at(1_040))
}

fn ok<T>(v: T) -> Reply<T, ()> {
    Ok(Ok(v))
}

fn err<T>(e: E) -> Reply<T, ()> {
    Ok(Err(e))
}

#[test]
fn waits_until_the_renew_is_due_then_renews_with_a_bounded_limit() {
    let mut d = driver();
    assert_eq!(d.deadline(), at(11_000));
    // Half the lease after the send, early by the 40 ms round trip.
    assert_eq!(d.next(at(1_040)), Action::Wait { until: at(5_960) });
    assert_eq!(d.next(at(5_959)), Action::Wait { until: at(5_960) });
    // Due: the reply may take the reply timeout.
    assert_eq!(d.next(at(5_960)), Action::Renew { limit: at(7_960) });
}

#[test]
fn successful_renew_moves_deadline_and_schedule_from_the_send_time() {
    let mut d = driver();
    assert_eq!(d.next(at(6_000)), Action::Renew { limit: at(8_000) });
    // 100 ms round trip, the server grants 10 s again.
    assert!(d.renewed(ok(10), at(6_100)).is_ok());
    assert_eq!(d.deadline(), at(16_000));
    assert_eq!(d.rtt(), Duration::from_millis(100));
    assert_eq!(d.ttl(), Duration::from_secs(10));
    assert_eq!(d.next(at(6_100)), Action::Wait { until: at(10_900) });
    // A shorter lease from the server shortens the schedule.
    assert_eq!(d.next(at(10_900)), Action::Renew { limit: at(12_900) });
    assert!(d.renewed(ok(4), at(10_950)).is_ok());
    assert_eq!(d.deadline(), at(14_900));
    assert_eq!(d.next(at(10_950)), Action::Wait { until: at(12_850) });
}

#[test]
fn reply_limit_never_passes_the_deadline() {
    let spec = LockSpec::lock("k")
        .early_jitter(Jitter::NONE)
        .read_timeout(Duration::ZERO)
        .renew_ratio(RenewRatio::from_permille(900).unwrap())
        .io_timeout(Duration::from_secs(5));
    let grant = Grant {
        token: Token::parse(TOKEN.as_bytes()).unwrap(),
        lease: 10,
    };
    let mut d = LeaseDriver::from_grant(spec.options(), spec.kind(), grant, at(0), at(0));
    assert_eq!(d.next(at(9_000)), Action::Renew { limit: at(10_000) });
    d.request_release();
    let mut r = d;
    assert!(r.renewed(ok(10), at(9_010)).is_ok());
    assert_eq!(r.next(at(9_500)), Action::Release { limit: at(14_500) });
    // The same release late in the lease: bounded by the deadline.
    assert_eq!(d.next(at(9_500)), Action::Release { limit: at(10_000) });
}

#[test]
fn refused_renew_is_lease_lost() {
    for refusal in [ServerError::Error, ServerError::LeaseExpired] {
        let mut d = driver();
        assert!(matches!(d.next(at(6_000)), Action::Renew { .. }));
        let out = d.renewed(err(Error::Server(refusal)), at(6_050));
        assert!(matches!(out, Err(Error::LeaseLost)), "{out:?}");
        assert_eq!(d.next(at(6_050)), Action::Lost);
    }
}

#[test]
fn timeout_before_the_deadline_is_timeout_and_ends_the_hold() {
    let mut d = driver();
    assert_eq!(d.next(at(6_000)), Action::Renew { limit: at(8_000) });
    let out = d.renewed::<()>(Err(Elapsed), at(8_000));
    assert!(matches!(out, Err(Error::Timeout)), "{out:?}");
    // The deadline (11 000) is still ahead, but the holder stops: it
    // cannot tell whether the server counted the renew.
    assert_eq!(d.next(at(8_000)), Action::Lost);
    // A transport timeout (the blocking adapter's) is the same.
    let mut d = driver();
    d.next(at(6_000));
    assert!(matches!(
        d.renewed(err(Error::Timeout), at(8_000)),
        Err(Error::Timeout)
    ));
    assert_eq!(d.next(at(8_000)), Action::Lost);
}

#[test]
fn any_failure_at_the_deadline_is_lease_lost() {
    // No reply by a limit that was the deadline.
    let mut d = driver();
    d.next(at(10_000));
    assert!(matches!(
        d.renewed::<()>(Err(Elapsed), at(11_000)),
        Err(Error::LeaseLost)
    ));
    // A transport error after the deadline.
    let mut d = driver();
    d.next(at(10_000));
    assert!(matches!(
        d.renewed(err(Error::Io(())), at(11_001)),
        Err(Error::LeaseLost)
    ));
    // The same error before the deadline is passed on, and still ends the
    // hold.
    let mut d = driver();
    d.next(at(6_000));
    assert!(matches!(
        d.renewed(err(Error::Disconnected), at(6_001)),
        Err(Error::Disconnected)
    ));
    assert_eq!(d.next(at(6_001)), Action::Lost);
}

#[test]
fn deadline_passed_without_a_renew_is_lost() {
    let mut d = driver();
    assert_eq!(d.next(at(11_000)), Action::Lost);
    assert_eq!(d.next(at(12_000)), Action::Lost);
    d.request_release();
    assert_eq!(d.next(at(12_000)), Action::Lost, "nothing left to release");
}

#[test]
fn closed_connection_is_lost() {
    let mut d = driver();
    assert!(matches!(d.next(at(2_000)), Action::Wait { .. }));
    d.closed();
    assert_eq!(d.next(at(2_000)), Action::Lost);
    // A release asked for afterwards gets `Lost` (LeaseLost), no request.
    d.request_release();
    assert_eq!(d.next(at(2_000)), Action::Lost);
}

#[test]
fn release_is_looked_at_before_a_due_renew() {
    let mut d = driver();
    d.request_release();
    // The renew is due (and even overdue): the release goes first.
    assert_eq!(d.next(at(6_000)), Action::Release { limit: at(8_000) });
    // Before the renew is due: the release does not wait for it.
    let mut d = driver();
    d.request_release();
    assert_eq!(d.next(at(1_100)), Action::Release { limit: at(3_100) });
}

#[test]
fn release_is_not_starved_by_back_to_back_renews() {
    // Renews due back to back: every reply arrives when the next renew is
    // already due (a round trip as long as the renew interval).
    let mut d = driver();
    let mut now = 6_000;
    for _ in 0..3 {
        assert!(matches!(d.next(at(now)), Action::Renew { .. }));
        now += 6_000;
        assert!(d.renewed(ok(10), at(now)).is_ok());
    }
    // Asked for while a renew is in flight: next after its reply.
    assert!(matches!(d.next(at(now)), Action::Renew { .. }));
    d.request_release();
    now += 6_000;
    assert!(d.renewed(ok(10), at(now)).is_ok());
    assert!(d.next_renew_at() <= at(now), "a renew is due");
    assert!(matches!(d.next(at(now)), Action::Release { .. }));
}

#[test]
fn release_after_the_deadline_is_lease_lost_without_a_request() {
    let mut d = driver();
    d.request_release();
    assert_eq!(d.next(at(11_000)), Action::Lost);
    assert_eq!(d.release_limit(at(11_000)), None);
}

#[test]
fn release_replies() {
    let mut d = driver();
    d.request_release();
    assert!(matches!(d.next(at(2_000)), Action::Release { .. }));
    assert!(d.released(ok(()), at(2_050)).is_ok());
    assert_eq!(d.next(at(2_050)), Action::Done);
    // Done is final: nothing more to renew or release.
    d.request_release();
    assert_eq!(d.next(at(6_000)), Action::Done);

    let released = |reply: Reply<(), ()>, now| {
        let mut d = driver();
        d.request_release();
        d.next(at(2_000));
        d.released(reply, at(now))
    };
    // The server no longer counts it (it expired).
    assert!(matches!(
        released(err(Error::Server(ServerError::Error)), 2_050),
        Err(Error::LeaseLost)
    ));
    assert!(matches!(released(Err(Elapsed), 4_000), Err(Error::Timeout)));
    assert!(matches!(
        released(Err(Elapsed), 11_000),
        Err(Error::LeaseLost)
    ));
    assert!(matches!(
        released(err(Error::Disconnected), 2_050),
        Err(Error::Disconnected)
    ));
}

#[test]
fn a_failed_renew_is_final_for_the_loop_but_not_for_the_deadline() {
    // A cluster client re-sends a renew that failed over to the new leader:
    // the deadline arithmetic still works, the loop stays over.
    let mut d = driver();
    assert!(d.start_renew(at(6_000)).is_some());
    assert!(d.renewed(err(Error::Disconnected), at(6_010)).is_err());
    assert_eq!(d.next(at(6_010)), Action::Lost);
    assert!(d.start_renew(at(6_020)).is_some());
    assert!(d.renewed(ok(10), at(6_030)).is_ok());
    assert_eq!(d.deadline(), at(16_020));
    assert_eq!(d.next(at(6_030)), Action::Lost);
}

#[test]
fn idle_bound_and_jitter_shape_the_schedule() {
    let spec = LockSpec::semaphore("k", 3)
        .lease_ttl(Duration::from_secs(60))
        .early_jitter(Jitter::NONE)
        .read_timeout(Duration::from_secs(8));
    let grant = Grant {
        token: Token::parse(TOKEN.as_bytes()).unwrap(),
        lease: 60,
    };
    let mut d = LeaseDriver::from_grant(spec.options(), spec.kind(), grant, at(0), at(0));
    // 8 s idle timeout: renew after 6 s of silence, not at 30 s.
    assert_eq!(d.next(at(0)), Action::Wait { until: at(6_000) });
    // Jitter draws from the rng, within its share of the interval.
    let spec = spec
        .read_timeout(Duration::ZERO)
        .early_jitter(Jitter::new(0.2).unwrap());
    let mut d2 = LeaseDriver::from_grant(spec.options(), spec.kind(), grant, at(0), at(0));
    let mut rng = XorShift32::new(3);
    for _ in 0..100 {
        d2.reschedule(&mut rng);
        let t = d2.next_renew_at().as_millis();
        assert!((24_000..=30_000).contains(&t), "{t}");
    }
    // The request carries the kind and the wire seconds of the TTL.
    let token = *d.token();
    assert_eq!(d.request_secs(), Some(60));
    assert_eq!(
        d.renew_request("k", &token),
        Request::Renew {
            kind: Kind::Semaphore { limit: 3 },
            key: "k",
            token: &token,
            lease: Some(60),
        }
    );
    assert_eq!(
        d.release_request("k", &token),
        Request::Release {
            kind: Kind::Semaphore { limit: 3 },
            key: "k",
            token: &token,
        }
    );
    d.closed();
    assert_eq!(d.next(at(0)), Action::Lost);
}

#[test]
fn wire_seconds_round_up() {
    assert_eq!(wire_secs(Duration::ZERO), 0);
    assert_eq!(wire_secs(Duration::from_millis(1)), 1);
    assert_eq!(wire_secs(Duration::from_millis(1_500)), 2);
    assert_eq!(wire_secs(Duration::from_secs(7)), 7);
    let lease = |d| LockOptions {
        lease_ttl: d,
        ..LockOptions::DEFAULT
    };
    assert_eq!(lease(None).lease_secs(), None);
    // A lease is at least one second: zero would mean "none" to a server.
    assert_eq!(lease(Some(Duration::ZERO)).lease_secs(), Some(1));
    assert_eq!(
        lease(Some(Duration::from_millis(2_001))).lease_secs(),
        Some(3)
    );
}

#[test]
fn driver_is_static_and_small() {
    fn is_static<T: 'static + Send + Copy>(_: &T) {}
    let d = driver();
    is_static(&d);
    assert!(core::mem::size_of::<LeaseDriver>() <= 176);
}
