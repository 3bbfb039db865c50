//! Locks and semaphores that renew themselves, on one [`Connection`] and a
//! caller-supplied [`Timer`]: no allocation, no threads, `no_std`.
//!
//! * [`LockSpec`] describes a lock or a semaphore and its [`LockOptions`]:
//!   acquire timeout (default 10 s), lease TTL (default: the server's),
//!   renew ratio (default 0.5), early jitter (default 10 %), the server's
//!   idle read timeout (default 23 s) and a client-side reply timeout.
//! * [`LockSpec::acquire`] (the server blocks up to the acquire timeout),
//!   [`LockSpec::try_acquire`] (timeout 0) and the two-phase
//!   [`LockSpec::enqueue`] then [`LockSpec::wait`] give a [`Lease`].
//! * A [`Lease`] knows its key, token, fence, TTL and deadline (by the
//!   injected clock), and when it should next be renewed:
//!   at `ratio × TTL` after the last successful renew, early by the measured
//!   round trip and a random jitter, and never later than the server's idle
//!   read timeout allows (a 60 s lease survives a server that drops
//!   connections silent for 23 s).
//! * [`Lease::hold`] runs the caller's future while renewing on the same
//!   connection, cooperatively: it returns the future's output, or
//!   [`Error::LeaseLost`] as soon as a renew fails, the connection closes or
//!   the lease deadline passes (the caller's future is dropped then).
//!
//! ```no_run
//! # async fn demo<T, C>(conn: &mut dflockd_client::Connection<T, 128>, timer: &C)
//! # -> dflockd_client::Result<(), T::Error>
//! # where T: embedded_io_async::Read + embedded_io_async::Write, C: dflockd_client::time::Timer {
//! use core::time::Duration;
//! use dflockd_client::lock::LockSpec;
//!
//! let spec = LockSpec::lock("orders").lease_ttl(Duration::from_secs(30));
//! if let Some(mut lease) = spec.acquire(conn, timer).await? {
//!     let total = lease
//!         .hold(conn, timer, async {
//!             // critical section; the lease is renewed meanwhile
//!             42
//!         })
//!         .await?;
//!     lease.release(conn, timer).await?;
//!     # let _ = total;
//! }
//! # Ok(()) }
//! ```

use core::fmt;
use core::future::Future;
use core::pin::pin;
use core::time::Duration;

use embassy_futures::select::{Either, Either3, select, select3};
use embedded_io_async::{Read, Write};

use crate::conn::{Connection, Enqueued, FromValue, Result, Value};
use crate::error::Error;
use crate::protocol::{Expect, Grant, Kind, Request, Token};
use crate::time::{Elapsed, Instant, Timer, with_deadline};

mod driver;

use driver::add_ms;
pub use driver::{Action, LeaseDriver, Reply, wire_secs};

/// Default acquire timeout: 10 s, as the other dflockd clients.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default idle read timeout of the server (`--read-timeout`): 23 s.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(23);
/// Default client-side reply timeout: how long to wait for a reply beyond
/// the time the server may block on purpose. 10 s.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest time a grant's reply is assumed to have been in flight: the
/// lease of a grant that arrived after a long server-side wait is counted
/// from `received - slack` (or from the send time, if later), where the
/// slack is `GRANT_SLACK` but at most a quarter of the lease, so a short
/// lease is never over on arrival.
pub const GRANT_SLACK: Duration = Duration::from_secs(1);

/// The one future behind every lock request (acquire, enqueue, wait, renew,
/// release): the connection's shared request future under a deadline. One
/// type for all of them, so its `poll` exists once per connection and timer
/// type rather than once per command; the callers map its [`Value`] with
/// plain functions.
fn timed<'c, T: Read + Write, C: Timer, const N: usize, const P: usize>(
    conn: &'c mut Connection<T, N, P>,
    timer: &'c C,
    limit: Instant,
    req: Request<'c>,
    expect: Expect,
) -> impl Future<Output = core::result::Result<Result<Value, T::Error>, Elapsed>> + 'c {
    with_deadline(timer, limit, conn.exchange(req, expect))
}

