//! A read cache in front of any store: TTL, bounded size with LRU eviction, concurrent misses
//! for one id coalesced into a single backend call, stale answers served when the backend
//! fails within a window, and the gateway's own writes and deletes kept in step.
//!
//! Replicas share the store but not their caches, so a value written through another replica
//! must reach this one without waiting for the TTL: every entry read within the TTL is
//! re-fetched in the background once it is older than the refresh bound
//! (stale-while-revalidate). A read never waits for that: it gets the cached value at once.
//! Refreshes come from a sweeper (so a secret read once, then not again for a while, is still
//! fresh when read next) and from a read that finds its entry due (should the sweeper lag);
//! one refresh per id at a time, and at most [`MAX_CONCURRENT_REFRESHES`] at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use super::{SecretStore, StoreError, StoreFuture};
use crate::metrics::Metrics;

/// Background refreshes in flight at once, per cache: spreads a burst of due entries out
/// instead of sending them to the store all together.
pub(crate) const MAX_CONCURRENT_REFRESHES: usize = 16;

/// What the cache keeps and for how long.
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    /// How long a value is served without the store confirming it (0: no cache).
    pub ttl: Duration,
    /// Past the TTL, how long a value is still served while the store fails.
    pub stale: Duration,
    /// Entries kept; the least recently used goes first (0: no cache).
    pub max_entries: usize,
    /// A value is re-fetched in the background once this old, so a change made through another
    /// replica is served here within it (plus one store round trip). Zero: no refresh.
    pub refresh: Duration,
}

impl CacheSettings {
    fn enabled(&self) -> bool {
        self.max_entries > 0 && !self.ttl.is_zero()
    }

    /// How often the sweeper looks for due entries: a tenth of the bound (at least 10 ms).
    fn sweep_every(&self) -> Duration {
        (self.refresh / 10).max(Duration::from_millis(10))
    }

    /// An entry is due one sweep before the bound, so its refresh starts within the bound.
    fn due_after(&self) -> Duration {
        self.refresh.saturating_sub(self.sweep_every())
    }
}

struct Entry {
    value: Option<String>,
    /// When the store last confirmed the value (or this replica wrote it): the TTL runs from here.
    fetched: Instant,
    /// When a refresh last started successfully or last failed: the refresh bound runs from here.
    checked: Instant,
    last_used: Instant,
    /// LRU clock.
    used: u64,
    /// Bumped on every insert: a fetch that started before a newer insert is not applied.
    version: u64,
    refreshing: bool,
}

/// The state a background refresh needs after the request that started it has gone.
struct Shared {
    inner: Arc<dyn SecretStore>,
    settings: CacheSettings,
    entries: Mutex<HashMap<String, Entry>>,
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    tick: AtomicU64,
    versions: AtomicU64,
    refresh_slots: tokio::sync::Semaphore,
    metrics: Arc<Metrics>,
}

pub struct CachedStore {
    shared: Arc<Shared>,
}

