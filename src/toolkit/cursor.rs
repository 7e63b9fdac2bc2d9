//! The walk every command makes: the chosen kinds in rule-file order, each collection paged
//! through upstream with the service token (`include=all`, so soft-deleted entities count
//! too; a kind's `list_query` narrows it, e.g. `isBot=true`). OpenMetadata pages by a cursor
//! over a stable order, so two walks meet the entities in the same order.

use std::collections::VecDeque;

use serde_json::Value;

use super::{EntityError, Toolkit};
use crate::http::upstream::encode_segment;
use crate::rules::Rule;

/// Entities fetched per page.
const PAGE: usize = 100;

/// Yields `(rule, entity)` one at a time, fetching a page when the last one is used up.
pub(crate) struct Cursor<'t, 'a> {
    tk: &'t Toolkit<'a>,
    rules: Vec<&'a Rule>,
    /// The kind being walked.
    at: usize,
    /// Whether the first page of `rules[at]` was fetched.
    started: bool,
    after: Option<String>,
    page: VecDeque<Value>,
}

impl<'t, 'a> Cursor<'t, 'a> {
    pub(crate) fn new(tk: &'t Toolkit<'a>, rules: Vec<&'a Rule>) -> Self {
        Cursor {
            tk,
            rules,
            at: 0,
            started: false,
            after: None,
            page: VecDeque::new(),
        }
    }

    /// The next entity, or `None` when every kind is done. A listing that fails stops the walk.
    pub(crate) async fn next(&mut self) -> Result<Option<(&'a Rule, Value)>, EntityError> {
        loop {
            if let Some(e) = self.page.pop_front() {
                return Ok(Some((self.rules[self.at], e)));
            }
            let Some(rule) = self.rules.get(self.at).copied() else {
                return Ok(None);
            };
            if self.started && self.after.is_none() {
                self.at += 1;
                self.started = false;
                continue;
            }
            let page = self.list(rule, self.after.as_deref(), PAGE).await?;
            self.started = true;
            self.after = page["paging"]["after"].as_str().map(str::to_string);
            if let Some(Value::Array(items)) = page.get("data") {
                self.page.extend(items.iter().cloned());
            }
        }
    }

    /// How many entities the walk will meet, from each collection's `paging.total`; `None`
    /// when the upstream does not say.
    pub(crate) async fn total(&self) -> Option<u64> {
        let mut sum = 0;
        for rule in &self.rules {
            let page = self.list(rule, None, 1).await.ok()?;
            sum += page["paging"]["total"].as_u64()?;
        }
        Some(sum)
    }

    async fn list(
        &self,
        rule: &Rule,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Value, EntityError> {
        let mut path = format!("{}?limit={limit}&include=all", rule.collection);
        if let Some(q) = &rule.list_query {
            path.push('&');
            path.push_str(q);
        }
        if let Some(a) = after {
            path.push_str("&after=");
            path.push_str(&encode_segment(a));
        }
        self.tk.get(&path).await?.ok_or_else(|| {
            EntityError::Stop(format!(
                "listing {} failed: OpenMetadata refused or did not answer",
                rule.collection
            ))
        })
    }
}
