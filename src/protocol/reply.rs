//! Reply lines and server pushes, parsed into typed values.
//!
//! The same words mean different things after different commands (`ok 5` is
//! seconds remaining after `n` and a delivery count after `signal`), so the
//! parser is told which shape the request expects. Error statuses are
//! recognised after any request. Nothing here panics on any input.

use core::fmt;

use super::token::Token;
use super::validate::MAX_SECONDS;

/// A granted lease as the server reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Grant {
    /// The lease token, needed to renew and release.
    pub token: Token,
    /// The lease TTL in seconds, counted from the grant.
    pub lease: u64,
}

impl Grant {
    /// The grant's fencing value (see [`Fence`](super::Fence): ordered on
    /// v2 servers, meaningless on v1.x).
    pub fn fence(&self) -> super::Fence {
        self.token.fence()
    }
}

/// The reply shape a request expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Expect {
    /// `ok` (auth, release, ping, listen, unlisten).
    Ok,
    /// `ok <token> <lease>` or `timeout` (acquire, wait).
    Grant,
    /// `acquired <token> <lease>` or `queued` (enqueue).
    Enqueue,
    /// `ok <seconds_remaining>` (renew).
    Remaining,
    /// `ok <deliveries>` (signal).
    Count,
    /// `ok <json>` (stats).
    Stats,
}

/// A successfully parsed reply line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply<'a> {
    /// `ok`.
    Ok,
    /// `ok <token> <lease>`.
    Granted(Grant),
    /// `acquired <token> <lease>` (enqueue granted at once).
    Acquired(Grant),
    /// `queued` (enqueue must be followed by wait).
    Queued,
    /// `timeout`: not granted within the timeout.
    Timeout,
    /// `ok <seconds_remaining>` after a renew.
    Remaining(u64),
    /// `ok <n>` after a signal: how many deliveries were made.
    Count(u64),
    /// `ok <json>` after stats: the JSON text.
    Stats(&'a str),
    /// Any error status.
    Status(Status<'a>),
}

/// An error status the server may send in reply to any request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Status<'a> {
    /// `error`: bad request, not the holder, lease already expired, …
    Error,
    /// `error_auth`: authentication required or failed; the server closes.
    Auth,
    /// `error_max_locks`: the server's key limit is reached.
    MaxLocks,
    /// `error_max_waiters`: the key's waiter limit is reached.
    MaxWaiters,
    /// `error_limit_mismatch`: the semaphore exists with another limit.
    LimitMismatch,
    /// `error_not_enqueued`: `wait` without a pending `enqueue`.
    NotEnqueued,
    /// `error_already_enqueued`: a second `enqueue` on the same key.
    AlreadyEnqueued,
    /// `error_lease_expired`: the grant's lease expired before it was collected.
    LeaseExpired,
    /// `error_draining`: the server is shutting down.
    Draining,
    /// `error_not_leader [<host:port>]`: cluster follower; the leader if known.
    NotLeader(Option<&'a str>),
    /// Any other status, kept verbatim.
    Unknown(&'a str),
}

impl fmt::Display for Status<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Status::Error => "error",
            Status::Auth => "error_auth",
            Status::MaxLocks => "error_max_locks",
            Status::MaxWaiters => "error_max_waiters",
            Status::LimitMismatch => "error_limit_mismatch",
            Status::NotEnqueued => "error_not_enqueued",
            Status::AlreadyEnqueued => "error_already_enqueued",
            Status::LeaseExpired => "error_lease_expired",
            Status::Draining => "error_draining",
            Status::NotLeader(None) => "error_not_leader",
            Status::NotLeader(Some(addr)) => return write!(f, "error_not_leader {addr}"),
            Status::Unknown(s) => s,
        };
        f.write_str(s)
    }
}

/// Why a reply line could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ProtocolError {
    /// The line is not valid UTF-8.
    NotUtf8,
    /// A number field is not a plain decimal integer in range.
    BadInteger,
    /// The lease field is zero.
    ZeroLease,
    /// The token field is not 32 lowercase hex characters.
    BadToken,
    /// A field is missing.
    MissingField,
    /// There are more fields than the reply has.
    ExtraField,
    /// A known reply word that does not answer this request.
    Unexpected,
    /// A line arrived although no request was waiting for one.
    Unsolicited,
    /// A `sig` push line without channel or payload.
    BadPush,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProtocolError::NotUtf8 => "reply is not valid UTF-8",
            ProtocolError::BadInteger => "reply has a malformed integer",
            ProtocolError::ZeroLease => "reply grants a zero lease",
            ProtocolError::BadToken => "reply has a malformed token",
            ProtocolError::MissingField => "reply is missing a field",
            ProtocolError::ExtraField => "reply has an extra field",
            ProtocolError::Unexpected => "reply does not answer the request",
            ProtocolError::Unsolicited => "reply line without a request",
            ProtocolError::BadPush => "malformed sig push",
        })
    }
}

