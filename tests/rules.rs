//! The shipped rules match every spelling of a ruled route, and `check` / `explain` report what
//! they should. That they cover every inventory path: `tests/inventory_coverage.rs`.

use std::path::PathBuf;
use std::process::Command;

use http::Method;
use om_secrets_proxy::http::path::NormPath;
use om_secrets_proxy::rules::jsonpath::render;
use om_secrets_proxy::rules::RuleSet;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_om-secrets-proxy");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn shipped() -> RuleSet {
    let keys: Vec<String> = om_secrets_proxy::config::DEFAULT_SAFETY_NET_KEYS
        .iter()
        .map(|s| s.to_string())
        .collect();
    RuleSet::load(&root().join("rules"), &keys).expect("shipped rules compile")
}

#[test]
fn every_spelling_of_a_ruled_route_matches_its_rule() {
    let rules = shipped();
    for p in [
        "/api/v1/services/databaseServices",
        "/api/v1/services/databaseServices/",
        "//api//v1/services/./databaseServices",
        "/api/v1/services%2FdatabaseServices",
        "/API/V1/SERVICES/DATABASESERVICES",
        "/api/v1/services/databaseServices;jsessionid=1",
        "/api/v1/%73ervices/databaseServices",
    ] {
        let n = NormPath::parse(p).unwrap();
        let m = rules
            .match_request(&Method::POST, &n)
            .unwrap_or_else(|| panic!("{p} did not match"));
        assert_eq!(m.rule.kind, "databaseService", "{p}");
        assert_eq!(m.op(), om_secrets_proxy::rules::Op::Create, "{p}");
    }
}

#[test]
fn entity_routes_carry_their_parameters() {
    let rules = shipped();
    let n = NormPath::parse("/api/v1/services/ingestionPipelines/name/svc.%22dbt%2Fnightly%22")
        .unwrap();
    let m = rules.match_request(&Method::PATCH, &n).unwrap();
    assert_eq!(m.rule.kind, "ingestionPipeline");
    assert_eq!(m.op(), om_secrets_proxy::rules::Op::Patch);
    assert_eq!(m.param("fqn"), Some("svc.\"dbt/nightly\""));
    let n = NormPath::parse("/api/v1/users/token/abc").unwrap();
    let m = rules.match_request(&Method::GET, &n).unwrap();
    assert_eq!(m.rule.kind, "botUser");
    assert_eq!(
        m.route.unwrap().response_at,
        vec!["authenticationMechanism", "config"]
    );
    let n = NormPath::parse("/api/v1/services/databaseServices/123/versions/0.2").unwrap();
    assert_eq!(
        rules
            .match_request(&Method::GET, &n)
            .unwrap()
            .param("version"),
        Some("0.2")
    );
}

#[test]
fn unruled_routes_match_nothing() {
    let rules = shipped();
    for p in [
        "/api/v1/tables",
        "/api/v1/system/version",
        "/api/v1/servicesX/databaseServices",
    ] {
        assert!(
            rules
                .match_request(&Method::GET, &NormPath::parse(p).unwrap())
                .is_none(),
            "{p}"
        );
    }
}

#[test]
fn the_safety_net_catches_unknown_connectors_and_free_form_maps() {
    let rules = shipped();
    let m = rules
        .match_request(
            &Method::POST,
            &NormPath::parse("/api/v1/services/databaseServices").unwrap(),
        )
        .unwrap();
    let doc = json!({"name": "n", "connection": {"config": {"type": "BrandNewDb",
        "hostPort": "h", "nested": {"clientSecret": "s1"},
        "connectionOptions": {"api_key": "s2", "timeout": "5"}}}});
    let found: Vec<String> = rules
        .find_secrets(m.rule, &doc)
        .iter()
        .map(|f| render(&f.steps))
        .collect();
    assert_eq!(
        found,
        vec![
            "$.connection.config.connectionOptions.api_key",
            "$.connection.config.nested.clientSecret"
        ]
    );
}

#[test]
fn check_lists_every_problem_in_every_rule_file() {
    let out = Command::new(BIN)
        .args(["check"])
        .env("OMSP_RULES_DIR", root().join("tests/fixtures/bad-rules"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{text}");
    for expect in [
        "broken.json:4: root \"broken\" must contain {name}",
        "broken.json:7: route \"/{id}\": unknown method \"FETCH\"",
        "op \"explode\"",
        "broken.json:11: \"$.connection.config[?@.x == 1]\"",
        "\"connection.config.password\" is not valid JSONPath",
        "policy.bot: \"reveal\"",
        "not-json.json:4:",
    ] {
        assert!(text.contains(expect), "expected {expect:?} in:\n{text}");
    }
}

#[test]
fn rule_files_whose_roots_could_nest_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let shipped_dir = root().join("rules");
    std::fs::copy(
        shipped_dir.join("databaseService.json"),
        dir.path().join("databaseService.json"),
    )
    .unwrap();
    // A second kind whose roots would sit inside database services' (`database/x/<name>`
    // inside the service named `x`).
    let text = std::fs::read_to_string(shipped_dir.join("dashboardService.json"))
        .unwrap()
        .replace(
            "\"root\": \"dashboard/{name}\"",
            "\"root\": \"database/x/{name}\"",
        );
    assert!(text.contains("database/x/{name}"));
    std::fs::write(dir.path().join("dashboardService.json"), text).unwrap();
    let problems = RuleSet::load(dir.path(), &[]).expect_err("nesting roots are refused");
    let all: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert!(
        all.iter()
            .any(|p| p.contains("database/x/{name}") && p.contains("can nest")),
        "{all:?}"
    );
    // The shipped pipeline rule's second root has a type segment of its own.
    let rules = shipped();
    let pipes = rules
        .rules
        .iter()
        .find(|r| r.kind == "ingestionPipeline")
        .unwrap();
    let scope = pipes
        .scope
        .as_ref()
        .expect("ingestion pipelines are scoped");
    assert_eq!(scope.reference, "service");
    assert_eq!(scope.root_template, "ingestion/{scope}/{name}");
}

#[test]
fn serve_refuses_to_start_on_a_bad_rule() {
    let out = Command::new(BIN)
        .args(["serve"])
        .env("OMSP_RULES_DIR", root().join("tests/fixtures/bad-rules"))
        .env("OMSP_LISTEN", "127.0.0.1:0")
        .env("OMSP_ADMIN_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken.json"));
}

