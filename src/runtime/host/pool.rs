//! The idle-connection pool of a [`Client`](super::client::Client): a few
//! connections per server whose lock was released cleanly, kept for the
//! next acquire. Knows no runtime and no connection type: the tokio and
//! blocking adapters pool their own connections in it.
//!
//! Rules:
//! * Only a connection whose lease was released cleanly (the server said
//!   `ok` to the release) is put back. One with an abandoned wait, a lost
//!   lease, an error or an unknown state is dropped, which closes it.
//! * At most [`max_idle`](Pool::max_idle) per server; a full server's
//!   oldest idle connection is closed to make room.
//! * A connection idle for [`max_age`](Pool::max_age) is closed by a reaper
//!   thread (started when the first connection is put back, gone once the
//!   pool has stayed empty for a max age, or is dropped), so no pooled
//!   connection sits silent until the server's read timeout closes it.
//!   Closing, not pinging: a ping would keep connections nobody uses, and
//!   a connect costs one round trip (plus a handshake with TLS) only after
//!   a quiet spell.
//! * Checkout takes the most recently used connection, skips expired ones
//!   and asks the adapter's cheap probe (one non-blocking syscall) whether
//!   the server closed it meanwhile; such a connection is dropped and the
//!   next is tried.

use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use std::vec::Vec;

use super::settings::Settings;
use crate::Error;

/// Default of [`pool_max_idle`](crate::blocking::ClientBuilder):
/// idle connections kept per server.
pub const DEFAULT_POOL_MAX_IDLE: usize = 8;

/// Default of
/// [`pool_idle_timeout`](crate::blocking::ClientBuilder):
/// how long a pooled connection may sit idle.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a pooled connection may stay idle: `idle_timeout`, but never
/// more than two thirds of the server's read timeout (zero = no bound), so
/// the server never sees it silent for its whole read timeout even when it
/// counts from a little before the release reply arrived.
pub(crate) fn max_age(idle_timeout: Duration, read_timeout: Duration) -> Duration {
    if read_timeout.is_zero() {
        idle_timeout
    } else {
        idle_timeout.min(read_timeout * 2 / 3)
    }
}

struct Idle<C> {
    conn: C,
    since: Instant,
}

struct Inner<C> {
    /// Idle connections per server index, oldest first.
    servers: Vec<Vec<Idle<C>>>,
    /// Whether a reaper thread is running.
    reaper: bool,
    /// The pool was dropped: the reaper ends.
    closed: bool,
}

/// What the pool and its reaper thread share.
struct Shared<C> {
    inner: Mutex<Inner<C>>,
    /// Wakes the reaper when a connection is put back or the pool dropped.
    changed: Condvar,
    max_age: Duration,
}

impl<C> Shared<C> {
    fn lock(&self) -> MutexGuard<'_, Inner<C>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Idle connections per server (see the module docs). Dropping it closes
/// them.
pub struct Pool<C> {
    shared: Arc<Shared<C>>,
    max_idle: usize,
}

impl<C> core::fmt::Debug for Pool<C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Pool")
            .field("max_idle", &self.max_idle)
            .field("max_age", &self.shared.max_age)
            .field("idle", &self.idle())
            .finish()
    }
}

impl<C> Drop for Pool<C> {
    fn drop(&mut self) {
        let all: Vec<_> = {
            let mut inner = self.shared.lock();
            inner.closed = true;
            inner.servers.iter_mut().flat_map(|l| l.drain(..)).collect()
        };
        self.shared.changed.notify_all();
        drop(all);
    }
}

impl<C> Pool<C> {
    /// A pool for `servers` servers keeping up to `max_idle` connections
    /// each, none older than `max_age`. `max_idle` zero: no pooling.
    pub(crate) fn new(servers: usize, max_idle: usize, max_age: Duration) -> Self {
        let mut list = Vec::new();
        list.resize_with(servers, Vec::new);
        Self {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    servers: list,
                    reaper: false,
                    closed: false,
                }),
                changed: Condvar::new(),
                max_age,
            }),
            max_idle,
        }
    }

    /// Idle connections kept per server at most.
    pub(crate) fn max_idle(&self) -> usize {
        self.max_idle
    }

    /// How long a connection may stay idle.
    pub(crate) fn max_age(&self) -> Duration {
        self.shared.max_age
    }

    /// Idle connections held now, over all servers.
    pub(crate) fn idle(&self) -> usize {
        self.shared.lock().servers.iter().map(Vec::len).sum()
    }

    /// The most recently used idle connection to server `server` that is
    /// younger than the max age and passes `usable` (the adapter's probe:
    /// not closed by the server). Expired and unusable ones are dropped
    /// (closed), outside the pool's mutex.
    pub(crate) fn take(&self, server: usize, mut usable: impl FnMut(&mut C) -> bool) -> Option<C> {
        loop {
            let (found, expired) = {
                let mut inner = self.shared.lock();
                let list = inner.servers.get_mut(server)?;
                let expired = drain_expired(list, Instant::now(), self.shared.max_age);
                (list.pop(), expired)
            };
            drop(expired);
            let mut idle = found?;
            if usable(&mut idle.conn) {
                return Some(idle.conn);
            }
        }
    }
}

