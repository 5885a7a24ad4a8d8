//! Body inspection: pipeline stages 6 (strict parse), 7 (schema validation) and
//! 8 (privacy transforms). Plain code over bytes, usable without pingora.
//!
//! ```
//! use hookgate::inspect::{Inspector, Transcription, Validation};
//! let inspector = Inspector::new(None, Validation::Off, Transcription::Strip);
//! let out = inspector
//!     .inspect(br#"{"call":{"id":"c1"},"assist":{"transcription":{"content":"hi","chunks":[]}}}"#)
//!     .unwrap();
//! assert_eq!(out.body.as_deref(), Some(&br#"{"call":{"id":"c1"},"assist":{}}"#[..]));
//! assert_eq!(out.call_id.as_deref(), Some("c1"));
//! // With nothing to remove, the original bytes go on untouched (`body` is None).
//! let out = inspector.inspect(br#"{"n": 1.0, "big": 12345678901234567890}"#).unwrap();
//! assert_eq!(out.body, None);
//! ```

use crate::error::{Rejection, Violation};
use crate::fast_schema::FastSchema;
use crate::json;
use crate::tape::{TapeJson, TapeNode};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;

/// Most violations listed in a 422 answer.
pub const MAX_VIOLATIONS: usize = 20;

/// Per-route validation mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validation {
    /// Reject with 422 on violations.
    Enforce,
    /// Count and log violations, forward anyway.
    Report,
    /// No schema validation (the body is still parsed strictly).
    Off,
}

impl Validation {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Validation::Enforce => "enforce",
            Validation::Report => "report",
            Validation::Off => "off",
        }
    }
}

/// Per-route transcription handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transcription {
    /// Forward it as sent.
    Keep,
    /// Remove `assist.transcription` whole.
    Strip,
    /// Keep chunks' speaker and timing, remove every `content` text.
    StripText,
}

impl Transcription {
    /// The config spelling (also the `mode` metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Transcription::Keep => "keep",
            Transcription::Strip => "strip",
            Transcription::StripText => "strip_text",
        }
    }
}

/// A compiled JSON Schema.
pub struct Schema {
    id: String,
    validator: jsonschema::Validator<TapeJson>,
    /// The quick yes-check, when the schema is within its subset.
    fast: Option<FastSchema>,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Schema({})", self.id)
    }
}

impl Schema {
    /// The schema's `$id` (or its file name when it has none).
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Read and compile a schema file. Only local content is used: with no
/// retriever compiled in, a `$ref` to anything outside the file fails here,
/// at start, and never reaches the network.
pub fn compile_schema_file(path: &Path) -> Result<Schema, String> {
    let text =
        std::fs::read(path).map_err(|e| format!("cannot read schema {}: {e}", path.display()))?;
    let value: Value = serde_json::from_slice(&text)
        .map_err(|e| format!("schema {} is not JSON: {e}", path.display()))?;
    let id = value
        .get("$id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| {
            path.file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
    let validator = jsonschema::options_for::<TapeJson>()
        .build(&value)
        .map_err(|e| format!("schema {} does not compile: {e}", path.display()))?;
    let fast = FastSchema::compile(&value);
    Ok(Schema {
        id,
        validator,
        fast,
    })
}

/// What inspection found and produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The body to forward when it changed; `None` means forward the original bytes.
    pub body: Option<Vec<u8>>,
    /// `call.id`, when present and short.
    pub call_id: Option<String>,
    /// Schema violations (report mode; enforce mode rejects instead).
    pub violations: Vec<Violation>,
    /// Whether a transcription was removed or emptied.
    pub transcription_removed: bool,
}

/// The inspection stage of one route.
#[derive(Debug, Clone)]
pub struct Inspector {
    schema: Option<Arc<Schema>>,
    validation: Validation,
    transcription: Transcription,
}

impl Inspector {
    /// An inspector with its schema (needed unless validation is off).
    pub fn new(
        schema: Option<Arc<Schema>>,
        validation: Validation,
        transcription: Transcription,
    ) -> Self {
        let validation = if schema.is_none() {
            Validation::Off
        } else {
            validation
        };
        Inspector {
            schema,
            validation,
            transcription,
        }
    }

    /// The validation mode.
    pub fn validation(&self) -> Validation {
        self.validation
    }

    /// The transcription mode.
    pub fn transcription(&self) -> Transcription {
        self.transcription
    }

    /// The schema id, if any.
    pub fn schema_id(&self) -> Option<&str> {
        self.schema.as_deref().map(Schema::id)
    }

