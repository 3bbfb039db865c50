//! Request framing and parsing (the real server's rules).

use std::time::Duration;

/// Cap for command, key and ordinary argument lines (bytes, excluding `\n`).
pub(crate) const MAX_LINE: usize = 256;
/// Cap for the `auth` token line and the `signal` payload line.
pub(crate) const MAX_LONG_LINE: usize = 64 * 1024;
/// Largest number of seconds newer servers accept.
pub(crate) const MAX_SECONDS: i64 = 9_223_372_036;
/// Upper bound on a whole buffered request (three lines).
pub(crate) const MAX_REQUEST: usize = MAX_LINE * 2 + MAX_LONG_LINE + 3;

/// Which key space a command addresses (separate since v1.14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Space {
    Lock,
    Sem,
}

impl Space {
    pub(crate) fn index(self) -> usize {
        match self {
            Space::Lock => 0,
            Space::Sem => 1,
        }
    }
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
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

/// Outcome of trying to frame one request from buffered bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// More bytes are needed.
    Incomplete,
    /// A line exceeded its cap: framing is lost, the connection must close.
    TooLong,
    /// Three lines were consumed (`consumed` bytes); the request parsed or not.
    Done {
        consumed: usize,
        request: Result<Request, ()>,
    },
}

fn find_line(buf: &[u8], cap: usize) -> Result<Option<usize>, ()> {
    let window = &buf[..buf.len().min(cap + 1)];
    match window.iter().position(|&b| b == b'\n') {
        Some(i) => Ok(Some(i)),
        None if buf.len() > cap => Err(()),
        None => Ok(None),
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && line[end - 1] == b'\r' {
        end -= 1;
    }
    &line[..end]
}

/// Frames and parses one request from the start of `buf`.
pub(crate) fn frame(buf: &[u8], default_lease: Duration) -> Frame {
    let mut pos = 0;
    let mut lines: [&[u8]; 3] = [&[]; 3];
    for i in 0..3 {
        let cap = if i == 2 && (lines[0] == b"auth" || lines[0] == b"signal") {
            MAX_LONG_LINE
        } else {
            MAX_LINE
        };
        match find_line(&buf[pos..], cap) {
            Err(()) => return Frame::TooLong,
            Ok(None) => return Frame::Incomplete,
            Ok(Some(n)) => {
                lines[i] = strip_cr(&buf[pos..pos + n]);
                pos += n + 1;
            }
        }
    }
    let request = parse(lines[0], lines[1], lines[2], default_lease);
    Frame::Done {
        consumed: pos,
        request,
    }
}

fn text(b: &[u8]) -> Result<&str, ()> {
    std::str::from_utf8(b).map_err(|_| ())
}

fn valid_key(key: &str) -> Result<String, ()> {
    if key.is_empty() || key.contains([' ', '\t', '\n', '\r']) {
        return Err(());
    }
    Ok(key.to_owned())
}

fn int(s: &str) -> Result<i64, ()> {
    s.parse::<i64>().map_err(|_| ())
}

fn timeout_secs(s: &str) -> Result<Duration, ()> {
    let n = int(s)?;
    if !(0..=MAX_SECONDS).contains(&n) {
        return Err(());
    }
    Ok(Duration::from_secs(n.unsigned_abs()))
}

fn lease_secs(s: Option<&&str>, default: Duration) -> Result<Duration, ()> {
    match s {
        None => Ok(default),
        Some(s) => {
            let n = int(s)?;
            if !(1..=MAX_SECONDS).contains(&n) {
                return Err(());
            }
            Ok(Duration::from_secs(n.unsigned_abs()))
        }
    }
}

fn limit(s: &str) -> Result<usize, ()> {
    let n = int(s)?;
    if n <= 0 {
        return Err(());
    }
    usize::try_from(n).map_err(|_| ())
}

/// Pattern rules: `*` and `>` are whole tokens, `>` only last.
pub(crate) fn valid_pattern(pattern: &str) -> bool {
    let tokens: Vec<&str> = pattern.split('.').collect();
    let last = tokens.len() - 1;
    tokens.iter().enumerate().all(|(i, t)| {
        if t.contains('*') && *t != "*" {
            return false;
        }
        if t.contains('>') && (*t != ">" || i != last) {
            return false;
        }
        true
    })
}

/// The queue group of `listen`/`unlisten`: the argument trimmed of
/// surrounding whitespace (Go's `strings.TrimSpace`); inner whitespace is
/// part of the name, as in the real server.
fn group_arg(arg: &str) -> String {
    arg.trim().to_owned()
}

fn parse(cmd: &[u8], key: &[u8], arg: &[u8], default_lease: Duration) -> Result<Request, ()> {
    let cmd = text(cmd)?;
    let space = match cmd {
        "auth" => return Ok(Request::Auth(text(arg)?.trim().to_owned())),
        "stats" => return Ok(Request::Stats),
        "ping" => return Ok(Request::Ping),
        "listen" | "unlisten" => {
            let pattern = valid_key(text(key)?)?;
            if !valid_pattern(&pattern) {
                return Err(());
            }
            let group = group_arg(text(arg)?);
            return Ok(if cmd == "listen" {
                Request::Listen { pattern, group }
            } else {
                Request::Unlisten { pattern, group }
            });
        }
        "signal" => {
            let channel = valid_key(text(key)?)?;
            if channel.contains(['*', '>']) {
                return Err(());
            }
            let payload = text(arg)?;
            // The push `sig <channel> <payload>` must fit the 64 KiB line.
            if payload.trim().is_empty() || payload.len() + channel.len() + 5 > MAX_LONG_LINE {
                return Err(());
            }
            return Ok(Request::Signal {
                channel,
                payload: payload.to_owned(),
            });
        }
        "l" | "r" | "n" | "e" | "w" => Space::Lock,
        "sl" | "sr" | "sn" | "se" | "sw" => Space::Sem,
        _ => return Err(()),
    };
    let key = valid_key(text(key)?)?;
    let arg = text(arg)?;
    let parts: Vec<&str> = arg.split_whitespace().collect();
    match cmd {
        "l" | "sl" => {
            let (t, lim, lease) = if cmd == "l" {
                if !(1..=2).contains(&parts.len()) {
                    return Err(());
                }
                (parts[0], 1, parts.get(1))
            } else {
                if !(2..=3).contains(&parts.len()) {
                    return Err(());
                }
                (parts[0], limit(parts[1])?, parts.get(2))
            };
            Ok(Request::Acquire {
                space,
                key,
                timeout: timeout_secs(t)?,
                lease: lease_secs(lease, default_lease)?,
                limit: lim,
            })
        }
        "r" | "sr" => {
            let token = arg.trim();
            if token.is_empty() {
                return Err(());
            }
            Ok(Request::Release {
                space,
                key,
                token: token.to_owned(),
            })
        }
        "n" | "sn" => {
            if !(1..=2).contains(&parts.len()) {
                return Err(());
            }
            Ok(Request::Renew {
                space,
                key,
                token: parts[0].to_owned(),
                lease: lease_secs(parts.get(1), default_lease)?,
            })
        }
        "e" => {
            if parts.len() > 1 {
                return Err(());
            }
            Ok(Request::Enqueue {
                space,
                key,
                lease: lease_secs(parts.first(), default_lease)?,
                limit: 1,
            })
        }
        "se" => {
            if !(1..=2).contains(&parts.len()) {
                return Err(());
            }
            Ok(Request::Enqueue {
                space,
                key,
                lease: lease_secs(parts.get(1), default_lease)?,
                limit: limit(parts[0])?,
            })
        }
        _ => {
            // w / sw
            if parts.len() != 1 {
                return Err(());
            }
            Ok(Request::Wait {
                space,
                key,
                timeout: timeout_secs(parts[0])?,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(33);

    fn p(s: &str) -> Result<Request, ()> {
        match frame(s.as_bytes(), D) {
            Frame::Done { request, consumed } => {
                assert_eq!(consumed, s.len());
                request
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn parses_lock_commands() {
        assert_eq!(
            p("l\nk\n5\n"),
            Ok(Request::Acquire {
                space: Space::Lock,
                key: "k".into(),
                timeout: Duration::from_secs(5),
                lease: D,
                limit: 1
            })
        );
        assert_eq!(
            p("sl\nk\r\n0 3 7\r\n"),
            Ok(Request::Acquire {
                space: Space::Sem,
                key: "k".into(),
                timeout: Duration::ZERO,
                lease: Duration::from_secs(7),
                limit: 3
            })
        );
        assert!(p("l\nk\n-1\n").is_err());
        assert!(p("l\nk\n1 0\n").is_err());
        assert!(p("l\nk\nx\n").is_err());
        assert!(p("l\nk\n\n").is_err());
        assert!(p("l\n\n1\n").is_err());
        assert!(p("l\na b\n1\n").is_err());
        assert!(p("l\nk\n9223372037\n").is_err());
        assert!(p("sl\nk\n1 0\n").is_err());
        assert!(p("e\nk\n\n").is_ok());
        assert!(p("e\nk\n0\n").is_err());
        assert!(p("w\nk\n\n").is_err());
        assert!(p("r\nk\n \n").is_err());
        assert!(p("bogus\n_\n\n").is_err());
        assert_eq!(p("ping\n_\n_\n"), Ok(Request::Ping));
        assert_eq!(p("stats\n_\n\n"), Ok(Request::Stats));
    }

    #[test]
    fn framing_caps() {
        let long = "x".repeat(MAX_LINE);
        assert!(matches!(
            frame(format!("l\n{long}\n1\n").as_bytes(), D),
            Frame::Done { .. }
        ));
        let longer = "x".repeat(MAX_LINE + 1);
        assert_eq!(frame(format!("l\n{longer}").as_bytes(), D), Frame::TooLong);
        assert_eq!(frame(b"l\nk", D), Frame::Incomplete);
        // A 64 KiB payload line is framed, but its push would not fit the
        // 64 KiB line: `error`, as from the real server.
        let payload = "p".repeat(MAX_LONG_LINE);
        assert!(matches!(
            frame(format!("signal\nc\n{payload}\n").as_bytes(), D),
            Frame::Done {
                request: Err(()),
                ..
            }
        ));
        let payload = "p".repeat(MAX_LONG_LINE + 1);
        assert_eq!(
            frame(format!("signal\nc\n{payload}\n").as_bytes(), D),
            Frame::TooLong
        );
        assert_eq!(
            frame(format!("r\nk\n{longer}\n").as_bytes(), D),
            Frame::TooLong
        );
    }

    #[test]
    fn patterns() {
        for ok in ["a", "a.b", "a.*", "*.b", "a.>", ">", "*", "a.*.>"] {
            assert!(valid_pattern(ok), "{ok}");
        }
        for bad in ["a.>.b", "a*", "a.b>", ">.a", "a.**"] {
            assert!(!valid_pattern(bad), "{bad}");
        }
        assert!(p("signal\na.*\nx\n").is_err());
        assert!(p("signal\na.b\n  \n").is_err());
        assert!(p("listen\na.>.b\n\n").is_err());
        // Groups are trimmed; inner whitespace is part of the name.
        assert_eq!(
            p("listen\na.>\n g1 g2\t\n"),
            Ok(Request::Listen {
                pattern: "a.>".to_owned(),
                group: "g1 g2".to_owned(),
            })
        );
        let max = MAX_LONG_LINE - 5 - 3;
        assert!(p(&format!("signal\nabc\n{}\n", "p".repeat(max))).is_ok());
        assert!(p(&format!("signal\nabc\n{}\n", "p".repeat(max + 1))).is_err());
    }
}
