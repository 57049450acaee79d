//! libFuzzer entry point: authorization path and principal matching, see `trellis_fuzz::check_matching`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trellis_fuzz::check_matching(data));
