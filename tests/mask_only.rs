//! Secrets OpenMetadata keeps in clear outside connections (`mask_only` rules, issue 15): for
//! every shipped row, a write with secrets, reads as a user, a bot and an anonymous caller that
//! show the mask everywhere (entity, list, versions, change descriptions, change events), a
//! write that sends the masks back (the upstream keeps the real values, and what it receives
//! holds them and never the mask), and a mask with nothing behind it (422, nothing forwarded).
//! Nothing of these goes to the key store.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use om_secrets_proxy::secrets::memory::MemoryStore;
use om_secrets_proxy::secrets::SecretStore;
use proptest::prelude::*;
use serde_json::{json, Value};
use support::emulator::{Canned, Recorded};
use support::jwt;
use support::*;

const MASK: &str = "*********";
const SDK_MASK: &str = "**********";

/// The emulator, a gateway whose store the test can see, and the gateway's config tweaks.
async fn setup(
    tweak: impl FnOnce(&mut om_secrets_proxy::config::Config),
) -> (Emulator, Gw, Arc<MemoryStore>) {
    let emu = Emulator::start().await;
    emu.set_jwks(jwt::jwks());
    let mem = Arc::new(MemoryStore::new());
    let mut cfg = config_for(&emu.url());
    cfg.secrets.cache_ttl = std::time::Duration::ZERO;
    tweak(&mut cfg);
    let gw = start_gateway_with_store(cfg, Some(mem.clone())).await;
    (emu, gw, mem)
}

async fn req(gw: &Gw, m: Method, path: &str, token: Option<&str>, body: &Value) -> Answer {
    let ct = if m == Method::PATCH {
        "application/json-patch+json"
    } else {
        "application/json"
    };
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut h: Vec<(&str, &str)> = vec![("content-type", ct)];
    if let Some(a) = &auth {
        h.push(("authorization", a));
    }
    let body = if body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    send(&client(), m, &gw.url(path), &h, body).await
}

async fn write(gw: &Gw, m: Method, path: &str, body: Value) -> Answer {
    req(gw, m, path, Some(&jwt::user()), &body).await
}

/// What the upstream holds, read from the emulator directly.
async fn upstream(emu: &Emulator, path: &str) -> Value {
    get(&format!("{}{path}", emu.url())).await.json()
}

/// Every caller who must not see the values: a user, a bot (mask by default), nobody.
fn viewers() -> Vec<(&'static str, Option<String>)> {
    vec![
        ("user", Some(jwt::user())),
        ("bot", Some(jwt::bot())),
        ("anonymous", None),
    ]
}

/// Reads `path` as every viewer: 200, the mask shown, no secret in any form.
async fn hidden_everywhere(gw: &Gw, path: &str, secrets: &[&str]) {
    for (who, token) in viewers() {
        let a = req(gw, Method::GET, path, token.as_deref(), &Value::Null).await;
        assert_eq!(a.status, 200, "{who} GET {path}: {}", a.text());
        assert!(
            contains(&a.body, MASK.as_bytes()),
            "{who} GET {path}: no mask in {}",
            a.text()
        );
        for s in secrets {
            for form in leak_forms(s) {
                assert!(
                    !contains(&a.body, &form),
                    "{who} GET {path} shows {s}: {}",
                    a.text()
                );
            }
        }
    }
}

