//! `dflock run`: hold a lock (or a semaphore slot) while a command runs.
//!
//! Three threads feed one channel of events: the acquire (then nothing),
//! the signal listener (SIGINT, SIGTERM, SIGHUP) and the child waiter,
//! which uses `waitid(WNOWAIT)` so the child stays unreaped (its pid and
//! process group cannot be reused) until the main thread reaps it. Only
//! the main thread sends signals to the child, so it never signals a pid
//! it has reaped. The lease is checked on a short tick.

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command as Process, ExitStatus};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::cli::{OnLost, RunArgs};
use crate::client::{
    ClientError, DistributedLock, DistributedSemaphore, LeaseGuard, Target, probe, validate,
};
use crate::exit::{self, Failure};

/// How often the lease is checked while the command runs (the renewal
/// thread notices a closed connection within 250 ms on its own).
const TICK: Duration = Duration::from_millis(100);

/// Without `-n`/`-w` the wait is unbounded: the server blocks in slices
/// this long (the place in the queue is kept within a slice).
const WAIT_SLICE: Duration = Duration::from_secs(3600);

enum Event {
    Acquired(Result<Option<LeaseGuard>, ClientError>),
    Signal(i32),
    ChildExited,
}

enum Resource {
    Lock(DistributedLock),
    Semaphore(DistributedSemaphore),
}

impl Resource {
    fn acquire_within(&self, timeout: Duration) -> Result<Option<LeaseGuard>, ClientError> {
        match self {
            Self::Lock(l) => l.acquire_within(timeout),
            Self::Semaphore(s) => s.acquire_within(timeout),
        }
    }
}

/// The signals forwarded to the command.
const FORWARDED: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Runs `dflock run`; the exit status.
pub fn run(target: &Target, a: &RunArgs) -> Result<i32, Failure> {
    validate::key(&a.key).map_err(Failure::usage)?;
    if let Some(limit) = a.limit {
        validate::limit(limit).map_err(Failure::usage)?;
    }
    if let Some(lease) = a.lease {
        validate::lease(lease).map_err(Failure::usage)?;
    }
    let addr = target.route(&a.key).to_owned();
    let resource = match a.limit {
        None => {
            let mut b = target.lock(&a.key);
            if let Some(l) = a.lease {
                b = b.lease_ttl(Duration::from_secs(l));
            }
            Resource::Lock(b.build())
        }
        Some(limit) => {
            let mut b = target.semaphore(&a.key, limit);
            if let Some(l) = a.lease {
                b = b.lease_ttl(Duration::from_secs(l));
            }
            Resource::Semaphore(b.build())
        }
    };

    let (tx, rx) = mpsc::channel();
    forward_signals(tx.clone())?;

    // The acquire runs on its own thread so that a signal can end the
    // wait: exiting closes the connection, which leaves the queue.
    let wait = if a.nonblock {
        Some(Duration::ZERO)
    } else {
        a.wait
    };
    log::info!("waiting for {} on {addr}", describe_key(a));
    let acquire_tx = tx.clone();
    thread::Builder::new()
        .name("dflock-acquire".into())
        .spawn(move || {
            let result = match wait {
                Some(w) => resource.acquire_within(w),
                None => loop {
                    match resource.acquire_within(WAIT_SLICE) {
                        Ok(None) => continue,
                        other => break other,
                    }
                },
            };
            let _ = acquire_tx.send(Event::Acquired(result));
        })
        .map_err(|e| Failure::new(exit::FAILURE, format!("cannot start a thread: {e}")))?;

    let guard = loop {
        match rx.recv() {
            Ok(Event::Acquired(Ok(Some(guard)))) => break guard,
            Ok(Event::Acquired(Ok(None))) => {
                let why = if a.nonblock || wait == Some(Duration::ZERO) {
                    "is busy".to_owned()
                } else {
                    format!("not obtained within {}", secs(wait.unwrap_or_default()))
                };
                log::info!("{} {why}", describe_key(a));
                return Ok(a.conflict_code());
            }
            Ok(Event::Acquired(Err(e))) => return Err(Failure::client(&addr, &e)),
            Ok(Event::Signal(sig)) => {
                log::info!("signal {sig} while waiting for the lock: giving up");
                return Ok(128 + sig);
            }
            Ok(Event::ChildExited) => {}
            Err(_) => return Err(Failure::new(exit::FAILURE, "acquire thread vanished")),
        }
    };
    log::info!(
        "acquired {} (lease {} s)",
        describe_key(a),
        guard.ttl().as_secs()
    );

    let fence = fence_of(target, &addr, &guard);
    let Some(token) = guard.token() else {
        return Err(Failure::new(
            exit::LEASE_LOST,
            format!("lease on {} lost before the command started", a.key),
        ));
    };

    let mut cmd = Process::new(&a.command[0]);
    cmd.args(&a.command[1..])
        .env("DFLOCKD_KEY", &a.key)
        .env("DFLOCKD_TOKEN", token.as_str());
    match fence {
        Some(f) => cmd.env("DFLOCKD_FENCE", f.to_string()),
        None => cmd.env_remove("DFLOCKD_FENCE"),
    };
    if !a.foreground {
        cmd.process_group(0);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = guard.release();
            let code = match e.kind() {
                std::io::ErrorKind::NotFound => exit::NOT_FOUND,
                _ => exit::NOT_EXECUTABLE,
            };
            return Err(Failure::new(code, format!("{}: {e}", show(&a.command[0]))));
        }
    };
    let pid = child.id() as libc::pid_t;
    // Signals go to the command's process group, or to the command alone
    // with --foreground.
    let target_pid = if a.foreground { pid } else { -pid };
    watch_child(pid, tx)?;

    let mut lost_at: Option<Instant> = None;
    let mut killed = false;
    loop {
        match rx.recv_timeout(TICK) {
            Ok(Event::ChildExited) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Ok(Event::Signal(sig)) => {
                log::info!("forwarding signal {sig} to the command");
                send(target_pid, sig);
            }
            Ok(Event::Acquired(_)) | Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if lost_at.is_none() && guard.is_lost() {
            lost_at = Some(Instant::now());
            match a.on_lost {
                OnLost::Kill => {
                    log::warn!(
                        "lease on {} lost while the command ran: sending SIGTERM (SIGKILL in {})",
                        a.key,
                        secs(a.kill_after)
                    );
                    send(target_pid, libc::SIGTERM);
                }
                OnLost::Warn => log::warn!(
                    "lease on {} lost: the command keeps running WITHOUT the lock",
                    a.key
                ),
            }
        }
        if a.on_lost == OnLost::Kill
            && !killed
            && lost_at.is_some_and(|t| t.elapsed() >= a.kill_after)
        {
            log::warn!("the command did not stop: sending SIGKILL");
            send(target_pid, libc::SIGKILL);
            killed = true;
        }
    }
    let status = child
        .wait()
        .map_err(|e| Failure::new(exit::FAILURE, format!("waiting for the command: {e}")))?;
    let code = status_code(status);

    if lost_at.is_some() {
        return match a.on_lost {
            OnLost::Kill => Err(Failure::new(
                exit::LEASE_LOST,
                format!("lease on {} lost; the command was stopped", a.key),
            )),
            OnLost::Warn => Ok(code),
        };
    }
    match guard.release() {
        Ok(()) => {
            log::info!("released {}", a.key);
            Ok(code)
        }
        Err(ClientError::LeaseLost) => match a.on_lost {
            OnLost::Kill => Err(Failure::new(
                exit::LEASE_LOST,
                format!("lease on {} lost as the command ended", a.key),
            )),
            OnLost::Warn => {
                log::warn!("lease on {} lost as the command ended", a.key);
                Ok(code)
            }
        },
        Err(e) => {
            // The connection is closed either way, which frees the lease.
            log::warn!("release of {} failed: {}", a.key, exit::describe(&e));
            Ok(code)
        }
    }
}

