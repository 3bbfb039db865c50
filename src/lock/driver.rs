//! The lease driver: see [`LeaseDriver`].

use core::fmt;
use core::time::Duration;

use super::{GRANT_SLACK, Jitter, LockOptions, RenewRatio, Rng, XorShift32};
use crate::conn::Result;
use crate::error::{Error, ServerError};
use crate::protocol::{Grant, Kind, Request, Token};
use crate::time::{Elapsed, Instant};

pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Whole seconds, rounded up: how the wire counts a [`Duration`] (acquire
/// and wait timeouts; a lease TTL, see [`LockOptions::lease_secs`]).
pub fn wire_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

pub(crate) fn add_ms(t: Instant, ms: u64) -> Instant {
    Instant::from_millis(t.as_millis().saturating_add(ms))
}

/// What became of a request the driver asked for: the reply (or the error
/// the connection reported), or [`Elapsed`] when its reply limit passed
/// first.
pub type Reply<T, E> = core::result::Result<Result<T, E>, Elapsed>;

/// What the holder of a [`LeaseDriver`] does next (see
/// [`LeaseDriver::next`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Action {
    /// Nothing to send before `until`: wait for it, for a release request
    /// ([`LeaseDriver::request_release`]) or for the connection to close
    /// ([`LeaseDriver::closed`]), then ask again.
    Wait {
        /// When the next renew is due.
        until: Instant,
    },
    /// Send the renew ([`LeaseDriver::renew_request`]) and wait for its
    /// reply until `limit`; then [`LeaseDriver::renewed`].
    Renew {
        /// The reply limit: the reply timeout, never past the deadline.
        limit: Instant,
    },
    /// Send the release ([`LeaseDriver::release_request`]) and wait for its
    /// reply until `limit`; then [`LeaseDriver::released`], which gives the
    /// release's result.
    Release {
        /// The reply limit: the reply timeout, never past the deadline.
        limit: Instant,
    },
    /// The lease is lost: stop renewing and close the connection (the
    /// server then frees whatever it still holds). A release asked for
    /// gets [`Error::LeaseLost`].
    Lost,
    /// The release was sent and answered: nothing more to do.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
enum Phase {
    Held,
    /// A release was asked for; it goes out before any renew.
    ReleaseAsked,
    Lost,
    Done,
}

/// A held lease without its key (token, TTL, deadline, renew schedule),
/// and every decision about it: one sans-IO state machine, driven the same
/// way by the cooperative [`Lease::hold`](super::Lease::hold) (`no_std`,
/// WASI), the tokio renewal task and the blocking renewal thread.
///
/// The driver knows no key, no connection and no clock: it is `'static`
/// and `Copy`, so a host adapter keeps the key once (in its shared
/// settings) and moves the driver into a task or thread. Each step takes
/// the time from the caller and returns an [`Action`]:
///
/// ```text
/// loop {
///     if a release was asked for      { driver.request_release() }
///     match driver.next(now) {
///         Wait { until }    => sleep until `until`, a release request or a
///                              closed connection (`driver.closed()`)
///         Renew { limit }   => send the renew, then
///                              `driver.renewed(reply or Elapsed at limit, now)`
///         Release { limit } => send the release, then
///                              `driver.released(reply or Elapsed at limit, now)`
///                              gives the release's result; stop
///         Lost              => stop: the lease is lost (a release asked
///                              for gets `LeaseLost`)
///         Done              => stop: released
///     }
/// }
/// ```
///
/// The decisions, all here:
/// * **When to renew**: at `ratio × TTL` after the last successful renew
///   was sent, early by the measured round trip and a random jitter, and
///   never later than the server's idle read timeout allows
///   ([`reschedule`](LeaseDriver::reschedule)).
/// * **Release before renew**: a release asked for is looked at before
///   every renew, so renews due back to back never starve it.
/// * **Reply deadlines**: a renew or release waits for its reply up to the
///   reply timeout, never past the lease deadline.
/// * **When the lease is lost**: the deadline passed before a renew could be
///   sent; the server answered `error` or `error_lease_expired`; a renew
///   failed in any other way (a timeout, a transport error, an
///   unexpected reply) — the holder stops then, as it cannot know whether
///   the server still counts the lease; the connection closed.
/// * **Release after the deadline** is [`Error::LeaseLost`] without a
///   request (there is nothing left to release).
/// * **Lease arithmetic**: the wire seconds of the requested TTL
///   ([`LockOptions::lease_secs`]), the lease start of a grant (its send
///   time, or [`GRANT_SLACK`] before it arrived after a long server-side
///   wait), the deadline after a renew (`sent + remaining`), the round trip.
///
/// All times are the caller's [`Timer`](crate::time::Timer)'s. The
/// deadline is counted conservatively from when the last successful renew
/// (or the acquire) was *sent*.
#[derive(Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LeaseDriver {
    kind: Kind,
    token: Token,
    /// TTL requested with renews, in seconds.
    request_secs: Option<u64>,
    ttl_ms: u64,
    deadline: Instant,
    renewed_at: Instant,
    last_sent: Instant,
    next_renew: Instant,
    rtt_ms: u64,
    idle_ms: u64,
    io_ms: u64,
    ratio: RenewRatio,
    jitter: Jitter,
    pub(super) rng: XorShift32,
    phase: Phase,
}

