//! The bodies of the `cargo fuzz` targets (`fuzz/`), as plain functions so that the stable
//! test `tests/fuzz_regressions.rs` replays the seed corpus and every finding through the
//! same code. Each takes arbitrary bytes, runs one part of the gateway on them the way a
//! request would, and panics when an invariant breaks:
//!
//! - [`path_normalise`]: a refused path or segments that hold no separator, matrix
//!   parameter, control byte, `.` or `..`, the same for equivalent spellings;
//! - [`rule_match`]: a path under a ruled collection always matches that rule, whatever
//!   the spelling (case, escapes, empty and `.` segments, matrix parameters);
//! - [`write_rewrite`]: create bodies, JSON Patches and merge patches through the write
//!   preparation (strip, then the guard) for every rule, managed or not: no secret field
//!   leaves unprotected, no plain value from a secret field and no stored value reaches
//!   the forwarded bytes or an error message, and no input makes the guard refuse (500);
//! - [`answer_rewrite`]: upstream answers rewritten for a user, an anonymous caller or a
//!   bot: no stored value reaches a non-bot in any spelling (raw, JSON-escaped, base64),
//!   and a masking caller sees no `secret:` / `fernet:` string anywhere;
//! - [`jwt_parse`]: arbitrary `Authorization` values: a verified identity only for a token
//!   whose RS256 signature is the configured key's over its own header and payload, with
//!   the right issuer and an `exp` still ahead.
//!
//! The write and read steps mirror `proxy::write` (`prepare_create`, `prepare_patch`) and
//! `proxy::read` (`ruled_answer`) without the network: the upstream's entity is a fixed,
//! realistic one and the store answers every id with a planted value.
//!
//! Not part of the gateway's API: only the fuzz crate and the regression test call this.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::OnceLock;

use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Value};

use crate::auth::Auth;
use crate::config::{Config, PolicyConfig, ReadAction};
use crate::error::GatewayError;
use crate::http::path::NormPath;
use crate::policy::{decide, CallerClass};
use crate::rewrite::guard::Guard;
use crate::rewrite::json::{self, parse_answer, parse_strict};
use crate::rewrite::owner::{self, Located};
use crate::rewrite::patch::{self, Media, PatchBody};
use crate::rewrite::response::{may_hold_references, ReadCtx};
use crate::rewrite::strip::Stripper;
use crate::rewrite::{classify, spans, FieldValue, REFERENCE_PREFIX};
use crate::rules::ids::IdBuilder;
use crate::rules::jsonpath::{get, get_mut, Step};
use crate::rules::{Rule, RuleSet};
use crate::secrets::fernet::{FernetKeys, PREFIX as FERNET_PREFIX};
use crate::secrets::memory::MemoryStore;
use crate::secrets::ownership::MARKER;
use crate::secrets::{SecretStore, StoreFuture};

/// What every stored value starts with: no input holds it unless the fuzzer copied it.
pub const PLANTED: &str = "Zq7Pl4ntS3cr3tV";

/// The issuer the JWT target's gateway trusts.
pub const ISSUER: &str = "fuzz.open-metadata.org";

/// The target names, as `fuzz/` and `fuzz/regressions/` name them.
pub const TARGETS: [&str; 5] = [
    "path_normalise",
    "rule_match",
    "write_rewrite",
    "answer_rewrite",
    "jwt_parse",
];

/// Runs the target called `name` on `data` (the regression test replays files this way).
pub fn run(name: &str, data: &[u8]) {
    match name {
        "path_normalise" => path_normalise(data),
        "rule_match" => rule_match(data),
        "write_rewrite" => write_rewrite(data),
        "answer_rewrite" => answer_rewrite(data),
        "jwt_parse" => jwt_parse(data),
        other => panic!("no fuzz target {other}"),
    }
}

// === shared fixtures ===

/// `OMSP_FUZZ_DEBUG=1` prints what the write and answer targets produced (triage).
fn debugging() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("OMSP_FUZZ_DEBUG").is_some())
}

