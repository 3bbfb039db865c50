//! A WASI 0.2 command (wasm32-wasip2) that exercises dflockd-client inside
//! wasmtime:
//!
//! 1. takes a lock and a slot of a semaphore (limit 2), each with a 2 s
//!    lease, on two connections;
//! 2. holds both for 5 s — more than two lease periods — renewing them
//!    cooperatively with `Lease::hold` (the guest has one thread);
//! 3. meanwhile subscribes on a third connection and receives a signal
//!    emitted on a fourth; both signal connections stay alive with the core
//!    `SignalConn` heartbeat (a ping every second);
//! 4. checks that the lock is still its own, releases everything and exits 0.
//!
//! Any error ends it with a message on stderr and exit status 1; a missing
//! network grant says which wasmtime flag to add.
//!
//! ```text
//! wasmtime run -S inherit-network=y --env DFLOCKD_ADDR=127.0.0.1:6388 \
//!     target/wasm32-wasip2/release/dflockd-wasi-command.wasm
//! ```
//!
//! Environment: `DFLOCKD_ADDR` (default `127.0.0.1:6388`; `[::1]:6388` or a
//! host name such as `dflockd.internal:6388` work too, a name with
//! `-S allow-ip-name-lookup=y`), `DFLOCKD_KEY_PREFIX`
//! (default `wasi-demo`). With the `tls` feature: `DFLOCKD_TLS_CA`, a path to
//! the CA certificate (PEM or DER, inside a directory given with `--dir`),
//! switches to TLS 1.3; `DFLOCKD_TLS_NAME` is the name the server certificate
//! must carry (default `localhost`). The certificate's validity period is
//! checked against the guest's wall clock (`tls::SystemClock`): an expired
//! or not yet valid certificate is refused, and the message says so.

use std::fmt::Debug;
use std::io;
use std::process::ExitCode;
use std::time::Duration;

use dflockd_client::lock::LockSpec;
use dflockd_client::signal::{DEFAULT_READ_TIMEOUT, Heartbeat, SignalConn};
use dflockd_client::time::Timer;
use dflockd_client::wasi::{
    self, ConnectOptions, NETWORK_DENIED_HINT, WasiTimer, is_network_denied,
};
use dflockd_client::{Connection, Error};
use embassy_futures::join::join;
use embedded_io_async::{Read, Write};

const LEASE: Duration = Duration::from_secs(2);
const HOLD: Duration = Duration::from_secs(5);
const EMIT_AFTER: Duration = Duration::from_secs(4);
const HEARTBEAT: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(15);

struct Config {
    addr: String,
    prefix: String,
    tls_ca: Option<String>,
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    tls_name: String,
}

impl Config {
    fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Config {
            addr: var("DFLOCKD_ADDR").unwrap_or_else(|| "127.0.0.1:6388".into()),
            prefix: var("DFLOCKD_KEY_PREFIX").unwrap_or_else(|| "wasi-demo".into()),
            tls_ca: var("DFLOCKD_TLS_CA"),
            tls_name: var("DFLOCKD_TLS_NAME").unwrap_or_else(|| "localhost".into()),
        }
    }
}

