//! The write invariant, enforced in one place on what actually leaves: the entity as the
//! upstream will hold it after the forwarded body is applied.
//!
//! For every secret field at path P (by the rules or the name-based safety net):
//! - managed providers: P holds exactly the reference to P's own id (bare, or Fernet-wrapped
//!   per `wrap_references`), a reference under a prefix its rule grants, or null;
//! - `db` and non-managed providers: P holds a `fernet:` token, a `secret:` reference, or null;
//! - either way, a value the upstream already held and the gateway cannot improve (a Fernet
//!   token no configured key opens, a mask an old OpenMetadata bug stored) may stay as it was.
//!
//! For a `mask_only` rule's fields (values the upstream keeps in clear) the one rule is: never
//! the mask in place of a value (unless the upstream already held exactly that).
//!
//! Anything else means the write path has a bug: the write is refused (500) and nothing is
//! forwarded. The message names the field, never its value.

use serde_json::Value;

use super::json::{deep, parse_answer};
use super::structure::{credential_in_text, holds_json};
use super::{classify, FieldValue};
use crate::error::GatewayError;
use crate::rules::ids::IdBuilder;
use crate::rules::jsonpath::{get, render, Step, StepRef};
use crate::rules::{Rule, RuleSet};
use crate::secrets::fernet::FernetKeys;

/// What the guard needs to know about the entity's secrets.
pub struct Guard<'a> {
    pub rules: &'a RuleSet,
    pub rule: &'a Rule,
    pub ids: &'a IdBuilder,
    pub fernet: &'a FernetKeys,
    /// The entity's id root; `None` on routes that carry no entity (actions): there, any
    /// reference may pass but never a value.
    pub root: Option<&'a str>,
    pub managed: bool,
}

impl Guard<'_> {
    /// Checks `outgoing` (the entity as the upstream will hold it); `current` is what it holds
    /// now, when known.
    pub fn check(&self, outgoing: &Value, current: Option<&Value>) -> Result<(), GatewayError> {
        let found = self.rules.find_secrets(self.rule, outgoing);
        if !self.rule.is_mask_only() {
            let fields: Vec<&[Step]> = found.iter().map(|f| f.steps.as_slice()).collect();
            if let Some(at) = secret_in_json_text(self.rules, self.rule, outgoing, &fields) {
                tracing::error!(field = %at.field, kind = %self.rule.kind, "write guard: a credential inside a text (a JSON member or a URL's password) would leave; refused");
                return Err(GatewayError::Internal(format!(
                    "write guard refused {}: it holds a credential inside a text",
                    at.field
                )));
            }
        }
        for f in found {
            let Some(v) = get(outgoing, &f.steps) else {
                continue;
            };
            if v.is_null() {
                continue;
            }
            let untouched = current.and_then(|c| get(c, &f.steps)) == Some(v);
            let allowed = if self.rule.is_mask_only() {
                // The upstream needs these values in clear; what must never reach it is the
                // mask in place of one (unless it already held that).
                untouched || classify(v) != Some(FieldValue::Mask)
            } else {
                self.allowed(v, &f.steps, untouched)
            };
            if !allowed {
                let field = render(&f.steps);
                tracing::error!(field = %field, kind = %self.rule.kind, "write guard: a secret field would leave unprotected; refused");
                return Err(GatewayError::Internal(format!(
                    "write guard refused {field}: it would reach OpenMetadata unprotected"
                )));
            }
        }
        Ok(())
    }

    fn allowed(&self, v: &Value, steps: &[crate::rules::jsonpath::Step], untouched: bool) -> bool {
        let Some(kind) = classify(v) else {
            return false;
        };
        let opened = match &kind {
            FieldValue::Fernet(t) => match self.fernet.decrypt(t) {
                Ok(p) => classify(&Value::String(p)),
                // An unopened token the upstream already held stays; a new one never comes
                // from the gateway unless it can open it.
                Err(_) => return untouched,
            },
            _ => Some(kind.clone()),
        };
        match (opened, self.managed) {
            (Some(FieldValue::Clear), _) => true,
            (Some(FieldValue::Mask), _) => untouched,
            (Some(FieldValue::Plain(_)), true) => false,
            // db / non-managed: a value travels only as a Fernet token.
            (Some(FieldValue::Plain(_)), false) => matches!(kind, FieldValue::Fernet(_)),
            (Some(FieldValue::Reference(r)), true) => match self.root {
                Some(root) => {
                    r == self.ids.id(root, self.rule.field_steps(steps))
                        || self
                            .rule
                            .allowed_reference_prefixes
                            .iter()
                            .any(|p| r.starts_with(p.as_str()))
                }
                None => true,
            },
            (Some(FieldValue::Reference(_)), false) => true,
            (Some(FieldValue::Fernet(_)), _) | (None, _) => false,
        }
    }
}

