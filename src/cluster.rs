//! A client for a dflockd v2 Raft cluster, `no_std` and heap-free: writes
//! go to the leader, `error_not_leader` is followed within the members,
//! reads go to any node, and every connection presents a stable ref so that
//! the server can hand a client's locks back after a reconnect.
//!
//! Two layers, both in the core:
//!
//! * [`Router`] is the sans-IO routing state machine: given the members
//!   (by index), it says which member a write goes to next and after what
//!   delay, from the events "redirected with this hint", "failed to connect
//!   or lost the connection" and "answered". It keeps the leader hint
//!   between operations, counts attempts against a [`RedirectPolicy`]
//!   budget and backs off (bounded, doubling) whenever it has no fresh hint
//!   to follow, so a cluster without a leader never sees a tight loop.
//! * [`ClusterConn`] drives a [`Router`] over any transport: a
//!   [`Connector`] dials a member (tokio, std, embassy-net, WASI), the
//!   [`Timer`] supplies deadlines and the backoff sleep. On every new
//!   connection it sends `auth` (when the connector has a token) and then
//!   `stable-ref`. It offers the lock operations on core [`Lease`]s
//!   (acquire, renew, release, two-phase), [`barrier`](ClusterConn::barrier),
//!   [`ping`](ClusterConn::ping) and [`stats`](ClusterConn::stats).
//!
//! On firmware or WASI, implement [`Connector`] over your transport (for
//! example `runtime::embassy::connect` into a socket you own, or
//! `runtime::wasi::connect_stream`) and drive a `ClusterConn` per lane
//! yourself, renewing with [`ClusterConn::renew`] when
//! [`Lease::next_renew_at`] comes (or, driving a [`LeaseDriver`] loop,
//! sending its renews with [`ClusterConn::renew_reply`], as the host
//! clients do). The core needs no allocator and no threads for this.
//!
//! The host APIs (`tokio::ClusterClient`, `blocking::ClusterClient`)
//! run two `ClusterConn`s per client: one lane for acquire/enqueue/wait,
//! which may block on the server, and one for renew/release/barrier, so a
//! renew never waits behind a blocked acquire.
//!
//! # The redirect policy
//!
//! * A write goes to the cached leader hint, else to the next member in
//!   round-robin order (the first one at the start).
//! * `error_not_leader <addr>` where `addr` is a configured member other
//!   than the one that answered, and not one that failed during this
//!   operation: go there at once.
//! * A bare `error_not_leader`, a hint that is not a member, or one that
//!   names the answering node or a node that just failed (a stale hint: a
//!   node without a leader keeps naming the dead one): the next member
//!   round-robin, after a backoff.
//! * A dial, transport or reply-timeout failure, or `error_draining`: the
//!   next member; once every member has failed in this operation, back off
//!   before the next round.
//! * Backoff: [`RedirectPolicy::backoff_base`] doubling up to
//!   [`RedirectPolicy::backoff_max`].
//! * After [`RedirectPolicy::budget`] attempts (connects and requests that
//!   were redirected or failed): [`Error::NoLeader`].
//! * Any other answer (a grant, `timeout`, `error`, `error_auth`, …) ends
//!   the operation at once.
//!
//! # Failover, and what it relies on
//!
//! Each operation is re-sent to the new leader when the old one fails:
//!
//! * **renew**: the same token; the cluster's replicated state still holds
//!   the lease if the election was shorter than the lease. A renew that
//!   the server refuses (`error`, `error_lease_expired`) or that cannot
//!   land before the lease deadline is [`Error::LeaseLost`]: the lock is
//!   never silently re-acquired.
//! * **acquire / wait**: re-sent with what is left of its timeout. With the
//!   same stable ref the new leader re-attaches the queue place (or the
//!   grant, if it was made meanwhile) instead of queueing a second time.
//! * **release**: re-sent; a release that the server then refuses because
//!   the first attempt had already released counts as done.
//!
//! The stable ref is random by default ([`StableRef::random`]) and kept for
//! the client's lifetime, so every reconnect presents it; with
//! `--orphan-ttl N` on the servers, a client whose connection was cut gets
//! its locks back on reconnect within N seconds.

use core::future::Future;
use core::time::Duration;

use embedded_io_async::{ErrorType, Read, Write};

