//! libFuzzer entry point: see `trellis_fuzz::check_jwt`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trellis_fuzz::check_jwt(data));
