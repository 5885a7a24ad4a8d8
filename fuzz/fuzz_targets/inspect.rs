//! Fuzz the inspection stage with an oracle: serde_json as the reference parser
//! and a DOM-level model of the privacy transforms.
//!
//! - the scan never accepts what serde_json rejects;
//! - every mode accepts exactly what the scan accepts;
//! - a transformed body is strict JSON equal to the input with the transcript
//!   removed in the DOM; an untouched body means the model removes nothing;
//! - the scanner's tape holds the same document as serde_json's `Value`, and
//!   the schema judges both alike (same violations, same paths), and the
//!   quick check (`fast_schema`) proves no document valid that it rejects;
//! - duplicate member names, which serde_json's `Value` silently merges, are
//!   checked against a second reference (a serde visitor that keeps every
//!   object's decoded names): the scan accepts no document with a repeated
//!   name, and a document it refuses as "duplicate member name" has one.
//!
//! Run: `mkdir -p fuzz/corpus/inspect && cargo fuzz run inspect fuzz/corpus/inspect fuzz/seeds -- -max_total_time=600`
//! (new inputs go to the ignored `fuzz/corpus/inspect`; `fuzz/seeds` is only read)
#![no_main]

use hookgate::inspect::{Inspector, Transcription, Validation};
use jsonschema::json::Node;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::sync::OnceLock;

const SCHEMA: &str = include_str!("../../schemas/sipgate-ai-agents-webhook.v1.json");

fn validators() -> &'static (
    jsonschema::Validator,
    jsonschema::Validator<hookgate::tape::TapeJson>,
) {
    static V: OnceLock<(
        jsonschema::Validator,
        jsonschema::Validator<hookgate::tape::TapeJson>,
    )> = OnceLock::new();
    V.get_or_init(|| {
        let schema: Value = serde_json::from_str(SCHEMA).unwrap();
        (
            jsonschema::validator_for(&schema).unwrap(),
            jsonschema::options_for::<hookgate::tape::TapeJson>()
                .build(&schema)
                .unwrap(),
        )
    })
}

fn quick() -> &'static hookgate::fast_schema::FastSchema {
    static Q: OnceLock<hookgate::fast_schema::FastSchema> = OnceLock::new();
    Q.get_or_init(|| {
        let schema: Value = serde_json::from_str(SCHEMA).unwrap();
        hookgate::fast_schema::FastSchema::compile(&schema).expect("in the quick subset")
    })
}

/// Any JSON document, refused by deserialization when an object repeats a
/// member name (compared decoded, as RFC 8259 means it).
struct NoDuplicates;

impl<'de> serde::Deserialize<'de> for NoDuplicates {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDuplicatesVisitor)
    }
}

struct NoDuplicatesVisitor;

impl<'de> serde::de::Visitor<'de> for NoDuplicatesVisitor {
    type Value = NoDuplicates;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_i64<E>(self, _: i64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_u64<E>(self, _: u64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_f64<E>(self, _: f64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_str<E>(self, _: &str) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_unit<E>(self) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<NoDuplicates, A::Error> {
        while a.next_element::<NoDuplicates>()?.is_some() {}
        Ok(NoDuplicates)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<NoDuplicates, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(k) = a.next_key::<String>()? {
            if !seen.insert(k) {
                return Err(serde::de::Error::custom("duplicate member name"));
            }
            a.next_value::<NoDuplicates>()?;
        }
        Ok(NoDuplicates)
    }
}

fn model(v: &mut Value, mode: Transcription) {
    let Some(assist) = v.get_mut("assist").and_then(Value::as_object_mut) else {
        return;
    };
    match mode {
        Transcription::Keep => {}
        Transcription::Strip => {
            if assist.get("transcription").is_some_and(|t| !t.is_null()) {
                assist.remove("transcription");
            }
        }
        Transcription::StripText => {
            let Some(t) = assist
                .get_mut("transcription")
                .and_then(Value::as_object_mut)
            else {
                return;
            };
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
    let unique = serde_json::from_slice::<NoDuplicates>(data);
    match &scan {
        Ok(_) => assert!(
            unique.is_ok(),
            "scan accepted a repeated member name: {:?}",
            unique.err()
        ),
        // Only a document that is otherwise valid tells: the scan stops at the
        // first repeat, before it has seen the rest.
        Err(e) if e.what == "duplicate member name" && reference.is_ok() => {
            assert!(unique.is_err(), "scan saw a duplicate that is not there")
        }
        Err(_) => {}
    }
    if let Ok(scan) = &scan {
        let Ok(value) = &reference else {
            panic!(
                "scan accepted what serde_json rejects: {:?}",
                reference.err()
            );
        };
        let root = scan.tape.root().expect("a document has a root");
        assert_eq!(
            &root.to_value().into_owned(),
            value,
            "the tape holds another document"
        );
        let (by_value, by_tape) = validators();
        let mut want: Vec<String> = by_value
            .iter_errors(value)
            .map(|e| format!("{} {}", e.instance_path(), e.kind().keyword()))
            .collect();
        let mut have: Vec<String> = by_tape
            .iter_errors(root)
            .map(|e| format!("{} {}", e.instance_path(), e.kind().keyword()))
            .collect();
        want.sort();
        have.sort();
        assert_eq!(have, want, "tape and Value validation disagree");
        // The quick check never proves valid what the full validator rejects.
        if quick().is_valid(&scan.tape) {
            assert!(want.is_empty(), "quick check accepted an invalid document");
        }
    }
    for mode in [
        Transcription::Keep,
        Transcription::Strip,
        Transcription::StripText,
    ] {
        let out = Inspector::new(None, Validation::Off, mode).inspect(data);
        assert_eq!(out.is_ok(), scan.is_ok(), "inspect and scan disagree");
        let Ok(out) = out else { continue };
        let Ok(original) = &reference else {
            unreachable!()
        };
        let mut want = original.clone();
        model(&mut want, mode);
        match out.body {
            Some(body) => {
                assert!(
                    hookgate::json::scan(&body).is_ok(),
                    "transformed body is not strict JSON"
                );
                let have: Value = serde_json::from_slice(&body).expect("transformed body parses");
                assert_eq!(have, want, "transform differs from the model");
                assert!(out.transcription_removed);
            }
            None => assert_eq!(
                &want, original,
                "the model removes something the transform kept"
            ),
        }
    }
});
