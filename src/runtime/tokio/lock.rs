//! Distributed locks and semaphores on tokio, renewed by a background task.
//!
//! Named like the other dflockd clients: [`DistributedLock`] and
//! [`DistributedSemaphore`]. Each acquire opens its own connection to the
//! server that owns the key (see [`routing`](crate::routing)); a granted
//! [`LeaseGuard`] hands that connection to a background task that renews
//! the lease with the core schedule ([`Lease::hold`]) until the guard is
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

use std::boxed::Box;
use std::future::Future;
use std::string::String;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use super::{ConnectOptions, HostConnection, TokioTimer, connect_host, tokio_instant};
use crate::lock::Lease;
#[cfg(unix)]
use crate::runtime::host::hung_up;
use crate::runtime::host::pool::{checkin, checkout};
use crate::runtime::host::settings::{
    LINE, LockBuilder, Settings, sealed::FromSettings, secs_ceil,
};
use crate::runtime::host::{HangUp, HangUpCloser};
use crate::time::{Instant, Timer};
use crate::{Error, Grant, Kind, Token};

use super::Result;

type Conn = HostConnection<LINE, 0>;

/// Runs a connection request with a client-side deadline.
async fn bounded<T, F>(dur: Duration, fut: F) -> Result<T>
where
    F: Future<Output = Result<T>>,
{
    tokio::time::timeout(dur, fut)
        .await
        .map_err(|_| Error::Timeout)?
}

/// Whether a pooled connection can carry the next request: not poisoned,
/// and the server has not closed it (nor, on plain TCP, sent anything).
fn reusable(conn: &mut Conn) -> bool {
    if !conn.is_usable() {
        return false;
    }
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        match conn.transport_mut() {
            super::HostStream::Plain(s) => !hung_up(s.inner().as_fd(), true),
            #[cfg(feature = "rustls")]
            super::HostStream::Tls(s) => !hung_up(s.inner().get_ref().0.as_fd(), false),
        }
    }
    #[cfg(not(unix))]
    true
}

/// What locks and semaphores share.
#[derive(Debug, Clone)]
struct Resource(Arc<Settings>);

impl Resource {
    async fn connect(&self) -> Result<Conn> {
        let s = &self.0;
        if let Some(conn) = checkout(s, reusable)? {
            return Ok(conn);
        }
        let opts = ConnectOptions {
            connect_timeout: s.connect_timeout,
            io_timeout: s.options.io_timeout,
            auth_token: s.auth_token.clone(),
        };
        let addr = s.server()?;
        let tls = s.tls_for(addr)?;
        connect_host::<LINE, 0>(addr, &opts, tls.as_ref()).await
    }

    async fn acquire_within(&self, timeout: Duration) -> Result<Option<LeaseGuard>> {
        let s = &self.0;
        let mut conn = self.connect().await?;
        let secs = secs_ceil(timeout);
        let limit = Duration::from_secs(secs).saturating_add(s.options.io_timeout);
        let lease = s.spec().options().lease_ttl.map(|d| secs_ceil(d).max(1));
        let sent = TokioTimer.now();
        let grant = bounded(limit, conn.acquire(s.kind, &s.key, secs, lease)).await?;
        let received = TokioTimer.now();
        Ok(grant.map(|g| LeaseGuard::spawn(conn, self.0.clone(), g, sent, received)))
    }

    async fn enqueue(&self) -> Result<Enqueued> {
        let s = &self.0;
        let mut conn = self.connect().await?;
        let lease = s.spec().options().lease_ttl.map(|d| secs_ceil(d).max(1));
        let sent = TokioTimer.now();
        let reply = bounded(s.options.io_timeout, conn.enqueue(s.kind, &s.key, lease)).await?;
        let received = TokioTimer.now();
        Ok(Enqueued(match reply {
            crate::Enqueued::Acquired(g) => {
                EnqueuedState::Acquired(LeaseGuard::spawn(conn, self.0.clone(), g, sent, received))
            }
            crate::Enqueued::Queued => EnqueuedState::Queued {
                conn: Box::new(conn),
                settings: self.0.clone(),
            },
        }))
    }

    async fn run<F: Future>(&self, body: F) -> Result<Option<F::Output>> {
        let Some(guard) = self.acquire_within(self.0.options.acquire_timeout).await? else {
            return Ok(None);
        };
        tokio::select! {
            biased;
            () = guard.lost() => Err(Error::LeaseLost),
            out = body => {
                // The connection closes after the release either way, so
                // the server frees the lease even if the release failed.
                let _ = guard.release().await;
                Ok(Some(out))
            }
        }
    }
}

