//! The paging loop every store's `list` shares: fetch a page, keep the ids under the prefix,
//! follow the continuation until there is none, and answer them sorted without repeats.

use std::future::Future;

use super::StoreError;

/// A listing that has not ended after this many pages is a misbehaving service.
const MAX_PAGES: usize = 10_000;

/// One page of a listing: the ids it holds and the continuation (token, link, ...) if any.
pub(crate) type Page = (Vec<String>, Option<String>);

/// Every id under `prefix`, from `page(continuation)` called until it returns no continuation
/// (the first call gets `None`).
pub(crate) async fn collect<F, Fut>(
    vendor: &str,
    prefix: &str,
    mut page: F,
) -> Result<Vec<String>, StoreError>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = Result<Page, StoreError>>,
{
    let mut out = Vec::new();
    let mut next = None;
    for _ in 0..MAX_PAGES {
        let (ids, cont) = page(next).await?;
        out.extend(ids.into_iter().filter(|id| id.starts_with(prefix)));
        next = cont.filter(|c| !c.is_empty());
        if next.is_none() {
            out.sort();
            out.dedup();
            return Ok(out);
        }
    }
    Err(StoreError::Unavailable(format!(
        "{vendor}: endless listing"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pages_are_followed_filtered_sorted_and_deduplicated() {
        let pages = [
            (vec!["p/b", "q/x", "p/a"], Some("1")),
            (vec!["p/a", "p/c"], Some("")),
        ];
        let mut seen = Vec::new();
        let ids = collect("test", "p/", |cont| {
            seen.push(cont.clone());
            let i = cont.map_or(0, |c| c.parse::<usize>().unwrap_or(99));
            let (ids, next) = pages[i].clone();
            async move {
                Ok((
                    ids.into_iter().map(str::to_string).collect(),
                    next.map(str::to_string),
                ))
            }
        })
        .await
        .unwrap();
        assert_eq!(ids, ["p/a", "p/b", "p/c"]);
        assert_eq!(seen, [None, Some("1".to_string())]);
    }

    #[tokio::test]
    async fn a_listing_that_never_ends_is_an_error() {
        let r = collect("vendor-x", "", |_| async {
            Ok((vec!["a".to_string()], Some("again".to_string())))
        })
        .await;
        match r {
            Err(StoreError::Unavailable(m)) => assert!(m.contains("vendor-x: endless listing")),
            other => panic!("expected an error, got {other:?}"),
        }
    }
}
