//! The `net_markers` words of `mask_only` rules, compiled once for the unruled safety net's
//! chunk scan: one SIMD pass for all of them (`aho_corasick`'s packed searcher, already in
//! the dependency tree through `regex`), else one substring search per word where the CPU
//! has no packed searcher.

use aho_corasick::packed::Searcher;
use memchr::memmem::Finder;

#[derive(Debug, Clone, Default)]
pub(crate) struct Words {
    packed: Option<Searcher>,
    finders: Vec<Finder<'static>>,
    longest: usize,
}

impl Words {
    pub(crate) fn new(words: &[&str]) -> Words {
        let words: Vec<&str> = words.iter().copied().filter(|w| !w.is_empty()).collect();
        Words {
            packed: (!words.is_empty())
                .then(|| Searcher::new(words.iter()))
                .flatten(),
            finders: words
                .iter()
                .map(|w| Finder::new(w.as_bytes()).into_owned())
                .collect(),
            longest: words.iter().map(|w| w.len()).max().unwrap_or(0),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.finders.is_empty()
    }

    /// The longest word's length in bytes.
    pub(crate) fn longest(&self) -> usize {
        self.longest
    }

    /// Whether any word occurs in `bytes`.
    pub(crate) fn any_in(&self, bytes: &[u8]) -> bool {
        match &self.packed {
            Some(p) => p.find(bytes).is_some(),
            None => self.finders.iter().any(|f| f.find(bytes).is_some()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_word_is_found_anywhere_and_nothing_else_is() {
        let w = Words::new(&["destinations", "config_value", "sinkConfig"]);
        assert!(w.any_in(br#"{"a":{"sinkConfig":{}}}"#));
        assert!(w.any_in(br#"{"entity":"{\"destinations\":[]}"}"#));
        assert!(!w.any_in(br#"{"destination":"x","config":"y","sink":1}"#));
        assert!(Words::new(&[]).is_empty());
        assert!(!Words::new(&[]).any_in(b"destinations"));
        assert_eq!(w.longest(), 12);
    }
}
