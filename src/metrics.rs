//! Prometheus metrics, kept in atomics and rendered as text on the admin port.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::rewrite::refusal::Unreadable;

/// The route classes requests are counted by.
pub const ROUTE_CLASSES: [&str; 2] = ["passthrough", "ruled"];
/// Statuses 100..=599 each get a counter; a status outside that range is clamped into it.
const STATUSES: usize = 500;

const BUCKETS_MS: [f64; 12] = [
    1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 10000.0,
];

pub struct Metrics {
    /// Requests by (route class, status), one atomic each: no lock on the request path.
    requests: Box<[AtomicU64]>,
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
    /// Answers refused because they could not be fully read, by reason.
    reads_refused: [AtomicU64; Unreadable::ALL.len()],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: (0..ROUTE_CLASSES.len() * STATUSES)
                .map(|_| AtomicU64::new(0))
                .collect(),
            latency_buckets: Default::default(),
            latency_count: AtomicU64::new(0),
            latency_sum_us: AtomicU64::new(0),
            open_connections: AtomicI64::new(0),
            upstream_errors: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            store_calls: AtomicU64::new(0),
            store_errors: AtomicU64::new(0),
            secrets_written: AtomicU64::new(0),
            secrets_resolved: AtomicU64::new(0),
            reads_refused: Default::default(),
        }
    }
}

impl Metrics {
    pub fn record_request(&self, class: &'static str, status: u16, latency: Duration) {
        let c = ROUTE_CLASSES.iter().position(|k| *k == class).unwrap_or(0);
        let st = usize::from(status.clamp(100, 599)) - 100;
        self.requests[c * STATUSES + st].fetch_add(1, Ordering::Relaxed);
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

    pub fn record_read_refused(&self, why: Unreadable) {
        self.reads_refused[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
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
        s.push_str("# HELP omsp_requests_total Requests answered, by route class and status.\n");
        s.push_str("# TYPE omsp_requests_total counter\n");
        for (i, counter) in self.requests.iter().enumerate() {
            let n = counter.load(Ordering::Relaxed);
            if n > 0 {
                let class = ROUTE_CLASSES[i / STATUSES];
                let status = i % STATUSES + 100;
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
