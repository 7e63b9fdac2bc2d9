//! The write path: for every connection type of every ruled kind, no secret value written
//! through POST, PUT or PATCH reaches the upstream in any form, and each field the upstream
//! got is the exact expected reference. Plus the PATCH op corpus, test-connection workflows,
//! deletes, store outages, upstream refusals and concurrent writers.

mod support;

use std::process::{Command, Stdio};

use bytes::Bytes;
use http::Method;
use om_secrets_proxy::secrets::SecretStore;
use proptest::prelude::*;
use serde_json::{json, Value};
use support::jwt;
use support::*;

// === an independent model of the ids and bodies ===

#[derive(Clone, Debug)]
enum St {
    K(String),
    I(usize),
}

fn steps_of(path: &str, rng: &mut fastrand::Rng) -> Vec<St> {
    let mut out = Vec::new();
    let rest = path.strip_prefix('$').expect("$");
    for part in rest.split('.').filter(|p| !p.is_empty()) {
        let (name, arr) = match part.strip_suffix("[*]") {
            Some(n) => (n, true),
            None => (part, false),
        };
        if name == "*" {
            out.push(St::K(format!("key{}", rng.u8(0..9))));
        } else {
            out.push(St::K(name.to_string()));
        }
        if arr {
            out.push(St::I(1));
        }
    }
    out
}

fn set(doc: &mut Value, steps: &[St], v: Value) {
    if steps.is_empty() {
        *doc = v;
        return;
    }
    match &steps[0] {
        St::K(k) => {
            if !doc.is_object() {
                *doc = json!({});
            }
            let m = doc.as_object_mut().expect("object");
            set(m.entry(k.clone()).or_insert(Value::Null), &steps[1..], v);
        }
        St::I(i) => {
            if !doc.is_array() {
                *doc = json!([]);
            }
            let a = doc.as_array_mut().expect("array");
            while a.len() <= *i {
                a.push(json!({"filler": true}));
            }
            set(&mut a[*i], &steps[1..], v);
        }
    }
}

fn pointer(steps: &[St]) -> String {
    steps
        .iter()
        .map(|s| match s {
            St::K(k) => format!("/{}", k.replace('~', "~0").replace('/', "~1")),
            St::I(i) => format!("/{i}"),
        })
        .collect()
}

/// The id OpenMetadata would give, computed here from the spec's rules.
fn expected_id(root_type: &str, name: &str, base: usize, steps: &[St]) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "_-".contains(c) {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    let mut id = format!("/openmetadata/{root_type}/{}", clean(name));
    for s in &steps[base..] {
        match s {
            St::K(k) => {
                id.push('/');
                id.push_str(&clean(&k.replace(['_', '-'], "")));
            }
            St::I(i) => id.push_str(&format!("/{i}")),
        }
    }
    id
}

struct Kind {
    inventory: &'static str,
    collection: &'static str,
    root_type: &'static str,
    base: usize,
}

const KINDS: &[Kind] = &[
    Kind {
        inventory: "databaseService",
        collection: "/api/v1/services/databaseServices",
        root_type: "database",
        base: 2,
    },
    Kind {
        inventory: "dashboardService",
        collection: "/api/v1/services/dashboardServices",
        root_type: "dashboard",
        base: 2,
    },
    Kind {
        inventory: "messagingService",
        collection: "/api/v1/services/messagingServices",
        root_type: "messaging",
        base: 2,
    },
    Kind {
        inventory: "pipelineService",
        collection: "/api/v1/services/pipelineServices",
        root_type: "pipeline",
        base: 2,
    },
    Kind {
        inventory: "mlmodelService",
        collection: "/api/v1/services/mlmodelServices",
        root_type: "mlmodel",
        base: 2,
    },
    Kind {
        inventory: "storageService",
        collection: "/api/v1/services/storageServices",
        root_type: "storage",
        base: 2,
    },
    Kind {
        inventory: "searchService",
        collection: "/api/v1/services/searchServices",
        root_type: "search",
        base: 2,
    },
    Kind {
        inventory: "metadataService",
        collection: "/api/v1/services/metadataServices",
        root_type: "metadata",
        base: 2,
    },
    Kind {
        inventory: "apiService",
        collection: "/api/v1/services/apiServices",
        root_type: "api",
        base: 2,
    },
    Kind {
        inventory: "driveService",
        collection: "/api/v1/services/driveServices",
        root_type: "drive",
        base: 2,
    },
    Kind {
        inventory: "llmService",
        collection: "/api/v1/services/llmServices",
        root_type: "llm",
        base: 2,
    },
    Kind {
        inventory: "mcpService",
        collection: "/api/v1/services/mcpServices",
        root_type: "mcp",
        base: 2,
    },
    Kind {
        inventory: "securityService",
        collection: "/api/v1/services/securityServices",
        root_type: "security",
        base: 2,
    },
    Kind {
        inventory: "ingestionPipeline",
        collection: "/api/v1/services/ingestionPipelines",
        root_type: "pipeline",
        base: 0,
    },
    Kind {
        inventory: "workflow",
        collection: "/api/v1/automations/workflows",
        root_type: "workflow",
        base: 0,
    },
    Kind {
        inventory: "user (bot user)",
        collection: "/api/v1/users",
        root_type: "bot",
        base: 1,
    },
];

