//! Every secret path of every supported OpenMetadata version's inventory is found by a path of
//! the shipped rules, through the code `explain` and the write path use (`match_request`, then
//! `find_secrets`), and not merely by the name-based safety net.
//!
//! The inventories are read from `$OMSP_INVENTORY_DIR`, else `../shared/data` next to the
//! repository: every `openmetadata-secret-fields*.json` there, which must include the three the
//! rules are generated from (`rules/generate.py`).

use std::collections::BTreeSet;
use std::path::PathBuf;

use http::Method;
use om_secrets_proxy::http::path::NormPath;
use om_secrets_proxy::rules::jsonpath::{compile, render, Seg, Step};
use om_secrets_proxy::rules::{Rule, RuleSet};
use serde_json::{json, Map, Value};

/// The inventories `rules/generate.py` reads by default: OpenMetadata 1.9, 1.13 and 2.0.
const SHIPPED: &[&str] = &[
    "openmetadata-secret-fields-1.9.17.6.json",
    "openmetadata-secret-fields-1.13.6.3.json",
    "openmetadata-secret-fields.json",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn inventory_dir() -> PathBuf {
    std::env::var_os("OMSP_INVENTORY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/data"))
}

fn shipped_rules() -> RuleSet {
    let keys: Vec<String> = om_secrets_proxy::config::DEFAULT_SAFETY_NET_KEYS
        .iter()
        .map(|s| s.to_string())
        .collect();
    RuleSet::load(&root().join("rules"), &keys).expect("shipped rules compile")
}

/// Every inventory file of the data directory, by file name.
fn inventories() -> Vec<(String, Value)> {
    let dir = inventory_dir();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (set OMSP_INVENTORY_DIR)", dir.display()))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("openmetadata-secret-fields") && n.ends_with(".json"))
        .collect();
    names.sort();
    for s in SHIPPED {
        assert!(
            names.iter().any(|n| n == s),
            "{s} is missing from {}",
            dir.display()
        );
    }
    names
        .into_iter()
        .map(|n| {
            let text = std::fs::read_to_string(dir.join(&n)).expect("inventory");
            let v = serde_json::from_str(&text).expect("inventory JSON");
            (n, v)
        })
        .collect()
}

/// The concrete steps of a path: `[*]` -> `[1]`, `.*` -> `.someKey`.
fn concrete(path: &str) -> Vec<Step> {
    compile(path)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|s| match s {
            Seg::Key(k) => Step::Key(k),
            Seg::AnyKey => Step::Key("someKey".into()),
            Seg::AnyIndex => Step::Index(1),
            Seg::Index(n) => Step::Index(n),
        })
        .collect()
}

/// A document holding "VALUE" at `steps` (arrays get other elements before it).
fn doc_at(steps: &[Step]) -> Value {
    let mut doc = json!("VALUE");
    for s in steps.iter().rev() {
        doc = match s {
            Step::Key(k) => {
                let mut m = Map::new();
                m.insert(k.clone(), doc);
                Value::Object(m)
            }
            Step::Index(i) => {
                let mut a = vec![json!({"other": 1}); *i];
                a.push(doc);
                Value::Array(a)
            }
        };
    }
    doc
}

/// Sets `key: value` in the object at `at`, creating missing objects on the way; does nothing
/// where the document already holds something else (the secret's own path wins).
fn set_type(doc: &mut Value, at: &[Step], key: &str, value: &str) {
    let mut cur = doc;
    for s in at {
        cur = match (s, cur) {
            (Step::Key(k), Value::Object(m)) => m.entry(k.clone()).or_insert_with(|| json!({})),
            (Step::Index(i), Value::Array(a)) => match a.get_mut(*i) {
                Some(v) => v,
                None => return,
            },
            _ => return,
        };
    }
    if let Value::Object(m) = cur {
        m.entry(key.to_string()).or_insert_with(|| json!(value));
    }
}

/// Where a document of `kind` declares the type of `group`, and the value it declares.
fn declared_type(kind: &str, group: &str) -> Option<(Vec<Step>, &'static str, String)> {
    let keys = |ks: &[&str]| ks.iter().map(|k| Step::Key(k.to_string())).collect();
    if group.starts_with('_') {
        return None;
    }
    match kind {
        "ingestionPipeline" => Some((keys(&["sourceConfig", "config"]), "type", group.into())),
        "workflow" => {
            let (_, t) = group.split_once('/')?;
            Some((keys(&["request", "connection", "config"]), "type", t.into()))
        }
        "user (bot user)" => {
            let t = group.strip_suffix("AuthMechanism")?;
            Some((keys(&["authenticationMechanism"]), "authType", t.into()))
        }
        _ => Some((keys(&["connection", "config"]), "type", group.into())),
    }
}

