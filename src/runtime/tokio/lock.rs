//! Distributed locks and semaphores on tokio, renewed by a background task.
//!
//! Named like the other dflockd clients: [`DistributedLock`] and
//! [`DistributedSemaphore`]. Each acquire takes an idle connection to the
//! server that owns the key (see [`routing`](crate::routing)) from the
//! pool, or opens one; a granted
//! [`LeaseGuard`] hands that connection to a background task that renews
//! the lease, driving the core [`LeaseDriver`], until the guard is
//! released or dropped. Connections are plain TCP, or TLS with the
//! builder's [`tls`](LockBuilder::tls) (feature `rustls`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), dflockd_client::Error<std::io::Error>> {
//! use std::time::Duration;
//! use dflockd_client::tokio::DistributedLock;
//!
//! let lock = DistributedLock::builder("orders")
//!     .lease_ttl(Duration::from_secs(30))
//!     .build();
//! if let Some(guard) = lock.acquire().await? {
//!     // ... critical section; the lease is renewed in the background ...
//!     guard.release().await?;
//! }
//! # Ok(()) }
//! ```
//!
//! # Cancellation
//!
//! Every future here owns the connection it works on. Dropping an
//! [`acquire`](DistributedLock::acquire) or [`Enqueued::wait`] future drops
//! (closes) its connection, so the server cancels the wait or releases a
//! grant it may already have made: nothing is left stranded. Dropping a
//! [`LeaseGuard`] releases in the background without blocking.

use core::ops::ControlFlow;
use std::boxed::Box;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime;
use tokio::sync::Notify;
use tokio::time::Sleep;

use super::{HostConnection, TokioTimer, connect_host, tokio_instant};
use crate::lock::LeaseDriver;
use crate::runtime::host::HangUp;
#[cfg(unix)]
use crate::runtime::host::hung_up;
use crate::runtime::host::lock::{
    Guard, Look, ReleaseReply, RenewIo, RenewReply, Shared, Wake, drive, lock_api,
};
use crate::runtime::host::pool::{checkin, checkout};
use crate::runtime::host::settings::{LINE, LockBuilder, Settings, sealed::FromSettings};
use crate::time::{Elapsed, Instant, Timer};
use crate::{Enqueued as CoreEnqueued, Error};

use super::Result;

lock_api! {
    async: [async],
    await: [.await],
    cancel: "Cancel-safe in effect: a dropped future closes its own connection, \
             so the server cancels the wait (or leaves the queue) or releases a \
             grant it may already have made.",
    run: {
        /// Runs `body` while holding: acquires (`Ok(None)` when the acquire
        /// timeout passed), runs `body`, releases, and returns its output.
        ///
        /// If the lease is lost meanwhile, `body` is dropped at its current
        /// `.await` and the result is [`Error::LeaseLost`].
        ///
        /// Cancel-safe: dropping the future drops `body` and releases in
        /// the background.
        pub async fn run<F: Future>(&self, body: F) -> Result<Option<F::Output>> {
            let Some(guard) = self.acquire().await? else {
                return Ok(None);
            };
            tokio::select! {
                biased;
                () = guard.lost() => Err(Error::LeaseLost),
                out = body => {
                    // The connection closes after the release either way,
                    // so the server frees the lease even if it failed.
                    let _ = guard.release().await;
                    Ok(Some(out))
                }
            }
        }
    }
}

/// A lock connection with what its leases reuse: the hang-up watch of
/// their guards (a duplicate of its socket, made once) and the timer that
/// bounds the renewal task's requests. What a client's pool keeps, an
/// acquire takes and a queued enqueue holds until its wait. Dropping it
/// shuts the socket down, whoever else holds the watch, so the server sees
/// the close (and frees whatever it still holds for it).
#[derive(Debug)]
pub(super) struct Conn {
    wire: HostConnection<LINE, 0>,
    watch: Arc<HangUp>,
    /// One timer for every renew and release on the connection: moved from
    /// one deadline to the next rather than registered anew, so a request
    /// does not wake the timer driver.
    deadline: Pin<Box<Sleep>>,
    /// The runtime whose drivers serve the socket and the timer.
    runtime: runtime::Id,
}

