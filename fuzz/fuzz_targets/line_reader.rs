//! libFuzzer entry for `props::line_reader` (see fuzz/props/line_reader.rs for the properties).
#![no_main]

#[global_allocator]
static ALLOC: props::alloc::CountingAlloc = props::alloc::CountingAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| props::line_reader::run(data));
