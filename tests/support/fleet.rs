//! A mixed installation for the toolkit's tests and benchmark: N entities over six kinds and
//! connection types (MySQL and Snowflake database services, a Tableau dashboard service, a
//! Kafka messaging service, a dbt ingestion pipeline, a bot user), each with one secret field
//! in one of five states, plus orphans in the store. Ids are computed by the crate's own
//! `toolkit::identity`, so the fleet follows the id scheme in force.
#![allow(dead_code)]

use std::collections::BTreeSet;

use om_secrets_proxy::rules::ids::IdBuilder;
use om_secrets_proxy::rules::jsonpath::{get_mut, render, Step};
use om_secrets_proxy::rules::RuleSet;
use om_secrets_proxy::secrets::fernet::FernetKeys;
use om_secrets_proxy::toolkit::identity;
use serde_json::{json, Value};

use super::emulator::Emulator;

/// What a secret field holds upstream at the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The value in clear.
    Plain,
    /// A Fernet token of the value.
    Fernet,
    /// The reference to its own id; the store holds the value.
    Migrated,
    /// A mask OpenMetadata stored; the store holds the value under the field's id.
    StoredMask,
    /// A reference to another (migrated) entity's id: the entity means that value.
    Foreign,
}

/// Which states a fleet uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// All five, by entity number modulo 10: 3 plain, 2 Fernet, 3 migrated, 1 stored mask,
    /// 1 foreign reference.
    All,
    /// Only values upstream (7 plain, 3 Fernet): a store-free start, for benchmarks.
    ValuesOnly,
}

/// One entity's secret field.
#[derive(Debug, Clone)]
pub struct Planted {
    pub collection: String,
    pub kind: String,
    pub name: String,
    /// JSONPath of the field.
    pub field: String,
    pub steps: Vec<Step>,
    /// The field's own secret id.
    pub id: String,
    /// The value the entity means.
    pub value: String,
    pub state: State,
}

pub struct Fleet {
    /// (collection, entity body), in seeding order.
    pub entities: Vec<(String, Value)>,
    pub planted: Vec<Planted>,
    /// What the store holds at the start (values and owner markers).
    pub store: Vec<(String, String)>,
    pub orphans: Vec<String>,
}

/// The six kinds: (collection, rule kind, body with `X` where the secret goes).
fn body(i: usize) -> (&'static str, &'static str, Value) {
    match i % 6 {
        0 => (
            "services/databaseServices",
            "databaseService",
            json!({
            "name": format!("mysql-{i:04}"), "serviceType": "Mysql",
            "connection": {"config": {"type": "Mysql", "scheme": "mysql+pymysql", "username": "om",
                "hostPort": "db:3306", "authType": {"password": "X"}}}}),
        ),
        1 => (
            "services/databaseServices",
            "databaseService",
            json!({
            "name": format!("snow-{i:04}"), "serviceType": "Snowflake",
            "connection": {"config": {"type": "Snowflake", "username": "om", "account": "acme",
                "warehouse": "wh", "password": "X"}}}),
        ),
        2 => (
            "services/dashboardServices",
            "dashboardService",
            json!({
            "name": format!("tableau-{i:04}"), "serviceType": "Tableau",
            "connection": {"config": {"type": "Tableau", "hostPort": "https://tableau.example",
                "authType": {"personalAccessTokenName": "om", "personalAccessTokenSecret": "X"},
                "siteName": "site"}}}),
        ),
        3 => (
            "services/messagingServices",
            "messagingService",
            json!({
            "name": format!("kafka-{i:04}"), "serviceType": "Kafka",
            "connection": {"config": {"type": "Kafka", "bootstrapServers": "kafka:9092",
                "saslUsername": "om", "saslPassword": "X", "saslMechanism": "PLAIN"}}}),
        ),
        4 => (
            "services/ingestionPipelines",
            "ingestionPipeline",
            json!({
            "name": format!("dbt-{i:04}"), "fullyQualifiedName": format!("mysql-0000.dbt-{i:04}"),
            "pipelineType": "dbt",
            "service": {"type": "databaseService", "name": "mysql-0000", "fullyQualifiedName": "mysql-0000"},
            "sourceConfig": {"config": {"type": "DBT", "dbtConfigSource": {"dbtConfigType": "s3",
                "dbtSecurityConfig": {"awsAccessKeyId": "AKIAEXAMPLE", "awsSecretAccessKey": "X",
                    "awsRegion": "eu-west-1"}}}}}),
        ),
        _ => (
            "users",
            "botUser",
            json!({
            "name": format!("bot-{i:04}"), "isBot": true, "email": format!("bot-{i:04}@example.org"),
            "authenticationMechanism": {"authType": "JWT",
                "config": {"JWTToken": "X", "JWTTokenExpiry": "Unlimited"}}}),
        ),
    }
}