fn main() -> ExitCode {
    let cfg = Config::from_env();
    match wstd::runtime::block_on(run(&cfg)) {
        Ok(()) => {
            println!("dflockd-wasi-command: ok");
            ExitCode::SUCCESS
        }
        Err(msg) => {
            eprintln!("dflockd-wasi-command: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// The message for a failed connect; names the wasmtime flag when the host
/// denied the network (or, in the I/O error's own message, name lookups).
fn connect_error(addr: &str, e: &Error<io::Error>) -> String {
    match e {
        _ if is_network_denied(e) => format!("cannot connect to {addr}: {NETWORK_DENIED_HINT}"),
        Error::Io(io) => format!("cannot connect to {addr}: {io}"),
        _ => format!("cannot connect to {addr}: {e}"),
    }
}

async fn run(cfg: &Config) -> Result<(), String> {
    match &cfg.tls_ca {
        None => {
            println!("connecting to {} (plain TCP)", cfg.addr);
            let opts = ConnectOptions {
                connect_timeout: CONNECT_TIMEOUT,
                ..ConnectOptions::default()
            };
            let err = |e: Error<io::Error>| connect_error(&cfg.addr, &e);
            let mut lock_conn = wasi::connect::<256, 0>(&cfg.addr, &opts)
                .await
                .map_err(err)?;
            let mut sem_conn = wasi::connect::<256, 0>(&cfg.addr, &opts)
                .await
                .map_err(err)?;
            let rx = wasi::connect::<512, 2048>(&cfg.addr, &opts)
                .await
                .map_err(err)?;
            let tx = wasi::connect::<512, 0>(&cfg.addr, &opts)
                .await
                .map_err(err)?;
            demo(cfg, &mut lock_conn, &mut sem_conn, rx, tx).await
        }
        Some(ca_path) => tls_run(cfg, ca_path).await,
    }
}

#[cfg(not(feature = "tls"))]
async fn tls_run(_cfg: &Config, _ca_path: &str) -> Result<(), String> {
    Err("DFLOCKD_TLS_CA is set but this build has no TLS: build with `--features tls`".into())
}

#[cfg(feature = "tls")]
async fn tls_run(cfg: &Config, ca_path: &str) -> Result<(), String> {
    use dflockd_client::tls::{
        self, READ_RECORD_BUFFER, SystemClock, TlsError, TlsStream, TlsVerify, WRITE_RECORD_BUFFER,
    };
    use dflockd_client::wasi::{WasiRng, WasiStream};

    let ca_file = std::fs::read(ca_path).map_err(|e| {
        format!("cannot read the CA certificate {ca_path}: {e} (is its directory given to wasmtime with --dir?)")
    })?;
    let ca_der =
        pem::to_der(&ca_file).ok_or_else(|| format!("{ca_path}: not a PEM or DER certificate"))?;
    println!(
        "connecting to {} (TLS 1.3, verifying {} against {ca_path})",
        cfg.addr, cfg.tls_name
    );

    // One pair of record buffers per connection, borrowed by its stream.
    let mut bufs: Vec<(Vec<u8>, Vec<u8>)> = (0..4)
        .map(|_| (vec![0; READ_RECORD_BUFFER], vec![0; WRITE_RECORD_BUFFER]))
        .collect();
    let mut streams: Vec<TlsStream<'_, WasiStream>> = Vec::with_capacity(4);
    for (what, (rb, wb)) in ["lock", "semaphore", "signal receiver", "signal emitter"]
        .iter()
        .zip(bufs.iter_mut())
    {
        println!("  connection: {what}");
        let tcp = wasi::connect_stream(&cfg.addr, CONNECT_TIMEOUT)
            .await
            .map_err(|e| connect_error(&cfg.addr, &e))?;
        let verify = TlsVerify::Ca {
            ca_der: &ca_der,
            server_name: &cfg.tls_name,
        };
        // The guest has a trusted wall clock (wasi:clocks/wall-clock), so
        // the certificates' validity period is checked too.
        let stream = wasi::timeout(CONNECT_TIMEOUT, async {
            tls::handshake_with_clock::<SystemClock, _, _>(tcp, rb, wb, verify, WasiRng)
                .await
                .map_err(Error::Io)
        })
        .await;
        match stream {
            Ok(stream) => streams.push(stream),
            Err(Error::Io(TlsError::InvalidCertificate)) => {
                return Err(certificate_refused(cfg, ca_path, &ca_der).await);
            }
            Err(e) => return Err(format!("TLS handshake with {}: {e}", cfg.addr)),
        }
    }
    let mut it = streams.into_iter();
    let mut next = || it.next().ok_or_else(|| "missing TLS stream".to_string());
    let mut lock_conn = Connection::<_, 256>::new(next()?);
    let mut sem_conn = Connection::<_, 256>::new(next()?);
    let rx = Connection::<_, 512, 2048>::new(next()?);
    let tx = Connection::<_, 512>::new(next()?);
    demo(cfg, &mut lock_conn, &mut sem_conn, rx, tx).await
}

/// Why the server certificate was refused. embedded-tls reports a bad
/// chain, a wrong name and a validity period that does not cover the clock
/// alike (`InvalidCertificate`), so this tells them apart with a second
/// handshake that skips the period (`tls::handshake`); that stream is dropped
/// unused.
#[cfg(feature = "tls")]
async fn certificate_refused(cfg: &Config, ca_path: &str, ca_der: &[u8]) -> String {
    use dflockd_client::tls::{
        self, READ_RECORD_BUFFER, SystemClock, TlsClock, TlsError, TlsVerify, WRITE_RECORD_BUFFER,
    };
    use dflockd_client::wasi::WasiRng;

    let (mut rb, mut wb) = (vec![0; READ_RECORD_BUFFER], vec![0; WRITE_RECORD_BUFFER]);
    let verify = TlsVerify::Ca {
        ca_der,
        server_name: &cfg.tls_name,
    };
    let without_clock = async {
        let tcp = wasi::connect_stream(&cfg.addr, CONNECT_TIMEOUT)
            .await
            .map_err(|e| connect_error(&cfg.addr, &e))?;
        let handshake = tls::handshake(tcp, &mut rb, &mut wb, verify, WasiRng);
        let r = wasi::timeout(CONNECT_TIMEOUT, async {
            handshake.await.map_err(Error::Io)
        })
        .await;
        Ok::<_, String>(r.map(drop))
    };
    let why = match without_clock.await {
        Ok(Ok(())) => format!(
            "is outside its validity period: expired or not yet valid (the guest's clock reads Unix time {})",
            SystemClock::now().map_or("unknown".into(), |s| s.to_string())
        ),
        Ok(Err(Error::Io(TlsError::InvalidCertificate))) => format!(
            "is not signed by the CA in {ca_path} or does not name `{}` (DFLOCKD_TLS_NAME)",
            cfg.tls_name
        ),
        Ok(Err(e)) => format!("was refused (a second handshake to tell why failed: {e})"),
        Err(e) => format!("was refused (reconnecting to tell why failed: {e})"),
    };
    format!(
        "TLS handshake with {}: InvalidCertificate: the server certificate {why}",
        cfg.addr
    )
}

/// The scenario, on any transport.
async fn demo<T>(
    cfg: &Config,
    lock_conn: &mut Connection<T, 256>,
    sem_conn: &mut Connection<T, 256>,
    rx: Connection<T, 512, 2048>,
    tx: Connection<T, 512>,
) -> Result<(), String>
where
    T: Read + Write,
    T::Error: Debug,
{
    let timer = WasiTimer;
    let lock_key = format!("{}.lock", cfg.prefix);
    let sem_key = format!("{}.sem", cfg.prefix);
    let channel = format!("{}.hello", cfg.prefix);
    let pattern = format!("{}.>", cfg.prefix);

    let lock = LockSpec::lock(&lock_key)
        .lease_ttl(LEASE)
        .acquire_timeout(ACQUIRE_TIMEOUT);
    let sem = LockSpec::semaphore(&sem_key, 2)
        .lease_ttl(LEASE)
        .acquire_timeout(ACQUIRE_TIMEOUT);

    let mut lock_lease = lock
        .acquire(lock_conn, &timer)
        .await
        .map_err(|e| format!("acquiring lock {lock_key}: {e}"))?
        .ok_or_else(|| format!("lock {lock_key} not granted within {ACQUIRE_TIMEOUT:?}"))?;
    let mut sem_lease = sem
        .acquire(sem_conn, &timer)
        .await
        .map_err(|e| format!("acquiring a slot of semaphore {sem_key}: {e}"))?
        .ok_or_else(|| format!("no slot of semaphore {sem_key} within {ACQUIRE_TIMEOUT:?}"))?;
    println!(
        "acquired lock {lock_key} (fence {}) and a slot of {sem_key} (limit 2), lease {} s each",
        lock_lease.fence(),
        lock_lease.ttl().as_secs()
    );

    let heartbeat =
        Heartbeat::new(HEARTBEAT, DEFAULT_READ_TIMEOUT).map_err(|e| format!("heartbeat: {e}"))?;
    let mut rx = SignalConn::with_heartbeat(rx, timer, heartbeat);
    let mut tx = SignalConn::with_heartbeat(tx, timer, heartbeat);
    rx.listen(&pattern, None)
        .await
        .map_err(|e| format!("listen {pattern}: {e}"))?;
    println!(
        "listening on {pattern}; holding for {} s with renewal",
        HOLD.as_secs()
    );

    let start = timer.now();
    let first_deadline = lock_lease.deadline();
    let payload = format!("hello-from-wasip2-fence-{}", lock_lease.fence());

    // The critical section: a signal round trip while both leases renew.
    let work = async {
        let receive = wasi::timeout(SIGNAL_TIMEOUT, async {
            let sig = rx.next().await?;
            Ok::<_, Error<T::Error>>((sig.channel.to_owned(), sig.payload.to_owned()))
        });
        let send = async {
            // Quiet for a while (the heartbeat keeps `rx` alive), with a
            // ping on `tx` every second, then emit.
            while timer.now() < start + EMIT_AFTER {
                timer.sleep_until(timer.now() + HEARTBEAT).await;
                tx.keepalive().await?;
            }
            tx.emit(&channel, &payload).await
        };
        let (received, sent) = join(receive, send).await;
        let delivered = sent.map_err(|e| format!("emit on {channel}: {e}"))?;
        let (got_channel, got_payload) =
            received.map_err(|e| format!("receiving the signal on {pattern}: {e}"))?;
        if got_channel != channel || got_payload != payload {
            return Err(format!(
                "received `{got_channel} {got_payload}`, expected `{channel} {payload}`"
            ));
        }
        println!(
            "signal {channel} emitted ({delivered} delivery) and received on a second connection"
        );
        timer.sleep_until(start + HOLD).await;
        Ok(())
    };
    lock_lease
        .hold(lock_conn, &timer, sem_lease.hold(sem_conn, &timer, work))
        .await
        .map_err(|e| format!("lock {lock_key} lost while held: {e}"))?
        .map_err(|e| format!("semaphore slot of {sem_key} lost while held: {e}"))??;

    let held = timer.now().saturating_duration_since(start);
    let moved = lock_lease
        .deadline()
        .saturating_duration_since(first_deadline);
    if held <= LEASE || moved.is_zero() {
        return Err(format!(
            "expected renewal past one lease period: held {held:?}, deadline moved {moved:?}"
        ));
    }
    // Still ours after more than two lease periods: another connection
    // cannot take it.
    let probe = lock
        .try_acquire(tx.connection_mut(), &timer)
        .await
        .map_err(|e| format!("probing lock {lock_key}: {e}"))?;
    if probe.is_some() {
        return Err(format!(
            "lock {lock_key} was free after the hold: renewal failed"
        ));
    }
    println!(
        "held {:.1} s with a {} s lease: deadline renewed forward by {:.1} s, lock still exclusive",
        held.as_secs_f32(),
        LEASE.as_secs(),
        moved.as_secs_f32()
    );

    sem_lease
        .release(sem_conn, &timer)
        .await
        .map_err(|e| format!("releasing the slot of {sem_key}: {e}"))?;
    lock_lease
        .release(lock_conn, &timer)
        .await
        .map_err(|e| format!("releasing lock {lock_key}: {e}"))?;
    rx.unlisten(&pattern, None)
        .await
        .map_err(|e| format!("unlisten {pattern}: {e}"))?;
    println!(
        "released lock and slot; dropped signals: {}",
        rx.dropped_signals()
    );
    Ok(())
}

/// PEM to DER without dependencies (the guest reads the CA from a file).
#[cfg(feature = "tls")]
mod pem {
    /// DER as is, or the first PEM block base64-decoded.
    pub fn to_der(file: &[u8]) -> Option<Vec<u8>> {
        if file.first() == Some(&0x30) {
            return Some(file.to_vec());
        }
        let text = std::str::from_utf8(file).ok()?;
        let body = text.split("-----BEGIN ").nth(1)?;
        let body = body.split_once('\n')?.1;
        let body = body.split("-----END ").next()?;
        decode(body.bytes().filter(|b| !b.is_ascii_whitespace()))
    }

    fn decode(bytes: impl Iterator<Item = u8>) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u32, 0u32);
        for b in bytes {
            let v = match b {
                b'A'..=b'Z' => b - b'A',
                b'a'..=b'z' => b - b'a' + 26,
                b'0'..=b'9' => b - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                b'=' => break,
                _ => return None,
            };
            acc = (acc << 6) | u32::from(v);
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        Some(out)
    }
}
