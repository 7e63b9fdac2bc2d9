//! Rule files: which requests are inspected, which JSON paths hold secrets, how each secret's
//! id is built, and (optionally) what each caller class sees. Compiled once at start-up
//! (and on SIGHUP) into matchers; see `rules/README.md` for the format.

pub mod ids;
pub mod jsonpath;
mod names;
pub(crate) use names::MemberCache;
mod roots;
pub mod words;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use http::Method;
use serde::Deserialize;
use serde_json::Value;

use crate::config::ReadAction;
use crate::http::path::NormPath;
use jsonpath::{Seg, Step, StepRef, Trie};

// === raw format ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    kind: String,
    /// Documentation only: the inventory's name for the kind.
    #[serde(default)]
    #[allow(dead_code)]
    inventory_kind: Option<String>,
    /// Documentation only.
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    collection: String,
    /// `stored` (default): values go to the key store. `mask_only`: values stay upstream in
    /// clear; reads mask them, writes put back what a mask stands for.
    #[serde(default)]
    mode: Option<String>,
    /// Required for `stored` rules; `mask_only` rules keep nothing in the store.
    #[serde(default)]
    root: Option<String>,
    field_base: String,
    /// `mask_only`: member paths whose presence (an object or an array) marks an object as an
    /// entity of the kind, wherever it sits in an answer.
    #[serde(default)]
    shape: Vec<String>,
    /// `mask_only`: words whose presence in an unruled JSON answer makes the safety net read
    /// it whole and mask this kind's fields in it.
    #[serde(default)]
    net_markers: Vec<String>,
    /// `mask_only`: the route (under the collection) that answers the entity a create body
    /// names; `{member}` is the body's top-level string member of that name.
    #[serde(default)]
    current_route: Option<String>,
    #[serde(default)]
    safety_net: Vec<String>,
    #[serde(default)]
    known_types: Vec<String>,
    routes: Vec<RawRoute>,
    secrets: Vec<RawSecret>,
    #[serde(default)]
    policy: Option<RawPolicy>,
    #[serde(default)]
    allowed_reference_prefixes: Vec<String>,
    /// The resource name of OpenMetadata's permission API for this kind (default: `kind`).
    #[serde(default)]
    permission_resource: Option<String>,
    /// The `fields` query the gateway asks for when it reads an entity it must patch.
    #[serde(default)]
    entity_fields: Option<String>,
    /// Masks in a write stand for the secrets of the service the body names
    /// (`request.serviceName` / `request.serviceType`): test-connection workflows.
    #[serde(default)]
    masks_from_service: bool,
    /// `migrate` moves this kind's secrets (default true; false for short-lived kinds).
    #[serde(default = "yes")]
    migrate: bool,
    /// Extra query for listing the kind (`isBot=true` for bot users).
    #[serde(default)]
    list_query: Option<String>,
    /// A route under the collection (`/auth-mechanism/{id}`) that answers the subtree at
    /// `field_base` which lists leave out.
    #[serde(default)]
    credentials_route: Option<String>,
    /// The kind's entities live under a parent (ingestion pipelines under a service).
    #[serde(default)]
    scope: Option<RawScope>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScope {
    /// The member holding the parent's EntityReference (`service`).
    #[serde(rename = "ref")]
    reference: String,
    /// The root used when `root` belongs to another entity: `ingestion/{scope}/{name}`.
    root: String,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    methods: Vec<String>,
    path: String,
    op: String,
    #[serde(default)]
    response_at: Option<String>,
    /// The request body is the entity's subtree at this path (`mask_only` routes).
    #[serde(default)]
    body_at: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    path: String,
    #[serde(default)]
    types: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    bot: Option<String>,
    user: Option<String>,
    anonymous: Option<String>,
    /// `mask`: when resolving fails, mask the field (and say so in a header) instead of 503.
    on_resolve_failure: Option<String>,
}

// === compiled ===

/// What a route does, which decides the write and read handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// GET: the answer is rewritten.
    Read,
    /// POST/PUT on the collection: the body is an entity (create request).
    Create,
    /// PATCH by id or name: the body is a JSON Patch or merge patch.
    Patch,
    /// DELETE by id or name: secrets go on `hardDelete=true`.
    Delete,
    /// Any other ruled route: the request is forwarded, the answer rewritten.
    Action,
    /// CSV import (`text/plain` bodies): forwarded as they are, the answer rewritten.
    Import,
    /// CSV export: the answer is text, not an entity.
    Export,
    /// A person's own credentials (login, sign-up, token refresh, password change, personal
    /// access tokens): not connection secrets, so handled as a route without rules (forwarded
    /// as sent, the answer streamed through the safety net).
    Forward,
}

#[derive(Debug, Clone)]
enum PatSeg {
    Lit(String),
    Param(String),
}

#[derive(Debug, Clone)]
pub struct Route {
    methods: Vec<Method>,
    pattern: Vec<PatSeg>,
    pub op: Op,
    pub path: String,
    /// The answer is the entity's subtree at this path (user token routes).
    pub response_at: Vec<String>,
    /// The request body is the entity's subtree at this path (`mask_only` routes).
    pub body_at: Vec<String>,
}

/// What the gateway does with a kind's secret values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Values go to the key store; the upstream holds references.
    Stored,
    /// Values stay upstream (the server needs them in clear): masked on reads, a mask sent
    /// back is replaced by the value the upstream holds; nothing goes to the store.
    MaskOnly,
}

