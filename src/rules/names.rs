//! The safety net's name policy: which member names hold a secret wherever they appear inside
//! a rule's `safety_net` subtrees, even where no rule names the path (unknown connectors,
//! free-form maps such as `connectionOptions`, fields OpenMetadata adds later).
//!
//! The patterns are checked against every field name of OpenMetadata 2.0.7's models
//! (`tests/data/om-2.0.7-field-names.json`, made by `rules/extract_field_names.py`) by
//! `tests/safety_net_names.rs`: every secret field name is caught and no plain scalar field is.
//! Names are compared normalised ([`norm_key`]): `sasl_Password`, `SASL-PASSWORD` and
//! `saslPassword` are one name.

use std::collections::HashSet;

/// A name holding one of these anywhere is a secret.
const CONTAINS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "secret",
    "credential",
    // Kafka's `sasl.jaas.config` holds the login module's password (and any other JAAS
    // option names it).
    "jaas",
];

/// A name ending in one of these, or in its plural, is a secret (`secretkey` is already covered
/// by `secret`). Only endings: `tokenEndpoint`, `tokenType`, `JWTTokenExpiry`, `privateKeyId`,
/// `privateKeyPath` and `apiKeyId` are plain fields.
const ENDS_WITH: &[&str] = &[
    "token",
    "apikey",
    "privatekey",
    "accesskey",
    // Free-form option names seen in drivers' and SDKs' settings (hostile probe): none is a
    // plain field of OpenMetadata 2.0.7's models.
    "accountkey",
    "sessionkey",
    "encryptionkey",
    "masterkey",
    "clientkey",
    "keypem",
    "apikeyvalue",
    "tokenvalue",
    // Driver and JDBC option names a second hostile probe found passing: Snowflake's
    // `private_key_file_pwd`, `keystore_pwd`, `keystorePass`, `truststore_pass`, `db_pass`,
    // `proxy-authorization`, `creds`.
    "pwd",
    "pass",
    "authorization",
    "creds",
    // Client keyword arguments and header names a fourth hostile probe found passing:
    // Elasticsearch's `http_auth` and `basic_auth`, `X-Tableau-Auth`, `Cookie`, `keytab`,
    // `X-Auth-Key`, `Ocp-Apim-Subscription-Key`, `DD-APPLICATION-KEY`, `signingKey`,
    // `sessionId`.
    "auth",
    "cookie",
    "keytab",
    "authkey",
    "subscriptionkey",
    "applicationkey",
    "signingkey",
    "sessionid",
];

/// Secret fields of OpenMetadata 2.0.7 (`CustomSecretStr`) that no pattern above matches and
/// whose name is never a plain field there. Broader patterns would catch plain fields:
/// `clientCertificate`, `rootCertificate` (Qlik: file paths), `clientCertPath`.
const EXACT: &[&str] = &[
    "authorization",
    "connectionstring",
    "keyfilejson",
    "pass",
    "pw",
    "pwd",
    "serviceaccountjson",
    "authstring",
    "basicauthuserinfo",
    "cacertificate",
    "cacertvalue",
    "clientcertvalue",
    "idpx509certificate",
    "jwt",
    "privatekeyvalue",
    "proxyauthentication",
    "spx509certificate",
    "sslcertificate",
    "sslkey",
    // Header-style option names (second hostile probe).
    "bearer",
    "xauth",
];

/// Words that contain a pattern but name something else; dropped before the patterns are
/// tried. `secretsManagerProvider` and `secretsManagerLoader` are enums of the
/// OpenMetadata server connection; a `secretsManagerPassword` would still be caught.
const NOT_SECRET_WORDS: &[&str] = &["secretsmanager"];

/// Plain fields of OpenMetadata 2.0.7 that a pattern matches, each never a secret there:
/// - `gitcredentials`: Looker's repository credentials, an object (walked into, so the
///   `token` inside is still caught) or a local repository path;
/// - `useawscredentials`: a boolean switch of the search indexing pipeline;
/// - `signingsecret`: the Slack application's signing secret, which OpenMetadata keeps in
///   clear (not `format: password`) because its server verifies Slack's requests with it;
/// - `auth`: Hive's authentication mode (`NONE`, `LDAP`, `KERBEROS`, ...);
/// - `enableiamauth`: a boolean switch of Cloud SQL connections.
const NOT_SECRET: &[&str] = &[
    "gitcredentials",
    "useawscredentials",
    "signingsecret",
    "auth",
    "enableiamauth",
];

