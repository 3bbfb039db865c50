//! The tokio and blocking cluster clients, apart from their IO and
//! scheduling: the builder and settings, the client, lock and guard types
//! (generic over the runtime's [`ClusterRuntime`]) and the IO of a lease's
//! renewal. Nothing here knows a runtime; the routing and failover
//! decisions are the core's ([`crate::cluster`]), the lease decisions the
//! core [`LeaseDriver`]'s, driven by the plain locks' renewal loop
//! ([`drive`]) and guard ([`Guard`]).

use core::fmt::Debug;
use core::future::Future;
use core::marker::PhantomData;
use core::ops::ControlFlow::{Break, Continue};
use core::ops::DerefMut;
use std::hash::{BuildHasher, Hash, Hasher};
use std::io;
use std::string::String;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use embedded_io_async::ErrorType;

use super::HostTls;
use super::lock::{Guard, ReleaseReply, RenewIo, RenewReply, Renewer, Shared, State, Wake, drive};
use super::settings::setters;
use crate::cluster::{ClusterConn, Connector, Members, RedirectPolicy, StableRef};
use crate::lock::{Lease, LeaseDriver, LockOptions, LockSpec, Rng};
use crate::runtime::{AuthToken, ConnectOptions};
use crate::time::{Instant, Timer};
use crate::{Error, Fence, Kind};

type Result<T> = core::result::Result<T, Error<io::Error>>;

/// Line buffer of cluster lane connections: room for the longest
/// `error_not_leader` reply ([`CLUSTER_MIN_LINE_BUF`](crate::cluster::CLUSTER_MIN_LINE_BUF)).
pub(crate) const CLUSTER_LINE: usize = 512;

/// Largest `stats` reply the cluster clients read.
pub(crate) const STATS_BUF: usize = 256 * 1024;

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
    /// The timeouts and the `auth` token.
    pub(crate) connect: ConnectOptions,
    pub(crate) stable_ref: StableRef,
    pub(crate) policy: RedirectPolicy,
    pub(crate) tls: Option<HostTls>,
    /// Members dialled so far, by both lanes.
    pub(crate) dials: AtomicU32,
}

impl ClusterSettings {
    /// Counts a dial; the options to dial with (the runtimes' `open_host`
    /// sends no `auth`: the lane does).
    pub(crate) fn dial(&self) -> &ConnectOptions {
        self.dials.fetch_add(1, Ordering::Relaxed);
        &self.connect
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
    /// The settings, with a random stable ref until `build`.
    settings: ClusterSettings,
    /// The stable ref asked for, checked by `build`.
    stable_ref: Option<String>,
    _target: PhantomData<fn() -> C>,
}

impl<C> core::fmt::Debug for ClusterBuilder<C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClusterBuilder")
            .field("members", &self.settings.members)
            .field("auth_token", &self.settings.connect.auth_token)
            .field("stable_ref", &self.stable_ref)
            .field("policy", &self.settings.policy)
            .finish_non_exhaustive()
    }
}