impl<C: Send + 'static> Pool<C> {
    /// Puts back a connection whose lease was released cleanly. Closes the
    /// server's oldest idle connection when it already has `max_idle`.
    pub(crate) fn put(&self, server: usize, conn: C) {
        if self.max_idle == 0 || self.shared.max_age.is_zero() {
            return;
        }
        let (evicted, start_reaper) = {
            let mut inner = self.shared.lock();
            let now = Instant::now();
            let Some(list) = inner.servers.get_mut(server) else {
                return;
            };
            let mut evicted = drain_expired(list, now, self.shared.max_age);
            if list.len() >= self.max_idle {
                let over = list.len() + 1 - self.max_idle;
                evicted.extend(list.drain(..over));
            }
            list.push(Idle { conn, since: now });
            let start = !inner.reaper;
            inner.reaper = true;
            (evicted, start)
        };
        drop(evicted);
        if start_reaper {
            self.start_reaper();
        }
    }

    fn start_reaper(&self) {
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("dflockd-pool".into())
            .spawn(move || reap(&shared));
        if spawned.is_err() {
            // No thread: close everything rather than keep connections
            // nobody will expire.
            let all: Vec<_> = {
                let mut inner = self.shared.lock();
                inner.reaper = false;
                inner.servers.iter_mut().flat_map(|l| l.drain(..)).collect()
            };
            drop(all);
        }
    }
}

/// Removes the connections idle for `max_age` or longer (oldest first).
fn drain_expired<C>(list: &mut Vec<Idle<C>>, now: Instant, max_age: Duration) -> Vec<Idle<C>> {
    let keep = list
        .iter()
        .position(|i| now.saturating_duration_since(i.since) < max_age)
        .unwrap_or(list.len());
    list.drain(..keep).collect()
}

