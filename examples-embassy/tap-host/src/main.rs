//! The `no_std` dflockd client on embassy-net (smoltcp) over a Linux TAP
//! device, end to end against a dflockd server: the same core and the same
//! embassy adapter as the firmware, on a real TCP/IP stack.
//!
//! Run by `scripts/embassy-tap-test`, which creates a network namespace with
//! the TAP device and a `dflockd-testkit` server in it:
//!
//! ```text
//! dflockd-tap-host [--tap tap0] [--ip 10.42.0.2/24] [--server 10.42.0.1:6388]
//!                  [--lease 2] [--read-timeout 3]
//! ```
//!
//! `--lease` is the lease TTL the test asks for and `--read-timeout` the
//! server's idle read timeout (`--read-timeout` of the server). Checks, each
//! under a deadline: a lock held with cooperative renewal across more than
//! two lease periods (another connection cannot take it meanwhile), its
//! release, a semaphore's limit, and a signal round trip that also survives
//! an idle period longer than the server's read timeout thanks to the
//! heartbeat. Exits 0 only if every check passed.
#![warn(clippy::large_futures)]

use core::future::Future;
use core::pin::Pin;
use core::time::Duration;
use std::process::ExitCode;

use dflockd_client::Connection;
use dflockd_client::embassy::{EmbassyTimer, connect};
use dflockd_client::lock::{Lease, LockSpec};
use dflockd_client::signal::{Heartbeat, SignalConn, Wake};
use dflockd_client::time::Timer as _;
use embassy_executor::Spawner;
use embassy_net::tcp::TcpSocket;
use embassy_net::{Ipv4Address, Ipv4Cidr, Stack, StackResources, StaticConfigV4};
use embassy_net_tuntap::TunTapDevice;
use embassy_time::{Instant, Timer, with_timeout};
use static_cell::StaticCell;

/// A lock connection: 128-byte line buffer, no push queue.
type LockConn<'a> = Connection<TcpSocket<'a>, 128, 0>;
/// A signal connection: 256-byte lines, 512 bytes of push queue.
type SigConn<'a> = SignalConn<TcpSocket<'a>, EmbassyTimer, 256, 512>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Socket buffers per connection (smoltcp windows).
const RX: usize = 1024;
const TX: usize = 512;
/// Connections open at once, at most.
const CONNS: usize = 4;

struct Args {
    tap: String,
    ip: Ipv4Cidr,
    server: (Ipv4Address, u16),
    lease: u64,
    read_timeout: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        tap: "tap0".into(),
        ip: Ipv4Cidr::new(Ipv4Address::new(10, 42, 0, 2), 24),
        server: (Ipv4Address::new(10, 42, 0, 1), 6388),
        lease: 2,
        read_timeout: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--tap" => args.tap = value,
            "--ip" => {
                let (ip, len) = value.split_once('/').ok_or("--ip a.b.c.d/len")?;
                let ip: Ipv4Address = ip.parse().map_err(|_| "--ip: bad address")?;
                let len: u8 = len.parse().map_err(|_| "--ip: bad prefix length")?;
                args.ip = Ipv4Cidr::new(ip, len);
            }
            "--server" => {
                let addr: std::net::SocketAddrV4 =
                    value.parse().map_err(|_| "--server a.b.c.d:port")?;
                args.server = (*addr.ip(), addr.port());
            }
            "--lease" => args.lease = value.parse().map_err(|_| "--lease SECS")?,
            "--read-timeout" => {
                args.read_timeout = value.parse().map_err(|_| "--read-timeout SECS")?
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if args.lease == 0 || args.read_timeout < 2 {
        return Err("--lease must be > 0 and --read-timeout >= 2".into());
    }
    Ok(args)
}

/// Socket buffers of one connection.
struct Bufs {
    rx: [u8; RX],
    tx: [u8; TX],
}

#[embassy_executor::task]
async fn net_task(mut runner: embassy_net::Runner<'static, TunTapDevice>) -> ! {
    runner.run().await
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let code = match parse_args() {
        Ok(args) => run(spawner, args).await,
        Err(e) => {
            eprintln!("dflockd-tap-host: {e}");
            ExitCode::from(2)
        }
    };
    // The std executor never returns; leave the process from here.
    std::process::exit(if code == ExitCode::SUCCESS { 0 } else { 1 });
}

async fn run(spawner: Spawner, args: Args) -> ExitCode {
    let device = match TunTapDevice::new(&args.tap) {
        Ok(d) => d,
        Err(e) => {
            eprintln!(
                "cannot open TAP device {}: {e} (run scripts/embassy-tap-test as root)",
                args.tap
            );
            return ExitCode::from(2);
        }
    };
    let config = embassy_net::Config::ipv4_static(StaticConfigV4 {
        address: args.ip,
        gateway: None,
        dns_servers: Default::default(),
    });
    static RESOURCES: StaticCell<StackResources<CONNS>> = StaticCell::new();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x5eed);
    let (stack, runner) =
        embassy_net::new(device, config, RESOURCES.init(StackResources::new()), seed);
    spawner.spawn(net_task(runner).expect("net task"));
    stack.wait_config_up().await;
    println!(
        "embassy-net up on {} as {}, server {}:{}",
        args.tap, args.ip, args.server.0, args.server.1
    );

