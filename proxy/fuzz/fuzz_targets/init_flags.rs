//! Fuzzes `braid_proxy::fuzzing::init_flags` (its checks are documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| braid_proxy::fuzzing::init_flags(data));
