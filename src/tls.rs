//! TLS 1.3 over any [`embedded_io_async`] transport, with [embedded-tls]
//! (feature `tls`): `no_std`, no heap, the same code on firmware, in WASI
//! and on hosts.
//!
//! ```no_run
//! # async fn demo<S, R>(socket: S, rng: R, ca_der: &[u8]) -> Result<(), dflockd_client::tls::TlsError>
//! # where S: embedded_io_async::Read + embedded_io_async::Write, R: dflockd_client::tls::CryptoRngCore {
//! use dflockd_client::Connection;
//! use dflockd_client::tls::{self, TlsVerify};
//!
//! let mut read_buf = [0u8; tls::READ_RECORD_BUFFER];
//! let mut write_buf = [0u8; tls::WRITE_RECORD_BUFFER];
//! let verify = TlsVerify::Ca { ca_der, server_name: "locks.example.com" };
//! let stream = tls::handshake(socket, &mut read_buf, &mut write_buf, verify, rng).await?;
//! let mut conn: Connection<_, 256> = Connection::new(stream);
//! # let _ = &mut conn; Ok(()) }
//! ```
//!
//! # Verification is explicit
//!
//! embedded-tls silently skips certificate checks when no verifier is
//! installed. Here the mode is a value, [`TlsVerify`]: [`TlsVerify::Ca`]
//! always installs the verifier, and turning checks off is only possible by
//! writing [`TlsVerify::Insecure`]. On top of embedded-tls, the handshake
//! fails unless the server actually presented a certificate and proved
//! possession of its key (embedded-tls alone would accept a handshake in
//! which the server skipped both messages).
//!
//! What [`TlsVerify::Ca`] checks: every certificate of the chain the server
//! sends is signed by the next one, ending at the CA you pass (ECDSA P-256
//! with SHA-256; an intermediate CA works when the server sends it); the leaf
//! certificate names `server_name` (DNS names in the subject alternative
//! names, at most 3 of them, else the common name; `*.` wildcards; names up
//! to 64 bytes); and the server's `CertificateVerify` signature with the
//! leaf's key (ECDSA P-256).
//!
//! What it does **not** check: the validity period unless a clock is given
//! ([`handshake_with_clock`]; firmware often has no trusted time — the
//! default [`NoClock`] skips it; hosts and WASI 0.2 guests have a trusted
//! wall clock and should pass `SystemClock`, see below); basic constraints, key usage, extended key
//! usage and path length of the chain (any certificate issued by the CA can
//! act as an issuer); revocation (no CRL or OCSP); IP address names. RSA and
//! P-384 certificates are not supported (the server certificate, its chain
//! and the CA must be ECDSA P-256). For full X.509 validation on hosts use
//! the `rustls` feature instead.
//!
//! # The clock: `SystemClock` on hosts and in WASI guests
//!
//! [`handshake`] cannot tell an expired (or not yet valid) certificate from a
//! current one. Where the wall clock can be trusted, use
//! `handshake_with_clock::<SystemClock, _, _>(..)` instead: `SystemClock`
//! reads `std::time::SystemTime` and exists with feature `std` (hosts) and
//! with feature `wasi` on `wasm32-wasip2`, where it is the host's
//! `wasi:clocks/wall-clock`. A WASI guest should always use it; the
//! examples-wasi command does, and its CI run checks that an expired server
//! certificate is refused. Firmware passes its own [`TlsClock`] (an RTC set
//! from a trusted source) or, without trusted time, uses [`handshake`].
//!
//! # RAM
//!
//! The record buffers are the caller's:
//!
//! * read: [`READ_RECORD_BUFFER`] = 16 640 bytes, a full TLS record
//!   (2^14 bytes of plaintext plus 256 of overhead). The Go server does not
//!   negotiate the max-fragment-length extension, so it may send full 16 KiB
//!   records (its certificate message during the handshake, and a large
//!   `stats` reply); a smaller buffer fails with
//!   [`TlsError::InsufficientSpace`] when that happens.
//! * write: [`WRITE_RECORD_BUFFER`] = 1 KiB is plenty: it needs
//!   `TLS_RECORD_OVERHEAD` (128) bytes more than the longest request you
//!   want in one record; longer writes (a long auth token) are split.
//!
//! The handshake future holds a copy of the server's certificate chain
//! ([`CERT_BUFFER`] = 4 KiB) and the key schedule: about 5 KiB more while it
//! runs. The established stream keeps about 1 KiB of key state besides the
//! two buffers.
//!
//! # Interoperability
//!
//! embedded-tls speaks TLS 1.3 only, with cipher suite
//! `TLS_AES_128_GCM_SHA256` and key-exchange group `secp256r1` (P-256
//! ECDHE). Go's `crypto/tls` (the real dflockd with `--tls-cert`/`--tls-key`)
//! supports both by default, so no server setting is needed as long as its
//! certificate key is ECDSA P-256.
//!
//! # What embedded-tls does not handle
//!
//! A post-handshake `KeyUpdate` from the server panics inside embedded-tls
//! (Go does not send one unprompted); session tickets are ignored (no
//! resumption); there is no client certificate support here.
//!
//! [embedded-tls]: https://docs.rs/embedded-tls/0.19

