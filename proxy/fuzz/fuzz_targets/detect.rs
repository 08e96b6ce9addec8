//! Fuzzes `braid_proxy::fuzzing::detect_protocol` (its checks are documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| braid_proxy::fuzzing::detect_protocol(data));
