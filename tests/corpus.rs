//! The payload corpus (tests/corpus, built by tests/corpus/generate.py) through
//! the running gateway: every valid payload is forwarded byte for byte, every
//! invalid one gets its documented status and code and reaches nothing; the
//! privacy transforms cut only the transcript; `hookgate validate` agrees.

mod common;

use common::*;
use std::path::PathBuf;
use std::process::Command;

fn files(folder: &str) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> =
        std::fs::read_dir(project_root().join("tests/corpus").join(folder))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .map(|p| {
                (
                    p.file_stem().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
    v.sort();
    assert!(!v.is_empty(), "empty corpus folder {folder}");
    v
}

/// Valid payloads, plus the big transcripts built here.
fn valid() -> Vec<(String, Vec<u8>)> {
    let mut v = files("valid");
    v.push(("transcript-200k".into(), payload(200 * 1024)));
    v.push(("transcript-900k".into(), payload(900 * 1024)));
    v
}

fn config(up: &Upstream) -> String {
    let ci = project_root().join("schemas/sipgate-conversation-intelligence-webhook.v1.json");
    let mut c = config_for(&format!("\"{}\"", up.url("/keep")), "", "");
    for (name, mode) in [("strip", "strip"), ("strip_text", "strip_text")] {
        c.push_str(&format!(
            "\n[[route]]\nname = \"{name}\"\npath = \"/webhooks/{name}\"\nupstream = \"{}\"\nschema = \"{{SCHEMA}}\"\ntranscription = \"{mode}\"\n",
            up.url(&format!("/{name}"))
        ));
    }
    c.push_str(&format!(
        "\n[[route]]\nname = \"ci\"\npath = \"/webhooks/ci\"\nupstream = \"{}\"\nschema = \"{}\"\ntranscription = \"strip\"\n",
        up.url("/ci"),
        ci.display()
    ));
    c
}

#[test]
fn valid_payloads_are_forwarded_untouched() {
    let up = Upstream::start(ok_answer());
    let gw = Gateway::start(&config(&up));
    for (name, body) in valid() {
        let r = gw.post("/webhooks/crm", &body);
        assert_eq!(
            r.status,
            200,
            "{name}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let got = up.requests().pop().unwrap();
        assert!(
            got.body == body,
            "{name}: keep must forward the exact bytes"
        );
        assert_eq!(
            got.header("content-length"),
            Some(body.len().to_string().as_str()),
            "{name}"
        );
    }
    for (name, body) in files("ci-valid") {
        let r = gw.post("/webhooks/ci", &body);
        assert_eq!(
            r.status,
            200,
            "ci/{name}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
}

#[test]
fn invalid_payloads_get_their_code_and_reach_nothing() {
    let up = Upstream::start(ok_answer());
    let gw = Gateway::start(&config(&up));
    let invalid = files("invalid");
    assert!(invalid.len() > 60);
    for (name, body) in &invalid {
        let mut parts = name.splitn(3, '-');
        let status: u16 = parts.next().unwrap().parse().unwrap();
        let code = parts.next().unwrap();
        let r = gw.post("/webhooks/crm", body);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (status, code),
            "{name}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let v = r.json();
        if status == 422 {
            let details = v["details"].as_array().unwrap();
            assert!(!details.is_empty() && details.len() <= 20, "{name}: {v}");
            for d in details {
                assert!(
                    d["path"].is_string() && d["message"].is_string(),
                    "{name}: {d}"
                );
            }
        } else {
            assert!(
                v["message"].as_str().unwrap().contains("at byte") || body.is_empty(),
                "{name}: {v}"
            );
        }
    }
    assert_eq!(up.count(), 0, "a refused payload reached the upstream");
    // Still serving, no crash, after the whole hostile set.
    assert_eq!(gw.post("/webhooks/crm", &payload(0)).status, 200);
}

/// Whether `small` is `big` with some bytes deleted (order kept).
fn is_subsequence(small: &[u8], big: &[u8]) -> bool {
    let mut it = big.iter();
    small.iter().all(|c| it.any(|b| b == c))
}

fn remove_transcription(v: &mut serde_json::Value, text_only: bool) {
    let Some(t) = v.get_mut("assist").and_then(|a| a.as_object_mut()) else {
        return;
    };
    if !text_only {
        if t.get("transcription").is_some_and(|t| !t.is_null()) {
            t.remove("transcription");
        }
        return;
    }
    let Some(t) = t.get_mut("transcription").and_then(|t| t.as_object_mut()) else {
        return;
    };
    t.remove("content");
    if let Some(chunks) = t.get_mut("chunks").and_then(|c| c.as_array_mut()) {
        for c in chunks.iter_mut().filter_map(|c| c.as_object_mut()) {
            c.remove("content");
        }
    }
}

#[test]
fn strip_and_strip_text_cut_only_the_transcript() {
    let up = Upstream::start(ok_answer());
    let gw = Gateway::start(&config(&up));
    for (route, text_only) in [("strip", false), ("strip_text", true)] {
        for (name, body) in valid() {
            let r = gw.post(&format!("/webhooks/{route}"), &body);
            assert_eq!(r.status, 200, "{route}/{name}");
            let got = up.requests().pop().unwrap();
            let mut want: serde_json::Value = serde_json::from_slice(&body).unwrap();
            remove_transcription(&mut want, text_only);
            let have: serde_json::Value = serde_json::from_slice(&got.body)
                .unwrap_or_else(|e| panic!("{route}/{name}: upstream got invalid JSON ({e})"));
            assert_eq!(have, want, "{route}/{name}");
            assert!(
                is_subsequence(&got.body, &body),
                "{route}/{name}: bytes outside the transcript changed"
            );
            assert_eq!(
                got.header("content-length"),
                Some(got.body.len().to_string().as_str())
            );
            if !text_only {
                // One cut: the output is a prefix of the input plus a suffix of it.
                let p = got
                    .body
                    .iter()
                    .zip(&body)
                    .take_while(|(a, b)| a == b)
                    .count();
                let s = got
                    .body
                    .iter()
                    .rev()
                    .zip(body.iter().rev())
                    .take_while(|(a, b)| a == b)
                    .count();
                assert!(
                    p + s >= got.body.len(),
                    "{route}/{name}: more than the transcription member changed"
                );
            }
            let had = want != serde_json::from_slice::<serde_json::Value>(&body).unwrap();
            if !had {
                assert!(
                    got.body == body,
                    "{route}/{name}: nothing to remove, yet the bytes changed"
                );
            }
        }
    }
    // The big transcript is really gone, and counted.
    let m = gw.metrics_text();
    assert!(
        m.contains("hookgate_transcriptions_removed_total{mode=\"strip\",route=\"strip\"}"),
        "{m}"
    );
    assert!(
        m.contains(
            "hookgate_transcriptions_removed_total{mode=\"strip_text\",route=\"strip_text\"}"
        ),
        "{m}"
    );
}

#[test]
fn no_personal_data_in_logs_or_metrics() {
    let up = Upstream::start(ok_answer());
    let cfg = config(&up).replace("validation = \"enforce\"", "validation = \"report\"");
    let gw = Gateway::start_json_logs(&cfg);
    let mut needles: Vec<String> = Vec::new();
    let mut sent = 0;
    for (name, body) in valid()
        .into_iter()
        .chain(files("ci-valid"))
        .chain(files("invalid"))
    {
        for route in ["crm", "strip", "strip_text"] {
            gw.post(&format!("/webhooks/{route}"), &body);
            sent += 1;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
            continue;
        };
        let call = &v["call"];
        for k in ["from", "to"] {
            if let Some(n) = call[k].as_str().filter(|n| n.len() > 6) {
                needles.push(n.to_string());
                needles.push(n.trim_start_matches('+').to_string());
            }
        }
        let a = &v["assist"];
        if let Some(s) = a["summary"]["content"].as_str() {
            needles.push(s.chars().take(24).collect());
        }
        if let Some(chunks) = a["transcription"]["chunks"].as_array() {
            for c in chunks {
                if let Some(t) = c["content"].as_str().filter(|t| t.len() > 10) {
                    needles.push(t.to_string());
                }
            }
        }
        if let Some(t) = a["transcription"]["content"]
            .as_str()
            .filter(|t| t.len() > 10)
        {
            needles.push(t.chars().take(40).collect());
        }
        let _ = name;
    }
    needles.sort();
    needles.dedup();
    assert!(
        needles.len() > 10,
        "the corpus must hold personal data to look for"
    );
    assert!(wait_until(std::time::Duration::from_secs(5), || gw
        .log()
        .matches("hookgate::access")
        .count()
        >= sent));
    let log = gw.log();
    let metrics = gw.metrics_text();
    for n in &needles {
        assert!(!log.contains(n.as_str()), "log holds personal data: {n:?}");
        assert!(
            !metrics.contains(n.as_str()),
            "metrics hold personal data: {n:?}"
        );
    }
}

#[test]
fn validate_command_agrees_with_the_gateway() {
    let bin = env!("CARGO_BIN_EXE_hookgate");
    let schema = project_root().join("schemas/sipgate-ai-agents-webhook.v1.json");
    let dir = |f: &str| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(project_root().join("tests/corpus").join(f))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    };
    let valid = dir("valid");
    let out = Command::new(bin)
        .arg("validate")
        .arg("--schema")
        .arg(&schema)
        .args(&valid)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.contains(": accepted")).count(),
        valid.len(),
        "{text}"
    );

    for f in dir("invalid") {
        let out = Command::new(bin)
            .arg("validate")
            .arg("--schema")
            .arg(&schema)
            .arg(&f)
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let name = f.file_stem().unwrap().to_string_lossy().into_owned();
        let mut parts = name.splitn(3, '-');
        let want = format!(
            "rejected {} {}",
            parts.next().unwrap(),
            parts.next().unwrap()
        );
        assert_eq!(out.status.code(), Some(1), "{name}: {text}");
        assert!(
            text.lines().next().unwrap_or("").contains(&want),
            "{name}: {text}"
        );
    }

    // With a route's settings from a config: the transform is applied and reported.
    let cfg = tempfile::tempdir().unwrap();
    let path = cfg.path().join("hookgate.toml");
    std::fs::write(
        &path,
        format!(
            "[[route]]\nname = \"a\"\npath = \"/a\"\nupstream = \"file:x.jsonl\"\nschema = \"{}\"\ntranscription = \"strip\"\n",
            schema.display()
        ),
    )
    .unwrap();
    let out = Command::new(bin)
        .args(["validate", "-c"])
        .arg(&path)
        .args(["--route", "a"])
        .arg(project_root().join("tests/payloads/sample.json"))
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("accepted, transformed (1224 -> "), "{text}");
}

/// The schema is validated over hookgate's own borrowed document ("tape"); it
/// must judge exactly as the same schema over serde_json's `Value`.
#[test]
fn tape_validation_matches_serde_json_validation() {
    use jsonschema::json::Node;
    let mut checked = 0;
    for schema_file in [
        "sipgate-ai-agents-webhook.v1.json",
        "sipgate-conversation-intelligence-webhook.v1.json",
        "sipgate-ai-assistant-legacy-webhook.json",
    ] {
        let schema: serde_json::Value = serde_json::from_slice(
            &std::fs::read(project_root().join("schemas").join(schema_file)).unwrap(),
        )
        .unwrap();
        let reference = jsonschema::validator_for(&schema).unwrap();
        let tape_validator = jsonschema::options_for::<hookgate::tape::TapeJson>()
            .build(&schema)
            .unwrap();
        for folder in ["valid", "invalid", "ci-valid"] {
            for (name, body) in files(folder) {
                let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) else {
                    continue;
                };
                let Ok(scan) = hookgate::json::scan(&body) else {
                    continue;
                };
                let root = scan.tape.root().unwrap();
                assert_eq!(
                    root.to_value().into_owned(),
                    value,
                    "{name}: tape does not hold the document"
                );
                let mut want: Vec<String> = reference
                    .iter_errors(&value)
                    .map(|e| format!("{} {}", e.instance_path(), e.kind().keyword()))
                    .collect();
                let mut have: Vec<String> = tape_validator
                    .iter_errors(root)
                    .map(|e| format!("{} {}", e.instance_path(), e.kind().keyword()))
                    .collect();
                want.sort();
                have.sort();
                assert_eq!(have, want, "{schema_file} on {folder}/{name}");
                checked += 1;
            }
        }
    }
    assert!(checked > 200, "{checked}");
}
