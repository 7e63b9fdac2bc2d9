//! The JSONPath subset rule files use, compiled once into a trie that finds every secret
//! location of a document in one walk (no JSONPath is parsed on the request path).
//!
//! Supported (RFC 9535 syntax): `$`, `.name`, `['name']`, `["name"]`, `[*]` (any array
//! element), `.*` (any object member), `[N]` (one array element). Paths are also checked with
//! jsonpath-rust's RFC 9535 parser, so a rule that is not valid JSONPath is reported as such.

use std::collections::HashMap;

use serde_json::Value;

/// One compiled path segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
    AnyIndex,
    AnyKey,
}

/// One concrete step of a location in a document.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Step {
    Key(String),
    Index(usize),
}

/// Parses a path of the supported subset.
pub fn compile(path: &str) -> Result<Vec<Seg>, String> {
    if let Err(e) = jsonpath_rust::parser::parse_json_path(path) {
        return Err(format!("{path:?} is not valid JSONPath: {e}"));
    }
    let rest = path
        .strip_prefix('$')
        .ok_or_else(|| format!("{path:?} must start with '$'"))?;
    let b = rest.as_bytes();
    let mut i = 0;
    let mut segs = Vec::new();
    while i < b.len() {
        match b[i] {
            b'.' => {
                i += 1;
                if i < b.len() && b[i] == b'*' {
                    segs.push(Seg::AnyKey);
                    i += 1;
                    continue;
                }
                let start = i;
                while i < b.len() && b[i] != b'.' && b[i] != b'[' {
                    i += 1;
                }
                if start == i {
                    return Err(format!("{path:?}: empty member name"));
                }
                segs.push(Seg::Key(rest[start..i].to_string()));
            }
            b'[' => {
                let end = rest[i..]
                    .find(']')
                    .map(|e| e + i)
                    .ok_or_else(|| format!("{path:?}: unclosed '['"))?;
                let inner = rest[i + 1..end].trim();
                if inner == "*" {
                    segs.push(Seg::AnyIndex);
                } else if let Ok(n) = inner.parse::<usize>() {
                    segs.push(Seg::Index(n));
                } else if (inner.starts_with('\'') && inner.ends_with('\'')
                    || inner.starts_with('"') && inner.ends_with('"'))
                    && inner.len() >= 2
                {
                    segs.push(Seg::Key(inner[1..inner.len() - 1].to_string()));
                } else {
                    return Err(format!(
                        "{path:?}: selector [{inner}] is not supported in rules (use names, [*], .* or [N])"
                    ));
                }
                i = end + 1;
            }
            _ => {
                return Err(format!(
                    "{path:?}: unexpected character at offset {}",
                    i + 1
                ))
            }
        }
    }
    Ok(segs)
}

/// FNV-1a, for maps whose keys are the rules' own (fixed when the rules are compiled) and
/// that requests only look up in: member names are short, and the default hasher (keyed,
/// for maps that take untrusted keys) costs several times more per lookup.
#[derive(Clone, Copy)]
pub(crate) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A map keyed by the rules' own names (see [`Fnv`]).
pub(crate) type RuleMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<Fnv>>;

/// A trie of compiled paths; each terminal node remembers which paths end there.
#[derive(Debug, Default, Clone)]
pub(crate) struct Trie {
    keys: RuleMap<String, Trie>,
    indexes: RuleMap<usize, Trie>,
    any_index: Option<Box<Trie>>,
    any_key: Option<Box<Trie>>,
    ends: Vec<usize>,
}

impl Trie {
    pub(crate) fn insert(&mut self, segs: &[Seg], path_no: usize) {
        let mut node = self;
        for s in segs {
            node = match s {
                Seg::Key(k) => node.keys.entry(k.clone()).or_default(),
                Seg::Index(n) => node.indexes.entry(*n).or_default(),
                Seg::AnyIndex => node.any_index.get_or_insert_with(Default::default),
                Seg::AnyKey => node.any_key.get_or_insert_with(Default::default),
            };
        }
        node.ends.push(path_no);
    }

    /// The trie nodes reached by a concrete prefix (exact and wildcard branches).
    pub(crate) fn nodes_at(&self, prefix: &[Step]) -> Vec<&Trie> {
        let mut nodes = vec![self];
        for step in prefix {
            let mut next = Vec::new();
            for n in nodes {
                match step {
                    Step::Key(k) => {
                        next.extend(n.keys.get(k));
                        next.extend(n.any_key.as_deref());
                    }
                    Step::Index(i) => {
                        next.extend(n.indexes.get(i));
                        next.extend(n.any_index.as_deref());
                    }
                }
            }
            nodes = next;
            if nodes.is_empty() {
                break;
            }
        }
        nodes
    }

    /// Every location in `doc` that some path reaches, with the number of the first path
    /// that reaches it. Locations are in document order.
    pub(crate) fn find(&self, doc: &Value) -> Vec<(Vec<Step>, usize)> {
        let mut out = Vec::new();
        let mut steps = Vec::new();
        self.walk(doc, &mut steps, &mut out);
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.dedup_by(|a, b| a.0 == b.0);
        out
    }

