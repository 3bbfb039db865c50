//! Argument validation against the server's rules: the client must accept
//! exactly the arguments that the server accepts *and* sees as the client
//! meant them. The server trims the auth token and the queue group (Go's
//! `strings.TrimSpace`) and compares tokens trimmed, so the model expects
//! the trimmed token, and the client sends the group trimmed.
//!
//! Input: `command \n key \n argument` (the argument may hold more
//! newlines). The command picks the request: `auth` (token = argument),
//! `listen`/`unlisten` (pattern = key, group = argument, none when empty),
//! `signal` (channel = key, payload = argument), the lock and semaphore
//! commands (key; numbers from the argument's fields), `stats`, `ping`;
//! anything else is `l`.
//!
//! Properties: `validate` accepts ⇔ the encoded request, fed to the
//! re-statement of the server's parser ([`super::server_model`]), is one
//! whole request that the server accepts with the same key, pattern,
//! channel, group, token, payload and numbers; an accepted request encodes
//! to exactly `cmd \n key \n arg \n`; validation allocates nothing.

use dflockd_client::protocol::{Kind, Request, Secret, Token};

use super::alloc::assert_no_alloc;
use super::server_model::{self, Frame, Request as Server, Space};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

fn num<T: std::str::FromStr>(fields: &[&str], i: usize) -> Option<T> {
    fields.get(i).and_then(|f| f.parse().ok())
}

/// What the server must see for the client's request: `None` when the
/// client's request has no exact counterpart (never for a valid request).
fn expected(req: &Request<'_>) -> Server {
    let secs = |s: u64| std::time::Duration::from_secs(s);
    let lease = |l: Option<u64>| l.map_or(server_model::DEFAULT_LEASE, secs);
    let space = |k: Kind| match k {
        Kind::Lock => Space::Lock,
        Kind::Semaphore { .. } => Space::Sem,
    };
    let limit = |k: Kind| match k {
        Kind::Lock => 1,
        Kind::Semaphore { limit } => limit as usize,
    };
    match *req {
        Request::Auth { token } => Server::Auth(token.0.trim().to_owned()),
        Request::Acquire {
            kind,
            key,
            timeout,
            lease: l,
        } => Server::Acquire {
            space: space(kind),
            key: key.into(),
            timeout: secs(timeout),
            lease: lease(l),
            limit: limit(kind),
        },
        Request::Release { kind, key, token } => Server::Release {
            space: space(kind),
            key: key.into(),
            token: token.as_str().into(),
        },
        Request::Renew {
            kind,
            key,
            token,
            lease: l,
        } => Server::Renew {
            space: space(kind),
            key: key.into(),
            token: token.as_str().into(),
            lease: lease(l),
        },
        Request::Enqueue {
            kind,
            key,
            lease: l,
        } => Server::Enqueue {
            space: space(kind),
            key: key.into(),
            lease: lease(l),
            limit: limit(kind),
        },
        Request::Wait { kind, key, timeout } => Server::Wait {
            space: space(kind),
            key: key.into(),
            timeout: secs(timeout),
        },
        Request::Stats => Server::Stats,
        Request::Ping => Server::Ping,
        Request::Listen { pattern, group } => Server::Listen {
            pattern: pattern.into(),
            group: group.map_or("", str::trim).into(),
        },
        Request::Unlisten { pattern, group } => Server::Unlisten {
            pattern: pattern.into(),
            group: group.map_or("", str::trim).into(),
        },
        Request::Signal { channel, payload } => Server::Signal {
            channel: channel.into(),
            payload: payload.into(),
        },
        _ => unreachable!("a request kind this target does not build"),
    }
}

/// The three lines the client sends for `req`, written out independently
/// of the client's encoder.
fn lines(req: &Request<'_>) -> Vec<u8> {
    let mut nums: Vec<String> = Vec::new();
    let text: String = match *req {
        Request::Auth { token } => token.0.into(),
        Request::Acquire {
            kind,
            timeout,
            lease,
            ..
        } => {
            nums.push(timeout.to_string());
            if let Kind::Semaphore { limit } = kind {
                nums.push(limit.to_string());
            }
            nums.extend(lease.map(|l| l.to_string()));
            nums.join(" ")
        }
        Request::Release { token, .. } => token.as_str().into(),
        Request::Renew { token, lease, .. } => {
            nums.push(token.as_str().into());
            nums.extend(lease.map(|l| l.to_string()));
            nums.join(" ")
        }
        Request::Enqueue { kind, lease, .. } => {
            if let Kind::Semaphore { limit } = kind {
                nums.push(limit.to_string());
            }
            nums.extend(lease.map(|l| l.to_string()));
            nums.join(" ")
        }
        Request::Wait { timeout, .. } => timeout.to_string(),
        Request::Stats => String::new(),
        Request::Ping => "_".into(),
        Request::Listen { group, .. } | Request::Unlisten { group, .. } => {
            group.map_or("", str::trim).into()
        }
        Request::Signal { payload, .. } => payload.into(),
        _ => unreachable!(),
    };
    format!("{}\n{}\n{}\n", req.command(), req.key(), text).into_bytes()
}

