//! Every provider passes one conformance suite against the real server it talks to: moto for
//! AWS Secrets Manager and SSM, `bao server -dev` for OpenBao, a temp directory for embedded.
//! `./scripts/test.sh` starts the servers and sets OMSP_TEST_MOTO_URL / OMSP_TEST_BAO_ADDR /
//! OMSP_TEST_BAO_TOKEN; with OMSP_REQUIRE_EXTERNAL=1 a missing server fails the test.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use om_secrets_proxy::config::Config;
use om_secrets_proxy::metrics::Metrics;
use om_secrets_proxy::secrets::embedded::EmbeddedStore;
use om_secrets_proxy::secrets::fernet::FernetKeys;
mod support;

use om_secrets_proxy::secrets::{open_store, SecretStore};
use support::external;
use support::process::example_binary;

fn unique() -> String {
    format!("t{:016x}", fastrand::u64(..))
}

/// The shared suite. `max_len` is the largest value the provider takes.
async fn conformance(store: &dyn SecretStore, max_len: usize) {
    let root = format!("/omsp-test/{}", unique());
    let a = format!("{root}/database/svc/authtype/password");
    let b = format!("{root}/database/svc/sslconfig/sslkey");
    let other = format!("{root}/database/svc2/authtype/password");
    store.health().await.expect("health");

    assert_eq!(store.get(&a).await.unwrap(), None, "absent is Ok(None)");
    store.put(&a, "first").await.unwrap();
    assert_eq!(store.get(&a).await.unwrap().as_deref(), Some("first"));
    store.put(&a, "second").await.unwrap();
    assert_eq!(
        store.get(&a).await.unwrap().as_deref(),
        Some("second"),
        "overwrite"
    );

    let unicode = "pässwörd-✓-日本-\u{1F511}-\"quoted\"\\n";
    store.put(&b, unicode).await.unwrap();
    assert_eq!(store.get(&b).await.unwrap().as_deref(), Some(unicode));
    let big: String = (0..max_len)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    store.put(&other, &big).await.unwrap();
    assert_eq!(
        store.get(&other).await.unwrap().as_deref(),
        Some(big.as_str()),
        "{max_len}-byte value"
    );

    let listed = store.list(&format!("{root}/database/svc/")).await.unwrap();
    assert_eq!(listed, vec![a.clone(), b.clone()]);
    let all = store.list(&format!("{root}/")).await.unwrap();
    assert_eq!(all.len(), 3);

    store.delete(&a).await.unwrap();
    assert_eq!(store.get(&a).await.unwrap(), None);
    store
        .delete(&a)
        .await
        .expect("deleting an absent id succeeds");
    assert_eq!(
        store.list(&format!("{root}/database/svc/")).await.unwrap(),
        vec![b.clone()]
    );
    store.delete(&b).await.unwrap();
    store.delete(&other).await.unwrap();
    assert!(store.list(&format!("{root}/")).await.unwrap().is_empty());

    // Create-only (owner markers are claimed with it): once, and never over a value.
    let marker = format!("{root}/database/svc/.owner");
    assert!(store.create(&marker, "databaseService:svc").await.unwrap());
    assert!(!store
        .create(&marker, "databaseService:other")
        .await
        .unwrap());
    assert_eq!(
        store.get(&marker).await.unwrap().as_deref(),
        Some("databaseService:svc")
    );
    store.delete(&marker).await.unwrap();
    assert!(
        store.create(&marker, "databaseService:next").await.unwrap(),
        "a deleted id can be created again"
    );
    store.delete(&marker).await.unwrap();
}

fn config(extra: &str) -> Config {
    let key = FernetKeys::generate_key();
    let text = format!("[fernet]\nkey = \"{key}\"\n{extra}");
    Config::from_toml_str(&text, None, &|_| None).unwrap_or_else(|e| panic!("{e}"))
}