impl Conn {
    fn new(mut wire: HostConnection<LINE, 0>) -> Self {
        #[cfg(unix)]
        let watch = HangUp::new(socket(&mut wire));
        #[cfg(not(unix))]
        let watch = HangUp::none();
        Self {
            wire,
            watch,
            deadline: Box::pin(tokio::time::sleep(Duration::ZERO)),
            runtime: runtime::Handle::current().id(),
        }
    }

    /// Whether a pooled connection can carry the next request: it belongs
    /// to this runtime, is not poisoned, and the server has not closed it
    /// (nor, on plain TCP, sent anything).
    fn reusable(&mut self) -> bool {
        let here = runtime::Handle::try_current().is_ok_and(|h| h.id() == self.runtime);
        if !here || !self.wire.is_usable() {
            return false;
        }
        #[cfg(unix)]
        {
            // Any byte counts on plain TCP; TLS may send records of its own.
            let plain = !self.wire.transport_mut().is_tls();
            !hung_up(socket(&mut self.wire), plain)
        }
        #[cfg(not(unix))]
        true
    }
}

/// `request` bounded by `limit` on the connection's `timer`.
async fn bounded<T>(
    timer: &mut Pin<Box<Sleep>>,
    limit: Instant,
    request: impl Future<Output = T>,
) -> core::result::Result<T, Elapsed> {
    timer.as_mut().reset(tokio_instant(limit));
    tokio::select! {
        biased;
        out = request => Ok(out),
        () = timer.as_mut() => Err(Elapsed),
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.watch.close();
    }
}

/// The connection's TCP socket, watched for the peer's hang-up.
#[cfg(unix)]
fn socket(conn: &mut HostConnection<LINE, 0>) -> std::os::fd::BorrowedFd<'_> {
    use std::os::fd::AsFd;
    match conn.transport_mut() {
        super::HostStream::Plain(s) => s.inner().as_fd(),
        #[cfg(feature = "rustls")]
        super::HostStream::Tls(s) => s.inner().get_ref().0.as_fd(),
    }
}

/// Opens the connection of one acquire or enqueue: the one place a lock
/// connects, taking an idle one from the pool when it can. Boxed: moved
/// through the pool, the requests and the renewal task as a pointer.
async fn connect(s: &Settings) -> Result<Box<Conn>> {
    if let Some(conn) = checkout(s, |c: &mut Box<Conn>| c.reusable())? {
        return Ok(conn);
    }
    let (addr, opts, tls) = s.dial()?;
    let wire = connect_host(addr, opts, tls.as_ref()).await?;
    Ok(Box::new(Conn::new(wire)))
}

async fn acquire_within(s: &Arc<Settings>, timeout: Duration) -> Result<Option<LeaseGuard>> {
    let mut conn = connect(s).await?;
    let lease = s
        .spec()
        .acquire_within(&mut conn.wire, &TokioTimer, timeout)
        .await?;
    Ok(lease.map(|l| LeaseGuard::spawn(conn, s.clone(), l.into_driver())))
}

async fn enqueue(s: &Arc<Settings>) -> Result<Enqueued> {
    let mut conn = connect(s).await?;
    Ok(Enqueued(
        match s.spec().enqueue(&mut conn.wire, &TokioTimer).await? {
            CoreEnqueued::Acquired(l) => {
                EnqueuedState::Acquired(LeaseGuard::spawn(conn, s.clone(), l.into_driver()))
            }
            CoreEnqueued::Queued => EnqueuedState::Queued {
                conn,
                settings: s.clone(),
            },
        },
    ))
}

async fn wait_within(
    mut conn: Box<Conn>,
    s: Arc<Settings>,
    timeout: Duration,
) -> Result<Option<LeaseGuard>> {
    let lease = s
        .spec()
        .wait_within(&mut conn.wire, &TokioTimer, timeout)
        .await?;
    Ok(lease.map(|l| LeaseGuard::spawn(conn, s.clone(), l.into_driver())))
}

// ---- the guard ----------------------------------------------------------------

impl Wake for Notify {
    type Timer = TokioTimer;

    fn wake(&self) {
        self.notify_waiters();
    }

