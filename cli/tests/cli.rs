//! `dflock` driven as a process against the testkit, or against the real
//! server named by `DFLOCKD_REAL_SERVER`.

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{
    DistributedLock, DistributedSemaphore, Generation, LeaseGuard, Lines, Opts, SOON, Server,
    assert_no_signals, code, crc32, dflock, dflock_bare, lock_waiters, output, stderr, stdout,
    wait_output, wait_stats,
};

fn hold(server: &Server, key: &str) -> LeaseGuard {
    DistributedLock::builder(key)
        .server(server.addr())
        .build()
        .try_acquire()
        .expect("acquire")
        .expect("the key is free")
}

#[test]
fn nonblock_on_a_held_key_exits_1_or_the_conflict_code() {
    let server = Server::start();
    let addr = server.addr();
    let guard = hold(&server, "busy");

    let out = output(dflock(&addr).args(["run", "-n", "busy", "--", "true"]));
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let out = output(dflock(&addr).args(["run", "-n", "-E", "9", "busy", "--", "true"]));
    assert_eq!(code(&out), 9, "{}", stderr(&out));

    guard.release().expect("release");
    let out = output(dflock(&addr).args(["run", "-n", "busy", "--", "true"]));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

#[test]
fn the_command_status_and_environment_pass_through() {
    let server = Server::start();
    let addr = server.addr();
    let out = output(dflock(&addr).args([
        "run",
        "job",
        "--",
        "sh",
        "-c",
        "echo \"$DFLOCKD_KEY ${DFLOCKD_TOKEN} ${DFLOCKD_FENCE-unset}\"; exit 7",
    ]));
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    let text = stdout(&out);
    let words: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(words[0], "job");
    assert_eq!(words[1].len(), 32, "token: {text}");
    assert!(words[1].bytes().all(|b| b.is_ascii_hexdigit()));
    if server.generation() == Generation::V2 {
        // v2's token starts with its fence: 16 hex digits, big-endian.
        let fence = u64::from_str_radix(&words[1][..16], 16).expect("hex");
        assert_eq!(words[2], fence.to_string(), "{text}");
    } else {
        // v1.x has no fences; the testkit answers the probe as v1.14 does.
        assert_eq!(words[2], "unset", "{text}");
    }

    let out = output(dflock(&addr).args(["run", "job", "--", "/nonexistent/command"]));
    assert_eq!(code(&out), 127, "{}", stderr(&out));
    // The lock was released after the failed start.
    let out = output(dflock(&addr).args(["run", "-n", "job", "--", "true"]));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

#[test]
fn wait_on_a_held_key_gives_up_with_124() {
    let server = Server::start();
    let addr = server.addr();
    let _guard = hold(&server, "slow");
    let start = Instant::now();
    let out = output(dflock(&addr).args(["run", "-w", "1", "slow", "--", "true"]));
    assert_eq!(code(&out), 124, "{}", stderr(&out));
    assert!(start.elapsed() >= Duration::from_secs(1));
    let out = output(dflock(&addr).args(["run", "-w", "0", "-E", "3", "slow", "--", "true"]));
    assert_eq!(code(&out), 3, "{}", stderr(&out));
}

#[test]
fn two_runs_on_one_key_never_overlap() {
    let server = Server::start();
    let addr = server.addr();
    let dir = tempdir("overlap");
    let log = dir.join("marks");
    let script = format!(
        "echo \"enter $$\" >> {0}; sleep 0.02; echo \"leave $$\" >> {0}",
        log.display()
    );
    for _ in 0..20 {
        let children: Vec<_> = (0..2)
            .map(|_| {
                dflock(&addr)
                    .args(["run", "mutex", "--", "sh", "-c", &script])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn")
            })
            .collect();
        for child in children {
            let out = wait_output(child, Duration::from_secs(30));
            assert_eq!(code(&out), 0, "{}", stderr(&out));
        }
    }
    let marks = std::fs::read_to_string(&log).expect("marks");
    let lines: Vec<&str> = marks.lines().collect();
    assert_eq!(lines.len(), 80, "{marks}");
    for pair in lines.chunks(2) {
        let enter = pair[0].strip_prefix("enter ").expect(&marks);
        let leave = pair[1].strip_prefix("leave ").expect(&marks);
        assert_eq!(enter, leave, "interleaved:\n{marks}");
    }
}

/// A command that reports `ready`, and `term` when SIGTERM arrives.
const TRAP_TERM: &str = "trap 'echo term; exit 3' TERM; echo ready; while :; do sleep 0.05; done";

#[test]
fn a_lost_lease_terminates_the_command_within_the_lease() {
    let mut server = Server::start();
    let addr = server.addr();
    let mut child = dflock(&addr)
        .args(["run", "--lease", "5", "doomed", "--", "sh", "-c", TRAP_TERM])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let lines = Lines::new(child.stdout.take().expect("stdout"));
    assert_eq!(lines.next(), "ready");
    let killed = Instant::now();
    server.kill();
    assert_eq!(lines.next(), "term");
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "SIGTERM came {:?} after the server died (lease 5 s)",
        killed.elapsed()
    );
    let out = wait_output(child, SOON);
    assert_eq!(code(&out), 120, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("lease on doomed lost"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn on_lost_warn_only_warns() {
    let mut server = Server::start();
    let addr = server.addr();
    let dir = tempdir("warn");
    let go = dir.join("go");
    let script = format!(
        "echo ready; while [ ! -e {} ]; do sleep 0.02; done; exit 5",
        go.display()
    );
    let mut child = dflock(&addr)
        .args(["run", "--on-lost", "warn", "k", "--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let out_lines = Lines::new(child.stdout.take().expect("stdout"));
    let err_lines = Lines::new(child.stderr.take().expect("stderr"));
    assert_eq!(out_lines.next(), "ready");
    server.kill();
    err_lines.until("lost");
    std::fs::write(&go, b"").expect("go");
    let out = wait_output(child, SOON);
    assert_eq!(code(&out), 5);
}

#[test]
fn sigterm_and_sigint_are_forwarded_and_the_lock_released() {
    // SIGTERM: the command's own handler runs and chooses the status.
    forwarded(libc::SIGTERM, TRAP_TERM, Some("term"), 3);
    // SIGINT: the command dies of it, and dflock reports it as a shell does.
    forwarded(
        libc::SIGINT,
        "echo ready; exec sleep 30",
        None,
        128 + libc::SIGINT,
    );
}

fn forwarded(sig: i32, script: &str, said: Option<&str>, status: i32) {
    let server = Server::start();
    let addr = server.addr();
    let mut child = dflock(&addr)
        .args(["run", "fwd", "--", "sh", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let lines = Lines::new(child.stdout.take().expect("stdout"));
    assert_eq!(lines.next(), "ready");
    // SAFETY: kill(2) on our own running child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
    if let Some(said) = said {
        assert_eq!(lines.next(), said);
    }
    let out = wait_output(child, SOON);
    assert_eq!(code(&out), status, "signal {sig}: {}", stderr(&out));
    // A third client gets the lock at once.
    let out = output(dflock(&addr).args(["run", "-n", "fwd", "--", "true"]));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

#[test]
fn a_semaphore_admits_limit_holders() {
    let server = Server::start();
    let addr = server.addr();
    let sem = DistributedSemaphore::builder("slots", 2)
        .server(addr.clone())
        .build();
    let first = sem.try_acquire().expect("acquire").expect("free");
    let out = output(dflock(&addr).args(["run", "--limit", "2", "-n", "slots", "--", "true"]));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let _second = sem.try_acquire().expect("acquire").expect("free");
    let out = output(dflock(&addr).args(["run", "--limit", "2", "-n", "slots", "--", "true"]));
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    drop(first);
}

#[test]
fn listen_count_2_receives_two_emits() {
    let server = Server::start();
    let addr = server.addr();
    let listen = ["listen", "jobs.>", "--count", "2", "--timeout", "20"];
    if !server.has_signals() {
        assert_no_signals(&output(dflock(&addr).args(listen)));
        assert_no_signals(&output(dflock(&addr).args(["emit", "jobs.a", "one"])));
        return;
    }
    let listener = dflock(&addr)
        .args(listen)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    server.wait_listener("jobs.>");
    let out = output(dflock(&addr).args(["emit", "jobs.a", "one"]));
    assert_eq!(
        (code(&out), stdout(&out).trim()),
        (0, "1"),
        "{}",
        stderr(&out)
    );
    let mut emit = dflock(&addr);
    emit.args(["emit", "jobs.b", "-"]).stdin(Stdio::piped());
    let mut child = emit
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"two words\n")
        .expect("write");
    let out = wait_output(child, SOON);
    assert_eq!(
        (code(&out), stdout(&out).trim()),
        (0, "1"),
        "{}",
        stderr(&out)
    );

    let out = wait_output(listener, SOON);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "jobs.a one\njobs.b two words\n");
}

#[test]
fn listen_json_and_timeout() {
    let server = Server::start();
    let addr = server.addr();
    if !server.has_signals() {
        // The refusal, not the timeout's 122.
        let listen = ["listen", "x.*", "--json", "--timeout", "0.3"];
        assert_no_signals(&output(dflock(&addr).args(listen)));
        return;
    }
    let listener = dflock(&addr)
        .args(["listen", "x.*", "--json", "--timeout", "20", "--count", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    server.wait_listener("x.*");
    let out = output(dflock(&addr).args(["emit", "x.y", "{\"a\": 1}"]));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = wait_output(listener, SOON);
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("JSON line");
    assert_eq!(v["channel"], "x.y");
    assert_eq!(v["payload"], "{\"a\": 1}");

    let start = Instant::now();
    let out = output(dflock(&addr).args(["listen", "quiet.>", "--timeout", "0.3"]));
    assert_eq!(code(&out), 122, "{}", stderr(&out));
    assert!(start.elapsed() >= Duration::from_millis(300));
}

#[test]
fn listen_survives_a_server_restart() {
    let mut server = Server::start();
    let addr = server.addr();
    let port = server.port();
    if !server.has_signals() {
        // The refusal is an answer, not a lost connection: no reconnect.
        for extra in [&[][..], &["--no-reconnect"]] {
            let out = output(dflock(&addr).args(["listen", "restart.>"]).args(extra));
            assert_no_signals(&out);
        }
        return;
    }
    let mut listener = dflock(&addr)
        .args(["listen", "restart.>", "--count", "1", "--timeout", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let err_lines = Lines::new(listener.stderr.take().expect("stderr"));
    server.wait_listener("restart.>");
    server.kill();
    err_lines.until("lost");
    let server = Server::start_with(Opts {
        port,
        ..Opts::default()
    });
    server.wait_listener("restart.>");
    let out = output(dflock(&addr).args(["emit", "restart.now", "back"]));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = wait_output(listener, SOON);
    assert_eq!(code(&out), 0);
    assert_eq!(stdout(&out), "restart.now back\n");

    // Without reconnect, a lost connection ends listen with 121.
    let mut server = server;
    let listener = dflock(&addr)
        .args(["listen", "once.>", "--no-reconnect"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    server.wait_listener("once.>");
    server.kill();
    let out = wait_output(listener, SOON);
    assert_eq!(code(&out), 121, "{}", stderr(&out));
}

#[test]
fn stats_json_is_valid_json_and_the_table_is_readable() {
    let server = Server::start();
    let addr = server.addr();
    let _guard = hold(&server, "shown");
    let out = output(dflock(&addr).args(["stats", "--json"]));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("valid JSON");
    let locks = v["locks"].as_array().expect("locks");
    assert!(locks.iter().any(|l| l["key"] == "shown"), "{v}");
    assert!(v["connections"].as_u64().expect("connections") >= 2);

    let out = output(dflock(&addr).args(["stats"]));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains(&format!("server {addr}:")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("shown ")), "{text}");
}

#[test]
fn bad_input_exits_2_and_sends_nothing() {
    let server = Server::start();
    let addr = server.addr();
    let long = "k".repeat(257);
    let cases: &[(&[&str], &str)] = &[
        (&["run", "two words", "--", "true"], "invalid key"),
        (
            &["run", &long, "--", "true"],
            "invalid key: longer than 256",
        ),
        (&["run", "--limit", "0", "k", "--", "true"], "invalid limit"),
        (&["run", "--lease", "0", "k", "--", "true"], "invalid lease"),
        (&["run", "k"], "required"),
        (&["emit", "jobs.*", "x"], "invalid channel"),
        (&["emit", "jobs", "   "], "invalid payload"),
        (&["emit", "jobs", ""], "invalid payload"),
        (&["listen", "a.>.b"], "invalid pattern"),
        (&["listen", "a*"], "invalid pattern"),
        (&["listen", "a", "--group", " "], "invalid group"),
        (&["run", "-w", "soon", "k", "--", "true"], "not a number"),
    ];
    for (args, rule) in cases {
        let out = output(dflock(&addr).args(*args));
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(rule), "{args:?}: {}", stderr(&out));
    }
    let out = output(dflock("localhost").args(["ping"]));
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert_eq!(server.connections(), 0, "something was sent");
}

#[test]
fn a_dead_server_is_one_line_naming_the_address() {
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    for args in [
        &["run", "k", "--", "true"][..],
        &["emit", "a", "b"],
        &["listen", "a"],
        &["stats"],
    ] {
        let out = output(dflock(&addr).args(args));
        assert_eq!(code(&out), 121, "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(&addr) && err.contains("refused"), "{err}");
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{err}"
        );
    }
    let out = output(dflock(&addr).args(["ping"]));
    assert_eq!(code(&out), 121);
    assert!(stdout(&out).contains("unreachable"), "{}", stdout(&out));
}

#[test]
fn ping_reports_the_round_trip_and_generation() {
    let server = Server::start();
    let out = output(dflock(&server.addr()).args(["ping"]));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with(&server.addr()), "{text}");
    assert!(text.contains(" ms "), "{text}");
    let generation = match server.generation() {
        Generation::V1_10 => "v1.10 or older (no ping, no signals)",
        Generation::V2 => "v2 (fencing tokens, no signals)",
        // v1.14; the testkit answers the probe as v1.14 does.
        _ => "v1.14-v1.16 (signals, ping",
    };
    assert!(text.contains(generation), "{text}");
}

#[test]
fn auth_token_from_env_or_file_never_shown() {
    let secret = "s3cret-token-value";
    let server = Server::start_with(Opts {
        auth_token: Some(secret.into()),
        ..Opts::default()
    });
    let addr = server.addr();
    let out = output(
        dflock(&addr)
            .env("DFLOCKD_AUTH_TOKEN", secret)
            .args(["ping"]),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    let dir = tempdir("auth");
    let file = dir.join("token");
    std::fs::write(&file, format!("{secret}\n")).expect("token file");
    let out = output(
        dflock(&addr)
            .arg("--auth-token-file")
            .arg(&file)
            .args(["-v", "run", "k", "--", "true"]),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        !stderr(&out).contains(secret),
        "token shown: {}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("renew") || stderr(&out).contains("send"));

    let out = output(
        dflock(&addr)
            .env("DFLOCKD_AUTH_TOKEN", "wrong-token")
            .args(["-v", "stats"]),
    );
    assert_eq!(code(&out), 125, "{}", stderr(&out));
    assert!(!stderr(&out).contains("wrong-token"), "{}", stderr(&out));
}

#[test]
fn completions_and_man_page() {
    for shell in ["bash", "zsh", "fish"] {
        let out = output(dflock("127.0.0.1:1").args(["completions", shell]));
        assert_eq!(code(&out), 0, "{shell}");
        let text = stdout(&out);
        assert!(
            text.contains("dflock") && text.contains("listen"),
            "{shell}"
        );
    }
    let out = output(dflock("127.0.0.1:1").args(["man"]));
    assert_eq!(code(&out), 0);
    assert!(stdout(&out).contains(".TH dflock"), "{}", stdout(&out));
    let out = output(dflock("127.0.0.1:1").args(["--help"]));
    assert!(stdout(&out).contains("124"), "exit codes in --help");
}

/// A scripted v2-like server (fencing tokens, `ping`, no signals): the
/// command gets DFLOCKD_FENCE.
#[test]
fn a_fencing_server_gives_the_command_its_fence() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || {
                let mut write = stream.try_clone().expect("clone");
                let mut lines = BufReader::new(stream).lines();
                while let (Some(Ok(cmd)), Some(Ok(_key)), Some(Ok(_arg))) =
                    (lines.next(), lines.next(), lines.next())
                {
                    let reply = match cmd.as_str() {
                        "l" => "ok 000000000000002a0123456789abcdef 33",
                        "n" => "ok 33",
                        "ping" | "r" => "ok",
                        _ => "error",
                    };
                    if writeln!(write, "{reply}").is_err() {
                        return;
                    }
                }
            });
        }
    });
    let out = output(dflock(&addr).args(["run", "f", "--", "sh", "-c", "echo $DFLOCKD_FENCE"]));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "42");
    let out = output(dflock(&addr).args(["ping"]));
    assert!(
        stdout(&out).contains("v2 (fencing tokens"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_command_that_ignores_sigterm_gets_sigkill_after_kill_after() {
    let mut server = Server::start();
    let addr = server.addr();
    let mut child = dflock(&addr)
        .args([
            "-q",
            "run",
            "--kill-after",
            "0.5",
            "stubborn",
            "--",
            "sh",
            "-c",
        ])
        .arg("trap '' TERM; echo ready; while :; do sleep 0.05; done")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let lines = Lines::new(child.stdout.take().expect("stdout"));
    assert_eq!(lines.next(), "ready");
    let killed = Instant::now();
    server.kill();
    let out = wait_output(child, SOON);
    assert_eq!(code(&out), 120, "{}", stderr(&out));
    assert!(killed.elapsed() >= Duration::from_millis(500));
    // -q: the error only, no warnings.
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!err.contains("warning"), "{err}");
}

#[test]
fn a_signal_while_waiting_gives_up_the_place_in_the_queue() {
    let server = Server::start();
    let addr = server.addr();
    let guard = hold(&server, "queue");
    let child = dflock(&addr)
        .args(["run", "queue", "--", "true"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_stats(&server, "a waiter", |s| lock_waiters(s, "queue") == 1);
    // SAFETY: kill(2) on our own running child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = wait_output(child, SOON);
    assert_eq!(code(&out), 128 + libc::SIGTERM, "{}", stderr(&out));
    if server.generation() == Generation::V1_10 {
        // v1.10.0 reads nothing from a connection blocked in `l`, so it
        // sees the close only once it answers: the place stays queued
        // until the holder lets go. The key is then granted to the closed
        // connection, whose cleanup frees it at once (had dflock kept the
        // connection open, the key would stay held for the lease).
        assert_eq!(lock_waiters(&server.stats(), "queue"), 1);
        guard.release().expect("release");
        wait_stats(&server, "queue free", |s| {
            s["locks"]
                .as_array()
                .is_some_and(|l| !l.iter().any(|l| l["key"] == "queue"))
        });
        let out = output(dflock(&addr).args(["run", "-n", "queue", "--", "true"]));
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    } else {
        wait_stats(&server, "no waiter", |s| lock_waiters(s, "queue") == 0);
    }
}

#[test]
fn keys_are_routed_by_crc32_over_the_server_list() {
    let a = Server::start();
    let b = Server::start();
    let (a_addr, b_addr) = (a.addr(), b.addr());
    // crc32("alpha") = 0xD0E0396A: index 0 of two servers.
    assert_eq!(crc32("alpha") % 2, 0);
    let _guard = DistributedLock::builder("alpha")
        .servers([a_addr.clone(), b_addr.clone()])
        .build()
        .try_acquire()
        .expect("acquire")
        .expect("free");
    let busy = |servers: &[&str]| {
        let mut cmd = dflock_bare();
        for s in servers {
            cmd.args(["-s", s]);
        }
        code(&output(cmd.args(["run", "-n", "alpha", "--", "true"])))
    };
    assert_eq!(busy(&[&a_addr, &b_addr]), 1);
    assert_eq!(busy(&[&b_addr, &a_addr]), 0);
    let out = output(
        dflock_bare()
            .env("DFLOCKD_SERVERS", format!("{a_addr},{b_addr}"))
            .args(["run", "-n", "alpha", "--", "true"]),
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
}

#[test]
fn listen_hears_every_server_and_emit_routes_the_channel() {
    let a = Server::start();
    let b = Server::start();
    let servers = format!("{},{}", a.addr(), b.addr());
    if !a.has_signals() {
        let with_both =
            |args: &[&str]| output(dflock_bare().env("DFLOCKD_SERVERS", &servers).args(args));
        assert_no_signals(&with_both(&["listen", "multi.>", "--count", "2"]));
        assert_no_signals(&with_both(&["emit", "multi.0", "hi"]));
        return;
    }
    let listener = dflock_bare()
        .env("DFLOCKD_SERVERS", &servers)
        .args(["listen", "multi.>", "--count", "2", "--timeout", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    a.wait_listener("multi.>");
    b.wait_listener("multi.>");
    let channel_on = |i: u32| {
        (0..)
            .map(|n| format!("multi.{n}"))
            .find(|c| crc32(c) % 2 == i)
            .expect("a channel")
    };
    for (i, server) in [(0, &a), (1, &b)] {
        let channel = channel_on(i);
        let out = output(
            dflock_bare()
                .env("DFLOCKD_SERVERS", &servers)
                .args(["emit", &channel, "hi"]),
        );
        assert_eq!(
            (code(&out), stdout(&out).trim()),
            (0, "1"),
            "{}",
            stderr(&out)
        );
        // The emit went to the server the channel routes to.
        let _ = server;
    }
    let out = wait_output(listener, SOON);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!("{} hi\n{} hi\n", channel_on(0), channel_on(1))
    );
}

#[test]
fn tls_is_verified_by_default() {
    let dir = tempdir("tls");
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("params");
    let cert = params.signed_by(&key, &issuer).expect("cert");
    let (ca, cert_path, key_path) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&ca, ca_cert.pem()).expect("write");
    std::fs::write(&cert_path, cert.pem()).expect("write");
    std::fs::write(&key_path, key.serialize_pem()).expect("write");
    let server = Server::start_with(Opts {
        tls: Some((cert_path, key_path)),
        ..Opts::default()
    });
    let addr = server.addr();
    let ca = ca.to_string_lossy().into_owned();

    let ok = |args: &[&str]| {
        let out = output(dflock(&addr).args(args));
        assert_eq!(code(&out), 0, "{args:?}: {}", stderr(&out));
    };
    ok(&["--ca", &ca, "ping"]);
    ok(&[
        "--ca",
        &ca,
        "--server-name",
        "localhost",
        "run",
        "k",
        "--",
        "true",
    ]);
    ok(&["--insecure-skip-verify", "stats", "--json"]);
    let emit = output(dflock(&addr).args(["--ca", &ca, "emit", "t.x", "y"]));
    if server.generation().has_signals() {
        assert_eq!(code(&emit), 0, "{}", stderr(&emit));
    } else {
        // The server's own `error` came back over the verified TLS.
        assert_no_signals(&emit);
    }

    let fails = |args: &[&str], needle: &str| {
        let out = output(dflock(&addr).args(args));
        assert_eq!(code(&out), 121, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    };
    // Mozilla's roots do not know the test CA.
    fails(&["--tls", "run", "k", "--", "true"], "TLS");
    fails(
        &["--ca", &ca, "--server-name", "other.example", "stats"],
        "TLS",
    );
    // Plain TCP to a TLS server.
    fails(
        &["--connect-timeout", "2", "--io-timeout", "2", "stats"],
        &addr,
    );
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("dflock-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
