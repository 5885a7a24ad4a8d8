//! The inspection stage on its own, without pingora or a network: strict parse,
//! schema validation and transcript removal over bytes.
//!
//! `cargo run --example inspect_only -- tests/payloads/sample.json`

use hookgate::inspect::{compile_schema_file, Inspector, Transcription, Validation};
use std::sync::Arc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tests/payloads/sample.json".into());
    let body = std::fs::read(&path)?;
    let schema = compile_schema_file("schemas/sipgate-ai-agents-webhook.v1.json".as_ref())?;
    let inspector = Inspector::new(
        Some(Arc::new(schema)),
        Validation::Enforce,
        Transcription::StripText,
    );
    match inspector.inspect(&body) {
        Ok(out) => {
            println!("accepted; call.id = {:?}", out.call_id);
            match out.body {
                Some(cleaned) => println!(
                    "forward these {} bytes:\n{}",
                    cleaned.len(),
                    String::from_utf8_lossy(&cleaned)
                ),
                None => println!("forward the original {} bytes unchanged", body.len()),
            }
        }
        Err(rejection) => {
            // The same JSON a client of the gateway would get.
            println!(
                "{} {}",
                rejection.status(),
                String::from_utf8_lossy(&rejection.to_json())
            );
        }
    }
    Ok(())
}
