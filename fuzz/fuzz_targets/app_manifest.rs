#![no_main]
//! `app_manifest`: see `rhone_fuzz_targets::app_manifest`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| rhone_fuzz_targets::app_manifest(data));
