//! libFuzzer entry for `props::cluster_redirect` (see fuzz/props/cluster_redirect.rs for the properties).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| props::cluster_redirect::run(data));
