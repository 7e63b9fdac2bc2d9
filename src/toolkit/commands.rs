//! The toolkit's commands as the command line runs them: each prints its lines on stdout
//! (progress on stderr) and returns the process's exit code. Never a value.

use std::path::PathBuf;

use super::audit::{AuditOptions, AuditResult, Problem};
use super::report::Action;
use super::reverse::Reverse;
use super::rotate::Rotate;
use super::runner::{run, RunOptions, RunResult};
use super::{select_kinds, Toolkit};
use crate::config::{Backend, Config};
use crate::migrate::Migrator;
use crate::proxy::Gateway;
use crate::rules::RuleSet;
use crate::secrets::embedded::{EmbeddedStore, Rotation};
use crate::secrets::fernet::FernetKeys;
use crate::App;

/// The toolkit and the kinds a command runs over; on a problem, the problem is said on
/// stderr (prefixed with `command`) and `Err` carries the exit code `fail`.
fn prepare<'a>(
    app: &'a App,
    rules: &'a RuleSet,
    command: &str,
    kinds: &[String],
    default: impl Fn(&crate::rules::Rule) -> bool,
    fail: u8,
) -> Result<(Toolkit<'a>, Vec<&'a crate::rules::Rule>), u8> {
    let said = |e: String| {
        eprintln!("{command}: {e}");
        fail
    };
    let tk = toolkit(&app.gateway, rules).map_err(said)?;
    let selected = select_kinds(rules, kinds, default).map_err(said)?;
    Ok((tk, selected))
}

/// Exit code of a run Ctrl-C ended (128 + SIGINT).
const INTERRUPTED: u8 = 130;

/// The toolkit over a built gateway; it needs the service token.
pub(crate) fn toolkit<'a>(gateway: &'a Gateway, rules: &'a RuleSet) -> Result<Toolkit<'a>, String> {
    let Some(service_auth) = gateway.service_auth.clone() else {
        return Err("needs upstream.service_token (OMSP_SERVICE_TOKEN): a bot's JWT, since only bots read secrets in clear".into());
    };
    Ok(Toolkit {
        upstream: &gateway.upstream,
        store: gateway.store.as_ref(),
        rules,
        ids: &gateway.ids,
        fernet: &gateway.fernet,
        managed: gateway.managed,
        wrap_references: gateway.wrap_references,
        max_body_bytes: gateway.max_body_bytes,
        service_auth,
    })
}

/// Where a command's resume file goes by default: beside the embedded store's file (the
/// gateway's data directory, `data/` unless configured), named after the command.
pub(crate) fn default_checkpoint(cfg: &Config, command: &str) -> PathBuf {
    let dir = cfg
        .secrets
        .embedded_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    dir.join(format!("{}.checkpoint", command.replace(" --", "-")))
}

/// ` (dry run, nothing written)` or nothing.
fn dry(dry_run: bool) -> &'static str {
    if dry_run {
        " (dry run, nothing written)"
    } else {
        ""
    }
}

/// The closing lines and exit code every changing command shares.
fn close(command: &str, opts: &RunOptions, r: &RunResult) -> u8 {
    let again = || {
        opts.checkpoint
            .as_ref()
            .filter(|_| !opts.dry_run)
            .map(|p| {
                format!(
                    "; run the same command again to continue (checkpoint {})",
                    p.display()
                )
            })
            .unwrap_or_default()
    };
    if let Some(why) = &r.stopped {
        println!("{command} stopped: {why}{}", again());
        return 1;
    }
    if r.interrupted {
        println!("{command} interrupted{}", again());
        return INTERRUPTED;
    }
    u8::from(r.tally.failed > 0)
}

/// `migrate [--reverse]`.
pub async fn migrate(app: &App, mut opts: RunOptions, reverse: bool) -> u8 {
    let command = if reverse {
        "migrate --reverse"
    } else {
        "migrate"
    };
    let live = app.gateway.live();
    let (tk, rules) = match prepare(app, &live.rules, command, &opts.kinds, |r| r.migrate, 1) {
        Ok(prepared) => prepared,
        Err(code) => return code,
    };
    if !tk.managed {
        eprintln!("{command}: moves secrets between OpenMetadata and a managed store (embedded, managed-aws, managed-aws-ssm, managed-openbao); this provider keeps them in OpenMetadata");
        return 1;
    }
    if reverse && tk.fernet.is_empty() {
        eprintln!(
            "{command}: writes fernet: tokens; set FERNET_KEY (fernet.key) to OpenMetadata's key"
        );
        return 1;
    }
    opts.checkpoint
        .get_or_insert_with(|| default_checkpoint(&app.config, command));
    let mut print = |line: String| println!("{line}");
    let result = if reverse {
        run(&tk, &Reverse { tk: &tk }, rules, &opts, &mut print).await
    } else {
        run(&tk, &Migrator { tk: &tk }, rules, &opts, &mut print).await
    };
    let r = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{command}: {e}");
            return 1;
        }
    };
    let t = &r.tally;
    if reverse {
        println!(
            "{command}{}: {} entities read, {} fields {} as fernet: tokens, {} failed",
            dry(opts.dry_run),
            t.entities,
            t.count(&[Action::Restored]),
            if opts.dry_run {
                "to restore"
            } else {
                "restored"
            },
            t.failed
        );
    } else {
        println!(
            "{command}{}: {} entities read, {} fields {}, {} already references, {} failed",
            dry(opts.dry_run),
            t.entities,
            t.count(&[Action::Moved, Action::Rekeyed, Action::Copied]),
            if opts.dry_run { "to move" } else { "moved" },
            t.count(&[Action::Reference, Action::Kept]),
            t.failed
        );
    }
    close(command, &opts, &r)
}