struct World {
    rules: RuleSet,
    ids: IdBuilder,
    fernet: FernetKeys,
    rt: tokio::runtime::Runtime,
    auth: Auth,
    signer: ring::signature::RsaKeyPair,
    /// Per rule, the upstream's entity for PATCH: [not managed, managed].
    currents: Vec<[Value; 2]>,
}

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let cfg = Config::defaults();
        let rules = RuleSet::load(&crate_dir().join("rules"), &cfg.rules.safety_net_keys)
            .expect("the repository's rules load");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        let auth = {
            let _in = rt.enter();
            let mut a = cfg.auth.clone();
            a.public_key_files = vec![jwt_fixture("key1.pub.pem")];
            a.issuer = ISSUER.into();
            let up = crate::http::upstream::Upstream::new(&cfg.upstream).expect("upstream");
            Auth::new(&a, up, false).expect("auth with the fixture key")
        };
        let ids = IdBuilder::new(&cfg.secrets.prefix, &cfg.secrets.cluster_name);
        let fernet = FernetKeys::new(&[fernet_key()]).expect("a valid Fernet key");
        let currents = rules
            .rules
            .iter()
            .map(|r| [false, true].map(|managed| current_entity(&ids, &fernet, r, managed)))
            .collect();
        World {
            rules,
            ids,
            fernet,
            rt,
            auth,
            signer: signer(),
            currents,
        }
    })
}

/// The Fernet key of the fuzzed gateways (fixed, so corpus files can carry its tokens).
pub fn fernet_key() -> String {
    URL_SAFE.encode([7u8; 32])
}

fn jwt_fixture(name: &str) -> PathBuf {
    crate_dir().join("tests/fixtures/jwt").join(name)
}

fn signer() -> ring::signature::RsaKeyPair {
    let pem = std::fs::read_to_string(jwt_fixture("key1.pem")).expect("key1.pem");
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = STANDARD.decode(b64.trim()).expect("PEM body");
    ring::signature::RsaKeyPair::from_pkcs8(&der).expect("key1 is PKCS#8 RSA")
}

/// The value the store holds for `id`: [`PLANTED`] and a hash of the id.
pub fn planted(id: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{PLANTED}{h:016x}")
}

/// A store that answers every id (but owner markers) with its planted value until written.
#[derive(Default)]
struct PlantedStore {
    mem: MemoryStore,
}

impl SecretStore for PlantedStore {
    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            Ok(match self.mem.get(id).await? {
                Some(v) => Some(v),
                None if id.ends_with(MARKER) => None,
                None => Some(planted(id)),
            })
        })
    }
    fn put<'a>(&'a self, id: &'a str, value: &'a str) -> StoreFuture<'a, ()> {
        self.mem.put(id, value)
    }
    fn create<'a>(&'a self, id: &'a str, value: &'a str) -> StoreFuture<'a, bool> {
        self.mem.create(id, value)
    }
    fn delete<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        self.mem.delete(id)
    }
    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        self.mem.list(prefix)
    }
    fn health(&self) -> StoreFuture<'_, ()> {
        self.mem.health()
    }
    fn name(&self) -> &'static str {
        "planted"
    }
}

