//! Distributed locks and semaphores for blocking code, renewed by a thread.
//!
//! Named like the other dflockd clients: [`DistributedLock`] and
//! [`DistributedSemaphore`]. Each acquire takes an idle connection to the
//! server that owns the key (see [`routing`](crate::routing)) from the
//! pool, or opens one; a granted
//! [`LeaseGuard`] hands that connection to a thread that renews the lease,
//! driving the core [`LeaseDriver`], until the guard is released or
//! dropped. No async runtime is involved.
//!
//! With a [`Client`](super::Client) the renewal thread stays with its
//! connection: after a clean release both go back into the pool (the
//! thread parked on its channel), and the next acquire on that server
//! hands its lease to the same thread instead of spawning one. A pooled
//! connection that is closed, expires or is evicted is dropped with its
//! channel, which ends the parked thread. Connections are plain TCP, or TLS
//! with the builder's [`tls`](LockBuilder::tls) (feature `rustls`).
//!
//! ```no_run
//! # fn demo() -> Result<(), dflockd_client::Error<std::io::Error>> {
//! use std::time::Duration;
//! use dflockd_client::blocking::DistributedLock;
//!
//! let lock = DistributedLock::builder("orders")
//!     .lease_ttl(Duration::from_secs(30))
//!     .build();
//! if let Some(guard) = lock.acquire()? {
//!     // ... critical section; the lease is renewed by a thread ...
//!     guard.release()?;
//! }
//! # Ok(()) }
//! ```

use core::ops::ControlFlow;
use std::boxed::Box;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar};
use std::time::Duration;

use super::{BlockingTransport, HostConnection, StdTimer, block_on, std_instant, timeout_kind};
use crate::lock::{LeaseDriver, wire_secs};
use crate::runtime::host::lock::{
    Guard, Look, ReleaseReply, RenewIo, RenewReply, Renewer, Shared, Wake, dial, drive, lock_api,
};
use crate::runtime::host::pool::{checkin, checkout};
use crate::runtime::host::settings::{LINE, LockBuilder, Settings, sealed::FromSettings};
use crate::runtime::host::{HangUp, HangUpCloser};
use crate::time::{Instant, Timer};
use crate::{Enqueued as CoreEnqueued, Error};

use super::Result;

type Conn = HostConnection<LINE, 0>;

/// While waiting for the next renew, the renewal thread checks this often
/// whether the connection was closed, so a cut connection is reported long
/// before the lease deadline.
const CLOSED_POLL: Duration = Duration::from_millis(50);

lock_api! {
    async: [],
    await: [],
    cancel: "Blocks the calling thread, bounded by the timeouts.",
    run: {
        /// Runs `f` while holding: acquires (`Ok(None)` when the acquire
        /// timeout passed), calls `f` with the guard, releases, and returns
        /// its output.
        ///
        /// A closure cannot be stopped from outside: if the lease is lost
        /// while `f` runs, `f` still runs to the end (check
        /// [`LeaseGuard::is_lost`] at safe points), and its output is
        /// discarded for [`Error::LeaseLost`].
        pub fn run<R>(&self, f: impl FnOnce(&LeaseGuard) -> R) -> Result<Option<R>> {
            let Some(guard) = self.acquire()? else {
                return Ok(None);
            };
            let out = f(&guard);
            if guard.is_lost() {
                return Err(Error::LeaseLost);
            }
            // The connection closes after the release either way, so the
            // server frees the lease even if the release failed.
            let _ = guard.release();
            Ok(Some(out))
        }
    }
}

/// An idle connection in a client's pool together with its renewal
/// thread, parked on the other end of `worker`. Dropping it (expired,
/// evicted, closed by the server, pool dropped, or checked out and not
/// granted) closes the connection and ends the thread.
pub(crate) struct Parked {
    conn: Conn,
    worker: Sender<Job>,
}

/// Opens the connection of one acquire or enqueue: the one place a lock
/// connects, taking an idle one (with its parked renewal thread) from the
/// pool when it can.
fn connect(s: &Settings) -> Result<(Conn, Option<Sender<Job>>)> {
    let usable =
        |p: &mut Parked| p.conn.is_usable() && !p.conn.get_mut().transport_mut().peer_closed();
    if let Some(p) = checkout(s, usable)? {
        return Ok((p.conn, Some(p.worker)));
    }
    let (addr, opts, tls) = dial(s)?;
    Ok((Conn::connect_host(addr, &opts, tls.as_ref())?, None))
}

