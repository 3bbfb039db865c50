//! The signal driver: what a long-lived signal connection does next, as a
//! pure state machine (no IO, no allocation, no clock of its own).
//!
//! A host feeds it events — the time, a command from a handle, the outcome
//! of a request, a lost connection, a (failed) reconnect — and carries out
//! the [`Action`] that [`SignalDriver::poll`] returns: serve until the
//! heartbeat is due, send a `ping`, hand over the signals already received,
//! report the error that lost the connection, back off, reconnect, make a
//! subscription again, announce the reconnect with the length of the gap.
//! The tokio task and the blocking thread both drive this machine, so the
//! decisions are made once:
//!
//! - **Heartbeat**: a `ping` after [`Heartbeat`] without a request (the
//!   interval is below the server's read timeout, checked by
//!   [`Heartbeat::new`]). [`Keepalive`] is the same clock on its own, used
//!   by the core [`SignalConn`](super::SignalConn).
//! - **Loss**: the signals already received are delivered first
//!   ([`Action::Drain`]), then the error ([`Action::ReportLost`]).
//! - **Reconnect** (with a [`Reconnect`] policy): exponential backoff
//!   between attempts, giving up after `max_attempts` failures; every
//!   subscription is made again, in the order it was first made, before
//!   [`Action::Reconnected`] reports the gap.
//! - **Commands while disconnected**: `listen` and `emit` are refused;
//!   `unlisten` succeeds at once and forgets the subscription (it is not
//!   made again).
//! - **Drops**: the signals a connection dropped are kept in the total when
//!   it is lost ([`SignalDriver::dropped`]).
//!
//! The subscriptions live in a caller-chosen [`SubscriptionStore`]: the
//! driver decides what is added, removed and made again, the store only
//! holds the strings (on hosts a `Vec` of `String`s; without an allocator,
//! a `heapless::Vec` of `heapless::String`s sized for every subscription
//! the application makes), so the driver itself never allocates.

use core::time::Duration;

use super::Heartbeat;
use crate::Error;
use crate::error::ServerError;
use crate::protocol::Request;
use crate::protocol::validate::trim_group;
use crate::time::Instant;

/// The heartbeat clock: when the next `ping` is due, given when the last
/// request was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Keepalive {
    heartbeat: Heartbeat,
    last_sent: Instant,
}

impl Keepalive {
    /// A clock that counts the connection as quiet since `now`.
    pub const fn new(heartbeat: Heartbeat, now: Instant) -> Self {
        Self {
            heartbeat,
            last_sent: now,
        }
    }

    /// A request went out at `now`.
    pub fn sent(&mut self, now: Instant) {
        self.last_sent = now;
    }

    /// When the next heartbeat is due: the interval after the last request.
    pub fn due(&self) -> Instant {
        self.last_sent + self.heartbeat.interval()
    }

    /// Whether the heartbeat is due at `now`.
    pub fn is_due(&self, now: Instant) -> bool {
        now >= self.due()
    }

    /// The heartbeat interval in use.
    pub fn heartbeat(&self) -> Heartbeat {
        self.heartbeat
    }
}

/// The reply to a heartbeat `ping`, as the driver counts it: a server older
/// than v1.14 answers `error`, which is fine (the bytes reset its idle
/// timer all the same).
pub fn keepalive_reply<E>(reply: Result<(), Error<E>>) -> Result<(), Error<E>> {
    match reply {
        Ok(()) | Err(Error::Server(ServerError::Error)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Automatic reconnect with exponential backoff.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Reconnect {
    /// Wait before the first attempt; doubled after each failure.
    /// Default 100 ms.
    pub initial_backoff: Duration,
    /// Longest wait between attempts. Default 5 s.
    pub max_backoff: Duration,
    /// Gives up after this many failed attempts (`None`: never). When it
    /// gives up the last error is reported and the stream ends. Default
    /// `None`.
    pub max_attempts: Option<u32>,
}

impl Default for Reconnect {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_attempts: None,
        }
    }
}

impl Reconnect {
    /// The wait before attempt `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(20);
        self.initial_backoff
            .saturating_mul(1u32 << shift)
            .min(self.max_backoff)
    }

    /// Whether to stop after `failed` failed attempts.
    pub fn gives_up_after(&self, failed: u32) -> bool {
        self.max_attempts.is_some_and(|max| failed >= max)
    }
}

