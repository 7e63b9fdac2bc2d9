//! Secret ids: `[/<prefix>]/<cluster_name>/<root...>/<field parts...>`, all lower-cased.
//!
//! Built as OpenMetadata builds them, with one difference that keeps entities apart: in
//! every part taken from an entity or field name, each character outside `[A-Za-z0-9_-]`
//! becomes `_`, **including `/`** (OpenMetadata keeps `/`, so a service named
//! `victim/authType` would write into the secrets of `victim`). A part is never empty (an
//! empty one becomes `_`), so ids never hold `..` or empty segments (the prefix and the
//! cluster name keep `.` inside a segment, as OpenMetadata keeps them).
//!
//! Roots follow one rule: no entity's root equals, contains or is contained in another
//! entity's, except where two names map to the same root, which the owner marker settles
//! (`secrets::ownership`). Every root is `<type>/<name>` (one name segment) or, for kinds
//! scoped by a parent (ingestion pipelines under a service), optionally
//! `<scoped type>/<parent>/<name>` under a type segment no other kind uses; so roots of one
//! type segment all have the same depth and none is a prefix of another
//! ([`RuleSet`](super::RuleSet) refuses rule files that break this).
//!
//! A field part is the JSON property name with `_` and `-` dropped (OpenMetadata derives it
//! from the generated getter's name), then sanitised; an array element adds its index.

use super::jsonpath::Step;

