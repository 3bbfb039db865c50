//! The tokio and blocking cluster clients, apart from their IO and
//! scheduling: the builder and settings, the client, lock and guard types
//! (generic over the runtime's [`ClusterRuntime`]), the renewal task, and
//! what the task and its guard tell each other. Nothing here knows a
//! runtime; the routing and failover decisions are the core's
//! ([`crate::cluster`]).

use core::future::Future;
use core::marker::PhantomData;
use core::ops::DerefMut;
use core::task::{Poll, Waker};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::string::String;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use std::vec::Vec;

use embassy_futures::select::{Either, select};
use embedded_io_async::ErrorType;

use super::HostTls;
use crate::cluster::{
    ClusterConn, Connector, Members, RedirectPolicy, StableRef, validate_members,
};
use crate::lock::{DEFAULT_IO_TIMEOUT, Lease, LockOptions, LockSpec, Rng};
use crate::runtime::{AuthToken, ConnectOptions};
use crate::time::{Instant, Timer};
use crate::{Error, Fence, Kind, Token};

type Result<T> = core::result::Result<T, Error<io::Error>>;

/// Line buffer of cluster lane connections: room for the longest
/// `error_not_leader` reply ([`CLUSTER_MIN_LINE_BUF`](crate::cluster::CLUSTER_MIN_LINE_BUF)).
pub(crate) const CLUSTER_LINE: usize = 512;

/// Largest `stats` reply the cluster clients read.
const STATS_BUF: usize = 256 * 1024;

/// One successful renew of a cluster lease, as reported by the guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewal {
    /// The member that served the renew (the leader at the time).
    pub member: String,
    /// The lease's fence (the same for the life of the lease).
    pub fence: Fence,
    /// The lease time the server granted with this renew.
    pub remaining: Duration,
    /// How many renews succeeded so far (1 for the first).
    pub count: u64,
}

/// Everything a cluster client needs; shared by its lanes and guards.
#[derive(Debug)]
pub struct ClusterSettings {
    pub(crate) members: Arc<[String]>,
    pub(crate) auth_token: Option<AuthToken>,
    pub(crate) stable_ref: StableRef,
    pub(crate) policy: RedirectPolicy,
    pub(crate) connect_timeout: Duration,
    pub(crate) io_timeout: Duration,
    pub(crate) tls: Option<HostTls>,
}

pub(crate) mod sealed {
    pub trait FromClusterSettings: Sized {
        fn from_settings(settings: super::ClusterSettings) -> super::Result<Self>;
    }
}

/// Builds a cluster client (tokio or blocking): members, authentication,
/// stable ref, redirect policy, timeouts, TLS.
///
/// ```no_run
/// # fn demo() -> Result<(), dflockd_client::Error<std::io::Error>> {
/// use dflockd_client::blocking::ClusterClient;
///
/// let client = ClusterClient::builder(["10.0.0.1:6388", "10.0.0.2:6388", "10.0.0.3:6388"])
///     .stable_ref("billing-worker-7") // default: random, kept for the client's life
///     .build()?;
/// # let _ = client; Ok(()) }
/// ```
pub struct ClusterBuilder<C> {
    members: Vec<String>,
    auth_token: Option<AuthToken>,
    stable_ref: Option<String>,
    policy: RedirectPolicy,
    connect_timeout: Duration,
    io_timeout: Duration,
    tls: Option<HostTls>,
    _target: PhantomData<fn() -> C>,
}

