//! Secret ids, built exactly as OpenMetadata builds them:
//! `[/<prefix>]/<cluster_name>/<root...>/<field parts...>`, all lower-cased; in every part
//! taken from an entity or field name, each character outside `[A-Za-z0-9/_-]` becomes `_`;
//! a field part is the JSON property name with `_` and `-` dropped (OpenMetadata derives it
//! from the generated getter's name); an array element adds its index.

use super::jsonpath::Step;

/// Lower-cases and replaces every character outside `[A-Za-z0-9/_-]` with `_`.
pub fn sanitize(part: &str) -> String {
    part.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '/' || c == '_' || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// A JSON property name as a field part: `_` and `-` dropped, lower-cased, sanitised.
pub fn field_part(name: &str) -> String {
    let dropped: String = name.chars().filter(|c| *c != '_' && *c != '-').collect();
    sanitize(&dropped)
}

/// Builds ids for one gateway configuration.
#[derive(Debug, Clone)]
pub struct IdBuilder {
    /// `/<prefix>/<cluster>` or `/<cluster>`, lower-cased.
    head: String,
}

impl IdBuilder {
    pub fn new(prefix: &str, cluster_name: &str) -> IdBuilder {
        let mut head = String::new();
        let prefix = prefix.trim_matches('/');
        if !prefix.is_empty() {
            head.push('/');
            head.push_str(&sanitize(prefix));
        }
        head.push('/');
        head.push_str(&sanitize(cluster_name.trim_matches('/')));
        IdBuilder { head }
    }

    /// The id root of an entity: `root_template` is e.g. `database/{name}`.
    pub fn root(&self, root_template: &str, name: &str) -> String {
        let root = root_template.replace("{name}", name);
        format!("{}/{}", self.head, sanitize(&root))
    }

    /// The id of a secret at `steps` (relative to the rule's field base) under `root`.
    pub fn id(&self, root: &str, steps: &[Step]) -> String {
        let mut id = root.to_string();
        for s in steps {
            id.push('/');
            match s {
                Step::Key(k) => id.push_str(&field_part(k)),
                Step::Index(i) => id.push_str(&i.to_string()),
            }
        }
        id
    }

    /// Everything the gateway builds starts with this.
    pub fn head(&self) -> &str {
        &self.head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(parts: &[&str]) -> Vec<Step> {
        parts.iter().map(|p| Step::Key(p.to_string())).collect()
    }

    #[test]
    fn mysql_password_id_matches_the_spec() {
        let b = IdBuilder::new("", "openmetadata");
        let root = b.root("database/{name}", "mysql-test");
        assert_eq!(
            b.id(&root, &keys(&["authType", "password"])),
            "/openmetadata/database/mysql-test/authtype/password"
        );
    }

    #[test]
    fn a_prefix_comes_first() {
        let b = IdBuilder::new("acme", "openmetadata");
        let root = b.root("database/{name}", "mysql-test");
        assert_eq!(
            b.id(&root, &keys(&["authType", "password"])),
            "/acme/openmetadata/database/mysql-test/authtype/password"
        );
    }

    #[test]
    fn spaces_in_names_become_underscores_and_case_is_lowered() {
        let b = IdBuilder::new("", "openmetadata");
        let root = b.root("database/{name}", "My Service");
        assert_eq!(
            b.id(&root, &keys(&["authType", "password"])),
            "/openmetadata/database/my_service/authtype/password"
        );
    }

    #[test]
    fn dbt_pipeline_id_matches_the_spec() {
        let b = IdBuilder::new("", "openmetadata");
        let root = b.root("pipeline/{name}", "dbt-nightly");
        let steps = keys(&[
            "sourceConfig",
            "config",
            "dbtConfigSource",
            "dbtSecurityConfig",
            "awsSecretAccessKey",
        ]);
        assert_eq!(
            b.id(&root, &steps),
            "/openmetadata/pipeline/dbt-nightly/sourceconfig/config/dbtconfigsource/dbtsecurityconfig/awssecretaccesskey"
        );
    }

    #[test]
    fn bot_jwt_id_matches_the_spec() {
        let b = IdBuilder::new("", "openmetadata");
        let root = b.root("bot/{name}", "ingestion-bot");
        assert_eq!(
            b.id(&root, &keys(&["config", "JWTToken"])),
            "/openmetadata/bot/ingestion-bot/config/jwttoken"
        );
    }

    #[test]
    fn array_elements_add_their_index_and_underscores_in_fields_drop() {
        let b = IdBuilder::new("", "openmetadata");
        let root = b.root("pipeline/{name}", "p");
        let steps = vec![
            Step::Key("serviceConnections".into()),
            Step::Index(2),
            Step::Key("ssl_key".into()),
        ];
        assert_eq!(
            b.id(&root, &steps),
            "/openmetadata/pipeline/p/serviceconnections/2/sslkey"
        );
    }

    #[test]
    fn names_that_differ_only_in_punctuation_share_an_id() {
        let b = IdBuilder::new("", "openmetadata");
        assert_eq!(
            b.root("database/{name}", "a b"),
            b.root("database/{name}", "a.b")
        );
        assert_eq!(
            b.root("database/{name}", "a b"),
            b.root("database/{name}", "a_b")
        );
    }
}
