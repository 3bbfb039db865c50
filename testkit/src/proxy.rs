//! A fault-injecting TCP proxy to put between a client and any dflockd
//! server (the testkit or a real one), controlled from the test.
//!
//! Faults, set and cleared at any moment from the test (every control
//! method is synchronous, never blocks and works from async and blocking
//! code alike):
//!
//! | method | effect |
//! |---|---|
//! | [`pass`](FaultProxy::pass) | clear every fault: forward as is |
//! | [`latency`](FaultProxy::latency) | delay each chunk by a fixed time plus a random jitter, per direction (order kept) |
//! | [`blackhole`](FaultProxy::blackhole) | stop forwarding and discard what arrives, sockets kept open (a dead network) |
//! | [`cut`](FaultProxy::cut) | close both sides of every open connection now, the client's side first (new ones are accepted) |
//! | [`trickle`](FaultProxy::trickle) | forward at most N bytes every T, per direction (a slow or malicious peer) |
//! | [`pause`](FaultProxy::pause) / [`resume`](FaultProxy::resume) | hold everything in both directions, delivered on resume (a stopped server process) |
//! | [`drop_after`](FaultProxy::drop_after) | close a connection once it forwarded K more bytes (both directions counted) |
//!
//! The proxy runs on its own thread with its own tokio runtime, so a test
//! that blocks its own thread (or its own runtime) never stalls it.
//! Dropping the [`FaultProxy`] closes the listener and every connection.
//!
//! # Example
//!
//! ```no_run
//! # fn demo() -> std::io::Result<()> {
//! use std::time::Duration;
//! use dflockd_testkit::{FaultProxy, TestServer, proxy::Direction};
//!
//! let server = TestServer::builder().start_blocking()?;
//! let proxy = FaultProxy::builder(server.addr()).start_blocking()?;
//! // Point the client at `proxy.addr()` instead of `server.addr()`.
//! proxy.latency(Direction::Both, Duration::from_millis(20), Duration::from_millis(5));
//! proxy.blackhole(); // the network dies: nothing arrives either way
//! proxy.pass(); // healed (what was sent meanwhile is lost)
//! proxy.cut(); // every proxied connection closed
//! # Ok(()) }
//! ```
//!
//! From async code, `FaultProxy::builder(addr).start().await?` does the
//! same.
//!
//! # From another language
//!
//! `dflockd-testkit proxy --upstream HOST:PORT [--listen ADDR] [--control ADDR]`
//! prints `dflockd-testkit proxy listening on <addr> control on <addr>`
//! and takes one command per line on the control socket, answering `ok`
//! (or `ok <n>`) or `error <why>`; see [`Command`].

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Which way bytes flow through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to server (requests).
    ToServer,
    /// Server to client (replies and pushes).
    ToClient,
    /// Both directions.
    Both,
}

impl Direction {
    fn covers(self, d: Dir) -> bool {
        matches!(
            (self, d),
            (Direction::Both, _)
                | (Direction::ToServer, Dir::ToServer)
                | (Direction::ToClient, Dir::ToClient)
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    ToServer,
    ToClient,
}

/// The faults of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionFaults {
    /// Fixed delay of every chunk.
    pub latency: Duration,
    /// Extra random delay, uniform in `0..=jitter` (order is kept).
    pub jitter: Duration,
    /// At most this many bytes ...
    pub trickle_bytes: Option<usize>,
    /// ... every this long.
    pub trickle_every: Duration,
}

/// A snapshot of the faults in force.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Client to server.
    pub to_server: DirectionFaults,
    /// Server to client.
    pub to_client: DirectionFaults,
    /// Discarding everything.
    pub blackhole: bool,
    /// Holding everything until resumed.
    pub paused: bool,
    /// Close connections after this many more bytes (counted from when it
    /// was set).
    pub drop_after: Option<u64>,
    /// Bumped each time `drop_after` is set, so counting restarts.
    drop_epoch: u64,
    /// Bumped by every `cut`.
    cut_epoch: u64,
}

impl Faults {
    fn dir(&self, d: Dir) -> &DirectionFaults {
        match d {
            Dir::ToServer => &self.to_server,
            Dir::ToClient => &self.to_client,
        }
    }
}

struct Shared {
    upstream: SocketAddr,
    faults: watch::Sender<Faults>,
    open: AtomicUsize,
    accepted: AtomicU64,
    rng: Mutex<u64>,
}

impl Shared {
    fn jitter(&self, max: Duration) -> Duration {
        if max.is_zero() {
            return Duration::ZERO;
        }
        let mut s = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        // xorshift64*
        *s ^= *s >> 12;
        *s ^= *s << 25;
        *s ^= *s >> 27;
        let r = s.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(r % nanos.saturating_add(1))
    }
}