impl<C> core::fmt::Debug for ClusterBuilder<C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClusterBuilder")
            .field("members", &self.members)
            .field("auth_token", &self.auth_token)
            .field("stable_ref", &self.stable_ref)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<C: sealed::FromClusterSettings> ClusterBuilder<C> {
    pub(crate) fn new<I, S>(members: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            members: members.into_iter().map(Into::into).collect(),
            auth_token: None,
            stable_ref: None,
            policy: RedirectPolicy::DEFAULT,
            connect_timeout: crate::runtime::DEFAULT_CONNECT_TIMEOUT,
            io_timeout: DEFAULT_IO_TIMEOUT,
            tls: None,
            _target: PhantomData,
        }
    }

    /// Sends `auth` with this token on every new connection. Never logged.
    pub fn auth_token(mut self, token: impl Into<AuthToken>) -> Self {
        self.auth_token = Some(token.into());
        self
    }

    /// The client's stable ref (1 to 64 bytes of printable ASCII; checked
    /// by [`build`](Self::build)). Default: a random ref, kept for the
    /// client's lifetime. Set it to get locks back across a process
    /// restart (with `--orphan-ttl`); never share one between clients.
    pub fn stable_ref(mut self, reference: impl Into<String>) -> Self {
        self.stable_ref = Some(reference.into());
        self
    }

    /// The redirect budget and backoff (default [`RedirectPolicy::DEFAULT`]).
    pub fn redirect_policy(mut self, policy: RedirectPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Gives up dialling a member after this long (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Reply timeout beyond any server-side blocking, also for the
    /// `auth` / `stable-ref` handshake, `barrier`, `ping`, `stats`
    /// (default 10 s).
    pub fn io_timeout(mut self, timeout: Duration) -> Self {
        self.io_timeout = timeout;
        self
    }

    /// TLS to every member (feature `rustls`), each checked against the
    /// connector's server name.
    #[cfg(feature = "rustls")]
    pub fn tls(mut self, connector: super::rustls::RustlsConnector) -> Self {
        self.tls = Some(connector);
        self
    }

    /// Builds the client. Connects lazily.
    ///
    /// [`Error::InvalidArgument`] for an empty or over-long member list
    /// (at most [`MAX_MEMBERS`](crate::cluster::MAX_MEMBERS)) or an invalid
    /// stable ref.
    pub fn build(self) -> Result<C> {
        validate_members(&self.members)?;
        let stable_ref = match &self.stable_ref {
            Some(r) => StableRef::new(r)?,
            None => StableRef::random(&mut OsHashRng::default()),
        };
        C::from_settings(ClusterSettings {
            members: self.members.into(),
            auth_token: self.auth_token,
            stable_ref,
            policy: self.policy,
            connect_timeout: self.connect_timeout,
            io_timeout: self.io_timeout,
            tls: self.tls,
        })
    }
}

// ---- the runtime's side ---------------------------------------------------------

/// What a host runtime supplies to the cluster client: how it dials (the
/// [`Connector`]), its clock, how a lane is locked and how the renewal
/// loop idles. Implemented by the tokio and blocking connectors only.
pub trait ClusterRuntime:
    Connector<Io: ErrorType<Error = io::Error>> + Sized + Send + Sync + 'static
{
    /// The clock of lanes and leases.
    type Timer: Timer + Copy + Default + Send + Sync + 'static;
    /// A lane behind the runtime's lock.
    type Cell: From<Lane<Self>> + Send + Sync;

    /// The connector dialling for `dialer`.
    fn new(dialer: Dialer) -> Self;

    /// Locks a lane (an acquire holds its lane while the server blocks).
    fn lock(cell: &Self::Cell) -> impl Future<Output = impl DerefMut<Target = Lane<Self>>>;

    /// Returns once `done` holds on the link or `until` has come.
    fn wait(link: &Link, until: Instant, done: Done) -> impl Future<Output = ()>;
}

/// A condition on a [`Link`]'s status, for [`ClusterRuntime::wait`].
pub type Done = fn(&mut Status) -> Option<()>;

/// One lane of a cluster client on runtime `R`.
pub type Lane<R> = ClusterConn<R, Arc<[String]>, <R as ClusterRuntime>::Timer, CLUSTER_LINE>;

/// The settings and dial counter behind a runtime's [`Connector`].
#[derive(Debug)]
pub struct Dialer {
    pub(crate) settings: Arc<ClusterSettings>,
    dials: Arc<AtomicU32>,
}

impl Dialer {
    /// Counts a dial; the options to dial with (`auth` is the lane's).
    pub(crate) fn dial(&self) -> ConnectOptions {
        self.dials.fetch_add(1, Ordering::Relaxed);
        ConnectOptions {
            connect_timeout: self.settings.connect_timeout,
            io_timeout: self.settings.io_timeout,
            auth_token: None,
        }
    }
}

// ---- the client -----------------------------------------------------------------

const NO_LEADER: usize = usize::MAX;

/// What the clones of one client share.
pub(crate) struct Inner<R: ClusterRuntime> {
    pub(crate) settings: Arc<ClusterSettings>,
    acquire: R::Cell,
    control: R::Cell,
    pub(crate) dials: Arc<AtomicU32>,
    /// The leader hint both lanes share (a member index, or `NO_LEADER`).
    leader: AtomicUsize,
}

impl<R: ClusterRuntime> Inner<R> {
    fn new(settings: ClusterSettings) -> Result<Self> {
        let settings = Arc::new(settings);
        let dials = Arc::new(AtomicU32::new(0));
        let lane = || -> Result<R::Cell> {
            let dialer = Dialer {
                settings: settings.clone(),
                dials: dials.clone(),
            };
            Ok(R::Cell::from(ClusterConn::new(
                R::new(dialer),
                settings.members.clone(),
                R::Timer::default(),
                settings.stable_ref.clone(),
                settings.policy,
                settings.io_timeout,
            )?))
        };
        let (acquire, control) = (lane()?, lane()?);
        Ok(Self {
            settings,
            acquire,
            control,
            dials,
            leader: AtomicUsize::new(NO_LEADER),
        })
    }

    /// Runs `op` on a lane with the shared leader hint: the lane takes it
    /// when it has none, and the hint is the lane's afterwards.
    async fn on<T>(&self, cell: &R::Cell, op: impl AsyncFnOnce(&mut Lane<R>) -> T) -> T {
        let mut lane = R::lock(cell).await;
        if lane.router().leader().is_none() {
            let l = self.leader.load(Ordering::Relaxed);
            lane.router_mut().set_leader((l != NO_LEADER).then_some(l));
        }
        let out = op(&mut lane).await;
        self.leader.store(
            lane.router().leader().unwrap_or(NO_LEADER),
            Ordering::Relaxed,
        );
        out
    }

    /// Runs `op` on the control lane (renew, release, barrier, stats,
    /// ping), which never waits behind a blocked acquire.
    pub(crate) async fn control<T>(&self, op: impl AsyncFnOnce(&mut Lane<R>) -> T) -> T {
        self.on(&self.control, op).await
    }

    pub(crate) async fn stats(&self) -> Result<String> {
        let mut buf = std::vec![0u8; STATS_BUF];
        self.control(async |lane| lane.stats(&mut buf).await.map(String::from))
            .await
    }

    /// The address of the cached leader hint, if any.
    pub(crate) fn leader(&self) -> Option<&str> {
        let l = self.leader.load(Ordering::Relaxed);
        (l != NO_LEADER).then(|| self.settings.members.member(l))
    }

    pub(crate) async fn disconnect(&self) {
        R::lock(&self.acquire).await.disconnect();
        R::lock(&self.control).await.disconnect();
    }
}

/// A client of a dflockd v2 Raft cluster on runtime `R`: two lanes (acquire
/// and control) and the leader hint they share. Used as
/// `tokio::ClusterClient` and `blocking::ClusterClient` (documented there).
pub struct ClusterClient<R: ClusterRuntime>(pub(crate) Arc<Inner<R>>);

impl<R: ClusterRuntime> core::fmt::Debug for ClusterClient<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let settings = &self.0.settings;
        f.debug_tuple("ClusterClient").field(settings).finish()
    }
}

