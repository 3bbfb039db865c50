//! dflockd-client firmware for Arm's MPS2 boards as QEMU emulates them:
//! `mps2-an386` (Cortex-M4) and `mps2-an500` (Cortex-M7), each with an SMSC
//! LAN9118 Ethernet controller and CMSDK UARTs.
//!
//! The application is the NUCLEO-F767ZI's, the same module
//! (`examples-embassy/shared/pump_app.rs`): DHCP, a signal listener on
//! `site.pump.>` whose signals trigger pump runs, and a pump run that takes
//! the lock `site/pump`, drives the pump (the board's LED 0) while
//! `Lease::hold` renews the lease, and releases it. This board adds what
//! the NUCLEO gets from its HAL (a LAN9118 driver, a SysTick time driver,
//! UART output) and a test task that drives the application from outside
//! and checks it over the network, as `scripts/firmware-qemu-test` runs it:
//!
//! 1. DHCP from QEMU's user network;
//! 2. a signal round trip: `site.pump.run` emitted on another connection
//!    reaches the listener and starts a pump run;
//! 3. the lock is held across renewals: another connection is refused the
//!    lock at 1.5 and 2.5 lease periods into the run;
//! 4. the run ends and releases the lock: another connection takes it;
//! 5. a semaphore of limit 2 admits two holders, refuses a third, and frees
//!    a slot on release;
//! 6. the heartbeat keeps the idle listener past the server's read timeout:
//!    a second signal still reaches it.
//!
//! Each check prints `PASS <name>` or `FAIL <name>: <why>`, then the stack
//! high-water mark (cortex-m-rt paints the stack at boot) and
//! `firmware: N passed, M failed`; QEMU exits through semihosting with
//! status 0 only if every check passed.
//!
//! Settings come from the semihosting command line
//! (`-semihosting-config enable=on,target=native,arg=...`), words of
//! `key=value`: `server=10.0.2.2:6388` (QEMU's alias for the host's
//! loopback), `lease=2` (s), `hold=6` (s, the pump run), `read-timeout=3`
//! (s, the server's), `seed=N` (smoltcp's random seed).
#![no_std]
#![no_main]
#![warn(clippy::large_futures)]

mod console;
mod lan9118;
mod time_driver;

/// The application shared with the NUCLEO board.
#[path = "../../shared/pump_app.rs"]
#[allow(dead_code)] // the TLS path and its helpers are the NUCLEO's
mod pump_app;

use core::sync::atomic::{AtomicU32, Ordering};
use core::time::Duration as CoreDuration;

use dflockd_client::embassy::{EmbassyTimer, connect};
use dflockd_client::lock::LockSpec;
use dflockd_client::signal::Heartbeat;
use embassy_executor::Spawner;
use embassy_net::tcp::TcpSocket;
use embassy_net::{Ipv4Address, Stack, StackResources};
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::once_lock::OnceLock;
use embassy_sync::signal::Signal;
use embassy_time::{Duration, Instant, Timer, with_timeout};
use pump_app::{Actuator, Board, LockBufs, Settings, SignalBufs};
use static_cell::StaticCell;

/// The SCC's ID register says which FPGA image (board) this is.
const SCC_ID: usize = 0x4002_f000 + 0xffc;
/// The LAN9118: on AN385/AN386 in the peripheral region, on AN500 at
/// 0xA000_0000; its interrupt is IRQ 13 on both.
const LAN9118_AN386: usize = 0x4020_0000;
const LAN9118_AN500: usize = 0xa000_0000;
const LAN9118_IRQ: u16 = 13;
/// FPGA I/O: LED0 register (two user LEDs, bits 0 and 1).
const FPGAIO_LED0: usize = 0x4002_8000;

/// Number of checks the test task runs (the script counts the missing ones
/// as failed if the guest stops early).
const CHECKS: u32 = 6;

#[derive(Clone, Copy)]
struct Irq(u16);

// SAFETY: the number is a valid external interrupt of the MPS2 images.
unsafe impl cortex_m::interrupt::InterruptNumber for Irq {
    fn number(self) -> u16 {
        self.0
    }
}

