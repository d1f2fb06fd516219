#![no_main]
//! `vango`: see `rhone_fuzz_targets::vango`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| rhone_fuzz_targets::vango(data));