/// Per-kind refinements of the config's read policy.
#[derive(Debug, Clone, Copy, Default)]
pub struct PolicyOverride {
    pub(crate) bot: Option<ReadAction>,
    pub(crate) user: Option<ReadAction>,
    pub(crate) anonymous: Option<ReadAction>,
    pub(crate) mask_on_resolve_failure: bool,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub kind: String,
    pub mode: Mode,
    pub file: PathBuf,
    pub collection: String,
    collection_segs: Vec<String>,
    pub root_template: String,
    pub field_base: Vec<String>,
    pub secret_paths: Vec<String>,
    pub secret_types: Vec<Vec<String>>,
    /// The compiled form of each secret path (same order as `secret_paths`).
    secret_segs: Vec<Vec<Seg>>,
    /// Which secret paths apply to a document of a declared type.
    by_type: TypeIndex,
    pub known_types: HashSet<String>,
    trie: Trie,
    pub safety_net: Vec<Vec<String>>,
    pub routes: Vec<Route>,
    pub policy: PolicyOverride,
    pub allowed_reference_prefixes: Vec<String>,
    pub permission_resource: String,
    pub entity_fields: Option<String>,
    pub masks_from_service: bool,
    pub migrate: bool,
    pub list_query: Option<String>,
    pub credentials_route: Option<String>,
    pub scope: Option<Scope>,
    /// `mask_only`: subtrees whose presence marks an entity of the kind (see `shape`).
    pub shape: Vec<Vec<String>>,
    /// `mask_only`: words that make the unruled safety net read an answer.
    pub net_markers: Vec<String>,
    /// `mask_only`: the route answering the entity a create body names.
    pub current_route: Option<String>,
}

/// Entities of a kind that live under a parent: their identity is the parent's fully
/// qualified name plus their own name, and two of one name under two parents both keep their
/// own secrets (the second one's go under `root_template`; see `secrets::ownership`).
#[derive(Debug, Clone)]
pub struct Scope {
    /// The member holding the parent's EntityReference (`service`).
    pub reference: String,
    /// e.g. `ingestion/{scope}/{name}`.
    pub root_template: String,
}

/// A secret location found in a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub steps: Vec<Step>,
    /// The rule path that found it, or `None` for the name-based safety net.
    pub rule_path: Option<usize>,
}

/// A problem in a rule file.
#[derive(Debug, Clone)]
pub struct Problem {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.file.display(), l, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// All rules, compiled.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    /// The `net_markers` of every `mask_only` rule, ready to search for.
    net_words: std::sync::Arc<words::Words>,
    /// `rules.safety_net_keys`, normalised: exact names the safety net adds to [`names`].
    safety_keys: HashSet<String>,
    /// Data a reader derives from the rules once (the answer scanner's tables), built on first
    /// use: a rule set is not changed once built, a reload builds a new one. Kept as `Any` so
    /// that this layer knows nothing of its readers.
    derived: std::sync::OnceLock<std::sync::Arc<dyn std::any::Any + Send + Sync>>,
    /// Tells this rule set apart from every other one built in the process, for the caches
    /// kept per thread ([`names::CACHE`]).
    generation: u64,
}

/// The result of matching a request.
#[derive(Debug)]
pub struct RouteMatch<'a> {
    pub rule: &'a Rule,
    /// `None`: under the rule's collection but no known route (answers are still rewritten).
    pub route: Option<&'a Route>,
    pub params: Vec<(String, String)>,
}

impl RouteMatch<'_> {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn op(&self) -> Op {
        self.route.map(|r| r.op).unwrap_or(Op::Action)
    }
}

fn line_of(text: &str, needle: &str) -> Option<usize> {
    text.find(needle)
        .map(|pos| text[..pos].matches('\n').count() + 1)
}

fn keys_of(path: &str) -> Result<Vec<String>, String> {
    jsonpath::compile(path)?
        .into_iter()
        .map(|s| match s {
            Seg::Key(k) => Ok(k),
            _ => Err(format!(
                "{path:?} must be a plain member path (no wildcards)"
            )),
        })
        .collect()
}

