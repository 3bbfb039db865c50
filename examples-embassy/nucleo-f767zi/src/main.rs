//! dflockd-client on a NUCLEO-F767ZI (STM32F767ZI, Cortex-M7, on-chip
//! Ethernet with a LAN8742A PHY), on embassy-net.
//!
//! * DHCP on the Ethernet port, then a TCP connection to the dflockd server
//!   whose address is fixed at build time (`DFLOCKD_SERVER`, default
//!   `192.168.1.10:6388`).
//! * `lock`: the green LED (LD1, PB0) stands for a shared actuator that only
//!   one controller on the site may drive at a time (a pump). The firmware
//!   takes the lock `site/pump` with a 10 s lease, drives the pump for 25 s
//!   while [`Lease::hold`] renews the lease cooperatively on the same
//!   connection, switches the pump off and releases the lock. If the lease
//!   is lost mid-way the pump future is dropped and the pump switched off.
//! * `signals`: a second connection listens on `site.pump.>`; each signal
//!   (for instance `signal site.pump.run now` from any client) toggles the
//!   blue LED (LD2, PB7) and triggers a pump run. A `ping` heartbeat keeps
//!   the quiet connection alive.
//! * `tls`: the lock connection runs over TLS 1.3 (embedded-tls), verified
//!   against the CA given at build time (`DFLOCKD_CA_DER=ca.der`,
//!   `DFLOCKD_TLS_SERVER_NAME`).
//! * Without `lock`: the same application (trigger, pump run, DHCP, a TCP
//!   exchange of one request and one reply line with the same buffers) and
//!   no client code: the baseline that CI subtracts to measure the client's
//!   share of flash and RAM.
//!
//! Logs through defmt over RTT (`cargo run --release` with probe-rs).
#![no_std]
#![no_main]
#![warn(clippy::large_futures)]

use defmt::{info, unwrap, warn};
use embassy_executor::Spawner;
use embassy_net::{Ipv4Address, Stack, StackResources};
use embassy_stm32::bind_interrupts;
use embassy_stm32::eth::{self, Ethernet, GenericPhy, PacketQueue, Sma};
use embassy_stm32::gpio::{Level, Output, Speed};
use embassy_stm32::peripherals::{ETH, ETH_SMA, RNG};
use embassy_stm32::rng::{self, Rng};
use embassy_stm32::time::Hertz;
use embassy_time::{Duration, Timer};
use static_cell::StaticCell;
use {defmt_rtt as _, panic_probe as _};

bind_interrupts!(struct Irqs {
    ETH => eth::InterruptHandler;
    RNG => rng::InterruptHandler<RNG>;
});

type Device = Ethernet<'static, ETH, GenericPhy<Sma<'static, ETH_SMA>>>;

/// The dflockd server, `a.b.c.d:port`, fixed at build time.
const SERVER: &str = match option_env!("DFLOCKD_SERVER") {
    Some(s) => s,
    None => "192.168.1.10:6388",
};
/// [`SERVER`] parsed at compile time (a malformed address fails the build).
const SERVER_ENDPOINT: ([u8; 4], u16) = parse_endpoint(SERVER);

fn server() -> (Ipv4Address, u16) {
    let ([a, b, c, d], port) = SERVER_ENDPOINT;
    (Ipv4Address::new(a, b, c, d), port)
}

