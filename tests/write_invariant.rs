//! The write invariant, checked on what reaches the upstream for generated JSON Patch
//! sequences (add, remove, replace, move, copy, test on secret paths, their ancestors,
//! non-secret paths and array elements) against generated entities of two ruled kinds:
//!
//! 1. every secret field of the stored entity holds the reference to its own id, or null;
//! 2. the store holds at that id the value the caller meant for the field (moved and
//!    re-ordered secrets keep their values; a cleared field has no stored value);
//! 3. no byte the upstream received contains a value that ends up in a secret field only;
//! 4. everything that is not a secret is stored as the caller's patch says;
//! 5. no plain field of the stored entity holds a reference (a `move`/`copy` out of a secret
//!    into a plain field would hand the caller what the secret field held; it fails this on
//!    the gateway before such ops were refused).
//!
//! Generated values include JSON texts with a credential member and URLs with a password in
//! their user info: inside the connection they must be stored whole (at a secret field) or
//! refused, never forwarded (rule 3 looks into JSON texts and URLs; with the gateway's
//! refusals switched off it fails at once).
//!
//! The expected entity comes from an independent model: the patch applied (with the
//! `json-patch` crate) to the entity with its references resolved to their values; secret
//! paths and ids are written out here, not taken from the gateway. This only uses the test
//! harness API that predates the invariant, so the same file runs against older gateways
//! (it found the move/copy leak in the gateway before "writes judged by their result").

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use http::Method;
use om_secrets_proxy::secrets::memory::MemoryStore;
use om_secrets_proxy::secrets::SecretStore;
use proptest::prelude::*;
use serde_json::{json, Value};
use support::*;

// === the model: kinds, secret paths, ids ===

#[derive(Debug, Clone, Copy)]
enum Kind {
    Mysql,
    Mcp,
}

impl Kind {
    fn collection(self) -> &'static str {
        match self {
            Kind::Mysql => "/api/v1/services/databaseServices",
            Kind::Mcp => "/api/v1/services/mcpServices",
        }
    }
    fn emu_collection(self) -> &'static str {
        &self.collection()["/api/v1/".len()..]
    }
    fn root(self, name: &str) -> String {
        match self {
            Kind::Mysql => format!("/openmetadata/database/{name}"),
            Kind::Mcp => format!("/openmetadata/mcp/{name}"),
        }
    }
}

/// Key names a secret sits under in these documents (rules, or the name-based safety net).
const SECRET_KEYS: &[&str] = &["password", "sslpassword", "apiKey"];

/// Secret locations of a document of `kind`, as JSON Pointers below `connection.config`
/// (steps), following where each kind's rules and safety net look.
fn secret_locations(kind: Kind, doc: &Value) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let Some(config) = doc.pointer("/connection/config") else {
        return out;
    };
    fn walk(v: &Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    at.push(k.clone());
                    let named = SECRET_KEYS.contains(&k.as_str());
                    match child {
                        Value::String(_) | Value::Number(_) | Value::Bool(_) | Value::Null
                            if named =>
                        {
                            out.push(at.clone())
                        }
                        _ => walk(child, at, out),
                    }
                    at.pop();
                }
            }
            Value::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    at.push(i.to_string());
                    walk(child, at, out);
                    at.pop();
                }
            }
            _ => {}
        }
    }
    let _ = kind;
    walk(config, &mut Vec::new(), &mut out);
    out
}

/// The id OpenMetadata builds: field parts lower-cased with `_`/`-` dropped.
fn id_of(kind: Kind, name: &str, rel: &[String]) -> String {
    let mut id = kind.root(name);
    for p in rel {
        id.push('/');
        id.push_str(&p.replace(['_', '-'], "").to_lowercase());
    }
    id
}

fn pointer(rel: &[String]) -> String {
    let mut p = String::from("/connection/config");
    for s in rel {
        p.push('/');
        p.push_str(&s.replace('~', "~0").replace('/', "~1"));
    }
    p
}