    fn walk(&self, v: &Value, steps: &mut Vec<Step>, out: &mut Vec<(Vec<Step>, usize)>) {
        if let Some(first) = self.ends.first() {
            out.push((steps.clone(), *first));
        }
        match v {
            Value::Object(map) => {
                if self.keys.is_empty() && self.any_key.is_none() {
                    return;
                }
                for (k, child) in map {
                    let exact = self.keys.get(k);
                    let any = self.any_key.as_deref();
                    if exact.is_none() && any.is_none() {
                        continue;
                    }
                    steps.push(Step::Key(k.clone()));
                    if let Some(t) = exact {
                        t.walk(child, steps, out);
                    }
                    if let Some(t) = any {
                        t.walk(child, steps, out);
                    }
                    steps.pop();
                }
            }
            Value::Array(items) => {
                if self.indexes.is_empty() && self.any_index.is_none() {
                    return;
                }
                for (i, child) in items.iter().enumerate() {
                    let exact = self.indexes.get(&i);
                    let any = self.any_index.as_deref();
                    if exact.is_none() && any.is_none() {
                        continue;
                    }
                    steps.push(Step::Index(i));
                    if let Some(t) = exact {
                        t.walk(child, steps, out);
                    }
                    if let Some(t) = any {
                        t.walk(child, steps, out);
                    }
                    steps.pop();
                }
            }
            _ => {}
        }
    }
}

/// The value at `steps`.
pub fn get<'a>(doc: &'a Value, steps: &[Step]) -> Option<&'a Value> {
    let mut v = doc;
    for s in steps {
        v = match (s, v) {
            (Step::Key(k), Value::Object(m)) => m.get(k)?,
            (Step::Index(i), Value::Array(a)) => a.get(*i)?,
            _ => return None,
        };
    }
    Some(v)
}

/// The value at `steps`, mutably.
pub fn get_mut<'a>(doc: &'a mut Value, steps: &[Step]) -> Option<&'a mut Value> {
    let mut v = doc;
    for s in steps {
        v = match (s, v) {
            (Step::Key(k), Value::Object(m)) => m.get_mut(k)?,
            (Step::Index(i), Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(v)
}

/// Renders steps as a JSONPath (for explain and audit lines).
/// A step borrowed from the document being walked: walks keep these and copy them into
/// [`Step`]s only for what they report.
#[derive(Debug, Clone, Copy)]
pub(crate) enum StepRef<'v> {
    Key(&'v str),
    Index(usize),
}

impl StepRef<'_> {
    pub(crate) fn owned(path: &[StepRef<'_>]) -> Vec<Step> {
        path.iter()
            .map(|a| match a {
                StepRef::Key(k) => Step::Key(k.to_string()),
                StepRef::Index(i) => Step::Index(*i),
            })
            .collect()
    }

    /// Whether `path` names the same place as `steps`.
    pub(crate) fn same(path: &[StepRef<'_>], steps: &[Step]) -> bool {
        path.len() == steps.len()
            && path.iter().zip(steps).all(|(a, s)| match (a, s) {
                (StepRef::Key(a), Step::Key(s)) => a == s,
                (StepRef::Index(a), Step::Index(s)) => a == s,
                _ => false,
            })
    }
}

pub fn render(steps: &[Step]) -> String {
    let mut s = String::from("$");
    for st in steps {
        match st {
            Step::Key(k)
                if k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !k.is_empty() =>
            {
                s.push('.');
                s.push_str(k);
            }
            Step::Key(k) => s.push_str(&format!("[{}]", Value::String(k.clone()))),
            Step::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Recursion gets a fresh stack segment when less than this is left...
const RED_ZONE: usize = 256 * 1024;
/// ...of this size.
const SEGMENT: usize = 2 * 1024 * 1024;

/// Runs `f` with at least [`RED_ZONE`] bytes of stack: for every recursion over a document
/// (the rules' walks here, parsing and rewriting in `rewrite`).
pub(crate) fn deep<R>(f: impl FnOnce() -> R) -> R {
    stacker::maybe_grow(RED_ZONE, SEGMENT, f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_subset_compiles() {
        assert_eq!(
            compile("$.a['b c'][*].d.*[2]").unwrap(),
            vec![
                Seg::Key("a".into()),
                Seg::Key("b c".into()),
                Seg::AnyIndex,
                Seg::Key("d".into()),
                Seg::AnyKey,
                Seg::Index(2)
            ]
        );
    }

    #[test]
    fn filters_and_broken_paths_are_refused() {
        assert!(compile("$.a[?@.b == 1]").is_err());
        assert!(compile("a.b").is_err());
        assert!(compile("$.a[").is_err());
    }

    #[test]
    fn the_trie_finds_every_location_in_one_walk() {
        let mut t = Trie::default();
        t.insert(&compile("$.c.config.password").unwrap(), 0);
        t.insert(&compile("$.list[*].token").unwrap(), 1);
        t.insert(&compile("$.map.*").unwrap(), 2);
        let doc = json!({"c": {"config": {"password": "p", "user": "u"}},
                         "list": [{"token": "a"}, {"x": 1}, {"token": "b"}],
                         "map": {"k1": "v1", "k2": "v2"}});
        let found: Vec<String> = t.find(&doc).iter().map(|(s, _)| render(s)).collect();
        assert_eq!(
            found,
            vec![
                "$.c.config.password",
                "$.list[0].token",
                "$.list[2].token",
                "$.map.k1",
                "$.map.k2"
            ]
        );
    }
}