#[embassy_executor::task]
async fn net_task(mut runner: embassy_net::Runner<'static, Device>) -> ! {
    runner.run().await
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let p = embassy_stm32::init(clocks());
    info!("dflockd-client firmware, server {}", SERVER);

    let mut rng = Rng::new(p.RNG, Irqs);
    let seed = rng.next_u64();

    // Locally administered MAC, made unique-ish from the TRNG.
    let mut mac = [0x02, 0x00, 0x00, 0x00, 0x00, 0x00];
    rng.fill_bytes(&mut mac[3..]);

    static PACKETS: StaticCell<PacketQueue<4, 4>> = StaticCell::new();
    let device = Ethernet::new(
        PACKETS.init(PacketQueue::new()),
        p.ETH,
        Irqs,
        p.PA1,  // REF_CLK
        p.PA7,  // CRS_DV
        p.PC4,  // RXD0
        p.PC5,  // RXD1
        p.PG13, // TXD0
        p.PB13, // TXD1
        p.PG11, // TX_EN
        mac,
        p.ETH_SMA,
        p.PA2, // MDIO
        p.PC1, // MDC
    );

    // One socket for DHCP plus one per dflockd connection.
    static RESOURCES: StaticCell<StackResources<3>> = StaticCell::new();
    let config = embassy_net::Config::dhcpv4(Default::default());
    let (stack, runner) =
        embassy_net::new(device, config, RESOURCES.init(StackResources::new()), seed);
    spawner.spawn(unwrap!(net_task(runner)));

    stack.wait_config_up().await;
    if let Some(cfg) = stack.config_v4() {
        info!("DHCP: {}", cfg.address);
    }

    let pump = Output::new(p.PB0, Level::Low, Speed::Low);
    #[cfg(feature = "lock")]
    spawner.spawn(unwrap!(app::pump_task(stack, pump, rng)));
    #[cfg(not(feature = "lock"))]
    {
        let _ = rng;
        spawner.spawn(unwrap!(baseline::probe_task(stack, pump)));
    }

    #[cfg(feature = "signals")]
    {
        let indicator = Output::new(p.PB7, Level::Low, Speed::Low);
        spawner.spawn(unwrap!(app::signal_task(stack, indicator)));
    }
}

/// 216 MHz from the 8 MHz ST-LINK clock (HSE bypass).
fn clocks() -> embassy_stm32::Config {
    use embassy_stm32::rcc::*;
    let mut config = embassy_stm32::Config::default();
    config.rcc.hse = Some(Hse {
        freq: Hertz(8_000_000),
        mode: HseMode::Bypass,
    });
    config.rcc.pll_src = PllSource::HSE;
    config.rcc.pll = Some(Pll {
        prediv: PllPreDiv::DIV4,
        mul: PllMul::MUL216,
        divp: Some(PllPDiv::DIV2),
        divq: Some(PllQDiv::DIV9),
        divr: None,
    });
    config.rcc.ahb_pre = AHBPrescaler::DIV1;
    config.rcc.apb1_pre = APBPrescaler::DIV4;
    config.rcc.apb2_pre = APBPrescaler::DIV2;
    config.rcc.sys = Sysclk::PLL1_P;
    config
}

/// Sizes on this target, read from the ELF by `scripts/firmware-size` (28
/// bytes of flash): TcpSocket handle, lock connection, signal connection,
/// Lease, LockSpec, smoltcp state per extra socket.
#[cfg(feature = "lock")]
#[used]
#[unsafe(no_mangle)]
static DFLOCKD_SIZES: [u32; 6] = {
    use core::mem::size_of;
    use dflockd_client::lock::{Lease, LockSpec};
    use dflockd_client::runtime::embassy::EmbassyTimer;
    use dflockd_client::signal::SignalConn;
    use embassy_net::tcp::TcpSocket;
    type Conn<const N: usize, const P: usize> =
        dflockd_client::Connection<TcpSocket<'static>, N, P>;
    [
        size_of::<TcpSocket<'static>>() as u32,
        size_of::<Conn<128, 0>>() as u32,
        size_of::<SignalConn<TcpSocket<'static>, EmbassyTimer, 256, 512>>() as u32,
        size_of::<Lease<'static>>() as u32,
        size_of::<LockSpec<'static>>() as u32,
        (size_of::<StackResources<2>>() - size_of::<StackResources<1>>()) as u32,
    ]
};

/// Socket buffers of one TCP connection, kept in statics (not in futures).
struct SocketBufs<const RX: usize, const TX: usize> {
    rx: [u8; RX],
    tx: [u8; TX],
}

impl<const RX: usize, const TX: usize> SocketBufs<RX, TX> {
    const fn new() -> Self {
        Self {
            rx: [0; RX],
            tx: [0; TX],
        }
    }
}

/// The baseline without the client: the same application around a hand-made
/// exchange. It waits for the same trigger, connects with the same socket
/// buffers and timeout, writes one request line and reads one reply line
/// with embassy-net's socket API, drives the pump for the same time, and
/// closes. Subtracting it from a client build leaves the client's code.
#[cfg(not(feature = "lock"))]
mod baseline {
    use super::*;
    use embassy_net::tcp::TcpSocket;
    use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
    use embassy_sync::signal::Signal;
    use embedded_io_async::Write as _;