    static BUFS: StaticCell<[Bufs; CONNS]> = StaticCell::new();
    let bufs = BUFS.init(core::array::from_fn(|_| Bufs {
        rx: [0; RX],
        tx: [0; TX],
    }));

    let mut t = Tally::default();
    let ctx = Ctx { stack, args: &args };

    print_sizes(&ctx, bufs).await;

    let lease = Duration::from_secs(args.lease);
    let hold_for = lease * 5 / 2; // more than two lease periods
    let [a, b, c, d] = bufs;
    t.check(
        "lock held with renewal across >2 lease periods, then released",
        Box::pin(deadline(
            hold_for + Duration::from_secs(20),
            lock_hold(&ctx, a, b, hold_for),
        )),
    )
    .await;
    t.check(
        "semaphore: limit 2 admits two holders, refuses a third, frees a slot on release",
        Box::pin(deadline(Duration::from_secs(20), semaphore(&ctx, a, b, c))),
    )
    .await;
    let idle = Duration::from_secs(args.read_timeout) + Duration::from_millis(1500);
    t.check(
        "signals: listen, emit, receive; heartbeat keeps the listener past the server's read timeout",
        Box::pin(deadline(idle + Duration::from_secs(20), signals(&ctx, a, b, d, idle))),
    )
    .await;

    println!("\n{} passed, {} failed", t.passed, t.failed);
    if t.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

struct Ctx<'a> {
    stack: Stack<'static>,
    args: &'a Args,
}

impl Ctx<'_> {
    async fn connect<'b, const N: usize, const P: usize>(
        &self,
        bufs: &'b mut Bufs,
    ) -> Result<Connection<TcpSocket<'b>, N, P>, String>
    where
        'static: 'b,
    {
        connect::<N, P>(
            self.stack,
            self.args.server,
            &mut bufs.rx,
            &mut bufs.tx,
            CONNECT_TIMEOUT,
        )
        .await
        .map_err(|e| format!("connect: {e:?}"))
    }

    /// Lock options matching the test server: the asked lease and its
    /// read timeout (renews never leave the connection idle that long).
    fn spec<'k>(&self, spec: LockSpec<'k>) -> LockSpec<'k> {
        spec.lease_ttl(Duration::from_secs(self.args.lease))
            .read_timeout(Duration::from_secs(self.args.read_timeout))
            .acquire_timeout(Duration::from_secs(2))
    }
}

/// Closes a connection politely (FIN) so the server frees it at once.
async fn close<const N: usize, const P: usize>(mut conn: Connection<TcpSocket<'_>, N, P>) {
    let socket = conn.transport_mut();
    socket.close();
    let _ = with_timeout(embassy_time::Duration::from_secs(1), socket.flush()).await;
}

#[derive(Default)]
struct Tally {
    passed: u32,
    failed: u32,
}

