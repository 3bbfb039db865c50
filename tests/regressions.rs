//! Regression tests for client defects that real dflockd servers showed
//! (issue 12, section 3). Each test fails on the client before its fix.
//!
//! They run against the in-process testkit by default, and against a real
//! server binary when `DFLOCKD_REAL_SERVER=/path/to/dflockd-<name>` is set
//! (the testkit's real mode: each test starts its own copy of the binary
//! with the flags it needs; see `scripts/real-servers`). A test that needs
//! a feature the server lacks (signals on v1.10 and v2) prints why it
//! skips.
//!
//! ```sh
//! cargo test --test regressions
//! DFLOCKD_REAL_SERVER=target/dflockd-servers/dflockd-v2-cluster cargo test --test regressions
//! ```

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use dflockd_client::lock::{Jitter, LockSpec};
use dflockd_client::stats::Stats;
use dflockd_client::time::{Instant, Timer};
use dflockd_client::tokio::AuthToken;
use dflockd_client::tokio::DistributedLock;
use dflockd_client::tokio::SignalConn;
use dflockd_client::tokio::{ConnectOptions, TokioConnection, TokioTimer, connect};
use dflockd_client::tokio::{Reconnect, SignalEvent, SignalOptions};
use dflockd_client::{Connection, Error, Kind, ServerError};
use dflockd_testkit::{Config, Generation, REAL_SERVER_ENV, TestServer};
use embedded_io_adapters::tokio_1::FromTokio;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::timeout;

/// Generous bound on anything that should happen promptly.
const PROMPT: Duration = Duration::from_secs(15);

// ---- the server under test ---------------------------------------------------

/// The server of one test: a [`TestServer`] (the testkit, or the real
/// binary of `DFLOCKD_REAL_SERVER`), or a v2 cluster of one started here.
struct Srv {
    addr: String,
    generation: Generation,
    server: Option<TestServer>,
    _cluster: Option<KillOnDrop>,
}

/// Starts the server for one test, configured by `cfg`.
async fn start(cfg: impl FnOnce(&mut Config)) -> Srv {
    let mut config = Config::default();
    cfg(&mut config);
    let server = TestServer::builder()
        .config(config)
        .start()
        .await
        .expect("start the server under test");
    Srv {
        addr: server.addr().to_string(),
        generation: server.generation(),
        server: Some(server),
        _cluster: None,
    }
}