impl<R: ClusterRuntime> sealed::FromClusterSettings for ClusterClient<R> {
    fn from_settings(settings: ClusterSettings) -> Result<Self> {
        Ok(Self(Arc::new(Inner::new(settings)?)))
    }
}

/// The public methods and trait impls that the cluster client, lock and
/// guard have on every runtime, written once and expanded by each adapter
/// for its [`ClusterRuntime`] `$rt`: inherent impls on the concrete types,
/// so that rustdoc lists them on `tokio::ClusterClient` and
/// `blocking::ClusterClient` alike. Expects the adapter's `ClusterClient`,
/// `ClusterLock` and `ClusterGuard` aliases in scope.
macro_rules! cluster_api {
    ($rt:ty) => {
        impl Clone for ClusterClient {
            fn clone(&self) -> Self {
                Self(self.0.clone())
            }
        }

        impl ClusterClient {
            /// A builder for a client of the cluster with these members
            /// (client-facing `host:port`, as the servers' `--advertise-addr`).
            pub fn builder<I, S>(members: I) -> $crate::runtime::host::cluster::ClusterBuilder<Self>
            where
                I: IntoIterator<Item = S>,
                S: Into<String>,
            {
                $crate::runtime::host::cluster::ClusterBuilder::new(members)
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
                self.0.leader()
            }

            /// Members dialled so far, by both lanes (successful or not).
            pub fn dials(&self) -> u32 {
                self.0.dials.load(core::sync::atomic::Ordering::Relaxed)
            }

            /// A lock on `key` with default options (see [`ClusterLock`]).
            pub fn lock(&self, key: impl Into<String>) -> ClusterLock {
                ClusterLock {
                    client: self.clone(),
                    key: key.into(),
                    kind: $crate::Kind::Lock,
                    options: $crate::lock::LockOptions::DEFAULT,
                }
            }

            /// A semaphore on `key` admitting `limit` holders.
            pub fn semaphore(&self, key: impl Into<String>, limit: u32) -> ClusterLock {
                ClusterLock {
                    kind: $crate::Kind::Semaphore { limit },
                    ..self.lock(key)
                }
            }
        }

        impl Clone for ClusterLock {
            fn clone(&self) -> Self {
                Self {
                    client: self.client.clone(),
                    key: self.key.clone(),
                    ..*self
                }
            }
        }

        impl ClusterLock {
            /// How long the server may block an acquire (default 10 s). The
            /// budget covers failovers: an acquire re-sent to a new leader
            /// gets what is left of it.
            pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
                self.options.acquire_timeout = timeout;
                self
            }

            /// The lease TTL (default: the server's, 33 s). A lease survives
            /// a failover when the election is shorter than the lease.
            pub fn lease_ttl(mut self, ttl: Duration) -> Self {
                self.options.lease_ttl = Some(ttl);
                self
            }

            /// Renew at this fraction of the lease (default 0.5).
            pub fn renew_ratio(mut self, ratio: $crate::lock::RenewRatio) -> Self {
                self.options.renew_ratio = ratio;
                self
            }

            /// Early renew jitter (default 10 %).
            pub fn early_jitter(mut self, jitter: $crate::lock::Jitter) -> Self {
                self.options.early_jitter = jitter;
                self
            }

            /// All lease options at once.
            pub fn options(mut self, options: $crate::lock::LockOptions) -> Self {
                self.options = options;
                self
            }

            /// The key.
            pub fn key(&self) -> &str {
                &self.key
            }
        }

        impl ClusterGuard {
            /// The key.
            pub fn key(&self) -> &str {
                &self.key
            }

            /// Lock or semaphore.
            pub fn kind(&self) -> $crate::Kind {
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
            pub fn token(&self) -> Option<$crate::Token> {
                (!self.is_lost()).then_some(self.token)
            }

            /// The fence (see [`Fence`](crate::Fence): on a v2 cluster a
            /// replicated counter that only grows, across failovers), or
            /// `None` once the lease is lost.
            pub fn fence(&self) -> Option<$crate::Fence> {
                self.token().map(|t| t.fence())
            }

            /// Whether the lease is known to be lost (never blocks): the
            /// renewal task said so or is gone, or the conservative deadline
            /// has passed by the clock.
            pub fn is_lost(&self) -> bool {
                self.lost_now()
            }

            /// The latest successful renew, if any.
            pub fn last_renewal(&self) -> Option<Renewal> {
                self.last()
            }
        }
    };
}
pub(crate) use cluster_api;