impl<R: ClusterRuntime> ClusterBuilder<ClusterClient<R>> {
    pub(crate) fn new<I, S>(members: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            settings: ClusterSettings {
                members: members.into_iter().map(Into::into).collect(),
                connect: ConnectOptions::default(),
                stable_ref: StableRef::random(&mut OsHashRng::default()),
                policy: RedirectPolicy::DEFAULT,
                tls: None,
                dials: AtomicU32::new(0),
            },
            stable_ref: None,
            _target: PhantomData,
        }
    }

    setters! {
        /// Sends `auth` with this token on every new connection. Never logged.
        auth_token(token: impl Into<AuthToken>) => settings.connect.auth_token = Some(token.into());

        /// The client's stable ref (1 to 64 bytes of printable ASCII; checked
        /// by [`build`](Self::build)). Default: a random ref, kept for the
        /// client's lifetime. Set it to get locks back across a process
        /// restart (with `--orphan-ttl`); never share one between clients.
        stable_ref(reference: impl Into<String>) => stable_ref = Some(reference.into());

        /// The redirect budget and backoff (default [`RedirectPolicy::DEFAULT`]).
        redirect_policy(policy: RedirectPolicy) => settings.policy = policy;

        /// Gives up dialling a member after this long (default 10 s).
        connect_timeout(timeout: Duration) => settings.connect.connect_timeout = timeout;

        /// Reply timeout beyond any server-side blocking, also for the
        /// `auth` / `stable-ref` handshake, `barrier`, `ping`, `stats`
        /// (default 10 s).
        io_timeout(timeout: Duration) => settings.connect.io_timeout = timeout;

        /// TLS to every member (feature `rustls`), each checked against the
        /// connector's server name.
        #[cfg(feature = "rustls")]
        tls(connector: super::rustls::RustlsConnector) => settings.tls = Some(connector);
    }

    /// Builds the client. Connects lazily.
    ///
    /// [`Error::InvalidArgument`] for an empty or over-long member list
    /// (at most [`MAX_MEMBERS`](crate::cluster::MAX_MEMBERS)) or an invalid
    /// stable ref.
    pub fn build(mut self) -> Result<ClusterClient<R>> {
        // The members are checked by each lane's `ClusterConn::new`.
        if let Some(r) = &self.stable_ref {
            self.settings.stable_ref = StableRef::new(r)?;
        }
        Ok(ClusterClient(Arc::new(Inner::new(self.settings)?)))
    }
}

// ---- the runtime's side ---------------------------------------------------------

/// What a host runtime supplies to the cluster client: how it dials (the
/// [`Connector`]), its clock, how a lane is locked and how a guard and its
/// renewal side wait for each other (as a plain lock's do). Implemented by
/// the tokio and blocking connectors only (`Clone`, so that the generic
/// client and lock derive theirs).
pub trait ClusterRuntime:
    Connector<Io: ErrorType<Error = io::Error>> + Clone + Debug + Sized + Send + Sync + 'static
{
    /// The clock of lanes and leases.
    type Timer: Timer + Copy + Default + Send + Sync + 'static;
    /// A lane behind the runtime's lock.
    type Cell: From<Lane<Self>> + Send + Sync;
    /// The wake-up of a lease's shared status (the plain locks' one).
    type Wake: Wake + Default + Debug + Send + Sync + 'static;

    /// The connector dialling with these settings (counting each dial).
    fn new(settings: Arc<ClusterSettings>) -> Self;

    /// Locks a lane (an acquire holds its lane while the server blocks).
    fn lock(cell: &Self::Cell) -> impl Future<Output = impl DerefMut<Target = Lane<Self>>>;

    /// Runs a lease's renewal in the background (a tokio task, a thread).
    fn spawn(renewing: Renewing<Self>) -> Result<()>;
}

/// One lane of a cluster client on runtime `R`.
pub type Lane<R> = ClusterConn<R, Arc<[String]>, <R as ClusterRuntime>::Timer, CLUSTER_LINE>;

// ---- the client -----------------------------------------------------------------

/// What the clones of one client share.
pub(crate) struct Inner<R: ClusterRuntime> {
    pub(crate) settings: Arc<ClusterSettings>,
    acquire: R::Cell,
    control: R::Cell,
    /// The leader hint both lanes share: its member index plus one, or 0.
    leader: AtomicUsize,
}

impl<R: ClusterRuntime> Inner<R> {
    fn new(settings: ClusterSettings) -> Result<Self> {
        let settings = Arc::new(settings);
        let lane = || {
            let (s, timer) = (&settings, R::Timer::default());
            let (conn, members, stable) =
                (R::new(s.clone()), s.members.clone(), s.stable_ref.clone());
            ClusterConn::new(conn, members, timer, stable, s.policy, s.connect.io_timeout)
                .map(From::from)
        };
        Ok(Self {
            acquire: lane()?,
            control: lane()?,
            leader: AtomicUsize::new(0),
            settings,
        })
    }

    /// Runs `op` on a lane with the shared leader hint: the lane takes it
    /// when it has none, and the hint is the lane's afterwards.
    async fn on<T>(&self, cell: &R::Cell, op: impl AsyncFnOnce(&mut Lane<R>) -> T) -> T {
        let mut lane = R::lock(cell).await;
        if lane.router().leader().is_none() {
            lane.router_mut().set_leader(self.leader_index());
        }
        let out = op(&mut lane).await;
        let hint = lane.router().leader().map_or(0, |l| l + 1);
        self.leader.store(hint, Ordering::Relaxed);
        out
    }

