//! A dflockd v2 cluster client for blocking code: the same routing and
//! failover as [`tokio::ClusterClient`](crate::tokio::ClusterClient) (both drive the
//! core's [`ClusterConn`]), with a thread per held lease for renewal.
//!
//! Two lanes per client, each at most one connection: the acquire lane
//! (acquires may block on the server) and the control lane (renew,
//! release, `barrier`, `stats`, `ping`), so a renew never waits behind a
//! blocked acquire.
//!
//! ```no_run
//! # fn demo() -> Result<(), dflockd_client::Error<std::io::Error>> {
//! use std::time::Duration;
//! use dflockd_client::blocking::ClusterClient;
//!
//! let client = ClusterClient::builder(["10.0.0.1:6388", "10.0.0.2:6388", "10.0.0.3:6388"]).build()?;
//! if let Some(guard) = client.lock("orders").lease_ttl(Duration::from_secs(10)).acquire()? {
//!     println!("fence {:?}", guard.fence());
//!     guard.release()?;
//! }
//! # Ok(()) }
//! ```

use std::string::String;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::{self as blocking, BlockingTransport, HostStream, StdTimer, block_on};
use crate::cluster::{ClusterConn, Connector, Members, Router};
use crate::lock::{Jitter, LockOptions, LockSpec, RenewRatio};
use crate::runtime::host::cluster::{
    CLUSTER_LINE, ClusterBuilder, ClusterSettings, Renewal, STATS_BUF, owned_stats,
    sealed::FromClusterSettings,
};
use crate::time::{Instant, Timer};
use crate::{Error, Fence, Kind, Token};

use super::Result;

/// Dials members over std TCP (or TLS), counting every dial; sets each
/// request's read timeout.
#[derive(Debug)]
pub struct StdConnector {
    settings: Arc<ClusterSettings>,
    dials: Arc<AtomicU32>,
}

impl Connector for StdConnector {
    type Io = HostStream;

    async fn connect(&self, addr: &str) -> Result<HostStream> {
        self.dials.fetch_add(1, Ordering::Relaxed);
        let opts = blocking::ConnectOptions {
            connect_timeout: self.settings.connect_timeout,
            io_timeout: self.settings.io_timeout,
            auth_token: None,
        };
        blocking::open_host(addr, &opts, self.settings.tls.as_ref())
    }

    fn auth_token(&self) -> Option<&str> {
        self.settings.auth_token.as_ref().map(|t| t.expose())
    }

    fn prepare(&self, io: &mut HostStream, max_wait: Duration) {
        // A blocking read cannot be raced by a timer: the socket's read
        // timeout is the reply deadline.
        let _ = io.set_read_timeout(Some(max_wait.max(Duration::from_millis(1))));
    }
}

type Lane = ClusterConn<StdConnector, Arc<[String]>, StdTimer, CLUSTER_LINE>;

const NO_LEADER: usize = usize::MAX;

struct Inner {
    settings: Arc<ClusterSettings>,
    acquire: Mutex<Lane>,
    control: Mutex<Lane>,
    dials: Arc<AtomicU32>,
    leader: AtomicUsize,
}

fn lock(m: &Mutex<Lane>) -> MutexGuard<'_, Lane> {
    // A lane whose user panicked is still consistent enough: its
    // connection is at worst unusable, which the next call handles.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Inner {
    fn lane(settings: &Arc<ClusterSettings>, dials: &Arc<AtomicU32>) -> Result<Lane> {
        Ok(ClusterConn::new(
            StdConnector {
                settings: settings.clone(),
                dials: dials.clone(),
            },
            settings.members.clone(),
            StdTimer,
            settings.stable_ref.clone(),
            settings.policy,
            settings.io_timeout,
        )?)
    }

    fn share_in(&self, router: &mut Router) {
        if router.leader().is_none() {
            let l = self.leader.load(Ordering::Relaxed);
            router.set_leader((l != NO_LEADER).then_some(l));
        }
    }

    fn share_out(&self, router: &Router) {
        self.leader
            .store(router.leader().unwrap_or(NO_LEADER), Ordering::Relaxed);
    }

    /// Runs `f` on the control lane with the shared leader hint.
    fn control<R>(&self, f: impl FnOnce(&mut Lane) -> R) -> R {
        let mut lane = lock(&self.control);
        self.share_in(lane.router_mut());
        let out = f(&mut lane);
        self.share_out(lane.router());
        out
    }
}