// ---- a lock -----------------------------------------------------------------------

/// A lock or semaphore on one key of a [`ClusterClient`], with its
/// options (`tokio::ClusterLock`, `blocking::ClusterLock`).
#[derive(Debug)]
pub struct ClusterLock<R: ClusterRuntime> {
    pub(crate) client: ClusterClient<R>,
    pub(crate) key: String,
    pub(crate) kind: Kind,
    pub(crate) options: LockOptions,
}

impl<R: ClusterRuntime> ClusterLock<R> {
    /// The acquire timeout set (for `acquire`).
    pub(crate) fn acquire_timeout_set(&self) -> Duration {
        self.options.acquire_timeout
    }

    /// The renewal task of an acquire with `timeout` (for the runtime to
    /// run: a tokio task, a thread), and the caller's side of it.
    pub(crate) fn start(&self, timeout: Duration) -> (Task<R>, Pending) {
        let link = Arc::new(Link::default());
        let task = Task {
            lock: ClusterLock {
                client: ClusterClient(self.client.0.clone()),
                key: self.key.clone(),
                ..*self
            },
            timeout,
            link: link.clone(),
        };
        (task, Pending(link, false))
    }
}

// ---- between the renewal task and its guard ------------------------------------------

/// The outcome of an acquire: token, TTL and granting member.
pub(crate) type Grant = Result<Option<(Token, Duration, String)>>;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum State {
    #[default]
    Acquiring,
    Held,
    Lost,
    Released,
}

