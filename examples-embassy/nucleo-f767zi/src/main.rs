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
//! The application (pump run, lock, signal listener) is
//! `examples-embassy/shared/pump_app.rs`, shared with `mps2-qemu`, the board
//! CI runs under QEMU; this file holds the board, the TLS variant and the
//! baseline.
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
use embassy_time::Duration;
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

#[cfg(not(feature = "lock"))]
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

/// Sizes on this target, read from the ELF by `scripts/firmware-size` (32
/// bytes of flash): TcpSocket handle, lock connection, signal connection,
/// Lease, LockSpec, smoltcp state per extra socket, the client's error.
#[cfg(feature = "lock")]
#[used]
#[unsafe(no_mangle)]
static DFLOCKD_SIZES: [u32; 7] = {
    use core::mem::size_of;
    use dflockd_client::embassy::EmbassyTimer;
    use dflockd_client::lock::{Lease, LockSpec};
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
        size_of::<dflockd_client::Error<embassy_net::tcp::Error>>() as u32,
    ]
};

/// Socket buffers of one TCP connection, kept in statics (not in futures).
#[cfg(not(feature = "lock"))]
struct SocketBufs<const RX: usize, const TX: usize> {
    rx: [u8; RX],
    tx: [u8; TX],
}

#[cfg(not(feature = "lock"))]
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
            embassy_time::Timer::after_millis(500).await;
        }
        pump.set_low();
    }
}

/// The application shared with the other boards (`examples-embassy/shared`).
#[cfg(feature = "lock")]
#[path = "../../shared/pump_app.rs"]
#[allow(dead_code)] // each variant uses a part of it
mod pump_app;

#[cfg(feature = "lock")]
impl pump_app::Actuator for Output<'static> {
    fn set_on(&mut self, on: bool) {
        self.set_level(Level::from(on));
    }

    fn toggle(&mut self) {
        Output::toggle(self);
    }
}

#[cfg(feature = "lock")]
impl defmt::Format for pump_app::RunError {
    fn format(&self, f: defmt::Formatter) {
        match self {
            pump_app::RunError::Connect(e) => defmt::write!(f, "Connect({})", e),
            pump_app::RunError::Client(e) => defmt::write!(f, "Client({})", e),
        }
    }
}

#[cfg(feature = "lock")]
mod app {
    use super::*;
    use crate::pump_app::{Board, LockBufs, Settings, TRIGGER};
    use core::time::Duration as CoreDuration;
    use dflockd_client::signal::Heartbeat;

    /// The pump's lease (renewed by `hold` every ~5 s while the pump runs),
    /// a run of 2.5 lease periods, and the server's default read timeout.
    /// A constant in flash, so the tasks keep only a reference.
    static SETTINGS: Settings = Settings {
        server: {
            let ([a, b, c, d], port) = SERVER_ENDPOINT;
            (Ipv4Address::new(a, b, c, d), port)
        },
        lease: CoreDuration::from_secs(10),
        run: Duration::from_secs(25),
        acquire_timeout: CoreDuration::from_secs(5),
        connect_timeout: CoreDuration::from_secs(10),
        read_timeout: None,
        heartbeat: Heartbeat::DEFAULT,
    };

    /// This board's settings: the constant above.
    pub struct Nucleo;

