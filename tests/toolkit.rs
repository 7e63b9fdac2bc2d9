//! The operator's toolkit on the real binary against the emulator seeded with a mixed
//! installation of 1,000 entities (six kinds and connection types; values in clear, Fernet
//! tokens, migrated references, stored masks, references to another entity) and orphans in
//! the embedded store: `audit` finds exactly what was planted, `migrate` leaves it clean, a run
//! killed halfway and resumed ends as an uninterrupted one, a dry run changes nothing,
//! `rotate-fernet` leaves everything readable with the new key alone, and `migrate --reverse`
//! followed by `migrate` ends where it started. No value is ever printed or reported.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use om_secrets_proxy::secrets::embedded::EmbeddedStore;
use om_secrets_proxy::secrets::fernet::FernetKeys;
use om_secrets_proxy::secrets::SecretStore;
use serde_json::Value;
use support::emulator::Emulator;
use support::fleet::{fleet, Fleet, Mix, State};
use support::jwt;

const BIN: &str = env!("CARGO_BIN_EXE_om-secrets-proxy");
const OLD_KEY: &str = "ihmCdSAtO4P3yYxDDAx8bIFjRvUyQIdrR2Dxhbpw4dI=";
const NEW_KEY: &str = "pTG4ofKeB3TH0PcI8kQ1gGgiR0fWdpNIf0k1FLdOPaU=";
const N: usize = 1000;

fn keys(list: &[&str]) -> FernetKeys {
    FernetKeys::new(&list.iter().map(|k| k.to_string()).collect::<Vec<_>>()).expect("keys")
}

/// An emulator seeded with a fleet, an embedded store seeded with the fleet's side, and a
/// directory for configs, reports and the checkpoint.
struct Site {
    emu: Emulator,
    dir: tempfile::TempDir,
    fleet: Fleet,
}

impl Site {
    async fn new(fleet: Fleet, store_key: &str) -> Site {
        let emu = Emulator::start().await;
        emu.set_recording(false);
        fleet.seed(&emu);
        let dir = tempfile::tempdir().expect("tmp");
        let site = Site { emu, dir, fleet };
        let store = site.open_store(&[store_key]);
        store.put_many(&site.fleet.store).await.expect("seed store");
        site
    }

    fn store_path(&self) -> PathBuf {
        self.dir.path().join("secrets.db")
    }

    fn open_store(&self, key: &[&str]) -> EmbeddedStore {
        EmbeddedStore::open(&self.store_path(), &keys(key)).expect("store")
    }

    /// A config with these Fernet keys (comma-separated, the first encrypts).
    fn config(&self, fernet_keys: &str, wrap: bool) -> PathBuf {
        let text = format!(
            "[upstream]\nurl = \"{}\"\nservice_token = \"{}\"\n[rules]\ndir = \"{}/rules\"\n\
             [secrets_manager.parameters]\npath = \"{}\"\n[fernet]\nkey = \"{fernet_keys}\"\nwrap_references = {wrap}\n",
            self.emu.url(),
            jwt::bot(),
            env!("CARGO_MANIFEST_DIR"),
            self.store_path().display()
        );
        let path = self
            .dir
            .path()
            .join(format!("omsp-{}.toml", fastrand::u32(..)));
        std::fs::write(&path, text).expect("config");
        path
    }

    fn checkpoint(&self, command: &str) -> PathBuf {
        self.dir.path().join(format!("{command}.checkpoint"))
    }

    /// Every entity upstream by (collection, name).
    fn upstream(&self) -> BTreeMap<(String, String), Value> {
        let mut out = BTreeMap::new();
        for c in [
            "services/databaseServices",
            "services/dashboardServices",
            "services/messagingServices",
            "services/ingestionPipelines",
            "users",
        ] {
            for e in self.emu.entities(c) {
                let name = e["name"].as_str().unwrap_or_default().to_string();
                out.insert((c.to_string(), name), e);
            }
        }
        out
    }

