//! Interoperability with Go's `crypto/tls` (what the real dflockd uses for
//! `--tls-cert`/`--tls-key`), default server configuration: a minimal
//! dflockd-speaking Go server is built from the standard library at run
//! time. Skipped (with a message) when no `go` toolchain is installed.
//!
//! Checks the negotiated parameters documented in the README: embedded-tls
//! gets TLS 1.3 / `TLS_AES_128_GCM_SHA256` / secp256r1; rustls gets TLS 1.3 /
//! `TLS_AES_128_GCM_SHA256` / X25519.
#![cfg(all(feature = "tls", feature = "rustls", feature = "tokio"))]

mod tls_support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use dflockd_client::tls::{self, TlsVerify};
use dflockd_client::tls_rustls::RustlsConnector;
use dflockd_client::tls_rustls::rustls::{NamedGroup, ProtocolVersion};
use dflockd_client::tokio::{ConnectOptions, connect_tls};
use dflockd_client::{Connection, Kind};
use embedded_io_adapters::tokio_1::FromTokio;
use rand_core::OsRng;
use tls_support::{SERVER_NAME, T, pki};

const GO_SERVER: &str = r#"package main

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"os"
	"strings"
)

func main() {
	cert, err := tls.LoadX509KeyPair(os.Args[1], os.Args[2])
	if err != nil {
		panic(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		panic(err)
	}
	fmt.Println(ln.Addr().String())
	n := 0
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		n++
		go serve(c.(*tls.Conn), n)
	}
}

func serve(c *tls.Conn, n int) {
	defer c.Close()
	if err := c.Handshake(); err != nil {
		fmt.Println("handshake-error", err)
		return
	}
	st := c.ConnectionState()
	fmt.Printf("session version=%x suite=%s\n", st.Version, tls.CipherSuiteName(st.CipherSuite))
	r := bufio.NewReader(c)
	for {
		cmd, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if _, err := r.ReadString('\n'); err != nil {
			return
		}
		if _, err := r.ReadString('\n'); err != nil {
			return
		}
		switch strings.TrimSpace(cmd) {
		case "l":
			fmt.Fprintf(c, "ok %032x 33\n", n)
		case "r", "ping":
			fmt.Fprint(c, "ok\n")
		default:
			fmt.Fprint(c, "error\n")
		}
	}
}
"#;

struct GoServer {
    child: Child,
    addr: String,
    lines: mpsc::Receiver<String>,
}

impl Drop for GoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn go_server(p: &tls_support::ServerPki) -> Option<GoServer> {
    if Command::new("go").arg("version").output().is_err() {
        eprintln!("SKIPPED: no `go` toolchain; Go crypto/tls interop not checked");
        return None;
    }
    let src = p.cert.with_file_name("server.go");
    let bin = p.cert.with_file_name("go-dflockd-tls");
    std::fs::write(&src, GO_SERVER).unwrap();
    // Built, then run directly, so that killing it stops the server itself.
    let built = Command::new("go")
        .arg("build")
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .env("GO111MODULE", "off")
        .env("GOFLAGS", "")
        .status()
        .expect("go build");
    assert!(built.success(), "building the Go test server failed");
    let mut child = Command::new(&bin)
        .arg(&p.cert)
        .arg(&p.key)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the Go test server");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let addr = rx
        .recv_timeout(T)
        .expect("the Go server prints its address");
    Some(GoServer {
        child,
        addr,
        lines: rx,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_crypto_tls_interop() {
    let p = pki();
    let Some(go) = go_server(&p) else { return };

    // embedded-tls: TLS 1.3, AES-128-GCM, P-256 (the only group it offers).
    let mut read = vec![0; tls::READ_RECORD_BUFFER];
    let mut write = vec![0; tls::WRITE_RECORD_BUFFER];
    let tcp = tokio::net::TcpStream::connect(&go.addr).await.unwrap();
    let verify = TlsVerify::Ca {
        ca_der: &p.ca_der,
        server_name: SERVER_NAME,
    };
    let stream = tokio::time::timeout(
        T,
        tls::handshake(FromTokio::new(tcp), &mut read, &mut write, verify, OsRng),
    )
    .await
    .expect("no hang")
    .expect("embedded-tls handshake with Go crypto/tls");
    let mut conn: Connection<_, 256> = Connection::new(stream);
    let g = tokio::time::timeout(T, conn.acquire(Kind::Lock, "go", 0, None))
        .await
        .expect("no hang")
        .unwrap()
        .expect("granted");
    tokio::time::timeout(T, conn.release(Kind::Lock, "go", &g.token))
        .await
        .expect("no hang")
        .unwrap();
    let session = go.lines.recv_timeout(T).expect("Go reports the session");
    assert_eq!(session, "session version=304 suite=TLS_AES_128_GCM_SHA256");

    // rustls: TLS 1.3, AES-128-GCM (Go's preference), X25519.
    let connector = RustlsConnector::from_ca_der(&p.ca_der, SERVER_NAME).unwrap();
    let opts = ConnectOptions {
        connect_timeout: T,
        ..Default::default()
    };
    let mut conn = connect_tls::<256, 0>(&go.addr, &opts, &connector)
        .await
        .expect("rustls handshake with Go crypto/tls");
    tokio::time::timeout(T, conn.ping())
        .await
        .expect("no hang")
        .unwrap();
    let (_, state) = conn.transport_mut().inner().get_ref();
    assert_eq!(state.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    assert_eq!(
        state.negotiated_key_exchange_group().map(|g| g.name()),
        Some(NamedGroup::X25519)
    );
    let session = go.lines.recv_timeout(T).expect("Go reports the session");
    assert_eq!(session, "session version=304 suite=TLS_AES_128_GCM_SHA256");
}
