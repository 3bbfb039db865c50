//! A dflockd v2 cluster client on tokio: writes to the leader, redirects
//! followed within the members, locks kept across leader failover.
//!
//! The routing and failover decisions are the core's
//! ([`crate::cluster`]); this module runs them on tokio. A
//! [`ClusterClient`] has two lanes, each at most one connection:
//!
//! * the **acquire lane** carries `l`/`sl` (which may block on the server
//!   up to the acquire timeout); concurrent acquires of one client take
//!   turns on it;
//! * the **control lane** carries renew, release and `barrier`, so a renew
//!   never waits behind a blocked acquire.
//!
//! Both lanes send `auth` (if set) and the client's stable ref on every
//! new connection.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dflockd_client::Error<std::io::Error>> {
//! use std::time::Duration;
//! use dflockd_client::tokio::ClusterClient;
//!
//! let client = ClusterClient::builder(["10.0.0.1:6388", "10.0.0.2:6388", "10.0.0.3:6388"]).build()?;
//! if let Some(guard) = client.lock("orders").lease_ttl(Duration::from_secs(10)).acquire().await? {
//!     // Renewed on whichever node leads; the fence stays the same.
//!     let fence = guard.fence();
//!     # let _ = fence;
//!     guard.release().await?;
//! }
//! client.barrier().await?; // then stats() reads the leader's applied state
//! # Ok(()) }
//! ```

use std::string::String;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, oneshot, watch};

use super::{ConnectOptions, HostStream, TokioTimer, open_host};
use crate::cluster::{ClusterConn, Connector, Members, Router};
use crate::lock::{Jitter, LockOptions, LockSpec, RenewRatio};
use crate::runtime::host::cluster::{
    CLUSTER_LINE, ClusterBuilder, ClusterSettings, Renewal, STATS_BUF, owned_stats,
    sealed::FromClusterSettings,
};
use crate::time::{Instant, Timer};
use crate::{Error, Fence, Kind, Token};

use super::Result;

/// Dials members over tokio TCP (or TLS), counting every dial.
#[derive(Debug)]
pub struct TokioConnector {
    settings: Arc<ClusterSettings>,
    dials: Arc<AtomicU32>,
}

impl Connector for TokioConnector {
    type Io = HostStream;

    async fn connect(&self, addr: &str) -> Result<HostStream> {
        self.dials.fetch_add(1, Ordering::Relaxed);
        let opts = ConnectOptions {
            connect_timeout: self.settings.connect_timeout,
            io_timeout: self.settings.io_timeout,
            auth_token: None,
        };
        open_host(addr, &opts, self.settings.tls.as_ref()).await
    }

    fn auth_token(&self) -> Option<&str> {
        self.settings.auth_token.as_ref().map(|t| t.expose())
    }
}

type Lane = ClusterConn<TokioConnector, Arc<[String]>, TokioTimer, CLUSTER_LINE>;

const NO_LEADER: usize = usize::MAX;

struct Inner {
    settings: Arc<ClusterSettings>,
    acquire: Mutex<Lane>,
    control: Mutex<Lane>,
    dials: Arc<AtomicU32>,
    /// The leader hint both lanes share (a member index, or `NO_LEADER`).
    leader: AtomicUsize,
}

impl Inner {
    fn lane(settings: &Arc<ClusterSettings>, dials: &Arc<AtomicU32>) -> Result<Lane> {
        Ok(ClusterConn::new(
            TokioConnector {
                settings: settings.clone(),
                dials: dials.clone(),
            },
            settings.members.clone(),
            TokioTimer,
            settings.stable_ref.clone(),
            settings.policy,
            settings.io_timeout,
        )?)
    }

    /// Gives a lane the shared hint before an operation.
    fn share_in(&self, router: &mut Router) {
        if router.leader().is_none() {
            let l = self.leader.load(Ordering::Relaxed);
            router.set_leader((l != NO_LEADER).then_some(l));
        }
    }

    /// Stores a lane's hint after an operation.
    fn share_out(&self, router: &Router) {
        self.leader
            .store(router.leader().unwrap_or(NO_LEADER), Ordering::Relaxed);
    }
}

/// A client of a dflockd v2 Raft cluster. Cheap to clone (clones share
/// the lanes and the stable ref).
#[derive(Clone)]
pub struct ClusterClient(Arc<Inner>);

