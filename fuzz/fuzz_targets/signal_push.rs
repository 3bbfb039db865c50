//! libFuzzer entry for `props::signal_push` (see fuzz/props/signal_push.rs for the properties).
#![no_main]

#[global_allocator]
static ALLOC: props::alloc::CountingAlloc = props::alloc::CountingAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| props::signal_push::run(data));
