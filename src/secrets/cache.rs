//! A read cache in front of any store: TTL, bounded size with LRU eviction, concurrent misses
//! for one id coalesced into a single backend call, stale answers served when the backend
//! fails within a window, and the gateway's own writes and deletes kept in step.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{SecretStore, StoreError, StoreFuture};
use crate::metrics::Metrics;

struct Entry {
    value: Option<String>,
    fetched: Instant,
    used: u64,
}

pub struct CachedStore {
    inner: Arc<dyn SecretStore>,
    ttl: Duration,
    stale: Duration,
    max: usize,
    entries: Mutex<HashMap<String, Entry>>,
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    tick: AtomicU64,
    metrics: Arc<Metrics>,
}

impl CachedStore {
    pub fn new(
        inner: Arc<dyn SecretStore>,
        ttl: Duration,
        stale: Duration,
        max: usize,
        metrics: Arc<Metrics>,
    ) -> CachedStore {
        CachedStore {
            inner,
            ttl,
            stale,
            max,
            entries: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            tick: AtomicU64::new(0),
            metrics,
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        match self.entries.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// A fresh cached answer (`Some(value-or-absent)`), counting a hit.
    fn fresh(&self, id: &str) -> Option<Option<String>> {
        let mut e = self.entries();
        let entry = e.get_mut(id)?;
        if entry.fetched.elapsed() > self.ttl {
            return None;
        }
        entry.used = self.tick.fetch_add(1, Ordering::Relaxed);
        Some(entry.value.clone())
    }

    fn stale_value(&self, id: &str) -> Option<Option<String>> {
        let e = self.entries();
        let entry = e.get(id)?;
        (entry.fetched.elapsed() <= self.ttl + self.stale).then(|| entry.value.clone())
    }

    fn insert(&self, id: &str, value: Option<String>) {
        if self.max == 0 || self.ttl.is_zero() {
            return;
        }
        let used = self.tick.fetch_add(1, Ordering::Relaxed);
        let mut e = self.entries();
        if e.len() >= self.max && !e.contains_key(id) {
            if let Some(oldest) = e.iter().min_by_key(|(_, v)| v.used).map(|(k, _)| k.clone()) {
                e.remove(&oldest);
            }
        }
        e.insert(
            id.to_string(),
            Entry {
                value,
                fetched: Instant::now(),
                used,
            },
        );
    }

    fn invalidate(&self, id: &str) {
        self.entries().remove(id);
    }

    fn flight(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut f = match self.inflight.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if f.len() > 1024 {
            f.retain(|_, l| Arc::strong_count(l) > 1);
        }
        f.entry(id.to_string()).or_default().clone()
    }

    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SecretStore for CachedStore {
    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            // Owner markers decide where an entity's secrets go; another gateway sharing the
            // store may have just claimed one, so they are always read from the store.
            if id.ends_with(super::ownership::MARKER) {
                self.metrics.store_calls.fetch_add(1, Ordering::Relaxed);
                return self.inner.get(id).await;
            }
            if let Some(v) = self.fresh(id) {
                self.metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(v);
            }
            let lock = self.flight(id);
            let _guard = lock.lock().await;
            // Another caller may have filled it while this one waited.
            if let Some(v) = self.fresh(id) {
                self.metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(v);
            }
            self.metrics.cache_misses.fetch_add(1, Ordering::Relaxed);
            self.metrics.store_calls.fetch_add(1, Ordering::Relaxed);
            match self.inner.get(id).await {
                Ok(v) => {
                    self.insert(id, v.clone());
                    Ok(v)
                }
                Err(e) => {
                    self.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                    match self.stale_value(id) {
                        Some(v) => {
                            tracing::warn!(error = %e, "secret store failed; serving a stale cached value");
                            Ok(v)
                        }
                        None => Err(e),
                    }
                }
            }
        })
    }

    fn put<'a>(&'a self, id: &'a str, value: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.metrics.store_calls.fetch_add(1, Ordering::Relaxed);
            match self.inner.put(id, value).await {
                Ok(()) => {
                    self.insert(id, Some(value.to_string()));
                    Ok(())
                }
                Err(e) => {
                    self.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                    self.invalidate(id);
                    Err(e)
                }
            }
        })
    }

    fn put_many<'a>(&'a self, items: &'a [(String, String)]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.metrics.store_calls.fetch_add(1, Ordering::Relaxed);
            match self.inner.put_many(items).await {
                Ok(()) => {
                    for (id, value) in items {
                        self.insert(id, Some(value.clone()));
                    }
                    Ok(())
                }
                Err(e) => {
                    self.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                    for (id, _) in items {
                        self.invalidate(id);
                    }
                    Err(e)
                }
            }
        })
    }

    fn create<'a>(&'a self, id: &'a str, value: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            self.metrics.store_calls.fetch_add(1, Ordering::Relaxed);
            let r = self.inner.create(id, value).await;
            match &r {
                Ok(true) => self.insert(id, Some(value.to_string())),
                Ok(false) => self.invalidate(id),
                Err(_) => {
                    self.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                    self.invalidate(id);
                }
            }
            r
        })
    }

    fn delete<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.metrics.store_calls.fetch_add(1, Ordering::Relaxed);
            let r = self.inner.delete(id).await;
            self.invalidate(id);
            if r.is_err() {
                self.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
            }
            r
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            self.metrics.store_calls.fetch_add(1, Ordering::Relaxed);
            self.inner.list(prefix).await
        })
    }

    fn health(&self) -> StoreFuture<'_, ()> {
        self.inner.health()
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }
}

