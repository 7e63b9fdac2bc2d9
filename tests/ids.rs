//! Secret ids no two entities can share (issue 11), each case on every store the gateway
//! ships, against the real thing: embedded (a temp file), AWS Secrets Manager and SSM
//! (moto), OpenBao (`bao server -dev`). `./scripts/test.sh` starts the servers; with
//! OMSP_REQUIRE_EXTERNAL=1 a missing one fails the test.
//!
//! - a `/` in a name cannot nest one entity's root inside another's (overwrite, mask borrow,
//!   hard delete reaching into another root);
//! - ingestion pipelines of one name under two services each keep their own secrets;
//! - names that map to one root: the second gets 409 naming the owner, even when two
//!   gateways sharing a store race (20 rounds; two real processes for the shared stores);
//! - references the gateway could not have built are refused.

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use http::Method;
use om_secrets_proxy::config::Config;
use om_secrets_proxy::metrics::Metrics;
use om_secrets_proxy::secrets::fernet::FernetKeys;
use om_secrets_proxy::secrets::{open_store, SecretStore};
use serde_json::{json, Value};
use support::*;

const DB: &str = "/api/v1/services/databaseServices";
const PIPES: &str = "/api/v1/services/ingestionPipelines";
const ROUNDS: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Store {
    Embedded,
    SecretsManager,
    Ssm,
    OpenBao,
}

fn external(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(
                std::env::var_os("OMSP_REQUIRE_EXTERNAL").is_none(),
                "{var} is not set: run ./scripts/test.sh"
            );
            eprintln!("skipping: {var} is not set (run ./scripts/test.sh)");
            None
        }
    }
}

/// The `[secrets_manager]` section for a store, with a cluster name of its own so tests
/// sharing one moto or OpenBao never meet; `None` when its server is not there.
fn store_toml(store: Store, cluster: &str, dir: &std::path::Path) -> Option<String> {
    let head = |provider: &str| {
        format!("[secrets_manager]\nprovider = \"{provider}\"\ncluster_name = \"{cluster}\"\nretry_max = 5\n[secrets_manager.parameters]\n")
    };
    Some(match store {
        Store::Embedded => format!(
            "{}path = \"{}\"\n",
            head("embedded"),
            dir.join("s.db").display()
        ),
        Store::SecretsManager | Store::Ssm => {
            let url = external("OMSP_TEST_MOTO_URL")?;
            let p = if store == Store::Ssm {
                "managed-aws-ssm"
            } else {
                "managed-aws"
            };
            format!("{}region = \"us-east-1\"\naccess_key_id = \"testing\"\nsecret_access_key = \"testing\"\nendpoint_url = \"{url}\"\n", head(p))
        }
        Store::OpenBao => {
            let addr = external("OMSP_TEST_BAO_ADDR")?;
            let token = std::env::var("OMSP_TEST_BAO_TOKEN").unwrap_or_default();
            format!(
                "{}address = \"{addr}\"\ntoken = \"{token}\"\n",
                head("managed-openbao")
            )
        }
    })
}

/// A config file's text: the emulator upstream, bot JWTs verified, one store.
fn config_text(upstream: &str, key: &str, store: &str) -> String {
    format!(
        "[upstream]\nurl = \"{upstream}\"\nservice_token = \"{}\"\n[rules]\ndir = \"{}/rules\"\n[auth]\npublic_key_files = [\"{}\"]\n[fernet]\nkey = \"{key}\"\n{store}",
        jwt::bot(),
        env!("CARGO_MANIFEST_DIR"),
        jwt::fixture("key1.pkcs1.pub.pem").display()
    )
}

/// An emulator, a gateway in front of it, and the gateway's store read without a cache.
struct Setup {
    emu: Emulator,
    gw: Gw,
    store: Arc<dyn SecretStore>,
    cluster: String,
    config: Config,
    _dir: tempfile::TempDir,
}

