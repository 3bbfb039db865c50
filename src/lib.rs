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
//! * [`runtime`] holds the feature-gated host adapters (`tokio`, `std`).
//!
//! # Features
//!
//! | feature | what it adds |
//! |---|---|
//! | *(none)* | the `no_std` core: protocol, connection, time boundary |
//! | `std` | blocking transport over `std::net::TcpStream` ([`runtime::blocking`]) |
//! | `tokio` | tokio transport and timer ([`runtime::tokio`]) |
//! | `wasi` | WASI 0.2 transport, timer, connect and RNG over wstd (`runtime::wasi`; wasm32-wasip2 only, rustc 1.91+) |
//! | `serde` | a typed [`stats::Stats`] struct parsed from the stats JSON (host only) |
//! | `log` | log through the `log` crate |
//! | `defmt` | log through `defmt` and derive `defmt::Format` (firmware) |
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
pub mod runtime;
pub mod signal;
#[cfg(feature = "serde")]
pub mod stats;
#[cfg(any(feature = "std", test))]
pub mod testing;
pub mod time;
#[cfg(feature = "tls")]
pub mod tls;

pub use conn::{Connection, Enqueued, MIN_LINE_BUF, Result};
pub use error::{Error, LeaderAddr, MAX_LEADER_ADDR, STATUS_TEXT_CAP, ServerError, StatusText};
pub use protocol::{Fence, Grant, InvalidArgument, Kind, Signal, Token};

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
