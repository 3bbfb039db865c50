//! A wasi:http edge function (wasm32-wasip2) that guards a shared backend
//! with a dflockd semaphore of limit 2.
//!
//! Per request it takes a slot of `<prefix>.backend` (limit 2; the server
//! waits at most 1 s for one), does the work (`?work_ms=`, default 300 ms)
//! while `Lease::hold` keeps the slot renewed, releases and answers `200`.
//! When no slot comes within the timeout it answers `503` with
//! `Retry-After: 1`.
//!
//! `wasmtime serve` makes a fresh instance for every request (WASI 0.2
//! components are not reused), so nothing survives between requests: a lock
//! lives within one request, and its connections close — releasing whatever
//! they held on the server — when the instance ends.
//!
//! # The check that the limit holds
//!
//! While it holds its slot, the function also takes one of two exclusive
//! "seat" locks, `<prefix>.seat-0` or `<prefix>.seat-1`, without waiting,
//! and keeps it for the whole work. Seats are taken after the slot and given
//! back before it, so a request that finds both seats taken proves that
//! three requests held a slot at once; it answers `500 overcommitted`. Any
//! lock-server error is `502`.
//!
//! ```text
//! wasmtime serve -S cli -S inherit-network --addr 127.0.0.1:8080 \
//!     --env DFLOCKD_ADDR=127.0.0.1:6388 \
//!     target/wasm32-wasip2/release/dflockd-wasi-edge.wasm
//! curl -i 'http://127.0.0.1:8080/?work_ms=500'
//! ```
//!
//! Environment: `DFLOCKD_ADDR` (default `127.0.0.1:6388`), `DFLOCKD_KEY_PREFIX`
//! (default `wasi-edge`). `DFLOCKD_EDGE_LIMIT` overrides the limit of 2; it
//! exists only so CI can show that the seat check catches a limiter that
//! admits 3 (every such run must produce `500`s).

use std::io;
use std::time::Duration;

use dflockd_client::Error;
use dflockd_client::lock::LockSpec;
use dflockd_client::time::Timer;
use dflockd_client::wasi::{
    self, ConnectOptions, NETWORK_DENIED_HINT, WasiTimer, is_network_denied,
};
use wstd::http::{Body, Request, Response, StatusCode};

/// Requests that may use the backend at once.
const LIMIT: u32 = 2;
/// How long the server may keep a request waiting for a slot.
const SLOT_TIMEOUT: Duration = Duration::from_secs(1);
/// Lease of the slot and of the seat; `Lease::hold` renews the slot.
const LEASE: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const DEFAULT_WORK: Duration = Duration::from_millis(300);
const MAX_WORK: Duration = Duration::from_secs(20);

enum Outcome {
    /// Held a slot and a seat, did the work.
    Served { seat: usize, waited: Duration },
    /// No slot within the timeout.
    Busy { waited: Duration },
    /// Held a slot but both seats were taken: a third concurrent holder.
    Overcommitted,
}

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, wstd::http::Error> {
    let work = request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("work_ms="))
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_WORK)
        .min(MAX_WORK);
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let addr = var("DFLOCKD_ADDR").unwrap_or_else(|| "127.0.0.1:6388".into());
    let prefix = var("DFLOCKD_KEY_PREFIX").unwrap_or_else(|| "wasi-edge".into());
    let limit = var("DFLOCKD_EDGE_LIMIT")
        .and_then(|v| v.parse().ok())
        .unwrap_or(LIMIT);

    let (status, body) = match handle(&addr, &prefix, limit, work).await {
        Ok(Outcome::Served { seat, waited }) => (
            StatusCode::OK,
            format!("ok seat={seat} waited_ms={}\n", waited.as_millis()),
        ),
        Ok(Outcome::Busy { waited }) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "busy: no backend slot within {} s (waited {} ms)\n",
                SLOT_TIMEOUT.as_secs(),
                waited.as_millis()
            ),
        ),
        Ok(Outcome::Overcommitted) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "overcommitted: both seats taken while holding a slot: more than 2 holders\n"
                .to_string(),
        ),
        Err(msg) => {
            eprintln!("dflockd-wasi-edge: error: {msg}");
            (StatusCode::BAD_GATEWAY, format!("error: {msg}\n"))
        }
    };
    let mut response = Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8");
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response = response.header("retry-after", "1");
    }
    Ok(response.body(Body::from(body))?)
}

fn connect_error(addr: &str, e: &Error<io::Error>) -> String {
    if is_network_denied(e) {
        format!("cannot connect to {addr}: {NETWORK_DENIED_HINT}")
    } else {
        format!("cannot connect to {addr}: {e}")
    }
}

async fn handle(addr: &str, prefix: &str, limit: u32, work: Duration) -> Result<Outcome, String> {
    let timer = WasiTimer;
    let opts = ConnectOptions {
        connect_timeout: CONNECT_TIMEOUT,
        ..ConnectOptions::default()
    };
    // Both connections up front, so the seat follows the slot at once.
    let mut slot_conn = wasi::connect::<256, 0>(addr, &opts)
        .await
        .map_err(|e| connect_error(addr, &e))?;
    let mut seat_conn = wasi::connect::<256, 0>(addr, &opts)
        .await
        .map_err(|e| connect_error(addr, &e))?;

    let sem_key = format!("{prefix}.backend");
    let seat_keys = [format!("{prefix}.seat-0"), format!("{prefix}.seat-1")];
    let slot_spec = LockSpec::semaphore(&sem_key, limit)
        .lease_ttl(LEASE)
        .acquire_timeout(SLOT_TIMEOUT);

    let asked = timer.now();
    let slot = slot_spec
        .acquire(&mut slot_conn, &timer)
        .await
        .map_err(|e| format!("acquiring a slot of {sem_key}: {e}"))?;
    let waited = timer.now().saturating_duration_since(asked);
    let Some(mut slot) = slot else {
        return Ok(Outcome::Busy { waited });
    };

    let guarded = async {
        let mut seat = None;
        for (i, key) in seat_keys.iter().enumerate() {
            let spec = LockSpec::lock(key).lease_ttl(LEASE);
            if let Some(lease) = spec.try_acquire(&mut seat_conn, &timer).await? {
                seat = Some((i, lease));
                break;
            }
        }
        let Some((i, lease)) = seat else {
            return Ok(Outcome::Overcommitted);
        };
        // The backend work.
        timer.sleep_until(timer.now() + work).await;
        lease.release(&mut seat_conn, &timer).await?;
        Ok::<_, Error<io::Error>>(Outcome::Served { seat: i, waited })
    };
    let outcome = slot
        .hold(&mut slot_conn, &timer, guarded)
        .await
        .map_err(|e| format!("slot of {sem_key} lost during the work: {e}"))?
        .map_err(|e| format!("seat lock: {e}"))?;
    slot.release(&mut slot_conn, &timer)
        .await
        .map_err(|e| format!("releasing the slot of {sem_key}: {e}"))?;
    Ok(outcome)
}