impl fmt::Debug for LeaseDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseDriver")
            .field("kind", &self.kind)
            .field("token", &self.token)
            .field("ttl_ms", &self.ttl_ms)
            .field("deadline", &self.deadline)
            .field("next_renew", &self.next_renew)
            .field("rtt_ms", &self.rtt_ms)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

impl LeaseDriver {
    /// The lease of `grant` for a lock of `kind` with `options`: `sent` is
    /// when the acquire (or wait) was sent, `received` when the grant
    /// arrived. The server starts the lease when it writes the grant, at
    /// most one trip before it arrived: the lease is counted from
    /// [`GRANT_SLACK`] (at most a quarter of the lease) before `received`,
    /// or from `sent` if later, so a short lease granted after a long wait
    /// is renewed at once rather than lost on arrival. The first renew is
    /// scheduled with the [`XorShift32`] fallback jitter.
    pub fn from_grant(
        options: &LockOptions,
        kind: Kind,
        grant: Grant,
        sent: Instant,
        received: Instant,
    ) -> Self {
        let ttl_ms = grant.lease.saturating_mul(1000);
        let slack = ms(GRANT_SLACK).min(ttl_ms / 4);
        let elapsed = received.as_millis().saturating_sub(sent.as_millis());
        let start = Instant::from_millis(
            received
                .as_millis()
                .saturating_sub(slack)
                .max(sent.as_millis()),
        );
        let mut driver = LeaseDriver {
            kind,
            token: grant.token,
            request_secs: options.lease_secs(),
            ttl_ms,
            deadline: add_ms(start, ttl_ms),
            renewed_at: start,
            last_sent: start,
            next_renew: start,
            rtt_ms: elapsed.min(slack),
            idle_ms: ms(options.read_timeout),
            io_ms: ms(options.io_timeout),
            ratio: options.renew_ratio,
            jitter: options.early_jitter,
            rng: XorShift32::from_token(&grant.token),
            phase: Phase::Held,
        };
        let mut rng = driver.rng;
        driver.reschedule(&mut rng);
        driver.rng = rng;
        driver
    }

    /// Lock or semaphore.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The lease token.
    pub fn token(&self) -> &Token {
        &self.token
    }

    /// The TTL of the lease as last granted or renewed.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }

    /// When the lease expires unless renewed.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// When the next renew is due.
    pub fn next_renew_at(&self) -> Instant {
        self.next_renew
    }

    /// The last measured renew round trip (before the first renew: the
    /// acquire's, capped at [`GRANT_SLACK`] and at a quarter of the lease).
    pub fn rtt(&self) -> Duration {
        Duration::from_millis(self.rtt_ms)
    }

    /// Whether the deadline has passed at `now`.
    pub fn is_expired(&self, now: Instant) -> bool {
        now >= self.deadline
    }

    /// Recomputes [`next_renew_at`](Self::next_renew_at), drawing the
    /// jitter from `rng`:
    /// `min(renewed_at + ratio·ttl − rtt − jitter, last_sent + idle − idle/4 − rtt)`,
    /// never before the last renew.
    pub fn reschedule(&mut self, rng: &mut impl Rng) {
        let interval = self.ttl_ms * u64::from(self.ratio.permille()) / 1000;
        let jitter_max = interval * u64::from(self.jitter.permille()) / 1000;
        let jitter = if jitter_max == 0 {
            0
        } else {
            u64::from(rng.next_u32()) % (jitter_max + 1)
        };
        let base = self.renewed_at.as_millis();
        let mut next =
            base.saturating_add(interval.saturating_sub(self.rtt_ms).saturating_sub(jitter));
        if self.idle_ms > 0 {
            let quiet = self.idle_ms - self.idle_ms / 4;
            let by_idle = self
                .last_sent
                .as_millis()
                .saturating_add(quiet.saturating_sub(self.rtt_ms));
            next = next.min(by_idle);
        }
        self.next_renew = Instant::from_millis(next);
    }

    // ---- the state machine --------------------------------------------------

    /// Asks for the release: the next [`next`](Self::next) returns
    /// [`Action::Release`] (or [`Action::Lost`] after the deadline) instead
    /// of any renew. Report a release request before every `next`, so that
    /// renews due back to back never starve it.
    pub fn request_release(&mut self) {
        if self.phase == Phase::Held {
            self.phase = Phase::ReleaseAsked;
        }
    }

    /// The connection closed (or became unusable) while no request was in
    /// flight: the lease is lost (the server frees a closed connection's
    /// leases). Final.
    pub fn closed(&mut self) {
        self.phase = Phase::Lost;
    }

