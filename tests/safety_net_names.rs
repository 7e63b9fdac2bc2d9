//! The safety net's name policy (`src/rules/names.rs`) against every field name of OpenMetadata
//! 2.0.7's connection, pipeline, workflow and auth models (`tests/data/om-2.0.7-field-names.json`,
//! made by `rules/extract_field_names.py` from the `openmetadata-ingestion` 2.0.7.0 wheel):
//! every secret field name is caught and no plain scalar field is.

use std::collections::BTreeSet;
use std::path::PathBuf;

use om_secrets_proxy::rules::jsonpath::render;
use om_secrets_proxy::rules::RuleSet;
use serde_json::{json, Value};

/// Secret names the name policy leaves to the rules' paths: each is a plain scalar field in
/// other models, where a name match would take a value OpenMetadata needs in clear.
const RULE_ONLY: &[(&str, &str)] = &[
    // Secret only in the Bedrock connection; plain (an access key id) in every AWS
    // credentials block of 2.0.7. The llmService rule names Bedrock's path.
    ("awsAccessKeyId", "$.connection.config.awsAccessKeyId"),
    // Secret only in OpenMetadata 1.9's Iceberg REST catalog (`credential.clientId`, a
    // connector 2.0 dropped); plain in every OAuth/SSO config of 2.0.7.
    ("clientId", ""),
];

