//! A `no_std`, heap-free client for the [dflockd] distributed lock server.
//!
//! One protocol core runs unchanged on microcontrollers (embassy-net), in
//! WebAssembly (WASI 0.2) and on hosts (std threads and tokio):
//!
//! * [`protocol`] encodes every request, parses every reply line into typed
//!   values and validates arguments byte for byte as the server does. Pure
//!   functions: no IO, no allocation, no panics.
//! * [`Connection`] drives the protocol over any
//!   [`embedded_io_async`] transport with a fixed line buffer, exactly one
//!   request in flight, and `sig` pushes kept apart from replies.
//! * [`signal`] is pub/sub on the core: pattern checks, a bounded signal
//!   queue with a drop counter, and a `ping` heartbeat.
//! * [`time`] is the time boundary: a [`Timer`](time::Timer) the caller
//!   supplies.
//! * The feature-gated adapters, one module per runtime with the same
//!   names in each: `tokio` and `blocking` (locks, semaphores, signals,
//!   clusters, a `Client` handle), `wasi` and `embassy` (transport, timer,
//!   connect), `tls_rustls` (host TLS).
//!
//! # Features
//!
//! | feature | what it adds |
//! |---|---|
//! | *(none)* | the `no_std` core: protocol, connection, locks, signals, routing, time boundary |
//! | `std` | blocking transport over `std::net::TcpStream` (`blocking`), blocking locks and signals |
//! | `tokio` | tokio transport and timer (`tokio`), tokio locks and signals (implies `std`) |
//! | `tls` | TLS 1.3 over any transport with embedded-tls (`tls`; `no_std`, heap-free, verifies against a CA by default) |
//! | `rustls` | host TLS with rustls (ring) and full X.509 validation (`tls_rustls`) for tokio and blocking (implies `std`) |
//! | `webpki-roots` | Mozilla's root certificates for `rustls` (`RustlsConnector::webpki_roots`) |
//! | `embassy-time` | embassy-time as the core's timer (`embassy::EmbassyTimer`; firmware, or a host with embassy-time's std driver; not wasm) |
//! | `embassy-net` | an embassy-net TCP connect with a dial timeout (`embassy::connect`; implies `embassy-time`) |
//! | `wasi` | WASI 0.2 transport, timer, connect and RNG over wstd (`wasi`; wasm32-wasip2 only, rustc 1.91+) |
//! | `serde` | a typed `stats::Stats` struct parsed from the stats JSON (host only) |
//! | `log` | log through the `log` crate |
//! | `defmt` | log through `defmt` and derive `defmt::Format` (firmware) |
//! | `testing` | in-memory transports for tests, fuzzing and benchmarks (`testing::Scripted`, `testing::Responder`; implies `std`) |
//!
//! `tests/feature_table.rs` checks that every Cargo feature has a row here
//! and in the README.
//!
//! `log` and `defmt` are mutually exclusive. Default features pull no std,
//! tokio or defmt into a firmware build.
//!
//! [dflockd]: https://github.com/mtingers/dflockd
#![no_std]
#![deny(missing_docs)]
#![warn(clippy::large_futures)]

#[cfg(any(
    feature = "std",
    test,
    all(feature = "wasi", target_os = "wasi", target_env = "p2")
))]
extern crate std;

#[macro_use]
mod fmt;

pub mod cluster;
mod conn;
mod error;
pub mod lock;
pub mod protocol;
pub mod routing;
mod runtime;
pub mod signal;
#[cfg(feature = "serde")]
pub mod stats;
#[cfg(any(feature = "testing", test))]
pub mod testing;
pub mod time;
#[cfg(feature = "tls")]
pub mod tls;

pub use conn::{Connection, Enqueued, MIN_LINE_BUF, Result};
pub use error::{
    ConfigError, Error, LeaderAddr, MAX_LEADER_ADDR, STATUS_TEXT_CAP, ServerError, StatusText,
};
pub use protocol::{Fence, Grant, InvalidArgument, Kind, Signal, Token};

#[cfg(feature = "std")]
pub use runtime::blocking;
#[cfg(feature = "embassy-time")]
pub use runtime::embassy;
#[cfg(feature = "rustls")]
pub use runtime::host::rustls as tls_rustls;
#[cfg(feature = "tokio")]
pub use runtime::tokio;
#[cfg(all(feature = "wasi", target_os = "wasi", target_env = "p2"))]
pub use runtime::wasi;

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
