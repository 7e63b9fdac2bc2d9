//! The fuzz targets' seed corpora (`fuzz/corpus/<target>/`) and every input a fuzzing run
//! found (`fuzz/regressions/<target>/`), replayed through the same functions the targets
//! call (`om_secrets_proxy::fuzzing`), which panic when an invariant breaks. Runs in CI on
//! stable; `bench/fuzz.sh` runs the targets themselves.

use std::path::{Path, PathBuf};

use om_secrets_proxy::fuzzing::{self, TARGETS};
use serde_json::json;

fn dir(kind: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target)
}

fn files(kind: &str, target: &str) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir(kind, target)) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

fn replay(kind: &str) -> usize {
    let mut n = 0;
    for t in TARGETS {
        for f in files(kind, t) {
            let data = std::fs::read(&f).expect("a corpus file");
            let run = std::panic::catch_unwind(|| fuzzing::run(t, &data));
            assert!(run.is_ok(), "{t}: {} breaks an invariant", f.display());
            n += 1;
        }
    }
    n
}

#[test]
fn every_seed_input_keeps_every_invariant() {
    let n = replay("corpus");
    assert!(n >= 5 * 5, "seed corpora are missing ({n} files)");
    for t in TARGETS {
        assert!(!files("corpus", t).is_empty(), "no seeds for {t}");
    }
}

#[test]
fn every_input_a_fuzzing_run_found_keeps_every_invariant() {
    replay("regressions");
}

#[test]
fn a_token_signed_by_the_configured_key_is_verified_and_a_changed_one_is_not() {
    let token = fuzzing::signed_token(&json!({
        "iss": fuzzing::ISSUER, "sub": "ingestion-bot", "isBot": true, "exp": 4_102_444_800u64
    }));
    // The target itself checks a verified identity against a signature it computes again.
    fuzzing::jwt_parse(format!("Bearer {token}").as_bytes());
    let mut forged = token.clone().into_bytes();
    let at = token.find('.').expect("three parts") + 3;
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    fuzzing::jwt_parse(&[b"Bearer ".as_slice(), &forged].concat());
}

/// Writes the seed corpora (`cargo test --test fuzz_regressions -- --ignored`): realistic
/// OpenMetadata bodies and answers for each rule kind, paths, and tokens.
#[test]
#[ignore]
fn write_seed_corpora() {
    seeds::write_all();
}

mod seeds {
    use super::*;
    use serde_json::Value;

    fn put(target: &str, name: &str, data: &[u8]) {
        let d = dir("corpus", target);
        std::fs::create_dir_all(&d).expect("corpus dir");
        std::fs::write(d.join(name), data).expect("write seed");
    }

    fn with_sel(sel: u8, body: &Value) -> Vec<u8> {
        let mut v = vec![sel];
        v.extend(body.to_string().into_bytes());
        v
    }

    pub fn write_all() {
        paths();
        writes();
        answers();
        tokens();
    }

    fn paths() {
        let list: &[&str] = &[
            "/api/v1/services/databaseServices",
            "/api/v1/services/databaseServices/name/mysql-prod",
            "/api/v1/services/databaseServices/0b1e6c3e-1d2f-4c1e-9a53-5d0c4e0d7e11",
            "/API/v1//services/./DatabaseServices;x=1/name/a%2Fb",
            "/api/v1/services/ingestionPipelines/name/svc.%22my.pipe%22",
            "/api/v1/users/auth-mechanism/0b1e6c3e",
            "/api/v1/users/name/ingestion-bot?fields=authenticationMechanism",
            "/api/v1/automations/workflows/trigger/abc",
            "/api/v1/services/mcpServices/%2e%2e/x",
            "\\api\\v1\\services\\searchServices\\name\\es",
            "/api/v1/services/databaseServices/name/%C3%A9t%C3%A9",
            "/api/v1/tables/name/a.b.c",
        ];
        for (i, p) in list.iter().enumerate() {
            let sel = (i as u8).wrapping_mul(37);
            let data = [&[sel], p.as_bytes()].concat();
            put("path_normalise", &format!("path-{i:02}"), &data);
            put("rule_match", &format!("path-{i:02}"), &data);
        }
    }