/// Lower-cases and replaces every character outside `[A-Za-z0-9_-]` with `_`; an empty part
/// becomes `_`. One name is always exactly one id segment.
pub(crate) fn sanitize(part: &str) -> String {
    if part.is_empty() {
        return "_".into();
    }
    part.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// A JSON property name as a field part: `_` and `-` dropped, lower-cased, sanitised (the
/// id builder appends parts with `push_field_part`; this form is for tests).
#[cfg(test)]
fn field_part(name: &str) -> String {
    let mut part = String::with_capacity(name.len());
    push_field_part(&mut part, name);
    part
}

/// Appends [`field_part`]`(name)` to `out` (one pass, no allocation of its own).
fn push_field_part(out: &mut String, name: &str) {
    let start = out.len();
    for c in name.chars().filter(|c| *c != '_' && *c != '-') {
        out.push(if c.is_ascii_alphanumeric() {
            c.to_ascii_lowercase()
        } else {
            '_'
        });
    }
    if out.len() == start {
        out.push('_');
    }
}

/// Whether `id` could have been built by the gateway: `/`-separated non-empty segments of
/// `[a-z0-9_-]` (no `.`, `..`, upper case or empty segment).
pub(crate) fn is_buildable(id: &str) -> bool {
    id.strip_prefix('/').is_some_and(|rest| {
        rest.split('/').all(|seg| {
            !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        })
    })
}

/// A segment of the prefix or the cluster name: as [`sanitize`], but `.` is kept, as
/// OpenMetadata keeps these as configured (`prod.east`); a segment of dots alone (`.`, `..`)
/// becomes `_`, so no id walks up a path.
fn sanitize_head(seg: &str) -> String {
    if seg.chars().all(|c| c == '.') {
        return "_".into();
    }
    seg.chars()
        .map(|c| match c {
            '.' => '.',
            c if c.is_ascii_alphanumeric() || c == '_' || c == '-' => c.to_ascii_lowercase(),
            _ => '_',
        })
        .collect()
}

/// Builds ids for one gateway configuration.
#[derive(Debug, Clone)]
pub struct IdBuilder {
    /// `/<prefix>/<cluster>` or `/<cluster>`, lower-cased, each segment sanitised.
    head: String,
}

impl IdBuilder {
    /// `prefix` and `cluster_name` come from the operator's config and may hold `/`
    /// (several segments); each segment is sanitised and empty ones are dropped.
    pub fn new(prefix: &str, cluster_name: &str) -> IdBuilder {
        let mut head = String::new();
        for seg in prefix.split('/').chain(cluster_name.split('/')) {
            if !seg.is_empty() {
                head.push('/');
                head.push_str(&sanitize_head(seg));
            }
        }
        if head.is_empty() {
            head.push_str("/_");
        }
        IdBuilder { head }
    }

    /// The id root of an entity: `template` is e.g. `database/{name}`; its literal segments
    /// are kept, `{name}` becomes one sanitised segment.
    pub(crate) fn root(&self, template: &str, name: &str) -> String {
        self.fill(template, &[("{name}", name)])
    }

    /// The root of an entity scoped by a parent: `template` is e.g.
    /// `ingestion/{scope}/{name}`, `scope` the parent's fully qualified name.
    pub(crate) fn scoped_root(&self, template: &str, scope: &str, name: &str) -> String {
        self.fill(template, &[("{scope}", scope), ("{name}", name)])
    }

    /// The root an earlier version built for `name` when it differs from [`Self::root`]:
    /// it kept `/` in names (several segments). Secrets found there are moved to the
    /// entity's root on its next write (`rewrite::owner`).
    pub(crate) fn legacy_root(&self, template: &str, name: &str) -> Option<String> {
        if !name.contains('/') {
            return None;
        }
        let kept: String = template
            .replace("{name}", name)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '/' || c == '_' || c == '-' {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        Some(format!("{}/{kept}", self.head))
    }

    fn fill(&self, template: &str, values: &[(&str, &str)]) -> String {
        let mut root = self.head.clone();
        for seg in template.split('/').filter(|s| !s.is_empty()) {
            root.push('/');
            match values.iter().find(|(k, _)| *k == seg) {
                Some((_, v)) => root.push_str(&sanitize(v)),
                None => root.push_str(&sanitize(seg)),
            }
        }
        root
    }

    /// The id of a secret at `steps` (relative to the rule's field base) under `root`.
    pub fn id(&self, root: &str, steps: &[Step]) -> String {
        let mut id = String::with_capacity(root.len() + 16 * steps.len());
        id.push_str(root);
        for s in steps {
            id.push('/');
            match s {
                Step::Key(k) => push_field_part(&mut id, k),
                Step::Index(i) => {
                    use std::fmt::Write;
                    let _ = write!(id, "{i}");
                }
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

    #[test]
    fn field_parts_drop_separators_then_sanitise_and_are_never_empty() {
        let old = |n: &str| {
            sanitize(
                &n.chars()
                    .filter(|c| *c != '_' && *c != '-')
                    .collect::<String>(),
            )
        };
        for name in [
            "",
            "_-",
            "a_b-C",
            "ünï/x",
            "a.b",
            "Pass Word",
            "authType",
            "x\u{0}",
        ] {
            assert_eq!(field_part(name), old(name), "{name:?}");
        }
        assert_eq!(field_part("_-"), "_");
        assert_eq!(field_part("ünï/x"), "_n__x");
    }

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

    #[test]
    fn a_slash_in_a_name_stays_inside_one_segment() {
        let b = IdBuilder::new("", "openmetadata");
        let attacker = b.root("database/{name}", "victim/authType");
        assert_eq!(attacker, "/openmetadata/database/victim_authtype");
        let victim = b.root("database/{name}", "victim");
        let victim_password = b.id(&victim, &keys(&["authType", "password"]));
        let attacker_password = b.id(&attacker, &keys(&["password"]));
        assert_ne!(victim_password, attacker_password);
        assert!(!attacker.starts_with(&format!("{victim}/")));
        assert!(!b
            .root("database/{name}", "team/prod")
            .starts_with(&format!("{}/", b.root("database/{name}", "team"))));
    }

    #[test]
    fn dots_and_empty_parts_never_reach_an_id() {
        let b = IdBuilder::new("", "openmetadata");
        let root = b.root("database/{name}", "../..");
        assert_eq!(root, "/openmetadata/database/_____");
        let id = b.id(&root, &keys(&["__", "a/b", "x.y"]));
        assert_eq!(id, "/openmetadata/database/_____/_/a_b/x_y");
        assert!(is_buildable(&id));
    }

    #[test]
    fn a_scoped_root_has_its_own_type_segment_and_two_name_segments() {
        let b = IdBuilder::new("acme", "openmetadata");
        assert_eq!(
            b.scoped_root("ingestion/{scope}/{name}", "mysql.prod", "dbt/nightly"),
            "/acme/openmetadata/ingestion/mysql_prod/dbt_nightly"
        );
    }

    #[test]
    fn only_ids_the_gateway_could_build_are_buildable() {
        for ok in ["/openmetadata/database/a_b/authtype/password", "/x/0/y-z"] {
            assert!(is_buildable(ok), "{ok}");
        }
        for bad in [
            "openmetadata/a",
            "/openmetadata//a",
            "/openmetadata/./a",
            "/openmetadata/../a",
            "/openmetadata/a/.owner",
            "/openmetadata/A",
            "/openmetadata/a b",
            "/openmetadata/a/",
        ] {
            assert!(!is_buildable(bad), "{bad}");
        }
    }

    #[test]
    fn a_name_with_a_slash_has_the_legacy_root_earlier_versions_built() {
        let b = IdBuilder::new("", "openmetadata");
        assert_eq!(
            b.legacy_root("database/{name}", "team/Prod"),
            Some("/openmetadata/database/team/prod".to_string())
        );
        assert_eq!(b.legacy_root("database/{name}", "team prod"), None);
    }

    #[test]
    fn a_prefix_with_slashes_keeps_its_segments_and_drops_empty_ones() {
        let b = IdBuilder::new("/acme//Team/", "open metadata");
        assert_eq!(b.head(), "/acme/team/open_metadata");
    }

    #[test]
    fn dots_in_the_prefix_and_cluster_name_are_kept_as_openmetadata_keeps_them() {
        let b = IdBuilder::new("acme.corp", "Prod.East");
        assert_eq!(b.head(), "/acme.corp/prod.east");
        assert_eq!(IdBuilder::new("..", ".").head(), "/_/_");
        assert_eq!(IdBuilder::new("", "a..b").head(), "/a..b");
    }
}
