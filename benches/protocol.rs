//! Micro-benchmarks of the hot path, in ns per op:
//! encode + parse of a grant, and a full acquire round trip over an
//! in-memory transport (encode, one write, buffered read, parse).
//!
//! `cargo bench --bench protocol`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use dflockd_client::protocol::{Expect, Kind, Reply, Request, Token, parse_reply};
use dflockd_client::testing::Responder;
use dflockd_client::{Connection, Enqueued};
use embassy_futures::block_on;

const GRANT: &[u8] = b"ok 0123456789abcdef0123456789abcdef 30\n";

fn encode_parse(c: &mut Criterion) {
    let token: Token = "0123456789abcdef0123456789abcdef".parse().unwrap();
    let mut out = [0u8; 256];
    c.bench_function("encode acquire", |b| {
        b.iter(|| {
            let req = Request::Acquire {
                kind: Kind::Lock,
                key: black_box("orders:42"),
                timeout: black_box(10),
                lease: Some(30),
            };
            black_box(req.encode(&mut out).unwrap())
        })
    });
    c.bench_function("parse grant", |b| {
        b.iter(|| {
            let r = parse_reply(black_box(&GRANT[..GRANT.len() - 1]), Expect::Grant).unwrap();
            assert!(matches!(r, Reply::Granted(_)));
            black_box(r)
        })
    });
    c.bench_function("encode release + parse ok", |b| {
        b.iter(|| {
            let req = Request::Release {
                kind: Kind::Lock,
                key: black_box("orders:42"),
                token: &token,
            };
            let n = req.encode(&mut out).unwrap();
            black_box(parse_reply(black_box(b"ok"), Expect::Ok).unwrap());
            n
        })
    });
}

fn round_trip(c: &mut Criterion) {
    let mut conn: Connection<Responder, 256> = Connection::new(Responder::new(GRANT));
    c.bench_function("round trip: acquire over in-memory transport", |b| {
        b.iter(|| block_on(conn.acquire(Kind::Lock, black_box("orders:42"), 10, Some(30))).unwrap())
    });
    static ACQUIRED: &[u8] = b"acquired 0123456789abcdef0123456789abcdef 30\n";
    let mut conn: Connection<Responder, 256> = Connection::new(Responder::new(ACQUIRED));
    c.bench_function(
        "round trip: semaphore enqueue over in-memory transport",
        |b| {
            b.iter(|| {
                let e =
                    block_on(conn.enqueue(Kind::Semaphore { limit: 3 }, black_box("pool"), None))
                        .unwrap();
                assert!(matches!(e, Enqueued::Acquired(_)));
            })
        },
    );
}

criterion_group!(benches, encode_parse, round_trip);
criterion_main!(benches);