use embedded_io_async::{ErrorType, Read, Write};
use embedded_tls::pki::CertVerifier;
use embedded_tls::{
    Aes128GcmSha256, CertificateRef, CertificateVerifyRef, CryptoProvider, TlsConfig,
    TlsConnection, TlsContext, TlsVerifier,
};

pub use embedded_tls::{Certificate, CryptoRng, CryptoRngCore, NoClock, TlsClock, TlsError};

/// Read record buffer that fits any TLS record: 2^14 bytes of plaintext plus
/// 256 bytes of record overhead.
pub const READ_RECORD_BUFFER: usize = 16_640;

/// Recommended write record buffer: room for any dflockd request except long
/// auth tokens and signal payloads, which are split into several records.
pub const WRITE_RECORD_BUFFER: usize = 1024;

/// Bytes reserved during the handshake for the server's certificate chain.
pub const CERT_BUFFER: usize = 4096;

/// The only cipher suite offered: `TLS_AES_128_GCM_SHA256`.
pub const CIPHER_SUITE: &str = "TLS_AES_128_GCM_SHA256";

/// The only key-exchange group offered: `secp256r1` (P-256 ECDHE).
pub const KEY_EXCHANGE_GROUP: &str = "secp256r1";

/// How the server's certificate is checked.
///
/// There is no `Default`: the normal value is [`TlsVerify::Ca`], and the only
/// way to skip verification is to name [`TlsVerify::Insecure`].
#[derive(Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TlsVerify<'a> {
    /// Verify the server's chain up to this CA certificate and that the
    /// leaf certificate names `server_name` (also sent as SNI). See the
    /// module docs for exactly what is and is not checked.
    Ca {
        /// The CA (or self-signed server) certificate, DER encoded.
        ca_der: &'a [u8],
        /// The DNS name the certificate must carry (at most 64 bytes).
        server_name: &'a str,
    },
    /// **Dangerous**: no verification at all. Anyone on the path can read
    /// and change the traffic, auth token included. For tests and for
    /// networks whose links are already authenticated by other means.
    Insecure,
}

impl core::fmt::Debug for TlsVerify<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TlsVerify::Ca {
                ca_der,
                server_name,
            } => f
                .debug_struct("Ca")
                .field("ca_der_len", &ca_der.len())
                .field("server_name", server_name)
                .finish(),
            TlsVerify::Insecure => f.write_str("Insecure"),
        }
    }
}

/// The verifier we always install for [`TlsVerify::Ca`]: embedded-tls'
/// chain and name checks, plus the bookkeeping that proves both checks ran.
struct Checked<'a, C: TlsClock> {
    inner: CertVerifier<'a, Aes128GcmSha256, C, CERT_BUFFER>,
    certificate_ok: bool,
    signature_ok: bool,
}

