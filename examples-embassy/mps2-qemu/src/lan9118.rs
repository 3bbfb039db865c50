//! SMSC LAN9118 (the MPS2's LAN9220 as QEMU models it) as an
//! `embassy-net-driver` device: programmed I/O through the chip's FIFOs,
//! receive interrupt-driven, no heap (one frame buffer each way, in a
//! static the board hands over: kept out of the driver value, which is
//! moved by value into the network runner, so no 3 KB copies on the stack).
//!
//! Register offsets and bits are the LAN9118 datasheet's; QEMU's model
//! (`hw/net/lan9118.c`) sends a frame as soon as its last data word is
//! written and raises the "RX status FIFO level" interrupt per received
//! frame.

use core::sync::atomic::{AtomicUsize, Ordering};
use core::task::Context;

use embassy_net_driver::{Capabilities, HardwareAddress, LinkState};
use embassy_sync::waitqueue::AtomicWaker;

// System control and status registers (offsets from the base).
const RX_DATA_FIFO: usize = 0x00;
const TX_DATA_FIFO: usize = 0x20;
const RX_STATUS_FIFO: usize = 0x40;
const TX_STATUS_FIFO: usize = 0x48;
const ID_REV: usize = 0x50;
const IRQ_CFG: usize = 0x54;
const INT_STS: usize = 0x58;
const INT_EN: usize = 0x5c;
const BYTE_TEST: usize = 0x64;
const RX_CFG: usize = 0x6c;
const TX_CFG: usize = 0x70;
const HW_CFG: usize = 0x74;
const RX_FIFO_INF: usize = 0x7c;
const TX_FIFO_INF: usize = 0x80;
const PMT_CTRL: usize = 0x84;
const MAC_CSR_CMD: usize = 0xa4;
const MAC_CSR_DATA: usize = 0xa8;

const BYTE_TEST_VALUE: u32 = 0x8765_4321;
const HW_CFG_SRST: u32 = 1 << 0;
const PMT_CTRL_READY: u32 = 1 << 0;
/// IRQ pin enabled, active high, push-pull.
const IRQ_CFG_ENABLE_HIGH: u32 = (1 << 8) | (1 << 4) | (1 << 0);
/// RX status FIFO level: a received frame is waiting.
const INT_RSFL: u32 = 1 << 3;
const TX_CFG_TX_ON: u32 = 1 << 1;
/// RX status word: error summary; frame length (with the FCS) in 29:16.
const RX_STS_ERROR: u32 = 1 << 15;
/// TX command A: first and last segment (one buffer per frame).
const TX_CMD_A_FIRST: u32 = 1 << 13;
const TX_CMD_A_LAST: u32 = 1 << 12;

// MAC CSRs, reached through MAC_CSR_CMD / MAC_CSR_DATA.
const MAC_CSR_BUSY: u32 = 1 << 31;
const MAC_CSR_READ: u32 = 1 << 30;
const MAC_CR: u32 = 1;
const MAC_ADDRH: u32 = 2;
const MAC_ADDRL: u32 = 3;
const MAC_MII_ACC: u32 = 6;
const MAC_MII_DATA: u32 = 7;
const MAC_CR_FDPX: u32 = 1 << 20;
const MAC_CR_TXEN: u32 = 1 << 3;
const MAC_CR_RXEN: u32 = 1 << 2;
/// The internal PHY's address and its basic status register.
const PHY_ADDR: u32 = 1;
const PHY_BSR: u32 = 1;
const PHY_BSR_LINK: u32 = 1 << 2;

/// Largest frame without the FCS (1500 + 14), and the buffer it needs
/// rounded up to whole FIFO words plus the FCS.
const MTU_FRAME: usize = 1514;
const BUF: usize = 1520;
/// Polls of a self-clearing bit before giving up.
const SPIN: u32 = 100_000;

/// The base address the interrupt handler uses (set by `new`).
static BASE: AtomicUsize = AtomicUsize::new(0);
/// The network runner waiting for a received frame.
static RX_WAKER: AtomicWaker = AtomicWaker::new();

/// Why the controller could not be brought up.
#[derive(Debug, Clone, Copy)]
pub enum InitError {
    /// BYTE_TEST did not read 0x87654321: no LAN9118 at that address.
    NotFound { byte_test: u32 },
    /// A soft reset or a MAC CSR access did not complete.
    Timeout(&'static str),
}

impl core::fmt::Display for InitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            InitError::NotFound { byte_test } => {
                write!(f, "no LAN9118 (BYTE_TEST reads {byte_test:#010x})")
            }
            InitError::Timeout(what) => write!(f, "{what} did not complete"),
        }
    }
}

/// One frame buffer in each direction (put it in a static).
pub struct Buffers {
    rx: [u8; BUF],
    tx: [u8; BUF],
}

