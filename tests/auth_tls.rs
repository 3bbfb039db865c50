//! Authentication over TLS (rustls and embedded-tls), and the auth token
//! never showing in `Debug` output, error text or logs (captured here with
//! a logger on the `log` feature).
#![cfg(all(
    feature = "rustls",
    feature = "tls",
    feature = "tokio",
    feature = "log"
))]

#[path = "support/generation.rs"]
mod generation;
mod tls_support;

use std::sync::{Mutex, OnceLock};

use dflockd_client::blocking::{self, BlockingConnection};
use dflockd_client::tls::{self, TlsVerify};
use dflockd_client::tls_rustls::RustlsConnector;
use dflockd_client::tokio::AuthToken;
use dflockd_client::tokio::{ConnectOptions, connect_tls};
use dflockd_client::{Connection, Error, Kind};
use dflockd_testkit::TestServer;
use embedded_io_adapters::tokio_1::FromTokio;
use rand_core::OsRng;
use tls_support::{SERVER_NAME, pki};

const TOKEN: &str = "tok-8f3e-SECRET-do-not-print";
const WRONG: &str = "tok-WRONG-guess-do-not-print";

/// Collects every log record of the process.
struct Capture(Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let line = format!("{} {} {}", record.level(), record.target(), record.args());
        self.0.lock().unwrap().push(line);
    }
    fn flush(&self) {}
}

fn logs() -> &'static Capture {
    static LOGGER: OnceLock<&'static Capture> = OnceLock::new();
    LOGGER.get_or_init(|| {
        let c: &'static Capture = Box::leak(Box::new(Capture(Mutex::new(Vec::new()))));
        log::set_logger(c).expect("the only logger of this test binary");
        log::set_max_level(log::LevelFilter::Trace);
        c
    })
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in [TOKEN, WRONG, "SECRET", "WRONG-guess"] {
        assert!(!text.contains(secret), "{what} leaks the token: {text}");
    }
}

#[tokio::test]
async fn auth_over_rustls_and_nothing_leaks() {
    let logs = logs();
    let p = pki();
    let server = TestServer::builder()
        .tls(&p.cert, &p.key)
        .auth_token(TOKEN)
        .start()
        .await
        .unwrap();
    let addr = server.addr().to_string();
    let tls = RustlsConnector::from_ca_der(&p.ca_der, SERVER_NAME).unwrap();

    let good = ConnectOptions {
        auth_token: Some(AuthToken::new(TOKEN)),
        ..Default::default()
    };
    let mut conn = connect_tls::<256, 0>(&addr, &good, &tls)
        .await
        .expect("authenticated over TLS");
    let g = conn
        .acquire(Kind::Lock, "auth-key", 0, None)
        .await
        .unwrap()
        .expect("granted");
    conn.release(Kind::Lock, "auth-key", &g.token)
        .await
        .unwrap();

    // Without auth: the server refuses the first request.
    let mut anon = connect_tls::<256, 0>(&addr, &ConnectOptions::default(), &tls)
        .await
        .unwrap();
    let e = anon
        .acquire(Kind::Lock, "auth-key", 0, None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Auth), "{e:?}");

    // A wrong token: Error::Auth, whose text does not repeat it.
    let bad = ConnectOptions {
        auth_token: Some(AuthToken::from(WRONG)),
        ..Default::default()
    };
    let e = connect_tls::<256, 0>(&addr, &bad, &tls).await.unwrap_err();
    assert!(matches!(e, Error::Auth), "{e:?}");

    for (what, text) in [
        ("options Debug", format!("{good:?} {bad:?} {good:#?}")),
        ("token Debug", format!("{:?}", AuthToken::new(TOKEN))),
        ("connection Debug", format!("{conn:?} {anon:?}")),
        ("connector Debug", format!("{tls:?}")),
        ("error Debug/Display", format!("{e:?} {e}")),
    ] {
        assert_no_secret(what, &text);
    }
    assert!(format!("{good:?}").contains("redacted"));

    let captured = logs.0.lock().unwrap().join("\n");
    assert!(
        captured.contains("send auth"),
        "the auth request is logged (without its token): {captured}"
    );
    assert_no_secret("logs", &captured);
}

#[test]
fn blocking_auth_over_rustls() {
    let logs = logs();
    let p = pki();
    let server = TestServer::builder()
        .tls(&p.cert, &p.key)
        .auth_token(TOKEN)
        .start_blocking()
        .unwrap();
    let tls = RustlsConnector::from_ca_der(&p.ca_der, SERVER_NAME).unwrap();
    let opts = blocking::ConnectOptions {
        auth_token: Some(TOKEN.into()),
        ..Default::default()
    };
    let mut conn =
        BlockingConnection::<256, 0, _>::connect_tls(server.addr(), &opts, &tls).unwrap();
    generation::assert_pong(&server, conn.ping());
    let bad = blocking::ConnectOptions {
        auth_token: Some(WRONG.into()),
        ..Default::default()
    };
    let e = BlockingConnection::<256, 0, _>::connect_tls(server.addr(), &bad, &tls).unwrap_err();
    assert!(matches!(e, Error::Auth), "{e:?}");
    assert_no_secret(
        "blocking Debug",
        &format!("{opts:?} {bad:?} {conn:?} {e:?} {e}"),
    );
    assert_no_secret("logs", &logs.0.lock().unwrap().join("\n"));
}

#[tokio::test]
async fn auth_over_embedded_tls() {
    let logs = logs();
    let p = pki();
    let server = TestServer::builder()
        .tls(&p.cert, &p.key)
        .auth_token(TOKEN)
        .start()
        .await
        .unwrap();
    let mut read = vec![0; tls::READ_RECORD_BUFFER];
    let mut write = vec![0; tls::WRITE_RECORD_BUFFER];
    let tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let verify = TlsVerify::Ca {
        ca_der: &p.ca_der,
        server_name: SERVER_NAME,
    };
    let stream = tls::handshake(FromTokio::new(tcp), &mut read, &mut write, verify, OsRng)
        .await
        .unwrap();
    let mut conn: Connection<_, 256> = Connection::new(stream);
    conn.auth(TOKEN).await.expect("auth over embedded-tls");
    let g = conn
        .acquire(Kind::Lock, "etls-auth", 0, None)
        .await
        .unwrap()
        .expect("granted");
    conn.release(Kind::Lock, "etls-auth", &g.token)
        .await
        .unwrap();
    assert_no_secret("Debug", &format!("{conn:?} {verify:?}"));
    assert_no_secret("logs", &logs.0.lock().unwrap().join("\n"));
}