impl RuleSet {
    /// Loads and compiles every `*.json` file of `dir`; reports every problem at once.
    pub fn load(dir: &Path, safety_net_keys: &[String]) -> Result<RuleSet, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("json"))
                .collect(),
            Err(e) => {
                return Err(vec![Problem {
                    file: dir.to_path_buf(),
                    line: None,
                    message: format!("cannot read the rules directory: {e}"),
                }])
            }
        };
        files.sort();
        if files.is_empty() {
            problems.push(Problem {
                file: dir.to_path_buf(),
                line: None,
                message: "no rule files (*.json) found".into(),
            });
        }
        let mut rules = Vec::new();
        for file in files {
            match std::fs::read_to_string(&file) {
                Ok(text) => match compile_rule(&file, &text) {
                    Ok(r) => rules.push(r),
                    Err(mut p) => problems.append(&mut p),
                },
                Err(e) => problems.push(Problem {
                    file: file.clone(),
                    line: None,
                    message: format!("cannot read: {e}"),
                }),
            }
        }
        let mut seen: Vec<(&str, &Path)> = Vec::new();
        for r in &rules {
            if let Some((_, other)) = seen
                .iter()
                .find(|(c, _)| c.eq_ignore_ascii_case(&r.collection))
            {
                problems.push(Problem {
                    file: r.file.clone(),
                    line: None,
                    message: format!(
                        "collection {} is already ruled by {}",
                        r.collection,
                        other.display()
                    ),
                });
            }
            seen.push((&r.collection, &r.file));
        }
        problems.extend(nesting_roots(&rules));
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut words: Vec<&str> = rules
            .iter()
            .flat_map(|r| r.net_markers.iter().map(String::as_str))
            .collect();
        words.sort_unstable();
        words.dedup();
        let net_words = std::sync::Arc::new(words::Words::new(&words));
        Ok(RuleSet {
            rules,
            net_words,
            safety_keys: safety_net_keys.iter().map(|k| names::norm_key(k)).collect(),
            derived: Default::default(),
            generation: names::next_generation(),
        })
    }

    /// The words whose presence in an unruled JSON answer makes the safety net read it for
    /// `mask_only` fields (empty when no rule is `mask_only`).
    pub(crate) fn net_words(&self) -> &std::sync::Arc<words::Words> {
        &self.net_words
    }

    /// What a reader derives from the rules, built by `build` once per rule set. One type
    /// is kept; asking for another builds it afresh each time.
    /// Tells this rule set apart from every other one built in the process (caches kept
    /// outside it are keyed by it).
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn derived<T: std::any::Any + Send + Sync>(
        &self,
        build: impl Fn(&RuleSet) -> T,
    ) -> std::sync::Arc<T> {
        let kept = self
            .derived
            .get_or_init(|| std::sync::Arc::new(build(self)))
            .clone();
        kept.downcast::<T>()
            .unwrap_or_else(|_| std::sync::Arc::new(build(self)))
    }

    /// The rule and route a request matches. Literal segments compare case-insensitively.
    /// The hard delete of the bot user `id` as its own request would match it (`DELETE
    /// <collection>/{id}` of the `botUser` kind), for a bot's hard delete, which takes the
    /// bot's user with it upstream. `None` without a `botUser` rule.
    pub fn bot_user_delete(&self, id: &str) -> Option<RouteMatch<'_>> {
        let rule = self.rules.iter().find(|r| r.kind == "botUser")?;
        let route = rule.routes.iter().find(|r| {
            r.op == Op::Delete && r.methods.contains(&Method::DELETE) && r.path == "/{id}"
        })?;
        Some(RouteMatch {
            rule,
            route: Some(route),
            params: vec![("id".to_string(), id.to_string())],
        })
    }

    pub fn match_request(&self, method: &Method, path: &NormPath) -> Option<RouteMatch<'_>> {
        let segs = &path.segments;
        for rule in &self.rules {
            let n = rule.collection_segs.len();
            // Last segment first: it tells collections apart (`/api/v1` they all share), and
            // a length mismatch rejects it without reading a byte.
            if segs.len() < n
                || !rule
                    .collection_segs
                    .iter()
                    .zip(segs.iter())
                    .rev()
                    .all(|(a, b)| a.eq_ignore_ascii_case(b))
            {
                continue;
            }
            let rest = &segs[n..];
            // HEAD is answered like GET.
            let m = if method == Method::HEAD {
                &Method::GET
            } else {
                method
            };
            for route in &rule.routes {
                if !route.methods.contains(m) {
                    continue;
                }
                if let Some(params) = match_pattern(&route.pattern, rest) {
                    return Some(RouteMatch {
                        rule,
                        route: Some(route),
                        params,
                    });
                }
            }
            return Some(RouteMatch {
                rule,
                route: None,
                params: Vec::new(),
            });
        }
        None
    }

    /// Every secret location in `doc` (an entity, or a create body) for `rule`: the rule's
    /// paths, then the name-based safety net inside the rule's safety-net subtrees.
    pub fn find_secrets(&self, rule: &Rule, doc: &Value) -> Vec<Found> {
        let mut found: Vec<Found> = rule
            .trie
            .find(doc)
            .into_iter()
            .map(|(steps, n)| Found {
                steps,
                rule_path: Some(n),
            })
            .collect();
        for base in &rule.safety_net {
            let steps: Vec<Step> = base.iter().map(|k| Step::Key(k.clone())).collect();
            if let Some(sub) = jsonpath::get(doc, &steps) {
                let mut cur = steps.clone();
                self.net_walk(sub, &mut cur, &mut found);
            }
        }
        found.sort_by(|a, b| a.steps.cmp(&b.steps));
        found.dedup_by(|a, b| a.steps == b.steps);
        found
    }

    /// Every scalar under a secret-looking key name anywhere in `doc` (bodies of routes that
    /// carry no entity).
    pub(crate) fn find_by_name(&self, doc: &Value) -> Vec<Found> {
        let mut found = Vec::new();
        self.net_walk(doc, &mut Vec::new(), &mut found);
        found
    }

    /// Whether the safety net treats a member named `key` as a secret: the name policy of
    /// [`names`] plus the configured `rules.safety_net_keys`.
    pub fn is_secret_key(&self, key: &str) -> bool {
        names::CACHE.with(|c| {
            c.borrow_mut()
                .get_or(self.generation, key, || self.judge_key(key))
        })
    }

    /// [`is_secret_key`](Self::is_secret_key) without the cache.
    fn judge_key(&self, key: &str) -> bool {
        // Most names are short ASCII: normalised on the stack (as `names::norm_key` does), no
        // allocation.
        let mut buf = [0u8; 64];
        if key.len() <= buf.len() && key.is_ascii() {
            let mut n = 0;
            for b in key.bytes().filter(|b| !matches!(b, b'_' | b'-' | b'.')) {
                buf[n] = b.to_ascii_lowercase();
                n += 1;
            }
            if let Ok(norm) = std::str::from_utf8(&buf[..n]) {
                return names::is_secret_name(norm, &self.safety_keys);
            }
        }
        names::is_secret_name(&names::norm_key(key), &self.safety_keys)
    }

    fn net_walk(&self, v: &Value, steps: &mut Vec<Step>, out: &mut Vec<Found>) {
        jsonpath::deep(|| self.net_walk_level(v, steps, out))
    }

    fn net_walk_level(&self, v: &Value, steps: &mut Vec<Step>, out: &mut Vec<Found>) {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    steps.push(Step::Key(k.clone()));
                    let named = self.is_secret_key(k);
                    match child {
                        // A number or boolean counts too: OpenMetadata's deserializer turns
                        // it into the string it stores.
                        Value::String(_) | Value::Number(_) | Value::Bool(_) if named => {
                            out.push(Found {
                                steps: steps.clone(),
                                rule_path: None,
                            });
                        }
                        // Every scalar in an array under a secret-looking name is one.
                        Value::Array(items) if named => {
                            for (i, item) in items.iter().enumerate() {
                                steps.push(Step::Index(i));
                                if matches!(
                                    item,
                                    Value::String(_) | Value::Number(_) | Value::Bool(_)
                                ) {
                                    out.push(Found {
                                        steps: steps.clone(),
                                        rule_path: None,
                                    });
                                } else {
                                    self.net_walk(item, steps, out);
                                }
                                steps.pop();
                            }
                        }
                        _ => self.net_walk(child, steps, out),
                    }
                    steps.pop();
                }
            }
            Value::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    steps.push(Step::Index(i));
                    self.net_walk(child, steps, out);
                    steps.pop();
                }
            }
            _ => {}
        }
    }

    /// Where a write's body holds a string, number or boolean in place of an object or array
    /// that leads to a secret field: `"connection": "..."`, `"config": "..."`,
    /// `"authType": "..."`. OpenMetadata would refuse such a body, but only after reading it,
    /// and its deserializer quotes the offending string in the error it returns and logs; so
    /// the gateway refuses it first (400) and nothing is forwarded.
    ///
    /// Checked: the objects that carry the document's type (`connection.config`,
    /// `sourceConfig.config`, `request.connection.config`, `authenticationMechanism`) and
    /// their parents, always; and every step of each secret path that applies to the
    /// document's declared type (paths without types always apply; with no readable type,
    /// typed paths are skipped, so a union member of another type is never refused).
    /// Keys in [`STRING_UNION_KEYS`] may hold a string: their unions admit one.
    pub(crate) fn shape_error(&self, rule: &Rule, doc: &Value) -> Option<String> {
        let locations = type_locations(rule);
        for loc in &locations {
            let mut cur = doc;
            for (depth, key) in loc[..loc.len() - 1].iter().enumerate() {
                match cur.get(key.as_str()) {
                    Some(v @ Value::Object(_)) => cur = v,
                    Some(Value::Null) | None => break,
                    Some(_) => return Some(loc[..=depth].join(".")),
                }
            }
        }
        let doc_type = locations.iter().find_map(|loc| {
            let steps: Vec<Step> = loc.iter().map(|k| Step::Key(k.clone())).collect();
            jsonpath::get(doc, &steps)
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        for i in rule.by_type.applying(doc_type.as_deref()) {
            let mut at = Vec::new();
            if let Some(bad) = shape_walk(doc, &rule.secret_segs[i], &mut at) {
                return Some(bad);
            }
        }
        None
    }

    /// Secret locations inside `value`, a subtree that sits at `at` (steps from the entity
    /// root): for JSON Patch op values and merge patches. Returned steps are absolute.
    pub(crate) fn find_secrets_under(&self, rule: &Rule, at: &[Step], value: &Value) -> Vec<Found> {
        let mut found: Vec<Found> = Vec::new();
        for node in rule.trie.nodes_at(at) {
            for (rel, n) in node.find(value) {
                let mut abs = at.to_vec();
                abs.extend(rel);
                found.push(Found {
                    steps: abs,
                    rule_path: Some(n),
                });
            }
        }
        for base in &rule.safety_net {
            let base_steps: Vec<Step> = base.iter().map(|k| Step::Key(k.clone())).collect();
            if at.len() >= base_steps.len() && at[..base_steps.len()] == base_steps[..] {
                // The value lies inside a safety-net subtree.
                let mut cur = at.to_vec();
                if let (Some(Step::Key(k)), true) = (
                    at.last(),
                    matches!(value, Value::String(_) | Value::Number(_) | Value::Bool(_)),
                ) {
                    if at.len() > base_steps.len() && self.is_secret_key(k) {
                        found.push(Found {
                            steps: cur.clone(),
                            rule_path: None,
                        });
                    }
                }
                self.net_walk(value, &mut cur, &mut found);
            } else if base_steps.len() > at.len() && base_steps[..at.len()] == at[..] {
                // The value contains a safety-net subtree.
                if let Some(sub) = jsonpath::get(value, &base_steps[at.len()..]) {
                    let mut cur = base_steps.clone();
                    self.net_walk(sub, &mut cur, &mut found);
                }
            }
        }
        found.sort_by(|a, b| a.steps.cmp(&b.steps));
        found.dedup_by(|a, b| a.steps == b.steps);
        found
    }
}

fn match_pattern(pattern: &[PatSeg], segs: &[String]) -> Option<Vec<(String, String)>> {
    let mut params = Vec::new();
    let mut i = 0;
    for (pi, p) in pattern.iter().enumerate() {
        match p {
            PatSeg::Lit(l) => {
                if segs.get(i).map(|s| s.eq_ignore_ascii_case(l)) != Some(true) {
                    return None;
                }
                i += 1;
            }
            PatSeg::Param(name) => {
                // A trailing {fqn} takes the rest: names may hold an encoded '/'.
                if name == "fqn" && pi == pattern.len() - 1 {
                    if i >= segs.len() {
                        return None;
                    }
                    params.push((name.clone(), segs[i..].join("/")));
                    i = segs.len();
                } else {
                    params.push((name.clone(), segs.get(i)?.clone()));
                    i += 1;
                }
            }
        }
    }
    (i == segs.len()).then_some(params)
}

/// Root templates of different rules whose roots could nest (see `roots`).
fn nesting_roots(rules: &[Rule]) -> Vec<Problem> {
    let templates: Vec<(&Rule, &str, Vec<roots::TSeg>)> = rules
        .iter()
        .filter(|r| r.mode == Mode::Stored)
        .flat_map(|r| {
            let scoped = r.scope.as_ref().map(|s| (s.root_template.as_str(), true));
            std::iter::once((r.root_template.as_str(), false))
                .chain(scoped)
                .filter_map(move |(t, sc)| roots::parse(t, sc).ok().map(|p| (r, t, p)))
        })
        .collect();
    let mut problems = Vec::new();
    for (i, (ra, ta, pa)) in templates.iter().enumerate() {
        for (rb, tb, pb) in &templates[i + 1..] {
            if roots::can_nest(pa, pb) {
                problems.push(Problem {
                    file: rb.file.clone(),
                    line: None,
                    message: format!(
                        "root {tb:?} and root {ta:?} of {} can nest: one entity's secrets could lie inside another's",
                        ra.file.display()
                    ),
                });
            }
        }
    }
    problems
}

/// One rule file being compiled: every problem is collected, with its line where known.
struct Compiler<'a> {
    file: &'a Path,
    text: &'a str,
    problems: Vec<Problem>,
}

