//! embassy-time driver for the MPS2 boards: the time is read from the CMSDK
//! dual timer's first counter, free-running at the 25 MHz system clock and
//! extended to 64 bits; the Cortex-M SysTick interrupts once per
//! millisecond (embassy-time's `tick-hz-1_000`) to run embassy's timer queue.
//!
//! Counting SysTick interrupts instead would lose time: under QEMU a tick
//! that comes while the previous one is still pending is merged into it, and
//! the guest clock then fell behind the host's by more than half.

use core::cell::{Cell, RefCell};
use core::task::Waker;

use cortex_m::peripheral::SYST;
use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::exception;
use critical_section::Mutex;
use embassy_time_driver::Driver;
use embassy_time_queue_utils::Queue;

/// The MPS2 FPGA images clock the core at 25 MHz.
pub const CORE_HZ: u32 = 25_000_000;

/// CMSDK APB dual timer, counter 1.
const DUALTIMER1: usize = 0x4000_2000;
const VALUE: usize = 0x04;
const CONTROL: usize = 0x08;
/// Enabled, free-running (not periodic), 32-bit, no prescaler, no interrupt.
const CONTROL_FREE_RUNNING_32: u32 = (1 << 7) | (1 << 1);
/// System clock counts per tick.
const COUNTS_PER_TICK: u64 = CORE_HZ as u64 / embassy_time_driver::TICK_HZ;

struct SysTickDriver {
    /// Counts since `init`: the high part (wraps seen) and the last low
    /// 32-bit reading.
    counts: Mutex<Cell<(u64, u32)>>,
    /// The next tick at which the queue has something due.
    alarm: Mutex<Cell<u64>>,
    queue: Mutex<RefCell<Queue>>,
}

embassy_time_driver::time_driver_impl!(static DRIVER: SysTickDriver = SysTickDriver {
    counts: Mutex::new(Cell::new((0, 0))),
    alarm: Mutex::new(Cell::new(u64::MAX)),
    queue: Mutex::new(RefCell::new(Queue::new())),
});

impl SysTickDriver {
    /// Ticks since `init`. Called at least once per millisecond (SysTick),
    /// far more often than the 32-bit counter wraps (172 s).
    fn ticks(&self, cs: critical_section::CriticalSection<'_>) -> u64 {
        // SAFETY: the dual timer's value register, read-only here.
        let down = unsafe { ((DUALTIMER1 + VALUE) as *const u32).read_volatile() };
        let up = !down; // counts since the timer started at 0xFFFF_FFFF
        let cell = self.counts.borrow(cs);
        let (mut high, last) = cell.get();
        if up < last {
            high += 1 << 32;
        }
        cell.set((high, up));
        (high + u64::from(up)) / COUNTS_PER_TICK
    }
}

impl Driver for SysTickDriver {
    fn now(&self) -> u64 {
        critical_section::with(|cs| self.ticks(cs))
    }

    fn schedule_wake(&self, at: u64, waker: &Waker) {
        critical_section::with(|cs| {
            let mut queue = self.queue.borrow_ref_mut(cs);
            if queue.schedule_wake(at, waker) {
                let now = self.ticks(cs);
                self.alarm.borrow(cs).set(queue.next_expiration(now));
            }
        });
    }
}

/// Starts the clock and the millisecond tick.
pub fn init(mut syst: SYST) {
    const { assert!(embassy_time_driver::TICK_HZ == 1_000) };
    // SAFETY: the dual timer's control register; nothing else uses it. The
    // counter starts at 0xFFFF_FFFF and counts down.
    unsafe { ((DUALTIMER1 + CONTROL) as *mut u32).write_volatile(CONTROL_FREE_RUNNING_32) };
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(CORE_HZ / 1_000 - 1);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
}

#[exception]
fn SysTick() {
    critical_section::with(|cs| {
        let now = DRIVER.ticks(cs);
        let alarm = DRIVER.alarm.borrow(cs);
        if now >= alarm.get() {
            // Wakes what is due, returns the next deadline (u64::MAX if none).
            alarm.set(DRIVER.queue.borrow_ref_mut(cs).next_expiration(now));
        }
    });
}