/// The spellings of `s` a leak could take in a JSON answer: as it is, JSON-escaped, and
/// base64 (standard and URL-safe) at each of the three alignments.
fn spellings(s: &str) -> Vec<Vec<u8>> {
    let mut out = vec![s.as_bytes().to_vec()];
    let escaped = serde_json::to_string(s).expect("a string serialises");
    out.push(escaped.as_bytes()[1..escaped.len() - 1].to_vec());
    for pad in 0..3 {
        let mut input = vec![b'x'; pad];
        input.extend_from_slice(s.as_bytes());
        for enc in [STANDARD.encode(&input), URL_SAFE.encode(&input)] {
            // Characters that depend only on `s`: skip the padding's, drop the last group.
            let skip = (pad * 4).div_ceil(3);
            let end = enc.len().saturating_sub(4);
            if end > skip + 8 {
                out.push(enc.as_bytes()[skip..end].to_vec());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && memchr::memmem::find(hay, needle).is_some()
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    memchr::memmem::find_iter(hay, needle).count()
}

/// Whether `s` appears in `hay` in any of its [`spellings`].
fn spelled_in(hay: &[u8], s: &str) -> bool {
    spellings(s).iter().any(|sp| contains(hay, sp))
}

// === path normalisation and rule matching ===

/// The path target: no panic; a path read is free of what normalisation removes, and an
/// equivalent spelling (letters percent-encoded, slashes doubled, `/./` and matrix
/// parameters added) reads the same.
pub fn path_normalise(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let raw = String::from_utf8_lossy(rest);
    let Ok(p) = NormPath::parse(&raw) else {
        return;
    };
    for seg in &p.segments {
        assert!(
            !seg.is_empty() && seg != "." && seg != "..",
            "segment {seg:?} of {raw:?}"
        );
        assert!(
            !seg.contains(['/', '\\', ';']) && !seg.chars().any(|c| c < ' ' || c == '\x7f'),
            "segment {seg:?} of {raw:?}"
        );
    }
    let variant = respell(&raw, sel);
    let q = NormPath::parse(&variant);
    assert_eq!(
        q.as_ref().ok(),
        Some(&p),
        "{raw:?} and its respelling {variant:?} read differently"
    );
}

/// An equivalent spelling of a path: `sel` picks which of the changes are made. Only
/// unreserved characters outside escapes are encoded; a decoded `;` would start a matrix
/// parameter, a decoded `/` a segment, so neither is touched.
fn respell(raw: &str, sel: u8) -> String {
    let mut out = String::with_capacity(raw.len() * 3);
    let bytes = raw.as_bytes();
    let mut i = 0;
    let mut n = 0usize;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            // Keep an escape as it is (a `%` without two hex digits can only follow a `;`).
            let hex = |k: usize| bytes.get(k).is_some_and(u8::is_ascii_hexdigit);
            let end = if hex(i + 1) && hex(i + 2) {
                i + 3
            } else {
                i + 1
            };
            out.push_str(&raw[i..end]);
            i = end;
            continue;
        }
        if b == b'/' {
            out.push('/');
            if sel & 1 != 0 {
                out.push('/');
            }
            if sel & 2 != 0 {
                out.push_str("./");
            }
            i += 1;
            continue;
        }
        let ch = raw[i..].chars().next().expect("a char at a boundary");
        n += 1;
        if b.is_ascii_alphanumeric() && (sel & 4 != 0) && (n + usize::from(sel >> 4)) % 2 == 0 {
            let esc = match sel & 8 {
                0 => format!("%{b:02x}"),
                _ => format!("%{b:02X}"),
            };
            out.push_str(&esc);
        } else {
            out.push(ch);
        }
        i += ch.len_utf8();
    }
    out
}

/// The rule-matching target: `data` is a method selector then a path. No panic; a path
/// whose segments begin with a rule's collection (case aside) matches that rule, and an
/// equivalent spelling matches the same rule and route.
pub fn rule_match(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let w = world();
    let methods = [
        http::Method::GET,
        http::Method::POST,
        http::Method::PUT,
        http::Method::PATCH,
        http::Method::DELETE,
        http::Method::HEAD,
    ];
    let method = &methods[usize::from(sel) % methods.len()];
    let raw = String::from_utf8_lossy(rest);
    let Ok(p) = NormPath::parse(&raw) else {
        return;
    };
    let m = w.rules.match_request(method, &p);
    for r in &w.rules.rules {
        let coll: Vec<&str> = r.collection.split('/').filter(|s| !s.is_empty()).collect();
        let under = p.segments.len() >= coll.len()
            && coll
                .iter()
                .zip(&p.segments)
                .all(|(a, b)| a.eq_ignore_ascii_case(b));
        if under {
            let got = m.as_ref().map(|m| m.rule.kind.as_str());
            assert_eq!(got, Some(r.kind.as_str()), "{raw:?} escapes its rule");
        }
    }
    let variant = respell(&raw, sel.rotate_left(2));
    let Ok(q) = NormPath::parse(&variant) else {
        panic!("{raw:?} reads but its respelling {variant:?} does not");
    };
    let n = w.rules.match_request(method, &q);
    let key = |m: &Option<crate::rules::RouteMatch<'_>>| {
        m.as_ref()
            .map(|m| (m.rule.kind.clone(), m.route.map(|r| r.path.clone())))
    };
    assert_eq!(
        key(&m),
        key(&n),
        "{raw:?} and {variant:?} match differently"
    );
}

// === the write path ===