impl Compiler<'_> {
    fn problem(&mut self, line: Option<usize>, message: String) {
        self.problems.push(Problem {
            file: self.file.to_path_buf(),
            line,
            message,
        });
    }

    fn line_of(&self, needle: &str) -> Option<usize> {
        line_of(self.text, needle)
    }

    fn collection(&mut self, collection: &str) -> Vec<String> {
        match NormPath::parse(collection) {
            Ok(p) if collection.starts_with("/api/") && !p.segments.is_empty() => p.segments,
            _ => {
                let line = self.line_of("\"collection\"");
                self.problem(
                    line,
                    format!("collection {collection:?} must be an /api/... path"),
                );
                Vec::new()
            }
        }
    }

    fn keys(&mut self, path: &str, what: &str, line: Option<usize>) -> Vec<String> {
        keys_of(path).unwrap_or_else(|e| {
            self.problem(line, format!("{what}: {e}"));
            Vec::new()
        })
    }

    fn route(&mut self, r: &RawRoute) -> Route {
        let line = self.line_of(&format!("\"path\": {:?}", r.path));
        let mut methods = Vec::new();
        for m in &r.methods {
            match m.to_ascii_uppercase().as_str() {
                "GET" => methods.push(Method::GET),
                "POST" => methods.push(Method::POST),
                "PUT" => methods.push(Method::PUT),
                "PATCH" => methods.push(Method::PATCH),
                "DELETE" => methods.push(Method::DELETE),
                other => self.problem(
                    line,
                    format!("route {:?}: unknown method {other:?}", r.path),
                ),
            }
        }
        if methods.is_empty() {
            self.problem(line, format!("route {:?}: no methods", r.path));
        }
        let op = match r.op.as_str() {
            "read" => Op::Read,
            "create" => Op::Create,
            "patch" => Op::Patch,
            "delete" => Op::Delete,
            "action" => Op::Action,
            "import" => Op::Import,
            "export" => Op::Export,
            "forward" => Op::Forward,
            other => {
                self.problem(line, format!("route {:?}: op {other:?} is not one of read, create, patch, delete, action, import, export, forward", r.path));
                Op::Action
            }
        };
        if !(r.path.is_empty() || r.path.starts_with('/')) {
            self.problem(
                line,
                format!("route path {:?} must be empty or start with '/'", r.path),
            );
        }
        let pattern: Vec<PatSeg> = r
            .path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(
                |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(name) => PatSeg::Param(name.to_string()),
                    None => PatSeg::Lit(s.to_string()),
                },
            )
            .collect();
        let response_at = match &r.response_at {
            Some(p) => self.keys(p, "response_at", line),
            None => Vec::new(),
        };
        let body_at = match &r.body_at {
            Some(p) => self.keys(p, "body_at", line),
            None => Vec::new(),
        };
        Route {
            methods,
            pattern,
            op,
            path: r.path.clone(),
            response_at,
            body_at,
        }
    }

    fn secrets(&mut self, secrets: &[RawSecret]) -> (Trie, Vec<Vec<Seg>>) {
        let mut trie = Trie::default();
        let mut segs_of = Vec::new();
        for (i, s) in secrets.iter().enumerate() {
            match jsonpath::compile(&s.path) {
                Ok(segs) => {
                    trie.insert(&segs, i);
                    segs_of.push(segs);
                }
                Err(e) => {
                    let line = self.line_of(&format!("{:?}", s.path));
                    self.problem(line, e);
                    segs_of.push(Vec::new());
                }
            }
        }
        (trie, segs_of)
    }

    fn policy(&mut self, raw: Option<&RawPolicy>, mode: Mode) -> PolicyOverride {
        let mut policy = PolicyOverride::default();
        let Some(p) = raw else {
            return policy;
        };
        let line = self.line_of("\"policy\"");
        let mut act = |v: &Option<String>, who: &str| -> Option<ReadAction> {
            let v = v.as_ref()?;
            // `mask_only` values are shown as they are (`reveal`) or masked; never resolved
            // from the store nor shown as references.
            let (a, allowed) = match mode {
                Mode::Stored => (ReadAction::parse(v), "resolve, reference, mask"),
                Mode::MaskOnly => (
                    match v.as_str() {
                        "reveal" => Some(ReadAction::Resolve),
                        "mask" => Some(ReadAction::Mask),
                        _ => None,
                    },
                    "reveal, mask (mask_only rule)",
                ),
            };
            if a.is_none() {
                self.problem(line, format!("policy.{who}: {v:?} is not one of {allowed}"));
            }
            a
        };
        policy.bot = act(&p.bot, "bot");
        policy.user = act(&p.user, "user");
        policy.anonymous = act(&p.anonymous, "anonymous");
        match p.on_resolve_failure.as_deref() {
            None | Some("error") => {}
            Some("mask") => policy.mask_on_resolve_failure = true,
            Some(other) => self.problem(
                line,
                format!("policy.on_resolve_failure: {other:?} is not one of error, mask"),
            ),
        }
        policy
    }
}

