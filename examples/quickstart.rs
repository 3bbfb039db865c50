//! Quick start: a lock, a semaphore, two-phase acquisition and a signal
//! round trip, with the host API on tokio.
//!
//! ```sh
//! cargo run --example quickstart                              # in-process test server
//! DFLOCKD_ADDR=127.0.0.1:6388 cargo run --example quickstart  # a real dflockd
//! ```
//!
//! `DFLOCKD_AUTH_TOKEN` is sent with `auth` when set. Exits non-zero on any
//! failure.

use std::time::Duration;

use dflockd_client::lock::LockOptions;
use dflockd_client::tokio::{Client, ConnectOptions, SignalEvent};
use dflockd_client::{Error, ServerError};
use dflockd_testkit::TestServer;

type BoxError = Box<dyn std::error::Error>;

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("quickstart failed: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), BoxError> {
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
    let token = std::env::var("DFLOCKD_AUTH_TOKEN").ok();

    // One client: the server, the auth token and the timeouts, set once;
    // every lock made from it shares them and a pool of idle connections.
    let mut client = Client::builder().server(addr.as_str());
    if let Some(t) = token.as_deref() {
        client = client.auth_token(t);
    }
    let client = client.build();
    // A short lease, so that renewal shows.
    let mut options = LockOptions::default();
    options.lease_ttl = Some(Duration::from_secs(4));

    // 1. A lock, renewed in the background while held.
    let lock = client.lock_with("quickstart:printer", options);
    let guard = lock.acquire().await?.ok_or("lock not granted")?;
    println!(
        "lock: holding {} (fence {:?}), lease {:?}",
        guard.key(),
        guard.fence(),
        guard.ttl()
    );
    let busy = client
        .lock_with("quickstart:printer", options)
        .try_acquire()
        .await?;
    println!(
        "lock: a second try_acquire -> {}",
        if busy.is_some() { "granted?!" } else { "busy" }
    );
    // Hold it past its 4 s lease: the background task renews it.
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(6)) => println!("lock: still held after 6 s (renewed)"),
        _ = guard.lost() => return Err("lease lost".into()),
    }
    guard.release().await?;
    println!(
        "lock: released; {} idle connection(s) kept for reuse",
        client.idle_connections()
    );

    // 2. A semaphore: at most 2 holders.
    let pool = client.semaphore_with("quickstart:db-pool", 2, options);
    let a = pool.acquire().await?.ok_or("slot 1")?;
    let b = pool.acquire().await?.ok_or("slot 2")?;
    let c = pool.try_acquire().await?;
    println!(
        "semaphore (limit 2): two slots held, a third -> {}",
        if c.is_some() { "granted?!" } else { "full" }
    );
    a.release().await?;
    b.release().await?;

    // 3. Two-phase: join the queue, do other work, then wait for the grant.
    let job = client.lock_with("quickstart:job", options);
    let holder = job.acquire().await?.ok_or("job lock")?;
    let enqueued = job.enqueue().await?;
    println!(
        "two-phase: enqueued (acquired at once: {})",
        enqueued.is_acquired()
    );
    println!("two-phase: doing other work while queued...");
    holder.release().await?;
    let g = enqueued.wait().await?.ok_or("wait timed out")?;
    println!("two-phase: wait returned the lease (fence {:?})", g.fence());
    g.release().await?;

    // 4. Signals: listen on a wildcard, emit from another connection.
    let mut sigs = client.signals().await?;
    match sigs.listen("quickstart.events.>", None).await {
        Ok(()) => {
            let opts = ConnectOptions {
                auth_token: token.as_deref().map(Into::into),
                ..ConnectOptions::default()
            };
            let n = dflockd_client::tokio::emit(
                &addr,
                "quickstart.events.deploy",
                r#"{"version": "1.2.3"}"#,
                &opts,
            )
            .await?;
            println!("signal: emitted to {n} listener(s)");
            let item = tokio::time::timeout(Duration::from_secs(5), sigs.recv()).await?;
            match item.ok_or("signal stream ended")?? {
                SignalEvent::Signal(s) => println!("signal: received {} {}", s.channel, s.payload),
                other => return Err(format!("unexpected event {other:?}").into()),
            }
        }
        Err(Error::Server(ServerError::Error)) => {
            println!("signal: this server has no signals (dflockd v2); skipped");
        }
        Err(e) => return Err(e.into()),
    }

    // Arguments are checked before anything is sent.
    match client.lock("has space").acquire().await {
        Err(e) => println!("validation: {e}"),
        Ok(_) => return Err("a key with a space was accepted".into()),
    }
    println!("done");
    Ok(())
}