    /// Runs `op` on the control lane (renew, release, barrier, stats,
    /// ping), which never waits behind a blocked acquire.
    pub(crate) async fn control<T>(&self, op: impl AsyncFnOnce(&mut Lane<R>) -> T) -> T {
        self.on(&self.control, op).await
    }

    /// Releases a lease on the control lane.
    async fn release(&self, key: &str, driver: LeaseDriver) -> Result<()> {
        self.control(async |lane| lane.release(Lease::from_driver(key, driver)).await)
            .await
    }

    /// The member index of the shared leader hint, if any.
    fn leader_index(&self) -> Option<usize> {
        self.leader.load(Ordering::Relaxed).checked_sub(1)
    }

    /// The address of the cached leader hint, if any.
    pub(crate) fn leader(&self) -> Option<&str> {
        self.leader_index().map(|l| self.settings.members.member(l))
    }

    pub(crate) async fn disconnect(&self) {
        R::lock(&self.acquire).await.disconnect();
        R::lock(&self.control).await.disconnect();
    }
}

/// A client of a dflockd v2 Raft cluster on runtime `R`: two lanes (acquire
/// and control) and the leader hint they share. Used as
/// `tokio::ClusterClient` and `blocking::ClusterClient` (documented there).
#[derive(Clone)]
pub struct ClusterClient<R: ClusterRuntime>(pub(crate) Arc<Inner<R>>);

impl<R: ClusterRuntime> core::fmt::Debug for ClusterClient<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let settings = &self.0.settings;
        f.debug_tuple("ClusterClient").field(settings).finish()
    }
}