pub fn rules() -> RuleSet {
    RuleSet::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"),
        &[],
    )
    .expect("rules")
}

/// The default id builder (no prefix, cluster `openmetadata`).
pub fn ids() -> IdBuilder {
    IdBuilder::new("", "openmetadata")
}

fn state_of(i: usize, mix: Mix) -> State {
    match (mix, i % 10) {
        (Mix::ValuesOnly, 0..=6) | (Mix::All, 0..=2) => State::Plain,
        (Mix::ValuesOnly, _) | (Mix::All, 3..=4) => State::Fernet,
        (Mix::All, 5..=7) => State::Migrated,
        (Mix::All, 8) => State::StoredMask,
        _ => State::Foreign,
    }
}

/// `n` entities, `orphans` orphans; `keys` encrypt the Fernet values (and the migrated
/// references when `wrap`). Ids as the default configuration builds them.
pub fn fleet(n: usize, mix: Mix, orphans: usize, keys: &FernetKeys, wrap: bool) -> Fleet {
    fleet_with(&ids(), n, mix, orphans, keys, wrap)
}

/// As [`fleet`], with ids from `ids` (a prefix keeps a shared store's other tests apart).
pub fn fleet_with(
    ids: &IdBuilder,
    n: usize,
    mix: Mix,
    orphans: usize,
    keys: &FernetKeys,
    wrap: bool,
) -> Fleet {
    let rules = rules();
    let run = fastrand::u32(..);
    let mut f = Fleet {
        entities: Vec::new(),
        planted: Vec::new(),
        store: Vec::new(),
        orphans: Vec::new(),
    };
    for i in 0..n {
        let (collection, kind, mut body) = body(i);
        let rule = rules.rules.iter().find(|r| r.kind == kind).expect("rule");
        let found = rules.find_secrets(rule, &body);
        assert_eq!(found.len(), 1, "{kind}: one secret field");
        let steps = found[0].steps.clone();
        let who = identity(ids, rule, &body);
        let id = ids.id(&who.root, rule.field_steps(&steps));
        let state = state_of(i, mix);
        let mut value = format!("v{i:04}-{run:08x}-secret");
        let upstream = match state {
            State::Plain => value.clone(),
            State::Fernet => keys.encrypt(&value).expect("encrypt"),
            State::Migrated | State::StoredMask => {
                f.store.push((id.clone(), value.clone()));
                f.store
                    .push((format!("{}/.owner", who.root), who.owner.clone()));
                if state == State::StoredMask {
                    "*********".to_string()
                } else if wrap {
                    keys.encrypt(&format!("secret:{id}")).expect("encrypt")
                } else {
                    format!("secret:{id}")
                }
            }
            State::Foreign => {
                let other: &Planted = &f.planted[i - 3];
                assert_eq!(other.state, State::Migrated);
                value = other.value.clone();
                format!("secret:{}", other.id)
            }
        };
        *get_mut(&mut body, &steps).expect("secret slot") = Value::String(upstream);
        f.planted.push(Planted {
            collection: collection.into(),
            kind: kind.into(),
            name: body["name"].as_str().unwrap_or_default().into(),
            field: render(&steps),
            steps,
            id,
            value,
            state,
        });
        f.entities.push((collection.into(), body));
    }
    for k in 0..orphans {
        let id = format!("{}/database/gone-{k}/authtype/password", ids.head());
        f.store.push((id.clone(), format!("orphan-{k}-{run:08x}")));
        f.orphans.push(id);
    }
    f
}

impl Fleet {
    pub fn seed(&self, emu: &Emulator) {
        for (collection, body) in &self.entities {
            emu.seed(collection, body.clone());
        }
    }

    /// The audit findings the planted states make: (problem, kind, name, field).
    pub fn expected_findings(&self) -> BTreeSet<(String, String, String, String)> {
        self.planted
            .iter()
            .filter_map(|p| {
                let problem = match p.state {
                    State::Plain => "plaintext",
                    State::Fernet => "fernet-plaintext",
                    State::StoredMask => "mask",
                    State::Foreign => "foreign-reference",
                    State::Migrated => return None,
                };
                Some((
                    problem.into(),
                    p.kind.clone(),
                    p.name.clone(),
                    p.field.clone(),
                ))
            })
            .collect()
    }

    /// Every secret value of the fleet (none may ever be printed).
    pub fn values(&self) -> Vec<String> {
        let mut v: Vec<String> = self.planted.iter().map(|p| p.value.clone()).collect();
        v.extend(
            self.store
                .iter()
                .filter(|(id, _)| !id.ends_with("/.owner"))
                .map(|(_, v)| v.clone()),
        );
        v
    }

    pub fn count(&self, state: State) -> usize {
        self.planted.iter().filter(|p| p.state == state).count()
    }
}
