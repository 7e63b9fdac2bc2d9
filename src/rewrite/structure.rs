//! Secrets found by the shape of what holds them, wherever it sits in an answer: at any depth,
//! inside any wrapper (`{"entity": {...}}`, `{"data": [...]}`, a top-level array) and inside
//! string fields that hold JSON (`versions[]`, a change's `oldValue`/`newValue`, a change
//! event's `entity`). No envelope is assumed.
//!
//! Every object of a document is looked at once:
//! - **an entity of a rule's kind**: it has the rule's field base or one of its safety-net
//!   subtrees as an object (`connection.config`, `authenticationMechanism`,
//!   `sourceConfig.config`, `openMetadataServerConnection`, `request.connection.config`):
//!   the rule's secret paths apply from it. Named, it becomes an [`Owner`]: the caller's
//!   permission to see its values is decided once for it (unnamed, it belongs to the entity
//!   that holds it);
//! - **a typed subtree of a rule's kind**: its `type` (`authType` for a bot's authentication
//!   mechanism) is one the rule knows (`Mysql`, `DatabaseMetadata`, `JWT`): the rule's paths
//!   apply from where that type sits (`connection.config`, `sourceConfig.config`,
//!   `authenticationMechanism`);
//! - **the safety net's names**: a member whose name the safety net treats as secret
//!   (`password`, `...Token`, ...) holding a scalar, or an array of scalars;
//! - **a change of a field** (`{"name": "connection.config.password", "oldValue": ..,
//!   "newValue": ..}`): the values are what sits at that path.
//!
//! A string that looks like JSON (starts with `{` or `[` and holds `":`) is handed back as
//! [`Embedded`], to be parsed and rewritten as a document of its own.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use super::json::deep;
use crate::rules::jsonpath::{get, Step};
use crate::rules::MemberCache;
use crate::rules::{type_locations, Rule, RuleSet};

/// A secret location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hit {
    /// From the document's root.
    pub(crate) steps: Vec<Step>,
    /// The rule (index in [`RuleSet::rules`]) whose read policy applies.
    pub(crate) rule: usize,
    /// The [`Owner`] whose permission applies.
    pub(crate) owner: usize,
    /// Named by a rule: one of its paths, or the safety net inside one of its subtrees
    /// (`connection.config`, ...) of an entity or typed subtree. A resolving caller may see
    /// the value of such a field only; any other secret-named member is masked for everyone.
    pub(crate) scoped: bool,
}

/// An object whose secrets share one permission: the document's root, or an entity inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Owner {
    pub(crate) steps: Vec<Step>,
    /// `fullyQualifiedName`, else `name`: what a `ViewAll` question names.
    pub(crate) fqn: Option<String>,
    /// The rules whose entity shape it has (the root: none when it has none).
    pub(crate) rules: Vec<usize>,
}

/// A string holding JSON, to be read as a document of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Embedded {
    pub(crate) steps: Vec<Step>,
    pub(crate) owner: usize,
    /// Where its value sits in an entity of the scope's kind (a change's field name), if known.
    pub(crate) anchor: Vec<Step>,
    /// Written by OpenMetadata and able to hold secrets (a version, a change event's entity, a
    /// change of a field that leads to secrets): if it does not parse, the answer is refused.
    /// Other strings that look like JSON (free text a user typed) are left as they are.
    pub(crate) must_parse: bool,
}

/// What [`Scanner::scan`] found in one document.
#[derive(Debug, Default)]
pub struct Scan {
    pub(crate) hits: Vec<Hit>,
    pub(crate) owners: Vec<Owner>,
    pub(crate) embedded: Vec<Embedded>,
}

/// The rule set, arranged for looking at every object of an answer.
pub struct Scanner<'a> {
    rules: &'a RuleSet,
    /// The rule of the route the answer came from.
    scope: usize,
    /// Built once per rule set ([`RuleSet::scan_tables`]), not per answer.
    t: std::sync::Arc<ScanTables>,
}

