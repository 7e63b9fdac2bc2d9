//! The binary: `check` and `serve` refuse every invalid config fixture with a message naming
//! the problem; a valid config passes `check`.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_om-secrets-proxy");

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
            "[server]\nlisten = \"127.0.0.1:0\"\n[rules]\ndir = \"{}/rules\"\n[secrets_manager]\nprovider = \"db\"\ncluster_name = \"prod\"\ntags = [\"team:data\"]\n[fernet]\nkey = \"jJ/9sz0g0OHxsfxOoSfdFdmk3ysNmPRnH3TUAbz3IHA=\"\n[policy]\nbot = \"reference\"\n",
            env!("CARGO_MANIFEST_DIR")
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
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