/// The reply limit of a request sent at `sent` that the server may block
/// `secs` seconds: then the reply timeout.
pub(crate) fn blocking_limit(sent: Instant, secs: u64, io_timeout: Duration) -> Instant {
    add_ms(sent, secs.saturating_mul(1000)) + io_timeout
}

// ---- randomness -----------------------------------------------------------

/// A source of random numbers for the renew jitter. Supply your hardware
/// RNG, or use the deterministic [`XorShift32`] fallback.
pub trait Rng {
    /// A uniformly distributed random `u32`.
    fn next_u32(&mut self) -> u32;
}

impl<R: Rng + ?Sized> Rng for &mut R {
    fn next_u32(&mut self) -> u32 {
        (**self).next_u32()
    }
}

/// The deterministic fallback [`Rng`]: xorshift32, seeded from the lease
/// token, so that clients holding different leases spread their renews.
/// Not for anything but jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct XorShift32(u32);

impl XorShift32 {
    /// A generator seeded with `seed` (0 is replaced by a fixed non-zero
    /// seed).
    pub const fn new(seed: u32) -> Self {
        Self(if seed == 0 { 0x9E37_79B9 } else { seed })
    }

    /// A generator seeded from a token's bytes (FNV-1a).
    pub fn from_token(token: &Token) -> Self {
        let seed = token.as_bytes().iter().fold(0x811C_9DC5u32, |h, &b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        Self::new(seed)
    }
}

impl Rng for XorShift32 {
    fn next_u32(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }
}

// ---- options ----------------------------------------------------------------

/// A fraction outside its valid range (or NaN) was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct InvalidRatio;

impl fmt::Display for InvalidRatio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("renew ratio must be strictly between 0 and 1, jitter in [0, 1)")
    }
}

impl core::error::Error for InvalidRatio {}

/// When to renew, as a fraction of the lease TTL: strictly between 0 and 1
/// (default 0.5). Kept in thousandths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RenewRatio(u16);

impl RenewRatio {
    /// Renew at half the lease, as the other dflockd clients.
    pub const HALF: RenewRatio = RenewRatio(500);

    /// A ratio strictly between 0 and 1 (rounded to thousandths, at least
    /// 0.001, at most 0.999).
    pub fn new(ratio: f32) -> core::result::Result<Self, InvalidRatio> {
        if !(ratio > 0.0 && ratio < 1.0) {
            return Err(InvalidRatio);
        }
        let permille = (ratio * 1000.0 + 0.5) as u16;
        Ok(Self(permille.clamp(1, 999)))
    }

    /// A ratio in thousandths: `1..=999`.
    pub const fn from_permille(permille: u16) -> core::result::Result<Self, InvalidRatio> {
        if permille >= 1 && permille <= 999 {
            Ok(Self(permille))
        } else {
            Err(InvalidRatio)
        }
    }

    /// The ratio in thousandths.
    pub const fn permille(self) -> u16 {
        self.0
    }
}

impl Default for RenewRatio {
    fn default() -> Self {
        Self::HALF
    }
}

/// How much earlier than `ratio × TTL` a renew may randomly happen, as a
/// fraction of that interval: `0 ≤ jitter < 1` (default 0.1). Spreads the
/// renews of many clients. Kept in thousandths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Jitter(u16);

impl Jitter {
    /// No jitter: renew exactly on schedule.
    pub const NONE: Jitter = Jitter(0);
    /// Up to 10 % early, as the newer Go client.
    pub const TEN_PERCENT: Jitter = Jitter(100);

    /// A jitter fraction in `[0, 1)` (rounded to thousandths).
    pub fn new(fraction: f32) -> core::result::Result<Self, InvalidRatio> {
        if !(0.0..1.0).contains(&fraction) {
            return Err(InvalidRatio);
        }
        let permille = (fraction * 1000.0 + 0.5) as u16;
        Ok(Self(permille.min(999)))
    }

    /// A jitter in thousandths: `0..=999`.
    pub const fn from_permille(permille: u16) -> core::result::Result<Self, InvalidRatio> {
        if permille <= 999 {
            Ok(Self(permille))
        } else {
            Err(InvalidRatio)
        }
    }

