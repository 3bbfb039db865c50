//! Certificates for the TLS tests, generated at run time with rcgen (no key
//! is ever committed): a CA, and a server certificate for `localhost` signed
//! by it, written as PEM files for the test server.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    date_time_ymd,
};

/// Generous bound for anything that must not hang.
pub const T: Duration = Duration::from_secs(30);

/// The name in the server certificate.
pub const SERVER_NAME: &str = "localhost";

/// A CA that can issue server certificates.
pub struct Ca {
    pub der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

/// Server certificate and key on disk (removed on drop), and its CA.
pub struct ServerPki {
    pub ca_der: Vec<u8>,
    pub cert: PathBuf,
    pub key: PathBuf,
    dir: PathBuf,
}

impl Drop for ServerPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// Valid from yesterday-ish to far in the future.
    Current,
    /// Expired years ago.
    Expired,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2090, 1, 1);
        let cert = params.self_signed(&key).expect("CA cert");
        Ca {
            der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names`, written to a fresh temp directory.
    pub fn server(&self, names: &[&str], validity: Validity) -> ServerPki {
        let key = KeyPair::generate().expect("server key");
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "dflockd test server");
        match validity {
            Validity::Current => {
                params.not_before = date_time_ymd(2020, 1, 1);
                params.not_after = date_time_ymd(2090, 1, 1);
            }
            Validity::Expired => {
                params.not_before = date_time_ymd(2001, 1, 1);
                params.not_after = date_time_ymd(2002, 1, 1);
            }
        }
        let cert = params.signed_by(&key, &self.issuer).expect("server cert");
        let dir = temp_dir();
        let cert_path = dir.join("server.pem");
        let key_path = dir.join("server.key");
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        ServerPki {
            ca_der: self.der.clone(),
            cert: cert_path,
            key: key_path,
            dir,
        }
    }
}

/// A CA and a current `localhost` certificate.
pub fn pki() -> ServerPki {
    Ca::new("dflockd test CA").server(&[SERVER_NAME], Validity::Current)
}

fn temp_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "dflockd-tls-test-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