fn moto_config(provider: &str, url: &str) -> Config {
    config(&format!(
        "[secrets_manager]\nprovider = \"{provider}\"\ntags = [\"team:data\", \"env:test\"]\n[secrets_manager.parameters]\nregion = \"us-east-1\"\naccess_key_id = \"testing\"\nsecret_access_key = \"testing\"\nendpoint_url = \"{url}\"\n"
    ))
}

/// The tags AWS holds on the secret (`managed-aws`) or parameter (`managed-aws-ssm`) `id`.
async fn aws_tags(cfg: &Config, id: &str) -> Vec<(String, String)> {
    let sdk = om_secrets_proxy::secrets::aws::sdk_config(&cfg.secrets).await;
    if cfg.secrets.provider.name() == "managed-aws" {
        let d = aws_sdk_secretsmanager::Client::new(&sdk)
            .describe_secret()
            .secret_id(id)
            .send()
            .await
            .unwrap();
        d.tags()
            .iter()
            .map(|t| (t.key().unwrap_or("").into(), t.value().unwrap_or("").into()))
            .collect()
    } else {
        let t = aws_sdk_ssm::Client::new(&sdk)
            .list_tags_for_resource()
            .resource_type(aws_sdk_ssm::types::ResourceTypeForTagging::Parameter)
            .resource_id(id)
            .send()
            .await
            .unwrap();
        t.tag_list()
            .iter()
            .map(|t| (t.key().to_string(), t.value().to_string()))
            .collect()
    }
}

async fn store_for(cfg: &Config) -> Arc<dyn SecretStore> {
    let keys = FernetKeys::new(&cfg.fernet.keys).unwrap();
    open_store(cfg, &keys, Arc::new(Metrics::default()))
        .await
        .unwrap()
}

#[tokio::test]
async fn embedded_store_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let keys = FernetKeys::new(&[FernetKeys::generate_key()]).unwrap();
    let store = EmbeddedStore::open(&dir.path().join("s.db"), &keys).unwrap();
    conformance(&store, 64 * 1024).await;
}

#[tokio::test]
async fn aws_secrets_manager_passes_the_conformance_suite_against_moto() {
    let Some(url) = external("OMSP_TEST_MOTO_URL") else {
        return;
    };
    let cfg = moto_config("managed-aws", &url);
    conformance(store_for(&cfg).await.as_ref(), 64 * 1024).await;
}

#[tokio::test]
async fn aws_secrets_manager_creates_secrets_with_tags_and_a_description() {
    let Some(url) = external("OMSP_TEST_MOTO_URL") else {
        return;
    };
    let cfg = moto_config("managed-aws", &url);
    let store = store_for(&cfg).await;
    let id = format!("/omsp-test/{}/database/x/password", unique());
    store.put(&id, "v").await.unwrap();
    store.put(&id, "v2").await.unwrap();
    let tags = aws_tags(&cfg, &id).await;
    assert!(tags.contains(&("team".into(), "data".into())), "{tags:?}");
    let sdk = om_secrets_proxy::secrets::aws::sdk_config(&cfg.secrets).await;
    let d = aws_sdk_secretsmanager::Client::new(&sdk)
        .describe_secret()
        .secret_id(&id)
        .send()
        .await
        .unwrap();
    assert!(d.description().unwrap_or("").contains("OpenMetadata"));
    store.delete(&id).await.unwrap();
}

#[tokio::test]
async fn aws_ssm_passes_the_conformance_suite_against_moto() {
    let Some(url) = external("OMSP_TEST_MOTO_URL") else {
        return;
    };
    let cfg = moto_config("managed-aws-ssm", &url);
    // SSM takes at most 8 KB (advanced tier); 64 KB cannot be stored there.
    conformance(store_for(&cfg).await.as_ref(), 8 * 1024).await;
}