/// The last request the upstream received with `method` on a path starting with `prefix`.
fn last_forwarded(emu: &Emulator, method: Method, prefix: &str) -> Recorded {
    emu.recorded()
        .into_iter()
        .rev()
        .find(|r| r.method == method && r.path_and_query.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {method} {prefix} reached the upstream"))
}

/// The upstream received every value and no mask.
fn forwarded_values_not_masks(r: &Recorded, secrets: &[&str]) {
    let body = String::from_utf8_lossy(&r.body);
    assert!(!body.contains(MASK), "a mask reached the upstream: {body}");
    for s in secrets {
        assert!(body.contains(s), "{s} was not forwarded: {body}");
    }
}

/// An answer of the gateway turned back into a create request, as a UI sends it.
fn as_request(mut v: Value) -> Value {
    if let Some(m) = v.as_object_mut() {
        for k in [
            "id",
            "version",
            "href",
            "updatedAt",
            "updatedBy",
            "fullyQualifiedName",
            "deleted",
            "changeDescription",
        ] {
            m.remove(k);
        }
    }
    v
}

/// A 422 in OpenMetadata's shape that names no secret, and nothing forwarded.
async fn refused_422(emu: &Emulator, a: &Answer, before: usize) {
    assert_eq!(a.status, 422, "{}", a.text());
    let e = a.json();
    assert_eq!(e["code"], 422);
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    let writes = emu
        .recorded()
        .iter()
        .filter(|r| r.method != Method::GET)
        .count();
    assert_eq!(writes, before, "a refused write reached the upstream");
}

fn writes_so_far(emu: &Emulator) -> usize {
    emu.recorded()
        .iter()
        .filter(|r| r.method != Method::GET)
        .count()
}

async fn store_is_empty(mem: &MemoryStore) {
    assert!(
        mem.list("/").await.expect("list").is_empty(),
        "a mask_only value went to the key store"
    );
}

// === event subscriptions ===

const SUBS: &str = "/api/v1/events/subscriptions";

fn subscription() -> Value {
    json!({"name": "hook", "alertType": "Notification", "description": "alerts",
        "trigger": {"triggerType": "RealTime"},
        "destinations": [
            {"category": "External", "type": "Webhook", "config": {
                "endpoint": "https://hooks.example.org/in?token=EP-9f1", "secretKey": "SK-hmac-77",
                "headers": {"Authorization": "Bearer HDR-55a"},
                "authType": {"type": "bearer", "secretKey": "AT-bearer-31"}}},
            {"category": "External", "type": "Webhook", "config": {
                "endpoint": "https://hooks.example.org/two",
                "authType": {"type": "oauth2", "tokenUrl": "https://idp/token", "clientId": "c",
                             "clientSecret": "OC-secret-12"}}},
            {"category": "External", "type": "Slack", "config": {
                "endpoint": "https://hooks.slack.com/services/T0/B0/SLACK-xyz"}}]})
}

const SUB_SECRETS: [&str; 7] = [
    "EP-9f1",
    "SK-hmac-77",
    "HDR-55a",
    "AT-bearer-31",
    "OC-secret-12",
    "SLACK-xyz",
    "https://hooks.example.org/two",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_subscription_secrets_are_masked_everywhere_and_survive_a_mask_round_trip() {
    let (emu, gw, mem) = setup(|_| {}).await;
    let created = write(&gw, Method::POST, SUBS, subscription()).await;
    assert_eq!(created.status, 201, "{}", created.text());
    forwarded_values_not_masks(&last_forwarded(&emu, Method::POST, SUBS), &SUB_SECRETS);
    // What the caller got back is masked too.
    assert_eq!(
        created.json()["destinations"][0]["config"]["secretKey"],
        MASK
    );
    let id = created.json()["id"].as_str().expect("id").to_string();

    // The masked entity sent back as it was read: every value kept upstream.
    let seen = req(
        &gw,
        Method::GET,
        &format!("{SUBS}/name/hook"),
        Some(&jwt::user()),
        &Value::Null,
    )
    .await;
    let mut back = as_request(seen.json());
    back["description"] = json!("edited");
    let put = write(&gw, Method::PUT, SUBS, back).await;
    assert_eq!(put.status, 200, "{}", put.text());
    forwarded_values_not_masks(&last_forwarded(&emu, Method::PUT, SUBS), &SUB_SECRETS);
    let held = upstream(&emu, &format!("{SUBS}/{id}")).await;
    assert_eq!(held["destinations"][0]["config"]["secretKey"], "SK-hmac-77");
    assert_eq!(
        held["destinations"][0]["config"]["headers"]["Authorization"],
        "Bearer HDR-55a"
    );
    assert_eq!(
        held["destinations"][1]["config"]["authType"]["clientSecret"],
        "OC-secret-12"
    );
    assert_eq!(held["description"], "edited");

    // A JSON Patch that sends a mask (the SDK's too) back, by id and by name.
    let patch = json!([
        {"op": "replace", "path": "/destinations/0/config/secretKey", "value": SDK_MASK},
        {"op": "replace", "path": "/destinations/2/config/endpoint", "value": MASK},
        {"op": "replace", "path": "/description", "value": "patched"}]);
    for path in [format!("{SUBS}/{id}"), format!("{SUBS}/name/hook")] {
        let a = write(&gw, Method::PATCH, &path, patch.clone()).await;
        assert_eq!(a.status, 200, "{}", a.text());
        let r = last_forwarded(&emu, Method::PATCH, SUBS);
        assert!(
            !contains(&r.body, b"*********"),
            "{}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let held = upstream(&emu, &format!("{SUBS}/{id}")).await;
    assert_eq!(held["destinations"][0]["config"]["secretKey"], "SK-hmac-77");
    assert_eq!(
        held["destinations"][2]["config"]["endpoint"],
        "https://hooks.slack.com/services/T0/B0/SLACK-xyz"
    );

    // A new value through the gateway reaches the upstream in clear (the server needs it).
    let a = write(&gw, Method::PATCH, &format!("{SUBS}/{id}"),
        json!([{"op": "replace", "path": "/destinations/0/config/secretKey", "value": "SK-new-88"}])).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        upstream(&emu, &format!("{SUBS}/{id}")).await["destinations"][0]["config"]["secretKey"],
        "SK-new-88"
    );

    let mut secrets = SUB_SECRETS.to_vec();
    secrets.push("SK-new-88");
    for path in [
        format!("{SUBS}/{id}"),
        format!("{SUBS}/name/hook"),
        SUBS.to_string(),
        format!("{SUBS}/{id}/versions"),
        format!("{SUBS}/{id}/versions/0.2"),
        format!("{SUBS}/{id}/destinations"),
        format!("{SUBS}/id/{id}/destinations"),
        format!("{SUBS}/name/hook/destinations"),
        // Change events are on a route without rules: the safety net masks them.
        "/api/v1/events".to_string(),
    ] {
        hidden_everywhere(&gw, &path, &secrets).await;
    }
    store_is_empty(&mem).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_subscription_mask_with_nothing_behind_it_is_refused() {
    let (emu, gw, _mem) = setup(|_| {}).await;
    // No such subscription upstream yet.
    let mut body = subscription();
    body["destinations"][0]["config"]["secretKey"] = json!(MASK);
    let before = writes_so_far(&emu);
    let a = write(&gw, Method::POST, SUBS, body).await;
    refused_422(&emu, &a, before).await;
    assert!(!a.text().contains("SK-"), "{}", a.text());
    // It exists, but holds no value where the mask was sent.
    assert_eq!(
        write(&gw, Method::POST, SUBS, subscription()).await.status,
        201
    );
    let before = writes_so_far(&emu);
    let a = write(
        &gw,
        Method::PATCH,
        &format!("{SUBS}/name/hook"),
        json!([{"op": "add", "path": "/destinations/1/config/secretKey", "value": MASK}]),
    )
    .await;
    refused_422(&emu, &a, before).await;
    // Moving a secret where people can read it is refused too.
    let before = writes_so_far(&emu);
    let a = write(
        &gw,
        Method::PATCH,
        &format!("{SUBS}/name/hook"),
        json!([{"op": "copy", "from": "/destinations/0/config/secretKey", "path": "/description"}]),
    )
    .await;
    refused_422(&emu, &a, before).await;
}

// === system settings ===

const SETTINGS: &str = "/api/v1/system/settings";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_and_slack_settings_are_masked_and_survive_a_mask_round_trip() {
    let (emu, gw, mem) = setup(|_| {}).await;
    // Nothing stored yet: a mask stands for nothing.
    let before = writes_so_far(&emu);
    let masked = json!({"config_type": "emailConfiguration", "config_value": {
        "username": "mailer", "password": MASK, "senderMail": "om@example.org",
        "serverEndpoint": "smtp.example.org", "serverPort": 587}});
    refused_422(
        &emu,
        &write(&gw, Method::PUT, SETTINGS, masked.clone()).await,
        before,
    )
    .await;

    let mut email = masked.clone();
    email["config_value"]["password"] = json!("SMTP-pw-41");
    assert_eq!(write(&gw, Method::PUT, SETTINGS, email).await.status, 200);
    let slack = json!({"config_type": "slackAppConfiguration", "config_value": {
        "clientId": "cid", "clientSecret": "SLC-sec-2", "signingSecret": "SLS-sign-3"}});
    assert_eq!(write(&gw, Method::PUT, SETTINGS, slack).await.status, 200);
    forwarded_values_not_masks(
        &last_forwarded(&emu, Method::PUT, SETTINGS),
        &["SLC-sec-2", "SLS-sign-3"],
    );

    // Sent back masked, with PUT and with a PATCH of the config value.
    let a = write(&gw, Method::PUT, SETTINGS, masked).await;
    assert_eq!(a.status, 200, "{}", a.text());
    forwarded_values_not_masks(
        &last_forwarded(&emu, Method::PUT, SETTINGS),
        &["SMTP-pw-41"],
    );
    // A mask is kept only while the rest of its setting is unchanged (second hostile probe:
    // otherwise a person could send the value to an account or host of their choosing).
    let slack_patch = |other: &str, value: &str| {
        json!([{"op": "replace", "path": "/signingSecret", "value": MASK},
               {"op": "replace", "path": other, "value": value}])
    };
    let slack_path = format!("{SETTINGS}/slackAppConfiguration");
    let before = writes_so_far(&emu);
    let a = write(
        &gw,
        Method::PATCH,
        &slack_path,
        slack_patch("/clientId", "cid-2"),
    )
    .await;
    refused_422(&emu, &a, before).await;
    assert!(a.text().contains("clientId"), "{}", a.text());
    // Another secret of the setting sent in clear next to the mask: refused even when it is
    // the held value (no answer confirms a guess: fourth probe of the masked-only kinds).
    let before = writes_so_far(&emu);
    let a = write(
        &gw,
        Method::PATCH,
        &slack_path,
        slack_patch("/clientSecret", "SLC-sec-2"),
    )
    .await;
    refused_422(&emu, &a, before).await;
    let a = write(
        &gw,
        Method::PATCH,
        &slack_path,
        slack_patch("/clientSecret", MASK),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let r = last_forwarded(&emu, Method::PATCH, SETTINGS);
    assert!(
        !contains(&r.body, MASK.as_bytes()),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(
        emu.setting("emailConfiguration").expect("email")["password"],
        "SMTP-pw-41"
    );
    let slack_held = emu.setting("slackAppConfiguration").expect("slack");
    assert_eq!(slack_held["signingSecret"], "SLS-sign-3");
    assert_eq!(slack_held["clientId"], "cid");
    // `config_value.password` is a secret of any setting; Slack's holds none.
    let before = writes_so_far(&emu);
    let a = write(
        &gw,
        Method::PATCH,
        &format!("{SETTINGS}/slackAppConfiguration"),
        json!([{"op": "add", "path": "/password", "value": MASK}]),
    )
    .await;
    refused_422(&emu, &a, before).await;

    let secrets = ["SMTP-pw-41", "SLC-sec-2", "SLS-sign-3"];
    for path in [
        SETTINGS.to_string(),
        format!("{SETTINGS}/emailConfiguration"),
        format!("{SETTINGS}/slackAppConfiguration"),
    ] {
        hidden_everywhere(&gw, &path, &secrets[..]).await;
    }
    store_is_empty(&mem).await;
}

// === security configuration ===

const SECURITY: &str = "/api/v1/system/security/config";

fn security() -> Value {
    json!({"authenticationConfiguration": {"provider": "ldap", "providerName": "LDAP",
        "ldapConfiguration": {"host": "ldap.example.org", "dnAdminPrincipal": "cn=admin",
            "dnAdminPassword": "LDAP-bind-5",
            "trustStoreConfig": {"customTrustManagerConfig": {"trustStoreFilePassword": "TS-pw-6"}}},
        "oidcConfiguration": {"id": "om", "secret": "OIDC-sec-7"},
        "samlConfiguration": {"sp": {"entityId": "om", "spPrivateKey": "SAML-key-8"},
                              "security": {"keyStorePassword": "KS-pw-9"}}},
        "authorizerConfiguration": {"className": "org.openmetadata.service.security.DefaultAuthorizer"}})
}

const SECURITY_SECRETS: [&str; 5] = [
    "LDAP-bind-5",
    "TS-pw-6",
    "OIDC-sec-7",
    "SAML-key-8",
    "KS-pw-9",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_configuration_secrets_are_masked_and_survive_a_mask_round_trip() {
    let (emu, gw, mem) = setup(|_| {}).await;
    // OpenMetadata holds no LDAP configuration yet: the mask stands for nothing.
    let mut masked = security();
    masked["authenticationConfiguration"]["ldapConfiguration"]["dnAdminPassword"] = json!(MASK);
    let before = writes_so_far(&emu);
    refused_422(
        &emu,
        &write(&gw, Method::PUT, SECURITY, masked).await,
        before,
    )
    .await;

    assert_eq!(
        write(&gw, Method::PUT, SECURITY, security()).await.status,
        200
    );
    forwarded_values_not_masks(
        &last_forwarded(&emu, Method::PUT, SECURITY),
        &SECURITY_SECRETS,
    );
    let seen = req(&gw, Method::GET, SECURITY, Some(&jwt::user()), &Value::Null).await;
    let a = write(&gw, Method::PUT, SECURITY, seen.json()).await;
    assert_eq!(a.status, 200, "{}", a.text());
    forwarded_values_not_masks(
        &last_forwarded(&emu, Method::PUT, SECURITY),
        &SECURITY_SECRETS,
    );
    let a = write(
        &gw,
        Method::PATCH,
        SECURITY,
        json!([{"op": "replace",
        "path": "/authenticationConfiguration/oidcConfiguration/secret", "value": MASK}]),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(!contains(
        &last_forwarded(&emu, Method::PATCH, SECURITY).body,
        MASK.as_bytes()
    ));
    let held = emu.security().expect("security");
    assert_eq!(
        held["authenticationConfiguration"]["ldapConfiguration"]["dnAdminPassword"],
        "LDAP-bind-5"
    );
    assert_eq!(
        held["authenticationConfiguration"]["oidcConfiguration"]["secret"],
        "OIDC-sec-7"
    );
    hidden_everywhere(&gw, SECURITY, &SECURITY_SECRETS).await;
    store_is_empty(&mem).await;
}

// === governance workflow definitions ===

const WORKFLOWS: &str = "/api/v1/governance/workflowDefinitions";

fn workflow() -> Value {
    json!({"name": "sync-to-git", "description": "sinks", "type": "eventBasedEntity",
        "trigger": {"type": "eventBasedEntity", "config": {"entityTypes": ["table"]}},
        "nodes": [
            {"type": "startEvent", "subType": "startEvent", "name": "start"},
            {"type": "automatedTask", "subType": "sinkTask", "name": "git", "config": {
                "sinkType": "git", "sinkConfig": {"repositoryUrl": "https://git.example.org/r.git",
                    "credentials": {"type": "token", "token": "GIT-tok-1", "privateKey": "GIT-key-2",
                                    "passphrase": "GIT-pass-3"}}}},
            {"type": "automatedTask", "subType": "sinkTask", "name": "hook", "config": {
                "sinkType": "webhook", "sinkConfig": {"endpoint": "https://sink.example.org",
                    "authentication": {"type": "basic", "token": "WH-tok-4", "username": "u",
                                       "password": "WH-pw-5", "apiKey": "WH-key-6"}}}}],
        "edges": [{"from": "start", "to": "git"}, {"from": "git", "to": "hook"}]})
}

const WORKFLOW_SECRETS: [&str; 6] = [
    "GIT-tok-1",
    "GIT-key-2",
    "GIT-pass-3",
    "WH-tok-4",
    "WH-pw-5",
    "WH-key-6",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_sink_credentials_are_masked_and_survive_a_mask_round_trip() {
    let (emu, gw, mem) = setup(|_| {}).await;
    let mut masked = workflow();
    masked["nodes"][1]["config"]["sinkConfig"]["credentials"]["token"] = json!(MASK);
    let before = writes_so_far(&emu);
    refused_422(
        &emu,
        &write(&gw, Method::POST, WORKFLOWS, masked).await,
        before,
    )
    .await;

    let created = write(&gw, Method::POST, WORKFLOWS, workflow()).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().expect("id").to_string();
    let mut back = as_request(created.json());
    back["description"] = json!("edited");
    let a = write(&gw, Method::PUT, WORKFLOWS, back).await;
    assert_eq!(a.status, 200, "{}", a.text());
    forwarded_values_not_masks(
        &last_forwarded(&emu, Method::PUT, WORKFLOWS),
        &WORKFLOW_SECRETS,
    );
    let a = write(&gw, Method::PATCH, &format!("{WORKFLOWS}/name/sync-to-git"), json!([
        {"op": "replace", "path": "/nodes/2/config/sinkConfig/authentication/apiKey", "value": MASK},
        {"op": "replace", "path": "/description", "value": "patched"}])).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(!contains(
        &last_forwarded(&emu, Method::PATCH, WORKFLOWS).body,
        MASK.as_bytes()
    ));
    let held = upstream(&emu, &format!("{WORKFLOWS}/{id}")).await;
    assert_eq!(
        held["nodes"][1]["config"]["sinkConfig"]["credentials"]["token"],
        "GIT-tok-1"
    );
    assert_eq!(
        held["nodes"][2]["config"]["sinkConfig"]["authentication"]["apiKey"],
        "WH-key-6"
    );
    for path in [
        format!("{WORKFLOWS}/{id}"),
        format!("{WORKFLOWS}/name/sync-to-git"),
        WORKFLOWS.to_string(),
        format!("{WORKFLOWS}/{id}/versions"),
        format!("{WORKFLOWS}/{id}/versions/0.1"),
        "/api/v1/events".to_string(),
    ] {
        hidden_everywhere(&gw, &path, &WORKFLOW_SECRETS).await;
    }
    store_is_empty(&mem).await;
}

// === applications ===

const APPS: &str = "/api/v1/apps";

const APP_SECRETS: [&str; 5] = [
    "APP-pw-1",
    "APP-key-2",
    "APP-pass-3",
    "xoxp-user-4",
    "xoxb-bot-5",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_credentials_are_masked_and_survive_a_mask_round_trip_and_a_trigger() {
    let (emu, gw, mem) = setup(|_| {}).await;
    let snow = json!({"name": "SnowflakeSync", "appConfiguration": {"type": "Snowflake",
        "connectionConfig": {"username": "om", "password": "APP-pw-1", "privateKey": "APP-key-2",
                             "snowflakePrivatekeyPassphrase": "APP-pass-3"}}});
    let slack = json!({"name": "SlackApplication", "appConfiguration": {
        "userToken": "xoxp-user-4", "botToken": "xoxb-bot-5"}});
    assert_eq!(
        write(&gw, Method::POST, APPS, snow.clone()).await.status,
        201
    );
    assert_eq!(write(&gw, Method::POST, APPS, slack).await.status, 201);

    // A configuration override on a trigger: the mask stands for the app's password.
    let a = write(
        &gw,
        Method::POST,
        &format!("{APPS}/trigger/SnowflakeSync"),
        json!({"type": "Snowflake", "connectionConfig": {"username": "om", "password": MASK}}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    forwarded_values_not_masks(
        &last_forwarded(&emu, Method::POST, &format!("{APPS}/trigger")),
        &["APP-pw-1"],
    );
    let before = writes_so_far(&emu);
    let a = write(
        &gw,
        Method::POST,
        &format!("{APPS}/trigger/SlackApplication"),
        json!({"connectionConfig": {"password": MASK}}),
    )
    .await;
    refused_422(&emu, &a, before).await;

    let seen = req(
        &gw,
        Method::GET,
        &format!("{APPS}/name/SlackApplication"),
        Some(&jwt::user()),
        &Value::Null,
    )
    .await;
    let a = write(&gw, Method::PUT, APPS, as_request(seen.json())).await;
    assert_eq!(a.status, 200, "{}", a.text());
    forwarded_values_not_masks(
        &last_forwarded(&emu, Method::PUT, APPS),
        &["xoxp-user-4", "xoxb-bot-5"],
    );
    // Another secret of the context sent in clear next to a mask: refused whether or not it
    // is the value OpenMetadata holds (no answer confirms a guess); sent as masks, kept.
    let mut masked = snow;
    masked["appConfiguration"]["connectionConfig"]["privateKey"] = json!(MASK);
    assert_eq!(
        write(&gw, Method::PUT, APPS, masked.clone()).await.status,
        422
    );
    masked["appConfiguration"]["connectionConfig"]["password"] = json!(MASK);
    masked["appConfiguration"]["connectionConfig"]["snowflakePrivatekeyPassphrase"] = json!(MASK);
    assert_eq!(write(&gw, Method::PUT, APPS, masked).await.status, 200);
    let held = upstream(&emu, &format!("{APPS}/name/SnowflakeSync")).await;
    assert_eq!(
        held["appConfiguration"]["connectionConfig"]["privateKey"],
        "APP-key-2"
    );
    let id = held["id"].as_str().expect("id").to_string();
    for path in [
        format!("{APPS}/{id}"),
        format!("{APPS}/name/SlackApplication"),
        APPS.to_string(),
        format!("{APPS}/{id}/versions"),
        "/api/v1/events".to_string(),
    ] {
        hidden_everywhere(&gw, &path, &APP_SECRETS).await;
    }
    store_is_empty(&mem).await;
}

// === policy ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_given_reveal_sees_values_but_never_resolves_a_reference() {
    let (_emu, gw, mem) = setup(|c| c.policy.mask_only.reveal_to = vec!["admin".into()]).await;
    mem.put("/openmetadata/database/prod/password", "DB-secret-0")
        .await
        .expect("put");
    let mut body = subscription();
    body["destinations"][1]["config"]["authType"]["clientSecret"] =
        json!("secret:/openmetadata/database/prod/password");
    assert_eq!(write(&gw, Method::POST, SUBS, body).await.status, 201);
    let admin = jwt::rs256("key1", Some("k1"), &jwt::claims("admin", false));
    let a = req(
        &gw,
        Method::GET,
        &format!("{SUBS}/name/hook"),
        Some(&admin),
        &Value::Null,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let v = a.json();
    assert_eq!(v["destinations"][0]["config"]["secretKey"], "SK-hmac-77");
    assert_eq!(
        v["destinations"][1]["config"]["authType"]["clientSecret"],
        MASK
    );
    assert!(!a.text().contains("DB-secret-0"));
    hidden_everywhere(&gw, &format!("{SUBS}/name/hook"), &["SK-hmac-77"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_see_mask_only_values_when_the_config_reveals_them_to_bots() {
    let (_emu, gw, _mem) =
        setup(|c| c.policy.mask_only.bot = om_secrets_proxy::config::ReadAction::Resolve).await;
    assert_eq!(
        write(&gw, Method::POST, SUBS, subscription()).await.status,
        201
    );
    let a = req(
        &gw,
        Method::GET,
        &format!("{SUBS}/name/hook"),
        Some(&jwt::bot()),
        &Value::Null,
    )
    .await;
    assert_eq!(
        a.json()["destinations"][0]["config"]["secretKey"],
        "SK-hmac-77"
    );
    let a = req(
        &gw,
        Method::GET,
        &format!("{SUBS}/name/hook"),
        Some(&jwt::user()),
        &Value::Null,
    )
    .await;
    assert_eq!(a.json()["destinations"][0]["config"]["secretKey"], MASK);
}

// === check and explain ===

#[test]
fn check_and_explain_know_the_mask_only_rules() {
    let bin = env!("CARGO_BIN_EXE_om-secrets-proxy");
    let dir = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new(bin)
        .current_dir(dir)
        .arg("check")
        .output()
        .expect("check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(
        body.path(),
        json!({"config_type": "emailConfiguration", "config_value": {"password": MASK, "username": "u"}}).to_string(),
    )
    .expect("write");
    let out = std::process::Command::new(bin)
        .current_dir(dir)
        .args(["explain", "PUT", "/api/v1/system/settings"])
        .arg(body.path())
        .output()
        .expect("explain");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("rule: systemSettings"), "{text}");
    assert!(text.contains("mode: mask_only"), "{text}");
    assert!(
        text.contains("$.config_value.password -> mask: replaced by the value OpenMetadata holds"),
        "{text}"
    );
    assert!(
        text.contains("reads: bot=mask user=mask anonymous=mask"),
        "{text}"
    );
    assert!(
        !text.contains("secret:/"),
        "no store id for a mask_only field: {text}"
    );
}

#[test]
fn check_refuses_a_mask_only_rule_with_a_root_or_without_a_shape() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("bad.json"),
        json!({"kind": "x", "mode": "mask_only",
        "collection": "/api/v1/x", "root": "x/{name}", "field_base": "$", "routes": [],
        "secrets": [{"path": "$.a.secret"}]})
        .to_string(),
    )
    .expect("write");
    let problems = om_secrets_proxy::rules::RuleSet::load(dir.path(), &[]).expect_err("refused");
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert!(text.iter().any(|p| p.contains("no \"root\"")), "{text:?}");
    assert!(
        text.iter().any(|p| p.contains("needs a \"shape\"")),
        "{text:?}"
    );
}

// === the write invariant for mask_only fields, generated ===

/// A runtime for a generated test, and the emulator and gateway it runs against.
fn generated_setup() -> (tokio::runtime::Runtime, Emulator, Gw) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (emu, gw, _mem) = rt.block_on(setup(|_| {}));
    (rt, emu, gw)
}

/// `OMSP_PROPTEST_CASES`, else `default`.
fn proptest_cases(default: u32) -> u32 {
    std::env::var("OMSP_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Where a generated patch may put values in the event subscription of [`subscription`].
const PATCH_PATHS: [&str; 6] = [
    "/destinations/0/config/secretKey",
    "/destinations/0/config/headers/Authorization",
    "/destinations/0/config/authType/secretKey",
    "/destinations/1/config/authType/clientSecret",
    "/destinations/1/config/secretKey",
    "/destinations/2/config/endpoint",
];

fn op_strategy() -> impl Strategy<Value = Value> {
    let value = prop_oneof![
        Just(json!(MASK)),
        Just(json!(SDK_MASK)),
        (0u32..1000).prop_map(|n| json!(format!("gen-{n}"))),
        Just(json!("")),
    ];
    (0..PATCH_PATHS.len(), value, 0u8..4, 0u32..100).prop_map(|(p, v, kind, n)| match kind {
        0 => json!({"op": "remove", "path": PATCH_PATHS[p]}),
        1 => json!({"op": "replace", "path": "/description", "value": format!("d{n}")}),
        _ => json!({"op": "add", "path": PATCH_PATHS[p], "value": v}),
    })
}

/// After any generated PATCH: no mask reached the upstream in any byte of any request, the
/// upstream holds no mask in a secret field, and a mask that was accepted kept the value the
/// upstream held there.
#[test]
fn generated_patches_never_forward_a_mask() {
    let (rt, emu, gw) = generated_setup();
    rt.block_on(async {
        assert_eq!(
            write(&gw, Method::POST, SUBS, subscription()).await.status,
            201
        );
    });
    let cases = proptest_cases(48);
    proptest!(ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() },
        |(ops in proptest::collection::vec(op_strategy(), 1..5))| {
        rt.block_on(async {
            let path = format!("{SUBS}/name/hook");
            let before = upstream(&emu, &path).await;
            let a = write(&gw, Method::PATCH, &path, Value::Array(ops.clone())).await;
            let after = upstream(&emu, &path).await;
            assert!(!contains(&emu.everything_received(), MASK.as_bytes()), "a mask was forwarded for {ops:?}");
            for p in PATCH_PATHS {
                if let Some(v) = after.pointer(p) {
                    assert!(v != MASK && v != SDK_MASK, "{p} holds a mask after {ops:?}");
                }
            }
            if a.status == 200 {
                for op in &ops {
                    let masked = op["value"] == MASK || op["value"] == SDK_MASK;
                    let p = op["path"].as_str().unwrap_or_default();
                    let last = ops.iter().rev().find(|o| o["path"] == op["path"]);
                    if masked && last == Some(op) {
                        assert_eq!(after.pointer(p), before.pointer(p), "{p} after {ops:?}");
                    }
                }
            } else {
                assert!(a.status == 422 || a.status == 400, "{} for {ops:?}: {}", a.status, a.text());
                assert_eq!(after, before, "a refused patch changed the entity: {ops:?}");
            }
        });
    });
}

// === the context rule for kept masks, generated ===

/// Masks a caller may send back in place of the values of [`subscription`]'s destinations.
const MASKABLE: [&str; 5] = [
    "/destinations/0/config/secretKey",
    "/destinations/0/config/headers/Authorization",
    "/destinations/0/config/authType/secretKey",
    "/destinations/1/config/authType/clientSecret",
    "/destinations/1/config/endpoint",
];

/// Members around those masks: where a value goes (endpoints, token URLs, types), what else
/// rides with it, and the delivery status OpenMetadata updates itself.
const AROUND: [&str; 9] = [
    "/destinations/0/config/endpoint",
    "/destinations/0/type",
    "/destinations/0/config/timeout",
    "/destinations/0/config/headers/X-Forward-To",
    "/destinations/1/config/authType/tokenUrl",
    "/destinations/1/config/authType/clientId",
    "/destinations/1/category",
    "/destinations/2/config/endpoint",
    "/destinations/0/statusDetails",
];

fn context_op_strategy() -> impl Strategy<Value = Value> {
    let mask = prop_oneof![Just(json!(MASK)), Just(json!(SDK_MASK))];
    let new_value = prop_oneof![
        (0u32..1000).prop_map(|n| json!(format!("https://gen-{n}.example/in"))),
        (0u32..100).prop_map(|n| json!(n)),
        Just(json!({"status": "failed", "lastFailedAt": 7})),
    ];
    prop_oneof![
        (0..MASKABLE.len(), mask)
            .prop_map(|(p, v)| json!({"op": "add", "path": MASKABLE[p], "value": v})),
        (0..AROUND.len(), new_value)
            .prop_map(|(p, v)| json!({"op": "add", "path": AROUND[p], "value": v})),
        (0..AROUND.len()).prop_map(|p| json!({"op": "remove", "path": AROUND[p]})),
        (0u32..100).prop_map(
            |n| json!({"op": "replace", "path": "/description", "value": format!("d{n}")})
        ),
        // Elements shifted under the ops that follow (a destination added in front, one
        // removed, one moved).
        Just(json!({"op": "add", "path": "/destinations/0", "value":
            {"category": "External", "type": "Email", "config": {"receivers": ["a@x.org"]}}})),
        Just(json!({"op": "remove", "path": "/destinations/0"})),
        Just(json!({"op": "move", "from": "/destinations/2", "path": "/destinations/0"})),
    ]
}

/// Every string of `v` by its path (`statusDetails` aside, which OpenMetadata updates itself).
fn texts_by_path(v: &Value, at: String, out: &mut std::collections::BTreeMap<String, String>) {
    match v {
        Value::String(t) => {
            out.insert(at, t.clone());
        }
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| texts_by_path(x, format!("{at}/{i}"), out)),
        Value::Object(m) => m
            .iter()
            .filter(|(k, _)| k.as_str() != "statusDetails")
            .for_each(|(k, x)| texts_by_path(x, format!("{at}/{k}"), out)),
        _ => {}
    }
}

/// Every string in `v`.
fn collect_text(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(t) => out.push(t.clone()),
        Value::Array(a) => a.iter().for_each(|x| collect_text(x, out)),
        Value::Object(m) => m.values().for_each(|x| collect_text(x, out)),
        _ => {}
    }
}

/// Whether everything `sent` holds is what `held` holds at the same place (`statusDetails`
/// aside): members `sent` leaves out do not count, nothing may be new or different.
fn within(sent: &Value, held: Option<&Value>) -> bool {
    match (sent, held) {
        (Value::Object(s), Some(Value::Object(h))) => s
            .iter()
            .filter(|(k, _)| k.as_str() != "statusDetails")
            .all(|(k, v)| within(v, h.get(k))),
        (Value::Array(s), Some(Value::Array(h))) => {
            s.iter().enumerate().all(|(i, v)| within(v, h.get(i)))
        }
        (s, h) => h == Some(s),
    }
}

/// A mask is kept only where nothing around it changed. For generated edits of an alert's
/// destinations (masks sent back, endpoints, token URLs, types, extra headers and options
/// changed, added or removed, delivery status changed), sent as a JSON Patch or as the whole
/// alert read as a person and edited (PUT): whenever the upstream ends up holding a value the
/// caller sent as a mask, everything the upstream holds in that destination afterwards is what
/// it held before (nothing new around the value, so it cannot go anywhere the caller chose);
/// a refused write changes nothing and forwards nothing; no mask is ever forwarded; and the
/// caller never sees a value it did not send. And whatever the ops (destinations added in
/// front, removed or moved too), a held value the caller did not send stays only in a
/// destination whose text is all what it was, nothing that says where or how it travels
/// removed, checked on what the upstream holds. Fails with the context rule switched off, on
/// the code before probe 8's patch rule (a header added next to a kept key) and before probe
/// 9's (an endpoint removed after a destination was added in front).
#[test]
fn generated_edits_keep_a_mask_only_where_nothing_around_it_changed() {
    let (rt, emu, gw) = generated_setup();
    let path = format!("{SUBS}/name/hook");
    let cases = proptest_cases(64);
    let kept = std::sync::atomic::AtomicUsize::new(0);
    proptest!(ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() },
        |(ops in proptest::collection::vec(context_op_strategy(), 1..5), as_put in any::<bool>())| {
        rt.block_on(async {
            // Each case starts from the alert as created.
            let put = write(&gw, Method::PUT, SUBS, subscription()).await;
            assert!(put.status == 200 || put.status == 201, "reset: {}", put.text());
            let before = upstream(&emu, &path).await;
            let writes = writes_so_far(&emu);
            // What the caller sends, as a whole alert: the PUT's body, or the patch applied to
            // the alert (the masks stand where the patch puts them).
            let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops.clone())).expect("patch");
            let mut sent = if as_put {
                as_request(req(&gw, Method::GET, &path, Some(&jwt::user()), &Value::Null).await.json())
            } else {
                before.clone()
            };
            if json_patch::patch(&mut sent, &patch).is_err() {
                return;
            }
            let a = if as_put {
                write(&gw, Method::PUT, SUBS, sent.clone()).await
            } else {
                write(&gw, Method::PATCH, &path, Value::Array(ops.clone())).await
            };
            let after = upstream(&emu, &path).await;
            let received = emu.everything_received();
            assert!(!contains(&received, MASK.as_bytes()), "a mask was forwarded for {ops:?}");
            for s in SUB_SECRETS {
                if !ops.iter().any(|o| o["value"].as_str().is_some_and(|v| v.contains(s))) {
                    for form in leak_forms(s) {
                        assert!(!contains(&a.body, &form), "{s} came back for {ops:?}: {}", a.text());
                    }
                }
            }
            if !(200..300).contains(&a.status) {
                assert!(a.status == 422 || a.status == 400, "{} for {ops:?}: {}", a.status, a.text());
                assert_eq!(writes_so_far(&emu), writes, "a refused write was forwarded: {ops:?}");
                assert_eq!(after, before, "a refused write changed the alert: {ops:?}");
                return;
            }
            // Every held value the caller did not send that the upstream still holds stays in
            // a destination whose text is all what it was: nothing says to take it elsewhere
            // (an endpoint, a token URL, a header, a type), whatever index it now has.
            for dest in after["destinations"].as_array().into_iter().flatten() {
                let mut now = std::collections::BTreeMap::new();
                texts_by_path(dest, String::new(), &mut now);
                for s in SUB_SECRETS {
                    let sent_it = ops.iter().any(|o| o.to_string().contains(s));
                    if sent_it || !now.values().any(|t| t.contains(s)) {
                        continue;
                    }
                    let was = before["destinations"].as_array().into_iter().flatten().find(|d| d.to_string().contains(s));
                    let mut then = std::collections::BTreeMap::new();
                    if let Some(o) = was {
                        texts_by_path(o, String::new(), &mut then);
                    }
                    let how = if as_put { "PUT" } else { "PATCH" };
                    for (p, t) in &now {
                        assert_eq!(then.get(p), Some(t), "{s} kept next to new text at {p} after {ops:?} ({how})");
                    }
                    // Left out is removed: what says where or how it travels (README) may not go.
                    for p in then.keys().filter(|p| !now.contains_key(*p)) {
                        let name = p.rsplit('/').next().unwrap_or_default().to_ascii_lowercase();
                        let steers = ["endpoint", "url", "uri", "host", "address", "server", "connection",
                            "dsn", "ssl", "tls", "verify", "secure", "trust", "cert", "port", "protocol",
                            "scheme", "strategy"].iter().any(|w| name.contains(w));
                        assert!(!steers, "{s} kept while {p} was removed after {ops:?} ({how})");
                    }
                }
            }
            // Every destination the caller sent a mask in.
            let has_mask = |v: &Value| {
                let mut all = Vec::new();
                collect_text(v, &mut all);
                all.iter().any(|t| t == MASK || t == SDK_MASK)
            };
            for (i, dest) in after["destinations"].as_array().into_iter().flatten().enumerate() {
                if sent["destinations"].get(i).is_some_and(has_mask) {
                    kept.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    assert!(
                        within(dest, before["destinations"].get(i)),
                        "destination {i} holds a kept value next to something new after {ops:?} ({}): {dest}\nbefore: {}",
                        if as_put { "PUT" } else { "PATCH" },
                        before["destinations"][i]
                    );
                }
            }
        });
    });
    // The generator must reach the interesting case: masks kept and accepted.
    assert!(
        kept.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "no generated edit kept a mask"
    );
}

// === the write guard and merge patches ===

#[test]
fn the_write_guard_refuses_a_mask_in_a_mask_only_field_and_nothing_else() {
    use om_secrets_proxy::rewrite::guard::Guard;
    let rules = om_secrets_proxy::rules::RuleSet::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"),
        &[],
    )
    .expect("rules");
    let rule = rules
        .rules
        .iter()
        .find(|r| r.kind == "eventSubscription")
        .expect("rule");
    let ids = om_secrets_proxy::rules::ids::IdBuilder::new("", "openmetadata");
    let fernet = om_secrets_proxy::secrets::fernet::FernetKeys::new(&[]).expect("no keys");
    let guard = Guard {
        rules: &rules,
        rule,
        ids: &ids,
        fernet: &fernet,
        root: None,
        managed: true,
    };
    let with = |v: &str| json!({"name": "h", "destinations": [{"config": {"secretKey": v}}]});
    // Values travel in clear (the server needs them); so may references and tokens.
    for ok in ["plain", "", "secret:/x", "fernet:abc"] {
        assert!(guard.check(&with(ok), None).is_ok(), "{ok}");
    }
    for mask in [MASK, SDK_MASK] {
        let e = guard
            .check(&with(mask), None)
            .expect_err("a mask never leaves");
        assert!(!e.to_string().contains(mask), "{e}");
        // One the upstream already held, left as it was, may stay.
        assert!(guard.check(&with(mask), Some(&with(mask))).is_ok());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_patch_that_sends_a_mask_back_keeps_the_value() {
    let (emu, gw, _mem) = setup(|_| {}).await;
    let email = json!({"config_type": "emailConfiguration", "config_value": {
        "username": "mailer", "password": "SMTP-pw-41", "senderMail": "om@example.org"}});
    assert_eq!(write(&gw, Method::PUT, SETTINGS, email).await.status, 200);
    // Another account with the kept password: refused (the value would go where the caller
    // says: any other member of the setting changed with a mask is); the mask alone: kept.
    for (patch, status) in [
        (json!({"password": MASK, "username": "mailer-2"}), 422),
        (
            json!({"password": MASK, "senderMail": "om@example.org"}),
            200,
        ),
    ] {
        let a = send(
            &client(),
            Method::PATCH,
            &gw.url(&format!("{SETTINGS}/emailConfiguration")),
            &[("content-type", "application/merge-patch+json")],
            patch.to_string(),
        )
        .await;
        assert_eq!(a.status, status, "{patch}: {}", a.text());
    }
    let r = last_forwarded(&emu, Method::PATCH, SETTINGS);
    assert!(
        !contains(&r.body, MASK.as_bytes()),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let held = emu.setting("emailConfiguration").expect("email");
    assert_eq!(held["password"], "SMTP-pw-41");
    assert_eq!(held["username"], "mailer");
}

/// Second hostile probe (after issue 16): a person who sees only masks sent an existing
/// alert's destination, its key filled in by the gateway, to a webhook of their own
/// (`testDestination` names the alert), and an app's password to a host of their own (a
/// trigger); and an upstream error quoting the forwarded body handed the filled-in values back
/// in its text. A mask is now kept only where everything around it (the destination, the
/// app's configuration) is what the upstream holds, and the values the gateway filled in are
/// scrubbed from the answer wherever they stand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mask_is_kept_only_where_it_goes_unchanged_and_never_comes_back_in_text() {
    let (emu, gw, _mem) = setup(|_| {}).await;
    assert_eq!(
        write(&gw, Method::POST, SUBS, subscription()).await.status,
        201
    );
    let test = format!("{SUBS}/testDestination");
    let held = subscription()["destinations"][0].clone();
    let probe = |endpoint: &str| {
        let mut d = held.clone();
        d["config"]["endpoint"] = json!(endpoint);
        d["config"]["secretKey"] = json!(MASK);
        d["config"]["headers"]["Authorization"] = json!(MASK);
        d["config"]["authType"]["secretKey"] = json!(MASK);
        json!({"name": "hook", "destinations": [d]})
    };
    // To a webhook of the caller's choosing (the endpoint is itself a secret field): refused.
    let before = writes_so_far(&emu);
    let a = write(
        &gw,
        Method::POST,
        &test,
        probe("https://attacker.example/collect"),
    )
    .await;
    refused_422(&emu, &a, before).await;
    assert!(a.text().contains("endpoint"), "{}", a.text());
    // The held endpoint sent in clear: refused too, as any other value would be (the endpoint
    // is a secret: no answer may tell whether a guess of it was right).
    let before = writes_so_far(&emu);
    let a = write(
        &gw,
        Method::POST,
        &test,
        probe("https://hooks.example.org/in?token=EP-9f1"),
    )
    .await;
    refused_422(&emu, &a, before).await;
    // Where it already goes (the endpoint masked too, as a person's client read it): the values
    // are filled in (the emulator has no such route and answers 404, after recording what it
    // received).
    let a = write(&gw, Method::POST, &test, probe(MASK)).await;
    assert_ne!(a.status, 422, "{}", a.text());
    let r = last_forwarded(&emu, Method::POST, &test);
    forwarded_values_not_masks(&r, &["SK-hmac-77", "HDR-55a", "AT-bearer-31", "EP-9f1"]);
    // An upstream error quoting what it received: the caller sees neither value in it.
    emu.set_canned(
        &test,
        Canned {
            status: 400,
            ..Canned::json(
                json!({"code": 400, "message": "cannot reach destination: {\"secretKey\":\"SK-hmac-77\",\"headers\":{\"Authorization\":\"Bearer HDR-55a\"}} SK-hmac-77"})
                    .to_string(),
            )
        },
    );
    let a = write(&gw, Method::POST, &test, probe(MASK)).await;
    assert_eq!(a.status, 400, "{}", a.text());
    for v in ["SK-hmac-77", "HDR-55a"] {
        assert!(!a.text().contains(v), "{v} came back: {}", a.text());
    }
    // Its message is withheld whole, with its status: scrubbing the values out of it would
    // tell a caller which text of theirs equals one (probe 10).
    assert_eq!(a.json()["code"], 400);
    assert!(a.text().contains("withheld"), "{}", a.text());
    emu.clear_canned();

    // An app run against a host of the caller's choosing with the app's password: refused.
    let snow = json!({"name": "SnowflakeSync", "appConfiguration": {"type": "Snowflake",
        "connectionConfig": {"username": "om", "hostPort": "db.example.org:443",
                             "password": "APP-pw-1"}}});
    assert_eq!(write(&gw, Method::POST, APPS, snow).await.status, 201);
    let before = writes_so_far(&emu);
    let a = write(
        &gw,
        Method::POST,
        &format!("{APPS}/trigger/SnowflakeSync"),
        json!({"type": "Snowflake", "connectionConfig": {"username": "om",
               "hostPort": "attacker.example:443", "password": MASK}}),
    )
    .await;
    refused_422(&emu, &a, before).await;
    assert!(a.text().contains("hostPort"), "{}", a.text());
}

/// Fourth probe of the masked-only kinds: a patch that changes only where a held secret goes
/// (an alert's endpoint or token URL, the SMTP server) is refused, as a mask next to such a
/// change is; rotating one secret of a destination, or a switch or number next to one, is
/// not. And no answer tells whether a secret sent in clear next to a mask is the held one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_never_moves_a_kept_secret_and_no_answer_confirms_a_guess() {
    let (emu, gw, _mem) = setup(|_| {}).await;
    let a = write(&gw, Method::POST, SUBS, subscription()).await;
    assert_eq!(a.status, 201, "{}", a.text());
    let id = a.json()["id"].as_str().expect("id").to_string();
    let one = format!("{SUBS}/{id}");
    let op = |path: &str, value: Value| json!([{"op": "replace", "path": path, "value": value}]);
    for (path, value) in [
        (
            "/destinations/0/config/endpoint",
            json!("https://evil.example/x"),
        ),
        (
            "/destinations/1/config/authType/tokenUrl",
            json!("https://evil.example/t"),
        ),
        (
            "/destinations/1/config/endpoint",
            json!("https://evil.example/2"),
        ),
    ] {
        let before = writes_so_far(&emu);
        let a = write(&gw, Method::PATCH, &one, op(path, value)).await;
        refused_422(&emu, &a, before).await;
        assert!(!a.text().contains("AT-bearer-31") && !a.text().contains("OC-secret-12"));
    }
    let held = upstream(&emu, &one).await;
    assert_eq!(
        held["destinations"][0]["config"]["endpoint"],
        "https://hooks.example.org/in?token=EP-9f1"
    );
    // Rotating one key of a destination, and a number next to its secrets, go through.
    let a = write(
        &gw,
        Method::PATCH,
        &one,
        op("/destinations/0/config/secretKey", json!("SK-rot-1")),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let a = write(
        &gw,
        Method::PATCH,
        &one,
        json!([{"op": "add", "path": "/destinations/0/timeout", "value": 30}]),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        upstream(&emu, &one).await["destinations"][0]["config"]["secretKey"],
        "SK-rot-1"
    );

    // The SMTP server moved by a patch that leaves the password alone.
    let email = json!({"config_type": "emailConfiguration", "config_value": {
        "username": "mailer", "password": "SMTP-pw-9", "senderMail": "om@example.org",
        "serverEndpoint": "smtp.example.org", "serverPort": 587}});
    assert_eq!(write(&gw, Method::PUT, SETTINGS, email).await.status, 200);
    let before = writes_so_far(&emu);
    let a = write(
        &gw,
        Method::PATCH,
        &format!("{SETTINGS}/emailConfiguration"),
        op("/serverEndpoint", json!("smtp.evil.example")),
    )
    .await;
    refused_422(&emu, &a, before).await;

    // A guess of one secret next to masks: the same answer whether it is right or wrong.
    let guess = |key: &str| {
        let mut b = subscription();
        let c = &mut b["destinations"][0]["config"];
        c["endpoint"] = json!(MASK);
        c["secretKey"] = json!(key);
        c["headers"]["Authorization"] = json!(MASK);
        c["authType"]["secretKey"] = json!(MASK);
        b
    };
    let before = writes_so_far(&emu);
    let right = write(&gw, Method::PUT, SUBS, guess("SK-rot-1")).await;
    let wrong = write(&gw, Method::PUT, SUBS, guess("SK-wrong-0")).await;
    refused_422(&emu, &right, before).await;
    assert_eq!(right.text(), wrong.text());
}

/// Fifth probe of the masked-only kinds, aimed at the patch rule: shifting a destination's
/// index first (add, remove, move), a secret that is itself a place (`connectionString`), a
/// switch or a port that says how a secret travels, an app trigger's partial override, and a
/// `test` op on text that reads masked. Each is refused, and nothing reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_cannot_shift_rename_or_override_its_way_around_a_kept_secret() {
    let (emu, gw, _mem) = setup(|_| {}).await;
    let a = write(&gw, Method::POST, SUBS, subscription()).await;
    assert_eq!(a.status, 201, "{}", a.text());
    let one = format!("{SUBS}/{}", a.json()["id"].as_str().expect("id"));
    let email =
        json!({"category": "External", "type": "Email", "config": {"receivers": ["a@x.org"]}});
    let evil = json!("https://evil.example/x");
    for ops in [
        json!([{"op": "add", "path": "/destinations/0", "value": email},
               {"op": "replace", "path": "/destinations/1/config/endpoint", "value": evil}]),
        json!([{"op": "add", "path": "/destinations/0", "value": email},
               {"op": "remove", "path": "/destinations/0"},
               {"op": "replace", "path": "/destinations/0/config/endpoint", "value": evil}]),
        json!([{"op": "add", "path": "/destinations/-", "value": email}]),
        json!([{"op": "move", "from": "/destinations/2", "path": "/destinations/0"}]),
    ] {
        let before = writes_so_far(&emu);
        let a = write(&gw, Method::PATCH, &one, ops.clone()).await;
        refused_422(&emu, &a, before).await;
    }
    // A test op on text that reads masked answers like one on a secret field.
    emu.seed("events/subscriptions", {
        let mut s = subscription();
        s["name"] = json!("seeded");
        s["description"] = json!("relay at https://u:REL-pw-3@relay.example.org");
        s
    });
    let seeded = format!("{SUBS}/name/seeded");
    let id = upstream(&emu, &seeded).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let mut answers = Vec::new();
    for guess in [
        "relay at https://u:REL-pw-3@relay.example.org",
        "relay at https://u:wrong@relay.example.org",
    ] {
        let a = write(
            &gw,
            Method::PATCH,
            &format!("{SUBS}/{id}"),
            json!([{"op": "test", "path": "/description", "value": guess}]),
        )
        .await;
        answers.push((a.status, a.text()));
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0].0, 422);

    // Apps: a connection string (a secret that is a place), a port, TLS switched off, and a
    // trigger's partial override, each next to the held password.
    let app = json!({"name": "PgSync", "appConfiguration": {"type": "Postgres",
        "connectionConfig": {"username": "om", "password": "APP-pw-7", "hostPort": "db.example.org:5432",
            "connectionString": "postgresql://om@db.example.org/app", "sslMode": "require", "port": 5432}}});
    assert_eq!(write(&gw, Method::POST, APPS, app).await.status, 201);
    let pg = format!("{APPS}/name/PgSync");
    for (path, value) in [
        (
            "/appConfiguration/connectionConfig/connectionString",
            json!("postgresql://om@evil.example/app"),
        ),
        ("/appConfiguration/connectionConfig/port", json!(6543)),
        (
            "/appConfiguration/connectionConfig/sslMode",
            json!("disable"),
        ),
    ] {
        let before = writes_so_far(&emu);
        let a = write(
            &gw,
            Method::PATCH,
            &pg,
            json!([{"op": "replace", "path": path, "value": value}]),
        )
        .await;
        refused_422(&emu, &a, before).await;
    }
    let before = writes_so_far(&emu);
    let a = write(
        &gw,
        Method::POST,
        &format!("{APPS}/trigger/PgSync"),
        json!({"connectionConfig": {"hostPort": "evil.example:5432"}}),
    )
    .await;
    refused_422(&emu, &a, before).await;
    // A trigger that overrides nothing near the password goes through.
    let a = write(
        &gw,
        Method::POST,
        &format!("{APPS}/trigger/PgSync"),
        json!({"batchSize": 10}),
    )
    .await;
    assert_ne!(a.status, 422, "{}", a.text());
}

/// Sixth probe of the masked-only kinds: the values filled in for masks were scrubbed out of
/// the answer wherever they stood, so a guess put in a plain member came back masked exactly
/// when it was right; and a member saying how a secret travels, left out next to its mask,
/// was removed (the trust store gone) without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_never_mark_a_right_guess_and_a_mask_keeps_its_transport() {
    let (emu, gw, _mem) = setup(|_| {}).await;
    let a = write(&gw, Method::POST, SUBS, subscription()).await;
    assert_eq!(a.status, 201, "{}", a.text());
    let one = format!("{SUBS}/{}", a.json()["id"].as_str().expect("id"));
    let mut seen = Vec::new();
    for guess in ["SK-hmac-77", "SK-wrong-00"] {
        let ops = json!([
            {"op": "replace", "path": "/destinations/0/config/secretKey", "value": MASK},
            {"op": "replace", "path": "/description", "value": format!("guess {guess}")}]);
        let a = write(&gw, Method::PATCH, &one, ops).await;
        assert_eq!(a.status, 200, "{}", a.text());
        seen.push(
            a.json()["description"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    assert_eq!(
        seen,
        ["guess SK-hmac-77", "guess SK-wrong-00"],
        "an answer marked a guess"
    );

    assert_eq!(
        write(&gw, Method::PUT, SECURITY, security()).await.status,
        200
    );
    let mut masked = security();
    let auth = &mut masked["authenticationConfiguration"];
    auth["ldapConfiguration"]["dnAdminPassword"] = json!(MASK);
    auth["ldapConfiguration"]["trustStoreConfig"]["customTrustManagerConfig"]
        ["trustStoreFilePassword"] = json!(MASK);
    auth["oidcConfiguration"]["secret"] = json!(MASK);
    auth["samlConfiguration"]["sp"]["spPrivateKey"] = json!(MASK);
    auth["samlConfiguration"]["security"]["keyStorePassword"] = json!(MASK);
    // Everything masked as read: kept.
    let a = write(&gw, Method::PUT, SECURITY, masked.clone()).await;
    assert_eq!(a.status, 200, "{}", a.text());
    // The same with the trust store left out: refused.
    let ldap = &mut masked["authenticationConfiguration"]["ldapConfiguration"];
    ldap.as_object_mut()
        .expect("ldap")
        .remove("trustStoreConfig");
    let before = writes_so_far(&emu);
    let a = write(&gw, Method::PUT, SECURITY, masked).await;
    refused_422(&emu, &a, before).await;
    assert!(a.text().contains("trustStoreConfig"), "{}", a.text());
}
