//! The firmware application shared by the boards in `examples-embassy/`
//! (included with `#[path]` by `nucleo-f767zi` and `mps2-qemu`: one module,
//! two boards).
//!
//! A pump (any [`Actuator`]) that only one controller on the site may drive
//! at a time: a pump run takes the lock `site/pump`, drives the pump while
//! [`Lease::hold`](dflockd_client::lock::Lease::hold) renews the lease on the
//! same connection, switches it off and releases the lock. A second
//! connection listens on `site.pump.>`; every signal toggles an indicator and
//! triggers a pump run ([`TRIGGER`]). The board supplies the network stack,
//! the actuators, the socket buffers (statics) and its [`Settings`] (through
//! [`Board`]), and spawns the tasks that call [`run_pump`] and [`listen`].
//!
//! Logging goes through the including crate's `info!` and `warn!` macros
//! (defmt on the NUCLEO, the UART on MPS2), so the format strings here use
//! only `{}` on strings and integers and `{:?}` on errors: both defmt and
//! `core::fmt` accept them.

use core::time::Duration as CoreDuration;

use dflockd_client::embassy::{EmbassyTimer, connect};
use dflockd_client::lock::LockSpec;
use dflockd_client::signal::Heartbeat;
use embassy_net::tcp::{self, ConnectError};
use embassy_net::{Ipv4Address, Stack};
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::signal::Signal;
use embassy_time::{Duration, Timer};

use crate::{info, warn};

/// The lock guarding the shared actuator.
pub const PUMP_KEY: &str = "site/pump";
/// The signal pattern the listener subscribes to.
pub const PUMP_SIGNALS: &str = "site.pump.>";

/// Something the application switches: the pump, or the indicator.
pub trait Actuator {
    /// Switches it on or off.
    fn set_on(&mut self, on: bool);
    /// Switches it over.
    fn toggle(&mut self);
}

/// What a board configures.
pub struct Settings {
    /// The dflockd server.
    pub server: (Ipv4Address, u16),
    /// The pump's lease, renewed by `hold` while the pump runs.
    pub lease: CoreDuration,
    /// How long one pump run lasts.
    pub run: Duration,
    /// How long a pump run waits for the lock.
    pub acquire_timeout: CoreDuration,
    /// Connect timeout per connection.
    pub connect_timeout: CoreDuration,
    /// The server's idle read timeout, when it is not the default: renewals
    /// and heartbeats then never leave a connection idle that long.
    pub read_timeout: Option<CoreDuration>,
    /// The listener's heartbeat (checked against the server read timeout).
    pub heartbeat: Heartbeat,
}

/// Where a board keeps its [`Settings`]. A type rather than a reference
/// argument: a board whose settings are a constant `static` (the NUCLEO)
/// lets the compiler fold them into the code instead of carrying a pointer
/// in every future.
pub trait Board {
    /// The settings.
    fn settings() -> &'static Settings;
}

/// Set by the signal listener; the pump task runs when it fires.
pub static TRIGGER: Signal<CriticalSectionRawMutex, ()> = Signal::new();

/// Socket buffers of one TCP connection, kept in statics (not in futures).
pub struct SocketBufs<const RX: usize, const TX: usize> {
    /// Receive window.
    pub rx: [u8; RX],
    /// Send buffer.
    pub tx: [u8; TX],
}

impl<const RX: usize, const TX: usize> SocketBufs<RX, TX> {
    /// Zeroed buffers (for a `StaticCell` or a `static`).
    pub const fn new() -> Self {
        Self {
            rx: [0; RX],
            tx: [0; TX],
        }
    }
}

/// Socket buffers of the lock connection.
pub type LockBufs = SocketBufs<1024, 512>;
/// Socket buffers of the signal connection.
pub type SignalBufs = SocketBufs<1024, 256>;

/// Why a pump run or the listener failed.
#[derive(Debug)]
pub enum RunError {
    /// The TCP connection could not be opened.
    Connect(ConnectError),
    /// The client reported an error.
    Client(dflockd_client::Error<tcp::Error>),
}