    /// The jitter in thousandths.
    pub const fn permille(self) -> u16 {
        self.0
    }
}

impl Default for Jitter {
    fn default() -> Self {
        Self::TEN_PERCENT
    }
}

/// Options of a lock or semaphore. Durations are sent to the server in
/// whole seconds, rounded up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub struct LockOptions {
    /// How long the server may block an acquire or wait (default 10 s;
    /// zero = try once).
    pub acquire_timeout: Duration,
    /// Lease TTL requested with every acquire and renew; `None` (the
    /// default) = the server's default lease.
    pub lease_ttl: Option<Duration>,
    /// Renew at this fraction of the lease (default 0.5).
    pub renew_ratio: RenewRatio,
    /// Renew up to this fraction of the renew interval early, at random
    /// (default 10 %).
    pub early_jitter: Jitter,
    /// The server's idle read timeout (`--read-timeout`, default 23 s): a
    /// renew is sent well before the connection was silent this long, even
    /// when the lease would allow waiting longer. Zero disables the bound.
    pub read_timeout: Duration,
    /// Client-side reply timeout beyond any server-side blocking (default
    /// 10 s): a dead server gives [`Error::Timeout`], never a hang.
    pub io_timeout: Duration,
}

impl LockOptions {
    /// The defaults: 10 s acquire timeout, the server's lease, renew at
    /// 0.5 with 10 % jitter, 23 s idle timeout, 10 s reply timeout.
    pub const DEFAULT: LockOptions = LockOptions {
        acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
        lease_ttl: None,
        renew_ratio: RenewRatio::HALF,
        early_jitter: Jitter::TEN_PERCENT,
        read_timeout: DEFAULT_READ_TIMEOUT,
        io_timeout: DEFAULT_IO_TIMEOUT,
    };

    /// The lease TTL as sent on the wire: whole seconds, rounded up, at
    /// least 1 (`None`: the server's default).
    pub fn lease_secs(&self) -> Option<u64> {
        self.lease_ttl.map(|d| wire_secs(d).max(1))
    }
}

impl Default for LockOptions {
    fn default() -> Self {
        Self::DEFAULT
    }
}

// ---- the description --------------------------------------------------------

/// A lock or semaphore on one key, with its options. Borrows the key;
/// copying it is cheap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LockSpec<'k> {
    key: &'k str,
    kind: Kind,
    options: LockOptions,
}

impl<'k> LockSpec<'k> {
    /// An exclusive lock on `key`, with default options.
    pub const fn lock(key: &'k str) -> Self {
        Self::new(key, Kind::Lock)
    }

    /// A counting semaphore on `key` admitting `limit` holders at once.
    pub const fn semaphore(key: &'k str, limit: u32) -> Self {
        Self::new(key, Kind::Semaphore { limit })
    }

    /// A lock or semaphore on `key`, with default options.
    pub const fn new(key: &'k str, kind: Kind) -> Self {
        Self {
            key,
            kind,
            options: LockOptions::DEFAULT,
        }
    }

    /// Replaces all options.
    pub const fn with_options(mut self, options: LockOptions) -> Self {
        self.options = options;
        self
    }

