//! Fuzz the inspection stage with an oracle: serde_json as the reference parser
//! and a DOM-level model of the privacy transforms.
//!
//! - the scan never accepts what serde_json rejects;
//! - every mode accepts exactly what the scan accepts;
//! - a transformed body is strict JSON equal to the input with the transcript
//!   removed in the DOM; an untouched body means the model removes nothing.
//!
//! Run: `cargo fuzz run inspect fuzz/seeds -- -max_total_time=600`
#![no_main]

use hookgate::inspect::{Inspector, Transcription, Validation};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn model(v: &mut Value, mode: Transcription) {
    let Some(assist) = v.get_mut("assist").and_then(Value::as_object_mut) else { return };
    match mode {
        Transcription::Keep => {}
        Transcription::Strip => {
            if assist.get("transcription").is_some_and(|t| !t.is_null()) {
                assist.remove("transcription");
            }
        }
        Transcription::StripText => {
            let Some(t) = assist.get_mut("transcription").and_then(Value::as_object_mut) else { return };
            t.remove("content");
            if let Some(chunks) = t.get_mut("chunks").and_then(Value::as_array_mut) {
                for c in chunks.iter_mut().filter_map(Value::as_object_mut) {
                    c.remove("content");
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let scan = hookgate::json::scan(data);
    let reference = serde_json::from_slice::<Value>(data);
    if scan.is_ok() {
        assert!(reference.is_ok(), "scan accepted what serde_json rejects: {:?}", reference.err());
    }
    for mode in [Transcription::Keep, Transcription::Strip, Transcription::StripText] {
        let out = Inspector::new(None, Validation::Off, mode).inspect(data);
        assert_eq!(out.is_ok(), scan.is_ok(), "inspect and scan disagree");
        let Ok(out) = out else { continue };
        let Ok(original) = &reference else { unreachable!() };
        let mut want = original.clone();
        model(&mut want, mode);
        match out.body {
            Some(body) => {
                assert!(hookgate::json::scan(&body).is_ok(), "transformed body is not strict JSON");
                let have: Value = serde_json::from_slice(&body).expect("transformed body parses");
                assert_eq!(have, want, "transform differs from the model");
                assert!(out.transcription_removed);
            }
            None => assert_eq!(&want, original, "the model removes something the transform kept"),
        }
    }
});