#[tokio::test]
async fn aws_ssm_tags_a_new_parameter_and_overwrites_without_tags() {
    let Some(url) = external("OMSP_TEST_MOTO_URL") else {
        return;
    };
    let cfg = moto_config("managed-aws-ssm", &url);
    let store = store_for(&cfg).await;
    let id = format!("/omsp-test/{}/database/x/password", unique());
    store.put(&id, "v").await.unwrap();
    store.put(&id, "v2").await.unwrap();
    assert_eq!(store.get(&id).await.unwrap().as_deref(), Some("v2"));
    let tags = aws_tags(&cfg, &id).await;
    assert!(tags.contains(&("team".into(), "data".into())), "{tags:?}");
    store.delete(&id).await.unwrap();
}

/// A write to a secret this gateway knows to exist is one update; when another replica
/// deleted it meanwhile, the write still lands, tagged as a new one (Secrets Manager: the
/// failed update is followed by the create; SSM: the overwrite made it and it is tagged).
#[tokio::test]
async fn aws_writes_after_a_delete_by_another_replica_land_with_tags() {
    let Some(url) = external("OMSP_TEST_MOTO_URL") else {
        return;
    };
    for provider in ["managed-aws", "managed-aws-ssm"] {
        let cfg = moto_config(provider, &url);
        let (mine, other) = (store_for(&cfg).await, store_for(&cfg).await);
        let id = format!("/omsp-test/{}/database/gone/password", unique());
        mine.put(&id, "v1").await.unwrap();
        mine.put(&id, "v2").await.unwrap();
        other.delete(&id).await.unwrap();
        mine.put(&id, "v3").await.unwrap();
        // Read by a third replica (each has its own read cache).
        let third = store_for(&cfg).await;
        assert_eq!(
            third.get(&id).await.unwrap().as_deref(),
            Some("v3"),
            "{provider}"
        );
        let tags = aws_tags(&cfg, &id).await;
        assert!(
            tags.contains(&("team".into(), "data".into())),
            "{provider}: {tags:?}"
        );
        mine.delete(&id).await.unwrap();
    }
}

#[tokio::test]
async fn openbao_passes_the_conformance_suite_against_a_dev_server() {
    let Some(addr) = external("OMSP_TEST_BAO_ADDR") else {
        return;
    };
    let token = std::env::var("OMSP_TEST_BAO_TOKEN").unwrap_or_default();
    let cfg = config(&format!(
        "[secrets_manager]\nprovider = \"managed-openbao\"\n[secrets_manager.parameters]\naddress = \"{addr}\"\ntoken = \"{token}\"\n"
    ));
    conformance(store_for(&cfg).await.as_ref(), 64 * 1024).await;
}

#[tokio::test]
async fn openbao_with_a_bad_token_is_access_denied_not_absent() {
    let Some(addr) = external("OMSP_TEST_BAO_ADDR") else {
        return;
    };
    let cfg = config(&format!(
        "[secrets_manager]\nprovider = \"managed-openbao\"\nretry_max = 0\n[secrets_manager.parameters]\naddress = \"{addr}\"\ntoken = \"wrong-token\"\n"
    ));
    let store = store_for(&cfg).await;
    let e = store.get("/omsp-test/x").await.unwrap_err();
    assert!(
        matches!(e, om_secrets_proxy::secrets::StoreError::AccessDenied(_)),
        "{e:?}"
    );
}

#[tokio::test]
async fn an_unreachable_aws_endpoint_is_unavailable_not_absent() {
    let cfg = moto_config("managed-aws", "http://127.0.0.1:1");
    let mut cfg = cfg;
    cfg.secrets.retry_max = 0;
    let store = store_for(&cfg).await;
    let e = store.get("/omsp-test/x").await.unwrap_err();
    assert!(
        matches!(e, om_secrets_proxy::secrets::StoreError::Unavailable(_)),
        "{e:?}"
    );
}