/// Names secret in most models and plain in one: caught everywhere, as each plain occurrence
/// is a credential OpenMetadata does not mark (`password` of a bot's basic auth, Mode's
/// `accessToken`, the Slack app's `clientSecret`, `awsSessionToken` of AWS credentials, ...).
const CAUGHT_WHERE_ALSO_PLAIN: &[&str] = &[
    "accessToken",
    "apiKey",
    "awsSessionToken",
    "clientSecret",
    "password",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn shipped(extra: &[&str]) -> RuleSet {
    let keys: Vec<String> = om_secrets_proxy::config::DEFAULT_SAFETY_NET_KEYS
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
    RuleSet::load(&root().join("rules"), &keys).expect("shipped rules compile")
}

fn data() -> Value {
    let p = root().join("tests/data/om-2.0.7-field-names.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).expect("field names data is JSON")
}

fn fields() -> Vec<(String, Value)> {
    let d = data();
    let map = d["fields"].as_object().expect("fields is an object");
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn flag(f: &Value, key: &str) -> bool {
    f[key].as_bool().expect("boolean flag")
}

fn rule_only(name: &str) -> bool {
    RULE_ONLY.iter().any(|(n, _)| *n == name)
}

#[test]
fn no_plain_scalar_field_of_openmetadata_2_0_7_is_caught() {
    let rules = shipped(&[]);
    let plain: Vec<String> = fields()
        .into_iter()
        .filter(|(_, f)| !flag(f, "secret") && flag(f, "scalar"))
        .map(|(n, _)| n)
        .collect();
    assert!(plain.len() > 600, "only {} plain names", plain.len());
    let caught: Vec<&String> = plain.iter().filter(|n| rules.is_secret_key(n)).collect();
    assert!(caught.is_empty(), "false positives: {caught:?}");
}

#[test]
fn every_secret_field_name_of_openmetadata_2_0_7_is_caught() {
    let rules = shipped(&[]);
    let secret: Vec<String> = fields()
        .into_iter()
        .filter(|(_, f)| flag(f, "secret"))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(secret.len(), 41, "the 2.0.7 inventory has 41 secret names");
    let missed: Vec<&String> = secret
        .iter()
        .filter(|n| !rules.is_secret_key(n) && !rule_only(n))
        .collect();
    assert!(missed.is_empty(), "secret names not caught: {missed:?}");
}

#[test]
fn every_secret_name_of_the_three_inventories_is_caught() {
    let rules = shipped(&[]);
    let d = data();
    for version in ["2.0.7.0", "1.13.6.3", "1.9.17.6"] {
        let names = d["inventorySecretNames"][version]
            .as_array()
            .unwrap_or_else(|| panic!("{version} names"));
        assert!(names.len() >= 30, "{version}: {} names", names.len());
        let missed: Vec<&str> = names
            .iter()
            .filter_map(Value::as_str)
            .filter(|n| !rules.is_secret_key(n) && !rule_only(n))
            .collect();
        assert!(missed.is_empty(), "{version}: not caught: {missed:?}");
    }
}

#[test]
fn the_names_left_to_the_rules_are_plain_fields_in_2_0_7() {
    let all = fields();
    for (name, _) in RULE_ONLY {
        let f = &all
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} is a 2.0.7 field"))
            .1;
        assert!(f["plainIn"].as_u64() > Some(0), "{name} is never plain");
        assert!(
            !shipped(&[]).is_secret_key(name),
            "{name} is caught by name"
        );
    }
}

#[test]
fn the_rules_name_every_2_0_7_path_left_to_them() {
    let rules = shipped(&[]);
    for (name, path) in RULE_ONLY.iter().filter(|(_, p)| !p.is_empty()) {
        assert!(
            rules
                .rules
                .iter()
                .any(|r| r.secret_paths.iter().any(|p| p == path)),
            "no rule names {path} ({name})"
        );
    }
}

#[test]
fn the_names_both_secret_and_plain_are_exactly_the_known_ones() {
    let mixed: BTreeSet<String> = fields()
        .into_iter()
        .filter(|(_, f)| flag(f, "secret") && f["plainIn"].as_u64() > Some(0))
        .map(|(n, _)| n)
        .collect();
    let known: BTreeSet<String> = CAUGHT_WHERE_ALSO_PLAIN
        .iter()
        .copied()
        .chain(
            RULE_ONLY
                .iter()
                .map(|(n, _)| *n)
                .filter(|n| *n != "clientId"),
        )
        .map(str::to_string)
        .collect();
    assert_eq!(mixed, known);
    let rules = shipped(&[]);
    for name in CAUGHT_WHERE_ALSO_PLAIN {
        assert!(rules.is_secret_key(name), "{name}");
    }
}

#[test]
fn the_data_was_extracted_under_every_safety_net_subtree_of_the_rules() {
    let d = data();
    let roots = d["_meta"]["roots"].as_object().expect("roots");
    let mut checked = 0;
    // `mask_only` kinds are not in the ingestion package the data comes from.
    for rule in shipped(&[]).rules.iter().filter(|r| !r.is_mask_only()) {
        let text = std::fs::read_to_string(&rule.file).expect("rule file readable");
        let raw: Value = serde_json::from_str(&text).expect("rule file is JSON");
        for base in raw["safety_net"].as_array().expect("safety_net") {
            let key = format!("{} {}", rule.kind, base.as_str().expect("a path"));
            assert!(roots.contains_key(&key), "no field names for {key}");
            checked += 1;
        }
    }
    assert_eq!(checked, roots.len(), "the data has subtrees no rule names");
    let unresolved = d["_meta"]["unresolvedTypes"]
        .as_array()
        .expect("unresolvedTypes");
    assert!(
        unresolved.is_empty(),
        "types the extraction could not follow: {unresolved:?}"
    );
}

fn net_finds(rules: &RuleSet, kind: &str, doc: &Value) -> Vec<String> {
    let rule = rules
        .rules
        .iter()
        .find(|r| r.kind == kind)
        .expect("kind is ruled");
    rules
        .find_secrets(rule, doc)
        .into_iter()
        .filter(|f| f.rule_path.is_none())
        .map(|f| render(&f.steps))
        .collect()
}

#[test]
fn a_password_among_free_form_connection_options_is_caught() {
    let doc = json!({"connection": {"config": {"type": "Postgres",
        "connectionOptions": {"sslpassword": "s3cret", "sslmode": "require"}}}});
    assert_eq!(
        net_finds(&shipped(&[]), "databaseService", &doc),
        vec!["$.connection.config.connectionOptions.sslpassword"]
    );
}

#[test]
fn a_kafka_sasl_password_inside_a_database_service_is_caught() {
    let doc = json!({"connection": {"config": {"type": "Mysql",
        "connectionArguments": {"kafka": {"saslPassword": "s3cret", "saslMechanism": "PLAIN"}}}}});
    assert_eq!(
        net_finds(&shipped(&[]), "databaseService", &doc),
        vec!["$.connection.config.connectionArguments.kafka.saslPassword"]
    );
}

#[test]
fn an_object_under_a_secret_looking_name_is_walked_into() {
    let doc = json!({"connection": {"config": {"type": "Unknown",
        "awsCredentials": {"awsRegion": "eu-west-1", "awsSecretAccessKey": "s3cret"}}}});
    assert_eq!(
        net_finds(&shipped(&[]), "databaseService", &doc),
        vec!["$.connection.config.awsCredentials.awsSecretAccessKey"]
    );
}

#[test]
fn the_token_endpoint_of_an_unknown_connector_is_forwarded_as_is() {
    let doc = json!({"connection": {"config": {"type": "Unknown",
        "tokenEndpoint": "https://idp/token", "secretsManagerProvider": "aws"}}});
    assert!(net_finds(&shipped(&[]), "databaseService", &doc).is_empty());
}

#[test]
fn configured_safety_net_keys_add_exact_names() {
    let rules = shipped(&["host_Port"]);
    assert!(rules.is_secret_key("hostPort"));
    assert!(!shipped(&[]).is_secret_key("hostPort"));
}

#[test]
fn the_net_walks_into_arrays_of_objects_and_takes_scalars_of_arrays() {
    let doc = json!({"connection": {"config": {"type": "Unknown",
        "servers": [{"bearerToken": "t1", "url": "u"}],
        "apiTokens": ["a", "b"]}}});
    assert_eq!(
        net_finds(&shipped(&[]), "databaseService", &doc),
        vec![
            "$.connection.config.apiTokens[0]",
            "$.connection.config.apiTokens[1]",
            "$.connection.config.servers[0].bearerToken",
        ]
    );
}

#[test]
fn dotted_option_names_are_judged_as_their_normalised_form() {
    // The judgement's short-name path once kept the dots `names::norm_key` drops, so Kafka's
    // `sasl.jaas.config` (which holds the login module's password) passed as plain.
    let rules = shipped(&[]);
    for name in ["sasl.jaas.config", "SASL.JAAS.CONFIG", "ssl.key.password"] {
        assert!(rules.is_secret_key(name), "{name}");
        // A second time: the cached judgement is the same.
        assert!(rules.is_secret_key(name), "{name} (cached)");
    }
    assert!(!rules.is_secret_key("bootstrap.servers"));
}
