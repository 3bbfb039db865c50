//! Signals (pub/sub) on hosts: a background task ([`tokio`])
//! or thread ([`blocking`]) owns the connection, keeps it alive with the
//! `ping` heartbeat, and hands received signals to a `Stream` or an
//! `Iterator`; cloneable handles listen, unlisten and emit from anywhere.
//!
//! Both hosts share the types here: the owned [`Signal`], the stream item
//! [`SignalEvent`], the [`SignalOptions`] and the optional
//! [`Reconnect`] policy.
//!
//! # Delivery and drops
//!
//! Received signals wait in a bounded queue of [`SignalOptions::queue`]
//! signals. When it is full the host stops reading the socket, so a
//! consumer that stops reading is, as on the server's side, soon dropped by
//! the server (its push buffer holds 64 lines); the stream then yields the
//! disconnect as an `Err` item instead of ending silently. Signals longer
//! than the line buffer `N` are counted in `dropped_signals()`, never
//! truncated.
//!
//! # Reconnect
//!
//! Off by default. With [`SignalOptions::reconnect`] set, a lost connection
//! is reported as an `Err` item, then re-established with exponential
//! backoff; every subscription is made again and the stream yields
//! [`SignalEvent::Reconnected`] with the length of the gap. Signals emitted
//! during the gap are lost (the server has no replay). While disconnected,
//! `listen` and `emit` fail at once with [`Error::Disconnected`];
//! `unlisten` succeeds and the subscription is not made again.

use std::string::String;
use std::vec::Vec;

use core::time::Duration;

use crate::protocol::validate::trim_group;
use crate::signal::{DEFAULT_HEARTBEAT, DEFAULT_READ_TIMEOUT, Heartbeat};
use crate::{ConfigError, Error};

/// Default line buffer of host signal connections: 4 KiB, room for
/// payloads up to about 4000 bytes. Use [`MAX_SIGNAL_LINE`] for any payload.
pub const DEFAULT_SIGNAL_LINE_BUF: usize = 4096;

/// A line buffer that fits every push the server can send (its 64 KiB line
/// cap plus the line end).
pub const MAX_SIGNAL_LINE: usize = crate::protocol::validate::MAX_LONG_LINE + 2;

/// Default bytes of the connection's own push queue, used for signals that
/// arrive while a reply is awaited or while the consumer is behind.
pub const DEFAULT_PUSH_QUEUE: usize = 16 * 1024;

/// A received signal, owned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Signal {
    /// The literal channel it was emitted on.
    pub channel: String,
    /// The payload, byte for byte.
    pub payload: String,
}

impl From<crate::Signal<'_>> for Signal {
    fn from(s: crate::Signal<'_>) -> Self {
        Self {
            channel: s.channel.into(),
            payload: s.payload.into(),
        }
    }
}

/// An item of a host signal stream (besides errors).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignalEvent {
    /// A signal arrived.
    Signal(Signal),
    /// The connection was lost and is back, with every subscription made
    /// again ([`SignalOptions::reconnect`] only). Signals emitted during
    /// the gap were not received.
    Reconnected {
        /// From noticing the loss to being subscribed again.
        gap: Duration,
        /// Connection attempts it took (1 = the first succeeded).
        attempts: u32,
    },
}

impl SignalEvent {
    /// The signal, if this is one.
    pub fn into_signal(self) -> Option<Signal> {
        match self {
            SignalEvent::Signal(s) => Some(s),
            SignalEvent::Reconnected { .. } => None,
        }
    }
}

/// Automatic reconnect with exponential backoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconnect {
    /// Wait before the first attempt; doubled after each failure.
    /// Default 100 ms.
    pub initial_backoff: Duration,
    /// Longest wait between attempts. Default 5 s.
    pub max_backoff: Duration,
    /// Gives up after this many failed attempts (`None`: never). When it
    /// gives up the stream yields the last error and ends. Default `None`.
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

    pub(crate) fn gives_up_after(&self, failed: u32) -> bool {
        self.max_attempts.is_some_and(|max| failed >= max)
    }
}

/// Options of a host signal connection.
#[derive(Debug, Clone)]
pub struct SignalOptions {
    /// `ping` after this long without a request. Default 15 s; must be
    /// below [`read_timeout`](Self::read_timeout).
    pub heartbeat: Duration,
    /// The server's idle read timeout (`--read-timeout`). Default 23 s.
    pub read_timeout: Duration,
    /// Received signals held for the consumer (at least 1). Default 64.
    pub queue: usize,
    /// Longest wait for the reply to a request (listen, emit, ping) before
    /// the connection is given up as dead. Default 10 s.
    pub io_timeout: Duration,
    /// Automatic reconnect; `None` (the default) ends the stream after
    /// reporting the lost connection.
    pub reconnect: Option<Reconnect>,
}

impl Default for SignalOptions {
    fn default() -> Self {
        Self {
            heartbeat: DEFAULT_HEARTBEAT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            queue: 64,
            io_timeout: Duration::from_secs(10),
            reconnect: None,
        }
    }
}