use crate::Enqueued;
use crate::conn::Connection;
use crate::error::{Error, MAX_LEADER_ADDR, ServerError};
use crate::lock::{Lease, LeaseDriver, LockSpec, Rng};
use crate::protocol::validate::{self, Arg, InvalidArgument, Rule};
use crate::protocol::{Expect, Reply, Request, Status};
use crate::time::{Instant, Timer, with_deadline};

/// Smallest line buffer of a connection to a cluster member: room for
/// `error_not_leader <host:port>` with a [`MAX_LEADER_ADDR`]-byte address
/// and the line end `\r\n` (278 bytes).
pub const CLUSTER_MIN_LINE_BUF: usize = "error_not_leader ".len() + MAX_LEADER_ADDR + 2;

/// Most members a cluster client accepts.
pub const MAX_MEMBERS: usize = 32;

// ---- stable ref ---------------------------------------------------------------

/// A client identity for `stable-ref`: 1 to 64 bytes of printable ASCII.
///
/// Present the same ref after a reconnect and a v2 server run with
/// `--orphan-ttl` gives back the locks and queue places the client held.
/// Two clients must never share a ref: the server hands a ref's locks to
/// whoever presents it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StableRef(heapless::String<{ validate::MAX_STABLE_REF }>);

impl StableRef {
    /// A ref with the given text, checked as the server checks it.
    pub fn new(text: &str) -> Result<Self, InvalidArgument> {
        validate::stable_ref(text)?;
        heapless::String::try_from(text)
            .map(Self)
            .map_err(|_| InvalidArgument::new(Arg::StableRef, Rule::TooLong { max: 64 }))
    }

    /// A random ref, `dflockd-rs-` and 32 hex digits (128 bits) from `rng`:
    /// give it a cryptographic or at least well-seeded RNG, since two
    /// clients with the same ref would take each other's locks.
    pub fn random(rng: &mut impl Rng) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = heapless::String::new();
        let _ = s.push_str("dflockd-rs-");
        for _ in 0..4 {
            let word = rng.next_u32();
            for shift in (0..8).rev() {
                let nibble = ((word >> (shift * 4)) & 0xf) as usize;
                let _ = s.push(char::from(HEX[nibble]));
            }
        }
        Self(s)
    }

    /// The ref as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl core::fmt::Debug for StableRef {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "StableRef({:?})", self.as_str())
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for StableRef {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "StableRef({=str})", self.as_str())
    }
}

// ---- members --------------------------------------------------------------------

/// The cluster's members, by index: anything that lists `host:port`
/// strings (`[&str; 3]`, `&[&str]`, and on hosts `Vec<String>` or
/// `Arc<[String]>`). List the client-facing addresses exactly as the
/// servers advertise them (`--advertise-addr`), so that redirects match.
pub trait Members {
    /// How many members there are.
    fn count(&self) -> usize;
    /// The address of member `i` (`i < count()`).
    fn member(&self, i: usize) -> &str;
    /// The index of the member with address `addr`, if any.
    fn find(&self, addr: &str) -> Option<usize> {
        (0..self.count()).find(|&i| self.member(i) == addr)
    }
}

impl<S: AsRef<str>> Members for [S] {
    fn count(&self) -> usize {
        self.len()
    }
    fn member(&self, i: usize) -> &str {
        self.get(i).map_or("", AsRef::as_ref)
    }
}

impl<S: AsRef<str>, const K: usize> Members for [S; K] {
    fn count(&self) -> usize {
        K
    }
    fn member(&self, i: usize) -> &str {
        self.get(i).map_or("", AsRef::as_ref)
    }
}

impl<M: Members + ?Sized> Members for &M {
    fn count(&self) -> usize {
        (**self).count()
    }
    fn member(&self, i: usize) -> &str {
        (**self).member(i)
    }
}

#[cfg(feature = "std")]
impl<S: AsRef<str>> Members for std::vec::Vec<S> {
    fn count(&self) -> usize {
        self.len()
    }
    fn member(&self, i: usize) -> &str {
        self.get(i).map_or("", AsRef::as_ref)
    }
}

#[cfg(feature = "std")]
impl<M: Members + ?Sized> Members for std::sync::Arc<M> {
    fn count(&self) -> usize {
        (**self).count()
    }
    fn member(&self, i: usize) -> &str {
        (**self).member(i)
    }
}