/// `lock KEY` or `semaphore KEY (limit N)`.
fn describe_key(a: &RunArgs) -> String {
    match a.limit {
        None => format!("lock {}", a.key),
        Some(n) => format!("semaphore {} (limit {n})", a.key),
    }
}

fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

fn show(s: &OsString) -> String {
    s.to_string_lossy().into_owned()
}

/// The lease's fence when the server issues fencing tokens (told by a
/// probe of the server that granted it); `None` otherwise or when the
/// probe fails.
fn fence_of(target: &Target, addr: &str, guard: &LeaseGuard) -> Option<u64> {
    let generation = target
        .open(addr)
        .and_then(|mut conn| probe(&mut *conn))
        .map(|(_, g)| g);
    match generation {
        Ok(g) => {
            log::debug!("{addr} speaks {}", g.describe());
            if g.has_fences() { guard.fence() } else { None }
        }
        Err(e) => {
            log::debug!("generation probe of {addr} failed: {}", exit::describe(&e));
            None
        }
    }
}

/// The shell's view of a status: the exit code, or 128 + the signal.
fn status_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => exit::FAILURE,
    }
}

/// Sends `sig` to `pid` (a negative pid: a process group).
fn send(pid: libc::pid_t, sig: i32) {
    // SAFETY: kill(2) has no memory effects; the pid belongs to our
    // unreaped child (or its process group), so it cannot name another
    // process.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc != 0 {
        log::debug!("kill({pid}, {sig}): {}", std::io::Error::last_os_error());
    }
}

/// Delivers SIGINT, SIGTERM and SIGHUP as events from now on.
fn forward_signals(tx: mpsc::Sender<Event>) -> Result<(), Failure> {
    let mut signals = signal_hook::iterator::Signals::new(FORWARDED)
        .map_err(|e| Failure::new(exit::FAILURE, format!("cannot handle signals: {e}")))?;
    thread::Builder::new()
        .name("dflock-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if tx.send(Event::Signal(sig)).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| Failure::new(exit::FAILURE, format!("cannot start a thread: {e}")))?;
    Ok(())
}

/// Sends [`Event::ChildExited`] when the child exits, leaving it unreaped.
fn watch_child(pid: libc::pid_t, tx: mpsc::Sender<Event>) -> Result<(), Failure> {
    thread::Builder::new()
        .name("dflock-child".into())
        .spawn(move || {
            loop {
                // SAFETY: an all-zero siginfo_t is a valid out-parameter,
                // and waitid only writes into it.
                let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
                // SAFETY: waitid with WNOWAIT only observes our own child;
                // `info` is a valid, exclusively borrowed siginfo_t.
                let rc = unsafe {
                    libc::waitid(
                        libc::P_PID,
                        pid as libc::id_t,
                        &mut info,
                        libc::WEXITED | libc::WNOWAIT,
                    )
                };
                if rc == 0
                    || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
                {
                    break;
                }
            }
            let _ = tx.send(Event::ChildExited);
        })
        .map_err(|e| Failure::new(exit::FAILURE, format!("cannot start a thread: {e}")))?;
    Ok(())
}