#[test]
fn explain_names_the_rule_the_secret_paths_and_their_ids() {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body.json");
    std::fs::write(
        &body,
        r#"{"name":"dbt-nightly","sourceConfig":{"config":{"type":"DBT","dbtConfigSource":{"dbtSecurityConfig":{"awsSecretAccessKey":"x"}}}}}"#,
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["explain", "PUT", "/api/v1/services/ingestionPipelines"])
        .arg(&body)
        .current_dir(root())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("rule: ingestionPipeline"), "{text}");
    assert!(text.contains(
        "$.sourceConfig.config.dbtConfigSource.dbtSecurityConfig.awsSecretAccessKey -> secret:/openmetadata/pipeline/dbt-nightly/sourceconfig/config/dbtconfigsource/dbtsecurityconfig/awssecretaccesskey"
    ), "{text}");
    assert!(
        text.contains("reads: bot=resolve user=mask anonymous=mask"),
        "{text}"
    );
}

#[test]
fn explain_says_when_no_rule_matches() {
    let out = Command::new(BIN)
        .args(["explain", "GET", "/api/v1/tables"])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("rule: none"));
}

fn explain_body(method: &str, path: &str, body: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body.json");
    std::fs::write(&file, body).unwrap();
    let out = Command::new(BIN)
        .args(["explain", method, path])
        .arg(&file)
        .current_dir(root())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn explain_says_rule_paths_and_the_safety_net_both_apply_to_an_unknown_type() {
    let text = explain_body(
        "POST",
        "/api/v1/services/databaseServices",
        r#"{"name":"n","connection":{"config":{"type":"BrandNewDb","hostPort":"h",
            "password":"p","catalog":{"connection":{"credential":{"clientId":"c"}}},
            "nested":{"clientSecret":"s"}}}}"#,
    );
    assert!(!text.contains("only the name-based safety net"), "{text}");
    assert!(
        text.contains("connection type \"BrandNewDb\" is in no inventory of the supported OpenMetadata versions (1.9 to 2.0)"),
        "{text}"
    );
    assert!(
        text.contains(": 2 matched: $.connection.config.catalog.connection.credential.clientId, $.connection.config.password\n"),
        "{text}"
    );
    assert!(
        text.contains("name-based safety net (rules.safety_net_keys under $.connection.config): 1 matched: $.connection.config.nested.clientSecret\n"),
        "{text}"
    );
    assert!(text.contains("secrets in body: 3"), "{text}");
}

#[test]
fn explain_says_when_nothing_matched_for_an_unknown_type() {
    let text = explain_body(
        "POST",
        "/api/v1/services/databaseServices",
        r#"{"name":"n","connection":{"config":{"type":"BrandNewDb","hostPort":"h"}}}"#,
    );
    assert!(
        text.contains("secret paths, whatever the type): none matched\n"),
        "{text}"
    );
    assert!(
        text.contains("under $.connection.config): none matched\n"),
        "{text}"
    );
}

#[test]
fn explain_adds_no_note_for_a_type_of_an_older_version() {
    // Iceberg exists only in OpenMetadata 1.9: it is a known type, found by a rule path.
    let text = explain_body(
        "POST",
        "/api/v1/services/databaseServices",
        r#"{"name":"ice","connection":{"config":{"type":"Iceberg",
            "catalog":{"connection":{"credential":{"clientId":"c"}}}}}}"#,
    );
    assert!(!text.contains("no inventory"), "{text}");
    assert!(
        text.contains("$.connection.config.catalog.connection.credential.clientId -> secret:/openmetadata/database/ice/catalog/connection/credential/clientid  [rule path $.connection.config.catalog.connection.credential.clientId (types: Iceberg)]"),
        "{text}"
    );
}

#[test]
fn explain_says_a_json_text_with_a_credential_is_refused_without_echoing_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body.json");
    std::fs::write(
        &file,
        r#"{"name": "s", "serviceType": "Mysql", "connection": {"config": {"type": "Mysql",
            "connectionArguments": {"http_headers": "{\"Authorization\": \"Bearer tok-99\"}"}}}}"#,
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["explain", "POST", "/api/v1/services/databaseServices"])
        .arg(&file)
        .current_dir(root())
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("422") && all.contains("http_headers"), "{all}");
    assert!(!all.contains("tok-99"), "{all}");
}
