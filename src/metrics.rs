//! Prometheus metrics, kept in atomics and rendered as text on the admin port.
//!
//! The per-request counters (requests by class and status, the latency histogram) are kept
//! per thread: each thread adds to its own cache-line-aligned shard, so two cores serving
//! requests never write to the same memory; `render` adds the shards up.

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::refusal::Unreadable;

/// The route classes requests are counted by.
pub(crate) const ROUTE_CLASSES: [&str; 2] = ["passthrough", "ruled"];
/// Statuses 100..=599 each get a counter; a status outside that range is clamped into it.
const STATUSES: usize = 500;
/// Shards of the per-request counters; threads map to them round-robin.
const SHARDS: usize = 16;

const BUCKETS_MS: [f64; 12] = [
    1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 10000.0,
];

/// A small number per thread, given at the thread's first call, for per-thread shards
/// (metrics, the upstream pool).
pub(crate) fn thread_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    SLOT.with(|s| {
        if s.get() == usize::MAX {
            s.set(NEXT.fetch_add(1, Ordering::Relaxed));
        }
        s.get()
    })
}

/// One thread's share of the per-request counters.
#[repr(align(128))]
struct RequestShard {
    /// By (route class, status).
    requests: Box<[AtomicU64]>,
    /// Latencies by the first bucket they fit (the last: above every bound); made
    /// cumulative when rendered.
    latency: [AtomicU64; BUCKETS_MS.len() + 1],
    latency_sum_us: AtomicU64,
}

impl Default for RequestShard {
    fn default() -> Self {
        RequestShard {
            requests: (0..ROUTE_CLASSES.len() * STATUSES)
                .map(|_| AtomicU64::new(0))
                .collect(),
            latency: Default::default(),
            latency_sum_us: AtomicU64::new(0),
        }
    }
}

pub struct Metrics {
    shards: Box<[RequestShard]>,
    pub(crate) open_connections: AtomicI64,
    pub(crate) upstream_errors: AtomicU64,
    pub(crate) cache_hits: AtomicU64,
    pub(crate) cache_misses: AtomicU64,
    pub(crate) cache_refreshes: AtomicU64,
    pub(crate) store_calls: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    pub(crate) secrets_written: AtomicU64,
    pub(crate) secrets_resolved: AtomicU64,
    /// Answers refused because they could not be fully read, by reason.
    reads_refused: [AtomicU64; Unreadable::ALL.len()],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            shards: (0..SHARDS).map(|_| RequestShard::default()).collect(),
            open_connections: AtomicI64::new(0),
            upstream_errors: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            cache_refreshes: AtomicU64::new(0),
            store_calls: AtomicU64::new(0),
            store_errors: AtomicU64::new(0),
            secrets_written: AtomicU64::new(0),
            secrets_resolved: AtomicU64::new(0),
            reads_refused: Default::default(),
        }
    }
}

impl Metrics {
    pub(crate) fn record_request(&self, class: &'static str, status: u16, latency: Duration) {
        let shard = &self.shards[thread_slot() % SHARDS];
        let c = ROUTE_CLASSES.iter().position(|k| *k == class).unwrap_or(0);
        let st = usize::from(status.clamp(100, 599)) - 100;
        shard.requests[c * STATUSES + st].fetch_add(1, Ordering::Relaxed);
        let ms = latency.as_secs_f64() * 1000.0;
        let bucket = BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(BUCKETS_MS.len());
        shard.latency[bucket].fetch_add(1, Ordering::Relaxed);
        shard
            .latency_sum_us
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }

    fn sum(&self, f: impl Fn(&RequestShard) -> &AtomicU64) -> u64 {
        self.shards
            .iter()
            .map(|s| f(s).load(Ordering::Relaxed))
            .sum()
    }

    pub(crate) fn record_read_refused(&self, why: Unreadable) {
        self.reads_refused[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        let mut s = String::new();
        self.render_refusals(&mut s);
        self.render_requests(&mut s);
        self.render_latency(&mut s);
        self.render_scalars(&mut s);
        s
    }

    fn render_refusals(&self, s: &mut String) {
        s.push_str("# HELP omsp_reads_refused_total Upstream answers refused because the gateway could not fully read them, by reason.\n");
        s.push_str("# TYPE omsp_reads_refused_total counter\n");
        for why in Unreadable::ALL {
            let _ = writeln!(
                s,
                "omsp_reads_refused_total{{reason=\"{}\"}} {}",
                why.as_str(),
                self.reads_refused[why.index()].load(Ordering::Relaxed)
            );
        }
    }

    fn render_requests(&self, s: &mut String) {
        s.push_str("# HELP omsp_requests_total Requests answered, by route class and status.\n");
        s.push_str("# TYPE omsp_requests_total counter\n");
        for i in 0..ROUTE_CLASSES.len() * STATUSES {
            let n = self.sum(|s| &s.requests[i]);
            if n > 0 {
                let class = ROUTE_CLASSES[i / STATUSES];
                let status = i % STATUSES + 100;
                let _ = writeln!(
                    s,
                    "omsp_requests_total{{route_class=\"{class}\",status=\"{status}\"}} {n}"
                );
            }
        }
    }

    fn render_latency(&self, s: &mut String) {
        s.push_str("# HELP omsp_request_duration_seconds Request latency inside the gateway.\n");
        s.push_str("# TYPE omsp_request_duration_seconds histogram\n");
        let mut cumulative = 0;
        for (i, b) in BUCKETS_MS.iter().enumerate() {
            cumulative += self.sum(|s| &s.latency[i]);
            let _ = writeln!(
                s,
                "omsp_request_duration_seconds_bucket{{le=\"{}\"}} {cumulative}",
                b / 1000.0
            );
        }
        let count = cumulative + self.sum(|s| &s.latency[BUCKETS_MS.len()]);
        let _ = writeln!(
            s,
            "omsp_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            s,
            "omsp_request_duration_seconds_sum {}",
            self.sum(|s| &s.latency_sum_us) as f64 / 1e6
        );
        let _ = writeln!(s, "omsp_request_duration_seconds_count {count}");
    }

    /// The gauges and plain counters, from the `SCALARS` table.
    fn render_scalars(&self, s: &mut String) {
        for (name, kind, help, read) in SCALARS {
            let v = read(self);
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
    }
}

/// A scalar metric: name, Prometheus type, help text, and how to read it.
type Scalar = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Metrics) -> i64,
);