/// What a [`Scanner`] looks for, derived from the rule set alone.
#[derive(Debug)]
pub(crate) struct ScanTables {
    /// Per rule, the subtrees whose presence makes an object an entity of its kind.
    /// Distinct subtrees, each with the rules it is the shape of.
    shapes: Vec<(Vec<Step>, Vec<usize>)>,
    /// Where documents declare their type (subtree, key), with the rules that read it there.
    types: Vec<TypeSite>,
    /// First keys of `shapes`, and keys of `types`.
    shape_keys: Vec<String>,
    type_keys: Vec<String>,
    /// Per rule, its safety-net subtrees.
    nets: Vec<Vec<Vec<Step>>>,
    /// Per declared type as documents spell it (`Mysql` for the group
    /// `DatabaseConnection/Mysql`, `jwt` lower-cased for `JWTAuthMechanism`), the rules that
    /// know it, in order.
    known: HashMap<String, Vec<usize>>,
}

/// A place where documents of some kinds declare their type.
#[derive(Debug)]
struct TypeSite {
    at: Vec<Step>,
    key: String,
    rules: Vec<usize>,
}

/// The rules that know one declared type ([`Scanner::knowing`]).
struct Knowing<'a>(&'a [usize], &'a [usize]);

impl Knowing<'_> {
    fn has(&self, rule: &usize) -> bool {
        self.0.contains(rule) || self.1.contains(rule)
    }
}

/// A declared type as written, and lower-cased (bots' `authType` is matched either way).
struct Declared<'v> {
    text: &'v str,
    lower: String,
}

const SECRET: u8 = 1;
const SHAPE: u8 = 2;
const TYPE: u8 = 4;
const CHANGE: u8 = 8;

fn keys(path: &[String]) -> Vec<Step> {
    path.iter().map(|k| Step::Key(k.clone())).collect()
}

impl<'a> Scanner<'a> {
    pub fn new(rules: &'a RuleSet, scope: &Rule) -> Scanner<'a> {
        let scope = rules
            .rules
            .iter()
            .position(|r| std::ptr::eq(r, scope) || r.kind == scope.kind)
            .unwrap_or_default();
        Scanner {
            rules,
            scope,
            t: rules.derived(ScanTables::new),
        }
    }
}

impl ScanTables {
    /// The tables of `rules` (see [`RuleSet::scan_tables`], which keeps them).
    pub(crate) fn new(rules: &RuleSet) -> ScanTables {
        let mut shapes: Vec<(Vec<Step>, Vec<usize>)> = Vec::new();
        let mut types = Vec::new();
        for (i, rule) in rules.rules.iter().enumerate() {
            let own = (!rule.field_base.is_empty()).then_some(&rule.field_base);
            // `mask_only` kinds are found by their `shape` (an array counts: `destinations`).
            for base in own.into_iter().chain(&rule.safety_net).chain(&rule.shape) {
                let at = keys(base);
                match shapes.iter_mut().find(|(s, _)| *s == at) {
                    Some((_, rs)) => rs.push(i),
                    None => shapes.push((at, vec![i])),
                }
            }
            for loc in type_locations(rule) {
                if let Some((key, at)) = loc.split_last() {
                    let at = keys(at);
                    match types
                        .iter_mut()
                        .find(|t: &&mut TypeSite| t.at == at && &t.key == key)
                    {
                        Some(site) => site.rules.push(i),
                        None => types.push(TypeSite {
                            at,
                            key: key.clone(),
                            rules: vec![i],
                        }),
                    }
                }
            }
        }
        let mut shape_keys: Vec<String> = shapes
            .iter()
            .filter_map(|(s, _)| match s.first() {
                Some(Step::Key(k)) => Some(k.clone()),
                _ => None,
            })
            .collect();
        shape_keys.sort();
        shape_keys.dedup();
        let mut type_keys: Vec<String> = types.iter().map(|t| t.key.clone()).collect();
        type_keys.sort();
        type_keys.dedup();
        let mut known: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, r) in rules.rules.iter().enumerate() {
            let mut set = HashSet::new();
            for g in &r.known_types {
                set.insert(g.clone());
                if let Some((_, t)) = g.rsplit_once('/') {
                    set.insert(t.to_string());
                }
                if let Some(head) = g.strip_suffix("AuthMechanism") {
                    set.insert(head.to_ascii_lowercase());
                }
            }
            for t in set {
                known.entry(t).or_default().push(i);
            }
        }
        let nets = rules
            .rules
            .iter()
            .map(|r| r.safety_net.iter().map(|b| keys(b)).collect())
            .collect();
        ScanTables {
            shapes,
            types,
            shape_keys,
            type_keys,
            nets,
            known,
        }
    }
}

