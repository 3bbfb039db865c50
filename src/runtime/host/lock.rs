//! What the tokio and blocking lock adapters share, knowing no runtime:
//!
//! * [`lock_api!`]: the public API of `DistributedLock`,
//!   `DistributedSemaphore`, `Enqueued` and `LeaseGuard`, documented once
//!   and expanded in each adapter (`async` there, plain here);
//! * [`Guard`]: what a lease guard holds, and the status it shares with its
//!   renewal side ([`Shared`], [`Renewer`]);
//! * [`drive`]: the renewal loop around the core [`LeaseDriver`], over the
//!   IO an adapter supplies ([`RenewIo`]).
//!
//! The decisions (when to renew, when the lease is lost, release before
//! renew) are the core driver's; the adapters only do the IO.

use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::HangUp;
use super::settings::Settings;
use crate::lock::{Action, LeaseDriver, Reply};
use crate::time::Instant;
use crate::{Error, Token};

/// Where a lease guard stands, by its renewal side's word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Held,
    Lost,
    Released,
}

/// What a guard and its renewal side share.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Status {
    pub(crate) state: State,
    /// The conservative deadline of the lease: when the acquire or the last
    /// successful renew was sent, plus the lease (adapter timer time).
    pub(crate) deadline: Instant,
}

impl Status {
    /// Lost by the renewal side's word or by the clock at `now`.
    pub(crate) fn is_lost(&self, now: Instant) -> bool {
        self.state != State::Held || now >= self.deadline
    }
}

/// Wakes whoever waits for a guard's status to change: a `Condvar` for
/// blocking waits, tokio's `Notify` for async ones.
pub(crate) trait Wake {
    fn wake(&self);
}

impl Wake for Condvar {
    fn wake(&self) {
        self.notify_all();
    }
}

/// The status behind a mutex, and its wake-up.
#[derive(Debug)]
pub(crate) struct Shared<W> {
    status: Mutex<Status>,
    pub(crate) wake: W,
}

impl<W: Wake> Shared<W> {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get(&self) -> Status {
        *self.lock()
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.lock());
        self.wake.wake();
    }
}

/// The renewal side's handle on the status: publishes each renewed
/// deadline and the end. A renewal side that vanishes without saying how
/// it ended (a task dropped when its runtime shut down, a thread that
/// panicked) leaves the lease lost.
#[derive(Debug)]
pub(crate) struct Renewer<W: Wake>(Arc<Shared<W>>);

impl<W: Wake> Renewer<W> {
    fn renewed(&self, deadline: Instant) {
        self.0.update(|s| s.deadline = deadline);
    }

    fn end(&self, state: State) {
        self.0.update(|s| s.state = state);
    }
}

impl<W: Wake> Drop for Renewer<W> {
    fn drop(&mut self) {
        self.0.update(|s| {
            if s.state == State::Held {
                s.state = State::Lost;
            }
        });
    }
}

/// What a lease guard holds: the lock's settings, the lease as granted,
/// the status shared with the renewal side, the connection's hang-up
/// watch and the way to ask for the release (`R`, a channel's sender).
#[derive(Debug)]
pub(crate) struct Guard<W, R> {
    pub(crate) settings: Arc<Settings>,
    pub(crate) token: Token,
    pub(crate) ttl: Duration,
    pub(crate) shared: Arc<Shared<W>>,
    /// The connection's hang-up, seen at once by `is_lost`.
    pub(crate) hangup: Arc<HangUp>,
    pub(crate) release: Option<R>,
}

impl<W: Wake, R> Guard<W, R> {
    /// The guard of `driver`'s lease, and the handle its renewal side
    /// publishes through.
    pub(crate) fn new(
        settings: Arc<Settings>,
        driver: &LeaseDriver,
        hangup: Arc<HangUp>,
        release: R,
        wake: W,
    ) -> (Self, Renewer<W>) {
        let shared = Arc::new(Shared {
            status: Mutex::new(Status {
                state: State::Held,
                deadline: driver.deadline(),
            }),
            wake,
        });
        let guard = Guard {
            settings,
            token: *driver.token(),
            ttl: driver.ttl(),
            shared: shared.clone(),
            hangup,
            release: Some(release),
        };
        (guard, Renewer(shared))
    }

    /// Lost by the renewal side's word (including a renewal side that is
    /// gone), by the clock at `now`, or by the connection's hang-up.
    pub(crate) fn is_lost(&self, now: Instant) -> bool {
        self.shared.get().is_lost(now) || self.hangup.seen()
    }

    /// The lease's conservative deadline (adapter timer time).
    pub(crate) fn deadline(&self) -> Instant {
        self.shared.get().deadline
    }
}

// ---- the renewal loop --------------------------------------------------------

/// What ended a wait of the renewal side.
pub(crate) enum Woken<A> {
    /// The time waited for came.
    Due,
    /// The release was asked for (`None`: the guard was dropped, nobody
    /// waits for the result).
    Release(Option<A>),
    /// The connection closed (or the server sent something unasked, such
    /// as its idle-timeout `error`).
    Closed,
}

/// The IO a renewal task or thread does for [`drive`]: one connection, a
/// clock and the guard's release channel.
pub(crate) trait RenewIo {
    /// Where a release's result goes.
    type Answer;