/// Where a [`SignalDriver`] keeps its subscriptions: patterns and groups,
/// in the order they were made. The driver dedupes and trims groups; the
/// store only holds the strings.
pub trait SubscriptionStore {
    /// How many subscriptions are held.
    fn len(&self) -> usize;
    /// Whether none is held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The subscription at `index`.
    fn get(&self, index: usize) -> Option<(&str, Option<&str>)>;
    /// Appends a subscription (never one already held). A fixed-capacity
    /// store must have room for every subscription the application makes.
    fn push(&mut self, pattern: &str, group: Option<&str>);
    /// Removes the subscription at `index`, keeping the order of the rest.
    fn remove(&mut self, index: usize);
}

/// What to do with a command from a handle ([`SignalDriver::admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Admit {
    /// Send it now, then report [`SignalDriver::completed`].
    Send,
    /// Answer [`Error::Disconnected`]: no connection to send it on.
    Refuse,
    /// Answer `Ok` without sending: an `unlisten` while disconnected, whose
    /// subscription is forgotten.
    Done,
}

/// How a request ended, for [`SignalDriver::completed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Outcome {
    /// Answered `ok`.
    Done,
    /// Refused by the server (or rejected before sending); the connection
    /// is fine.
    Failed,
    /// The connection is lost or in an unknown state.
    Broken,
}

impl Outcome {
    /// The outcome of `result` on a connection that is `usable` afterwards.
    pub fn of<T, E>(result: &Result<T, Error<E>>, usable: bool) -> Self {
        match result {
            Ok(_) => Outcome::Done,
            Err(e) if e.is_recoverable() && usable => Outcome::Failed,
            Err(_) => Outcome::Broken,
        }
    }
}

/// What the host does next; see [`SignalDriver::poll`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Action<'a> {
    /// Connected: run commands ([`admit`](SignalDriver::admit)), hand
    /// received signals to the consumer, and wait for the socket, until
    /// `heartbeat_at` at the latest. Report a broken connection with
    /// [`lost`](SignalDriver::lost).
    Serve {
        /// When the heartbeat is due.
        heartbeat_at: Instant,
    },
    /// Send the heartbeat `ping` now (counted as sent), then report
    /// [`completed`](SignalDriver::completed) with [`Request::Ping`].
    Ping,
    /// The connection is lost: hand the consumer every signal it already
    /// received, then call [`drained`](SignalDriver::drained).
    Drain,
    /// Hand the consumer the error that lost the connection, then call
    /// [`reported`](SignalDriver::reported).
    ReportLost,
    /// Disconnected: wait until `until`, answering commands
    /// ([`admit`](SignalDriver::admit) refuses them).
    BackOff {
        /// End of the backoff.
        until: Instant,
    },
    /// Open a new connection now, then call
    /// [`connected`](SignalDriver::connected) or
    /// [`connect_failed`](SignalDriver::connect_failed).
    Connect {
        /// Attempt number, 1-based.
        attempt: u32,
    },
    /// Make this subscription again on the new connection, then report
    /// [`resubscribed`](SignalDriver::resubscribed).
    Resubscribe {
        /// The pattern.
        pattern: &'a str,
        /// The queue group.
        group: Option<&'a str>,
    },
    /// Tell the consumer the connection is back (the driver is connected
    /// again).
    Reconnected {
        /// From noticing the loss to being subscribed again.
        gap: Duration,
        /// Connection attempts it took (1 = the first succeeded).
        attempts: u32,
    },
    /// Reconnecting failed too often: hand the consumer the last error and
    /// stop.
    GiveUp,
    /// Stop: the stream has ended.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
