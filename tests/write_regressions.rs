//! One regression test per leak that hostile testing found on the write path before writes
//! were judged by the entity they produce (issue 10): moves and copies onto secrets, media
//! type parameters, insertion into arrays of secrets, bodies on GET, numbers and escapes,
//! CSV import and asynchronous delete, and secrets under names the rules do not list.

mod support;

use http::Method;
use om_secrets_proxy::secrets::SecretStore;
use serde_json::{json, Value};
use support::*;

const DB: &str = "/api/v1/services/databaseServices";
const MCP: &str = "/api/v1/services/mcpServices";

async fn json_patch(gw: &Gw, path: &str, ops: Value) -> Answer {
    call(
        gw,
        Method::PATCH,
        path,
        "application/json-patch+json",
        ops.to_string(),
    )
    .await
}

async fn mysql(gw: &Gw, name: &str, pw: &str) -> String {
    let body = json!({"name": name, "serviceType": "Mysql",
        "connection": {"config": {"type": "Mysql", "username": "u", "authType": {"password": pw}}}});
    let a = call(gw, Method::POST, DB, "application/json", body.to_string()).await;
    assert_eq!(a.status, 201, "{}", a.text());
    a.json()["id"].as_str().expect("id").to_string()
}

fn pw_id(name: &str) -> String {
    format!("/openmetadata/database/{name}/authtype/password")
}

#[tokio::test]
async fn a_value_added_elsewhere_then_moved_or_copied_onto_a_secret_is_stored_not_forwarded() {
    let (emu, gw, mem) = mem_stack().await;
    let id = mysql(&gw, "mover", "first").await;
    for (op, value) in [
        ("move", "moved-plaintext-1"),
        ("copy", "copied-plaintext-2"),
    ] {
        let a = json_patch(&gw, &format!("{DB}/{id}"), json!([
            {"op": "add", "path": "/connection/config/hostPort", "value": value},
            {"op": op, "from": "/connection/config/hostPort", "path": "/connection/config/authType/password"}])).await;
        assert_eq!(a.status, 200, "{op}: {}", a.text());
        let stored = emu.entity("services/databaseServices", "mover").unwrap();
        assert_eq!(
            stored["connection"]["config"]["authType"]["password"],
            format!("secret:{}", pw_id("mover"))
        );
        assert_eq!(
            mem.get(&pw_id("mover")).await.unwrap().as_deref(),
            Some(value)
        );
        // A copy leaves the value where it was added too: there it is no secret.
        if op == "move" {
            assert!(
                !contains(&emu.everything_received(), value.as_bytes()),
                "{op} leaked"
            );
        }
    }
}

#[tokio::test]
async fn another_services_reference_carried_into_a_secret_is_refused() {
    let (emu, gw, mem) = mem_stack().await;
    mysql(&gw, "victim", "victim-password").await;
    let id = mysql(&gw, "attacker", "mine").await;
    emu.clear_recorded();
    let victim_ref = format!("secret:{}", pw_id("victim"));
    for ops in [
        json!([{"op": "replace", "path": "/connection/config/authType/password", "value": victim_ref}]),
        json!([{"op": "add", "path": "/description", "value": victim_ref},
               {"op": "move", "from": "/description", "path": "/connection/config/authType/password"}]),
        json!([{"op": "add", "path": "/description", "value": victim_ref},
               {"op": "copy", "from": "/description", "path": "/connection/config/authType/password"}]),
        json!([{"op": "replace", "path": "/connection/config/authType/password",
                "value": "secret:/openmetadata/database/attacker/../victim/authtype/password"}]),
    ] {
        let a = json_patch(&gw, &format!("{DB}/{id}"), ops.clone()).await;
        assert_eq!(a.status, 422, "{ops}: {}", a.text());
    }
    assert!(emu.recorded().iter().all(|r| r.method != Method::PATCH));
    assert_eq!(
        mem.get(&pw_id("attacker")).await.unwrap().as_deref(),
        Some("mine")
    );
}