/// Builder for a [`FaultProxy`].
#[derive(Debug, Clone)]
pub struct FaultProxyBuilder {
    upstream: SocketAddr,
    listen: SocketAddr,
    seed: u64,
    faults: Faults,
}

impl FaultProxyBuilder {
    /// Listen on this address (default `127.0.0.1:0`, an ephemeral port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Seed of the jitter's random numbers (default fixed), so a run can be
    /// replayed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Start with this latency already in force (see
    /// [`FaultProxy::latency`]).
    pub fn latency(mut self, direction: Direction, fixed: Duration, jitter: Duration) -> Self {
        set_latency(&mut self.faults, direction, fixed, jitter);
        self
    }

    /// Starts the proxy on its own thread and tokio runtime. Usable from
    /// plain `#[test]` functions and from async code alike.
    pub fn start_blocking(self) -> io::Result<FaultProxy> {
        let listener = StdListener::bind(self.listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("dflockd-proxy-worker")
            .enable_all()
            .build()?;
        let (faults, _) = watch::channel(self.faults);
        let shared = Arc::new(Shared {
            upstream: self.upstream,
            faults,
            open: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            rng: Mutex::new(self.seed | 1),
        });
        let (stop, mut stopped) = watch::channel(false);
        let task_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("dflockd-proxy".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(listener) else {
                        return;
                    };
                    tokio::select! {
                        () = accept_loop(listener, task_shared) => {}
                        _ = stopped.wait_for(|s| *s) => {}
                    }
                });
                // Drops every connection task, closing its sockets.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(FaultProxy {
            addr,
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// [`start_blocking`](Self::start_blocking) for async callers: the
    /// proxy still runs on its own thread and runtime (binding is
    /// immediate, nothing here waits), so a test that blocks its runtime
    /// never stalls the proxy.
    pub async fn start(self) -> io::Result<FaultProxy> {
        self.start_blocking()
    }
}

/// A running fault proxy. Stops (listener and every connection closed)
/// when dropped. See the [module docs](self).
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .field("faults", &self.faults())
            .finish()
    }
}

fn set_latency(f: &mut Faults, direction: Direction, fixed: Duration, jitter: Duration) {
    for d in [Dir::ToServer, Dir::ToClient] {
        if direction.covers(d) {
            let df = match d {
                Dir::ToServer => &mut f.to_server,
                Dir::ToClient => &mut f.to_client,
            };
            df.latency = fixed;
            df.jitter = jitter;
        }
    }
}

