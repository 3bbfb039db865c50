//! Everything dflock takes from `dflockd-client` is imported here and only
//! here, so a move of the library's paths is a change to this file alone.
//! Also: the connection settings every command shares ([`Target`]), TLS,
//! and the protocol-generation probe.

use std::io;
use std::time::{Duration, Instant};

pub use dflockd_client::blocking::{AuthToken, DEFAULT_SERVER, LockBuilder};
pub use dflockd_client::blocking::{
    BlockingConnection, BlockingTlsConnection, BlockingTransport, ConnectOptions,
};
pub use dflockd_client::blocking::{DistributedLock, DistributedSemaphore, LeaseGuard};
pub use dflockd_client::blocking::{MAX_SIGNAL_LINE, Reconnect, SignalEvent, SignalOptions};
pub use dflockd_client::blocking::{SignalConn, emit, emit_tls};
pub use dflockd_client::protocol::validate;
pub use dflockd_client::routing::{Crc32Mod, route};
pub use dflockd_client::stats::Stats;
pub use dflockd_client::tls_rustls::{RustlsConnector, rustls_error};
pub use dflockd_client::{ConfigError, Error};

/// The error of the blocking host API.
pub type ClientError = Error<io::Error>;

use crate::cli::Global;
use crate::exit::Failure;

/// Applies a [`Target`]'s settings to a lock or semaphore builder.
macro_rules! apply {
    ($target:expr, $builder:expr) => {{
        let t: &Target = $target;
        let mut b = $builder
            .servers(t.servers.iter().cloned())
            .connect_timeout(t.connect.connect_timeout)
            .io_timeout(t.connect.io_timeout);
        if let Some(token) = &t.connect.auth_token {
            b = b.auth_token(token.clone());
        }
        match &t.tls {
            Some(tls) if tls.per_server => b.tls_per_server(tls.connector.clone()),
            Some(tls) => b.tls(tls.connector.clone()),
            None => b,
        }
    }};
}

/// Where and how to connect: the servers, the connect options (with the
/// auth token) and TLS.
pub struct Target {
    /// The servers, in the order given (routing depends on it).
    pub servers: Vec<String>,
    /// Timeouts and the auth token.
    pub connect: ConnectOptions,
    tls: Option<Tls>,
}

struct Tls {
    connector: RustlsConnector,
    /// Check each server's certificate against its own host name.
    per_server: bool,
}

impl Target {
    /// The settings from the common options and the environment; invalid
    /// ones are usage errors (nothing is sent).
    pub fn from_args(g: &Global) -> Result<Self, Failure> {
        let mut servers: Vec<String> = g
            .servers
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        if servers.is_empty() {
            servers.push(DEFAULT_SERVER.to_owned());
        }
        for s in &servers {
            check_addr(s).map_err(Failure::usage)?;
        }
        let auth_token = auth_token(g)?;
        let connect = ConnectOptions {
            connect_timeout: g.connect_timeout.max(Duration::from_millis(1)),
            io_timeout: g.io_timeout.max(Duration::from_millis(1)),
            auth_token,
        };
        let tls = if g.tls || g.ca.is_some() || g.insecure_skip_verify {
            let name = match &g.server_name {
                Some(n) => n.clone(),
                None => host_of(&servers[0]).to_owned(),
            };
            let connector = tls_connector(g, &name)?;
            Some(Tls {
                connector,
                per_server: g.server_name.is_none(),
            })
        } else {
            None
        };
        Ok(Self {
            servers,
            connect,
            tls,
        })
    }

    /// The server that owns `key` (CRC-32 modulo the number of servers).
    pub fn route(&self, key: &str) -> &str {
        let list: Vec<&str> = self.servers.iter().map(String::as_str).collect();
        // The list is never empty and Crc32Mod stays in range.
        let i = route(&Crc32Mod, key, &list).unwrap_or(0);
        &self.servers[i.min(self.servers.len() - 1)]
    }

    /// The TLS connector for `addr`, when TLS is on.
    pub fn tls_for(&self, addr: &str) -> Result<Option<RustlsConnector>, ConfigError> {
        match &self.tls {
            None => Ok(None),
            Some(t) if t.per_server => t.connector.with_server_name(host_of(addr)).map(Some),
            Some(t) => Ok(Some(t.connector.clone())),
        }
    }