    /// Stands for the signal task's trigger, as in the client build.
    static TRIGGER: Signal<CriticalSectionRawMutex, ()> = Signal::new();

    #[embassy_executor::task]
    pub async fn probe_task(stack: Stack<'static>, mut pump: Output<'static>) {
        // The same socket buffers as the lock connection, for a like-for-like size comparison.
        static BUFS: StaticCell<SocketBufs<1024, 512>> = StaticCell::new();
        let bufs = BUFS.init(SocketBufs::new());
        loop {
            let _ = embassy_time::with_timeout(Duration::from_secs(60), TRIGGER.wait()).await;
            let mut socket = TcpSocket::new(stack, &mut bufs.rx, &mut bufs.tx);
            socket.set_timeout(Some(Duration::from_secs(10)));
            match exchange(&mut socket).await {
                Ok(n) => {
                    info!("server answered {} bytes", n);
                    drive(&mut pump).await;
                }
                Err(e) => warn!("exchange: {}", e),
            }
            pump.set_low();
            socket.close();
            let _ = socket.flush().await;
        }
    }

    /// Connects, writes a request, reads one reply line.
    async fn exchange(socket: &mut TcpSocket<'_>) -> Result<usize, embassy_net::tcp::Error> {
        if socket.connect(server()).await.is_err() {
            return Err(embassy_net::tcp::Error::ConnectionReset);
        }
        socket.write_all(b"ping\n_\n_\n").await?;
        socket.flush().await?;
        let mut line = [0u8; 128];
        let mut n = 0;
        while n < line.len() {
            let got = socket.read(&mut line[n..]).await?;
            if got == 0 {
                break;
            }
            n += got;
            if line[..n].contains(&b'\n') {
                break;
            }
        }
        Ok(n)
    }

    /// The pump run of the client build, without a lease.
    async fn drive(pump: &mut Output<'static>) {
        let start = embassy_time::Instant::now();
        while start.elapsed() < Duration::from_secs(25) {
            pump.toggle();
            Timer::after_millis(500).await;
        }
        pump.set_low();
    }
}

#[cfg(feature = "lock")]
mod app {
    use super::*;
    use core::time::Duration as CoreDuration;
    use dflockd_client::lock::LockSpec;
    use dflockd_client::runtime::embassy::{EmbassyTimer, connect};
    use embassy_net::tcp::{self, ConnectError};
    use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
    use embassy_sync::signal::Signal;

    /// The lock guarding the shared actuator.
    const PUMP_KEY: &str = "site/pump";
    /// The pump's lease: renewed by `hold` every ~5 s while the pump runs.
    const LEASE: CoreDuration = CoreDuration::from_secs(10);
    /// How long one pump run lasts: 2.5 lease periods.
    const RUN: Duration = Duration::from_secs(25);
    const CONNECT_TIMEOUT: CoreDuration = CoreDuration::from_secs(10);

    /// Set by the signal task; the pump task runs when it fires.
    #[cfg_attr(not(feature = "signals"), allow(dead_code))]
    pub static TRIGGER: Signal<CriticalSectionRawMutex, ()> = Signal::new();

    /// Why a pump run failed. (The client error keeps a whole cluster
    /// leader address inline on no_std, so this enum is large by design.)
    #[derive(defmt::Format)]
    #[allow(clippy::large_enum_variant)]
    pub enum RunError {
        Connect(ConnectError),
        Client(dflockd_client::Error<tcp::Error>),
        #[cfg(feature = "tls")]
        Tls(dflockd_client::tls::TlsError),
        #[cfg(feature = "tls")]
        TlsClient(dflockd_client::Error<dflockd_client::tls::TlsError>),
        #[cfg(feature = "tls")]
        NoCa,
    }

    impl From<dflockd_client::Error<tcp::Error>> for RunError {
        fn from(e: dflockd_client::Error<tcp::Error>) -> Self {
            RunError::Client(e)
        }
    }