impl<C: TlsClock> TlsVerifier<Aes128GcmSha256> for Checked<'_, C> {
    fn set_hostname_verification(&mut self, hostname: &str) -> Result<(), TlsError> {
        self.inner.set_hostname_verification(hostname)
    }

    fn verify_certificate(
        &mut self,
        transcript: &<Aes128GcmSha256 as embedded_tls::TlsCipherSuite>::Hash,
        cert: CertificateRef,
    ) -> Result<(), TlsError> {
        if self.certificate_ok || cert.entries.is_empty() {
            return Err(TlsError::InvalidCertificate);
        }
        self.inner.verify_certificate(transcript, cert)?;
        self.certificate_ok = true;
        Ok(())
    }

    fn verify_signature(&mut self, verify: CertificateVerifyRef) -> Result<(), TlsError> {
        // embedded-tls' verifier panics on a CertificateVerify that comes
        // without a verified Certificate first: refuse it here.
        if !self.certificate_ok || self.signature_ok {
            return Err(TlsError::InvalidHandshake);
        }
        self.inner.verify_signature(verify)?;
        self.signature_ok = true;
        Ok(())
    }
}

/// Our crypto provider: the caller's RNG and, unless insecure, the verifier.
struct Provider<'a, R, C: TlsClock> {
    rng: R,
    verifier: Option<Checked<'a, C>>,
}

impl<R: CryptoRngCore, C: TlsClock> CryptoProvider for Provider<'_, R, C> {
    type CipherSuite = Aes128GcmSha256;
    type Signature = &'static [u8];

    fn rng(&mut self) -> impl CryptoRngCore {
        &mut self.rng
    }

    fn verifier(&mut self) -> Result<&mut impl TlsVerifier<Aes128GcmSha256>, TlsError> {
        self.verifier.as_mut().ok_or(TlsError::Unimplemented)
    }
}

/// Performs the TLS 1.3 handshake over `transport` and returns the
/// encrypted stream, ready for [`Connection::new`](crate::Connection::new).
///
/// `read_record_buf` should be [`READ_RECORD_BUFFER`] bytes and
/// `write_record_buf` about [`WRITE_RECORD_BUFFER`] (see the module docs).
/// `rng` must be a cryptographically secure generator (on hosts
/// `rand_core::OsRng` with its `getrandom` feature; on firmware the chip's
/// TRNG). The certificate's validity period is not checked; use
/// [`handshake_with_clock`] when a trusted clock exists (hosts and WASI 0.2
/// guests: `SystemClock`).
///
/// Errors: [`TlsError::Io`] from the transport (EOF is
/// [`TlsError::IoError`]), [`TlsError::InvalidCertificate`] /
/// [`TlsError::InvalidSignature`] when verification fails or the server
/// skipped it, [`TlsError::HandshakeAborted`] when the server sent an alert,
/// parse errors (for example [`TlsError::UnknownContentType`]) when the peer
/// does not speak TLS.
///
/// This function sets no deadline: wrap it in your runtime's timeout, as the
/// host adapters do, so that a silent peer cannot hang it.
///
/// # Cancel safety
///
/// Not cancel-safe: a dropped handshake leaves the transport mid-handshake;
/// close it.
pub async fn handshake<'b, T, R>(
    transport: T,
    read_record_buf: &'b mut [u8],
    write_record_buf: &'b mut [u8],
    verify: TlsVerify<'_>,
    rng: R,
) -> Result<TlsStream<'b, T>, TlsError>
where
    T: Read + Write + 'b,
    R: CryptoRngCore,
{
    handshake_with_clock::<NoClock, T, R>(transport, read_record_buf, write_record_buf, verify, rng)
        .await
}