    impl Board for Nucleo {
        fn settings() -> &'static Settings {
            &SETTINGS
        }
    }

    #[embassy_executor::task]
    pub async fn pump_task(
        stack: Stack<'static>,
        mut pump: Output<'static>,
        mut rng: Rng<'static, RNG>,
    ) {
        static BUFS: StaticCell<LockBufs> = StaticCell::new();
        let bufs = BUFS.init(LockBufs::new());
        #[cfg(feature = "tls")]
        let tls_bufs = {
            static TLS: StaticCell<tls::TlsBufs> = StaticCell::new();
            TLS.init(tls::TlsBufs::new())
        };
        #[cfg(not(feature = "tls"))]
        let _ = &mut rng; // only the TLS handshake needs randomness
        loop {
            // Run when a signal asks for it, and every minute anyway.
            let _ = embassy_time::with_timeout(Duration::from_secs(60), TRIGGER.wait()).await;
            #[cfg(not(feature = "tls"))]
            {
                let out = pump_app::run_pump::<Nucleo, _>(stack, &mut pump, bufs).await;
                pump.set_low(); // the safe state, whatever happened
                pump_app::report(&out);
            }
            #[cfg(feature = "tls")]
            {
                let out = tls::run_pump_tls(stack, &mut pump, bufs, tls_bufs, &mut rng).await;
                pump.set_low(); // the safe state, whatever happened
                match out {
                    Ok(true) => info!("pump run done, lock released"),
                    Ok(false) => {
                        info!("pump busy: another controller holds {}", pump_app::PUMP_KEY)
                    }
                    Err(e) => warn!("pump run failed: {}", e),
                }
            }
        }
    }

    /// The lock connection over TLS 1.3 (embedded-tls), the rest as
    /// [`pump_app::run_pump`].
    #[cfg(feature = "tls")]
    mod tls {
        use super::*;
        use crate::pump_app::locked_run;
        use embassy_net::tcp::ConnectError;

        /// Why a pump run over TLS failed.
        #[derive(defmt::Format)]
        pub enum TlsRunError {
            Connect(ConnectError),
            Tls(dflockd_client::tls::TlsError),
            Client(dflockd_client::Error<dflockd_client::tls::TlsError>),
            NoCa,
        }

        impl From<dflockd_client::Error<dflockd_client::tls::TlsError>> for TlsRunError {
            fn from(e: dflockd_client::Error<dflockd_client::tls::TlsError>) -> Self {
                TlsRunError::Client(e)
            }
        }

        /// TLS record buffers (embedded-tls needs a full 16 KiB record).
        pub struct TlsBufs {
            read: [u8; dflockd_client::tls::READ_RECORD_BUFFER],
            write: [u8; dflockd_client::tls::WRITE_RECORD_BUFFER],
        }

        impl TlsBufs {
            pub const fn new() -> Self {
                Self {
                    read: [0; dflockd_client::tls::READ_RECORD_BUFFER],
                    write: [0; dflockd_client::tls::WRITE_RECORD_BUFFER],
                }
            }
        }

        /// The CA that signs the server's certificate (DER), from
        /// `DFLOCKD_CA_DER` at build time.
        static CA_DER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ca.der"));

        const SERVER_NAME: &str = match option_env!("DFLOCKD_TLS_SERVER_NAME") {
            Some(s) => s,
            None => "dflockd.local",
        };

        pub async fn run_pump_tls(
            stack: Stack<'static>,
            pump: &mut Output<'static>,
            bufs: &mut LockBufs,
            tls: &mut TlsBufs,
            rng: &mut Rng<'static, RNG>,
        ) -> Result<bool, TlsRunError> {
            let settings = Nucleo::settings();
            use dflockd_client::embassy::connect;
            use dflockd_client::tls::{TlsVerify, handshake};
            if CA_DER.is_empty() {
                return Err(TlsRunError::NoCa);
            }
            let conn = connect::<128, 0>(
                stack,
                settings.server,
                &mut bufs.rx,
                &mut bufs.tx,
                settings.connect_timeout,
            )
            .await
            .map_err(TlsRunError::Connect)?;
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
            .map_err(TlsRunError::Tls)?;
            let mut conn: dflockd_client::Connection<_, 128> =
                dflockd_client::Connection::new(stream);
            let out = locked_run::<Nucleo, _, _, 128>(&mut conn, pump).await;
            match conn.into_inner().close().await {
                Ok(mut socket) => {
                    socket.close();
                    let _ = socket.flush().await;
                }
                Err((mut socket, _)) => socket.abort(),
            }
            Ok(out?)
        }
    }

    #[cfg(feature = "signals")]
    #[embassy_executor::task]
    pub async fn signal_task(stack: Stack<'static>, mut indicator: Output<'static>) {
        static BUFS: StaticCell<pump_app::SignalBufs> = StaticCell::new();
        let bufs = BUFS.init(pump_app::SignalBufs::new());
        loop {
            if let Err(e) = pump_app::listen::<Nucleo, _>(stack, &mut indicator, bufs).await {
                warn!("signals: {}; reconnecting in 5 s", e);
            }
            embassy_time::Timer::after_secs(5).await;
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