impl CachedStore {
    /// Inside a tokio runtime, also starts the sweeper that keeps entries within the refresh
    /// bound; it stops when the cache is dropped.
    pub fn new(
        inner: Arc<dyn SecretStore>,
        settings: CacheSettings,
        metrics: Arc<Metrics>,
    ) -> CachedStore {
        let shared = Arc::new(Shared {
            inner,
            settings,
            entries: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            tick: AtomicU64::new(0),
            versions: AtomicU64::new(0),
            refresh_slots: tokio::sync::Semaphore::new(MAX_CONCURRENT_REFRESHES),
            metrics,
        });
        if settings.enabled() && !settings.refresh.is_zero() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(sweep(Arc::downgrade(&shared)));
            }
        }
        CachedStore { shared }
    }

    fn flight(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut f = match self.shared.inflight.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if f.len() > 1024 {
            f.retain(|_, l| Arc::strong_count(l) > 1);
        }
        f.entry(id.to_string()).or_default().clone()
    }

    /// A read the cache could not answer: one backend call per id at a time.
    async fn fetch(&self, id: &str) -> Result<Option<String>, StoreError> {
        let s = &self.shared;
        let lock = self.flight(id);
        let _guard = lock.lock().await;
        // Another caller may have filled it while this one waited.
        if let Some(v) = s.fresh(id) {
            s.metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(v);
        }
        s.metrics.cache_misses.fetch_add(1, Ordering::Relaxed);
        s.metrics.store_calls.fetch_add(1, Ordering::Relaxed);
        let (since, started) = (s.versions.load(Ordering::SeqCst), Instant::now());
        match s.inner.get(id).await {
            Ok(v) => {
                s.insert_fetched(id, v.clone(), since, started);
                Ok(v)
            }
            Err(e) => {
                s.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                match s.stale_value(id) {
                    Some(v) => {
                        tracing::warn!(error = %e, "secret store failed; serving a stale cached value");
                        Ok(v)
                    }
                    None => Err(e),
                }
            }
        }
    }

    #[cfg(test)]
    fn refreshing(&self, id: &str) -> bool {
        self.shared.entries().get(id).is_some_and(|e| e.refreshing)
    }
}

// === impl Shared ===

impl Shared {
    fn entries(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        match self.entries.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// A cached answer within the TTL (`Some(value-or-absent)`), counting a use; starts a
    /// background refresh when the entry is due and none is running.
    fn fresh(self: &Arc<Self>, id: &str) -> Option<Option<String>> {
        let mut e = self.entries();
        let entry = e.get_mut(id)?;
        let now = Instant::now();
        if now.duration_since(entry.fetched) > self.settings.ttl {
            return None;
        }
        entry.used = self.tick.fetch_add(1, Ordering::Relaxed);
        entry.last_used = now;
        let value = entry.value.clone();
        if self.is_due(entry, now) {
            entry.refreshing = true;
            let version = entry.version;
            drop(e);
            self.spawn_refresh(id.to_string(), version);
        }
        Some(value)
    }

    fn is_due(&self, entry: &Entry, now: Instant) -> bool {
        !self.settings.refresh.is_zero()
            && !entry.refreshing
            && now.duration_since(entry.checked) >= self.settings.due_after()
    }

    fn stale_value(&self, id: &str) -> Option<Option<String>> {
        let e = self.entries();
        let entry = e.get(id)?;
        (entry.fetched.elapsed() <= self.settings.ttl + self.settings.stale)
            .then(|| entry.value.clone())
    }

    /// This replica wrote (or deleted) `id`: the value is the store's from now on.
    fn insert(&self, id: &str, value: Option<String>) {
        self.insert_at(id, value, Instant::now(), None);
    }

    /// A value read from the store by a fetch that began at `started`, when the version
    /// counter stood at `since`: dropped when a newer insert already replaced the entry.
    fn insert_fetched(&self, id: &str, value: Option<String>, since: u64, started: Instant) {
        self.insert_at(id, value, started, Some(since));
    }

    fn insert_at(&self, id: &str, value: Option<String>, at: Instant, since: Option<u64>) {
        if !self.settings.enabled() {
            return;
        }
        let used = self.tick.fetch_add(1, Ordering::Relaxed);
        let mut e = self.entries();
        if let (Some(since), Some(current)) = (since, e.get(id)) {
            if current.version > since {
                return;
            }
        }
        if e.len() >= self.settings.max_entries && !e.contains_key(id) {
            if let Some(oldest) = e.iter().min_by_key(|(_, v)| v.used).map(|(k, _)| k.clone()) {
                e.remove(&oldest);
            }
        }
        let entry = Entry {
            value,
            fetched: at,
            checked: at,
            last_used: Instant::now(),
            used,
            version: self.versions.fetch_add(1, Ordering::SeqCst) + 1,
            refreshing: false,
        };
        e.insert(id.to_string(), entry);
    }

    fn invalidate(&self, id: &str) {
        self.entries().remove(id);
    }

    fn spawn_refresh(self: &Arc<Self>, id: String, version: u64) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.finish_refresh(&id, version, None);
            return;
        };
        let guard = RefreshGuard {
            shared: self.clone(),
            id,
            version,
            done: false,
        };
        rt.spawn(guard.run());
    }

    /// Applies a refresh's outcome to the entry it started from (`None`: it did not run).
    /// An entry replaced meanwhile (a write, a miss) keeps the newer value.
    fn finish_refresh(
        &self,
        id: &str,
        version: u64,
        outcome: Option<(Result<Option<String>, StoreError>, Instant)>,
    ) {
        let mut e = self.entries();
        let Some(entry) = e.get_mut(id).filter(|e| e.version == version) else {
            return;
        };
        entry.refreshing = false;
        match outcome {
            Some((Ok(value), started)) => {
                entry.value = value;
                entry.fetched = started;
                entry.checked = started;
                entry.version = self.versions.fetch_add(1, Ordering::SeqCst) + 1;
            }
            // Failed: keep serving the value (TTL and stale window apply) and try again
            // one bound later, not on every read.
            Some((Err(_), _)) => entry.checked = Instant::now(),
            None => {}
        }
    }

    /// Entries due for a refresh among those read within the TTL; drops entries past the
    /// stale window, which nothing may serve any more.
    fn sweep_once(self: &Arc<Self>) {
        let now = Instant::now();
        let (ttl, keep) = (self.settings.ttl, self.settings.ttl + self.settings.stale);
        let mut due = Vec::new();
        {
            let mut e = self.entries();
            e.retain(|_, entry| now.duration_since(entry.fetched) <= keep);
            for (id, entry) in e.iter_mut() {
                let live = now.duration_since(entry.last_used) <= ttl
                    && now.duration_since(entry.fetched) <= ttl;
                if live && self.is_due(entry, now) {
                    entry.refreshing = true;
                    due.push((id.clone(), entry.version));
                }
            }
        }
        for (id, version) in due {
            self.spawn_refresh(id, version);
        }
    }
}

