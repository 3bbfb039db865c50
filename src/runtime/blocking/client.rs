//! [`Client`] for blocking code: the shared client types, and the signal
//! connection.

/// What the locks pool: a connection with its parked renewal thread.
type Conn = super::lock::Conn;
use super::{DistributedLock, DistributedSemaphore, Result, SignalConn, SignalOptions};

crate::runtime::host::client::client_types!(
    DistributedLock,
    DistributedSemaphore,
    Conn,
    "blocking"
);

impl Client {
    /// A signal connection to the client's first server (signals are not
    /// sharded: every emitter and listener of a channel must use the same
    /// server) with the client's auth, TLS and timeouts, and the default
    /// [`SignalOptions`] (heartbeat kept below the client's read timeout).
    ///
    /// Errors as [`SignalConn::connect`].
    pub fn signals(&self) -> Result<SignalConn> {
        self.signals_with(self.0.default_signal_options())
    }

    /// [`signals`](Self::signals) with other options; their
    /// `read_timeout` and `io_timeout` are replaced by the client's.
    pub fn signals_with(&self, opts: SignalOptions) -> Result<SignalConn> {
        let (addr, connect, tls, opts) = self.0.signal_setup(opts)?;
        SignalConn::connect_with(addr, connect, tls, opts)
    }
}
