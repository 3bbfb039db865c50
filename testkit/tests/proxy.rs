//! The fault proxy, against a plain echo server: each fault does what its
//! docs say, and the `proxy` subcommand's control socket drives it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use dflockd_testkit::FaultProxy;
use dflockd_testkit::proxy::{Command, Direction};

/// An echo server on an ephemeral port (one thread per connection).
fn echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn client(proxy: &FaultProxy) -> TcpStream {
    let s = TcpStream::connect(proxy.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Sends `msg`, returns what came back within `wait` (possibly nothing).
fn roundtrip(s: &mut TcpStream, msg: &[u8], wait: Duration) -> Vec<u8> {
    s.write_all(msg).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.len() < msg.len() {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

#[test]
fn passes_through_and_adds_latency() {
    let proxy = FaultProxy::builder(echo()).start_blocking().unwrap();
    let mut s = client(&proxy);
    assert_eq!(roundtrip(&mut s, b"hi\n", Duration::from_secs(5)), b"hi\n");
    proxy.latency(Direction::Both, Duration::from_millis(100), Duration::ZERO);
    let t = Instant::now();
    assert_eq!(roundtrip(&mut s, b"hi\n", Duration::from_secs(5)), b"hi\n");
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(proxy.connections(), 1);
}

#[test]
fn blackhole_discards_and_keeps_the_socket_open() {
    let proxy = FaultProxy::builder(echo()).start_blocking().unwrap();
    let mut s = client(&proxy);
    proxy.blackhole();
    assert!(roundtrip(&mut s, b"lost\n", Duration::from_millis(300)).is_empty());
    proxy.pass();
    // Still open, and the black-holed bytes stay lost.
    assert_eq!(roundtrip(&mut s, b"x\n", Duration::from_secs(5)), b"x\n");
}

#[test]
fn pause_holds_and_resume_delivers() {
    let proxy = FaultProxy::builder(echo()).start_blocking().unwrap();
    let mut s = client(&proxy);
    proxy.pause();
    assert!(roundtrip(&mut s, b"held\n", Duration::from_millis(300)).is_empty());
    proxy.resume();
    let mut got = [0u8; 5];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"held\n");
}

#[test]
fn cut_closes_open_connections_only() {
    let proxy = FaultProxy::builder(echo()).start_blocking().unwrap();
    let mut s = client(&proxy);
    assert_eq!(roundtrip(&mut s, b"a", Duration::from_secs(5)), b"a");
    proxy.cut();
    let mut buf = [0u8; 1];
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    let mut s2 = client(&proxy);
    assert_eq!(roundtrip(&mut s2, b"b", Duration::from_secs(5)), b"b");
}

#[test]
fn trickle_paces_bytes() {
    let proxy = FaultProxy::builder(echo()).start_blocking().unwrap();
    let mut s = client(&proxy);
    proxy.trickle(Direction::ToClient, 1, Duration::from_millis(50));
    let t = Instant::now();
    assert_eq!(
        roundtrip(&mut s, b"abcde", Duration::from_secs(5)),
        b"abcde"
    );
    // Five bytes, one per 50 ms: at least four gaps.
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn drop_after_closes_once_k_bytes_went_through() {
    let proxy = FaultProxy::builder(echo()).start_blocking().unwrap();
    let mut s = client(&proxy);
    proxy.drop_after(Some(6));
    // 4 bytes up, then 2 of the echo back: closed.
    s.write_all(b"abcd").unwrap();
    let mut got = Vec::new();
    assert!(s.read_to_end(&mut got).is_ok() || !got.is_empty());
    assert_eq!(got, b"ab");
}

#[test]
fn control_commands_parse_and_reject() {
    assert_eq!(
        "latency to-server 20 5".parse::<Command>(),
        Ok(Command::Latency(
            Direction::ToServer,
            Duration::from_millis(20),
            Duration::from_millis(5)
        ))
    );
    assert_eq!(
        "drop-after off".parse::<Command>(),
        Ok(Command::DropAfter(None))
    );
    assert!("latency sideways 1".parse::<Command>().is_err());
    assert!("cut now".parse::<Command>().is_err());
    assert!("explode".parse::<Command>().is_err());
}

#[test]
fn proxy_subcommand_is_controlled_over_its_socket() {
    let upstream = echo();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dflockd-testkit"))
        .args(["proxy", "--upstream", &upstream.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        words[..4],
        ["dflockd-testkit", "proxy", "listening", "on"],
        "{line}"
    );
    let (data, control) = (words[4], words[7]);
    let mut ctl = TcpStream::connect(control).unwrap();
    let mut replies = BufReader::new(ctl.try_clone().unwrap());
    let mut s = TcpStream::connect(data).unwrap();
    assert_eq!(roundtrip(&mut s, b"1", Duration::from_secs(5)), b"1");
    let mut ask = |cmd: &str| {
        writeln!(ctl, "{cmd}").unwrap();
        let mut r = String::new();
        replies.read_line(&mut r).unwrap();
        r.trim_end().to_owned()
    };
    assert_eq!(ask("connections"), "ok 1");
    assert_eq!(ask("blackhole"), "ok");
    assert!(roundtrip(&mut s, b"2", Duration::from_millis(200)).is_empty());
    assert_eq!(ask("pass"), "ok");
    assert_eq!(roundtrip(&mut s, b"3", Duration::from_secs(5)), b"3");
    assert!(ask("bogus").starts_with("error "));
    let _ = child.kill();
    let _ = child.wait();
}
