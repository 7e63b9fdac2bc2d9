//! Root templates (`database/{name}`, `ingestion/{scope}/{name}`) and the rule that keeps
//! entities apart: no entity's id root may equal, contain or be contained in another's.
//!
//! A name always fills exactly one segment (`ids::sanitize` turns `/` into `_`), so a root
//! built from a template has the template's depth. Two templates of the same depth build
//! roots that can only be equal (the owner marker settles that), never nested; two of
//! different depths could nest unless a literal segment tells them apart. Such pairs are
//! refused when the rules load.

/// One segment of a root template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TSeg {
    Lit(String),
    /// `{name}` or `{scope}`: one sanitised name.
    Hole,
}

/// Parses and checks a template: non-empty segments, literals in the id alphabet,
/// `{name}` exactly once and last, `{scope}` exactly once when `scoped` (never otherwise).
pub(crate) fn parse(template: &str, scoped: bool) -> Result<Vec<TSeg>, String> {
    let segs: Vec<&str> = template.split('/').collect();
    let mut out = Vec::with_capacity(segs.len());
    let (mut names, mut scopes) = (0, 0);
    for s in &segs {
        match *s {
            "{name}" => {
                names += 1;
                out.push(TSeg::Hole);
            }
            "{scope}" => {
                scopes += 1;
                out.push(TSeg::Hole);
            }
            lit if !lit.is_empty()
                && lit.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                }) =>
            {
                out.push(TSeg::Lit(lit.to_string()))
            }
            other => {
                return Err(format!(
                    "root {template:?}: segment {other:?} must be {{name}}, {{scope}} or hold only a-z, 0-9, '_', '-'"
                ))
            }
        }
    }
    if names == 0 {
        return Err(format!("root {template:?} must contain {{name}}"));
    }
    if names != 1 || segs.last() != Some(&"{name}") {
        return Err(format!(
            "root {template:?} must end in {{name}} and hold it once"
        ));
    }
    if scopes != usize::from(scoped) {
        return Err(match scoped {
            true => format!("scope root {template:?} must hold {{scope}} once"),
            false => format!("root {template:?} must not hold {{scope}}"),
        });
    }
    if !matches!(out.first(), Some(TSeg::Lit(_))) {
        return Err(format!(
            "root {template:?} must start with a literal type segment"
        ));
    }
    Ok(out)
}

/// Whether roots built from `a` and `b` could nest (one a proper prefix of the other).
pub(crate) fn can_nest(a: &[TSeg], b: &[TSeg]) -> bool {
    if a.len() == b.len() {
        return false;
    }
    a.iter().zip(b.iter()).all(|(x, y)| match (x, y) {
        (TSeg::Lit(l), TSeg::Lit(m)) => l == m,
        _ => true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str, scoped: bool) -> Vec<TSeg> {
        parse(s, scoped).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn templates_of_one_depth_never_nest() {
        assert!(!can_nest(
            &t("pipeline/{name}", false),
            &t("pipeline/{name}", false)
        ));
        assert!(!can_nest(
            &t("ingestion/{scope}/{name}", true),
            &t("database/x/{name}", false)
        ));
    }

    #[test]
    fn a_deeper_template_under_the_same_type_can_nest() {
        assert!(can_nest(
            &t("pipeline/{name}", false),
            &t("pipeline/{scope}/{name}", true)
        ));
        assert!(can_nest(
            &t("database/x/{name}", false),
            &t("database/{name}", false)
        ));
    }

    #[test]
    fn a_distinct_type_segment_keeps_deeper_templates_apart() {
        assert!(!can_nest(
            &t("pipeline/{name}", false),
            &t("ingestion/{scope}/{name}", true)
        ));
    }

    #[test]
    fn malformed_templates_are_refused() {
        for (bad, scoped) in [
            ("database/{name}/x", false),
            ("{name}", false),
            ("database//{name}", false),
            ("data.base/{name}", false),
            ("Database/{name}", false),
            ("database/{name}-x", false),
            ("ingestion/{name}", true),
            ("database/{scope}/{name}", false),
            ("database/{name}/{name}", false),
        ] {
            assert!(parse(bad, scoped).is_err(), "{bad}");
        }
    }
}
