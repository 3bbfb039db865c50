//! Distributed locks and semaphores for blocking code, renewed by a thread.
//!
//! Named like the other dflockd clients: [`DistributedLock`] and
//! [`DistributedSemaphore`]. Each acquire opens its own connection to the
//! server that owns the key (see [`routing`](crate::routing)); a granted
//! [`LeaseGuard`] hands that connection to a thread that renews the lease
//! on the core schedule until the guard is released or dropped. No async
//! runtime is involved. Connections are plain TCP, or TLS with the
//! builder's [`tls`](LockBuilder::tls) (feature `rustls`).
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

use std::boxed::Box;
use std::io;
use std::string::String;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::{BlockingTransport, ConnectOptions, HostConnection, StdTimer, block_on, std_instant};
use crate::lock::Lease;
use crate::runtime::host::pool::{checkin, checkout};
use crate::runtime::host::settings::{
    LINE, LockBuilder, Settings, sealed::FromSettings, secs_ceil,
};
use crate::runtime::host::{HangUp, HangUpCloser};
use crate::time::{Instant, Timer};
use crate::{Error, Grant, Kind, Token};

use super::Result;

type Conn = HostConnection<LINE, 0>;

/// While waiting for the next renew, the renewal thread checks this often
/// whether the connection was closed, so a cut connection is reported long
/// before the lease deadline.
const CLOSED_POLL: Duration = Duration::from_millis(50);

fn timeout_kind(e: Error<io::Error>) -> Error<io::Error> {
    match e {
        Error::Io(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Error::Timeout
        }
        e => e,
    }
}

/// What locks and semaphores share.
#[derive(Debug, Clone)]
struct Resource(Arc<Settings>);

impl Resource {
    fn connect(&self) -> Result<Conn> {
        let s = &self.0;
        if let Some(conn) = checkout(s, |c| !is_closed(c))? {
            return Ok(conn);
        }
        let opts = ConnectOptions {
            connect_timeout: s.connect_timeout,
            io_timeout: s.options.io_timeout,
            auth_token: s.auth_token.clone(),
        };
        let addr = s.server()?;
        let tls = s.tls_for(addr)?;
        Conn::connect_host(addr, &opts, tls.as_ref())
    }

    fn lease_secs(&self) -> Option<u64> {
        self.0.options.lease_ttl.map(|d| secs_ceil(d).max(1))
    }

    fn acquire_within(&self, timeout: Duration) -> Result<Option<LeaseGuard>> {
        let s = &self.0;
        let mut conn = self.connect()?;
        let sent = StdTimer.now();
        let grant = conn.acquire(s.kind, &s.key, secs_ceil(timeout), self.lease_secs())?;
        let received = StdTimer.now();
        grant
            .map(|g| LeaseGuard::spawn(conn, self.0.clone(), g, sent, received))
            .transpose()
    }

    fn enqueue(&self) -> Result<Enqueued> {
        let s = &self.0;
        let mut conn = self.connect()?;
        let sent = StdTimer.now();
        let reply = conn.enqueue(s.kind, &s.key, self.lease_secs())?;
        let received = StdTimer.now();
        Ok(Enqueued(match reply {
            crate::Enqueued::Acquired(g) => {
                EnqueuedState::Acquired(LeaseGuard::spawn(conn, self.0.clone(), g, sent, received)?)
            }
            crate::Enqueued::Queued => EnqueuedState::Queued {
                conn: Box::new(conn),
                settings: self.0.clone(),
            },
        }))
    }

