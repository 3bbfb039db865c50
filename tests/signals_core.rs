//! The `no_std` core `SignalConn` against the testkit, over the tokio
//! transport and timer: the same code runs on embassy-net or WASI with
//! their transports and timers.

use std::time::Duration;

use dflockd_client::Error;
use dflockd_client::signal::{Heartbeat, SignalConn, Wake};
use dflockd_client::tokio::{ConnectOptions, TokioTimer, connect};
use dflockd_testkit::TestServer;
use tokio::time::timeout;

const PROMPT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn core_signal_conn_listens_emits_and_heartbeats() {
    let server = TestServer::builder()
        .read_timeout(Duration::from_secs(1))
        .start()
        .await
        .unwrap();
    let addr = server.addr().to_string();
    let hb = Heartbeat::new(Duration::from_millis(300), Duration::from_secs(1)).unwrap();
    let conn = connect::<512, 2048>(&addr, &ConnectOptions::default())
        .await
        .unwrap();
    let mut sigs = SignalConn::with_heartbeat(conn, TokioTimer, hb);
    sigs.listen("core.>", None).await.unwrap();
    sigs.listen("core.jobs", Some("g")).await.unwrap();

    // Our own push may come before the emit's reply; both arrive.
    assert_eq!(sigs.emit("core.a", "own push").await.unwrap(), 1);
    assert_eq!(sigs.emit("core.jobs", "grouped").await.unwrap(), 2);
    for want in ["own push", "grouped", "grouped"] {
        let s = timeout(PROMPT, sigs.next()).await.unwrap().unwrap();
        assert_eq!(s.payload, want);
    }

    // Idle past the server's 1 s read timeout, pinging when due. `wait` is
    // cancel-safe, so it is the one raced against the deadline.
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut pings = 0;
    loop {
        match tokio::time::timeout_at(until, sigs.wait()).await {
            Err(_) => break,
            Ok(Ok(Wake::HeartbeatDue)) => {
                sigs.keepalive().await.unwrap();
                pings += 1;
            }
            Ok(other) => panic!("nothing expected while idle: {other:?}"),
        }
    }
    assert!(pings >= 2, "heartbeat pings: {pings}");
    assert!(sigs.is_usable());
    let n = dflockd_client::tokio::emit(
        &addr,
        "core.late",
        "still connected",
        &ConnectOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(n, 1);
    let s = timeout(PROMPT, sigs.next()).await.unwrap().unwrap();
    assert_eq!((s.channel, s.payload), ("core.late", "still connected"));

    // The server going away is reported.
    server.disconnect_all_clients();
    let r = timeout(PROMPT, sigs.next()).await.unwrap();
    assert!(
        matches!(r, Err(Error::Disconnected | Error::Io(_))),
        "{r:?}"
    );
}