#[test]
fn embedded_store_keeps_every_acknowledged_write_across_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    let key = FernetKeys::generate_key();
    let writer = example_binary("embedded-writer");
    let mut acked_total = 0u64;
    for round in 0..3 {
        let mut child = Command::new(&writer)
            .arg(&path)
            .arg(&key)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<u64>();
        let reader = std::thread::spawn(move || {
            let mut last = None;
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => {
                        last = l.trim().parse::<u64>().ok();
                        if let Some(n) = last {
                            let _ = tx.send(n);
                        }
                    }
                    Err(_) => break,
                }
            }
            last
        });
        // Let it acknowledge a fair number of writes (however slow the machine), then kill it
        // mid-loop.
        let want = 30 + round * 20;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut seen = 0;
        while seen < want && std::time::Instant::now() < deadline {
            if rx.recv_timeout(Duration::from_millis(100)).is_ok() {
                seen += 1;
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut err).unwrap();
        let last = reader
            .join()
            .unwrap()
            .unwrap_or_else(|| panic!("round {round}: the writer acknowledged no write: {err}"));
        acked_total = acked_total.max(last);
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let store =
                EmbeddedStore::open(&path, &FernetKeys::new(std::slice::from_ref(&key)).unwrap())
                    .expect("reopens cleanly");
            for n in 0..=last {
                assert_eq!(
                    store.get(&format!("/crash/k{n:08}")).await.unwrap(),
                    Some(format!("value-{n}")),
                    "acknowledged write {n} lost in round {round}"
                );
            }
        });
    }
    assert!(
        acked_total > 10,
        "too few writes to mean anything: {acked_total}"
    );
}

