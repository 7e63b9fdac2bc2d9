#![no_main]
//! See `om_secrets_proxy::fuzzing::rule_match` for what this target asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| om_secrets_proxy::fuzzing::rule_match(data));
