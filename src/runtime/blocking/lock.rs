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
//! The renewal thread stays with its connection: after a clean release
//! both go back into the pool (the thread asleep), and the next acquire on
//! that server hands its lease to the same thread instead of spawning one,
//! most often without even waking it. A release runs on the caller's
//! thread. A pooled connection that is closed, expires or is evicted ends
//! its thread. Connections are plain TCP, or TLS with the builder's
//! [`tls`](LockBuilder::tls) (feature `rustls`).
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

use core::mem::take;
use core::ops::ControlFlow;
use std::boxed::Box;
use std::future::{Future, poll_fn};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::{HostConnection, StdTimer, block_on, std_instant};
use crate::lock::{LeaseDriver, wire_secs};
use crate::runtime::host::HangUp;
use crate::runtime::host::lock::{
    Guard, Look, ReleaseReply, RenewIo, RenewReply, Shared, Wake, drive, lock_api,
};
use crate::runtime::host::pool::{checkin, checkout};
use crate::runtime::host::settings::{LINE, LockBuilder, Settings, sealed::FromSettings};
use crate::time::{Instant, Timer};
use crate::{Enqueued as CoreEnqueued, Error};

use super::Result;

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

/// A connection and the renewal thread parked on it (none for one just
/// opened): what a client's pool keeps, an acquire takes and a queued
/// enqueue holds until its wait. Dropping it (expired, evicted, closed by
/// the server, pool dropped, or checked out and not granted) closes the
/// connection and ends the thread.
#[derive(Debug)]
pub(crate) struct Conn {
    wire: HostConnection<LINE, 0>,
    worker: Option<Arc<Worker>>,
    /// The hang-up watch of its guards, made once (shut down on drop).
    watch: Arc<HangUp>,
}

impl Conn {
    /// A non-blocking peek: whether the connection can carry requests (the
    /// server did not close it, nor send something nobody asked for, such
    /// as its idle-timeout `error`).
    fn usable(&mut self) -> bool {
        self.wire.is_usable() && !self.wire.get_mut().transport_mut().peer_closed()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.watch.close();
        if let Some(w) = &self.worker {
            w.close();
        }
    }
}

/// Opens the connection of one acquire or enqueue: the one place a lock
/// connects, taking an idle one (with its parked renewal thread) from the
/// pool when it can.
fn connect(s: &Settings) -> Result<Conn> {
    if let Some(conn) = checkout(s, Conn::usable)? {
        return Ok(conn);
    }
    let (addr, opts, tls) = s.dial()?;
    let mut wire = HostConnection::connect_host(addr, opts, tls.as_ref())?;
    #[cfg(unix)]
    let watch = {
        use std::os::fd::AsFd;
        HangUp::new(wire.get_mut().transport_mut().tcp().as_fd())
    };
    #[cfg(not(unix))]
    let watch = HangUp::none();
    Ok(Conn {
        wire,
        worker: None,
        watch,
    })
}

fn acquire_within(s: &Arc<Settings>, timeout: Duration) -> Result<Option<LeaseGuard>> {
    let mut conn = connect(s)?;
    let spec = s.spec();
    let lease = conn.wire.run(wire_secs(timeout), |c| {
        spec.acquire_within(c, &StdTimer, timeout)
    })?;
    lease
        .map(|l| LeaseGuard::spawn(conn, s.clone(), l.into_driver()))
        .transpose()
}