// === generated entities and patches ===

#[derive(Debug, Clone)]
struct Case {
    kind: Kind,
    secrets: Vec<String>,
    ops: Vec<Value>,
}

fn secret_value(n: usize, salt: u64) -> String {
    format!("S{salt:016x}q{n:02}")
}

fn entity(kind: Kind, name: &str, secrets: &[String]) -> Value {
    match kind {
        Kind::Mysql => json!({
            "name": name, "serviceType": "Mysql", "description": "d",
            "connection": {"config": {"type": "Mysql", "username": "u",
                "hostPort": "h:3306", "port": 12345678901234567890123u128.to_string().parse::<Value>().unwrap_or(Value::Null),
                "authType": {"password": secrets[0]},
                "connectionOptions": {"sslpassword": secrets[1], "region": "eu"}}}
        }),
        Kind::Mcp => json!({
            "name": name, "serviceType": "Mcp", "description": "d",
            "connection": {"config": {"type": "Mcp", "servers": [
                {"name": "a", "url": "http://a", "apiKey": secrets[0]},
                {"name": "b", "url": "http://b", "apiKey": secrets[1]}]}}
        }),
    }
}

fn paths(kind: Kind) -> Vec<&'static str> {
    match kind {
        Kind::Mysql => vec![
            "/connection/config/authType/password",
            "/connection/config/connectionOptions/sslpassword",
            "/connection/config/authType",
            "/connection/config/connectionOptions",
            "/connection/config/username",
            "/connection/config/connectionOptions/region",
            "/connection/config/authType/extra",
            "/description",
            "/displayName",
            "/connection/config/port",
        ],
        Kind::Mcp => vec![
            "/connection/config/servers/0/apiKey",
            "/connection/config/servers/1/apiKey",
            "/connection/config/servers/0",
            "/connection/config/servers/1",
            "/connection/config/servers/-",
            "/connection/config/servers",
            "/connection/config/servers/0/url",
            "/description",
            "/displayName",
        ],
    }
}

fn value_strategy(salt: u64) -> impl Strategy<Value = Value> {
    prop_oneof![
        (10usize..40).prop_map(move |n| Value::String(secret_value(n, salt))),
        Just(json!("plain-text")),
        Just(json!(null)),
        Just(json!("")),
        Just(json!(98765432109876543210987u128
            .to_string()
            .parse::<Value>()
            .unwrap_or(Value::Null))),
        (10usize..40).prop_map(move |n| json!({"password": secret_value(n, salt)})),
        (10usize..40).prop_map(move |n| json!({"name": "n", "apiKey": secret_value(n, salt)})),
        // A JSON text with a credential in it: stored whole where a secret field takes it,
        // refused inside the connection elsewhere, forwarded as it is outside the connection.
        (10usize..40).prop_map(move |n| Value::String(format!(
            "{{\"Authorization\": \"{}\"}}",
            secret_value(n, salt)
        ))),
        // A password in a URL's user info: stored whole where a secret field takes it,
        // refused inside the connection elsewhere, forwarded as it is outside the connection.
        (10usize..40).prop_map(move |n| Value::String(format!(
            "https://u:{}@db.example.org:5432/x",
            secret_value(n, salt)
        ))),
    ]
}