fn acquire_within(s: &Arc<Settings>, timeout: Duration) -> Result<Option<LeaseGuard>> {
    let (mut conn, worker) = connect(s)?;
    let spec = s.spec();
    let lease = conn.run(wire_secs(timeout), |c| {
        spec.acquire_within(c, &StdTimer, timeout)
    })?;
    lease
        .map(|l| LeaseGuard::spawn(conn, worker, s.clone(), l.into_driver()))
        .transpose()
}

fn enqueue(s: &Arc<Settings>) -> Result<Enqueued> {
    // A queued connection waits without its pooled thread (which ends).
    let (mut conn, worker) = connect(s)?;
    let spec = s.spec();
    Ok(Enqueued(
        match conn.run(0, |c| spec.enqueue(c, &StdTimer))? {
            CoreEnqueued::Acquired(l) => EnqueuedState::Acquired(LeaseGuard::spawn(
                conn,
                worker,
                s.clone(),
                l.into_driver(),
            )?),
            CoreEnqueued::Queued => EnqueuedState::Queued {
                conn: Box::new(conn),
                settings: s.clone(),
            },
        },
    ))
}

fn wait_within(
    mut conn: Box<Conn>,
    s: Arc<Settings>,
    timeout: Duration,
) -> Result<Option<LeaseGuard>> {
    let spec = s.spec();
    let lease = conn.run(wire_secs(timeout), |c| {
        spec.wait_within(c, &StdTimer, timeout)
    })?;
    let driver = lease.map(|l| l.into_driver());
    driver
        .map(|d| LeaseGuard::spawn(*conn, None, s.clone(), d))
        .transpose()
}

// ---- the guard ----------------------------------------------------------------

impl Wake for Condvar {
    type Timer = StdTimer;

    fn wake(&self) {
        self.notify_all();
    }

    /// Blocks the thread (run it in `block_on`).
    async fn until<T>(shared: &Shared<Self>, f: &mut Look<'_, T>) -> T {
        let mut status = shared.lock();
        loop {
            status = match f(&mut status) {
                ControlFlow::Break(out) => return out,
                ControlFlow::Continue(None) => {
                    shared.wake.wait(status).unwrap_or_else(|e| e.into_inner())
                }
                ControlFlow::Continue(Some(at)) => {
                    let left = at.saturating_duration_since(StdTimer.now());
                    let woken = shared.wake.wait_timeout(status, left);
                    woken.unwrap_or_else(|e| e.into_inner()).0
                }
            };
        }
    }
}

/// A held lock or semaphore slot, renewed by a background thread.
///
/// * [`release`](Self::release) releases and reports the outcome.
/// * Dropping the guard releases on the renewal thread (best effort; the
///   drop never blocks).
/// * [`is_lost`](Self::is_lost) (non-blocking) and
///   [`wait_lost`](Self::wait_lost) (blocking) report a renew that failed,
///   a connection that closed, a renewal thread that is gone or a deadline
///   that passed; from then on [`token`](Self::token) is `None`.
///
/// The guard compares with the clock itself: from the lease's conservative
/// [`deadline`](Self::deadline) on (when the acquire or the last
/// successful renew was sent, plus the lease) it reports the lease lost,
/// whatever the renewal thread is doing (a renew stuck on a dead network
/// cannot keep it "held").
#[derive(Debug)]
pub struct LeaseGuard(Guard<Condvar>);

/// One lease for a renewal thread.
struct Job {
    io: ThreadIo,
    driver: LeaseDriver,
    renewer: Renewer<Condvar>,
}

impl Job {
    fn run(self) {
        let settings = self.io.settings.clone();
        block_on(drive(self.io, &settings.key, self.driver, self.renewer));
    }
}

/// A renewal thread: renews `first`, then every lease sent on `jobs`
/// while its connection is pooled between them; ends when the sender is
/// dropped (the connection closed instead of pooled).
fn work(first: Job, jobs: Receiver<Job>) {
    first.run();
    while let Ok(job) = jobs.recv() {
        job.run();
    }
}

impl LeaseGuard {
    /// Starts renewing the lease of `driver` on `conn`: on `worker`, the
    /// thread parked with the pooled connection, or on a new thread.
    fn spawn(
        mut conn: Conn,
        worker: Option<Sender<Job>>,
        settings: Arc<Settings>,
        driver: LeaseDriver,
    ) -> Result<Self> {
        #[cfg(unix)]
        let hangup = {
            use std::os::fd::AsFd;
            HangUp::new(conn.get_mut().transport_mut().tcp().as_fd())
        };
        #[cfg(not(unix))]
        let hangup = HangUp::none();
        let (guard, renewer) =
            Guard::new(settings.clone(), &driver, hangup.clone(), Condvar::new());
        let mut job = Job {
            io: ThreadIo {
                conn,
                closer: HangUpCloser(hangup),
                settings,
                worker: None,
            },
            driver,
            renewer,
        };
        if let Some(worker) = worker {
            job.io.worker = Some(worker.clone());
            match worker.send(job) {
                Ok(()) => return Ok(LeaseGuard(guard)),
                // The parked thread is gone (it panicked): a new one.
                Err(back) => job = back.0,
            }
        }
        let (worker, jobs) = channel();
        job.io.worker = Some(worker);
        std::thread::Builder::new()
            .name("dflockd-lease".into())
            .spawn(move || work(job, jobs))
            .map_err(Error::Io)?;
        Ok(LeaseGuard(guard))
    }