impl From<dflockd_client::Error<tcp::Error>> for RunError {
    fn from(e: dflockd_client::Error<tcp::Error>) -> Self {
        RunError::Client(e)
    }
}

/// Drives the pump for `run`, blinking while it runs. Dropped at any
/// `.await` if the lease is lost.
async fn drive<A: Actuator>(pump: &mut A, run: Duration) {
    let start = embassy_time::Instant::now();
    while start.elapsed() < run {
        pump.toggle();
        Timer::after_millis(500).await;
    }
    pump.set_on(false);
}

/// The pump's lock, as the settings ask for it.
pub fn pump_spec(s: &Settings) -> LockSpec<'static> {
    let spec = LockSpec::lock(PUMP_KEY)
        .lease_ttl(s.lease)
        .acquire_timeout(s.acquire_timeout);
    match s.read_timeout {
        Some(t) => spec.read_timeout(t),
        None => spec,
    }
}

/// Lock, drive while renewing, release. `Ok(false)` when busy.
pub async fn locked_run<B, T, A, const N: usize>(
    conn: &mut dflockd_client::Connection<T, N>,
    pump: &mut A,
) -> dflockd_client::Result<bool, T::Error>
where
    B: Board,
    T: embedded_io_async::Read + embedded_io_async::Write,
    A: Actuator,
{
    let s = B::settings();
    let timer = EmbassyTimer;
    let Some(mut lease) = pump_spec(s).acquire(conn, &timer).await? else {
        return Ok(false);
    };
    info!("holding {} (fence {})", PUMP_KEY, lease.fence());
    let held = lease.hold(conn, &timer, drive(pump, s.run)).await;
    pump.set_on(false);
    held?;
    lease.release(conn, &timer).await?;
    Ok(true)
}

/// One pump run over plain TCP: connect, [`locked_run`], close.
pub async fn run_pump<B: Board, A: Actuator>(
    stack: Stack<'static>,
    pump: &mut A,
    bufs: &mut LockBufs,
) -> Result<bool, RunError> {
    let s = B::settings();
    let mut conn = connect::<128, 0>(
        stack,
        s.server,
        &mut bufs.rx,
        &mut bufs.tx,
        s.connect_timeout,
    )
    .await
    .map_err(RunError::Connect)?;
    let out = locked_run::<B, _, _, 128>(&mut conn, pump).await;
    let socket = conn.transport_mut();
    socket.close();
    let _ = socket.flush().await;
    Ok(out?)
}

/// Logs how a pump run ended.
pub fn report(out: &Result<bool, RunError>) {
    match out {
        Ok(true) => info!("pump run done, lock released"),
        Ok(false) => info!("pump busy: another controller holds {}", PUMP_KEY),
        Err(e) => warn!("pump run failed: {:?}", e),
    }
}

/// Subscribes to [`PUMP_SIGNALS`] and triggers a pump run per signal;
/// returns only on an error (the caller reconnects).
pub async fn listen<B: Board, A: Actuator>(
    stack: Stack<'static>,
    indicator: &mut A,
    bufs: &mut SignalBufs,
) -> Result<(), RunError> {
    use dflockd_client::signal::SignalConn;
    let s = B::settings();
    // 256-byte lines, 512 bytes of queue for signals that arrive while a
    // reply is awaited.
    let conn = connect::<256, 512>(
        stack,
        s.server,
        &mut bufs.rx,
        &mut bufs.tx,
        s.connect_timeout,
    )
    .await
    .map_err(RunError::Connect)?;
    let mut sigs = SignalConn::with_heartbeat(conn, EmbassyTimer, s.heartbeat);
    sigs.listen(PUMP_SIGNALS, None).await?;
    info!("listening on {}", PUMP_SIGNALS);
    loop {
        let sig = sigs.next().await?;
        info!("signal {}: {}", sig.channel, sig.payload);
        indicator.toggle();
        TRIGGER.signal(());
    }
}
