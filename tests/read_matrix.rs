//! Who sees what: caller (bot, user, anonymous and every forged or broken token) x provider
//! x route shape, plus transport details (gzip and Range from upstream, HEAD, HTTP/2),
//! warm-cache resolves, store outages while resolving, and the ViewAll permission switch.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use om_secrets_proxy::config::Config;
use om_secrets_proxy::secrets::memory::MemoryStore;
use serde_json::{json, Value};
use support::jwt;
use support::*;

const DB: &str = "/api/v1/services/databaseServices";
const PASSWORD: &str = "Plain-Pa55-value";

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn req(
    gw: &Gw,
    m: Method,
    path: &str,
    token: Option<&str>,
    body: impl Into<Bytes>,
) -> Answer {
    let auth = token.map(bearer);
    // PATCH bodies are JSON Patch, as OpenMetadata takes them.
    let ct = if m == Method::PATCH {
        "application/json-patch+json"
    } else {
        "application/json"
    };
    let mut h: Vec<(&str, &str)> = vec![("content-type", ct)];
    if let Some(a) = &auth {
        h.push(("authorization", a.as_str()));
    }
    send(&client(), m, &gw.url(path), &h, body).await
}

/// The password a caller sees in an answer of any shape.
fn passwords(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(items) = v.get("data").and_then(Value::as_array) {
        for i in items {
            out.extend(passwords(i));
        }
    }
    if let Some(versions) = v.get("versions").and_then(Value::as_array) {
        for s in versions {
            out.extend(passwords(
                &serde_json::from_str(s.as_str().unwrap()).unwrap(),
            ));
        }
    }
    if let Some(p) = v
        .pointer("/connection/config/authType/password")
        .and_then(Value::as_str)
    {
        out.push(p.to_string());
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Sees {
    Value,
    Mask,
    Reference,
}

fn callers() -> Vec<(&'static str, Option<String>, Sees)> {
    vec![
        ("bot", Some(jwt::bot()), Sees::Value),
        ("user", Some(jwt::user()), Sees::Mask),
        ("anonymous", None, Sees::Mask),
        ("expired bot", Some(jwt::expired_bot()), Sees::Mask),
        (
            "bot not valid yet",
            Some(jwt::not_yet_valid_bot()),
            Sees::Mask,
        ),
        (
            "bot token without exp",
            Some(jwt::never_expiring_bot()),
            Sees::Value,
        ),
        ("isBot as a string", Some(jwt::string_is_bot()), Sees::Mask),
        (
            "bot signed with the wrong key",
            Some(jwt::wrong_key_bot()),
            Sees::Mask,
        ),
        ("bot with alg none", Some(jwt::alg_none_bot()), Sees::Mask),
        (
            "bot HS256-signed with the public key",
            Some(jwt::hs256_with_public_key_bot()),
            Sees::Mask,
        ),
        (
            "user token edited to claim isBot",
            Some(jwt::tampered_user_as_bot()),
            Sees::Mask,
        ),
        (
            "bot from another issuer",
            Some(jwt::wrong_issuer_bot()),
            Sees::Mask,
        ),
        ("garbage token", Some("not.a.jwt".to_string()), Sees::Mask),
        // RFC 7519's NumericDate may have a fraction.
        (
            "bot with a fractional exp",
            Some(with_claim("exp", json!(jwt::now() as f64 + 3600.5))),
            Sees::Value,
        ),
        (
            "bot with a fractional exp in the past",
            Some(with_claim("exp", json!(jwt::now() as f64 - 60.5))),
            Sees::Mask,
        ),
        (
            "bot with a fractional nbf in the future",
            Some(with_claim("nbf", json!(jwt::now() as f64 + 3600.5))),
            Sees::Mask,
        ),
        (
            "bot with a negative exp",
            Some(with_claim("exp", json!(-1.5))),
            Sees::Mask,
        ),
    ]
}

/// A bot's token with one claim set to `v`.
fn with_claim(claim: &str, v: Value) -> String {
    let mut c = jwt::claims("ingestion-bot", true);
    c[claim] = v;
    jwt::rs256("key1", Some("k1"), &c)
}

fn check(what: &str, a: &Answer, sees: Sees, name: &str) {
    assert!(a.status < 300, "{what}: {} {}", a.status, a.text());
    let v = a.json();
    let ps = passwords(&v);
    assert!(!ps.is_empty(), "{what}: no password field in {v}");
    for p in ps {
        match sees {
            Sees::Value => assert_eq!(p, PASSWORD, "{what}"),
            Sees::Mask => assert_eq!(p, "*********", "{what}"),
            Sees::Reference => assert_eq!(
                p,
                format!("secret:/openmetadata/database/{name}/authtype/password"),
                "{what}"
            ),
        }
    }
    if sees != Sees::Value {
        let t = a.text();
        assert!(!t.contains(PASSWORD), "{what}: value leaked");
        assert!(!t.contains("fernet:"), "{what}: token leaked");
    }
    // An answer that carries values is kept by no cache.
    if sees == Sees::Value {
        let cc = a
            .headers
            .get("cache-control")
            .map(|v| v.to_str().unwrap_or(""));
        assert!(cc.is_some_and(|v| v.contains("no-store")), "{what}: {cc:?}");
    }
}

/// Runs every caller over every route shape against a gateway built from `cfg`.
async fn matrix(emu: &Emulator, gw: &Gw, user_sees: Sees) {
    emu.set_jwks(jwt::jwks());
    let name = format!("svc-{:x}", fastrand::u32(..));
    let created = req(
        gw,
        Method::POST,
        DB,
        Some(&jwt::bot()),
        mysql(&name, PASSWORD).to_string(),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_string();
    for (who, token, mut sees) in callers() {
        // A validly signed token whose isBot is not the boolean true is a user's.
        if who == "user" || who == "isBot as a string" {
            sees = user_sees;
        }
        let t = token.as_deref();
        for path in [
            format!("{DB}/{id}"),
            format!("{DB}/name/{name}"),
            format!("{DB}?limit=100"),
            format!("{DB}/{id}/versions"),
        ] {
            let a = req(gw, Method::GET, &path, t, Bytes::new()).await;
            check(&format!("{who} GET {path}"), &a, sees, &name);
            if sees == Sees::Mask {
                // Only answers that may carry values forbid caching.
                assert!(a.headers.get("cache-control").is_none(), "{who} GET {path}");
            }
        }
        // Write answers are rewritten too (OpenMetadata forgets PATCH and DELETE).
        let a = req(gw, Method::PUT, DB, t, mysql(&name, PASSWORD).to_string()).await;
        check(&format!("{who} PUT"), &a, sees, &name);
        let patch = json!([{"op": "add", "path": "/description", "value": who}]).to_string();
        let a = req(gw, Method::PATCH, &format!("{DB}/{id}"), t, patch).await;
        check(&format!("{who} PATCH"), &a, sees, &name);
    }
    let a = req(
        gw,
        Method::DELETE,
        &format!("{DB}/{id}"),
        Some(&jwt::user()),
        Bytes::new(),
    )
    .await;
    check("user soft DELETE", &a, user_sees, &name);
}

#[tokio::test]
async fn embedded_provider_caller_matrix() {
    let (emu, gw) = stack().await;
    matrix(&emu, &gw, Sees::Mask).await;
}

/// An SDK run with a person's personal access token gets masks (OpenMetadata gave them
/// silently, #33170): the answer says so, and why; a bot's answer says nothing.
#[tokio::test]
async fn masked_answers_say_why_and_a_personal_access_token_is_named() {
    let (emu, gw) = stack().await;
    emu.set_jwks(jwt::jwks());
    let a = req(
        &gw,
        Method::POST,
        DB,
        Some(&jwt::bot()),
        mysql("pat-svc", PASSWORD).to_string(),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text());
    let mut pat = jwt::claims("alice", false);
    pat["tokenType"] = json!("PERSONAL_ACCESS");
    let pat = jwt::rs256("key1", Some("k1"), &pat);
    let path = format!("{DB}/name/pat-svc");
    let said = |a: &Answer| {
        a.headers
            .get("x-omsp-secrets")
            .map(|v| v.to_str().unwrap().to_string())
    };
    let a = req(&gw, Method::GET, &path, Some(&pat), Bytes::new()).await;
    check("personal access token", &a, Sees::Mask, "pat-svc");
    let why = said(&a).expect("a header says the secrets are masked");
    assert!(
        why.starts_with("masked;") && why.contains("personal access token"),
        "{why}"
    );
    let a = req(&gw, Method::GET, &path, Some(&jwt::user()), Bytes::new()).await;
    let why = said(&a).expect("a person is told too");
    assert!(
        why.starts_with("masked;") && why.contains("not a bot"),
        "{why}"
    );
    let a = req(&gw, Method::GET, &path, None, Bytes::new()).await;
    assert!(said(&a).is_some_and(|w| w.contains("no verified token")));
    let a = req(&gw, Method::GET, &path, Some(&jwt::bot()), Bytes::new()).await;
    check("bot", &a, Sees::Value, "pat-svc");
    assert_eq!(said(&a), None);
}

#[tokio::test]
async fn db_provider_caller_matrix() {
    let emu = Emulator::start().await;
    let mut cfg = config_for(&emu.url());
    cfg.secrets.provider = om_secrets_proxy::config::Provider::parse("db").expect("db");
    cfg.fernet.keys = vec![om_secrets_proxy::secrets::fernet::FernetKeys::generate_key()];
    let gw = start_gateway(cfg).await;
    matrix(&emu, &gw, Sees::Mask).await;
    // The upstream holds a Fernet token, never the value.
    let all = emu.everything_received();
    assert!(!all
        .windows(PASSWORD.len())
        .any(|w| w == PASSWORD.as_bytes()));
}

fn with_provider(emu: &Emulator, toml: &str) -> Config {
    let base = config_for(&emu.url());
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n[rules]\ndir = \"{}/rules\"\n[fernet]\nkey = \"{}\"\n{toml}",
        emu.url(),
        env!("CARGO_MANIFEST_DIR"),
        om_secrets_proxy::secrets::fernet::FernetKeys::generate_key()
    );
    let mut cfg = Config::from_toml_str(&text, None, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    cfg.secrets.embedded_path = base.secrets.embedded_path;
    cfg
}

#[tokio::test]
async fn aws_secrets_manager_provider_caller_matrix() {
    let Some(url) = external("OMSP_TEST_MOTO_URL") else {
        return;
    };
    let emu = Emulator::start().await;
    let cfg = with_provider(
        &emu,
        &format!("[secrets_manager]\nprovider = \"managed-aws\"\nprefix = \"m{:x}\"\n[secrets_manager.parameters]\nregion = \"us-east-1\"\naccess_key_id = \"t\"\nsecret_access_key = \"t\"\nendpoint_url = \"{url}\"\n", fastrand::u32(..)),
    );
    let gw = start_gateway(cfg).await;
    matrix(&emu, &gw, Sees::Mask).await;
}

#[tokio::test]
async fn openbao_provider_caller_matrix_with_users_shown_references() {
    let Some(addr) = external("OMSP_TEST_BAO_ADDR") else {
        return;
    };
    let token = std::env::var("OMSP_TEST_BAO_TOKEN").unwrap_or_default();
    let emu = Emulator::start().await;
    let cfg = with_provider(
        &emu,
        &format!("[secrets_manager]\nprovider = \"managed-openbao\"\n[secrets_manager.parameters]\naddress = \"{addr}\"\ntoken = \"{token}\"\n[policy]\nuser = \"reference\"\n"),
    );
    let gw = start_gateway(cfg).await;
    matrix(&emu, &gw, Sees::Reference).await;
}

#[tokio::test]
async fn pem_public_keys_verify_tokens_without_jwks() {
    let emu = Emulator::start().await;
    let mut cfg = config_for(&emu.url());
    cfg.auth.public_key_files = vec![jwt::fixture("key1.pkcs1.pub.pem")];
    let gw = start_gateway(cfg).await;
    // The emulator publishes no keys: only the PEM file can verify.
    req(
        &gw,
        Method::POST,
        DB,
        None,
        mysql("pem", PASSWORD).to_string(),
    )
    .await;
    let a = req(
        &gw,
        Method::GET,
        &format!("{DB}/name/pem"),
        Some(&jwt::bot()),
        Bytes::new(),
    )
    .await;
    check("bot via PEM", &a, Sees::Value, "pem");
    let a = req(
        &gw,
        Method::GET,
        &format!("{DB}/name/pem"),
        Some(&jwt::wrong_key_bot()),
        Bytes::new(),
    )
    .await;
    check("wrong key via PEM", &a, Sees::Mask, "pem");
}

#[tokio::test]
async fn bot_tokens_on_user_token_routes_are_shown_only_to_bots() {
    let (emu, gw) = stack().await;
    emu.set_jwks(jwt::jwks());
    let bot_user = json!({"name": "ingestion-bot", "isBot": true, "email": "b@x.org",
        "authenticationMechanism": {"authType": "JWT", "config": {"JWTToken": "eyJ.the-bot-jwt.sig", "JWTTokenExpiry": "Unlimited"}}});
    let created = req(
        &gw,
        Method::POST,
        "/api/v1/users",
        None,
        bot_user.to_string(),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(
        emu.entity("users", "ingestion-bot").unwrap()["authenticationMechanism"]["config"]
            ["JWTToken"],
        "secret:/openmetadata/bot/ingestion-bot/config/jwttoken"
    );
    let id = created.json()["id"].as_str().unwrap().to_string();
    for path in [
        format!("/api/v1/users/token/{id}"),
        format!("/api/v1/users/auth-mechanism/{id}"),
    ] {
        let u = req(&gw, Method::GET, &path, Some(&jwt::user()), Bytes::new())
            .await
            .text();
        assert!(
            !u.contains("the-bot-jwt") && u.contains("*********"),
            "{path}: {u}"
        );
        let b = req(&gw, Method::GET, &path, Some(&jwt::bot()), Bytes::new())
            .await
            .text();
        assert!(b.contains("eyJ.the-bot-jwt.sig"), "{path}: {b}");
    }
    // A freshly generated token is masked for users as well.
    let g = req(
        &gw,
        Method::PUT,
        &format!("/api/v1/users/generateToken/{id}"),
        Some(&jwt::user()),
        "{}",
    )
    .await;
    assert_eq!(g.json()["JWTToken"], "*********", "{}", g.text());
}

#[tokio::test]
async fn gzip_answers_from_the_upstream_are_decoded_and_masked() {
    let (emu, gw) = stack().await;
    req(
        &gw,
        Method::POST,
        DB,
        None,
        mysql("gz", PASSWORD).to_string(),
    )
    .await;
    emu.set_force_gzip(true);
    let a = req(
        &gw,
        Method::GET,
        &format!("{DB}/name/gz"),
        Some(&jwt::user()),
        Bytes::new(),
    )
    .await;
    assert!(a.headers.get("content-encoding").is_none());
    assert!(
        a.headers.get("etag").is_none(),
        "a stale ETag would describe other bytes"
    );
    assert_eq!(
        a.headers["content-length"],
        a.body.len().to_string().as_str()
    );
    check("user via gzip upstream", &a, Sees::Mask, "gz");
    // The gateway asked for an identity encoding.
    let r = emu.recorded().pop().unwrap();
    assert_eq!(r.headers["accept-encoding"], "identity");
}

#[tokio::test]
async fn range_requests_cannot_cut_a_secret_out_of_rewriting() {
    let (emu, gw) = stack().await;
    req(
        &gw,
        Method::POST,
        DB,
        None,
        mysql("rg", PASSWORD).to_string(),
    )
    .await;
    let a = send(
        &client(),
        Method::GET,
        &gw.url(&format!("{DB}/name/rg")),
        &[("range", "bytes=0-40"), ("if-range", "x")],
        Bytes::new(),
    )
    .await;
    assert_eq!(a.status, 200);
    check("ranged read", &a, Sees::Mask, "rg");
    let r = emu.recorded().pop().unwrap();
    assert!(r.headers.get("range").is_none() && r.headers.get("if-range").is_none());
}

#[tokio::test]
async fn head_announces_the_length_of_the_rewritten_get() {
    let (_emu, gw) = stack().await;
    req(
        &gw,
        Method::POST,
        DB,
        None,
        mysql("hd", PASSWORD).to_string(),
    )
    .await;
    let g = req(
        &gw,
        Method::GET,
        &format!("{DB}/name/hd"),
        None,
        Bytes::new(),
    )
    .await;
    let h = send(
        &client(),
        Method::HEAD,
        &gw.url(&format!("{DB}/name/hd")),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(h.status, 200);
    assert!(h.body.is_empty());
    assert_eq!(
        h.headers["content-length"],
        g.body.len().to_string().as_str()
    );
}

#[tokio::test]
async fn http2_callers_see_exactly_what_http1_callers_see() {
    let (emu, gw) = stack().await;
    emu.set_jwks(jwt::jwks());
    req(
        &gw,
        Method::POST,
        DB,
        None,
        mysql("h2", PASSWORD).to_string(),
    )
    .await;
    for (token, sees) in [(jwt::user(), Sees::Mask), (jwt::bot(), Sees::Value)] {
        let auth = bearer(&token);
        let a2 = send(
            &h2_client(),
            Method::GET,
            &gw.url(&format!("{DB}/name/h2")),
            &[("authorization", &auth)],
            Bytes::new(),
        )
        .await;
        let a1 = send(
            &client(),
            Method::GET,
            &gw.url(&format!("{DB}/name/h2")),
            &[("authorization", &auth)],
            Bytes::new(),
        )
        .await;
        assert_eq!(a2.version, http::Version::HTTP_2);
        assert_eq!(a2.body, a1.body);
        check("h2", &a2, sees, "h2");
    }
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing"))
}

#[tokio::test]
async fn warm_cache_resolves_make_no_backend_calls() {
    let (emu, gw) = stack().await;
    emu.set_jwks(jwt::jwks());
    req(
        &gw,
        Method::POST,
        DB,
        None,
        mysql("warm", PASSWORD).to_string(),
    )
    .await;
    let path = format!("{DB}/name/warm");
    check(
        "first",
        &req(&gw, Method::GET, &path, Some(&jwt::bot()), Bytes::new()).await,
        Sees::Value,
        "warm",
    );
    let before = get(&gw.admin_url("/metrics")).await.text();
    for _ in 0..5 {
        check(
            "warm",
            &req(&gw, Method::GET, &path, Some(&jwt::bot()), Bytes::new()).await,
            Sees::Value,
            "warm",
        );
    }
    let after = get(&gw.admin_url("/metrics")).await.text();
    assert_eq!(
        metric(&before, "omsp_secret_store_calls_total"),
        metric(&after, "omsp_secret_store_calls_total")
    );
    assert_eq!(
        metric(&after, "omsp_secret_cache_hits_total")
            - metric(&before, "omsp_secret_cache_hits_total"),
        5
    );
}

#[tokio::test]
async fn a_store_outage_fails_a_resolving_read_but_only_masks_a_field_in_a_list() {
    let emu = Emulator::start().await;
    emu.set_jwks(jwt::jwks());
    let mut cfg = config_for(&emu.url());
    cfg.secrets.cache_ttl = std::time::Duration::ZERO;
    cfg.secrets.retry_max = 0;
    let mem = Arc::new(MemoryStore::new());
    let gw = start_gateway_with_store(cfg, Some(mem.clone())).await;
    req(
        &gw,
        Method::POST,
        DB,
        None,
        mysql("out-a", PASSWORD).to_string(),
    )
    .await;
    req(
        &gw,
        Method::POST,
        DB,
        None,
        mysql("out-b", PASSWORD).to_string(),
    )
    .await;
    mem.set_down(true);
    let one = req(
        &gw,
        Method::GET,
        &format!("{DB}/name/out-a"),
        Some(&jwt::bot()),
        Bytes::new(),
    )
    .await;
    assert_eq!(one.status, 503, "{}", one.text());
    assert_eq!(one.json()["code"], 503);
    assert!(!one.text().contains("secret:"));
    let list = req(&gw, Method::GET, DB, Some(&jwt::bot()), Bytes::new()).await;
    assert_eq!(list.status, 200);
    assert_eq!(passwords(&list.json()), vec!["*********", "*********"]);
    let header = list.headers["x-omsp-masked-fields"].to_str().unwrap();
    assert!(header.contains("authType.password"), "{header}");
    // Users are not affected: they never resolve.
    let user = req(
        &gw,
        Method::GET,
        &format!("{DB}/name/out-a"),
        Some(&jwt::user()),
        Bytes::new(),
    )
    .await;
    assert_eq!(user.status, 200);
}

#[tokio::test]
async fn with_view_all_required_a_bot_resolves_only_granted_entities() {
    let emu = Emulator::start().await;
    emu.set_jwks(jwt::jwks());
    let mut cfg = config_for(&emu.url());
    cfg.policy.bot_requires_view_all = true;
    let gw = start_gateway(cfg).await;
    req(
        &gw,
        Method::POST,
        DB,
        None,
        mysql("granted", PASSWORD).to_string(),
    )
    .await;
    req(
        &gw,
        Method::POST,
        DB,
        None,
        mysql("denied", PASSWORD).to_string(),
    )
    .await;
    emu.grant_view_all("granted");
    let bot = jwt::bot();
    check(
        "granted",
        &req(
            &gw,
            Method::GET,
            &format!("{DB}/name/granted"),
            Some(&bot),
            Bytes::new(),
        )
        .await,
        Sees::Value,
        "granted",
    );
    check(
        "denied",
        &req(
            &gw,
            Method::GET,
            &format!("{DB}/name/denied"),
            Some(&bot),
            Bytes::new(),
        )
        .await,
        Sees::Mask,
        "denied",
    );
    let perm = emu
        .recorded()
        .into_iter()
        .find(|r| {
            r.path_and_query
                .starts_with("/api/v1/permissions/databaseService/name/granted")
        })
        .expect("the permission API was asked");
    assert_eq!(
        perm.headers["authorization"],
        bearer(&bot).as_str(),
        "asked with the caller's own token"
    );
}

#[tokio::test]
async fn two_authorization_headers_make_no_identity() {
    let emu = Emulator::start().await;
    let mut cfg = config_for(&emu.url());
    cfg.auth.public_key_files = vec![jwt::fixture("key1.pkcs1.pub.pem")];
    let gw = start_gateway(cfg).await;
    req(
        &gw,
        Method::POST,
        DB,
        None,
        mysql("twice", PASSWORD).to_string(),
    )
    .await;
    let path = gw.url(&format!("{DB}/name/twice"));
    let one = bearer(&jwt::bot());
    let a = send(
        &client(),
        Method::GET,
        &path,
        &[("authorization", one.as_str())],
        Bytes::new(),
    )
    .await;
    check("one bot token", &a, Sees::Value, "twice");
    // The upstream may read the other one: neither counts, the caller is anonymous.
    let user = bearer(&jwt::user());
    for pair in [[one.as_str(), one.as_str()], [user.as_str(), one.as_str()]] {
        let h = [("authorization", pair[0]), ("authorization", pair[1])];
        let a = send(&client(), Method::GET, &path, &h, Bytes::new()).await;
        check("two authorization headers", &a, Sees::Mask, "twice");
    }
}

#[tokio::test]
async fn a_remembered_bot_token_stops_counting_when_it_expires() {
    let (emu, gw) = stack().await;
    emu.set_jwks(jwt::jwks());
    let a = req(
        &gw,
        Method::POST,
        DB,
        None,
        mysql("svc-exp", PASSWORD).to_string(),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text());
    let mut c = jwt::claims("ingestion-bot", true);
    c["exp"] = json!(jwt::now() + 2);
    let token = jwt::rs256("key1", Some("k1"), &c);
    let path = format!("{DB}/name/svc-exp");
    // Verified once, then answered from the identity cache: the bot sees the value each time.
    for _ in 0..3 {
        let a = req(&gw, Method::GET, &path, Some(&token), "").await;
        assert_eq!(passwords(&a.json()), vec![PASSWORD.to_string()]);
    }
    // Past `exp` the remembered identity is gone: the same token is no token.
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    let a = req(&gw, Method::GET, &path, Some(&token), "").await;
    assert_eq!(passwords(&a.json()), vec!["*********".to_string()]);
}
