//! Socket IO bounded by one deadline, for the blocking transports (plain
//! and TLS): `poll(2)` on Unix, a read timeout elsewhere. Plain std; no
//! runtime.

use std::io;
use std::net::TcpStream;

pub(crate) fn deadline_passed() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "request deadline passed")
}

/// Waits until `sock` is ready for writing (`write`) or reading, or
/// `deadline` passed (`Ok(false)`). Error and hang-up count as ready: the
/// following read or write reports them.
#[cfg(unix)]
pub(crate) fn poll_until(
    sock: &TcpStream,
    write: bool,
    deadline: Option<std::time::Instant>,
) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let events = if write { libc::POLLOUT } else { libc::POLLIN };
    loop {
        let timeout_ms: libc::c_int = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Ok(false);
                }
                // Rounded up: poll(2) never wakes before the deadline.
                let ms = left.as_micros().div_ceil(1000);
                libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
            }
        };
        let mut pfd = libc::pollfd {
            fd: sock.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid, exclusively borrowed array of one
        // pollfd for the duration of the call; the fd is owned by `sock`.
        let r = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        match r {
            r if r > 0 => return Ok(true),
            // Timed out: the loop checks the clock again.
            0 => {}
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// Without `poll(2)`: a read timeout for the time left (rounded up by the
/// OS), set before each read.
#[cfg(not(unix))]
pub(crate) fn poll_until(
    sock: &TcpStream,
    _write: bool,
    deadline: Option<std::time::Instant>,
) -> io::Result<bool> {
    if let Some(d) = deadline {
        let left = d.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        sock.set_read_timeout(Some(left))?;
    }
    Ok(true)
}

/// `io::Read`/`io::Write` over a socket, bounded by a deadline.
pub(crate) struct Bounded<'a>(
    pub(crate) &'a TcpStream,
    pub(crate) Option<std::time::Instant>,
);

impl io::Read for Bounded<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if !poll_until(self.0, false, self.1)? {
                return Err(deadline_passed());
            }
            match io::Read::read(&mut &*self.0, buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A spurious wake-up (or a non-Unix read timeout).
                Err(e) if is_timeout(&e) => {}
                r => return r,
            }
        }
    }
}

impl io::Write for Bounded<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match io::Write::write(&mut &*self.0, buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !poll_until(self.0, true, self.1)? {
                        return Err(deadline_passed());
                    }
                }
                r => return r,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub(crate) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