impl Compiler<'_> {
    /// The rule's mode, and the keys each mode needs or refuses: a `stored` rule needs a
    /// root; a `mask_only` rule keeps nothing in the store (no root, no scope) and needs a
    /// shape to be found by in answers.
    fn mode(&mut self, raw: &RawRule) -> Mode {
        let line = self.line_of("\"mode\"");
        let mode = match raw.mode.as_deref() {
            None | Some("stored") => Mode::Stored,
            Some("mask_only") => Mode::MaskOnly,
            Some(other) => {
                self.problem(
                    line,
                    format!("mode {other:?} is not one of stored, mask_only"),
                );
                Mode::Stored
            }
        };
        match (mode, &raw.root) {
            (Mode::Stored, Some(root)) => {
                if let Err(e) = roots::parse(root, false) {
                    let line = self.line_of("\"root\"");
                    self.problem(line, e);
                }
            }
            (Mode::Stored, None) => self.problem(None, "a stored rule needs a \"root\"".into()),
            (Mode::MaskOnly, _) if raw.scope.is_some() => self.problem(
                line,
                "a mask_only rule keeps nothing in the key store: no \"scope\"".into(),
            ),
            (Mode::MaskOnly, Some(_)) => self.problem(
                line,
                "a mask_only rule keeps nothing in the key store: no \"root\"".into(),
            ),
            (Mode::MaskOnly, None) => {}
        }
        let stored_only = !raw.shape.is_empty()
            || !raw.net_markers.is_empty()
            || raw.current_route.is_some()
            || raw.routes.iter().any(|r| r.body_at.is_some());
        if mode == Mode::Stored && stored_only {
            self.problem(
                line,
                "shape, net_markers, current_route and body_at belong to mask_only rules".into(),
            );
        }
        for w in &raw.net_markers {
            if w.is_empty() || w.len() > 32 {
                let line = self.line_of(&format!("{w:?}"));
                self.problem(line, format!("net_markers: {w:?} must be 1 to 32 bytes"));
            }
        }
        if mode == Mode::MaskOnly && raw.shape.is_empty() {
            self.problem(
                line,
                "a mask_only rule needs a \"shape\" (how its entities are found in answers)".into(),
            );
        }
        mode
    }
}

