//! Requests and their wire encoding.
//!
//! A request is three `\n`-terminated lines: command, key, argument. An
//! unused key is sent as `_`, an unused argument as an empty line.

use super::token::Token;
use super::validate::{self, InvalidArgument};

/// Whether a command addresses a lock or a counting semaphore.
///
/// Locks and semaphores share every command shape; semaphores use the `s`
/// command family and carry their limit on `sl` and `se`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Kind {
    /// An exclusive lock (`l`, `r`, `n`, `e`, `w`).
    Lock,
    /// A counting semaphore with `limit` concurrent holders
    /// (`sl`, `sr`, `sn`, `se`, `sw`).
    Semaphore {
        /// How many holders the semaphore admits at once: greater than 0 and
        /// at most [`MAX_SEMAPHORE_LIMIT`](super::validate::MAX_SEMAPHORE_LIMIT)
        /// (1<<20; v2 servers answer a larger limit with a bare `error`, so
        /// the client refuses it before sending).
        limit: u32,
    },
}

impl Kind {
    fn validate(self) -> Result<(), InvalidArgument> {
        match self {
            Kind::Lock => Ok(()),
            Kind::Semaphore { limit } => validate::limit(limit),
        }
    }

    fn cmd(self, lock: &'static str, sem: &'static str) -> &'static str {
        match self {
            Kind::Lock => lock,
            Kind::Semaphore { .. } => sem,
        }
    }
}

/// Every request of the dflockd protocol, with its optional arguments.
///
/// Durations are whole seconds, as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request<'a> {
    /// `auth`: authenticate with the server's shared token.
    Auth {
        /// The token; never shown by `Debug`.
        token: Secret<'a>,
    },
    /// `l` / `sl`: acquire, blocking on the server up to `timeout` seconds.
    Acquire {
        /// Lock or semaphore.
        kind: Kind,
        /// The key.
        key: &'a str,
        /// Seconds the server may block (0 = try once).
        timeout: u64,
        /// Lease TTL in seconds; `None` = the server's default.
        lease: Option<u64>,
    },
    /// `r` / `sr`: release a held lease.
    Release {
        /// Lock or semaphore.
        kind: Kind,
        /// The key.
        key: &'a str,
        /// The lease token.
        token: &'a Token,
    },
    /// `n` / `sn`: renew a held lease.
    Renew {
        /// Lock or semaphore.
        kind: Kind,
        /// The key.
        key: &'a str,
        /// The lease token.
        token: &'a Token,
        /// New lease TTL in seconds; `None` = the server's default.
        lease: Option<u64>,
    },
    /// `e` / `se`: join the queue without blocking (two-phase, first half).
    Enqueue {
        /// Lock or semaphore.
        kind: Kind,
        /// The key.
        key: &'a str,
        /// Lease TTL in seconds; `None` = the server's default.
        lease: Option<u64>,
    },
    /// `w` / `sw`: wait for an enqueued grant (two-phase, second half).
    Wait {
        /// Lock or semaphore.
        kind: Kind,
        /// The key.
        key: &'a str,
        /// Seconds the server may block (0 = check once).
        timeout: u64,
    },
    /// `stats`: server statistics as one JSON line.
    Stats,
    /// `ping`: keep-alive (v1.14+).
    Ping,
    /// `barrier`: on a v2 cluster leader, `ok` once a no-op has been
    /// applied (a linearizable-read barrier); `error_not_leader` elsewhere.
    Barrier,
    /// `stable-ref`: names this client's identity on a v2 server (once per
    /// connection) so that `--orphan-ttl` can hand its locks and queue
    /// places to a later connection presenting the same ref.
    StableRef {
        /// The ref: 1 to 64 bytes of printable ASCII.
        reference: &'a str,
    },
    /// `listen`: subscribe to a pattern, optionally in a queue group.
    Listen {
        /// The pattern (`*` and `>` wildcards allowed).
        pattern: &'a str,
        /// The queue group, if any; sent trimmed of surrounding whitespace
        /// (see [`validate::trim_group`]).
        group: Option<&'a str>,
    },
    /// `unlisten`: drop a subscription made with the same pattern and group.
    Unlisten {
        /// The pattern.
        pattern: &'a str,
        /// The queue group, if any; sent trimmed like `listen`'s.
        group: Option<&'a str>,
    },
    /// `signal`: publish a payload on a literal channel.
    Signal {
        /// The literal channel.
        channel: &'a str,
        /// The payload.
        payload: &'a str,
    },
}