fn op_strategy(kind: Kind, salt: u64) -> impl Strategy<Value = Value> {
    let ps = paths(kind);
    let path = proptest::sample::select(ps.clone());
    let from = proptest::sample::select(ps);
    // Weighted so that about a quarter of the sequences are accepted: moves, copies and tests
    // that involve a secret are refused (422), and one refused op refuses the whole patch.
    prop_oneof![
        3 => (path.clone(), value_strategy(salt))
            .prop_map(|(p, v)| json!({"op": "add", "path": p, "value": v})),
        3 => (path.clone(), value_strategy(salt))
            .prop_map(|(p, v)| json!({"op": "replace", "path": p, "value": v})),
        2 => path.clone()
            .prop_map(|p| json!({"op": "remove", "path": p})),
        1 => (from.clone(), path.clone()).prop_map(|(f, p)| json!({"op": "move", "from": f, "path": p})),
        1 => (from, path.clone()).prop_map(|(f, p)| json!({"op": "copy", "from": f, "path": p})),
        1 => (path, value_strategy(salt))
            .prop_map(|(p, v)| json!({"op": "test", "path": p, "value": v})),
    ]
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        prop_oneof![Just(Kind::Mysql), Just(Kind::Mcp)],
        any::<u64>(),
    )
        .prop_flat_map(|(kind, salt)| {
            (
                Just(kind),
                Just(vec![secret_value(0, salt), secret_value(1, salt)]),
                proptest::collection::vec(op_strategy(kind, salt), 1..6),
            )
                .prop_map(|(kind, secrets, ops)| Case { kind, secrets, ops })
        })
}

// === running a case ===

/// Every string in a document, with whether it sits at a secret location.
fn strings(kind: Kind, doc: &Value) -> (Vec<String>, Vec<String>) {
    let secret_ptrs: Vec<String> = secret_locations(kind, doc)
        .iter()
        .map(|r| pointer(r))
        .collect();
    let mut at_secret = Vec::new();
    let mut elsewhere = Vec::new();
    fn walk(v: &Value, at: String, secret: &[String], a: &mut Vec<String>, b: &mut Vec<String>) {
        match v {
            Value::String(s) => {
                if secret.contains(&at) {
                    a.push(s.clone())
                } else {
                    b.push(s.clone())
                }
            }
            Value::Array(x) => x
                .iter()
                .enumerate()
                .for_each(|(i, c)| walk(c, format!("{at}/{i}"), secret, a, b)),
            Value::Object(m) => m.iter().for_each(|(k, c)| {
                walk(
                    c,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    secret,
                    a,
                    b,
                )
            }),
            _ => {}
        }
    }
    walk(
        doc,
        String::new(),
        &secret_ptrs,
        &mut at_secret,
        &mut elsewhere,
    );
    (at_secret, elsewhere)
}

/// A document without its secret fields and the fields the upstream sets itself.
fn non_secret(kind: Kind, doc: &Value) -> Value {
    let mut d = doc.clone();
    let mut locs = secret_locations(kind, &d);
    locs.sort();
    locs.reverse();
    for rel in locs {
        let p = pointer(&rel);
        let (parent, key) = p.rsplit_once('/').expect("pointer");
        if let Some(v) = d.pointer_mut(parent) {
            match v {
                Value::Object(m) => {
                    m.remove(key);
                }
                Value::Array(a) => {
                    if let Ok(i) = key.parse::<usize>() {
                        if i < a.len() {
                            a[i] = Value::Null;
                        }
                    }
                }
                _ => {}
            }
        }
    }
    if let Some(m) = d.as_object_mut() {
        for k in [
            "id",
            "version",
            "updatedAt",
            "updatedBy",
            "href",
            "fullyQualifiedName",
            "deleted",
            "changeDescription",
        ] {
            m.remove(k);
        }
    }
    d
}

/// Resolves every `secret:` string at a secret location to its stored value.
async fn resolved(kind: Kind, doc: &Value, store: &MemoryStore) -> Value {
    let mut d = doc.clone();
    for rel in secret_locations(kind, doc) {
        let p = pointer(&rel);
        if let Some(Value::String(s)) = d.pointer(&p).cloned() {
            if let Some(id) = s.strip_prefix("secret:") {
                let v = store
                    .get(id)
                    .await
                    .expect("store")
                    .expect("a stored value behind every reference");
                *d.pointer_mut(&p).expect("slot") = Value::String(v);
            }
        }
    }
    d
}

