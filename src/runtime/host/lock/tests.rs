//! The shared guard status and the renewal loop, with a fake IO.

use std::cell::Cell;
use std::sync::Condvar;
use std::vec::Vec;

use super::*;
use crate::lock::{Jitter, LockSpec};
use crate::{Grant, Kind};

/// A 10 s lease granted at t = 0, renewed at half, no jitter.
fn driver() -> LeaseDriver {
    let spec = LockSpec::lock("k")
        .early_jitter(Jitter::NONE)
        .read_timeout(Duration::ZERO);
    let grant = Grant {
        token: "0000000000000007abcdef0123456789".parse().unwrap(),
        lease: 10,
    };
    let t0 = Instant::from_millis(0);
    LeaseDriver::from_grant(spec.options(), Kind::Lock, grant, t0, t0)
}

fn guard(driver: &LeaseDriver) -> (Guard<Condvar>, Renewer<Condvar>) {
    let config = Arc::new(crate::runtime::host::settings::ClientConfig::default());
    let settings = Settings::new(
        config,
        "k".into(),
        Kind::Lock,
        crate::lock::LockOptions::DEFAULT,
    );
    Guard::new(
        Arc::new(settings),
        driver,
        Arc::new(HangUp(None)),
        Condvar::new(),
    )
}

#[test]
fn a_vanished_renewal_side_is_lost_and_a_dropped_guard_asks_for_the_release() {
    let (g, renewer) = guard(&driver());
    let t = Instant::from_millis(1);
    assert!(!g.is_lost(t));
    // A task dropped by its runtime, a thread that panicked.
    drop(renewer);
    assert!(g.is_lost(t));
    assert!(matches!(
        g.shared.lock().outcome(),
        Some(Err(Error::LeaseLost))
    ));
    let shared = g.shared.clone();
    assert!(!shared.lock().release);
    drop(g);
    assert!(shared.lock().release, "dropping the guard releases");
}

/// Renews answered only when the next one is already due; the guard
/// asks for the release during the second renew.
struct BackToBack<'a> {
    now: Cell<u64>,
    log: Vec<&'static str>,
    shared: &'a Shared<Condvar>,
}

impl RenewIo for BackToBack<'_> {
    type Wake = Condvar;

    fn now(&self) -> Instant {
        Instant::from_millis(self.now.get())
    }

    async fn wait(&mut self, until: Instant, _: &Shared<Condvar>) -> bool {
        self.now.set(until.as_millis());
        true
    }

    async fn renew(&mut self, _: &mut LeaseDriver, _: &str, _: Instant) -> RenewReply {
        self.log.push("renew");
        self.now.set(self.now.get() + 5_000);
        if self.log.len() == 2 {
            self.shared.update(|s| s.release = true);
        }
        if self.log.len() > 5 {
            return Ok(Err(Error::Disconnected));
        }
        Ok(Ok(10))
    }

    async fn release(&mut self, _: &LeaseDriver, _: &str, _: Instant) -> ReleaseReply {
        self.log.push("release");
        Ok(Ok(()))
    }

    fn finish(mut self, released: bool) {
        self.log.push(if released { "clean" } else { "closed" });
        assert_eq!(self.log, ["renew", "renew", "release", "clean"]);
    }
}

#[test]
fn drive_releases_before_the_next_renew_and_reports_the_outcome() {
    let d = driver();
    let (g, renewer) = guard(&d);
    let io = BackToBack {
        now: Cell::new(0),
        log: Vec::new(),
        shared: &g.shared.clone(),
    };
    embassy_futures::block_on(drive(io, "k", d, renewer));
    let mut status = g.shared.lock();
    assert_eq!(status.state, State::Released);
    assert!(matches!(status.outcome(), Some(Ok(()))));
}