/// The public methods that the cluster client, lock and guard have on
/// every runtime, written once and expanded by each adapter: inherent
/// impls on the concrete types, so that rustdoc lists them on
/// `tokio::ClusterClient` and `blocking::ClusterClient` alike. Expects the
/// adapter's `ClusterClient`, `ClusterLock` and `ClusterGuard` aliases and
/// `Result` in scope.
///
/// The tokio adapter expands it `async` (`await: [.await]`), the blocking
/// one with plain functions (`block_on: [block_on]`). `cancel` is a
/// sentence on cancel safety for the lane requests, `cancel_acquire` for
/// the acquires and `cancel_guard` for the guard's waits.
macro_rules! cluster_api {
    (
        async: [$($async:tt)?],
        await: [$($await:tt)*],
        block_on: [$($block:tt)*],
        cancel: $cancel:literal,
        cancel_acquire: $cancel_acquire:literal,
        cancel_guard: $cancel_guard:literal
    ) => {
        impl ClusterClient {
            /// `barrier` on the leader: returns once every write committed
            /// before it has been applied there. A [`stats`](Self::stats)
            /// after it reads the leader's state including those writes (a
            /// linearizable read).
            ///
            #[doc = $cancel]
            pub $($async)? fn barrier(&self) -> Result<()> {
                $($block)*(self.0.control(async |lane| lane.barrier().await))$($await)*
            }

            /// `stats` JSON from a member (after [`barrier`](Self::barrier):
            /// the leader). v2 adds a `cluster` object (node_id, role, term,
            /// leader_id, leader_addr, commit_index, …). At most 256 KiB.
            ///
            #[doc = $cancel]
            pub $($async)? fn stats(&self) -> Result<std::string::String> {
                let mut buf = std::vec![0u8; $crate::runtime::host::cluster::STATS_BUF];
                let stats = self.0.control(async |lane| lane.stats(&mut buf).await.map(String::from));
                $($block)*(stats)$($await)*
            }

            /// `ping` on a member.
            ///
            #[doc = $cancel]
            pub $($async)? fn ping(&self) -> Result<()> {
                $($block)*(self.0.control(async |lane| lane.ping().await))$($await)*
            }

            /// Closes both lanes' connections; the next operation
            /// reconnects and presents the same stable ref. With
            /// `--orphan-ttl` on the servers, the locks this client holds
            /// survive this.
            pub $($async)? fn disconnect(&self) {
                $($block)*(self.0.disconnect())$($await)*
            }

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
                self.0.settings.dials.load(core::sync::atomic::Ordering::Relaxed)
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

        impl ClusterLock {
            /// Acquires on the leader, waiting up to the acquire timeout:
            /// `Ok(None)` when it passed. A leader that dies meanwhile is
            /// replaced by the new one within the same timeout.
            ///
            #[doc = $cancel_acquire]
            pub $($async)? fn acquire(&self) -> Result<Option<ClusterGuard>> {
                self.acquire_within(self.options.acquire_timeout)$($await)*
            }

            /// Tries once without blocking on the server.
            ///
            #[doc = $cancel_acquire]
            pub $($async)? fn try_acquire(&self) -> Result<Option<ClusterGuard>> {
                self.acquire_within(Duration::ZERO)$($await)*
            }

            /// [`acquire`](Self::acquire) with another timeout.
            ///
            #[doc = $cancel_acquire]
            pub $($async)? fn acquire_within(&self, timeout: Duration) -> Result<Option<ClusterGuard>> {
                $($block)*(self.acquire_guard(timeout))$($await)*
            }

            $crate::runtime::host::settings::lease_setters! {
                /// How long the server may block an acquire (default 10 s). The
                /// budget covers failovers: an acquire re-sent to a new leader
                /// gets what is left of it.
                acquire_timeout,
                /// The lease TTL (default: the server's, 33 s). A lease survives
                /// a failover when the election is shorter than the lease.
                lease_ttl
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
            $crate::runtime::host::lock::lock_api! {
                @guard guard,
                /// The fence (see [`Fence`](crate::Fence): on a v2 cluster a
                /// replicated counter that only grows, across failovers), or
                /// `None` once the lease is lost.
                fence,
                /// Whether the lease is known to be lost (never blocks): the
                /// renewal task said so or is gone, or the conservative deadline
                /// has passed by the clock.
                is_lost
            }

            /// The member that granted the lease.
            pub fn granted_by(&self) -> &str {
                &self.member
            }

            /// The latest successful renew, if any.
            pub fn last_renewal(&self) -> Option<$crate::runtime::host::cluster::Renewal> {
                self.guard.shared.lock().renewal.clone()
            }

            /// Waits for the next successful renew: `None` once the lease
            /// is lost or released.
            ///
            #[doc = $cancel_guard]
            pub $($async)? fn next_renewal(&mut self) -> Option<$crate::runtime::host::cluster::Renewal> {
                $($block)*(self.next())$($await)*
            }

            /// Releases the lease on the leader.
            /// [`Error::LeaseLost`](crate::Error::LeaseLost) when it was
            /// lost before. Once called, the release completes in the
            /// background even if this call is dropped.
            ///
            #[doc = $cancel_guard]
            pub $($async)? fn release(self) -> Result<()> {
                $($block)*(self.guard.release())$($await)*
            }
        }
    };
}
pub(crate) use cluster_api;

// ---- a lock -----------------------------------------------------------------------

/// A lock or semaphore on one key of a [`ClusterClient`], with its
/// options (`tokio::ClusterLock`, `blocking::ClusterLock`).
#[derive(Debug, Clone)]
pub struct ClusterLock<R: ClusterRuntime> {
    pub(crate) client: ClusterClient<R>,
    pub(crate) key: String,
    pub(crate) kind: Kind,
    pub(crate) options: LockOptions,
}

impl<R: ClusterRuntime> ClusterLock<R> {
    /// Acquires on the acquire lane, letting the server block up to
    /// `timeout`: the guard of a grant, renewed by the runtime
    /// ([`ClusterRuntime::spawn`]). A dropped future closes the lane's
    /// connection, so the server drops the waiter or gives back a grant it
    /// made meanwhile.
    pub(crate) async fn acquire_guard(&self, timeout: Duration) -> Result<Option<ClusterGuard<R>>> {
        let inner = &*self.client.0;
        let spec = LockSpec::new(&self.key, self.kind).with_options(self.options);
        let granted = inner
            .on(&inner.acquire, async |lane| {
                let mut lane = Cancel(lane, false);
                let out = lane.0.acquire(&spec, timeout).await;
                lane.1 = true;
                let member = String::from(lane.0.connected_addr().unwrap_or_default());
                out.map(|l| l.map(|l| (l.into_driver(), member)))
            })
            .await?;
        let Some((driver, member)) = granted else {
            return Ok(None);
        };
        let lock = Arc::new(self.clone());
        let (guard, renewer) =
            Guard::new(lock.clone(), &driver, Arc::default(), R::Wake::default());
        if let Err(e) = R::spawn(Renewing(lock, driver, renewer)) {
            // Nothing would renew it (no thread to be had): give it back.
            let _ = inner.release(&self.key, driver).await;
            return Err(e);
        }
        Ok(Some(ClusterGuard {
            guard,
            member,
            seen: 0,
        }))
    }
}

/// Closes the acquire lane's connection unless the acquire finished (its
/// future was dropped mid-way).
struct Cancel<'a, R: ClusterRuntime>(&'a mut Lane<R>, bool);

impl<R: ClusterRuntime> Drop for Cancel<'_, R> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.disconnect();
        }
    }
}