impl core::error::Error for ProtocolError {}

/// Strips one trailing `\r`.
pub fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Is this line a `sig` push rather than a reply? (No status begins with `sig `.)
pub fn is_push(line: &[u8]) -> bool {
    line.starts_with(b"sig ")
}

/// A received signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Signal<'a> {
    /// The literal channel it was emitted on.
    pub channel: &'a str,
    /// The payload, byte for byte.
    pub payload: &'a str,
}

/// Parses a `sig <channel> <payload>` push line (without its newline).
pub fn parse_push(line: &[u8]) -> Result<Signal<'_>, ProtocolError> {
    let line = trim_cr(line);
    let rest = line.strip_prefix(b"sig ").ok_or(ProtocolError::BadPush)?;
    let text = core::str::from_utf8(rest).map_err(|_| ProtocolError::NotUtf8)?;
    let (channel, payload) = text.split_once(' ').ok_or(ProtocolError::BadPush)?;
    if channel.is_empty() || payload.is_empty() {
        return Err(ProtocolError::BadPush);
    }
    Ok(Signal { channel, payload })
}

/// Parses a strict decimal integer (digits only, no sign, no spaces).
pub fn parse_u64(s: &[u8]) -> Result<u64, ProtocolError> {
    if s.is_empty() || s.len() > 20 {
        return Err(ProtocolError::BadInteger);
    }
    s.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return Err(ProtocolError::BadInteger);
        }
        acc.checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or(ProtocolError::BadInteger)
    })
}

fn parse_grant(fields: &str) -> Result<Grant, ProtocolError> {
    let fields = fields.as_bytes();
    let space = fields.iter().position(|&b| b == b' ');
    let (token, lease) = match space {
        Some(i) if i > 0 => (&fields[..i], &fields[i + 1..]),
        _ => return Err(ProtocolError::MissingField),
    };
    if lease.contains(&b' ') {
        return Err(ProtocolError::ExtraField);
    }
    let token = Token::parse(token).map_err(|_| ProtocolError::BadToken)?;
    let lease = parse_u64(lease)?;
    if lease == 0 {
        return Err(ProtocolError::ZeroLease);
    }
    if lease > MAX_SECONDS {
        return Err(ProtocolError::BadInteger);
    }
    Ok(Grant { token, lease })
}

fn parse_single_u64(fields: &str) -> Result<u64, ProtocolError> {
    if fields.is_empty() {
        return Err(ProtocolError::MissingField);
    }
    if fields.contains(' ') {
        return Err(ProtocolError::ExtraField);
    }
    parse_u64(fields.as_bytes())
}

fn parse_status(line: &str) -> Status<'_> {
    let (word, rest) = match line.split_once(' ') {
        Some((w, r)) => (w, Some(r)),
        None => (line, None),
    };
    // Every status word has a length of its own: pick the candidate by
    // length, then compare once (one comparison in the code instead of one
    // per word: 0.2 KB less flash on a Cortex-M).
    let (known, status) = match word.len() {
        5 => ("error", Status::Error),
        10 => ("error_auth", Status::Auth),
        15 => ("error_max_locks", Status::MaxLocks),
        17 => ("error_max_waiters", Status::MaxWaiters),
        20 => ("error_limit_mismatch", Status::LimitMismatch),
        18 => ("error_not_enqueued", Status::NotEnqueued),
        22 => ("error_already_enqueued", Status::AlreadyEnqueued),
        19 => ("error_lease_expired", Status::LeaseExpired),
        14 => ("error_draining", Status::Draining),
        16 => (
            "error_not_leader",
            Status::NotLeader(rest.filter(|r| !r.is_empty())),
        ),
        _ => return Status::Unknown(line),
    };
    if word == known {
        status
    } else {
        Status::Unknown(line)
    }
}