/// Checks a member list: 1 to [`MAX_MEMBERS`] non-empty addresses.
pub fn validate_members(members: &impl Members) -> Result<(), InvalidArgument> {
    let n = members.count();
    if n == 0 {
        return Err(InvalidArgument::new(Arg::Members, Rule::Empty));
    }
    if n > MAX_MEMBERS {
        return Err(InvalidArgument::new(
            Arg::Members,
            Rule::TooLarge {
                max: MAX_MEMBERS as u64,
            },
        ));
    }
    if (0..n).any(|i| members.member(i).trim().is_empty()) {
        return Err(InvalidArgument::new(Arg::Members, Rule::Blank));
    }
    Ok(())
}

// ---- the router -------------------------------------------------------------------

/// How hard a cluster client tries before giving up, and how it waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub struct RedirectPolicy {
    /// Attempts per operation (connects and requests that were redirected
    /// or failed) before [`Error::NoLeader`]. Default 12: while live members
    /// answer without a leader, the default backoff then spans about 7.5 s,
    /// longer than a Raft election (about 1 s on loopback, measured). Dead
    /// members fail fast and cost a backoff only once all have failed.
    pub budget: u32,
    /// First backoff (default 50 ms); it doubles with every backoff within
    /// one operation.
    pub backoff_base: Duration,
    /// Longest backoff (default 1 s).
    pub backoff_max: Duration,
}

impl RedirectPolicy {
    /// The defaults: budget 12, backoff 50 ms doubling to 1 s.
    pub const DEFAULT: RedirectPolicy = RedirectPolicy {
        budget: 12,
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_secs(1),
    };

    /// The same policy with another budget (at least 1).
    pub const fn with_budget(mut self, budget: u32) -> Self {
        self.budget = if budget == 0 { 1 } else { budget };
        self
    }

    /// The same policy with another backoff range.
    pub const fn with_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max;
        self
    }
}

impl Default for RedirectPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Where the next attempt goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Route {
    /// The member index.
    pub member: usize,
    /// How long to wait first (zero: at once).
    pub delay: Duration,
}

/// What the router decided after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Next {
    /// Try again there.
    Retry(Route),
    /// The budget is spent.
    GiveUp {
        /// Attempts made in this operation.
        attempts: u32,
    },
}

/// The routing and redirect state machine of a cluster client (sans IO).
///
/// Start every operation with [`start`](Self::start), then report each
/// attempt's outcome: [`answered`](Self::answered),
/// [`redirected`](Self::redirected) or [`failed`](Self::failed). See the
/// [module docs](self) for the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Router {
    members: usize,
    policy: RedirectPolicy,
    leader: Option<usize>,
    rr: usize,
    attempts: u32,
    backoffs: u32,
    failed: u32,
}

impl Router {
    /// A router over `members` members (1 to [`MAX_MEMBERS`]).
    pub fn new(members: usize, policy: RedirectPolicy) -> Result<Self, InvalidArgument> {
        if members == 0 {
            return Err(InvalidArgument::new(Arg::Members, Rule::Empty));
        }
        if members > MAX_MEMBERS {
            return Err(InvalidArgument::new(
                Arg::Members,
                Rule::TooLarge {
                    max: MAX_MEMBERS as u64,
                },
            ));
        }
        Ok(Self {
            members,
            policy,
            leader: None,
            rr: 0,
            attempts: 0,
            backoffs: 0,
            failed: 0,
        })
    }

    /// The policy.
    pub fn policy(&self) -> RedirectPolicy {
        self.policy
    }

    /// The cached leader hint (a member index), if any.
    pub fn leader(&self) -> Option<usize> {
        self.leader
    }

    /// Sets or clears the leader hint (e.g. shared from another lane).
    pub fn set_leader(&mut self, leader: Option<usize>) {
        self.leader = leader.filter(|&i| i < self.members);
    }

    /// Attempts made in the current operation.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Starts an operation: resets its budget and returns where it goes
    /// (the leader hint, else the current round-robin member; no delay).
    pub fn start(&mut self) -> Route {
        self.attempts = 0;
        self.backoffs = 0;
        self.failed = 0;
        Route {
            member: self.leader.unwrap_or(self.rr),
            delay: Duration::ZERO,
        }
    }