    /// A lock builder with the servers, auth, TLS and timeouts applied.
    pub fn lock(&self, key: &str) -> LockBuilder<DistributedLock> {
        apply!(self, DistributedLock::builder(key))
    }

    /// A semaphore builder with the servers, auth, TLS and timeouts applied.
    pub fn semaphore(&self, key: &str, limit: u32) -> LockBuilder<DistributedSemaphore> {
        apply!(self, DistributedSemaphore::builder(key, limit))
    }

    /// A request/reply connection to `addr` (plain or TLS, authenticated).
    pub fn open(&self, addr: &str) -> Result<Box<dyn Conn>, ClientError> {
        match self.tls_for(addr).map_err(Error::Config)? {
            None => Ok(Box::new(BlockingConnection::<1024, 0>::connect(
                addr,
                &self.connect,
            )?)),
            Some(tls) => Ok(Box::new(BlockingTlsConnection::<1024, 0>::connect_tls(
                addr,
                &self.connect,
                &tls,
            )?)),
        }
    }
}

/// `HOST:PORT` (or `[v6]:PORT`) with a numeric port.
fn check_addr(addr: &str) -> Result<(), String> {
    let bad = || format!("invalid server `{addr}`: expected HOST:PORT");
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!(
            "invalid server `{addr}`: write IPv6 addresses as [ADDR]:PORT"
        ));
    }
    Ok(())
}

/// The host part of `host:port` or `[v6]:port`.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// The auth token from `--auth-token-file` or `DFLOCKD_AUTH_TOKEN`.
/// Errors never include the token.
fn auth_token(g: &Global) -> Result<Option<AuthToken>, Failure> {
    let token = match &g.auth_token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Failure::usage(format!("--auth-token-file {}: {e}", path.display()))
            })?;
            Some(text.trim_end().to_owned())
        }
        None => std::env::var("DFLOCKD_AUTH_TOKEN").ok(),
    };
    match token {
        None => Ok(None),
        Some(t) => {
            validate::auth_token(&t).map_err(Failure::usage)?;
            Ok(Some(AuthToken::new(t)))
        }
    }
}

/// The TLS connector for `name` from `--ca` / `--insecure-skip-verify`,
/// else Mozilla's roots.
fn tls_connector(g: &Global, name: &str) -> Result<RustlsConnector, Failure> {
    let bad_name = |e: ConfigError| Failure::usage(format!("--server-name `{name}`: {e}"));
    if g.insecure_skip_verify {
        let config = insecure::config()
            .map_err(|e| Failure::new(crate::exit::FAILURE, format!("TLS setup: {e}")))?;
        return RustlsConnector::with_config(config, name).map_err(bad_name);
    }
    match &g.ca {
        Some(path) => {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            let ca_error =
                |e: &dyn std::fmt::Display| Failure::usage(format!("--ca {}: {e}", path.display()));
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| ca_error(&e))? {
                let cert = cert.map_err(|e| ca_error(&e))?;
                roots.add(cert).map_err(|e| ca_error(&e))?;
            }
            if roots.is_empty() {
                return Err(ca_error(&"no certificate in the file"));
            }
            RustlsConnector::new(roots, name).map_err(bad_name)
        }
        None => RustlsConnector::webpki_roots(name).map_err(bad_name),
    }
}

/// `--insecure-skip-verify`: a verifier that accepts any certificate (the
/// handshake signatures are still checked).
mod insecure {
    use std::sync::Arc;

    use rustls::DigitallySignedStruct;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{CryptoProvider, ring};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    #[derive(Debug)]
    struct AcceptAny(Arc<CryptoProvider>);

    impl ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
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

    /// A client configuration that does not verify the server.
    pub fn config() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
        let provider = Arc::new(ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        Ok(Arc::new(
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
                .with_no_client_auth(),
        ))
    }
}

