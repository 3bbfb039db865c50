//! Static assertions: every public future of the tokio API is `Send` (so it
//! can be spawned or held across `.await` in a spawned task), and the handle
//! types are `Send + Sync`. The checks are type checks: this file fails to
//! compile when a future stops being `Send`. `check_futures` is never
//! called; it only has to type-check.

use std::time::Duration;

use dflockd_client::blocking::SignalOptions;
use dflockd_client::lock::{Lease, LockSpec};
use dflockd_client::tokio::{self as rt, ConnectOptions, HostConnection, TokioTimer};
use dflockd_client::tokio::{self as signals, SignalConn, SignalHandle};
use dflockd_client::tokio::{DistributedLock, DistributedSemaphore, Enqueued, LeaseGuard};
use dflockd_client::{Kind, Token};

fn assert_send<T: Send>(_: &T) {}
fn assert_send_sync<T: Send + Sync>() {}

fn assert_send_stream<S: futures_core::Stream + Send + Unpin>() {}

/// Builds (never polls) one future of each public async function.
#[allow(dead_code, clippy::too_many_arguments)]
fn check_futures(
    lock: DistributedLock,
    sem: DistributedSemaphore,
    ticket: Enqueued,
    ticket2: Enqueued,
    guard: LeaseGuard,
    guard2: LeaseGuard,
    mut sig: SignalConn,
    handle: SignalHandle,
    mut conn: HostConnection<1024, 8>,
    mut lease: Lease<'_>,
    spec: LockSpec<'_>,
    token: Token,
    core_sig: dflockd_client::signal::SignalConn<rt::HostStream, TokioTimer, 1024, 8>,
    mut core_sig2: dflockd_client::signal::SignalConn<rt::HostStream, TokioTimer, 1024, 8>,
) {
    let opts = ConnectOptions::default();
    let timer = TokioTimer;

    // runtime::tokio_lock
    assert_send(&lock.acquire());
    assert_send(&lock.try_acquire());
    assert_send(&lock.acquire_within(Duration::from_secs(1)));
    assert_send(&lock.enqueue());
    assert_send(&lock.run(async {}));
    assert_send(&sem.acquire());
    assert_send(&sem.try_acquire());
    assert_send(&sem.acquire_within(Duration::from_secs(1)));
    assert_send(&sem.enqueue());
    assert_send(&sem.run(async {}));
    assert_send(&ticket.wait());
    assert_send(&ticket2.wait_within(Duration::from_secs(1)));
    assert_send(&guard.lost());
    assert_send(&guard2.release());

    // runtime::signal::tokio
    assert_send(&SignalConn::<1024, 8>::connect(
        "a:1",
        &opts,
        SignalOptions::default(),
    ));
    assert_send(&signals::emit("a:1", "c", "p", &opts));
    assert_send(&handle.listen("c.>", None));
    assert_send(&handle.unlisten("c.>", None));
    assert_send(&handle.emit("c", "p"));
    assert_send(&sig.listen("c.>", Some("g")));
    assert_send(&sig.unlisten("c.>", Some("g")));
    assert_send(&sig.emit("c", "p"));
    assert_send(&sig.recv());

    // The client handle: its locks are the DistributedLock and
    // DistributedSemaphore above; its own futures.
    let client = rt::Client::new("a:1");
    assert_send(&client.signals());
    assert_send(&client.signals_with(SignalOptions::default()));
    assert_send(&client.lock("k").acquire());
    assert_send(&client.semaphore("k", 2).enqueue());

    // runtime::tokio
    assert_send(&rt::connect::<1024, 0>("a:1", &opts));
    assert_send(&rt::timeout(Duration::from_secs(1), async {
        Ok::<(), dflockd_client::Error<std::io::Error>>(())
    }));

    // The core over the tokio transport and timer.
    assert_send(&conn.acquire(Kind::Lock, "k", 1, None));
    assert_send(&conn.release(Kind::Lock, "k", &token));
    assert_send(&conn.renew(Kind::Lock, "k", &token, None));
    assert_send(&conn.enqueue(Kind::Lock, "k", None));
    assert_send(&conn.wait(Kind::Lock, "k", 1));
    assert_send(&conn.ping());
    assert_send(&conn.auth("t"));
    assert_send(&conn.listen("c", None));
    assert_send(&conn.unlisten("c", None));
    assert_send(&conn.emit("c", "p"));
    let mut out = [0u8; 64];
    assert_send(&conn.stats(&mut out));
    assert_send(&conn.next_signal());
    assert_send(&conn.wait_signal());
    assert_send(&spec.acquire(&mut conn, &timer));
    assert_send(&spec.try_acquire(&mut conn, &timer));
    assert_send(&spec.acquire_within(&mut conn, &timer, Duration::from_secs(1)));
    assert_send(&spec.enqueue(&mut conn, &timer));
    assert_send(&lease.renew(&mut conn, &timer));
    assert_send(&lease.hold(&mut conn, &timer, async {}));
    assert_send(&lease.release(&mut conn, &timer));
    let mut core_sig = core_sig;
    assert_send(&core_sig.next());
    assert_send(&core_sig2.emit("c", "p"));
    assert_send(&core_sig2.listen("c", None));
    assert_send(&core_sig2.unlisten("c", None));
    assert_send(&core_sig2.keepalive());
    assert_send(&core_sig2.wait());
}