    /// Sets how long the server may block an acquire or wait.
    pub const fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.options.acquire_timeout = timeout;
        self
    }

    /// Sets the lease TTL requested with every acquire and renew.
    pub const fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.options.lease_ttl = Some(ttl);
        self
    }

    /// Sets the renew ratio.
    pub const fn renew_ratio(mut self, ratio: RenewRatio) -> Self {
        self.options.renew_ratio = ratio;
        self
    }

    /// Sets the early jitter.
    pub const fn early_jitter(mut self, jitter: Jitter) -> Self {
        self.options.early_jitter = jitter;
        self
    }

    /// Sets the server's idle read timeout (zero disables the bound).
    pub const fn read_timeout(mut self, timeout: Duration) -> Self {
        self.options.read_timeout = timeout;
        self
    }

    /// Sets the client-side reply timeout.
    pub const fn io_timeout(mut self, timeout: Duration) -> Self {
        self.options.io_timeout = timeout;
        self
    }

    /// The key.
    pub const fn key(&self) -> &'k str {
        self.key
    }

    /// Lock or semaphore.
    pub const fn kind(&self) -> Kind {
        self.kind
    }

    /// The options.
    pub const fn options(&self) -> &LockOptions {
        &self.options
    }

    /// Acquires, letting the server block up to the acquire timeout.
    /// `Ok(None)` when it passed without a grant.
    ///
    /// [`Error::Timeout`] when no reply came within the acquire timeout
    /// plus the reply timeout (the connection is then unusable).
    ///
    /// Not cancel-safe: if the future is dropped, the connection is
    /// unusable and may hold a grant on the server; close it (the server
    /// releases everything a closed connection held).
    pub fn acquire<T: Read + Write, C: Timer, const N: usize, const P: usize>(
        &self,
        conn: &mut Connection<T, N, P>,
        timer: &C,
    ) -> impl Future<Output = Result<Option<Lease<'k>>, T::Error>> {
        self.acquire_within(conn, timer, self.options.acquire_timeout)
    }

    /// Tries once, without blocking on the server (timeout 0).
    ///
    /// Not cancel-safe; see [`acquire`](Self::acquire).
    pub fn try_acquire<T: Read + Write, C: Timer, const N: usize, const P: usize>(
        &self,
        conn: &mut Connection<T, N, P>,
        timer: &C,
    ) -> impl Future<Output = Result<Option<Lease<'k>>, T::Error>> {
        self.acquire_within(conn, timer, Duration::ZERO)
    }

    /// [`acquire`](Self::acquire) with another timeout.
    ///
    /// Not cancel-safe; see [`acquire`](Self::acquire).
    pub async fn acquire_within<T: Read + Write, C: Timer, const N: usize, const P: usize>(
        &self,
        conn: &mut Connection<T, N, P>,
        timer: &C,
        timeout: Duration,
    ) -> Result<Option<Lease<'k>>, T::Error> {
        let secs = wire_secs(timeout);
        let sent = timer.now();
        let limit = blocking_limit(sent, secs, self.options.io_timeout);
        let req = Request::Acquire {
            kind: self.kind,
            key: self.key,
            timeout: secs,
            lease: self.options.lease_secs(),
        };
        let reply = timed(conn, timer, limit, req, Expect::Grant).await;
        self.granted(reply, sent, timer)
    }

    /// Two-phase, first half: joins the queue without blocking. Either the
    /// lease at once, or [`Enqueued::Queued`]: run your code, then
    /// collect the grant with [`wait`](Self::wait) on this same connection
    /// (before the server's idle timeout drops the silent connection).
    ///
    /// Not cancel-safe: if the future is dropped, the connection is
    /// unusable and may hold a grant or a queue place; close it.
    pub async fn enqueue<T: Read + Write, C: Timer, const N: usize, const P: usize>(
        &self,
        conn: &mut Connection<T, N, P>,
        timer: &C,
    ) -> Result<Enqueued<Lease<'k>>, T::Error> {
        let sent = timer.now();
        let limit = sent + self.options.io_timeout;
        let req = Request::Enqueue {
            kind: self.kind,
            key: self.key,
            lease: self.options.lease_secs(),
        };
        let reply = timed(conn, timer, limit, req, Expect::Enqueue).await?;
        Ok(match Enqueued::pick(reply)? {
            Enqueued::Acquired(g) => {
                Enqueued::Acquired(Lease::from_grant(self, g, sent, timer.now()))
            }
            Enqueued::Queued => Enqueued::Queued,
        })
    }

    /// Two-phase, second half: waits up to the acquire timeout for the
    /// grant of an earlier [`enqueue`](Self::enqueue) on this connection.
    /// `Ok(None)` on timeout (the server then forgets the waiter).
    ///
    /// Not cancel-safe: if the future is dropped, the connection is
    /// unusable and may hold a grant; close it.
    pub fn wait<T: Read + Write, C: Timer, const N: usize, const P: usize>(
        &self,
        conn: &mut Connection<T, N, P>,
        timer: &C,
    ) -> impl Future<Output = Result<Option<Lease<'k>>, T::Error>> {
        self.wait_within(conn, timer, self.options.acquire_timeout)
    }

    /// [`wait`](Self::wait) with another timeout.
    ///
    /// Not cancel-safe; see [`wait`](Self::wait).
    pub async fn wait_within<T: Read + Write, C: Timer, const N: usize, const P: usize>(
        &self,
        conn: &mut Connection<T, N, P>,
        timer: &C,
        timeout: Duration,
    ) -> Result<Option<Lease<'k>>, T::Error> {
        let secs = wire_secs(timeout);
        let sent = timer.now();
        let limit = blocking_limit(sent, secs, self.options.io_timeout);
        let req = Request::Wait {
            kind: self.kind,
            key: self.key,
            timeout: secs,
        };
        let reply = timed(conn, timer, limit, req, Expect::Grant).await;
        self.granted(reply, sent, timer)
    }

    /// The lease of an acquire's or wait's reply (shared by both).
    fn granted<E, C: Timer>(
        &self,
        reply: core::result::Result<Result<Value, E>, Elapsed>,
        sent: Instant,
        timer: &C,
    ) -> Result<Option<Lease<'k>>, E> {
        Ok(<Option<Grant>>::pick(reply?)?.map(|g| Lease::from_grant(self, g, sent, timer.now())))
    }
}

