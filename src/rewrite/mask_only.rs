//! `mask_only` fields (secrets the upstream keeps in clear) masked wherever they sit in an
//! answer of a route without rules (a change event of an event subscription, say): found by
//! structure as in ruled answers (`structure`), inside any wrapper and inside string fields
//! that hold JSON; each `mask_only` rule is the scope once, so a change of its fields
//! (`{"name": "destinations", "newValue": "[...]"}`) is read at its own paths.

use serde_json::Value;

use super::json::{parse_answer, to_string};
use super::structure::Scanner;
use super::MASK;
use crate::rules::jsonpath::{get, get_mut, Step};
use crate::rules::RuleSet;

/// JSON inside a string inside a string ... this many times at most (as in ruled answers).
const MAX_EMBEDDING: usize = 16;

/// Masks every `mask_only` field in `doc`.
pub(crate) fn mask_fields(rules: &RuleSet, doc: &mut Value) {
    for rule in rules.rules.iter().filter(|r| r.is_mask_only()) {
        let scanner = Scanner::new(rules, rule);
        mask_doc(rules, &scanner, doc, &[], 0);
    }
}

/// Masks the `mask_only` fields of one document (the answer, or a JSON string in it); true
/// when it changed.
fn mask_doc(
    rules: &RuleSet,
    scanner: &Scanner<'_>,
    doc: &mut Value,
    anchor: &[Step],
    depth: usize,
) -> bool {
    let scan = scanner.scan(doc, anchor);
    let mut changed = false;
    for e in &scan.embedded {
        if depth >= MAX_EMBEDDING {
            break;
        }
        let Some(Value::String(s)) = get(doc, &e.steps) else {
            continue;
        };
        let Ok(mut inner) = parse_answer(s.as_bytes()) else {
            continue;
        };
        if mask_doc(rules, scanner, &mut inner, &e.anchor, depth + 1) {
            if let (Ok(text), Some(slot)) = (to_string(&inner), get_mut(doc, &e.steps)) {
                *slot = Value::String(text);
                changed = true;
            }
        }
    }
    for h in scan.hits.iter().filter(|h| h.scoped) {
        if !rules.rules[h.rule].is_mask_only() {
            continue;
        }
        if let Some(slot) = get_mut(doc, &h.steps) {
            let has_value = match slot {
                Value::String(s) => !s.is_empty(),
                Value::Number(_) | Value::Bool(_) => true,
                _ => false,
            };
            if has_value {
                *slot = Value::String(MASK.into());
                changed = true;
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules() -> RuleSet {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        RuleSet::load(&dir, &[]).expect("rules")
    }

    #[test]
    fn a_change_event_of_an_event_subscription_is_masked_inside_its_json_strings() {
        let sub = json!({"name": "hook", "destinations": [{"type": "Webhook", "config": {
            "endpoint": "https://h/x?token=t1", "secretKey": "k1", "headers": {"Authorization": "Bearer b1"}}}]});
        let mut doc = json!({"data": [{"eventType": "entityUpdated", "entityType": "eventsubscription",
            "entity": sub.to_string(),
            "changeDescription": {"fieldsUpdated": [{"name": "destinations",
                "oldValue": sub["destinations"].to_string(), "newValue": sub["destinations"].to_string()}]}}]});
        mask_fields(&rules(), &mut doc);
        let text = doc.to_string();
        for secret in ["t1", "k1", "b1"] {
            assert!(!text.contains(secret), "{secret} left in {text}");
        }
        assert!(text.contains("hook"), "the rest stays: {text}");
    }

    #[test]
    fn fields_of_other_kinds_and_plain_members_are_left_alone() {
        let mut doc = json!({"config_type": "emailConfiguration", "config_value": {
            "username": "u", "password": "p", "senderMail": "a@b"}, "other": {"password": "q"}});
        mask_fields(&rules(), &mut doc);
        assert_eq!(doc["config_value"]["password"], MASK);
        assert_eq!(doc["config_value"]["username"], "u");
        assert_eq!(doc["other"]["password"], "q", "not a mask_only path");
    }
}
