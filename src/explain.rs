//! `om-secrets-proxy explain METHOD PATH [BODY_FILE]`: what the gateway would do with a request.

use http::Method;
use serde_json::Value;

use crate::config::Config;
use crate::http::path::NormPath;
use crate::policy::{decide, decide_mask_only, CallerClass};
use crate::rules::ids::IdBuilder;
use crate::rules::jsonpath::render;
use crate::rules::{Found, Rule, RuleSet};
use crate::version::supported_range;

/// The explanation as text; `Err` for input the gateway itself would refuse.
pub fn explain(
    cfg: &Config,
    rules: &RuleSet,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<String, String> {
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("{method:?} is not an HTTP method"))?;
    let (raw_path, _query) = path.split_once('?').unwrap_or((path, ""));
    let norm = NormPath::parse(raw_path).map_err(|e| format!("the gateway answers 400: {e}"))?;
    let mut out = String::new();
    out.push_str(&format!("request: {method} {}\n", norm.canonical()));
    let Some(m) = rules.match_request(&method, &norm) else {
        out.push_str(
            "rule: none (passed through; JSON answers still get the safety net: secret:/fernet: strings, and the fields of mask_only kinds)\n",
        );
        return Ok(out);
    };
    out.push_str(&format!(
        "rule: {} ({})\n",
        m.rule.kind,
        m.rule.file.display()
    ));
    match m.route {
        Some(r) if r.op == crate::rules::Op::Forward => {
            out.push_str(&format!(
                "route: {} {}{} -> Forward (a person's own credentials: forwarded as sent both ways, as a route without rules; JSON answers still get the secret:/fernet: safety net)\n",
                method, m.rule.collection, r.path
            ));
            return Ok(out);
        }
        Some(r) => out.push_str(&format!(
            "route: {} {}{} -> {:?}\n",
            method, m.rule.collection, r.path, r.op
        )),
        None => {
            out.push_str("route: none of the rule's routes (forwarded; the answer is rewritten)\n")
        }
    }
    for (k, v) in &m.params {
        out.push_str(&format!("  {k} = {v}\n"));
    }
    if m.rule.is_mask_only() {
        out.push_str("mode: mask_only (values stay in OpenMetadata, which needs them in clear; masked on reads; a mask sent back is replaced by the value OpenMetadata holds, 422 when it holds none or when anything else in its destination or configuration differs from what OpenMetadata holds; nothing goes to the key store)\n");
    }
    if let Some(body) = body {
        out.push_str(&secrets_in_body(cfg, rules, m.rule, body)?);
    }
    let p = &cfg.policy;
    if m.rule.is_mask_only() {
        let shown = |c| match decide_mask_only(c, "", p, &m.rule.policy) {
            crate::config::ReadAction::Resolve => "reveal",
            _ => "mask",
        };
        out.push_str(&format!(
            "reads: bot={} user={} anonymous={} (mask_only; subjects in policy.mask_only.reveal_to: reveal)\n",
            shown(CallerClass::Bot),
            shown(CallerClass::User),
            shown(CallerClass::Anonymous),
        ));
        return Ok(out);
    }
    out.push_str(&format!(
        "reads: bot={} user={} anonymous={}\n",
        decide(CallerClass::Bot, p, &m.rule.policy).name(),
        decide(CallerClass::User, p, &m.rule.policy).name(),
        decide(CallerClass::Anonymous, p, &m.rule.policy).name(),
    ));
    Ok(out)
}