impl Tally {
    /// Runs one check. The check's future is boxed: this is a host harness,
    /// and each check awaits several client futures in sequence (the
    /// firmware keeps such futures in statically allocated task storage).
    async fn check(
        &mut self,
        name: &str,
        fut: Pin<Box<dyn Future<Output = Result<(), String>> + '_>>,
    ) {
        println!("\n-- {name}");
        let start = Instant::now();
        match fut.await {
            Ok(()) => {
                self.passed += 1;
                println!("PASS {name} ({} ms)", start.elapsed().as_millis());
            }
            Err(e) => {
                self.failed += 1;
                println!("FAIL {name}: {e}");
            }
        }
    }
}

async fn deadline<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    let limit = embassy_time::Duration::from_millis(limit.as_millis() as u64);
    with_timeout(limit, fut)
        .await
        .unwrap_or_else(|_| Err(format!("no result within {} ms", limit.as_millis())))
}

fn err<E: core::fmt::Debug>(what: &'static str) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e:?}")
}

fn ms_since(start: Instant) -> u64 {
    start.elapsed().as_millis()
}

/// Lock on A with a short lease, held by `Lease::hold` for `hold_for`
/// (renewing on A while the held future runs); B checks during the hold
/// that the lock stays taken after the first lease would have expired, and
/// gets it after the release.
async fn lock_hold(
    ctx: &Ctx<'_>,
    a: &mut Bufs,
    b: &mut Bufs,
    hold_for: Duration,
) -> Result<(), String> {
    const KEY: &str = "tap/pump";
    let timer = EmbassyTimer;
    let spec = ctx.spec(LockSpec::lock(KEY));
    let mut ca: LockConn<'_> = ctx.connect(a).await?;
    let mut cb: LockConn<'_> = ctx.connect(b).await?;

    let start = Instant::now();
    let mut lease: Lease<'_> = spec
        .acquire(&mut ca, &timer)
        .await
        .map_err(err("acquire"))?
        .ok_or("acquire timed out on a free lock")?;
    let first_deadline = lease.deadline();
    println!(
        "acquired {KEY}: ttl {:?}, fence {}, deadline in {} ms",
        lease.ttl(),
        lease.fence(),
        first_deadline
            .as_millis()
            .saturating_sub(timer.now().as_millis())
    );

    // The critical section: B probes twice, each time after a previous
    // lease would have expired without renewal.
    let half = hold_for / 2;
    let probes = async {
        let mut seen = [false; 2];
        for s in &mut seen {
            Timer::after_millis(half.as_millis() as u64).await;
            let other = spec.try_acquire(&mut cb, &timer).await;
            println!(
                "  t+{} ms: other connection try_acquire -> {:?}",
                ms_since(start),
                other.as_ref().map(|g| g.is_some())
            );
            *s = matches!(other, Ok(None));
        }
        seen
    };
    let seen = lease
        .hold(&mut ca, &timer, probes)
        .await
        .map_err(err("hold"))?;
    let held_ms = ms_since(start);
    let moved = lease
        .deadline()
        .as_millis()
        .saturating_sub(first_deadline.as_millis());
    println!(
        "held {held_ms} ms with a {:?} lease; deadline moved {moved} ms by renewals, last rtt {:?}",
        lease.ttl(),
        lease.rtt()
    );
    if seen != [true, true] {
        return Err(format!(
            "the other connection could take the held lock: {seen:?}"
        ));
    }
    if held_ms < 2 * ctx.args.lease * 1000 {
        return Err(format!("held only {held_ms} ms"));
    }
    if moved < ctx.args.lease * 1000 {
        return Err(format!("deadline moved only {moved} ms: renewals missing"));
    }
    lease
        .release(&mut ca, &timer)
        .await
        .map_err(err("release"))?;
    println!("released {KEY}");

    let after = spec
        .try_acquire(&mut cb, &timer)
        .await
        .map_err(err("acquire after release"))?
        .ok_or("lock still taken after release")?;
    println!(
        "other connection acquired {KEY} after release (fence {})",
        after.fence()
    );
    after
        .release(&mut cb, &timer)
        .await
        .map_err(err("release B"))?;
    close(ca).await;
    close(cb).await;
    Ok(())
}

