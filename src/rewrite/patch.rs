//! PATCH bodies judged by the entity they produce: the media type decides how the body is read
//! (exactly, parameters ignored as Jersey ignores them), the caller's whole patch is applied
//! locally to the entity as the upstream holds it (RFC 6902 / RFC 7386), and what goes upstream
//! is a JSON Patch computed from that entity to the stripped result. The caller's own op
//! values are never forwarded.

use http::{header, HeaderMap};
use json_patch::{Patch, PatchOperation};
use serde_json::Value;

use crate::error::GatewayError;
use crate::rules::jsonpath::Step;

/// What a body's `Content-Type` says it is (type and subtype only, lower-cased).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Media {
    /// `application/json-patch+json`: an RFC 6902 array of operations.
    JsonPatch,
    /// `application/merge-patch+json`: an RFC 7386 object.
    MergePatch,
    /// `application/json` (or `+json` types other than the two above).
    Json,
    /// No Content-Type.
    Missing,
    /// Anything else.
    Other,
}

impl Media {
    pub(crate) fn of(headers: &HeaderMap) -> Media {
        let Some(v) = headers.get(header::CONTENT_TYPE) else {
            return Media::Missing;
        };
        let Ok(v) = v.to_str() else {
            return Media::Other;
        };
        let essence = v
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/json-patch+json" => Media::JsonPatch,
            "application/merge-patch+json" => Media::MergePatch,
            "application/json" => Media::Json,
            e if e.starts_with("application/") && e.ends_with("+json") => Media::Json,
            _ => Media::Other,
        }
    }
}

/// A parsed PATCH body.
#[derive(Debug, Clone)]
pub(crate) enum PatchBody {
    Json(Patch),
    Merge(Value),
}

impl PatchBody {
    /// Reads a PATCH body by its declared media type: a JSON Patch must be an array of
    /// well-formed operations, a merge patch an object; any other type is 415.
    pub(crate) fn parse(media: Media, doc: Value) -> Result<PatchBody, GatewayError> {
        match media {
            Media::JsonPatch => {
                if !doc.is_array() {
                    return Err(GatewayError::BadRequest(
                        "an application/json-patch+json body must be an array of operations".into(),
                    ));
                }
                // From text, not from the Value: serde_json's Value deserializer refuses
                // numbers beyond u64 under `arbitrary_precision`.
                serde_json::from_str::<Patch>(&doc.to_string())
                    .map(PatchBody::Json)
                    .map_err(|_| {
                        GatewayError::BadRequest(
                        "malformed JSON Patch: each operation needs a known \"op\", a \"path\" \
                         that is a JSON Pointer, and \"value\" or \"from\" where RFC 6902 asks"
                            .into(),
                    )
                    })
            }
            Media::MergePatch => {
                if !doc.is_object() {
                    return Err(GatewayError::BadRequest(
                        "an application/merge-patch+json body must be a JSON object".into(),
                    ));
                }
                Ok(PatchBody::Merge(doc))
            }
            _ => Err(GatewayError::UnsupportedMediaType(
                "PATCH takes application/json-patch+json or application/merge-patch+json".into(),
            )),
        }
    }
}

/// Where the secrets of a document are, for a given rule (given by the caller as a function so
/// this module stays free of rule details).
pub(crate) type SecretLocations<'a> = &'a dyn Fn(&Value) -> Vec<Vec<Step>>;

