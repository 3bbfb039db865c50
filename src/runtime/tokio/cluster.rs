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
use std::sync::Arc;
use std::time::Duration;

use super::{HostStream, Result, TokioTimer, open_host};
use crate::cluster::Connector;
use crate::runtime::host::cluster::{self as host, ClusterRuntime, ClusterSettings};

/// Dials members over tokio TCP (or TLS), counting every dial.
#[derive(Debug, Clone)]
pub struct TokioConnector(Arc<ClusterSettings>);

impl Connector for TokioConnector {
    type Io = HostStream;

    async fn connect(&self, addr: &str) -> Result<HostStream> {
        open_host(addr, self.0.dial(), self.0.tls.as_ref()).await
    }

    fn auth_token(&self) -> Option<&str> {
        self.0.connect.token()
    }
}

impl ClusterRuntime for TokioConnector {
    type Timer = TokioTimer;
    type Cell = tokio::sync::Mutex<host::Lane<Self>>;
    type Wake = tokio::sync::Notify;

    fn new(settings: Arc<ClusterSettings>) -> Self {
        Self(settings)
    }

    async fn lock(cell: &Self::Cell) -> impl DerefMut<Target = host::Lane<Self>> {
        cell.lock().await
    }

    fn spawn(renewing: host::Renewing<Self>) -> Result<()> {
        tokio::spawn(renewing.run());
        Ok(())
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

host::cluster_api! {
    async: [async],
    await: [.await],
    block_on: [],
    cancel: "Cancel-safe in effect: a dropped future leaves the control lane's \
             connection unusable and the next call reconnects.",
    cancel_acquire: "Cancel-safe in effect: a dropped future closes the acquire lane's \
                     connection, so the server drops the waiter or releases a grant it \
                     made (unless `--orphan-ttl` keeps it for this stable ref: then the \
                     next acquire of this client re-attaches it).",
    cancel_guard: "Cancel-safe."
}

impl ClusterGuard {
    /// Completes when the lease is lost. Cancel-safe.
    pub async fn lost(&self) {
        self.guard.lost_by(None).await;
    }
}
