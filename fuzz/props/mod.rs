//! The properties every fuzz target checks, shared by the libFuzzer targets
//! in `fuzz/fuzz_targets/` and by `tests/fuzz_regressions.rs`, which replays
//! the committed seeds and every saved crash input on stable in `cargo test`.
//!
//! Each target function takes the fuzzer's bytes and panics when a property
//! fails: a panic is a crash for libFuzzer and a failure for the test.

pub mod alloc;
pub mod cluster_redirect;
/// The testkit's request parser, compiled in from its source (std only), so
/// the fuzz build needs none of the testkit's server dependencies.
#[allow(dead_code, unreachable_pub)]
#[path = "../../testkit/src/protocol.rs"]
pub mod kit_protocol;
pub mod line_reader;
pub mod reply_parser;
pub mod server_model;
pub mod signal_push;
pub mod testkit_request;
pub mod tls_handshake;
pub mod validate_args;
pub mod wire;

/// A target's property check: panics when a property fails.
pub type Check = fn(&[u8]);

/// Every target: its name (as in `fuzz/Cargo.toml`) and its property check.
pub const TARGETS: &[(&str, Check)] = &[
    ("reply_parser", reply_parser::run),
    ("line_reader", line_reader::run),
    ("signal_push", signal_push::run),
    ("validate_args", validate_args::run),
    ("testkit_request", testkit_request::run),
    ("tls_handshake", tls_handshake::run),
    ("cluster_redirect", cluster_redirect::run),
];