impl core::fmt::Debug for ClusterClient {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClusterClient")
            .field("settings", &self.0.settings)
            .finish_non_exhaustive()
    }
}

impl FromClusterSettings for ClusterClient {
    fn from_settings(settings: ClusterSettings) -> Result<Self> {
        let settings = Arc::new(settings);
        let dials = Arc::new(AtomicU32::new(0));
        let acquire = Inner::lane(&settings, &dials)?;
        let control = Inner::lane(&settings, &dials)?;
        Ok(Self(Arc::new(Inner {
            settings,
            acquire: Mutex::new(acquire),
            control: Mutex::new(control),
            dials,
            leader: AtomicUsize::new(NO_LEADER),
        })))
    }
}

impl ClusterClient {
    /// A builder for a client of the cluster with these members
    /// (client-facing `host:port`, as the servers' `--advertise-addr`).
    pub fn builder<I, S>(members: I) -> ClusterBuilder<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClusterBuilder::new(members)
    }

    /// The stable ref presented on every connection.
    pub fn stable_ref(&self) -> &str {
        self.0.settings.stable_ref.as_str()
    }

    /// The members.
    pub fn members(&self) -> &[String] {
        &self.0.settings.members
    }

    /// The cached leader hint, if any.
    pub fn leader(&self) -> Option<&str> {
        let l = self.0.leader.load(Ordering::Relaxed);
        (l != NO_LEADER).then(|| self.0.settings.members.member(l))
    }

    /// Members dialled so far, by both lanes (successful or not).
    pub fn dials(&self) -> u32 {
        self.0.dials.load(Ordering::Relaxed)
    }

    /// A lock on `key` with default options (see [`ClusterLock`]).
    pub fn lock(&self, key: impl Into<String>) -> ClusterLock {
        ClusterLock {
            client: self.clone(),
            key: key.into(),
            kind: Kind::Lock,
            options: LockOptions::DEFAULT,
        }
    }

    /// A semaphore on `key` admitting `limit` holders.
    pub fn semaphore(&self, key: impl Into<String>, limit: u32) -> ClusterLock {
        ClusterLock {
            kind: Kind::Semaphore { limit },
            ..self.lock(key)
        }
    }

    /// `barrier` on the leader: returns once every write committed before
    /// it has been applied there. A [`stats`](Self::stats) after it reads
    /// the leader's state including those writes (a linearizable read).
    ///
    /// Cancel-safe in effect: a dropped future leaves the control lane's
    /// connection unusable and the next call reconnects.
    pub async fn barrier(&self) -> Result<()> {
        let mut lane = self.0.control.lock().await;
        self.0.share_in(lane.router_mut());
        let out = lane.barrier().await;
        self.0.share_out(lane.router());
        out
    }

    /// `stats` JSON from a member (after [`barrier`](Self::barrier): the
    /// leader). v2 adds a `cluster` object (node_id, role, term,
    /// leader_id, leader_addr, commit_index, …). At most 256 KiB.
    pub async fn stats(&self) -> Result<String> {
        let mut lane = self.0.control.lock().await;
        self.0.share_in(lane.router_mut());
        let mut buf = std::vec![0u8; STATS_BUF];
        let out = lane.stats(&mut buf).await.map(owned_stats);
        self.0.share_out(lane.router());
        out
    }

    /// `ping` on a member.
    pub async fn ping(&self) -> Result<()> {
        let mut lane = self.0.control.lock().await;
        self.0.share_in(lane.router_mut());
        lane.ping().await
    }

    /// Closes both lanes' connections; the next operation reconnects and
    /// presents the same stable ref. With `--orphan-ttl` on the servers,
    /// the locks this client holds survive this.
    pub async fn disconnect(&self) {
        self.0.acquire.lock().await.disconnect();
        self.0.control.lock().await.disconnect();
    }
}

/// A lock or semaphore on one key of a [`ClusterClient`], with its
/// options. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ClusterLock {
    client: ClusterClient,
    key: String,
    kind: Kind,
    options: LockOptions,
}

