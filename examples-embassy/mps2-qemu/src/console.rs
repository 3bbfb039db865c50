//! Output on the CMSDK APB UART 0 (QEMU's `-serial stdio`), the `info!` /
//! `warn!` / `println!` macros over it, and the two semihosting calls the
//! test needs: the command line (`-semihosting-config arg=...`) and exit.

use core::fmt::{self, Write};

/// CMSDK APB UART 0 on MPS2 (AN386 and AN500 alike).
const UART0: usize = 0x4000_4000;
const DATA: usize = 0x00;
const STATE: usize = 0x04;
const CTRL: usize = 0x08;
const BAUDDIV: usize = 0x10;
const STATE_TX_FULL: u32 = 1 << 0;
const CTRL_TX_EN: u32 = 1 << 0;

fn reg(offset: usize) -> *mut u32 {
    (UART0 + offset) as *mut u32
}

/// Enables the transmitter (25 MHz / 16: the fastest divider the UART takes).
pub fn init() {
    // SAFETY: UART0's registers on the MPS2 memory map; nothing else uses them.
    unsafe {
        reg(BAUDDIV).write_volatile(16);
        reg(CTRL).write_volatile(CTRL_TX_EN);
    }
}

/// The UART as a `core::fmt::Write` sink (blocking, byte by byte).
pub struct Uart;

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            // SAFETY: as in `init`.
            unsafe {
                while reg(STATE).read_volatile() & STATE_TX_FULL != 0 {}
                reg(DATA).write_volatile(u32::from(b));
            }
        }
        Ok(())
    }
}

/// Writes one formatted line; lines from different tasks never interleave.
pub fn print_line(args: fmt::Arguments<'_>) {
    critical_section::with(|_| {
        let mut uart = Uart;
        let _ = uart.write_fmt(args);
        let _ = uart.write_str("\n");
    });
}

/// Prints a line on the UART.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::console::print_line(format_args!($($arg)*))
    };
}

/// The application's log line, as defmt's `info!` on the NUCLEO.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => {
        $crate::console::print_line(format_args!("[info] {}", format_args!($($arg)*)))
    };
}

/// The application's warning line, as defmt's `warn!` on the NUCLEO.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => {
        $crate::console::print_line(format_args!("[warn] {}", format_args!($($arg)*)))
    };
}

// ---- semihosting (QEMU: -semihosting-config enable=on,target=native) ----

const SYS_GET_CMDLINE: u32 = 0x15;
const SYS_EXIT: u32 = 0x18;
const ADP_STOPPED_APPLICATION_EXIT: u32 = 0x2_0026;
const ADP_STOPPED_RUNTIME_ERROR_UNKNOWN: u32 = 0x2_0023;

/// One semihosting call (`bkpt 0xab`, operation in r0, argument in r1).
///
/// # Safety
/// `arg` must be what the operation expects; without a debugger or QEMU's
/// semihosting the breakpoint faults.
unsafe fn semihosting(op: u32, arg: u32) -> u32 {
    let ret: u32;
    // SAFETY: the caller's contract.
    unsafe {
        core::arch::asm!("bkpt #0xab", inout("r0") op => ret, in("r1") arg, options(nostack));
    }
    ret
}

/// The command line QEMU passes (`-semihosting-config arg=...`), copied into
/// `buf`; `None` when semihosting gives none.
pub fn cmdline(buf: &mut [u8]) -> Option<&str> {
    let mut block: [u32; 2] = [buf.as_mut_ptr() as u32, buf.len() as u32];
    // SAFETY: SYS_GET_CMDLINE takes a {buffer, length} block and writes at
    // most `length` bytes (with the NUL) into the buffer, then the length.
    let rc = unsafe { semihosting(SYS_GET_CMDLINE, block.as_mut_ptr() as u32) };
    if rc != 0 {
        return None;
    }
    let len = (block[1] as usize).min(buf.len());
    core::str::from_utf8(&buf[..len]).ok()
}

/// Ends the emulation: QEMU exits with status 0 when `ok`, 1 otherwise.
pub fn exit(ok: bool) -> ! {
    let reason = if ok {
        ADP_STOPPED_APPLICATION_EXIT
    } else {
        ADP_STOPPED_RUNTIME_ERROR_UNKNOWN
    };
    // SAFETY: SYS_EXIT takes the reason code itself on 32-bit Arm.
    unsafe {
        semihosting(SYS_EXIT, reason);
    }
    loop {
        cortex_m::asm::wfi();
    }
}