/// What the renewal task, the caller of the acquire and then its guard
/// tell each other.
#[derive(Debug, Default)]
pub struct Status {
    state: State,
    /// The acquire's outcome (token, TTL, member), until the caller takes it.
    grant: Option<Grant>,
    /// The guard asked for a release, or the caller went away before
    /// taking the grant.
    release: bool,
    /// The release's outcome, until the guard takes it.
    released: Option<Result<()>>,
    renewal: Option<Renewal>,
    wakers: Vec<Waker>,
}

/// The shared state of one lease: the [`Status`], waking its waiters on
/// every change (async tasks, or threads parked in `block_on`), and the
/// lease deadline (milliseconds of the runtime's timer).
#[derive(Debug, Default)]
pub struct Link {
    status: Mutex<Status>,
    deadline: AtomicU64,
}

impl Link {
    fn status(&self) -> MutexGuard<'_, Status> {
        // The status stays consistent whatever panicked while holding it.
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the status and wakes every waiter.
    fn update(&self, f: impl FnOnce(&mut Status)) {
        let mut s = self.status();
        f(&mut s);
        let wakers = core::mem::take(&mut s.wakers);
        drop(s);
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Waits until `f` finds what it looks for.
    pub(crate) fn until<T>(
        &self,
        mut f: impl FnMut(&mut Status) -> Option<T>,
    ) -> impl Future<Output = T> {
        core::future::poll_fn(move |cx| {
            let mut s = self.status();
            let out = f(&mut s);
            if out.is_none() && !s.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                s.wakers.push(cx.waker().clone());
            }
            out.map_or(Poll::Pending, Poll::Ready)
        })
    }

    /// Whether a release is wanted (for [`until`](Self::until)).
    pub(crate) fn wants_release(s: &mut Status) -> Option<()> {
        s.release.then_some(())
    }

    /// The lease deadline by the runtime's clock.
    pub(crate) fn deadline(&self) -> Instant {
        Instant::from_millis(self.deadline.load(Ordering::Relaxed))
    }

    /// The lease was granted or renewed: its new deadline, and the renewal.
    fn held(&self, lease: &Lease<'_>, renewal: Option<Renewal>) {
        let deadline = lease.deadline().as_millis();
        self.deadline.store(deadline, Ordering::Relaxed);
        if renewal.is_some() {
            self.update(|s| s.renewal = renewal);
        }
    }
}

