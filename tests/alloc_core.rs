//! Encoding, parsing and a full request/reply round trip over an in-memory
//! transport allocate nothing (counted by a global allocator).

use dflockd_client::protocol::{Expect, Kind, Request, Token, parse_reply};
use dflockd_client::testing::Responder;
use dflockd_client::{Connection, Enqueued};
use embassy_futures::block_on;

#[path = "support/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::{Counting, allocations};

#[global_allocator]
static GLOBAL: Counting = Counting;

const TOK: &str = "0123456789abcdef0123456789abcdef";

#[test]
fn encode_and_parse_allocate_nothing() {
    let token: Token = TOK.parse().unwrap();
    let n = allocations(|| {
        let mut out = [0u8; 256];
        for _ in 0..1000 {
            let req = Request::Renew {
                kind: Kind::Semaphore { limit: 3 },
                key: "orders:42",
                token: &token,
                lease: Some(30),
            };
            let len = req.encode(&mut out).unwrap();
            assert!(len > 0);
            let r =
                parse_reply(b"ok 0123456789abcdef0123456789abcdef 30\r", Expect::Grant).unwrap();
            std::hint::black_box(r);
            let r = parse_reply(b"error_max_waiters", Expect::Enqueue).unwrap();
            std::hint::black_box(r);
        }
    });
    assert_eq!(n, 0);
}

#[test]
fn round_trips_allocate_nothing() {
    static GRANT: &[u8] = b"ok 0123456789abcdef0123456789abcdef 30\n";
    let mut conn: Connection<Responder, 256> = Connection::new(Responder::new(GRANT));
    let token: Token = TOK.parse().unwrap();
    let n = allocations(|| {
        block_on(async {
            for _ in 0..1000 {
                let g = conn
                    .acquire(Kind::Lock, "orders:42", 10, Some(30))
                    .await
                    .unwrap();
                assert_eq!(g.map(|g| g.token), Some(token));
            }
        });
    });
    assert_eq!(n, 0);

    static ACQUIRED: &[u8] = b"acquired 0123456789abcdef0123456789abcdef 30\n";
    let mut conn: Connection<Responder, 256> = Connection::new(Responder::new(ACQUIRED));
    let n = allocations(|| {
        block_on(async {
            for _ in 0..1000 {
                let e = conn
                    .enqueue(Kind::Semaphore { limit: 2 }, "pool", None)
                    .await
                    .unwrap();
                assert!(matches!(e, Enqueued::Acquired(_)));
            }
        });
    });
    assert_eq!(n, 0);
}

#[test]
fn the_counter_counts() {
    // Guards against a test that cannot fail.
    let n = allocations(|| {
        std::hint::black_box(vec![1u8; 16]);
    });
    assert_eq!(n, 1);
}
