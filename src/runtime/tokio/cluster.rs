//! A dflockd v2 cluster client on tokio: writes to the leader, redirects
//! followed within the members, locks kept across leader failover.
//!
//! The routing and failover decisions are the core's
//! ([`crate::cluster`]), the client, its locks and guards are shared with
//! the blocking client (and the renewal loop with the plain locks); this
//! module dials with tokio, runs each lease's renewal as a tokio task and
//! offers the `async` methods.
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

use core::ops::DerefMut;
use std::string::String;
use std::time::Duration;

use super::{HostStream, Result, TokioTimer, open_host};
use crate::cluster::Connector;
use crate::runtime::host::cluster::{self as host, ClusterRuntime, Dialer, Lane, Renewal};

/// Dials members over tokio TCP (or TLS), counting every dial.
#[derive(Debug)]
pub struct TokioConnector(Dialer);

impl Connector for TokioConnector {
    type Io = HostStream;

    async fn connect(&self, addr: &str) -> Result<HostStream> {
        open_host(addr, &self.0.dial(), self.0.settings.tls.as_ref()).await
    }

    fn auth_token(&self) -> Option<&str> {
        self.0.settings.auth_token.as_ref().map(|t| t.expose())
    }
}

impl ClusterRuntime for TokioConnector {
    type Timer = TokioTimer;
    type Cell = tokio::sync::Mutex<Lane<Self>>;
    type Wake = tokio::sync::Notify;

    fn new(dialer: Dialer) -> Self {
        Self(dialer)
    }

    async fn lock(cell: &Self::Cell) -> impl DerefMut<Target = Lane<Self>> {
        cell.lock().await
    }
}

/// A client of a dflockd v2 Raft cluster on tokio, made by
/// [`ClusterBuilder`](crate::tokio::ClusterBuilder). Cheap to clone (clones
/// share the lanes, the leader hint and the stable ref).
///
/// Two lanes, each at most one connection: the **acquire lane** carries
/// `l`/`sl` (which may block on the server up to the acquire timeout;
/// concurrent acquires of one client take turns on it), the **control
/// lane** carries renew, release, `barrier`, `stats` and `ping`, so a renew
/// never waits behind a blocked acquire. Both lanes send `auth` (if set)
/// and the client's stable ref on every new connection.
pub type ClusterClient = host::ClusterClient<TokioConnector>;

/// A lock or semaphore on one key of a [`ClusterClient`], with its
/// options. Cheap to clone.
pub type ClusterLock = host::ClusterLock<TokioConnector>;

/// A held cluster lock or semaphore slot, renewed by a tokio task on
/// whichever member leads.
///
/// * The fence never changes for the life of the lease, across failovers.
/// * `lost()` completes when a renew was refused (the lease is
///   gone: it is never re-acquired behind your back), no leader could be
///   reached before the lease deadline, the deadline passed, or the task
///   is gone (its runtime shut down).
/// * Dropping the guard releases in the background.
pub type ClusterGuard = host::ClusterGuard<TokioConnector>;

host::cluster_api!(TokioConnector);

impl ClusterClient {
    /// `barrier` on the leader: returns once every write committed before
    /// it has been applied there. A [`stats`](Self::stats) after it reads
    /// the leader's state including those writes (a linearizable read).
    ///
    /// Cancel-safe in effect: a dropped future leaves the control lane's
    /// connection unusable and the next call reconnects.
    pub async fn barrier(&self) -> Result<()> {
        self.0.control(async |lane| lane.barrier().await).await
    }

    /// `stats` JSON from a member (after [`barrier`](Self::barrier): the
    /// leader). v2 adds a `cluster` object (node_id, role, term,
    /// leader_id, leader_addr, commit_index, …). At most 256 KiB.
    pub async fn stats(&self) -> Result<String> {
        self.0.stats().await
    }

    /// `ping` on a member.
    pub async fn ping(&self) -> Result<()> {
        self.0.control(async |lane| lane.ping().await).await
    }

    /// Closes both lanes' connections; the next operation reconnects and
    /// presents the same stable ref. With `--orphan-ttl` on the servers,
    /// the locks this client holds survive this.
    pub async fn disconnect(&self) {
        self.0.disconnect().await
    }
}

impl ClusterLock {
    /// Acquires on the leader, waiting up to the acquire timeout:
    /// `Ok(None)` when it passed. A leader that dies meanwhile is replaced
    /// by the new one within the same timeout.
    ///
    /// Cancel-safe in effect: a dropped future closes the acquire lane's
    /// connection, so the server drops the waiter or releases a grant it
    /// made (unless `--orphan-ttl` keeps it for this stable ref: then the
    /// next acquire of this client re-attaches it).
    pub async fn acquire(&self) -> Result<Option<ClusterGuard>> {
        self.acquire_within(self.acquire_timeout_set()).await
    }

    /// Tries once without blocking on the server.
    pub async fn try_acquire(&self) -> Result<Option<ClusterGuard>> {
        self.acquire_within(Duration::ZERO).await
    }

    /// [`acquire`](Self::acquire) with another timeout.
    pub async fn acquire_within(&self, timeout: Duration) -> Result<Option<ClusterGuard>> {
        let granted = self.acquire_lease(timeout).await?;
        Ok(granted.map(|(guard, renewing)| {
            tokio::spawn(renewing.run());
            guard
        }))
    }
}

impl ClusterGuard {
    /// Completes when the lease is lost. Cancel-safe.
    pub async fn lost(&self) {
        self.guard.lost_by(None).await;
    }

    /// Waits for the next successful renew: `None` once the lease is lost
    /// or released. Cancel-safe.
    pub async fn next_renewal(&mut self) -> Option<Renewal> {
        self.next().await
    }

    /// Releases the lease on the leader.
    ///
    /// [`Error::LeaseLost`](crate::Error::LeaseLost) when it was lost
    /// before. Cancel-safe: once called, the release completes in the
    /// background.
    pub async fn release(self) -> Result<()> {
        self.guard.release().await
    }
}