/// Applies `body` to a copy of `current`. A `test` op that compares anything holding or
/// inside a secret field, or that follows a `move`/`copy` out of one, is refused with one
/// fixed answer (422) whatever the value, so no guess can be confirmed.
pub(crate) fn apply(
    current: &Value,
    body: &PatchBody,
    secrets: SecretLocations<'_>,
) -> Result<Value, GatewayError> {
    let mut doc = current.clone();
    match body {
        PatchBody::Merge(m) => {
            json_patch::merge(&mut doc, m);
            Ok(doc)
        }
        PatchBody::Json(patch) => {
            let origin = secrets(current);
            let mut moved_secret = false;
            for (n, op) in patch.0.iter().enumerate() {
                match op {
                    PatchOperation::Test(t) => {
                        let at = steps_of(&doc, t.path.as_str());
                        let mut spots = secrets(&doc);
                        spots.extend(origin.iter().cloned());
                        // Text that reads masked (a URL with a password, `password=...`,
                        // a reference) is compared no more than a secret field is.
                        let hidden = crate::rules::jsonpath::get(&doc, &at).is_some_and(hides_text);
                        let touches = moved_secret
                            || hidden
                            || spots.iter().any(|s| related(s, &at))
                            || !secrets_in_value(&at, &t.value, secrets).is_empty();
                        if touches {
                            return Err(GatewayError::Unprocessable(
                                "JSON Patch test operations may not compare secret fields".into(),
                            ));
                        }
                    }
                    PatchOperation::Move(m) => {
                        let from = steps_of(&doc, m.from.as_str());
                        moved_secret |= origin.iter().any(|s| related(s, &from));
                    }
                    PatchOperation::Copy(c) => {
                        let from = steps_of(&doc, c.from.as_str());
                        moved_secret |= origin.iter().any(|s| related(s, &from));
                    }
                    _ => {}
                }
                let carried = carried_secrets(&doc, op, secrets);
                json_patch::patch_unsafe(&mut doc, std::slice::from_ref(op)).map_err(|e| {
                    GatewayError::BadRequest(format!(
                        "JSON Patch operation {n} cannot be applied to the entity: {}",
                        e.kind
                    ))
                })?;
                if !carried.is_empty() && carried.iter().any(|to| !secrets(&doc).contains(to)) {
                    return Err(GatewayError::Unprocessable(format!(
                        "JSON Patch operation {n} would carry a secret field's value into a field that is not secret"
                    )));
                }
            }
            Ok(doc)
        }
    }
}