/// The renewal task of one lease: acquires, hands the grant over, renews
/// on whichever member leads until released or lost.
pub(crate) struct Task<R: ClusterRuntime> {
    lock: ClusterLock<R>,
    timeout: Duration,
    link: Arc<Link>,
}

impl<R: ClusterRuntime> Task<R> {
    /// Runs the lease from acquire to release or loss.
    pub(crate) async fn run(self) {
        let (inner, link, l) = (&*self.lock.client.0, &*self.link, &self.lock);
        let spec = LockSpec::new(&l.key, l.kind).with_options(l.options);
        let acquired = inner
            .on(&inner.acquire, async |lane| {
                let gone = link.until(Link::wants_release);
                match select(gone, lane.acquire(&spec, self.timeout)).await {
                    Either::First(()) => {
                        // The caller is gone: close the connection so the
                        // server drops the waiter or the grant.
                        lane.disconnect();
                        None
                    }
                    Either::Second(out) => {
                        let member = lane.connected_addr().map(String::from);
                        Some(out.map(|l| l.map(|l| (l, member.unwrap_or_default()))))
                    }
                }
            })
            .await;
        let (mut lease, member) = match acquired {
            None => return,
            Some(Ok(Some(granted))) => granted,
            Some(other) => return link.update(|s| s.grant = Some(other.map(|_| None))),
        };
        link.held(&lease, None);
        let grant = (*lease.token(), lease.ttl(), member);
        link.update(|s| {
            s.state = State::Held;
            s.grant = Some(Ok(Some(grant)));
        });
        let mut count = 0u64;
        loop {
            // Check for a release before every renew, even when renews
            // come back to back.
            let at = lease.next_renew_at();
            R::wait(link, at, Link::wants_release).await;
            if Link::wants_release(&mut link.status()).is_some() {
                let out = inner.control(async |lane| lane.release(lease).await).await;
                return link.update(|s| {
                    s.state = State::Released;
                    s.released = Some(out);
                });
            }
            if R::Timer::default().now() < at {
                continue;
            }
            let out = inner
                .control(async |lane| {
                    let out = lane.renew(&mut lease).await;
                    out.map(|()| lane.connected_addr().map(String::from).unwrap_or_default())
                })
                .await;
            match out {
                Ok(member) => {
                    count += 1;
                    let (fence, remaining) = (lease.fence(), lease.ttl());
                    let renewal = Renewal {
                        member,
                        fence,
                        remaining,
                        count,
                    };
                    link.held(&lease, Some(renewal));
                }
                Err(e) => {
                    warn!("cluster lease on {} lost: {}", l.key, e);
                    return link.update(|s| s.state = State::Lost);
                }
            }
        }
    }
}

/// A task that ends (or panics, or is dropped with its runtime, even
/// before it ran) without a release leaves its lease lost: a vanished task
/// renews nothing, and a caller still waiting for the grant is told.
impl<R: ClusterRuntime> Drop for Task<R> {
    fn drop(&mut self) {
        self.link.update(|s| {
            if matches!(s.state, State::Acquiring | State::Held) {
                s.state = State::Lost;
                s.grant.get_or_insert(Err(Error::Disconnected));
            }
        });
    }
}

/// The caller's side of an acquire under way. Dropped before the grant is
/// taken (a cancelled acquire), it asks the task to give up.
pub(crate) struct Pending(Arc<Link>, bool);

impl Pending {
    /// Waits for the acquire's outcome: the guard of a grant.
    pub(crate) async fn wait<R: ClusterRuntime>(
        mut self,
        lock: &ClusterLock<R>,
    ) -> Result<Option<ClusterGuard<R>>> {
        let out = self.0.until(|s| s.grant.take()).await;
        self.1 = true;
        Ok(out?.map(|(token, ttl, member)| ClusterGuard {
            key: lock.key.clone(),
            kind: lock.kind,
            token,
            ttl,
            member,
            link: self.0.clone(),
            seen: 0,
            released: false,
            _rt: PhantomData,
        }))
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.1 {
            self.0.update(|s| s.release = true);
        }
    }
}