impl ClusterLock {
    /// How long the server may block an acquire (default 10 s). The
    /// budget covers failovers: an acquire re-sent to a new leader gets
    /// what is left of it.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.options.acquire_timeout = timeout;
        self
    }

    /// The lease TTL (default: the server's, 33 s). A lease survives a
    /// failover when the election is shorter than the lease.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.options.lease_ttl = Some(ttl);
        self
    }

    /// Renew at this fraction of the lease (default 0.5).
    pub fn renew_ratio(mut self, ratio: RenewRatio) -> Self {
        self.options.renew_ratio = ratio;
        self
    }

    /// Early renew jitter (default 10 %).
    pub fn early_jitter(mut self, jitter: Jitter) -> Self {
        self.options.early_jitter = jitter;
        self
    }

    /// All lease options at once.
    pub fn options(mut self, options: LockOptions) -> Self {
        self.options = options;
        self
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Acquires on the leader, waiting up to the acquire timeout:
    /// `Ok(None)` when it passed. A leader that dies meanwhile is replaced
    /// by the new one within the same timeout.
    ///
    /// Cancel-safe in effect: a dropped future closes the acquire lane's
    /// connection, so the server drops the waiter or releases a grant it
    /// made (unless `--orphan-ttl` keeps it for this stable ref: then the
    /// next acquire of this client re-attaches it).
    pub async fn acquire(&self) -> Result<Option<ClusterGuard>> {
        self.acquire_within(self.options.acquire_timeout).await
    }

    /// Tries once without blocking on the server.
    pub async fn try_acquire(&self) -> Result<Option<ClusterGuard>> {
        self.acquire_within(Duration::ZERO).await
    }

    /// [`acquire`](Self::acquire) with another timeout.
    pub async fn acquire_within(&self, timeout: Duration) -> Result<Option<ClusterGuard>> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let (release, release_rx) = oneshot::channel::<ReleaseReply>();
        let (state_tx, state) = watch::channel(State::Held);
        let (renew_tx, renewals) = watch::channel::<Option<Renewal>>(None);
        let deadline = Arc::new(AtomicU64::new(0));
        let task = Task {
            inner: self.client.0.clone(),
            key: self.key.clone(),
            kind: self.kind,
            options: self.options,
            timeout,
            deadline: deadline.clone(),
        };
        tokio::spawn(task.run(reply_tx, release_rx, state_tx, renew_tx));
        let Ok(granted) = reply_rx.await else {
            return Err(Error::Disconnected);
        };
        Ok(granted?.map(|g| ClusterGuard {
            key: self.key.clone(),
            kind: self.kind,
            token: g.token,
            ttl: g.ttl,
            member: g.member,
            state,
            renewals,
            deadline,
            release: Some(release),
        }))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Held,
    Lost,
    Released,
}

type ReleaseReply = oneshot::Sender<Result<()>>;

struct Granted {
    token: Token,
    ttl: Duration,
    member: String,
}

struct Task {
    inner: Arc<Inner>,
    key: String,
    kind: Kind,
    options: LockOptions,
    timeout: Duration,
    deadline: Arc<AtomicU64>,
}