    /// Run parse, validate and transform on a whole body.
    pub fn inspect(&self, body: &[u8]) -> Result<Outcome, Rejection> {
        let keep = json::Keep {
            tape: self.schema.is_some() && self.validation != Validation::Off,
            texts: self.transcription == Transcription::StripText,
        };
        let scan = json::scan_for(body, keep).map_err(|e| Rejection::InvalidJson(e.to_string()))?;
        let mut out = Outcome {
            call_id: scan
                .call_id
                .clone()
                .and_then(|r| call_id(scan.tape.source().get(r)?)),
            ..Outcome::default()
        };
        if let (Some(schema), true) = (&self.schema, self.validation != Validation::Off) {
            // The scan has proven the body strict JSON and built its tape.
            // Almost every webhook is valid: the quick check proves that for
            // most; only what it cannot prove goes to the full validator, its
            // yes/no check first (it builds no errors), the error list last.
            let proven = schema.fast.as_ref().is_some_and(|f| f.is_valid(&scan.tape));
            out.violations = match scan.tape.root() {
                Some(root) if !proven && !schema.validator.is_valid(root) => {
                    violations(&schema.validator, root)
                }
                _ => Vec::new(),
            };
            if !out.violations.is_empty() && self.validation == Validation::Enforce {
                return Err(Rejection::SchemaViolation(std::mem::take(
                    &mut out.violations,
                )));
            }
        }
        let cuts = match self.transcription {
            _ if scan.transcription_is_null => Vec::new(),
            Transcription::Keep => Vec::new(),
            Transcription::Strip => scan
                .transcription
                .iter()
                .map(|t| t.remove.clone())
                .collect(),
            Transcription::StripText => scan.texts.iter().map(|t| t.remove.clone()).collect(),
        };
        if !cuts.is_empty() {
            out.transcription_removed = true;
            out.body = Some(json::splice_out(body, cuts));
        }
        Ok(out)
    }
}

/// Strict RFC 8259 parse of a whole body into a DOM (for callers that want one).
pub fn parse_strict(body: &[u8]) -> Result<Value, Rejection> {
    json::scan(body).map_err(|e| Rejection::InvalidJson(e.to_string()))?;
    serde_json::from_slice(body).map_err(|e| Rejection::InvalidJson(e.to_string()))
}

/// `call.id` for logs: only a short id made of safe characters (a UUID in practice).
fn call_id(raw: &str) -> Option<String> {
    let safe = !raw.is_empty()
        && raw.len() <= 128
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    // A slice of the body the scan proved UTF-8: no decoding at all
    // (`from_utf8_lossy` here cost ~300 instructions per webhook, callgrind).
    safe.then(|| raw.to_owned())
}

fn violations(validator: &jsonschema::Validator<TapeJson>, doc: TapeNode<'_>) -> Vec<Violation> {
    validator
        .iter_errors(doc)
        .take(MAX_VIOLATIONS)
        .map(|e| Violation {
            path: e.instance_path().to_string(),
            message: describe(e.kind()),
        })
        .collect()
}

/// A message from the schema side of a violation: never the payload's value.
fn describe(kind: &jsonschema::error::ValidationErrorKind) -> String {
    use jsonschema::error::ValidationErrorKind as K;
    match kind {
        K::Required { property } => format!("required property {property} is missing"),
        K::Type { kind } => {
            let names: Vec<String> = match kind {
                jsonschema::error::TypeKind::Single(t) => vec![t.to_string()],
                jsonschema::error::TypeKind::Multiple(set) => {
                    set.iter().map(|t| t.to_string()).collect()
                }
            };
            format!("wrong type, expected {}", names.join(" or "))
        }
        K::Enum { options } => format!("not one of {options}"),
        K::Constant { expected_value } => format!("must be {expected_value}"),
        K::MinLength { limit } => format!("shorter than {limit} characters"),
        K::MaxLength { limit } => format!("longer than {limit} characters"),
        K::Minimum { limit } => format!("less than {limit}"),
        K::Maximum { limit } => format!("greater than {limit}"),
        K::ExclusiveMinimum { limit } => format!("not greater than {limit}"),
        K::ExclusiveMaximum { limit } => format!("not less than {limit}"),
        K::Pattern { pattern } => format!("does not match {pattern}"),
        K::Format { format } => format!("not a valid {format}"),
        K::MinItems { limit } => format!("fewer than {limit} items"),
        K::MaxItems { limit } => format!("more than {limit} items"),
        K::AdditionalProperties { unexpected } => {
            format!("{} unexpected properties", unexpected.len())
        }
        other => format!("fails the `{}` keyword", other.keyword()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema_file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn remote_refs_never_reach_the_network() {
        // No retriever is compiled in: a $ref outside the file fails at start.
        for r in [
            "https://example.com/schema.json",
            "http://127.0.0.1:9/x.json",
            "file:///etc/passwd",
        ] {
            let f = schema_file(&format!(
                r#"{{"$schema":"https://json-schema.org/draft/2020-12/schema","properties":{{"a":{{"$ref":"{r}"}}}}}}"#
            ));
            let e = compile_schema_file(f.path()).expect_err(r);
            assert!(e.contains("does not compile"), "{e}");
        }
        // Local references within the file work.
        let f = schema_file(
            r##"{"$defs":{"s":{"type":"string"}},"properties":{"a":{"$ref":"#/$defs/s"}}}"##,
        );
        let s = Arc::new(compile_schema_file(f.path()).unwrap());
        let i = Inspector::new(Some(s), Validation::Enforce, Transcription::Keep);
        assert!(i.inspect(br#"{"a":"x"}"#).is_ok());
        assert!(matches!(
            i.inspect(br#"{"a":1}"#),
            Err(Rejection::SchemaViolation(_))
        ));
    }

    /// A member name that shares the fingerprint of a short name hookgate
    /// looks for: `short` with its last byte's low bit flipped or a byte
    /// added, padded to 256 + its length (the fingerprint keeps only part of
    /// the length), as JSON text.
    fn lookalike(short: &str) -> String {
        let mut name: Vec<u8> = short.as_bytes().to_vec();
        if name.len() < 7 {
            name.resize(6, 0);
            name.push(1);
        } else if let Some(last) = name.get_mut(6) {
            *last ^= 1;
        }
        name.resize(256 + short.len(), b'A');
        let text = String::from_utf8(name).unwrap();
        serde_json::to_string(&text).unwrap()
    }

    #[test]
    fn names_that_share_a_fingerprint_do_not_pass_for_the_real_ones() {
        // Fingerprints are equal (the scanner's own function), names are not.
        for short in ["call", "assist", "id", "content", "chunks"] {
            let long: String = serde_json::from_str(&lookalike(short)).unwrap();
            let fp = |n: &[u8]| crate::json::tests_fingerprint(n);
            assert_eq!(fp(long.as_bytes()), fp(short.as_bytes()), "{short}");
        }
        let strip = Inspector::new(None, Validation::Off, Transcription::Strip);
        let strip_text = Inspector::new(None, Validation::Off, Transcription::StripText);
        let cut = |i: &Inspector, doc: &str| {
            let out = i.inspect(doc.as_bytes()).unwrap();
            String::from_utf8(out.body.unwrap_or_else(|| doc.as_bytes().to_vec())).unwrap()
        };
        // A second "assist" with a null transcription must not stop the cut.
        let doc = format!(
            r#"{{"call":{{"id":"c1"}},"assist":{{"transcription":{{"content":"SECRET","chunks":[]}}}},{}:{{"transcription":null}}}}"#,
            lookalike("assist")
        );
        for i in [&strip, &strip_text] {
            let out = cut(i, &doc);
            assert!(!out.contains("SECRET"), "{out}");
            serde_json::from_str::<serde_json::Value>(&out).unwrap();
        }
        // Nor may a second one's transcription be cut in place of the real one.
        let doc = format!(
            r#"{{"assist":{{"transcription":{{"content":"SECRET"}}}},{}:{{"transcription":{{"content":"decoy"}}}}}}"#,
            lookalike("assist")
        );
        let out = cut(&strip, &doc);
        assert!(!out.contains("SECRET") && out.contains("decoy"), "{out}");
        // A chunk member that looks like "content" beside the real one.
        let doc = format!(
            r#"{{"assist":{{"transcription":{{"chunks":[{{{}:"","content":"SECRET","speaker":"caller"}}]}}}}}}"#,
            lookalike("content")
        );
        let out = cut(&strip_text, &doc);
        assert!(!out.contains("SECRET"), "{out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v["assist"]["transcription"]["chunks"][0]["speaker"],
            "caller"
        );
        // A lookalike "call" or "id" does not give the logged call id.
        let doc = format!(
            r#"{{"call":{{"id":"real",{}:"fake"}},{}:{{"id":"fake2"}}}}"#,
            lookalike("id"),
            lookalike("call")
        );
        let out = strip.inspect(doc.as_bytes()).unwrap();
        assert_eq!(out.call_id.as_deref(), Some("real"));
    }

    #[test]
    fn report_mode_forwards_and_lists_violations() {
        let f = schema_file(r#"{"required":["version"]}"#);
        let s = Arc::new(compile_schema_file(f.path()).unwrap());
        let out = Inspector::new(Some(s), Validation::Report, Transcription::Keep)
            .inspect(br#"{"other":1}"#)
            .unwrap();
        assert_eq!(out.body, None);
        assert_eq!(out.violations.len(), 1);
        assert_eq!(
            out.violations[0].message,
            "required property \"version\" is missing"
        );
    }

    #[test]
    fn only_short_ids_of_safe_characters_reach_the_log() {
        let inspector = Inspector::new(None, Validation::Off, Transcription::Keep);
        let id_of = |id: &str| {
            let body = format!(r#"{{"call":{{"id":{id}}}}}"#);
            inspector.inspect(body.as_bytes()).unwrap().call_id
        };
        let uuid = "123e4567-e89b-12d3-a456-426614174000";
        assert_eq!(id_of(&format!("\"{uuid}\"")).as_deref(), Some(uuid));
        assert_eq!(id_of(r#""a_b.c:d""#).as_deref(), Some("a_b.c:d"));
        let long = |n: usize| format!("\"{}\"", "a".repeat(n));
        assert_eq!(id_of(&long(128)).map(|s| s.len()), Some(128));
        // A phone number, an escape, a space, non-ASCII, empty, too long, a number.
        for id in [
            r#""+4921161234567""#.to_string(),
            r#""\u0041""#.to_string(),
            r#""a b""#.to_string(),
            r#""grüße""#.to_string(),
            r#""""#.to_string(),
            long(129),
            "12345".to_string(),
        ] {
            assert_eq!(id_of(&id), None, "{id}");
        }
    }
}
