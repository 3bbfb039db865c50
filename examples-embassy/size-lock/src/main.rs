//! The smallest useful dflockd-client firmware: the lock path alone, for
//! measuring the client's flash and RAM without a network stack.
//!
//! * No embassy-net, no executor, no allocator: `embassy_futures::block_on`
//!   in `main` drives one future over a polled USART (the transport: any
//!   `embedded_io_async` byte stream works) and a timer on the DWT cycle
//!   counter (on thumbv6m, which has none: a SysTick millisecond count).
//! * `client` (default): takes the lock `site/pump` with a 10 s lease
//!   (`LockSpec::acquire`), runs the pump for 25 s while `Lease::hold`
//!   renews the lease on the same connection, and releases it.
//! * Without `client`: the same application (transport, timer, work,
//!   `block_on`) writing the acquire and release requests and reading the
//!   reply lines by hand, with no client code: the baseline that CI
//!   subtracts to get the client's share.
//! * `defmt`: the client's defmt logging, a defmt panic message, and one
//!   log line with the outcome, over RTT.
//!
//! Built for its size; to run it, clock USART3 and set up its pins first
//! (e.g. the ST-LINK serial port of a NUCLEO-F767ZI) and bridge it to a
//! dflockd server.
#![no_std]
#![no_main]
#![warn(clippy::large_futures)]

use core::cell::Cell;
use core::future::{Future, poll_fn};
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{AtomicU32, Ordering};
use core::task::Poll;

#[cfg(not(armv6m))]
use cortex_m::peripheral::DWT;
#[cfg(armv6m)]
use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::entry;
#[cfg(feature = "defmt")]
use defmt_rtt as _;
use embassy_futures::block_on;
use embedded_io_async::{ErrorKind, ErrorType, Read, Write};
use panic_probe as _;

/// How long the work under the lock runs: longer than the lease, so the
/// lease is renewed meanwhile.
const WORK_MS: u64 = 25_000;
/// The core clock after reset (the 16 MHz HSI of STM32F4/F7 parts).
const CYCLES_PER_MS: u64 = 16_000;

/// How the run ended, for a debugger: 1 not granted, 2 work done,
/// 3 error (0: not finished).
static OUTCOME: AtomicU32 = AtomicU32::new(0);
const NOT_GRANTED: u32 = 1;
const DONE: u32 = 2;
const FAILED: u32 = 3;

#[entry]
fn main() -> ! {
    let mut cp = cortex_m::Peripherals::take().unwrap();
    let timer = CycleTimer::new(&mut cp);
    // SAFETY: USART3's registers are used by nothing else.
    let uart = unsafe { Uart::new(USART3) };
    OUTCOME.store(block_on(run(uart, &timer)), Ordering::Relaxed);
    loop {
        cortex_m::asm::wfi();
    }
}

/// The work under the lock: runs the pump for [`WORK_MS`]. Stops at any
/// `.await` if the lease is lost.
async fn work(timer: &CycleTimer) -> u32 {
    let end = timer.now_ms().saturating_add(WORK_MS);
    timer.sleep_until_ms(end).await;
    DONE
}

// ---- the lock path ----------------------------------------------------------

/// Acquire, hold while working (renewing), release; the outcome code.
#[cfg(feature = "client")]
async fn run(uart: Uart, timer: &CycleTimer) -> u32 {
    use core::time::Duration;
    use dflockd_client::Connection;
    use dflockd_client::lock::LockSpec;

    let mut conn: Connection<Uart, 128> = Connection::new(uart);
    let spec = LockSpec::lock("site/pump").lease_ttl(Duration::from_secs(10));
    let result: dflockd_client::Result<u32, UartError> = async {
        let Some(mut lease) = spec.acquire(&mut conn, timer).await? else {
            return Ok(NOT_GRANTED);
        };
        let held = lease.hold(&mut conn, timer, work(timer)).await;
        lease.release(&mut conn, timer).await?;
        held
    }
    .await;
    #[cfg(feature = "defmt")]
    defmt::info!("lock: {}", result);
    result.unwrap_or(FAILED)
}

