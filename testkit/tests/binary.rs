//! The `dflockd-testkit` binary: startup line, flags, graceful SIGTERM.
#![cfg(unix)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{Client, T};

#[tokio::test]
async fn binary_serves_and_stops_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dflockd-testkit"))
        .args([
            "--port",
            "0",
            "--default-lease-ttl",
            "7",
            "--no-auto-release-on-disconnect",
        ])
        .env("DFLOCKD_MAX_LOCKS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn binary");
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line = tokio::time::timeout(T, line)
        .await
        .expect("startup line")
        .unwrap()
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("dflockd-testkit listening on ")
        .expect("startup line format")
        .parse()
        .expect("address");
    let mut c = Client::connect(addr).await;
    let reply = c.req("l", "a", "0").await;
    assert!(reply.starts_with("ok ") && reply.ends_with(" 7"), "{reply}");
    assert_eq!(
        c.req("l", "b", "0").await,
        "error_max_locks",
        "env var applied"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    // Draining: once the signal is handled, a request gets error_draining
    // and the connection closes (pings before that are answered `ok`).
    let start = std::time::Instant::now();
    loop {
        match c.req("ping", "_", "_").await.as_str() {
            "ok" => assert!(start.elapsed() < T, "SIGTERM not handled"),
            "error_draining" => break,
            other => panic!("unexpected {other:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    c.expect_eof().await;
    let exit = tokio::time::timeout(T, tokio::task::spawn_blocking(move || child.wait()))
        .await
        .expect("binary exits")
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}
