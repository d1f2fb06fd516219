#![no_main]
//! `migration`: see `rhone_fuzz_targets::migration`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| rhone_fuzz_targets::migration(data));