macro_rules! host_api {
    () => {
        /// The key.
        pub fn key(&self) -> &str {
            &self.0.0.key
        }

        /// Acquires, letting the server block up to the acquire timeout.
        /// `Ok(None)` when it passed without a grant.
        ///
        /// Errors: connecting or authenticating failed; [`Error::Timeout`]
        /// when no reply came within the acquire timeout plus the reply
        /// timeout; a server error status.
        ///
        /// Cancel-safe in effect: a dropped future closes its own
        /// connection, so the server cancels the wait or releases a grant
        /// it may already have made.
        pub async fn acquire(&self) -> Result<Option<LeaseGuard>> {
            self.0
                .acquire_within(self.0.0.options.acquire_timeout)
                .await
        }

        /// Tries once without blocking on the server. `Ok(None)` when
        /// held elsewhere. Cancel-safe as [`acquire`](Self::acquire).
        pub async fn try_acquire(&self) -> Result<Option<LeaseGuard>> {
            self.0.acquire_within(Duration::ZERO).await
        }

        /// [`acquire`](Self::acquire) with another timeout. Cancel-safe as
        /// [`acquire`](Self::acquire).
        pub async fn acquire_within(&self, timeout: Duration) -> Result<Option<LeaseGuard>> {
            self.0.acquire_within(timeout).await
        }

        /// Two-phase, first half: joins the queue without blocking. Run
        /// your code, then collect the grant with [`Enqueued::wait`]. Keep the
        /// code between them shorter than the server's idle timeout (23 s
        /// by default): a queued connection is silent.
        ///
        /// Cancel-safe as [`acquire`](Self::acquire): a dropped future
        /// closes its connection, which leaves the queue.
        pub async fn enqueue(&self) -> Result<Enqueued> {
            self.0.enqueue().await
        }

        /// Runs `body` while holding: acquires (`Ok(None)` when the acquire
        /// timeout passed), runs `body`, releases, and returns its output.
        ///
        /// If the lease is lost meanwhile, `body` is dropped at its current
        /// `.await` and the result is [`Error::LeaseLost`].
        ///
        /// Cancel-safe: dropping the future drops `body` and releases in
        /// the background.
        pub async fn run<F: Future>(&self, body: F) -> Result<Option<F::Output>> {
            self.0.run(body).await
        }
    };
}

/// A distributed exclusive lock on one key.
///
/// Cheap to clone; every acquire opens its own connection.
#[derive(Debug, Clone)]
pub struct DistributedLock(Resource);

impl DistributedLock {
    /// A lock on `key` at [`DEFAULT_SERVER`](super::DEFAULT_SERVER) with
    /// default options.
    pub fn new(key: impl Into<String>) -> Self {
        Self::builder(key).build()
    }

    /// A builder for a lock on `key`.
    pub fn builder(key: impl Into<String>) -> LockBuilder<Self> {
        LockBuilder::new(key.into(), Kind::Lock)
    }

    host_api!();
}

impl FromSettings for DistributedLock {
    fn from_settings(settings: Settings) -> Self {
        Self(Resource(Arc::new(settings)))
    }
}

/// A distributed counting semaphore on one key: at most `limit` holders.
///
/// Cheap to clone; every acquire opens its own connection. All clients of
/// a key must use the same limit (`error_limit_mismatch` otherwise).
#[derive(Debug, Clone)]
pub struct DistributedSemaphore(Resource);

impl DistributedSemaphore {
    /// A semaphore on `key` admitting `limit` holders, at
    /// [`DEFAULT_SERVER`](super::DEFAULT_SERVER) with default options.
    pub fn new(key: impl Into<String>, limit: u32) -> Self {
        Self::builder(key, limit).build()
    }

    /// A builder for a semaphore on `key` admitting `limit` holders.
    pub fn builder(key: impl Into<String>, limit: u32) -> LockBuilder<Self> {
        LockBuilder::new(key.into(), Kind::Semaphore { limit })
    }

    /// The semaphore's limit.
    pub fn limit(&self) -> u32 {
        match self.0.0.kind {
            Kind::Semaphore { limit } => limit,
            Kind::Lock => 1,
        }
    }

    host_api!();
}

impl FromSettings for DistributedSemaphore {
    fn from_settings(settings: Settings) -> Self {
        Self(Resource(Arc::new(settings)))
    }
}

// ---- two-phase --------------------------------------------------------------

/// A place in a key's queue, from `enqueue`: granted at once, or queued
/// until [`wait`](Self::wait).
#[derive(Debug)]
pub struct Enqueued(EnqueuedState);