    /// The adapter timer's time.
    fn now(&self) -> Instant;

    /// A release request that has arrived, without waiting (`Some(None)`:
    /// the guard was dropped).
    fn release_asked(&mut self) -> Option<Option<Self::Answer>>;

    /// Waits until `until`, a release request or the connection's close.
    async fn wait(&mut self, until: Instant) -> Woken<Self::Answer>;

    /// Sends `driver`'s renew for `key`; the reply, or `Elapsed` (or an
    /// `Error::Timeout`) at `limit`.
    async fn renew(
        &mut self,
        driver: &LeaseDriver,
        key: &str,
        limit: Instant,
    ) -> Reply<u64, io::Error>;

    /// Sends `driver`'s release for `key`, as `renew`.
    async fn release(
        &mut self,
        driver: &LeaseDriver,
        key: &str,
        limit: Instant,
    ) -> Reply<(), io::Error>;

    /// Hands a release's result to whoever asked.
    fn answer(answer: Self::Answer, out: Result<(), Error<io::Error>>);

    /// The one place where the renewal side gives its connection up, when
    /// the lease ends: `released` after a release the server confirmed
    /// (the connection is in a known, clean state), otherwise it must be
    /// closed.
    fn finish(self, released: bool);
}

/// The renewal loop of a host lease guard: drives `driver` for the lease on
/// `key` over `io`, publishing through `renewer`, until the lease is
/// released (on request, or when the guard is dropped) or lost. A release
/// request is looked at before every renew.
pub(crate) async fn drive<I: RenewIo, W: Wake>(
    mut io: I,
    key: &str,
    mut driver: LeaseDriver,
    renewer: Renewer<W>,
) {
    let mut answer = None;
    let mut asked = false;
    loop {
        if !asked && let Some(a) = io.release_asked() {
            (asked, answer) = (true, a);
            driver.request_release();
        }
        match driver.next(io.now()) {
            Action::Wait { until } => match io.wait(until).await {
                Woken::Due => {}
                Woken::Release(a) => {
                    (asked, answer) = (true, a);
                    driver.request_release();
                }
                Woken::Closed => driver.closed(),
            },
            Action::Renew { limit } => {
                let reply = io.renew(&driver, key, limit).await;
                if driver.renewed(reply, io.now()).is_ok() {
                    renewer.renewed(driver.deadline());
                }
            }
            Action::Release { limit } => {
                let reply = io.release(&driver, key, limit).await;
                let out = driver.released(reply, io.now());
                renewer.end(State::Released);
                let clean = out.is_ok();
                if let Some(a) = answer {
                    I::answer(a, out);
                }
                return io.finish(clean);
            }
            Action::Lost | Action::Done => {
                warn!("lease on {} lost", key);
                renewer.end(State::Lost);
                if let Some(a) = answer {
                    I::answer(a, Err(Error::LeaseLost));
                }
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
/// and `wait_within(Box<Conn>, Arc<Settings>, Duration)`. `clock` gives
/// the adapter timer's time, `to_std` turns it into a `std` instant,
/// `cancel` is a sentence on cancel safety for each request, and `run`
/// the adapter's own `run` method for both lock types.
macro_rules! lock_api {
    (
        async: [$($async:tt)?],
        await: [$($await:tt)*],
        clock: $clock:expr,
        to_std: $to_std:expr,
        cancel: $cancel:literal,
        run: { $($run:tt)* }
    ) => {
        /// A distributed exclusive lock on one key.
        ///
        /// Cheap to clone; every acquire opens its own connection.
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
        /// Cheap to clone; every acquire opens its own connection. All
        /// clients of a key must use the same limit (`error_limit_mismatch`
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
            /// The key.
            pub fn key(&self) -> &str {
                &self.0.settings.key
            }

            /// Lock or semaphore.
            pub fn kind(&self) -> $crate::Kind {
                self.0.settings.kind
            }

            /// The lease token, or `None` once the lease is lost.
            pub fn token(&self) -> Option<$crate::Token> {
                (!self.is_lost()).then_some(self.0.token)
            }

            /// The fencing value of the token (see
            /// [`Token::fence`](crate::Token::fence)), or `None` once the
            /// lease is lost.
            pub fn fence(&self) -> Option<$crate::Fence> {
                self.token().map(|t| t.fence())
            }

            /// The lease TTL granted by the server.
            pub fn ttl(&self) -> Duration {
                self.0.ttl
            }

            /// Whether the lease is known to be lost: the renewal side gave
            /// up or is gone, the clock passed the
            /// [`deadline`](Self::deadline), or (Linux) the connection is
            /// closed — with the server's auto-release on disconnect the
            /// lease may be someone else's already. Never blocks.
            pub fn is_lost(&self) -> bool {
                self.0.is_lost($crate::time::Timer::now(&$clock))
            }

            /// The lease's conservative deadline: when the acquire or the
            /// last successful renew was sent, plus the lease. The server
            /// cannot have expired the lease before it; from it on the guard
            /// reports the lease lost unless a renew moved it.
            pub fn deadline(&self) -> std::time::Instant {
                $to_std(self.0.deadline())
            }
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