/// The entities the upstream holds for PATCH: per rule, one with its secrets as references
/// (managed) or Fernet tokens (not managed). Built from the rule's own paths.
fn current_entity(ids: &IdBuilder, fernet: &FernetKeys, rule: &Rule, managed: bool) -> Value {
    let name = "fuzzed-entity";
    let mut doc = json!({
        "id": "00000000-0000-0000-0000-000000000001",
        "name": name,
        "fullyQualifiedName": name,
        "description": "an entity the fuzzer patches",
        "version": 0.1,
    });
    if let Some(scope) = &rule.scope {
        doc[scope.reference.as_str()] = json!({"id": "00000000-0000-0000-0000-000000000002", "type": "databaseService",
                   "fullyQualifiedName": "svc"});
        doc["fullyQualifiedName"] = json!(format!("svc.{name}"));
    }
    let root = ids.root(&rule.root_template, name);
    for path in &rule.secret_paths {
        let Ok(segs) = crate::rules::jsonpath::compile(path) else {
            continue;
        };
        let mut steps = Vec::new();
        for s in segs {
            match s {
                crate::rules::jsonpath::Seg::Key(k) => steps.push(Step::Key(k)),
                _ => break,
            }
        }
        let id = ids.id(&root, rule.field_steps(&steps));
        let value = if managed {
            format!("{REFERENCE_PREFIX}{id}")
        } else {
            fernet.encrypt(&planted(&id)).expect("encrypt")
        };
        put_path(&mut doc, &steps, Value::String(value));
    }
    doc
}

fn put_path(doc: &mut Value, steps: &[Step], value: Value) {
    let mut cur = doc;
    for (i, s) in steps.iter().enumerate() {
        let Step::Key(k) = s else { return };
        let Some(obj) = cur.as_object_mut() else {
            return;
        };
        if i + 1 == steps.len() {
            obj.insert(k.clone(), value);
            return;
        }
        cur = obj.entry(k.clone()).or_insert_with(|| json!({}));
    }
}

/// What one write produced: the forwarded bytes and the entity the upstream will hold.
struct Written {
    bytes: Vec<u8>,
    after: Value,
}

/// One write: `sel` picks the rule, the provider kind and the operation.
struct WriteCase<'a> {
    rule: &'a Rule,
    managed: bool,
    media: Option<Media>,
    raw: &'a [u8],
}

/// The write target. Selector byte: bits 0-4 the rule, bit 5 managed, bits 6-7 the
/// operation (create, JSON Patch, merge patch, create). Then the body.
pub fn write_rewrite(data: &[u8]) {
    let Some((&sel, raw)) = data.split_first() else {
        return;
    };
    let w = world();
    let ri = usize::from(sel & 0x1f) % w.rules.rules.len();
    let case = WriteCase {
        rule: &w.rules.rules[ri],
        managed: sel & 0x20 != 0,
        media: match sel >> 6 {
            1 => Some(Media::JsonPatch),
            2 => Some(Media::MergePatch),
            _ => None,
        },
        raw,
    };
    let store = PlantedStore::default();
    let current = case
        .media
        .map(|_| w.currents[ri][usize::from(case.managed)].clone());
    let result = w.rt.block_on(async {
        match case.media {
            Some(media) => {
                let cur = current.as_ref().expect("a current entity");
                prepare_patch(w, &case, media, cur, &store).await
            }
            None => prepare_create(w, &case, &store).await,
        }
    });
    // The caller's plain values in secret fields: of the body (create) or of the entity
    // the patch produces, before stripping.
    let input = match case.media {
        None => parse_strict(raw).ok(),
        Some(media) => parse_strict(raw)
            .ok()
            .and_then(|d| PatchBody::parse(media, d).ok())
            .and_then(|b| {
                let cur = current.as_ref().expect("a current entity");
                let locs = |d: &Value| secret_steps(&w.rules, case.rule, d);
                patch::apply(cur, &b, &locs).ok()
            }),
    };
    let plain = input
        .as_ref()
        .map(|d| plain_secrets(&w.rules, case.rule, d))
        .unwrap_or_default();
    let baseline = baseline(&w.rules, case.rule, input.as_ref(), current.as_ref(), raw);
    if debugging() {
        match &result {
            Ok(wr) => eprintln!(
                "{}: forwarded {}",
                case.rule.kind,
                String::from_utf8_lossy(&wr.bytes)
            ),
            Err(e) => eprintln!("{}: refused {e}", case.rule.kind),
        }
    }
    match result {
        Ok(written) => check_written(w, &case, &written, current.as_ref(), &plain, &baseline),
        Err(e) => check_refusal(&e, &plain, &baseline),
    }
}