// ---- the lease ----------------------------------------------------------------

/// A held lease on a key: a [`LeaseDriver`] (token, TTL, fence, deadline,
/// renew schedule and every decision about them) with the key it borrows,
/// and the IO around the driver: [`renew`](Self::renew),
/// [`release`](Self::release) and the cooperative [`hold`](Self::hold).
///
/// All times are the injected [`Timer`]'s. The deadline is counted
/// conservatively from when the last successful renew (or the acquire) was
/// *sent*; for a grant that arrived after a long server-side wait, from
/// [`GRANT_SLACK`] (at most a quarter of the lease) before it arrived.
///
/// About a hundred bytes. A `'static` holder (a task, a thread) keeps the
/// key elsewhere and moves the [`driver`](Self::into_driver) alone.
#[derive(Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Lease<'k> {
    key: &'k str,
    driver: LeaseDriver,
}

impl fmt::Debug for Lease<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("driver", &self.driver)
            .finish()
    }
}

impl<'k> Lease<'k> {
    /// A lease from a grant obtained with the low-level
    /// [`Connection::acquire`], [`Connection::enqueue`] or
    /// [`Connection::wait`]: `sent_at` is when the request was sent,
    /// `received_at` when the grant arrived (see
    /// [`LeaseDriver::from_grant`]). The first renew is scheduled with the
    /// [`XorShift32`] fallback jitter.
    pub fn from_grant(
        spec: &LockSpec<'k>,
        grant: Grant,
        sent_at: Instant,
        received_at: Instant,
    ) -> Self {
        let driver = LeaseDriver::from_grant(&spec.options, spec.kind, grant, sent_at, received_at);
        Self::from_driver(spec.key, driver)
    }

    /// The lease of `driver` on `key` (the key it was granted for).
    pub const fn from_driver(key: &'k str, driver: LeaseDriver) -> Self {
        Self { key, driver }
    }

    /// The driver: the lease without its key.
    pub fn driver(&self) -> &LeaseDriver {
        &self.driver
    }

    /// The driver alone, `'static`: for a holder that keeps the key
    /// elsewhere (a renewal task or thread).
    pub fn into_driver(self) -> LeaseDriver {
        self.driver
    }