/// The form names are compared in: lower-cased, `_`, `-` and `.` dropped.
pub(crate) fn norm_key(k: &str) -> String {
    k.chars()
        .filter(|c| !matches!(c, '_' | '-' | '.'))
        .flat_map(|c| c.to_lowercase())
        .collect()
}

/// Whether a member whose normalised name is `normalised` holds a secret: one of the
/// configured `extra_exact` names (`rules.safety_net_keys`, normalised), one of the built-in
/// exact names, or a name that matches a pattern and is not a known plain field.
pub(crate) fn is_secret_name(normalised: &str, extra_exact: &HashSet<String>) -> bool {
    if (!extra_exact.is_empty() && extra_exact.contains(normalised)) || EXACT.contains(&normalised)
    {
        return true;
    }
    if NOT_SECRET.contains(&normalised) {
        return false;
    }
    let mut name = std::borrow::Cow::Borrowed(normalised);
    for word in NOT_SECRET_WORDS {
        if holds(&name, word) {
            name = std::borrow::Cow::Owned(name.replace(word, " "));
        }
    }
    let singular = name.strip_suffix('s').unwrap_or(&name);
    CONTAINS.iter().any(|p| holds(&name, p))
        || ENDS_WITH
            .iter()
            .any(|p| name.ends_with(p) || singular.ends_with(p))
}

/// Member names already judged, per thread, for one rule set at a time: OpenMetadata's
/// entities repeat a few hundred names, and judging one costs a few hundred instructions on
/// every inspected body. Bounded: past [`MemberCache::MAX`] names (a body of random names),
/// new names are judged every time rather than kept.
pub(crate) struct MemberCache<V> {
    generation: u64,
    judged: std::collections::HashMap<Box<str>, V, foldhash::fast::FixedState>,
}

impl<V: Copy> MemberCache<V> {
    const MAX: usize = 4096;
    /// Names longer than this are judged every time (none of OpenMetadata's is).
    const LONGEST: usize = 64;

    pub(crate) fn new() -> MemberCache<V> {
        MemberCache {
            generation: 0,
            judged: Default::default(),
        }
    }

    /// The judgement of `key` under the rule set of `generation`, from `judge` when new.
    pub(crate) fn get_or(&mut self, generation: u64, key: &str, judge: impl FnOnce() -> V) -> V {
        if self.generation != generation {
            self.judged.clear();
            self.generation = generation;
        }
        if let Some(v) = self.judged.get(key) {
            return *v;
        }
        let v = judge();
        if key.len() <= Self::LONGEST && self.judged.len() < Self::MAX {
            self.judged.insert(key.into(), v);
        }
        v
    }
}

thread_local! {
    /// [`RuleSet::is_secret_key`](super::RuleSet::is_secret_key)'s judgements.
    pub(crate) static CACHE: std::cell::RefCell<MemberCache<bool>> =
        std::cell::RefCell::new(MemberCache::new());
}