    /// The member a read (`ping`, `stats`) goes to: any node will do, so
    /// the leader hint if known, else the round-robin member.
    pub fn read_member(&self) -> usize {
        self.leader.unwrap_or(self.rr)
    }

    /// Member `at` answered: it is where writes go from now on, if it was
    /// a write.
    pub fn answered(&mut self, at: usize, write: bool) {
        if write {
            self.leader = Some(at);
        }
        self.rr = at;
    }

    /// Member `at` answered `error_not_leader`, naming the member `hint`
    /// (already looked up: `None` when bare or not a member).
    pub fn redirected(&mut self, at: usize, hint: Option<usize>) -> Next {
        self.attempts += 1;
        if self.attempts >= self.policy.budget {
            self.leader = None;
            return Next::GiveUp {
                attempts: self.attempts,
            };
        }
        match hint {
            Some(i) if i < self.members && i != at && self.failed & (1 << i) == 0 => {
                self.leader = Some(i);
                Next::Retry(Route {
                    member: i,
                    delay: Duration::ZERO,
                })
            }
            _ => {
                // Bare or stale: no leader known. Wait, then ask the next.
                self.leader = None;
                self.rr = (at + 1) % self.members;
                Next::Retry(Route {
                    member: self.rr,
                    delay: self.backoff(),
                })
            }
        }
    }

    /// Connecting to member `at` failed, or its connection broke or timed
    /// out, or it is draining.
    pub fn failed(&mut self, at: usize) -> Next {
        self.attempts += 1;
        if at < self.members {
            self.failed |= 1 << at;
        }
        if self.leader == Some(at) {
            self.leader = None;
        }
        if self.attempts >= self.policy.budget {
            return Next::GiveUp {
                attempts: self.attempts,
            };
        }
        self.rr = (at + 1) % self.members;
        let all = if self.members == 32 {
            u32::MAX
        } else {
            (1u32 << self.members) - 1
        };
        let delay = if self.failed & all == all {
            // Everyone failed once: back off before the next round.
            self.failed = 0;
            self.backoff()
        } else {
            Duration::ZERO
        };
        Next::Retry(Route {
            member: self.rr,
            delay,
        })
    }

    fn backoff(&mut self) -> Duration {
        let shift = self.backoffs.min(16);
        self.backoffs += 1;
        self.policy
            .backoff_base
            .saturating_mul(1 << shift)
            .min(self.policy.backoff_max)
    }
}

// ---- the driver ------------------------------------------------------------------

/// Dials a cluster member: TCP (and TLS) on the caller's runtime.
pub trait Connector {
    /// The transport it returns.
    type Io: Read + Write;

    /// Opens a transport to `addr` (`host:port`), within the runtime's
    /// connect timeout.
    fn connect(
        &self,
        addr: &str,
    ) -> impl Future<Output = Result<Self::Io, Error<<Self::Io as ErrorType>::Error>>>;

    /// The token sent with `auth` on every new connection, if the servers
    /// need one.
    fn auth_token(&self) -> Option<&str> {
        None
    }

    /// Called before each request with the longest time its reply may
    /// take (the server's blocking time plus the reply timeout). Blocking
    /// transports set their read timeout here; async ones need nothing.
    fn prepare(&self, io: &mut Self::Io, max_wait: Duration) {
        let _ = (io, max_wait);
    }
}

type Res<T, C> = Result<T, Error<<<C as Connector>::Io as ErrorType>::Error>>;

fn add(t: Instant, d: Duration) -> Instant {
    t + d
}

/// How a failed attempt counts.
enum Outcome<E> {
    /// The node is not the leader; the hint if it names a member.
    Redirect(Option<usize>),
    /// The node or the connection failed.
    NodeFailed(Error<E>),
    /// A final answer: return it.
    Final(Error<E>),
}

/// Classifies a failed attempt. `hint` is the member the answering node
/// named in `error_not_leader <addr>`, looked up from its connection's
/// [`Connection::leader_hint`] (the error itself holds no address on
/// `no_std`).
fn classify<E>(e: Error<E>, hint: Option<usize>) -> Outcome<E> {
    match e {
        Error::Server(ServerError::NotLeader(_)) => Outcome::Redirect(hint),
        Error::Server(ServerError::Draining)
        | Error::Io(_)
        | Error::Disconnected
        | Error::Timeout
        | Error::Unusable
        | Error::LineTooLong
        | Error::Protocol(_) => Outcome::NodeFailed(e),
        other => Outcome::Final(other),
    }
}