impl<'a> Scanner<'a> {
    /// The rules that know a document's declared type (as `rules::type_matches` says): by
    /// its text as written, and lower-cased.
    fn knowing(&self, t: &Declared<'_>) -> Knowing<'_> {
        let of = |k: &str| self.t.known.get(k).map(Vec::as_slice).unwrap_or_default();
        Knowing(of(t.text), of(&t.lower))
    }

    /// The index of the scope's rule.
    pub(crate) fn scope(&self) -> usize {
        self.scope
    }

    /// Every secret location, owner and JSON-holding string of `doc`. `anchor` says where in an
    /// entity of the scope's kind the document sits (user token routes answer a subtree; a
    /// change's value sits at its field's path); empty when unknown.
    pub fn scan(&self, doc: &Value, anchor: &[Step]) -> Scan {
        let mut walk = Walk {
            s: self,
            out: Scan::default(),
            nets: Vec::new(),
            texts: Vec::new(),
        };
        walk.out.owners.push(Owner {
            steps: Vec::new(),
            fqn: fqn(doc),
            rules: Vec::new(),
        });
        if !anchor.is_empty() {
            let rule = &self.rules.rules[self.scope];
            for rel in rule.paths_in(anchor, doc) {
                walk.hit(rel, self.scope, 0);
            }
            walk.nets_from(self.scope, anchor, &[]);
        }
        match doc {
            Value::String(s) if holds_json(s) => walk.out.embedded.push(Embedded {
                steps: Vec::new(),
                owner: 0,
                anchor: anchor.to_vec(),
                must_parse: true,
            }),
            _ => walk.value(doc, &mut Vec::new(), 0),
        }
        let nets = std::mem::take(&mut walk.nets);
        for (steps, owner) in std::mem::take(&mut walk.texts) {
            if !walk.out.hits.iter().any(|h| h.steps == steps) {
                walk.name_hit(steps, owner);
            }
        }
        let mut out = walk.out;
        for h in out.hits.iter_mut().filter(|h| !h.scoped) {
            h.scoped = nets.iter().any(|n| h.steps.starts_with(n));
        }
        // A string that is itself a secret is shown whole (masked or resolved), not read into.
        out.embedded
            .retain(|e| !out.hits.iter().any(|h| h.steps == e.steps));
        out
    }
}

/// Whether a string looks like a JSON object or array holding members (`"key":`), so it must
/// be read as one. Free text that merely starts with a bracket (`[a link](...)`) is not.
pub(crate) fn holds_json(s: &str) -> bool {
    let t = s.trim_start();
    (t.starts_with('{') || t.starts_with('['))
        && memchr::memchr_iter(b'"', t.as_bytes()).any(|q| {
            t.as_bytes()[q + 1..]
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                == Some(&b':')
        })
}

/// Whether `s` carries a credential inside text, in a shape some client reads a password
/// from, judged generously (a refused write tells the caller where to put it instead):
/// - user info: `user:password@` after a URL's `//` (`scheme://u:p@h`, `jdbc:x://u:p@h`, a
///   password holding `/`, `?`, `#` or spaces, as SQLAlchemy's and Python's URL parsers read
///   them), after `scheme:/`, or a bare `u:p@h...` (a Go DSN `u:p@tcp(h)/db`); tabs and line
///   breaks are dropped first, as URL parsers drop them;
/// - Oracle's `user/password@host`;
/// - a `key=value` pair whose key the safety net calls secret (`?password=...`,
///   `;Password=...` in a JDBC or ODBC string), judged by `secret_key`.
///
/// Not: a user without a password (`ssh://git@host`), an e-mail address, `git@host:org/repo`,
/// an image digest `name:tag@sha256:...`.
pub(crate) fn credential_in_text(s: &str, secret_key: impl Fn(&str) -> bool) -> bool {
    let has_at = memchr::memchr(b'@', s.as_bytes()).is_some();
    let has_eq = memchr::memchr(b'=', s.as_bytes()).is_some();
    if !has_at && !has_eq {
        return false;
    }
    // Dropped as URL parsers drop them; most strings have none, and are not copied.
    let t: std::borrow::Cow<'_, str> = match s.contains(['\t', '\n', '\r']) {
        true => s
            .chars()
            .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
            .collect(),
        false => s.into(),
    };
    if has_at && userinfo_password(&t) {
        return true;
    }
    has_eq
        && t.split(|c: char| matches!(c, ';' | '&' | '?' | ',') || c.is_whitespace())
            .filter_map(|pair| pair.split_once('='))
            .any(|(k, v)| !v.trim().is_empty() && !k.trim().is_empty() && secret_key(k.trim()))
}