static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A number no other rule set of this process has.
pub(crate) fn next_generation() -> u64 {
    GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// `str::contains` for member names: a plain scan, as names are short and the searcher the
/// standard library sets up per call costs more than the scan (this runs for every member
/// name of every inspected body).
fn holds(name: &str, word: &str) -> bool {
    let (h, w) = (name.as_bytes(), word.as_bytes());
    let Some((&first, _)) = w.split_first() else {
        return true;
    };
    h.len() >= w.len() && (0..=h.len() - w.len()).any(|i| h[i] == first && &h[i..i + w.len()] == w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(name: &str) -> bool {
        is_secret_name(&norm_key(name), &HashSet::new())
    }

    #[test]
    fn a_cache_answers_per_rule_set_and_judges_again_for_another() {
        let mut c = MemberCache::new();
        assert!(c.get_or(1, "password", || true));
        // Kept: the judge is not asked again for the same rule set.
        assert!(c.get_or(1, "password", || false));
        // Another rule set judges afresh.
        assert!(!c.get_or(2, "password", || false));
        let long = "x".repeat(MemberCache::<bool>::LONGEST + 1);
        assert!(c.get_or(2, &long, || true));
        assert!(!c.get_or(2, &long, || false), "long names are not kept");
    }

    #[test]
    fn names_are_compared_lower_cased_without_underscores_or_dashes() {
        assert_eq!(norm_key("SASL_Pass-word"), "saslpassword");
    }

    #[test]
    fn option_names_the_hostile_probe_found_missed_are_secret() {
        for n in [
            "pwd",
            "pass",
            "pw",
            "sasl.jaas.config",
            "private_key_pem",
            "privateKeyPem",
            "Authorization",
            "accountKey",
            "sessionKey",
            "encryptionKey",
            "masterKey",
            "clientKey",
            "apiKeyValue",
            "refreshTokenValue",
            "keyfile_json",
            "serviceAccountJson",
            "connectionString",
        ] {
            assert!(secret(n), "{n}");
        }
        assert!(!secret("passive"));
        assert!(!secret("primaryKey"));
    }

    #[test]
    fn option_names_the_fourth_probe_found_missed_are_secret() {
        for n in [
            "http_auth",
            "basic_auth",
            "X-Tableau-Auth",
            "Cookie",
            "session_cookie",
            "keytab",
            "X-Auth-Key",
            "Ocp-Apim-Subscription-Key",
            "DD-APPLICATION-KEY",
            "signingKey",
            "sessionId",
        ] {
            assert!(secret(n), "{n}");
        }
        for n in [
            "authType",
            "authMechanism",
            "authentication",
            "authority",
            "keyId",
        ] {
            assert!(!secret(n), "{n}");
        }
    }

    #[test]
    fn option_names_the_second_probe_found_missed_are_secret() {
        for n in [
            "private_key_file_pwd",
            "keystore_pwd",
            "keystorePass",
            "truststore_pass",
            "db_pass",
            "storepass",
            "keyPass",
            "proxy-authorization",
            "creds",
            "bearer",
            "jaas",
            "x-auth",
        ] {
            assert!(secret(n), "{n}");
        }
        for n in ["passive", "passThrough", "compassion", "author", "credo"] {
            assert!(!secret(n), "{n}");
        }
    }

    #[test]
    fn a_name_containing_password_is_secret() {
        assert!(secret("keyStorePassword"));
    }

    #[test]
    fn a_free_form_option_named_like_a_password_is_secret() {
        assert!(secret("sslpassword"));
    }

    #[test]
    fn a_name_containing_passwd_is_secret() {
        assert!(secret("db_passwd"));
    }

    #[test]
    fn a_name_containing_passphrase_is_secret() {
        assert!(secret("snowflakePrivatekeyPassphrase"));
    }

    #[test]
    fn a_name_containing_secret_is_secret() {
        assert!(secret("personalAccessTokenSecret"));
    }

    #[test]
    fn a_name_containing_credential_is_secret() {
        assert!(secret("credentials"));
    }

    #[test]
    fn a_name_ending_in_token_is_secret() {
        assert!(secret("dbtCloudAuthToken"));
    }

    #[test]
    fn a_name_ending_in_tokens_is_secret() {
        assert!(secret("apiTokens"));
    }

    #[test]
    fn a_name_starting_with_token_is_not_secret() {
        assert!(!secret("tokenEndpoint"));
    }

    #[test]
    fn a_token_expiry_is_not_secret() {
        assert!(!secret("JWTTokenExpiry"));
    }

    #[test]
    fn a_name_ending_in_api_key_is_secret() {
        assert!(secret("api_key"));
    }

    #[test]
    fn an_api_key_id_is_not_secret() {
        assert!(!secret("apiKeyId"));
    }

    #[test]
    fn a_name_ending_in_private_key_is_secret() {
        assert!(secret("spPrivateKey"));
    }

    #[test]
    fn a_private_key_path_is_not_secret() {
        assert!(!secret("privateKeyPath"));
    }

    #[test]
    fn a_name_ending_in_access_key_is_secret() {
        assert!(secret("storageAccessKey"));
    }

    #[test]
    fn a_built_in_exact_name_is_secret() {
        assert!(secret("sslKey"));
    }

    #[test]
    fn a_certificate_path_is_not_secret() {
        assert!(!secret("clientCertificate"));
    }

    #[test]
    fn the_secrets_manager_settings_are_not_secret() {
        assert!(!secret("secretsManagerProvider"));
    }

    #[test]
    fn a_password_of_the_secrets_manager_is_secret() {
        assert!(secret("secretsManagerPassword"));
    }

    #[test]
    fn a_switch_for_aws_credentials_is_not_secret() {
        assert!(!secret("useAwsCredentials"));
    }

    #[test]
    fn looker_git_credentials_are_not_secret() {
        assert!(!secret("gitCredentials"));
    }

    #[test]
    fn a_plain_name_is_not_secret() {
        assert!(!secret("hostPort"));
    }

    #[test]
    fn a_configured_exact_name_is_secret() {
        let extra: HashSet<String> = [norm_key("hostPort")].into_iter().collect();
        assert!(is_secret_name("hostport", &extra));
    }

    #[test]
    fn a_configured_exact_name_overrides_a_known_plain_field() {
        let extra: HashSet<String> = [norm_key("signingSecret")].into_iter().collect();
        assert!(is_secret_name("signingsecret", &extra));
    }
}