/// The member named by the last `error_not_leader <addr>` on `conn`.
fn hint_of<Io: Read + Write, const N: usize>(
    conn: &Connection<Io, N>,
    members: &impl Members,
) -> Option<usize> {
    conn.leader_hint().and_then(|addr| members.find(addr))
}

/// One lane of a cluster client: at most one connection, to the member
/// the [`Router`] chose, with `auth` and `stable-ref` sent on connect.
///
/// `N` is the line buffer (at least [`CLUSTER_MIN_LINE_BUF`]). Strictly one
/// request at a time. Methods are not cancel-safe: a dropped future leaves
/// the lane's connection unusable, and the next call reconnects.
pub struct ClusterConn<C: Connector, M, T, const N: usize> {
    connector: C,
    members: M,
    timer: T,
    stable_ref: StableRef,
    router: Router,
    io_timeout: Duration,
    conn: Option<(usize, Connection<C::Io, N>)>,
    connects: u32,
}

impl<C: Connector, M, T, const N: usize> core::fmt::Debug for ClusterConn<C, M, T, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClusterConn")
            .field("stable_ref", &self.stable_ref)
            .field("router", &self.router)
            .field("connected_to", &self.conn.as_ref().map(|c| c.0))
            .field("connects", &self.connects)
            .finish_non_exhaustive()
    }
}

