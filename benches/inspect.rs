//! Throughput of the inspection stage alone (strict parse, schema validation,
//! transcript removal) on 2 KB, 64 KB and 900 KB payloads, in bytes per second.
//!
//! `cargo bench --bench inspect`; CI runs it as a smoke test with
//! `cargo bench --bench inspect -- --test`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hookgate::inspect::{compile_schema_file, Inspector, Transcription, Validation};
use std::sync::Arc;

fn payload(size: usize) -> Vec<u8> {
    let base = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/payloads/sample.json"
    ))
    .unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&base).unwrap();
    // A realistic transcript: many chunks of speech, both speakers.
    let sentence = "Good day, I am calling about my order, it has not arrived yet. ";
    let mut chunks = Vec::new();
    let mut t = 1_703_862_000_000u64;
    let mut content = String::new();
    while serde_json::to_vec(&v).unwrap().len() + content.len() * 2 < size {
        let speaker = if chunks.len() % 2 == 0 {
            "caller"
        } else {
            "callee"
        };
        chunks.push(serde_json::json!({"speaker": speaker, "startTime": t, "endTime": t + 4000, "content": sentence}));
        content.push_str(sentence);
        t += 5000;
        v["assist"]["transcription"]["chunks"] = serde_json::Value::Array(chunks.clone());
    }
    v["assist"]["transcription"]["content"] = serde_json::Value::String(content);
    serde_json::to_vec_pretty(&v).unwrap()
}

fn bench(c: &mut Criterion) {
    let schema = Arc::new(
        compile_schema_file(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/schemas/sipgate-ai-agents-webhook.v1.json"
        )))
        .unwrap(),
    );
    let modes = [
        (
            "parse_only",
            Inspector::new(None, Validation::Off, Transcription::Keep),
        ),
        (
            "validate",
            Inspector::new(
                Some(schema.clone()),
                Validation::Enforce,
                Transcription::Keep,
            ),
        ),
        (
            "validate_strip",
            Inspector::new(
                Some(schema.clone()),
                Validation::Enforce,
                Transcription::Strip,
            ),
        ),
        (
            "validate_strip_text",
            Inspector::new(
                Some(schema.clone()),
                Validation::Enforce,
                Transcription::StripText,
            ),
        ),
    ];
    for size in [2 * 1024, 64 * 1024, 900 * 1024] {
        let body = payload(size);
        let mut g = c.benchmark_group(format!("inspect_{}k", size / 1024));
        g.throughput(Throughput::Bytes(body.len() as u64));
        for (name, inspector) in &modes {
            assert!(
                inspector.inspect(&body).is_ok(),
                "{name}: the bench payload must pass"
            );
            g.bench_with_input(BenchmarkId::from_parameter(name), &body, |b, body| {
                b.iter(|| inspector.inspect(std::hint::black_box(body)).unwrap())
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