/// One document per union alternative under which the path exists, each declaring the
/// group's type and the type field of every union member the alternative chooses.
fn documents(kind: &str, group: &str, entry: &Value) -> Vec<Value> {
    let path = entry["path"].as_str().expect("path");
    let base = doc_at(&concrete(path));
    let alternatives: Vec<&Value> = match entry.get("oneOf").and_then(Value::as_array) {
        Some(alts) if !alts.is_empty() => alts.iter().collect(),
        _ => vec![&Value::Null],
    };
    alternatives
        .into_iter()
        .map(|alt| {
            let mut doc = base.clone();
            if let Some((at, key, t)) = declared_type(kind, group) {
                set_type(&mut doc, &at, key, &t);
            }
            for choice in alt.as_array().into_iter().flatten() {
                if let (Some(at), Some(t)) = (choice["at"].as_str(), choice["type"].as_str()) {
                    set_type(&mut doc, &concrete(at), "type", t);
                }
            }
            doc
        })
        .collect()
}

/// Is the secret at `path` of every document found by a rule path (not the safety net)?
fn found_by_a_rule(rules: &RuleSet, rule: &Rule, path: &str, docs: &[Value]) -> bool {
    let steps = concrete(path);
    docs.iter().all(|doc| {
        rules
            .find_secrets(rule, doc)
            .iter()
            .any(|f| f.steps == steps && f.rule_path.is_some())
    })
}

/// (kind, group, path) of every entry of an inventory, with the entity-only paths as group
/// `_onlyInEntity`.
fn entries(inv: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (kind, groups) in inv.as_object().expect("object") {
        if kind == "_meta" {
            continue;
        }
        for (group, list) in groups.as_object().expect("groups") {
            for e in list.as_array().expect("entries") {
                out.push((kind.clone(), group.clone(), e.clone()));
            }
        }
    }
    let diff = inv["_meta"]["createVsEntityDiff"].as_object();
    for (kind, d) in diff.into_iter().flatten() {
        for p in d["onlyInEntity"].as_array().into_iter().flatten() {
            out.push((kind.clone(), "_onlyInEntity".into(), json!({"path": p})));
        }
    }
    out
}

#[test]
fn every_path_of_every_supported_version_is_found_by_a_rule_path() {
    let rules = shipped_rules();
    let mut missed = Vec::new();
    for (name, inv) in inventories() {
        let collections = inv["_meta"]["collections"]
            .as_object()
            .expect("collections");
        let (mut covered, mut total) = (0, 0);
        let mut pairs = BTreeSet::new();
        for (kind, group, entry) in entries(&inv) {
            let coll = collections[&kind].as_str().expect("collection");
            let m = rules
                .match_request(&Method::POST, &NormPath::parse(coll).expect("path"))
                .unwrap_or_else(|| panic!("{name}: no rule for {kind} ({coll})"));
            let path = entry["path"].as_str().expect("path");
            let docs = documents(&kind, &group, &entry);
            total += 1;
            pairs.insert((kind.clone(), path.to_string()));
            if found_by_a_rule(&rules, m.rule, path, &docs) {
                covered += 1;
            } else {
                let got: Vec<String> = rules
                    .find_secrets(m.rule, &docs[0])
                    .iter()
                    .map(|f| format!("{} (rule: {})", render(&f.steps), f.rule_path.is_some()))
                    .collect();
                missed.push(format!("{name}: {kind} {group} {path}: found {got:?}"));
            }
        }
        eprintln!(
            "{name}: {covered} of {total} entries found by a rule path ({} distinct kind+path pairs)",
            pairs.len()
        );
        assert!(total >= 300, "{name}: only {total} entries");
    }
    assert!(
        missed.is_empty(),
        "{} inventory paths not found by a rule path:\n{}",
        missed.len(),
        missed.join("\n")
    );
}

#[test]
fn a_type_no_supported_version_knows_still_gets_every_rule_path() {
    // Iceberg (1.9 only) as seen by the rules: a rule path finds the REST catalog's client id,
    // which no safety-net key name would catch, whatever the declared type.
    let rules = shipped_rules();
    let m = rules
        .match_request(
            &Method::POST,
            &NormPath::parse("/api/v1/services/databaseServices").expect("path"),
        )
        .expect("rule");
    assert!(m.rule.known_types.contains("Iceberg"));
    for t in ["Iceberg", "SomeFutureIceberg"] {
        let doc = json!({"name": "n", "connection": {"config": {"type": t, "catalog": {
            "connection": {"uri": "http://c", "credential": {"clientId": "ID-1"}}}}}});
        let found = rules.find_secrets(m.rule, &doc);
        let at = concrete("$.connection.config.catalog.connection.credential.clientId");
        assert!(
            found.iter().any(|f| f.steps == at && f.rule_path.is_some()),
            "{t}: {found:?}"
        );
    }
}