impl<C, M, T, const N: usize> ClusterConn<C, M, T, N>
where
    C: Connector,
    M: Members,
    T: Timer,
{
    /// A lane over `members`, dialled by `connector`, presenting
    /// `stable_ref`. `io_timeout` bounds each reply beyond the time the
    /// server may block on purpose (and the `auth` / `stable-ref`
    /// handshake). Connects lazily.
    pub fn new(
        connector: C,
        members: M,
        timer: T,
        stable_ref: StableRef,
        policy: RedirectPolicy,
        io_timeout: Duration,
    ) -> Result<Self, InvalidArgument> {
        const {
            assert!(
                N >= CLUSTER_MIN_LINE_BUF,
                "cluster line buffer must be >= 278 bytes"
            )
        };
        validate_members(&members)?;
        let router = Router::new(members.count(), policy)?;
        Ok(Self {
            connector,
            members,
            timer,
            stable_ref,
            router,
            io_timeout,
            conn: None,
            connects: 0,
        })
    }

    /// The stable ref presented on every connection.
    pub fn stable_ref(&self) -> &StableRef {
        &self.stable_ref
    }

    /// The members.
    pub fn members(&self) -> &M {
        &self.members
    }

    /// The router (leader hint, policy).
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The router, e.g. to share a leader hint between lanes.
    pub fn router_mut(&mut self) -> &mut Router {
        &mut self.router
    }

    /// The timer.
    pub fn timer(&self) -> &T {
        &self.timer
    }

    /// The member this lane is connected to, if any.
    pub fn connected_to(&self) -> Option<usize> {
        self.conn.as_ref().map(|c| c.0)
    }

    /// Connections attempted so far (dials, successful or not).
    pub fn connects(&self) -> u32 {
        self.connects
    }

    /// Closes the lane's connection (the next call reconnects). With
    /// `--orphan-ttl` the server keeps what this connection held for the
    /// next connection presenting the same stable ref.
    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    /// Makes sure the lane is connected to `member`, dialling it and
    /// sending `auth` and `stable-ref` if not; a failure comes back
    /// classified (with the leader hint its connection kept).
    async fn ensure(&mut self, member: usize) -> Result<(), Outcome<<C::Io as ErrorType>::Error>> {
        if let Some((at, conn)) = &self.conn
            && *at == member
            && conn.is_usable()
        {
            return Ok(());
        }
        self.conn = None;
        self.connects = self.connects.saturating_add(1);
        let addr = self.members.member(member);
        debug!("cluster: connecting to member {}", member);
        let mut io = match self.connector.connect(addr).await {
            Ok(io) => io,
            Err(e) => return Err(classify(e, None)),
        };
        self.connector.prepare(&mut io, self.io_timeout);
        let mut conn: Connection<C::Io, N> = Connection::new(io);
        let limit = add(self.timer.now(), self.io_timeout);
        let token = self.connector.auth_token();
        let reference = self.stable_ref.as_str();
        let hello = async {
            conn.authenticate(token).await?;
            match conn
                .request(&Request::StableRef { reference }, Expect::Ok)
                .await?
            {
                Reply::Ok => Ok(()),
                Reply::Status(Status::Auth) => Err(Error::Auth),
                Reply::Status(s) => Err(Error::Server(ServerError::from_status(s))),
                _ => Err(Error::Protocol(crate::protocol::ProtocolError::Unexpected)),
            }
        };
        match with_deadline(&self.timer, limit, hello).await {
            Ok(Ok(())) => {
                self.conn = Some((member, conn));
                Ok(())
            }
            Ok(Err(e)) => Err(classify(e, hint_of(&conn, &self.members))),
            Err(elapsed) => Err(classify(elapsed.into(), None)),
        }
    }

    /// Runs `op` on the routed connection until it answers, following
    /// redirects and failing over per the policy.
    async fn run<'k>(&mut self, write: bool, op: &mut Op<'_, 'k>) -> Res<Out<'k>, C> {
        let mut route = self.router.start();
        if !write {
            route.member = self.router.read_member();
        }
        let mut retried = false;
        loop {
            if route.delay > Duration::ZERO {
                let until = add(self.timer.now(), route.delay);
                self.timer.sleep_until(until).await;
            }
            let outcome = match self.ensure(route.member).await {
                Err(outcome) => outcome,
                Ok(()) => {
                    let wait = op.max_wait(&self.timer, self.io_timeout);
                    let Some((_, conn)) = self.conn.as_mut() else {
                        continue;
                    };
                    self.connector.prepare(conn.transport_mut(), wait);
                    match op
                        .attempt(conn, &self.timer, self.io_timeout, retried)
                        .await
                    {
                        Ok(r) => {
                            self.router.answered(route.member, write);
                            return Ok(r);
                        }
                        Err(e) => classify(e, hint_of(conn, &self.members)),
                    }
                }
            };
            retried = true;
            let next = match outcome {
                Outcome::Final(e) => return Err(e),
                Outcome::Redirect(hint) => {
                    debug!("cluster: member {} is not the leader", route.member);
                    self.conn = None;
                    self.router.redirected(route.member, hint)
                }
                Outcome::NodeFailed(e) => {
                    warn!("cluster: member {} failed", route.member);
                    drop(e);
                    self.conn = None;
                    self.router.failed(route.member)
                }
            };
            match next {
                Next::Retry(r) => route = r,
                Next::GiveUp { attempts } => {
                    warn!("cluster: no leader after {} attempts", attempts);
                    return Err(Error::NoLeader { attempts });
                }
            }
        }
    }

    /// Acquires `spec` on the leader, letting the server block up to
    /// `timeout`: `Ok(None)` when it passed without a grant. If the leader
    /// fails meanwhile, the acquire is re-sent to the new leader with what
    /// is left of `timeout` (the stable ref lets the server re-attach the
    /// queue place, or hand over the grant it made meanwhile).
    ///
    /// Not cancel-safe: a dropped future leaves the lane's connection
    /// unusable (the next call reconnects); with `--orphan-ttl` the server
    /// keeps the queue place or grant for this stable ref meanwhile.
    pub async fn acquire<'k>(
        &mut self,
        spec: &LockSpec<'k>,
        timeout: Duration,
    ) -> Res<Option<Lease<'k>>, C> {
        check(spec)?;
        let deadline = add(self.timer.now(), timeout);
        match self.run(true, &mut Op::Acquire(spec, deadline)).await? {
            Out::Lease(l) => Ok(l),
            _ => Err(unexpected()),
        }
    }

    /// Two-phase, first half, on the leader. The lease at once, or
    /// [`Enqueued::Queued`]: then [`wait`](Self::wait) on this lane.
    /// Not cancel-safe (see [`acquire`](Self::acquire)).
    pub async fn enqueue<'k>(&mut self, spec: &LockSpec<'k>) -> Res<Enqueued<Lease<'k>>, C> {
        check(spec)?;
        match self.run(true, &mut Op::Enqueue(spec)).await? {
            Out::Enqueued(e) => Ok(e),
            _ => Err(unexpected()),
        }
    }

    /// Two-phase, second half: waits up to `timeout` for the grant of an
    /// earlier [`enqueue`](Self::enqueue). After a failover the wait goes
    /// to the new leader, which finds the queue place by the stable ref.
    /// Not cancel-safe (see [`acquire`](Self::acquire)).
    pub async fn wait<'k>(
        &mut self,
        spec: &LockSpec<'k>,
        timeout: Duration,
    ) -> Res<Option<Lease<'k>>, C> {
        check(spec)?;
        let deadline = add(self.timer.now(), timeout);
        match self.run(true, &mut Op::Wait(spec, deadline)).await? {
            Out::Lease(l) => Ok(l),
            _ => Err(unexpected()),
        }
    }

    /// Renews `lease` on the leader with the same token, following a
    /// failover ([`renew_reply`](Self::renew_reply), then
    /// [`LeaseDriver::renewed`]). [`Error::LeaseLost`] when the server no
    /// longer holds it (`error`, `error_lease_expired`) or its deadline
    /// passed first: never re-acquired. Not cancel-safe (the next call
    /// reconnects).
    pub async fn renew(&mut self, lease: &mut Lease<'_>) -> Res<(), C> {
        let mut driver = *lease.driver();
        let reply = self.renew_reply(lease.key(), &mut driver).await;
        let out = driver.renewed(Ok(reply), self.timer.now());
        *lease = Lease::from_driver(lease.key(), driver);
        out
    }

    /// The renew of `driver`'s lease on `key`, sent to the leader with the
    /// same token and re-sent after a failover: the seconds the server
    /// granted, the reply for [`LeaseDriver::renewed`] (which applies it,
    /// and makes a late failure [`Error::LeaseLost`]). Each attempt is
    /// started on the driver, which gives its reply limit (the reply
    /// timeout, never past the deadline) and counts the lease from the
    /// attempt that landed. [`Error::LeaseLost`] when the server refuses
    /// (`error`, `error_lease_expired`) or the deadline passed. Not
    /// cancel-safe (the next call reconnects).
    pub async fn renew_reply(&mut self, key: &str, driver: &mut LeaseDriver) -> Res<u64, C> {
        match self.run(true, &mut Op::Renew(key, driver)).await? {
            Out::Remaining(secs) => Ok(secs),
            _ => Err(unexpected()),
        }
    }

    /// Releases `lease` on the leader. [`Error::LeaseLost`] when the server
    /// says it was not held (it had expired); after a failover, a release
    /// the first attempt may already have made counts as done. Not
    /// cancel-safe (the next call reconnects).
    pub async fn release(&mut self, lease: Lease<'_>) -> Res<(), C> {
        self.run(true, &mut Op::Release(lease)).await.map(drop)
    }

    /// `barrier` on the leader: returns once every write committed before
    /// it has been applied, so a `stats` read after it (on the leader)
    /// reflects them: a linearizable read. Not cancel-safe (the next call
    /// reconnects).
    pub async fn barrier(&mut self) -> Res<(), C> {
        self.run(true, &mut Op::Barrier).await.map(drop)
    }

    /// `ping` on any member (the leader if known). Not cancel-safe (the
    /// next call reconnects).
    pub async fn ping(&mut self) -> Res<(), C> {
        self.run(false, &mut Op::Ping).await.map(drop)
    }

    /// `stats` on any member (the leader if known), read into `out`; the
    /// JSON has a `cluster` object (role, term, leader, commit index, …).
    /// For a linearizable view of the lock state, call
    /// [`barrier`](Self::barrier) first: then this lane is connected to
    /// the leader and the stats come from it. Not cancel-safe (the next
    /// call reconnects).
    pub async fn stats<'b>(&mut self, out: &'b mut [u8]) -> Res<&'b str, C> {
        let (start, len) = match self.run(false, &mut Op::Stats(&mut *out)).await? {
            Out::Stats(start, len) => (start, len),
            _ => return Err(unexpected()),
        };
        out.get(start..start + len)
            .and_then(|b| core::str::from_utf8(b).ok())
            .ok_or(Error::Protocol(crate::protocol::ProtocolError::NotUtf8))
    }

    /// The address of the member the lane is connected to.
    pub fn connected_addr(&self) -> Option<&str> {
        self.connected_to().map(|i| self.members.member(i))
    }
}

