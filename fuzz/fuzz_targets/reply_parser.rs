//! libFuzzer entry for `props::reply_parser` (see fuzz/props/reply_parser.rs for the properties).
#![no_main]

#[global_allocator]
static ALLOC: props::alloc::CountingAlloc = props::alloc::CountingAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| props::reply_parser::run(data));