/// The reaper thread: closes connections as they expire; ends when the
/// pool is dropped, or has stayed empty for a whole max age (not at once:
/// a pool that empties and refills on every lock would start a thread per
/// lock).
fn reap<C>(shared: &Shared<C>) {
    let mut inner = shared.lock();
    let mut was_empty = false;
    loop {
        let now = Instant::now();
        let expired: Vec<_> = inner
            .servers
            .iter_mut()
            .flat_map(|l| drain_expired(l, now, shared.max_age))
            .collect();
        let oldest = inner
            .servers
            .iter()
            .filter_map(|l| l.first().map(|i| i.since))
            .min();
        if inner.closed || (oldest.is_none() && was_empty) {
            inner.reaper = false;
            drop(inner);
            drop(expired);
            return;
        }
        if !expired.is_empty() {
            // Close outside the mutex.
            drop(inner);
            drop(expired);
            inner = shared.lock();
            continue;
        }
        was_empty = oldest.is_none();
        let wait = oldest.map_or(shared.max_age, |t| {
            (t + shared.max_age).saturating_duration_since(now)
        });
        inner = shared
            .changed
            .wait_timeout(inner, wait)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// An idle connection to the server that owns the key of `s`, from the
/// pool of its config, if one passes `usable` (the adapter's probe): where
/// an acquire or enqueue would otherwise connect.
pub(crate) fn checkout<C: Send + 'static>(
    s: &Settings,
    usable: impl FnMut(&mut C) -> bool,
) -> Result<Option<C>, Error<io::Error>> {
    let server = s.server_index()?;
    Ok(s.config.pool::<C>().and_then(|p| p.take(server, usable)))
}

/// Puts back the connection of a lease on the key of `s` that was
/// released cleanly (the server confirmed the release, the connection is
/// usable): the one place a connection is reused.
pub(crate) fn checkin<C: Send + 'static>(s: &Settings, conn: C) {
    if let (Ok(server), Some(pool)) = (s.server_index(), s.config.pool::<C>()) {
        pool.put(server, conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A connection that counts its closes.
    struct Conn(u32, Arc<AtomicUsize>);

    impl Drop for Conn {
        fn drop(&mut self) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn pool(max_idle: usize, max_age: Duration) -> (Arc<Pool<Conn>>, Arc<AtomicUsize>) {
        (
            Arc::new(Pool::new(2, max_idle, max_age)),
            Arc::new(AtomicUsize::new(0)),
        )
    }

    #[test]
    fn reuses_the_most_recent_connection_of_the_same_server() {
        let (p, closed) = pool(4, Duration::from_secs(60));
        p.put(0, Conn(1, closed.clone()));
        p.put(0, Conn(2, closed.clone()));
        p.put(1, Conn(3, closed.clone()));
        assert_eq!(p.take(0, |_| true).map(|c| c.0), Some(2));
        assert_eq!(p.take(1, |_| true).map(|c| c.0), Some(3));
        assert_eq!(p.take(1, |_| true).map(|c| c.0), None);
        assert_eq!(p.idle(), 1);
        // An unknown server index has nothing and takes nothing.
        assert!(p.take(7, |_| true).is_none());
        p.put(7, Conn(9, closed.clone()));
        assert_eq!(p.idle(), 1);
        // Taken ones were not closed: 2 and 3 were handed out, 9 dropped.
        assert_eq!(closed.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn keeps_at_most_max_idle_per_server_closing_the_oldest() {
        let (p, closed) = pool(2, Duration::from_secs(60));
        for i in 0..5 {
            p.put(0, Conn(i, closed.clone()));
        }
        assert_eq!(p.idle(), 2);
        assert_eq!(closed.load(Ordering::SeqCst), 3);
        assert_eq!(p.take(0, |_| true).map(|c| c.0), Some(4));
        assert_eq!(p.take(0, |_| true).map(|c| c.0), Some(3));
    }

    #[test]
    fn zero_max_idle_pools_nothing() {
        let (p, closed) = pool(0, Duration::from_secs(60));
        p.put(0, Conn(1, closed.clone()));
        assert_eq!(p.idle(), 0);
        assert_eq!(closed.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_connection_failing_the_probe_is_closed_and_the_next_tried() {
        let (p, closed) = pool(4, Duration::from_secs(60));
        p.put(0, Conn(1, closed.clone()));
        p.put(0, Conn(2, closed.clone()));
        let got = p.take(0, |c| c.0 != 2).map(|c| c.0);
        assert_eq!(got, Some(1));
        assert_eq!(closed.load(Ordering::SeqCst), 2); // 2 and the taken 1
        assert_eq!(p.idle(), 0);
    }

    #[test]
    fn expired_connections_are_not_handed_out() {
        let (p, closed) = pool(4, Duration::from_millis(50));
        p.put(0, Conn(1, closed.clone()));
        std::thread::sleep(Duration::from_millis(60));
        assert!(p.take(0, |_| true).is_none());
        assert_eq!(closed.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn the_reaper_closes_idle_connections_without_any_checkout() {
        let (p, closed) = pool(4, Duration::from_millis(100));
        p.put(0, Conn(1, closed.clone()));
        p.put(1, Conn(2, closed.clone()));
        let start = Instant::now();
        while closed.load(Ordering::SeqCst) < 2 {
            assert!(start.elapsed() < Duration::from_secs(10), "never reaped");
            std::thread::sleep(Duration::from_millis(10));
        }
        // Not before their age.
        assert!(start.elapsed() >= Duration::from_millis(90));
        assert_eq!(p.idle(), 0);
        // The reaper ended with the pool empty; a new put starts another.
        p.put(0, Conn(3, closed.clone()));
        while closed.load(Ordering::SeqCst) < 3 {
            assert!(start.elapsed() < Duration::from_secs(10), "never reaped");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn the_reaper_outlives_an_empty_pool_by_a_max_age() {
        // A single worker's pool is empty while its connection is out:
        // the reaper must not end (and be started again) on every lock.
        let (p, _) = pool(4, Duration::from_millis(100));
        p.shared.lock().reaper = true;
        let start = Instant::now();
        reap(&p.shared);
        assert!(start.elapsed() >= Duration::from_millis(100));
        assert!(!p.shared.lock().reaper);
    }

    #[test]
    fn dropping_the_pool_closes_its_connections() {
        let (p, closed) = pool(4, Duration::from_secs(60));
        p.put(0, Conn(1, closed.clone()));
        drop(p);
        // The reaper held only a weak reference.
        assert_eq!(closed.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn max_age_stays_below_the_servers_read_timeout() {
        let d = Duration::from_secs;
        assert_eq!(max_age(d(15), d(23)), d(15));
        assert_eq!(max_age(d(60), d(3)), d(2));
        assert_eq!(max_age(d(60), Duration::ZERO), d(60));
    }
}