/// Parses one reply line (a trailing `\r` is accepted) for a request that
/// expects `expect`.
///
/// Error statuses parse after any request into [`Reply::Status`]; an
/// unrecognised word is kept verbatim as [`Status::Unknown`]. A known reply
/// word that does not fit the request, or a malformed field, is a
/// [`ProtocolError`].
pub fn parse_reply(line: &[u8], expect: Expect) -> Result<Reply<'_>, ProtocolError> {
    let line = core::str::from_utf8(trim_cr(line)).map_err(|_| ProtocolError::NotUtf8)?;
    let (word, fields) = match line.split_once(' ') {
        Some((w, f)) => (w, Some(f)),
        None => (line, None),
    };
    match (word, expect) {
        ("ok", Expect::Ok) => match fields {
            None => Ok(Reply::Ok),
            Some(_) => Err(ProtocolError::ExtraField),
        },
        ("ok", Expect::Grant) => {
            parse_grant(fields.ok_or(ProtocolError::MissingField)?).map(Reply::Granted)
        }
        ("ok", Expect::Remaining) => {
            parse_single_u64(fields.ok_or(ProtocolError::MissingField)?).map(Reply::Remaining)
        }
        ("ok", Expect::Count) => {
            parse_single_u64(fields.ok_or(ProtocolError::MissingField)?).map(Reply::Count)
        }
        ("ok", Expect::Stats) => match fields {
            Some(json) if !json.is_empty() => Ok(Reply::Stats(json)),
            _ => Err(ProtocolError::MissingField),
        },
        ("timeout", Expect::Grant) => match fields {
            None => Ok(Reply::Timeout),
            Some(_) => Err(ProtocolError::ExtraField),
        },
        ("acquired", Expect::Enqueue) => {
            parse_grant(fields.ok_or(ProtocolError::MissingField)?).map(Reply::Acquired)
        }
        ("queued", Expect::Enqueue) => match fields {
            None => Ok(Reply::Queued),
            Some(_) => Err(ProtocolError::ExtraField),
        },
        ("ok" | "timeout" | "acquired" | "queued" | "sig", _) => Err(ProtocolError::Unexpected),
        _ => Ok(Reply::Status(parse_status(line))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOK: &str = "0123456789abcdef0123456789abcdef";

    fn tok() -> Token {
        Token::parse(TOK.as_bytes()).unwrap()
    }

    #[test]
    fn every_success_shape() {
        let g = Grant {
            token: tok(),
            lease: 33,
        };
        let line = "ok 0123456789abcdef0123456789abcdef 33";
        assert_eq!(parse_reply(b"ok", Expect::Ok), Ok(Reply::Ok));
        assert_eq!(parse_reply(b"ok\r", Expect::Ok), Ok(Reply::Ok));
        assert_eq!(
            parse_reply(line.as_bytes(), Expect::Grant),
            Ok(Reply::Granted(g))
        );
        assert_eq!(parse_reply(b"timeout", Expect::Grant), Ok(Reply::Timeout));
        assert_eq!(
            parse_reply(
                b"acquired 0123456789abcdef0123456789abcdef 33\r",
                Expect::Enqueue
            ),
            Ok(Reply::Acquired(g))
        );
        assert_eq!(parse_reply(b"queued", Expect::Enqueue), Ok(Reply::Queued));
        assert_eq!(
            parse_reply(b"ok 17", Expect::Remaining),
            Ok(Reply::Remaining(17))
        );
        assert_eq!(parse_reply(b"ok 0", Expect::Count), Ok(Reply::Count(0)));
        assert_eq!(
            parse_reply(br#"ok {"connections":1,"locks":[]}"#, Expect::Stats),
            Ok(Reply::Stats(r#"{"connections":1,"locks":[]}"#))
        );
    }

    #[test]
    fn every_status_after_any_request() {
        let cases: &[(&str, Status<'_>)] = &[
            ("error", Status::Error),
            ("error_auth", Status::Auth),
            ("error_max_locks", Status::MaxLocks),
            ("error_max_waiters", Status::MaxWaiters),
            ("error_limit_mismatch", Status::LimitMismatch),
            ("error_not_enqueued", Status::NotEnqueued),
            ("error_already_enqueued", Status::AlreadyEnqueued),
            ("error_lease_expired", Status::LeaseExpired),
            ("error_draining", Status::Draining),
            ("error_not_leader", Status::NotLeader(None)),
            (
                "error_not_leader 10.0.0.2:6388",
                Status::NotLeader(Some("10.0.0.2:6388")),
            ),
            (
                "error_something_new",
                Status::Unknown("error_something_new"),
            ),
            ("weird reply", Status::Unknown("weird reply")),
            // The length of a known word, other text.
            ("ERROR", Status::Unknown("ERROR")),
            ("error_autx", Status::Unknown("error_autx")),
            (
                "error_not_leadeR h:1",
                Status::Unknown("error_not_leadeR h:1"),
            ),
        ];
        for expect in [
            Expect::Ok,
            Expect::Grant,
            Expect::Enqueue,
            Expect::Remaining,
            Expect::Count,
            Expect::Stats,
        ] {
            for (line, status) in cases {
                assert_eq!(
                    parse_reply(line.as_bytes(), expect),
                    Ok(Reply::Status(*status))
                );
            }
        }
    }

    #[test]
    fn malformed_replies_are_typed_errors() {
        use ProtocolError::*;
        let cases: &[(&[u8], Expect, ProtocolError)] = &[
            (b"ok \xff", Expect::Grant, NotUtf8),
            (b"ok", Expect::Grant, MissingField),
            (
                b"ok 0123456789abcdef0123456789abcdef",
                Expect::Grant,
                MissingField,
            ),
            (
                b"ok 0123456789abcdef0123456789abcdef 33 x",
                Expect::Grant,
                ExtraField,
            ),
            (
                b"ok 0123456789abcdef0123456789abcdef 0",
                Expect::Grant,
                ZeroLease,
            ),
            (
                b"ok 0123456789abcdef0123456789abcdef -1",
                Expect::Grant,
                BadInteger,
            ),
            (
                b"ok 0123456789abcdef0123456789abcdef +3",
                Expect::Grant,
                BadInteger,
            ),
            (
                b"ok 0123456789abcdef0123456789abcdef 99999999999999999999999",
                Expect::Grant,
                BadInteger,
            ),
            (
                b"ok 0123456789abcdef0123456789abcdef 9223372037",
                Expect::Grant,
                BadInteger,
            ),
            (b"ok 0123456789abcdef 33", Expect::Grant, BadToken),
            (
                b"ok 0123456789ABCDEF0123456789abcdef 33",
                Expect::Grant,
                BadToken,
            ),
            (b"ok  33", Expect::Grant, MissingField),
            (b"acquired", Expect::Enqueue, MissingField),
            (b"queued now", Expect::Enqueue, ExtraField),
            (b"timeout 3", Expect::Grant, ExtraField),
            (b"ok 1 2", Expect::Remaining, ExtraField),
            (b"ok x", Expect::Remaining, BadInteger),
            (b"ok ", Expect::Count, MissingField),
            (b"ok", Expect::Count, MissingField),
            (b"ok", Expect::Stats, MissingField),
            (b"ok 5", Expect::Ok, ExtraField),
            (b"queued", Expect::Grant, Unexpected),
            (b"timeout", Expect::Ok, Unexpected),
            (
                b"acquired 0123456789abcdef0123456789abcdef 3",
                Expect::Grant,
                Unexpected,
            ),
            (b"sig a b", Expect::Ok, Unexpected),
        ];
        for (line, expect, err) in cases {
            assert_eq!(
                parse_reply(line, *expect),
                Err(*err),
                "{:?}",
                core::str::from_utf8(line)
            );
        }
    }

    #[test]
    fn pushes() {
        assert!(is_push(b"sig a.b hi"));
        assert!(!is_push(b"signal"));
        assert_eq!(
            parse_push(b"sig a.b hello world\r"),
            Ok(Signal {
                channel: "a.b",
                payload: "hello world"
            })
        );
        assert_eq!(
            parse_push("sig ch {\"k\": \"ü\"}".as_bytes()),
            Ok(Signal {
                channel: "ch",
                payload: "{\"k\": \"ü\"}"
            })
        );
        assert_eq!(parse_push(b"sig a.b"), Err(ProtocolError::BadPush));
        assert_eq!(parse_push(b"sig  x"), Err(ProtocolError::BadPush));
        assert_eq!(parse_push(b"sig a "), Err(ProtocolError::BadPush));
        assert_eq!(parse_push(b"sig a \xfe"), Err(ProtocolError::NotUtf8));
    }

    #[test]
    fn integers() {
        assert_eq!(parse_u64(b"0"), Ok(0));
        assert_eq!(parse_u64(b"18446744073709551615"), Ok(u64::MAX));
        assert_eq!(
            parse_u64(b"18446744073709551616"),
            Err(ProtocolError::BadInteger)
        );
        assert_eq!(parse_u64(b""), Err(ProtocolError::BadInteger));
        assert_eq!(parse_u64(b"1 "), Err(ProtocolError::BadInteger));
    }
}
