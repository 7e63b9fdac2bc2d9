#![no_main]
//! See `om_secrets_proxy::fuzzing::write_rewrite` for what this target asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| om_secrets_proxy::fuzzing::write_rewrite(data));
