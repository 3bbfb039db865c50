//! Test servers and helpers for driving the `dflock` binary.
//!
//! [`Server`] is the testkit: in process, or the real dflockd binary named
//! by `DFLOCKD_REAL_SERVER`.

#![allow(dead_code)]

use std::io::{BufRead as _, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

// Every library path the tests use, in one place.
pub use dflockd_client::blocking::{DistributedLock, DistributedSemaphore, LeaseGuard};
pub use dflockd_client::routing::crc32;
pub use dflockd_testkit::Generation;
use dflockd_testkit::TestServer;

/// Generous bound for anything that should happen "at once".
pub const SOON: Duration = Duration::from_secs(10);

/// A test server: `dflockd_testkit::TestServer`, which runs the real binary
/// named by `DFLOCKD_REAL_SERVER` when that is set, and can be killed.
pub struct Server {
    kit: Option<TestServer>,
    addr: SocketAddr,
    generation: Generation,
}

/// Options of a test server.
#[derive(Default, Clone)]
pub struct Opts {
    /// `--auth-token`.
    pub auth_token: Option<String>,
    /// Listen on this port (0 = any free one). For a real server this is
    /// the server's own port, which clients reach without the testkit's
    /// relay (a restart on the address of a killed server).
    pub port: u16,
    /// Serve TLS only, with this PEM certificate chain and key.
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl Server {
    /// A server with default options.
    pub fn start() -> Self {
        Self::start_with(Opts::default())
    }

    /// A server with `opts`.
    pub fn start_with(opts: Opts) -> Self {
        let mut b = TestServer::builder().port(opts.port);
        if let Some(t) = &opts.auth_token {
            b = b.auth_token(t.clone());
        }
        if let Some((cert, key)) = &opts.tls {
            b = b.tls(cert, key);
        }
        let kit = b.start_blocking().expect("start the test server");
        let addr = if opts.port == 0 {
            kit.addr()
        } else {
            ([127, 0, 0, 1], opts.port).into()
        };
        Self {
            generation: kit.generation(),
            kit: Some(kit),
            addr,
        }
    }

    fn kit(&self) -> &TestServer {
        self.kit.as_ref().expect("the server was killed")
    }

    /// Whether this is the real server.
    pub fn is_real(&self) -> bool {
        self.kit().is_real()
    }

    /// What the server speaks (known after a kill too).
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// True when the server has signals. Else prints why the running test
    /// does not check delivery (`skipped <test> against <server>: ...`, a
    /// line scripts/real-dflockd collects); such a test asserts instead,
    /// with [`assert_no_signals`], what dflock does there.
    pub fn has_signals(&self) -> bool {
        let has = self.generation.has_signals();
        if !has {
            println!(
                "skipped {} against {}: no signals in this protocol generation \
                 (asserted dflock's error instead)",
                // libtest names the thread after the test.
                std::thread::current().name().unwrap_or("?"),
                self.generation.name()
            );
        }
        has
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Stops the server at once: every connection closed (a real server is
    /// killed).
    pub fn kill(&mut self) {
        drop(self.kit.take());
    }

    /// Open client connections (not counting the one that asks).
    pub fn connections(&self) -> u64 {
        self.kit().connection_count() as u64
    }

    /// The stats, as JSON.
    pub fn stats(&self) -> serde_json::Value {
        serde_json::to_value(self.kit().stats()).expect("stats as JSON")
    }

    /// Waits until `pattern` has at least one listener.
    pub fn wait_listener(&self, pattern: &str) {
        wait_stats(self, &format!("a listener on {pattern}"), |stats| {
            stats["signal_channels"].as_array().is_some_and(|chans| {
                chans
                    .iter()
                    .any(|c| c["pattern"] == pattern && c["listeners"].as_u64().unwrap_or(0) > 0)
            })
        });
    }
}

/// A port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// `dflock` with a clean environment and `-s addr`.
pub fn dflock(addr: &str) -> Command {
    let mut cmd = dflock_bare();
    cmd.args(["-s", addr]);
    cmd
}

/// `dflock` with a clean environment and no server.
pub fn dflock_bare() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dflock"));
    cmd.env_remove("DFLOCKD_SERVERS")
        .env_remove("DFLOCKD_AUTH_TOKEN")
        .env_remove("DFLOCKD_FENCE")
        .stdin(Stdio::null());
    cmd
}

/// Waits until `f` holds for the server's stats.
pub fn wait_stats(server: &Server, what: &str, f: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + SOON;
    loop {
        let stats = server.stats();
        if f(&stats) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "stats never showed {what}: {stats}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The waiters on lock `key` in a stats JSON (0 when it is not listed).
pub fn lock_waiters(stats: &serde_json::Value, key: &str) -> u64 {
    stats["locks"]
        .as_array()
        .and_then(|locks| locks.iter().find(|l| l["key"] == key))
        .and_then(|l| l["waiters"].as_u64())
        .unwrap_or(0)
}

/// Runs to the end, with a bound.
pub fn output(cmd: &mut Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dflock");
    wait_output(child, Duration::from_secs(30))
}

/// Waits for `child` to exit (killing it after `limit`), collecting its
/// output.
pub fn wait_output(mut child: Child, limit: Duration) -> Output {
    let (tx, rx) = mpsc::channel();
    let pid = child.id();
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    std::thread::spawn(move || {
        let mut o = Vec::new();
        let mut e = Vec::new();
        if let Some(s) = out.as_mut() {
            let _ = s.read_to_end(&mut o);
        }
        if let Some(s) = err.as_mut() {
            let _ = s.read_to_end(&mut e);
        }
        let status = child.wait().expect("wait");
        let _ = tx.send(Output {
            status,
            stdout: o,
            stderr: e,
        });
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out,
        Err(_) => {
            // SAFETY: kill(2) on the pid of our own unreaped child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("dflock (pid {pid}) did not exit within {limit:?}");
        }
    }
}

/// Asserts how a signal command (`listen`, `emit`) ends on a server without
/// signals (v1.10.0, v2 answer `error`): exit 125 at once, no retry, one
/// line that names the server's reply and the servers that have signals.
pub fn assert_no_signals(out: &Output) {
    let err = stderr(out);
    assert_eq!(code(out), 125, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("server replied `error`") && err.contains("signals need a v1.11-v1.16 server"),
        "{err}"
    );
    assert!(stdout(out).is_empty(), "{}", stdout(out));
}

/// The exit code.
pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// Stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Reads lines from a pipe on a thread, so a test can wait for one with a
/// bound.
pub struct Lines(mpsc::Receiver<String>);

impl Lines {
    /// Starts reading `pipe`.
    pub fn new(pipe: impl Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self(rx)
    }

    /// The next line, within `SOON`.
    pub fn next(&self) -> String {
        self.0
            .recv_timeout(SOON)
            .expect("a line within the time bound")
    }

    /// Skips lines until one contains `needle`; returns it.
    pub fn until(&self, needle: &str) -> String {
        loop {
            let line = self.next();
            if line.contains(needle) {
                return line;
            }
        }
    }
}
