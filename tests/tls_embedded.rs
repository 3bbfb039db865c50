//! The embedded-tls path (feature `tls`): the same `no_std` TLS code that
//! runs on firmware, here over tokio TCP and over the blocking std stream,
//! against the testkit serving TLS (rustls) from run-time certificates.
#![cfg(all(feature = "tls", feature = "tokio"))]

mod tls_support;

use std::time::Duration;

use dflockd_client::blocking::{StdStream, block_on};
use dflockd_client::tls::{self, SystemClock, TlsError, TlsVerify};
use dflockd_client::{Connection, Error, Kind};
use dflockd_testkit::TestServer;
use embedded_io_adapters::tokio_1::FromTokio;
use rand_core::OsRng;
use tls_support::{Ca, SERVER_NAME, T, Validity, pki};
use tokio::net::TcpStream;

struct Bufs {
    read: Vec<u8>,
    write: Vec<u8>,
}

fn bufs() -> Bufs {
    Bufs {
        read: vec![0; tls::READ_RECORD_BUFFER],
        write: vec![0; tls::WRITE_RECORD_BUFFER],
    }
}

async fn tcp(server: &TestServer) -> FromTokio<TcpStream> {
    let s = TcpStream::connect(server.addr())
        .await
        .expect("TCP connect");
    s.set_nodelay(true).unwrap();
    FromTokio::new(s)
}

async fn tls_server(p: &tls_support::ServerPki) -> TestServer {
    TestServer::builder()
        .tls(&p.cert, &p.key)
        .start()
        .await
        .expect("start TLS test server")
}

fn ca<'a>(der: &'a [u8], server_name: &'a str) -> TlsVerify<'a> {
    TlsVerify::Ca {
        ca_der: der,
        server_name,
    }
}

#[tokio::test]
async fn tokio_lock_over_embedded_tls() {
    let p = pki();
    let server = tls_server(&p).await;
    let (mut b1, mut b2) = (bufs(), bufs());
    let s1 = tls::handshake(
        tcp(&server).await,
        &mut b1.read,
        &mut b1.write,
        ca(&p.ca_der, SERVER_NAME),
        OsRng,
    )
    .await
    .expect("handshake");
    let s2 = tls::handshake_with_clock::<SystemClock, _, _>(
        tcp(&server).await,
        &mut b2.read,
        &mut b2.write,
        ca(&p.ca_der, SERVER_NAME),
        OsRng,
    )
    .await
    .expect("handshake with clock");
    let mut a: Connection<_, 256> = Connection::new(s1);
    let mut b: Connection<_, 256> = Connection::new(s2);
    let grant = a
        .acquire(Kind::Lock, "etls", 0, Some(30))
        .await
        .unwrap()
        .expect("granted");
    assert!(
        b.acquire(Kind::Lock, "etls", 0, None)
            .await
            .unwrap()
            .is_none()
    );
    // A long request line (well over the 1 KiB write record buffer) is
    // split into several records.
    let long_key = "k".repeat(250);
    let g = b
        .acquire(Kind::Lock, &long_key, 0, None)
        .await
        .unwrap()
        .expect("granted");
    b.release(Kind::Lock, &long_key, &g.token).await.unwrap();
    a.release(Kind::Lock, "etls", &grant.token).await.unwrap();
    let g2 = b
        .acquire(Kind::Lock, "etls", 5, None)
        .await
        .unwrap()
        .expect("granted after release");
    b.release(Kind::Lock, "etls", &g2.token).await.unwrap();

    // Closing the server side reads as a disconnect, not a TLS error.
    server.disconnect_all_clients();
    let e = tokio::time::timeout(T, a.ping()).await.expect("no hang");
    assert!(
        matches!(e, Err(Error::Disconnected | Error::Io(TlsError::Io(_)))),
        "{e:?}"
    );
}

