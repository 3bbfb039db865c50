//! [`Client`] on tokio: the shared client types, and the signal
//! connection.

/// The connection the locks pool (as `lock.rs` opens them).
type Conn = std::boxed::Box<super::lock::Conn>;
use super::{DistributedLock, DistributedSemaphore, Result, SignalConn, SignalOptions};

crate::runtime::host::client::client_types!(DistributedLock, DistributedSemaphore, Conn, "tokio");

impl Client {
    /// A signal connection to the client's first server (signals are not
    /// sharded: every emitter and listener of a channel must use the same
    /// server) with the client's auth, TLS and timeouts, and the default
    /// [`SignalOptions`] (heartbeat kept below the client's read timeout).
    ///
    /// Errors as [`SignalConn::connect`]. Cancel-safe as it.
    pub async fn signals(&self) -> Result<SignalConn> {
        self.signals_with(self.0.default_signal_options()).await
    }

    /// [`signals`](Self::signals) with other options; their
    /// `read_timeout` and `io_timeout` are replaced by the client's.
    pub async fn signals_with(&self, opts: SignalOptions) -> Result<SignalConn> {
        let (addr, connect, tls, opts) = self.0.signal_setup(opts)?;
        SignalConn::connect_with(addr, connect, tls, opts).await
    }
}
