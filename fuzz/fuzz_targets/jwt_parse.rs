#![no_main]
//! See `om_secrets_proxy::fuzzing::jwt_parse` for what this target asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| om_secrets_proxy::fuzzing::jwt_parse(data));
