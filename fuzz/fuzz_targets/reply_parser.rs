//! Any bytes through every reply shape and the push parser: no panic.
#![no_main]

use dflockd_client::protocol::{Expect, Token, parse_push, parse_reply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    for expect in [
        Expect::Ok,
        Expect::Grant,
        Expect::Enqueue,
        Expect::Remaining,
        Expect::Count,
        Expect::Stats,
    ] {
        let _ = parse_reply(line, expect);
    }
    let _ = parse_push(line);
    let _ = Token::parse(line);
});
