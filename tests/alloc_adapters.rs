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

/// The transport enum of the high-level host APIs (`HostStream`, plain
/// arm) adds no allocation either: the lock and signal modules run on it.
/// (TLS is not checked here: rustls allocates its record buffers per
/// request, inside rustls.)
#[test]
fn host_stream_cycles_allocate_nothing() {
    use dflockd_client::Connection;
    use dflockd_client::runtime::blocking::{HostStream as BlockingHost, StdStream};
    use dflockd_client::runtime::tokio::HostStream;
    use embedded_io_adapters::tokio_1::FromTokio;

    let server = TestServer::builder().start_blocking().expect("testkit");
    let addr = server.addr();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let allocs = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut conn: Connection<HostStream, 256, 0> =
            Connection::new(HostStream::from(FromTokio::new(tcp)));
        let mut allocs = 0;
        for round in 0..2 {
            if round == 1 {
                start_counting();
            }
            for _ in 0..CYCLES {
                let g = conn
                    .acquire(Kind::Lock, "alloc-host", 10, Some(30))
                    .await
                    .unwrap()
                    .unwrap();
                conn.release(Kind::Lock, "alloc-host", &g.token)
                    .await
                    .unwrap();
            }
            if round == 1 {
                allocs = stop_counting();
            }
        }
        allocs
    });
    assert_eq!(allocs, 0, "{allocs} allocations in {CYCLES} tokio cycles");

    let tcp = std::net::TcpStream::connect(addr).unwrap();
    let mut conn = BlockingConnection::<256, 0, BlockingHost>::from_transport(
        BlockingHost::from(StdStream(tcp)),
        std::time::Duration::from_secs(10),
    );
    for round in 0..2 {
        if round == 1 {
            start_counting();
        }
        for _ in 0..CYCLES {
            let g = conn
                .acquire(Kind::Lock, "alloc-host-blocking", 10, Some(30))
                .unwrap()
                .unwrap();
            conn.release(Kind::Lock, "alloc-host-blocking", &g.token)
                .unwrap();
        }
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
