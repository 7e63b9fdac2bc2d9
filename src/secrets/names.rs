//! From the gateway's canonical id (`/openmetadata/database/x/authtype/password`) to each
//! vendor's secret name, as OpenMetadata builds them, and back through a tag.
//!
//! The mappings lose information (`_` and `.` disappear on Azure, `-` on Google, case and
//! punctuation on Kubernetes), so every store also writes the canonical id into the secret's
//! tag, label-like annotation or annotation [`ID_TAG`]: `list` reads ids from it, and a write
//! whose name already holds another id is refused instead of overwriting that secret.

/// Tag (Azure), annotation (Google, Kubernetes) holding the canonical id.
pub(crate) const ID_TAG: &str = "omsp-secret-id";

/// Names longer than a vendor takes are cut and end in a hash of the whole id, so two long
/// ids never share a name (OpenMetadata fails on them instead).
fn capped(name: String, max: usize, sep: char, id: &str) -> String {
    if name.len() <= max {
        return name;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    let hash: String = digest.as_ref()[..5]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let keep = max - hash.len() - 1;
    let mut head = name[..keep].to_string();
    while head.ends_with(sep) {
        head.pop();
    }
    format!("{head}{sep}{hash}")
}

/// Joins the id's parts with `sep`, keeping in each only the characters `keep` allows.
fn joined(id: &str, sep: char, keep: impl Fn(char) -> bool) -> String {
    id.trim_start_matches('/')
        .split('/')
        .map(|part| part.chars().filter(|c| keep(*c)).collect::<String>())
        .collect::<Vec<_>>()
        .join(&sep.to_string())
}

/// Azure Key Vault: no leading separator, `-` between parts, characters outside
/// `[A-Za-z0-9-]` removed; at most 127 characters.
pub(crate) fn azure(id: &str) -> Option<String> {
    let name = joined(id, '-', |c| c.is_ascii_alphanumeric() || c == '-');
    (!name.trim_matches('-').is_empty()).then(|| capped(name, 127, '-', id))
}

/// Google Secret Manager: `_` between parts, characters outside `[A-Za-z0-9_]` removed; at
/// most 255 characters.
pub(crate) fn gcp(id: &str) -> Option<String> {
    let name = joined(id, '_', |c| c.is_ascii_alphanumeric() || c == '_');
    (!name.trim_matches('_').is_empty()).then(|| capped(name, 255, '_', id))
}

/// Kubernetes (OpenMetadata's `sanitizeSecretName`): lower-cased, every character outside
/// `[a-z0-9-]` becomes `-`, runs of `-` collapse, leading and trailing `-` go, `om-` in
/// front of a name that does not start with a letter, at most 253 characters.
pub(crate) fn kubernetes(id: &str) -> Option<String> {
    let mut name = String::with_capacity(id.len());
    for c in id.chars().flat_map(char::to_lowercase) {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if !(c == '-' && (name.is_empty() || name.ends_with('-'))) {
            name.push(c);
        }
    }
    while name.ends_with('-') {
        name.pop();
    }
    if name.is_empty() {
        return None;
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        name.insert_str(0, "om-");
    }
    Some(capped(name, 253, '-', id))
}

/// A label value: at most 63 of `[A-Za-z0-9_.-]` (`lower`: Google wants lower case), starting
/// and ending with an alphanumeric where the vendor requires it.
pub(crate) fn label_value(v: &str, lower: bool) -> String {
    let mut out: String = v
        .chars()
        .map(|c| {
            let c = if lower { c.to_ascii_lowercase() } else { c };
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || (c == '.' && !lower) {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    while out.ends_with(|c: char| !c.is_ascii_alphanumeric()) {
        out.pop();
    }
    while out.starts_with(|c: char| !c.is_ascii_alphanumeric()) {
        out.remove(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "/openmetadata/database/my_service/authtype/password";

    #[test]
    fn azure_names_drop_the_leading_separator_and_everything_outside_alphanumerics_and_dashes() {
        assert_eq!(
            azure(ID).unwrap(),
            "openmetadata-database-myservice-authtype-password"
        );
        assert_eq!(
            azure("/openmetadata/database/mysql-test/authtype/password").unwrap(),
            "openmetadata-database-mysql-test-authtype-password"
        );
        assert_eq!(azure("/a/.owner").unwrap(), "a-owner");
        assert_eq!(azure("/__/"), None);
    }

    #[test]
    fn gcp_names_join_with_underscores_and_drop_dashes() {
        assert_eq!(
            gcp(ID).unwrap(),
            "openmetadata_database_my_service_authtype_password"
        );
        assert_eq!(
            gcp("/openmetadata/database/mysql-test/authtype/password").unwrap(),
            "openmetadata_database_mysqltest_authtype_password"
        );
    }

    #[test]
    fn kubernetes_names_follow_openmetadatas_sanitize_rules() {
        // The cases of OpenMetadata's KubernetesSecretsManagerTest.
        for (input, want) in [
            (
                "/prefix/cluster/service/password/field",
                "prefix-cluster-service-password-field",
            ),
            ("///leading-slashes/field", "leading-slashes-field"),
            ("UPPERCASE-NAME/field", "uppercase-name-field"),
            ("special@#$%characters/field", "special-characters-field"),
            ("consecutive---hyphens/field", "consecutive-hyphens-field"),
            ("-leading-hyphen/field", "leading-hyphen-field"),
            ("trailing-hyphen-/field", "trailing-hyphen-field"),
        ] {
            assert_eq!(kubernetes(input).unwrap(), want, "{input}");
        }
        assert_eq!(
            kubernetes(ID).unwrap(),
            "openmetadata-database-my-service-authtype-password"
        );
        assert_eq!(kubernetes("/1acme/x").unwrap(), "om-1acme-x");
        assert_eq!(kubernetes("/__/"), None);
    }

    #[test]
    fn names_over_the_vendor_limit_end_in_a_hash_of_the_whole_id() {
        let a = format!("/openmetadata/database/{}/password", "s".repeat(300));
        let b = format!("/openmetadata/database/{}/passwd", "s".repeat(300));
        for f in [azure, gcp, kubernetes] {
            let (na, nb) = (f(&a).unwrap(), f(&b).unwrap());
            assert_ne!(na, nb);
            assert!(na.len() <= 255, "{na}");
            assert!(na.chars().last().unwrap().is_ascii_alphanumeric());
        }
        assert_eq!(azure(&a).unwrap().len(), 127);
        assert_eq!(gcp(&a).unwrap().len(), 255);
        assert_eq!(kubernetes(&a).unwrap().len(), 253);
    }

    #[test]
    fn label_values_keep_to_the_label_alphabet() {
        assert_eq!(label_value("Data Team!", true), "data_team");
        assert_eq!(label_value("v1.2", false), "v1.2");
        assert_eq!(label_value(&"x".repeat(80), false).len(), 63);
    }
}
