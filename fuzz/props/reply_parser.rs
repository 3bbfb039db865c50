//! Any bytes as a reply line, a push line, a token and an integer.
//!
//! Properties: no panic and no allocation; a push line is never a reply;
//! a parsed reply re-encodes to the same line (where the protocol has one
//! spelling: leading zeros in numbers and text after a known error word are
//! the only slack) and the re-encoding parses to the same value; a push
//! re-encodes to the same line; a token and an integer agree with a
//! one-line model.

use dflockd_client::protocol::{
    Expect, ProtocolError, Reply, Token, is_push, parse_push, parse_reply, parse_u64, trim_cr,
};

use super::alloc::assert_no_alloc;

/// Every reply shape a request can expect.
pub const EXPECTS: [Expect; 6] = [
    Expect::Ok,
    Expect::Grant,
    Expect::Enqueue,
    Expect::Remaining,
    Expect::Count,
    Expect::Stats,
];

/// The wire spelling of a parsed reply.
pub fn encode(reply: &Reply<'_>) -> String {
    match reply {
        Reply::Ok => "ok".into(),
        Reply::Granted(g) => format!("ok {} {}", g.token.as_str(), g.lease),
        Reply::Acquired(g) => format!("acquired {} {}", g.token.as_str(), g.lease),
        Reply::Queued => "queued".into(),
        Reply::Timeout => "timeout".into(),
        Reply::Remaining(n) | Reply::Count(n) => format!("ok {n}"),
        Reply::Stats(json) => format!("ok {json}"),
        Reply::Status(s) => s.to_string(),
        other => panic!("reply shape without an encoding: {other:?}"),
    }
}

/// `line` with leading zeros dropped from its last field when that is all
/// digits (the lease or count: the one number of every reply shape).
fn without_leading_zeros(line: &str) -> String {
    let (head, last) = line.rsplit_once(' ').unwrap_or(("", line));
    if last.is_empty() || !last.bytes().all(|b| b.is_ascii_digit()) {
        return line.to_owned();
    }
    let t = last.trim_start_matches('0');
    format!("{head} {}", if t.is_empty() { "0" } else { t })
}

fn check_reply(line: &[u8], expect: Expect) {
    let parsed = assert_no_alloc("parse_reply", || parse_reply(line, expect));
    let body = trim_cr(line);
    let text = std::str::from_utf8(body);
    if text.is_err() {
        assert_eq!(parsed, Err(ProtocolError::NotUtf8), "{line:?}");
        return;
    }
    if is_push(line) {
        assert_eq!(
            parsed,
            Err(ProtocolError::Unexpected),
            "push as reply {line:?}"
        );
    }
    let Ok(reply) = parsed else { return };
    let text = text.unwrap_or_default();
    let wire = encode(&reply);
    // On the wire the line may end in CRLF: with it, any re-encoding parses
    // back to the same value (a value that itself ends in CR needs it).
    assert_eq!(
        parse_reply(format!("{wire}\r").as_bytes(), expect),
        Ok(reply),
        "re-encoding {wire:?} of {line:?} parses differently"
    );
    if !wire.ends_with('\r') {
        assert_eq!(parse_reply(wire.as_bytes(), expect), Ok(reply), "{wire:?}");
    }
    let same = wire == text
        || (matches!(reply, Reply::Status(_)) && text.starts_with(&format!("{wire} ")))
        || (!matches!(reply, Reply::Status(_) | Reply::Stats(_))
            && without_leading_zeros(text) == wire);
    assert!(same, "{line:?} ({expect:?}) re-encodes to {wire:?}");
}

/// The push parser's properties on one line.
pub fn check_push_line(line: &[u8]) {
    let parsed = assert_no_alloc("parse_push", || parse_push(line));
    let body = trim_cr(line);
    let model = body
        .strip_prefix(b"sig ")
        .and_then(|rest| std::str::from_utf8(rest).ok())
        .and_then(|t| t.split_once(' '))
        .filter(|(c, p)| !c.is_empty() && !p.is_empty());
    match parsed {
        Ok(sig) => {
            assert_eq!(Some((sig.channel, sig.payload)), model, "{line:?}");
            assert!(!sig.channel.contains(' '));
            assert_eq!(
                format!("sig {} {}", sig.channel, sig.payload).as_bytes(),
                body,
                "push {line:?} does not re-encode to itself"
            );
        }
        Err(e) => {
            assert_eq!(model, None, "{line:?} rejected with {e:?}");
            if body.starts_with(b"sig ") && std::str::from_utf8(body).is_err() {
                assert_eq!(e, ProtocolError::NotUtf8);
            }
        }
    }
}

fn check_token(bytes: &[u8]) {
    let model = bytes.len() == 32
        && bytes
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    match Token::parse(bytes) {
        Ok(t) => {
            assert!(model, "{bytes:?} accepted as a token");
            assert_eq!(t.as_bytes(), bytes);
            let fence = u64::from_str_radix(&t.as_str()[..16], 16).ok();
            assert_eq!(Some(u64::from(t.fence())), fence);
        }
        Err(_) => assert!(!model, "{bytes:?} rejected as a token"),
    }
}

fn check_u64(bytes: &[u8]) {
    let model = if bytes.is_empty() || bytes.len() > 20 || !bytes.iter().all(u8::is_ascii_digit) {
        None
    } else {
        std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
    };
    assert_eq!(parse_u64(bytes).ok(), model, "{bytes:?}");
}

/// The target.
pub fn run(data: &[u8]) {
    for expect in EXPECTS {
        check_reply(data, expect);
    }
    check_push_line(data);
    check_token(data);
    check_u64(data);
    // Fields of a reply are tokens and integers too.
    for field in data.split(|&b| b == b' ') {
        check_token(field);
        check_u64(field);
    }
}