/// [`credential_in_text`]'s user info shapes.
fn userinfo_password(t: &str) -> bool {
    let bare = !t.contains("//") && !t.contains(char::is_whitespace);
    t.match_indices('@').any(|(a, _)| {
        let after = &t[a + 1..];
        if after.starts_with("sha256:") || after.starts_with("sha512:") || after.is_empty() {
            return false;
        }
        let before = &t[..a];
        let start = before.rfind("//").map(|i| i + 2).unwrap_or(0);
        let mut cand = &before[start..];
        if start == 0 {
            // `scheme:/u:p@h`: the scheme is not a user.
            if let Some(i) = cand.find(":/") {
                let scheme = &cand[..i];
                if !scheme.is_empty()
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'))
                {
                    cand = cand[i + 1..].trim_start_matches('/');
                }
            }
        }
        let colon = cand.find(':').is_some_and(|c| c > 0 && c + 1 < cand.len());
        let slash = bare && cand.find('/').is_some_and(|c| c > 0 && c + 1 < cand.len());
        colon || slash
    })
}

/// [`credential_in_text`] with `password` and `pwd` as the secret keys (tests).
#[cfg(test)]
pub(crate) fn url_password(s: &str) -> bool {
    credential_in_text(s, |k| {
        let k = k.to_ascii_lowercase();
        k.contains("password") || k == "pwd"
    })
}

fn declared(t: &str) -> Declared<'_> {
    Declared {
        text: t,
        lower: t.to_ascii_lowercase(),
    }
}

fn fqn(v: &Value) -> Option<String> {
    v.get("fullyQualifiedName")
        .or_else(|| v.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn is_scalar(v: &Value) -> bool {
    matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_))
}

thread_local! {
    /// Per distinct member name: what it can mean ([`SECRET`], [`SHAPE`], ...), for the rule
    /// set last scanned by this thread. Answers repeat the same few hundred names.
    static CLASSES: std::cell::RefCell<MemberCache<u8>> = std::cell::RefCell::new(MemberCache::new());
}

struct Walk<'s> {
    s: &'s Scanner<'s>,
    out: Scan,
    /// Where, in this document, a rule's safety net applies (absolute subtree roots).
    nets: Vec<Vec<Step>>,
    /// Strings holding a credential inside text ([`credential_in_text`]) with their owner:
    /// hits where nothing else (a rule's path, a name) already made them one.
    texts: Vec<(Vec<Step>, usize)>,
}

impl Walk<'_> {
    /// A location a rule's path names.
    fn hit(&mut self, steps: Vec<Step>, rule: usize, owner: usize) {
        self.out.hits.push(Hit {
            steps,
            rule,
            owner,
            scoped: true,
        });
    }

    /// A location found by the safety net's names: scoped when it lies in a rule's subtree.
    fn name_hit(&mut self, steps: Vec<Step>, owner: usize) {
        self.out.hits.push(Hit {
            steps,
            rule: self.s.scope,
            owner,
            scoped: false,
        });
    }

    /// Records the rule's safety-net subtrees for a subtree of its kind that sits at `at` (in
    /// an entity) and at `steps` (in this document).
    fn nets_from(&mut self, rule: usize, at: &[Step], steps: &[Step]) {
        for net in &self.s.t.nets[rule] {
            if at.starts_with(net) {
                self.nets.push(steps.to_vec());
            } else if net.starts_with(at) {
                self.nets.push([steps, &net[at.len()..]].concat());
            }
        }
    }

    fn class(&mut self, key: &str) -> u8 {
        let s = self.s;
        CLASSES.with(|c| {
            c.borrow_mut()
                .get_or(s.rules.generation(), key, || s.class(key))
        })
    }
}

impl Scanner<'_> {
    /// What a member name can mean ([`SECRET`], [`SHAPE`], ...).
    fn class(&self, key: &str) -> u8 {
        let s = self;
        let mut c = 0;
        if s.rules.is_secret_key(key) {
            c |= SECRET;
        }
        if s.t.shape_keys.iter().any(|k| k == key) {
            c |= SHAPE;
        }
        if s.t.type_keys.iter().any(|k| k == key) {
            c |= TYPE;
        }
        if matches!(key, "name" | "oldValue" | "newValue") {
            c |= CHANGE;
        }
        c
    }
}

