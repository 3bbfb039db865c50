//! TLS through the high-level host APIs: `DistributedLock` and
//! `DistributedSemaphore` built with `LockBuilder::tls` (tokio and
//! blocking), and the signal connections' `connect_tls` / `emit_tls`,
//! against the testkit (or a real server: `DFLOCKD_REAL_SERVER`) serving TLS
//! from certificates generated at run time.
//!
//! Every wait is on an event (a guard's loss, a stream item, the server's
//! stats) with a generous upper bound.
#![cfg(all(feature = "rustls", feature = "tokio"))]

#[path = "support/generation.rs"]
mod generation;
mod tls_support;

use std::io;
use std::time::{Duration, Instant};

use dflockd_client::Error;
use dflockd_client::blocking;
use dflockd_client::blocking as sig_blocking;
use dflockd_client::blocking::ConnectOptions as BlockingOptions;
use dflockd_client::tls_rustls::rustls::CertificateError;
use dflockd_client::tls_rustls::{RustlsConnector, rustls, rustls_error};
use dflockd_client::tokio as sig_tokio;
use dflockd_client::tokio::ConnectOptions;
use dflockd_client::tokio::{DistributedLock, DistributedSemaphore};
use dflockd_client::tokio::{Reconnect, SignalEvent, SignalOptions};
use dflockd_testkit::{Stats, TestServer};
use tls_support::{Ca, SERVER_NAME, ServerPki, T, pki};
use tokio::time::timeout;

fn cert_error(e: &Error<io::Error>) -> Option<&CertificateError> {
    match e {
        Error::Io(io) => match rustls_error(io)? {
            rustls::Error::InvalidCertificate(c) => Some(c),
            _ => None,
        },
        _ => None,
    }
}

fn connector(p: &ServerPki) -> RustlsConnector {
    RustlsConnector::from_ca_der(&p.ca_der, SERVER_NAME).expect("connector")
}

async fn tls_server(p: &ServerPki) -> TestServer {
    TestServer::builder()
        .tls(&p.cert, &p.key)
        .start()
        .await
        .expect("start TLS test server")
}

fn blocking_tls_server(p: &ServerPki) -> TestServer {
    TestServer::builder()
        .tls(&p.cert, &p.key)
        .start_blocking()
        .expect("start TLS test server")
}

fn holder(stats: &Stats, key: &str) -> u64 {
    stats
        .locks
        .iter()
        .find(|l| l.key == key)
        .map_or(0, |l| l.owner_conn_id)
}

