//! The binary: `check` and `serve` refuse every invalid config fixture with a message naming
//! the problem; a valid config passes `check`.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_om-secrets-proxy");

/// `check --config <cfg>`: its exit code and what it printed.
fn check(cfg: &Path) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

fn fixtures() -> Vec<(std::path::PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/configs");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} lacks an '# expect:' line", path.display()))
            .to_string();
        out.push((path, expect));
    }
    assert!(out.len() >= 15, "fixtures missing");
    out
}

#[test]
fn check_refuses_every_invalid_config_with_a_clear_message() {
    for (path, expect) in fixtures() {
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&path)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1), "{}: {text}", path.display());
        assert!(
            text.contains(&expect),
            "{}: expected {expect:?} in {text}",
            path.display()
        );
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            text.contains(&name),
            "{}: message does not name the file: {text}",
            path.display()
        );
    }
}

#[test]
fn serve_refuses_every_invalid_config_at_start_up() {
    for (path, expect) in fixtures() {
        let out = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&path)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string();
        assert_ne!(out.status.code(), Some(0), "{}", path.display());
        assert!(
            text.contains(&expect),
            "{}: expected {expect:?} in {text}",
            path.display()
        );
    }
}

#[test]
fn check_accepts_the_defaults_and_a_full_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ok.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[rules]\ndir = \"{}/rules\"\n[secrets_manager]\nprovider = \"db\"\ncluster_name = \"prod\"\ntags = [\"team:data\"]\n[fernet]\nkey = \"jJ_9sz0g0OHxsfxOoSfdFdmk3ysNmPRnH3TUAbz3IHA\"\n[policy]\nbot = \"reference\"\nanonymous = \"resolve\"\n",
            env!("CARGO_MANIFEST_DIR")
        ),
    )
    .unwrap();
    let (code, text) = check(&cfg);
    assert_eq!(code, Some(0), "{text}");
    // Valid, but not what its author may think: said, without failing.
    assert!(
        text.contains("warning: fernet.key is OpenMetadata's PUBLIC default key"),
        "{text}"
    );
    assert!(
        text.contains("warning: policy.anonymous = \"resolve\" is served as \"mask\""),
        "{text}"
    );
    let mut enc = Command::new(BIN)
        .args(["fernet", "encrypt", "--config"])
        .arg(&cfg)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(enc.stdin.take());
    let out = enc.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PUBLIC default key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn serve_with_a_missing_config_file_names_it() {
    let out = Command::new(BIN)
        .args(["serve", "--config", "/nonexistent/omsp.toml"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/omsp.toml"));
}

/// `check` prints every problem: the config's (each unknown key, each bad value, with its
/// line) and, even then, the rule files'.
#[test]
fn check_lists_the_configs_and_the_rule_files_problems_together() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(rules.join("broken.json"), "{\"kind\": ").unwrap();
    let cfg = dir.path().join("two.toml");
    std::fs::write(
        &cfg,
        format!(
            "[rules]\ndir = \"{}\"\n[server]\nlistne = \"x\"\n[policy]\nbot = \"zz\"\nusr = \"mask\"\n",
            rules.display()
        ),
    )
    .unwrap();
    let (code, text) = check(&cfg);
    assert_eq!(code, Some(1), "{text}");
    for want in [
        "two.toml:4: unknown field `listne`",
        "two.toml:7: unknown field `usr`",
        "two.toml:6: policy.bot",
        "broken.json",
    ] {
        assert!(text.contains(want), "{want:?} missing from {text}");
    }
}
