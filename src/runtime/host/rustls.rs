//! Host TLS with [rustls] (feature `rustls`): full X.509 validation of the
//! server's chain, validity period and name against a root store, for the
//! blocking adapter
//! ([`BlockingConnection::connect_tls`](crate::blocking::BlockingConnection::connect_tls))
//! and its high-level APIs (the lock builder's
//! [`tls`](crate::blocking::LockBuilder::tls) and
//! [`SignalConn::connect_tls`](crate::blocking::SignalConn::connect_tls)),
#![cfg_attr(
    feature = "tokio",
    doc = "and for the tokio one ([`connect_tls`](crate::tokio::connect_tls), the lock builder's [`tls`](crate::tokio::LockBuilder::tls) and [`SignalConn::connect_tls`](crate::tokio::SignalConn::connect_tls))."
)]
#![cfg_attr(
    not(feature = "tokio"),
    doc = "and for the tokio one (the same names under `tokio`, feature `tokio`)."
)]
//!
//! ```no_run
//! # #[cfg(feature = "tokio")]
//! # async fn demo(ca_der: Vec<u8>) -> Result<(), Box<dyn std::error::Error>> {
//! use dflockd_client::tls_rustls::RustlsConnector;
//! use dflockd_client::tokio::{ConnectOptions, connect_tls};
//!
//! let tls = RustlsConnector::from_ca_der(&ca_der, "locks.example.com")?;
//! let opts = ConnectOptions { auth_token: Some("s3cret".into()), ..ConnectOptions::default() };
//! let mut conn = connect_tls::<1024, 0>("locks.example.com:6388", &opts, &tls).await?;
//! conn.ping().await?;
//! # Ok(()) }
//! ```
//!
//! The crypto provider is rustls' `ring` provider. rustls negotiates TLS 1.3
//! with the Go server (`TLS_AES_128_GCM_SHA256` and X25519 with a default Go
//! configuration); TLS 1.2 stays available for servers configured that way.
//! Verification cannot be switched off through this type; a caller who
//! really wants that builds its own `ClientConfig` with rustls' `dangerous()`
//! API and passes it to [`RustlsConnector::with_config`].
//!
//! [rustls]: https://docs.rs/rustls/0.23

use std::borrow::ToOwned;
use std::io;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use super::sock::{Bounded, deadline_passed, is_timeout};

use crate::ConfigError;

pub use rustls;
pub use rustls::pki_types::{CertificateDer, ServerName};
pub use rustls::{ClientConfig, RootCertStore};

/// What a TLS connection is checked against: a rustls client configuration
/// (roots, protocol versions) and the server name the certificate must
/// carry (also sent as SNI). Cheap to clone.
#[derive(Clone)]
pub struct RustlsConnector {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl core::fmt::Debug for RustlsConnector {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RustlsConnector")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl RustlsConnector {
    /// Verifies against `roots` (a caller-supplied store: your CA, the
    /// system's, or webpki-roots), with the ring provider and rustls' safe
    /// default protocol versions.
    ///
    /// `server_name` is a DNS name or an IP address. Fails with a
    /// [`ConfigError`] naming `server_name` when it is neither.
    pub fn new(roots: RootCertStore, server_name: &str) -> Result<Self, ConfigError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|_| ConfigError::new("provider", "must support TLS 1.2 and TLS 1.3"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self::with_config(Arc::new(config), server_name)
    }

    /// Verifies against one CA certificate (DER): the usual private-CA
    /// deployment of dflockd. Fails with a [`ConfigError`] naming `ca_der`
    /// when it is not one, or `server_name` as [`new`](Self::new).
    pub fn from_ca_der(ca_der: &[u8], server_name: &str) -> Result<Self, ConfigError> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca_der.to_vec()))
            .map_err(|_| ConfigError::new("ca_der", "must be a DER-encoded X.509 certificate"))?;
        Self::new(roots, server_name)
    }

    /// Verifies against Mozilla's root certificates (the `webpki-roots`
    /// feature), for servers with a publicly trusted certificate.
    #[cfg(feature = "webpki-roots")]
    pub fn webpki_roots(server_name: &str) -> Result<Self, ConfigError> {
        let roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        Self::new(roots, server_name)
    }

    /// Uses a complete rustls client configuration as given (client
    /// certificates, custom verifiers, other providers).
    pub fn with_config(config: Arc<ClientConfig>, server_name: &str) -> Result<Self, ConfigError> {
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| ConfigError::new("server_name", "must be a DNS name or an IP address"))?;
        Ok(Self {
            config,
            server_name,
        })
    }

    /// The rustls configuration.
    pub fn config(&self) -> &Arc<ClientConfig> {
        &self.config
    }

    /// The name the server's certificate must carry.
    pub fn server_name(&self) -> &ServerName<'static> {
        &self.server_name
    }

    /// The same roots and configuration (shared, not copied) for a server
    /// with another name: one connector per server of a cluster whose
    /// certificates carry different names.
    ///
    /// Fails with a [`ConfigError`] naming `server_name` when it is neither
    /// a DNS name nor an IP address.
    pub fn with_server_name(&self, server_name: &str) -> Result<Self, ConfigError> {
        Self::with_config(self.config.clone(), server_name)
    }
}

