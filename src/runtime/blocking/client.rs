//! [`Client`] for blocking code: the runtime marker and the signal connection.

use super::lock::Conn;
use super::{DistributedLock, DistributedSemaphore, Result, SignalConn};
use crate::runtime::host::client::sealed::Adapter;
use crate::runtime::host::signal::SignalOptions;

/// Blocking code (threads), as the parameter of [`Client`] and [`ClientBuilder`]
/// (never a value).
#[derive(Debug)]
pub enum Blocking {}

impl Adapter for Blocking {
    type Conn = Conn;
    type Lock = DistributedLock;
    type Semaphore = DistributedSemaphore;
}

/// The client handle for blocking code: servers, routing, auth, TLS, timeouts and a
/// pool of idle connections, set once (see
/// [`Client`](crate::runtime::host::client::Client) for the pool rules).
pub type Client = crate::runtime::host::client::Client<Blocking>;

/// Builds a blocking [`Client`]: `Client::builder()`.
pub type ClientBuilder = crate::runtime::host::client::ClientBuilder<Blocking>;

impl Client {
    /// A signal connection to the client's first server (signals are not
    /// sharded: every emitter and listener of a channel must use the same
    /// server) with the client's auth, TLS and timeouts, and the default
    /// [`SignalOptions`] (heartbeat kept below the client's read timeout).
    ///
    /// Errors as [`SignalConn::connect`].
    pub fn signals(&self) -> Result<SignalConn> {
        self.signals_with(self.default_signal_options())
    }

    /// [`signals`](Self::signals) with other options; their
    /// `read_timeout` and `io_timeout` are replaced by the client's.
    pub fn signals_with(&self, opts: SignalOptions) -> Result<SignalConn> {
        let (addr, connect, tls, opts) = self.signal_setup(opts)?;
        match tls {
            None => SignalConn::connect(addr, &connect, opts),
            #[cfg(feature = "rustls")]
            Some(tls) => SignalConn::connect_tls(addr, &connect, &tls, opts),
            #[cfg(not(feature = "rustls"))]
            Some(never) => match never {},
        }
    }
}
