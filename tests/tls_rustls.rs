//! TLS with rustls on the tokio and blocking adapters, against the testkit
//! (or a real server: `DFLOCKD_REAL_SERVER`) serving TLS from run-time
//! generated certificates.
#![cfg(all(feature = "rustls", feature = "tokio"))]

#[path = "support/generation.rs"]
mod generation;
mod tls_support;

use std::io;
use std::time::Duration;

use dflockd_client::blocking::{self, BlockingConnection};
use dflockd_client::tls_rustls::rustls::{CertificateError, ProtocolVersion};
use dflockd_client::tls_rustls::{RustlsConnector, rustls, rustls_error};
use dflockd_client::tokio::{self as rt, ConnectOptions, connect, connect_tls};
use dflockd_client::{Error, Kind};
use dflockd_testkit::TestServer;
use tls_support::{Ca, SERVER_NAME, T, Validity, pki};

fn cert_error(e: &Error<io::Error>) -> Option<&CertificateError> {
    match e {
        Error::Io(io) => match rustls_error(io)? {
            rustls::Error::InvalidCertificate(c) => Some(c),
            _ => None,
        },
        _ => None,
    }
}

async fn tls_server(p: &tls_support::ServerPki) -> TestServer {
    TestServer::builder()
        .tls(&p.cert, &p.key)
        .start()
        .await
        .expect("start TLS test server")
}

#[tokio::test]
async fn tokio_lock_over_tls() {
    let p = pki();
    let server = tls_server(&p).await;
    let tls = RustlsConnector::from_ca_der(&p.ca_der, SERVER_NAME).unwrap();
    let addr = server.addr().to_string();
    let mut a = connect_tls::<256, 0>(&addr, &ConnectOptions::default(), &tls)
        .await
        .expect("TLS connect");
    let mut b = connect_tls::<256, 0>(&addr, &ConnectOptions::default(), &tls)
        .await
        .expect("TLS connect");
    let (_, session) = a.transport_mut().inner().get_ref();
    assert_eq!(session.protocol_version(), Some(ProtocolVersion::TLSv1_3));

    let grant = a
        .acquire(Kind::Lock, "tls-key", 0, Some(30))
        .await
        .unwrap()
        .expect("granted");
    // The lock is really held server-side: another TLS client times out.
    assert!(
        b.acquire(Kind::Lock, "tls-key", 0, None)
            .await
            .unwrap()
            .is_none()
    );
    a.release(Kind::Lock, "tls-key", &grant.token)
        .await
        .unwrap();
    let g2 = b
        .acquire(Kind::Lock, "tls-key", 5, None)
        .await
        .unwrap()
        .expect("granted after release");
    b.release(Kind::Lock, "tls-key", &g2.token).await.unwrap();
}

#[test]
fn blocking_lock_over_tls() {
    let p = pki();
    let server = TestServer::builder()
        .tls(&p.cert, &p.key)
        .start_blocking()
        .unwrap();
    let tls = RustlsConnector::from_ca_der(&p.ca_der, SERVER_NAME).unwrap();
    let opts = blocking::ConnectOptions::default();
    let mut conn = BlockingConnection::<256, 0, _>::connect_tls(server.addr(), &opts, &tls)
        .expect("TLS connect");
    let sem = Kind::Semaphore { limit: 2 };
    let grant = conn
        .acquire(sem, "tls-sem", 0, None)
        .unwrap()
        .expect("granted");
    assert_eq!(server.stats().semaphores.len(), 1);
    conn.renew(sem, "tls-sem", &grant.token, Some(20)).unwrap();
    conn.release(sem, "tls-sem", &grant.token).unwrap();
    generation::assert_pong(&server, conn.ping());
}

#[test]
fn blocking_signals_over_tls() {
    let p = pki();
    let server = TestServer::builder()
        .tls(&p.cert, &p.key)
        .start_blocking()
        .unwrap();
    if !generation::has_signals(&server) {
        return;
    }
    let tls = RustlsConnector::from_ca_der(&p.ca_der, SERVER_NAME).unwrap();
    let opts = blocking::ConnectOptions::default();
    let mut sub = BlockingConnection::<256, 1024, _>::connect_tls(server.addr(), &opts, &tls)
        .expect("TLS connect");
    // Nothing there yet: the wait times out without losing the stream.
    assert!(
        sub.next_signal(Duration::from_millis(50))
            .unwrap()
            .is_none()
    );
    sub.listen("jobs.>", None).unwrap();
    let mut publ = BlockingConnection::<256, 0, _>::connect_tls(server.addr(), &opts, &tls)
        .expect("TLS connect");
    assert_eq!(publ.emit("jobs.a", "hello").unwrap(), 1);
    let sig = sub.next_signal(T).unwrap().expect("a signal");
    assert_eq!((sig.channel, sig.payload), ("jobs.a", "hello"));
    sub.ping().unwrap();
}

#[tokio::test]
async fn wrong_ca_is_refused() {
    let p = pki();
    let server = tls_server(&p).await;
    let other = Ca::new("some other CA");
    let tls = RustlsConnector::from_ca_der(&other.der, SERVER_NAME).unwrap();
    let e = connect_tls::<256, 0>(&server.addr().to_string(), &ConnectOptions::default(), &tls)
        .await
        .unwrap_err();
    assert!(
        matches!(cert_error(&e), Some(CertificateError::UnknownIssuer)),
        "{e:?}"
    );
    assert!(!e.is_recoverable());
}