/// The secrets a body holds, with the id each would get and why it counts as a secret.
fn secrets_in_body(
    cfg: &Config,
    rules: &RuleSet,
    rule: &Rule,
    body: &str,
) -> Result<String, String> {
    let mut out = String::new();
    let doc: Value =
        serde_json::from_str(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let name = doc.get("name").and_then(Value::as_str).unwrap_or("<name>");
    let ids = IdBuilder::new(&cfg.secrets.prefix, &cfg.secrets.cluster_name);
    let root = ids.root(&rule.root_template, name);
    let found = rules.find_secrets(rule, &doc);
    if rule.is_mask_only() {
        return Ok(mask_only_in_body(rule, &doc, &found));
    }
    if let Some(t) = doc
        .pointer("/connection/config/type")
        .and_then(Value::as_str)
    {
        if !rule.known_types.is_empty() && !rule.known_types.contains(t) {
            out.push_str(&unknown_type_note(rule, t, &found));
        }
    }
    let fields: Vec<&[crate::rules::jsonpath::Step]> =
        found.iter().map(|f| f.steps.as_slice()).collect();
    if let Some(t) = crate::rewrite::guard::secret_in_json_text(rules, rule, &doc, &fields) {
        return Err(match t.member.as_str() {
            crate::rewrite::guard::URL_PASSWORD => format!(
                "the gateway answers 422: {} holds {}; send the password in a field of its own",
                t.field, t.member
            ),
            _ => format!(
                "the gateway answers 422: {} holds a JSON text with a secret member ({}); send the credential as a field of its own",
                t.field, t.member
            ),
        });
    }
    out.push_str(&format!("secrets in body: {}\n", found.len()));
    if let Some(scope) = &rule.scope {
        out.push_str(&format!(
            "  (ids as the first {} of this name gets them; another of the same name under another {} gets root {})\n",
            rule.kind, scope.reference, scope.root_template
        ));
    }
    for f in &found {
        let id = ids.id(&root, rule.field_steps(&f.steps));
        let why = match f.rule_path {
            Some(n) => {
                let types = &rule.secret_types[n];
                if types.is_empty() {
                    format!("rule path {}", rule.secret_paths[n])
                } else {
                    format!(
                        "rule path {} (types: {})",
                        rule.secret_paths[n],
                        types.join(", ")
                    )
                }
            }
            None => "name-based safety net".to_string(),
        };
        out.push_str(&format!(
            "  {} -> secret:{}  [{}]\n",
            render(&f.steps),
            id,
            why
        ));
    }
    Ok(out)
}

/// The `mask_only` fields a body holds: what each becomes upstream (never a store id).
fn mask_only_in_body(rule: &Rule, doc: &Value, found: &[Found]) -> String {
    let mut out = format!("masked-only fields in body: {}\n", found.len());
    for f in found {
        let why = match f.rule_path {
            Some(n) => format!("rule path {}", rule.secret_paths[n]),
            None => "name-based safety net".to_string(),
        };
        let v = crate::rules::jsonpath::get(doc, &f.steps);
        let fate = match v.and_then(crate::rewrite::classify) {
            Some(crate::rewrite::FieldValue::Mask) => {
                "mask: replaced by the value OpenMetadata holds there (422 if none)"
            }
            Some(crate::rewrite::FieldValue::Clear) => "empty: forwarded as sent",
            _ => "value: forwarded as sent (OpenMetadata needs it); masked on reads",
        };
        out.push_str(&format!("  {} -> {fate}  [{why}]\n", render(&f.steps)));
    }
    out
}

/// What applies to a connection type no supported version's inventory knows: every rule path
/// (paths apply whatever the declared type), then the name-based safety net; each with the
/// locations of `found` it accounts for.
fn unknown_type_note(rule: &Rule, t: &str, found: &[Found]) -> String {
    let matched = |by_rule: bool| {
        let at: Vec<String> = found
            .iter()
            .filter(|f| f.rule_path.is_some() == by_rule)
            .map(|f| render(&f.steps))
            .collect();
        match at.len() {
            0 => "none matched".to_string(),
            n => format!("{n} matched: {}", at.join(", ")),
        }
    };
    format!(
        "connection type {t:?} is in no inventory of the supported OpenMetadata versions ({}); what still applies to it:\n  \
         rule paths (all {} of the rule's secret paths, whatever the type): {}\n  \
         name-based safety net (rules.safety_net_keys under {}): {}\n",
        supported_range(),
        rule.secret_paths.len(),
        matched(true),
        rule.safety_net_paths().join(", "),
        matched(false),
    )
}