    async fn until<T>(shared: &Shared<Self>, f: &mut Look<'_, T>) -> T {
        loop {
            // Registered before the status is read: no change is missed.
            let mut changed = std::pin::pin!(shared.wake.notified());
            changed.as_mut().enable();
            let at = match f(&mut shared.lock()) {
                ControlFlow::Break(out) => return out,
                ControlFlow::Continue(at) => at,
            };
            tokio::select! {
                () = changed => {}
                () = TokioTimer.sleep_until(at.unwrap_or(Instant::from_millis(0))), if at.is_some() => {}
            }
        }
    }
}

/// A held lock or semaphore slot, renewed by a background task.
///
/// * [`release`](Self::release) releases and reports the outcome.
/// * Dropping the guard releases in the background (best effort; it never
///   blocks). If the runtime shuts down first, the connection closes and
///   the server releases; the guard then reports the lease lost.
/// * [`lost`](Self::lost) completes when a renew failed, the connection
///   closed or the lease deadline passed; from then on
///   [`token`](Self::token) is `None`.
///
/// The guard compares with the clock itself: from the lease's conservative
/// [`deadline`](Self::deadline) on (when the acquire or the last
/// successful renew was sent, plus the lease) it reports the lease lost,
/// whatever the renewal task is doing.
#[derive(Debug)]
pub struct LeaseGuard(Guard<Notify>);

impl LeaseGuard {
    fn spawn(conn: Box<Conn>, settings: Arc<Settings>, driver: LeaseDriver) -> Self {
        let (guard, renewer) =
            Guard::new(settings.clone(), &driver, conn.watch.clone(), Notify::new());
        let io = TaskIo {
            conn,
            settings: settings.clone(),
        };
        tokio::spawn(async move { drive(io, &settings.key, driver, renewer).await });
        LeaseGuard(guard)
    }

    /// Completes when the lease is lost: a renew failed, the connection
    /// closed, the renewal task is gone, or the deadline passed without a
    /// successful renew (at the [`deadline`](Self::deadline) at the latest,
    /// by the clock). Never completes while the lease is held.
    ///
    /// Cancel-safe.
    pub async fn lost(&self) {
        self.0.lost_by(None).await;
    }

    /// Releases the lease and closes its connection.
    ///
    /// [`Error::LeaseLost`] when it was lost before; other errors as the
    /// release request reports them (the connection closes anyway, which
    /// frees the lease on the server).
    ///
    /// Cancel-safe: once called, the release completes in the background
    /// even if this future is dropped.
    pub async fn release(self) -> Result<()> {
        self.0.release().await
    }
}

/// The renewal task's IO: the connection (closed when the task ends or
/// is dropped, unless it went back to the pool).
struct TaskIo {
    conn: Box<Conn>,
    /// Where the connection goes back after a clean release.
    settings: Arc<Settings>,
}

impl RenewIo for TaskIo {
    type Wake = Notify;

    async fn wait(&mut self, until: Instant, shared: &Shared<Notify>) -> bool {
        let conn = &mut self.conn.wire;
        tokio::select! {
            biased;
            () = shared.release_or(until) => true,
            // The connection keeps no pushes, so every push is dropped and
            // only an error ends the loop: end of stream, a transport
            // error, or an unsolicited line such as the server's
            // idle-timeout `error`. Cancel-safe between lines.
            () = async { while conn.next_signal().await.is_ok() {} } => false,
        }
    }

    async fn renew(&mut self, d: &mut LeaseDriver, key: &str, limit: Instant) -> RenewReply {
        let token = *d.token();
        let Conn { wire, deadline, .. } = &mut *self.conn;
        bounded(
            deadline,
            limit,
            wire.renew(d.kind(), key, &token, d.request_secs()),
        )
        .await
    }

    async fn release(&mut self, d: &LeaseDriver, key: &str, limit: Instant) -> ReleaseReply {
        let token = *d.token();
        let Conn { wire, deadline, .. } = &mut *self.conn;
        bounded(deadline, limit, wire.release(d.kind(), key, &token)).await
    }

    fn finish(self, released: bool) {
        // Released cleanly: the connection goes back to the pool.
        // Otherwise dropped here: the connection closes.
        if released && self.conn.wire.is_usable() {
            checkin(&self.settings, self.conn);
        }
    }
}