impl Compiler<'_> {
    /// `scope`: a root template and one member name.
    fn check_scope(&mut self, raw: &RawRule) {
        let Some(sc) = &raw.scope else { return };
        let line = self.line_of("\"scope\"");
        if let Err(e) = roots::parse(&sc.root, true) {
            self.problem(line, e);
        }
        if keys_of(&format!("$.{}", sc.reference)).map_or(true, |k| k.len() != 1) {
            self.problem(
                line,
                format!("scope.ref {:?} must be one member name", sc.reference),
            );
        }
    }

    /// `allowed_reference_prefixes`: absolute ids.
    fn check_prefixes(&mut self, prefixes: &[String]) {
        for p in prefixes {
            if !p.starts_with('/') {
                let line = self.line_of(p);
                self.problem(
                    line,
                    format!("allowed_reference_prefixes: {p:?} must start with '/'"),
                );
            }
        }
    }
}

fn compile_rule(file: &Path, text: &str) -> Result<Rule, Vec<Problem>> {
    let raw: RawRule = serde_json::from_str(text).map_err(|e| {
        vec![Problem {
            file: file.to_path_buf(),
            line: Some(e.line()),
            message: e.to_string(),
        }]
    })?;
    let mut c = Compiler {
        file,
        text,
        problems: Vec::new(),
    };
    let collection_segs = c.collection(&raw.collection);
    let mode = c.mode(&raw);
    let shape = raw
        .shape
        .iter()
        .map(|p| {
            let line = c.line_of(p);
            c.keys(p, "shape", line)
        })
        .collect();
    c.check_scope(&raw);
    let line = c.line_of("\"field_base\"");
    let field_base = c.keys(&raw.field_base, "field_base", line);
    let safety_net = raw
        .safety_net
        .iter()
        .map(|p| {
            let line = c.line_of(p);
            c.keys(p, "safety_net", line)
        })
        .collect();
    let routes = raw.routes.iter().map(|r| c.route(r)).collect();
    let (trie, secret_segs) = c.secrets(&raw.secrets);
    let policy = c.policy(raw.policy.as_ref(), mode);
    c.check_prefixes(&raw.allowed_reference_prefixes);
    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    Ok(Rule {
        kind: raw.kind.clone(),
        mode,
        file: file.to_path_buf(),
        collection: raw.collection,
        collection_segs,
        root_template: raw.root.unwrap_or_default(),
        field_base,
        secret_paths: raw.secrets.iter().map(|s| s.path.clone()).collect(),
        secret_types: raw.secrets.iter().map(|s| s.types.clone()).collect(),
        by_type: TypeIndex::new(raw.secrets.iter().map(|s| s.types.as_slice())),
        secret_segs,
        known_types: raw.known_types.into_iter().collect(),
        trie,
        safety_net,
        routes,
        policy,
        allowed_reference_prefixes: raw.allowed_reference_prefixes,
        permission_resource: raw.permission_resource.unwrap_or_else(|| raw.kind.clone()),
        entity_fields: raw.entity_fields,
        masks_from_service: raw.masks_from_service,
        migrate: raw.migrate && mode == Mode::Stored,
        list_query: raw.list_query,
        credentials_route: raw.credentials_route,
        scope: raw.scope.map(|s| Scope {
            reference: s.reference,
            root_template: s.root,
        }),
        shape,
        net_markers: raw.net_markers,
        current_route: raw.current_route,
    })
}

