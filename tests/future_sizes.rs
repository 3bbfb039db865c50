//! Sizes of the main futures and of per-connection state, printed for
//! BENCHMARKS.md (`cargo test --release --test future_sizes -- --nocapture`).
//! They are reported, not asserted: a compiler upgrade may move them.

use core::mem::size_of_val;

use dflockd_client::Connection;
use dflockd_client::lock::LockSpec;
use dflockd_client::protocol::Kind;
use dflockd_client::signal::SignalConn;
use dflockd_client::testing::Scripted;
use dflockd_client::time::{Instant, Timer};

struct FakeTimer;
impl Timer for FakeTimer {
    fn now(&self) -> Instant {
        Instant::from_millis(0)
    }
    async fn sleep_until(&self, _: Instant) {}
}

#[test]
fn report_future_sizes() {
    let mut conn: Connection<Scripted, 128, 0> = Connection::new(Scripted::new(Vec::new()));
    let timer = FakeTimer;
    let spec = LockSpec::lock("k");
    let token = "0123456789abcdef0123456789abcdef".parse().unwrap();
    println!(
        "Connection<Scripted, 128, 0>: {} bytes",
        core::mem::size_of_val(&conn)
    );
    println!(
        "Connection::acquire future: {}",
        size_of_val(&conn.acquire(Kind::Lock, "k", 1, None))
    );
    println!(
        "Connection::release future: {}",
        size_of_val(&conn.release(Kind::Lock, "k", &token))
    );
    println!(
        "LockSpec::acquire future: {}",
        size_of_val(&spec.acquire(&mut conn, &timer))
    );
    println!(
        "LockSpec::enqueue future: {}",
        size_of_val(&spec.enqueue(&mut conn, &timer))
    );
    let grant = dflockd_client::Grant { token, lease: 10 };
    let mut lease = dflockd_client::lock::Lease::from_grant(
        &spec,
        grant,
        Instant::from_millis(0),
        Instant::from_millis(0),
    );
    println!("Lease: {}", core::mem::size_of_val(&lease));
    println!(
        "Lease::renew future: {}",
        size_of_val(&lease.renew(&mut conn, &timer))
    );
    println!(
        "Lease::hold future (empty body): {}",
        size_of_val(&lease.hold(&mut conn, &timer, async {}))
    );
    println!(
        "Lease::release future: {}",
        size_of_val(&lease.release(&mut conn, &timer))
    );
    let sconn: Connection<Scripted, 256, 512> = Connection::new(Scripted::new(Vec::new()));
    let mut sigs = SignalConn::new(sconn, FakeTimer);
    println!(
        "SignalConn<Scripted, _, 256, 512>: {}",
        core::mem::size_of_val(&sigs)
    );
    println!("SignalConn::next future: {}", size_of_val(&sigs.next()));
    println!(
        "SignalConn::emit future: {}",
        size_of_val(&sigs.emit("c", "p"))
    );
}