async fn semaphore(ctx: &Ctx<'_>, a: &mut Bufs, b: &mut Bufs, c: &mut Bufs) -> Result<(), String> {
    const KEY: &str = "tap/pool";
    let timer = EmbassyTimer;
    let spec = ctx.spec(LockSpec::semaphore(KEY, 2));
    let mut ca: LockConn<'_> = ctx.connect(a).await?;
    let mut cb: LockConn<'_> = ctx.connect(b).await?;
    let mut cc: LockConn<'_> = ctx.connect(c).await?;
    let la = spec
        .try_acquire(&mut ca, &timer)
        .await
        .map_err(err("A"))?
        .ok_or("A refused")?;
    let lb = spec
        .try_acquire(&mut cb, &timer)
        .await
        .map_err(err("B"))?
        .ok_or("B refused")?;
    println!("two holders of {KEY} (limit 2)");
    if spec
        .try_acquire(&mut cc, &timer)
        .await
        .map_err(err("C"))?
        .is_some()
    {
        return Err("a third holder got a slot of a limit-2 semaphore".into());
    }
    println!("third refused while full");
    la.release(&mut ca, &timer)
        .await
        .map_err(err("release A"))?;
    let lc = spec
        .try_acquire(&mut cc, &timer)
        .await
        .map_err(err("C after release"))?
        .ok_or("C refused after a slot was freed")?;
    println!("third admitted after one release");
    lb.release(&mut cb, &timer)
        .await
        .map_err(err("release B"))?;
    lc.release(&mut cc, &timer)
        .await
        .map_err(err("release C"))?;
    close(ca).await;
    close(cb).await;
    close(cc).await;
    Ok(())
}

async fn signals(
    ctx: &Ctx<'_>,
    a: &mut Bufs,
    b: &mut Bufs,
    d: &mut Bufs,
    idle: Duration,
) -> Result<(), String> {
    let timer = EmbassyTimer;
    let read_timeout = Duration::from_secs(ctx.args.read_timeout);
    let heartbeat = Heartbeat::new(read_timeout / 3, read_timeout).map_err(err("heartbeat"))?;
    let conn = ctx.connect::<256, 512>(d).await?;
    let mut sigs: SigConn<'_> = SignalConn::with_heartbeat(conn, timer, heartbeat);
    sigs.listen("tap.events.>", None)
        .await
        .map_err(err("listen"))?;
    println!(
        "listening on tap.events.> (heartbeat {:?})",
        heartbeat.interval()
    );

    let mut emitter: LockConn<'_> = ctx.connect(a).await?;
    let n = emitter
        .emit("tap.events.hello", "one")
        .await
        .map_err(err("emit"))?;
    if n != 1 {
        return Err(format!("emit delivered to {n} subscribers, expected 1"));
    }
    expect_signal(&mut sigs, "tap.events.hello", "one").await?;
    close(emitter).await;

    // Quiet for longer than the server's read timeout: only the heartbeat
    // keeps the listener alive. wait() + keepalive() is the cancel-safe way
    // to bound the wait.
    let until = Instant::now() + embassy_time::Duration::from_millis(idle.as_millis() as u64);
    let mut pings = 0;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left == embassy_time::Duration::from_ticks(0) {
            break;
        }
        match with_timeout(left, sigs.wait()).await {
            Err(_) => break,
            Ok(Ok(Wake::HeartbeatDue)) => {
                sigs.keepalive().await.map_err(err("keepalive"))?;
                pings += 1;
            }
            Ok(Ok(Wake::Signal)) => return Err("unexpected signal while idle".into()),
            Ok(Err(e)) => return Err(format!("listener lost while idle: {e:?}")),
        }
    }
    println!(
        "idle {} ms (server read timeout {:?}): {pings} heartbeat pings",
        idle.as_millis(),
        read_timeout
    );
    if pings == 0 {
        return Err("no heartbeat was sent".into());
    }

    let mut emitter: LockConn<'_> = ctx.connect(b).await?;
    let n = emitter
        .emit("tap.events.bye", "two")
        .await
        .map_err(err("emit 2"))?;
    if n != 1 {
        return Err(format!(
            "second emit delivered to {n}, expected 1: listener gone"
        ));
    }
    expect_signal(&mut sigs, "tap.events.bye", "two").await?;
    println!("dropped signals: {}", sigs.dropped_signals());
    close(emitter).await;
    close(sigs.into_inner()).await;
    Ok(())
}