fn secret_steps(rules: &RuleSet, rule: &Rule, d: &Value) -> Vec<Vec<Step>> {
    rules
        .find_secrets(rule, d)
        .into_iter()
        .map(|f| f.steps)
        .collect()
}

/// Plain values (8 bytes or more) that secret fields of `doc` hold. Values holding JSON's
/// or JSON Pointer's syntax are left out: forwarded bytes are made of that syntax.
fn plain_secrets(rules: &RuleSet, rule: &Rule, doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for steps in secret_steps(rules, rule, doc) {
        if let Some(FieldValue::Plain(p)) = get(doc, &steps).and_then(classify) {
            if p.len() >= 8 && !p.contains(['"', '/', '\\', '~']) {
                out.push(p);
            }
        }
    }
    out
}

/// Text the output may legitimately repeat: the input with its secret fields nulled, the
/// entity the upstream held, and the raw body's non-secret bytes (escapes as written).
fn baseline(
    rules: &RuleSet,
    rule: &Rule,
    input: Option<&Value>,
    current: Option<&Value>,
    raw: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(d) = input {
        let mut d = d.clone();
        let edits: Vec<(Vec<Step>, Value)> = secret_steps(rules, rule, &d)
            .into_iter()
            .map(|s| (s, Value::Null))
            .collect();
        for (s, v) in &edits {
            if let Some(slot) = get_mut(&mut d, s) {
                *slot = v.clone();
            }
        }
        out.extend(json::to_vec(&d).unwrap_or_default());
        // Keys and strings lower-cased: secret ids are built from names.
        out.extend(json::to_vec(&d).unwrap_or_default().to_ascii_lowercase());
        if let Ok(nulled) = spans::replace_values(raw, &edits) {
            out.extend(nulled);
        }
    }
    if let Some(c) = current {
        out.extend(json::to_vec(c).unwrap_or_default());
    }
    out
}

/// A refused write: the message names no secret value.
fn check_refusal(e: &GatewayError, plain: &[String], baseline: &[u8]) {
    let msg = e.to_string();
    assert!(
        !matches!(e, GatewayError::Internal(_)),
        "the write path answered 500: {msg}"
    );
    assert!(!msg.contains(PLANTED), "a stored value in an error: {msg}");
    for p in plain {
        if !contains(baseline, p.as_bytes()) {
            assert!(
                !msg.contains(p.as_str()),
                "a secret value in an error: {msg}"
            );
        }
    }
}

/// An accepted write: every secret field of what the upstream will hold is protected, and
/// no plain or stored value is in the forwarded bytes.
fn check_written(
    w: &World,
    case: &WriteCase<'_>,
    written: &Written,
    current: Option<&Value>,
    plain: &[String],
    baseline: &[u8],
) {
    let mut redacted = written.bytes.clone();
    for steps in secret_steps(&w.rules, case.rule, &written.after) {
        let Some(v) = get(&written.after, &steps) else {
            continue;
        };
        let untouched = current.and_then(|c| get(c, &steps)) == Some(v);
        let ok = match classify(v) {
            None => true,
            Some(FieldValue::Clear) | Some(FieldValue::Reference(_)) => true,
            Some(FieldValue::Fernet(t)) => {
                !case.managed || untouched || {
                    let opened = w.fernet.decrypt(&t).ok();
                    opened.is_some_and(|o| o.starts_with(REFERENCE_PREFIX))
                }
            }
            Some(FieldValue::Mask) => untouched,
            Some(FieldValue::Plain(_)) => false,
        };
        assert!(
            ok,
            "a secret field leaves unprotected: {}",
            crate::rules::jsonpath::render(&steps)
        );
        if let Value::String(s) = v {
            let lit = serde_json::to_string(s).expect("string");
            redacted = replace_all(&redacted, lit.as_bytes(), b"null");
        }
    }
    assert!(
        !contains(&written.bytes, PLANTED.as_bytes()),
        "a stored value is forwarded"
    );
    for p in plain {
        if contains(baseline, p.as_bytes()) {
            continue;
        }
        let n = count(&redacted, p.as_bytes());
        assert!(n == 0, "a plain secret value is forwarded ({n} times)");
    }
}

