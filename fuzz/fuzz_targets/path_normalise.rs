#![no_main]
//! See `om_secrets_proxy::fuzzing::path_normalise` for what this target asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| om_secrets_proxy::fuzzing::path_normalise(data));