/// The settings from the command line, set once in `main` before any task
/// starts.
static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// The defaults of the command line, should `SETTINGS` be read early.
static DEFAULTS: Settings = Settings {
    server: (Ipv4Address::new(10, 0, 2, 2), 6388),
    lease: CoreDuration::from_secs(2),
    run: Duration::from_secs(6),
    acquire_timeout: CoreDuration::from_secs(5),
    connect_timeout: CoreDuration::from_secs(5),
    read_timeout: Some(CoreDuration::from_secs(3)),
    heartbeat: match Heartbeat::new(CoreDuration::from_secs(1), CoreDuration::from_secs(3)) {
        Ok(h) => h,
        Err(_) => panic!("1 s is below 3 s"),
    },
};

/// This board, for the shared application.
struct Mps2;

impl Board for Mps2 {
    fn settings() -> &'static Settings {
        SETTINGS.try_get().unwrap_or(&DEFAULTS)
    }
}

/// One of the board's user LEDs: the pump (bit 0) or the indicator (bit 1).
struct Led {
    bit: u32,
}

/// How often the pump was switched on: the test task watches it.
static PUMP_ON: AtomicU32 = AtomicU32::new(0);
/// The end of each pump run: `true` when it ran and released the lock.
static RUN_DONE: Signal<CriticalSectionRawMutex, bool> = Signal::new();

impl Led {
    fn reg() -> *mut u32 {
        FPGAIO_LED0 as *mut u32
    }
}