impl Rule {
    /// Values stay upstream; reads mask them (see [`Mode::MaskOnly`]).
    pub fn is_mask_only(&self) -> bool {
        self.mode == Mode::MaskOnly
    }

    /// The subtrees the name-based safety net searches, as JSONPath (`$.connection.config`).
    pub(crate) fn safety_net_paths(&self) -> Vec<String> {
        self.safety_net
            .iter()
            .map(|keys| jsonpath::render(&keys.iter().cloned().map(Step::Key).collect::<Vec<_>>()))
            .collect()
    }

    /// The locations in `value`, a subtree that sits at `at` in an entity of this kind, that
    /// the rule's paths name (not the safety net); steps relative to `value`.
    pub(crate) fn paths_in(&self, at: &[Step], value: &Value) -> Vec<Vec<Step>> {
        let mut out = Vec::new();
        for node in self.trie.nodes_at(at) {
            out.extend(node.find(value).into_iter().map(|(rel, _)| rel));
        }
        out
    }

    /// Whether a subtree at `at` in an entity of this kind can hold secrets: a secret path
    /// or a safety-net subtree passes through it, or it lies inside one.
    pub(crate) fn leads_to_secrets(&self, at: &[Step]) -> bool {
        if at.is_empty() || !self.trie.nodes_at(at).is_empty() {
            return true;
        }
        self.safety_net.iter().any(|base| {
            base.iter()
                .zip(at)
                .all(|(b, s)| matches!(s, Step::Key(k) if k == b))
        })
    }

    /// Steps relative to the field base (the id's field parts).
    pub fn field_steps<'s>(&self, steps: &'s [Step]) -> &'s [Step] {
        let base_matches = self.field_base.len() <= steps.len()
            && self
                .field_base
                .iter()
                .zip(steps.iter())
                .all(|(b, s)| matches!(s, Step::Key(k) if k == b));
        if base_matches {
            &steps[self.field_base.len()..]
        } else {
            steps
        }
    }
}

/// Keys whose value is a union that admits a plain string beside objects holding secrets:
/// OpenMetadata's `gcpConfig` (GCP credential values, or the path of a credentials file).
pub(crate) const STRING_UNION_KEYS: &[&str] = &["gcpConfig"];

/// Where a document of this rule's kind declares the type its secret groups are keyed by.
pub(crate) fn type_locations(rule: &Rule) -> Vec<Vec<String>> {
    if rule.mode == Mode::MaskOnly {
        // Their paths apply whatever a document declares.
        return Vec::new();
    }
    let own = |keys: &[&str]| keys.iter().map(|k| k.to_string()).collect::<Vec<_>>();
    if rule.field_base.is_empty() {
        // Ingestion pipelines and automations workflows.
        vec![
            own(&["sourceConfig", "config", "type"]),
            own(&["request", "connection", "config", "type"]),
        ]
    } else if rule.field_base.last().map(String::as_str) == Some("authenticationMechanism") {
        let mut l = rule.field_base.clone();
        l.push("authType".into());
        vec![l]
    } else {
        let mut l = rule.field_base.clone();
        l.push("type".into());
        vec![l]
    }
}

/// The secret paths of a rule by the document types they apply to, as [`type_matches`] says,
/// so a document's paths are found without comparing its type with every group of every path
/// (a database service's rule has hundreds).
#[derive(Debug, Default, Clone)]
struct TypeIndex {
    /// Paths without types: they always apply.
    untyped: Vec<usize>,
    /// By a group as written and by each of its `/`-suffixes (`Mysql` of
    /// `DatabaseConnection/Mysql`).
    exact: HashMap<String, Vec<usize>>,
    /// By the lower-cased head of an `<authType>AuthMechanism` group.
    lower: HashMap<String, Vec<usize>>,
}

