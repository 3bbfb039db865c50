//! The time boundary: a clock and a sleep, supplied by the caller.
//!
//! The core never depends on a runtime's timer. Adapters implement
//! [`Timer`] for tokio, std, embassy-time and WASI.

use core::future::Future;
use core::ops::Add;
use core::time::Duration;

/// A point in time, in milliseconds since an epoch chosen by the [`Timer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Instant(u64);

impl Instant {
    /// The instant `ms` milliseconds after the timer's epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Self(ms)
    }

    /// Milliseconds since the timer's epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    /// Saturates instead of overflowing.
    fn add(self, d: Duration) -> Instant {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Instant(self.0.saturating_add(ms))
    }
}

/// A monotonic clock and a sleep: everything the core needs of time.
pub trait Timer {
    /// The current time. Must never go backwards.
    fn now(&self) -> Instant;

    /// Completes at or after `deadline` (at once if it has passed).
    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()>;
}

impl<T: Timer + ?Sized> Timer for &T {
    fn now(&self) -> Instant {
        (**self).now()
    }
    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> {
        (**self).sleep_until(deadline)
    }
}

/// The deadline passed before the future completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Elapsed;

/// Runs `fut` until `deadline`: its output, or [`Elapsed`] (and `fut` is
/// dropped). Dropping a connection request this way leaves the connection
/// unusable; see [`Connection`](crate::Connection).
///
/// A plain function returning a named future, not an `async fn`: an async
/// fn would keep `fut` in its state twice (the argument and the awaited
/// select), doubling the size of every lease future built on it.
pub fn with_deadline<'t, T: Timer + ?Sized, F: Future>(
    timer: &'t T,
    deadline: Instant,
    fut: F,
) -> WithDeadline<F, impl Future<Output = ()> + use<'t, T, F>> {
    WithDeadline {
        inner: embassy_futures::select::select(fut, timer.sleep_until(deadline)),
    }
}

/// The future of [`with_deadline`].
#[must_use = "futures do nothing unless awaited"]
pub struct WithDeadline<F, S> {
    inner: embassy_futures::select::Select<F, S>,
}

impl<F: Future, S: Future<Output = ()>> Future for WithDeadline<F, S> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(
        self: core::pin::Pin<&mut Self>,
        cx: &mut core::task::Context<'_>,
    ) -> core::task::Poll<Self::Output> {
        use embassy_futures::select::Either;
        // SAFETY: `inner` is structurally pinned: it is never moved out of
        // `self`, and `WithDeadline` has no Drop impl or Unpin impl of its own.
        let inner = unsafe { self.map_unchecked_mut(|s| &mut s.inner) };
        inner.poll(cx).map(|either| match either {
            Either::First(out) => Ok(out),
            Either::Second(()) => Err(Elapsed),
        })
    }
}