#[tokio::test]
async fn media_types_decide_parsing_with_parameters_ignored() {
    let (emu, gw, mem) = mem_stack().await;
    let id = mysql(&gw, "media", "first").await;
    let ops = json!([{"op": "replace", "path": "/connection/config/authType/password", "value": "param-plaintext"}]);
    let a = call(
        &gw,
        Method::PATCH,
        &format!("{DB}/{id}"),
        "application/json-patch+json; profile=merge-patch",
        ops.to_string(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        mem.get(&pw_id("media")).await.unwrap().as_deref(),
        Some("param-plaintext")
    );
    // A body that does not match its declared type is 400; other types on PATCH are 415.
    let a = call(
        &gw,
        Method::PATCH,
        &format!("{DB}/{id}"),
        "application/merge-patch+json; x=1",
        ops.to_string(),
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.text());
    let merge = json!({"connection": {"config": {"authType": {"password": "p"}}}});
    let a = call(
        &gw,
        Method::PATCH,
        &format!("{DB}/{id}"),
        "application/json-patch+json",
        merge.to_string(),
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.text());
    for ct in [
        "application/json",
        "text/plain; profile=merge-patch",
        "application/x-merge-patch+json",
    ] {
        let a = call(
            &gw,
            Method::PATCH,
            &format!("{DB}/{id}"),
            ct,
            ops.to_string(),
        )
        .await;
        assert_eq!(a.status, 415, "{ct}: {}", a.text());
    }
    assert!(!contains(&emu.everything_received(), b"param-plaintext"));
}

#[tokio::test]
async fn inserting_into_an_array_of_secrets_keeps_every_element_its_own_key() {
    let (emu, gw, mem) = mem_stack().await;
    let body = json!({"name": "mcp1", "serviceType": "Mcp", "connection": {"config": {"type": "Mcp", "servers": [
        {"name": "a", "apiKey": "key-of-a"}, {"name": "b", "apiKey": "key-of-b"}]}}});
    let a = call(&gw, Method::POST, MCP, "application/json", body.to_string()).await;
    assert_eq!(a.status, 201, "{}", a.text());
    let id = a.json()["id"].as_str().unwrap().to_string();
    let a = json_patch(&gw, &format!("{MCP}/{id}"), json!([
        {"op": "add", "path": "/connection/config/servers/0", "value": {"name": "new", "apiKey": "key-of-new"}}])).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let stored = emu.entity("services/mcpServices", "mcp1").unwrap();
    let servers = stored["connection"]["config"]["servers"]
        .as_array()
        .unwrap()
        .clone();
    for (i, (name, key)) in [("new", "key-of-new"), ("a", "key-of-a"), ("b", "key-of-b")]
        .iter()
        .enumerate()
    {
        let sid = format!("/openmetadata/mcp/mcp1/servers/{i}/apikey");
        assert_eq!(servers[i]["name"], *name);
        assert_eq!(servers[i]["apiKey"], format!("secret:{sid}"));
        assert_eq!(mem.get(&sid).await.unwrap().as_deref(), Some(*key), "{sid}");
    }
    // Removing the first element shifts the others back; the last id goes.
    let a = json_patch(
        &gw,
        &format!("{MCP}/{id}"),
        json!([{"op": "remove", "path": "/connection/config/servers/0"}]),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        mem.get("/openmetadata/mcp/mcp1/servers/0/apikey")
            .await
            .unwrap()
            .as_deref(),
        Some("key-of-a")
    );
    assert_eq!(
        mem.get("/openmetadata/mcp/mcp1/servers/1/apikey")
            .await
            .unwrap()
            .as_deref(),
        Some("key-of-b")
    );
    assert_eq!(
        mem.get("/openmetadata/mcp/mcp1/servers/2/apikey")
            .await
            .unwrap(),
        None
    );
    for k in ["key-of-new", "key-of-a", "key-of-b"] {
        assert!(!contains(&emu.everything_received(), k.as_bytes()));
    }
}

#[tokio::test]
async fn bodies_on_get_head_delete_and_options_of_ruled_routes_are_refused() {
    let (emu, gw, _mem) = mem_stack().await;
    let id = mysql(&gw, "bodies", "first").await;
    emu.clear_recorded();
    let body = json!({"connection": {"config": {"authType": {"password": "get-body-plaintext"}}}})
        .to_string();
    for m in [Method::GET, Method::DELETE, Method::OPTIONS] {
        let a = call(
            &gw,
            m.clone(),
            &format!("{DB}/{id}"),
            "application/json",
            body.clone(),
        )
        .await;
        assert_eq!(a.status, 400, "{m}: {}", a.text());
    }
    assert!(emu.recorded().is_empty());
    // Without a body they pass.
    let a = get(&gw.url(&format!("{DB}/{id}"))).await;
    assert_eq!(a.status, 200);
}

#[tokio::test]
async fn non_secret_bytes_reach_the_upstream_exactly_as_sent() {
    let (emu, gw, mem) = mem_stack().await;
    let raw = r#"{ "name" : "exact", "serviceType":"Mysql", "zeta": 12345678901234567890123, "alpha": -1.5E-300,
  "description":"caf\u00e9 \/ \"q\" \ud83d\ude00", "connection":{"config":{"type":"Mysql","port":-0.0,
  "authType":{"password":"exact-secret"}}}}"#;
    let a = call(&gw, Method::POST, DB, "application/json", raw).await;
    assert_eq!(a.status, 201, "{}", a.text());
    let sent = emu
        .recorded()
        .into_iter()
        .find(|r| r.method == Method::POST)
        .expect("forwarded")
        .body;
    let expected = raw.replace("exact-secret", &format!("secret:{}", pw_id("exact")));
    assert_eq!(String::from_utf8_lossy(&sent), expected);
    assert_eq!(
        mem.get(&pw_id("exact")).await.unwrap().as_deref(),
        Some("exact-secret")
    );
    // A PATCH keeps big numbers exact too.
    let id = a.json()["id"].as_str().unwrap().to_string();
    let a = call(
        &gw,
        Method::PATCH,
        &format!("{DB}/{id}"),
        "application/json-patch+json",
        r#"[{"op":"add","path":"/big","value":-98765432109876543210987654321}]"#,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let sent = emu
        .recorded()
        .into_iter()
        .rfind(|r| r.method == Method::PATCH)
        .expect("patch")
        .body;
    assert!(
        contains(&sent, b"-98765432109876543210987654321"),
        "{}",
        String::from_utf8_lossy(&sent)
    );
}

#[tokio::test]
async fn csv_import_is_forwarded_and_an_async_hard_delete_cleans_the_store() {
    let (emu, gw, mem) = mem_stack().await;
    let id = mysql(&gw, "imports", "first").await;
    let csv = "name,displayName\ndb1,Database one\n";
    let a = call(
        &gw,
        Method::PUT,
        &format!("{DB}/name/imports/import?dryRun=true"),
        "text/plain",
        csv,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(emu
        .recorded()
        .iter()
        .any(|r| r.method == Method::PUT && r.body.as_ref() == csv.as_bytes()));
    // An export is read, not taken for an entity named `imports/export`.
    assert!(mem.get(&pw_id("imports")).await.unwrap().is_some());
    let a = send(
        &client(),
        Method::DELETE,
        &gw.url(&format!("{DB}/async/{id}?hardDelete=true")),
        &[],
        "",
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(mem.get(&pw_id("imports")).await.unwrap(), None);
}

#[tokio::test]
async fn secrets_under_names_outside_the_rules_are_stored_not_forwarded() {
    let (emu, gw, mem) = mem_stack().await;
    let body = json!({"name": "names", "serviceType": "Mysql", "connection": {"config": {
        "type": "Mysql", "username": "u", "authType": {"password": "p"},
        "connectionOptions": {"sslpassword": "ssl-plaintext"},
        "connectionArguments": {"keyStorePassword": "keystore-plaintext",
            "kafka": {"saslPassword": "sasl-plaintext", "bootstrapServers": "b:9092"}}}}});
    let a = call(&gw, Method::POST, DB, "application/json", body.to_string()).await;
    assert_eq!(a.status, 201, "{}", a.text());
    let all = emu.everything_received();
    for v in ["ssl-plaintext", "keystore-plaintext", "sasl-plaintext"] {
        assert!(!contains(&all, v.as_bytes()), "{v} leaked");
    }
    assert!(contains(&all, b"b:9092"), "non-secret options are kept");
    assert_eq!(
        mem.get("/openmetadata/database/names/connectionarguments/kafka/saslpassword")
            .await
            .unwrap()
            .as_deref(),
        Some("sasl-plaintext")
    );
}

/// Hostile probe, after issue 10: the gateway applies a PATCH to the entity as its service
/// token reads it, so a `copy` (or `move`) out of a secret field into a plain one would hand
/// the caller whatever the upstream holds there: a plain value written before the gateway, or
/// the token OpenMetadata generates for a bot.
#[tokio::test]
async fn a_secret_copied_or_moved_into_a_plain_field_is_refused_and_nothing_is_forwarded() {
    let (emu, gw, _mem) = mem_stack().await;
    let legacy = "legacy-plaintext-from-before-the-gateway";
    let seeded = emu.seed(
        "services/databaseServices",
        json!({"name": "legacy", "serviceType": "Mysql", "description": "d",
            "connection": {"config": {"type": "Mysql", "username": "u",
                "authType": {"password": legacy}}}}),
    );
    let id = seeded["id"].as_str().expect("id").to_string();
    emu.clear_recorded();
    for ops in [
        json!([{"op": "copy", "from": "/connection/config/authType/password", "path": "/description"}]),
        json!([{"op": "move", "from": "/connection/config/authType/password", "path": "/description"}]),
        json!([{"op": "copy", "from": "/connection/config/authType", "path": "/displayName"}]),
        json!([{"op": "copy", "from": "/connection", "path": "/extension"}]),
    ] {
        let a = json_patch(&gw, &format!("{DB}/{id}"), ops.clone()).await;
        assert_eq!(a.status, 422, "{ops}: {}", a.text());
        for form in leak_forms(legacy) {
            assert!(
                !contains(&a.body, &form),
                "{ops}: the answer shows the value"
            );
        }
    }
    assert!(
        emu.recorded().iter().all(|r| r.method != Method::PATCH),
        "a refused patch was forwarded"
    );
    let stored = emu
        .entity("services/databaseServices", "legacy")
        .expect("stored");
    assert_eq!(stored["description"], "d");
}

/// Hostile probe, after issue 10: OpenMetadata's own login, sign-up, token and password routes
/// under `/api/v1/users` were refused (a `password` key on an unknown route) or had their
/// answers masked, so basic-auth login could not work through the gateway. They carry a
/// person's own credentials, not connection secrets: forwarded as sent, both ways.
#[tokio::test]
async fn login_and_password_routes_are_forwarded_as_sent_both_ways() {
    let (emu, gw, mem) = mem_stack().await;
    let tokens = json!({"tokenType": "Bearer", "accessToken": "eyJhbGciOiJSUzI1NiJ9.access.sig",
        "refreshToken": "refresh-token-1234", "expiryDuration": 3600});
    for (method, path, body) in [
        (
            Method::POST,
            "/api/v1/users/login",
            json!({"email": "a@b.c", "password": "bXktcGFzc3dvcmQ="}),
        ),
        (
            Method::POST,
            "/api/v1/users/signup",
            json!({"email": "a@b.c", "firstName": "a", "lastName": "b", "password": "S3cret!pass"}),
        ),
        (
            Method::POST,
            "/api/v1/users/refresh",
            json!({"refreshToken": "refresh-token-1234"}),
        ),
        (
            Method::PUT,
            "/api/v1/users/changePassword",
            json!({"username": "a", "oldPassword": "Old!pass1", "newPassword": "New!pass2", "confirmPassword": "New!pass2", "requestType": "SELF"}),
        ),
        (
            Method::POST,
            "/api/v1/users/password/reset",
            json!({"username": "a", "password": "New!pass3", "confirmPassword": "New!pass3", "token": "reset-token"}),
        ),
        (
            Method::PUT,
            "/api/v1/users/security/token",
            json!({"tokenName": "t", "JWTTokenExpiry": "Unlimited"}),
        ),
    ] {
        // The emulator has no such route (it records the request and answers 404).
        emu.clear_recorded();
        let sent = body.to_string();
        let a = call(&gw, method.clone(), path, "application/json", sent.clone()).await;
        assert_ne!(a.status, 400, "{method} {path}: {}", a.text());
        let r = emu.recorded();
        let got = r
            .iter()
            .find(|r| r.path_and_query == path)
            .expect("forwarded");
        assert_eq!(
            got.body.as_ref(),
            sent.as_bytes(),
            "{path}: forwarded as sent"
        );
        // With an answer as OpenMetadata gives it, the caller sees its own tokens.
        emu.set_canned(path, support::emulator::Canned::json(tokens.to_string()));
        let a = call(&gw, method.clone(), path, "application/json", sent).await;
        emu.clear_canned();
        assert_eq!(a.status, 200, "{method} {path}: {}", a.text());
        assert_eq!(
            a.json()["accessToken"],
            tokens["accessToken"],
            "{path}: the caller's own token"
        );
        assert_eq!(a.json()["refreshToken"], tokens["refreshToken"], "{path}");
    }
    assert!(
        mem.list("/").await.unwrap().is_empty(),
        "nothing went to the store"
    );
}

/// Hostile probe, after issue 10: a JSON Patch body sent to a route under a ruled collection
/// that does not take one was judged by its key names (`op`, `path`, `value`) and forwarded
/// with the plain value.
#[tokio::test]
async fn a_json_patch_on_a_route_that_takes_none_is_judged_by_the_fields_it_sets() {
    let (emu, gw, _mem) = mem_stack().await;
    let id = mysql(&gw, "patched", "first").await;
    let value = "patch-body-plaintext-on-an-odd-route";
    let ops =
        json!([{"op": "replace", "path": "/connection/config/authType/password", "value": value}]);
    let named = json!([{"op": "add", "path": "/connection/config/connectionOptions/sslpassword", "value": value}]);
    emu.clear_recorded();
    for (method, path, body) in [
        (Method::PUT, format!("{DB}/{id}"), &ops),
        (Method::POST, format!("{DB}/{id}"), &ops),
        (Method::POST, format!("{DB}/name/patched"), &ops),
        (Method::PATCH, format!("{DB}/{id}/x"), &ops),
        (Method::PUT, format!("{DB}/restore"), &ops),
        (Method::PUT, format!("{DB}/restore"), &named),
    ] {
        for ct in ["application/json-patch+json", "application/json"] {
            let a = call(&gw, method.clone(), &path, ct, body.to_string()).await;
            assert_eq!(a.status, 400, "{method} {path} {ct}: {}", a.text());
        }
    }
    for form in leak_forms(value) {
        assert!(!contains(&emu.everything_received(), &form), "forwarded");
    }
}

/// Second hostile probe: a free-form option holding a JSON text with a credential in it
/// (`http_headers = "{\"Authorization\": \"Bearer ...\"}"`) reached OpenMetadata in clear,
/// although the read side masks that member for every caller (so not even a bot could read it
/// back). The gateway stores whole fields, not parts of a string: such a write is refused with
/// 422 by POST, PUT and JSON Patch, and nothing of it is forwarded.
#[tokio::test]
async fn a_json_text_with_a_credential_in_a_free_form_option_is_refused_and_not_forwarded() {
    let (emu, gw, _mem) = mem_stack().await;
    let text = r#"{"Authorization": "Bearer header-plaintext-7"}"#;
    let body = json!({"name": "jtext", "serviceType": "Mysql", "connection": {"config": {
        "type": "Mysql", "username": "u", "connectionArguments": {"http_headers": text}}}});
    for m in [Method::POST, Method::PUT] {
        let a = call(&gw, m.clone(), DB, "application/json", body.to_string()).await;
        assert_eq!(a.status, 422, "{m}: {}", a.text());
        assert_eq!(a.json()["code"], 422);
        let msg = a.json()["message"].as_str().unwrap_or_default().to_string();
        assert!(
            msg.contains("http_headers") && msg.contains("Authorization"),
            "{msg}"
        );
        assert!(
            !msg.contains("header-plaintext-7"),
            "the message never echoes the value"
        );
    }
    let id = mysql(&gw, "jtext2", "p").await;
    let a = json_patch(
        &gw,
        &format!("{DB}/{id}"),
        json!([{"op": "add",
        "path": "/connection/config/connectionArguments", "value": {"h": text}}]),
    )
    .await;
    assert_eq!(a.status, 422, "{}", a.text());
    assert!(!contains(&emu.everything_received(), b"header-plaintext-7"));
    // A JSON text without a secret value passes as it is.
    let plain = r#"{"Accept": "application/json", "token": ""}"#;
    let body = json!({"name": "jtext3", "serviceType": "Mysql", "connection": {"config": {
        "type": "Mysql", "username": "u", "connectionArguments": {"http_headers": plain}}}});
    let a = call(&gw, Method::POST, DB, "application/json", body.to_string()).await;
    assert_eq!(a.status, 201, "{}", a.text());
    let stored = emu.entity("services/databaseServices", "jtext3").unwrap();
    assert_eq!(
        stored["connection"]["config"]["connectionArguments"]["http_headers"],
        plain
    );
}

async fn post(gw: &Gw, path: &str, body: Value) -> Answer {
    call(gw, Method::POST, path, "application/json", body.to_string()).await
}

/// Fourth hostile probe: a secret left in the store after its entity was deleted upstream
/// without the gateway (OpenMetadata's recursive hard delete of a service takes its pipelines
/// with it; a write broken off after its store write leaves one too) went to whoever next
/// created an entity of that name sending the mask, or a reference to the entity's own id:
/// the ingestion bot then resolved the old token next to a URL of the new creator's choosing.
/// A mask or a reference now keeps a stored value only when the entity as OpenMetadata holds
/// it refers to it; otherwise 422 and nothing forwarded. An entity that holds it keeps it.
#[tokio::test]
async fn a_stored_secret_its_entity_no_longer_holds_is_no_ones_to_inherit_by_name() {
    let (emu, gw, mem) = mem_stack().await;
    const PIPES: &str = "/api/v1/services/ingestionPipelines";
    let service = mysql(&gw, "orphan-svc", "svc-pw-1").await;
    let pipeline = |token: &str, service: &str, url: &str| {
        json!({"name": "dbt1", "pipelineType": "dbt", "airflowConfig": {},
            "service": {"id": service, "type": "databaseService"},
            "sourceConfig": {"config": {"type": "DBT", "dbtConfigSource": {"dbtConfigType": "cloud",
                "dbtCloudAuthToken": token, "dbtCloudAccountId": "1", "dbtCloudUrl": url}}}})
    };
    let a = post(
        &gw,
        PIPES,
        pipeline("DBT-token-77", &service, "https://cloud.getdbt.com"),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text());
    let token_id =
        "/openmetadata/pipeline/dbt1/sourceconfig/config/dbtconfigsource/dbtcloudauthtoken";
    assert_eq!(
        mem.get(token_id).await.unwrap().as_deref(),
        Some("DBT-token-77")
    );

    // OpenMetadata deletes the pipeline and the service without the gateway seeing either.
    for path in [
        format!(
            "{PIPES}/{}?hardDelete=true",
            a.json()["id"].as_str().unwrap()
        ),
        format!("{DB}/{service}?hardDelete=true"),
    ] {
        let r = send(
            &client(),
            Method::DELETE,
            &format!("{}{path}", emu.url()),
            &[],
            bytes::Bytes::new(),
        )
        .await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    assert!(
        mem.get(token_id).await.unwrap().is_some(),
        "the orphan this test is about"
    );

    // Someone re-creates both names and asks for the old token by mask or by reference.
    let service2 = mysql(&gw, "orphan-svc", "own-pw").await;
    for token in ["*********".to_string(), format!("secret:{token_id}")] {
        emu.clear_recorded();
        let a = post(
            &gw,
            PIPES,
            pipeline(&token, &service2, "https://attacker.example/dbt"),
        )
        .await;
        assert_eq!(a.status, 422, "{token}: {}", a.text());
        assert_eq!(a.json()["code"], 422);
        assert!(
            emu.recorded().iter().all(|r| r.method == Method::GET),
            "{token}: a write was forwarded"
        );
    }
    // Nor in two steps: the pipeline created without the token, the mask patched in; nor
    // with the orphan's reference planted where anyone may write (fifth probe): only what the
    // entity holds in its secret fields counts as held.
    let mut planted = pipeline("", &service2, "https://attacker.example/dbt");
    planted["description"] = json!(format!("secret:{token_id}"));
    let a = post(&gw, PIPES, planted).await;
    assert_eq!(a.status, 201, "{}", a.text());
    let patch = json!([{"op": "add",
        "path": "/sourceConfig/config/dbtConfigSource/dbtCloudAuthToken", "value": "*********"}]);
    let a = json_patch(
        &gw,
        &format!("{PIPES}/{}", a.json()["id"].as_str().unwrap()),
        patch,
    )
    .await;
    assert_eq!(a.status, 422, "{}", a.text());

    // The same for a top-level entity: the service's password, orphaned the same way.
    let pw = pw_id("orphan-svc");
    let r = send(
        &client(),
        Method::DELETE,
        &format!("{}{DB}/{service2}?hardDelete=true", emu.url()),
        &[],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(mem.get(&pw).await.unwrap().is_some());
    for pw_sent in ["*********".to_string(), format!("secret:{pw}")] {
        let body = json!({"name": "orphan-svc", "serviceType": "Mysql", "connection": {"config": {
            "type": "Mysql", "username": "u", "hostPort": "attacker:3306", "authType": {"password": pw_sent}}}});
        let a = call(&gw, Method::PUT, DB, "application/json", body.to_string()).await;
        assert_eq!(a.status, 422, "{pw_sent}: {}", a.text());
    }
    assert!(
        emu.entity("services/databaseServices", "orphan-svc")
            .is_none(),
        "nothing was created"
    );

    // A value provisioned in the store outside the gateway (no owner marker) is kept for a
    // new entity by reference and by mask, as the contract says.
    for (name, sent) in [("provisioned-1", "secret:"), ("provisioned-2", "*********")] {
        let id = pw_id(name);
        mem.put(&id, "from-terraform").await.unwrap();
        let sent = if sent == "secret:" {
            format!("secret:{id}")
        } else {
            sent.to_string()
        };
        let body = json!({"name": name, "serviceType": "Mysql", "connection": {"config": {
            "type": "Mysql", "username": "u", "authType": {"password": sent}}}});
        let a = call(&gw, Method::POST, DB, "application/json", body.to_string()).await;
        assert_eq!(a.status, 201, "{name}: {}", a.text());
        let held = emu.entity("services/databaseServices", name).unwrap();
        assert_eq!(
            held["connection"]["config"]["authType"]["password"],
            format!("secret:{id}")
        );
        assert_eq!(
            mem.get(&id).await.unwrap().as_deref(),
            Some("from-terraform")
        );
    }

    // An entity that holds its secret keeps it by mask and by reference (a person's edit).
    mysql(&gw, "orphan-svc", "kept-pw").await;
    for pw_sent in ["*********".to_string(), format!("secret:{pw}")] {
        let body = json!({"name": "orphan-svc", "serviceType": "Mysql", "description": pw_sent.len().to_string(),
            "connection": {"config": {"type": "Mysql", "username": "u", "authType": {"password": pw_sent}}}});
        let a = call(&gw, Method::PUT, DB, "application/json", body.to_string()).await;
        assert_eq!(a.status, 200, "{pw_sent}: {}", a.text());
        assert_eq!(mem.get(&pw).await.unwrap().as_deref(), Some("kept-pw"));
        let held = emu
            .entity("services/databaseServices", "orphan-svc")
            .unwrap();
        assert_eq!(
            held["connection"]["config"]["authType"]["password"],
            format!("secret:{pw}")
        );
    }
}

/// Fourth hostile probe: a password in a URL's user info (`https://elastic:pw@es:9200`, a
/// proxy URL) and client options the safety net did not know (Elasticsearch's `http_auth` and
/// `basic_auth`, `Cookie`, `keytab`, API gateway and vendor key headers, `signingKey`,
/// `sessionId`) reached OpenMetadata in clear and came back to a person. A URL with a password
/// in it is now refused (422, nothing forwarded: the gateway stores whole fields), the option
/// names are secrets (stored), and a person reading an entity OpenMetadata already holds with
/// either in clear sees neither.
#[tokio::test]
async fn credentials_in_urls_and_client_option_names_never_leave_in_clear() {
    let (emu, gw, _mem) = mem_stack().await;
    const SEARCH: &str = "/api/v1/services/searchServices";
    let es = |name: &str, host: &str, args: Value| {
        json!({"name": name, "serviceType": "ElasticSearch", "connection": {"config": {
            "type": "ElasticSearch", "hostPort": host, "connectionArguments": args}}})
    };
    for (host, args) in [
        ("https://elastic:URLPW-1@es.internal:9200", json!({})),
        (
            "https://es.internal:9200",
            json!({"proxy": "http://u:PROXYPW-2@proxy:3128"}),
        ),
        ("elastic:BAREPW-3@es.internal:9200", json!({})),
        // Fifth probe: what URL parsers and drivers read that the first check missed, and a
        // member named by a URL with a password.
        (
            "https://es.internal:9200",
            json!({"http://admin:PW-m@proxy:3128": "x"}),
        ),
        (
            "https://es.internal:9200",
            json!({"a": "http:\t//u:PW-a@h", "b": "http://u\n:PW-b@h"}),
        ),
        (
            "https://es.internal:9200",
            json!({"c": "//u:PW-c@h", "d": "https://u:PW-d x@h"}),
        ),
        (
            "https://es.internal:9200",
            json!({"e": "https:/u:PW-e@h", "f": "mysql://u:PW-f/x@h/db"}),
        ),
        (
            "https://es.internal:9200",
            json!({"g": "u:PW-g@tcp(h:3306)/db"}),
        ),
        (
            "https://es.internal:9200",
            json!({"h": "scott/PW-h@h:1521/orcl"}),
        ),
        (
            "https://es.internal:9200",
            json!({"i": "jdbc:postgresql://h/db?user=u&password=PW-i"}),
        ),
        (
            "https://es.internal:9200",
            json!({"j": "jdbc:sqlserver://h;user=u;Password=PW-j"}),
        ),
        (
            "https://es.internal:9200",
            json!({"k": "{\"password\": \"PW-k\",}"}),
        ),
        (
            "https://es.internal:9200",
            json!({"l": "{\"proxy\": \"http://u:PW-l@h\",}"}),
        ),
    ] {
        emu.clear_recorded();
        let a = post(&gw, SEARCH, es("es-url", host, args.clone())).await;
        assert_eq!(a.status, 422, "{host} {args}: {}", a.text());
        assert!(
            !a.text().contains("PW-"),
            "the answer names no value: {}",
            a.text()
        );
        assert!(
            emu.recorded().iter().all(|r| r.method == Method::GET),
            "forwarded"
        );
    }
    let values = [
        "HTTPAUTH-4",
        "BASIC-5",
        "COOKIE-6",
        "KEYTAB-7",
        "XAK-8",
        "OCP-9",
        "DD-10",
        "TAB-11",
        "SIGN-12",
        "SESS-13",
    ];
    let args = json!({"http_auth": ["elastic", values[0]], "basic_auth": values[1],
        "Cookie": values[2], "keytab": values[3], "X-Auth-Key": values[4],
        "Ocp-Apim-Subscription-Key": values[5], "DD-APPLICATION-KEY": values[6],
        "X-Tableau-Auth": values[7], "signingKey": values[8], "sessionId": values[9]});
    let a = post(
        &gw,
        SEARCH,
        es("es-names", "https://es.internal:9200", args),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text());
    let received = emu.everything_received();
    for v in values {
        assert!(
            !contains(&received, v.as_bytes()),
            "{v} reached the upstream"
        );
        assert!(!a.text().contains(v), "{v} came back: {}", a.text());
    }

    // Held upstream in clear from before the gateway: a person sees neither.
    emu.seed(
        "services/searchServices",
        es(
            "es-legacy",
            "https://elastic:LEGACYPW-14@es:9200",
            json!({"http_auth": "LEGACY-15", "note": "proxy at http://u:LEGACYPW-16@proxy:3128",
            "hosts": ["https://es-1:9200", "https://u:LEGACYPW-17@es-2:9200"]}),
        ),
    );
    let a = call(
        &gw,
        Method::GET,
        &format!("{SEARCH}/name/es-legacy"),
        "application/json",
        "",
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    for v in ["LEGACYPW-14", "LEGACY-15", "LEGACYPW-16", "LEGACYPW-17"] {
        assert!(!a.text().contains(v), "{v} shown to a person: {}", a.text());
    }
    let args = &a.json()["connection"]["config"]["connectionArguments"];
    assert_eq!(args["http_auth"], "*********");
    assert_eq!(
        args["hosts"][0], "https://es-1:9200",
        "a URL without a password is shown"
    );
}

/// OpenMetadata's recursive hard delete of a service deletes its ingestion pipelines without
/// a request for them passing the gateway: the gateway deletes their secrets (and owner
/// markers) with the service's, so none is left behind for a later entity of the same name.
#[tokio::test]
async fn a_recursive_hard_delete_of_a_service_takes_its_pipelines_secrets_too() {
    let (emu, gw, mem) = mem_stack().await;
    const PIPES: &str = "/api/v1/services/ingestionPipelines";
    let service = mysql(&gw, "cascade-svc", "svc-pw-2").await;
    let body = json!({"name": "dbt2", "pipelineType": "dbt", "airflowConfig": {},
        "service": {"id": service, "type": "databaseService"},
        "sourceConfig": {"config": {"type": "DBT", "dbtConfigSource": {"dbtConfigType": "cloud",
            "dbtCloudAuthToken": "DBT-token-88", "dbtCloudAccountId": "1"}}}});
    let a = post(&gw, PIPES, body).await;
    assert_eq!(a.status, 201, "{}", a.text());
    let root = "/openmetadata/pipeline/dbt2";
    assert!(!mem.list(&format!("{root}/")).await.unwrap().is_empty());
    let a = call(
        &gw,
        Method::DELETE,
        &format!("{DB}/{service}?hardDelete=true&recursive=true"),
        "application/json",
        "",
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(
        emu.entity("services/ingestionPipelines", "dbt2").is_none(),
        "the emulator cascades"
    );
    assert_eq!(
        mem.list(&format!("{root}/")).await.unwrap(),
        Vec::<String>::new()
    );
    assert!(mem.get(&pw_id("cascade-svc")).await.unwrap().is_none());
}

/// Free-form option names that differ only by case, `_` or `-` get one secret id: refused,
/// rather than one value silently standing for both (audit 7). Nothing reaches the upstream.
#[tokio::test]
async fn two_fields_of_one_entity_sharing_a_secret_id_are_refused() {
    let (emu, gw, mem) = mem_stack().await;
    let body = |args: Value| {
        json!({"name": "twins", "serviceType": "Mysql", "connection": {"config": {"type": "Mysql",
            "username": "u", "hostPort": "db:3306", "authType": {"password": "pw-twins"},
            "connectionArguments": args}}})
    };
    for args in [
        json!({"api_key": "VALUE-ONE", "apiKey": "VALUE-TWO"}),
        json!({"API-KEY": "VALUE-ONE", "api_key": "VALUE-ONE"}),
    ] {
        let a = post(&gw, DB, body(args.clone())).await;
        assert_eq!(a.status, 422, "{args}: {}", a.text());
        assert!(
            a.text().contains("would share the secret id"),
            "{}",
            a.text()
        );
        assert!(!contains(&emu.everything_received(), b"VALUE-ONE"));
        assert!(mem
            .list("/openmetadata/database/twins/")
            .await
            .unwrap()
            .is_empty());
    }
    // Names that make different ids, or a second one left empty, are fine.
    let a = post(
        &gw,
        DB,
        body(json!({"api_key": "VALUE-ONE", "apiKey": null, "api_secret": "S"})),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text());
}

/// A recursive hard delete takes only the pipelines of the entity deleted (probe 7): not
/// those of a service of another kind that shares its name, and none for a bot (or bot user)
/// named like a service. The pipeline's secrets stay while the pipeline does.
#[tokio::test]
async fn a_recursive_hard_delete_takes_only_its_own_entitys_pipelines_secrets() {
    let (emu, gw, mem) = mem_stack().await;
    const PIPES: &str = "/api/v1/services/ingestionPipelines";
    let service = mysql(&gw, "shared-name", "svc-pw-3").await;
    let body = json!({"name": "dbt3", "pipelineType": "dbt", "airflowConfig": {},
        "service": {"id": service, "type": "databaseService"},
        "sourceConfig": {"config": {"type": "DBT", "dbtConfigSource": {"dbtConfigType": "cloud",
            "dbtCloudAuthToken": "DBT-token-89", "dbtCloudAccountId": "1"}}}});
    let a = post(&gw, PIPES, body).await;
    assert_eq!(a.status, 201, "{}", a.text());
    let token = "/openmetadata/pipeline/dbt3/sourceconfig/config/dbtconfigsource/dbtcloudauthtoken";
    // A dashboard service and a bot named like the database service.
    let dash = post(
        &gw,
        "/api/v1/services/dashboardServices",
        json!({"name": "shared-name", "serviceType": "Looker",
            "connection": {"config": {"type": "Looker", "hostPort": "https://l"}}}),
    )
    .await;
    assert_eq!(dash.status, 201, "{}", dash.text());
    let dash = dash.json()["id"].as_str().expect("id").to_string();
    let user = post(
        &gw,
        "/api/v1/users",
        json!({"name": "shared-name", "email": "s@x.org", "isBot": true,
            "authenticationMechanism": {"authType": "JWT",
                "config": {"JWTToken": "jwt-of-shared", "JWTTokenExpiry": "Unlimited"}}}),
    )
    .await;
    assert_eq!(user.status, 201, "{}", user.text());
    let bot = post(
        &gw,
        "/api/v1/bots",
        json!({"name": "shared-name", "botUser": "shared-name"}),
    )
    .await;
    assert_eq!(bot.status, 201, "{}", bot.text());
    for path in [
        format!("/api/v1/services/dashboardServices/{dash}?hardDelete=true&recursive=true"),
        "/api/v1/bots/name/shared-name?hardDelete=true&recursive=true".to_string(),
    ] {
        let a = call(&gw, Method::DELETE, &path, "application/json", "").await;
        assert_eq!(a.status, 200, "{path}: {}", a.text());
        assert!(emu.entity("services/ingestionPipelines", "dbt3").is_some());
        assert_eq!(
            mem.get(token).await.unwrap().as_deref(),
            Some("DBT-token-89"),
            "{path} took another entity's pipeline's secret"
        );
    }
    // The bot's user's own secret went with it.
    assert!(mem
        .list("/openmetadata/bot/shared-name/")
        .await
        .unwrap()
        .is_empty());
}

/// Generated steps around an orphan: a service whose password the gateway stored is deleted
/// without the gateway seeing it, then someone re-creates the name and tries, in any order,
/// the mask and the reference by POST, PUT and JSON Patch, a reference planted in its
/// description, an empty password, and a value of their own. Whatever they do, the old
/// password is never what the store holds behind the reference the new service has (so no
/// bot resolves it for them). Fails on the gateway before the fourth probe's fix.
#[test]
fn generated_attempts_never_inherit_an_orphaned_secret() {
    use proptest::prelude::*;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (emu, gw, mem) = rt.block_on(mem_stack());
    let n = std::sync::atomic::AtomicUsize::new(0);
    let step = prop_oneof![
        Just("post-mask"),
        Just("post-ref"),
        Just("put-mask"),
        Just("put-ref"),
        Just("plant"),
        Just("patch-mask"),
        Just("patch-ref"),
        Just("put-empty"),
        Just("put-own"),
    ];
    let cases = std::env::var("OMSP_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    proptest!(ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() },
        |(steps in proptest::collection::vec(step, 1..5))| {
        let r: Result<(), String> = rt.block_on(async {
            let name = format!("orph{}", n.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
            let old = format!("OLD-pw-{name}");
            let id = mysql(&gw, &name, &old).await;
            let pw = pw_id(&name);
            let deleted = send(&client(), Method::DELETE,
                &format!("{}{DB}/{id}?hardDelete=true", emu.url()), &[], bytes::Bytes::new()).await;
            assert_eq!(deleted.status, 200);
            let reference = format!("secret:{pw}");
            let svc = |password: &str, description: &str| json!({"name": name, "serviceType": "Mysql",
                "description": description, "connection": {"config": {"type": "Mysql", "username": "u",
                "hostPort": "attacker:3306", "authType": {"password": password}}}});
            for s in &steps {
                let current = emu.entity("services/databaseServices", &name);
                let patch = |v: &str| json!([{"op": "add", "path": "/connection/config/authType/password", "value": v}]);
                match (*s, &current) {
                    ("post-mask", _) => { post(&gw, DB, svc("*********", "")).await; }
                    ("post-ref", _) => { post(&gw, DB, svc(&reference, "")).await; }
                    ("put-mask", _) => { call(&gw, Method::PUT, DB, "application/json", svc("*********", "").to_string()).await; }
                    ("put-ref", _) => { call(&gw, Method::PUT, DB, "application/json", svc(&reference, "").to_string()).await; }
                    ("plant", _) => { call(&gw, Method::PUT, DB, "application/json", svc("", &reference).to_string()).await; }
                    ("put-empty", _) => { call(&gw, Method::PUT, DB, "application/json", svc("", "").to_string()).await; }
                    ("put-own", _) => { call(&gw, Method::PUT, DB, "application/json", svc(&format!("own-{name}"), "").to_string()).await; }
                    (p, Some(e)) => {
                        let v = if p == "patch-mask" { "*********" } else { reference.as_str() };
                        json_patch(&gw, &format!("{DB}/{}", e["id"].as_str().unwrap_or_default()), patch(v)).await;
                    }
                    (_, None) => {}
                }
                let held = emu.entity("services/databaseServices", &name);
                let points_at = held.as_ref()
                    .and_then(|e| e.pointer("/connection/config/authType/password"))
                    .and_then(Value::as_str) == Some(reference.as_str());
                let behind = mem.get(&pw).await.expect("store");
                if points_at && behind.as_deref() == Some(old.as_str()) {
                    return Err(format!("after {steps:?} the new {name} refers to the orphaned password"));
                }
            }
            Ok(())
        });
        prop_assert!(r.is_ok(), "{}", r.err().unwrap_or_default());
    });
}
