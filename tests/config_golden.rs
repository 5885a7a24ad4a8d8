//! Golden tests of `hookgate check`: a bad file lists exactly the expected errors,
//! the shipped configurations load. `UPDATE_GOLDEN=1` rewrites the golden files.

mod common;

use std::process::Command;

fn check(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookgate"));
    cmd.current_dir(common::project_root())
        .arg("check")
        .args(args);
    cmd.env_remove("HOOKGATE_TEST_UNSET_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn golden(name: &str, actual: &str) {
    let path = common::project_root().join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(actual, want, "differs from {}", path.display());
}

#[test]
fn bad_config_lists_every_error() {
    let (code, stdout, stderr) = check(&["-c", "tests/golden/bad.toml"], &[]);
    assert_eq!(code, 1);
    assert!(stdout.is_empty());
    golden("bad.errors", &stderr);
    // Sanity on the golden file itself: one line per mistake made in bad.toml.
    assert!(stderr.starts_with("31 configuration error(s)"), "{stderr}");
}

#[test]
fn default_config_checks() {
    let (code, stdout, stderr) = check(&[], &[]);
    assert_eq!(code, 0, "{stderr}");
    golden("default-check.txt", &stdout);
}

#[test]
fn shipped_examples_check() {
    let env = [
        ("CRM_TOKEN", "crm-token"),
        ("TICKETS_TOKEN", "tickets-token"),
        ("HOOKGATE_SECRET", "a-long-enough-shared-secret"),
    ];
    let mut examples: Vec<String> = std::fs::read_dir(common::project_root().join("conf/examples"))
        .unwrap()
        .map(|e| format!("conf/examples/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|f| f.ends_with(".toml"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 3, "{examples:?}");
    for f in &examples {
        let (code, stdout, stderr) = check(&["-c", f], &env);
        assert_eq!(code, 0, "{f}: {stderr}");
        if f.ends_with("never-lose-a-webhook.toml") {
            assert!(stdout.contains("delivery spool"), "{stdout}");
            assert!(stdout.contains("delivery proxy_or_spool"), "{stdout}");
        }
    }
    // Without the variables, the first example names each missing one.
    let (code, _, stderr) = check(&["-c", "conf/examples/crm-and-ticketing.toml"], &[]);
    assert_eq!(code, 1);
    for v in ["CRM_TOKEN", "TICKETS_TOKEN", "HOOKGATE_SECRET"] {
        assert!(
            stderr.contains(&format!("environment variable {v} is not set")),
            "{stderr}"
        );
    }
}