    /// Every id and value the store holds (read with `key`).
    async fn stored(&self, key: &[&str]) -> BTreeMap<String, String> {
        let store = self.open_store(key);
        let mut out = BTreeMap::new();
        for id in store.list("").await.expect("list") {
            let v = store.get(&id).await.expect("readable").expect("present");
            out.insert(id, v);
        }
        out
    }

    /// The secret field of a planted entity as the upstream holds it now.
    fn field(&self, i: usize) -> Value {
        let p = &self.fleet.planted[i];
        let e = self
            .emu
            .entity(&p.collection, &p.name)
            .expect("planted entity");
        om_secrets_proxy::rules::jsonpath::get(&e, &p.steps)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// No output, report or checkpoint ever holds a value.
    fn assert_no_value_in(&self, texts: &[&str]) {
        for v in self.fleet.values() {
            for t in texts {
                assert!(!t.contains(&v), "a secret value was printed or written");
            }
        }
    }
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}{}", self.stdout, self.stderr))
    }
}

async fn run(config: &Path, args: &[&str]) -> Run {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(args).arg("--config").arg(config);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run the binary");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

fn findings(audit: &Value) -> BTreeSet<(String, String, String, String)> {
    audit["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            let s = |k: &str| f[k].as_str().unwrap_or_default().to_string();
            (s("problem"), s("kind"), s("name"), s("field"))
        })
        .collect()
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().unwrap_or_default().to_string())
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Entity keys of a report, each once.
fn report_keys(report: &Value) -> BTreeSet<(String, String)> {
    let entities = report["entities"].as_array().expect("entities");
    let keys: BTreeSet<(String, String)> = entities
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or_default().to_string(),
                e["id"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(keys.len(), entities.len(), "an entity was reported twice");
    keys
}

fn lines_of(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_finds_exactly_the_planted_problems_and_migrate_leaves_it_clean() {
    let site = Site::new(fleet(N, Mix::All, 5, &keys(&[OLD_KEY]), false), OLD_KEY).await;
    let config = site.config(OLD_KEY, false);
    let f = &site.fleet;

    // 1. The audit finds exactly the planted problems and orphans.
    let audit = run(&config, &["audit", "--json"]).await;
    assert_eq!(audit.code, Some(1), "{}", audit.stderr);
    let a = audit.json();
    assert_eq!(a["entities"], N);
    assert_eq!(a["secret_fields"], N);
    assert_eq!(findings(&a), f.expected_findings());
    assert_eq!(
        strings(&a["orphans"]),
        f.orphans.iter().cloned().collect::<BTreeSet<_>>()
    );
    assert_eq!(a["failed"].as_array().map(Vec::len), Some(0));
    assert_eq!(a["unreadable"].as_array().map(Vec::len), Some(0));
    let foreign = a["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|x| x["problem"] == "foreign-reference")
        .expect("a foreign reference");
    assert!(foreign["reference"].as_str().is_some() && foreign["expected"].as_str().is_some());
    let human = run(&config, &["audit"]).await;
    assert_eq!(human.code, Some(1));
    assert!(
        human.stdout.contains(
            "plaintext databaseService \"mysql-0000\" $.connection.config.authType.password"
        ),
        "{}",
        human.stdout
    );
    assert!(human
        .stdout
        .contains("orphan secret:/openmetadata/database/gone-0/authtype/password"));
    assert!(
        human.stdout.contains(&format!(
            "audit: {N} entities read, {N} secret fields; not clean:"
        )),
        "{}",
        human.stdout
    );

    // 2. A dry run changes nothing anywhere and leaves no checkpoint.
    let (up, st) = (site.upstream(), site.stored(&[OLD_KEY]).await);
    let dry = run(&config, &["migrate", "--dry-run"]).await;
    assert_eq!(dry.code, Some(0), "{}{}", dry.stdout, dry.stderr);
    assert!(dry
        .stdout
        .contains("would move databaseService \"mysql-0000\""));
    assert!(dry.stdout.contains("would copy "), "{}", dry.stdout);
    assert!(dry.stdout.contains("would replace the mask of "));
    assert_eq!(site.upstream(), up);
    assert_eq!(site.stored(&[OLD_KEY]).await, st);
    assert!(!site.checkpoint("migrate").exists());

    // 3. The migration moves, copies and re-references exactly what was planted.
    let report = site.dir.path().join("migrate.json");
    let m = run(
        &config,
        &["migrate", "--report", report.to_str().expect("path")],
    )
    .await;
    assert_eq!(m.code, Some(0), "{}{}", m.stdout, m.stderr);
    let moved = f.count(State::Plain) + f.count(State::Fernet) + f.count(State::Foreign);
    let already = f.count(State::Migrated) + f.count(State::StoredMask);
    assert!(
        m.stdout.contains(&format!(
            "migrate: {N} entities read, {moved} fields moved, {already} already references, 0 failed"
        )),
        "{}",
        m.stdout
    );
    assert!(
        m.stderr
            .contains(&format!("progress: migrate {N}/{N} entities (100%)")),
        "{}",
        m.stderr
    );
    let r: Value = serde_json::from_str(&read(&report)).expect("report");
    assert_eq!(r["complete"], true);
    assert_eq!(report_keys(&r).len(), N);
    assert_eq!(r["summary"]["changed"], N - f.count(State::Migrated));
    assert!(!site.checkpoint("migrate").exists());
    site.assert_no_value_in(&[
        &m.stdout,
        &m.stderr,
        &read(&report),
        &dry.stdout,
        &audit.stdout,
        &human.stdout,
    ]);
    let stored = site.stored(&[OLD_KEY]).await;
    for (i, p) in f.planted.iter().enumerate() {
        assert_eq!(site.field(i), format!("secret:{}", p.id), "{}", p.name);
        assert_eq!(stored.get(&p.id), Some(&p.value), "{}", p.id);
    }

    // 4. Only the orphans remain; deleting them leaves the installation clean.
    let after = run(&config, &["audit", "--json"]).await;
    assert_eq!(after.code, Some(1));
    let a = after.json();
    assert!(findings(&a).is_empty(), "{:?}", findings(&a));
    assert_eq!(strings(&a["orphans"]).len(), f.orphans.len());
    let deleted = run(&config, &["audit", "--delete-orphans"]).await;
    assert_eq!(
        deleted.code,
        Some(0),
        "{}{}",
        deleted.stdout,
        deleted.stderr
    );
    assert!(deleted
        .stdout
        .contains("orphan deleted secret:/openmetadata/database/gone-4/authtype/password"));
    let clean = run(&config, &["audit"]).await;
    assert_eq!(clean.code, Some(0), "{}{}", clean.stdout, clean.stderr);
    assert!(clean.stdout.contains(&format!(
        "audit: {N} entities read, {N} secret fields; clean"
    )));

    // 5. Nothing is left to move.
    let again = run(&config, &["migrate"]).await;
    assert!(
        again
            .stdout
            .contains(&format!("0 fields moved, {N} already references, 0 failed")),
        "{}",
        again.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_halfway_and_resumed_ends_as_an_uninterrupted_run() {
    let f = fleet(N, Mix::All, 0, &keys(&[OLD_KEY]), false);
    let twin = Fleet {
        entities: f.entities.clone(),
        planted: f.planted.clone(),
        store: f.store.clone(),
        orphans: f.orphans.clone(),
    };
    let whole = Site::new(f, OLD_KEY).await;
    let killed = Site::new(twin, OLD_KEY).await;
    whole.emu.set_recording(true);
    killed.emu.set_recording(true);

    let report = |s: &Site| s.dir.path().join("report.json");
    let r = run(
        &whole.config(OLD_KEY, false),
        &["migrate", "--report", report(&whole).to_str().expect("p")],
    )
    .await;
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);

    // The other run is SIGKILLed once a third of the entities are done.
    let config = killed.config(OLD_KEY, false);
    let checkpoint = killed.checkpoint("migrate");
    let mut child = std::process::Command::new(BIN)
        .args(["migrate", "--rate", "250", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let mut waited = 0;
    while lines_of(&checkpoint) < 1 + N / 3 && waited < 600 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    assert_eq!(
        status.code(),
        None,
        "the run ended on its own before it was killed"
    );
    let done_before = lines_of(&checkpoint) - 1;
    assert!(
        (N / 3..N).contains(&done_before),
        "{done_before} entities done"
    );

    let resumed = run(
        &config,
        &["migrate", "--report", report(&killed).to_str().expect("p")],
    )
    .await;
    assert_eq!(
        resumed.code,
        Some(0),
        "{}{}",
        resumed.stdout,
        resumed.stderr
    );
    assert!(
        resumed.stdout.contains("resuming from")
            && resumed.stdout.contains("entities already done"),
        "{}",
        resumed.stdout
    );
    assert!(!checkpoint.exists());

    // Same entities (versions included: nothing was patched twice), same store, same report.
    assert_eq!(killed.upstream(), whole.upstream());
    assert_eq!(
        killed.stored(&[OLD_KEY]).await,
        whole.stored(&[OLD_KEY]).await
    );
    let patches = |s: &Site| {
        s.emu
            .recorded()
            .iter()
            .filter(|r| r.method == http::Method::PATCH)
            .count()
    };
    assert_eq!(patches(&killed), patches(&whole));
    let (a, b): (Value, Value) = (
        serde_json::from_str(&read(&report(&whole))).expect("report"),
        serde_json::from_str(&read(&report(&killed))).expect("report"),
    );
    assert_eq!(report_keys(&a), report_keys(&b));
    assert_eq!(report_keys(&b).len(), N);
    assert_eq!(b["summary"]["entities"], N);
    assert_eq!(b["summary"]["failed"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_between_entities_and_the_next_run_continues() {
    let site = Site::new(fleet(200, Mix::All, 0, &keys(&[OLD_KEY]), false), OLD_KEY).await;
    let config = site.config(OLD_KEY, false);
    let checkpoint = site.checkpoint("migrate");
    let child = std::process::Command::new(BIN)
        .args(["migrate", "--rate", "50", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut waited = 0;
    while lines_of(&checkpoint) < 21 && waited < 600 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    let sent = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(sent.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{stdout}");
    assert!(
        stdout.contains("migrate interrupted; run the same command again"),
        "{stdout}"
    );
    let done = lines_of(&checkpoint) - 1;
    assert!((20..200).contains(&done), "{done}");

    let resumed = run(&config, &["migrate"]).await;
    assert_eq!(
        resumed.code,
        Some(0),
        "{}{}",
        resumed.stdout,
        resumed.stderr
    );
    assert!(resumed.stdout.contains(&format!(
        "resuming from {}: {done} entities already done",
        checkpoint.display()
    )));
    assert!(
        resumed.stdout.contains("migrate: 200 entities read"),
        "{}",
        resumed.stdout
    );
    let audit = run(&config, &["audit", "--json"]).await;
    assert!(findings(&audit.json()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_upstream_stops_the_run_undoes_the_entity_and_the_next_run_continues() {
    let site = Site::new(fleet(60, Mix::All, 0, &keys(&[OLD_KEY]), false), OLD_KEY).await;
    let config = site.config(OLD_KEY, false);
    site.emu.fail_writes_with(Some(503));
    let stopped = run(&config, &["migrate"]).await;
    assert_eq!(
        stopped.code,
        Some(1),
        "{}{}",
        stopped.stdout,
        stopped.stderr
    );
    assert!(
        stopped
            .stdout
            .contains("migrate stopped: OpenMetadata answered the patch with status 503"),
        "{}",
        stopped.stdout
    );
    assert!(stopped
        .stdout
        .contains("run the same command again to continue"));
    // The entity in hand had its store writes undone and was not recorded as done; those
    // before it needed no write.
    let failed = stopped
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("failed "))
        .and_then(|l| l.split('"').nth(1))
        .expect("the entity in hand is named");
    let first = site
        .fleet
        .planted
        .iter()
        .find(|p| p.name == failed)
        .expect("a planted entity");
    assert!(!site.stored(&[OLD_KEY]).await.contains_key(&first.id));
    let recorded = std::fs::read_to_string(site.checkpoint("migrate")).expect("checkpoint");
    assert!(!recorded.contains(&format!("\"name\":\"{failed}\"")));
    assert!(recorded
        .lines()
        .skip(1)
        .all(|l| l.contains("\"outcome\":\"unchanged\"")));

    site.emu.fail_writes_with(None);
    let resumed = run(&config, &["migrate"]).await;
    assert_eq!(
        resumed.code,
        Some(0),
        "{}{}",
        resumed.stdout,
        resumed.stderr
    );
    let i = site
        .fleet
        .planted
        .iter()
        .position(|p| p.name == failed)
        .expect("index");
    assert_eq!(site.field(i), format!("secret:{}", first.id));
    assert!(findings(&run(&config, &["audit", "--json"]).await.json()).is_empty());
}

/// Every `fernet:` string of a document.
fn fernet_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) if s.starts_with("fernet:") => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| fernet_strings(x, out)),
        Value::Object(m) => m.values().for_each(|x| fernet_strings(x, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_fernet_leaves_everything_readable_with_the_new_key_alone() {
    // Fernet values and wrapped references upstream, and the store at rest, under the old key.
    let site = Site::new(fleet(N, Mix::All, 5, &keys(&[OLD_KEY]), true), OLD_KEY).await;
    let f = &site.fleet;
    let both = site.config(&format!("{NEW_KEY},{OLD_KEY}"), true);
    let new_only = site.config(NEW_KEY, true);
    let tokens = f.count(State::Fernet) + f.count(State::Migrated);

    // With the new key alone, nothing opens yet: the audit sees it.
    let before = run(&new_only, &["audit", "--json"]).await;
    let b = before.json();
    assert_eq!(b["counts"]["fernet-undecryptable"], tokens);
    assert_eq!(
        b["unreadable"].as_array().map(Vec::len),
        Some(f.store.len())
    );

    let (up, st) = (site.upstream(), site.stored(&[OLD_KEY]).await);
    let dry = run(&both, &["rotate-fernet", "--dry-run"]).await;
    assert_eq!(dry.code, Some(0), "{}{}", dry.stdout, dry.stderr);
    assert!(
        dry.stdout
            .contains(&format!("{tokens} fernet: values to re-encrypt")),
        "{}",
        dry.stdout
    );
    assert_eq!(site.upstream(), up);
    assert_eq!(site.stored(&[OLD_KEY]).await, st);

    let report = site.dir.path().join("rotate.json");
    let r = run(
        &both,
        &["rotate-fernet", "--report", report.to_str().expect("p")],
    )
    .await;
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(&format!(
            "embedded store: {n} of {n} values re-encrypted with the first key, 0 unreadable",
            n = f.store.len()
        )),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(&format!(
            "{N} entities read, {tokens} fernet: values re-encrypted, 0 failed"
        )),
        "{}",
        r.stdout
    );
    site.assert_no_value_in(&[&r.stdout, &r.stderr, &read(&report), &dry.stdout]);

    // Everything opens with the new key alone.
    let new = keys(&[NEW_KEY]);
    let mut found = Vec::new();
    for e in site.upstream().values() {
        fernet_strings(e, &mut found);
    }
    assert_eq!(found.len(), tokens);
    assert!(found.iter().all(|t| new.decrypt(t).is_ok()));
    assert_eq!(site.stored(&[NEW_KEY]).await, st);
    let after = run(&new_only, &["audit", "--json"]).await;
    let a = after.json();
    assert_eq!(findings(&a), f.expected_findings());
    assert_eq!(a["unreadable"].as_array().map(Vec::len), Some(0));

    // A second rotation finds nothing to do; the new key alone then migrates cleanly.
    let again = run(&both, &["rotate-fernet"]).await;
    assert!(
        again
            .stdout
            .contains(&format!("0 of {} values re-encrypted", f.store.len())),
        "{}",
        again.stdout
    );
    assert!(
        again.stdout.contains("0 fernet: values re-encrypted"),
        "{}",
        again.stdout
    );
    let m = run(&new_only, &["migrate"]).await;
    assert_eq!(m.code, Some(0), "{}{}", m.stdout, m.stderr);
    let clean = run(&new_only, &["audit", "--json"]).await;
    assert!(findings(&clean.json()).is_empty());
}

/// Entities without what every write changes (version).
fn unversioned(mut m: BTreeMap<(String, String), Value>) -> BTreeMap<(String, String), Value> {
    for e in m.values_mut() {
        if let Some(o) = e.as_object_mut() {
            o.remove("version");
        }
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_then_migrate_ends_where_it_started() {
    let site = Site::new(fleet(N, Mix::All, 5, &keys(&[OLD_KEY]), false), OLD_KEY).await;
    let config = site.config(OLD_KEY, false);
    let m = run(&config, &["migrate"]).await;
    assert_eq!(m.code, Some(0), "{}{}", m.stdout, m.stderr);
    let (up, st) = (unversioned(site.upstream()), site.stored(&[OLD_KEY]).await);

    let dry = run(&config, &["migrate", "--reverse", "--dry-run"]).await;
    assert_eq!(dry.code, Some(0), "{}{}", dry.stdout, dry.stderr);
    assert!(
        dry.stdout
            .contains(&format!("{N} fields to restore as fernet: tokens")),
        "{}",
        dry.stdout
    );
    assert_eq!(unversioned(site.upstream()), up);

    let report = site.dir.path().join("reverse.json");
    let r = run(
        &config,
        &[
            "migrate",
            "--reverse",
            "--report",
            report.to_str().expect("p"),
        ],
    )
    .await;
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(&format!(
            "migrate --reverse: {N} entities read, {N} fields restored as fernet: tokens, 0 failed"
        )),
        "{}",
        r.stdout
    );
    site.assert_no_value_in(&[&r.stdout, &r.stderr, &read(&report), &dry.stdout]);
    let old = keys(&[OLD_KEY]);
    for (i, p) in site.fleet.planted.iter().enumerate() {
        let held = site.field(i);
        let token = held.as_str().expect("a string");
        assert_eq!(
            old.decrypt(token).expect("a fernet token"),
            p.value,
            "{}",
            p.name
        );
    }
    // OpenMetadata holds the values again; the store's copies are now orphans.
    let a = run(&config, &["audit", "--json"]).await.json();
    assert_eq!(a["counts"]["fernet-plaintext"], N);
    assert_eq!(strings(&a["orphans"]).len(), N + site.fleet.orphans.len());

    let back = run(&config, &["migrate"]).await;
    assert_eq!(back.code, Some(0), "{}{}", back.stdout, back.stderr);
    assert!(
        back.stdout.contains(&format!("{N} fields moved")),
        "{}",
        back.stdout
    );
    assert_eq!(unversioned(site.upstream()), up);
    assert_eq!(site.stored(&[OLD_KEY]).await, st);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_and_migrate_work_the_same_against_secrets_manager_on_moto() {
    let Some(url) = external("OMSP_TEST_MOTO_URL") else {
        return;
    };
    // A prefix of its own keeps the shared moto's other secrets out of this audit.
    let prefix = format!("toolkit-{:08x}", fastrand::u32(..));
    let ids = om_secrets_proxy::rules::ids::IdBuilder::new(&prefix, "openmetadata");
    let f = support::fleet::fleet_with(&ids, 60, Mix::All, 2, &keys(&[OLD_KEY]), false);
    let emu = Emulator::start().await;
    f.seed(&emu);
    let dir = tempfile::tempdir().expect("tmp");
    let text = format!(
        "[upstream]\nurl = \"{}\"\nservice_token = \"{}\"\n[rules]\ndir = \"{}/rules\"\n\
         [secrets_manager]\nprovider = \"managed-aws\"\nprefix = \"{prefix}\"\nwrite_rate_per_sec = 50\n\
         [secrets_manager.parameters]\nregion = \"us-east-1\"\naccess_key_id = \"testing\"\n\
         secret_access_key = \"testing\"\nendpoint_url = \"{url}\"\npath = \"{}\"\n[fernet]\nkey = \"{OLD_KEY}\"\n",
        emu.url(),
        jwt::bot(),
        env!("CARGO_MANIFEST_DIR"),
        dir.path().join("unused.db").display()
    );
    let config = dir.path().join("moto.toml");
    std::fs::write(&config, &text).expect("config");
    let cfg =
        om_secrets_proxy::config::Config::from_toml_str(&text, None, &|_| None).expect("config");
    let store = om_secrets_proxy::secrets::open_store(
        &cfg,
        &keys(&[OLD_KEY]),
        std::sync::Arc::new(om_secrets_proxy::metrics::Metrics::default()),
    )
    .await
    .expect("store");
    store.put_many(&f.store).await.expect("seed moto");

    let audit = run(&config, &["audit", "--json"]).await;
    assert_eq!(audit.code, Some(1), "{}", audit.stderr);
    let a = audit.json();
    assert_eq!(findings(&a), f.expected_findings());
    assert_eq!(
        strings(&a["orphans"]),
        f.orphans.iter().cloned().collect::<BTreeSet<_>>()
    );
    let m = run(&config, &["migrate"]).await;
    assert_eq!(m.code, Some(0), "{}{}", m.stdout, m.stderr);
    for p in &f.planted {
        assert_eq!(
            store.get(&p.id).await.expect("moto").as_deref(),
            Some(p.value.as_str())
        );
    }
    let deleted = run(&config, &["audit", "--delete-orphans"]).await;
    assert_eq!(
        deleted.code,
        Some(0),
        "{}{}",
        deleted.stdout,
        deleted.stderr
    );
    let clean = run(&config, &["audit"]).await;
    assert_eq!(clean.code, Some(0), "{}{}", clean.stdout, clean.stderr);
    assert!(clean
        .stdout
        .contains("audit: 60 entities read, 60 secret fields; clean"));
}

/// "Write nothing anywhere": a dry run of `migrate` or `rotate-fernet` with an embedded
/// store that does not exist yet reads an empty store and creates no file.
#[tokio::test]
async fn dry_runs_create_no_store_file() {
    // Values only (plain and Fernet tokens): nothing upstream needs the store.
    let f = fleet(20, Mix::ValuesOnly, 0, &keys(&[OLD_KEY]), false);
    let site = Site::new(f, OLD_KEY).await;
    std::fs::remove_file(site.store_path()).expect("remove the store");
    let config = site.config(&format!("{NEW_KEY},{OLD_KEY}"), false);
    let up = site.upstream();
    let dry = run(&config, &["migrate", "--dry-run"]).await;
    assert_eq!(dry.code, Some(0), "{}{}", dry.stdout, dry.stderr);
    assert!(dry.stdout.contains("would move "), "{}", dry.stdout);
    let dry = run(&config, &["rotate-fernet", "--dry-run"]).await;
    assert_eq!(dry.code, Some(0), "{}{}", dry.stdout, dry.stderr);
    assert!(
        !site.store_path().exists(),
        "a dry run created the store file"
    );
    assert_eq!(site.upstream(), up);
    // The real run creates it.
    let m = run(&config, &["migrate"]).await;
    assert_eq!(m.code, Some(0), "{}{}", m.stdout, m.stderr);
    assert!(site.store_path().exists());
}