#[test]
fn fernet_tokens_interoperate_with_python_cryptography() {
    let Some(py) = external("OMSP_TEST_PYTHON") else {
        return;
    };
    let key = FernetKeys::generate_key();
    let keys = FernetKeys::new(std::slice::from_ref(&key)).unwrap();
    let value = "pässwörd with spaces & ✓";
    // Rust -> Python
    let token = keys.encrypt(value).unwrap();
    let out = Command::new(&py)
        .args([
            "-c",
            "import sys; from cryptography.fernet import Fernet; print(Fernet(sys.argv[1].encode()).decrypt(sys.argv[2].encode()).decode(), end='')",
            &key,
            token.strip_prefix("fernet:").unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), value);
    // Python -> Rust, including OpenMetadata's standard-base64 default key.
    for k in [key.as_str(), "jJ/9sz0g0OHxsfxOoSfdFdmk3ysNmPRnH3TUAbz3IHA="] {
        let out = Command::new(&py)
            .args([
                "-c",
                "import sys, base64; from cryptography.fernet import Fernet; k = base64.urlsafe_b64encode(base64.b64decode(sys.argv[1].replace('-', '+').replace('_', '/'))); print(Fernet(k).encrypt(sys.argv[2].encode()).decode(), end='')",
                k,
                value,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let py_token = String::from_utf8(out.stdout).unwrap();
        let ours = FernetKeys::new(&[k.to_string()]).unwrap();
        assert_eq!(ours.decrypt(&format!("fernet:{py_token}")).unwrap(), value);
    }
}

#[test]
fn fernet_subcommands_round_trip_through_stdin() {
    use std::io::Write;
    let bin = env!("CARGO_BIN_EXE_om-secrets-proxy");
    let out = Command::new(bin)
        .args(["fernet", "generate-key"])
        .output()
        .unwrap();
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(FernetKeys::new(std::slice::from_ref(&key)).is_ok());
    let run = |op: &str, input: &str| {
        let mut child = Command::new(bin)
            .args(["fernet", op])
            .env("FERNET_KEY", &key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout)
                .unwrap()
                .trim_end()
                .to_string(),
        )
    };
    let (code, token) = run("encrypt", "my secret\n");
    assert_eq!(code, Some(0));
    assert!(token.starts_with("fernet:"));
    assert_eq!(run("decrypt", &token), (Some(0), "my secret".to_string()));
    assert_eq!(run("decrypt", "fernet:not-a-token").0, Some(1));
}

// === Azure Key Vault, Google Secret Manager, Kubernetes: against their emulators ===

#[path = "support/vendor_emulators.rs"]
mod vendor_emulators;

use om_secrets_proxy::secrets::StoreError;
use vendor_emulators::{AzureKeyVault, KubeApi, SecretManager};

fn write(dir: &std::path::Path, name: &str, contents: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p.display().to_string()
}

/// An Azure Key Vault emulator over HTTPS with a service principal `gw`/`s3cret`.
async fn azure(dir: &std::path::Path) -> (AzureKeyVault, Config) {
    let az = AzureKeyVault::start_on("127.0.0.1:0", true).await;
    az.add_client("gw", "s3cret");
    let ca = write(dir, "azure-ca.pem", az.ca_pem.as_deref().unwrap());
    let cfg = config(&format!(
        "[upstream]\nca_file = \"{ca}\"\n[secrets_manager]\nprovider = \"managed-azure-kv\"\nretry_max = 0\ntags = [\"team:data\"]\n[secrets_manager.parameters]\nvault_url = \"{u}\"\nclient_id = \"gw\"\nclient_secret = \"s3cret\"\ntenant_id = \"{t}\"\nauthority_host = \"{u}\"\n",
        u = az.url,
        t = az.tenant()
    ));
    (az, cfg)
}

#[tokio::test]
async fn azure_key_vault_passes_the_conformance_suite_with_one_token() {
    let dir = tempfile::tempdir().unwrap();
    let (az, cfg) = azure(dir.path()).await;
    conformance(store_for(&cfg).await.as_ref(), 24 * 1024).await;
    assert_eq!(az.token_requests(), 1, "the token is cached across calls");
}

#[tokio::test]
async fn azure_key_vault_names_and_tags_secrets_as_openmetadata_and_purges_on_delete() {
    let dir = tempfile::tempdir().unwrap();
    let (az, cfg) = azure(dir.path()).await;
    let store = store_for(&cfg).await;
    let id = "/openmetadata/database/my_service/authtype/password";
    store.put(id, "v1").await.unwrap();
    store.put(id, "v2").await.unwrap();
    let name = "openmetadata-database-myservice-authtype-password";
    let tags = az.tags(name).expect("stored under OpenMetadata's name");
    assert_eq!(tags["team"], "data");
    assert_eq!(tags["omsp-secret-id"], id);
    assert_eq!(az.version_count(name), 2, "setSecret is the update");
    store.delete(id).await.unwrap();
    assert!(az.tags(name).is_none());
    assert!(
        az.deleted_names().is_empty(),
        "purged after the soft delete"
    );
}

#[tokio::test]
async fn azure_key_vault_without_purge_permission_keeps_it_recoverable_and_a_rewrite_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (az, cfg) = azure(dir.path()).await;
    az.set_purge_allowed(false);
    let store = store_for(&cfg).await;
    let id = "/openmetadata/database/svc/authtype/password";
    store.put(id, "old").await.unwrap();
    store.delete(id).await.unwrap();
    assert_eq!(
        az.deleted_names(),
        vec!["openmetadata-database-svc-authtype-password".to_string()]
    );
    assert_eq!(store.get(id).await.unwrap(), None);
    store.put(id, "new").await.unwrap();
    assert_eq!(store.get(id).await.unwrap().as_deref(), Some("new"));
    assert!(az.deleted_names().is_empty());
}

#[tokio::test]
async fn azure_key_vault_refuses_a_name_that_holds_another_ids_secret() {
    let dir = tempfile::tempdir().unwrap();
    let (_az, cfg) = azure(dir.path()).await;
    let store = store_for(&cfg).await;
    // Both become "openmetadata-database-ab-password" on Azure.
    store
        .put("/openmetadata/database/a_b/password", "first")
        .await
        .unwrap();
    let e = store
        .put("/openmetadata/database/ab/password", "second")
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Invalid(_)), "{e:?}");
    assert_eq!(
        store
            .get("/openmetadata/database/ab/password")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .get("/openmetadata/database/a_b/password")
            .await
            .unwrap()
            .as_deref(),
        Some("first")
    );
}