async fn setup(store: Store) -> Option<Setup> {
    let dir = tempfile::tempdir().expect("tmp");
    let cluster = format!("ids{:012x}", fastrand::u64(..) >> 16);
    let toml = store_toml(store, &cluster, dir.path())?;
    let emu = Emulator::start().await;
    let key = FernetKeys::generate_key();
    let mut config = Config::from_toml_str(&config_text(&emu.url(), &key, &toml), None, &|_| None)
        .unwrap_or_else(|e| panic!("{e}"));
    config.server.listen = "127.0.0.1:0".parse().expect("addr");
    config.server.admin_listen = "127.0.0.1:0".parse().expect("addr");
    let mut raw = config.clone();
    raw.secrets.cache_ttl = std::time::Duration::ZERO;
    let keys = FernetKeys::new(std::slice::from_ref(&key)).expect("key");
    let backend = open_store(&raw, &keys, Arc::new(Metrics::default()))
        .await
        .expect("store");
    let gw = start_gateway_with_store(config.clone(), Some(backend.clone())).await;
    Some(Setup {
        emu,
        gw,
        store: backend,
        cluster,
        config,
        _dir: dir,
    })
}

impl Setup {
    fn id(&self, rest: &str) -> String {
        format!("/{}/{rest}", self.cluster)
    }

    async fn post(&self, path: &str, body: &Value) -> Answer {
        post(&self.gw, path, body).await
    }

    /// What a bot reads at `path` (secrets resolved).
    async fn bot_get(&self, path: &str) -> Value {
        let auth = format!("Bearer {}", jwt::bot());
        let a = send(
            &client(),
            Method::GET,
            &self.gw.url(path),
            &[("authorization", &auth)],
            "",
        )
        .await;
        assert_eq!(a.status, 200, "{path}: {}", a.text());
        a.json()
    }

    async fn stored(&self, id: &str) -> Option<String> {
        self.store.get(id).await.expect("store answers")
    }
}