/// [`handshake`] that also checks every certificate's validity period
/// against `C::now()` (seconds since the Unix epoch; `None` skips the
/// check).
#[cfg_attr(
    any(
        feature = "std",
        all(feature = "wasi", target_os = "wasi", target_env = "p2")
    ),
    doc = "On hosts and in WASI 0.2 guests, [`SystemClock`] reads the system wall clock: use it there."
)]
#[cfg_attr(
    not(any(
        feature = "std",
        all(feature = "wasi", target_os = "wasi", target_env = "p2")
    )),
    doc = "On hosts (feature `std`) and in WASI 0.2 guests (feature `wasi` on `wasm32-wasip2`), `SystemClock` reads the system wall clock: use it there."
)]
///
/// # Cancel safety
///
/// Not cancel-safe, like [`handshake`].
pub async fn handshake_with_clock<'b, C, T, R>(
    transport: T,
    read_record_buf: &'b mut [u8],
    write_record_buf: &'b mut [u8],
    verify: TlsVerify<'_>,
    rng: R,
) -> Result<TlsStream<'b, T>, TlsError>
where
    C: TlsClock,
    T: Read + Write + 'b,
    R: CryptoRngCore,
{
    let mut config = TlsConfig::new();
    let mut provider: Provider<'_, R, C> = Provider {
        rng,
        verifier: None,
    };
    match verify {
        TlsVerify::Ca {
            ca_der,
            server_name,
        } => {
            if server_name.is_empty() {
                return Err(TlsError::InvalidCertificate);
            }
            config = config.with_server_name(server_name);
            provider.verifier = Some(Checked {
                inner: CertVerifier::new(Certificate::X509(ca_der)),
                certificate_ok: false,
                signature_ok: false,
            });
            debug!("tls: handshake, verifying against the CA");
        }
        TlsVerify::Insecure => {
            warn!("tls: handshake WITHOUT certificate verification (TlsVerify::Insecure)");
        }
    }
    let mut conn = TlsConnection::new(transport, read_record_buf, write_record_buf);
    conn.open(TlsContext::new(&config, &mut provider)).await?;
    if let Some(v) = &provider.verifier
        && !(v.certificate_ok && v.signature_ok)
    {
        warn!("tls: server finished the handshake without proving its certificate");
        return Err(TlsError::InvalidCertificate);
    }
    Ok(TlsStream { conn })
}

/// An established TLS stream: `embedded_io_async::{Read, Write}` for a
/// [`Connection`](crate::Connection).
///
/// A close by the server (`close_notify` or end of stream) reads as 0 bytes,
/// so the connection reports [`Error::Disconnected`](crate::Error::Disconnected).
pub struct TlsStream<'b, T: Read + Write + 'b> {
    conn: TlsConnection<'b, T, Aes128GcmSha256>,
}

impl<'b, T: Read + Write + 'b> TlsStream<'b, T> {
    /// Sends `close_notify` and gives the transport back.
    ///
    /// # Cancel safety
    ///
    /// Not cancel-safe: a dropped close may have sent part of the alert.
    pub async fn close(self) -> Result<T, (T, TlsError)> {
        self.conn.close().await
    }
}

impl<'b, T: Read + Write + 'b> core::fmt::Debug for TlsStream<'b, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TlsStream")
            .field("cipher_suite", &CIPHER_SUITE)
            .finish_non_exhaustive()
    }
}

impl<'b, T: Read + Write + 'b> ErrorType for TlsStream<'b, T> {
    type Error = TlsError;
}

impl<'b, T: Read + Write + 'b> Read for TlsStream<'b, T> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, TlsError> {
        match self.conn.read(buf).await {
            Err(TlsError::ConnectionClosed | TlsError::IoError) => Ok(0),
            r => r,
        }
    }
}

impl<'b, T: Read + Write + 'b> Write for TlsStream<'b, T> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, TlsError> {
        self.conn.write(buf).await
    }

    async fn flush(&mut self) -> Result<(), TlsError> {
        self.conn.flush().await
    }
}

/// [`TlsClock`] over the system wall clock (`std::time::SystemTime`), for
/// [`handshake_with_clock`] on hosts (feature `std`) and in WASI 0.2 guests
/// (feature `wasi` on `wasm32-wasip2`: `wasi:clocks/wall-clock`). A clock set
/// before 1970 reads as `None` (period not checked).
#[cfg(any(
    feature = "std",
    all(feature = "wasi", target_os = "wasi", target_env = "p2")
))]
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

#[cfg(any(
    feature = "std",
    all(feature = "wasi", target_os = "wasi", target_env = "p2")
))]
impl TlsClock for SystemClock {
    fn now() -> Option<u64> {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs())
    }
}