#[tokio::test]
async fn azure_key_vault_with_a_wrong_client_secret_is_access_denied_not_absent() {
    let dir = tempfile::tempdir().unwrap();
    let (az, mut cfg) = azure(dir.path()).await;
    cfg.secrets.azure.client_secret = Some("wrong".into());
    let e = store_for(&cfg).await.get("/x/y").await.unwrap_err();
    assert!(matches!(e, StoreError::AccessDenied(_)), "{e:?}");
    assert!(!e.detail().contains("wrong"), "{e:?}");
    assert!(az.requests().is_empty(), "nothing reached the vault");
}

#[tokio::test]
async fn azure_key_vault_gets_tokens_by_workload_identity_and_managed_identity() {
    use om_secrets_proxy::secrets::azure::AzureKeyVaultStore;
    let dir = tempfile::tempdir().unwrap();
    let (az, cfg) = azure(dir.path()).await;
    let ca = cfg.upstream.ca_file.clone();
    let mut p = cfg.secrets.azure.clone();
    (p.client_id, p.client_secret, p.tenant_id) = (None, None, None);
    let token_file = write(dir.path(), "federated-token", "eyJ.federated.jwt\n");
    az.add_federated("wl-client", "eyJ.federated.jwt");
    let tenant = az.tenant();
    let workload = |k: &str| match k {
        "AZURE_FEDERATED_TOKEN_FILE" => Some(token_file.clone()),
        "AZURE_CLIENT_ID" => Some("wl-client".to_string()),
        "AZURE_TENANT_ID" => Some(tenant.clone()),
        _ => None,
    };
    let store = AzureKeyVaultStore::new(&p, vec![], ca.as_deref(), &workload).unwrap();
    store.put("/wl/x", "by workload identity").await.unwrap();
    let imds_host = az.url.clone();
    let managed = |k: &str| (k == "AZURE_POD_IDENTITY_AUTHORITY_HOST").then(|| imds_host.clone());
    let store = AzureKeyVaultStore::new(&p, vec![], ca.as_deref(), &managed).unwrap();
    assert_eq!(
        store.get("/wl/x").await.unwrap().as_deref(),
        Some("by workload identity")
    );
    assert_eq!(az.token_requests(), 2);
}

/// key1's public half as PKCS#1 DER (what the emulator verifies service-account JWTs with).
fn key1_pkcs1_der() -> Vec<u8> {
    use base64::Engine;
    let pem = include_str!("fixtures/jwt/key1.pkcs1.pub.pem");
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

/// A Secret Manager emulator and a service-account key file whose token_uri is the emulator.
async fn gcp(dir: &std::path::Path, known_key: bool) -> (SecretManager, Config) {
    let sm = SecretManager::start().await;
    if known_key {
        sm.add_service_account("gw@omsp-test.iam.gserviceaccount.com", key1_pkcs1_der());
    }
    let key = serde_json::json!({
        "type": "service_account", "project_id": "omsp-test", "private_key_id": "k1",
        "private_key": include_str!("fixtures/jwt/key1.pem"),
        "client_email": "gw@omsp-test.iam.gserviceaccount.com",
        "token_uri": format!("{}/token", sm.url),
    });
    let file = write(dir, "sa.json", &key.to_string());
    let cfg = config(&format!(
        "[secrets_manager]\nprovider = \"gcp\"\nretry_max = 0\ntags = [\"team:Data\"]\n[secrets_manager.parameters]\nproject_id = \"omsp-test\"\ncredentials_file = \"{file}\"\nendpoint_url = \"{}\"\n",
        sm.url
    ));
    (sm, cfg)
}

#[tokio::test]
async fn gcp_secret_manager_passes_the_conformance_suite_with_one_token() {
    let dir = tempfile::tempdir().unwrap();
    let (sm, cfg) = gcp(dir.path(), true).await;
    conformance(store_for(&cfg).await.as_ref(), 64 * 1024).await;
    assert_eq!(sm.token_requests(), 1, "the token is cached across calls");
}

#[tokio::test]
async fn gcp_secret_manager_names_labels_and_versions_as_openmetadata() {
    let dir = tempfile::tempdir().unwrap();
    let (sm, cfg) = gcp(dir.path(), true).await;
    let store = store_for(&cfg).await;
    let id = "/openmetadata/database/mysql-test/authtype/password";
    store.put(id, "v1").await.unwrap();
    store.put(id, "v2").await.unwrap();
    let meta = sm
        .secret(
            "omsp-test",
            "openmetadata_database_mysqltest_authtype_password",
        )
        .expect("stored under OpenMetadata's name");
    assert_eq!(meta.labels["team"], "data");
    assert_eq!(meta.annotations["omsp-secret-id"], id);
    assert_eq!(meta.versions, 2, "a new version per write");
    assert_eq!(store.get(id).await.unwrap().as_deref(), Some("v2"));
}

#[tokio::test]
async fn gcp_secret_manager_reports_a_checksum_mismatch_as_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (sm, mut cfg) = gcp(dir.path(), true).await;
    cfg.secrets.cache_ttl = Duration::ZERO;
    let store = store_for(&cfg).await;
    store.put("/c/x", "intact").await.unwrap();
    sm.corrupt_latest("omsp-test", "c_x");
    let e = store.get("/c/x").await.unwrap_err();
    assert!(e.detail().contains("CRC32C"), "{e:?}");
}

