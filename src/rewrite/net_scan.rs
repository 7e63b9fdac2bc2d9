//! The unruled safety net's chunk scan, for both things it looks for: the reference markers of
//! `scan::MarkerScan` (for callers who do not resolve) and the `net_markers` words of
//! `mask_only` rules (for callers who may not see their values). Each chunk is scanned once
//! per needle as it arrives; a needle split across two chunks is still seen.

use std::sync::Arc;

use super::scan::{MarkerScan, CARRY};
use crate::rules::words::Words;

/// The longest `net_markers` word a rule may declare.
pub(crate) const MAX_WORD: usize = 32;

/// Scans for a set of words, chunk by chunk.
#[derive(Debug)]
pub(crate) struct WordScan {
    words: Arc<Words>,
    /// The longest word's length minus one: what a split word leaves in the earlier chunk.
    carry: usize,
    tail: [u8; MAX_WORD],
    tail_len: usize,
    seen: bool,
}

impl WordScan {
    /// `None` when there is nothing to look for.
    pub(crate) fn new(words: Arc<Words>) -> Option<WordScan> {
        if words.is_empty() {
            return None;
        }
        let longest = words.longest();
        Some(WordScan {
            carry: longest.clamp(1, MAX_WORD) - 1,
            words,
            tail: [0; MAX_WORD],
            tail_len: 0,
            seen: false,
        })
    }

    fn any_in(&self, bytes: &[u8]) -> bool {
        self.words.any_in(bytes)
    }

    /// Scans the next chunk; true once any word has been seen.
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> bool {
        if self.seen {
            return true;
        }
        let head = &chunk[..chunk.len().min(self.carry)];
        let mut window = [0u8; 2 * MAX_WORD];
        window[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
        window[self.tail_len..self.tail_len + head.len()].copy_from_slice(head);
        let window = &window[..self.tail_len + head.len()];
        if (self.tail_len > 0 && self.any_in(window)) || self.any_in(chunk) {
            self.seen = true;
            return true;
        }
        let keep = self.carry.min(window.len().max(chunk.len()));
        if chunk.len() >= keep {
            self.tail[..keep].copy_from_slice(&chunk[chunk.len() - keep..]);
        } else {
            let start = window.len() - keep.min(window.len());
            let w = &window[start..];
            self.tail[..w.len()].copy_from_slice(w);
        }
        self.tail_len = keep.min(self.carry);
        false
    }
}

/// What the unruled safety net looks for in one answer.
#[derive(Debug, Default)]
pub(crate) struct NetScan {
    refs: Option<MarkerScan>,
    words: Option<WordScan>,
}

impl NetScan {
    /// `refs`: look for reference markers; `words`: the `mask_only` rules' words, if any.
    pub(crate) fn new(refs: bool, words: Option<Arc<Words>>) -> NetScan {
        NetScan {
            refs: refs.then(MarkerScan::default),
            words: words.and_then(WordScan::new),
        }
    }

    /// Whether there is anything to look for.
    pub(crate) fn active(&self) -> bool {
        self.refs.is_some() || self.words.is_some()
    }

    /// Scans the next chunk; true once anything has been seen.
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> bool {
        let refs = self.refs.as_mut().is_some_and(|s| s.feed(chunk));
        let words = self.words.as_mut().is_some_and(|s| s.feed(chunk));
        refs || words
    }

    pub(crate) fn seen(&self) -> bool {
        self.refs.as_ref().is_some_and(MarkerScan::seen)
            || self.words.as_ref().is_some_and(|w| w.seen)
    }

    /// How many trailing bytes of a streamed answer must wait for the next chunk's scan.
    pub(crate) fn carry(&self) -> usize {
        CARRY.max(self.words.as_ref().map_or(0, |w| w.carry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(ws: &[&str]) -> Arc<Words> {
        Arc::new(Words::new(ws))
    }

    #[test]
    fn a_word_split_at_every_position_across_chunks_is_seen() {
        let body = br#"{"data":[{"name":"a","destinations":[{"config":{}}]}]}"#;
        for split in 1..body.len() {
            let mut s = WordScan::new(words(&["destinations", "config_value"])).unwrap();
            s.feed(&body[..split]);
            assert!(s.feed(&body[split..]), "split at {split}");
        }
    }

    #[test]
    fn a_word_spread_over_small_chunks_is_seen_and_absent_words_are_not() {
        let body = br#"{"a":"b","entity":"{\"appConfiguration\":{}}"}"#;
        for size in 1..=9 {
            let mut s = WordScan::new(words(&["appConfiguration"])).unwrap();
            let mut got = false;
            for c in body.chunks(size) {
                got |= s.feed(c);
            }
            assert!(got, "chunks of {size}");
            let mut n = WordScan::new(words(&["sinkConfig"])).unwrap();
            assert!(!body.chunks(size).any(|c| n.feed(c)), "chunks of {size}");
        }
    }

    #[test]
    fn the_net_scan_sees_references_only_when_asked_to() {
        let body = br#"{"a":"secret:/x"}"#;
        assert!(NetScan::new(true, None).feed(body));
        let mut words_only = NetScan::new(false, Some(words(&["destinations"])));
        assert!(!words_only.feed(body));
        assert!(!NetScan::new(false, None).active());
    }
}
