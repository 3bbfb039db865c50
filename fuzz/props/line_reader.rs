//! The connection's line reader against a model of the protocol: any
//! server byte stream, split into reads at fuzzer-chosen sizes, with `sig`
//! pushes anywhere between lines, under a fuzzer-chosen sequence of
//! requests, stats calls and signal reads.
//!
//! Input: `[config] [k] [k read sizes] [m] [m ops] [server stream...]`.
//!
//! Properties: every call's outcome equals the model's (so a reply is never
//! read across a push boundary, a push is never taken for a reply, and no
//! push is lost or invented); the bytes written are exactly the request's
//! encoding; the drop counter, the queue and usability agree with the model;
//! nothing is allocated (but the boxed leader address of an
//! `error_not_leader <host:port>` error where `std` is linked) and the
//! connection's size is its buffers plus a few words, whatever the input.

use dflockd_client::Connection;
use dflockd_client::protocol::{
    Expect, Kind, ProtocolError, Reply, Request, Status, Token, parse_reply,
};
use embassy_futures::block_on;

use super::wire::{Model, Next, Outcome, Wire};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// Splits the input into its header fields and the server stream.
pub struct Input<'a> {
    /// Variant of `(N, P)` and end-of-stream behaviour.
    pub config: u8,
    /// Read sizes, cycled.
    pub chunks: &'a [u8],
    /// Operations, in order.
    pub ops: &'a [u8],
    /// What the server sends.
    pub stream: &'a [u8],
}

impl<'a> Input<'a> {
    /// Parses the header; short inputs get empty fields.
    pub fn parse(data: &'a [u8]) -> Self {
        let take = |d: &'a [u8], n: usize| d.split_at(n.min(d.len()));
        let (config, d) = take(data, 1);
        let (k, d) = take(d, 1);
        let (chunks, d) = take(d, usize::from(k.first().copied().unwrap_or(0) % 8));
        let (m, d) = take(d, 1);
        let (ops, stream) = take(d, usize::from(m.first().copied().unwrap_or(0) % 32));
        Input {
            config: config.first().copied().unwrap_or(0),
            chunks,
            ops,
            stream,
        }
    }

    /// Builds an input (for seeds).
    pub fn encode(config: u8, chunks: &[u8], ops: &[u8], stream: &[u8]) -> Vec<u8> {
        let mut v = vec![config, chunks.len() as u8];
        v.extend_from_slice(chunks);
        v.push(ops.len() as u8);
        v.extend_from_slice(ops);
        v.extend_from_slice(stream);
        v
    }
}

/// Operation codes (an op byte modulo 8).
pub mod op {
    /// `l` (expects a grant).
    pub const ACQUIRE: u8 = 0;
    /// `e` (expects acquired or queued).
    pub const ENQUEUE: u8 = 1;
    /// `n` (expects seconds remaining).
    pub const RENEW: u8 = 2;
    /// `signal` (expects a count).
    pub const EMIT: u8 = 3;
    /// `ping` (expects ok).
    pub const PING: u8 = 4;
    /// `stats` into a 40-byte (bit 3 clear) or 300-byte buffer.
    pub const STATS: u8 = 5;
    /// `next_signal`.
    pub const NEXT_SIGNAL: u8 = 6;
    /// `try_next_signal` (no IO).
    pub const TRY_SIGNAL: u8 = 7;
}

fn request(op: u8, token: &Token) -> (Request<'_>, Expect) {
    match op {
        op::ACQUIRE => (
            Request::Acquire {
                kind: Kind::Lock,
                key: "k",
                timeout: 1,
                lease: Some(9),
            },
            Expect::Grant,
        ),
        op::ENQUEUE => (
            Request::Enqueue {
                kind: Kind::Semaphore { limit: 2 },
                key: "k",
                lease: None,
            },
            Expect::Enqueue,
        ),
        op::RENEW => (
            Request::Renew {
                kind: Kind::Lock,
                key: "k",
                token,
                lease: None,
            },
            Expect::Remaining,
        ),
        op::EMIT => (
            Request::Signal {
                channel: "c.d",
                payload: "p q",
            },
            Expect::Count,
        ),
        _ => (Request::Ping, Expect::Ok),
    }
}

