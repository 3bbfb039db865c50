//! A tiny re-statement of how the real server (Go, v1.14-signals: the
//! generation with every argument kind) frames and parses one request:
//! `internal/protocol/protocol.go` `readLineN` and `ReadRequest`, plus
//! `signal.ValidatePattern` (run by `listen` and `unlisten`) and the auth
//! token rule of `internal/config` (no CR or LF in the configured token).
//!
//! The request type mirrors the testkit's (same names, same `Debug`), so
//! the testkit's parser can be compared with it by its `Debug` form.

use std::time::Duration;

/// Cap on command, key and most argument lines (bytes, before `\r` trim).
pub const MAX_LINE: usize = 256;
/// Cap on the `auth` and `signal` argument lines.
pub const MAX_LONG_LINE: usize = 64 * 1024;
/// `math.MaxInt64 / time.Second`.
pub const MAX_SECONDS: i64 = 9_223_372_036;
/// The default lease the testkit's fuzzing entry point uses.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(33);

/// Key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// `l r n e w`.
    Lock,
    /// `sl sr sn se sw`.
    Sem,
}

/// A request as the server sees it.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Auth(String),
    Ping,
    Stats,
    Acquire {
        space: Space,
        key: String,
        timeout: Duration,
        lease: Duration,
        limit: usize,
    },
    Release {
        space: Space,
        key: String,
        token: String,
    },
    Renew {
        space: Space,
        key: String,
        token: String,
        lease: Duration,
    },
    Enqueue {
        space: Space,
        key: String,
        lease: Duration,
        limit: usize,
    },
    Wait {
        space: Space,
        key: String,
        timeout: Duration,
    },
    Listen {
        pattern: String,
        group: String,
    },
    Unlisten {
        pattern: String,
        group: String,
    },
    Signal {
        channel: String,
        payload: String,
    },
}

/// One request framed from the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// More bytes needed.
    Incomplete,
    /// A line over its cap: `error` and close.
    TooLong,
    /// Three lines read.
    Done {
        /// Bytes consumed.
        consumed: usize,
        /// `Ok` = accepted; `Err(true)` = `error`; `Err(false)` = the Go
        /// server would take it, but a text field is not UTF-8 (bytes a Go
        /// string holds and a Rust `String` cannot; no client of ours sends
        /// them).
        request: Result<Request, bool>,
    },
}

/// `strings.TrimRight(line, "\r")`.
fn trim_right_cr(mut line: &[u8]) -> &[u8] {
    while let Some(l) = line.strip_suffix(b"\r") {
        line = l;
    }
    line
}

/// `readLineN`: the line (without `\n`, trailing CRs trimmed) and the bytes
/// consumed; `Err(())` once `cap + 1` bytes came without a newline.
fn read_line(buf: &[u8], cap: usize) -> Option<Result<(&[u8], usize), ()>> {
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\n' {
            return Some(Ok((trim_right_cr(&buf[..i]), i + 1)));
        }
        if i >= cap {
            return Some(Err(()));
        }
    }
    None
}

/// `strconv.ParseInt(s, 10, 64)` (Rust's `i64` parser takes the same text:
/// optional sign, decimal digits).
fn parse_int(s: &str) -> Option<i64> {
    s.parse().ok()
}

/// `parseSecondsArg`.
fn seconds(s: &str, min: i64) -> Option<Duration> {
    let n = parse_int(s)?;
    (min..=MAX_SECONDS)
        .contains(&n)
        .then(|| Duration::from_secs(n.unsigned_abs()))
}