async fn post(gw: &Gw, path: &str, body: &Value) -> Answer {
    send(
        &client(),
        Method::POST,
        &gw.url(path),
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await
}

fn mysql(name: &str, password: &str) -> Value {
    json!({"name": name, "serviceType": "Mysql", "connection": {"config": {
        "type": "Mysql", "username": "om", "authType": {"password": password}}}})
}

fn password_of(v: &Value) -> Option<&str> {
    v.pointer("/connection/config/authType/password")
        .and_then(Value::as_str)
}

fn received(emu: &Emulator, needle: &str) -> bool {
    emu.everything_received()
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

// === a `/` in a name ===

async fn slash_in_a_name_cannot_reach_another_services_secrets(store: Store) {
    let Some(s) = setup(store).await else { return };
    let a = s.post(DB, &mysql("victim", "victim-pw-1")).await;
    assert_eq!(a.status, 201, "{}", a.text());

    // A mask under a name that would have nested into the victim's root borrows nothing.
    s.emu.clear_recorded();
    let borrow = json!({"name": "victim/authType", "serviceType": "Mysql", "connection": {"config": {
        "type": "Mysql", "hostPort": "attacker:3306", "password": "*********"}}});
    let a = s.post(DB, &borrow).await;
    assert_eq!(a.status, 422, "{}", a.text());
    assert!(
        s.emu.recorded().iter().all(|r| r.method == Method::GET),
        "nothing is forwarded (the gateway only read what OpenMetadata holds)"
    );

    // A plaintext there lands in its own root and leaves the victim's password alone.
    let overwrite = json!({"name": "victim/authType", "serviceType": "Mysql", "connection": {"config": {
        "type": "Mysql", "hostPort": "attacker:3306", "password": "attacker-pw-1"}}});
    let a = s.post(DB, &overwrite).await;
    assert_eq!(a.status, 201, "{}", a.text());
    let attacker = s
        .emu
        .entity("services/databaseServices", "victim/authType")
        .expect("created");
    let own = s.id("database/victim_authtype/password");
    assert_eq!(
        attacker["connection"]["config"]["password"],
        format!("secret:{own}")
    );
    let victim_id = s.id("database/victim/authtype/password");
    assert_eq!(s.stored(&victim_id).await.as_deref(), Some("victim-pw-1"));
    assert_eq!(s.stored(&own).await.as_deref(), Some("attacker-pw-1"));
    let back = s.bot_get(&format!("{DB}/name/victim")).await;
    assert_eq!(password_of(&back), Some("victim-pw-1"));
}

async fn hard_delete_stops_at_the_entity_boundary(store: Store) {
    let Some(s) = setup(store).await else { return };
    for (name, pw) in [("team", "team-pw"), ("team/prod", "prod-pw")] {
        let a = s.post(DB, &mysql(name, pw)).await;
        assert_eq!(a.status, 201, "{}", a.text());
    }
    // Secrets a service named `team/prod` got from an earlier version, nested in `team`'s.
    let legacy = s.id("database/team/prod/authtype/password");
    let legacy_marker = s.id("database/team/prod/.owner");
    s.store.put(&legacy, "legacy-prod-pw").await.expect("put");
    s.store
        .put(&legacy_marker, "databaseService:team/prod")
        .await
        .expect("put");

    let team = s
        .emu
        .entity("services/databaseServices", "team")
        .expect("team");
    let url = format!("{DB}/{}?hardDelete=true", team["id"].as_str().expect("id"));
    let a = send(&client(), Method::DELETE, &s.gw.url(&url), &[], "").await;
    assert_eq!(a.status, 200, "{}", a.text());

    assert_eq!(
        s.stored(&s.id("database/team/authtype/password")).await,
        None
    );
    assert_eq!(s.stored(&s.id("database/team/.owner")).await, None);
    assert_eq!(s.stored(&legacy).await.as_deref(), Some("legacy-prod-pw"));
    assert!(s.stored(&legacy_marker).await.is_some());
    assert_eq!(
        s.stored(&s.id("database/team_prod/authtype/password"))
            .await
            .as_deref(),
        Some("prod-pw")
    );
    let back = s.bot_get(&format!("{DB}/name/team%2Fprod")).await;
    assert_eq!(password_of(&back), Some("prod-pw"));
}

async fn secrets_an_earlier_version_nested_move_to_the_entity_s_root_on_its_next_write(
    store: Store,
) {
    let Some(s) = setup(store).await else { return };
    // As an earlier version left it: `/` kept in the root, the marker naming the service.
    let old = s.id("database/team/prod/authtype/password");
    let old_marker = s.id("database/team/prod/.owner");
    s.store.put(&old, "old-pw").await.expect("put");
    s.store
        .put(&old_marker, "databaseService:team/prod")
        .await
        .expect("put");
    let seeded = s.emu.seed(
        "services/databaseServices",
        mysql("team/prod", &format!("secret:{old}")),
    );
    let id = seeded["id"].as_str().expect("id").to_string();
    let ops = json!([{"op": "add", "path": "/description", "value": "moved"}]);
    let a = send(
        &client(),
        Method::PATCH,
        &s.gw.url(&format!("{DB}/{id}")),
        &[("content-type", "application/json-patch+json")],
        ops.to_string(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let new = s.id("database/team_prod/authtype/password");
    let held = s
        .emu
        .entity("services/databaseServices", "team/prod")
        .expect("service");
    assert_eq!(password_of(&held), Some(format!("secret:{new}").as_str()));
    assert_eq!(s.stored(&new).await.as_deref(), Some("old-pw"));
    assert_eq!(s.stored(&old).await, None);
    let back = s.bot_get(&format!("{DB}/{id}")).await;
    assert_eq!(password_of(&back), Some("old-pw"));
    // A hard delete then removes both roots' markers.
    let url = format!("{DB}/{id}?hardDelete=true");
    let a = send(&client(), Method::DELETE, &s.gw.url(&url), &[], "").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(s.stored(&new).await, None);
    assert_eq!(s.stored(&s.id("database/team_prod/.owner")).await, None);
    assert_eq!(s.stored(&old_marker).await, None);
}

// === same-named pipelines of two services ===

fn dbt(name: &str, service_id: &str, key: &str) -> Value {
    json!({"name": name, "pipelineType": "dbt",
        "service": {"id": service_id, "type": "databaseService"},
        "sourceConfig": {"config": {"type": "DBT", "dbtConfigSource": {"dbtConfigType": "s3",
            "dbtSecurityConfig": {"awsAccessKeyId": "AKIA", "awsSecretAccessKey": key, "awsRegion": "eu-west-1"}}}}})
}

const DBT_KEY: &str = "/sourceConfig/config/dbtConfigSource/dbtSecurityConfig/awsSecretAccessKey";
const DBT_PARTS: &str = "sourceconfig/config/dbtconfigsource/dbtsecurityconfig/awssecretaccesskey";

async fn patch_key(s: &Setup, id: &str, value: &str) {
    let ops = json!([{"op": "replace", "path": DBT_KEY, "value": value}]);
    let a = send(
        &client(),
        Method::PATCH,
        &s.gw.url(&format!("{PIPES}/{id}")),
        &[("content-type", "application/json-patch+json")],
        ops.to_string(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
}

/// The dbt key a bot reads for the pipeline with this FQN.
async fn read_key(s: &Setup, fqn: &str) -> Option<String> {
    let v = s.bot_get(&format!("{PIPES}/name/{fqn}")).await;
    v.pointer(DBT_KEY)
        .and_then(Value::as_str)
        .map(str::to_string)
}

async fn same_named_pipelines_of_two_services_keep_their_own_secrets(store: Store) {
    let Some(s) = setup(store).await else { return };
    let mut services = Vec::new();
    for name in ["svc-a", "svc-b"] {
        let a = s
            .post(DB, &json!({"name": name, "serviceType": "Mysql"}))
            .await;
        assert_eq!(a.status, 201, "{}", a.text());
        services.push(a.json()["id"].as_str().expect("id").to_string());
    }
    for (svc, key) in services.iter().zip(["key-a-1", "key-b-1"]) {
        let a = s.post(PIPES, &dbt("dbt-nightly", svc, key)).await;
        assert_eq!(a.status, 201, "{}", a.text());
    }
    let pipe = |fqn: &str| {
        s.emu
            .entity_by_fqn("services/ingestionPipelines", fqn)
            .expect("pipeline")
    };
    let (a, b) = (pipe("svc-a.dbt-nightly"), pipe("svc-b.dbt-nightly"));
    // The first keeps OpenMetadata's id; the second gets a root of its own.
    let id_a = s.id(&format!("pipeline/dbt-nightly/{DBT_PARTS}"));
    let id_b = s.id(&format!("ingestion/svc-b/dbt-nightly/{DBT_PARTS}"));
    assert_eq!(a.pointer(DBT_KEY), Some(&json!(format!("secret:{id_a}"))));
    assert_eq!(b.pointer(DBT_KEY), Some(&json!(format!("secret:{id_b}"))));
    // Owners are entities: the service's FQN and the pipeline's name.
    assert_eq!(
        s.stored(&s.id("pipeline/dbt-nightly/.owner"))
            .await
            .as_deref(),
        Some("ingestionPipeline:svc-a.dbt-nightly")
    );
    assert_eq!(
        s.stored(&s.id("ingestion/svc-b/dbt-nightly/.owner"))
            .await
            .as_deref(),
        Some("ingestionPipeline:svc-b.dbt-nightly")
    );
    assert_eq!(
        read_key(&s, "svc-a.dbt-nightly").await.as_deref(),
        Some("key-a-1")
    );
    assert_eq!(
        read_key(&s, "svc-b.dbt-nightly").await.as_deref(),
        Some("key-b-1")
    );

    // Writes of either touch only its own secrets: a patch, a mask, a create-or-update.
    let b_id = b["id"].as_str().expect("id").to_string();
    patch_key(&s, &b_id, "key-b-2").await;
    patch_key(&s, &b_id, "*********").await;
    assert_eq!(
        read_key(&s, "svc-b.dbt-nightly").await.as_deref(),
        Some("key-b-2")
    );
    let a_again = send(
        &client(),
        Method::PUT,
        &s.gw.url(PIPES),
        &[("content-type", "application/json")],
        dbt("dbt-nightly", &services[0], "key-a-2").to_string(),
    )
    .await;
    assert_eq!(a_again.status, 200, "{}", a_again.text());
    assert_eq!(
        read_key(&s, "svc-a.dbt-nightly").await.as_deref(),
        Some("key-a-2")
    );
    assert_eq!(
        read_key(&s, "svc-b.dbt-nightly").await.as_deref(),
        Some("key-b-2")
    );

    // Hard-deleting the first leaves the second's secrets.
    let url = format!("{PIPES}/{}?hardDelete=true", a["id"].as_str().expect("id"));
    let gone = send(&client(), Method::DELETE, &s.gw.url(&url), &[], "").await;
    assert_eq!(gone.status, 200, "{}", gone.text());
    assert_eq!(s.stored(&id_a).await, None);
    assert_eq!(s.stored(&s.id("pipeline/dbt-nightly/.owner")).await, None);
    assert_eq!(s.stored(&id_b).await.as_deref(), Some("key-b-2"));
    assert_eq!(
        read_key(&s, "svc-b.dbt-nightly").await.as_deref(),
        Some("key-b-2")
    );
    // The second keeps its root after the first has gone.
    patch_key(&s, &b_id, "key-b-3").await;
    assert_eq!(s.stored(&id_b).await.as_deref(), Some("key-b-3"));
}

// === colliding names ===

async fn a_name_mapping_to_an_owned_root_is_refused_and_nothing_is_forwarded(store: Store) {
    let Some(s) = setup(store).await else { return };
    let a = s.post(DB, &mysql("a b", "first-owner-pw")).await;
    assert_eq!(a.status, 201, "{}", a.text());
    s.emu.clear_recorded();
    for body in [
        mysql("a.b", "second-owner-pw"),
        // A mask under the colliding name borrows nothing either.
        mysql("a.b", "*********"),
    ] {
        let a = s.post(DB, &body).await;
        assert_eq!(a.status, 409, "{}", a.text());
        assert_eq!(a.json()["code"], 409);
        let msg = a.json()["message"].as_str().unwrap_or("").to_string();
        assert!(msg.contains("databaseService:a b"), "{msg}");
        assert!(!msg.contains("first-owner-pw"), "{msg}");
    }
    assert!(
        s.emu.recorded().iter().all(|r| r.method == Method::GET),
        "nothing is forwarded (the gateway only read what OpenMetadata holds)"
    );
    assert_eq!(
        s.stored(&s.id("database/a_b/authtype/password"))
            .await
            .as_deref(),
        Some("first-owner-pw")
    );
    // The colliding name is fine for an entity without secrets, until it tries to keep one.
    let plain = json!({"name": "a.b", "serviceType": "Mysql"});
    let a = s.post(DB, &plain).await;
    assert_eq!(a.status, 201, "{}", a.text());
    let url =
        s.gw.url(&format!("{DB}/{}", a.json()["id"].as_str().expect("id")));
    let patch = |ops: Value| {
        let url = url.clone();
        async move {
            send(
                &client(),
                Method::PATCH,
                &url,
                &[("content-type", "application/json-patch+json")],
                ops.to_string(),
            )
            .await
        }
    };
    let a = patch(json!([{"op": "add", "path": "/description", "value": "d"}])).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let a = patch(json!([{"op": "add", "path": "/connection",
        "value": {"config": {"type": "Mysql", "authType": {"password": "second-owner-pw"}}}}]))
    .await;
    assert_eq!(a.status, 409, "{}", a.text());
    assert!(!received(&s.emu, "second-owner-pw"));
}

/// One round of two colliding creates through two gateways at the same moment.
struct Round {
    winner: usize,
    at_claim: bool,
}

async fn race_round(
    gws: [&Gw; 2],
    emu: &Emulator,
    store: &dyn SecretStore,
    cluster: &str,
    round: usize,
) -> Round {
    let names = [format!("race-{round} x"), format!("race-{round}.x")];
    let values = [format!("value-{round}-one"), format!("value-{round}-two")];
    let bodies = [mysql(&names[0], &values[0]), mysql(&names[1], &values[1])];
    let (a, b) = tokio::join!(post(gws[0], DB, &bodies[0]), post(gws[1], DB, &bodies[1]));
    let answers = [a, b];
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    let winner = match statuses.as_slice() {
        [201, 409] => 0,
        [409, 201] => 1,
        other => panic!(
            "round {round}: exactly one winner expected, got {other:?}: {} / {}",
            answers[0].text(),
            answers[1].text()
        ),
    };
    let loser = 1 - winner;
    let msg = answers[loser].json()["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        msg.contains(&format!("databaseService:{}", names[winner])),
        "round {round}: {msg}"
    );
    assert!(
        !received(emu, &values[loser]) && !received(emu, &format!("\"{}\"", names[loser])),
        "round {round}: the loser's request reached the upstream"
    );
    let id = format!("/{cluster}/database/race-{round}_x/authtype/password");
    assert_eq!(
        store.get(&id).await.expect("store").as_deref(),
        Some(values[winner].as_str()),
        "round {round}: the store holds the winner's value"
    );
    // The winner resolves its own value, through either gateway.
    let auth = format!("Bearer {}", jwt::bot());
    for gw in gws {
        let path = format!("{DB}/name/{}", names[winner].replace(' ', "%20"));
        let back = send(
            &client(),
            Method::GET,
            &gw.url(&path),
            &[("authorization", &auth)],
            "",
        )
        .await;
        assert_eq!(back.status, 200, "{}", back.text());
        assert_eq!(
            password_of(&back.json()),
            Some(values[winner].as_str()),
            "round {round}"
        );
    }
    Round {
        winner,
        at_claim: msg.contains("at the same moment"),
    }
}

fn report(what: &str, rounds: &[Round]) {
    let first = rounds.iter().filter(|r| r.winner == 0).count();
    let at_claim = rounds.iter().filter(|r| r.at_claim).count();
    eprintln!(
        "race {what}: {} rounds, {} winners (gateway 1: {first}, gateway 2: {}), {} losers refused at the create-only claim, {} at the look-up",
        rounds.len(),
        rounds.len(),
        rounds.len() - first,
        at_claim,
        rounds.len() - at_claim
    );
}

/// Two gateways in this process sharing one store (embedded: redb admits one process).
async fn two_gateways_sharing_a_store_race_colliding_creates(store: Store) {
    let Some(s) = setup(store).await else { return };
    let second = start_gateway_with_store(s.config.clone(), Some(s.store.clone())).await;
    let mut rounds = Vec::new();
    for round in 0..ROUNDS {
        rounds.push(
            race_round(
                [&s.gw, &second],
                &s.emu,
                s.store.as_ref(),
                &s.cluster,
                round,
            )
            .await,
        );
    }
    report(&format!("{store:?}, two gateways in one process"), &rounds);
}

// === references the gateway could not have built ===

async fn references_the_gateway_could_not_have_built_are_refused(store: Store) {
    let Some(s) = setup(store).await else { return };
    let a = s.post(DB, &mysql("victim", "victim-pw-2")).await;
    assert_eq!(a.status, 201, "{}", a.text());
    s.emu.clear_recorded();
    let me = s.id("database/me");
    for r in [
        format!("{me}/../victim/authtype/password"),
        format!("{me}/./authtype/password"),
        format!("{me}//authtype/password"),
        format!("{me}/authtype/password/"),
        format!("{me}/.owner"),
        format!("{me}/AuthType/password"),
        format!("{me}/auth type/password"),
        format!("{me}/auth.type/password"),
    ] {
        let a = s.post(DB, &mysql("me", &format!("secret:{r}"))).await;
        assert!(
            (400..500).contains(&a.status),
            "{r}: {} {}",
            a.status,
            a.text()
        );
        assert!(a.json()["message"].is_string());
    }
    assert!(
        s.emu.recorded().iter().all(|r| r.method == Method::GET),
        "nothing is forwarded (the gateway only read what OpenMetadata holds)"
    );
}

macro_rules! on_every_store {
    ($($case:ident),* $(,)?) => {
        mod embedded { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $case() { super::$case(super::Store::Embedded).await } )* }
        mod secrets_manager { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $case() { super::$case(super::Store::SecretsManager).await } )* }
        mod ssm { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $case() { super::$case(super::Store::Ssm).await } )* }
        mod openbao { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $case() { super::$case(super::Store::OpenBao).await } )* }
    };
}

on_every_store!(
    slash_in_a_name_cannot_reach_another_services_secrets,
    hard_delete_stops_at_the_entity_boundary,
    secrets_an_earlier_version_nested_move_to_the_entity_s_root_on_its_next_write,
    same_named_pipelines_of_two_services_keep_their_own_secrets,
    a_name_mapping_to_an_owned_root_is_refused_and_nothing_is_forwarded,
    two_gateways_sharing_a_store_race_colliding_creates,
    references_the_gateway_could_not_have_built_are_refused,
);

// === two gateway processes ===

/// A gateway process (the real binary) on its own ports.
struct Process {
    child: Child,
    api: u16,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_gateway(config: &std::path::Path, log: &std::path::Path) -> Process {
    let (api, admin) = (free_port(), free_port());
    let log = std::fs::File::create(log).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_om-secrets-proxy"))
        .args(["serve", "--config"])
        .arg(config)
        .env("OMSP_LISTEN", format!("127.0.0.1:{api}"))
        .env("OMSP_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .env("OMSP_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn the gateway");
    Process { child, api }
}

async fn two_processes_race_colliding_creates(store: Store) {
    let dir = tempfile::tempdir().expect("tmp");
    let cluster = format!("race{:012x}", fastrand::u64(..) >> 16);
    let Some(toml) = store_toml(store, &cluster, dir.path()) else {
        return;
    };
    let emu = Emulator::start().await;
    let key = FernetKeys::generate_key();
    let text = config_text(&emu.url(), &key, &toml);
    let path = dir.path().join("omsp.toml");
    std::fs::write(&path, &text).expect("config");
    let logs = [dir.path().join("gw1.log"), dir.path().join("gw2.log")];
    let procs = [
        spawn_gateway(&path, &logs[0]),
        spawn_gateway(&path, &logs[1]),
    ];
    for (p, log) in procs.iter().zip(&logs) {
        // Up to 30 s: the machine may be busy with other test binaries.
        for _ in 0..6 {
            wait_for_port(p.api).await;
        }
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", p.api))
                .await
                .is_ok(),
            "the gateway did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
    let gws: Vec<Gw> = procs.iter().map(|p| Gw::at(p.api)).collect();
    // The test's own view of the store, uncached.
    let mut raw = Config::from_toml_str(&text, None, &|_| None).expect("config");
    raw.secrets.cache_ttl = std::time::Duration::ZERO;
    let keys = FernetKeys::new(std::slice::from_ref(&key)).expect("key");
    let view = open_store(&raw, &keys, Arc::new(Metrics::default()))
        .await
        .expect("store");
    let mut rounds = Vec::new();
    for round in 0..ROUNDS {
        rounds.push(race_round([&gws[0], &gws[1]], &emu, view.as_ref(), &cluster, round).await);
    }
    report(&format!("{store:?}, two gateway processes"), &rounds);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateway_processes_on_secrets_manager_have_one_winner_per_round() {
    two_processes_race_colliding_creates(Store::SecretsManager).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateway_processes_on_ssm_have_one_winner_per_round() {
    two_processes_race_colliding_creates(Store::Ssm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateway_processes_on_openbao_have_one_winner_per_round() {
    two_processes_race_colliding_creates(Store::OpenBao).await;
}