/// The model's outcome of a request.
fn model_request(m: &mut Model<'_>, expect: Expect) -> Outcome {
    if m.poisoned {
        return Outcome::Unusable;
    }
    m.poisoned = true;
    let line = match m.reply_line() {
        Ok(line) => line,
        Err(e) => return e,
    };
    match parse_reply(line, expect) {
        Ok(reply) => {
            m.poisoned = matches!(reply, Reply::Status(Status::Auth | Status::Draining));
            Outcome::reply(&reply)
        }
        Err(e) => Outcome::Protocol(e),
    }
}

/// The model's outcome of `stats` into `cap` bytes.
fn model_stats(m: &mut Model<'_>, cap: usize) -> Outcome {
    if m.poisoned {
        return Outcome::Unusable;
    }
    m.poisoned = true;
    loop {
        match m.next() {
            Next::Line(line) if line.starts_with(b"sig ") => {
                if line.len() < m.n {
                    m.push(line);
                } else {
                    m.dropped += 1;
                }
            }
            Next::Line(line) => {
                if line.len() > cap {
                    return Outcome::LineTooLong;
                }
                let reply = match parse_reply(line, Expect::Stats) {
                    Ok(r) => r,
                    Err(e) => return Outcome::Protocol(e),
                };
                m.poisoned = matches!(reply, Reply::Status(Status::Auth | Status::Draining));
                return match reply {
                    Reply::Stats(json) => Outcome::Json(json.to_owned()),
                    Reply::Status(Status::Auth) => Outcome::Auth,
                    Reply::Status(_) => Outcome::Server,
                    _ => Outcome::Protocol(ProtocolError::Unexpected),
                };
            }
            Next::End(part) => {
                if !part.starts_with(b"sig ") && part.len() > cap {
                    return Outcome::LineTooLong;
                }
                return m.end();
            }
        }
    }
}

/// The model's outcome of `next_signal`.
fn model_next_signal(m: &mut Model<'_>) -> Outcome {
    if m.poisoned {
        return Outcome::Unusable;
    }
    while m.queue.is_empty() {
        match m.next() {
            Next::Line(line) if line.len() < m.n => {
                if line.starts_with(b"sig ") {
                    m.push(line);
                } else {
                    m.poisoned = true;
                    return Outcome::Protocol(ProtocolError::Unsolicited);
                }
            }
            Next::Line(line) => {
                if line.starts_with(b"sig ") {
                    m.dropped += 1;
                } else {
                    m.poisoned = true;
                    return Outcome::LineTooLong;
                }
            }
            Next::End(part) => {
                if part.len() >= m.n && !part.starts_with(b"sig ") {
                    m.poisoned = true;
                    return Outcome::LineTooLong;
                }
                return m.end();
            }
        }
    }
    let (c, p) = m.pop().unwrap_or_default();
    Outcome::Signal(c, p)
}

/// Whether a call failed with `error_not_leader <host:port>`: the one
/// error that allocates where `std` is linked (the error keeps the leader
/// address in a box, see `dflockd_client::LeaderAddr`; on `no_std` it stays
/// in the connection's line buffer).
trait NamesLeader {
    fn names_leader(&self) -> bool;
}

impl<T, E> NamesLeader for Result<T, dflockd_client::Error<E>> {
    fn names_leader(&self) -> bool {
        matches!(
            self,
            Err(dflockd_client::Error::Server(
                dflockd_client::ServerError::NotLeader(Some(_))
            ))
        )
    }
}

impl<T> NamesLeader for Option<T> {
    fn names_leader(&self) -> bool {
        false
    }
}

/// Runs `f` and panics if it allocated (for calls whose result borrows);
/// an `error_not_leader <host:port>` error may allocate its one box.
macro_rules! no_alloc {
    ($what:expr, $e:expr) => {{
        let before = super::alloc::count();
        let r = $e;
        let allowed = u64::from(NamesLeader::names_leader(&r));
        assert!(
            super::alloc::count() - before <= allowed,
            "{} allocated",
            $what
        );
        r
    }};
}