fn counter(a: &AtomicU64) -> i64 {
    i64::try_from(a.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
}

const SCALARS: [Scalar; 10] = [
    (
        "omsp_open_connections",
        "gauge",
        "Client connections open on the API port.",
        |m| m.open_connections.load(Ordering::Relaxed),
    ),
    (
        "omsp_upstream_errors_total",
        "counter",
        "Upstream failures (unreachable, timeout, broken answer).",
        |m| counter(&m.upstream_errors),
    ),
    (
        "omsp_secret_cache_hits_total",
        "counter",
        "Secret reads answered by the cache.",
        |m| counter(&m.cache_hits),
    ),
    (
        "omsp_secret_cache_misses_total",
        "counter",
        "Secret reads the cache could not answer.",
        |m| counter(&m.cache_misses),
    ),
    (
        "omsp_secret_cache_refreshes_total",
        "counter",
        "Background re-reads of cached secrets (keeps replicas' caches within the refresh bound).",
        |m| counter(&m.cache_refreshes),
    ),
    (
        "omsp_secret_store_calls_total",
        "counter",
        "Calls made to the secret store backend.",
        |m| counter(&m.store_calls),
    ),
    (
        "omsp_secret_store_errors_total",
        "counter",
        "Secret store calls that failed.",
        |m| counter(&m.store_errors),
    ),
    (
        "omsp_secrets_written_total",
        "counter",
        "Secret values moved into the store.",
        |m| counter(&m.secrets_written),
    ),
    (
        "omsp_secrets_resolved_total",
        "counter",
        "Secret fields resolved for a caller.",
        |m| counter(&m.secrets_resolved),
    ),
    ("omsp_up", "gauge", "1 while the gateway runs.", |_| 1),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_class_and_status() {
        let m = Metrics::default();
        m.record_request("ruled", 201, Duration::from_millis(3));
        m.record_request("ruled", 201, Duration::from_millis(3));
        m.record_request("passthrough", 502, Duration::from_millis(30));
        m.record_request("passthrough", 42, Duration::from_millis(1));
        let text = m.render();
        assert!(text.contains("omsp_requests_total{route_class=\"ruled\",status=\"201\"} 2\n"));
        assert!(
            text.contains("omsp_requests_total{route_class=\"passthrough\",status=\"502\"} 1\n")
        );
        // An impossible status is clamped, not dropped.
        assert!(
            text.contains("omsp_requests_total{route_class=\"passthrough\",status=\"100\"} 1\n")
        );
        assert_eq!(text.matches("omsp_requests_total{").count(), 3);
        assert!(text.contains("omsp_request_duration_seconds_count 4\n"));
        assert!(text.contains("omsp_request_duration_seconds_bucket{le=\"0.005\"} 3\n"));
        assert!(text.contains("omsp_request_duration_seconds_bucket{le=\"0.025\"} 3\n"));
        assert!(text.contains("omsp_request_duration_seconds_bucket{le=\"0.05\"} 4\n"));
        assert!(text.contains("omsp_request_duration_seconds_bucket{le=\"+Inf\"} 4\n"));
    }

    #[test]
    fn counts_from_every_thread_are_added_up() {
        let m = std::sync::Arc::new(Metrics::default());
        let threads: Vec<_> = (0..20)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        m.record_request("passthrough", 200, Duration::from_secs(20));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let text = m.render();
        assert!(
            text.contains("omsp_requests_total{route_class=\"passthrough\",status=\"200\"} 1000\n")
        );
        // Above the largest bound: only in +Inf.
        assert!(text.contains("omsp_request_duration_seconds_bucket{le=\"10\"} 0\n"));
        assert!(text.contains("omsp_request_duration_seconds_bucket{le=\"+Inf\"} 1000\n"));
        assert!(text.contains("omsp_request_duration_seconds_sum 20000\n"));
    }

    #[test]
    fn refused_reads_are_counted_by_reason_and_every_reason_is_shown() {
        let m = Metrics::default();
        m.record_read_refused(Unreadable::Bom);
        m.record_read_refused(Unreadable::Bom);
        let text = m.render();
        assert!(text.contains("omsp_reads_refused_total{reason=\"bom\"} 2\n"));
        assert!(text.contains("omsp_reads_refused_total{reason=\"too_deep\"} 0\n"));
        assert_eq!(
            text.matches("omsp_reads_refused_total{").count(),
            Unreadable::ALL.len()
        );
    }
}
