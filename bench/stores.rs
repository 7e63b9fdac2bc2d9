//! Store benchmark, one run: cached vs uncached reads against the embedded store and against
//! AWS Secrets Manager on moto (when OMSP_TEST_MOTO_URL is set; `bench/stores.sh` starts
//! moto), and embedded put throughput. Prints ops/s and the cached/uncached ratio.

use std::sync::Arc;
use std::time::{Duration, Instant};

use om_secrets_proxy::config::Config;
use om_secrets_proxy::metrics::Metrics;
use om_secrets_proxy::secrets::cache::{CacheSettings, CachedStore};
use om_secrets_proxy::secrets::embedded::EmbeddedStore;
use om_secrets_proxy::secrets::fernet::FernetKeys;
use om_secrets_proxy::secrets::SecretStore;

async fn rate(store: &dyn SecretStore, ids: &[String], budget: Duration) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for id in ids {
            std::hint::black_box(store.get(id).await.expect("get"));
            n += 1;
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn cached(inner: Arc<dyn SecretStore>) -> CachedStore {
    let settings = CacheSettings {
        ttl: Duration::from_secs(300),
        stale: Duration::from_secs(60),
        max_entries: 10_000,
        refresh: Duration::from_secs(10),
    };
    CachedStore::new(inner, settings, Arc::new(Metrics::default()))
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; under `cargo test` this only smoke-runs.
    let full = std::env::args().any(|a| a == "--bench");
    let budget = if full {
        Duration::from_secs(2)
    } else {
        Duration::from_millis(50)
    };
    let dir = std::env::temp_dir().join(format!("omsp-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let keys = FernetKeys::new(&[FernetKeys::generate_key()]).expect("key");
    let embedded: Arc<dyn SecretStore> =
        Arc::new(EmbeddedStore::open(&dir.join("b.db"), &keys).expect("open"));
    let ids: Vec<String> = (0..50)
        .map(|i| format!("/openmetadata/database/bench-{i}/authtype/password"))
        .collect();

    let start = Instant::now();
    let mut puts = 0u64;
    while start.elapsed() < budget {
        embedded
            .put(&ids[(puts % 50) as usize], &format!("value-{puts}"))
            .await
            .expect("put");
        puts += 1;
    }
    let put_rate = puts as f64 / start.elapsed().as_secs_f64();

    let unc = rate(embedded.as_ref(), &ids, budget).await;
    let c = cached(embedded.clone());
    let cac = rate(&c, &ids, budget).await;
    println!(
        "{:<34}{:>14}{:>14}{:>10}",
        "store", "uncached/s", "cached/s", "ratio"
    );
    println!(
        "{:<34}{:>14.0}{:>14.0}{:>9.1}x",
        "embedded (redb, Fernet at rest)",
        unc,
        cac,
        cac / unc
    );

    if let Ok(url) = std::env::var("OMSP_TEST_MOTO_URL") {
        let text = format!(
            "[secrets_manager]\nprovider = \"managed-aws\"\n[secrets_manager.parameters]\nregion = \"us-east-1\"\naccess_key_id = \"testing\"\nsecret_access_key = \"testing\"\nendpoint_url = \"{url}\"\n[fernet]\nkey = \"{}\"\n",
            FernetKeys::generate_key()
        );
        let cfg = Config::from_toml_str(&text, None, &|_| None).expect("config");
        let sdk = om_secrets_proxy::secrets::aws::sdk_config(&cfg.secrets).await;
        let sm: Arc<dyn SecretStore> = Arc::new(
            om_secrets_proxy::secrets::aws::SecretsManagerStore::new(&sdk, vec![]),
        );
        let few: Vec<String> = ids
            .iter()
            .take(10)
            .map(|i| format!("/bench-{}{i}", std::process::id()))
            .collect();
        for id in &few {
            sm.put(id, "v").await.expect("moto put");
        }
        let unc = rate(sm.as_ref(), &few, budget).await;
        let c = cached(sm.clone());
        let cac = rate(&c, &few, budget).await;
        println!(
            "{:<34}{:>14.0}{:>14.0}{:>9.0}x",
            "AWS Secrets Manager (moto)",
            unc,
            cac,
            cac / unc
        );
        for id in &few {
            let _ = sm.delete(id).await;
        }
    } else {
        println!(
            "AWS Secrets Manager (moto): skipped, OMSP_TEST_MOTO_URL not set (use bench/stores.sh)"
        );
    }
    println!("embedded put throughput: {put_rate:.0} writes/s (each one an fsynced redb commit)");
    let _ = std::fs::remove_dir_all(&dir);
}
