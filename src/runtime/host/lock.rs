//! What the tokio and blocking lock adapters share, knowing no runtime:
//! the public API ([`lock_api!`], documented once), the guard and the
//! status it shares with its renewal side, and the renewal loop ([`drive`])
//! around the core [`LeaseDriver`], which makes every decision; the
//! adapters only do the IO ([`RenewIo`]) and the waiting ([`Wake`]). The
//! cluster guards use the same guard, status and loop, renewing through
//! the cluster client's control lane.

use core::ops::ControlFlow::{self, Break, Continue};
use std::io;
use std::string::String;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::HangUp;
use super::cluster::Renewal;
use super::settings::Settings;
use crate::lock::{Action, LeaseDriver, Reply};
use crate::time::{Instant, Timer};
use crate::{Error, Token};

type Result<T> = core::result::Result<T, Error<io::Error>>;

/// Where a lease stands, by its renewal side's word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Held,
    Lost,
    Released,
}

/// What a guard and its renewal side share, behind a mutex.
#[derive(Debug)]
pub struct Status {
    pub(crate) state: State,
    /// The conservative deadline (adapter timer time): when the acquire or
    /// the last successful renew was sent, plus the lease.
    pub(crate) deadline: Instant,
    /// The release was asked for (by `release`, or by dropping the guard).
    pub(crate) release: bool,
    /// The release's result, for `release`.
    outcome: Option<Result<()>>,
    /// The latest successful renew, when the renewal side says where it
    /// was served (a cluster member).
    pub(crate) renewal: Option<Renewal>,
}

impl Status {
    /// Lost by the renewal side's word or by the clock at `now`.
    pub(crate) fn is_lost(&self, now: Instant) -> bool {
        self.state != State::Held || now >= self.deadline
    }

    /// The result of an asked release, once the renewal side is done.
    pub(crate) fn outcome(&mut self) -> Option<Result<()>> {
        (self.state != State::Held).then(|| self.outcome.take().unwrap_or(Err(Error::LeaseLost)))
    }
}

/// How the waiters of a status (guard and renewal side) wait and are
/// woken: a `Condvar` for blocking waits, tokio's `Notify` for async ones.
/// Public only as a bound of the cluster runtimes (not nameable outside
/// the crate); its futures are `Send` where their runtime needs it.
#[allow(async_fn_in_trait)]
pub trait Wake: Sized {
    /// The adapter's timer.
    type Timer: Timer + Default;

    /// Wakes every waiter.
    fn wake(&self);

    /// The adapter timer's time.
    fn now() -> Instant {
        Self::Timer::default().now()
    }

    /// Waits until `f` breaks with what it looks for in the status,
    /// looking again at every change and at the instant it continues with
    /// (a blocking wait parks the thread). May look again early.
    async fn until<T>(shared: &Shared<Self>, f: &mut Look<'_, T>) -> T;
}

/// What [`Wake::until`] looks for in a status: `Break` with it, or
/// `Continue` to look again at the next change and at the instant given.
pub type Look<'a, T> = dyn FnMut(&mut Status) -> ControlFlow<T, Option<Instant>> + Send + 'a;

/// The status and its wake-up.
#[derive(Debug)]
pub struct Shared<W> {
    status: Mutex<Status>,
    pub(crate) wake: W,
}

impl<W: Wake> Shared<W> {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.lock());
        self.wake.wake();
    }

    /// Waits until a release is asked for or the clock reaches `until`:
    /// the renewal side's wait, apart from watching a connection.
    pub(crate) async fn release_or(&self, until: Instant) {
        W::until(self, &mut |s| match s.release || W::now() >= until {
            true => Break(()),
            false => Continue(Some(until)),
        })
        .await
    }
}

/// The renewal side's handle on the status. A renewal side that vanishes
/// without saying how it ended (a task dropped when its runtime shut down,
/// a thread that panicked) leaves the lease lost.
#[derive(Debug)]
pub(crate) struct Renewer<W: Wake>(pub(crate) Arc<Shared<W>>);

