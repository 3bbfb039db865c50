//! Acquire/release cycles on one blocking connection, for counting the
//! syscalls of the steady state (scripts/safety runs it under `strace -c`):
//!
//! ```text
//! cargo run --example blocking_cycles -- 127.0.0.1:6388 10000
//! ```
//!
//! Prints `blocking cycles: N in X ms`.

use std::time::{Duration, Instant};

use dflockd_client::Kind;
use dflockd_client::blocking::{BlockingConnection, ConnectOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:6388".into());
    let cycles: u64 = args.next().map_or(Ok(10_000), |n| n.parse())?;
    let opts = ConnectOptions {
        io_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let mut conn = BlockingConnection::<256, 0>::connect(addr.as_str(), &opts)?;
    let start = Instant::now();
    for _ in 0..cycles {
        let grant = conn
            .acquire(Kind::Lock, "blocking-cycles", 0, Some(10))?
            .ok_or("the key is held elsewhere")?;
        conn.release(Kind::Lock, "blocking-cycles", &grant.token)?;
    }
    println!(
        "blocking cycles: {cycles} in {} ms",
        start.elapsed().as_millis()
    );
    Ok(())
}