#[derive(Debug)]
enum EnqueuedState {
    Acquired(LeaseGuard),
    Queued {
        conn: Box<Conn>,
        settings: Arc<Settings>,
    },
}

impl Enqueued {
    /// Whether the lease was granted at once (then `wait` returns it
    /// without asking the server; it is already being renewed).
    pub fn is_acquired(&self) -> bool {
        matches!(self.0, EnqueuedState::Acquired(_))
    }

    /// Two-phase, second half: waits up to the acquire timeout for the
    /// grant. `Ok(None)` on timeout (the server then forgets the waiter).
    ///
    /// Cancel-safe in effect: a dropped future closes the connection, so
    /// the server drops the waiter or releases a grant it already made.
    pub async fn wait(self) -> Result<Option<LeaseGuard>> {
        let timeout = match &self.0 {
            EnqueuedState::Acquired(_) => Duration::ZERO,
            EnqueuedState::Queued { settings, .. } => settings.options.acquire_timeout,
        };
        self.wait_within(timeout).await
    }

    /// [`wait`](Self::wait) with another timeout. Cancel-safe as `wait`.
    pub async fn wait_within(self, timeout: Duration) -> Result<Option<LeaseGuard>> {
        match self.0 {
            EnqueuedState::Acquired(guard) => Ok(Some(guard)),
            EnqueuedState::Queued { mut conn, settings } => {
                let secs = secs_ceil(timeout);
                let limit = Duration::from_secs(secs).saturating_add(settings.options.io_timeout);
                let sent = TokioTimer.now();
                let grant = bounded(limit, conn.wait(settings.kind, &settings.key, secs)).await?;
                let received = TokioTimer.now();
                Ok(grant.map(|g| LeaseGuard::spawn(*conn, settings, g, sent, received)))
            }
        }
    }
}

// ---- the guard ----------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Held,
    Lost,
    Released,
}

type ReleaseReply = oneshot::Sender<Result<()>>;

/// A held lock or semaphore slot, renewed by a background task.
///
/// * [`release`](Self::release) releases and reports the outcome.
/// * Dropping the guard releases in the background (best effort; it never
///   blocks). If the runtime shuts down first, the connection closes and
///   the server releases.
/// * [`lost`](Self::lost) completes when a renew failed, the connection
///   closed or the lease deadline passed; from then on
///   [`token`](Self::token) is `None`.
///
/// The guard compares with the clock itself: from the lease's conservative
/// [`deadline`](Self::deadline) on (when the acquire or the last
/// successful renew was sent, plus the lease) it reports the lease lost,
/// whatever the renewal task is doing.
#[derive(Debug)]
pub struct LeaseGuard {
    settings: Arc<Settings>,
    token: Token,
    ttl: Duration,
    state: watch::Receiver<State>,
    /// The lease's conservative deadline, in [`TokioTimer`] milliseconds.
    deadline: Arc<AtomicU64>,
    /// The connection's hang-up, seen at once by `is_lost`.
    hangup: Arc<HangUp>,
    release: Option<oneshot::Sender<ReleaseReply>>,
}

/// Completes when the connection is closed or unusable (it keeps no
/// pushes, so every push is dropped and only an error ends the loop: end
/// of stream, a transport error, or an unsolicited line such as the
/// server's idle-timeout `error`). Cancel-safe between lines.
async fn closed(conn: &mut Conn) {
    while conn.next_signal().await.is_ok() {}
}