/// The rustls error inside an IO error from a TLS connection, if any: why a
/// handshake failed (`InvalidCertificate(Expired)`, `NotValidForName`,
/// `UnknownIssuer`, a peer alert, a corrupt message from a plaintext peer).
pub fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

// ---- the blocking TLS stream -------------------------------------------------

/// A rustls client stream over `std::net::TcpStream` (feature `rustls`),
/// behind the `embedded_io_async` traits like [`StdStream`](crate::blocking::StdStream).
///
/// A server that closes without `close_notify` reads as end of stream, so
/// the connection reports [`Error::Disconnected`](crate::Error::Disconnected) as over plain TCP.
pub struct StdTlsStream(
    pub(crate) rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    pub(crate) Option<std::time::Instant>,
);

impl core::fmt::Debug for StdTlsStream {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StdTlsStream")
            .field("peer", &self.0.sock.peer_addr().ok())
            .field("protocol", &self.0.conn.protocol_version())
            .field("cipher_suite", &self.0.conn.negotiated_cipher_suite())
            .finish_non_exhaustive()
    }
}

pub(crate) fn tls_io_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl StdTlsStream {
    /// Runs the TLS handshake over a connected socket, verified by `tls`,
    /// giving up after `timeout` (an [`io::ErrorKind::TimedOut`] error).
    /// On Unix the socket is left non-blocking. Verification failures are
    /// [`io::ErrorKind::InvalidData`] errors carrying the `rustls::Error`
    /// (see [`rustls_error`](rustls_error)).
    pub fn handshake(
        tcp: TcpStream,
        tls: &crate::runtime::host::rustls::RustlsConnector,
        timeout: Duration,
    ) -> io::Result<Self> {
        let mut conn =
            rustls::ClientConnection::new(tls.config().clone(), tls.server_name().clone())
                .map_err(tls_io_error)?;
        #[cfg(unix)]
        tcp.set_nonblocking(true)?;
        // Bounded as a request is: one deadline for the whole handshake.
        let deadline = std::time::Instant::now().checked_add(timeout);
        while conn.is_handshaking() {
            conn.complete_io(&mut Bounded(&tcp, deadline))?;
        }
        Ok(Self(rustls::StreamOwned::new(conn, tcp), None))
    }

    /// The TCP socket underneath.
    pub fn get_ref(&self) -> &TcpStream {
        &self.0.sock
    }

    /// The rustls connection state (negotiated version, cipher suite, …).
    pub fn connection(&self) -> &rustls::ClientConnection {
        &self.0.conn
    }
}

impl embedded_io_async::ErrorType for StdTlsStream {
    type Error = io::Error;
}

impl StdTlsStream {
    /// Reads TLS records into rustls until it has plaintext or the peer's
    /// `close_notify` (`Ok(true)`; end of stream too), or a read gives up
    /// with a timeout (`Ok(false)`; nothing is lost, it stays in rustls):
    /// waiting up to `deadline` when `wait`, else taking only what has
    /// arrived (the socket is non-blocking). The one record loop of
    /// [`read`](embedded_io_async::Read::read), `wait_readable` and
    /// `HostStream::peer_closed`.
    pub(crate) fn fill(
        &mut self,
        wait: bool,
        deadline: Option<std::time::Instant>,
    ) -> io::Result<bool> {
        loop {
            let state = self.0.conn.process_new_packets().map_err(tls_io_error)?;
            if state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() {
                return Ok(true);
            }
            let read = if wait {
                self.0.conn.read_tls(&mut Bounded(&self.0.sock, deadline))
            } else {
                self.0.conn.read_tls(&mut self.0.sock)
            };
            match read {
                Ok(0) => return Ok(true),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends every TLS record rustls has queued, within the deadline.
    fn push(&mut self) -> io::Result<()> {
        while self.0.conn.wants_write() {
            self.0.conn.write_tls(&mut Bounded(&self.0.sock, self.1))?;
        }
        Ok(())
    }
}

impl embedded_io_async::Read for StdTlsStream {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match io::Read::read(&mut self.0.conn.reader(), buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                r => return r,
            }
            // Nothing decrypted yet: more from the socket, within the
            // request's deadline.
            if !self.fill(true, self.1)? {
                return Err(deadline_passed());
            }
        }
    }
}

impl embedded_io_async::Write for StdTlsStream {
    async fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = io::Write::write(&mut self.0.conn.writer(), buf)?;
        self.push()?;
        Ok(n)
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.push()
    }
}

// ---- tokio ---------------------------------------------------------------------

/// The TLS transport of the tokio adapter's `connect_tls`: a rustls client
/// stream over tokio TCP, seen through `embedded_io_async`.
#[cfg(feature = "tokio")]
pub type TokioTlsStream = embedded_io_adapters::tokio_1::FromTokio<
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
>;

/// The TLS handshake over a tokio stream, verified by `tls` (the caller
/// bounds it with the connect timeout).
#[cfg(feature = "tokio")]
pub(crate) async fn tokio_handshake(
    stream: tokio::net::TcpStream,
    tls: &RustlsConnector,
) -> Result<TokioTlsStream, crate::Error<io::Error>> {
    let connector = tokio_rustls::TlsConnector::from(tls.config().clone());
    let stream = connector.connect(tls.server_name().clone(), stream).await;
    Ok(embedded_io_adapters::tokio_1::FromTokio::new(
        stream.map_err(crate::Error::Io)?,
    ))
}