/// One background refresh; clears the entry's `refreshing` mark however it ends.
struct RefreshGuard {
    shared: Arc<Shared>,
    id: String,
    version: u64,
    done: bool,
}

impl RefreshGuard {
    async fn run(mut self) {
        let s = self.shared.clone();
        let Ok(_slot) = s.refresh_slots.acquire().await else {
            return;
        };
        s.metrics.cache_refreshes.fetch_add(1, Ordering::Relaxed);
        s.metrics.store_calls.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let result = s.inner.get(&self.id).await;
        if let Err(e) = &result {
            s.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "background refresh of a cached secret failed; the cached value is still served");
        }
        s.finish_refresh(&self.id, self.version, Some((result, started)));
        self.done = true;
    }
}

impl Drop for RefreshGuard {
    fn drop(&mut self) {
        if !self.done {
            self.shared.finish_refresh(&self.id, self.version, None);
        }
    }
}

/// Runs until the cache is dropped.
async fn sweep(shared: Weak<Shared>) {
    let Some(every) = shared.upgrade().map(|s| s.settings.sweep_every()) else {
        return;
    };
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        match shared.upgrade() {
            Some(s) => s.sweep_once(),
            None => return,
        }
    }
}

impl SecretStore for CachedStore {
    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            // Owner markers decide where an entity's secrets go; another gateway sharing the
            // store may have just claimed one, so they are always read from the store.
            if id.ends_with(super::ownership::MARKER) {
                self.shared
                    .metrics
                    .store_calls
                    .fetch_add(1, Ordering::Relaxed);
                return self.shared.inner.get(id).await;
            }
            if let Some(v) = self.shared.fresh(id) {
                self.shared
                    .metrics
                    .cache_hits
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(v);
            }
            self.fetch(id).await
        })
    }

    fn put<'a>(&'a self, id: &'a str, value: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let s = &self.shared;
            s.metrics.store_calls.fetch_add(1, Ordering::Relaxed);
            match s.inner.put(id, value).await {
                Ok(()) => {
                    s.insert(id, Some(value.to_string()));
                    Ok(())
                }
                Err(e) => {
                    s.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                    s.invalidate(id);
                    Err(e)
                }
            }
        })
    }

    fn put_many<'a>(&'a self, items: &'a [(String, String)]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let s = &self.shared;
            s.metrics.store_calls.fetch_add(1, Ordering::Relaxed);
            match s.inner.put_many(items).await {
                Ok(()) => {
                    for (id, value) in items {
                        s.insert(id, Some(value.clone()));
                    }
                    Ok(())
                }
                Err(e) => {
                    s.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                    for (id, _) in items {
                        s.invalidate(id);
                    }
                    Err(e)
                }
            }
        })
    }

    fn create<'a>(&'a self, id: &'a str, value: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let s = &self.shared;
            s.metrics.store_calls.fetch_add(1, Ordering::Relaxed);
            let r = s.inner.create(id, value).await;
            match &r {
                Ok(true) => s.insert(id, Some(value.to_string())),
                Ok(false) => s.invalidate(id),
                Err(_) => {
                    s.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                    s.invalidate(id);
                }
            }
            r
        })
    }

    fn delete<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let s = &self.shared;
            s.metrics.store_calls.fetch_add(1, Ordering::Relaxed);
            let r = s.inner.delete(id).await;
            match r {
                // Absent from now on: a refresh that read the old value cannot bring it back.
                Ok(()) => s.insert(id, None),
                Err(_) => {
                    s.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                    s.invalidate(id);
                }
            }
            r
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            self.shared
                .metrics
                .store_calls
                .fetch_add(1, Ordering::Relaxed);
            self.shared.inner.list(prefix).await
        })
    }

    fn health(&self) -> StoreFuture<'_, ()> {
        self.shared.inner.health()
    }

    fn name(&self) -> &'static str {
        self.shared.inner.name()
    }
}