    #[cfg(feature = "tls")]
    impl From<dflockd_client::Error<dflockd_client::tls::TlsError>> for RunError {
        fn from(e: dflockd_client::Error<dflockd_client::tls::TlsError>) -> Self {
            RunError::TlsClient(e)
        }
    }

    #[embassy_executor::task]
    pub async fn pump_task(
        stack: Stack<'static>,
        mut pump: Output<'static>,
        mut rng: Rng<'static, RNG>,
    ) {
        static BUFS: StaticCell<SocketBufs<1024, 512>> = StaticCell::new();
        let bufs = BUFS.init(SocketBufs::new());
        #[cfg(feature = "tls")]
        let tls_bufs = {
            static TLS: StaticCell<TlsBufs> = StaticCell::new();
            TLS.init(TlsBufs::new())
        };
        #[cfg(not(feature = "tls"))]
        let _ = &mut rng; // only the TLS handshake needs randomness
        loop {
            // Run when a signal asks for it, and every minute anyway.
            let _ = embassy_time::with_timeout(Duration::from_secs(60), TRIGGER.wait()).await;
            #[cfg(not(feature = "tls"))]
            let out = run_pump(stack, &mut pump, bufs).await;
            #[cfg(feature = "tls")]
            let out = run_pump_tls(stack, &mut pump, bufs, tls_bufs, &mut rng).await;
            pump.set_low(); // the safe state, whatever happened
            match out {
                Ok(true) => info!("pump run done, lock released"),
                Ok(false) => info!("pump busy: another controller holds {}", PUMP_KEY),
                Err(e) => warn!("pump run failed: {}", e),
            }
        }
    }

    /// Drives the pump for [`RUN`], blinking while it runs. Dropped at any
    /// `.await` if the lease is lost.
    async fn drive(pump: &mut Output<'static>) {
        let start = embassy_time::Instant::now();
        while start.elapsed() < RUN {
            pump.toggle();
            Timer::after_millis(500).await;
        }
        pump.set_low();
    }

    /// Lock, drive while renewing, release. `Ok(false)` when busy.
    async fn locked_run<T: embedded_io_async::Read + embedded_io_async::Write, const N: usize>(
        conn: &mut dflockd_client::Connection<T, N>,
        pump: &mut Output<'static>,
    ) -> dflockd_client::Result<bool, T::Error> {
        let timer = EmbassyTimer;
        let spec = LockSpec::lock(PUMP_KEY)
            .lease_ttl(LEASE)
            .acquire_timeout(CoreDuration::from_secs(5));
        let Some(mut lease) = spec.acquire(conn, &timer).await? else {
            return Ok(false);
        };
        info!("holding {} (fence {})", PUMP_KEY, lease.fence());
        let held = lease.hold(conn, &timer, drive(pump)).await;
        pump.set_low();
        held?;
        lease.release(conn, &timer).await?;
        Ok(true)
    }

    #[cfg(not(feature = "tls"))]
    async fn run_pump(
        stack: Stack<'static>,
        pump: &mut Output<'static>,
        bufs: &mut SocketBufs<1024, 512>,
    ) -> Result<bool, RunError> {
        let mut conn =
            connect::<128, 0>(stack, server(), &mut bufs.rx, &mut bufs.tx, CONNECT_TIMEOUT)
                .await
                .map_err(RunError::Connect)?;
        let out = locked_run(&mut conn, pump).await;
        let socket = conn.transport_mut();
        socket.close();
        let _ = socket.flush().await;
        Ok(out?)
    }

    /// TLS record buffers (embedded-tls needs a full 16 KiB record).
    #[cfg(feature = "tls")]
    pub struct TlsBufs {
        read: [u8; dflockd_client::tls::READ_RECORD_BUFFER],
        write: [u8; dflockd_client::tls::WRITE_RECORD_BUFFER],
    }

    #[cfg(feature = "tls")]
    impl TlsBufs {
        const fn new() -> Self {
            Self {
                read: [0; dflockd_client::tls::READ_RECORD_BUFFER],
                write: [0; dflockd_client::tls::WRITE_RECORD_BUFFER],
            }
        }
    }

    /// The CA that signs the server's certificate (DER), from
    /// `DFLOCKD_CA_DER` at build time.
    #[cfg(feature = "tls")]
    static CA_DER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ca.der"));

