//! Quick start: a lock, a semaphore, two-phase acquisition and a signal
//! round trip.
//!
//! ```sh
//! cargo run --example quickstart                              # in-process test server
//! DFLOCKD_ADDR=127.0.0.1:6388 cargo run --example quickstart  # a real dflockd
//! ```
//!
//! `DFLOCKD_AUTH_TOKEN` is sent with `auth` when set.

use std::time::Duration;

use dflockd_client::runtime::AuthToken;
use dflockd_client::runtime::tokio::{ConnectOptions, TokioConnection, connect};
use dflockd_client::{Enqueued, Error, Kind, ServerError};
use dflockd_testkit::TestServer;

type Conn = TokioConnection<1024, 4096>;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("quickstart failed: {e}");
        let mut source = e.source();
        while let Some(s) = source {
            eprintln!("  caused by: {s}");
            source = s.source();
        }
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    // A real server from DFLOCKD_ADDR, or the in-process testkit.
    let (_server, addr) = match std::env::var("DFLOCKD_ADDR") {
        Ok(addr) => {
            println!("using dflockd at {addr}");
            (None, addr)
        }
        Err(_) => {
            let server = TestServer::builder().start().await?;
            let addr = server.addr().to_string();
            println!("started the in-process test server on {addr}");
            (Some(server), addr)
        }
    };
    let opts = ConnectOptions {
        auth_token: std::env::var("DFLOCKD_AUTH_TOKEN")
            .ok()
            .map(AuthToken::from),
        connect_timeout: Duration::from_secs(5),
    };
    let connect = || async { connect::<1024, 4096>(&addr, &opts).await };

    // 1. A lock: acquire (the server may block up to 10 s), use, release.
    let mut alice: Conn = connect().await?;
    let mut bob: Conn = connect().await?;
    let grant = alice
        .acquire(Kind::Lock, "quickstart:printer", 10, Some(30))
        .await?
        .ok_or("lock not granted")?;
    println!(
        "lock: alice holds quickstart:printer for {} s (fence {})",
        grant.lease,
        grant.token.fence()
    );
    let busy = bob
        .acquire(Kind::Lock, "quickstart:printer", 0, None)
        .await?;
    println!(
        "lock: bob's try-acquire while alice holds it -> {}",
        if busy.is_some() {
            "granted?!"
        } else {
            "timeout"
        }
    );
    let left = alice
        .renew(Kind::Lock, "quickstart:printer", &grant.token, None)
        .await?;
    println!("lock: alice renewed, {left} s left");
    alice
        .release(Kind::Lock, "quickstart:printer", &grant.token)
        .await?;
    println!("lock: alice released");

    // 2. A semaphore: at most 2 holders at once.
    let pool = Kind::Semaphore { limit: 2 };
    let mut carol: Conn = connect().await?;
    let a = alice
        .acquire(pool, "quickstart:db-pool", 0, None)
        .await?
        .ok_or("slot 1")?;
    let b = bob
        .acquire(pool, "quickstart:db-pool", 0, None)
        .await?
        .ok_or("slot 2")?;
    let c = carol.acquire(pool, "quickstart:db-pool", 0, None).await?;
    println!(
        "semaphore (limit 2): alice and bob hold slots, carol -> {}",
        if c.is_some() {
            "granted?!"
        } else {
            "timeout (full)"
        }
    );
    alice.release(pool, "quickstart:db-pool", &a.token).await?;
    bob.release(pool, "quickstart:db-pool", &b.token).await?;

    // 3. Two-phase: enqueue, do other work, then wait for the grant.
    let held = alice
        .acquire(Kind::Lock, "quickstart:job", 0, None)
        .await?
        .ok_or("job lock")?;
    match bob.enqueue(Kind::Lock, "quickstart:job", None).await? {
        Enqueued::Queued => println!("two-phase: bob is queued behind alice and keeps working"),
        Enqueued::Acquired(_) => println!("two-phase: bob acquired at once?!"),
    }
    alice
        .release(Kind::Lock, "quickstart:job", &held.token)
        .await?;
    let g = bob
        .wait(Kind::Lock, "quickstart:job", 5)
        .await?
        .ok_or("wait timed out")?;
    println!("two-phase: bob's wait returned the lease ({} s)", g.lease);
    bob.release(Kind::Lock, "quickstart:job", &g.token).await?;

    // 4. Signals: carol listens on a wildcard, bob emits.
    match carol.listen("quickstart.events.>", None).await {
        Ok(()) => {
            let n = bob
                .emit("quickstart.events.deploy", "{\"version\": \"1.2.3\"}")
                .await?;
            println!("signal: bob emitted to {n} listener(s)");
            let sig = tokio::time::timeout(Duration::from_secs(5), carol.next_signal()).await??;
            println!("signal: carol received {} {}", sig.channel, sig.payload);
        }
        Err(Error::Server(ServerError::Error)) => {
            println!("signal: this server has no signals (dflockd v2); skipped");
        }
        Err(e) => return Err(e.into()),
    }

    // Arguments are checked before anything is sent.
    let e = alice
        .acquire(Kind::Lock, "has space", 0, None)
        .await
        .unwrap_err();
    println!("validation: {e}");
    println!("done");
    Ok(())
}