fn replace_all(hay: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut last = 0;
    for at in memchr::memmem::find_iter(hay, needle) {
        if at < last {
            continue;
        }
        out.extend_from_slice(&hay[last..at]);
        out.extend_from_slice(with);
        last = at + needle.len();
    }
    out.extend_from_slice(&hay[last..]);
    out
}

fn stripper<'a>(
    w: &'a World,
    case: &WriteCase<'a>,
    at: Located,
    store: &'a PlantedStore,
) -> Stripper<'a> {
    Stripper {
        rules: &w.rules,
        rule: case.rule,
        ids: &w.ids,
        root: at.root,
        owner: at.owner,
        legacy_root: at.legacy_root,
        owned: at.owned,
        managed: case.managed,
        fernet: &w.fernet,
        wrap_references: false,
        store,
        mask_source: None,
        held: Default::default(),
    }
}

fn guard<'a>(w: &'a World, case: &WriteCase<'a>, root: &'a str) -> Guard<'a> {
    Guard {
        rules: &w.rules,
        rule: case.rule,
        ids: &w.ids,
        fernet: &w.fernet,
        root: Some(root),
        managed: case.managed,
    }
}

/// `proxy::write::prepare_create` without the network (a scoped kind's parent is `svc`).
async fn prepare_create(
    w: &World,
    case: &WriteCase<'_>,
    store: &PlantedStore,
) -> Result<Written, GatewayError> {
    let raw = case.raw;
    let mut doc = parse_strict(raw).map_err(GatewayError::BadRequest)?;
    if !doc.is_object() {
        return Err(GatewayError::BadRequest("not an object".into()));
    }
    refuse_shape(w, case.rule, &doc)?;
    let has_secrets = !w.rules.find_secrets(case.rule, &doc).is_empty();
    let Some(name) = doc.get("name").and_then(Value::as_str).map(str::to_string) else {
        if has_secrets {
            return Err(GatewayError::BadRequest("no name".into()));
        }
        return Ok(Written {
            bytes: raw.to_vec(),
            after: doc,
        });
    };
    if !has_secrets {
        return Ok(Written {
            bytes: raw.to_vec(),
            after: doc,
        });
    }
    let scope = (case.managed && case.rule.scope.is_some()).then_some("svc");
    let entity = owner::Entity {
        rule: case.rule,
        name: &name,
        scope,
        current: None,
    };
    let at = owner::locate(store, &w.ids, &w.fernet, &entity, case.managed).await?;
    let s = stripper(w, case, at, store);
    let stripped = s.strip(&mut doc, None).await?;
    let out = spans::replace_values(raw, &stripped.edits)
        .map_err(|e| GatewayError::Internal(e.to_string()))?;
    let outgoing = parse_strict(&out).map_err(GatewayError::Internal)?;
    guard(w, case, &s.root).check(&outgoing, None)?;
    Ok(Written {
        bytes: out,
        after: outgoing,
    })
}

fn refuse_shape(w: &World, rule: &Rule, doc: &Value) -> Result<(), GatewayError> {
    if json::depth(doc) > json::MAX_DEPTH {
        return Err(GatewayError::BadRequest("too deep".into()));
    }
    match w.rules.shape_error(rule, doc) {
        Some(at) => Err(GatewayError::BadRequest(format!("{at} must be an object"))),
        None => Ok(()),
    }
}

/// `proxy::write::prepare_patch` without the network: `current` is the upstream's entity.
async fn prepare_patch(
    w: &World,
    case: &WriteCase<'_>,
    media: Media,
    current: &Value,
    store: &PlantedStore,
) -> Result<Written, GatewayError> {
    let doc = parse_strict(case.raw).map_err(GatewayError::BadRequest)?;
    let body = PatchBody::parse(media, doc)?;
    let secrets = |d: &Value| secret_steps(&w.rules, case.rule, d);
    let mut result = patch::apply(current, &body, &secrets)?;
    if !result.is_object() {
        return Err(GatewayError::BadRequest("not an object".into()));
    }
    let name = |d: &Value| d.get("name").and_then(Value::as_str).map(str::to_string);
    if name(&result) != name(current) && !secrets(&result).is_empty() {
        return Err(GatewayError::Unprocessable("renaming".into()));
    }
    refuse_shape(w, case.rule, &result)?;
    let at = if secrets(current).is_empty() && secrets(&result).is_empty() {
        Located::none(&w.ids, case.rule, &name(current).unwrap_or_default())
    } else {
        owner::locate_existing(store, &w.ids, &w.fernet, case.rule, current, case.managed).await?
    };
    let s = stripper(w, case, at, store);
    s.strip(&mut result, Some(current)).await?;
    let ops = patch::diff(current, &result);
    let mut after = current.clone();
    patch::apply_own(&mut after, &ops)?;
    guard(w, case, &s.root).check(&after, Some(current))?;
    Ok(Written {
        bytes: ops.to_string().into_bytes(),
        after,
    })
}