/// Bounded retries of transient errors with exponential backoff and jitter, and a token
/// bucket that keeps writes under the configured rate (AWS: 50 writes/s per region).
pub struct Resilient {
    inner: Arc<dyn SecretStore>,
    retries: u32,
    rate: f64,
    bucket: tokio::sync::Mutex<(f64, Instant)>,
}

impl Resilient {
    /// `writes_per_sec: None`: writes are not rate-limited.
    pub fn new(
        inner: Arc<dyn SecretStore>,
        retries: u32,
        writes_per_sec: Option<f64>,
    ) -> Resilient {
        let rate = writes_per_sec.unwrap_or(0.0);
        Resilient {
            inner,
            retries,
            rate,
            bucket: tokio::sync::Mutex::new((rate.max(1.0), Instant::now())),
        }
    }

    async fn write_token(&self) {
        if self.rate <= 0.0 {
            return;
        }
        let mut b = self.bucket.lock().await;
        loop {
            let now = Instant::now();
            let refill = now.duration_since(b.1).as_secs_f64() * self.rate;
            b.0 = (b.0 + refill).min(self.rate.max(1.0));
            b.1 = now;
            if b.0 >= 1.0 {
                b.0 -= 1.0;
                return;
            }
            let wait = (1.0 - b.0) / self.rate;
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
    }

    async fn retry<T, F>(&self, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> StoreFuture<'static, T>,
    {
        let mut attempt = 0;
        loop {
            match op().await {
                Err(e) if e.is_transient() && attempt < self.retries => {
                    let base = 50u64 << attempt.min(6);
                    let jitter = fastrand::u64(0..=base);
                    tokio::time::sleep(Duration::from_millis(base + jitter)).await;
                    attempt += 1;
                }
                r => return r,
            }
        }
    }
}

impl SecretStore for Resilient {
    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<String>> {
        let inner = self.inner.clone();
        let id = id.to_string();
        Box::pin(async move {
            self.retry(|| {
                let (inner, id) = (inner.clone(), id.clone());
                Box::pin(async move { inner.get(&id).await })
            })
            .await
        })
    }

    fn put<'a>(&'a self, id: &'a str, value: &'a str) -> StoreFuture<'a, ()> {
        let inner = self.inner.clone();
        let (id, value) = (id.to_string(), value.to_string());
        Box::pin(async move {
            self.write_token().await;
            self.retry(|| {
                let (inner, id, value) = (inner.clone(), id.clone(), value.clone());
                Box::pin(async move { inner.put(&id, &value).await })
            })
            .await
        })
    }

    fn put_many<'a>(&'a self, items: &'a [(String, String)]) -> StoreFuture<'a, ()> {
        let inner = self.inner.clone();
        let items = items.to_vec();
        Box::pin(async move {
            for _ in &items {
                self.write_token().await;
            }
            self.retry(|| {
                let (inner, items) = (inner.clone(), items.clone());
                Box::pin(async move { inner.put_many(&items).await })
            })
            .await
        })
    }