/// The baseline: the same exchange by hand (acquire, work, release) with
/// the client's line buffer size and no client code.
#[cfg(not(feature = "client"))]
async fn run(uart: Uart, timer: &CycleTimer) -> u32 {
    let result = run_by_hand(uart, timer).await;
    #[cfg(feature = "defmt")]
    defmt::info!("lock: {}", result);
    result.unwrap_or(FAILED)
}

#[cfg(not(feature = "client"))]
async fn run_by_hand(mut uart: Uart, timer: &CycleTimer) -> Result<u32, UartError> {
    let mut line = [0u8; 128];
    // `l`, key, acquire timeout 10 s and lease 10 s.
    uart.write_all(b"l\nsite/pump\n10 10\n").await?;
    let n = read_line(&mut uart, &mut line).await?;
    // `ok <token> <lease>`; anything else is no grant.
    let Some(rest) = line[..n].strip_prefix(b"ok ") else {
        return Ok(NOT_GRANTED);
    };
    let token = rest.split(|&b| b == b' ').next().unwrap_or_default();
    let out = work(timer).await;
    uart.write_all(b"r\nsite/pump\n").await?;
    uart.write_all(token).await?;
    uart.write_all(b"\n").await?;
    read_line(&mut uart, &mut line).await?;
    Ok(out)
}

/// Reads up to and without the next `\n` into `line` (bytes after it in
/// the same read are dropped); its length.
#[cfg(not(feature = "client"))]
async fn read_line(uart: &mut Uart, line: &mut [u8]) -> Result<usize, UartError> {
    let mut len = 0;
    loop {
        let Some(free) = line.get_mut(len..).filter(|f| !f.is_empty()) else {
            return Err(UartError::LineTooLong);
        };
        let n = uart.read(free).await?;
        if let Some(at) = free[..n].iter().position(|&b| b == b'\n') {
            return Ok(len + at);
        }
        len += n;
    }
}

// ---- the transport: a polled USART ------------------------------------------

/// USART3 on STM32F7 (the ST-LINK serial port of a NUCLEO-F767ZI).
const USART3: usize = 0x4000_4800;
/// Register offsets of the STM32F7/L4/G4 USART.
const ISR: usize = 0x1C;
const ICR: usize = 0x20;
const RDR: usize = 0x24;
const TDR: usize = 0x28;
const ISR_ORE: u32 = 1 << 3;
const ISR_RXNE: u32 = 1 << 5;
const ISR_TC: u32 = 1 << 6;
const ISR_TXE: u32 = 1 << 7;

/// A USART, polled: the futures stay pending (and wake themselves) until
/// its status flags allow progress. Every register access is volatile, so
/// the replies cannot be constant-folded away.
struct Uart {
    base: usize,
}

/// Transport errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
enum UartError {
    /// The USART lost received bytes.
    Overrun,
    /// The baseline's reply line did not fit its buffer.
    #[cfg(not(feature = "client"))]
    LineTooLong,
}

impl core::fmt::Display for UartError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            UartError::Overrun => "USART overrun",
            #[cfg(not(feature = "client"))]
            UartError::LineTooLong => "reply line too long",
        })
    }
}

impl core::error::Error for UartError {}

impl embedded_io_async::Error for UartError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Other
    }
}

impl Uart {
    /// # Safety
    ///
    /// `base` is a USART's register block (clocked, pins set up) that
    /// nothing else uses.
    const unsafe fn new(base: usize) -> Self {
        Self { base }
    }

    fn reg(&self, offset: usize) -> *mut u32 {
        (self.base + offset) as *mut u32
    }

    fn status(&self) -> u32 {
        // SAFETY: a register of the USART we own.
        unsafe { read_volatile(self.reg(ISR)) }
    }

