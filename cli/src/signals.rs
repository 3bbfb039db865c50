//! `dflock emit` and `dflock listen`.
//!
//! A channel is routed to one server by CRC-32, as keys are; a listener
//! subscribes on every server, so it receives what is emitted anywhere.

use std::io::{self, Read as _};
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use crate::cli::{EmitArgs, ListenArgs};
use crate::client::{
    ClientError, MAX_SIGNAL_LINE, Reconnect, SignalConn, SignalEvent, SignalOptions, Target, emit,
    emit_tls, validate,
};
use crate::exit::{self, Failure};
use crate::output::Out;

/// Runs `dflock emit`; prints the delivery count.
pub fn run_emit(target: &Target, a: &EmitArgs, out: &mut Out) -> Result<i32, Failure> {
    validate::channel(&a.channel).map_err(Failure::usage)?;
    let payload = if a.payload == "-" {
        read_payload(&a.channel)?
    } else {
        a.payload.clone()
    };
    validate::payload(&a.channel, &payload).map_err(Failure::usage)?;
    let addr = target.route(&a.channel);
    log::info!("emit on {} via {addr}", a.channel);
    let sent = match target.tls_for(addr) {
        Ok(None) => emit(addr, &a.channel, &payload, &target.connect),
        Ok(Some(tls)) => emit_tls(addr, &a.channel, &payload, &target.connect, &tls),
        Err(e) => Err(ClientError::Config(e)),
    };
    let n = sent.map_err(|e| signal_failure(addr, &e))?;
    out.line(&n.to_string())?;
    Ok(exit::OK)
}

/// A failed `signal` or `listen`; a refusal hints at servers without
/// signals.
fn signal_failure(addr: &str, e: &ClientError) -> Failure {
    let mut f = Failure::client(addr, e);
    if matches!(e, ClientError::Server(_)) {
        f.message
            .push_str(" (signals need a v1.11-v1.16 server; v1.10 and v2 have none)");
    }
    f
}

/// The payload from stdin: one line (a trailing newline is dropped), read
/// no further than the longest payload allowed.
fn read_payload(channel: &str) -> Result<String, Failure> {
    let max = validate::max_payload_len(channel);
    let mut bytes = Vec::new();
    io::stdin()
        .lock()
        .take(max as u64 + 3)
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::new(exit::FAILURE, format!("reading stdin: {e}")))?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    String::from_utf8(bytes).map_err(|_| Failure::usage("invalid payload: not UTF-8"))
}

type Conn = SignalConn<MAX_SIGNAL_LINE, { 2 * MAX_SIGNAL_LINE }>;

enum Item {
    Event(usize, Result<SignalEvent, ClientError>),
    Ended(usize),
}

/// Runs `dflock listen`; 0 after `--count` signals, 122 on `--timeout`.
pub fn run_listen(target: &Target, a: &ListenArgs, out: &mut Out) -> Result<i32, Failure> {
    validate::pattern(&a.pattern).map_err(Failure::usage)?;
    if let Some(g) = &a.group {
        validate::group(g).map_err(Failure::usage)?;
    }
    let deadline = a.timeout.map(|t| Instant::now() + t);
    let reconnect = !a.no_reconnect;
    let opts = SignalOptions {
        io_timeout: target.connect.io_timeout,
        reconnect: reconnect.then(Reconnect::default),
        ..SignalOptions::default()
    };
    let (tx, rx) = mpsc::channel();
    for (i, addr) in target.servers.iter().enumerate() {
        let fail = |e: ClientError| Failure::client(addr, &e);
        let conn: Conn = match target
            .tls_for(addr)
            .map_err(ClientError::Config)
            .map_err(fail)?
        {
            None => Conn::connect(addr.as_str(), &target.connect, opts.clone()),
            Some(tls) => Conn::connect_tls(addr.as_str(), &target.connect, &tls, opts.clone()),
        }
        .map_err(fail)?;
        conn.listen(&a.pattern, a.group.as_deref())
            .map_err(|e| signal_failure(addr, &e))?;
        log::info!("listening on {} at {addr}", a.pattern);
        let tx = tx.clone();
        thread::Builder::new()
            .name("dflock-listen".into())
            .spawn(move || {
                for item in conn {
                    if tx.send(Item::Event(i, item)).is_err() {
                        return;
                    }
                }
                let _ = tx.send(Item::Ended(i));
            })
            .map_err(|e| Failure::new(exit::FAILURE, format!("cannot start a thread: {e}")))?;
    }
    drop(tx);

    let mut received = 0u64;
    if a.count == Some(0) {
        return Ok(exit::OK);
    }
    loop {
        let item = match deadline {
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
        };
        let item = match item {
            Ok(item) => item,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                log::info!("--timeout passed after {received} signal(s)");
                return Ok(exit::LISTEN_TIMEOUT);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(Failure::new(exit::UNREACHABLE, "every connection ended"));
            }
        };
        match item {
            Item::Event(_, Ok(SignalEvent::Signal(sig))) => {
                if a.json {
                    let line = serde_json::json!({"channel": sig.channel, "payload": sig.payload});
                    out.line(&line.to_string())?;
                } else {
                    out.line(&format!("{} {}", sig.channel, sig.payload))?;
                }
                received += 1;
                if a.count.is_some_and(|n| received >= n) {
                    return Ok(exit::OK);
                }
            }
            Item::Event(i, Ok(SignalEvent::Reconnected { gap, attempts })) => log::warn!(
                "reconnected to {} after {:.1} s ({attempts} attempt(s)); signals sent meanwhile were missed",
                target.servers[i],
                gap.as_secs_f64()
            ),
            Item::Event(_, Ok(_)) => {}
            Item::Event(i, Err(e)) => {
                let addr = &target.servers[i];
                if !reconnect {
                    return Err(Failure::client(addr, &e));
                }
                log::warn!(
                    "connection to {addr} lost ({}); reconnecting",
                    exit::describe(&e)
                );
            }
            Item::Ended(i) => {
                return Err(Failure::new(
                    exit::UNREACHABLE,
                    format!("{}: connection ended", target.servers[i]),
                ));
            }
        }
    }
}