async fn expect_signal(sigs: &mut SigConn<'_>, channel: &str, payload: &str) -> Result<(), String> {
    let sig = with_timeout(embassy_time::Duration::from_secs(3), sigs.next())
        .await
        .map_err(|_| format!("no signal on {channel} within 3 s"))?
        .map_err(err("next"))?;
    println!("received signal {} {}", sig.channel, sig.payload);
    if sig.channel != channel || sig.payload != payload {
        return Err(format!(
            "got {} {}, expected {channel} {payload}",
            sig.channel, sig.payload
        ));
    }
    Ok(())
}

/// RAM of the client's pieces on this target, and of the futures the
/// example awaits (they live in the task, not on a heap).
async fn print_sizes(ctx: &Ctx<'_>, bufs: &mut [Bufs; CONNS]) {
    use core::mem::{size_of, size_of_val};
    println!("\nsizes on {} (bytes):", std::env::consts::ARCH);
    println!(
        "  TcpSocket                               {:>5}",
        size_of::<TcpSocket<'static>>()
    );
    println!(
        "  Connection<TcpSocket, 128, 0>           {:>5}",
        size_of::<LockConn<'static>>()
    );
    println!(
        "  Connection<TcpSocket, 256, 512>         {:>5}",
        size_of::<Connection<TcpSocket<'static>, 256, 512>>()
    );
    println!(
        "  SignalConn<TcpSocket, _, 256, 512>      {:>5}",
        size_of::<SigConn<'static>>()
    );
    println!(
        "  LockSpec                                {:>5}",
        size_of::<LockSpec<'static>>()
    );
    println!(
        "  Lease                                   {:>5}",
        size_of::<Lease<'static>>()
    );
    println!("  socket buffers per connection (rx+tx)   {:>5}", RX + TX);
    let timer = EmbassyTimer;
    let spec = ctx.spec(LockSpec::lock("sizes"));
    // Futures are only built to be measured, never polled.
    let [a, ..] = bufs;
    let fut = ctx.connect::<128, 0>(a);
    println!(
        "  future: connect                         {:>5}",
        size_of_val(&fut)
    );
    drop(fut);
    let mut socket = TcpSocket::new(ctx.stack, &mut a.rx, &mut a.tx);
    socket.abort();
    let mut conn: LockConn<'_> = Connection::new(socket);
    let fut = conn.acquire(dflockd_client::Kind::Lock, "sizes", 2, Some(2));
    println!(
        "  future: Connection::acquire             {:>5}",
        size_of_val(&fut)
    );
    drop(fut);
    let fut = spec.acquire(&mut conn, &timer);
    println!(
        "  future: LockSpec::acquire               {:>5}",
        size_of_val(&fut)
    );
    drop(fut);
    let grant = dflockd_client::Grant {
        token: dflockd_client::Token::parse(b"0123456789abcdef0123456789abcdef").expect("token"),
        lease: 2,
    };
    let mut lease = Lease::from_grant(&spec, grant, timer.now(), timer.now());
    let fut = lease.renew(&mut conn, &timer);
    println!(
        "  future: Lease::renew                    {:>5}",
        size_of_val(&fut)
    );
    drop(fut);
    let fut = lease.hold(&mut conn, &timer, core::future::ready(()));
    println!(
        "  future: Lease::hold (ready body)        {:>5}",
        size_of_val(&fut)
    );
    drop(fut);
    let fut = lease.release(&mut conn, &timer);
    println!(
        "  future: Lease::release                  {:>5}",
        size_of_val(&fut)
    );
    drop(fut);
    let mut sigs: SigConn<'_> = SignalConn::new(Connection::new(conn.into_inner()), timer);
    let fut = sigs.next();
    println!(
        "  future: SignalConn::next                {:>5}",
        size_of_val(&fut)
    );
    drop(fut);
    let fut = sigs.emit("a", "b");
    println!(
        "  future: SignalConn::emit                {:>5}",
        size_of_val(&fut)
    );
    drop(fut);
    let fut = sigs.listen("a", None);
    println!(
        "  future: SignalConn::listen              {:>5}",
        size_of_val(&fut)
    );
    drop(fut);
}