    /// Completes when any of `flags` is set; an overrun fails the wait
    /// when `check_overrun` (and is cleared).
    fn until(
        &self,
        flags: u32,
        check_overrun: bool,
    ) -> impl Future<Output = Result<(), UartError>> {
        poll_fn(move |cx| {
            let isr = self.status();
            if check_overrun && isr & ISR_ORE != 0 {
                // SAFETY: a register of the USART we own; ORECF is bit 3.
                unsafe { write_volatile(self.reg(ICR), ISR_ORE) };
                return Poll::Ready(Err(UartError::Overrun));
            }
            if isr & flags != 0 {
                Poll::Ready(Ok(()))
            } else {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        })
    }
}

impl ErrorType for Uart {
    type Error = UartError;
}

impl Read for Uart {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, UartError> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.until(ISR_RXNE, true).await?;
        let mut n = 0;
        while n < buf.len() && self.status() & ISR_RXNE != 0 {
            // SAFETY: a register of the USART we own.
            buf[n] = unsafe { read_volatile(self.reg(RDR)) } as u8;
            n += 1;
        }
        Ok(n)
    }
}

impl Write for Uart {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, UartError> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.until(ISR_TXE, false).await?;
        let mut n = 0;
        while n < buf.len() && self.status() & ISR_TXE != 0 {
            // SAFETY: a register of the USART we own.
            unsafe { write_volatile(self.reg(TDR), u32::from(buf[n])) };
            n += 1;
        }
        Ok(n)
    }

    async fn flush(&mut self) -> Result<(), UartError> {
        self.until(ISR_TC, false).await
    }
}

// ---- the timer: the DWT cycle counter (SysTick on thumbv6m) -----------------

/// Milliseconds counted by the SysTick handler (thumbv6m only; a load and
/// a store, as Cortex-M0+ has no atomic read-modify-write).
#[cfg(armv6m)]
static MILLIS: AtomicU32 = AtomicU32::new(0);

#[cfg(armv6m)]
#[cortex_m_rt::exception]
fn SysTick() {
    MILLIS.store(
        MILLIS.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Relaxed,
    );
}

/// Milliseconds from the DWT cycle counter, widened to 64 bits (read at
/// least once per wrap, 268 s at 16 MHz: the busy loop of `block_on` does).
/// Sleeping is polling until the deadline.
struct CycleTimer {
    last: Cell<u32>,
    wraps: Cell<u32>,
}

impl CycleTimer {
    #[cfg(not(armv6m))]
    fn new(cp: &mut cortex_m::Peripherals) -> Self {
        cp.DCB.enable_trace();
        cp.DWT.enable_cycle_counter();
        Self {
            last: Cell::new(DWT::cycle_count()),
            wraps: Cell::new(0),
        }
    }

    /// Cortex-M0+ (no cycle counter): SysTick interrupts every millisecond.
    #[cfg(armv6m)]
    fn new(cp: &mut cortex_m::Peripherals) -> Self {
        cp.SYST.set_clock_source(SystClkSource::Core);
        cp.SYST.set_reload(CYCLES_PER_MS as u32 - 1);
        cp.SYST.clear_current();
        cp.SYST.enable_interrupt();
        cp.SYST.enable_counter();
        Self {
            last: Cell::new(0),
            wraps: Cell::new(0),
        }
    }

    /// Cycles (milliseconds on thumbv6m) since boot, 32 bits.
    #[cfg(not(armv6m))]
    fn ticks() -> u32 {
        DWT::cycle_count()
    }

    #[cfg(armv6m)]
    fn ticks() -> u32 {
        MILLIS.load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        let now = Self::ticks();
        if now < self.last.get() {
            self.wraps.set(self.wraps.get().wrapping_add(1));
        }
        self.last.set(now);
        let ticks = (u64::from(self.wraps.get()) << 32) | u64::from(now);
        if cfg!(armv6m) {
            ticks
        } else {
            ticks / CYCLES_PER_MS
        }
    }

    fn sleep_until_ms(&self, deadline: u64) -> impl Future<Output = ()> {
        poll_fn(move |cx| {
            if self.now_ms() >= deadline {
                Poll::Ready(())
            } else {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        })
    }
}

#[cfg(feature = "client")]
impl dflockd_client::time::Timer for CycleTimer {
    fn now(&self) -> dflockd_client::time::Instant {
        dflockd_client::time::Instant::from_millis(self.now_ms())
    }

    fn sleep_until(&self, deadline: dflockd_client::time::Instant) -> impl Future<Output = ()> {
        self.sleep_until_ms(deadline.as_millis())
    }
}