impl<W: Wake> Drop for Renewer<W> {
    fn drop(&mut self) {
        self.0.update(|s| {
            if s.state == State::Held {
                s.state = State::Lost;
            }
        });
    }
}

/// What a lease guard holds: the lock's settings (a plain lock's, or a
/// cluster lock), the lease as granted, the shared status and the
/// connection's hang-up watch. Dropping it asks for the release (done by
/// the renewal side; never blocks).
#[derive(Debug)]
pub(crate) struct Guard<W: Wake, S = Arc<Settings>> {
    pub(crate) settings: S,
    pub(crate) token: Token,
    pub(crate) ttl: Duration,
    pub(crate) shared: Arc<Shared<W>>,
    hangup: Arc<HangUp>,
}

impl<W: Wake, S> Guard<W, S> {
    /// The guard of `driver`'s lease, and its renewal side's handle.
    pub(crate) fn new(
        settings: S,
        driver: &LeaseDriver,
        hangup: Arc<HangUp>,
        wake: W,
    ) -> (Self, Renewer<W>) {
        let shared = Arc::new(Shared {
            status: Mutex::new(Status {
                state: State::Held,
                deadline: driver.deadline(),
                release: false,
                outcome: None,
                renewal: None,
            }),
            wake,
        });
        let renewer = Renewer(shared.clone());
        let (token, ttl) = (*driver.token(), driver.ttl());
        let guard = Guard {
            settings,
            token,
            ttl,
            shared,
            hangup,
        };
        (guard, renewer)
    }

    /// Lost by the renewal side's word (or its absence), by the clock at
    /// `now`, or by the connection's hang-up.
    pub(crate) fn is_lost(&self, now: Instant) -> bool {
        self.shared.lock().is_lost(now) || self.hangup.seen()
    }

    /// [`is_lost`](Self::is_lost) now, by the adapter's timer.
    pub(crate) fn lost_now(&self) -> bool {
        self.is_lost(W::now())
    }

    /// The lease's conservative deadline (both host timers count from one
    /// epoch, so one conversion serves both).
    pub(crate) fn deadline(&self) -> std::time::Instant {
        super::std_instant(self.shared.lock().deadline)
    }

    /// Asks the renewal side for the release (see [`Status::outcome`]).
    pub(crate) fn ask_release(&self) {
        self.shared.update(|s| s.release = true);
    }

    /// Asks for the release and waits for its outcome: [`Error::LeaseLost`]
    /// at once when the lease was lost before. The renewal side releases
    /// even if this future is dropped.
    pub(crate) async fn release(&self) -> Result<()> {
        self.ask_release();
        W::until(&self.shared, &mut |s| {
            s.outcome().map_or(Continue(None), Break)
        })
        .await
    }

    /// Waits until the lease is lost by the renewal side's word or the
    /// clock (waking at the deadline), or the clock reaches `end`: whether
    /// it was lost.
    pub(crate) async fn lost_by(&self, end: Option<Instant>) -> bool {
        W::until(&self.shared, &mut |s| {
            let now = W::now();
            if s.is_lost(now) {
                return Break(true);
            }
            match end {
                Some(end) if now >= end => Break(false),
                _ => Continue(Some(end.map_or(s.deadline, |end| end.min(s.deadline)))),
            }
        })
        .await
    }
}

impl<W: Wake, S> Drop for Guard<W, S> {
    fn drop(&mut self) {
        self.ask_release();
    }
}

// ---- the renewal loop --------------------------------------------------------

/// What became of a renew: the seconds granted (see [`Reply`]).
pub(crate) type RenewReply = Reply<u64, io::Error>;

/// What became of a release (see [`Reply`]).
pub(crate) type ReleaseReply = Reply<(), io::Error>;

/// The IO a renewal task or thread does for [`drive`] on its connection.
pub(crate) trait RenewIo {
    type Wake: Wake;