impl Actuator for Led {
    fn set_on(&mut self, on: bool) {
        // SAFETY: the FPGA I/O LED register; only thread mode writes it.
        unsafe {
            let v = Self::reg().read_volatile();
            let was_on = v & (1 << self.bit) != 0;
            let v = if on {
                v | (1 << self.bit)
            } else {
                v & !(1 << self.bit)
            };
            Self::reg().write_volatile(v);
            if on && !was_on && self.bit == 0 {
                PUMP_ON.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn toggle(&mut self) {
        // SAFETY: as above.
        let on = unsafe { Self::reg().read_volatile() } & (1 << self.bit) != 0;
        self.set_on(!on);
    }
}

/// What the command line configures.
struct Args {
    server: (Ipv4Address, u16),
    lease: u64,
    hold: u64,
    read_timeout: u64,
    seed: u64,
}

fn parse_args(line: &str) -> Result<Args, &str> {
    let mut args = Args {
        server: (Ipv4Address::new(10, 0, 2, 2), 6388),
        lease: 2,
        hold: 6,
        read_timeout: 3,
        seed: 0x5eed_d10c,
    };
    // The first word is the program name when QEMU passes one.
    for word in line.split_ascii_whitespace() {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        let num = || value.parse::<u64>().map_err(|_| word);
        match key {
            "server" => args.server = parse_endpoint(value).ok_or(word)?,
            "lease" => args.lease = num()?,
            "hold" => args.hold = num()?,
            "read-timeout" => args.read_timeout = num()?,
            "seed" => args.seed = num()?,
            _ => return Err(word),
        }
    }
    if args.lease == 0 || args.hold <= args.lease || args.read_timeout < 2 {
        return Err("need lease > 0, hold > lease, read-timeout >= 2");
    }
    Ok(args)
}

/// `a.b.c.d:port`.
fn parse_endpoint(s: &str) -> Option<(Ipv4Address, u16)> {
    let (ip, port) = s.split_once(':')?;
    let mut octets = [0u8; 4];
    let mut parts = ip.split('.');
    for o in &mut octets {
        *o = parts.next()?.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    let port: u16 = port.parse().ok()?;
    (port != 0).then_some((Ipv4Address::from(octets), port))
}

#[embassy_executor::task]
async fn net_task(mut runner: embassy_net::Runner<'static, lan9118::Lan9118>) -> ! {
    runner.run().await
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    console::init();
    let mut line = [0u8; 160];
    let args = match parse_args(console::cmdline(&mut line).unwrap_or("")) {
        Ok(a) => a,
        Err(bad) => {
            println!("bad argument: {}", bad);
            console::exit(false);
        }
    };
    let Some(mut core) = cortex_m::Peripherals::take() else {
        console::exit(false);
    };
    time_driver::init(core.SYST);

    // SAFETY: a read-only identification register of the MPS2 SCC.
    let scc_id = unsafe { (SCC_ID as *const u32).read_volatile() };
    let (board, base) = match (scc_id >> 4) & 0xfff {
        0x500 => ("AN500 (Cortex-M7)", LAN9118_AN500),
        0x386 => ("AN386 (Cortex-M4)", LAN9118_AN386),
        0x385 => ("AN385 (Cortex-M3)", LAN9118_AN386),
        _ => ("unknown MPS2 image, assuming AN386", LAN9118_AN386),
    };
    println!(
        "dflockd-client firmware on MPS2 {} (SCC id {:#010x}), server {}:{}, lease {} s, hold {} s, server read timeout {} s",
        board, scc_id, args.server.0, args.server.1, args.lease, args.hold, args.read_timeout
    );

    static FRAMES: StaticCell<lan9118::Buffers> = StaticCell::new();
    let mut device = match lan9118::Lan9118::new(base, FRAMES.init(lan9118::Buffers::new())) {
        Ok(d) => d,
        Err(e) => {
            println!("FAIL LAN9118 at {:#x}: {}", base, e);
            finish(0, CHECKS);
        }
    };
    let m = device.mac();
    println!(
        "LAN9118 id {:#010x}, MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, link {:?}",
        device.id_rev(),
        m[0],
        m[1],
        m[2],
        m[3],
        m[4],
        m[5],
        device.link_up()
    );
    // SAFETY: the handler (DefaultHandler below) is ready; unmasking an
    // interrupt cannot break a critical section in thread mode here.
    unsafe {
        core.NVIC.set_priority(Irq(LAN9118_IRQ), 0x80);
        cortex_m::peripheral::NVIC::unmask(Irq(LAN9118_IRQ));
    }

    // DHCP, the pump's lock connection, the listener, three test connections.
    static RESOURCES: StaticCell<StackResources<6>> = StaticCell::new();
    let config = embassy_net::Config::dhcpv4(Default::default());
    let (stack, runner) = embassy_net::new(
        device,
        config,
        RESOURCES.init(StackResources::new()),
        args.seed,
    );
    spawner.spawn(net_task(runner).unwrap_or_else(|_| console::exit(false)));

    let read_timeout = CoreDuration::from_secs(args.read_timeout);
    let heartbeat = match Heartbeat::new(read_timeout / 3, read_timeout) {
        Ok(h) => h,
        Err(_) => console::exit(false),
    };
    let _ = SETTINGS.init(Settings {
        server: args.server,
        lease: CoreDuration::from_secs(args.lease),
        run: Duration::from_secs(args.hold),
        acquire_timeout: CoreDuration::from_secs(5),
        connect_timeout: CoreDuration::from_secs(5),
        read_timeout: Some(read_timeout),
        heartbeat,
    });

    spawner.spawn(pump_task(stack, Led { bit: 0 }).unwrap_or_else(|_| console::exit(false)));
    spawner.spawn(signal_task(stack, Led { bit: 1 }).unwrap_or_else(|_| console::exit(false)));
    spawner.spawn(stack_probe().unwrap_or_else(|_| console::exit(false)));
    spawner.spawn(test_task(stack).unwrap_or_else(|_| console::exit(false)));
}

/// The application's pump task, as on the NUCLEO, reporting each run's end.
#[embassy_executor::task]
async fn pump_task(stack: Stack<'static>, mut pump: Led) {
    static BUFS: StaticCell<LockBufs> = StaticCell::new();
    let bufs = BUFS.init(LockBufs::new());
    loop {
        let _ = with_timeout(Duration::from_secs(60), pump_app::TRIGGER.wait()).await;
        let out = pump_app::run_pump::<Mps2, _>(stack, &mut pump, bufs).await;
        pump.set_on(false); // the safe state, whatever happened
        pump_app::report(&out);
        RUN_DONE.signal(matches!(out, Ok(true)));
    }
}

/// The application's signal task, as on the NUCLEO.
#[embassy_executor::task]
async fn signal_task(stack: Stack<'static>, mut indicator: Led) {
    static BUFS: StaticCell<SignalBufs> = StaticCell::new();
    let bufs = BUFS.init(SignalBufs::new());
    loop {
        if let Err(e) = pump_app::listen::<Mps2, _>(stack, &mut indicator, bufs).await {
            warn!("signals: {:?}; reconnecting in 1 s", e);
        }
        Timer::after_secs(1).await;
    }
}

// ---- the test ---------------------------------------------------------------

type TestConn<'a> = dflockd_client::Connection<TcpSocket<'a>, 128, 0>;

/// A failed check: what went wrong (details were printed as they happened).
type Check = Result<(), &'static str>;

#[derive(Default)]
struct Tally {
    passed: u32,
    failed: u32,
}

impl Tally {
    fn record(&mut self, name: &str, started: Instant, out: Check) -> bool {
        match out {
            Ok(()) => {
                self.passed += 1;
                println!("PASS {} ({} ms)", name, started.elapsed().as_millis());
                true
            }
            Err(why) => {
                self.failed += 1;
                println!("FAIL {}: {}", name, why);
                false
            }
        }
    }
}

/// Runs `fut` under a deadline.
async fn within(limit: Duration, fut: impl Future<Output = Check>) -> Check {
    with_timeout(limit, fut)
        .await
        .unwrap_or(Err("no result within the deadline"))
}

async fn open<'a>(
    stack: Stack<'static>,
    s: &Settings,
    bufs: &'a mut LockBufs,
) -> Result<TestConn<'a>, &'static str> {
    connect::<128, 0>(
        stack,
        s.server,
        &mut bufs.rx,
        &mut bufs.tx,
        s.connect_timeout,
    )
    .await
    .map_err(|e| {
        warn!("connect: {:?}", e);
        "cannot connect to the server"
    })
}

fn client_err<E: core::fmt::Debug>(what: &'static str) -> impl FnOnce(E) -> &'static str {
    move |e| {
        warn!("{}: {:?}", what, e);
        what
    }
}

/// Emits `site.pump.run` until the listener gets it (it may still be
/// subscribing), then waits until the pump runs. Returns when it started.
async fn trigger_run(conn: &mut TestConn<'_>, payload: &str) -> Result<Instant, &'static str> {
    let before = PUMP_ON.load(Ordering::Relaxed);
    let mut n = 0;
    for _ in 0..50 {
        n = conn
            .emit("site.pump.run", payload)
            .await
            .map_err(client_err("emit"))?;
        if n > 0 {
            break;
        }
        Timer::after_millis(200).await;
    }
    info!(
        "signal site.pump.run {} delivered to {} listener(s)",
        payload, n
    );
    if n != 1 {
        return Err("the signal did not reach exactly one listener");
    }
    while PUMP_ON.load(Ordering::Relaxed) == before {
        Timer::after_millis(20).await;
    }
    Ok(Instant::now())
}

/// `try_acquire` on the pump's lock from a test connection must be refused.
async fn expect_refused(conn: &mut TestConn<'_>, spec: &LockSpec<'_>) -> Check {
    let timer = EmbassyTimer;
    match spec
        .try_acquire(conn, &timer)
        .await
        .map_err(client_err("try_acquire"))?
    {
        None => Ok(()),
        Some(lease) => {
            let _ = lease.release(conn, &timer).await;
            Err("another connection got the lock the pump holds")
        }
    }
}

async fn semaphore(
    a: &mut TestConn<'_>,
    b: &mut TestConn<'_>,
    c: &mut TestConn<'_>,
    s: &Settings,
) -> Check {
    let timer = EmbassyTimer;
    let spec = LockSpec::semaphore("site/power", 2)
        .lease_ttl(s.lease)
        .read_timeout(s.read_timeout.unwrap_or(s.lease * 2));
    let la = spec.try_acquire(a, &timer).await.map_err(client_err("A"))?;
    let lb = spec.try_acquire(b, &timer).await.map_err(client_err("B"))?;
    let (Some(la), Some(lb)) = (la, lb) else {
        return Err("a limit-2 semaphore refused one of the first two holders");
    };
    info!("two holders of site/power (limit 2)");
    if let Some(extra) = spec.try_acquire(c, &timer).await.map_err(client_err("C"))? {
        let _ = extra.release(c, &timer).await;
        return Err("a third holder got a slot of a limit-2 semaphore");
    }
    info!("third refused while full");
    la.release(a, &timer)
        .await
        .map_err(client_err("release A"))?;
    let Some(lc) = spec
        .try_acquire(c, &timer)
        .await
        .map_err(client_err("C after release"))?
    else {
        return Err("the third was refused after a slot was freed");
    };
    info!("third admitted after one release");
    lb.release(b, &timer)
        .await
        .map_err(client_err("release B"))?;
    lc.release(c, &timer)
        .await
        .map_err(client_err("release C"))?;
    Ok(())
}

#[embassy_executor::task]
async fn test_task(stack: Stack<'static>) {
    let s = Mps2::settings();
    static BUFS: StaticCell<[LockBufs; 3]> = StaticCell::new();
    let [ba, bb, bc] = BUFS.init([LockBufs::new(), LockBufs::new(), LockBufs::new()]);
    let mut t = Tally::default();
    println!("checks: {}", CHECKS);

    let name = "DHCP: an address from QEMU's user network";
    let t0 = Instant::now();
    let up = with_timeout(Duration::from_secs(15), stack.wait_config_up()).await;
    if let Some(cfg) = stack.config_v4() {
        info!("DHCP: {}", cfg.address);
    }
    if !t.record(name, t0, up.map_err(|_| "no DHCP lease within 15 s")) {
        finish(t.passed, CHECKS - t.passed);
    }

    // Test connections are opened for each step and closed after it: the
    // server drops a connection idle for longer than its read timeout.
    let lease_ms = s.lease.as_millis() as u64;
    let run = s.run;

    let name = "signal round trip: site.pump.run emitted on another connection starts a pump run";
    let t0 = Instant::now();
    let started = with_timeout(Duration::from_secs(15), async {
        let mut c = open(stack, s, ba).await?;
        let out = trigger_run(&mut c, "first").await;
        close(c).await;
        out
    })
    .await
    .unwrap_or(Err("no pump run within 15 s"));
    let run_start = started.unwrap_or(Instant::now());
    t.record(name, t0, started.map(|_| ()));

    let name = "lock held across renewals: refused to another connection at 1.5 and 2.5 leases";
    let spec = pump_app::pump_spec(s);
    // The stack of the application alone: the probe task repaints it now
    // and reads it before the first probe wakes this task again.
    STACK_PROBE.signal(Duration::from_millis(lease_ms * 13 / 10));
    let out = within(run + Duration::from_secs(5), async {
        for probe_ms in [lease_ms * 3 / 2, lease_ms * 5 / 2] {
            Timer::at(run_start + Duration::from_millis(probe_ms)).await;
            let mut c = open(stack, s, bb).await?;
            let out = expect_refused(&mut c, &spec).await;
            close(c).await;
            out?;
            info!(
                "t+{} ms: another connection is refused the lock",
                run_start.elapsed().as_millis()
            );
        }
        Ok(())
    })
    .await;
    t.record(name, run_start, out);

    let name = "lock released: the run ends, releases, and another connection takes the lock";
    let out = within(run + Duration::from_secs(10), async {
        if !RUN_DONE.wait().await {
            return Err("the pump run did not end with a release");
        }
        let timer = EmbassyTimer;
        let mut c = open(stack, s, bb).await?;
        let taken = spec.try_acquire(&mut c, &timer).await;
        let out = match taken {
            Ok(Some(lease)) => {
                info!(
                    "another connection took {} (fence {})",
                    pump_app::PUMP_KEY,
                    lease.fence()
                );
                lease
                    .release(&mut c, &timer)
                    .await
                    .map_err(client_err("release"))
            }
            Ok(None) => Err("the lock is still taken after the release"),
            Err(e) => Err(client_err("try_acquire after release")(e)),
        };
        close(c).await;
        out
    })
    .await;
    t.record(name, run_start, out);

    let name = "semaphore: limit 2 admits two holders, refuses a third, frees a slot on release";
    let t0 = Instant::now();
    let out = within(Duration::from_secs(10), async {
        let mut ca = open(stack, s, ba).await?;
        let mut cb = open(stack, s, bb).await?;
        let mut cc = open(stack, s, bc).await?;
        let out = semaphore(&mut ca, &mut cb, &mut cc, s).await;
        close(ca).await;
        close(cb).await;
        close(cc).await;
        out
    })
    .await;
    t.record(name, t0, out);

    let name =
        "heartbeat: the idle listener outlives the server's read timeout and gets a second signal";
    let t0 = Instant::now();
    let idle = run_start.elapsed();
    let out = within(Duration::from_secs(15), async {
        let rt = s.read_timeout.unwrap_or_default().as_millis() as u64;
        info!(
            "listener idle for {} ms (server read timeout {} ms)",
            idle.as_millis(),
            rt
        );
        if idle.as_millis() <= rt {
            return Err("the listener was not idle longer than the read timeout");
        }
        let mut c = open(stack, s, ba).await?;
        let out = trigger_run(&mut c, "second").await.map(|_| ());
        close(c).await;
        out
    })
    .await;
    t.record(name, t0, out);

    match STACK_DURING_HOLD.try_take() {
        Some(used) => println!(
            "stack high-water mark of the application during the lock hold: {} bytes (hold with renewals, the listener's heartbeat, embassy-net, executor, interrupts; not this test task, not UART formatting)",
            used
        ),
        None => println!("stack high-water mark of the application: not measured"),
    }
    finish(t.passed, t.failed);
}

/// Starts a measurement of [`stack_probe`] for the given time.
static STACK_PROBE: Signal<CriticalSectionRawMutex, Duration> = Signal::new();
/// Its result: bytes of stack used meanwhile.
static STACK_DURING_HOLD: Signal<CriticalSectionRawMutex, usize> = Signal::new();

/// Measures the stack that the other tasks and the interrupts use over a
/// time: repaints the stack from here (a shallow frame: just below the
/// executor's), sleeps, and reads the high-water mark. The test task must
/// not be polled meanwhile (it sleeps): its own frame is large (its
/// futures are moved through the stack), and it is the harness, not the
/// application.
#[embassy_executor::task]
async fn stack_probe() {
    loop {
        let window = STACK_PROBE.wait().await;
        repaint_stack();
        Timer::after(window).await;
        STACK_DURING_HOLD.signal(stack_high_water().0);
    }
}

/// Closes a test connection politely (FIN), so the server frees it at once.
async fn close(mut conn: TestConn<'_>) {
    let socket = conn.transport_mut();
    socket.close();
    let _ = with_timeout(Duration::from_secs(1), socket.flush()).await;
}

/// Prints the stack high-water mark and the tally, and ends the emulation.
fn finish(passed: u32, failed: u32) -> ! {
    let (used, size) = stack_high_water();
    println!(
        "stack high-water mark: {} bytes of {} (painted at boot; whole firmware: executor, embassy-net, client, UART formatting, interrupts)",
        used, size
    );
    println!("firmware: {} passed, {} failed", passed, failed);
    console::exit(failed == 0);
}

/// Bytes of stack ever used: cortex-m-rt (`paint-stack`) fills the space
/// between `_stack_end` and `_stack_start` with 0xCCCCCCCC before `main`;
/// the deepest word no longer painted marks the high-water.
fn stack_high_water() -> (usize, usize) {
    unsafe extern "C" {
        static _stack_end: u32;
        static _stack_start: u32;
    }
    let bottom = (&raw const _stack_end) as usize;
    let top = (&raw const _stack_start) as usize;
    let mut p = bottom;
    // SAFETY: [bottom, top) is the stack region, word-aligned RAM.
    while p < top && unsafe { (p as *const u32).read_volatile() } == cortex_m_rt::STACK_PAINT_VALUE
    {
        p += 4;
    }
    (top - p, top - bottom)
}

/// Paints the unused stack again (below the current stack pointer, less a
/// margin), with interrupts off, so that a later [`stack_high_water`]
/// measures only what ran in between.
fn repaint_stack() {
    unsafe extern "C" {
        static _stack_end: u32;
    }
    critical_section::with(|_| {
        let bottom = (&raw const _stack_end) as usize;
        let sp = cortex_m::register::msp::read() as usize;
        let mut p = bottom;
        while p + 256 < sp {
            // SAFETY: below the stack pointer (with a margin), nothing lives;
            // interrupts are off, so nothing pushes there meanwhile.
            unsafe { (p as *mut u32).write_volatile(cortex_m_rt::STACK_PAINT_VALUE) };
            p += 4;
        }
    });
}

#[cortex_m_rt::exception]
unsafe fn DefaultHandler(irqn: i16) {
    if irqn == LAN9118_IRQ as i16 {
        lan9118::on_interrupt();
    }
}

#[cortex_m_rt::exception]
unsafe fn HardFault(frame: &cortex_m_rt::ExceptionFrame) -> ! {
    println!("HardFault at pc {:#010x}", frame.pc());
    console::exit(false);
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("panic: {}", info);
    console::exit(false);
}