/// A semaphore request whose limit v2 refuses.
fn over_v2_limit(req: &Request<'_>) -> bool {
    use dflockd_client::protocol::validate::MAX_SEMAPHORE_LIMIT;
    let kind = match req {
        Request::Acquire { kind, .. }
        | Request::Release { kind, .. }
        | Request::Renew { kind, .. }
        | Request::Enqueue { kind, .. }
        | Request::Wait { kind, .. } => kind,
        _ => return false,
    };
    matches!(kind, Kind::Semaphore { limit } if *limit > MAX_SEMAPHORE_LIMIT)
}

fn check(req: &Request<'_>) {
    let verdict = assert_no_alloc("validate", || req.validate());
    let wire = lines(req);
    let server = server_model::frame(&wire);
    let server_takes_it = matches!(
        &server,
        Frame::Done { consumed, request: Ok(seen) } if *consumed == wire.len() && *seen == expected(req)
    );
    // A server that asks for a token has a non-blank one without CR or LF
    // (config.Validate), so such an auth token can never match.
    let server_takes_it = server_takes_it
        && !matches!(req, Request::Auth { token } if token.0.trim().is_empty() || token.0.contains(['\r', '\n']));
    // A group that trims to nothing would reach the server as no group at
    // all: not what the caller asked for.
    let server_takes_it = server_takes_it
        && !matches!(req, Request::Listen { group: Some(g), .. } | Request::Unlisten { group: Some(g), .. } if g.trim().is_empty());
    // v2 refuses semaphore limits above 1 << 20 (a bare `error`); the client
    // holds every server to that cap (validate::MAX_SEMAPHORE_LIMIT).
    let server_takes_it = server_takes_it && !over_v2_limit(req);
    match verdict {
        Ok(()) => {
            assert!(
                server_takes_it,
                "client accepts {req:?} ({:?}), server: {server:?}",
                String::from_utf8_lossy(&wire)
            );
            let mut out = vec![0u8; wire.len() + 8];
            let n = req.encode(&mut out).unwrap_or_else(|e| panic!("{e:?}"));
            assert_eq!(&out[..n], &wire[..], "encoding of {req:?}");
        }
        Err(e) => assert!(
            !server_takes_it,
            "client rejects {req:?} ({e}) but the server takes {:?} unchanged",
            String::from_utf8_lossy(&wire)
        ),
    }
}

/// The target.
pub fn run(data: &[u8]) {
    let mut it = data.splitn(3, |&b| b == b'\n');
    let cmd = it.next().unwrap_or_default();
    let key = it.next().unwrap_or_default();
    let arg = it.next().unwrap_or_default();
    let arg = arg.strip_suffix(b"\n").unwrap_or(arg);
    let (Ok(key), Ok(arg)) = (std::str::from_utf8(key), std::str::from_utf8(arg)) else {
        return;
    };
    let f: Vec<&str> = arg.split(' ').collect();
    let token = Token::parse(TOKEN.as_bytes()).unwrap_or_else(|_| unreachable!());
    let sem = |i| Kind::Semaphore {
        limit: num(&f, i).unwrap_or(0),
    };
    let one = Kind::Semaphore { limit: 1 };
    let timeout = num(&f, 0).unwrap_or(0);
    let req = match cmd {
        b"auth" => Request::Auth { token: Secret(arg) },
        b"ping" => Request::Ping,
        b"stats" => Request::Stats,
        b"listen" | b"unlisten" => {
            let group = (!arg.is_empty()).then_some(arg);
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
        b"signal" => Request::Signal {
            channel: key,
            payload: arg,
        },
        b"sl" => Request::Acquire {
            kind: sem(1),
            key,
            timeout,
            lease: num(&f, 2),
        },
        b"r" => Request::Release {
            kind: Kind::Lock,
            key,
            token: &token,
        },
        // The limit is not sent with sr, sn and sw: keep it valid.
        b"sr" => Request::Release {
            kind: one,
            key,
            token: &token,
        },
        b"n" => Request::Renew {
            kind: Kind::Lock,
            key,
            token: &token,
            lease: num(&f, 1),
        },
        b"sn" => Request::Renew {
            kind: one,
            key,
            token: &token,
            lease: num(&f, 1),
        },
        b"e" => Request::Enqueue {
            kind: Kind::Lock,
            key,
            lease: num(&f, 0),
        },
        b"se" => Request::Enqueue {
            kind: sem(0),
            key,
            lease: num(&f, 1),
        },
        b"w" => Request::Wait {
            kind: Kind::Lock,
            key,
            timeout,
        },
        b"sw" => Request::Wait {
            kind: one,
            key,
            timeout,
        },
        _ => Request::Acquire {
            kind: Kind::Lock,
            key,
            timeout,
            lease: num(&f, 1),
        },
    };
    check(&req);
}