impl Buffers {
    /// Zeroed buffers.
    pub const fn new() -> Self {
        Self {
            rx: [0; BUF],
            tx: [0; BUF],
        }
    }
}

/// The controller and its frame buffers.
pub struct Lan9118 {
    base: usize,
    mac: [u8; 6],
    rx: &'static mut [u8; BUF],
    tx: &'static mut [u8; BUF],
}

fn read(base: usize, offset: usize) -> u32 {
    // SAFETY: `base` is the controller found by `Lan9118::new` (BYTE_TEST
    // checked), and every offset used is one of its registers.
    unsafe { ((base + offset) as *const u32).read_volatile() }
}

fn write(base: usize, offset: usize, value: u32) {
    // SAFETY: as in `read`.
    unsafe { ((base + offset) as *mut u32).write_volatile(value) }
}

fn spin_until(mut done: impl FnMut() -> bool, what: &'static str) -> Result<(), InitError> {
    for _ in 0..SPIN {
        if done() {
            return Ok(());
        }
    }
    Err(InitError::Timeout(what))
}

impl Lan9118 {
    /// Resets the controller at `base`, reads its MAC address (QEMU's
    /// `-nic ...,mac=`), enables the transmitter, receiver and the receive
    /// interrupt. Unmask the board's interrupt line afterwards and call
    /// [`on_interrupt`] from its handler.
    pub fn new(base: usize, buffers: &'static mut Buffers) -> Result<Self, InitError> {
        // BYTE_TEST is readable before and during reset.
        let byte_test = read(base, BYTE_TEST);
        if byte_test != BYTE_TEST_VALUE {
            return Err(InitError::NotFound { byte_test });
        }
        write(base, HW_CFG, HW_CFG_SRST);
        spin_until(|| read(base, HW_CFG) & HW_CFG_SRST == 0, "soft reset")?;
        spin_until(|| read(base, PMT_CTRL) & PMT_CTRL_READY != 0, "ready")?;

        let mut this = Self {
            base,
            mac: [0; 6],
            rx: &mut buffers.rx,
            tx: &mut buffers.tx,
        };
        let lo = this.mac_read(MAC_ADDRL)?.to_le_bytes();
        let hi = this.mac_read(MAC_ADDRH)?.to_le_bytes();
        this.mac = [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1]];
        if this.mac == [0; 6] || this.mac == [0xff; 6] || this.mac[0] & 1 != 0 {
            // No usable address from the EEPROM: a locally administered one.
            this.mac = [0x02, 0x00, 0x00, 0x00, 0x91, 0x18];
            let m = this.mac;
            this.mac_write(MAC_ADDRL, u32::from_le_bytes([m[0], m[1], m[2], m[3]]))?;
            this.mac_write(MAC_ADDRH, u32::from(m[4]) | (u32::from(m[5]) << 8))?;
        }

        write(base, INT_EN, 0);
        write(base, INT_STS, u32::MAX);
        write(base, IRQ_CFG, IRQ_CFG_ENABLE_HIGH);
        write(base, RX_CFG, 0); // no offset, no end padding
        write(base, TX_CFG, TX_CFG_TX_ON);
        // Exact unicast match and broadcast; no promiscuous mode.
        this.mac_write(MAC_CR, MAC_CR_TXEN | MAC_CR_RXEN | MAC_CR_FDPX)?;
        BASE.store(base, Ordering::Release);
        write(base, INT_EN, INT_RSFL);
        Ok(this)
    }

    /// The chip's ID and revision register.
    pub fn id_rev(&self) -> u32 {
        read(self.base, ID_REV)
    }

    /// The MAC address in use.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Whether the internal PHY reports a link.
    pub fn link_up(&mut self) -> Result<bool, InitError> {
        Ok(self.mii_read(PHY_BSR)? & PHY_BSR_LINK != 0)
    }

    fn mac_wait(&self) -> Result<(), InitError> {
        let base = self.base;
        spin_until(|| read(base, MAC_CSR_CMD) & MAC_CSR_BUSY == 0, "MAC CSR")
    }

    fn mac_read(&self, reg: u32) -> Result<u32, InitError> {
        self.mac_wait()?;
        write(self.base, MAC_CSR_CMD, MAC_CSR_BUSY | MAC_CSR_READ | reg);
        self.mac_wait()?;
        Ok(read(self.base, MAC_CSR_DATA))
    }

    fn mac_write(&self, reg: u32, value: u32) -> Result<(), InitError> {
        self.mac_wait()?;
        write(self.base, MAC_CSR_DATA, value);
        write(self.base, MAC_CSR_CMD, MAC_CSR_BUSY | reg);
        self.mac_wait()
    }

    fn mii_read(&self, reg: u32) -> Result<u32, InitError> {
        // MII_ACC: PHY address 15:11, register 10:6, busy bit 0 (read).
        self.mac_write(MAC_MII_ACC, (PHY_ADDR << 11) | (reg << 6) | 1)?;
        for _ in 0..SPIN {
            if self.mac_read(MAC_MII_ACC)? & 1 == 0 {
                return Ok(self.mac_read(MAC_MII_DATA)? & 0xffff);
            }
        }
        Err(InitError::Timeout("MII"))
    }

    /// Frames waiting in the RX status FIFO.
    fn rx_pending(&self) -> u32 {
        (read(self.base, RX_FIFO_INF) >> 16) & 0xff
    }

    /// Drops TX status words (one per frame sent) so that FIFO never fills.
    fn drain_tx_status(&self) {
        while (read(self.base, TX_FIFO_INF) >> 16) & 0xff != 0 {
            let _ = read(self.base, TX_STATUS_FIFO);
        }
    }
}

