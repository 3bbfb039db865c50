//! Zero heap allocations per acquire/release cycle on an established
//! connection, through the tokio and blocking adapters against a real
//! (testkit) server. The one-time connect may allocate; the cycles may not.
//!
//! Only the client thread is counted: the testkit runs on its own threads.

use dflockd_client::blocking::{
    BlockingConnection, BlockingTransport, ConnectOptions as BlockingOptions,
    HostStream as BlockingHost, StdStream,
};
use dflockd_client::tokio::{ConnectOptions, HostStream, connect};
use dflockd_client::{Connection, Kind};
use dflockd_testkit::TestServer;
use embedded_io_adapters::tokio_1::FromTokio;
use embedded_io_async::{Read, Write};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::{Counting, allocations, start as start_counting, stop as stop_counting};

#[global_allocator]
static GLOBAL: Counting = Counting;

const CYCLES: usize = 500;

/// Allocations during `CYCLES` acquire/release cycles on `conn`, after a
/// warm-up round (first use of the socket and the runtime's timer).
async fn async_cycles<T: Read + Write>(conn: &mut Connection<T, 256, 0>, key: &str) -> u64 {
    for round in 0..2 {
        if round == 1 {
            start_counting();
        }
        for _ in 0..CYCLES {
            let g = conn
                .acquire(Kind::Lock, key, 10, Some(30))
                .await
                .unwrap()
                .unwrap();
            conn.release(Kind::Lock, key, &g.token).await.unwrap();
        }
    }
    stop_counting()
}

/// [`async_cycles`] for the blocking adapter.
fn blocking_cycles<T: BlockingTransport>(
    conn: &mut BlockingConnection<256, 0, T>,
    key: &str,
) -> u64 {
    for round in 0..2 {
        if round == 1 {
            start_counting();
        }
        for _ in 0..CYCLES {
            let g = conn
                .acquire(Kind::Lock, key, 10, Some(30))
                .unwrap()
                .unwrap();
            conn.release(Kind::Lock, key, &g.token).unwrap();
        }
    }
    stop_counting()
}

fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn tokio_cycles_allocate_nothing() {
    let server = TestServer::builder().start_blocking().expect("testkit");
    let addr = server.addr().to_string();
    let allocs = current_thread_runtime().block_on(async {
        let mut conn = connect::<256, 0>(&addr, &ConnectOptions::default())
            .await
            .unwrap();
        async_cycles(&mut conn, "alloc-tokio").await
    });
    assert_eq!(allocs, 0, "{allocs} allocations in {CYCLES} tokio cycles");
}

#[test]
fn blocking_cycles_allocate_nothing() {
    let server = TestServer::builder().start_blocking().expect("testkit");
    let mut conn =
        BlockingConnection::<256, 0>::connect(server.addr(), &BlockingOptions::default()).unwrap();
    let allocs = blocking_cycles(&mut conn, "alloc-blocking");
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
    let server = TestServer::builder().start_blocking().expect("testkit");
    let addr = server.addr();
    let allocs = current_thread_runtime().block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut conn: Connection<HostStream, 256, 0> =
            Connection::new(HostStream::from(FromTokio::new(tcp)));
        async_cycles(&mut conn, "alloc-host").await
    });
    assert_eq!(allocs, 0, "{allocs} allocations in {CYCLES} tokio cycles");

    let tcp = std::net::TcpStream::connect(addr).unwrap();
    let mut conn = BlockingConnection::<256, 0, BlockingHost>::from_transport(
        BlockingHost::from(StdStream::new(tcp)),
        std::time::Duration::from_secs(10),
    );
    let allocs = blocking_cycles(&mut conn, "alloc-host-blocking");
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