    /// The adapter timer's time.
    fn now(&self) -> Instant {
        Self::Wake::now()
    }

    /// Waits until `until`, a change of `shared` (a release asked for) or
    /// the connection's close (`false`). May return early.
    async fn wait(&mut self, until: Instant, shared: &Shared<Self::Wake>) -> bool;

    /// Sends `driver`'s renew for `key`: the reply, or `Elapsed` (or an
    /// `Error::Timeout`) at `limit`. (The cluster re-sends after a
    /// failover, starting each attempt on the driver.)
    async fn renew(&mut self, driver: &mut LeaseDriver, key: &str, limit: Instant) -> RenewReply;

    /// Where the renew that just succeeded was served, to be recorded as
    /// the lease's latest [`Renewal`] (the cluster member); `None`: not
    /// recorded.
    fn served_by(&mut self) -> Option<String> {
        None
    }

    /// Sends `driver`'s release for `key`, as `renew`.
    async fn release(&mut self, driver: &LeaseDriver, key: &str, limit: Instant) -> ReleaseReply;

    /// The one place where the renewal side gives its connection up:
    /// `released` after a release the server confirmed (a known, clean
    /// state), otherwise it must close.
    fn finish(self, released: bool);
}

/// The renewal loop of a host lease guard: drives `driver` for the lease
/// on `key` over `io` until it is released (asked for, or the guard
/// dropped) or lost. A release asked for is looked at before every renew.
pub(crate) async fn drive<I: RenewIo>(
    mut io: I,
    key: &str,
    mut driver: LeaseDriver,
    renewer: Renewer<I::Wake>,
) {
    let shared = &*renewer.0;
    loop {
        if shared.lock().release {
            driver.request_release();
        }
        match driver.next(io.now()) {
            Action::Wait { until } => {
                if !io.wait(until, shared).await {
                    driver.closed();
                }
            }
            Action::Renew { limit } => {
                let reply = io.renew(&mut driver, key, limit).await;
                if driver.renewed(reply, io.now()).is_ok() {
                    let member = io.served_by();
                    shared.update(|s| {
                        s.deadline = driver.deadline();
                        let count = s.renewal.as_ref().map_or(0, |r| r.count) + 1;
                        s.renewal = member.map(|member| Renewal {
                            member,
                            fence: driver.token().fence(),
                            remaining: driver.ttl(),
                            count,
                        });
                    });
                }
            }
            Action::Release { limit } => {
                let reply = io.release(&driver, key, limit).await;
                let out = driver.released(reply, io.now());
                // The connection first (back to the pool when clean), so
                // the caller's next acquire finds it; then the outcome.
                io.finish(out.is_ok());
                shared.update(|s| (s.state, s.outcome) = (State::Released, Some(out)));
                return;
            }
            Action::Lost | Action::Done => {
                warn!("lease on {} lost", key);
                shared.update(|s| s.state = State::Lost);
                return io.finish(false);
            }
        }
    }
}

// ---- the public API, once ----------------------------------------------------