/// Checks that what the connection wrote since the last check is exactly
/// `req`'s encoding, or nothing when the request was refused.
fn check_written(wire: &mut Wire<'_>, req: &Request<'_>, sent: bool) {
    let mut enc = [0u8; 512];
    let n = if sent {
        req.encode(&mut enc).unwrap_or_else(|e| panic!("{e:?}"))
    } else {
        0
    };
    assert_eq!(wire.take_written(), &enc[..n], "bytes written for {req:?}");
}

fn drive<const N: usize, const P: usize>(input: &Input<'_>) {
    assert!(
        size_of::<Connection<Wire<'_>, N, P>>() <= N + P + size_of::<Wire<'_>>() + 64,
        "a connection is its buffers plus a few words"
    );
    let fail_at_end = input.config & 4 != 0;
    let wire = Wire::new(input.stream, input.chunks, fail_at_end);
    let mut conn: Connection<Wire<'_>, N, P> = Connection::new(wire);
    let mut model = Model::new(input.stream, N, P, fail_at_end);
    let token = Token::parse(TOKEN.as_bytes()).unwrap_or_else(|_| unreachable!());
    for (i, &byte) in input.ops.iter().enumerate() {
        let usable = conn.is_usable();
        assert_eq!(usable, !model.poisoned, "usability before op {i}");
        let (got, want) = match byte % 8 {
            op::STATS => {
                let cap = if byte & 8 == 0 { 40 } else { 300 };
                let mut out = [0u8; 300];
                let got = match no_alloc!("stats", block_on(conn.stats(&mut out[..cap]))) {
                    Ok(json) => Outcome::Json(json.to_owned()),
                    Err(e) => Outcome::from_error(&e),
                };
                check_written(conn.transport_mut(), &Request::Stats, usable);
                (got, model_stats(&mut model, cap))
            }
            op::NEXT_SIGNAL => {
                let got = match no_alloc!("next_signal", block_on(conn.next_signal())) {
                    Ok(sig) => Outcome::signal(&sig),
                    Err(e) => Outcome::from_error(&e),
                };
                assert_eq!(
                    conn.transport_mut().take_written(),
                    b"",
                    "next_signal wrote"
                );
                (got, model_next_signal(&mut model))
            }
            op::TRY_SIGNAL => {
                let got = no_alloc!("try_next_signal", conn.try_next_signal())
                    .map(|s| Outcome::signal(&s));
                (
                    got.unwrap_or(Outcome::Other("none".into())),
                    model.pop().map_or(Outcome::Other("none".into()), |(c, p)| {
                        Outcome::Signal(c, p)
                    }),
                )
            }
            code => {
                let (req, expect) = request(code, &token);
                let got = match no_alloc!("request", block_on(conn.request(&req, expect))) {
                    Ok(reply) => Outcome::reply(&reply),
                    Err(e) => Outcome::from_error(&e),
                };
                check_written(conn.transport_mut(), &req, usable);
                (got, model_request(&mut model, expect))
            }
        };
        assert_eq!(
            got,
            want,
            "op {i} ({byte}) on {:?}",
            String::from_utf8_lossy(input.stream)
        );
        assert_eq!(
            conn.dropped_signals(),
            model.dropped,
            "dropped after op {i}"
        );
        assert_eq!(
            conn.queued_signals(),
            model.queue.len(),
            "queued after op {i}"
        );
    }
    assert_eq!(conn.is_usable(), !model.poisoned, "usability at the end");
    // What is left in the queue comes out in order, then nothing.
    loop {
        let got = conn.try_next_signal().map(|s| Outcome::signal(&s));
        let want = model.pop().map(|(c, p)| Outcome::Signal(c, p));
        assert_eq!(got, want, "draining the queue");
        if got.is_none() {
            break;
        }
    }
}

/// The target.
pub fn run(data: &[u8]) {
    let input = Input::parse(data);
    match input.config & 3 {
        0 => drive::<64, 0>(&input),
        1 => drive::<64, 64>(&input),
        2 => drive::<128, 96>(&input),
        _ => drive::<256, 512>(&input),
    }
}
