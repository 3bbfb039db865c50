//! [`Client`] on tokio: the runtime marker and the signal connection.

use super::lock::Conn;
use super::{DistributedLock, DistributedSemaphore, Result, SignalConn};
use crate::runtime::host::client::sealed::Adapter;
use crate::runtime::host::signal::SignalOptions;

/// The tokio runtime, as the parameter of [`Client`] and [`ClientBuilder`]
/// (never a value).
#[derive(Debug)]
pub enum Tokio {}

impl Adapter for Tokio {
    type Conn = Conn;
    type Lock = DistributedLock;
    type Semaphore = DistributedSemaphore;
}

/// The client handle on tokio: servers, routing, auth, TLS, timeouts and a
/// pool of idle connections, set once (see
/// [`Client`](crate::runtime::host::client::Client) for the pool rules).
pub type Client = crate::runtime::host::client::Client<Tokio>;

/// Builds a tokio [`Client`]: `Client::builder()`.
pub type ClientBuilder = crate::runtime::host::client::ClientBuilder<Tokio>;

impl Client {
    /// A signal connection to the client's first server (signals are not
    /// sharded: every emitter and listener of a channel must use the same
    /// server) with the client's auth, TLS and timeouts, and the default
    /// [`SignalOptions`] (heartbeat kept below the client's read timeout).
    ///
    /// Errors as [`SignalConn::connect`]. Cancel-safe as it.
    pub async fn signals(&self) -> Result<SignalConn> {
        self.signals_with(self.default_signal_options()).await
    }

    /// [`signals`](Self::signals) with other options; their
    /// `read_timeout` and `io_timeout` are replaced by the client's.
    pub async fn signals_with(&self, opts: SignalOptions) -> Result<SignalConn> {
        let (addr, connect, tls, opts) = self.signal_setup(opts)?;
        match tls {
            None => SignalConn::connect(addr, &connect, opts).await,
            #[cfg(feature = "rustls")]
            Some(tls) => SignalConn::connect_tls(addr, &connect, &tls, opts).await,
            #[cfg(not(feature = "rustls"))]
            Some(never) => match never {},
        }
    }
}
