//! HTTP leaf pieces every layer may use: bodies (`body`), path normalisation (`path`) and the
//! pooled upstream client (`upstream`). Nothing here knows about rules, secrets or policy.

pub mod body;
pub mod encoding;
pub mod path;
pub mod upstream;