impl LeaseGuard {
    fn spawn(
        mut conn: Conn,
        settings: Arc<Settings>,
        grant: Grant,
        sent: Instant,
        received: Instant,
    ) -> Self {
        let (state_tx, state) = watch::channel(State::Held);
        let (release, mut release_rx) = oneshot::channel::<ReleaseReply>();
        let first = {
            let spec = settings.spec();
            Lease::from_grant(&spec, grant, sent, received).deadline()
        };
        let deadline = Arc::new(AtomicU64::new(first.as_millis()));
        #[cfg(unix)]
        let hangup = {
            use std::os::fd::AsFd;
            match conn.transport_mut() {
                super::HostStream::Plain(s) => HangUp::new(s.inner().as_fd()),
                #[cfg(feature = "rustls")]
                super::HostStream::Tls(s) => HangUp::new(s.inner().get_ref().0.as_fd()),
            }
        };
        #[cfg(not(unix))]
        let hangup = HangUp::none();
        let closer = HangUpCloser(hangup.clone());
        let task_deadline = deadline.clone();
        let task_settings = settings.clone();
        tokio::spawn(async move {
            // Shuts the socket down when the task ends or is dropped,
            // whatever the guard's duplicate descriptor does.
            let closer = closer;
            let spec = task_settings.spec();
            let mut lease = Lease::from_grant(&spec, grant, sent, received);
            loop {
                let wake = lease.next_renew_at();
                // The release request first, every time: renews due back
                // to back never starve it.
                let request = tokio::select! {
                    biased;
                    r = &mut release_rx => Some(r.ok()),
                    () = TokioTimer.sleep_until(wake) => None,
                    () = closed(&mut conn) => {
                        warn!("lease on {} lost: connection closed", lease.key());
                        state_tx.send_replace(State::Lost);
                        return;
                    }
                };
                if let Some(reply) = request {
                    // Bounded by the reply timeout and the lease's deadline.
                    let out = lease.release(&mut conn, &TokioTimer).await;
                    state_tx.send_replace(State::Released);
                    // Released cleanly: the connection is reused (put back
                    // before the reply, so the caller's next acquire finds it).
                    if out.is_ok() && conn.is_usable() {
                        closer.0.keep_open();
                        checkin(&task_settings, conn);
                    }
                    if let Some(reply) = reply {
                        let _ = reply.send(out);
                    }
                    return;
                }
                match lease.renew(&mut conn, &TokioTimer).await {
                    Ok(()) => task_deadline.store(lease.deadline().as_millis(), Ordering::SeqCst),
                    Err(_) => {
                        warn!("lease on {} lost: renew failed", lease.key());
                        state_tx.send_replace(State::Lost);
                        return;
                    }
                }
            }
            // The connection closes when the task ends.
        });
        LeaseGuard {
            settings,
            token: grant.token,
            ttl: Duration::from_secs(grant.lease),
            state,
            deadline,
            hangup,
            release: Some(release),
        }
    }

    fn deadline_at(&self) -> Instant {
        Instant::from_millis(self.deadline.load(Ordering::SeqCst))
    }

    /// The lease's conservative deadline: when the acquire or the last
    /// successful renew was sent, plus the lease. The server cannot have
    /// expired the lease before it; from it on the guard reports the lease
    /// lost unless a renew moved it.
    pub fn deadline(&self) -> std::time::Instant {
        tokio_instant(self.deadline_at()).into_std()
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.settings.key
    }

    /// Lock or semaphore.
    pub fn kind(&self) -> Kind {
        self.settings.kind
    }

    /// The lease token, or `None` once the lease is lost.
    pub fn token(&self) -> Option<Token> {
        (!self.is_lost()).then_some(self.token)
    }

    /// The fencing value of the token (see [`Token::fence`]), or `None`
    /// once the lease is lost.
    pub fn fence(&self) -> Option<crate::Fence> {
        self.token().map(|t| t.fence())
    }

    /// The lease TTL granted by the server.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Whether the lease is known to be lost: the renewal task gave up,
    /// the clock passed the [`deadline`](Self::deadline), or (Linux) the
    /// connection is closed — with the server's auto-release on disconnect
    /// the lease may be someone else's already (never blocks).
    pub fn is_lost(&self) -> bool {
        // A renewal task that is gone without releasing (runtime shut
        // down) counts as lost.
        *self.state.borrow() != State::Held
            || self.state.has_changed().is_err()
            || TokioTimer.now() >= self.deadline_at()
            || self.hangup.seen()
    }

    /// Completes when the lease is lost: a renew failed, the connection
    /// closed, or the deadline passed without a successful renew (at the
    /// [`deadline`](Self::deadline) at the latest, by the clock). Never
    /// completes while the lease is held.
    ///
    /// Cancel-safe.
    pub async fn lost(&self) {
        let mut state = self.state.clone();
        loop {
            let deadline = self.deadline_at();
            tokio::select! {
                _ = state.wait_for(|s| *s != State::Held) => return,
                () = TokioTimer.sleep_until(deadline) => {}
            }
            // A renew may have moved the deadline meanwhile.
            if TokioTimer.now() >= self.deadline_at() {
                return;
            }
        }
    }

    /// Releases the lease and closes its connection.
    ///
    /// [`Error::LeaseLost`] when it was lost before; other errors as the
    /// release request reports them (the connection closes anyway, which
    /// frees the lease on the server).
    ///
    /// Cancel-safe: once called, the release completes in the background
    /// even if this future is dropped.
    pub async fn release(mut self) -> Result<()> {
        let Some(tx) = self.release.take() else {
            return Err(Error::LeaseLost);
        };
        let (reply, outcome) = oneshot::channel();
        if tx.send(reply).is_err() {
            return Err(Error::LeaseLost);
        }
        outcome.await.unwrap_or(Err(Error::LeaseLost))
    }
}