/// `validateKey`.
fn key_ok(key: &[u8]) -> bool {
    !key.is_empty()
        && !key
            .iter()
            .any(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

/// `signal.ValidatePattern`.
pub fn pattern_ok(pattern: &str) -> bool {
    let tokens: Vec<&str> = pattern.split('.').collect();
    let last = tokens.len() - 1;
    tokens.iter().enumerate().all(|(i, t)| {
        let gt_not_last = *t == ">" && i != last;
        let star_in_token = t.contains('*') && *t != "*";
        let gt_in_token = t.contains('>') && *t != ">";
        !(gt_not_last || star_in_token || gt_in_token)
    })
}

/// Frames and parses one request from the start of `buf`.
pub fn frame(buf: &[u8]) -> Frame {
    let mut pos = 0;
    let mut lines: [&[u8]; 3] = [b""; 3];
    for (i, line) in lines.iter_mut().enumerate() {
        let cap = if i == 2 && matches!(lines_cmd(buf), Some(b"signal" | b"auth")) {
            MAX_LONG_LINE
        } else {
            MAX_LINE
        };
        match read_line(&buf[pos..], cap) {
            None => return Frame::Incomplete,
            Some(Err(())) => return Frame::TooLong,
            Some(Ok((l, n))) => {
                *line = l;
                pos += n;
            }
        }
    }
    Frame::Done {
        consumed: pos,
        request: parse(lines[0], lines[1], lines[2]),
    }
}

/// The command line, once it is complete.
fn lines_cmd(buf: &[u8]) -> Option<&[u8]> {
    match read_line(buf, MAX_LINE) {
        Some(Ok((cmd, _))) => Some(cmd),
        _ => None,
    }
}

/// `ReadRequest` after framing. `Err(true)`: `error`.
fn parse(cmd: &[u8], key: &[u8], arg: &[u8]) -> Result<Request, bool> {
    let text = |b: &[u8]| std::str::from_utf8(b).map(str::to_owned).map_err(|_| false);
    let space = match cmd {
        b"auth" => return Ok(Request::Auth(text(arg)?.trim().to_owned())),
        b"ping" => return Ok(Request::Ping),
        b"stats" => return Ok(Request::Stats),
        b"l" | b"r" | b"n" | b"e" | b"w" => Space::Lock,
        b"sl" | b"sr" | b"sn" | b"se" | b"sw" => Space::Sem,
        b"listen" | b"unlisten" | b"signal" => Space::Lock,
        _ => return Err(true),
    };
    if !key_ok(key) {
        return Err(true);
    }
    // Every rule below reads the argument as text; with bytes that are not
    // UTF-8 only the "no UTF-8" answer is left to give.
    let key = text(key)?;
    let arg = text(arg)?;
    let parts: Vec<&str> = arg.split_whitespace().collect();
    let stripped = arg.trim();
    let fail = Err(true);
    let lease = |p: Option<&&str>| match p {
        None => Some(DEFAULT_LEASE),
        Some(s) => seconds(s, 1),
    };
    let limit = |s: &str| {
        parse_int(s)
            .filter(|&n| n > 0)
            .and_then(|n| usize::try_from(n).ok())
    };
    let req = match cmd {
        b"l" | b"sl" => {
            let sem = cmd == b"sl";
            let want = if sem { 2..=3 } else { 1..=2 };
            if !want.contains(&parts.len()) {
                return fail;
            }
            let timeout = seconds(parts[0], 0);
            let (lim, l) = if sem {
                (limit(parts[1]), parts.get(2))
            } else {
                (Some(1), parts.get(1))
            };
            match (timeout, lim, lease(l)) {
                (Some(timeout), Some(limit), Some(lease)) => Request::Acquire {
                    space,
                    key,
                    timeout,
                    lease,
                    limit,
                },
                _ => return fail,
            }
        }
        b"r" | b"sr" => {
            if stripped.is_empty() {
                return fail;
            }
            Request::Release {
                space,
                key,
                token: stripped.to_owned(),
            }
        }
        b"n" | b"sn" => {
            if !(1..=2).contains(&parts.len()) {
                return fail;
            }
            match lease(parts.get(1)) {
                Some(lease) => Request::Renew {
                    space,
                    key,
                    token: parts[0].to_owned(),
                    lease,
                },
                None => return fail,
            }
        }
        b"e" => {
            let l = if stripped.is_empty() {
                Some(DEFAULT_LEASE)
            } else {
                seconds(stripped, 1)
            };
            match l {
                Some(lease) => Request::Enqueue {
                    space,
                    key,
                    lease,
                    limit: 1,
                },
                None => return fail,
            }
        }
        b"se" => {
            if !(1..=2).contains(&parts.len()) {
                return fail;
            }
            match (limit(parts[0]), lease(parts.get(1))) {
                (Some(limit), Some(lease)) => Request::Enqueue {
                    space,
                    key,
                    lease,
                    limit,
                },
                _ => return fail,
            }
        }
        b"w" | b"sw" => match seconds(stripped, 0) {
            Some(timeout) if !stripped.is_empty() => Request::Wait {
                space,
                key,
                timeout,
            },
            _ => return fail,
        },
        b"listen" | b"unlisten" => {
            if !pattern_ok(&key) {
                return fail;
            }
            let group = stripped.to_owned();
            if cmd == b"listen" {
                Request::Listen {
                    pattern: key,
                    group,
                }
            } else {
                Request::Unlisten {
                    pattern: key,
                    group,
                }
            }
        }
        _ => {
            // signal
            let max = MAX_LONG_LINE as i64 - 5 - key.len() as i64;
            if stripped.is_empty() || key.contains(['*', '>']) || arg.len() as i64 > max {
                return fail;
            }
            Request::Signal {
                channel: key,
                payload: arg,
            }
        }
    };
    Ok(req)
}