/// A string that `Debug` never prints (used for the auth token).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Secret<'a>(pub &'a str);

impl core::fmt::Debug for Secret<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Scratch space for the argument line of requests whose argument is made of
/// numbers and a token. The longest is a renew with any `u64` lease
/// (`32 + 1 + 20` bytes) or an `sl` with any numbers (`20 + 1 + 10 + 1 + 20`),
/// so 64 bytes hold every argument even before validation.
pub(crate) const ARG_SCRATCH: usize = 64;

/// Writes `n` in decimal at the start of `out` and returns the length.
/// `out` must have room for 20 bytes.
fn put_u64(out: &mut [u8], mut n: u64) -> usize {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let len = tmp.len() - i;
    out[..len].copy_from_slice(&tmp[i..]);
    len
}

/// Builds an argument line out of numbers and a token, space separated.
struct ArgWriter<'s> {
    buf: &'s mut [u8; ARG_SCRATCH],
    len: usize,
}

impl<'s> ArgWriter<'s> {
    fn new(buf: &'s mut [u8; ARG_SCRATCH]) -> Self {
        Self { buf, len: 0 }
    }
    fn sep(&mut self) {
        if self.len > 0 {
            self.buf[self.len] = b' ';
            self.len += 1;
        }
    }
    fn num(mut self, n: u64) -> Self {
        self.sep();
        self.len += put_u64(&mut self.buf[self.len..], n);
        self
    }
    fn opt(self, n: Option<u64>) -> Self {
        match n {
            Some(n) => self.num(n),
            None => self,
        }
    }
    fn token(mut self, t: &Token) -> Self {
        self.sep();
        self.buf[self.len..self.len + 32].copy_from_slice(t.as_bytes());
        self.len += 32;
        self
    }
    fn done(self) -> &'s [u8] {
        &self.buf[..self.len]
    }
}

/// The output buffer is too small for the encoded request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct BufferTooSmall {
    /// Bytes the encoded request needs.
    pub needed: usize,
}

impl<'a> Request<'a> {
    /// Checks every argument exactly as the server would.
    pub fn validate(&self) -> Result<(), InvalidArgument> {
        self.validate_lock_shape()?;
        self.validate_other_shape()
    }

    /// The checks of the lock requests (`l`/`sl`, `r`/`sr`, `n`/`sn`,
    /// `e`/`se`, `w`/`sw`; `stats`, `ping` and `barrier` have none); `Ok`
    /// for every other request. The shared request future runs only these,
    /// so a lock-only firmware links no signal, auth or stable-ref checks;
    /// the callers of the other requests run
    /// [`validate_other_shape`](Self::validate_other_shape) first.
    pub(crate) fn validate_lock_shape(&self) -> Result<(), InvalidArgument> {
        match *self {
            Request::Acquire {
                kind,
                key,
                timeout,
                lease,
            } => {
                validate::key(key)?;
                kind.validate()?;
                validate::timeout(timeout)?;
                lease.map_or(Ok(()), validate::lease)
            }
            Request::Release { kind, key, .. } => {
                validate::key(key)?;
                kind.validate()
            }
            Request::Renew {
                kind, key, lease, ..
            }
            | Request::Enqueue { kind, key, lease } => {
                validate::key(key)?;
                kind.validate()?;
                lease.map_or(Ok(()), validate::lease)
            }
            Request::Wait { kind, key, timeout } => {
                validate::key(key)?;
                kind.validate()?;
                validate::timeout(timeout)
            }
            _ => Ok(()),
        }
    }

    /// The request as the shared request future sends it: the checks of
    /// every request that is not a lock request
    /// ([`validate_other_shape`](Self::validate_other_shape)) passed, and
    /// a queue group trimmed as the server trims it. Done by the callers
    /// of non-lock requests, so that a lock-only firmware links neither
    /// those checks nor the whitespace trimming.
    pub(crate) fn checked_other(self) -> Result<Self, InvalidArgument> {
        self.validate_other_shape()?;
        Ok(match self {
            Request::Listen { pattern, group } => Request::Listen {
                pattern,
                group: group.map(validate::trim_group),
            },
            Request::Unlisten { pattern, group } => Request::Unlisten {
                pattern,
                group: group.map(validate::trim_group),
            },
            other => other,
        })
    }