fn enqueue(s: &Arc<Settings>) -> Result<Enqueued> {
    // A queued connection keeps its parked thread for the grant.
    let mut conn = connect(s)?;
    let spec = s.spec();
    Ok(Enqueued(
        match conn.wire.run(0, |c| spec.enqueue(c, &StdTimer))? {
            CoreEnqueued::Acquired(l) => {
                EnqueuedState::Acquired(LeaseGuard::spawn(conn, s.clone(), l.into_driver())?)
            }
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
    let lease = conn.wire.run(wire_secs(timeout), |c| {
        spec.wait_within(c, &StdTimer, timeout)
    })?;
    lease
        .map(|l| LeaseGuard::spawn(*conn, s.clone(), l.into_driver()))
        .transpose()
}

/// Sleeps on `bell` until rung, or `left` passed when given.
fn sleep<'a, T>(
    bell: &Condvar,
    held: MutexGuard<'a, T>,
    left: Option<Duration>,
) -> MutexGuard<'a, T> {
    // Past the clock's range, std waits without a bound.
    let woken = bell.wait_timeout(held, left.unwrap_or(Duration::MAX));
    woken.unwrap_or_else(|e| e.into_inner()).0
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
                ControlFlow::Continue(at) => {
                    let left = at.map(|at| at.saturating_duration_since(StdTimer.now()));
                    sleep(&shared.wake, status, left)
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
pub struct LeaseGuard(Guard<Condvar>, Arc<Worker>);

/// A connection's renewal thread, and what it shares with the leases on
/// that connection.
///
/// `run` is the current lease's renewal loop ([`drive`] over the
/// connection) as a future; `None` between leases. Its IO blocks whichever
/// thread polls it; only the wait for the next renew suspends it
/// ([`ThreadIo::wait`]). The thread polls it when a renew is due;
/// [`LeaseGuard::release`] polls it on the caller's thread, so a release
/// needs no hand-off to the thread and back. Whoever polls holds the
/// mutex: a release never races a renew on the connection, it waits for
/// the one in flight. While a guard lives its connection carries no other
/// lease (it is pooled only once released), so `run` is its loop or
/// `None`.
///
/// When the thread polls next is [`Sched::wakes`], and only the loop sets
/// it, when it suspends: for its next renew, at most [`CLOSED_POLL`] ahead
/// (the loop then looks at the connection). The thread clears it as it
/// polls, so a loop that ends (or is absent) leaves the thread asleep until
/// rung. A release on the caller's thread leaves it as it was: the thread
/// wakes once more and finds nothing to poll, or the next lease's loop.
/// Setting it rings the thread only when it would wake too late: so a new
/// lease, whose loop `spawn` polls once itself, costs the thread no extra
/// wake-up unless it was idle with no lease. A dropped guard sets it to now
/// (the thread releases), the connection's end sets `closed` (the thread
/// ends).
#[derive(Default)]
struct Worker {
    run: Mutex<Option<Loop>>,
    sched: Mutex<Sched>,
    bell: Condvar,
}

/// A lease's renewal loop, as the renewal thread and a release poll it.
type Loop = Pin<Box<dyn Future<Output = ()> + Send>>;

#[derive(Default)]
struct Sched {
    /// When the thread polls the loop; `None`: only when rung.
    wakes: Option<std::time::Instant>,
    /// The connection is gone: the thread ends.
    closed: bool,
}

impl core::fmt::Debug for Worker {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Worker")
    }
}

impl Worker {
    fn sched(&self) -> MutexGuard<'_, Sched> {
        self.sched.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Has the thread poll the loop at `at`, ringing it if it would wake
    /// later.
    fn wake_at(&self, at: std::time::Instant) {
        let mut sched = self.sched();
        let sooner = sched.wakes.is_none_or(|t| at < t);
        sched.wakes = Some(at);
        drop(sched);
        if sooner {
            self.bell.notify_one();
        }
    }

    /// Ends the thread (the connection is gone).
    fn close(&self) {
        self.sched().closed = true;
        self.bell.notify_one();
    }

    /// Hands a new lease's loop to the thread: polled once here, which
    /// schedules the thread for it.
    fn start(&self, run: Loop) {
        *self.run.lock().unwrap_or_else(|e| e.into_inner()) = Some(run);
        self.poll();
    }

    /// Polls the loop once; whether it still runs. A loop that ends or
    /// panics is dropped (before the panic goes on, so its renewer reports
    /// the lease lost at once).
    fn poll(&self) -> bool {
        let mut slot = self.run.lock().unwrap_or_else(|e| e.into_inner());
        let cx = &mut Context::from_waker(Waker::noop());
        let poll = AssertUnwindSafe(|| slot.as_mut().map(|run| run.as_mut().poll(cx)));
        let polled = catch_unwind(poll);
        if !matches!(polled, Ok(Some(Poll::Pending))) {
            *slot = None;
        }
        drop(slot);
        let polled = polled.unwrap_or_else(|panic| resume_unwind(panic));
        polled.is_some_and(|p| p.is_pending())
    }
}

/// Suspends a renewal loop once: whoever polls it next resumes it.
async fn suspend() {
    let mut first = true;
    poll_fn(|_| match take(&mut first) {
        true => Poll::Pending,
        false => Poll::Ready(()),
    })
    .await
}

/// A connection's renewal thread (see [`Worker`]); ends with the
/// connection. It polls the loop when its schedule says, and otherwise
/// sleeps: a thread rung for a new lease only learns when to wake, so the
/// caller's release that usually follows at once does not find the loop
/// taken.
fn work(w: &Worker) {
    let mut sched = w.sched();
    while !sched.closed {
        let now = std::time::Instant::now();
        match sched.wakes {
            Some(t) if t <= now => {
                sched.wakes = None;
                drop(sched);
                w.poll();
                sched = w.sched();
            }
            wakes => sched = sleep(&w.bell, sched, wakes.map(|t| t - now)),
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        // Dropped without `release`, its loop running (or being polled):
        // the renewal thread releases, asked before it looks (again by the
        // inner guard's own drop, which is harmless).
        if self.1.run.try_lock().map_or(true, |run| run.is_some()) {
            self.0.ask_release();
            self.1.wake_at(std::time::Instant::now());
        }
    }
}

impl LeaseGuard {
    /// Starts renewing the lease of `driver` on `conn`: on the thread
    /// parked with the pooled connection, or on a new thread.
    fn spawn(mut conn: Conn, settings: Arc<Settings>, driver: LeaseDriver) -> Result<Self> {
        let hangup = conn.watch.clone();
        let worker = match conn.worker.clone() {
            Some(worker) => worker,
            None => {
                // A new connection's thread, started before the lease is
                // handed over: if it cannot start, the connection closes.
                let worker = Arc::<Worker>::default();
                let w = worker.clone();
                std::thread::Builder::new()
                    .name("dflockd-lease".into())
                    .spawn(move || work(&w))
                    .map_err(Error::Io)?;
                conn.worker.insert(worker).clone()
            }
        };
        let (guard, renewer) = Guard::new(settings.clone(), &driver, hangup, Condvar::new());
        let io = ThreadIo {
            conn,
            settings: settings.clone(),
        };
        let run = async move { drive(io, &settings.key, driver, renewer).await };
        worker.start(Box::pin(run));
        Ok(LeaseGuard(guard, worker))
    }

    /// Blocks until the lease is lost (at the [`deadline`](Self::deadline)
    /// at the latest, unless renewed). Never returns while it is held.
    pub fn wait_lost(&self) {
        block_on(self.0.lost_by(None));
    }

    /// Blocks until the lease is lost or `timeout` passed; whether it is
    /// lost.
    pub fn wait_lost_timeout(&self, timeout: Duration) -> bool {
        block_on(self.0.lost_by(Some(StdTimer.now() + timeout)))
    }

    /// Releases the lease, on the calling thread (no hand-off to the
    /// renewal thread); blocks until the server answered: at most the reply
    /// timeout or the time left on the lease, whichever is shorter (after
    /// the deadline there is nothing to release), plus a renew that may be
    /// in flight (bounded the same way). The connection then goes back to
    /// the pool.
    ///
    /// [`Error::LeaseLost`] when it was lost before; other errors as the
    /// release request reports them (the connection closes then, which
    /// frees the lease on the server).
    pub fn release(self) -> Result<()> {
        // Asked without waking the renewal thread: the loop runs here.
        self.0.shared.lock().release = true;
        while self.1.poll() {}
        let out = self.0.shared.lock().outcome();
        out.unwrap_or(Err(Error::LeaseLost))
    }
}

/// The renewal loop's IO: the connection (with its renewal thread: pooled
/// with it after a clean release, closed and ended with it otherwise). Its
/// futures block the thread that polls them.
struct ThreadIo {
    conn: Conn,
    /// Where the connection goes back after a clean release.
    settings: Arc<Settings>,
}

impl RenewIo for ThreadIo {
    type Wake = Condvar;

    async fn wait(&mut self, until: Instant, shared: &Shared<Condvar>) -> bool {
        // Scheduled before looking for a release asked: a dropped guard's
        // wake-up (set after its ask) is overwritten only when this sees it.
        if let Some(w) = &self.conn.worker {
            w.wake_at(std_instant(until).min(std::time::Instant::now() + CLOSED_POLL));
        }
        if !shared.lock().release {
            // The thread sleeps without holding the loop (see `work`), so a
            // release can take it meanwhile.
            suspend().await;
        }
        self.conn.usable()
    }

    // The driver's reply limit is the request's deadline.
    async fn renew(&mut self, d: &mut LeaseDriver, key: &str, limit: Instant) -> RenewReply {
        let (kind, token, secs) = (d.kind(), d.token(), d.request_secs());
        let renew = self.conn.wire.request(Some(std_instant(limit)), |c| {
            c.renew(kind, key, token, secs)
        });
        Ok(renew.await)
    }

    async fn release(&mut self, d: &LeaseDriver, key: &str, limit: Instant) -> ReleaseReply {
        let release = self.conn.wire.request(Some(std_instant(limit)), |c| {
            c.release(d.kind(), key, d.token())
        });
        Ok(release.await)
    }

    fn finish(self, released: bool) {
        // Released cleanly: the connection goes back to the pool with its
        // thread. Otherwise dropped here: the connection closes (and the
        // server frees whatever it still holds for it), and its thread
        // ends.
        if released && self.conn.wire.is_usable() {
            checkin(&self.settings, self.conn);
        }
    }
}

#[cfg(test)]
mod tests;