    #[cfg(feature = "tls")]
    const SERVER_NAME: &str = match option_env!("DFLOCKD_TLS_SERVER_NAME") {
        Some(s) => s,
        None => "dflockd.local",
    };

    #[cfg(feature = "tls")]
    async fn run_pump_tls(
        stack: Stack<'static>,
        pump: &mut Output<'static>,
        bufs: &mut SocketBufs<1024, 512>,
        tls: &mut TlsBufs,
        rng: &mut Rng<'static, RNG>,
    ) -> Result<bool, RunError> {
        use dflockd_client::tls::{TlsVerify, handshake};
        if CA_DER.is_empty() {
            return Err(RunError::NoCa);
        }
        let conn = connect::<128, 0>(stack, server(), &mut bufs.rx, &mut bufs.tx, CONNECT_TIMEOUT)
            .await
            .map_err(RunError::Connect)?;
        let verify = TlsVerify::Ca {
            ca_der: CA_DER,
            server_name: SERVER_NAME,
        };
        let stream = handshake(
            conn.into_inner(),
            &mut tls.read,
            &mut tls.write,
            verify,
            rng,
        )
        .await
        .map_err(RunError::Tls)?;
        let mut conn: dflockd_client::Connection<_, 128> = dflockd_client::Connection::new(stream);
        let out = locked_run(&mut conn, pump).await;
        match conn.into_inner().close().await {
            Ok(mut socket) => {
                socket.close();
                let _ = socket.flush().await;
            }
            Err((mut socket, _)) => socket.abort(),
        }
        Ok(out?)
    }

    #[cfg(feature = "signals")]
    #[embassy_executor::task]
    pub async fn signal_task(stack: Stack<'static>, mut indicator: Output<'static>) {
        static BUFS: StaticCell<SocketBufs<1024, 256>> = StaticCell::new();
        let bufs = BUFS.init(SocketBufs::new());
        loop {
            if let Err(e) = listen(stack, &mut indicator, bufs).await {
                warn!("signals: {}; reconnecting in 5 s", e);
            }
            Timer::after_secs(5).await;
        }
    }

    /// Subscribes to `site.pump.>` and triggers a pump run per signal.
    #[cfg(feature = "signals")]
    async fn listen(
        stack: Stack<'static>,
        indicator: &mut Output<'static>,
        bufs: &mut SocketBufs<1024, 256>,
    ) -> Result<(), RunError> {
        use dflockd_client::signal::SignalConn;
        // 256-byte lines, 512 bytes of queue for signals that arrive while a
        // reply is awaited.
        let conn =
            connect::<256, 512>(stack, server(), &mut bufs.rx, &mut bufs.tx, CONNECT_TIMEOUT)
                .await
                .map_err(RunError::Connect)?;
        let mut sigs = SignalConn::new(conn, EmbassyTimer);
        sigs.listen("site.pump.>", None).await?;
        info!("listening on site.pump.>");
        loop {
            let sig = sigs.next().await?;
            info!("signal {}: {}", sig.channel, sig.payload);
            indicator.toggle();
            TRIGGER.signal(());
        }
    }
}

/// Parses `a.b.c.d:port` at compile time.
const fn parse_endpoint(s: &str) -> ([u8; 4], u16) {
    let b = s.as_bytes();
    let mut ip = [0u8; 4];
    let mut part = 0;
    let mut acc: u32 = 0;
    let mut digits = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_digit() {
            acc = acc * 10 + (c - b'0') as u32;
            digits += 1;
            assert!(digits <= 5, "DFLOCKD_SERVER: number too long");
        } else if (c == b'.' && part < 3) || (c == b':' && part == 3) {
            assert!(digits > 0 && acc <= 255, "DFLOCKD_SERVER: bad IPv4 octet");
            ip[part] = acc as u8;
            part += 1;
            acc = 0;
            digits = 0;
        } else {
            panic!("DFLOCKD_SERVER must be a.b.c.d:port");
        }
        i += 1;
    }
    assert!(
        part == 4 && digits > 0 && acc > 0 && acc <= 65535,
        "DFLOCKD_SERVER must be a.b.c.d:port"
    );
    (ip, acc as u16)
}
