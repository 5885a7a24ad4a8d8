//! Best-of-rounds timing of the inspection stage, for comparing two builds on a
//! shared, noisy machine, where criterion's mean swings by a third between runs.
//!
//! Each round times 100 inspections of one payload; the fastest round is the
//! figure (what the code costs when nothing else runs). Run two builds
//! alternately, several times each, and compare their best figures.
//!
//! ```text
//! python3 benches/load/payload.py 65536 /tmp/p64.json   # the load run's 64 KB payload
//! cargo run --release --example inspect_speed -- /tmp/p64.json [ROUNDS]
//! ```

use hookgate::inspect::{compile_schema_file, Inspector, Transcription, Validation};
use std::sync::Arc;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .unwrap_or_else(|| "tests/payloads/sample.json".into());
    let rounds: usize = args.next().map_or(Ok(30), |r| r.parse())?;
    let body = std::fs::read(&path)?;
    let schema = Arc::new(compile_schema_file(
        "schemas/sipgate-ai-agents-webhook.v1.json".as_ref(),
    )?);
    let modes = [
        (
            "parse_only",
            Inspector::new(None, Validation::Off, Transcription::Keep),
        ),
        (
            "validate",
            Inspector::new(Some(schema), Validation::Enforce, Transcription::Keep),
        ),
    ];
    for (name, inspector) in &modes {
        if inspector.inspect(&body).is_err() {
            return Err(format!("{path}: the payload does not pass {name}").into());
        }
        let mut best = f64::MAX;
        for _ in 0..rounds {
            let t = Instant::now();
            for _ in 0..100 {
                std::hint::black_box(inspector.inspect(std::hint::black_box(&body)).is_ok());
            }
            best = best.min(t.elapsed().as_secs_f64() / 100.0);
        }
        println!(
            "{name}: {:.1} µs, {:.0} MiB/s ({} bytes, best of {rounds} rounds)",
            best * 1e6,
            body.len() as f64 / best / 1_048_576.0,
            body.len()
        );
    }
    Ok(())
}
