//! Auth, idle timeout, draining, connection control and the blocking API.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use common::{Client, T, token_of, wait_until};
use dflockd_testkit::TestServer;

#[tokio::test]
async fn auth_success() {
    let s = TestServer::builder()
        .auth_token("s3cret")
        .start()
        .await
        .unwrap();
    let mut c = Client::connect(s.addr()).await;
    assert_eq!(c.req("auth", "_", "s3cret").await, "ok");
    assert_eq!(c.req("ping", "_", "_").await, "ok");
    assert_eq!(
        c.req("auth", "_", "s3cret").await,
        "error",
        "auth only first"
    );
}

#[tokio::test]
async fn auth_failures_close() {
    let s = TestServer::builder()
        .auth_token("s3cret")
        .start()
        .await
        .unwrap();
    let mut c = Client::connect(s.addr()).await;
    let start = Instant::now();
    assert_eq!(c.req("auth", "_", "wrong").await, "error_auth");
    c.expect_eof().await;
    assert!(
        start.elapsed() >= Duration::from_millis(90),
        "delayed close"
    );
    let mut c = Client::connect(s.addr()).await;
    assert_eq!(c.req("l", "k", "0").await, "error_auth");
    c.expect_eof().await;
    let mut c = Client::connect(s.addr()).await;
    assert_eq!(c.req("bogus", "_", "").await, "error_auth");
    c.expect_eof().await;
    // Long tokens (up to 64 KiB) are read whole.
    let mut c = Client::connect(s.addr()).await;
    assert_eq!(c.req("auth", "_", &"t".repeat(60_000)).await, "error_auth");
    c.expect_eof().await;
}

#[tokio::test]
async fn auth_without_configured_token_is_error() {
    let s = TestServer::builder().start().await.unwrap();
    let mut c = Client::connect(s.addr()).await;
    assert_eq!(c.req("auth", "_", "x").await, "error");
    assert_eq!(c.req("ping", "_", "_").await, "ok");
}