// === the read path ===

/// The answer target. Selector byte: bits 0-4 the rule, bits 5-6 the caller (user who
/// masks, user who sees references, anonymous, bot), bit 7 the answer is the subtree a
/// route names (`response_at`). Then the upstream's answer.
/// A route's `response_at` (the answer is an entity's subtree) when `pick` and the rule has one.
fn subtree_route(rule: &crate::rules::Rule, pick: bool) -> &[String] {
    if !pick {
        return &[];
    }
    rule.routes
        .iter()
        .find(|r| !r.response_at.is_empty())
        .map(|r| r.response_at.as_slice())
        .unwrap_or(&[])
}

pub fn answer_rewrite(data: &[u8]) {
    let Some((&sel, raw)) = data.split_first() else {
        return;
    };
    let w = world();
    let rule = &w.rules.rules[usize::from(sel & 0x1f) % w.rules.rules.len()];
    let (class, user) = match (sel >> 5) & 3 {
        0 => (CallerClass::User, ReadAction::Mask),
        1 => (CallerClass::User, ReadAction::Reference),
        2 => (CallerClass::Anonymous, ReadAction::Mask),
        _ => (CallerClass::Bot, ReadAction::Mask),
    };
    let policy = PolicyConfig {
        bot: ReadAction::Resolve,
        user,
        anonymous: ReadAction::Mask,
        bot_requires_view_all: false,
        mask_only: Default::default(),
    };
    let response_at = subtree_route(rule, sel & 0x80 != 0);
    let actions: Vec<ReadAction> = w
        .rules
        .rules
        .iter()
        .map(|r| decide(class, &policy, &r.policy))
        .collect();
    let store = PlantedStore::default();
    let out = w.rt.block_on(async {
        let mut doc = parse_answer(raw).map_err(GatewayError::ReadRefused)?;
        let ctx = ReadCtx {
            rules: &w.rules,
            rule,
            actions: &actions,
            fernet: &w.fernet,
            store: &store,
            response_at,
            permit: None,
            markers: may_hold_references(raw),
        };
        ctx.rewrite(&mut doc).await?;
        json::to_vec(&doc).map_err(|e| GatewayError::Internal(e.to_string()))
    });
    if debugging() {
        match &out {
            Ok(o) => eprintln!("{}, {class:?}: {}", rule.kind, String::from_utf8_lossy(o)),
            Err(e) => eprintln!("{}, {class:?}: refused {e}", rule.kind),
        }
    }
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            assert!(
                !matches!(e, GatewayError::Internal(_)),
                "the read path answered 500: {e}"
            );
            assert!(
                !e.to_string().contains(PLANTED),
                "a stored value in an error"
            );
            return;
        }
    };
    if class == CallerClass::Bot || input_spells_planted(raw) {
        return;
    }
    for sp in spellings(PLANTED) {
        assert!(!contains(&out, &sp), "a stored value reaches a {class:?}");
    }
    if actions.iter().all(|a| *a == ReadAction::Mask) {
        let doc = parse_answer(&out).expect("the answer re-parses");
        no_markers(&doc, 0);
    }
}

