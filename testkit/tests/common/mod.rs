//! Raw wire-protocol helpers shared by the integration tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Generous upper bound for any single expected event.
pub const T: Duration = Duration::from_secs(10);

pub struct Client {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let s = tokio::time::timeout(T, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        s.set_nodelay(true).unwrap();
        let (r, w) = s.into_split();
        Client {
            r: BufReader::new(r),
            w,
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).await.expect("write");
    }

    pub async fn send(&mut self, cmd: &str, key: &str, arg: &str) {
        self.send_raw(format!("{cmd}\n{key}\n{arg}\n").as_bytes())
            .await;
    }

    /// Next line without the newline; `None` on EOF (or reset). Panics after `T`.
    pub async fn line(&mut self) -> Option<String> {
        let mut s = String::new();
        match tokio::time::timeout(T, self.r.read_line(&mut s)).await {
            Err(_) => panic!("no line within {T:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => None,
            Ok(Ok(_)) => Some(s.trim_end_matches('\n').to_owned()),
        }
    }

    pub async fn expect_line(&mut self) -> String {
        self.line().await.expect("unexpected EOF")
    }

    pub async fn req(&mut self, cmd: &str, key: &str, arg: &str) -> String {
        self.send(cmd, key, arg).await;
        self.expect_line().await
    }

    /// Asserts that the server closes the connection (no further line).
    pub async fn expect_eof(&mut self) {
        if let Some(l) = self.line().await {
            panic!("expected EOF, got {l:?}");
        }
    }

    /// `l` and return the token (asserting `ok <token> <lease>`).
    pub async fn lock(&mut self, key: &str, arg: &str) -> String {
        let reply = self.req("l", key, arg).await;
        token_of(&reply, "ok")
    }
}

/// Parses `<status> <token> <lease>` and returns the token.
pub fn token_of(reply: &str, status: &str) -> String {
    let parts: Vec<&str> = reply.split(' ').collect();
    assert_eq!(parts.len(), 3, "reply {reply:?}");
    assert_eq!(parts[0], status, "reply {reply:?}");
    assert_eq!(parts[1].len(), 32, "reply {reply:?}");
    assert!(
        parts[1]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "reply {reply:?}"
    );
    parts[2].parse::<u64>().expect("lease");
    parts[1].to_owned()
}

/// Polls `cond` (cheap, in-process) until it holds; panics after `T`.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < T, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