#[tokio::test]
async fn idle_read_timeout() {
    let s = TestServer::builder()
        .read_timeout(Duration::from_secs(1))
        .start()
        .await
        .unwrap();
    let mut c = Client::connect(s.addr()).await;
    assert_eq!(c.req("ping", "_", "_").await, "ok");
    let start = Instant::now();
    assert_eq!(c.expect_line().await, "error");
    c.expect_eof().await;
    assert!(start.elapsed() >= Duration::from_millis(900));
    // Pushes to a listener do not count as activity.
    let mut sub = Client::connect(s.addr()).await;
    let mut em = Client::connect(s.addr()).await;
    assert_eq!(sub.req("listen", "tick", "").await, "ok");
    let pusher = tokio::spawn(async move {
        for _ in 0..40 {
            if em.req("signal", "tick", "t").await.starts_with("ok") {
                tokio::time::sleep(Duration::from_millis(50)).await;
            } else {
                break;
            }
        }
    });
    loop {
        match sub.line().await.as_deref() {
            Some("sig tick t") => continue,
            Some("error") => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    sub.expect_eof().await;
    pusher.abort();
    // A blocking request is not cut by the idle timeout (the holder's lock
    // survives its own idle close here, so the wait lasts ~3 s > 1 s).
    let s2 = TestServer::builder()
        .read_timeout(Duration::from_secs(1))
        .auto_release_on_disconnect(false)
        .start()
        .await
        .unwrap();
    let mut a = Client::connect(s2.addr()).await;
    let mut b = Client::connect(s2.addr()).await;
    a.lock("held", "0 3").await;
    let start = Instant::now();
    let reply = b.req("l", "held", "9").await;
    token_of(&reply, "ok");
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "waited past the idle timeout"
    );
    assert_eq!(b.req("ping", "_", "_").await, "ok");
}

#[tokio::test]
async fn draining() {
    let s = TestServer::builder().start().await.unwrap();
    let mut idle = Client::connect(s.addr()).await;
    let mut holder = Client::connect(s.addr()).await;
    let mut blocked = Client::connect(s.addr()).await;
    let mut two = Client::connect(s.addr()).await;
    holder.lock("d", "0").await;
    blocked.send("l", "d", "30").await;
    assert_eq!(two.req("e", "d", "").await, "queued");
    two.send("w", "d", "30").await;
    wait_until("two waiters", || s.stats().locks[0].waiters == 2).await;
    s.begin_shutdown();
    assert_eq!(blocked.expect_line().await, "error_draining");
    blocked.expect_eof().await;
    assert_eq!(two.expect_line().await, "error_draining");
    two.expect_eof().await;
    assert_eq!(idle.req("ping", "_", "_").await, "error_draining");
    idle.expect_eof().await;
    assert_eq!(holder.req("stats", "_", "").await, "error_draining");
    holder.expect_eof().await;
    tokio::time::timeout(T, s.shutdown())
        .await
        .expect("shutdown completes");
    assert!(tokio::net::TcpStream::connect(s.addr()).await.is_err());
}

#[tokio::test]
async fn disconnect_all_clients_keeps_serving() {
    let s = TestServer::builder().start().await.unwrap();
    let mut a = Client::connect(s.addr()).await;
    let mut w = Client::connect(s.addr()).await;
    a.lock("cut", "0").await;
    w.send("l", "cut", "30").await;
    wait_until("queued", || s.stats().locks[0].waiters == 1).await;
    s.disconnect_all_clients();
    a.expect_eof().await;
    w.expect_eof().await;
    let mut b = Client::connect(s.addr()).await;
    token_of(&b.req("l", "cut", "0").await, "ok");
    assert_eq!(s.connection_count(), 1);
}

#[tokio::test]
async fn drop_stops_server() {
    let s = TestServer::builder().start().await.unwrap();
    let addr = s.addr();
    let mut c = Client::connect(addr).await;
    c.lock("x", "0").await;
    drop(s);
    c.expect_eof().await;
}

#[tokio::test]
async fn max_connections() {
    let s = TestServer::builder()
        .max_connections(1)
        .start()
        .await
        .unwrap();
    let mut a = Client::connect(s.addr()).await;
    assert_eq!(a.req("ping", "_", "_").await, "ok");
    let mut b = Client::connect(s.addr()).await;
    b.send("ping", "_", "_").await;
    b.expect_eof().await;
}

#[tokio::test]
async fn start_blocking_inside_async_context_drops_cleanly() {
    let s = TestServer::builder().start_blocking().unwrap();
    let mut c = Client::connect(s.addr()).await;
    assert_eq!(c.req("ping", "_", "_").await, "ok");
    drop(s);
    c.expect_eof().await;
}

fn req(
    stream: &mut std::net::TcpStream,
    reader: &mut BufReader<std::net::TcpStream>,
    cmd: &str,
    key: &str,
    arg: &str,
) -> String {
    write!(stream, "{cmd}\n{key}\n{arg}\n").unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    line.trim_end().to_owned()
}

#[test]
fn blocking_api_without_runtime() {
    let s = TestServer::builder()
        .default_lease_ttl(Duration::from_secs(5))
        .shutdown_timeout(Duration::from_millis(300))
        .start_blocking()
        .unwrap();
    let mut stream = std::net::TcpStream::connect(s.addr()).unwrap();
    stream.set_read_timeout(Some(T)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let reply = req(&mut stream, &mut reader, "l", "k", "1");
    let tok = token_of(&reply, "ok");
    assert!(reply.ends_with(" 5"));
    assert_eq!(s.stats().locks.len(), 1);
    assert_eq!(req(&mut stream, &mut reader, "r", "k", &tok), "ok");
    // The idle connection is closed when the drain limit elapses.
    let start = Instant::now();
    s.shutdown_blocking();
    assert!(start.elapsed() < T);
    let mut line = String::new();
    assert_eq!(
        reader.read_line(&mut line).unwrap_or(0),
        0,
        "closed after drain"
    );
    assert!(std::net::TcpStream::connect(s.addr()).is_err());
}

#[test]
fn invalid_config_and_tls_are_rejected() {
    let e = TestServer::builder()
        .max_locks(0)
        .start_blocking()
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    let cfg = dflockd_testkit::Config {
        tls_cert: Some("c.pem".into()),
        tls_key: Some("k.pem".into()),
        ..Default::default()
    };
    let e = TestServer::builder()
        .config(cfg)
        .start_blocking()
        .unwrap_err();
    // Missing certificate files: refused at start, naming the file.
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("c.pem"), "{e}");
}