impl Walk<'_> {
    fn value(&mut self, v: &Value, steps: &mut Vec<Step>, owner: usize) {
        deep(|| match v {
            Value::Object(m) => self.object(v, m, steps, owner),
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    steps.push(Step::Index(i));
                    let rules = self.s.rules;
                    if matches!(child, Value::String(t) if !holds_json(t) && credential_in_text(t, |k| rules.is_secret_key(k)))
                    {
                        self.texts.push((steps.clone(), owner));
                    }
                    self.child(child, steps, owner, &[]);
                    steps.pop();
                }
            }
            _ => {}
        })
    }

    fn child(&mut self, v: &Value, steps: &mut Vec<Step>, owner: usize, anchor: &[Step]) {
        match v {
            Value::String(s) if holds_json(s) => {
                let holder = steps.iter().rev().find_map(|s| match s {
                    Step::Key(k) => Some(k.as_str()),
                    Step::Index(_) => None,
                });
                let must_parse = matches!(holder, Some("versions" | "entity"))
                    || (!anchor.is_empty()
                        && self.s.rules.rules[self.s.scope].leads_to_secrets(anchor));
                self.out.embedded.push(Embedded {
                    steps: steps.clone(),
                    owner,
                    anchor: anchor.to_vec(),
                    must_parse,
                })
            }
            Value::Object(_) | Value::Array(_) => self.value(v, steps, owner),
            _ => {}
        }
    }

    fn object(
        &mut self,
        v: &Value,
        m: &Map<String, Value>,
        steps: &mut Vec<Step>,
        mut owner: usize,
    ) {
        let mut flags = 0;
        for k in m.keys() {
            flags |= self.class(k);
        }
        if flags & SHAPE != 0 {
            owner = self.entity(v, steps, owner);
        }
        if flags & TYPE != 0 {
            self.typed(v, m, steps, owner);
        }
        if flags & SECRET != 0 {
            self.named(m, steps, owner);
        }
        let change = if flags & CHANGE != 0 {
            self.change(m, steps, owner)
        } else {
            None
        };
        for (k, child) in m {
            if let Value::String(t) = child {
                let rules = self.s.rules;
                if self.class(k) & SECRET == 0
                    && !holds_json(t)
                    && credential_in_text(t, |k| rules.is_secret_key(k))
                {
                    self.texts
                        .push(([steps.as_slice(), &[Step::Key(k.clone())]].concat(), owner));
                }
            }
            let worth = match child {
                Value::Object(c) => !c.is_empty(),
                Value::Array(a) => !a.is_empty(),
                Value::String(t) => holds_json(t),
                _ => false,
            };
            if !worth {
                continue;
            }
            steps.push(Step::Key(k.clone()));
            let anchor = match &change {
                Some(a) if k == "oldValue" || k == "newValue" => a.as_slice(),
                _ => &[],
            };
            self.child(child, steps, owner, anchor);
            steps.pop();
        }
    }

    /// An entity of one or more kinds: their paths apply from here, and it owns what is in it.
    fn entity(&mut self, v: &Value, steps: &[Step], owner: usize) -> usize {
        let s = self.s;
        let mut kinds: Vec<usize> = s
            .t
            .shapes
            .iter()
            .filter(|(shape, _)| matches!(get(v, shape), Some(Value::Object(_) | Value::Array(_))))
            .flat_map(|(_, rules)| rules.iter().copied())
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        if kinds.is_empty() {
            return owner;
        }
        // Thirteen service kinds share `connection.config`: where the declared type is one
        // some of them know, theirs are the paths that apply.
        if kinds.len() > 1 {
            let mut knowing = Vec::new();
            for site in &s.t.types {
                if !site.rules.iter().any(|r| kinds.contains(r)) {
                    continue;
                }
                let Some(Value::String(t)) = get(v, &site.at).and_then(|c| c.get(&site.key)) else {
                    continue;
                };
                let k = s.knowing(&declared(t));
                knowing.extend(site.rules.iter().filter(|r| kinds.contains(r) && k.has(r)));
            }
            if !knowing.is_empty() {
                knowing.sort_unstable();
                knowing.dedup();
                kinds = knowing;
            }
        }
        // A named object is an entity of its own; an unnamed one (a workflow's `request`) is
        // part of the entity that holds it.
        let named = fqn(v);
        let me = if steps.is_empty() {
            0
        } else if named.is_some() {
            self.out.owners.push(Owner {
                steps: steps.to_vec(),
                fqn: named,
                rules: Vec::new(),
            });
            self.out.owners.len() - 1
        } else {
            owner
        };
        for rule in kinds {
            let own = steps.is_empty() || me != owner;
            if own && !self.out.owners[me].rules.contains(&rule) {
                self.out.owners[me].rules.push(rule);
            }
            for rel in s.rules.rules[rule].paths_in(&[], v) {
                self.hit([steps, &rel].concat(), rule, me);
            }
            self.nets_from(rule, &[], steps);
        }
        me
    }

    /// A subtree whose declared type a rule knows: its paths apply from where the type sits.
    fn typed(&mut self, v: &Value, m: &Map<String, Value>, steps: &[Step], owner: usize) {
        let s = self.s;
        // Where the owning entity's own paths already reached, no other kind's paths are
        // looked for (they name the same fields of the same connection types).
        let o = &self.out.owners[owner];
        let covered = s.t.types.iter().any(|site| {
            site.rules.iter().any(|r| o.rules.contains(r))
                && steps.len() == o.steps.len() + site.at.len()
                && steps.starts_with(&o.steps)
                && steps[o.steps.len()..] == site.at[..]
        });
        if covered {
            return;
        }
        for site in &s.t.types {
            let Some(Value::String(t)) = m.get(&site.key) else {
                continue;
            };
            let k = s.knowing(&declared(t));
            for rule in &site.rules {
                if !k.has(rule) {
                    continue;
                }
                for rel in s.rules.rules[*rule].paths_in(&site.at, v) {
                    self.hit([steps, &rel].concat(), *rule, owner);
                }
                self.nets_from(*rule, &site.at, steps);
            }
        }
    }

    /// Members the safety net treats as secret by their name.
    fn named(&mut self, m: &Map<String, Value>, steps: &[Step], owner: usize) {
        for (k, child) in m {
            if self.class(k) & SECRET == 0 {
                continue;
            }
            let at = || [steps, &[Step::Key(k.clone())]].concat();
            match child {
                c if is_scalar(c) => {
                    let at = at();
                    self.name_hit(at, owner);
                }
                Value::Array(items) => {
                    let base = at();
                    for (i, item) in items.iter().enumerate() {
                        if is_scalar(item) {
                            self.name_hit([base.as_slice(), &[Step::Index(i)]].concat(), owner);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// `{"name": "a.b.c", "oldValue": .., "newValue": ..}`: the values sit at `a.b.c` of an
    /// entity of the scope's kind. Scalars there that a path or the safety net names are
    /// secrets; JSON-holding strings are read with that anchor. Returns the anchor.
    fn change(
        &mut self,
        m: &Map<String, Value>,
        steps: &[Step],
        owner: usize,
    ) -> Option<Vec<Step>> {
        let name = m.get("name")?.as_str()?;
        if !(m.contains_key("oldValue") || m.contains_key("newValue")) {
            return None;
        }
        let anchor: Vec<Step> = name
            .split('.')
            .map(|p| Step::Key(p.trim_matches('"').to_string()))
            .collect();
        let s = self.s;
        let rule = &s.rules.rules[s.scope];
        let last_is_secret = name
            .rsplit('.')
            .next()
            .is_some_and(|k| s.rules.is_secret_key(k.trim_matches('"')));
        for key in ["oldValue", "newValue"] {
            let Some(v) = m.get(key) else { continue };
            let plain_scalar = match v {
                Value::String(t) => !holds_json(t),
                other => is_scalar(other),
            };
            let at = [steps, &[Step::Key(key.to_string())]].concat();
            if !plain_scalar {
                continue;
            }
            if !rule.paths_in(&anchor, v).is_empty()
                || (last_is_secret && s.t.nets[s.scope].iter().any(|n| anchor.starts_with(n)))
            {
                self.hit(at, s.scope, owner);
            } else if last_is_secret {
                self.name_hit(at, owner);
            }
        }
        Some(anchor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::jsonpath::render;
    use serde_json::json;

    fn rules() -> RuleSet {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        RuleSet::load(&dir, &[]).expect("rules")
    }

    fn found(rules: &RuleSet, kind: &str, doc: &Value) -> Vec<String> {
        let rule = rules.rules.iter().find(|r| r.kind == kind).expect("kind");
        let scan = Scanner::new(rules, rule).scan(doc, &[]);
        let mut out: Vec<String> = scan.hits.iter().map(|h| render(&h.steps)).collect();
        out.sort();
        out.dedup();
        out
    }

    fn mysql() -> Value {
        json!({"name": "m", "connection": {"config": {"type": "Mysql", "username": "u",
               "authType": {"password": "p"}, "hostPort": "h"}}})
    }

    #[test]
    fn passwords_in_a_urls_user_info_are_seen_and_nothing_else() {
        for yes in [
            "https://elastic:pw@es.internal:9200",
            "jdbc:postgresql://u:p@db:5432/x",
            "see http://u:p@proxy:3128 first",
            "mongodb+srv://user:pa%40ss@cluster0.example.net/?retryWrites=true",
            "u:p@db.example.org:5432",
            // Fifth probe: what URL parsers and drivers read that the first check missed.
            "http:\t//u:PW@h",
            "http://u\n:PW@h",
            "//u:PW@h",
            "https://u:PW x@h",
            "https:/u:PW@h",
            "mysql://u:PW/x@h/db",
            "mysql://u:PW#x@h/db",
            "mysql://u:PW?x@h/db",
            "u:PW@h:3306/db",
            "u:PW@tcp(h:3306)/db",
            "scott/tiger@h:1521/orcl",
            "jdbc:postgresql://h/db?user=u&password=PW",
            "jdbc:sqlserver://h;user=u;Password=PW",
        ] {
            assert!(url_password(yes), "{yes}");
        }
        for no in [
            "https://es.internal:9200",
            "ssh://git@github.com/org/repo",
            "git@github.com:org/repo.git",
            "ops@example.org",
            "https://user@host/x",
            "repo/image:tag@sha256:abc",
            "image:tag@sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "jdbc:postgresql://h/db?user=u&password=",
            "mailto-less plain text",
            "ssl=true;encrypt=false",
            "",
        ] {
            assert!(!url_password(no), "{no}");
        }
    }

    #[test]
    fn an_entity_is_found_inside_any_wrapper() {
        let r = rules();
        for (doc, want) in [
            (mysql(), "$.connection.config.authType.password"),
            (
                json!({"entity": mysql()}),
                "$.entity.connection.config.authType.password",
            ),
            (
                json!({"data": mysql()}),
                "$.data.connection.config.authType.password",
            ),
            (
                json!([[mysql()]]),
                "$[0][0].connection.config.authType.password",
            ),
        ] {
            assert_eq!(found(&r, "databaseService", &doc), vec![want], "{doc}");
        }
    }

    #[test]
    fn a_connection_config_of_a_known_type_is_found_without_its_entity() {
        let r = rules();
        // `awsAccessKeyId` is no secret by name: only the rule's path knows it.
        let doc = json!({"x": {"type": "Bedrock", "awsAccessKeyId": "AKIA", "region": "eu"}});
        assert_eq!(found(&r, "llmService", &doc), vec!["$.x.awsAccessKeyId"]);
    }

    #[test]
    fn a_bots_authentication_mechanism_is_found_by_its_type() {
        let r = rules();
        let doc = json!({"wrapped": {"authType": "JWT", "config": {"JWTToken": "t", "JWTTokenExpiry": "Unlimited"}}});
        assert_eq!(
            found(&r, "botUser", &doc),
            vec!["$.wrapped.config.JWTToken"]
        );
    }

    #[test]
    fn secret_names_are_found_anywhere_and_plain_names_are_not() {
        let r = rules();
        let doc = json!({"a": [{"b": {"apiToken": "t", "tokenEndpoint": "u", "keys": ["x"]}}],
                         "secretsManagerProvider": "db", "passwords": ["1", "2"]});
        assert_eq!(
            found(&r, "databaseService", &doc),
            vec!["$.a[0].b.apiToken", "$.passwords[0]", "$.passwords[1]"]
        );
    }

    #[test]
    fn only_names_inside_a_rules_subtree_are_scoped() {
        let r = rules();
        let rule = r
            .rules
            .iter()
            .find(|x| x.kind == "databaseService")
            .unwrap();
        let mut doc = mysql();
        doc["connection"]["config"]["connectionOptions"] = json!({"sslPassword": "x"});
        doc["extension"] = json!({"apiToken": "y"});
        let scan = Scanner::new(&r, rule).scan(&doc, &[]);
        let mut got: Vec<(String, bool)> = scan
            .hits
            .iter()
            .map(|h| (render(&h.steps), h.scoped))
            .collect();
        got.sort();
        got.dedup();
        assert_eq!(
            got,
            vec![
                ("$.connection.config.authType.password".to_string(), true),
                (
                    "$.connection.config.connectionOptions.sslPassword".to_string(),
                    true
                ),
                ("$.extension.apiToken".to_string(), false),
            ]
        );
    }

    #[test]
    fn a_change_of_a_secret_field_hides_both_values() {
        let r = rules();
        let doc = json!({"changeDescription": {"fieldsUpdated": [
            {"name": "connection.config.authType.password", "oldValue": "a", "newValue": "b"},
            {"name": "description", "oldValue": "a", "newValue": "b"}]}});
        assert_eq!(
            found(&r, "databaseService", &doc),
            vec![
                "$.changeDescription.fieldsUpdated[0].newValue",
                "$.changeDescription.fieldsUpdated[0].oldValue"
            ]
        );
    }

    #[test]
    fn json_strings_are_handed_back_with_the_anchor_of_their_field() {
        let r = rules();
        let rule = r
            .rules
            .iter()
            .find(|x| x.kind == "databaseService")
            .unwrap();
        let doc = json!({"versions": ["{\"name\":\"x\"}"], "fieldsUpdated": [
            {"name": "connection", "newValue": "{\"config\":{\"type\":\"Mysql\"}}"},
            {"name": "description", "newValue": "{\"typed\": \"by a user\""}],
            "description": "[not json](http://x)"});
        let scan = Scanner::new(&r, rule).scan(&doc, &[]);
        let got: Vec<(String, String, bool)> = scan
            .embedded
            .iter()
            .map(|e| (render(&e.steps), render(&e.anchor), e.must_parse))
            .collect();
        assert_eq!(
            got,
            vec![
                ("$.versions[0]".to_string(), "$".to_string(), true),
                (
                    "$.fieldsUpdated[0].newValue".to_string(),
                    "$.connection".to_string(),
                    true
                ),
                (
                    "$.fieldsUpdated[1].newValue".to_string(),
                    "$.description".to_string(),
                    false
                )
            ]
        );
    }

    #[test]
    fn only_strings_holding_json_members_are_read_as_json() {
        assert!(holds_json(r#"{"a":1}"#));
        assert!(holds_json(r#"  [ {"a" : 1} ]"#));
        assert!(!holds_json(r#"[see "the docs"](http://x)"#));
        assert!(!holds_json(r#"["a","b"]"#));
        assert!(!holds_json("plain text: {\"a\":1}"));
    }

    #[test]
    fn an_unnamed_entity_shaped_object_belongs_to_the_entity_holding_it() {
        let r = rules();
        let rule = r.rules.iter().find(|x| x.kind == "workflow").unwrap();
        let doc = json!({"name": "test-conn", "request": {"connection": {"config": {
            "type": "Mysql", "authType": {"password": "p"}}}}});
        let scan = Scanner::new(&r, rule).scan(&doc, &[]);
        assert_eq!(scan.owners.len(), 1, "{:?}", scan.owners);
        assert!(scan.hits.iter().all(|h| h.owner == 0));
        assert!(scan
            .hits
            .iter()
            .any(|h| render(&h.steps) == "$.request.connection.config.authType.password"));
    }

    #[test]
    fn each_entity_in_a_list_owns_its_secrets() {
        let r = rules();
        let rule = r
            .rules
            .iter()
            .find(|x| x.kind == "databaseService")
            .unwrap();
        let doc = json!({"data": [mysql(), mysql()]});
        let scan = Scanner::new(&r, rule).scan(&doc, &[]);
        assert_eq!(scan.owners.len(), 3);
        assert_eq!(scan.owners[1].fqn.as_deref(), Some("m"));
        let owners: Vec<usize> = scan.hits.iter().map(|h| h.owner).collect();
        assert!(owners.contains(&1) && owners.contains(&2), "{owners:?}");
    }
}