/// A server process started by a test, and its scratch directory.
struct KillOnDrop(Child, std::path::PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// On a real v2 server, a Raft cluster of one node with `flags` (the
/// cluster line answers some requests differently from a single v2 node);
/// `None` on any other server.
async fn start_v2_cluster_of_one(flags: &[&str]) -> Option<Srv> {
    let binary = std::env::var_os(REAL_SERVER_ENV).filter(|b| !b.is_empty())?;
    let version = Command::new(&binary).arg("--version").output().ok()?;
    let version = String::from_utf8_lossy(&version.stdout).into_owned()
        + &String::from_utf8_lossy(&version.stderr);
    if Generation::from_version(&version) != Some(Generation::V2) {
        return None;
    }
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "dflockd-regressions-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("raft dir");
    let secret = dir.join("secret");
    std::fs::write(&secret, "regressions-raft-secret-of-at-least-32-bytes\n").expect("secret");
    let (port, raft) = (free_port(), free_port());
    let child = Command::new(binary)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--node-id",
            "a",
            "--raft-addr",
            &format!("127.0.0.1:{raft}"),
        ])
        .args(["--advertise-addr", &format!("127.0.0.1:{port}")])
        .arg("--raft-dir")
        .arg(dir.join("a"))
        .arg("--raft-auth-token-file")
        .arg(&secret)
        .args([
            "--cluster-peers",
            &format!("a=127.0.0.1:{raft}@127.0.0.1:{port}"),
        ])
        .args(["--shutdown-timeout", "1"])
        .args(flags)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the v2 node");
    let child = KillOnDrop(child, dir);
    let addr = format!("127.0.0.1:{port}");
    // Listening comes before the election: wait until it leads.
    let k = key("leader");
    timeout(PROMPT, async {
        loop {
            if let Ok(mut c) = connect::<256, 0>(&addr, &ConnectOptions::default()).await
                && c.acquire(Kind::Lock, &k, 0, None).await.is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the node listens and leads");
    Some(Srv {
        addr,
        generation: Generation::V2,
        server: None,
        _cluster: Some(child),
    })
}

impl Srv {
    async fn conn(&self) -> TokioConnection<256, 0> {
        connect(&self.addr, &ConnectOptions::default())
            .await
            .expect("connect")
    }

    async fn stats(&self) -> Stats {
        let mut c = self.conn().await;
        let mut buf = vec![0u8; 1 << 20];
        let json = c.stats(&mut buf).await.expect("stats");
        Stats::parse(json).expect("stats JSON")
    }

    /// Waits until `key` has `n` waiters, by the server's stats.
    async fn waiters(&self, key: &str, n: u64) {
        timeout(PROMPT, async {
            loop {
                let s = self.stats().await;
                if s.locks.iter().any(|l| l.key == key && l.waiters == n) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{key} never had {n} waiters"));
    }

    /// False (with the reason printed) when the server has no signals.
    fn signals(&self) -> bool {
        let has = self.generation.has_signals();
        if !has {
            println!("skipped: {} has no signals", self.generation.name());
        }
        has
    }
}

/// A key unique to this run.
fn key(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "reg-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

// ---- 1. a short lease granted after a long wait ------------------------------

/// A 1 s lease granted after a 3 s wait was lost on arrival: the lease was
/// counted from a full second before the grant arrived, so its deadline was
/// the arrival time and the first renew refused to run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_second_lease_after_a_long_wait_is_held_and_renewed() {
    let srv = start(|_| {}).await;
    let k = key("short-lease");
    let mut holder = srv.conn().await;
    let g = holder
        .acquire(Kind::Lock, &k, 0, Some(30))
        .await
        .unwrap()
        .expect("free lock");
    let lock = DistributedLock::builder(k.as_str())
        .server(srv.addr.clone())
        .lease_ttl(Duration::from_secs(1))
        .acquire_timeout(Duration::from_secs(30))
        .build();
    let waiter = tokio::spawn(async move { lock.acquire().await });
    srv.waiters(&k, 1).await;
    // The scenario: the grant comes after a wait of 3 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    holder.release(Kind::Lock, &k, &g.token).await.unwrap();
    let guard = timeout(PROMPT, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .expect("granted after the wait");
    assert!(!guard.is_lost(), "lost on arrival");
    // Held over three lease periods: only renewing keeps it.
    assert!(
        timeout(Duration::from_secs(3), guard.lost()).await.is_err(),
        "the 1 s lease was lost"
    );
    guard.release().await.expect("still the holder");
}

// ---- 2. auth tokens with inner whitespace -------------------------------------

/// The server compares the `auth` argument with surrounding whitespace
/// trimmed, so a token with inner spaces is a valid server configuration.
#[tokio::test]
async fn auth_token_with_inner_spaces_is_accepted() {
    const TOKEN: &str = "correct horse battery";
    let srv = start(|c| c.auth_token = Some(TOKEN.to_owned())).await;
    let opts = ConnectOptions {
        auth_token: Some(AuthToken::from(TOKEN)),
        ..ConnectOptions::default()
    };
    let mut c: TokioConnection<256, 0> = connect(&srv.addr, &opts).await.expect("authenticated");
    let k = key("auth");
    let g = c.acquire(Kind::Lock, &k, 0, None).await.unwrap().unwrap();
    c.release(Kind::Lock, &k, &g.token).await.unwrap();
    // Another token with spaces is refused by the server, not the client.
    let wrong = ConnectOptions {
        auth_token: Some(AuthToken::from("correct horse staple")),
        ..ConnectOptions::default()
    };
    let e = connect::<256, 0>(&srv.addr, &wrong).await.unwrap_err();
    assert!(matches!(e, Error::Auth), "{e:?}");
}

// ---- 3. a reply read after a cancelled signal wait -------------------------------

/// Shared control of a [`Gated`] transport.
#[derive(Default)]
struct GateCtl {
    /// Bytes the transport may still deliver.
    budget: AtomicUsize,
    /// Raised when the budget grows.
    opened: Notify,
    /// Raised when a read found the budget spent.
    starved: Notify,
}

impl GateCtl {
    fn allow(&self, bytes: usize) {
        self.budget.store(bytes, Ordering::SeqCst);
        self.opened.notify_one();
    }
}

/// A transport that delivers only as many bytes as its gate allows, so a
/// test can stop a reader in the middle of a line.
struct Gated<T> {
    inner: T,
    ctl: Arc<GateCtl>,
}

impl<T: embedded_io_async::ErrorType> embedded_io_async::ErrorType for Gated<T> {
    type Error = T::Error;
}

impl<T: embedded_io_async::Read> embedded_io_async::Read for Gated<T> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        loop {
            let budget = self.ctl.budget.load(Ordering::SeqCst);
            if budget > 0 {
                let n = buf.len().min(budget);
                let n = self.inner.read(&mut buf[..n]).await?;
                self.ctl.budget.fetch_sub(n, Ordering::SeqCst);
                return Ok(n);
            }
            self.ctl.starved.notify_one();
            self.ctl.opened.notified().await;
        }
    }
}

impl<T: embedded_io_async::Write> embedded_io_async::Write for Gated<T> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.inner.write(buf).await
    }
    async fn flush(&mut self) -> Result<(), Self::Error> {
        self.inner.flush().await
    }
}

/// `stats()` after a `wait_signal()` cancelled in the middle of a push
/// longer than the line buffer read the rest of that push as its reply
/// (`Server(Unknown(..))`) and left the real reply behind.
#[tokio::test]
async fn stats_after_a_wait_cancelled_inside_a_long_push() {
    let srv = start(|_| {}).await;
    if !srv.signals() {
        return;
    }
    let ch = key("long-push");
    let ctl = Arc::new(GateCtl::default());
    ctl.allow(usize::MAX);
    let stream = TcpStream::connect(&srv.addr).await.unwrap();
    let mut c: Connection<_, 64, 256> = Connection::new(Gated {
        inner: FromTokio::new(stream),
        ctl: ctl.clone(),
    });
    c.listen(&ch, None).await.unwrap();
    let mut emitter = srv.conn().await;
    assert_eq!(emitter.emit(&ch, &"p".repeat(1000)).await.unwrap(), 1);
    // Let the listener read 100 bytes of the 1000-byte push, then cancel.
    ctl.allow(100);
    tokio::select! {
        r = c.wait_signal() => panic!("no signal fits 64 bytes: {r:?}"),
        () = ctl.starved.notified() => {}
    }
    ctl.allow(usize::MAX);
    let mut out = vec![0u8; 1 << 20];
    let json = timeout(PROMPT, c.stats(&mut out))
        .await
        .expect("stats reply")
        .expect("the stats reply, not the rest of the push");
    Stats::parse(json).expect("stats JSON");
    assert_eq!(c.dropped_signals(), 1);
    assert!(c.is_usable());
    c.ping().await.expect("in step with the server");
}

// ---- 4. error_lease_expired on renew ------------------------------------------------

/// A clock that runs at half speed: the client thinks less time passed than
/// the server did.
struct SlowClock;

impl Timer for SlowClock {
    fn now(&self) -> Instant {
        Instant::from_millis(TokioTimer.now().as_millis() / 2)
    }
    async fn sleep_until(&self, deadline: Instant) {
        TokioTimer
            .sleep_until(Instant::from_millis(deadline.as_millis().saturating_mul(2)))
            .await;
    }
}

/// v2 answers a renew of a lease that expired (before its sweep ran) with
/// `error_lease_expired`; that is a lost lease, as `error` is.
#[tokio::test]
async fn renew_of_an_expired_lease_is_lease_lost() {
    // No sweep during the test: the server finds the expiry at the renew.
    let srv = match start_v2_cluster_of_one(&["--lease-sweep-interval", "3600"]).await {
        Some(srv) => srv,
        None => start(|c| c.lease_sweep_interval = Duration::from_secs(3600)).await,
    };
    let k = key("expired-renew");
    let mut c = srv.conn().await;
    let spec = LockSpec::lock(&k)
        .lease_ttl(Duration::from_secs(1))
        .early_jitter(Jitter::NONE);
    let mut lease = spec
        .try_acquire(&mut c, &SlowClock)
        .await
        .unwrap()
        .expect("free lock");
    // 1.6 s for the server, 0.8 s by the client's slow clock: the client
    // still believes in its 1 s lease and sends the renew.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert!(!lease.is_expired(SlowClock.now()));
    let e = lease.renew(&mut c, &SlowClock).await.unwrap_err();
    assert!(matches!(e, Error::LeaseLost), "{e:?}");
    assert!(c.is_usable());
}

// ---- 5. over-long argument lines --------------------------------------------------

/// Servers that cap every line at 256 bytes (v1.10 to v1.14.0, and v2 for
/// `signal`) answer a longer line with `error` and close the connection:
/// the client must not go on using it.
#[tokio::test]
async fn error_to_an_over_long_line_leaves_the_connection_unusable() {
    let srv = start(|_| {}).await;
    let ch = key("long-line");
    let mut c = srv.conn().await;
    match c.emit(&ch, &"p".repeat(300)).await {
        Ok(n) => {
            // Servers with 64 KiB payload lines (v1.15+, the testkit).
            assert_eq!(n, 0);
            assert!(c.is_usable());
            c.ping().await.unwrap();
        }
        Err(Error::Server(ServerError::Error)) => {
            assert!(
                !c.is_usable(),
                "the server closed the connection after `error`"
            );
            let e = c.acquire(Kind::Lock, &ch, 0, None).await.unwrap_err();
            assert!(matches!(e, Error::Unusable), "{e:?}");
        }
        Err(e) => panic!("emit: {e:?}"),
    }
    // A short line answered `error` leaves the connection usable.
    let mut c = srv.conn().await;
    let r = c.emit(&ch, "short").await;
    if srv.generation.has_signals() {
        assert_eq!(r.unwrap(), 0);
    } else {
        assert!(matches!(r, Err(Error::Server(ServerError::Error))), "{r:?}");
        assert!(c.is_usable());
        c.acquire(Kind::Lock, &ch, 0, None).await.unwrap().unwrap();
    }
}

/// The signal task must not go on with a connection the server closed
/// after an over-long line: the stream reports the loss.
#[tokio::test]
async fn signal_task_stops_after_an_over_long_line_error() {
    let srv = start(|_| {}).await;
    if srv.generation.has_signals() {
        println!("skipped: {:?} takes 64 KiB payloads", srv.generation);
        return;
    }
    let mut sigs: SignalConn = SignalConn::connect(
        &srv.addr,
        &ConnectOptions::default(),
        SignalOptions::default(),
    )
    .await
    .unwrap();
    let e = sigs.emit(&key("long"), &"p".repeat(300)).await.unwrap_err();
    assert!(matches!(e, Error::Server(ServerError::Error)), "{e:?}");
    let item = timeout(PROMPT, sigs.recv())
        .await
        .expect("the loss is reported");
    assert!(matches!(item, Some(Err(_))), "{item:?}");
    assert!(timeout(PROMPT, sigs.recv()).await.unwrap().is_none());
    let e = sigs.emit("c", "x").await.unwrap_err();
    assert!(matches!(e, Error::Disconnected), "{e:?}");
}

// ---- 7. queue groups as the server trims them -----------------------------------------

/// The server trims a queue group, so `listen(p, "g ")` and
/// `unlisten(p, "g")` name one subscription; after a reconnect the client
/// must subscribe again exactly what is subscribed.
#[tokio::test]
async fn group_with_surrounding_spaces_is_one_subscription_across_reconnect() {
    let srv = start(|_| {}).await;
    if !srv.signals() {
        return;
    }
    let opts = SignalOptions {
        reconnect: Some(Reconnect {
            initial_backoff: Duration::from_millis(20),
            ..Reconnect::default()
        }),
        ..SignalOptions::default()
    };
    let mut sigs: SignalConn = SignalConn::connect(&srv.addr, &ConnectOptions::default(), opts)
        .await
        .unwrap();
    let (gone, kept) = (key("gone"), key("kept"));
    sigs.listen(&gone, Some("g ")).await.unwrap();
    sigs.unlisten(&gone, Some("g")).await.unwrap();
    sigs.listen(&kept, Some(" h")).await.unwrap();
    let mut emitter = srv.conn().await;
    assert_eq!(emitter.emit(&gone, "before").await.unwrap(), 0);
    assert_eq!(emitter.emit(&kept, "before").await.unwrap(), 1);
    // Cut the connection (a real server keeps running behind the
    // testkit's relay): the client reconnects to the same server.
    srv.server
        .as_ref()
        .expect("a TestServer")
        .disconnect_all_clients();
    let mut reconnected = false;
    while !reconnected {
        match timeout(PROMPT, sigs.recv()).await.expect("reconnect") {
            Some(Ok(SignalEvent::Reconnected { .. })) => reconnected = true,
            Some(_) => {}
            None => panic!("stream ended"),
        }
    }
    // The cut closed the emitter's connection too.
    let mut emitter = srv.conn().await;
    assert_eq!(
        emitter.emit(&gone, "after").await.unwrap(),
        0,
        "an unsubscribed group came back with the reconnect"
    );
    assert_eq!(emitter.emit(&kept, "after").await.unwrap(), 1);
}