#[test]
fn blocking_lock_over_embedded_tls() {
    let p = pki();
    let server = TestServer::builder()
        .tls(&p.cert, &p.key)
        .start_blocking()
        .unwrap();
    let sock = std::net::TcpStream::connect(server.addr()).unwrap();
    sock.set_read_timeout(Some(T)).unwrap();
    sock.set_write_timeout(Some(T)).unwrap();
    let mut b = bufs();
    let stream = block_on(tls::handshake(
        StdStream::new(sock),
        &mut b.read,
        &mut b.write,
        ca(&p.ca_der, SERVER_NAME),
        OsRng,
    ))
    .expect("handshake");
    let mut conn: Connection<_, 256> = Connection::new(stream);
    let grant = block_on(conn.acquire(Kind::Lock, "etls-blocking", 0, None))
        .unwrap()
        .expect("granted");
    assert_eq!(server.stats().locks.len(), 1);
    block_on(conn.release(Kind::Lock, "etls-blocking", &grant.token)).unwrap();
}

async fn handshake_err(server: &TestServer, verify: TlsVerify<'_>, clock: bool) -> TlsError {
    let mut b = bufs();
    let transport = tcp(server).await;
    let r = if clock {
        tls::handshake_with_clock::<SystemClock, _, _>(
            transport,
            &mut b.read,
            &mut b.write,
            verify,
            OsRng,
        )
        .await
    } else {
        tls::handshake(transport, &mut b.read, &mut b.write, verify, OsRng).await
    };
    match r {
        Ok(_) => panic!("handshake must fail"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn wrong_ca_is_refused() {
    let p = pki();
    let server = tls_server(&p).await;
    let other = Ca::new("some other CA");
    let e = handshake_err(&server, ca(&other.der, SERVER_NAME), false).await;
    assert!(matches!(e, TlsError::InvalidCertificate), "{e:?}");
}

#[tokio::test]
async fn wrong_host_name_is_refused() {
    let p = pki();
    let server = tls_server(&p).await;
    let e = handshake_err(&server, ca(&p.ca_der, "locks.example.com"), false).await;
    assert!(matches!(e, TlsError::InvalidCertificate), "{e:?}");
}

#[tokio::test]
async fn expired_certificate_is_refused_with_a_clock_only() {
    let p = Ca::new("dflockd test CA").server(&[SERVER_NAME], Validity::Expired);
    let server = tls_server(&p).await;
    let e = handshake_err(&server, ca(&p.ca_der, SERVER_NAME), true).await;
    assert!(matches!(e, TlsError::InvalidCertificate), "{e:?}");
    // Documented limitation: without a clock the validity period is not
    // checked (firmware often has no trusted time).
    let mut b = bufs();
    tls::handshake(
        tcp(&server).await,
        &mut b.read,
        &mut b.write,
        ca(&p.ca_der, SERVER_NAME),
        OsRng,
    )
    .await
    .expect("no clock: expiry not checked");
}

#[tokio::test]
async fn insecure_must_be_named_and_skips_verification() {
    let p = pki();
    let server = tls_server(&p).await;
    let mut b = bufs();
    let stream = tls::handshake(
        tcp(&server).await,
        &mut b.read,
        &mut b.write,
        TlsVerify::Insecure,
        OsRng,
    )
    .await
    .expect("insecure handshake to an unknown CA");
    let mut conn: Connection<_, 128> = Connection::new(stream);
    conn.ping().await.unwrap();
    // An empty server name cannot mean "skip the name check".
    let e = handshake_err(&server, ca(&p.ca_der, ""), false).await;
    assert!(matches!(e, TlsError::InvalidCertificate), "{e:?}");
    assert_eq!(format!("{:?}", TlsVerify::Insecure), "Insecure");
}

#[tokio::test]
async fn embedded_tls_against_plaintext_server_fails_without_hanging() {
    let server = TestServer::builder().start().await.unwrap();
    let p = pki();
    let mut b = bufs();
    let r = tokio::time::timeout(
        Duration::from_secs(3),
        tls::handshake(
            tcp(&server).await,
            &mut b.read,
            &mut b.write,
            ca(&p.ca_der, SERVER_NAME),
            OsRng,
        ),
    )
    .await;
    match r {
        // The caller's deadline (the host adapters use the connect timeout).
        Err(_elapsed) => {}
        Ok(Err(e)) => eprintln!("embedded-tls vs plaintext server: {e:?}"),
        Ok(Ok(_)) => panic!("a plaintext server cannot complete a TLS handshake"),
    }
}
