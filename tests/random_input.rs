//! Property tests: random bytes through the reply parser, the push parser
//! and the connection's line reader never panic, never hang, and always end
//! in a value or a typed error.

use dflockd_client::protocol::{Expect, Kind, Request, Token, parse_push, parse_reply};
use dflockd_client::testing::Scripted;
use dflockd_client::{Connection, Error};
use embassy_futures::block_on;
use proptest::prelude::*;

const EXPECTS: [Expect; 6] = [
    Expect::Ok,
    Expect::Grant,
    Expect::Enqueue,
    Expect::Remaining,
    Expect::Count,
    Expect::Stats,
];

/// Bytes that look like protocol lines often enough to reach deep paths.
fn wireish() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"ok".to_vec()),
        Just(b"ok ".to_vec()),
        Just(b"sig ".to_vec()),
        Just(b"acquired ".to_vec()),
        Just(b"queued".to_vec()),
        Just(b"timeout".to_vec()),
        Just(b"error_draining".to_vec()),
        Just(b"0123456789abcdef0123456789abcdef".to_vec()),
        Just(b" 33".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        prop::collection::vec(any::<u8>(), 0..40),
    ];
    prop::collection::vec(piece, 0..30).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn parsers_never_panic(line in prop::collection::vec(any::<u8>(), 0..300)) {
        for e in EXPECTS {
            let _ = parse_reply(&line, e);
        }
        let _ = parse_push(&line);
        let _ = Token::parse(&line);
    }

    #[test]
    fn connection_survives_any_reply_stream(input in wireish(), chunk in 1usize..64) {
        let mut io = Scripted::new(input);
        io.read_chunk = chunk;
        let mut conn: Connection<Scripted, 64, 64> = Connection::new(io);
        block_on(async {
            // Each call consumes at least one line or ends the stream, so
            // this terminates; it stops at the first unrecoverable error.
            for i in 0..40u64 {
                let r = match i % 4 {
                    0 => conn.acquire(Kind::Lock, "k", 1, None).await.map(|_| ()),
                    1 => conn.enqueue(Kind::Semaphore { limit: 2 }, "k", Some(5)).await.map(|_| ()),
                    2 => conn.emit("c", "p").await.map(|_| ()),
                    _ => {
                        let mut out = [0u8; 128];
                        conn.stats(&mut out).await.map(|_| ())
                    }
                };
                match r {
                    Ok(()) => {}
                    Err(e) if e.is_recoverable() => {}
                    Err(e) => {
                        assert!(!conn.is_usable(), "{e:?} left the connection usable");
                        break;
                    }
                }
            }
            while conn.try_next_signal().is_some() {}
        });
    }

    #[test]
    fn next_signal_survives_any_stream(input in wireish(), chunk in 1usize..64) {
        let mut io = Scripted::new(input);
        io.read_chunk = chunk;
        let mut conn: Connection<Scripted, 64, 128> = Connection::new(io);
        block_on(async {
            loop {
                match conn.next_signal().await {
                    Ok(s) => assert!(!s.channel.is_empty() && !s.payload.is_empty()),
                    Err(Error::Disconnected) => break,
                    Err(Error::Protocol(_) | Error::LineTooLong) => {
                        assert!(!conn.is_usable());
                        break;
                    }
                    Err(e) => panic!("unexpected {e:?}"),
                }
            }
        });
    }

    #[test]
    fn encode_then_parse_key_round_trip(key in "[!-~]{1,256}", timeout in 0u64..=9_223_372_036) {
        let req = Request::Acquire { kind: Kind::Lock, key: &key, timeout, lease: None };
        let mut out = [0u8; 512];
        let n = req.encode(&mut out).unwrap();
        let text = std::str::from_utf8(&out[..n]).unwrap();
        let lines: Vec<&str> = text.split_terminator('\n').collect();
        let timeout = timeout.to_string();
        prop_assert_eq!(lines, vec!["l", key.as_str(), timeout.as_str()]);
    }
}
