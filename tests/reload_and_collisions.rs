//! SIGHUP reloads rules atomically (a bad reload keeps the running rules), and two entities
//! whose names map to one secret id root cannot overwrite each other's secrets.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use support::*;

fn mysql(name: &str, password: &str) -> Value {
    json!({"name": name, "serviceType": "Mysql",
           "connection": {"config": {"type": "Mysql", "username": "om", "authType": {"password": password}}}})
}

fn password_upstream_got(emu: &Emulator, name: &str) -> Option<String> {
    emu.entity("services/databaseServices", name).and_then(|e| {
        e["connection"]["config"]["authType"]["password"]
            .as_str()
            .map(str::to_string)
    })
}

#[tokio::test]
async fn sighup_reloads_rules_and_a_bad_reload_keeps_the_old_ones() {
    let emu = Emulator::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    std::fs::copy(shipped.join("botUser.json"), rules.join("botUser.json")).unwrap();
    let (api, admin) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_om-secrets-proxy"))
        .arg("serve")
        .env("OMSP_LISTEN", format!("127.0.0.1:{api}"))
        .env("OMSP_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .env("OMSP_UPSTREAM", emu.url())
        .env("OMSP_RULES_DIR", &rules)
        .env("OMSP_EMBEDDED_PATH", dir.path().join("s.db"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{api}/api/v1/services/databaseServices");
    wait_for_port(api).await;
    let c = client();
    // No database rule yet: the request passes through untouched.
    send(
        &c,
        Method::POST,
        &url,
        &[],
        mysql("before", "plain-before").to_string(),
    )
    .await;
    assert_eq!(
        password_upstream_got(&emu, "before").as_deref(),
        Some("plain-before")
    );

    std::fs::copy(
        shipped.join("databaseService.json"),
        rules.join("databaseService.json"),
    )
    .unwrap();
    let hup = |pid: u32| {
        assert!(Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success());
    };
    hup(child.id());
    let mut stripped = false;
    for i in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let name = format!("after-{i}");
        send(
            &c,
            Method::POST,
            &url,
            &[],
            mysql(&name, "plain-after").to_string(),
        )
        .await;
        if password_upstream_got(&emu, &name).is_some_and(|p| p.starts_with("secret:")) {
            stripped = true;
            break;
        }
    }
    assert!(stripped, "the reloaded rule never took effect");

    // A broken rule file: the reload is refused and the running rules stay.
    std::fs::write(rules.join("broken.json"), "{ not json").unwrap();
    hup(child.id());
    tokio::time::sleep(Duration::from_millis(500)).await;
    send(
        &c,
        Method::POST,
        &url,
        &[],
        mysql("after-broken", "plain-3").to_string(),
    )
    .await;
    assert_eq!(
        password_upstream_got(&emu, "after-broken").as_deref(),
        Some("secret:/openmetadata/database/after-broken/authtype/password")
    );
    assert!(!emu
        .everything_received()
        .windows(7)
        .any(|w| w == b"plain-3"));

    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("reload refused"), "{log}");
    assert!(log.contains("broken.json"), "{log}");
}

#[tokio::test]
async fn names_that_map_to_one_id_cannot_overwrite_each_other() {
    let (emu, gw) = stack().await;
    let c = client();
    let url = gw.url("/api/v1/services/databaseServices");
    let a = send(
        &c,
        Method::POST,
        &url,
        &[],
        mysql("a b", "first-owner").to_string(),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text());
    emu.clear_recorded();
    let a = send(
        &c,
        Method::POST,
        &url,
        &[],
        mysql("a.b", "second-owner").to_string(),
    )
    .await;
    assert_eq!(a.status, 409, "{}", a.text());
    assert_eq!(a.json()["code"], 409);
    assert!(emu.recorded().is_empty(), "nothing is forwarded");
    // The first owner can still update its own secret.
    let a = send(
        &c,
        Method::PUT,
        &url,
        &[],
        mysql("a b", "first-owner-2").to_string(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
}

#[tokio::test]
async fn a_pipeline_service_and_an_ingestion_pipeline_of_one_name_do_not_share_secrets() {
    let (emu, gw) = stack().await;
    let c = client();
    let svc = json!({"name": "x", "serviceType": "Airflow",
        "connection": {"config": {"type": "Airflow", "hostPort": "h", "connection": {"type": "Mysql", "authType": {"password": "svc-pw"}}}}});
    let a = send(
        &c,
        Method::POST,
        &gw.url("/api/v1/services/pipelineServices"),
        &[],
        svc.to_string(),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text());
    let svc_id = a.json()["id"].as_str().expect("id").to_string();
    // `pipeline/x` is the service's: the pipeline's secrets go under a root of its own.
    let pipe = json!({"name": "x", "pipelineType": "dbt",
        "service": {"id": svc_id, "type": "pipelineService"},
        "sourceConfig": {"config": {"type": "DBT",
        "dbtConfigSource": {"dbtSecurityConfig": {"awsSecretAccessKey": "pipe-key"}}}}});
    let a = send(
        &c,
        Method::POST,
        &gw.url("/api/v1/services/ingestionPipelines"),
        &[],
        pipe.to_string(),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text());
    let stored = emu
        .entity_by_fqn("services/ingestionPipelines", "x.x")
        .expect("pipeline");
    assert_eq!(
        stored["sourceConfig"]["config"]["dbtConfigSource"]["dbtSecurityConfig"]["awsSecretAccessKey"],
        "secret:/openmetadata/ingestion/x/x/sourceconfig/config/dbtconfigsource/dbtsecurityconfig/awssecretaccesskey"
    );
    let service = emu
        .entity("services/pipelineServices", "x")
        .expect("service");
    assert_eq!(
        service["connection"]["config"]["connection"]["authType"]["password"],
        "secret:/openmetadata/pipeline/x/connection/authtype/password"
    );
}
