//! libFuzzer entry for `props::testkit_request` (see fuzz/props/testkit_request.rs for the properties).
#![no_main]

#[global_allocator]
static ALLOC: props::alloc::CountingAlloc = props::alloc::CountingAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| props::testkit_request::run(data));