/// A text holding a secret: the string field and the secret member inside its JSON, or
/// [`URL_PASSWORD`] for a URL with a password in it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SecretInText {
    pub(crate) field: String,
    pub(crate) member: String,
}

/// What [`SecretInText::member`] says of a password in a URL's user info.
pub(crate) const URL_PASSWORD: &str =
    "a credential inside text (a URL's user:password@, user/password@host, or a password=... pair)";

/// JSON texts read inside JSON texts at most this deep (the read side's limit); a JSON text
/// deeper still counts as holding a secret (it cannot be judged, so it is refused).
const TEXT_NESTING: usize = 16;

/// The first string in one of the rule's safety-net subtrees of `doc` that holds a JSON text
/// (an object or array with members, as the read side reads them) with a value under a
/// secret-looking member name (`{"Authorization": "Bearer ..."}` in a free-form option). The
/// gateway moves whole fields into the store, not parts of a string, and the read side masks
/// such members for every caller, so such a write is refused rather than forwarded in clear.
/// `skip` lists fields that are secrets themselves (stored whole, whatever they hold); a
/// member holding null, `""` or a boolean carries no secret.
pub(crate) fn secret_in_json_text(
    rules: &RuleSet,
    rule: &Rule,
    doc: &Value,
    skip: &[&[Step]],
) -> Option<SecretInText> {
    for base in &rule.safety_net {
        let steps: Vec<Step> = base.iter().map(|k| Step::Key(k.clone())).collect();
        if let Some(sub) = get(doc, &steps) {
            let mut at: Vec<StepRef<'_>> = base.iter().map(|k| StepRef::Key(k)).collect();
            if let Some(hit) = texts(rules, sub, &mut at, skip, 0) {
                return Some(hit);
            }
        }
    }
    None
}

fn texts<'v>(
    rules: &RuleSet,
    v: &'v Value,
    at: &mut Vec<StepRef<'v>>,
    skip: &[&[Step]],
    nesting: usize,
) -> Option<SecretInText> {
    deep(|| match v {
        Value::String(s) if holds_json(s) && !skip.iter().any(|k| StepRef::same(at, k)) => {
            let field = || render(&StepRef::owned(at));
            if nesting >= TEXT_NESTING {
                return Some(SecretInText {
                    field: field(),
                    member: "(JSON texts nested too deep to read)".into(),
                });
            }
            // Read as the read side reads JSON strings (duplicate members allowed: the last
            // one is what a reader sees), so what it would mask is what is refused here.
            let Ok(inner) = parse_answer(s.as_bytes()) else {
                // Not JSON after all (a trailing comma, say), though a lenient reader takes it
                // for JSON: judged as text, and by the member names such a reader would see.
                let lenient = quoted_members(s).any(|k| rules.is_secret_key(k));
                return (lenient || credential_in_text(s, |k| rules.is_secret_key(k))).then(|| {
                    SecretInText {
                        field: field(),
                        member: "a secret member of a text that is almost JSON".into(),
                    }
                });
            };
            // Credentials in member names first: a secret member's path must not spell one.
            if let Some(hit) = texts(rules, &inner, &mut Vec::new(), &[], nesting + 1) {
                return Some(SecretInText {
                    field: field(),
                    member: hit.member,
                });
            }
            secret_member(rules, &inner).map(|member| SecretInText {
                field: field(),
                member,
            })
        }
        Value::String(s)
            if !skip.iter().any(|k| StepRef::same(at, k))
                && credential_in_text(s, |k| rules.is_secret_key(k)) =>
        {
            Some(SecretInText {
                field: render(&StepRef::owned(at)),
                member: URL_PASSWORD.into(),
            })
        }
        Value::Object(m) => m.iter().find_map(|(k, child)| {
            at.push(StepRef::Key(k));
            // A member's name is text too (`{"http://u:pw@proxy:3128": ...}`); the message
            // names the object holding it, never the name itself.
            let hit = match credential_in_text(k, |n| rules.is_secret_key(n)) {
                true => Some(SecretInText {
                    field: format!(
                        "{} (the name of one of its members)",
                        render(&StepRef::owned(&at[..at.len() - 1]))
                    ),
                    member: URL_PASSWORD.into(),
                }),
                false => texts(rules, child, at, skip, nesting),
            };
            at.pop();
            hit
        }),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, child)| {
            at.push(StepRef::Index(i));
            let hit = texts(rules, child, at, skip, nesting);
            at.pop();
            hit
        }),
        _ => None,
    })
}