/// Where the secret values a `move` or `copy` takes along land: for each secret field at or
/// below `from` (or holding it), the same place below `path`. Every one of them must be a
/// secret field once the op is applied, or the op would put a value (plain, a reference, a
/// token) where it is forwarded and shown as it is.
fn carried_secrets(
    doc: &Value,
    op: &PatchOperation,
    secrets: SecretLocations<'_>,
) -> Vec<Vec<Step>> {
    let (from, target) = match op {
        PatchOperation::Move(m) => {
            // A move removes first: the target is read on the document without `from`.
            let mut without = doc.clone();
            let removal = json_patch::RemoveOperation {
                path: m.from.clone(),
            };
            let _ = json_patch::patch_unsafe(&mut without, &[PatchOperation::Remove(removal)]);
            (
                steps_of(doc, m.from.as_str()),
                steps_of(&without, m.path.as_str()),
            )
        }
        PatchOperation::Copy(c) => (
            steps_of(doc, c.from.as_str()),
            steps_of(doc, c.path.as_str()),
        ),
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    for s in secrets(doc) {
        if s.starts_with(&from) {
            let mut to = target.clone();
            to.extend_from_slice(&s[from.len()..]);
            out.push(to);
        } else if from.starts_with(&s) {
            out.push(target.clone());
        }
    }
    out
}

/// For a body shaped as a JSON Patch (an array of objects with an `op`), each op's `value`
/// placed at its `path` in a document of its own, so that what a route that does not expect a
/// patch receives can be judged as the entity fields the patch would set. `None` for other bodies.
pub(crate) fn placed_values(body: &Value) -> Option<Vec<Value>> {
    let ops = body.as_array()?;
    if ops.is_empty() || !ops.iter().all(|o| o.get("op").is_some()) {
        return None;
    }
    let mut out = Vec::new();
    for op in ops {
        let (Some(path), Some(value)) = (op.get("path").and_then(Value::as_str), op.get("value"))
        else {
            continue;
        };
        let steps: Vec<Step> = match jsonptr::Pointer::parse(path) {
            Ok(p) => p
                .tokens()
                .map(|t| {
                    let t = t.decoded();
                    match t.parse::<usize>() {
                        Ok(i) if i < 1024 => Step::Index(i),
                        _ => Step::Key(t.to_string()),
                    }
                })
                .collect(),
            // Not a pointer: judged as a key of that name.
            Err(_) => vec![Step::Key(path.to_string())],
        };
        out.push(wrap(&steps, value.clone()));
    }
    Some(out)
}

/// `value` as it would sit at `at` in an otherwise empty document.
fn wrap(at: &[Step], value: Value) -> Value {
    let mut wrapped = value;
    for step in at.iter().rev() {
        wrapped = match step {
            Step::Key(k) => {
                let mut m = serde_json::Map::new();
                m.insert(k.clone(), wrapped);
                Value::Object(m)
            }
            Step::Index(i) => {
                let mut a = vec![Value::Null; *i];
                a.push(wrapped);
                Value::Array(a)
            }
        };
    }
    wrapped
}

/// Secret locations inside a value that would sit at `at`: the rule's finder run on a document
/// holding only that value.
fn secrets_in_value(at: &[Step], value: &Value, secrets: SecretLocations<'_>) -> Vec<Vec<Step>> {
    secrets(&wrap(at, value.clone()))
}

/// One is an ancestor of (or the same as) the other.
fn related(a: &[Step], b: &[Step]) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

/// A JSON Pointer as steps, reading numeric tokens as indexes where `doc` has an array.
pub(crate) fn steps_of(doc: &Value, pointer: &str) -> Vec<Step> {
    let Ok(p) = jsonptr::Pointer::parse(pointer) else {
        return Vec::new();
    };
    let mut cur = Some(doc);
    let mut steps = Vec::new();
    for tok in p.tokens() {
        let t = tok.decoded();
        let step = match cur {
            Some(Value::Array(a)) => match t.parse::<usize>() {
                Ok(i) => Step::Index(i),
                Err(_) if t == "-" => Step::Index(a.len()),
                Err(_) => Step::Key(t.to_string()),
            },
            _ => Step::Key(t.to_string()),
        };
        cur = cur.and_then(|v| match (&step, v) {
            (Step::Key(k), Value::Object(m)) => m.get(k),
            (Step::Index(i), Value::Array(a)) => a.get(*i),
            _ => None,
        });
        steps.push(step);
    }
    steps
}

/// Whether any string in `v` is one that reads masked whatever field holds it: credentials
/// inside text (judged as if every key named a secret) and references or tokens.
fn hides_text(v: &Value) -> bool {
    match v {
        Value::String(s) => {
            s.contains("secret:")
                || s.contains("fernet:")
                || crate::rewrite::structure::credential_in_text(s, |_| true)
        }
        Value::Array(a) => a.iter().any(hides_text),
        Value::Object(m) => m.values().any(hides_text),
        _ => false,
    }
}

/// The array elements a JSON Patch adds, removes, moves or copies (the op's `path`, and a
/// `move`'s or `copy`'s `from`, where its parent in `doc` is an array), as the arrays' steps:
/// such ops shift the places of the elements after them.
pub(crate) fn reshaped_arrays(body: &PatchBody, doc: &Value) -> Vec<Vec<Step>> {
    let PatchBody::Json(patch) = body else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut parent_of = |pointer: &str| {
        let steps = steps_of(doc, pointer);
        if let Some((_, parent)) = steps.split_last() {
            if matches!(
                crate::rules::jsonpath::get(doc, parent),
                Some(Value::Array(_))
            ) {
                out.push(parent.to_vec());
            }
        }
    };
    for op in &patch.0 {
        match op {
            PatchOperation::Add(o) => parent_of(o.path.as_str()),
            PatchOperation::Remove(o) => parent_of(o.path.as_str()),
            PatchOperation::Move(o) => {
                parent_of(o.path.as_str());
                parent_of(o.from.as_str());
            }
            PatchOperation::Copy(o) => {
                parent_of(o.path.as_str());
                parent_of(o.from.as_str());
            }
            PatchOperation::Replace(_) | PatchOperation::Test(_) => {}
        }
    }
    out
}

/// Every place a patch writes or removes, as steps in `doc` (what it applies to): each JSON
/// Patch op's `path` (and a `move`'s `from`), read on `doc` as it stands before the patch;
/// each leaf of a merge patch (a member set to a scalar, an array or `null`).
pub(crate) fn touched(body: &PatchBody, doc: &Value) -> Vec<Vec<Step>> {
    fn leaves(v: &Value, at: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, child) in m {
                    at.push(Step::Key(k.clone()));
                    leaves(child, at, out);
                    at.pop();
                }
            }
            _ => out.push(at.clone()),
        }
    }
    let mut out = Vec::new();
    match body {
        PatchBody::Merge(m) => leaves(m, &mut Vec::new(), &mut out),
        PatchBody::Json(patch) => {
            for op in &patch.0 {
                let (path, from) = match op {
                    PatchOperation::Add(o) => (o.path.as_str(), None),
                    PatchOperation::Remove(o) => (o.path.as_str(), None),
                    PatchOperation::Replace(o) => (o.path.as_str(), None),
                    PatchOperation::Move(o) => (o.path.as_str(), Some(o.from.as_str())),
                    PatchOperation::Copy(o) => (o.path.as_str(), None),
                    PatchOperation::Test(_) => continue,
                };
                out.push(steps_of(doc, path));
                out.extend(from.map(|f| steps_of(doc, f)));
            }
        }
    }
    out
}

