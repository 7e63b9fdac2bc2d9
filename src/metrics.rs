//! Prometheus metrics, kept in atomics and rendered as text on the admin port.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const BUCKETS_MS: [f64; 12] = [
    1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 10000.0,
];

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    latency_buckets: [AtomicU64; BUCKETS_MS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    pub open_connections: AtomicI64,
    pub upstream_errors: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub store_calls: AtomicU64,
    pub store_errors: AtomicU64,
    pub secrets_written: AtomicU64,
    pub secrets_resolved: AtomicU64,
}

impl Metrics {
    pub fn record_request(&self, class: &'static str, status: u16, latency: Duration) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((class, status)).or_insert(0) += 1;
        }
        let ms = latency.as_secs_f64() * 1000.0;
        for (i, b) in BUCKETS_MS.iter().enumerate() {
            if ms <= *b {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str("# HELP omsp_requests_total Requests answered, by route class and status.\n");
        s.push_str("# TYPE omsp_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((class, status), n) in m.iter() {
                let _ = writeln!(
                    s,
                    "omsp_requests_total{{route_class=\"{class}\",status=\"{status}\"}} {n}"
                );
            }
        }
        s.push_str("# HELP omsp_request_duration_seconds Request latency inside the gateway.\n");
        s.push_str("# TYPE omsp_request_duration_seconds histogram\n");
        for (i, b) in BUCKETS_MS.iter().enumerate() {
            let _ = writeln!(
                s,
                "omsp_request_duration_seconds_bucket{{le=\"{}\"}} {}",
                b / 1000.0,
                self.latency_buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            s,
            "omsp_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            s,
            "omsp_request_duration_seconds_sum {}",
            self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(s, "omsp_request_duration_seconds_count {count}");
        let gauges: [(&str, &str, &str, i64); 9] = [
            (
                "omsp_open_connections",
                "gauge",
                "Client connections open on the API port.",
                self.open_connections.load(Ordering::Relaxed),
            ),
            (
                "omsp_upstream_errors_total",
                "counter",
                "Upstream failures (unreachable, timeout, broken answer).",
                self.upstream_errors.load(Ordering::Relaxed) as i64,
            ),
            (
                "omsp_secret_cache_hits_total",
                "counter",
                "Secret reads answered by the cache.",
                self.cache_hits.load(Ordering::Relaxed) as i64,
            ),
            (
                "omsp_secret_cache_misses_total",
                "counter",
                "Secret reads the cache could not answer.",
                self.cache_misses.load(Ordering::Relaxed) as i64,
            ),
            (
                "omsp_secret_store_calls_total",
                "counter",
                "Calls made to the secret store backend.",
                self.store_calls.load(Ordering::Relaxed) as i64,
            ),
            (
                "omsp_secret_store_errors_total",
                "counter",
                "Secret store calls that failed.",
                self.store_errors.load(Ordering::Relaxed) as i64,
            ),
            (
                "omsp_secrets_written_total",
                "counter",
                "Secret values moved into the store.",
                self.secrets_written.load(Ordering::Relaxed) as i64,
            ),
            (
                "omsp_secrets_resolved_total",
                "counter",
                "Secret fields resolved for a caller.",
                self.secrets_resolved.load(Ordering::Relaxed) as i64,
            ),
            ("omsp_up", "gauge", "1 while the gateway runs.", 1),
        ];
        for (name, kind, help, v) in gauges {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
        s
    }
}