struct Bench {
    emu: Emulator,
    gw: Gw,
    mem: Arc<MemoryStore>,
    n: std::sync::atomic::AtomicUsize,
    /// Cases the gateway accepted (the rest it refused, which the invariant also covers).
    accepted: std::sync::atomic::AtomicUsize,
}

async fn bench() -> Bench {
    let (emu, gw, mem) = mem_stack().await;
    Bench {
        emu,
        gw,
        mem,
        n: Default::default(),
        accepted: Default::default(),
    }
}

async fn run_case(b: &Bench, case: &Case) -> Result<(), String> {
    let k = case.kind;
    let name = format!(
        "inv{}",
        b.n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let created = call(
        &b.gw,
        Method::POST,
        k.collection(),
        "application/json",
        entity(k, &name, &case.secrets).to_string(),
    )
    .await;
    if created.status != 201 {
        return Err(format!("create: {} {}", created.status, created.text()));
    }
    let id = created.json()["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let before = b
        .emu
        .entity(k.emu_collection(), &name)
        .ok_or("not stored")?;
    let plain_before = resolved(k, &before, &b.mem).await;
    let store_before: BTreeMap<String, Option<String>> = {
        let mut m = BTreeMap::new();
        for rel in secret_locations(k, &before) {
            let sid = id_of(k, &name, &rel);
            m.insert(sid.clone(), b.mem.get(&sid).await.expect("store"));
        }
        m
    };
    b.emu.clear_recorded();
    let ops = Value::Array(case.ops.clone());
    let a = call(
        &b.gw,
        Method::PATCH,
        &format!("{}/{id}", k.collection()),
        "application/json-patch+json",
        ops.to_string(),
    )
    .await;
    let received = b.emu.everything_received();
    // The model: the patch applied to the entity with its values.
    let patch: json_patch::Patch =
        serde_json::from_str(&ops.to_string()).map_err(|e| e.to_string())?;
    let mut model = plain_before.clone();
    let applies = json_patch::patch_unsafe(&mut model, &patch.0).is_ok();
    let mut refs_model = before.clone();
    let _ = json_patch::patch_unsafe(&mut refs_model, &patch.0);
    // 3. values that end up only in secret fields never reach the upstream.
    let (secret_strings, other_strings) = strings(k, &model);
    let mut all_generated: Vec<String> = case.secrets.clone();
    for op in &case.ops {
        collect_strings(op.get("value").unwrap_or(&Value::Null), &mut all_generated);
    }
    // The password of a generated URL is a generated value of its own.
    let passwords: Vec<String> = all_generated
        .iter()
        .filter_map(|v| {
            v.split_once("://u:")?
                .1
                .split_once('@')
                .map(|p| p.0.to_string())
        })
        .collect();
    all_generated.extend(passwords);
    let outside = outside_connection(&model);
    for v in all_generated.iter().filter(|v| v.starts_with('S')) {
        // Plain where the caller put it: a plain field, or inside a JSON text outside the
        // connection (the documented limit of the safety net's subtrees).
        let elsewhere = applies
            && a.status < 300
            && (other_strings.contains(v) || outside.iter().any(|s| s.contains(v.as_str())));
        let was_plain_upstream = strings(k, &before).1.contains(v);
        if elsewhere || was_plain_upstream {
            continue;
        }
        for form in leak_forms(v) {
            if contains(&received, &form) {
                return Err(format!(
                    "a secret value reached the upstream (status {}): {v}",
                    a.status
                ));
            }
        }
    }
    let after = b
        .emu
        .entity(k.emu_collection(), &name)
        .ok_or("entity gone")?;
    if a.status >= 300 {
        // Refused: nothing changed upstream or in the store.
        if non_secret(k, &after) != non_secret(k, &before)
            || strings(k, &after).0 != strings(k, &before).0
        {
            return Err(format!("a refused patch ({}) changed the entity", a.status));
        }
        for (sid, v) in &store_before {
            if &b.mem.get(sid).await.expect("store") != v {
                return Err(format!(
                    "a refused patch ({}) changed the store at {sid}",
                    a.status
                ));
            }
        }
        return Ok(());
    }
    if !applies {
        return Err(format!(
            "a patch the model cannot apply was accepted: {}",
            a.text()
        ));
    }
    b.accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    // 1 and 2: each secret field holds its own reference and the store its value.
    for rel in secret_locations(k, &model) {
        let p = pointer(&rel);
        let sid = id_of(k, &name, &rel);
        let expected = model.pointer(&p).cloned().unwrap_or(Value::Null);
        let stored_up = after.pointer(&p).cloned().unwrap_or(Value::Null);
        let stored = b.mem.get(&sid).await.expect("store");
        match expected {
            Value::Null => {
                if !stored_up.is_null() {
                    return Err(format!("{p}: expected null upstream, got {stored_up}"));
                }
            }
            Value::String(ref s) if s.is_empty() => {
                if !stored_up.is_null() || stored.is_some() {
                    return Err(format!(
                        "{p}: a cleared field must be null with nothing stored"
                    ));
                }
            }
            other => {
                let want = match other {
                    Value::String(s) => s,
                    v => v.to_string(),
                };
                if stored_up != json!(format!("secret:{sid}")) {
                    return Err(format!(
                        "{p}: upstream holds {stored_up}, not its own reference {sid}"
                    ));
                }
                if stored.as_deref() != Some(want.as_str()) {
                    return Err(format!(
                        "{p}: the store holds {stored:?} at {sid}, the caller meant {want}"
                    ));
                }
            }
        }
    }
    let _ = secret_strings;
    // 5. no plain field holds what a secret field held: a move or copy out of a secret never
    // lands outside one (the caller would read it back there).
    let mut plain = Vec::new();
    collect_strings(&non_secret(k, &after), &mut plain);
    if let Some(r) = plain.iter().find(|s| s.starts_with("secret:")) {
        return Err(format!("a plain field holds the reference {r}"));
    }
    // 4. everything else as the patch says.
    if non_secret(k, &after) != non_secret(k, &refs_model) {
        return Err(format!(
            "non-secret data differs:\n upstream {}\n expected {}",
            non_secret(k, &after),
            non_secret(k, &refs_model)
        ));
    }
    Ok(())
}

/// Every string of a document outside `connection` (where the safety net does not look).
fn outside_connection(doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Value::Object(m) = doc {
        m.iter()
            .filter(|(k, _)| *k != "connection")
            .for_each(|(_, c)| collect_strings(c, &mut out));
    }
    out
}

/// Every string in `v`, and the strings of any JSON text among them.
fn collect_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => {
            out.push(s.clone());
            if let Ok(inner @ (Value::Object(_) | Value::Array(_))) = serde_json::from_str(s) {
                collect_strings(&inner, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|c| collect_strings(c, out)),
        Value::Object(m) => m.values().for_each(|c| collect_strings(c, out)),
        _ => {}
    }
}

fn cases() -> u32 {
    std::env::var("OMSP_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

#[test]
fn generated_patches_never_break_the_write_invariant() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let b = rt.block_on(bench());
    proptest!(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() }, |(case in case_strategy())| {
        let r = rt.block_on(run_case(&b, &case));
        prop_assert!(r.is_ok(), "{:?}\n{}", case.ops, r.err().unwrap_or_default());
    });
    let (n, ok) = (
        b.n.load(std::sync::atomic::Ordering::SeqCst),
        b.accepted.load(std::sync::atomic::Ordering::SeqCst),
    );
    eprintln!(
        "write invariant: {n} generated patches, {ok} accepted, {} refused",
        n - ok
    );
    // The generator must reach the interesting half: patches the gateway accepts.
    assert!(
        ok * 5 >= n,
        "only {ok} of {n} generated patches were accepted"
    );
}