/// Checks a lock's key, kind and lease before anything is dialled.
fn check(spec: &LockSpec<'_>) -> Result<(), InvalidArgument> {
    Request::Enqueue {
        kind: spec.kind(),
        key: spec.key(),
        lease: spec.options().lease_secs(),
    }
    .validate()
}

fn unexpected<E>() -> Error<E> {
    Error::Protocol(crate::protocol::ProtocolError::Unexpected)
}

/// One operation of a lane, re-run on each attempt.
enum Op<'a, 'k> {
    Acquire(&'a LockSpec<'k>, Instant),
    Enqueue(&'a LockSpec<'k>),
    Wait(&'a LockSpec<'k>, Instant),
    Renew(&'k str, &'a mut LeaseDriver),
    Release(Lease<'k>),
    Barrier,
    Ping,
    Stats(&'a mut [u8]),
}

/// What an operation returned.
enum Out<'k> {
    Lease(Option<Lease<'k>>),
    Enqueued(Enqueued<Lease<'k>>),
    Done,
    /// The seconds a renew was granted.
    Remaining(u64),
    /// Start and length of the JSON in the stats buffer.
    Stats(usize, usize),
}

impl<'k> Op<'_, 'k> {
    /// The longest a reply may take.
    fn max_wait<T: Timer>(&self, timer: &T, io: Duration) -> Duration {
        match self {
            Op::Acquire(spec, deadline) | Op::Wait(spec, deadline) => {
                deadline.saturating_duration_since(timer.now())
                    + spec.options().io_timeout
                    + Duration::from_secs(1)
            }
            Op::Enqueue(spec) => spec.options().io_timeout,
            Op::Renew(_, driver) => driver.ttl().max(Duration::from_secs(1)),
            Op::Release(lease) => lease.ttl().max(io),
            Op::Barrier | Op::Ping | Op::Stats(_) => io,
        }
    }

    /// One attempt on `conn`.
    async fn attempt<Io: Read + Write, T: Timer, const N: usize>(
        &mut self,
        conn: &mut Connection<Io, N>,
        timer: &T,
        io: Duration,
        retried: bool,
    ) -> Result<Out<'k>, Error<Io::Error>> {
        match self {
            Op::Acquire(spec, deadline) => {
                let left = deadline.saturating_duration_since(timer.now());
                spec.acquire_within(conn, timer, left).await.map(Out::Lease)
            }
            Op::Enqueue(spec) => spec.enqueue(conn, timer).await.map(Out::Enqueued),
            Op::Wait(spec, deadline) => {
                let left = deadline.saturating_duration_since(timer.now());
                spec.wait_within(conn, timer, left).await.map(Out::Lease)
            }
            Op::Renew(key, driver) => {
                let Some(limit) = driver.start_renew(timer.now()) else {
                    return Err(Error::LeaseLost);
                };
                let token = *driver.token();
                let renew = conn.renew(driver.kind(), key, &token, driver.request_secs());
                let reply = with_deadline(timer, limit, renew).await;
                // A refusal or a late failure is the driver's `LeaseLost`.
                driver.failure(reply, timer.now()).map(Out::Remaining)
            }
            Op::Release(lease) => match lease.release(conn, timer).await {
                Ok(()) => Ok(Out::Done),
                // The first attempt may have released before the failover.
                Err(Error::LeaseLost) if retried => Ok(Out::Done),
                Err(e) => Err(e),
            },
            Op::Barrier => {
                let limit = add(timer.now(), io);
                let req = async {
                    match conn.request(&Request::Barrier, Expect::Ok).await? {
                        Reply::Ok => Ok(Out::Done),
                        Reply::Status(Status::Auth) => Err(Error::Auth),
                        Reply::Status(s) => Err(Error::Server(ServerError::from_status(s))),
                        _ => Err(unexpected()),
                    }
                };
                with_deadline(timer, limit, req).await?
            }
            Op::Ping => {
                let limit = add(timer.now(), io);
                with_deadline(timer, limit, conn.ping()).await??;
                Ok(Out::Done)
            }
            Op::Stats(out) => {
                let limit = add(timer.now(), io);
                let base = out.as_ptr() as usize;
                let s = with_deadline(timer, limit, conn.stats(out)).await??;
                Ok(Out::Stats(s.as_ptr() as usize - base, s.len()))
            }
        }
    }
}

#[cfg(test)]
mod tests;
