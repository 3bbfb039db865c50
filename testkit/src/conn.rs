//! One client connection: framing, dispatch, blocking waits and pushes.
//!
//! The handler is generic over `AsyncRead + AsyncWrite`: a TLS stream
//! (`--tls-cert`/`--tls-key`) is served the same way as a plain `TcpStream`.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};

use crate::locks::{Acquire, ConnId, Enqueue, FAR_TIMEOUT, Wait};
use crate::protocol::{self, Frame, MAX_REQUEST, Request, Space};
use crate::server::Shared;
use crate::signals::{ConnCtl, ListenResult};

/// Delay before closing a connection that failed authentication.
const AUTH_FAIL_DELAY: Duration = Duration::from_millis(100);
/// Upper bound for a polite close (FIN, then draining the rest of a line).
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Releases the connection's state exactly once, also when the task is aborted.
struct Guard {
    shared: Arc<Shared>,
    id: ConnId,
    done: bool,
}

impl Guard {
    fn finish(&mut self) {
        if !self.done {
            self.done = true;
            self.shared.unregister(self.id);
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.finish();
    }
}

/// How a session ended.
enum End {
    /// Peer closed or the socket failed: just drop it.
    Drop,
    /// Server-initiated close after a final reply: send FIN first.
    Polite,
    /// Line too long: like `Polite`, but first consume the rest of the line.
    DrainLine,
}

enum Next {
    Request(Result<Request, ()>),
    Eof,
    TimedOut,
    TooLong,
}

enum Flow {
    Continue,
    Close(End),
}

/// Serves one connection until it closes, is killed, or the server stops.
pub(crate) async fn serve<S>(
    shared: Arc<Shared>,
    id: ConnId,
    ctl: Arc<ConnCtl>,
    push_rx: mpsc::Receiver<Arc<[u8]>>,
    stream: S,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut guard = Guard {
        shared: shared.clone(),
        id,
        done: false,
    };
    let mut session = Session {
        shared: &shared,
        id,
        stream,
        rbuf: Vec::with_capacity(1024),
        rpos: 0,
        out: Vec::with_capacity(256),
        push_rx,
    };
    let end = tokio::select! {
        biased;
        _ = ctl.kill.wait() => End::Drop,
        _ = shared.hard_stop.wait() => End::Drop,
        end = session.run() => end,
    };
    // Release locks before the peer can observe the close.
    guard.finish();
    if !matches!(end, End::Drop) {
        tokio::select! {
            biased;
            _ = ctl.kill.wait() => {}
            _ = shared.hard_stop.wait() => {}
            _ = tokio::time::timeout(CLOSE_GRACE, session.close(matches!(end, End::DrainLine))) => {}
        }
    }
}

struct Session<'a, S> {
    shared: &'a Shared,
    id: ConnId,
    stream: S,
    rbuf: Vec<u8>,
    rpos: usize,
    out: Vec<u8>,
    push_rx: mpsc::Receiver<Arc<[u8]>>,
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn push_num(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(n.to_string().as_bytes());
}

fn grant_line(out: &mut Vec<u8>, status: &str, token: &str, lease: Duration) {
    out.extend_from_slice(status.as_bytes());
    out.push(b' ');
    out.extend_from_slice(token.as_bytes());
    out.push(b' ');
    push_num(out, lease.as_secs());
    out.push(b'\n');
}

impl<S> Session<'_, S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async fn run(&mut self) -> End {
        if let Some(token) = self.shared.cfg.auth_token.clone() {
            match self.next_request().await {
                Next::Eof => return End::Drop,
                Next::Request(Ok(Request::Auth(t))) if ct_eq(t.as_bytes(), token.as_bytes()) => {
                    if self.shared.draining.is_set() {
                        return self.final_reply(b"error_draining\n").await;
                    }
                    self.out.extend_from_slice(b"ok\n");
                }
                _ => {
                    self.out.extend_from_slice(b"error_auth\n");
                    if self.flush().await.is_err() {
                        return End::Drop;
                    }
                    tokio::time::sleep(AUTH_FAIL_DELAY).await;
                    return End::Polite;
                }
            }
        }
        loop {
            let req = match self.next_request().await {
                Next::Eof => return End::Drop,
                Next::TimedOut => return self.final_reply(b"error\n").await,
                Next::TooLong => {
                    return match self.final_reply(b"error\n").await {
                        End::Polite => End::DrainLine,
                        other => other,
                    };
                }
                Next::Request(r) => r,
            };
            if self.shared.draining.is_set() {
                return self.final_reply(b"error_draining\n").await;
            }
            let Ok(req) = req else {
                self.out.extend_from_slice(b"error\n");
                continue;
            };
            if let Flow::Close(end) = self.handle(req).await {
                return end;
            }
        }
    }

    async fn final_reply(&mut self, line: &[u8]) -> End {
        self.out.extend_from_slice(line);
        match self.flush().await {
            Ok(()) => End::Polite,
            Err(_) => End::Drop,
        }
    }

    /// Sends FIN; for `drain_line`, first reads until the end of the current line.
    async fn close(&mut self, drain_line: bool) {
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
        if drain_line {
            let mut buf = [0u8; 4096];
            let mut budget: usize = 1 << 20;
            while let Ok(n) = self.stream.read(&mut buf).await {
                if n == 0 || buf[..n].contains(&b'\n') || budget < n {
                    break;
                }
                budget -= n;
            }
        }
    }

    fn drain_pushes(&mut self) {
        for _ in 0..crate::signals::PUSH_QUEUE {
            match self.push_rx.try_recv() {
                Ok(p) => self.out.extend_from_slice(&p),
                Err(_) => break,
            }
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.drain_pushes();
        if self.out.is_empty() {
            return Ok(());
        }
        let wt = self.shared.cfg.write_timeout;
        let write = async {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await
        };
        if wt.is_zero() {
            write.await?;
        } else {
            tokio::time::timeout(wt, write)
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        }
        self.out.clear();
        if self.out.capacity() > 64 * 1024 {
            self.out.shrink_to(4096);
        }
        Ok(())
    }

    fn compact(&mut self) {
        if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        if self.rbuf.is_empty() && self.rbuf.capacity() > MAX_REQUEST {
            self.rbuf.shrink_to(4096);
        }
        self.rbuf.reserve(4096);
    }

    /// Reads the next request, writing pending replies and pushes meanwhile.
    async fn next_request(&mut self) -> Next {
        let idle = self.shared.cfg.read_timeout;
        let mut idle_deadline = Instant::now() + idle;
        loop {
            match protocol::frame(&self.rbuf[self.rpos..], self.shared.cfg.default_lease_ttl) {
                Frame::Done { consumed, request } => {
                    self.rpos += consumed;
                    return Next::Request(request);
                }
                Frame::TooLong => return Next::TooLong,
                Frame::Incomplete => {}
            }
            if self.flush().await.is_err() {
                return Next::Eof;
            }
            self.compact();
            tokio::select! {
                biased;
                p = self.push_rx.recv() => {
                    if let Some(p) = p {
                        self.out.extend_from_slice(&p);
                    }
                }
                r = self.stream.read_buf(&mut self.rbuf) => match r {
                    Ok(0) | Err(_) => return Next::Eof,
                    Ok(_) => idle_deadline = Instant::now() + idle,
                },
                _ = sleep_until(idle_deadline) => return Next::TimedOut,
            }
        }
    }

    /// While a request blocks: collects pushes (the caller flushes them) and
    /// watches for EOF. Returns `false` when the peer went away. Cancel-safe.
    async fn idle_step(&mut self) -> bool {
        let room = self.rbuf.len() - self.rpos < MAX_REQUEST;
        tokio::select! {
            biased;
            p = self.push_rx.recv() => {
                if let Some(p) = p {
                    self.out.extend_from_slice(&p);
                }
                true
            }
            r = self.stream.read_buf(&mut self.rbuf), if room => !matches!(r, Ok(0) | Err(_)),
        }
    }

    async fn handle(&mut self, req: Request) -> Flow {
        let shared = self.shared;
        let id = self.id;
        match req {
            Request::Auth(_) => self.out.extend_from_slice(b"error\n"),
            Request::Ping => self.out.extend_from_slice(b"ok\n"),
            Request::Stats => match serde_json::to_string(&shared.stats()) {
                Ok(json) => {
                    self.out.extend_from_slice(b"ok ");
                    self.out.extend_from_slice(json.as_bytes());
                    self.out.push(b'\n');
                }
                Err(_) => self.out.extend_from_slice(b"error\n"),
            },
            Request::Acquire {
                space,
                key,
                timeout,
                lease,
                limit,
            } => {
                let may_block = !timeout.is_zero();
                match shared.with_locks(|l| l.acquire(id, space, &key, lease, limit, may_block)) {
                    Acquire::Granted(t) => grant_line(&mut self.out, "ok", &t, lease),
                    Acquire::Timeout => self.out.extend_from_slice(b"timeout\n"),
                    Acquire::Refused(r) => self.out.extend_from_slice(r.line()),
                    Acquire::Queued(wid, rx) => {
                        return self
                            .block_acquire(space, &key, wid, rx, timeout, lease)
                            .await;
                    }
                }
            }
            Request::Release { space, key, token } => {
                if shared.with_locks(|l| l.release(space, &key, &token)) {
                    self.out.extend_from_slice(b"ok\n");
                } else {
                    self.out.extend_from_slice(b"error\n");
                }
            }
            Request::Renew {
                space,
                key,
                token,
                lease,
            } => match shared.with_locks(|l| l.renew(space, &key, &token, lease)) {
                Some(secs) => {
                    self.out.extend_from_slice(b"ok ");
                    push_num(&mut self.out, secs);
                    self.out.push(b'\n');
                }
                None => self.out.extend_from_slice(b"error\n"),
            },
            Request::Enqueue {
                space,
                key,
                lease,
                limit,
            } => match shared.with_locks(|l| l.enqueue(id, space, &key, lease, limit)) {
                Enqueue::Acquired(t, lease) => grant_line(&mut self.out, "acquired", &t, lease),
                Enqueue::Queued => self.out.extend_from_slice(b"queued\n"),
                Enqueue::Refused(r) => self.out.extend_from_slice(r.line()),
            },
            Request::Wait {
                space,
                key,
                timeout,
            } => return self.block_wait(space, &key, timeout).await,
            Request::Listen { pattern, group } => {
                let max = shared.cfg.max_subscriptions;
                match shared.with_signals(|s| s.listen(id, &pattern, &group, max)) {
                    ListenResult::Ok => self.out.extend_from_slice(b"ok\n"),
                    ListenResult::TooMany => self.out.extend_from_slice(b"error\n"),
                }
            }
            Request::Unlisten { pattern, group } => {
                shared.with_signals(|s| s.unlisten(id, &pattern, &group));
                self.out.extend_from_slice(b"ok\n");
            }
            Request::Signal { channel, payload } => {
                let n = shared.with_signals(|s| s.signal(&channel, &payload));
                self.out.extend_from_slice(b"ok ");
                push_num(&mut self.out, n as u64);
                self.out.push(b'\n');
            }
        }
        Flow::Continue
    }

    async fn block_acquire(
        &mut self,
        space: Space,
        key: &str,
        wid: u64,
        mut rx: oneshot::Receiver<String>,
        timeout: Duration,
        lease: Duration,
    ) -> Flow {
        let shared = self.shared;
        let id = self.id;
        let deadline = Instant::now() + timeout.min(FAR_TIMEOUT);
        if self.flush().await.is_err() {
            return Flow::Close(End::Drop);
        }
        loop {
            self.compact();
            tokio::select! {
                biased;
                r = &mut rx => {
                    match r {
                        Ok(t) => grant_line(&mut self.out, "ok", &t, lease),
                        Err(_) => self.out.extend_from_slice(b"error\n"),
                    }
                    return Flow::Continue;
                }
                _ = shared.draining.wait() => {
                    if let Some(t) = shared.with_locks(|l| l.cancel_acquire(id, space, key, wid, &mut rx)) {
                        shared.with_locks(|l| l.release(space, key, &t));
                    }
                    return Flow::Close(self.final_reply(b"error_draining\n").await);
                }
                _ = sleep_until(deadline) => {
                    match shared.with_locks(|l| l.cancel_acquire(id, space, key, wid, &mut rx)) {
                        Some(t) => grant_line(&mut self.out, "ok", &t, lease),
                        None => self.out.extend_from_slice(b"timeout\n"),
                    }
                    return Flow::Continue;
                }
                alive = self.idle_step() => {
                    if !alive || self.flush().await.is_err() {
                        return Flow::Close(End::Drop);
                    }
                }
            }
        }
    }

    fn wait_reply(&mut self, w: Wait) {
        match w {
            Wait::Granted(t, lease) => grant_line(&mut self.out, "ok", &t, lease),
            Wait::LeaseExpired => self.out.extend_from_slice(b"error_lease_expired\n"),
            Wait::NotEnqueued => self.out.extend_from_slice(b"error_not_enqueued\n"),
            Wait::Timeout | Wait::Block(_) => self.out.extend_from_slice(b"timeout\n"),
        }
    }

    async fn block_wait(&mut self, space: Space, key: &str, timeout: Duration) -> Flow {
        let shared = self.shared;
        let id = self.id;
        let deadline = Instant::now() + timeout.min(FAR_TIMEOUT);
        let may_block = !timeout.is_zero();
        let mut flushed = false;
        loop {
            let mut rx = match shared.with_locks(|l| l.wait(id, space, key, may_block)) {
                Wait::Block(rx) => rx,
                other => {
                    self.wait_reply(other);
                    return Flow::Continue;
                }
            };
            if !flushed {
                flushed = true;
                if self.flush().await.is_err() {
                    return Flow::Close(End::Drop);
                }
            }
            loop {
                self.compact();
                tokio::select! {
                    biased;
                    _ = &mut rx => break,
                    _ = shared.draining.wait() => {
                        if let Wait::Granted(t, _) = shared.with_locks(|l| l.wait(id, space, key, false)) {
                            shared.with_locks(|l| l.release(space, key, &t));
                        }
                        return Flow::Close(self.final_reply(b"error_draining\n").await);
                    }
                    _ = sleep_until(deadline) => {
                        let w = shared.with_locks(|l| l.wait(id, space, key, false));
                        self.wait_reply(w);
                        return Flow::Continue;
                    }
                    alive = self.idle_step() => {
                        if !alive || self.flush().await.is_err() {
                            return Flow::Close(End::Drop);
                        }
                    }
                }
            }
        }
    }
}