/// `rotate-fernet`, store part: re-encrypts the embedded store at rest; runs before the app
/// opens the store. `None` for other providers (their values are not Fernet-encrypted here).
pub fn rotate_store(cfg: &Config, dry_run: bool) -> Result<Option<Rotation>, String> {
    if cfg.fernet.keys.is_empty() {
        return Err(
            "needs FERNET_KEY (fernet.key): the new key first, the old ones after it".into(),
        );
    }
    if cfg.fernet.keys.len() == 1 {
        eprintln!("rotate-fernet: FERNET_KEY holds one key: tokens under any other key cannot be opened and will be reported");
    }
    if cfg.secrets.provider.backend != Backend::Embedded {
        return Ok(None);
    }
    let keys = FernetKeys::new(&cfg.fernet.keys).map_err(|e| format!("fernet.key: {e}"))?;
    if dry_run && !cfg.secrets.embedded_path.exists() {
        // Nothing to re-encrypt, and a dry run creates no file.
        return Ok(Some(Rotation::default()));
    }
    let store = EmbeddedStore::open(&cfg.secrets.embedded_path, &keys)?;
    store
        .reencrypt(dry_run)
        .map(Some)
        .map_err(|e| format!("the embedded store: {e}"))
}

/// `rotate-fernet`, upstream part, after [`rotate_store`].
pub async fn rotate_fernet(app: &App, mut opts: RunOptions, store: Option<Rotation>) -> u8 {
    let command = "rotate-fernet";
    let live = app.gateway.live();
    let (tk, rules) = match prepare(app, &live.rules, command, &opts.kinds, |_| true, 1) {
        Ok(prepared) => prepared,
        Err(code) => return code,
    };
    if let Some(s) = store {
        println!(
            "{command}{}: embedded store: {} of {} values {} with the first key, {} unreadable",
            dry(opts.dry_run),
            s.reencrypted,
            s.values,
            if opts.dry_run {
                "to re-encrypt"
            } else {
                "re-encrypted"
            },
            s.unreadable
        );
    }
    opts.checkpoint
        .get_or_insert_with(|| default_checkpoint(&app.config, command));
    let mut print = |line: String| println!("{line}");
    let r = match run(&tk, &Rotate { tk: &tk }, rules, &opts, &mut print).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{command}: {e}");
            return 1;
        }
    };
    println!(
        "{command}{}: {} entities read, {} fernet: values {}, {} failed",
        dry(opts.dry_run),
        r.tally.entities,
        r.tally.count(&[Action::ReEncrypted]),
        if opts.dry_run {
            "to re-encrypt"
        } else {
            "re-encrypted"
        },
        r.tally.failed
    );
    let code = close(command, &opts, &r);
    if code == 0 && store.is_some_and(|s| s.unreadable > 0) {
        return 1;
    }
    code
}

/// `audit [--json]`: 0 clean, 1 findings, 2 the audit could not finish.
pub async fn audit(app: &App, mut opts: AuditOptions, json: bool) -> u8 {
    let live = app.gateway.live();
    let (tk, rules) = match prepare(app, &live.rules, "audit", &opts.kinds, |_| true, 2) {
        Ok(prepared) => prepared,
        Err(code) => return code,
    };
    let every_kind = rules.len()
        == live
            .rules
            .rules
            .iter()
            .filter(|r| !r.is_mask_only())
            .count();
    opts.read_values = app.config.secrets.provider.backend == Backend::Embedded;
    let r = match super::audit::audit(&tk, rules, every_kind, &opts).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("audit: could not finish: {e}");
            return 2;
        }
    };
    if json {
        match serde_json::to_string_pretty(&r) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("audit: {e}");
                return 2;
            }
        }
    } else {
        for line in audit_lines(&r, tk.managed) {
            println!("{line}");
        }
    }
    u8::from(!r.clean)
}

