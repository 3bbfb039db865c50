//! A dflockd v2 cluster client for blocking code: the same client, locks
//! and guards as [`tokio::ClusterClient`](crate::tokio::ClusterClient)
//! (both drive the core's [`ClusterConn`](crate::cluster::ClusterConn)),
//! dialling with std, renewing each lease on a thread of its own.
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

use core::ops::DerefMut;
use std::string::String;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use super::{BlockingTransport, HostStream, Result, StdTimer, block_on, open_host};
use crate::Error;
use crate::cluster::Connector;
use crate::runtime::host::cluster::{self as host, ClusterRuntime, ClusterSettings};
use crate::time::Timer;

/// Dials members over std TCP (or TLS), counting every dial; sets each
/// request's read timeout.
#[derive(Debug, Clone)]
pub struct StdConnector(Arc<ClusterSettings>);

impl Connector for StdConnector {
    type Io = HostStream;

    async fn connect(&self, addr: &str) -> Result<HostStream> {
        open_host(addr, self.0.dial(), self.0.tls.as_ref())
    }

    fn auth_token(&self) -> Option<&str> {
        self.0.connect.token()
    }

    fn prepare(&self, io: &mut HostStream, max_wait: Duration) {
        // A blocking read cannot be raced by a timer: the socket's read
        // timeout is the reply deadline.
        let _ = io.set_read_timeout(Some(max_wait.max(Duration::from_millis(1))));
    }
}

impl ClusterRuntime for StdConnector {
    type Timer = StdTimer;
    type Cell = Mutex<host::Lane<Self>>;
    type Wake = Condvar;

    fn new(settings: Arc<ClusterSettings>) -> Self {
        Self(settings)
    }

    async fn lock(cell: &Self::Cell) -> impl DerefMut<Target = host::Lane<Self>> {
        // A lane whose user panicked is still consistent enough: its
        // connection is at worst unusable, which the next call handles.
        cell.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn spawn(renewing: host::Renewing<Self>) -> Result<()> {
        let thread = std::thread::Builder::new().name("dflockd-cluster-lease".into());
        let spawned = thread.spawn(move || block_on(renewing.run()));
        spawned.map(drop).map_err(Error::Io)
    }
}

/// A blocking client of a dflockd v2 Raft cluster, made by
/// [`ClusterBuilder`](crate::blocking::ClusterBuilder). Cheap to clone;
/// `Send + Sync`. Two lanes, each at most one connection: acquires (which
/// may block on the server) on one, renew, release, `barrier`, `stats` and
/// `ping` on the other, so a renew never waits behind a blocked acquire.
pub type ClusterClient = host::ClusterClient<StdConnector>;

/// A lock or semaphore on one key of a [`ClusterClient`], with its
/// options. Cheap to clone.
pub type ClusterLock = host::ClusterLock<StdConnector>;

/// A held cluster lock or semaphore slot, renewed by a thread of its own
/// on whichever member leads. The fence never changes for the life of the
/// lease; the lease is lost when a renew was refused (never re-acquired
/// behind your back), no leader answered before the deadline, the
/// deadline passed, or the thread is gone. Dropping the guard releases in
/// the background.
pub type ClusterGuard = host::ClusterGuard<StdConnector>;

host::cluster_api! {
    async: [],
    await: [],
    block_on: [block_on],
    cancel: "Blocks the calling thread, bounded by the reply timeout (and the \
             redirect policy's budget).",
    cancel_acquire: "Blocks the calling thread, bounded by the timeout (a failover \
                     included).",
    cancel_guard: "Blocks the calling thread."
}

impl ClusterGuard {
    /// Blocks until the lease is lost.
    pub fn wait_lost(&self) {
        block_on(self.guard.lost_by(None));
    }

    /// Blocks up to `timeout` for the lease to be lost; true if it was.
    pub fn wait_lost_timeout(&self, timeout: Duration) -> bool {
        block_on(self.guard.lost_by(Some(StdTimer.now() + timeout)))
    }
}