// ---- the guard --------------------------------------------------------------------

/// A held cluster lease, renewed in the background by its [`Task`]
/// (`tokio::ClusterGuard`, `blocking::ClusterGuard`).
#[derive(Debug)]
pub struct ClusterGuard<R: ClusterRuntime> {
    pub(crate) key: String,
    pub(crate) kind: Kind,
    pub(crate) token: Token,
    pub(crate) ttl: Duration,
    pub(crate) member: String,
    pub(crate) link: Arc<Link>,
    /// Renewals seen by `next_renewal`.
    seen: u64,
    released: bool,
    _rt: PhantomData<fn() -> R>,
}

impl<R: ClusterRuntime> ClusterGuard<R> {
    /// Whether the lease is known to be lost: the task said so or is gone,
    /// or the deadline passed by the clock.
    pub(crate) fn lost_now(&self) -> bool {
        self.link.status().state != State::Held || R::Timer::default().now() >= self.link.deadline()
    }

    /// The latest successful renew, if any.
    pub(crate) fn last(&self) -> Option<Renewal> {
        self.link.status().renewal.clone()
    }

    /// Whether the lease ended (lost or released; for [`Link::until`]).
    pub(crate) fn ended(s: &mut Status) -> Option<()> {
        (s.state != State::Held).then_some(())
    }

    /// Waits until the lease is lost, or the runtime's clock reaches `end`:
    /// whether it was lost. Wakes at the lease deadline too (a clock event).
    pub(crate) async fn lost_by(&self, end: Option<Instant>) -> bool {
        while !self.lost_now() {
            let (now, deadline) = (R::Timer::default().now(), self.link.deadline());
            if end.is_some_and(|end| now >= end) {
                return false;
            }
            let at = end.map_or(deadline, |end| end.min(deadline));
            R::wait(&self.link, at, Self::ended).await;
        }
        true
    }

    /// Waits for the next renewal this guard has not seen: `None` once the
    /// lease ended.
    pub(crate) async fn next(&mut self) -> Option<Renewal> {
        let seen = self.seen;
        let next = self
            .link
            .until(|s| match &s.renewal {
                Some(r) if r.count > seen => Some(Some(r.clone())),
                _ => Self::ended(s).map(|()| None),
            })
            .await;
        self.seen = next.as_ref().map_or(seen, |r| r.count);
        next
    }

    /// Asks the task for the release and waits for its outcome:
    /// [`Error::LeaseLost`] at once when the lease was lost before (or the
    /// task is gone). The task releases even if this future is dropped.
    pub(crate) async fn release_lease(mut self) -> Result<()> {
        self.released = true;
        let mut held = false;
        self.link.update(|s| {
            s.release = true;
            held = s.state == State::Held;
        });
        if !held {
            return Err(Error::LeaseLost);
        }
        self.link
            .until(|s| match s.state {
                State::Held => None,
                State::Released => Some(s.released.take().unwrap_or(Err(Error::LeaseLost))),
                State::Acquiring | State::Lost => Some(Err(Error::LeaseLost)),
            })
            .await
    }
}

impl<R: ClusterRuntime> Drop for ClusterGuard<R> {
    fn drop(&mut self) {
        if !self.released {
            self.link.update(|s| s.release = true);
        }
    }
}

/// Random numbers from std's randomly keyed SipHash (`RandomState`, seeded
/// by the OS per process), mixed with a counter and the clock: enough to
/// keep the stable refs of different clients apart.
#[derive(Default)]
struct OsHashRng {
    n: u64,
}

impl Rng for OsHashRng {
    fn next_u32(&mut self) -> u32 {
        self.n += 1;
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(self.n);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        (h.finish() >> 16) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_refs_differ() {
        let mut rng = OsHashRng::default();
        let a = StableRef::random(&mut rng);
        let b = StableRef::random(&mut OsHashRng::default());
        assert_ne!(a, b);
    }
}