    fn run<R>(&self, f: impl FnOnce(&LeaseGuard) -> R) -> Result<Option<R>> {
        let Some(guard) = self.acquire_within(self.0.options.acquire_timeout)? else {
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
        pub fn acquire(&self) -> Result<Option<LeaseGuard>> {
            self.0.acquire_within(self.0.0.options.acquire_timeout)
        }

        /// Tries once without blocking on the server. `Ok(None)` when held
        /// elsewhere.
        pub fn try_acquire(&self) -> Result<Option<LeaseGuard>> {
            self.0.acquire_within(Duration::ZERO)
        }

        /// [`acquire`](Self::acquire) with another timeout.
        pub fn acquire_within(&self, timeout: Duration) -> Result<Option<LeaseGuard>> {
            self.0.acquire_within(timeout)
        }

        /// Two-phase, first half: joins the queue without blocking. Run
        /// your code, then collect the grant with [`Enqueued::wait`]. Keep the
        /// code between them shorter than the server's idle timeout (23 s
        /// by default): a queued connection is silent.
        pub fn enqueue(&self) -> Result<Enqueued> {
            self.0.enqueue()
        }

        /// Runs `f` while holding: acquires (`Ok(None)` when the acquire
        /// timeout passed), calls `f` with the guard, releases, and returns
        /// its output.
        ///
        /// A closure cannot be stopped from outside: if the lease is lost
        /// while `f` runs, `f` still runs to the end (check
        /// [`LeaseGuard::is_lost`] at safe points), and its output is
        /// discarded for [`Error::LeaseLost`].
        pub fn run<R>(&self, f: impl FnOnce(&LeaseGuard) -> R) -> Result<Option<R>> {
            self.0.run(f)
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
/// until [`wait`](Self::wait). Dropping a queued ticket closes its
/// connection, which leaves the queue.
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
    pub fn wait(self) -> Result<Option<LeaseGuard>> {
        let timeout = match &self.0 {
            EnqueuedState::Acquired(_) => Duration::ZERO,
            EnqueuedState::Queued { settings, .. } => settings.options.acquire_timeout,
        };
        self.wait_within(timeout)
    }

    /// [`wait`](Self::wait) with another timeout.
    pub fn wait_within(self, timeout: Duration) -> Result<Option<LeaseGuard>> {
        match self.0 {
            EnqueuedState::Acquired(guard) => Ok(Some(guard)),
            EnqueuedState::Queued { mut conn, settings } => {
                let sent = StdTimer.now();
                let grant = conn.wait(settings.kind, &settings.key, secs_ceil(timeout))?;
                let received = StdTimer.now();
                grant
                    .map(|g| LeaseGuard::spawn(*conn, settings, g, sent, received))
                    .transpose()
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

#[derive(Debug, Clone, Copy)]
struct Status {
    state: State,
    /// The conservative deadline of the lease: when the acquire or the last
    /// successful renew was sent, plus the lease.
    deadline: std::time::Instant,
}

impl Status {
    /// Lost by the renewal thread's word or by the clock.
    fn is_lost(&self, now: std::time::Instant) -> bool {
        match self.state {
            State::Lost => true,
            State::Held => now >= self.deadline,
            State::Released => false,
        }
    }
}

#[derive(Debug)]
struct Shared {
    status: Mutex<Status>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, state: State) {
        self.lock().state = state;
        self.changed.notify_all();
    }

    fn set_deadline(&self, deadline: std::time::Instant) {
        self.lock().deadline = deadline;
        self.changed.notify_all();
    }

    fn get(&self) -> Status {
        *self.lock()
    }

    /// Waits until the lease is lost (by the thread's word or the clock),
    /// or `until`; whether it is lost.
    fn wait_lost_until(&self, until: Option<std::time::Instant>) -> bool {
        let mut status = self.lock();
        loop {
            let now = std::time::Instant::now();
            if status.is_lost(now) {
                return true;
            }
            if status.state != State::Held || until.is_some_and(|u| now >= u) {
                return false;
            }
            // Wakes at the deadline at the latest: the clock decides then.
            let wake = until.map_or(status.deadline, |u| u.min(status.deadline));
            status = self
                .changed
                .wait_timeout(status, wake.saturating_duration_since(now))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

type ReleaseReply = mpsc::SyncSender<Result<()>>;

/// A held lock or semaphore slot, renewed by a background thread.
///
/// * [`release`](Self::release) releases and reports the outcome.
/// * Dropping the guard releases on the renewal thread (best effort; the
///   drop never blocks).
/// * [`is_lost`](Self::is_lost) (non-blocking) and
///   [`wait_lost`](Self::wait_lost) (blocking) report a renew that failed,
///   a connection that closed or a deadline that passed; from then on
///   [`token`](Self::token) is `None`.
///
/// The guard compares with the clock itself: from the lease's conservative
/// [`deadline`](Self::deadline) on (when the acquire or the last
/// successful renew was sent, plus the lease) it reports the lease lost,
/// whatever the renewal thread is doing (a renew stuck on a dead network
/// cannot keep it "held").
#[derive(Debug)]
pub struct LeaseGuard {
    settings: Arc<Settings>,
    token: Token,
    ttl: Duration,
    shared: Arc<Shared>,
    /// The connection's hang-up, seen at once by `is_lost`.
    hangup: Arc<HangUp>,
    release: Option<mpsc::Sender<ReleaseReply>>,
}

impl LeaseGuard {
    fn spawn(
        mut conn: Conn,
        settings: Arc<Settings>,
        grant: Grant,
        sent: Instant,
        received: Instant,
    ) -> Result<Self> {
        let deadline = {
            let spec = settings.spec();
            std_instant(Lease::from_grant(&spec, grant, sent, received).deadline())
        };
        let shared = Arc::new(Shared {
            status: Mutex::new(Status {
                state: State::Held,
                deadline,
            }),
            changed: Condvar::new(),
        });
        #[cfg(unix)]
        let hangup = {
            use std::os::fd::AsFd;
            HangUp::new(conn.get_mut().transport_mut().tcp().as_fd())
        };
        #[cfg(not(unix))]
        let hangup = HangUp::none();
        let closer = HangUpCloser(hangup.clone());
        let (release, rx) = mpsc::channel();
        let thread_shared = shared.clone();
        let thread_settings = settings.clone();
        std::thread::Builder::new()
            .name("dflockd-lease".into())
            .spawn(move || {
                // Shuts the socket down when the thread ends, whatever the
                // guard's duplicate descriptor does.
                renew_loop(
                    conn,
                    &closer,
                    &thread_settings,
                    grant,
                    sent,
                    received,
                    &rx,
                    &thread_shared,
                )
            })
            .map_err(Error::Io)?;
        Ok(LeaseGuard {
            settings,
            token: grant.token,
            ttl: Duration::from_secs(grant.lease),
            shared,
            hangup,
            release: Some(release),
        })
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

    /// Whether the lease is known to be lost: the renewal thread gave up,
    /// the clock passed the [`deadline`](Self::deadline), or (Linux) the
    /// connection is closed — with the server's auto-release on disconnect
    /// the lease may be someone else's already. Never blocks.
    pub fn is_lost(&self) -> bool {
        let status = self.shared.get();
        status.is_lost(std::time::Instant::now())
            || (status.state == State::Held && self.hangup.seen())
    }

    /// The lease's conservative deadline: when the acquire or the last
    /// successful renew was sent, plus the lease. The server cannot have
    /// expired the lease before it; from it on the guard reports the lease
    /// lost unless a renew moved it.
    pub fn deadline(&self) -> std::time::Instant {
        self.shared.get().deadline
    }

    /// Blocks until the lease is lost (at the [`deadline`](Self::deadline)
    /// at the latest, unless renewed). Never returns while it is held.
    pub fn wait_lost(&self) {
        self.shared.wait_lost_until(None);
    }

    /// Blocks until the lease is lost or `timeout` passed; whether it is
    /// lost.
    pub fn wait_lost_timeout(&self, timeout: Duration) -> bool {
        self.shared
            .wait_lost_until(std::time::Instant::now().checked_add(timeout))
    }

    /// Releases the lease and closes its connection; blocks until the
    /// server answered: at most the reply timeout or the time left on the
    /// lease, whichever is shorter (after the deadline there is nothing to
    /// release), plus a renew that may be in flight (bounded the same way).
    ///
    /// [`Error::LeaseLost`] when it was lost before; other errors as the
    /// release request reports them (the connection closes anyway, which
    /// frees the lease on the server).
    pub fn release(mut self) -> Result<()> {
        let Some(tx) = self.release.take() else {
            return Err(Error::LeaseLost);
        };
        let (reply, outcome) = mpsc::sync_channel(1);
        if tx.send(reply).is_err() {
            return Err(Error::LeaseLost);
        }
        outcome.recv().unwrap_or(Err(Error::LeaseLost))
    }
}

/// The renewal thread: renews on the lease's schedule, checks for a closed
/// connection while waiting, releases on request or when the guard is
/// dropped.
#[allow(clippy::too_many_arguments)] // until the lease driver owns the lease state
fn renew_loop(
    mut conn: Conn,
    closer: &HangUpCloser,
    settings: &Settings,
    grant: Grant,
    sent: Instant,
    received: Instant,
    rx: &mpsc::Receiver<ReleaseReply>,
    shared: &Shared,
) {
    let spec = settings.spec();
    let timer = StdTimer;
    let mut lease = Lease::from_grant(&spec, grant, sent, received);
    loop {
        let now = timer.now();
        let due = lease.next_renew_at();
        // The release request is looked at before every renew, even when
        // renews are due back to back (a round trip as long as the renew
        // interval), so a release is never starved.
        let wait = due.saturating_duration_since(now).min(CLOSED_POLL);
        let request = if wait.is_zero() {
            match rx.try_recv() {
                Ok(reply) => Ok(reply),
                Err(mpsc::TryRecvError::Empty) => Err(RecvTimeoutError::Timeout),
                Err(mpsc::TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
            }
        } else {
            rx.recv_timeout(wait)
        };
        match request {
            Ok(reply) => {
                let out = release(&mut conn, lease, settings);
                shared.set(State::Released);
                // Before the reply, so the caller's next acquire finds it.
                reuse_if_clean(conn, &out, settings, closer);
                let _ = reply.send(out);
                return;
            }
            Err(RecvTimeoutError::Disconnected) => {
                let out = release(&mut conn, lease, settings);
                shared.set(State::Released);
                reuse_if_clean(conn, &out, settings, closer);
                return;
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        if timer.now() < lease.next_renew_at() {
            if is_closed(&mut conn) {
                warn!("lease on {} lost: connection closed", lease.key());
                shared.set(State::Lost);
                return;
            }
            continue;
        }
        let renewed = bound(&mut conn, settings, &lease)
            .and_then(|()| block_on(lease.renew(conn.get_mut(), &timer)));
        match renewed {
            Ok(()) => shared.set_deadline(std_instant(lease.deadline())),
            Err(_) => {
                warn!("lease on {} lost: renew failed", lease.key());
                shared.set(State::Lost);
                return;
            }
        }
    }
}

/// Gives the next request one deadline: the reply timeout or the lease's
/// deadline, whichever comes first. `LeaseLost` when that has passed.
fn bound(conn: &mut Conn, settings: &Settings, lease: &Lease<'_>) -> Result<()> {
    let now = std::time::Instant::now();
    let deadline = std_instant(lease.deadline());
    if now >= deadline {
        return Err(Error::LeaseLost);
    }
    let limit = now
        .checked_add(settings.options.io_timeout)
        .map_or(deadline, |l| l.min(deadline));
    conn.get_mut()
        .transport_mut()
        .set_deadline(Some(limit))
        .map_err(Error::Io)
}

/// Puts a connection whose lease was released cleanly back into the pool
/// (the closer then leaves it open); any other goes out of scope and
/// closes.
fn reuse_if_clean(conn: Conn, released: &Result<()>, s: &Settings, closer: &HangUpCloser) {
    if released.is_ok() && conn.is_usable() {
        closer.0.keep_open();
        checkin(s, conn);
    }
}

fn release(conn: &mut Conn, lease: Lease<'_>, settings: &Settings) -> Result<()> {
    bound(conn, settings, &lease)?;
    match block_on(lease.release(conn.get_mut(), &StdTimer)).map_err(timeout_kind) {
        // The lease ran out while the release was under way.
        Err(_) if std::time::Instant::now() >= std_instant(lease.deadline()) => {
            Err(Error::LeaseLost)
        }
        out => out,
    }
}

/// Whether the server closed the connection (or sent something nobody
/// asked for, such as its idle-timeout `error`): a non-blocking peek.
fn is_closed(conn: &mut Conn) -> bool {
    if !conn.is_usable() {
        return true;
    }
    conn.get_mut().transport_mut().peer_closed()
}