/// Bounded retries of transient errors with exponential backoff and jitter, and a token
/// bucket that keeps writes under the configured rate (AWS: 50 writes/s per region).
pub(crate) struct Resilient {
    inner: Arc<dyn SecretStore>,
    retries: u32,
    rate: f64,
    bucket: tokio::sync::Mutex<(f64, Instant)>,
}

impl Resilient {
    /// `writes_per_sec: None`: writes are not rate-limited.
    pub(crate) fn new(
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

    async fn retry<'a, T, F>(&'a self, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> StoreFuture<'a, T>,
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
        Box::pin(self.retry(|| self.inner.get(id)))
    }

    fn put<'a>(&'a self, id: &'a str, value: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.write_token().await;
            self.retry(|| self.inner.put(id, value)).await
        })
    }

    fn put_many<'a>(&'a self, items: &'a [(String, String)]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            for _ in items {
                self.write_token().await;
            }
            self.retry(|| self.inner.put_many(items)).await
        })
    }

    /// A retried create that finds the id may be finding its own first attempt: callers
    /// compare the value (`ownership::claim` does).
    fn create<'a>(&'a self, id: &'a str, value: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            self.write_token().await;
            self.retry(|| self.inner.create(id, value)).await
        })
    }

    fn delete<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.write_token().await;
            self.retry(|| self.inner.delete(id)).await
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(self.retry(|| self.inner.list(prefix)))
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

    /// A cache without background refresh (the tests of TTL, staleness and eviction).
    fn cached(
        inner: Arc<MemoryStore>,
        ttl: Duration,
        stale: Duration,
        max: usize,
    ) -> Arc<CachedStore> {
        refreshing(inner, ttl, stale, max, Duration::ZERO)
    }

    fn refreshing(
        inner: Arc<dyn SecretStore>,
        ttl: Duration,
        stale: Duration,
        max_entries: usize,
        refresh: Duration,
    ) -> Arc<CachedStore> {
        let settings = CacheSettings {
            ttl,
            stale,
            max_entries,
            refresh,
        };
        Arc::new(CachedStore::new(
            inner,
            settings,
            Arc::new(Metrics::default()),
        ))
    }

    /// A store whose reads take the value at once, then wait while the test holds the gate
    /// closed: the value another replica had written before is what a held read returns.
    struct GatedStore {
        mem: MemoryStore,
        gate: tokio::sync::RwLock<()>,
        reads: AtomicU64,
    }

    impl GatedStore {
        fn new() -> Arc<GatedStore> {
            Arc::new(GatedStore {
                mem: MemoryStore::new(),
                gate: tokio::sync::RwLock::new(()),
                reads: AtomicU64::new(0),
            })
        }

        fn reads(&self) -> u64 {
            self.reads.load(Ordering::SeqCst)
        }
    }

    impl SecretStore for GatedStore {
        fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<String>> {
            Box::pin(async move {
                self.reads.fetch_add(1, Ordering::SeqCst);
                let v = self.mem.get(id).await;
                let _open = self.gate.read().await;
                v
            })
        }
        fn put<'a>(&'a self, id: &'a str, value: &'a str) -> StoreFuture<'a, ()> {
            self.mem.put(id, value)
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
            "gated"
        }
    }

    /// Polls `f` every 5 ms for up to 2 s.
    async fn eventually(mut f: impl FnMut() -> bool) -> bool {
        for _ in 0..400 {
            if f() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn a_value_changed_elsewhere_is_served_within_the_bound_without_a_read_in_between() {
        let mem = Arc::new(MemoryStore::new());
        mem.put("/a", "old").await.unwrap();
        let bound = Duration::from_millis(100);
        let c = refreshing(mem.clone(), MINUTE, MINUTE, 100, bound);
        assert_eq!(c.get("/a").await.unwrap().as_deref(), Some("old"));
        // Another replica writes; this one is not asked again until the bound has passed.
        mem.put("/a", "new").await.unwrap();
        tokio::time::sleep(bound + Duration::from_millis(60)).await;
        let before = mem.calls.load(Ordering::SeqCst);
        assert_eq!(c.get("/a").await.unwrap().as_deref(), Some("new"));
        assert_eq!(
            mem.calls.load(Ordering::SeqCst),
            before,
            "the read itself made no store call: the refresh happened before it"
        );
    }

    #[tokio::test]
    async fn a_hit_past_the_bound_answers_at_once_while_one_refresh_runs() {
        let store = GatedStore::new();
        store.mem.put("/a", "old").await.unwrap();
        let c = refreshing(
            store.clone(),
            MINUTE,
            MINUTE,
            100,
            Duration::from_millis(50),
        );
        assert_eq!(c.get("/a").await.unwrap().as_deref(), Some("old"));
        assert_eq!(store.reads(), 1);
        store.mem.put("/a", "new").await.unwrap();
        let closed = store.gate.write().await;
        tokio::time::sleep(Duration::from_millis(120)).await;
        // The refresh has started and is held in the store; hits do not wait for it.
        for _ in 0..100 {
            let hit = tokio::time::timeout(Duration::from_millis(20), c.get("/a")).await;
            let v = hit.expect("a hit never waits on the store").unwrap();
            assert_eq!(v.as_deref(), Some("old"));
        }
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(store.reads(), 2, "one refresh per secret at a time");
        assert!(c.refreshing("/a"));
        drop(closed);
        assert!(
            eventually(|| !c.refreshing("/a")).await,
            "the refresh finishes"
        );
        assert_eq!(c.get("/a").await.unwrap().as_deref(), Some("new"));
    }

    #[tokio::test]
    async fn a_refresh_never_overwrites_this_replicas_own_newer_write() {
        let store = GatedStore::new();
        store.mem.put("/a", "old").await.unwrap();
        let c = refreshing(
            store.clone(),
            MINUTE,
            MINUTE,
            100,
            Duration::from_millis(200),
        );
        c.get("/a").await.unwrap();
        let closed = store.gate.write().await;
        assert!(eventually(|| c.refreshing("/a")).await, "a refresh starts");
        assert_eq!(store.reads(), 2);
        // The held refresh has read "old"; this replica now writes "mine".
        c.put("/a", "mine").await.unwrap();
        assert_eq!(c.get("/a").await.unwrap().as_deref(), Some("mine"));
        // Released, the refresh ends well before the next one is due (200 ms after the write).
        drop(closed);
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(store.reads(), 2);
        assert_eq!(
            c.get("/a").await.unwrap().as_deref(),
            Some("mine"),
            "the late refresh result was dropped"
        );
    }

    #[tokio::test]
    async fn a_delete_is_not_undone_by_a_refresh_that_read_the_old_value() {
        let store = GatedStore::new();
        store.mem.put("/a", "old").await.unwrap();
        let c = refreshing(
            store.clone(),
            MINUTE,
            MINUTE,
            100,
            Duration::from_millis(50),
        );
        c.get("/a").await.unwrap();
        let closed = store.gate.write().await;
        assert!(eventually(|| c.refreshing("/a")).await);
        c.delete("/a").await.unwrap();
        drop(closed);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(c.get("/a").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_failing_refresh_keeps_serving_the_value_and_retries_once_per_bound() {
        let mem = Arc::new(MemoryStore::new());
        mem.put("/a", "v").await.unwrap();
        let bound = Duration::from_millis(50);
        let c = refreshing(mem.clone(), MINUTE, MINUTE, 100, bound);
        c.get("/a").await.unwrap();
        mem.set_down(true);
        let before = mem.calls.load(Ordering::SeqCst);
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(500) {
            assert_eq!(c.get("/a").await.unwrap().as_deref(), Some("v"));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let attempts = mem.calls.load(Ordering::SeqCst) - before;
        // 500 ms / (50 ms less one 10 ms sweep) is about 12 attempts, not one per read.
        assert!((5..=16).contains(&attempts), "{attempts} refresh attempts");
    }

    #[tokio::test]
    async fn an_entry_nobody_reads_for_the_ttl_is_no_longer_refreshed() {
        let mem = Arc::new(MemoryStore::new());
        mem.put("/a", "v").await.unwrap();
        let c = refreshing(
            mem.clone(),
            Duration::from_millis(150),
            MINUTE,
            100,
            Duration::from_millis(20),
        );
        c.get("/a").await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        let settled = mem.calls.load(Ordering::SeqCst);
        assert!(settled >= 3, "refreshed while recently read: {settled}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(mem.calls.load(Ordering::SeqCst), settled);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_refresh_costs_about_one_store_call_per_entry_per_bound() {
        let mem = Arc::new(MemoryStore::new());
        let bound = Duration::from_millis(200);
        let c = refreshing(mem.clone(), MINUTE, MINUTE, 2_000, bound);
        for i in 0..1_000 {
            let id = format!("/s{i}");
            mem.put(&id, "v").await.unwrap();
            c.get(&id).await.unwrap();
        }
        let keep_reading = {
            let c = c.clone();
            tokio::spawn(async move {
                loop {
                    for i in (0..1_000).step_by(50) {
                        c.get(&format!("/s{i}")).await.unwrap();
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = mem.calls.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let per_sec = mem.calls.load(Ordering::SeqCst) - before;
        keep_reading.abort();
        eprintln!("1,000 cached secrets, bound {bound:?}: {per_sec} store calls/s");
        // 1,000 entries / (0.2 s less one 20 ms sweep) = 5,556 a second.
        assert!(
            (2_500..=6_500).contains(&per_sec),
            "{per_sec} store calls in one second"
        );
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
        assert_eq!(c.shared.entries().len(), 2);
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