/// A blocking client of a dflockd v2 Raft cluster. Cheap to clone
/// (clones share the lanes and the stable ref); `Send + Sync`.
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
    /// it has been applied there; a [`stats`](Self::stats) after it reads
    /// the leader's state including those writes (a linearizable read).
    pub fn barrier(&self) -> Result<()> {
        self.0.control(|lane| block_on(lane.barrier()))
    }

    /// `stats` JSON from a member (after [`barrier`](Self::barrier): the
    /// leader). At most 256 KiB.
    pub fn stats(&self) -> Result<String> {
        let mut buf = std::vec![0u8; STATS_BUF];
        self.0
            .control(|lane| block_on(lane.stats(&mut buf)).map(owned_stats))
    }

    /// `ping` on a member.
    pub fn ping(&self) -> Result<()> {
        self.0.control(|lane| block_on(lane.ping()))
    }

    /// Closes both lanes' connections; the next operation reconnects and
    /// presents the same stable ref.
    pub fn disconnect(&self) {
        lock(&self.0.acquire).disconnect();
        lock(&self.0.control).disconnect();
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
    /// How long the server may block an acquire (default 10 s), failovers
    /// included.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.options.acquire_timeout = timeout;
        self
    }

    /// The lease TTL (default: the server's, 33 s).
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

    /// Acquires on the leader, waiting up to the acquire timeout
    /// (`Ok(None)` when it passed), across a failover.
    pub fn acquire(&self) -> Result<Option<ClusterGuard>> {
        self.acquire_within(self.options.acquire_timeout)
    }

    /// Tries once without blocking on the server.
    pub fn try_acquire(&self) -> Result<Option<ClusterGuard>> {
        self.acquire_within(Duration::ZERO)
    }

    /// [`acquire`](Self::acquire) with another timeout.
    pub fn acquire_within(&self, timeout: Duration) -> Result<Option<ClusterGuard>> {
        let (reply_tx, reply_rx) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<ReleaseReply>();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::Held),
            changed: Condvar::new(),
            renewal: Mutex::new(None),
            deadline: AtomicU64::new(0),
        });
        let inner = self.client.0.clone();
        let (key, kind, options, task_shared) =
            (self.key.clone(), self.kind, self.options, shared.clone());
        std::thread::Builder::new()
            .name(std::format!("dflockd-cluster-renew-{}", self.key))
            .spawn(move || {
                run(
                    inner,
                    key,
                    kind,
                    options,
                    timeout,
                    reply_tx,
                    release_rx,
                    task_shared,
                )
            })
            .map_err(Error::Io)?;
        let Ok(granted) = reply_rx.recv() else {
            return Err(Error::Disconnected);
        };
        Ok(granted?.map(|(token, ttl)| ClusterGuard {
            key: self.key.clone(),
            kind: self.kind,
            token,
            ttl,
            shared,
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

type ReleaseReply = mpsc::Sender<Result<()>>;

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    renewal: Mutex<Option<Renewal>>,
    deadline: AtomicU64,
}

impl Shared {
    fn set(&self, s: State) {
        *self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = s;
        self.changed.notify_all();
    }

    fn get(&self) -> State {
        *self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[allow(clippy::too_many_arguments)]
fn run(
    inner: Arc<Inner>,
    key: String,
    kind: Kind,
    options: LockOptions,
    timeout: Duration,
    reply: mpsc::Sender<Result<Option<(Token, Duration)>>>,
    release_rx: mpsc::Receiver<ReleaseReply>,
    shared: Arc<Shared>,
) {
    let spec = LockSpec::new(&key, kind).with_options(options);
    let acquired = {
        let mut lane = lock(&inner.acquire);
        inner.share_in(lane.router_mut());
        let out = block_on(lane.acquire(&spec, timeout));
        inner.share_out(lane.router());
        out
    };
    let mut lease = match acquired {
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
    shared
        .deadline
        .store(lease.deadline().as_millis(), Ordering::Relaxed);
    if reply.send(Ok(Some((*lease.token(), lease.ttl())))).is_err() {
        let _ = inner.control(|lane| block_on(lane.release(lease)));
        return;
    }
    let mut count = 0u64;
    loop {
        // Check for a release before every renew, even when renews come
        // back to back.
        let wait = lease
            .next_renew_at()
            .saturating_duration_since(StdTimer.now());
        match release_rx.recv_timeout(wait) {
            Ok(reply) => {
                let out = inner.control(|lane| block_on(lane.release(lease)));
                shared.set(State::Released);
                let _ = reply.send(out);
                return;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = inner.control(|lane| block_on(lane.release(lease)));
                shared.set(State::Released);
                return;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let out = inner.control(|lane| {
            block_on(lane.renew(&mut lease))
                .map(|()| lane.connected_addr().map(String::from).unwrap_or_default())
        });
        match out {
            Ok(member) => {
                count += 1;
                shared
                    .deadline
                    .store(lease.deadline().as_millis(), Ordering::Relaxed);
                *shared
                    .renewal
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Renewal {
                    member,
                    fence: lease.fence(),
                    remaining: lease.ttl(),
                    count,
                });
                shared.changed.notify_all();
            }
            Err(e) => {
                warn!("cluster lease on {} lost: {}", key, e);
                shared.set(State::Lost);
                return;
            }
        }
    }
}

/// A held cluster lock or semaphore slot, renewed by a thread on whichever
/// member leads. The fence never changes for the life of the lease.
/// Dropping the guard releases in the background.
#[derive(Debug)]
pub struct ClusterGuard {
    key: String,
    kind: Kind,
    token: Token,
    ttl: Duration,
    shared: Arc<Shared>,
    release: Option<mpsc::Sender<ReleaseReply>>,
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

    /// The lease TTL granted.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The token, or `None` once the lease is lost.
    pub fn token(&self) -> Option<Token> {
        (!self.is_lost()).then_some(self.token)
    }

    /// The fence (see [`Fence`]), or `None` once the lease is lost.
    pub fn fence(&self) -> Option<Fence> {
        self.token().map(|t| t.fence())
    }

    /// Whether the lease is known to be lost (never blocks): the renewal
    /// thread said so, or the conservative deadline has passed.
    pub fn is_lost(&self) -> bool {
        let deadline = Instant::from_millis(self.shared.deadline.load(Ordering::Relaxed));
        self.shared.get() != State::Held || StdTimer.now() >= deadline
    }

    /// Blocks up to `timeout` for the lease to be lost; true if it was.
    pub fn wait_lost_timeout(&self, timeout: Duration) -> bool {
        let end = std::time::Instant::now() + timeout;
        let mut state = self
            .shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            if *state != State::Held || self.is_past_deadline() {
                return true;
            }
            let now = std::time::Instant::now();
            if now >= end {
                return false;
            }
            let step = (end - now).min(Duration::from_millis(100));
            state = match self.shared.changed.wait_timeout(state, step) {
                Ok((s, _)) => s,
                Err(p) => p.into_inner().0,
            };
        }
    }

    fn is_past_deadline(&self) -> bool {
        StdTimer.now() >= Instant::from_millis(self.shared.deadline.load(Ordering::Relaxed))
    }

    /// The latest successful renew, if any.
    pub fn last_renewal(&self) -> Option<Renewal> {
        self.shared
            .renewal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Releases the lease on the leader. [`Error::LeaseLost`] when it was
    /// lost before.
    pub fn release(mut self) -> Result<()> {
        let Some(tx) = self.release.take() else {
            return Err(Error::LeaseLost);
        };
        let (reply, outcome) = mpsc::channel();
        if tx.send(reply).is_err() {
            return Err(Error::LeaseLost);
        }
        outcome.recv().unwrap_or(Err(Error::LeaseLost))
    }
}