enum State {
    Connected,
    Draining {
        lost_at: Instant,
    },
    Reporting {
        lost_at: Instant,
    },
    BackingOff {
        lost_at: Instant,
        attempt: u32,
        until: Instant,
    },
    Connecting {
        lost_at: Instant,
        attempt: u32,
    },
    Resubscribing {
        lost_at: Instant,
        attempt: u32,
        next: usize,
    },
    GivingUp,
    Ended,
}

/// The signal driver; see the [module docs](self).
#[derive(Debug)]
pub struct SignalDriver<S> {
    keepalive: Keepalive,
    reconnect: Option<Reconnect>,
    subs: S,
    state: State,
    dropped_before: u64,
}

impl<S: SubscriptionStore> SignalDriver<S> {
    /// A driver for a connection opened at `now`, holding the
    /// subscriptions in `subs`; `reconnect: None` ends after the first
    /// loss.
    pub fn new(heartbeat: Heartbeat, reconnect: Option<Reconnect>, subs: S, now: Instant) -> Self {
        Self {
            keepalive: Keepalive::new(heartbeat, now),
            reconnect,
            subs,
            state: State::Connected,
            dropped_before: 0,
        }
    }

    /// The subscriptions that a reconnect makes again, in order.
    pub fn subscriptions(&self) -> &S {
        &self.subs
    }

    /// Whether a connection is up and serving.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// Signals dropped so far over every connection, given the count of
    /// the current one (ignored while disconnected: it was already added).
    pub fn dropped(&self, current: u64) -> u64 {
        if self.is_connected() {
            self.dropped_before.saturating_add(current)
        } else {
            self.dropped_before
        }
    }

