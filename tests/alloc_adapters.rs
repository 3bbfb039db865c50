//! Zero heap allocations per acquire/release cycle on an established
//! connection, through the tokio and blocking adapters against a real
//! (testkit) server. The one-time connect may allocate; the cycles may not.
//!
//! Only the client thread is counted: the testkit runs on its own threads.

use dflockd_client::Kind;
use dflockd_client::runtime::blocking::{BlockingConnection, ConnectOptions as BlockingOptions};
use dflockd_client::runtime::tokio::{ConnectOptions, connect};
use dflockd_testkit::TestServer;

#[path = "support/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::{Counting, allocations, start as start_counting, stop as stop_counting};

#[global_allocator]
static GLOBAL: Counting = Counting;

const CYCLES: usize = 500;

#[test]
fn tokio_cycles_allocate_nothing() {
    let server = TestServer::builder().start_blocking().expect("testkit");
    let addr = server.addr().to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let allocs = rt.block_on(async {
        let mut conn = connect::<256, 0>(&addr, &ConnectOptions::default())
            .await
            .unwrap();
        // Warm up: first use of the socket and the timer wheel.
        for _ in 0..10 {
            let g = conn
                .acquire(Kind::Lock, "alloc-tokio", 10, Some(30))
                .await
                .unwrap()
                .unwrap();
            conn.release(Kind::Lock, "alloc-tokio", &g.token)
                .await
                .unwrap();
        }
        start_counting();
        for _ in 0..CYCLES {
            let g = conn
                .acquire(Kind::Lock, "alloc-tokio", 10, Some(30))
                .await
                .unwrap()
                .unwrap();
            conn.release(Kind::Lock, "alloc-tokio", &g.token)
                .await
                .unwrap();
        }
        stop_counting()
    });
    assert_eq!(allocs, 0, "{allocs} allocations in {CYCLES} tokio cycles");
}

#[test]
fn blocking_cycles_allocate_nothing() {
    let server = TestServer::builder().start_blocking().expect("testkit");
    let addr = server.addr();
    let mut conn =
        BlockingConnection::<256, 0>::connect(addr, &BlockingOptions::default()).unwrap();
    for _ in 0..10 {
        let g = conn
            .acquire(Kind::Lock, "alloc-blocking", 10, Some(30))
            .unwrap()
            .unwrap();
        conn.release(Kind::Lock, "alloc-blocking", &g.token)
            .unwrap();
    }
    start_counting();
    for _ in 0..CYCLES {
        let g = conn
            .acquire(Kind::Lock, "alloc-blocking", 10, Some(30))
            .unwrap()
            .unwrap();
        conn.release(Kind::Lock, "alloc-blocking", &g.token)
            .unwrap();
    }
    let allocs = stop_counting();
    assert_eq!(
        allocs, 0,
        "{allocs} allocations in {CYCLES} blocking cycles"
    );
}

#[test]
fn the_counter_counts() {
    let n = allocations(|| {
        std::hint::black_box(Box::new(7u64));
    });
    assert_eq!(n, 1);
}
