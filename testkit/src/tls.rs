//! TLS for the test server (`--tls-cert` / `--tls-key`), with rustls and
//! its `ring` provider, as the real server does with Go's `crypto/tls`.
//!
//! The server offers TLS 1.3 and 1.2 with rustls' default cipher suites
//! (`TLS_AES_128_GCM_SHA256` among them) and key-exchange groups (X25519,
//! secp256r1, secp384r1), so both a rustls client and an embedded-tls client
//! (TLS 1.3, `TLS_AES_128_GCM_SHA256`, secp256r1 only) can connect. The
//! certificate file may hold a chain (leaf first); the key file holds one
//! PKCS#8, PKCS#1 or SEC1 private key, all PEM.

use std::io;
use std::path::Path;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

use crate::config::Config;

fn invalid(what: &str, path: &Path, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what} {}: {e}", path.display()),
    )
}

/// Builds the acceptor when the configuration names a certificate and key.
pub(crate) fn acceptor(cfg: &Config) -> io::Result<Option<TlsAcceptor>> {
    let (Some(cert_path), Some(key_path)) = (&cfg.tls_cert, &cfg.tls_key) else {
        return Ok(None);
    };
    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid("reading TLS certificate", cert_path, e))?;
    if certs.is_empty() {
        return Err(invalid(
            "reading TLS certificate",
            cert_path,
            "no certificate found",
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| invalid("reading TLS key", key_path, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| io::Error::other(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid("TLS certificate and key do not fit", cert_path, e))?;
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// A TLS client for the testkit's own `stats` requests to a real server it
/// started on loopback: the certificate is not verified (the peer is our own
/// child process, and the test's CA is not known here). Never used for a
/// client under test.
pub(crate) fn loopback_client() -> io::Result<rustls::ClientConnection> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| io::Error::other(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost")
        .map_err(|e| io::Error::other(e.to_string()))?;
    rustls::ClientConnection::new(Arc::new(config), name).map_err(io::Error::other)
}

/// Accepts any certificate, but still checks the handshake signatures.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