/// The 2.0 inventory, from `$OMSP_INVENTORY_DIR` or `../shared/data`.
fn inventory() -> Value {
    let dir = std::env::var_os("OMSP_INVENTORY_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    let p = dir.join("openmetadata-secret-fields.json");
    serde_json::from_str(&std::fs::read_to_string(p).expect("inventory")).expect("json")
}

fn random_secret(rng: &mut fastrand::Rng) -> String {
    const CHARS: &[char] = &[
        'a', 'Z', '9', '"', '\\', '/', ' ', 'é', '✓', '+', '=', '<', '\'', '$', '{', 'q', 'X', '7',
    ];
    let n = rng.usize(14..40);
    let mut s = String::from("v");
    for _ in 0..n {
        s.push(CHARS[rng.usize(..CHARS.len())]);
    }
    s
}

/// One case: every type group of every kind through POST, PUT and PATCH.
async fn every_type_through_every_write(emu: &Emulator, gw: &Gw, seed: u64) {
    let inv = inventory();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut written = 0usize;
    let mut groups = 0;
    for kind in KINDS {
        for (group, entries) in inv[kind.inventory].as_object().expect("kind").iter() {
            let entries = entries.as_array().expect("entries");
            if entries.is_empty() {
                continue;
            }
            groups += 1;
            let name = format!(
                "{} {}.{}",
                kind.root_type,
                group.replace('/', "-"),
                rng.u32(..)
            );
            let paths: Vec<Vec<St>> = entries
                .iter()
                .map(|e| steps_of(e["path"].as_str().expect("path"), &mut rng))
                .collect();
            let mut body = json!({"name": name, "description": "property test"});
            if kind.base == 2 {
                set(
                    &mut body,
                    &[
                        St::K("connection".into()),
                        St::K("config".into()),
                        St::K("type".into()),
                    ],
                    json!(group),
                );
            }
            if kind.inventory == "ingestionPipeline" {
                // A pipeline belongs to a service (its identity is the service's FQN + name).
                let svc = emu
                    .entity("services/databaseServices", "prop-svc")
                    .unwrap_or_else(|| {
                        emu.seed(
                            "services/databaseServices",
                            json!({"name": "prop-svc", "serviceType": "Mysql"}),
                        )
                    });
                body["service"] = json!({"id": svc["id"], "type": "databaseService"});
            }
            if kind.inventory.starts_with("user") {
                body["isBot"] = json!(true);
                body["email"] = json!(format!("{}@x.org", rng.u32(..)));
            }
            for round in 0..3 {
                let mut values = Vec::new();
                let (method, payload, ct) = if round < 2 {
                    let mut doc = body.clone();
                    for p in &paths {
                        let v = random_secret(&mut rng);
                        set(&mut doc, p, json!(v));
                        values.push(v);
                    }
                    (
                        if round == 0 {
                            Method::POST
                        } else {
                            Method::PUT
                        },
                        doc.to_string(),
                        "application/json",
                    )
                } else {
                    let ops: Vec<Value> = paths
                        .iter()
                        .map(|p| {
                            let v = random_secret(&mut rng);
                            values.push(v.clone());
                            json!({"op": "replace", "path": pointer(p), "value": v})
                        })
                        .collect();
                    (
                        Method::PATCH,
                        Value::Array(ops).to_string(),
                        "application/json-patch+json",
                    )
                };
                let path = if method == Method::PATCH {
                    let e = emu
                        .entity(&kind.collection["/api/v1/".len()..], &name)
                        .expect("entity exists");
                    format!("{}/{}", kind.collection, e["id"].as_str().expect("id"))
                } else {
                    kind.collection.to_string()
                };
                emu.clear_recorded();
                let a = call(gw, method.clone(), &path, ct, payload).await;
                let received = emu.everything_received();
                for v in &values {
                    for form in leak_forms(v) {
                        assert!(
                            !contains(&received, &form),
                            "{} {group} {method}: a secret reached the upstream",
                            kind.inventory
                        );
                    }
                }
                assert!(
                    a.status < 300,
                    "{} {group} {method}: {} {}",
                    kind.inventory,
                    a.status,
                    a.text()
                );
                let stored = emu
                    .entity(&kind.collection["/api/v1/".len()..], &name)
                    .expect("stored");
                for p in &paths {
                    let got = stored
                        .pointer(&pointer(p))
                        .and_then(Value::as_str)
                        .unwrap_or("<missing>");
                    assert_eq!(
                        got,
                        format!(
                            "secret:{}",
                            expected_id(kind.root_type, &name, kind.base, p)
                        ),
                        "{} {group} {method} {}",
                        kind.inventory,
                        pointer(p)
                    );
                }
                // A bot reads back exactly what was written last.
                if round == 2 {
                    let auth = format!("Bearer {}", jwt::bot());
                    let back = send(
                        &client(),
                        Method::GET,
                        &gw.url(&format!("{}/name/{}", kind.collection, urlencode(&name))),
                        &[("authorization", &auth)],
                        Bytes::new(),
                    )
                    .await;
                    let back = back.json();
                    for (p, v) in paths.iter().zip(&values) {
                        assert_eq!(
                            back.pointer(&pointer(p)).and_then(Value::as_str),
                            Some(v.as_str()),
                            "{} {group} read back",
                            kind.inventory
                        );
                    }
                }
                written += values.len();
            }
        }
    }
    assert!(groups > 100, "only {groups} type groups exercised");
    assert!(written > 1000, "only {written} values written");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn no_secret_of_any_connection_type_reaches_the_upstream() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (emu, gw) = rt.block_on(stack());
    emu.set_jwks(jwt::jwks());
    proptest!(ProptestConfig { cases: 3, failure_persistence: None, ..ProptestConfig::default() }, |(seed in any::<u64>())| {
        rt.block_on(every_type_through_every_write(&emu, &gw, seed));
    });
}

// === the PATCH op corpus ===

const DB: &str = "/api/v1/services/databaseServices";
const ID_PW: &str = "/openmetadata/database/patchy/authtype/password";

fn mysql(name: &str, pw: &str) -> Value {
    json!({"name": name, "serviceType": "Mysql", "description": "d",
           "connection": {"config": {"type": "Mysql", "username": "u", "authType": {"password": pw}}}})
}

async fn patch(gw: &Gw, id: &str, ops: Value) -> Answer {
    call(
        gw,
        Method::PATCH,
        &format!("{DB}/{id}"),
        "application/json-patch+json",
        ops.to_string(),
    )
    .await
}

async fn created(gw: &Gw, name: &str, pw: &str) -> String {
    let a = call(
        gw,
        Method::POST,
        DB,
        "application/json",
        mysql(name, pw).to_string(),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text());
    a.json()["id"].as_str().expect("id").to_string()
}

#[tokio::test]
async fn patch_add_and_replace_at_a_secret_path_store_the_value() {
    let (emu, gw, mem) = mem_stack().await;
    let id = created(&gw, "patchy", "p0").await;
    for (op, v) in [("replace", "patched-1"), ("add", "patched-2")] {
        let a = patch(
            &gw,
            &id,
            json!([{"op": op, "path": "/connection/config/authType/password", "value": v}]),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(mem.get(ID_PW).await.unwrap().as_deref(), Some(v));
        assert!(!contains(&emu.everything_received(), v.as_bytes()));
    }
}

#[tokio::test]
async fn patch_replacing_an_ancestor_strips_the_secrets_inside_its_value() {
    let (emu, gw, mem) = mem_stack().await;
    let id = created(&gw, "patchy", "p0").await;
    let auth = json!({"password": "deep-value"});
    let config = json!({"type": "Mysql", "authType": auth});
    let connection = json!({"config": config});
    for (path, value) in [
        ("/connection", connection),
        ("/connection/config", config),
        ("/connection/config/authType", auth),
    ] {
        let a = patch(
            &gw,
            &id,
            json!([{"op": "replace", "path": path, "value": value}]),
        )
        .await;
        assert_eq!(a.status, 200, "{path}: {}", a.text());
        assert_eq!(
            mem.get(ID_PW).await.unwrap().as_deref(),
            Some("deep-value"),
            "{path}"
        );
    }
    assert!(!contains(&emu.everything_received(), b"deep-value"));
}

#[tokio::test]
async fn patch_below_a_secret_path_is_refused_without_forwarding() {
    let (emu, gw, _mem) = mem_stack().await;
    let id = created(&gw, "patchy", "p0").await;
    emu.clear_recorded();
    let a = patch(
        &gw,
        &id,
        json!([{"op": "add", "path": "/connection/config/authType/password/x", "value": "below"}]),
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.text());
    assert!(emu.recorded().iter().all(|r| r.method != Method::PATCH));
}

#[tokio::test]
async fn patch_remove_of_a_secret_path_deletes_the_stored_secret() {
    let (_emu, gw, mem) = mem_stack().await;
    let id = created(&gw, "patchy", "p0").await;
    assert!(mem.get(ID_PW).await.unwrap().is_some());
    let a = patch(
        &gw,
        &id,
        json!([{"op": "remove", "path": "/connection/config/authType"}]),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(mem.get(ID_PW).await.unwrap(), None);
}

#[tokio::test]
async fn patch_copy_and_move_out_of_a_secret_are_refused_and_the_value_stays_stored() {
    let (emu, gw, mem) = mem_stack().await;
    let id = created(&gw, "patchy", "copied-value").await;
    emu.clear_recorded();
    // Whatever the field holds (here a reference), it may not land in a plain field.
    let a = patch(&gw, &id, json!([{"op": "copy", "from": "/connection/config/authType/password", "path": "/description"}])).await;
    assert_eq!(a.status, 422, "{}", a.text());
    let a = patch(&gw, &id, json!([{"op": "move", "from": "/connection/config/authType/password", "path": "/connection/config/authType/old"}])).await;
    assert_eq!(a.status, 422, "{}", a.text());
    assert!(emu.recorded().iter().all(|r| r.method != Method::PATCH));
    assert!(!contains(&emu.everything_received(), b"copied-value"));
    assert_eq!(
        mem.get(ID_PW).await.unwrap().as_deref(),
        Some("copied-value")
    );
}

#[tokio::test]
async fn patch_test_ops_on_secrets_get_one_answer_whatever_the_guess() {
    let (emu, gw, mem) = mem_stack().await;
    let id = created(&gw, "patchy", "right-value").await;
    emu.clear_recorded();
    let mut answers = Vec::new();
    for guess in [
        "right-value",
        "wrong-value",
        "secret:/openmetadata/database/patchy/authtype/password",
    ] {
        for path in [
            "/connection/config/authType/password",
            "/connection/config/authType",
            "/connection",
        ] {
            let a = patch(
                &gw,
                &id,
                json!([
                {"op": "test", "path": path, "value": guess},
                {"op": "replace", "path": "/connection/config/authType/password", "value": "should-not-land"}]),
            )
            .await;
            answers.push((a.status, a.text()));
        }
    }
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    assert_eq!(answers[0].0, 422);
    assert!(emu.recorded().iter().all(|r| r.method != Method::PATCH));
    let all = emu.everything_received();
    for v in [&b"right-value"[..], b"wrong-value", b"should-not-land"] {
        assert!(!contains(&all, v));
    }
    assert_eq!(
        mem.get(ID_PW).await.unwrap().as_deref(),
        Some("right-value")
    );
}

#[tokio::test]
async fn merge_patch_bodies_are_applied_locally_and_forwarded_as_json_patch() {
    let (emu, gw, mem) = mem_stack().await;
    let id = created(&gw, "patchy", "p0").await;
    let a = call(
        &gw,
        Method::PATCH,
        &format!("{DB}/{id}"),
        "application/merge-patch+json",
        json!({"description": "d", "connection": {"config": {"authType": {"password": "merged-value"}}}}).to_string(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(!contains(&emu.everything_received(), b"merged-value"));
    assert_eq!(
        mem.get(ID_PW).await.unwrap().as_deref(),
        Some("merged-value")
    );
    let stored = emu.entity("services/databaseServices", "patchy").unwrap();
    assert_eq!(stored["description"], "d");
    assert_eq!(
        stored["connection"]["config"]["authType"]["password"],
        format!("secret:{ID_PW}")
    );
}

#[tokio::test]
async fn malformed_patches_are_400() {
    let (emu, gw, _mem) = mem_stack().await;
    let id = created(&gw, "patchy", "p0").await;
    emu.clear_recorded();
    for body in [
        json!([{"op": "replace"}]),
        json!([{"op": "explode", "path": "/x"}]),
        json!("string"),
        json!([{"op": "add", "path": "no-slash", "value": 1}]),
    ] {
        let a = patch(&gw, &id, body.clone()).await;
        assert_eq!(a.status, 400, "{body}: {}", a.text());
    }
    assert!(emu.recorded().iter().all(|r| r.method != Method::PATCH));
}

// === workflows, deletes, failures, concurrency ===

#[tokio::test]
async fn a_test_connection_workflow_fills_masks_from_the_named_service() {
    let (emu, gw, _mem) = mem_stack().await;
    created(&gw, "mysql-prod", "prod-value").await;
    let wf = json!({"name": "test-conn-1", "workflowType": "TEST_CONNECTION", "request": {
        "serviceName": "mysql-prod", "serviceType": "Database", "connectionType": "Mysql",
        "connection": {"config": {"type": "Mysql", "username": "u", "authType": {"password": "*********"}}}}});
    let a = call(
        &gw,
        Method::POST,
        "/api/v1/automations/workflows",
        "application/json",
        wf.to_string(),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text());
    let stored = emu.entity("automations/workflows", "test-conn-1").unwrap();
    // The service's value is copied under the workflow's own id: a workflow's fields only
    // ever refer to its own secrets.
    assert_eq!(
        stored["request"]["connection"]["config"]["authType"]["password"],
        "secret:/openmetadata/workflow/test-conn-1/request/connection/config/authtype/password"
    );
    // A bot running the test connection gets the service's value.
    let auth = format!("Bearer {}", jwt::bot());
    let back = send(
        &client(),
        Method::GET,
        &gw.url("/api/v1/automations/workflows/name/test-conn-1"),
        &[("authorization", &auth)],
        Bytes::new(),
    )
    .await;
    assert_eq!(
        back.json()["request"]["connection"]["config"]["authType"]["password"],
        "prod-value"
    );
    // Without a service to fill from, a mask is refused.
    let mut orphan = wf.clone();
    orphan["name"] = json!("test-conn-2");
    orphan["request"]["serviceName"] = json!("no-such-service");
    let a = call(
        &gw,
        Method::POST,
        "/api/v1/automations/workflows",
        "application/json",
        orphan.to_string(),
    )
    .await;
    assert_eq!(a.status, 422);
}

#[tokio::test]
async fn hard_delete_removes_the_secrets_and_soft_delete_keeps_them() {
    let (_emu, gw, mem) = mem_stack().await;
    let id = created(&gw, "patchy", "p0").await;
    let a = call(
        &gw,
        Method::DELETE,
        &format!("{DB}/{id}"),
        "application/json",
        String::new(),
    )
    .await;
    assert_eq!(a.status, 200);
    assert!(
        mem.get(ID_PW).await.unwrap().is_some(),
        "soft delete keeps the secret for a restore"
    );
    let a = call(
        &gw,
        Method::DELETE,
        &format!("{DB}/{id}?hardDelete=true&recursive=true"),
        "application/json",
        String::new(),
    )
    .await;
    assert_eq!(a.status, 200);
    assert!(mem
        .list("/openmetadata/database/patchy/")
        .await
        .unwrap()
        .is_empty());
}

/// OpenMetadata deletes a bot's user with the bot, so the gateway never sees a request for
/// the user: a bot's hard delete through the gateway deletes the user's secrets; a soft
/// delete, a refused hard delete or another bot's keep them.
#[tokio::test]
async fn a_bots_hard_delete_deletes_its_users_secrets() {
    let (emu, gw, mem) = mem_stack().await;
    let user = |name: &str| {
        json!({"name": name, "email": format!("{name}@x.org"), "isBot": true,
            "authenticationMechanism": {"authType": "JWT",
                "config": {"JWTToken": format!("jwt-of-{name}"), "JWTTokenExpiry": "Unlimited"}}})
    };
    for name in ["doomed-bot", "other-bot"] {
        let a = call(
            &gw,
            Method::POST,
            "/api/v1/users",
            "application/json",
            user(name).to_string(),
        )
        .await;
        assert_eq!(a.status, 201, "{}", a.text());
        let a = call(
            &gw,
            Method::POST,
            "/api/v1/bots",
            "application/json",
            json!({"name": name, "botUser": name}).to_string(),
        )
        .await;
        assert_eq!(a.status, 201, "{}", a.text());
    }
    let doomed = "/openmetadata/bot/doomed-bot/config/jwttoken";
    let other = "/openmetadata/bot/other-bot/config/jwttoken";
    assert_eq!(
        mem.get(doomed).await.unwrap().as_deref(),
        Some("jwt-of-doomed-bot")
    );
    let bot_id = emu.entity("bots", "doomed-bot").expect("bot")["id"]
        .as_str()
        .expect("id")
        .to_string();
    // Soft: the user can be restored, so its secret stays.
    let a = call(
        &gw,
        Method::DELETE,
        &format!("/api/v1/bots/{bot_id}"),
        "application/json",
        String::new(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(mem.get(doomed).await.unwrap().is_some());
    let hard_delete = || {
        call(
            &gw,
            Method::DELETE,
            "/api/v1/bots/name/doomed-bot?hardDelete=true",
            "application/json",
            String::new(),
        )
    };
    // Refused upstream: nothing is deleted.
    emu.fail_writes_with(Some(500));
    assert_eq!(hard_delete().await.status, 500);
    assert!(mem.get(doomed).await.unwrap().is_some());
    emu.fail_writes_with(None);
    let a = hard_delete().await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(
        emu.entity("users", "doomed-bot").is_none(),
        "the emulator deletes the user with its bot"
    );
    assert!(mem
        .list("/openmetadata/bot/doomed-bot/")
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        mem.get(other).await.unwrap().as_deref(),
        Some("jwt-of-other-bot")
    );
}

/// With `db` (OpenMetadata keeps values as Fernet tokens) the edit flow sends the mask back:
/// the token OpenMetadata holds for the field is kept, whichever mask was sent; a mask for a
/// field OpenMetadata holds nothing in is refused.
#[tokio::test]
async fn with_db_a_mask_sent_back_keeps_the_token_openmetadata_holds() {
    let emu = Emulator::start().await;
    let mut cfg = config_for(&emu.url());
    cfg.secrets.provider = om_secrets_proxy::config::Provider::parse("db").expect("db");
    let key = om_secrets_proxy::secrets::fernet::FernetKeys::generate_key();
    cfg.fernet.keys = vec![key.clone()];
    let keys = om_secrets_proxy::secrets::fernet::FernetKeys::new(&[key]).unwrap();
    let gw = start_gateway(cfg).await;
    let held = || {
        emu.entity("services/databaseServices", "db-edit")
            .expect("entity")["connection"]["config"]["authType"]["password"]
            .as_str()
            .expect("password")
            .to_string()
    };
    let a = call(
        &gw,
        Method::POST,
        DB,
        "application/json",
        mysql("db-edit", "real-pw").to_string(),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text());
    let token = held();
    let plain = keys
        .decrypt(token.strip_prefix("fernet:").expect("a Fernet token"))
        .unwrap();
    assert_eq!(plain, "real-pw");
    for mask in ["*********", "**********"] {
        let mut body = mysql("db-edit", mask);
        body["description"] = json!(format!("edited with {mask}"));
        let a = call(&gw, Method::PUT, DB, "application/json", body.to_string()).await;
        assert_eq!(a.status, 200, "{mask}: {}", a.text());
        assert_eq!(
            held(),
            token,
            "{mask}: the token OpenMetadata holds is kept"
        );
    }
    let a = call(
        &gw,
        Method::PUT,
        DB,
        "application/json",
        mysql("db-new", "*********").to_string(),
    )
    .await;
    assert_eq!(a.status, 422, "{}", a.text());
    assert!(emu.entity("services/databaseServices", "db-new").is_none());
}

#[tokio::test]
async fn an_upstream_refusal_restores_the_previous_value_and_removes_new_ones() {
    let (emu, gw, mem) = mem_stack().await;
    created(&gw, "patchy", "v1").await;
    emu.fail_writes_with(Some(500));
    let a = call(
        &gw,
        Method::PUT,
        DB,
        "application/json",
        mysql("patchy", "v2").to_string(),
    )
    .await;
    assert_eq!(a.status, 500);
    assert_eq!(mem.get(ID_PW).await.unwrap().as_deref(), Some("v1"));
    let a = call(
        &gw,
        Method::POST,
        DB,
        "application/json",
        mysql("fresh", "new").to_string(),
    )
    .await;
    assert_eq!(a.status, 500);
    assert!(
        mem.list("/openmetadata/database/fresh/")
            .await
            .unwrap()
            .is_empty(),
        "nothing left behind"
    );
}

#[tokio::test]
async fn a_store_outage_answers_503_and_forwards_nothing() {
    let (emu, gw, mem) = mem_stack().await;
    emu.clear_recorded();
    mem.set_down(true);
    let a = call(
        &gw,
        Method::POST,
        DB,
        "application/json",
        mysql("down", "never-sent").to_string(),
    )
    .await;
    assert_eq!(a.status, 503);
    assert_eq!(a.json()["code"], 503);
    assert!(!a.text().contains("never-sent"));
    assert!(emu.recorded().is_empty());
}

#[tokio::test]
async fn stopping_moto_mid_session_answers_503_and_forwards_nothing() {
    let Ok(py) = std::env::var("OMSP_TEST_PYTHON") else {
        assert!(
            std::env::var_os("OMSP_REQUIRE_EXTERNAL").is_none(),
            "OMSP_TEST_PYTHON not set"
        );
        return;
    };
    let moto_bin = std::path::Path::new(&py).with_file_name("moto_server");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut moto = Command::new(&moto_bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let emu = Emulator::start().await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n[rules]\ndir = \"{}/rules\"\n[secrets_manager]\nprovider = \"managed-aws\"\nretry_max = 0\n[secrets_manager.parameters]\nregion = \"us-east-1\"\naccess_key_id = \"t\"\nsecret_access_key = \"t\"\nendpoint_url = \"http://127.0.0.1:{port}\"\n[fernet]\nkey = \"{}\"\n",
        emu.url(), env!("CARGO_MANIFEST_DIR"), om_secrets_proxy::secrets::fernet::FernetKeys::generate_key()
    );
    let cfg = om_secrets_proxy::config::Config::from_toml_str(&text, None, &|_| None).unwrap();
    let gw = start_gateway(cfg).await;
    let a = call(
        &gw,
        Method::POST,
        DB,
        "application/json",
        mysql("up", "while-up").to_string(),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text());
    moto.kill().unwrap();
    moto.wait().unwrap();
    emu.clear_recorded();
    let a = call(
        &gw,
        Method::PUT,
        DB,
        "application/json",
        mysql("up", "while-down").to_string(),
    )
    .await;
    assert_eq!(a.status, 503, "{}", a.text());
    assert!(emu.recorded().is_empty(), "nothing reached the upstream");
    assert!(!contains(&emu.everything_received(), b"while-down"));
}

#[tokio::test]
async fn concurrent_writers_leave_store_and_upstream_agreeing_on_the_last_one() {
    let (emu, gw, mem) = mem_stack().await;
    created(&gw, "patchy", "start").await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let url = gw.url(DB);
        tasks.push(tokio::spawn(async move {
            let mut body = mysql("patchy", &format!("writer-{i}"));
            body["description"] = json!(format!("writer-{i}"));
            send(&client(), Method::PUT, &url, &[], body.to_string())
                .await
                .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let last = emu.entity("services/databaseServices", "patchy").unwrap()["description"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        mem.get(ID_PW).await.unwrap().as_deref(),
        Some(last.as_str())
    );
}

#[tokio::test]
async fn method_override_headers_never_reach_the_upstream() {
    let (emu, gw, _mem) = mem_stack().await;
    let id = created(&gw, "patchy", "p0").await;
    emu.clear_recorded();
    let a = send(
        &client(),
        Method::POST,
        &gw.url(&format!("{DB}/{id}")),
        &[("x-http-method-override", "PATCH"), ("x-http-method", "PATCH"), ("x-method-override", "PATCH")],
        json!([{"op": "replace", "path": "/connection/config/authType/password", "value": "override-value"}]).to_string(),
    )
    .await;
    assert!(a.status >= 400);
    for r in emu.recorded() {
        assert!(r.headers.get("x-http-method-override").is_none());
        assert!(r.headers.get("x-http-method").is_none());
        assert!(r.headers.get("x-method-override").is_none());
    }
}

#[tokio::test]
async fn a_plaintext_secret_on_an_action_route_is_refused() {
    let (emu, gw, _mem) = mem_stack().await;
    emu.clear_recorded();
    let body =
        json!({"id": "x", "connection": {"config": {"authType": {"password": "action-value"}}}});
    let a = call(
        &gw,
        Method::PUT,
        &format!("{DB}/restore"),
        "application/json",
        body.to_string(),
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.text());
    assert!(emu.recorded().is_empty());
}

#[tokio::test]
async fn hard_delete_is_read_the_way_jersey_reads_it() {
    let (_emu, gw, mem) = mem_stack().await;
    let id = created(&gw, "patchy", "p0").await;
    // Jersey takes the first value: this is a soft delete.
    call(
        &gw,
        Method::DELETE,
        &format!("{DB}/{id}?hardDelete=false&hardDelete=true"),
        "application/json",
        String::new(),
    )
    .await;
    assert!(mem.get(ID_PW).await.unwrap().is_some());
    // Jersey's boolean is case-insensitive.
    let a = call(
        &gw,
        Method::DELETE,
        &format!("{DB}/{id}?hardDelete=TRUE"),
        "application/json",
        String::new(),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(mem.get(ID_PW).await.unwrap(), None);
}

#[tokio::test]
async fn bodies_that_cannot_be_entities_are_refused_before_the_upstream() {
    let (emu, gw, _mem) = mem_stack().await;
    emu.clear_recorded();
    let mysql = |auth: Value| {
        json!({"name": "shape", "serviceType": "Mysql",
               "connection": {"config": {"type": "Mysql", "username": "u", "authType": auth}}})
    };
    // OpenMetadata's deserializer quotes a string it cannot bind in its error, so a scalar
    // where an object leading to secrets belongs must never reach it.
    let cases = [
        json!([{"name": "arr", "serviceType": "Mysql",
                "connection": {"config": {"type": "Mysql", "authType": {"password": "shape-0"}}}}]),
        json!({"name": "s1", "serviceType": "Mysql", "connection": "shape-1"}),
        json!({"name": "s2", "serviceType": "Mysql", "connection": {"config": "shape-2"}}),
        mysql(json!("shape-3")),
        mysql(json!({"password": {"value": "shape-4"}})),
        mysql(json!({"password": ["shape-5"]})),
    ];
    for (i, body) in cases.iter().enumerate() {
        for m in [Method::PUT, Method::POST] {
            let a = call(&gw, m.clone(), DB, "application/json", body.to_string()).await;
            assert_eq!(a.status, 400, "case {i} {m}: {}", a.text());
            let err: Value = serde_json::from_slice(&a.body).expect("JSON error");
            assert_eq!(err["code"], 400);
            assert!(!a.text().contains("shape-"), "the error quotes the value");
        }
    }
    // The same shapes through a JSON Patch of an existing service.
    let id = created(&gw, "patched-shape", "p0").await;
    emu.clear_recorded();
    for (i, (path, value)) in [
        ("/connection/config", json!("shape-6")),
        ("/connection/config/authType", json!("shape-7")),
    ]
    .into_iter()
    .enumerate()
    {
        let a = call(
            &gw,
            Method::PATCH,
            &format!("{DB}/{id}"),
            "application/json-patch+json",
            json!([{"op": "replace", "path": path, "value": value}]).to_string(),
        )
        .await;
        assert_eq!(a.status, 400, "patch case {i}: {}", a.text());
    }
    for r in emu.recorded() {
        assert!(!contains(&r.body, b"shape-"), "forwarded: {:?}", r.body);
        assert!(
            r.method == Method::GET,
            "a write was forwarded: {}",
            r.method
        );
    }
}

#[tokio::test]
async fn a_string_where_a_union_admits_one_is_kept_and_scalars_under_secret_names_are_stored() {
    let (emu, gw, mem) = mem_stack().await;
    emu.clear_recorded();
    // BigQuery's gcpConfig is GCP credential values or the path of a credentials file.
    let bq = json!({"name": "bq", "serviceType": "BigQuery", "connection": {"config": {
        "type": "BigQuery", "credentials": {"gcpConfig": "/var/secrets/gcp.json"}}}});
    let a = call(&gw, Method::PUT, DB, "application/json", bq.to_string()).await;
    assert!(a.status < 300, "{}", a.text());
    let fwd: Value = serde_json::from_slice(&emu.recorded()[0].body).expect("json");
    assert_eq!(
        fwd["connection"]["config"]["credentials"]["gcpConfig"],
        "/var/secrets/gcp.json"
    );
    // A number under a secret-looking name of an unknown type is a secret too (the
    // upstream would store its digits), and so is each scalar of an array there (under a
    // name no rule path holds: a rule path's location must hold a string).
    emu.clear_recorded();
    let odd = json!({"name": "odd", "serviceType": "CustomDatabase", "connection": {"config": {
        "type": "NotInTheRules", "apiKey": 918273645, "refreshToken": ["tok-a", 42]}}});
    let a = call(&gw, Method::PUT, DB, "application/json", odd.to_string()).await;
    assert!(a.status < 300, "{}", a.text());
    let rec = &emu.recorded()[0].body;
    assert!(!contains(rec, b"918273645") && !contains(rec, b"tok-a"));
    let fwd: Value = serde_json::from_slice(rec).expect("json");
    let cfg = &fwd["connection"]["config"];
    assert_eq!(cfg["apiKey"], "secret:/openmetadata/database/odd/apikey");
    assert_eq!(
        cfg["refreshToken"][0],
        "secret:/openmetadata/database/odd/refreshtoken/0"
    );
    assert_eq!(
        mem.get("/openmetadata/database/odd/apikey")
            .await
            .unwrap()
            .as_deref(),
        Some("918273645")
    );
    assert_eq!(
        mem.get("/openmetadata/database/odd/refreshtoken/1")
            .await
            .unwrap()
            .as_deref(),
        Some("42")
    );
}

#[tokio::test]
async fn methods_openmetadata_does_not_use_are_refused() {
    let (emu, gw, _mem) = mem_stack().await;
    emu.clear_recorded();
    let body = json!({"name": "m", "serviceType": "Mysql", "connection": {"config": {
        "type": "Mysql", "authType": {"password": "method-value"}}}});
    for m in ["put", "Put", "post", "PROPPATCH", "MERGE", "TRACE"] {
        let method = Method::from_bytes(m.as_bytes()).expect("method");
        let a = call(&gw, method, DB, "application/json", body.to_string()).await;
        assert_eq!(a.status, 405, "{m}: {}", a.text());
        let allow = a.headers.get("allow").and_then(|v| v.to_str().ok());
        assert!(allow.is_some_and(|v| v.contains("PATCH")), "{m}");
    }
    assert!(emu.recorded().is_empty(), "{:?}", emu.recorded().len());
}