/// The public API of the host lock types, documented once and expanded in
/// the tokio adapter (`async`) and the blocking one (plain functions).
///
/// The expanding module provides `Conn` (its connection type),
/// `LeaseGuard(Guard<..>)`, `Result`, and the functions
/// `acquire_within(&Arc<Settings>, Duration)`, `enqueue(&Arc<Settings>)`
/// and `wait_within(Box<Conn>, Arc<Settings>, Duration)`. `cancel` is a sentence on cancel safety for each request, and `run`
/// the adapter's own `run` method for both lock types.
macro_rules! lock_api {
    (
        async: [$($async:tt)?],
        await: [$($await:tt)*],
        cancel: $cancel:literal,
        run: { $($run:tt)* }
    ) => {
        /// A distributed exclusive lock on one key.
        ///
        /// Cheap to clone (clones share the pool). Every acquire takes an
        /// idle connection to the key's server from the pool of its client
        /// (or of this lock, when built with `builder`) or opens one.
        #[derive(Debug, Clone)]
        pub struct DistributedLock(Arc<Settings>);

        impl DistributedLock {
            /// A lock on `key` at [`DEFAULT_SERVER`](super::DEFAULT_SERVER)
            /// with default options.
            pub fn new(key: impl Into<std::string::String>) -> Self {
                Self::builder(key).build()
            }

            /// A builder for a lock on `key`.
            pub fn builder(key: impl Into<std::string::String>) -> LockBuilder<Self> {
                LockBuilder::new(key.into(), $crate::Kind::Lock)
            }

            $crate::runtime::host::lock::lock_api!(@requests [$($async)?] [$($await)*] $cancel);
            $($run)*
        }

        impl FromSettings for DistributedLock {
            fn from_settings(settings: Settings) -> Self {
                Self(Arc::new(settings))
            }
        }

        /// A distributed counting semaphore on one key: at most `limit`
        /// holders.
        ///
        /// Cheap to clone (clones share the pool); connections come from the
        /// pool as for `DistributedLock`. All clients of a key must use the same limit (`error_limit_mismatch`
        /// otherwise).
        #[derive(Debug, Clone)]
        pub struct DistributedSemaphore(Arc<Settings>);

        impl DistributedSemaphore {
            /// A semaphore on `key` admitting `limit` holders, at
            /// [`DEFAULT_SERVER`](super::DEFAULT_SERVER) with default
            /// options.
            pub fn new(key: impl Into<std::string::String>, limit: u32) -> Self {
                Self::builder(key, limit).build()
            }

            /// A builder for a semaphore on `key` admitting `limit` holders.
            pub fn builder(key: impl Into<std::string::String>, limit: u32) -> LockBuilder<Self> {
                LockBuilder::new(key.into(), $crate::Kind::Semaphore { limit })
            }

            /// The semaphore's limit.
            pub fn limit(&self) -> u32 {
                match self.0.kind {
                    $crate::Kind::Semaphore { limit } => limit,
                    $crate::Kind::Lock => 1,
                }
            }

            $crate::runtime::host::lock::lock_api!(@requests [$($async)?] [$($await)*] $cancel);
            $($run)*
        }

        impl FromSettings for DistributedSemaphore {
            fn from_settings(settings: Settings) -> Self {
                Self(Arc::new(settings))
            }
        }

        /// A place in a key's queue, from `enqueue`: granted at once, or
        /// queued until [`wait`](Self::wait). Dropping a queued one closes
        /// its connection, which leaves the queue.
        #[derive(Debug)]
        pub struct Enqueued(EnqueuedState);

        #[derive(Debug)]
        enum EnqueuedState {
            Acquired(LeaseGuard),
            Queued {
                conn: std::boxed::Box<Conn>,
                settings: Arc<Settings>,
            },
        }

        impl Enqueued {
            /// Whether the lease was granted at once (then `wait` returns it
            /// without asking the server; it is already being renewed).
            pub fn is_acquired(&self) -> bool {
                matches!(self.0, EnqueuedState::Acquired(_))
            }

            /// Two-phase, second half: waits up to the acquire timeout for
            /// the grant. `Ok(None)` on timeout (the server then forgets the
            /// waiter).
            ///
            #[doc = $cancel]
            pub $($async)? fn wait(self) -> Result<Option<LeaseGuard>> {
                let timeout = match &self.0 {
                    EnqueuedState::Acquired(_) => Duration::ZERO,
                    EnqueuedState::Queued { settings, .. } => settings.options.acquire_timeout,
                };
                self.wait_within(timeout)$($await)*
            }

            /// [`wait`](Self::wait) with another timeout.
            ///
            #[doc = $cancel]
            pub $($async)? fn wait_within(self, timeout: Duration) -> Result<Option<LeaseGuard>> {
                match self.0 {
                    EnqueuedState::Acquired(guard) => Ok(Some(guard)),
                    EnqueuedState::Queued { conn, settings } => {
                        wait_within(conn, settings, timeout)$($await)*
                    }
                }
            }
        }

        impl LeaseGuard {
            $crate::runtime::host::lock::lock_api! {
                @guard 0,
                /// The fencing value of the token (see
                /// [`Token::fence`](crate::Token::fence)), or `None` once the
                /// lease is lost.
                fence,
                /// Whether the lease is known to be lost: the renewal side gave
                /// up or is gone, the clock passed the
                /// [`deadline`](Self::deadline), or (Linux) the connection is
                /// closed — with the server's auto-release on disconnect the
                /// lease may be someone else's already. Never blocks.
                is_lost
            }

            /// The lease's conservative deadline: when the acquire or the
            /// last successful renew was sent, plus the lease. The server
            /// cannot have expired the lease before it; from it on the guard
            /// reports the lease lost unless a renew moved it.
            pub fn deadline(&self) -> std::time::Instant {
                self.0.deadline()
            }
        }
    };
    // The accessors of a lease guard (plain or cluster) on its `Guard`,
    // the field `$g`; the docs of `fence` and `is_lost` say what they mean
    // there.
    (@guard $g:tt, $(#[$fence:meta])* fence, $(#[$lost:meta])* is_lost) => {
        /// The key.
        pub fn key(&self) -> &str {
            &self.$g.settings.key
        }

        /// Lock or semaphore.
        pub fn kind(&self) -> $crate::Kind {
            self.$g.settings.kind
        }

        /// The lease token, or `None` once the lease is lost.
        pub fn token(&self) -> Option<$crate::Token> {
            (!self.is_lost()).then_some(self.$g.token)
        }

        $(#[$fence])*
        pub fn fence(&self) -> Option<$crate::Fence> {
            self.token().map(|t| t.fence())
        }

        /// The lease TTL granted by the server.
        pub fn ttl(&self) -> Duration {
            self.$g.ttl
        }

        $(#[$lost])*
        pub fn is_lost(&self) -> bool {
            self.$g.lost_now()
        }
    };
    (@requests [$($async:tt)?] [$($await:tt)*] $cancel:literal) => {
        /// The key.
        pub fn key(&self) -> &str {
            &self.0.key
        }

        /// Acquires, letting the server block up to the acquire timeout.
        /// `Ok(None)` when it passed without a grant.
        ///
        /// Errors: connecting or authenticating failed; [`Error::Timeout`]
        /// when no reply came within the acquire timeout plus the reply
        /// timeout; a server error status.
        ///
        #[doc = $cancel]
        pub $($async)? fn acquire(&self) -> Result<Option<LeaseGuard>> {
            acquire_within(&self.0, self.0.options.acquire_timeout)$($await)*
        }

        /// Tries once without blocking on the server. `Ok(None)` when held
        /// elsewhere.
        ///
        #[doc = $cancel]
        pub $($async)? fn try_acquire(&self) -> Result<Option<LeaseGuard>> {
            acquire_within(&self.0, Duration::ZERO)$($await)*
        }

        /// [`acquire`](Self::acquire) with another timeout.
        ///
        #[doc = $cancel]
        pub $($async)? fn acquire_within(&self, timeout: Duration) -> Result<Option<LeaseGuard>> {
            acquire_within(&self.0, timeout)$($await)*
        }

        /// Two-phase, first half: joins the queue without blocking. Run
        /// your code, then collect the grant with [`Enqueued::wait`]. Keep
        /// the code between them shorter than the server's idle timeout
        /// (23 s by default): a queued connection is silent.
        ///
        #[doc = $cancel]
        pub $($async)? fn enqueue(&self) -> Result<Enqueued> {
            enqueue(&self.0)$($await)*
        }
    };
}

pub(crate) use lock_api;

#[cfg(test)]
mod tests;
