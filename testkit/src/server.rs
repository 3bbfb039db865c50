//! The shared server state, the accept loop and the background timers.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::conn;
use crate::latch::Latch;
use crate::locks::{ConnId, Locks};
use crate::signals::{ConnCtl, PUSH_QUEUE, Signals};
use crate::stats::Stats;

/// State shared by the accept loop, the connections and the [`crate::TestServer`] handle.
pub(crate) struct Shared {
    pub(crate) cfg: Config,
    locks: Mutex<Locks>,
    signals: Mutex<Signals>,
    pub(crate) connections: AtomicUsize,
    next_conn: AtomicU64,
    expiry_wake: Notify,
    /// Graceful shutdown started: new requests get `error_draining`.
    pub(crate) draining: Latch,
    /// Stop now: close the listener and every connection.
    pub(crate) hard_stop: Latch,
    /// The server has fully stopped.
    pub(crate) stopped: Latch,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the state half-updated in
    // a way that matters more than stopping the whole test server would.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub(crate) fn new(cfg: Config) -> Self {
        let locks = Locks::new(cfg.max_locks, cfg.max_waiters);
        Self {
            cfg,
            locks: Mutex::new(locks),
            signals: Mutex::new(Signals::default()),
            connections: AtomicUsize::new(0),
            next_conn: AtomicU64::new(0),
            expiry_wake: Notify::new(),
            draining: Latch::new(),
            hard_stop: Latch::new(),
            stopped: Latch::new(),
        }
    }

    /// Runs `f` on the lock state, waking the expiry task when needed.
    pub(crate) fn with_locks<R>(&self, f: impl FnOnce(&mut Locks) -> R) -> R {
        let (r, wake) = {
            let mut l = lock(&self.locks);
            let r = f(&mut l);
            (r, l.take_expiry_wake())
        };
        if wake {
            self.expiry_wake.notify_one();
        }
        r
    }

    pub(crate) fn with_signals<R>(&self, f: impl FnOnce(&mut Signals) -> R) -> R {
        f(&mut lock(&self.signals))
    }

    pub(crate) fn stats(&self) -> Stats {
        let (locks, semaphores, idle_locks, idle_semaphores) = self.with_locks(|l| l.stats());
        let signal_channels = self.with_signals(|s| s.stats());
        Stats {
            connections: self.connections.load(Ordering::SeqCst) as u64,
            locks,
            semaphores,
            idle_locks,
            idle_semaphores,
            signal_channels,
        }
    }

    pub(crate) fn kill_all_connections(&self) {
        self.with_signals(|s| s.kill_all());
    }

    fn register(&self) -> (ConnId, Arc<ConnCtl>, mpsc::Receiver<Arc<[u8]>>) {
        let id = self.next_conn.fetch_add(1, Ordering::SeqCst) + 1;
        let ctl = Arc::new(ConnCtl::default());
        let (tx, rx) = mpsc::channel(PUSH_QUEUE);
        self.connections.fetch_add(1, Ordering::SeqCst);
        self.with_locks(|l| l.register_conn(id));
        self.with_signals(|s| s.register(id, tx, ctl.clone()));
        (id, ctl, rx)
    }

    /// Cleanup of a closed connection (runs from a `Drop`, never blocks on IO).
    pub(crate) fn unregister(&self, id: ConnId) {
        self.with_signals(|s| s.unregister(id));
        let auto = self.cfg.auto_release_on_disconnect;
        self.with_locks(|l| l.cleanup_conn(id, auto));
        self.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves `listener` until a hard stop, or until a graceful shutdown drained.
/// With `tls`, every connection is a TLS server session.
pub(crate) async fn run(shared: Arc<Shared>, listener: TcpListener, tls: Option<TlsAcceptor>) {
    let timers = tokio::spawn(timers(shared.clone()));
    let mut set = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = shared.hard_stop.wait() => break,
            _ = shared.draining.wait() => break,
            Some(_) = set.join_next(), if !set.is_empty() => {}
            res = listener.accept() => match res {
                Ok((tcp, _peer)) => {
                    let max = shared.cfg.max_connections;
                    if max > 0 && shared.connections.load(Ordering::SeqCst) >= max {
                        drop(tcp);
                        continue;
                    }
                    let _ = tcp.set_nodelay(true);
                    let (id, ctl, rx) = shared.register();
                    match &tls {
                        None => {
                            set.spawn(conn::serve(shared.clone(), id, ctl, rx, tcp));
                        }
                        Some(acceptor) => {
                            set.spawn(serve_tls(shared.clone(), id, ctl, rx, tcp, acceptor.clone()));
                        }
                    }
                }
                Err(_) => {
                    // Typically EMFILE: back off briefly instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    drop(listener);
    if !shared.hard_stop.is_set() {
        let limit = shared.cfg.shutdown_timeout;
        let drain = async { while set.join_next().await.is_some() {} };
        tokio::select! {
            _ = shared.hard_stop.wait() => {}
            _ = drain => {}
            _ = async {
                if limit.is_zero() {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(limit).await;
            } => {}
        }
    }
    shared.kill_all_connections();
    set.shutdown().await;
    shared.stopped.trigger();
    let _ = timers.await;
}

/// Unregisters a connection whose TLS handshake never completed (also when
/// its task is aborted).
struct Unregister {
    shared: Option<Arc<Shared>>,
    id: ConnId,
}

impl Drop for Unregister {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.unregister(self.id);
        }
    }
}

/// The TLS handshake (bounded by the read timeout, as the real server's
/// first read is), then the same session as over plain TCP.
async fn serve_tls(
    shared: Arc<Shared>,
    id: ConnId,
    ctl: Arc<ConnCtl>,
    rx: mpsc::Receiver<Arc<[u8]>>,
    tcp: TcpStream,
    acceptor: TlsAcceptor,
) {
    let mut pending = Unregister {
        shared: Some(shared.clone()),
        id,
    };
    let handshake = tokio::time::timeout(shared.cfg.read_timeout, acceptor.accept(tcp));
    let stream = tokio::select! {
        biased;
        _ = ctl.kill.wait() => return,
        _ = shared.hard_stop.wait() => return,
        r = handshake => match r {
            Ok(Ok(stream)) => stream,
            // Not TLS, a refused certificate, or too slow: just close.
            _ => return,
        },
    };
    pending.shared = None;
    conn::serve(shared, id, ctl, rx, stream).await;
}

/// Lease expiry at exact deadlines, plus the periodic GC of idle keys.
async fn timers(shared: Arc<Shared>) {
    let gc_every = shared.cfg.gc_interval;
    let max_idle = shared.cfg.gc_max_idle;
    let mut next_gc = Instant::now() + gc_every;
    loop {
        let now = Instant::now();
        let next = shared.with_locks(|l| {
            if now >= next_gc {
                l.gc(now, max_idle);
            }
            l.expire_due(now)
        });
        if now >= next_gc {
            next_gc = now + gc_every;
        }
        let wake_at = next.map_or(next_gc, |n| n.min(next_gc));
        tokio::select! {
            _ = shared.stopped.wait() => return,
            _ = shared.expiry_wake.notified() => {}
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake_at)) => {}
        }
    }
}