/// The requests `ping` and `stats` need, over a plain or TLS connection.
pub trait Conn {
    /// `ping`.
    fn ping(&mut self) -> Result<(), ClientError>;
    /// `unlisten` (a harmless probe for signal support).
    fn unlisten(&mut self, pattern: &str) -> Result<(), ClientError>;
    /// `stats` into `out`.
    fn stats<'b>(&mut self, out: &'b mut [u8]) -> Result<&'b str, ClientError>;
}

impl<const N: usize, const P: usize, T: BlockingTransport> Conn for BlockingConnection<N, P, T> {
    fn ping(&mut self) -> Result<(), ClientError> {
        BlockingConnection::ping(self)
    }
    fn unlisten(&mut self, pattern: &str) -> Result<(), ClientError> {
        BlockingConnection::unlisten(self, pattern, None)
    }
    fn stats<'b>(&mut self, out: &'b mut [u8]) -> Result<&'b str, ClientError> {
        BlockingConnection::stats(self, out)
    }
}

/// What the server speaks, as far as it can be told without side effects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// `ping` answered `error`: v1.10 or older (no signals, random tokens).
    V1Old,
    /// `ping` and signals: v1.14 to v1.16 (random tokens).
    V1Signals,
    /// `ping` but no signals: v2 (fencing tokens from v2.1.0).
    V2,
}

impl Generation {
    /// Whether lease tokens carry a fence (v2; v2.0.0 is not told apart
    /// from v2.1+, see the README).
    pub fn has_fences(self) -> bool {
        self == Self::V2
    }

    /// A short description for `dflock ping`.
    pub fn describe(self) -> &'static str {
        match self {
            Self::V1Old => "v1.10 or older (no ping, no signals)",
            Self::V1Signals => "v1.14-v1.16 (signals, ping; no fencing tokens)",
            Self::V2 => "v2 (fencing tokens, no signals)",
        }
    }
}

/// Pattern of the probe's `unlisten`: valid, and never subscribed.
const PROBE_PATTERN: &str = "dflock.generation-probe";

/// Tells the generation: `ping` (v1.14+), then `unlisten` of a pattern
/// nobody listens on (`ok` on signal-capable servers, `error` on v2).
/// Returns the round-trip time of the `ping` too.
pub fn probe(conn: &mut dyn Conn) -> Result<(Duration, Generation), ClientError> {
    let start = Instant::now();
    let pinged = conn.ping();
    let rtt = start.elapsed();
    match pinged {
        Ok(()) => {}
        Err(Error::Server(_)) => return Ok((rtt, Generation::V1Old)),
        Err(e) => return Err(e),
    }
    match conn.unlisten(PROBE_PATTERN) {
        Ok(()) => Ok((rtt, Generation::V1Signals)),
        Err(Error::Server(_) | Error::Disconnected) => Ok((rtt, Generation::V2)),
        Err(e) => Err(e),
    }
}

/// Reads the stats JSON of one connection into a buffer that grows (up to
/// 64 MiB) when the reply does not fit; reconnects for each attempt since
/// a reply that did not fit leaves the connection unusable.
pub fn read_stats(target: &Target, addr: &str) -> Result<String, ClientError> {
    const LIMIT: usize = 64 << 20;
    let mut size = 64 << 10;
    loop {
        let mut conn = target.open(addr)?;
        let mut buf = vec![0u8; size];
        match conn.stats(&mut buf) {
            Ok(json) => return Ok(json.to_owned()),
            Err(Error::LineTooLong) if size < LIMIT => size = (size * 8).min(LIMIT),
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked() {
        assert!(check_addr("127.0.0.1:6388").is_ok());
        assert!(check_addr("locks.example.com:1").is_ok());
        assert!(check_addr("[::1]:6388").is_ok());
        assert!(check_addr("::1:6388").is_err());
        assert!(check_addr("localhost").is_err());
        assert!(check_addr(":6388").is_err());
        assert!(check_addr("host:99999").is_err());
    }

    #[test]
    fn host_part() {
        assert_eq!(host_of("a.example:1"), "a.example");
        assert_eq!(host_of("[::1]:6388"), "::1");
        assert_eq!(host_of("10.0.0.1:6388"), "10.0.0.1");
    }
}