    /// The key.
    pub fn key(&self) -> &'k str {
        self.key
    }

    /// Lock or semaphore.
    pub fn kind(&self) -> Kind {
        self.driver.kind()
    }

    /// The lease token.
    pub fn token(&self) -> &Token {
        self.driver.token()
    }

    /// The fencing value of the token (see [`Fence`](crate::Fence): ordered
    /// on v2 servers, meaningless on v1.x).
    pub fn fence(&self) -> crate::Fence {
        self.driver.token().fence()
    }

    /// The TTL of the lease as last granted or renewed.
    pub fn ttl(&self) -> Duration {
        self.driver.ttl()
    }

    /// When the lease expires unless renewed, by the injected clock.
    pub fn deadline(&self) -> Instant {
        self.driver.deadline()
    }

    /// When the next renew is due.
    pub fn next_renew_at(&self) -> Instant {
        self.driver.next_renew_at()
    }

    /// The last measured renew round trip (before the first renew: the
    /// acquire's, capped at [`GRANT_SLACK`] and at a quarter of the lease).
    pub fn rtt(&self) -> Duration {
        self.driver.rtt()
    }

    /// Whether the deadline has passed at `now`.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.driver.is_expired(now)
    }

    /// Time left before the deadline at `now`.
    pub fn remaining(&self, now: Instant) -> Duration {
        self.driver.deadline().saturating_duration_since(now)
    }

    /// Recomputes [`next_renew_at`](Self::next_renew_at), drawing the
    /// jitter from `rng` (see [`LeaseDriver::reschedule`]).
    pub fn reschedule(&mut self, rng: &mut impl Rng) {
        self.driver.reschedule(rng);
    }

    /// Renews now, with the lease's fallback jitter for the next schedule.
    /// See [`renew_with_rng`](Self::renew_with_rng).
    ///
    /// Not cancel-safe: a dropped future leaves the connection unusable.
    pub async fn renew<T: Read + Write, C: Timer, const N: usize, const P: usize>(
        &mut self,
        conn: &mut Connection<T, N, P>,
        timer: &C,
    ) -> Result<(), T::Error> {
        let mut rng = self.driver.rng;
        let out = self.renew_with_rng(conn, timer, &mut rng).await;
        self.driver.rng = rng;
        out
    }

    /// Renews now: on success the TTL and deadline are recomputed from the
    /// reply (`deadline = sent + seconds remaining`), the round trip is
    /// measured and the next renew scheduled with jitter from `rng`.
    ///
    /// [`Error::LeaseLost`] when the deadline had passed, the server says
    /// the lease is not held (`error`, or `error_lease_expired` from v2 in
    /// cluster mode) or no reply came before the deadline;
    /// [`Error::Timeout`] when no reply came within the reply timeout;
    /// other errors as the connection reports them (see
    /// [`LeaseDriver::renewed_with_rng`]).
    ///
    /// Not cancel-safe: a dropped future leaves the connection unusable.
    pub async fn renew_with_rng<T: Read + Write, C: Timer, const N: usize, const P: usize>(
        &mut self,
        conn: &mut Connection<T, N, P>,
        timer: &C,
        rng: &mut impl Rng,
    ) -> Result<(), T::Error> {
        let Some(limit) = self.driver.start_renew(timer.now()) else {
            return Err(Error::LeaseLost);
        };
        let token = *self.driver.token();
        let req = self.driver.renew_request(self.key, &token);
        let reply = timed(conn, timer, limit, req, Expect::Remaining).await;
        self.driver
            .renewed_with_rng(reply.map(u64::pick), timer.now(), rng)
    }

    /// Releases the lease.
    ///
    /// [`Error::LeaseLost`] when the server says this token does not hold
    /// the key (it expired), or the deadline passed before or during the
    /// release (the wait is bounded by the time left on the lease);
    /// [`Error::Timeout`] when no reply came within the reply timeout.
    ///
    /// Not cancel-safe: a dropped future leaves the connection unusable
    /// (close it: the server then releases the lease).
    pub async fn release<T: Read + Write, C: Timer, const N: usize, const P: usize>(
        mut self,
        conn: &mut Connection<T, N, P>,
        timer: &C,
    ) -> Result<(), T::Error> {
        // Nothing to release after the deadline: bounded by it too.
        let Some(limit) = self.driver.release_limit(timer.now()) else {
            return Err(Error::LeaseLost);
        };
        let token = *self.driver.token();
        let req = self.driver.release_request(self.key, &token);
        let reply = timed(conn, timer, limit, req, Expect::Ok).await;
        self.driver.released(reply.map(<()>::pick), timer.now())
    }

    /// Runs `fut` while keeping the lease alive on `conn`, with the lease's
    /// fallback jitter. See [`hold_with_rng`](Self::hold_with_rng).
    ///
    /// Cancel-safe between renews (the connection stays usable); dropped
    /// during a renew, it leaves the connection unusable.
    pub async fn hold<T, C, F, const N: usize, const P: usize>(
        &mut self,
        conn: &mut Connection<T, N, P>,
        timer: &C,
        fut: F,
    ) -> Result<F::Output, T::Error>
    where
        T: Read + Write,
        C: Timer,
        F: Future,
    {
        let mut rng = self.driver.rng;
        let out = self.hold_with_rng(conn, timer, &mut rng, fut).await;
        self.driver.rng = rng;
        out
    }

    /// Runs `fut` while keeping the lease alive on `conn`, driving the
    /// [`LeaseDriver`]: sleeps on `timer` until each renew is due and
    /// renews on the same connection (the future keeps running during the
    /// renew's round trip). Jitter is drawn from `rng`.
    ///
    /// Returns the future's output, or [`Error::LeaseLost`] as soon as a
    /// renew fails, the connection closes, or the lease deadline passes
    /// without a successful renew. **The caller's future is then dropped**
    /// mid-way: write it so that stopping at any `.await` is safe. If the
    /// future completes while a renew is in flight, the renew is finished
    /// first and the output returned whatever the renew's outcome.
    ///
    /// While waiting, a connection with no push queue (`P == 0`) is read
    /// as well, so that a cut connection is noticed at once; with `P > 0`
    /// signals are left alone and a cut shows at the next renew. Meant for
    /// async transports: a blocking transport's read would block the
    /// thread.
    ///
    /// Cancel-safe between renews (the connection stays usable); dropped
    /// during a renew, it leaves the connection unusable. The lease stays
    /// valid until its deadline either way.
    pub async fn hold_with_rng<T, C, R, F, const N: usize, const P: usize>(
        &mut self,
        conn: &mut Connection<T, N, P>,
        timer: &C,
        rng: &mut R,
        fut: F,
    ) -> Result<F::Output, T::Error>
    where
        T: Read + Write,
        C: Timer,
        R: Rng,
        F: Future,
    {
        let mut fut = pin!(fut);
        self.driver.reschedule(rng);
        loop {
            match self.driver.next(timer.now()) {
                Action::Wait { until } => {
                    match select3(fut.as_mut(), timer.sleep_until(until), closed(conn)).await {
                        Either3::First(out) => return Ok(out),
                        Either3::Second(()) => {}
                        Either3::Third(()) => self.driver.closed(),
                    }
                }
                Action::Renew { limit } => {
                    // The renew inline (the shared lock-request future, not
                    // a nested `renew_with_rng` state machine).
                    let token = *self.driver.token();
                    let req = self.driver.renew_request(self.key, &token);
                    let mut renew = pin!(timed(&mut *conn, timer, limit, req, Expect::Remaining));
                    // The renew is polled first, so that its send and
                    // receive times are taken before the caller's future
                    // runs in the same poll (the round trip is not inflated
                    // by the caller's work).
                    let (out, reply) = match select(renew.as_mut(), fut.as_mut()).await {
                        Either::First(reply) => (None, reply),
                        Either::Second(out) => (Some(out), renew.await),
                    };
                    // A failure shows as `Lost` at the next step.
                    let _ =
                        self.driver
                            .renewed_with_rng(reply.map(u64::pick), timer.now(), &mut *rng);
                    if let Some(out) = out {
                        return Ok(out);
                    }
                }
                // `Lost` (a failed renew, a closed connection, the deadline);
                // no release is asked for here.
                _ => {
                    warn!("lease on {} lost", self.key);
                    return Err(Error::LeaseLost);
                }
            }
        }
    }
}

/// Completes when the connection is closed or unusable. Reads only when
/// the connection keeps no pushes (nothing to steal from the caller).
async fn closed<T: Read + Write, const N: usize, const P: usize>(conn: &mut Connection<T, N, P>) {
    if P != 0 {
        return core::future::pending().await;
    }
    // With no push queue every push is dropped, so `wait_signal` only
    // returns on an error: EOF, a transport error, or an unsolicited line
    // such as the server's idle-timeout `error`. (Not `next_signal`: it
    // would link the push decoding for nothing.)
    while conn.wait_signal().await.is_ok() {}
}

#[cfg(test)]
mod tests;
