//! `migrate` on the real binary against the emulator: a dry run writes nothing anywhere; a run
//! moves plain and Fernet-encrypted values of services, bot users and ingestion pipelines into
//! the embedded store and leaves exactly the expected references upstream; a second run finds
//! nothing left to move; a masked value is reported without stopping the others; no value is
//! ever printed.

mod support;

use std::path::{Path, PathBuf};

use om_secrets_proxy::secrets::embedded::EmbeddedStore;
use om_secrets_proxy::secrets::fernet::FernetKeys;
use om_secrets_proxy::secrets::SecretStore;
use serde_json::{json, Value};
use support::emulator::Emulator;
use support::jwt;

const BIN: &str = env!("CARGO_BIN_EXE_om-secrets-proxy");
const KEY: &str = "ihmCdSAtO4P3yYxDDAx8bIFjRvUyQIdrR2Dxhbpw4dI=";
const DB: &str = "services/databaseServices";

fn write_config(dir: &Path, upstream: &str, token: Option<&str>) -> PathBuf {
    let token = token
        .map(|t| format!("service_token = \"{t}\"\n"))
        .unwrap_or_default();
    let text = format!(
        "[upstream]\nurl = \"{upstream}\"\n{token}[rules]\ndir = \"{}/rules\"\n\
         [secrets_manager.parameters]\npath = \"{}\"\n[fernet]\nkey = \"{KEY}\"\n",
        env!("CARGO_MANIFEST_DIR"),
        dir.join("secrets.db").display()
    );
    let path = dir.join(if token.is_empty() {
        "no-token.toml"
    } else {
        "omsp.toml"
    });
    std::fs::write(&path, text).expect("config");
    path
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn migrate(config: &Path, dry_run: bool) -> Run {
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("migrate").arg("--config").arg(config);
    if dry_run {
        cmd.arg("--dry-run");
    }
    // The emulator keeps serving on the runtime while the binary runs.
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run migrate");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

fn password(emu: &Emulator, name: &str) -> Value {
    emu.entity(DB, name).expect("service")["connection"]["config"]["authType"]["password"].clone()
}

fn service(name: &str, password: &str) -> Value {
    json!({"name": name, "serviceType": "Mysql", "connection": {"config": {
        "type": "Mysql", "username": "om", "hostPort": "db:3306", "authType": {"password": password}}}})
}

const VALUES: [&str; 4] = ["pw-plain-1", "pw-fernet-2", "bot-jwt-3", "dbt-aws-4"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_moves_what_openmetadata_holds_and_a_dry_run_moves_nothing() {
    let emu = Emulator::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let config = write_config(dir.path(), &emu.url(), Some(&jwt::bot()));
    let keys = FernetKeys::new(&[KEY.to_string()]).expect("key");

    let plain = emu.seed(DB, service("plain-svc", VALUES[0]));
    let token = keys.encrypt(VALUES[1]).expect("encrypt");
    emu.seed(DB, service("fernet-svc", &token));
    emu.seed(
        DB,
        service(
            "ref-svc",
            "secret:/openmetadata/database/ref-svc/authtype/password",
        ),
    );
    emu.seed(
        "users",
        json!({"name": "ingestion-bot", "isBot": true, "email": "ingestion-bot@example.org",
               "authenticationMechanism": {"authType": "JWT", "config": {"JWTToken": VALUES[2], "JWTTokenExpiry": "Unlimited"}}}),
    );
    emu.seed(
        "users",
        json!({"name": "alice", "isBot": false, "email": "alice@example.org"}),
    );
    emu.seed(
        "services/ingestionPipelines",
        json!({"name": "dbt-nightly", "pipelineType": "dbt",
            "service": {"id": plain["id"], "type": "databaseService"},
            "sourceConfig": {"config": {"type": "DBT",
            "dbtConfigSource": {"dbtConfigType": "s3", "dbtSecurityConfig": {"awsAccessKeyId": "AKIA", "awsSecretAccessKey": VALUES[3], "awsRegion": "eu-west-1"}}}}}),
    );
    let expected = [
        "databaseService \"plain-svc\" $.connection.config.authType.password -> secret:/openmetadata/database/plain-svc/authtype/password",
        "databaseService \"fernet-svc\" $.connection.config.authType.password -> secret:/openmetadata/database/fernet-svc/authtype/password",
        "botUser \"ingestion-bot\" $.authenticationMechanism.config.JWTToken -> secret:/openmetadata/bot/ingestion-bot/config/jwttoken",
        "ingestionPipeline \"dbt-nightly\" $.sourceConfig.config.dbtConfigSource.dbtSecurityConfig.awsSecretAccessKey -> secret:/openmetadata/pipeline/dbt-nightly/sourceconfig/config/dbtconfigsource/dbtsecurityconfig/awssecretaccesskey",
    ];

    // 1. A dry run reports every field and writes nothing, upstream or in the store.
    let dry = migrate(&config, true).await;
    assert_eq!(dry.code, Some(0), "{}{}", dry.stdout, dry.stderr);
    for line in expected {
        assert!(
            dry.stdout.contains(&format!("would move {line}")),
            "missing {line:?} in\n{}",
            dry.stdout
        );
    }
    assert!(
        dry.stdout
            .contains("4 fields to move, 1 already references, 0 failed"),
        "{}",
        dry.stdout
    );
    assert_eq!(password(&emu, "plain-svc"), VALUES[0]);
    assert_eq!(password(&emu, "fernet-svc"), token.as_str());
    {
        let store = EmbeddedStore::open(&dir.path().join("secrets.db"), &keys).expect("store");
        assert_eq!(
            store
                .get("/openmetadata/database/plain-svc/authtype/password")
                .await
                .unwrap(),
            None
        );
    }

    // 2. The real run moves the values and leaves references upstream.
    let run = migrate(&config, false).await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    for line in expected {
        assert!(
            run.stdout.contains(&format!("moved {line}")),
            "{}",
            run.stdout
        );
    }
    assert!(
        run.stdout
            .contains("4 fields moved, 1 already references, 0 failed"),
        "{}",
        run.stdout
    );
    for v in VALUES {
        assert!(
            !run.stdout.contains(v) && !run.stderr.contains(v),
            "a value was printed"
        );
    }
    assert_eq!(
        password(&emu, "plain-svc"),
        "secret:/openmetadata/database/plain-svc/authtype/password"
    );
    assert_eq!(
        password(&emu, "fernet-svc"),
        "secret:/openmetadata/database/fernet-svc/authtype/password"
    );
    let bot = emu.entity("users", "ingestion-bot").expect("bot");
    assert_eq!(
        bot["authenticationMechanism"]["config"]["JWTToken"],
        "secret:/openmetadata/bot/ingestion-bot/config/jwttoken"
    );
    assert_eq!(
        bot["authenticationMechanism"]["config"]["JWTTokenExpiry"],
        "Unlimited"
    );
    let dbt = emu
        .entity("services/ingestionPipelines", "dbt-nightly")
        .expect("pipeline");
    let sec = &dbt["sourceConfig"]["config"]["dbtConfigSource"]["dbtSecurityConfig"];
    assert_eq!(sec["awsAccessKeyId"], "AKIA");
    assert!(sec["awsSecretAccessKey"]
        .as_str()
        .is_some_and(|s| s.starts_with("secret:/openmetadata/pipeline/dbt-nightly/")));
    {
        let store = EmbeddedStore::open(&dir.path().join("secrets.db"), &keys).expect("store");
        let ids = [
            "/openmetadata/database/plain-svc/authtype/password",
            "/openmetadata/database/fernet-svc/authtype/password",
            "/openmetadata/bot/ingestion-bot/config/jwttoken",
            "/openmetadata/pipeline/dbt-nightly/sourceconfig/config/dbtconfigsource/dbtsecurityconfig/awssecretaccesskey",
        ];
        for (id, v) in ids.iter().zip(VALUES) {
            assert_eq!(store.get(id).await.unwrap().as_deref(), Some(v), "{id}");
        }
    }

    // 3. Nothing is left to move.
    let again = migrate(&config, false).await;
    assert_eq!(again.code, Some(0), "{}{}", again.stdout, again.stderr);
    assert!(
        again
            .stdout
            .contains("0 fields moved, 5 already references, 0 failed"),
        "{}",
        again.stdout
    );

    // 4. A masked value (the token could not read it) fails that entity only.
    emu.seed(DB, service("masked-svc", "*********"));
    emu.seed(DB, service("late-svc", "pw-late-5"));
    let partial = migrate(&config, false).await;
    assert_eq!(
        partial.code,
        Some(1),
        "{}{}",
        partial.stdout,
        partial.stderr
    );
    assert!(
        partial
            .stdout
            .contains("failed databaseService \"masked-svc\""),
        "{}",
        partial.stdout
    );
    assert!(
        partial
            .stdout
            .contains("moved databaseService \"late-svc\""),
        "{}",
        partial.stdout
    );
    assert_eq!(
        password(&emu, "late-svc"),
        "secret:/openmetadata/database/late-svc/authtype/password"
    );
    assert_eq!(password(&emu, "masked-svc"), "*********");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_refuses_to_start_without_a_service_token_and_undoes_a_refused_patch() {
    let emu = Emulator::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    emu.seed(DB, service("plain-svc", "pw-refused-6"));

    let no_token = write_config(dir.path(), &emu.url(), None);
    let r = migrate(&no_token, false).await;
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("service_token"), "{}", r.stderr);

    // The upstream refuses the patch: the value stays upstream and the store holds nothing.
    let config = write_config(dir.path(), &emu.url(), Some(&jwt::bot()));
    emu.fail_writes_with(Some(500));
    let r = migrate(&config, false).await;
    assert_eq!(r.code, Some(1), "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("failed databaseService \"plain-svc\""),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("pw-refused-6"));
    assert_eq!(password(&emu, "plain-svc"), "pw-refused-6");
    let keys = FernetKeys::new(&[KEY.to_string()]).expect("key");
    let store = EmbeddedStore::open(&dir.path().join("secrets.db"), &keys).expect("store");
    assert_eq!(
        store
            .get("/openmetadata/database/plain-svc/authtype/password")
            .await
            .unwrap(),
        None
    );
}