#[tokio::test]
async fn wrong_host_name_is_refused() {
    let p = pki();
    let server = tls_server(&p).await;
    let tls = RustlsConnector::from_ca_der(&p.ca_der, "locks.example.com").unwrap();
    let e = connect_tls::<256, 0>(&server.addr().to_string(), &ConnectOptions::default(), &tls)
        .await
        .unwrap_err();
    assert!(
        matches!(
            cert_error(&e),
            Some(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            )
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn expired_certificate_is_refused() {
    let p = Ca::new("dflockd test CA").server(&[SERVER_NAME], Validity::Expired);
    let server = tls_server(&p).await;
    let tls = RustlsConnector::from_ca_der(&p.ca_der, SERVER_NAME).unwrap();
    let e = connect_tls::<256, 0>(&server.addr().to_string(), &ConnectOptions::default(), &tls)
        .await
        .unwrap_err();
    assert!(
        matches!(
            cert_error(&e),
            Some(CertificateError::Expired | CertificateError::ExpiredContext { .. })
        ),
        "{e:?}"
    );
}

#[test]
fn blocking_wrong_ca_is_refused() {
    let p = pki();
    let server = TestServer::builder()
        .tls(&p.cert, &p.key)
        .start_blocking()
        .unwrap();
    let other = Ca::new("some other CA");
    let tls = RustlsConnector::from_ca_der(&other.der, SERVER_NAME).unwrap();
    let e = BlockingConnection::<256, 0, _>::connect_tls(
        server.addr(),
        &blocking::ConnectOptions::default(),
        &tls,
    )
    .unwrap_err();
    assert!(
        matches!(cert_error(&e), Some(CertificateError::UnknownIssuer)),
        "{e:?}"
    );
}

#[tokio::test]
async fn plaintext_client_against_tls_server_fails_cleanly() {
    let p = pki();
    let server = tls_server(&p).await;
    let mut conn = connect::<256, 0>(&server.addr().to_string(), &ConnectOptions::default())
        .await
        .expect("TCP connects");
    // The server's TLS layer rejects the request bytes and closes: the
    // request fails at once instead of waiting for a reply line.
    let e = rt::timeout(T, conn.acquire(Kind::Lock, "k", 0, None))
        .await
        .unwrap_err();
    eprintln!("plaintext client vs TLS server: {e:?}");
    assert!(
        matches!(e, Error::Disconnected | Error::Io(_)),
        "expected a closed connection, got {e:?}"
    );
    assert!(!conn.is_usable());
}

#[test]
fn blocking_plaintext_client_against_tls_server_fails_cleanly() {
    let p = pki();
    let server = TestServer::builder()
        .tls(&p.cert, &p.key)
        .start_blocking()
        .unwrap();
    let opts = blocking::ConnectOptions {
        io_timeout: T,
        ..Default::default()
    };
    let mut conn = BlockingConnection::<256, 0>::connect(server.addr(), &opts).unwrap();
    let e = conn.acquire(Kind::Lock, "k", 0, None).unwrap_err();
    eprintln!("blocking plaintext client vs TLS server: {e:?}");
    assert!(
        matches!(e, Error::Disconnected | Error::Io(_)),
        "expected a closed connection, got {e:?}"
    );
}

#[tokio::test]
async fn tls_client_against_plaintext_server_fails_cleanly() {
    let server = TestServer::builder().start().await.unwrap();
    let p = pki();
    let tls = RustlsConnector::from_ca_der(&p.ca_der, SERVER_NAME).unwrap();
    let opts = ConnectOptions {
        connect_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    let e = rt::timeout(
        T,
        connect_tls::<256, 0>(&server.addr().to_string(), &opts, &tls),
    )
    .await
    .unwrap_err();
    eprintln!("TLS client vs plaintext server: {e:?}");
    // Either the server's `error` line is rejected as a corrupt TLS record,
    // or (if it is still waiting for a full request) the handshake deadline
    // passes: never a hang, never a usable connection.
    match &e {
        Error::Timeout | Error::Disconnected => {}
        Error::Io(io) => assert!(
            rustls_error(io).is_some()
                || matches!(
                    io.kind(),
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
                ),
            "{io:?}"
        ),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn blocking_tls_client_against_plaintext_server_fails_cleanly() {
    let server = TestServer::builder().start_blocking().unwrap();
    let p = pki();
    let tls = RustlsConnector::from_ca_der(&p.ca_der, SERVER_NAME).unwrap();
    let opts = blocking::ConnectOptions {
        connect_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    let e = BlockingConnection::<256, 0, _>::connect_tls(server.addr(), &opts, &tls).unwrap_err();
    eprintln!("blocking TLS client vs plaintext server: {e:?}");
    match &e {
        Error::Timeout | Error::Disconnected => {}
        Error::Io(io) => assert!(
            rustls_error(io).is_some()
                || matches!(
                    io.kind(),
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
                ),
            "{io:?}"
        ),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn connector_rejects_bad_input() {
    let e = RustlsConnector::from_ca_der(b"not a certificate", SERVER_NAME).unwrap_err();
    assert_eq!(e.option, "ca_der", "{e}");
    let p = pki();
    let e = RustlsConnector::from_ca_der(&p.ca_der, "not a name!").unwrap_err();
    assert_eq!(e.option, "server_name", "{e}");
    assert_eq!(
        e.to_string(),
        "invalid option `server_name`: must be a DNS name or an IP address"
    );
}