impl TypeIndex {
    fn new<'a>(types: impl Iterator<Item = &'a [String]>) -> TypeIndex {
        let mut ix = TypeIndex::default();
        for (i, groups) in types.enumerate() {
            if groups.is_empty() {
                ix.untyped.push(i);
            }
            for g in groups {
                let add = |map: &mut HashMap<String, Vec<usize>>, k: String| {
                    let v = map.entry(k).or_default();
                    if v.last() != Some(&i) {
                        v.push(i);
                    }
                };
                add(&mut ix.exact, g.clone());
                for (at, _) in g.match_indices('/') {
                    add(&mut ix.exact, g[at + 1..].to_string());
                }
                if let Some(head) = g.strip_suffix("AuthMechanism") {
                    add(&mut ix.lower, head.to_ascii_lowercase());
                }
            }
        }
        ix
    }

    /// The paths that apply to a document of `doc_type` (typed paths only with a type), in
    /// path order.
    fn applying(&self, doc_type: Option<&str>) -> Vec<usize> {
        let mut out = self.untyped.clone();
        if let Some(t) = doc_type {
            let none = Vec::new();
            out.extend(self.exact.get(t).unwrap_or(&none));
            out.extend(self.lower.get(&t.to_ascii_lowercase()).unwrap_or(&none));
            out.sort_unstable();
            out.dedup();
        }
        out
    }
}

/// Does a secret's type group name the document's type? Groups are a service's connection
/// type (`Mysql`), a workflow's `<Kind>Connection/<type>`, or a bot's `<authType>AuthMechanism`.
/// (What [`TypeIndex`] answers by look-up; kept as its specification.)
#[cfg(test)]
pub(crate) fn type_matches(group: &str, doc_type: &str) -> bool {
    group == doc_type
        || group
            .strip_suffix(doc_type)
            .is_some_and(|head| head.ends_with('/'))
        || group
            .strip_suffix("AuthMechanism")
            .is_some_and(|head| head.eq_ignore_ascii_case(doc_type))
}

/// Follows `segs` through `v`; the first interior step holding a scalar is the answer.
fn shape_walk<'v>(v: &'v Value, segs: &[Seg], at: &mut Vec<StepRef<'v>>) -> Option<String> {
    let (seg, rest) = segs.split_first()?;
    let mut into = |took: StepRef<'v>, child: &'v Value| {
        at.push(took);
        let r = shape_walk(child, rest, at);
        at.pop();
        r
    };
    match v {
        Value::Null => None,
        Value::Object(map) => match seg {
            Seg::Key(k) => map
                .get_key_value(k)
                .and_then(|(k, child)| into(StepRef::Key(k), child)),
            Seg::AnyKey => map
                .iter()
                .find_map(|(k, child)| into(StepRef::Key(k), child)),
            Seg::Index(_) | Seg::AnyIndex => None,
        },
        Value::Array(items) => match seg {
            Seg::Index(i) => items
                .get(*i)
                .and_then(|child| into(StepRef::Index(*i), child)),
            Seg::AnyIndex => items
                .iter()
                .enumerate()
                .find_map(|(i, child)| into(StepRef::Index(i), child)),
            Seg::Key(_) | Seg::AnyKey => None,
        },
        _ => {
            let last = match at.last() {
                Some(StepRef::Key(k)) => k,
                _ => "",
            };
            if STRING_UNION_KEYS.contains(&last) && v.is_string() {
                None
            } else {
                let names: Vec<String> = at
                    .iter()
                    .map(|t| match t {
                        StepRef::Key(k) => k.to_string(),
                        StepRef::Index(i) => i.to_string(),
                    })
                    .collect();
                Some(names.join("."))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every declared type a document could carry that some group names, in the spellings
    /// [`type_matches`] admits, plus some no group names.
    fn candidate_types(rules: &RuleSet) -> Vec<String> {
        let mut out = vec!["".to_string(), "NoSuchType".into(), "mysql".into()];
        for r in &rules.rules {
            for g in r.secret_types.iter().flatten() {
                out.push(g.clone());
                out.extend(g.match_indices('/').map(|(at, _)| g[at + 1..].to_string()));
                if let Some(head) = g.strip_suffix("AuthMechanism") {
                    out.push(head.to_ascii_lowercase());
                    out.push(head.to_ascii_uppercase());
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    #[test]
    fn the_type_index_applies_exactly_the_paths_type_matches_names() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        let rules = RuleSet::load(&dir, &[]).expect("shipped rules");
        let types = candidate_types(&rules);
        let mut checked = 0;
        for r in &rules.rules {
            for t in types.iter().map(Some).chain([None]) {
                let want: Vec<usize> = (0..r.secret_types.len())
                    .filter(|&i| {
                        let groups = &r.secret_types[i];
                        groups.is_empty()
                            || t.is_some_and(|t| groups.iter().any(|g| type_matches(g, t)))
                    })
                    .collect();
                assert_eq!(
                    r.by_type.applying(t.map(String::as_str)),
                    want,
                    "{} {t:?}",
                    r.kind
                );
                checked += 1;
            }
        }
        assert!(checked > 1000, "only {checked} cases");
    }
}
