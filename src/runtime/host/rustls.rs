//! Host TLS with [rustls] (feature `rustls`): full X.509 validation of the
//! server's chain, validity period and name against a root store, for the
//! tokio ([`connect_tls`](crate::tokio::connect_tls)) and blocking
//! ([`BlockingConnection::connect_tls`](crate::blocking::BlockingConnection::connect_tls))
//! adapters, and for the high-level host APIs: the lock builder's
//! [`tls`](crate::tokio::LockBuilder::tls) and the signal connections'
//! `connect_tls` ([tokio](crate::tokio::SignalConn::connect_tls),
//! [blocking](crate::blocking::SignalConn::connect_tls)).
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
use std::sync::Arc;

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

fn server_name(name: &str) -> Result<ServerName<'static>, ConfigError> {
    ServerName::try_from(name.to_owned())
        .map_err(|_| ConfigError::new("server_name", "must be a DNS name or an IP address"))
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
        Ok(Self {
            config,
            server_name: self::server_name(server_name)?,
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
