//! libFuzzer entry for `props::validate_args` (see fuzz/props/validate_args.rs for the properties).
#![no_main]

#[global_allocator]
static ALLOC: props::alloc::CountingAlloc = props::alloc::CountingAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| props::validate_args::run(data));