    /// The checks of every request that is not a lock request (`auth`,
    /// `stable-ref`, `listen`, `unlisten`, `signal`); `Ok` for the lock
    /// requests.
    pub(crate) fn validate_other_shape(&self) -> Result<(), InvalidArgument> {
        match *self {
            Request::Auth { token } => validate::auth_token(token.0),
            Request::StableRef { reference } => validate::stable_ref(reference),
            Request::Listen { pattern, group } | Request::Unlisten { pattern, group } => {
                validate::pattern(pattern)?;
                group.map_or(Ok(()), validate::group)
            }
            Request::Signal { channel, payload } => {
                validate::channel(channel)?;
                validate::payload(channel, payload)
            }
            _ => Ok(()),
        }
    }

    /// Whether a line of the request is longer than
    /// [`MAX_LINE`](validate::MAX_LINE): an auth token or signal payload
    /// that only servers with 64 KiB lines take; older ones answer `error`
    /// and close the connection.
    pub fn has_long_line(&self) -> bool {
        match *self {
            Request::Auth { token } => token.0.len() > validate::MAX_LINE,
            Request::Signal { payload, .. } => payload.len() > validate::MAX_LINE,
            _ => false,
        }
    }

    /// The command line (without its newline).
    pub fn command(&self) -> &'static str {
        match *self {
            Request::Auth { .. } => "auth",
            Request::Acquire { kind, .. } => kind.cmd("l", "sl"),
            Request::Release { kind, .. } => kind.cmd("r", "sr"),
            Request::Renew { kind, .. } => kind.cmd("n", "sn"),
            Request::Enqueue { kind, .. } => kind.cmd("e", "se"),
            Request::Wait { kind, .. } => kind.cmd("w", "sw"),
            Request::Stats => "stats",
            Request::Ping => "ping",
            Request::Barrier => "barrier",
            Request::StableRef { .. } => "stable-ref",
            Request::Listen { .. } => "listen",
            Request::Unlisten { .. } => "unlisten",
            Request::Signal { .. } => "signal",
        }
    }

    /// The key line (without its newline); `_` when the command takes none.
    pub fn key(&self) -> &'a str {
        match *self {
            Request::Auth { .. } | Request::Stats | Request::Ping | Request::Barrier => "_",
            Request::StableRef { reference } => reference,
            Request::Acquire { key, .. }
            | Request::Release { key, .. }
            | Request::Renew { key, .. }
            | Request::Enqueue { key, .. }
            | Request::Wait { key, .. } => key,
            Request::Listen { pattern, .. } | Request::Unlisten { pattern, .. } => pattern,
            Request::Signal { channel, .. } => channel,
        }
    }

    /// The argument line (without its newline). Numeric arguments are
    /// formatted into `scratch`; text arguments are borrowed from the
    /// request. A queue group is written as it is: trim it first
    /// ([`checked_other`](Self::checked_other)).
    pub(crate) fn arg<'s>(&self, scratch: &'s mut [u8; ARG_SCRATCH]) -> &'s [u8]
    where
        'a: 's,
    {
        let w = ArgWriter::new(scratch);
        match *self {
            Request::Auth { token } => token.0.as_bytes(),
            Request::Acquire {
                kind: Kind::Lock,
                timeout,
                lease,
                ..
            } => w.num(timeout).opt(lease).done(),
            Request::Acquire {
                kind: Kind::Semaphore { limit },
                timeout,
                lease,
                ..
            } => w.num(timeout).num(limit.into()).opt(lease).done(),
            Request::Release { token, .. } => w.token(token).done(),
            Request::Renew { token, lease, .. } => w.token(token).opt(lease).done(),
            Request::Enqueue {
                kind: Kind::Lock,
                lease,
                ..
            } => w.opt(lease).done(),
            Request::Enqueue {
                kind: Kind::Semaphore { limit },
                lease,
                ..
            } => w.num(limit.into()).opt(lease).done(),
            Request::Wait { timeout, .. } => w.num(timeout).done(),
            Request::Stats => b"",
            Request::Ping | Request::Barrier | Request::StableRef { .. } => b"_",
            Request::Listen { group, .. } | Request::Unlisten { group, .. } => {
                group.unwrap_or("").as_bytes()
            }
            Request::Signal { payload, .. } => payload.as_bytes(),
        }
    }

    /// Validates the request and encodes it into `out`, returning the number
    /// of bytes written. Nothing is written when validation fails.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        self.validate_lock_shape().map_err(EncodeError::Invalid)?;
        self.checked_other()
            .map_err(EncodeError::Invalid)?
            .encode_unchecked(out)
            .map_err(EncodeError::BufferTooSmall)
    }

    /// Encodes without validating (the caller already did, and trimmed the
    /// queue group: [`checked_other`](Self::checked_other)).
    pub(crate) fn encode_unchecked(&self, out: &mut [u8]) -> Result<usize, BufferTooSmall> {
        let mut scratch = [0u8; ARG_SCRATCH];
        let cmd = self.command().as_bytes();
        let key = self.key().as_bytes();
        let arg = self.arg(&mut scratch);
        let needed = cmd.len() + key.len() + arg.len() + 3;
        let Some(out) = out.get_mut(..needed) else {
            return Err(BufferTooSmall { needed });
        };
        let mut at = 0;
        for part in [cmd, key, arg] {
            out[at..at + part.len()].copy_from_slice(part);
            at += part.len();
            out[at] = b'\n';
            at += 1;
        }
        Ok(at)
    }
}