impl FaultProxy {
    /// A builder for a proxy forwarding to `upstream`.
    pub fn builder(upstream: SocketAddr) -> FaultProxyBuilder {
        FaultProxyBuilder {
            upstream,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            seed: 0x5EED,
            faults: Faults::default(),
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        *self.shared.faults.borrow()
    }

    /// Proxied connections open now.
    pub fn connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Connections accepted since the start.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    fn modify(&self, f: impl FnOnce(&mut Faults)) {
        self.shared.faults.send_modify(f);
    }

    /// Clears every fault (latency, trickle, black hole, pause, drop
    /// after): bytes flow as is again. Held bytes (pause) are delivered;
    /// discarded ones (black hole) stay lost.
    pub fn pass(&self) {
        self.modify(|f| {
            let (drop_epoch, cut_epoch) = (f.drop_epoch, f.cut_epoch);
            *f = Faults {
                drop_epoch,
                cut_epoch,
                ..Faults::default()
            };
        });
    }

    /// Delays every chunk flowing in `direction` by `fixed` plus a random
    /// `0..=jitter` (a chunk never overtakes an earlier one). Zero both to
    /// clear.
    pub fn latency(&self, direction: Direction, fixed: Duration, jitter: Duration) {
        self.modify(|f| set_latency(f, direction, fixed, jitter));
    }

    /// Forwards at most `bytes` bytes every `every` in `direction` (`bytes`
    /// 0 clears the trickle).
    pub fn trickle(&self, direction: Direction, bytes: usize, every: Duration) {
        self.modify(|f| {
            for df in [&mut f.to_server, &mut f.to_client]
                .into_iter()
                .zip([Dir::ToServer, Dir::ToClient])
                .filter(|(_, d)| direction.covers(*d))
                .map(|(df, _)| df)
            {
                df.trickle_bytes = (bytes > 0).then_some(bytes);
                df.trickle_every = every;
            }
        });
    }

    /// Stops forwarding in both directions and discards whatever arrives,
    /// keeping every socket open (a dead network or a vanished host).
    /// Undone by [`pass`](Self::pass) or [`heal_blackhole`](Self::heal_blackhole).
    pub fn blackhole(&self) {
        self.modify(|f| f.blackhole = true);
    }

    /// Ends a black hole only (other faults stay).
    pub fn heal_blackhole(&self) {
        self.modify(|f| f.blackhole = false);
    }

    /// Holds everything in both directions, as a stopped (SIGSTOP) server
    /// would: nothing is answered, nothing is lost; held bytes flow on
    /// [`resume`](Self::resume). New connections are accepted and held too.
    pub fn pause(&self) {
        self.modify(|f| f.paused = true);
    }

    /// Ends a [`pause`](Self::pause).
    pub fn resume(&self) {
        self.modify(|f| f.paused = false);
    }

    /// Closes both sides of every connection open now, the client's side
    /// first (so a client can see the close before the server acts on it).
    /// New connections are accepted as usual.
    pub fn cut(&self) {
        self.modify(|f| f.cut_epoch += 1);
    }

    /// Closes each connection once it has forwarded `bytes` more bytes
    /// (both directions counted, from now): what fits is delivered, then
    /// both sides close. `None` clears it.
    pub fn drop_after(&self, bytes: Option<u64>) {
        self.modify(|f| {
            f.drop_after = bytes;
            f.drop_epoch += 1;
        });
    }

    /// Applies one control command (the `proxy` subcommand's control
    /// protocol); the reply line without its newline.
    pub fn apply(&self, command: &Command) -> String {
        match *command {
            Command::Pass => self.pass(),
            Command::Latency(d, fixed, jitter) => self.latency(d, fixed, jitter),
            Command::Trickle(d, n, every) => self.trickle(d, n, every),
            Command::Blackhole => self.blackhole(),
            Command::Pause => self.pause(),
            Command::Resume => self.resume(),
            Command::Cut => self.cut(),
            Command::DropAfter(n) => self.drop_after(n),
            Command::Connections => return format!("ok {}", self.connections()),
        }
        "ok".to_owned()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One line of the `dflockd-testkit proxy` control protocol. Durations are
/// whole milliseconds; directions are `to-server`, `to-client` or `both`.
///
/// | line | command |
/// |---|---|
/// | `pass` | [`FaultProxy::pass`] |
/// | `latency DIR MS [JITTER_MS]` | [`FaultProxy::latency`] |
/// | `trickle DIR BYTES EVERY_MS` | [`FaultProxy::trickle`] |
/// | `blackhole` | [`FaultProxy::blackhole`] |
/// | `pause` / `resume` | [`FaultProxy::pause`] / [`FaultProxy::resume`] |
/// | `cut` | [`FaultProxy::cut`] |
/// | `drop-after BYTES` / `drop-after off` | [`FaultProxy::drop_after`] |
/// | `connections` | `ok <open connections>` |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `pass`
    Pass,
    /// `latency DIR MS [JITTER_MS]`
    Latency(Direction, Duration, Duration),
    /// `trickle DIR BYTES EVERY_MS`
    Trickle(Direction, usize, Duration),
    /// `blackhole`
    Blackhole,
    /// `pause`
    Pause,
    /// `resume`
    Resume,
    /// `cut`
    Cut,
    /// `drop-after BYTES|off`
    DropAfter(Option<u64>),
    /// `connections`
    Connections,
}

impl std::str::FromStr for Command {
    type Err = String;

    fn from_str(line: &str) -> Result<Self, String> {
        let mut words = line.split_whitespace();
        let cmd = words.next().ok_or("empty command")?;
        let args: Vec<&str> = words.collect();
        let num = |i: usize, what: &str| -> Result<u64, String> {
            args.get(i)
                .ok_or(format!("{cmd}: missing {what}"))?
                .parse::<u64>()
                .map_err(|_| format!("{cmd}: {what} must be a whole number"))
        };
        let dir = || -> Result<Direction, String> {
            match args.first().copied() {
                Some("to-server") => Ok(Direction::ToServer),
                Some("to-client") => Ok(Direction::ToClient),
                Some("both") => Ok(Direction::Both),
                _ => Err(format!(
                    "{cmd}: direction must be to-server, to-client or both"
                )),
            }
        };
        let max_args = |n: usize| -> Result<(), String> {
            if args.len() > n {
                Err(format!("{cmd}: too many arguments"))
            } else {
                Ok(())
            }
        };
        let ms = Duration::from_millis;
        let out = match cmd {
            "pass" => Command::Pass,
            "blackhole" => Command::Blackhole,
            "pause" => Command::Pause,
            "resume" => Command::Resume,
            "cut" => Command::Cut,
            "connections" => Command::Connections,
            "latency" => {
                max_args(3)?;
                let jitter = if args.len() > 2 { num(2, "jitter")? } else { 0 };
                Command::Latency(dir()?, ms(num(1, "milliseconds")?), ms(jitter))
            }
            "trickle" => {
                max_args(3)?;
                let bytes = usize::try_from(num(1, "bytes")?)
                    .map_err(|_| "trickle: bytes too large".to_owned())?;
                Command::Trickle(dir()?, bytes, ms(num(2, "milliseconds")?))
            }
            "drop-after" => {
                max_args(1)?;
                if args.first() == Some(&"off") {
                    Command::DropAfter(None)
                } else {
                    Command::DropAfter(Some(num(0, "bytes")?))
                }
            }
            other => return Err(format!("unknown command {other:?}")),
        };
        if matches!(
            out,
            Command::Pass
                | Command::Blackhole
                | Command::Pause
                | Command::Resume
                | Command::Cut
                | Command::Connections
        ) {
            max_args(0)?;
        }
        Ok(out)
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let shared = shared.clone();
        tokio::spawn(async move {
            shared.open.fetch_add(1, Ordering::SeqCst);
            proxy_connection(client, &shared).await;
            shared.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Bytes forwarded on one connection since `drop_after` was last set.
struct DropCounter {
    epoch: AtomicU64,
    bytes: AtomicU64,
}

async fn proxy_connection(client: TcpStream, shared: &Arc<Shared>) {
    let mut faults = shared.faults.subscribe();
    let (cut_epoch, drop_epoch) = {
        let f = faults.borrow();
        (f.cut_epoch, f.drop_epoch)
    };
    let _ = client.set_nodelay(true);
    let Ok(server) = TcpStream::connect(shared.upstream).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let counter = DropCounter {
        epoch: AtomicU64::new(drop_epoch),
        bytes: AtomicU64::new(0),
    };
    // Either direction ending (EOF, error, drop-after) or a cut closes
    // both.
    tokio::select! {
        () = pump(&mut cr, &mut sw, Dir::ToServer, shared, &counter) => {}
        () = pump(&mut sr, &mut cw, Dir::ToClient, shared, &counter) => {}
        _ = faults.wait_for(|f| f.cut_epoch != cut_epoch) => {}
    }
    // The client's side first: a client under test must be able to see
    // the close before the server does (and, auto-releasing, grants the
    // lock to someone else), however the proxy's thread is scheduled.
    drop((cw, cr));
    drop((sw, sr));
}

/// One direction: a reader stamps each chunk with its delivery time, a
/// writer delivers it then, under the faults in force at that moment.
async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    dir: Dir,
    shared: &Arc<Shared>,
    counter: &DropCounter,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut last = Instant::now();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let f = *shared.faults.borrow();
            if f.blackhole {
                continue;
            }
            let df = f.dir(dir);
            let at = (Instant::now() + df.latency + shared.jitter(df.jitter)).max(last);
            last = at;
            if tx.send((at, buf[..n].to_vec())).is_err() {
                return;
            }
        }
    };
    let write = async {
        let mut faults = shared.faults.subscribe();
        let mut next_trickle = Instant::now();
        while let Some((at, data)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            let mut rest = &data[..];
            while !rest.is_empty() {
                // Held while paused; discarded if a black hole began.
                if faults.wait_for(|f| !f.paused).await.is_err() {
                    return;
                }
                let f = *faults.borrow_and_update();
                if f.blackhole {
                    break;
                }
                let df = f.dir(dir);
                let mut n = rest.len();
                if let Some(t) = df.trickle_bytes {
                    tokio::time::sleep_until(next_trickle).await;
                    n = n.min(t);
                    next_trickle = Instant::now() + df.trickle_every;
                }
                let mut close = false;
                if let Some(limit) = f.drop_after {
                    if counter.epoch.swap(f.drop_epoch, Ordering::SeqCst) != f.drop_epoch {
                        counter.bytes.store(0, Ordering::SeqCst);
                    }
                    let used = counter.bytes.load(Ordering::SeqCst);
                    let left = limit.saturating_sub(used);
                    if (n as u64) >= left {
                        n = usize::try_from(left).unwrap_or(n);
                        close = true;
                    }
                    counter.bytes.fetch_add(n as u64, Ordering::SeqCst);
                }
                if n > 0 && to.write_all(&rest[..n]).await.is_err() {
                    return;
                }
                if close {
                    return;
                }
                rest = &rest[n..];
            }
        }
    };
    // When the reader ends (its `tx` dropped), the writer delivers what
    // was queued, then ends; the writer ending (error, drop-after) ends
    // the direction at once.
    tokio::select! {
        () = async { read.await; std::future::pending::<()>().await } => {}
        () = write => {}
    }
}