/// Whether the answer itself carries the planted prefix (the fuzzer can learn it from the
/// comparisons this code makes): then finding it in the output proves nothing.
fn input_spells_planted(raw: &[u8]) -> bool {
    if spelled_in(raw, PLANTED) {
        return true;
    }
    // Spelled with escapes, in JSON inside strings too.
    if let Ok(doc) = parse_answer(raw) {
        let mut text = Vec::new();
        decoded_text(&doc, 0, &mut text);
        if spelled_in(&text, PLANTED) {
            return true;
        }
    }
    // Inside Fernet tokens the answer carries.
    let text = String::from_utf8_lossy(raw);
    text.split(|c: char| !(c.is_ascii_alphanumeric() || "-_=:".contains(c)))
        .filter(|t| t.starts_with(FERNET_PREFIX) || t.starts_with("gAAAAA"))
        .any(|t| {
            world()
                .fernet
                .decrypt(t)
                .is_ok_and(|p| p.contains(PLANTED) || p.starts_with(REFERENCE_PREFIX))
        })
}

/// Every key and string of `v`, decoded, and those of JSON documents inside its strings.
fn decoded_text(v: &Value, nesting: usize, out: &mut Vec<u8>) {
    match v {
        Value::String(s) => {
            out.extend_from_slice(s.as_bytes());
            out.push(0);
            if nesting < 20 {
                if let Ok(inner) = parse_answer(s.as_bytes()) {
                    decoded_text(&inner, nesting + 1, out);
                }
            }
        }
        Value::Array(a) => json::deep(|| a.iter().for_each(|c| decoded_text(c, nesting, out))),
        Value::Object(m) => json::deep(|| {
            m.iter().for_each(|(k, c)| {
                out.extend_from_slice(k.as_bytes());
                out.push(0);
                decoded_text(c, nesting, out);
            })
        }),
        _ => {}
    }
}

/// A masking caller sees no reference or token, at any depth, in JSON inside strings too.
fn no_markers(v: &Value, nesting: usize) {
    match v {
        Value::String(s) => {
            assert!(
                !s.starts_with(REFERENCE_PREFIX) && !s.starts_with(FERNET_PREFIX),
                "a reference or token reaches a masking caller"
            );
            if nesting < 16 && crate::rewrite::structure::holds_json(s) {
                if let Ok(inner) = parse_answer(s.as_bytes()) {
                    no_markers(&inner, nesting + 1);
                }
            }
        }
        Value::Array(a) => json::deep(|| a.iter().for_each(|c| no_markers(c, nesting))),
        Value::Object(m) => json::deep(|| m.values().for_each(|c| no_markers(c, nesting))),
        _ => {}
    }
}

// === JWT ===

/// The JWT target: `data` is an `Authorization` header value. A verified identity needs the
/// configured key's signature over the token's own header and payload (RS256 signatures
/// are deterministic, so it is computed again here), the configured issuer and a future
/// `exp`.
pub fn jwt_parse(data: &[u8]) {
    let w = world();
    let Ok(value) = http::HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, value);
    let (class, sub, _) = w.rt.block_on(w.auth.identify(&headers));
    if class == CallerClass::Anonymous {
        assert_eq!(sub, "anonymous");
        return;
    }
    let text = std::str::from_utf8(data).expect("a verified header is text");
    let token = text
        .strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .expect("a verified header says Bearer")
        .trim();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a verified token has three parts");
    let signed = &token[..parts[0].len() + 1 + parts[1].len()];
    let mut expected = vec![0u8; w.signer.public().modulus_len()];
    w.signer
        .sign(
            &ring::signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            signed.as_bytes(),
            &mut expected,
        )
        .expect("sign");
    let sig = URL_SAFE_NO_PAD
        .decode(parts[2].trim_end_matches('='))
        .expect("a verified signature decodes");
    assert_eq!(sig, expected, "a token not signed by the configured key");
    let claims: Value = URL_SAFE_NO_PAD
        .decode(parts[1].trim_end_matches('='))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .expect("verified claims parse");
    assert_eq!(claims.get("iss").and_then(Value::as_str), Some(ISSUER));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    if let Some(exp) = claims.get("exp").filter(|e| !e.is_null()) {
        assert!(exp.as_u64().is_some_and(|e| e > now), "an expired token");
    }
}

/// An RS256 token signed with the configured key (for the seed corpus and tests).
pub fn signed_token(claims: &Value) -> String {
    let w = world();
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT","kid":"k1"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{header}.{payload}");
    let mut sig = vec![0u8; w.signer.public().modulus_len()];
    w.signer
        .sign(
            &ring::signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            input.as_bytes(),
            &mut sig,
        )
        .expect("sign");
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}
