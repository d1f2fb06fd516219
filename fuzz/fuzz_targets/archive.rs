#![no_main]
//! `archive`: see `rhone_fuzz_targets::archive`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| rhone_fuzz_targets::archive(data));
