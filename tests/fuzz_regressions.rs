//! The fuzz targets' properties on stable, in every `cargo test`: each
//! committed seed (`fuzz/seeds/<target>/`) and each input that once crashed
//! a target (`tests/fuzz-regressions/<target>/`, saved there by
//! `scripts/fuzz`) goes through the same checks as under libFuzzer
//! (`fuzz/props/`).
#![cfg(feature = "tls")]

#[allow(dead_code)]
#[path = "../fuzz/props/mod.rs"]
mod props;

use std::path::Path;

#[global_allocator]
static ALLOC: props::alloc::CountingAlloc = props::alloc::CountingAlloc;

/// Runs every file of `fuzz/seeds/<target>` and `tests/fuzz-regressions/<target>`
/// through the target; returns how many ran.
fn replay(target: &str) -> usize {
    let run = props::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, run)| *run)
        .unwrap_or_else(|| panic!("no target {target}"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut ran = 0;
    for dir in ["fuzz/seeds", "tests/fuzz-regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        let mut files: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).expect("read input");
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target} fails on {}", file.display());
            ran += 1;
        }
    }
    ran
}

macro_rules! targets {
    ($($name:ident),*) => {$(
        #[test]
        fn $name() {
            let ran = replay(stringify!($name));
            println!("{}: {ran} inputs", stringify!($name));
        }
    )*};
}

targets!(
    reply_parser,
    line_reader,
    signal_push,
    validate_args,
    testkit_request,
    tls_handshake,
    cluster_redirect
);

/// Every target is replayed here.
#[test]
fn every_target_is_listed() {
    let names: Vec<&str> = props::TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "reply_parser",
            "line_reader",
            "signal_push",
            "validate_args",
            "testkit_request",
            "tls_handshake",
            "cluster_redirect"
        ]
    );
}
