#![no_main]
//! `classify`: see `rhone_fuzz_targets::classify`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| rhone_fuzz_targets::classify(data));
