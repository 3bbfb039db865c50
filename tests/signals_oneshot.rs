//! The one-shot `emit` of both host adapters bounds the reply by the same
//! option, `ConnectOptions::io_timeout` (the connect by `connect_timeout`):
//! a server that accepts and never answers gives `Error::Timeout` after
//! the reply timeout, not after the much longer connect timeout.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use dflockd_client::Error;
use dflockd_client::blocking::ConnectOptions;

/// Far longer than any test waits: a reply bounded by it would hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(120);
const IO_TIMEOUT: Duration = Duration::from_millis(300);
/// Generous bound for a reply timeout of 300 ms.
const PROMPT: Duration = Duration::from_secs(15);

/// A peer that accepts one connection and never answers (it reads until
/// the client closes, at most `PROMPT` per read), and its address.
fn silent_server() -> (std::thread::JoinHandle<()>, String) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let thread = std::thread::spawn(move || {
        if let Ok((conn, _)) = listener.accept() {
            let _ = conn.set_read_timeout(Some(PROMPT));
            let mut buf = [0u8; 256];
            while let Ok(1..) = std::io::Read::read(&mut &conn, &mut buf) {}
        }
    });
    (thread, addr)
}

fn options() -> ConnectOptions {
    ConnectOptions {
        connect_timeout: CONNECT_TIMEOUT,
        io_timeout: IO_TIMEOUT,
        ..ConnectOptions::default()
    }
}

#[tokio::test]
async fn tokio_emit_times_out_after_the_reply_timeout() {
    let (_server, addr) = silent_server();
    let (opts, started) = (options(), Instant::now());
    let sent = dflockd_client::tokio::emit(&addr, "c", "p", &opts);
    let out = tokio::time::timeout(PROMPT, sent)
        .await
        .expect("the reply is bounded by io_timeout, not connect_timeout");
    assert!(matches!(out, Err(Error::Timeout)), "got {out:?}");
    assert!(started.elapsed() >= IO_TIMEOUT);
}

#[test]
fn blocking_emit_times_out_after_the_reply_timeout() {
    let (_server, addr) = silent_server();
    let started = Instant::now();
    let out = dflockd_client::blocking::emit(addr.as_str(), "c", "p", &options());
    assert!(matches!(out, Err(Error::Timeout)), "got {out:?}");
    let took = started.elapsed();
    assert!(took >= IO_TIMEOUT && took < PROMPT, "took {took:?}");
}