    /// What to do at `now`. Every action returned must be carried out; the
    /// one-shot ones ([`Ping`](Action::Ping),
    /// [`Reconnected`](Action::Reconnected), [`GiveUp`](Action::GiveUp))
    /// count as done once returned.
    pub fn poll(&mut self, now: Instant) -> Action<'_> {
        match self.state {
            State::Connected if self.keepalive.is_due(now) => {
                self.keepalive.sent(now);
                Action::Ping
            }
            State::Connected => Action::Serve {
                heartbeat_at: self.keepalive.due(),
            },
            State::Draining { .. } => Action::Drain,
            State::Reporting { .. } => Action::ReportLost,
            State::BackingOff {
                lost_at,
                attempt,
                until,
            } => {
                if now < until {
                    return Action::BackOff { until };
                }
                self.state = State::Connecting { lost_at, attempt };
                Action::Connect { attempt }
            }
            State::Connecting { attempt, .. } => Action::Connect { attempt },
            State::Resubscribing {
                lost_at,
                attempt,
                next,
            } => match self.subs.get(next) {
                Some((pattern, group)) => {
                    self.keepalive.sent(now);
                    Action::Resubscribe { pattern, group }
                }
                None => {
                    self.state = State::Connected;
                    Action::Reconnected {
                        gap: now.saturating_duration_since(lost_at),
                        attempts: attempt,
                    }
                }
            },
            State::GivingUp => {
                self.state = State::Ended;
                Action::GiveUp
            }
            State::Ended => Action::End,
        }
    }

    /// A command arrived at `now`: send it, refuse it, or answer it at once.
    pub fn admit(&mut self, now: Instant, req: Request<'_>) -> Admit {
        if self.is_connected() {
            self.keepalive.sent(now);
            return Admit::Send;
        }
        match req {
            Request::Unlisten { pattern, group } => {
                self.forget(pattern, group);
                Admit::Done
            }
            _ => Admit::Refuse,
        }
    }

    /// The [`Resubscribe`](Action::Resubscribe) request ended at `now`;
    /// anything but [`Outcome::Done`] fails the reconnect attempt.
    pub fn resubscribed(&mut self, now: Instant, outcome: Outcome) {
        if let State::Resubscribing {
            lost_at,
            attempt,
            next,
        } = self.state
        {
            if outcome == Outcome::Done {
                self.state = State::Resubscribing {
                    lost_at,
                    attempt,
                    next: next + 1,
                };
            } else {
                self.connect_failed(now);
            }
        }
    }

    /// A command or the ping ended at `now`; `dropped` is the count of
    /// signals the connection has dropped. `true` when this lost the
    /// connection (its error is then the one to report).
    pub fn completed(
        &mut self,
        now: Instant,
        req: Request<'_>,
        outcome: Outcome,
        dropped: u64,
    ) -> bool {
        if !self.is_connected() {
            return false;
        }
        match (req, outcome) {
            (Request::Listen { pattern, group }, Outcome::Done) => self.remember(pattern, group),
            (Request::Unlisten { pattern, group }, Outcome::Done) => self.forget(pattern, group),
            // Anything but `ok` (or `error` from an old server, see
            // `keepalive_reply`) to a ping means the peer is not a server.
            (_, Outcome::Broken) | (Request::Ping, Outcome::Failed) => {
                self.lost(now, dropped);
                return true;
            }
            _ => {}
        }
        false
    }

    /// The connection broke at `now` (a read failed, or a request left it
    /// unusable); it had dropped `dropped` signals.
    pub fn lost(&mut self, now: Instant, dropped: u64) {
        if self.is_connected() {
            self.dropped_before = self.dropped_before.saturating_add(dropped);
            self.state = State::Draining { lost_at: now };
        }
    }

    /// Every signal received before the loss was handed over.
    pub fn drained(&mut self) {
        if let State::Draining { lost_at } = self.state {
            self.state = State::Reporting { lost_at };
        }
    }

    /// The error that lost the connection was handed over at `now`.
    pub fn reported(&mut self, now: Instant) {
        if let State::Reporting { lost_at } = self.state {
            self.state = match &self.reconnect {
                Some(policy) => State::BackingOff {
                    lost_at,
                    attempt: 1,
                    until: now + policy.backoff(1),
                },
                None => State::Ended,
            };
        }
    }

    /// A new connection is up at `now` (nothing subscribed yet).
    pub fn connected(&mut self, now: Instant) {
        if let State::Connecting { lost_at, attempt } = self.state {
            self.keepalive.sent(now);
            self.state = State::Resubscribing {
                lost_at,
                attempt,
                next: 0,
            };
        }
    }

    /// A reconnect attempt failed at `now` (connecting or resubscribing).
    pub fn connect_failed(&mut self, now: Instant) {
        let (State::Connecting { lost_at, attempt }
        | State::Resubscribing {
            lost_at, attempt, ..
        }) = self.state
        else {
            return;
        };
        let Some(policy) = &self.reconnect else {
            self.state = State::GivingUp;
            return;
        };
        if policy.gives_up_after(attempt) {
            self.state = State::GivingUp;
            return;
        }
        let attempt = attempt.saturating_add(1);
        self.state = State::BackingOff {
            lost_at,
            attempt,
            until: now + policy.backoff(attempt),
        };
    }

    fn find(&self, pattern: &str, group: Option<&str>) -> Option<usize> {
        (0..self.subs.len()).find(|&i| self.subs.get(i) == Some((pattern, group)))
    }

    fn remember(&mut self, pattern: &str, group: Option<&str>) {
        let group = group.map(trim_group);
        if self.find(pattern, group).is_none() {
            self.subs.push(pattern, group);
        }
    }

    fn forget(&mut self, pattern: &str, group: Option<&str>) {
        if let Some(i) = self.find(pattern, group.map(trim_group)) {
            self.subs.remove(i);
            // Keep a resubscription in progress on the same next entry.
            if let State::Resubscribing { next, .. } = &mut self.state
                && i < *next
            {
                *next -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests;