/// The names a lenient JSON reader sees in `s`: every quoted string followed by `:`.
fn quoted_members(s: &str) -> impl Iterator<Item = &str> {
    let b = s.as_bytes();
    memchr::memchr_iter(b'"', b)
        .collect::<Vec<_>>()
        .chunks(2)
        .filter_map(|q| match q {
            [open, close] => {
                let after = b[close + 1..].iter().find(|c| !c.is_ascii_whitespace());
                (after == Some(&b':')).then(|| &s[open + 1..*close])
            }
            _ => None,
        })
        .collect::<Vec<_>>()
        .into_iter()
}

/// A member of `inner` (anywhere in it) whose name is secret-looking and whose value is a
/// non-empty string or a number.
fn secret_member(rules: &RuleSet, inner: &Value) -> Option<String> {
    rules
        .find_by_name(inner)
        .into_iter()
        .find_map(|f| match get(inner, &f.steps) {
            Some(Value::String(t)) if !t.is_empty() => Some(render(&f.steps)),
            Some(Value::Number(_)) => Some(render(&f.steps)),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules() -> RuleSet {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        RuleSet::load(&dir, &[]).expect("rules")
    }

    fn database(r: &RuleSet) -> &Rule {
        r.rules
            .iter()
            .find(|x| x.kind == "databaseService")
            .expect("rule")
    }

    fn found(doc: &Value) -> Option<SecretInText> {
        let r = rules();
        secret_in_json_text(&r, database(&r), doc, &[])
    }

    fn service(args: Value) -> Value {
        json!({"name": "s", "connection": {"config": {"type": "Mysql", "connectionArguments": args}}})
    }

    #[test]
    fn a_password_in_a_urls_user_info_is_found_in_a_free_form_option_and_inside_json_text() {
        let doc = service(json!({"proxy": "http://u:pw@proxy:3128"}));
        assert_eq!(
            found(&doc),
            Some(SecretInText {
                field: "$.connection.config.connectionArguments.proxy".into(),
                member: URL_PASSWORD.into()
            })
        );
        let doc = service(json!({"x": "{\"url\": \"https://a:b@h/\"}"}));
        assert!(found(&doc).is_some());
        for plain in ["http://proxy:3128", "https://user@host/", "ops@example.org"] {
            assert_eq!(found(&service(json!({"p": plain}))), None, "{plain}");
        }
    }

    #[test]
    fn a_json_text_with_a_secret_member_in_a_free_form_option_is_found() {
        let doc = service(json!({"http_headers": "{\"Authorization\": \"Bearer x\"}"}));
        assert_eq!(
            found(&doc),
            Some(SecretInText {
                field: "$.connection.config.connectionArguments.http_headers".into(),
                member: "$.Authorization".into()
            })
        );
        // Nested a level deeper, inside an array, and inside a JSON text inside a JSON text.
        let doc = service(json!({"x": [{"y": " [{\"password\": 5}]"}]}));
        assert!(found(&doc).is_some());
        let doc = service(json!({"x": "{\"extra\": \"{\\\"password\\\": \\\"p\\\"}\"}"}));
        assert_eq!(found(&doc).map(|h| h.member), Some("$.password".into()));
        // Duplicate members, as the read side reads them (the last one counts).
        let doc = service(json!({"x": "{\"password\": \"\", \"password\": \"p\"}"}));
        assert!(found(&doc).is_some());
        // Nested deeper than the read side reads: refused, not passed unread.
        let mut text = json!({"password": "p"}).to_string();
        for _ in 0..TEXT_NESTING + 1 {
            text = json!({"t": text}).to_string();
        }
        assert!(found(&service(json!({"x": text}))).is_some());
    }

    #[test]
    fn texts_without_secret_values_and_texts_outside_the_subtrees_pass() {
        for args in [
            json!({"h": "{\"Accept\": \"json\", \"password\": \"\", \"token\": null}"}),
            json!({"h": "{\"useCredentials\": true}"}),
            json!({"h": "[a link](http://x) {password}"}),
            json!({"h": "{not json: password}"}),
        ] {
            assert_eq!(found(&service(args.clone())), None, "{args}");
        }
        let doc = json!({"name": "s", "description": "{\"password\": \"p\"}",
                         "connection": {"config": {"type": "Mysql"}}});
        assert_eq!(found(&doc), None);
    }

    #[test]
    fn a_field_that_is_itself_a_secret_is_skipped() {
        let r = rules();
        let rule = database(&r);
        let doc = service(json!({"token": "{\"password\": \"p\"}"}));
        let at = [
            Step::Key("connection".into()),
            Step::Key("config".into()),
            Step::Key("connectionArguments".into()),
            Step::Key("token".into()),
        ];
        assert!(secret_in_json_text(&r, rule, &doc, &[]).is_some());
        assert_eq!(secret_in_json_text(&r, rule, &doc, &[&at]), None);
    }
}
