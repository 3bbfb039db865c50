//! libFuzzer entry for `props::tls_handshake` (see fuzz/props/tls_handshake.rs for the properties).
#![no_main]

#[global_allocator]
static ALLOC: props::alloc::CountingAlloc = props::alloc::CountingAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| props::tls_handshake::run(data));