/// Waits (polling the server's state) until `cond` holds, at most `T`.
fn until(server: &TestServer, what: &str, cond: impl Fn(&Stats) -> bool) {
    let start = Instant::now();
    while !cond(&server.stats()) {
        assert!(start.elapsed() < T, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---- locks on tokio -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_lock_over_tls_is_renewed_past_a_short_lease() {
    let p = pki();
    let server = tls_server(&p).await;
    let lock = DistributedLock::builder("tls-renewed")
        .server(server.addr().to_string())
        .tls(connector(&p))
        .lease_ttl(Duration::from_secs(2))
        .build();
    let guard = lock.acquire().await.unwrap().expect("granted");
    let first = guard.fence().expect("held");
    // Two and a half TTLs: only renewal over TLS keeps it.
    assert!(
        timeout(Duration::from_secs(5), guard.lost()).await.is_err(),
        "lease lost while renewing over TLS"
    );
    assert!(!guard.is_lost());
    assert_ne!(holder(&server.stats(), "tls-renewed"), 0);
    assert!(lock.try_acquire().await.unwrap().is_none(), "still held");
    guard.release().await.expect("still the holder");
    let again = lock.try_acquire().await.unwrap().expect("free again");
    if server.generation().has_fences() {
        // Fences grow per grant on the testkit and v2; v1.x tokens are random.
        assert!(again.fence().unwrap() > first);
    }
    again.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_semaphore_over_tls() {
    let p = pki();
    let server = tls_server(&p).await;
    let sem = DistributedSemaphore::builder("tls-sem", 2)
        .server(server.addr().to_string())
        .tls(connector(&p))
        .build();
    let a = sem.acquire().await.unwrap().expect("slot 1");
    let b = sem.acquire().await.unwrap().expect("slot 2");
    assert!(sem.try_acquire().await.unwrap().is_none(), "limit is 2");
    assert_eq!(server.stats().semaphores.len(), 1);
    a.release().await.unwrap();
    let c = sem.try_acquire().await.unwrap().expect("a slot is free");
    b.release().await.unwrap();
    c.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_two_phase_and_auth_over_tls() {
    let p = pki();
    let server = TestServer::builder()
        .tls(&p.cert, &p.key)
        .auth_token("s3cret")
        .start()
        .await
        .unwrap();
    let lock = DistributedLock::builder("tls-two-phase")
        .server(server.addr().to_string())
        .tls(connector(&p))
        .auth_token("s3cret")
        .build();
    let first = lock.acquire().await.unwrap().expect("granted");
    let ticket = lock.enqueue().await.unwrap();
    assert!(!ticket.is_acquired());
    let waiter = tokio::spawn(async move { ticket.wait().await });
    first.release().await.unwrap();
    let second = timeout(T, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .expect("granted in turn");
    second.release().await.unwrap();

    let wrong = DistributedLock::builder("tls-two-phase")
        .server(server.addr().to_string())
        .tls(connector(&p))
        .auth_token("wrong")
        .build();
    assert!(matches!(wrong.acquire().await, Err(Error::Auth)));
}

#[tokio::test]
async fn tokio_lock_with_wrong_ca_is_refused() {
    let p = pki();
    let server = tls_server(&p).await;
    let other = Ca::new("some other CA");
    let lock = DistributedLock::builder("tls-wrong-ca")
        .server(server.addr().to_string())
        .tls(RustlsConnector::from_ca_der(&other.der, SERVER_NAME).unwrap())
        .build();
    let e = lock.acquire().await.unwrap_err();
    assert!(
        matches!(cert_error(&e), Some(CertificateError::UnknownIssuer)),
        "{e:?}"
    );
    assert!(!e.is_recoverable());
    assert_eq!(holder(&server.stats(), "tls-wrong-ca"), 0);
}

#[tokio::test]
async fn tokio_plain_lock_against_tls_server_fails_fast() {
    let p = pki();
    let server = tls_server(&p).await;
    let lock = DistributedLock::builder("tls-plain")
        .server(server.addr().to_string())
        .build();
    let e = timeout(T, lock.acquire()).await.unwrap().unwrap_err();
    assert!(
        matches!(e, Error::Disconnected | Error::Io(_)),
        "expected a closed connection, got {e:?}"
    );
}

#[tokio::test]
async fn tls_per_server_takes_the_name_from_each_address() {
    let p = pki();
    let server = tls_server(&p).await;
    // The certificate is for `localhost`; address the server by that name.
    let addr = format!("{SERVER_NAME}:{}", server.addr().port());
    let elsewhere = RustlsConnector::from_ca_der(&p.ca_der, "locks.example.com").unwrap();

    // One name for every server: the connector's, which this server lacks.
    let fixed = DistributedLock::builder("tls-names")
        .server(addr.clone())
        .tls(elsewhere.clone())
        .build();
    let e = fixed.acquire().await.unwrap_err();
    assert!(
        matches!(
            cert_error(&e),
            Some(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            )
        ),
        "{e:?}"
    );

    // Per server: the host part of its address, `localhost`.
    let per_server = DistributedLock::builder("tls-names")
        .server(addr)
        .tls_per_server(elsewhere.clone())
        .build();
    per_server
        .acquire()
        .await
        .unwrap()
        .expect("granted")
        .release()
        .await
        .unwrap();

    // A host part that is no server name is a configuration error, found
    // before connecting.
    let bad = DistributedLock::builder("tls-names")
        .server(format!("not_a_name!:{}", server.addr().port()))
        .tls_per_server(elsewhere)
        .build();
    match bad.acquire().await {
        Err(Error::Config(c)) => assert_eq!(c.option, "servers", "{c}"),
        other => panic!("{other:?}"),
    }
}

// ---- locks, blocking -----------------------------------------------------------

#[test]
fn blocking_lock_over_tls_is_renewed_past_a_short_lease() {
    let p = pki();
    let server = blocking_tls_server(&p);
    let lock = blocking::DistributedLock::builder("tls-renewed")
        .server(server.addr().to_string())
        .tls(connector(&p))
        .lease_ttl(Duration::from_secs(2))
        .build();
    let guard = lock.acquire().unwrap().expect("granted");
    // Two and a half TTLs: only renewal over TLS keeps it. The renewal
    // thread also checks the TLS connection for closure every 250 ms; a
    // false positive would lose the lease here.
    assert!(
        !guard.wait_lost_timeout(Duration::from_secs(5)),
        "lease lost while renewing over TLS"
    );
    assert!(guard.token().is_some());
    assert_ne!(holder(&server.stats(), "tls-renewed"), 0);
    assert!(lock.try_acquire().unwrap().is_none(), "still held");
    guard.release().expect("still the holder");
    lock.try_acquire()
        .unwrap()
        .expect("free again")
        .release()
        .unwrap();
}

#[test]
fn blocking_semaphore_over_tls_and_drop_releases() {
    let p = pki();
    let server = blocking_tls_server(&p);
    let sem = blocking::DistributedSemaphore::builder("tls-sem", 2)
        .server(server.addr().to_string())
        .tls(connector(&p))
        .build();
    let a = sem.acquire().unwrap().expect("slot 1");
    let b = sem.acquire().unwrap().expect("slot 2");
    assert!(sem.try_acquire().unwrap().is_none(), "limit is 2");
    drop(a);
    until(&server, "the dropped slot", |s| {
        s.semaphores.first().is_some_and(|sem| sem.holders == 1)
    });
    let c = sem.try_acquire().unwrap().expect("a slot is free");
    b.release().unwrap();
    c.release().unwrap();
}

#[test]
fn blocking_lease_over_tls_is_lost_when_the_connection_is_cut() {
    let p = pki();
    let server = blocking_tls_server(&p);
    let lock = blocking::DistributedLock::builder("tls-cut")
        .server(server.addr().to_string())
        .tls(connector(&p))
        .lease_ttl(Duration::from_secs(20))
        .build();
    let guard = lock.acquire().unwrap().expect("granted");
    let cut = Instant::now();
    server.disconnect_all_clients();
    assert!(guard.wait_lost_timeout(T), "never reported lost");
    // Noticed by the closure check, long before the first renew (10 s).
    assert!(
        cut.elapsed() < Duration::from_secs(5),
        "{:?}",
        cut.elapsed()
    );
    assert!(matches!(guard.release(), Err(Error::LeaseLost)));
}

#[test]
fn blocking_lock_with_wrong_ca_is_refused() {
    let p = pki();
    let server = blocking_tls_server(&p);
    let other = Ca::new("some other CA");
    let lock = blocking::DistributedLock::builder("tls-wrong-ca")
        .server(server.addr().to_string())
        .tls(RustlsConnector::from_ca_der(&other.der, SERVER_NAME).unwrap())
        .build();
    let e = lock.acquire().unwrap_err();
    assert!(
        matches!(cert_error(&e), Some(CertificateError::UnknownIssuer)),
        "{e:?}"
    );
    assert!(!e.is_recoverable());
}

// ---- signals ---------------------------------------------------------------------

async fn next_event(sub: &mut sig_tokio::SignalConn) -> SignalEvent {
    match timeout(T, sub.recv()).await {
        Ok(Some(Ok(event))) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

async fn expect_signal(sub: &mut sig_tokio::SignalConn, channel: &str, payload: &str) {
    match next_event(sub).await {
        SignalEvent::Signal(s) => {
            assert_eq!((s.channel.as_str(), s.payload.as_str()), (channel, payload))
        }
        other => panic!("expected a signal, got {other:?}"),
    }
}

#[tokio::test]
async fn tokio_signals_over_tls() {
    let p = pki();
    let server = tls_server(&p).await;
    if !generation::has_signals(&server) {
        return;
    }
    let addr = server.addr().to_string();
    let tls = connector(&p);
    let o = ConnectOptions::default();
    let mut sub: sig_tokio::SignalConn =
        sig_tokio::SignalConn::connect_tls(&addr, &o, &tls, SignalOptions::default())
            .await
            .expect("TLS signal connection");
    sub.listen("tls.>", None).await.unwrap();
    // One-shot publisher over TLS.
    assert_eq!(
        sig_tokio::emit_tls(&addr, "tls.a", "one-shot", &o, &tls)
            .await
            .unwrap(),
        1
    );
    expect_signal(&mut sub, "tls.a", "one-shot").await;
    // Through a handle on the same TLS connection.
    let handle = sub.handle();
    assert_eq!(handle.emit("tls.b", "self").await.unwrap(), 1);
    expect_signal(&mut sub, "tls.b", "self").await;
    sub.unlisten("tls.>", None).await.unwrap();
    assert_eq!(
        sig_tokio::emit_tls(&addr, "tls.a", "nobody", &o, &tls)
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn tokio_signals_reconnect_over_tls() {
    let p = pki();
    let server = tls_server(&p).await;
    if !generation::has_signals(&server) {
        return;
    }
    let addr = server.addr().to_string();
    let tls = connector(&p);
    let o = ConnectOptions::default();
    let opts = SignalOptions {
        reconnect: Some(Reconnect {
            initial_backoff: Duration::from_millis(20),
            ..Reconnect::default()
        }),
        ..SignalOptions::default()
    };
    let mut sub: sig_tokio::SignalConn = sig_tokio::SignalConn::connect_tls(&addr, &o, &tls, opts)
        .await
        .unwrap();
    sub.listen("r.>", None).await.unwrap();
    server.disconnect_all_clients();
    match timeout(T, sub.recv()).await.unwrap() {
        Some(Err(e)) => assert!(!e.is_recoverable(), "{e:?}"),
        other => panic!("expected the disconnect, got {other:?}"),
    }
    // Only a TLS reconnect can succeed against this server.
    match next_event(&mut sub).await {
        SignalEvent::Reconnected { attempts, .. } => assert!(attempts >= 1),
        other => panic!("expected Reconnected, got {other:?}"),
    }
    assert_eq!(
        sig_tokio::emit_tls(&addr, "r.x", "back", &o, &tls)
            .await
            .unwrap(),
        1
    );
    expect_signal(&mut sub, "r.x", "back").await;
}

#[tokio::test]
async fn tokio_signals_with_wrong_ca_are_refused() {
    let p = pki();
    let server = tls_server(&p).await;
    let addr = server.addr().to_string();
    let other = RustlsConnector::from_ca_der(&Ca::new("some other CA").der, SERVER_NAME).unwrap();
    let o = ConnectOptions::default();
    let e = sig_tokio::SignalConn::<256, 1024>::connect_tls(&addr, &o, &other, Default::default())
        .await
        .unwrap_err();
    assert!(
        matches!(cert_error(&e), Some(CertificateError::UnknownIssuer)),
        "{e:?}"
    );
    let e = sig_tokio::emit_tls(&addr, "c", "p", &o, &other)
        .await
        .unwrap_err();
    assert!(
        matches!(cert_error(&e), Some(CertificateError::UnknownIssuer)),
        "{e:?}"
    );
}

#[test]
fn blocking_signals_over_tls() {
    let p = pki();
    let server = blocking_tls_server(&p);
    if !generation::has_signals(&server) {
        return;
    }
    let tls = connector(&p);
    let o = BlockingOptions::default();
    let sub: sig_blocking::SignalConn =
        sig_blocking::SignalConn::connect_tls(server.addr(), &o, &tls, SignalOptions::default())
            .expect("TLS signal connection");
    sub.listen("tls.>", None).unwrap();
    assert_eq!(
        sig_blocking::emit_tls(server.addr(), "tls.a", "one-shot", &o, &tls).unwrap(),
        1
    );
    let handle = sub.handle();
    assert_eq!(handle.emit("tls.b", "self").unwrap(), 1);
    for (channel, payload) in [("tls.a", "one-shot"), ("tls.b", "self")] {
        match sub.recv_timeout(T) {
            Ok(Ok(SignalEvent::Signal(s))) => {
                assert_eq!((s.channel.as_str(), s.payload.as_str()), (channel, payload))
            }
            other => panic!("expected a signal, got {other:?}"),
        }
    }
    let e = sig_blocking::SignalConn::<256, 1024>::connect_tls(
        server.addr(),
        &o,
        &RustlsConnector::from_ca_der(&Ca::new("some other CA").der, SERVER_NAME).unwrap(),
        SignalOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(cert_error(&e), Some(CertificateError::UnknownIssuer)),
        "{e:?}"
    );
}