// ---- the renewal ------------------------------------------------------------------

/// The renewal of one cluster lease: the plain locks' loop ([`drive`])
/// over the client's control lane, until released or lost.
pub struct Renewing<R: ClusterRuntime>(Arc<ClusterLock<R>>, LeaseDriver, Renewer<R::Wake>);

impl<R: ClusterRuntime> Renewing<R> {
    /// Runs the loop. Dropped before its end (its runtime shut down), it
    /// leaves the lease lost.
    pub(crate) async fn run(self) {
        let Self(lock, driver, renewer) = self;
        let io = RenewOn(lock.clone(), String::new());
        drive(io, &lock.key, driver, renewer).await
    }
}

/// The renewal's IO: the lock (its client's control lane), and the member
/// that served the last renew.
struct RenewOn<R: ClusterRuntime>(Arc<ClusterLock<R>>, String);

impl<R: ClusterRuntime> RenewIo for RenewOn<R> {
    type Wake = R::Wake;

    async fn wait(&mut self, until: Instant, shared: &Shared<R::Wake>) -> bool {
        // No connection of its own to watch (a lane reconnects).
        shared.release_or(until).await;
        true
    }

    async fn renew(&mut self, driver: &mut LeaseDriver, key: &str, _: Instant) -> RenewReply {
        // Each attempt (re-sent after a failover) takes its reply limit
        // from the driver: the reply timeout, never past the deadline.
        let (inner, member) = (&self.0.client.0, &mut self.1);
        let out = inner.control(async |lane| {
            let out = lane.renew_reply(key, driver).await;
            *member = String::from(lane.connected_addr().unwrap_or_default());
            out
        });
        Ok(out.await)
    }

    fn served_by(&mut self) -> Option<String> {
        Some(core::mem::take(&mut self.1))
    }

    async fn release(&mut self, driver: &LeaseDriver, key: &str, _: Instant) -> ReleaseReply {
        Ok(self.0.client.0.release(key, *driver).await)
    }

    fn finish(self, _: bool) {}
}

// ---- the guard --------------------------------------------------------------------

/// A held cluster lease, renewed in the background by the runtime's task
/// or thread (`tokio::ClusterGuard`, `blocking::ClusterGuard`): a plain
/// lock's [`Guard`], the granting member, and the renewals seen.
#[derive(Debug)]
pub struct ClusterGuard<R: ClusterRuntime> {
    pub(crate) guard: Guard<R::Wake, Arc<ClusterLock<R>>>,
    pub(crate) member: String,
    /// Renewals seen by `next_renewal`.
    seen: u64,
}

impl<R: ClusterRuntime> ClusterGuard<R> {
    /// Waits for the next renewal this guard has not seen: `None` once the
    /// lease ended.
    pub(crate) async fn next(&mut self) -> Option<Renewal> {
        let seen = self.seen;
        let next = R::Wake::until(&self.guard.shared, &mut |s| match &s.renewal {
            Some(r) if r.count > seen => Break(Some(r.clone())),
            _ if s.state != State::Held => Break(None),
            _ => Continue(None),
        })
        .await;
        self.seen = next.as_ref().map_or(seen, |r| r.count);
        next
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
        std::time::SystemTime::now().hash(&mut h);
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