impl SignalOptions {
    /// Checks the options: the heartbeat below the read timeout, a queue of
    /// at least one signal, a non-zero request timeout.
    pub(crate) fn check(&self) -> Result<Heartbeat, Error<std::io::Error>> {
        let hb = Heartbeat::new(self.heartbeat, self.read_timeout).map_err(|_| {
            ConfigError::new("heartbeat", "must be non-zero and below `read_timeout`")
        })?;
        if self.queue == 0 {
            return Err(ConfigError::new("queue", "must hold at least one signal").into());
        }
        if self.io_timeout.is_zero() {
            return Err(ConfigError::new("io_timeout", "must be non-zero").into());
        }
        Ok(hb)
    }
}

/// The subscriptions to make again after a reconnect, in order. Groups are
/// kept as the server keeps them, trimmed of surrounding whitespace, so
/// `"g "` and `"g"` are one subscription.
#[derive(Debug, Default)]
pub(crate) struct Subscriptions(Vec<(String, Option<String>)>);

impl Subscriptions {
    pub(crate) fn add(&mut self, pattern: &str, group: Option<&str>) {
        let group = group.map(trim_group);
        if !self.contains(pattern, group) {
            self.0.push((pattern.into(), group.map(Into::into)));
        }
    }

    pub(crate) fn remove(&mut self, pattern: &str, group: Option<&str>) {
        let group = group.map(trim_group);
        self.0
            .retain(|(p, g)| !(p == pattern && g.as_deref() == group));
    }

    fn contains(&self, pattern: &str, group: Option<&str>) -> bool {
        self.0
            .iter()
            .any(|(p, g)| p == pattern && g.as_deref() == group)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.0.iter().map(|(p, g)| (p.as_str(), g.as_deref()))
    }
}

/// A copy of `e` for a second recipient (the stream, when a command's
/// caller gets the original).
pub(crate) fn dup_error(e: &Error<std::io::Error>) -> Error<std::io::Error> {
    match e {
        Error::Io(io) => Error::Io(std::io::Error::new(io.kind(), std::format!("{io}"))),
        Error::Timeout => Error::Timeout,
        Error::LineTooLong => Error::LineTooLong,
        Error::Protocol(p) => Error::Protocol(*p),
        Error::Server(s) => Error::Server(s.clone()),
        Error::Auth => Error::Auth,
        Error::Config(c) => Error::Config(*c),
        _ => Error::Disconnected,
    }
}

/// Commands from handles to the task or thread that owns the connection.
pub(crate) enum Command<R> {
    Listen {
        pattern: String,
        group: Option<String>,
        reply: R,
    },
    Unlisten {
        pattern: String,
        group: Option<String>,
        reply: R,
    },
    Emit {
        channel: String,
        payload: String,
        reply: R,
    },
}

/// The answer to a [`Command`]: `()` for listen/unlisten, the delivery
/// count for emit (0 for the others).
pub(crate) type CommandResult = Result<u64, Error<std::io::Error>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let r = Reconnect::default();
        assert_eq!(r.backoff(1), Duration::from_millis(100));
        assert_eq!(r.backoff(2), Duration::from_millis(200));
        assert_eq!(r.backoff(4), Duration::from_millis(800));
        assert_eq!(r.backoff(10), Duration::from_secs(5));
        assert_eq!(r.backoff(u32::MAX), Duration::from_secs(5));
        assert!(!r.gives_up_after(1000));
        let r = Reconnect {
            max_attempts: Some(3),
            ..Reconnect::default()
        };
        assert!(!r.gives_up_after(2));
        assert!(r.gives_up_after(3));
    }

    #[test]
    fn options_are_checked() {
        assert!(SignalOptions::default().check().is_ok());
        let bad = SignalOptions {
            heartbeat: Duration::from_secs(30),
            ..SignalOptions::default()
        };
        assert!(matches!(bad.check(), Err(Error::Config(c)) if c.option == "heartbeat"));
        let bad = SignalOptions {
            queue: 0,
            ..SignalOptions::default()
        };
        assert!(matches!(bad.check(), Err(Error::Config(c)) if c.option == "queue"));
        let bad = SignalOptions {
            io_timeout: Duration::ZERO,
            ..SignalOptions::default()
        };
        assert!(matches!(bad.check(), Err(Error::Config(c)) if c.option == "io_timeout"));
    }

    #[test]
    fn subscriptions_dedupe_and_remove_by_pattern_and_group() {
        let mut s = Subscriptions::default();
        s.add("a.>", None);
        s.add("a.>", None);
        s.add("a.>", Some("g"));
        assert_eq!(s.iter().count(), 2);
        s.remove("a.>", None);
        assert_eq!(s.iter().collect::<Vec<_>>(), [("a.>", Some("g"))]);
        // Groups as the server trims them: one subscription.
        s.add("a.>", Some(" g\t"));
        assert_eq!(s.iter().count(), 1);
        s.remove("a.>", Some("g "));
        assert_eq!(s.iter().count(), 0);
        s.add("b", Some("  h "));
        assert_eq!(s.iter().collect::<Vec<_>>(), [("b", Some("h"))]);
    }
}