/// The board's handler for the controller's interrupt line: masks the
/// controller's interrupts (the runner re-arms them once it has drained the
/// RX FIFO) and wakes the runner.
pub fn on_interrupt() {
    let base = BASE.load(Ordering::Acquire);
    if base != 0 {
        write(base, INT_EN, 0);
        write(base, INT_STS, u32::MAX);
    }
    RX_WAKER.wake();
}

/// A received frame, already copied out of the RX FIFO.
pub struct RxToken<'a> {
    frame: &'a mut [u8],
}

impl embassy_net_driver::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, f: F) -> R {
        f(self.frame)
    }
}

/// Room for one frame; written to the TX FIFO when consumed.
pub struct TxToken<'a> {
    base: usize,
    buf: &'a mut [u8; BUF],
}

impl embassy_net_driver::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let len = len.min(MTU_FRAME);
        let frame = &mut self.buf[..len];
        let out = f(frame);
        // Command A: buffer size and first/last segment; command B: the
        // frame length (and, as its tag, the same number).
        let len32 = len as u32;
        write(
            self.base,
            TX_DATA_FIFO,
            TX_CMD_A_FIRST | TX_CMD_A_LAST | len32,
        );
        write(self.base, TX_DATA_FIFO, (len32 << 16) | len32);
        for chunk in frame.chunks(4) {
            let mut word = [0u8; 4];
            word[..chunk.len()].copy_from_slice(chunk);
            write(self.base, TX_DATA_FIFO, u32::from_le_bytes(word));
        }
        out
    }
}

impl embassy_net_driver::Driver for Lan9118 {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, cx: &mut Context<'_>) -> Option<(RxToken<'_>, TxToken<'_>)> {
        RX_WAKER.register(cx.waker());
        loop {
            if self.rx_pending() == 0 {
                // Re-arm the interrupt, then look again: a frame that came
                // in between raised it already.
                write(self.base, INT_STS, INT_RSFL);
                write(self.base, INT_EN, INT_RSFL);
                if self.rx_pending() == 0 {
                    return None;
                }
            }
            let status = read(self.base, RX_STATUS_FIFO);
            let len = ((status >> 16) & 0x3fff) as usize; // with the FCS
            let words = len.div_ceil(4);
            if status & RX_STS_ERROR != 0 || !(14 + 4..=BUF).contains(&len) {
                // Bad or oversized: pop its words and go on.
                for _ in 0..words {
                    let _ = read(self.base, RX_DATA_FIFO);
                }
                continue;
            }
            for i in 0..words {
                let word = read(self.base, RX_DATA_FIFO).to_le_bytes();
                self.rx[i * 4..i * 4 + 4].copy_from_slice(&word);
            }
            self.drain_tx_status();
            let (rx, tx) = (&mut *self.rx, &mut *self.tx);
            return Some((
                RxToken {
                    frame: &mut rx[..len - 4],
                },
                TxToken {
                    base: self.base,
                    buf: tx,
                },
            ));
        }
    }

    fn transmit(&mut self, cx: &mut Context<'_>) -> Option<TxToken<'_>> {
        self.drain_tx_status();
        // Free bytes in the TX data FIFO: a whole frame plus its two
        // command words must fit. (QEMU sends each frame at once.)
        if (read(self.base, TX_FIFO_INF) & 0xffff) < (BUF + 8) as u32 {
            cx.waker().wake_by_ref();
            return None;
        }
        Some(TxToken {
            base: self.base,
            buf: self.tx,
        })
    }

    fn link_state(&mut self, _cx: &mut Context<'_>) -> LinkState {
        LinkState::Up
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::default();
        caps.max_transmission_unit = MTU_FRAME;
        caps.max_burst_size = Some(1);
        caps
    }

    fn hardware_address(&self) -> HardwareAddress {
        HardwareAddress::Ethernet(self.mac)
    }
}