#[tokio::test]
async fn gcp_secret_manager_with_an_unknown_key_is_access_denied_not_absent() {
    let dir = tempfile::tempdir().unwrap();
    let (sm, cfg) = gcp(dir.path(), false).await;
    let e = store_for(&cfg).await.get("/x/y").await.unwrap_err();
    assert!(matches!(e, StoreError::AccessDenied(_)), "{e:?}");
    assert!(sm.requests().is_empty(), "nothing reached Secret Manager");
}

#[tokio::test]
async fn gcp_secret_manager_falls_back_to_the_metadata_server() {
    use om_secrets_proxy::secrets::gcp::SecretManagerStore;
    let dir = tempfile::tempdir().unwrap();
    let (sm, cfg) = gcp(dir.path(), true).await;
    let mut p = cfg.secrets.gcp.clone();
    p.credentials_file = None;
    let host = sm.url.trim_start_matches("http://").to_string();
    let env = |k: &str| (k == "GCE_METADATA_HOST").then(|| host.clone());
    let store = SecretManagerStore::new(&p, &[], None, &env).unwrap();
    store.put("/md/x", "via metadata").await.unwrap();
    assert_eq!(
        store.get("/md/x").await.unwrap().as_deref(),
        Some("via metadata")
    );
}

/// A Kubernetes API emulator over HTTPS and a kubeconfig (bearer token, CA inline) for it.
async fn kube(dir: &std::path::Path) -> (KubeApi, Config) {
    let k = KubeApi::start().await;
    k.accept_token("gw-token");
    let kc = write(dir, "kubeconfig", &k.kubeconfig("gw-token"));
    let cfg = config(&format!(
        "[secrets_manager]\nprovider = \"kubernetes\"\nretry_max = 0\ntags = [\"team:data\"]\n[secrets_manager.parameters]\nnamespace = \"omsp-test\"\nkubeconfig_path = \"{kc}\"\n"
    ));
    (k, cfg)
}

#[tokio::test]
async fn kubernetes_secrets_pass_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let (_k, cfg) = kube(dir.path()).await;
    conformance(store_for(&cfg).await.as_ref(), 64 * 1024).await;
}