/// Why a request could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum EncodeError {
    /// An argument broke the server's rules.
    Invalid(InvalidArgument),
    /// The output buffer is too small.
    BufferTooSmall(BufferTooSmall),
}

impl core::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            EncodeError::Invalid(e) => e.fmt(f),
            EncodeError::BufferTooSmall(b) => {
                write!(f, "output buffer too small: {} bytes needed", b.needed)
            }
        }
    }
}

impl core::error::Error for EncodeError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::validate::{Arg, Rule};

    const TOK: &str = "0123456789abcdef0123456789abcdef";

    fn enc(r: Request<'_>) -> std::string::String {
        extern crate std;
        let mut out = [0u8; 70000];
        let n = r.encode(&mut out).unwrap();
        std::string::String::from_utf8(out[..n].to_vec()).unwrap()
    }

    extern crate std;

    #[test]
    fn encodes_every_request() {
        let t = Token::parse(TOK.as_bytes()).unwrap();
        let sem = Kind::Semaphore { limit: 3 };
        let cases: &[(Request<'_>, &str)] = &[
            (
                Request::Auth {
                    token: Secret("s3cret"),
                },
                "auth\n_\ns3cret\n",
            ),
            (
                Request::Acquire {
                    kind: Kind::Lock,
                    key: "k",
                    timeout: 10,
                    lease: None,
                },
                "l\nk\n10\n",
            ),
            (
                Request::Acquire {
                    kind: Kind::Lock,
                    key: "k",
                    timeout: 0,
                    lease: Some(60),
                },
                "l\nk\n0 60\n",
            ),
            (
                Request::Acquire {
                    kind: sem,
                    key: "k",
                    timeout: 5,
                    lease: None,
                },
                "sl\nk\n5 3\n",
            ),
            (
                Request::Acquire {
                    kind: sem,
                    key: "k",
                    timeout: 5,
                    lease: Some(9),
                },
                "sl\nk\n5 3 9\n",
            ),
            (
                Request::Release {
                    kind: Kind::Lock,
                    key: "k",
                    token: &t,
                },
                "r\nk\n0123456789abcdef0123456789abcdef\n",
            ),
            (
                Request::Release {
                    kind: sem,
                    key: "k",
                    token: &t,
                },
                "sr\nk\n0123456789abcdef0123456789abcdef\n",
            ),
            (
                Request::Renew {
                    kind: Kind::Lock,
                    key: "k",
                    token: &t,
                    lease: None,
                },
                "n\nk\n0123456789abcdef0123456789abcdef\n",
            ),
            (
                Request::Renew {
                    kind: sem,
                    key: "k",
                    token: &t,
                    lease: Some(30),
                },
                "sn\nk\n0123456789abcdef0123456789abcdef 30\n",
            ),
            (
                Request::Enqueue {
                    kind: Kind::Lock,
                    key: "k",
                    lease: None,
                },
                "e\nk\n\n",
            ),
            (
                Request::Enqueue {
                    kind: Kind::Lock,
                    key: "k",
                    lease: Some(7),
                },
                "e\nk\n7\n",
            ),
            (
                Request::Enqueue {
                    kind: sem,
                    key: "k",
                    lease: None,
                },
                "se\nk\n3\n",
            ),
            (
                Request::Enqueue {
                    kind: sem,
                    key: "k",
                    lease: Some(7),
                },
                "se\nk\n3 7\n",
            ),
            (
                Request::Wait {
                    kind: Kind::Lock,
                    key: "k",
                    timeout: 4,
                },
                "w\nk\n4\n",
            ),
            (
                Request::Wait {
                    kind: sem,
                    key: "k",
                    timeout: 0,
                },
                "sw\nk\n0\n",
            ),
            (Request::Stats, "stats\n_\n\n"),
            (Request::Ping, "ping\n_\n_\n"),
            (
                Request::Listen {
                    pattern: "a.*",
                    group: None,
                },
                "listen\na.*\n\n",
            ),
            (
                Request::Listen {
                    pattern: "a.>",
                    group: Some("g1"),
                },
                "listen\na.>\ng1\n",
            ),
            (
                Request::Unlisten {
                    pattern: "a.*",
                    group: None,
                },
                "unlisten\na.*\n\n",
            ),
            (
                Request::Unlisten {
                    pattern: "a",
                    group: Some("g"),
                },
                "unlisten\na\ng\n",
            ),
            (
                Request::Listen {
                    pattern: "a",
                    group: Some(" two words\t"),
                },
                "listen\na\ntwo words\n",
            ),
            (
                Request::Signal {
                    channel: "a.b",
                    payload: "hello world",
                },
                "signal\na.b\nhello world\n",
            ),
        ];
        for (req, want) in cases {
            assert_eq!(enc(*req), *want, "{req:?}");
        }
    }

    #[test]
    fn max_numbers_fit_the_scratch() {
        let t = Token::parse(TOK.as_bytes()).unwrap();
        let max = crate::protocol::validate::MAX_SECONDS;
        assert_eq!(
            enc(Request::Acquire {
                kind: Kind::Semaphore {
                    limit: crate::protocol::validate::MAX_SEMAPHORE_LIMIT
                },
                key: "k",
                timeout: max,
                lease: Some(max)
            }),
            "sl\nk\n9223372036 1048576 9223372036\n"
        );
        assert_eq!(
            enc(Request::Renew {
                kind: Kind::Lock,
                key: "k",
                token: &t,
                lease: Some(max)
            }),
            "n\nk\n0123456789abcdef0123456789abcdef 9223372036\n"
        );
    }

    #[test]
    fn any_numbers_fit_the_scratch_even_unvalidated() {
        let t = Token::parse(TOK.as_bytes()).unwrap();
        let mut scratch = [0u8; ARG_SCRATCH];
        let r = Request::Acquire {
            kind: Kind::Semaphore { limit: u32::MAX },
            key: "k",
            timeout: u64::MAX,
            lease: Some(u64::MAX),
        };
        assert_eq!(
            r.arg(&mut scratch),
            b"18446744073709551615 4294967295 18446744073709551615"
        );
        let r = Request::Renew {
            kind: Kind::Lock,
            key: "k",
            token: &t,
            lease: Some(u64::MAX),
        };
        assert_eq!(r.arg(&mut scratch).len(), 32 + 1 + 20);
    }

    #[test]
    fn rejects_before_writing() {
        let mut out = [0xAAu8; 64];
        let bad = [
            (
                Request::Acquire {
                    kind: Kind::Lock,
                    key: "a b",
                    timeout: 1,
                    lease: None,
                },
                Arg::Key,
                Rule::Whitespace,
            ),
            (
                Request::Acquire {
                    kind: Kind::Lock,
                    key: "k",
                    timeout: 1,
                    lease: Some(0),
                },
                Arg::Lease,
                Rule::Zero,
            ),
            (
                Request::Enqueue {
                    kind: Kind::Semaphore { limit: 0 },
                    key: "k",
                    lease: None,
                },
                Arg::Limit,
                Rule::Zero,
            ),
            (
                Request::Signal {
                    channel: "a.*",
                    payload: "x",
                },
                Arg::Channel,
                Rule::Wildcard,
            ),
            (
                Request::Signal {
                    channel: "a",
                    payload: "  ",
                },
                Arg::Payload,
                Rule::Blank,
            ),
            (
                Request::Listen {
                    pattern: "a.>.b",
                    group: None,
                },
                Arg::Pattern,
                Rule::BadWildcard,
            ),
            (
                Request::Auth { token: Secret("") },
                Arg::AuthToken,
                Rule::Empty,
            ),
        ];
        for (req, arg, rule) in bad {
            assert_eq!(
                req.encode(&mut out),
                Err(EncodeError::Invalid(InvalidArgument { arg, rule })),
                "{req:?}"
            );
            assert!(out.iter().all(|&b| b == 0xAA));
        }
    }

    #[test]
    fn reports_needed_size() {
        let mut out = [0u8; 4];
        assert_eq!(
            Request::Ping.encode(&mut out),
            Err(EncodeError::BufferTooSmall(BufferTooSmall { needed: 9 }))
        );
    }

    #[test]
    fn debug_hides_auth_token() {
        let r = Request::Auth {
            token: Secret("hunter2-secret"),
        };
        let dbg = std::format!("{r:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }
}
