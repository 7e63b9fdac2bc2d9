//! HTTP leaf pieces every layer may use: bodies (`body`), path normalisation (`path`) and the
//! pooled upstream client (`upstream`, with `pool` for a plain-HTTP upstream). Nothing here
//! knows about rules, secrets or policy.

pub mod body;
pub mod encoding;
pub mod path;
pub(crate) mod pool;
pub mod upstream;
