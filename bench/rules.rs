//! Rule engine benchmark: compiling all shipped rules, and matching a route plus finding the
//! secrets of a ~10 KB service entity next to a plain serde_json parse+serialize of the same
//! entity (the baseline), in one run. `cargo bench --bench rules`
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use criterion::Criterion;
use http::Method;
use om_secrets_proxy::http::path::NormPath;
use om_secrets_proxy::rules::RuleSet;
use serde_json::{json, Value};

fn keys() -> Vec<String> {
    om_secrets_proxy::config::DEFAULT_SAFETY_NET_KEYS
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn entity() -> String {
    let tags: Vec<Value> = (0..40)
        .map(|t| json!({"tagFQN": format!("Tier.Tier{t}"), "source": "Classification", "labelType": "Manual", "state": "Confirmed"}))
        .collect();
    let doc = json!({
        "id": "00000000-0000-4000-8000-000000000001", "name": "bench-mysql", "serviceType": "Mysql",
        "description": "x".repeat(6000), "tags": tags,
        "connection": {"config": {"type": "Mysql", "username": "u", "hostPort": "h:3306",
            "authType": {"password": "secret:/openmetadata/database/bench-mysql/authtype/password"},
            "sslConfig": {"caCertificate": "c", "sslKey": "k"},
            "connectionOptions": {"apiKey": "a", "timeout": "5"}, "connectionArguments": {}}}
    });
    doc.to_string()
}

fn main() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules");
    let start = Instant::now();
    let n = 20;
    for _ in 0..n {
        black_box(RuleSet::load(&dir, &keys()).expect("rules"));
    }
    println!(
        "compile all shipped rules: {:.2} ms per compile (target < 50 ms)",
        start.elapsed().as_secs_f64() * 1000.0 / n as f64
    );

    let rules = RuleSet::load(&dir, &keys()).expect("rules");
    let body = entity();
    println!("entity size: {} bytes", body.len());
    let mut c = Criterion::default().configure_from_args().without_plots();
    let mut g = c.benchmark_group("entity");
    g.bench_function("baseline parse+serialize", |b| {
        b.iter(|| {
            let v: Value = serde_json::from_str(black_box(&body)).expect("json");
            black_box(v.to_string())
        })
    });
    g.bench_function("parse+match+find+serialize", |b| {
        b.iter(|| {
            let v: Value = serde_json::from_str(black_box(&body)).expect("json");
            let p = NormPath::parse("/api/v1/services/databaseServices/name/bench-mysql")
                .expect("path");
            let m = rules.match_request(&Method::GET, &p).expect("rule");
            black_box(rules.find_secrets(m.rule, &v));
            black_box(v.to_string())
        })
    });
    g.bench_function("match+find only", |b| {
        let v: Value = serde_json::from_str(&body).expect("json");
        b.iter(|| {
            let p = NormPath::parse("/api/v1/services/databaseServices/name/bench-mysql")
                .expect("path");
            let m = rules.match_request(&Method::GET, &p).expect("rule");
            black_box(rules.find_secrets(m.rule, black_box(&v)))
        })
    });
    g.finish();

    // A read's whole rewrite path on the read benchmark's page (50 services, ~100 KB): the
    // answer parsed at any depth, every object looked at by structure, re-serialised.
    let page = list_of(50);
    println!("list size: {} bytes", page.len());
    let scope = rules
        .rules
        .iter()
        .find(|r| r.kind == "databaseService")
        .expect("rule");
    let scanner = om_secrets_proxy::rewrite::structure::Scanner::new(&rules, scope);
    let mut g = c.benchmark_group("list of 50");
    g.bench_function("baseline parse+serialize", |b| {
        b.iter(|| {
            let v: Value = serde_json::from_str(black_box(&page)).expect("json");
            black_box(v.to_string())
        })
    });
    g.bench_function("read parse+structural scan+serialize", |b| {
        b.iter(|| {
            let v = om_secrets_proxy::rewrite::json::parse_answer(black_box(page.as_bytes()))
                .expect("json");
            black_box(scanner.scan(&v, &[]));
            black_box(om_secrets_proxy::rewrite::json::to_vec(&v).expect("json"))
        })
    });
    g.bench_function("structural scan only", |b| {
        let v: Value = serde_json::from_str(&page).expect("json");
        b.iter(|| black_box(scanner.scan(black_box(&v), &[])))
    });
    g.finish();
    c.final_summary();
}

/// The read benchmark's page: `n` MySQL services of ~2 KB each.
fn list_of(n: usize) -> String {
    let data: Vec<Value> = (0..n)
        .map(|i| {
            let tags: Vec<Value> = (0..8)
                .map(|t| json!({"tagFQN": format!("Tier.Tier{t}"), "source": "Classification", "labelType": "Manual", "state": "Confirmed"}))
                .collect();
            json!({
                "id": format!("00000000-0000-4000-8000-{i:012x}"), "name": format!("bench-mysql-{i:03}"),
                "serviceType": "Mysql", "description": "A benchmark service with the size of a real one. ".repeat(6),
                "tags": tags,
                "connection": {"config": {
                    "type": "Mysql", "scheme": "mysql+pymysql", "username": "openmetadata_user",
                    "authType": {"password": format!("secret:/openmetadata/database/bench-mysql-{i:03}/authtype/password")},
                    "hostPort": "mysql.internal.example:3306", "databaseSchema": "analytics",
                    "supportsMetadataExtraction": true, "connectionOptions": {}, "connectionArguments": {}}},
                "version": 0.1, "updatedAt": 1_700_000_000_000u64, "updatedBy": "admin", "deleted": false
            })
        })
        .collect();
    json!({"data": data, "paging": {"total": n}}).to_string()
}
