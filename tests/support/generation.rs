//! What the test's server speaks, for the suites that run against every real
//! server (scripts/real-dflockd): a test that needs what the server lacks
//! skips and prints why (`skipped <test> against <server>: ...`, the lines
//! the script collects); a request the server does not know must come back
//! as its `error` reply. Also the signal suites' common options.
#![allow(dead_code)]

use std::fmt::Debug;
use std::time::Duration;

use dflockd_client::tokio::{Reconnect, SignalOptions};
use dflockd_client::{Error, ServerError};
use dflockd_testkit::TestServer;

fn skip(server: &TestServer, why: &str) {
    println!(
        "skipped {} against {}: {why}",
        // libtest names the thread after the test.
        std::thread::current().name().unwrap_or("?"),
        server.generation().name()
    );
}

/// True when `server` has signals; else prints why the running test skips.
pub fn has_signals(server: &TestServer) -> bool {
    let has = server.generation().has_signals();
    if !has {
        skip(server, "no signals in this protocol generation");
    }
    has
}

/// True when `server` has no signals; else prints why the running test (of
/// what the client gets from a server without them) skips.
pub fn lacks_signals(server: &TestServer) -> bool {
    let has = server.generation().has_signals();
    if has {
        skip(server, "it has signals");
    }
    !has
}

/// What a signal command (`listen`, `unlisten`, `signal`) got: its result
/// (`Some`) where the server has signals; where it has none (v1.10.0, v2),
/// the server's `error` reply as `Error::Server(ServerError::Error)`
/// (`None`): an answer, not a timeout or a lost connection.
pub fn answered<T: Debug, E: Debug>(server: &TestServer, r: Result<T, Error<E>>) -> Option<T> {
    if server.generation().has_signals() {
        return Some(r.expect("signal command"));
    }
    match r {
        Err(Error::Server(ServerError::Error)) => None,
        other => panic!("expected the server's `error`, got {other:?}"),
    }
}

/// A `ping`'s answer: `ok`, or `error` from a server without `ping`
/// (v1.10.0); either way the connection answered.
pub fn assert_pong<E: Debug>(server: &TestServer, pong: Result<(), Error<E>>) {
    match pong {
        Ok(()) => {}
        Err(Error::Server(ServerError::Error)) if !server.generation().has_ping() => {}
        other => panic!("ping: {other:?}"),
    }
}

/// Signal options (tokio and blocking share the type) that reconnect after
/// 20 ms.
pub fn reconnecting() -> SignalOptions {
    SignalOptions {
        reconnect: Some(Reconnect {
            initial_backoff: Duration::from_millis(20),
            ..Reconnect::default()
        }),
        ..SignalOptions::default()
    }
}