    /// Blocks until the lease is lost (at the [`deadline`](Self::deadline)
    /// at the latest, unless renewed). Never returns while it is held.
    pub fn wait_lost(&self) {
        self.wait_lost_until(None);
    }

    /// Blocks until the lease is lost or `timeout` passed; whether it is
    /// lost.
    pub fn wait_lost_timeout(&self, timeout: Duration) -> bool {
        self.wait_lost_until(Some(StdTimer.now() + timeout))
    }

    fn wait_lost_until(&self, until: Option<Instant>) -> bool {
        block_on(self.0.lost_by(until))
    }

    /// Releases the lease and closes its connection; blocks until the
    /// server answered: at most the reply timeout or the time left on the
    /// lease, whichever is shorter (after the deadline there is nothing to
    /// release), plus a renew that may be in flight (bounded the same way).
    ///
    /// [`Error::LeaseLost`] when it was lost before; other errors as the
    /// release request reports them (the connection closes anyway, which
    /// frees the lease on the server).
    pub fn release(self) -> Result<()> {
        block_on(self.0.release())
    }
}

/// The renewal thread's IO: the connection, and the closer that shuts the
/// socket down when the lease ends, whatever the guard's duplicate
/// descriptor does. Its futures block the thread (run by `block_on`).
struct ThreadIo {
    conn: Conn,
    closer: HangUpCloser,
    /// Where the connection goes back after a clean release.
    settings: Arc<Settings>,
    /// The renewal thread's channel: pooled with the connection after a
    /// clean release, dropped (ending the thread) otherwise.
    worker: Option<Sender<Job>>,
}

impl ThreadIo {
    /// Gives the driver's next request its reply limit as the transport's
    /// deadline.
    fn arm(&mut self, limit: Instant) -> Result<()> {
        let transport = self.conn.get_mut().transport_mut();
        transport
            .set_deadline(Some(std_instant(limit)))
            .map_err(Error::Io)
    }
}

impl RenewIo for ThreadIo {
    type Wake = Condvar;

    fn now(&self) -> Instant {
        StdTimer.now()
    }

    async fn wait(&mut self, until: Instant, shared: &Shared<Condvar>) -> bool {
        let status = shared.lock();
        if !status.release {
            // Wakes this often to look at the connection.
            let left = until.saturating_duration_since(StdTimer.now());
            drop(shared.wake.wait_timeout(status, left.min(CLOSED_POLL)));
        }
        // A non-blocking peek: the server closed the connection, or sent
        // something nobody asked for (its idle-timeout `error`).
        self.conn.is_usable() && !self.conn.get_mut().transport_mut().peer_closed()
    }

    async fn renew(&mut self, d: &mut LeaseDriver, key: &str, limit: Instant) -> RenewReply {
        let token = *d.token();
        if let Err(e) = self.arm(limit) {
            return Ok(Err(e));
        }
        let renew = self
            .conn
            .get_mut()
            .renew(d.kind(), key, &token, d.request_secs());
        Ok(renew.await.map_err(timeout_kind))
    }

    async fn release(&mut self, d: &LeaseDriver, key: &str, limit: Instant) -> ReleaseReply {
        let token = *d.token();
        if let Err(e) = self.arm(limit) {
            return Ok(Err(e));
        }
        let release = self.conn.get_mut().release(d.kind(), key, &token);
        Ok(release.await.map_err(timeout_kind))
    }

    fn finish(self, released: bool) {
        // Released cleanly: the connection goes back to the pool with
        // this thread's channel, the closer leaves it open. Otherwise
        // dropped here: the connection closes (and the server frees
        // whatever it still holds for it), and the thread ends.
        if released
            && self.conn.is_usable()
            && let Some(worker) = self.worker
        {
            self.closer.0.keep_open();
            let parked = Parked {
                conn: self.conn,
                worker,
            };
            checkin(&self.settings, parked);
        }
    }
}