    /// What to do at `now`. Sending a renew or a release is recorded here:
    /// feed its reply to [`renewed`](Self::renewed) or
    /// [`released`](Self::released) before asking again.
    pub fn next(&mut self, now: Instant) -> Action {
        if self.phase == Phase::Done {
            return Action::Done;
        }
        // Past the deadline for good: no renew can move it any more.
        if self.phase == Phase::Lost || now >= self.deadline {
            return Action::Lost;
        }
        let release = self.phase == Phase::ReleaseAsked;
        // The renew is always due before the deadline.
        if !release && now < self.next_renew {
            return Action::Wait {
                until: self.next_renew,
            };
        }
        let limit = add_ms(now, self.io_ms).min(self.deadline);
        if release {
            Action::Release { limit }
        } else {
            self.last_sent = now;
            Action::Renew { limit }
        }
    }

    /// Starts a renew sent at `now`: its reply limit (the reply timeout,
    /// at most the deadline), or `None` when the deadline has passed.
    pub(crate) fn start_renew(&mut self, now: Instant) -> Option<Instant> {
        if now >= self.deadline {
            return None;
        }
        self.last_sent = now;
        Some(add_ms(now, self.io_ms).min(self.deadline))
    }

    /// The reply limit of a release sent at `now` (the reply timeout, at
    /// most the deadline), or `None` when the deadline has passed.
    pub(crate) fn release_limit(&self, now: Instant) -> Option<Instant> {
        (now < self.deadline).then(|| add_ms(now, self.io_ms).min(self.deadline))
    }

    /// The renew request of this lease on `key`, the token borrowed from
    /// `token` (a copy of [`token`](Self::token), so that the request does
    /// not borrow the driver).
    pub fn renew_request<'a>(&self, key: &'a str, token: &'a Token) -> Request<'a> {
        Request::Renew {
            kind: self.kind,
            key,
            token,
            lease: self.request_secs,
        }
    }

    /// The release request of this lease on `key` (see
    /// [`renew_request`](Self::renew_request) for `token`).
    pub fn release_request<'a>(&self, key: &'a str, token: &'a Token) -> Request<'a> {
        Request::Release {
            kind: self.kind,
            key,
            token,
        }
    }

    /// The TTL requested with renews, in wire seconds (`None`: the
    /// server's default).
    pub fn request_secs(&self) -> Option<u64> {
        self.request_secs
    }

    /// Applies the reply of the renew last started (by [`next`](Self::next)
    /// or [`Lease::renew`](super::Lease::renew)), received at `now`, with the
    /// driver's own jitter. See [`renewed_with_rng`](Self::renewed_with_rng).
    pub fn renewed<E>(&mut self, reply: Reply<u64, E>, now: Instant) -> Result<(), E> {
        let mut rng = self.rng;
        let out = self.renewed_with_rng(reply, now, &mut rng);
        self.rng = rng;
        out
    }

    /// Applies the reply of the renew last started, received at `now`:
    ///
    /// * seconds remaining: the TTL and deadline are recomputed
    ///   (`deadline = sent + remaining`), the round trip measured and the
    ///   next renew scheduled with jitter from `rng`;
    /// * `error` or `error_lease_expired` (v2 in cluster mode, before its
    ///   sweep), any failure at or after the deadline, or no reply by a
    ///   limit that was the deadline: [`Error::LeaseLost`];
    /// * no reply by the reply timeout: [`Error::Timeout`]; other errors as
    ///   the connection reported them.
    ///
    /// Every failure ends the [`next`](Self::next) loop for good
    /// ([`Action::Lost`]): the holder cannot know whether the server still
    /// counts the lease. (A client that re-sends a failed renew itself, as
    /// the cluster client does after a failover, uses the deadline, not
    /// `next`.)
    pub fn renewed_with_rng<E>(
        &mut self,
        reply: Reply<u64, E>,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Result<(), E> {
        let out = match self.failure(reply, now) {
            Ok(remaining) => {
                let sent = self.last_sent;
                self.rtt_ms = now.as_millis().saturating_sub(sent.as_millis());
                self.ttl_ms = remaining.saturating_mul(1000);
                self.renewed_at = sent;
                self.deadline = add_ms(sent, self.ttl_ms);
                self.reschedule(rng);
                return Ok(());
            }
            Err(e) => e,
        };
        self.phase = Phase::Lost;
        Err(out)
    }

    /// Applies the reply of the release sent at [`Action::Release`]: the
    /// release's result. [`Error::LeaseLost`] when the server says this
    /// token does not hold the key, or the deadline passed before the
    /// reply; [`Error::Timeout`] when no reply came within the reply
    /// timeout. The driver is done either way.
    pub fn released<E>(&mut self, reply: Reply<(), E>, now: Instant) -> Result<(), E> {
        self.phase = Phase::Done;
        self.failure(reply, now)
    }

    /// A reply's value, or the error it means for the lease.
    pub(crate) fn failure<T, E>(&self, reply: Reply<T, E>, now: Instant) -> Result<T, E> {
        match reply {
            Ok(Ok(v)) => Ok(v),
            // Nothing is held past the deadline, whatever went wrong.
            _ if now >= self.deadline => Err(Error::LeaseLost),
            Ok(Err(Error::Server(ServerError::Error | ServerError::LeaseExpired))) => {
                Err(Error::LeaseLost)
            }
            Ok(Err(e)) => Err(e),
            Err(elapsed) => Err(elapsed.into()),
        }
    }
}

#[cfg(test)]
mod tests;