    /// A retried create that finds the id may be finding its own first attempt: callers
    /// compare the value (`ownership::claim` does).
    fn create<'a>(&'a self, id: &'a str, value: &'a str) -> StoreFuture<'a, bool> {
        let inner = self.inner.clone();
        let (id, value) = (id.to_string(), value.to_string());
        Box::pin(async move {
            self.write_token().await;
            self.retry(|| {
                let (inner, id, value) = (inner.clone(), id.clone(), value.clone());
                Box::pin(async move { inner.create(&id, &value).await })
            })
            .await
        })
    }

    fn delete<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        let inner = self.inner.clone();
        let id = id.to_string();
        Box::pin(async move {
            self.write_token().await;
            self.retry(|| {
                let (inner, id) = (inner.clone(), id.clone());
                Box::pin(async move { inner.delete(&id).await })
            })
            .await
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        let inner = self.inner.clone();
        let prefix = prefix.to_string();
        Box::pin(async move {
            self.retry(|| {
                let (inner, prefix) = (inner.clone(), prefix.clone());
                Box::pin(async move { inner.list(&prefix).await })
            })
            .await
        })
    }

    fn health(&self) -> StoreFuture<'_, ()> {
        self.inner.health()
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::memory::MemoryStore;

    fn cached(
        inner: Arc<MemoryStore>,
        ttl: Duration,
        stale: Duration,
        max: usize,
    ) -> Arc<CachedStore> {
        Arc::new(CachedStore::new(
            inner,
            ttl,
            stale,
            max,
            Arc::new(Metrics::default()),
        ))
    }

    #[tokio::test]
    async fn a_hundred_concurrent_cold_reads_make_one_backend_call() {
        let mem = Arc::new(MemoryStore::new());
        mem.put("/a", "v").await.unwrap();
        let before = mem.calls.load(Ordering::SeqCst);
        let c = cached(mem.clone(), Duration::from_secs(60), Duration::ZERO, 100);
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move { c.get("/a").await.unwrap() }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().as_deref(), Some("v"));
        }
        assert_eq!(mem.calls.load(Ordering::SeqCst) - before, 1);
    }

    #[tokio::test]
    async fn an_outage_within_the_stale_window_still_answers() {
        let mem = Arc::new(MemoryStore::new());
        mem.put("/a", "v").await.unwrap();
        let c = cached(
            mem.clone(),
            Duration::from_millis(10),
            Duration::from_secs(60),
            100,
        );
        assert_eq!(c.get("/a").await.unwrap().as_deref(), Some("v"));
        tokio::time::sleep(Duration::from_millis(30)).await;
        mem.set_down(true);
        assert_eq!(c.get("/a").await.unwrap().as_deref(), Some("v"));
        assert!(c.get("/never-read").await.is_err());
    }

    #[tokio::test]
    async fn an_outage_past_the_stale_window_is_an_error() {
        let mem = Arc::new(MemoryStore::new());
        mem.put("/a", "v").await.unwrap();
        let c = cached(
            mem.clone(),
            Duration::from_millis(5),
            Duration::from_millis(5),
            100,
        );
        c.get("/a").await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        mem.set_down(true);
        assert!(c.get("/a").await.is_err());
    }

    #[tokio::test]
    async fn writes_and_deletes_keep_the_cache_in_step() {
        let mem = Arc::new(MemoryStore::new());
        let c = cached(mem.clone(), Duration::from_secs(60), Duration::ZERO, 100);
        assert_eq!(c.get("/a").await.unwrap(), None);
        c.put("/a", "1").await.unwrap();
        assert_eq!(c.get("/a").await.unwrap().as_deref(), Some("1"));
        c.delete("/a").await.unwrap();
        assert_eq!(c.get("/a").await.unwrap(), None);
    }

    #[tokio::test]
    async fn the_least_recently_used_entry_is_evicted() {
        let mem = Arc::new(MemoryStore::new());
        for k in ["/a", "/b", "/c"] {
            mem.put(k, k).await.unwrap();
        }
        let c = cached(mem.clone(), Duration::from_secs(60), Duration::ZERO, 2);
        c.get("/a").await.unwrap();
        c.get("/b").await.unwrap();
        c.get("/a").await.unwrap();
        c.get("/c").await.unwrap();
        assert_eq!(c.len(), 2);
        let before = mem.calls.load(Ordering::SeqCst);
        c.get("/a").await.unwrap();
        assert_eq!(mem.calls.load(Ordering::SeqCst), before, "/a stayed cached");
        c.get("/b").await.unwrap();
        assert_eq!(
            mem.calls.load(Ordering::SeqCst),
            before + 1,
            "/b was evicted"
        );
    }

    #[tokio::test]
    async fn transient_errors_are_retried_a_bounded_number_of_times() {
        let mem = Arc::new(MemoryStore::new());
        mem.set_down(true);
        let r = Resilient::new(mem.clone(), 2, Some(50.0));
        let before = mem.calls.load(Ordering::SeqCst);
        assert!(r.get("/a").await.is_err());
        assert_eq!(mem.calls.load(Ordering::SeqCst) - before, 3);
    }

    #[tokio::test]
    async fn the_token_bucket_spaces_out_writes() {
        let mem = Arc::new(MemoryStore::new());
        let r = Resilient::new(mem, 0, Some(20.0));
        let start = Instant::now();
        for i in 0..30 {
            r.put(&format!("/k{i}"), "v").await.unwrap();
        }
        // 20 tokens up front, then 10 more at 20/s: at least ~0.5 s.
        assert!(
            start.elapsed() >= Duration::from_millis(450),
            "{:?}",
            start.elapsed()
        );
    }
}