impl Task {
    async fn run(
        self,
        mut reply: oneshot::Sender<Result<Option<Granted>>>,
        mut release_rx: oneshot::Receiver<ReleaseReply>,
        state: watch::Sender<State>,
        renewals: watch::Sender<Option<Renewal>>,
    ) {
        let inner = &self.inner;
        let spec = LockSpec::new(&self.key, self.kind).with_options(self.options);
        let acquired = {
            let mut lane = inner.acquire.lock().await;
            inner.share_in(lane.router_mut());
            let out = tokio::select! {
                out = lane.acquire(&spec, self.timeout) => out,
                () = reply.closed() => {
                    // The caller is gone: close the connection so the
                    // server drops the waiter or the grant.
                    lane.disconnect();
                    return;
                }
            };
            inner.share_out(lane.router());
            let member = lane.connected_addr().map(String::from).unwrap_or_default();
            out.map(|l| l.map(|l| (l, member)))
        };
        let (mut lease, member) = match acquired {
            Ok(Some(l)) => l,
            Ok(None) => {
                let _ = reply.send(Ok(None));
                return;
            }
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        self.deadline
            .store(lease.deadline().as_millis(), Ordering::Relaxed);
        let granted = Granted {
            token: *lease.token(),
            ttl: lease.ttl(),
            member,
        };
        if reply.send(Ok(Some(granted))).is_err() {
            // Caller gone right after the grant: give it back.
            let mut lane = inner.control.lock().await;
            let _ = lane.release(lease).await;
            return;
        }
        let mut count = 0u64;
        loop {
            let wake = lease.next_renew_at();
            let request = tokio::select! {
                biased;
                r = &mut release_rx => Some(r.ok()),
                () = TokioTimer.sleep_until(wake) => None,
            };
            if let Some(reply) = request {
                let mut lane = inner.control.lock().await;
                inner.share_in(lane.router_mut());
                let out = lane.release(lease).await;
                inner.share_out(lane.router());
                state.send_replace(State::Released);
                if let Some(reply) = reply {
                    let _ = reply.send(out);
                }
                return;
            }
            let mut lane = inner.control.lock().await;
            inner.share_in(lane.router_mut());
            let out = lane.renew(&mut lease).await;
            inner.share_out(lane.router());
            match out {
                Ok(()) => {
                    count += 1;
                    self.deadline
                        .store(lease.deadline().as_millis(), Ordering::Relaxed);
                    renewals.send_replace(Some(Renewal {
                        member: lane.connected_addr().map(String::from).unwrap_or_default(),
                        fence: lease.fence(),
                        remaining: lease.ttl(),
                        count,
                    }));
                }
                Err(e) => {
                    warn!("cluster lease on {} lost: {}", self.key, e);
                    state.send_replace(State::Lost);
                    return;
                }
            }
        }
    }
}

/// A held cluster lock or semaphore slot, renewed by a background task on
/// whichever member leads.
///
/// * The fence never changes for the life of the lease, across failovers.
/// * [`lost`](Self::lost) completes when a renew was refused (the lease
///   is gone: it is never re-acquired behind your back), no leader could
///   be reached before the lease deadline, or the deadline passed.
/// * Dropping the guard releases in the background.
#[derive(Debug)]
pub struct ClusterGuard {
    key: String,
    kind: Kind,
    token: Token,
    ttl: Duration,
    member: String,
    state: watch::Receiver<State>,
    renewals: watch::Receiver<Option<Renewal>>,
    deadline: Arc<AtomicU64>,
    release: Option<oneshot::Sender<ReleaseReply>>,
}

impl ClusterGuard {
    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Lock or semaphore.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The member that granted the lease.
    pub fn granted_by(&self) -> &str {
        &self.member
    }

    /// The lease TTL granted.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The token, or `None` once the lease is lost.
    pub fn token(&self) -> Option<Token> {
        (!self.is_lost()).then_some(self.token)
    }

    /// The fence (see [`Fence`]: on a v2 cluster a replicated counter that
    /// only grows, across failovers), or `None` once the lease is lost.
    pub fn fence(&self) -> Option<Fence> {
        self.token().map(|t| t.fence())
    }

    /// Whether the lease is known to be lost: the renewal task said so, is
    /// gone, or the conservative deadline has passed by the clock.
    pub fn is_lost(&self) -> bool {
        let past = TokioTimer.now() >= Instant::from_millis(self.deadline.load(Ordering::Relaxed));
        *self.state.borrow() != State::Held || self.state.has_changed().is_err() || past
    }

    /// Completes when the lease is lost. Cancel-safe.
    pub async fn lost(&self) {
        let mut state = self.state.clone();
        loop {
            let until = Instant::from_millis(self.deadline.load(Ordering::Relaxed));
            tokio::select! {
                _ = state.wait_for(|s| *s != State::Held) => return,
                () = TokioTimer.sleep_until(until) => {
                    // Renewed meanwhile? Then wait on.
                    if self.is_lost() {
                        return;
                    }
                }
            }
        }
    }

    /// The latest successful renew, if any.
    pub fn last_renewal(&self) -> Option<Renewal> {
        self.renewals.borrow().clone()
    }

    /// Waits for the next successful renew: `None` once the lease is lost
    /// or released. Cancel-safe.
    pub async fn next_renewal(&mut self) -> Option<Renewal> {
        let mut state = self.state.clone();
        tokio::select! {
            r = self.renewals.changed() => r.ok().and_then(|()| self.renewals.borrow_and_update().clone()),
            _ = state.wait_for(|s| *s != State::Held) => None,
        }
    }

    /// Releases the lease on the leader.
    ///
    /// [`Error::LeaseLost`] when it was lost before. Cancel-safe: once
    /// called, the release completes in the background.
    pub async fn release(mut self) -> Result<()> {
        let Some(tx) = self.release.take() else {
            return Err(Error::LeaseLost);
        };
        let (reply, outcome) = oneshot::channel();
        if tx.send(reply).is_err() {
            return Err(Error::LeaseLost);
        }
        outcome.await.unwrap_or(Err(Error::LeaseLost))
    }
}
