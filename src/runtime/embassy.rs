//! embassy adapter: [`EmbassyTimer`], the core's [`Timer`] on `embassy-time`
//! (feature `embassy-time`), and with feature `embassy-net` a TCP
//! `connect` with a dial timeout over an embassy-net `Stack`.
//!
//! Both are opt-in: the core never depends on embassy-time, whose std driver
//! panics on wasm32-wasip2. On firmware the time driver comes from the HAL
//! (for instance embassy-stm32's `time-driver-*`); on a host from
//! embassy-time's `std` feature.
//!
//! ```ignore
//! use dflockd_client::lock::LockSpec;
//! use dflockd_client::embassy::{EmbassyTimer, connect};
//!
//! let mut conn = connect::<128, 0>(stack, (server_ip, 6388), &mut rx, &mut tx, timeout).await?;
//! let timer = EmbassyTimer;
//! if let Some(mut lease) = LockSpec::lock("pump").acquire(&mut conn, &timer).await? {
//!     lease.hold(&mut conn, &timer, run_pump()).await?;
//!     lease.release(&mut conn, &timer).await?;
//! }
//! ```

use core::future::Future;

use crate::time::{Instant, Timer};

/// The core's [`Timer`] on `embassy-time`: milliseconds since the embassy
/// time driver's epoch (boot on firmware). Zero-sized and `Copy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct EmbassyTimer;

impl Timer for EmbassyTimer {
    fn now(&self) -> Instant {
        Instant::from_millis(embassy_time::Instant::now().as_millis())
    }

    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> {
        // Deadlines past embassy-time's range (a saturated `Instant`) mean
        // "never".
        let at = embassy_time::Instant::try_from_millis(deadline.as_millis())
            .unwrap_or(embassy_time::Instant::MAX);
        embassy_time::Timer::at(at)
    }
}

#[cfg(feature = "embassy-net")]
pub use net::connect;

#[cfg(feature = "embassy-net")]
mod net {
    use embassy_net::tcp::{ConnectError, TcpSocket};
    use embassy_net::{IpEndpoint, Stack};

    use super::EmbassyTimer;
    use crate::Connection;
    use crate::time::{Timer, with_deadline};

    /// Opens a TCP connection to a dflockd server over `stack` and wraps it
    /// in a [`Connection`] with an `N`-byte line buffer and a `P`-byte push
    /// queue. Sends nothing (call [`Connection::auth`] first when the server
    /// wants a token).
    ///
    /// `rx` and `tx` are the socket's buffers (smoltcp windows): a few
    /// hundred bytes each are plenty for locks; signals want `rx` to hold a
    /// burst of pushes. Nagle is turned off so that each request goes out
    /// at once.
    ///
    /// [`ConnectError::TimedOut`] when the handshake did not finish within
    /// `timeout` (the socket is aborted); other errors as embassy-net
    /// reports them. Cancel-safe: dropping the future drops the socket.
    pub async fn connect<'a, const N: usize, const P: usize>(
        stack: Stack<'a>,
        remote: impl Into<IpEndpoint>,
        rx: &'a mut [u8],
        tx: &'a mut [u8],
        timeout: core::time::Duration,
    ) -> Result<Connection<TcpSocket<'a>, N, P>, ConnectError> {
        let remote = remote.into();
        let mut socket = TcpSocket::new(stack, rx, tx);
        socket.set_nagle_enabled(false);
        let timer = EmbassyTimer;
        let deadline = timer.now() + timeout;
        match with_deadline(&timer, deadline, socket.connect(remote)).await {
            Ok(Ok(())) => {
                debug!("connected to dflockd server");
                Ok(Connection::new(socket))
            }
            Ok(Err(e)) => Err(e),
            Err(_) => {
                socket.abort();
                Err(ConnectError::TimedOut)
            }
        }
    }
}
