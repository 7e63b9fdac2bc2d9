//! Body rewriting: secrets out of written entities (`strip`, applied to the entity a write
//! produces: `patch` computes it for PATCH, `spans` edits create bodies byte-exactly), the
//! write invariant checked on what leaves (`guard`), and per-caller views of answers
//! (`response`, which finds secrets by the shape of what holds them, `structure`, and refuses
//! what it cannot read, `refusal`). `json` holds the parsers and the stack-safe writer; `owner` says which entity a write's
//! secrets belong to and under which id root they live.

pub mod guard;
pub mod json;
pub mod mask_only;
pub mod net_scan;
pub(crate) mod owner;
pub mod patch;
pub use crate::refusal;
pub mod response;
pub mod scan;
pub mod spans;
pub mod strip;
pub mod structure;

use serde_json::Value;

/// The server's mask (9 asterisks); the SDK's 10-asterisk mask means the same on writes.
pub(crate) const MASK: &str = "*********";
pub(crate) const SDK_MASK: &str = "**********";
pub(crate) const REFERENCE_PREFIX: &str = "secret:";

/// What a caller put in a secret field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FieldValue {
    Plain(String),
    Mask,
    Reference(String),
    Fernet(String),
    Clear,
}

/// Classifies a secret field's value; `None` for objects and arrays (not a secret leaf).
pub(crate) fn classify(v: &Value) -> Option<FieldValue> {
    match v {
        Value::Null => Some(FieldValue::Clear),
        Value::String(s) if s.is_empty() => Some(FieldValue::Clear),
        Value::String(s) if s == MASK || s == SDK_MASK => Some(FieldValue::Mask),
        Value::String(s) => {
            if let Some(id) = s.strip_prefix(REFERENCE_PREFIX) {
                Some(FieldValue::Reference(id.to_string()))
            } else if s.starts_with(crate::secrets::fernet::PREFIX) {
                Some(FieldValue::Fernet(s.clone()))
            } else {
                Some(FieldValue::Plain(s.clone()))
            }
        }
        Value::Bool(b) => Some(FieldValue::Plain(b.to_string())),
        Value::Number(n) => Some(FieldValue::Plain(n.to_string())),
        Value::Array(_) | Value::Object(_) => None,
    }
}