/// The human form of an audit: one line per finding, then a summary.
fn audit_lines(r: &AuditResult, managed: bool) -> Vec<String> {
    let mut out = Vec::new();
    for f in &r.findings {
        let mut line = format!("{} {} {:?} {}", f.problem.as_str(), f.kind, f.name, f.field);
        let reference = f.reference.as_deref().unwrap_or_default();
        match f.problem {
            Problem::ForeignReference => line.push_str(&format!(
                " -> secret:{reference} (its own id is secret:{})",
                f.expected.as_deref().unwrap_or_default()
            )),
            Problem::DanglingReference => {
                line.push_str(&format!(" -> secret:{reference} (not in the store)"))
            }
            _ => {}
        }
        out.push(line);
    }
    for u in &r.failed {
        out.push(format!("failed {} {:?}: {}", u.kind, u.name, u.error));
    }
    for id in &r.unreadable {
        out.push(format!(
            "unreadable-secret secret:{id} (no configured key opens it)"
        ));
    }
    for id in &r.orphans {
        if r.orphans_deleted.contains(id) {
            out.push(format!("orphan deleted secret:{id}"));
        } else {
            out.push(format!("orphan secret:{id}"));
        }
    }
    let mut summary = format!(
        "audit: {} entities read, {} secret fields; ",
        r.entities, r.secret_fields
    );
    if r.clean {
        summary.push_str("clean");
    } else {
        let counts: Vec<String> = r.counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
        summary.push_str(&format!("not clean: {}", counts.join(", ")));
        if !r.failed.is_empty() {
            summary.push_str(&format!(", {} entities not read", r.failed.len()));
        }
    }
    if !r.orphans_deleted.is_empty() {
        summary.push_str(&format!("; {} orphans deleted", r.orphans_deleted.len()));
    }
    if managed && !r.orphans_checked {
        summary.push_str("; orphans not judged (not every kind was audited)");
    }
    if r.counts.contains_key("mask") {
        summary.push_str(" (a mask also means the service token is not a bot's)");
    }
    out.push(summary);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toolkit::audit::Finding;

    fn finding(problem: Problem, reference: Option<&str>) -> Finding {
        Finding {
            kind: "databaseService".into(),
            name: "svc".into(),
            id: "1".into(),
            field: "$.connection.config.password".into(),
            problem,
            reference: reference.map(str::to_string),
            expected: Some("/om/database/svc/password".into()),
        }
    }

    #[test]
    fn audit_lines_name_the_problem_the_entity_and_the_field_and_end_in_a_summary() {
        let mut r = AuditResult {
            entities: 2,
            secret_fields: 3,
            findings: vec![
                finding(Problem::Plaintext, None),
                finding(
                    Problem::ForeignReference,
                    Some("/om/database/other/password"),
                ),
            ],
            orphans_checked: true,
            orphans: vec!["/om/database/gone/password".into()],
            ..Default::default()
        };
        r.counts.insert("plaintext", 1);
        r.counts.insert("foreign-reference", 1);
        r.counts.insert("orphan", 1);
        let lines = audit_lines(&r, true);
        assert_eq!(
            lines[0],
            "plaintext databaseService \"svc\" $.connection.config.password"
        );
        assert_eq!(
            lines[1],
            "foreign-reference databaseService \"svc\" $.connection.config.password -> secret:/om/database/other/password (its own id is secret:/om/database/svc/password)"
        );
        assert_eq!(lines[2], "orphan secret:/om/database/gone/password");
        assert_eq!(
            lines[3],
            "audit: 2 entities read, 3 secret fields; not clean: 1 foreign-reference, 1 orphan, 1 plaintext"
        );
    }

    #[test]
    fn a_clean_audit_says_so_and_notes_unjudged_orphans() {
        let r = AuditResult {
            clean: true,
            entities: 5,
            secret_fields: 5,
            ..Default::default()
        };
        assert_eq!(
            audit_lines(&r, true),
            vec!["audit: 5 entities read, 5 secret fields; clean; orphans not judged (not every kind was audited)"]
        );
    }

    #[test]
    fn the_checkpoint_goes_beside_the_embedded_store_named_after_the_command() {
        let mut cfg = Config::from_toml_str("", None, &|_| None).expect("config");
        cfg.secrets.embedded_path = PathBuf::from("/var/lib/omsp/secrets.db");
        assert_eq!(
            default_checkpoint(&cfg, "migrate --reverse"),
            PathBuf::from("/var/lib/omsp/migrate-reverse.checkpoint")
        );
        cfg.secrets.embedded_path = PathBuf::from("secrets.db");
        assert_eq!(
            default_checkpoint(&cfg, "rotate-fernet"),
            PathBuf::from("./rotate-fernet.checkpoint")
        );
    }
}