#[cfg(feature = "rustls")]
#[allow(dead_code)]
fn check_tls_futures(tls: dflockd_client::tls_rustls::RustlsConnector) {
    let opts = ConnectOptions::default();
    assert_send(&rt::connect_tls::<1024, 0>("a:1", &opts, &tls));
    assert_send(&SignalConn::<1024, 8>::connect_tls(
        "a:1",
        &opts,
        &tls,
        SignalOptions::default(),
    ));
    assert_send(&signals::emit_tls("a:1", "c", "p", &opts, &tls));
}

#[test]
fn handles_are_send_and_sync_and_the_signal_stream_is_send() {
    assert_send_sync::<DistributedLock>();
    assert_send_sync::<rt::Client>();
    assert_send_sync::<dflockd_client::blocking::Client>();
    assert_send_sync::<DistributedSemaphore>();
    assert_send_sync::<Enqueued>();
    assert_send_sync::<LeaseGuard>();
    assert_send_sync::<SignalHandle>();
    assert_send_sync::<SignalConn>();
    assert_send_sync::<HostConnection>();
    assert_send_stream::<SignalConn>();
    // A spawned lock cycle compiles only when every future in it is Send.
    let _ = |lock: DistributedLock| {
        tokio::spawn(async move {
            if let Ok(Some(guard)) = lock.acquire().await {
                let _ = guard.release().await;
            }
        })
    };
}

/// The cluster client's futures (tokio), and its handles `Send + Sync`.
#[allow(dead_code)]
fn check_cluster_futures(
    client: dflockd_client::tokio::ClusterClient,
    lock: dflockd_client::tokio::ClusterLock,
    guard: dflockd_client::tokio::ClusterGuard,
    mut guard2: dflockd_client::tokio::ClusterGuard,
) {
    assert_send_sync::<dflockd_client::tokio::ClusterClient>();
    assert_send_sync::<dflockd_client::tokio::ClusterLock>();
    assert_send_sync::<dflockd_client::tokio::ClusterGuard>();
    assert_send_sync::<dflockd_client::blocking::ClusterClient>();
    assert_send_sync::<dflockd_client::blocking::ClusterGuard>();
    assert_send(&client.barrier());
    assert_send(&client.stats());
    assert_send(&client.ping());
    assert_send(&client.disconnect());
    assert_send(&lock.acquire());
    assert_send(&lock.try_acquire());
    assert_send(&lock.acquire_within(Duration::from_secs(1)));
    assert_send(&guard.lost());
    assert_send(&guard2.next_renewal());
    assert_send(&guard.release());
}