    fn mysql() -> Value {
        json!({"name": "mysql-prod", "serviceType": "Mysql", "description": "orders",
               "connection": {"config": {"type": "Mysql", "scheme": "mysql+pymysql",
                 "username": "openmetadata_user",
                 "authType": {"password": "hunter2-hunter2"},
                 "hostPort": "mysql:3306",
                 "sslConfig": {"caCertificate": "-----BEGIN CERTIFICATE-----abc"}}}})
    }

    fn writes() {
        let rules: Vec<String> = [
            "apiService",
            "botUser",
            "dashboardService",
            "databaseService",
            "driveService",
            "ingestionPipeline",
            "llmService",
            "mcpService",
            "messagingService",
            "metadataService",
            "mlmodelService",
            "pipelineService",
            "searchService",
            "securityService",
            "storageService",
            "workflow",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let idx = |k: &str| rules.iter().position(|r| r == k).expect("rule") as u8;
        let db = idx("databaseService");
        let bot = idx("botUser");
        let ing = idx("ingestionPipeline");
        let wf = idx("workflow");
        put(
            "write_rewrite",
            "create-mysql-managed",
            &with_sel(db | 0x20, &mysql()),
        );
        put(
            "write_rewrite",
            "create-mysql-fernet",
            &with_sel(db, &mysql()),
        );
        let mut masked = mysql();
        masked["connection"]["config"]["authType"]["password"] = json!("*********");
        put(
            "write_rewrite",
            "create-mysql-mask",
            &with_sel(db | 0x20, &masked),
        );
        let mut refd = mysql();
        refd["connection"]["config"]["authType"]["password"] =
            json!("secret:/openmetadata/database/mysql-prod/password");
        put(
            "write_rewrite",
            "create-mysql-reference",
            &with_sel(db | 0x20, &refd),
        );
        put(
            "write_rewrite",
            "create-bot",
            &with_sel(
                bot | 0x20,
                &json!({"name": "ingestion-bot", "email": "b@x.org",
                "isBot": true, "authenticationMechanism": {"authType": "JWT",
                "config": {"JWTToken": "eyJhbGciOiJSUzI1NiJ9.e30.c2ln", "JWTTokenExpiry": "Unlimited"}}}),
            ),
        );
        put(
            "write_rewrite",
            "create-ingestion",
            &with_sel(
                ing | 0x20,
                &json!({"name": "mysql-prod_metadata", "pipelineType": "metadata",
                "service": {"id": "0b1e6c3e-1d2f-4c1e-9a53-5d0c4e0d7e11", "type": "databaseService"},
                "sourceConfig": {"config": {"type": "DatabaseMetadata"}},
                "openMetadataServerConnection": {"securityConfig": {"jwtToken": "eyJ.x.y"}}}),
            ),
        );
        put(
            "write_rewrite",
            "create-workflow",
            &with_sel(
                wf | 0x20,
                &json!({"name": "test-connection-1", "workflowType": "TEST_CONNECTION",
                "request": {"serviceType": "Database", "serviceName": "mysql-prod",
                "connection": {"config": {"type": "Mysql", "username": "u",
                "authType": {"password": "*********"}, "hostPort": "h:3306"}}}}),
            ),
        );
        let patches = [
            (
                "patch-replace",
                json!([{"op": "replace",
                "path": "/connection/config/authType/password", "value": "new-password-1"}]),
            ),
            (
                "patch-move",
                json!([{"op": "move", "from": "/connection/config/authType/password",
                "path": "/description"}]),
            ),
            (
                "patch-copy",
                json!([{"op": "copy", "from": "/connection/config/password",
                "path": "/connection/config/authType/password"}]),
            ),
            (
                "patch-test",
                json!([{"op": "test", "path": "/connection/config/password",
                "value": "guess-guess"}]),
            ),
            (
                "patch-add-config",
                json!([{"op": "add", "path": "/connection",
                "value": {"config": {"type": "Mysql", "authType": {"password": "p4ssw0rd-added"}}}}]),
            ),
        ];
        for (name, p) in patches {
            put(
                "write_rewrite",
                &format!("{name}-managed"),
                &with_sel(0x40 | 0x20 | db, &p),
            );
            put(
                "write_rewrite",
                &format!("{name}-fernet"),
                &with_sel(0x40 | db, &p),
            );
        }
        put(
            "write_rewrite",
            "merge-password",
            &with_sel(
                0x80 | 0x20 | db,
                &json!({"connection": {"config": {
                "authType": {"password": "merge-password-1"}, "username": null}}}),
            ),
        );
        put(
            "write_rewrite",
            "merge-bot-token",
            &with_sel(
                0x80 | 0x20 | bot,
                &json!({"authenticationMechanism": {"config": {
                "JWTToken": "eyJ.fresh.token"}}}),
            ),
        );
    }

    fn answers() {
        let db = 3u8;
        let entity = json!({"id": "0b1e6c3e", "name": "mysql-prod", "fullyQualifiedName": "mysql-prod",
            "serviceType": "Mysql", "connection": {"config": {"type": "Mysql", "username": "u",
            "authType": {"password": "secret:/openmetadata/database/mysql-prod/password"},
            "hostPort": "mysql:3306"}}});
        let list = json!({"data": [entity.clone(), {"name": "other", "connection": {"config":
            {"type": "Postgres", "password": "secret:/openmetadata/database/other/password"}}}],
            "paging": {"total": 2}});
        let token = om_secrets_proxy::secrets::fernet::FernetKeys::new(&[fuzzing::fernet_key()])
            .expect("key")
            .encrypt("plain-fernet-value")
            .expect("encrypt");
        let embedded = json!({"name": "wf", "response": {"config": entity.to_string()},
            "stray": token, "deep": [[[{"apiKey": "secret:/openmetadata/llm/x/apikey"}]]]});
        for (i, who) in [0u8, 1, 2, 3].iter().enumerate() {
            put(
                "answer_rewrite",
                &format!("entity-{i}"),
                &with_sel(db | (who << 5), &entity),
            );
            put(
                "answer_rewrite",
                &format!("list-{i}"),
                &with_sel(db | (who << 5), &list),
            );
        }
        put("answer_rewrite", "embedded-user", &with_sel(15, &embedded));
        put(
            "answer_rewrite",
            "bot-token-user",
            &with_sel(
                1 | 0x80,
                &json!({
            "config": {"JWTToken": "secret:/openmetadata/bot/ingestion-bot/config/jwttoken"}}),
            ),
        );
    }

    fn tokens() {
        let good = json!({"iss": fuzzing::ISSUER, "sub": "ingestion-bot", "isBot": true,
                          "exp": 4_102_444_800u64});
        let user = json!({"iss": fuzzing::ISSUER, "sub": "alice", "exp": 4_102_444_800u64});
        let expired = json!({"iss": fuzzing::ISSUER, "sub": "alice", "exp": 1_000u64});
        let wrong_iss = json!({"iss": "someone-else", "sub": "alice"});
        for (name, c) in [
            ("bot", &good),
            ("user", &user),
            ("expired", &expired),
            ("wrong-issuer", &wrong_iss),
        ] {
            let t = fuzzing::signed_token(c);
            put(
                "jwt_parse",
                &format!("token-{name}"),
                format!("Bearer {t}").as_bytes(),
            );
        }
        let t = fuzzing::signed_token(&good);
        put(
            "jwt_parse",
            "lowercase-bearer",
            format!("bearer  {t} ").as_bytes(),
        );
        let parts: Vec<&str> = t.split('.').collect();
        put(
            "jwt_parse",
            "alg-none",
            format!("Bearer eyJhbGciOiJub25lIn0.{}.", parts[1]).as_bytes(),
        );
        put(
            "jwt_parse",
            "hs256",
            format!("Bearer eyJhbGciOiJIUzI1NiJ9.{}.{}", parts[1], parts[2]).as_bytes(),
        );
        put(
            "jwt_parse",
            "padded",
            format!("Bearer {}=.{}==.{}=", parts[0], parts[1], parts[2]).as_bytes(),
        );
        put(
            "jwt_parse",
            "four-parts",
            format!("Bearer {t}.x").as_bytes(),
        );
    }
}
