#![no_main]
//! `graphql`: see `rhone_fuzz_targets::graphql`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| rhone_fuzz_targets::graphql(data));