#[tokio::test]
async fn kubernetes_secrets_are_named_labelled_and_keyed_as_openmetadata() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let (k, cfg) = kube(dir.path()).await;
    let store = store_for(&cfg).await;
    let id = "/openmetadata/database/My_Service/authtype/password";
    store.put(id, "v1").await.unwrap();
    store.put(id, "v2").await.unwrap();
    let s = k
        .secret(
            "omsp-test",
            "openmetadata-database-my-service-authtype-password",
        )
        .expect("stored under sanitizeSecretName's name");
    let labels = &s["metadata"]["labels"];
    assert_eq!(labels["app"], "openmetadata");
    assert_eq!(labels["managed-by"], "openmetadata-secrets-manager");
    assert_eq!(labels["team"], "data");
    assert_eq!(s["metadata"]["annotations"]["omsp-secret-id"], id);
    assert_eq!(s["type"], "Opaque");
    let value = base64::engine::general_purpose::STANDARD
        .decode(s["data"]["value"].as_str().unwrap())
        .unwrap();
    assert_eq!(value, b"v2");
}

#[tokio::test]
async fn kubernetes_refuses_a_name_that_holds_another_ids_secret() {
    let dir = tempfile::tempdir().unwrap();
    let (_k, cfg) = kube(dir.path()).await;
    let store = store_for(&cfg).await;
    store.put("/a/b.c", "first").await.unwrap();
    let e = store.put("/a/b/c", "second").await.unwrap_err();
    assert!(matches!(e, StoreError::Invalid(_)), "{e:?}");
    assert_eq!(store.get("/a/b/c").await.unwrap(), None);
    assert_eq!(store.get("/a/b.c").await.unwrap().as_deref(), Some("first"));
}

#[tokio::test]
async fn kubernetes_rbac_denial_is_access_denied_not_absent() {
    let dir = tempfile::tempdir().unwrap();
    let (k, cfg) = kube(dir.path()).await;
    k.forbid("get");
    let e = store_for(&cfg).await.get("/x/y").await.unwrap_err();
    assert!(matches!(e, StoreError::AccessDenied(_)), "{e:?}");
}

#[tokio::test]
async fn kubernetes_in_cluster_uses_the_service_account_and_rereads_a_rotated_token() {
    use om_secrets_proxy::secrets::kubernetes::{Connection, KubernetesStore};
    let dir = tempfile::tempdir().unwrap();
    let k = KubeApi::start().await;
    k.accept_token("sa-token-1");
    write(dir.path(), "ca.crt", k.ca_pem.as_deref().unwrap());
    write(dir.path(), "token", "sa-token-1\n");
    let port = k.url.rsplit(':').next().unwrap().to_string();
    let env = |key: &str| match key {
        "KUBERNETES_SERVICE_HOST" => Some("127.0.0.1".to_string()),
        "KUBERNETES_SERVICE_PORT" => Some(port.clone()),
        _ => None,
    };
    let store = KubernetesStore::new(
        Connection::in_cluster(dir.path(), &env).unwrap(),
        "default",
        &[],
    );
    store.put("/ic/x", "in cluster").await.unwrap();
    // The kubelet rotates the token: the old one stops working, the file has the new one.
    k.revoke_tokens();
    k.accept_token("sa-token-2");
    write(dir.path(), "token", "sa-token-2\n");
    assert_eq!(
        store.get("/ic/x").await.unwrap().as_deref(),
        Some("in cluster")
    );
}

#[tokio::test]
async fn azure_key_vault_lists_across_pages() {
    let dir = tempfile::tempdir().unwrap();
    let (_az, cfg) = azure(dir.path()).await;
    let store = store_for(&cfg).await;
    for i in 0..30 {
        store
            .put(&format!("/openmetadata/database/many/f{i:02}"), "v")
            .await
            .unwrap();
    }
    store
        .put("/openmetadata/database/other/f", "v")
        .await
        .unwrap();
    let ids = store.list("/openmetadata/database/many/").await.unwrap();
    assert_eq!(ids.len(), 30, "Key Vault pages by 25");
    assert_eq!(ids[0], "/openmetadata/database/many/f00");
}