/// The JSON Patch that turns `from` into `to`.
pub(crate) fn diff(from: &Value, to: &Value) -> Patch {
    json_patch::diff(from, to)
}

/// Applies a patch the gateway built itself (to check what the upstream will hold).
pub(crate) fn apply_own(doc: &mut Value, ops: &Patch) -> Result<(), GatewayError> {
    json_patch::patch_unsafe(doc, &ops.0)
        .map_err(|_| GatewayError::Internal("the gateway built a patch that does not apply".into()))
}

/// A patch as the bytes forwarded upstream.
pub(crate) fn to_bytes(ops: &Patch) -> Vec<u8> {
    serde_json::to_vec(ops).unwrap_or_else(|_| b"[]".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn media(ct: &str) -> Media {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
        Media::of(&h)
    }

    #[test]
    fn media_types_are_compared_without_parameters() {
        assert_eq!(
            media("application/json-patch+json; profile=merge-patch"),
            Media::JsonPatch
        );
        assert_eq!(
            media("Application/Merge-Patch+JSON;charset=utf-8"),
            Media::MergePatch
        );
        assert_eq!(media("text/plain; x=merge-patch"), Media::Other);
        assert_eq!(media("application/json"), Media::Json);
    }

    #[test]
    fn a_body_that_does_not_match_its_type_is_400_and_other_types_415() {
        assert!(matches!(
            PatchBody::parse(Media::JsonPatch, json!({"a": 1})),
            Err(GatewayError::BadRequest(_))
        ));
        assert!(matches!(
            PatchBody::parse(Media::MergePatch, json!([])),
            Err(GatewayError::BadRequest(_))
        ));
        assert!(matches!(
            PatchBody::parse(Media::Json, json!([])),
            Err(GatewayError::UnsupportedMediaType(_))
        ));
    }

    fn pw_secrets(doc: &Value) -> Vec<Vec<Step>> {
        let mut out = Vec::new();
        if doc.pointer("/c/password").is_some() {
            out.push(vec![Step::Key("c".into()), Step::Key("password".into())]);
        }
        out
    }

    #[test]
    fn move_and_copy_are_applied_as_rfc_6902_says() {
        let cur = json!({"c": {"password": "secret:/x"}, "d": "x"});
        let body = PatchBody::parse(
            Media::JsonPatch,
            json!([{"op":"add","path":"/e","value":"p"},{"op":"move","from":"/e","path":"/c/password"}]),
        )
        .unwrap();
        let out = apply(&cur, &body, &pw_secrets).unwrap();
        assert_eq!(out, json!({"c": {"password": "p"}, "d": "x"}));
    }

    #[test]
    fn copy_or_move_of_a_secret_into_a_field_that_is_not_secret_is_422() {
        let cur = json!({"c": {"password": "hunter2", "user": "u"}, "d": "x", "l": [1, 2]});
        let refused = [
            json!([{"op":"copy","from":"/c/password","path":"/d"}]),
            json!([{"op":"move","from":"/c/password","path":"/description"}]),
            json!([{"op":"copy","from":"/c","path":"/e"}]),
            json!([{"op":"copy","from":"/c/password","path":"/l/-"}]),
            json!([{"op":"copy","from":"/c/password","path":"/l/0"}]),
            json!([{"op":"add","path":"/c/password","value":"p"},{"op":"copy","from":"/c/password","path":"/d"}]),
        ];
        for ops in refused {
            let body = PatchBody::parse(Media::JsonPatch, ops.clone()).unwrap();
            assert!(
                matches!(
                    apply(&cur, &body, &pw_secrets),
                    Err(GatewayError::Unprocessable(_))
                ),
                "{ops}"
            );
        }
        let accepted = [
            json!([{"op":"copy","from":"/c/user","path":"/d"}]),
            json!([{"op":"copy","from":"/d","path":"/c/password"}]),
            json!([{"op":"copy","from":"/c/password","path":"/c/password"}]),
            json!([{"op":"move","from":"/l/0","path":"/l/1"}]),
        ];
        for ops in accepted {
            let body = PatchBody::parse(Media::JsonPatch, ops.clone()).unwrap();
            assert!(apply(&cur, &body, &pw_secrets).is_ok(), "{ops}");
        }
    }

    #[test]
    fn test_ops_on_secrets_get_one_answer_whatever_the_guess() {
        let cur = json!({"c": {"password": "hunter2"}});
        for guess in ["hunter2", "wrong"] {
            for path in ["/c/password", "/c", ""] {
                let body = PatchBody::parse(
                    Media::JsonPatch,
                    json!([{"op":"test","path": path,"value": guess}]),
                )
                .unwrap();
                assert!(matches!(
                    apply(&cur, &body, &pw_secrets),
                    Err(GatewayError::Unprocessable(_))
                ));
            }
        }
        // After a move out of a secret, the moved copy cannot be tested either.
        let body = PatchBody::parse(
            Media::JsonPatch,
            json!([{"op":"move","from":"/c/password","path":"/d"},{"op":"test","path":"/d","value":"hunter2"}]),
        )
        .unwrap();
        assert!(matches!(
            apply(&cur, &body, &pw_secrets),
            Err(GatewayError::Unprocessable(_))
        ));
    }

    #[test]
    fn test_ops_elsewhere_are_evaluated_locally() {
        let cur = json!({"c": {"password": "x"}, "d": 1});
        let ok = PatchBody::parse(
            Media::JsonPatch,
            json!([{"op":"test","path":"/d","value":1}]),
        )
        .unwrap();
        assert!(apply(&cur, &ok, &pw_secrets).is_ok());
        let bad = PatchBody::parse(
            Media::JsonPatch,
            json!([{"op":"test","path":"/d","value":2}]),
        )
        .unwrap();
        assert!(matches!(
            apply(&cur, &bad, &pw_secrets),
            Err(GatewayError::BadRequest(_))
        ));
    }

    #[test]
    fn the_diff_turns_the_current_document_into_the_result() {
        let cur =
            json!({"a": [1, 2], "b": {"c": "x"}, "n": 12345678901234567890123u128.to_string()});
        let to = json!({"a": [0, 1, 2], "b": {}, "n": cur["n"].clone(), "z": null});
        let ops = diff(&cur, &to);
        let mut doc = cur.clone();
        apply_own(&mut doc, &ops).unwrap();
        assert_eq!(doc, to);
    }
}
