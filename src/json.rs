//! A strict, non-recursive JSON scanner (RFC 8259) that checks a whole document
//! and records the byte spans hookgate needs, without building a DOM.
//!
//! What it refuses, with the byte offset: invalid UTF-8, a byte-order mark,
//! anything outside RFC 8259's grammar (comments, single quotes, trailing commas,
//! `NaN`/`Infinity`, leading zeros, trailing data, raw control characters in
//! strings), lone UTF-16 surrogates in `\u` escapes, duplicate member names at
//! any depth (compared after unescaping: parsers disagree on which copy wins),
//! nesting deeper than [`MAX_DEPTH`], and numbers that do not fit a finite double.
//!
//! What it records: the member spans of `assist.transcription`, of its `content`,
//! and of each `assist.transcription.chunks[*].content`, plus the `call.id` value,
//! so that privacy transforms can cut bytes out of the original document and leave
//! everything else exactly as sent.

use crate::tape::{Entry, Kind, Tape};
use std::borrow::Cow;
use std::collections::HashSet;
use std::ops::Range;

/// Deepest nesting of arrays and objects accepted.
pub const MAX_DEPTH: usize = 100;

/// Why a document was refused, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Byte offset of the problem.
    pub offset: usize,
    /// What is wrong.
    pub what: &'static str,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.what, self.offset)
    }
}

/// A member that can be cut out of its object: `remove` is the byte range to
/// delete (the member and one adjacent comma, with the whitespace between).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSpan {
    /// Bytes to delete to remove the member.
    pub remove: Range<usize>,
    /// The member's value.
    pub value: Range<usize>,
}

/// What the scan found.
#[derive(Debug, Clone, Default)]
pub struct Scan<'s> {
    /// The document, for schema validation.
    pub tape: Tape<'s>,
    /// `assist.transcription`, if present.
    pub transcription: Option<MemberSpan>,
    /// Whether `assist.transcription` is `null`.
    pub transcription_is_null: bool,
    /// `assist.transcription.content` and every `assist.transcription.chunks[*].content`
    /// (left empty by a scan that was not asked for them, see [`scan_for`]).
    pub texts: Vec<MemberSpan>,
    /// The raw (still escaped) bytes of `call.id` when it is a string.
    pub call_id: Option<Range<usize>>,
}

/// Which object we are in, for span recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Other,
    Root,
    Call,
    Assist,
    Transcription,
    Chunks,
    Chunk,
}

#[derive(Debug)]
struct Frame {
    /// Offset of the opening bracket.
    start: usize,
    is_object: bool,
    place: Place,
    /// Where this object's member names start on the scanner's key stack.
    keys_from: usize,
    /// This object's member names went into a set (`Scanner::key_sets`, last),
    /// once it had many. Kept out of the frame so that a frame has no drop code:
    /// popping one was a call per container.
    has_set: bool,
    /// This container's entry on the tape.
    tape_idx: u32,
    /// Children so far.
    count: u32,
    /// A first member waiting for the next key (or the end) to know its span.
    pending_first: Option<(Target, usize, Range<usize>)>,
    /// What hookgate records of the current member (objects; `None` for most),
    /// and where its name starts.
    target: Target,
    key_start: usize,
    /// For such a member: where the previous member's value ended, if any.
    prev_end: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    None,
    Transcription,
    Text,
    CallId,
}

/// Objects with more members than this check duplicates with a hash set.
const KEYS_LINEAR: usize = 16;

/// A member name on the key stack: raw span, whether it has escapes, and a
/// fingerprint (length and first bytes of the name, decoded when it has
/// escapes) so most unequal names differ without comparing bytes.
#[derive(Debug, Clone, Copy)]
struct KeyRef {
    start: u32,
    end: u32,
    escaped: bool,
    fp: u64,
}

/// Fingerprint of the raw member name `b[raw]`: its first 7 bytes and its
/// length. Equal names give equal fingerprints.
///
/// The first bytes are read as one word straight from the body (a name is
/// followed at least by its closing quote, so the word rarely runs past the
/// end); copying a variable number of bytes into a stack array instead cost a
/// `memcpy` call and a stalled load, a quarter of the time spent on member names.
#[inline(always)]
fn fingerprint(b: &[u8], raw: Range<usize>) -> u64 {
    name_fingerprint(word_at(b, raw.start), raw.end.wrapping_sub(raw.start))
}

/// The eight bytes of `b` from `start` as a little-endian word, zero-padded
/// when fewer remain (a member name's first bytes, read in one load).
#[inline(always)]
pub(crate) fn word_at(b: &[u8], start: usize) -> u64 {
    match b.get(start..).and_then(|t| t.first_chunk::<8>()) {
        Some(w) => u64::from_le_bytes(*w),
        None => fingerprint_word_at_end(b, start),
    }
}

/// The fingerprint of a `len`-byte name whose first bytes are `word` (the
/// word `string` read already, when it did).
#[inline(always)]
const fn name_fingerprint(word: u64, len: usize) -> u64 {
    // n <= 7: keep the name's first n bytes, the length in the top byte.
    let n = if len < 7 { len } else { 7 };
    let keep = !(u64::MAX << (8 * n));
    (word & keep) ^ ((len as u64) << 56) ^ (((len as u64) >> 8) << 48)
}

/// The fingerprint of a decoded member name (for tests elsewhere in the crate).
#[cfg(test)]
pub(crate) fn tests_fingerprint(name: &[u8]) -> u64 {
    fingerprint(name, 0..name.len())
}

/// The fingerprint of a name given in the source (for the names hookgate
/// looks for).
const fn literal_fingerprint(name: &[u8]) -> u64 {
    let mut word = 0u64;
    let mut i = 0;
    while i < name.len() && i < 8 {
        word |= (name[i] as u64) << (8 * i);
        i += 1;
    }
    name_fingerprint(word, name.len())
}

const FP_CALL: u64 = literal_fingerprint(b"call");
const FP_ASSIST: u64 = literal_fingerprint(b"assist");
const FP_ID: u64 = literal_fingerprint(b"id");
const FP_TRANSCRIPTION: u64 = literal_fingerprint(b"transcription");
const FP_CONTENT: u64 = literal_fingerprint(b"content");
const FP_CHUNKS: u64 = literal_fingerprint(b"chunks");

/// The word at `start` when fewer than 8 bytes remain, zero-padded.
#[cold]
fn fingerprint_word_at_end(b: &[u8], start: usize) -> u64 {
    let mut w = [0u8; 8];
    let tail = b.get(start..).unwrap_or_default();
    let n = tail.len().min(8);
    w.get_mut(..n)
        .unwrap_or_default()
        .copy_from_slice(tail.get(..n).unwrap_or_default());
    u64::from_le_bytes(w)
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    stack: Vec<Frame>,
    out: Scan<'a>,
    /// Member names of every open object, innermost last.
    keys: Vec<KeyRef>,
    /// Member names of the open objects that have many, innermost last.
    key_sets: Vec<HashSet<Vec<u8>>>,
    /// Whether the member name of the value about to be read has escapes.
    pending_key_escaped: bool,
    /// Its span for the tape: in the body, or decoded in the tape's name buffer.
    pending_tape_key: (u32, u32),
    /// Start of the value that just ended.
    last_value_start: usize,
    /// Place of the value after the member name just read.
    pending_child_place: Place,
    /// Whether the transcript's texts are recorded (`Scan::texts`).
    want_texts: bool,
    /// Why the scan failed (see `Fail`).
    error: Option<ParseError>,
}

/// The scanner stopped; why is in `Scanner::error`.
#[derive(Debug)]
struct Fail;

fn err<T>(offset: usize, what: &'static str) -> Result<T, ParseError> {
    Err(ParseError { offset, what })
}

/// What a scan keeps beyond checking the document (see [`scan_for`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    /// The tape, which schema validation walks.
    pub tape: bool,
    /// The transcript's texts (`Scan::texts`), which only `strip_text` needs.
    pub texts: bool,
}

impl Keep {
    /// The tape and the texts.
    pub const ALL: Keep = Keep {
        tape: true,
        texts: true,
    };
}

/// Scan a whole document strictly, building its tape and recording every span.
pub fn scan(body: &[u8]) -> Result<Scan<'_>, ParseError> {
    scan_for(body, Keep::ALL)
}

/// Scan a whole document strictly, keeping what `keep` asks for (the spans
/// of `assist.transcription` and `call.id` are always recorded).
pub fn scan_for(body: &[u8], keep: Keep) -> Result<Scan<'_>, ParseError> {
    if body.starts_with(&[0xEF, 0xBB, 0xBF]) {
        return err(0, "byte-order mark");
    }
    // Offsets on the tape are 32 bits (the gateway's bodies are at most 64 MiB;
    // only `hookgate validate` could be handed more).
    if u32::try_from(body.len()).is_err() {
        return err(0, "document larger than 4 GiB");
    }
    // SIMD validation (simdutf8); the error's offset comes from its
    // std-compatible variant, run only on a body that failed.
    let text = match simdutf8::basic::from_utf8(body) {
        Ok(t) => t,
        Err(_) => {
            let at = simdutf8::compat::from_utf8(body).map_or_else(|e| e.valid_up_to(), |_| 0);
            return err(at, "invalid UTF-8");
        }
    };
    let mut s = Scanner {
        b: body,
        i: 0,
        // Room for the nesting of a webhook (six levels); both stacks grow
        // when a document needs more. Kept under 1 KB each, within glibc's
        // per-thread cache, like the answer buffer in `h1`.
        stack: Vec::with_capacity(8),
        out: Scan {
            tape: if keep.tape {
                // About one entry per 16 bytes of compact JSON: no regrowth.
                Tape::with_capacity(text, body.len() / 16 + 8)
            } else {
                Tape::counting(text)
            },
            ..Scan::default()
        },
        keys: Vec::with_capacity(32),
        key_sets: Vec::new(),
        pending_key_escaped: false,
        pending_tape_key: (0, 0),
        last_value_start: 0,
        pending_child_place: Place::Other,
        want_texts: keep.texts,
        error: None,
    };
    if s.run().is_err() {
        return Err(s.error.take().unwrap_or(ParseError {
            offset: s.i,
            what: "internal",
        }));
    }
    Ok(s.out)
}

impl<'a> Scanner<'a> {
    /// Keep why the scan stops and unwind with `Fail`: a one-byte error keeps
    /// the hot functions' results in registers (a `ParseError` is 24 bytes).
    #[cold]
    fn fail<T>(&mut self, offset: usize, what: &'static str) -> Result<T, Fail> {
        self.error = Some(ParseError { offset, what });
        Err(Fail)
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i).filter(|&&c| is_ws(c)) {
            self.i += 1;
            if c == b'\n' {
                // Indentation of pretty-printed documents: eight spaces at a time.
                while self.b.get(self.i..self.i + 8) == Some(b"        ") {
                    self.i += 8;
                }
            }
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// The whole document in one loop, without recursion and without a call
    /// per value: read a value (a container pushes its frame and goes on with
    /// its first value), then close containers or go on after a comma.
    /// (callgrind, 64 KB payload: a call per value cost about 30 instructions
    /// of saved registers and reloaded state.)
    fn run(&mut self) -> Result<(), Fail> {
        self.ws();
        if self.i >= self.b.len() {
            return self.fail(self.i, "empty document");
        }
        let mut place = Place::Root;
        'values: loop {
            if self.value(place)? {
                place = self.child_place();
                continue 'values;
            }
            // After a value: close containers or continue them.
            loop {
                self.ws();
                let Some(top) = self.stack.last() else {
                    break 'values;
                };
                let is_object = top.is_object;
                match self.peek() {
                    Some(b',') => {
                        let comma = self.i;
                        self.i += 1;
                        self.ws();
                        if is_object {
                            self.member_key(Some(comma))?;
                        }
                        place = self.child_place();
                        continue 'values;
                    }
                    Some(b'}') if is_object => {
                        self.i += 1;
                        self.close_object();
                        self.after_value();
                    }
                    Some(b']') if !is_object => {
                        self.i += 1;
                        if let Some(f) = self.stack.pop() {
                            self.last_value_start = f.start;
                            self.out.tape.close(f.tape_idx, f.count, self.i as u32);
                        }
                        self.after_value();
                    }
                    Some(_) => {
                        return self.fail(
                            self.i,
                            if is_object {
                                "expected , or }"
                            } else {
                                "expected , or ]"
                            },
                        )
                    }
                    None => return self.fail(self.i, "unexpected end of document"),
                }
            }
        }
        if self.i != self.b.len() {
            return self.fail(self.i, "trailing data after the document");
        }
        Ok(())
    }

    /// The place of a value about to start inside the top container.
    fn child_place(&self) -> Place {
        let Some(top) = self.stack.last() else {
            return Place::Root;
        };
        if top.is_object {
            // Decided by member_key.
            return self.pending_child_place;
        }
        match top.place {
            Place::Chunks => Place::Chunk,
            _ => Place::Other,
        }
    }

    /// Read `"key" :` in an object, check duplicates, decide the target.
    #[inline(always)]
    fn member_key(&mut self, comma: Option<usize>) -> Result<(), Fail> {
        let key_start = self.i;
        if self.peek() != Some(b'"') {
            return self.fail(
                self.i,
                if self.peek() == Some(b'}') {
                    "trailing comma"
                } else {
                    "expected a member name"
                },
            );
        }
        let (raw, escaped, first_word) = self.string()?;
        let decoded: Cow<'a, [u8]> = if escaped {
            Cow::Owned(unescape(self.b.get(raw.clone()).unwrap_or_default()))
        } else {
            Cow::Borrowed(self.b.get(raw.clone()).unwrap_or_default())
        };
        let key: &[u8] = &decoded;
        let key_ref = KeyRef {
            start: raw.start as u32,
            end: raw.end as u32,
            escaped,
            // Of the decoded name when it has escapes: equal names, equal fingerprints.
            fp: match (escaped, first_word) {
                (true, _) => fingerprint(key, 0..key.len()),
                (false, Some(w)) => name_fingerprint(w, raw.len()),
                (false, None) => fingerprint(self.b, raw),
            },
        };
        self.ws();
        if self.peek() != Some(b':') {
            return self.fail(self.i, "expected :");
        }
        self.i += 1;
        self.ws();
        let Some(top) = self.stack.last_mut() else {
            return self.fail(key_start, "internal");
        };
        // The fingerprint rules out almost every other name in one compare;
        // the bytes are compared only when it matches. (A fingerprint keeps
        // only part of the length: a name of 256 bytes or more can share the
        // fingerprint of a short one, and must not pass for it.)
        let (target, child) = match (top.place, key_ref.fp) {
            (Place::Other, _) => (Target::None, Place::Other),
            (Place::Root, FP_CALL) if key == b"call" => (Target::None, Place::Call),
            (Place::Root, FP_ASSIST) if key == b"assist" => (Target::None, Place::Assist),
            (Place::Call, FP_ID) if key == b"id" => (Target::CallId, Place::Other),
            (Place::Assist, FP_TRANSCRIPTION) if key == b"transcription" => {
                (Target::Transcription, Place::Transcription)
            }
            // Without texts to record, the chunks are ordinary objects.
            (Place::Transcription, FP_CONTENT) if self.want_texts && key == b"content" => {
                (Target::Text, Place::Other)
            }
            (Place::Transcription, FP_CHUNKS) if self.want_texts && key == b"chunks" => {
                (Target::None, Place::Chunks)
            }
            (Place::Chunk, FP_CONTENT) if key == b"content" => (Target::Text, Place::Other),
            _ => (Target::None, Place::Other),
        };
        // Duplicates: a pass over this object's names while it is small, a set after.
        let b = self.b;
        let name_of = |k: &KeyRef| -> Cow<'a, [u8]> {
            let raw = b.get(k.start as usize..k.end as usize).unwrap_or_default();
            if k.escaped {
                Cow::Owned(unescape(raw))
            } else {
                Cow::Borrowed(raw)
            }
        };
        let seen = self.keys.get(top.keys_from..).unwrap_or_default();
        if top.has_set {
            let fresh = match self.key_sets.last_mut() {
                Some(set) => set.insert(key.to_vec()),
                None => return self.fail(key_start, "internal"),
            };
            if !fresh {
                return self.fail(key_start, "duplicate member name");
            }
        } else {
            // Equal names have equal fingerprints (escaped ones are taken after
            // decoding), so the bytes are compared only when those match.
            let fp = key_ref.fp;
            if seen
                .iter()
                .any(|k| k.fp == fp && name_of(k).as_ref() == key)
            {
                return self.fail(key_start, "duplicate member name");
            }
            if seen.len() >= KEYS_LINEAR {
                let mut set: HashSet<Vec<u8>> =
                    seen.iter().map(|k| name_of(k).into_owned()).collect();
                set.insert(key.to_vec());
                self.key_sets.push(set);
                top.has_set = true;
            } else {
                self.keys.push(key_ref);
            }
        }
        self.pending_key_escaped = escaped;
        self.pending_tape_key = if escaped {
            self.out.tape.add_name(key)
        } else {
            (key_ref.start, key_ref.end)
        };
        // The first member's span is only known when the next key or the end is seen.
        if let Some((t, start, value)) = top.pending_first.take() {
            let span = MemberSpan {
                remove: start..key_start,
                value,
            };
            self.record(t, span);
        }
        let Some(top) = self.stack.last_mut() else {
            return self.fail(key_start, "internal");
        };
        top.target = target;
        if target != Target::None {
            top.key_start = key_start;
            // Where the previous member's value ended: before the comma and any
            // whitespace in front of it. None for the object's first member.
            top.prev_end = comma.map(|mut at| {
                while at > 0 && self.b.get(at - 1).is_some_and(|&c| is_ws(c)) {
                    at -= 1;
                }
                at
            });
        }
        self.pending_child_place = child;
        Ok(())
    }

    fn record(&mut self, t: Target, span: MemberSpan) {
        match t {
            Target::Transcription => self.out.transcription = Some(span),
            Target::Text => {
                // Room for a transcript of a few chunks at once, not 4, then 8.
                if self.out.texts.capacity() == 0 {
                    self.out.texts.reserve(8);
                }
                self.out.texts.push(span);
            }
            Target::CallId | Target::None => {}
        }
    }

    /// A value ended at self.i: finish the member bookkeeping of the container,
    /// which only members that hookgate records need.
    #[inline]
    fn after_value(&mut self) {
        let Some(top) = self.stack.last_mut() else {
            return;
        };
        if top.target != Target::None {
            let target = std::mem::replace(&mut top.target, Target::None);
            let (key_start, prev) = (top.key_start, top.prev_end);
            self.target_value_end(target, key_start, prev);
        }
    }

    /// A member hookgate records (`call.id`, the transcript, its texts) ended at
    /// self.i; `prev` is where the previous member's value ended, if any.
    #[inline(never)]
    fn target_value_end(&mut self, target: Target, key_start: usize, prev: Option<usize>) {
        let end = self.i;
        let value_start = self.last_value_start;
        if target == Target::CallId {
            if self.b.get(value_start) == Some(&b'"') {
                self.out.call_id = Some(value_start + 1..end - 1);
            }
            return;
        }
        if target == Target::Transcription && self.b.get(value_start) == Some(&b'n') {
            self.out.transcription_is_null = true;
        }
        match prev {
            Some(p) => self.record(
                target,
                MemberSpan {
                    remove: p..end,
                    value: value_start..end,
                },
            ),
            None => {
                if let Some(top) = self.stack.last_mut() {
                    top.pending_first = Some((target, key_start, value_start..end));
                }
            }
        }
    }

    fn close_object(&mut self) {
        if let Some(mut top) = self.stack.pop() {
            self.last_value_start = top.start;
            self.keys.truncate(top.keys_from);
            if top.has_set {
                self.key_sets.pop();
            }
            self.out.tape.close(top.tape_idx, top.count, self.i as u32);
            if let Some((t, start, value)) = top.pending_first.take() {
                // The only member: remove it alone (whitespace before `}` stays).
                let end = value.end;
                self.record(
                    t,
                    MemberSpan {
                        remove: start..end,
                        value,
                    },
                );
            }
        }
    }

    /// One value at self.i (after whitespace), appended to the tape. Returns
    /// whether it opened a container that has members: its frame is pushed and
    /// its first member name read, and the caller goes on with the first value.
    #[inline(always)]
    fn value(&mut self, place: Place) -> Result<bool, Fail> {
        self.last_value_start = self.i;
        // The member name this value belongs to (none in arrays and at the root).
        let in_object = match self.stack.last_mut() {
            Some(top) => {
                top.count += 1;
                top.is_object
            }
            None => false,
        };
        let (key_escaped, key) = if in_object {
            (self.pending_key_escaped, self.pending_tape_key)
        } else {
            (false, (0, 0))
        };
        let start = self.i as u32;
        let (kind, val, str_escaped) = match self.peek() {
            Some(b'{') => (Kind::Object, (start, start), false),
            Some(b'[') => (Kind::Array, (start, start), false),
            Some(b'"') => {
                let (r, escaped, _) = self.string()?;
                (Kind::String, (r.start as u32, r.end as u32), escaped)
            }
            Some(b't') => {
                self.literal(b"true")?;
                (Kind::True, (start, self.i as u32), false)
            }
            Some(b'f') => {
                self.literal(b"false")?;
                (Kind::False, (start, self.i as u32), false)
            }
            Some(b'n') => {
                self.literal(b"null")?;
                (Kind::Null, (start, self.i as u32), false)
            }
            Some(b'-' | b'0'..=b'9') => {
                self.number()?;
                (Kind::Number, (start, self.i as u32), false)
            }
            Some(b']' | b'}') => return self.fail(self.i, "trailing comma or missing value"),
            Some(b'\'') => return self.fail(self.i, "single quotes are not JSON"),
            Some(b'/') => return self.fail(self.i, "comments are not JSON"),
            Some(b'N' | b'I') => return self.fail(self.i, "NaN and Infinity are not JSON"),
            Some(_) => return self.fail(self.i, "unexpected character"),
            None => return self.fail(self.i, "unexpected end of document"),
        };
        let idx = self.out.tape.next_index();
        self.out.tape.push(Entry {
            kind,
            key_escaped,
            str_escaped,
            key,
            val,
            end: idx + 1,
            len: 0,
        });
        let is_object = match kind {
            Kind::Object => true,
            Kind::Array => false,
            _ => {
                self.after_value();
                return Ok(false);
            }
        };
        if self.stack.len() >= MAX_DEPTH {
            return self.fail(self.i, "nesting too deep");
        }
        self.stack.push(Frame {
            start: self.i,
            is_object,
            place,
            keys_from: self.keys.len(),
            has_set: false,
            tape_idx: idx,
            count: 0,
            pending_first: None,
            target: Target::None,
            key_start: 0,
            prev_end: None,
        });
        self.i += 1;
        self.ws();
        let close = if is_object { b'}' } else { b']' };
        if self.peek() == Some(close) {
            self.i += 1;
            self.stack.pop();
            self.out.tape.close(idx, 0, self.i as u32);
            self.last_value_start = start as usize;
            self.after_value();
            return Ok(false);
        }
        if is_object {
            self.member_key(None)?;
        }
        Ok(true)
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), Fail> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(())
        } else {
            self.fail(self.i, "invalid literal")
        }
    }

    fn number(&mut self) -> Result<(), Fail> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.i += 1;
                if matches!(self.peek(), Some(b'0'..=b'9')) {
                    return self.fail(self.i, "leading zeros are not JSON");
                }
            }
            Some(b'1'..=b'9') => self.digits(),
            _ => return self.fail(self.i, "invalid number"),
        }
        let mut simple = true;
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return self.fail(self.i, "invalid number: digit expected after .");
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            simple = false;
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return self.fail(self.i, "invalid number: digit expected in exponent");
            }
            self.digits();
        }
        // Short plain numbers are always finite; check the others.
        if !simple || self.i - start > 300 {
            let text = self
                .b
                .get(start..self.i)
                .and_then(|t| std::str::from_utf8(t).ok())
                .unwrap_or("x");
            match text.parse::<f64>() {
                Ok(v) if v.is_finite() => {}
                _ => return self.fail(start, "number out of range"),
            }
        }
        Ok(())
    }

    fn digits(&mut self) {
        // Eight at a time (timestamps have 13); the first word that holds a
        // non-digit tells where the digits end.
        while let Some(w) = self.b.get(self.i..self.i + 8) {
            let stop = non_digits(u64::from_le_bytes(w.try_into().unwrap_or([0; 8])));
            if stop != 0 {
                self.i += (stop.trailing_zeros() / 8) as usize;
                return;
            }
            self.i += 8;
        }
        // The last few bytes of the document.
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
    }

    /// A string at self.i; returns the raw content range and whether it has escapes.
    ///
    /// Member names and enum values are short: a string that ends within its
    /// first 16 bytes without an escape is read here, inlined into the caller;
    /// the rest go to `long_string`. (callgrind, 64 KB payload: the call cost
    /// about 20 instructions per string.)
    #[inline(always)]
    fn string(&mut self) -> Result<(Range<usize>, bool, Option<u64>), Fail> {
        let start = self.i + 1; // after the opening quote
        let mut at = start;
        // The content's first word, for a member name's fingerprint.
        let mut first = None;
        for _ in 0..2 {
            let Some(w) = self.b.get(at..at + 8) else {
                break;
            };
            let w = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
            first = first.or(Some(w));
            let hit = special_bytes(w);
            if hit == 0 {
                at += 8;
                continue;
            }
            at += (hit.trailing_zeros() / 8) as usize;
            if self.b.get(at) == Some(&b'"') {
                self.i = at + 1;
                return Ok((start..at, false, first));
            }
            break;
        }
        let (range, escaped) = self.long_string(start, at)?;
        Ok((range, escaped, first))
    }

    /// `string` for strings that are long or hold escapes or control
    /// characters: `start` is the content's first byte, and the bytes before
    /// `at` hold no quote, backslash or control character.
    #[inline(never)]
    fn long_string(&mut self, start: usize, at: usize) -> Result<(Range<usize>, bool), Fail> {
        let mut at = at;
        let mut escaped = false;
        // Up to 64 more bytes, two words per step, then the SIMD search.
        let mut steps = 0;
        while steps < 4 {
            let Some(w) = self.b.get(at..at + 16) else {
                break;
            };
            let lo = special_bytes(u64::from_le_bytes(
                w.get(..8).and_then(|h| h.try_into().ok()).unwrap_or([0; 8]),
            ));
            let hi = special_bytes(u64::from_le_bytes(
                w.get(8..).and_then(|h| h.try_into().ok()).unwrap_or([0; 8]),
            ));
            if lo | hi == 0 {
                at += 16;
                steps += 1;
                continue;
            }
            at += if lo != 0 {
                (lo.trailing_zeros() / 8) as usize
            } else {
                8 + (hi.trailing_zeros() / 8) as usize
            };
            match self.b.get(at) {
                Some(b'"') => {
                    self.i = at + 1;
                    return Ok((start..at, escaped));
                }
                Some(b'\\') => {
                    escaped = true;
                    self.i = at;
                    self.escape()?;
                    at = self.i;
                }
                _ => return self.fail(at, "control character in string"),
            }
        }
        loop {
            // The next quote or backslash (SIMD search), then one check that no
            // control character stands before it (a loop the compiler vectorizes).
            let rest = self.b.get(at..).unwrap_or_default();
            let Some(n) = memchr::memchr2(b'"', b'\\', rest) else {
                return self.fail(start - 1, "unterminated string");
            };
            let run = rest.get(..n).unwrap_or_default();
            if run.iter().fold(0xffu8, |m, &c| m.min(c)) < 0x20 {
                let bad = run.iter().position(|&c| c < 0x20).unwrap_or(0);
                return self.fail(at + bad, "control character in string");
            }
            at += n;
            if rest.get(n) == Some(&b'"') {
                self.i = at + 1;
                return Ok((start..at, escaped));
            }
            escaped = true;
            self.i = at;
            self.escape()?;
            at = self.i;
        }
    }

    fn escape(&mut self) -> Result<(), Fail> {
        let at = self.i;
        self.i += 1;
        match self.peek() {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                self.i += 1;
                Ok(())
            }
            Some(b'u') => {
                self.i += 1;
                let Some(cp) = self.hex4() else {
                    return self.fail(at, "invalid \\u escape");
                };
                if (0xD800..0xDC00).contains(&cp) {
                    // A high surrogate must be followed by a low one.
                    if self.b.get(self.i..self.i + 2) != Some(b"\\u") {
                        return self.fail(at, "lone surrogate in \\u escape");
                    }
                    self.i += 2;
                    let Some(low) = self.hex4() else {
                        return self.fail(at, "invalid \\u escape");
                    };
                    if !(0xDC00..0xE000).contains(&low) {
                        return self.fail(at, "lone surrogate in \\u escape");
                    }
                } else if (0xDC00..0xE000).contains(&cp) {
                    return self.fail(at, "lone surrogate in \\u escape");
                }
                Ok(())
            }
            _ => self.fail(at, "invalid escape"),
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let h = self.b.get(self.i..self.i + 4)?;
        let mut v = 0u32;
        for &c in h {
            v = v * 16 + (c as char).to_digit(16)?;
        }
        self.i += 4;
        Some(v)
    }
}

/// JSON's whitespace: space, tab, line feed, carriage return.
#[inline(always)]
fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

/// Nonzero bits in each byte of `w` (little-endian) that is not an ASCII
/// digit, and only there: a digit's high nibble is 3 and its low nibble at
/// most 9. No carry crosses bytes, so the lowest set bit marks the first
/// non-digit exactly.
#[inline]
pub(crate) fn non_digits(w: u64) -> u64 {
    let high = (w & 0xF0F0_F0F0_F0F0_F0F0) ^ 0x3030_3030_3030_3030;
    let low =
        (w & 0x0F0F_0F0F_0F0F_0F0F).wrapping_add(0x0606_0606_0606_0606) & 0xF0F0_F0F0_F0F0_F0F0;
    high | low
}

/// Bit 7 of each byte of `w` that is `"`, `\\` or a control character (below
/// 0x20); the lowest set bit marks the first such byte exactly (higher ones may
/// be false positives, which callers never look at).
#[inline]
fn special_bytes(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_in = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let quote = zero_in(w ^ (ONES * b'"' as u64));
    let backslash = zero_in(w ^ (ONES * b'\\' as u64));
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    quote | backslash | control
}

/// Decode the escapes of a (valid) JSON string's raw content.
pub fn unescape(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    let hex = |s: &[u8]| -> u32 {
        s.iter()
            .fold(0, |v, &c| v * 16 + (c as char).to_digit(16).unwrap_or(0))
    };
    while i < raw.len() {
        let Some(&c) = raw.get(i) else { break };
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let e = raw.get(i + 1).copied().unwrap_or(b'\\');
        i += 2;
        let ch = match e {
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let mut cp = hex(raw.get(i..i + 4).unwrap_or_default());
                i += 4;
                if (0xD800..0xDC00).contains(&cp) {
                    let low = hex(raw.get(i + 2..i + 6).unwrap_or_default());
                    i += 6;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (low.wrapping_sub(0xDC00) & 0x3ff);
                }
                char::from_u32(cp).unwrap_or('\u{fffd}')
            }
            other => other as char,
        };
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
    }
    out
}

/// Copy `body` without the given ranges, in any order; a range that starts
/// inside an earlier one is taken as removed with it.
pub fn splice_out(body: &[u8], mut cuts: Vec<Range<usize>>) -> Vec<u8> {
    cuts.sort_by_key(|r| r.start);
    // Cuts that overlap or touch become one: their union goes (a cut nested in
    // another goes with it; one that starts inside another and ends beyond it
    // takes the rest too).
    cuts.dedup_by(|next, kept| {
        let joins = next.start <= kept.end;
        if joins {
            kept.end = kept.end.max(next.end);
        }
        joins
    });
    // Exactly the bytes kept: a small result stays a small allocation.
    let removed: usize = cuts.iter().map(|r| r.end.saturating_sub(r.start)).sum();
    let mut out = Vec::with_capacity(body.len().saturating_sub(removed));
    let mut at = 0;
    for r in cuts {
        out.extend_from_slice(body.get(at..r.start).unwrap_or_default());
        at = r.end;
    }
    out.extend_from_slice(body.get(at..).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(s: &str) -> ParseError {
        match scan(s.as_bytes()) {
            Ok(_) => panic!("accepted: {s:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn accepts_rfc8259() {
        for s in [
            "{}",
            "[]",
            " {\"a\" : [1, -0, 0.5, 1e10, -1.5E-3, true, false, null, \"x\"] } ",
            "\"just a string\"",
            "123",
            "{\"a\":{\"b\":{\"c\":[[[]]]}}}",
            r#"{"e":"\" \\ \/ \b \f \n \r \t \u00e9 \ud83d\ude00"}"#,
            "{\"ü\": \"日本語\"}",
            "12345678901234567890123",
        ] {
            assert!(scan(s.as_bytes()).is_ok(), "{s}");
            // serde_json agrees, so validation never disagrees with the scan.
            assert!(serde_json::from_str::<serde_json::Value>(s).is_ok(), "{s}");
        }
    }

    #[test]
    fn refuses_with_position() {
        let cases = [
            ("", 0, "empty document"),
            ("   ", 3, "empty document"),
            ("{\"a\":1,}", 7, "trailing comma"),
            ("[1,]", 3, "trailing comma or missing value"),
            ("{\"a\":1} x", 8, "trailing data after the document"),
            ("{'a':1}", 1, "expected a member name"),
            ("['a']", 1, "single quotes are not JSON"),
            ("{\"a\":NaN}", 5, "NaN and Infinity are not JSON"),
            ("[Infinity]", 1, "NaN and Infinity are not JSON"),
            ("[1] // c", 4, "trailing data after the document"),
            ("[/* c */ 1]", 1, "comments are not JSON"),
            ("[01]", 2, "leading zeros are not JSON"),
            ("[1.]", 3, "invalid number: digit expected after ."),
            ("[1e]", 3, "invalid number: digit expected in exponent"),
            ("[1e999]", 1, "number out of range"),
            ("[-]", 2, "invalid number"),
            ("[+1]", 1, "unexpected character"),
            ("[\"a\tb\"]", 3, "control character in string"),
            ("[\"\\x\"]", 2, "invalid escape"),
            ("[\"\\ud800\"]", 2, "lone surrogate in \\u escape"),
            ("[\"\\udc00\"]", 2, "lone surrogate in \\u escape"),
            ("[\"\\u12\"]", 2, "invalid \\u escape"),
            ("[\"abc", 1, "unterminated string"),
            ("{\"a\":1,\"a\":2}", 7, "duplicate member name"),
            ("{\"a\":1,\"\\u0061\":2}", 7, "duplicate member name"),
            ("[tru]", 1, "invalid literal"),
            ("{\"a\" 1}", 5, "expected :"),
            ("[1 2]", 3, "expected , or ]"),
            ("{\"a\":1 \"b\":2}", 7, "expected , or }"),
            ("[1", 2, "unexpected end of document"),
        ];
        for (s, offset, what) in cases {
            let e = bad(s);
            assert_eq!((e.offset, e.what), (offset, what), "{s:?}");
        }
    }

    #[test]
    fn refuses_bom_and_bad_utf8() {
        assert_eq!(scan(b"\xEF\xBB\xBF{}").unwrap_err().what, "byte-order mark");
        let e = scan(b"{\"a\":\"\xff\"}").unwrap_err();
        assert_eq!((e.offset, e.what), (6, "invalid UTF-8"));
    }

    #[test]
    fn duplicates_at_every_depth_and_in_big_objects() {
        assert_eq!(
            bad(r#"{"x":[{"k":1,"k":2}]}"#).what,
            "duplicate member name"
        );
        let mut big = String::from("{");
        for i in 0..40 {
            big.push_str(&format!("\"k{i}\":{i},"));
        }
        big.push_str("\"k7\":0}");
        assert_eq!(bad(&big).what, "duplicate member name");
        // Same name in sibling objects is fine.
        assert!(scan(br#"[{"k":1},{"k":2}]"#).is_ok());
        // Escapes on either side, or both, in short and long names: compared decoded.
        for doc in [
            r#"{"\u0061":1,"a":2}"#,
            r#"{"\u0061":1,"\u0061":2}"#,
            r#"{"\u0061":1,"\\u0061":0,"\u0061":2}"#,
            r#"{"content\u0031":1,"content1":2}"#,
            r#"{"startTime":1,"\u0073tartTime":2}"#,
            r#"{"x\n":1,"x\u000a":2}"#,
        ] {
            assert_eq!(bad(doc).what, "duplicate member name", "{doc}");
        }
        for doc in [
            r#"{"\u0061":1,"b":2}"#,
            r#"{"\\u0061":1,"\u0061":2}"#,
            r#"{"content\u0031":1,"content2":2}"#,
            r#"{"x\n":1,"x\r":2}"#,
        ] {
            assert!(scan(doc.as_bytes()).is_ok(), "{doc}");
        }
        // Names whose first word is read from the body and names too near its
        // end for that (the last member), short and long, equal or not.
        for name in ["a", "abcdefg", "abcdefgh", "abcdefghijklmnop"] {
            let doc = format!(r#"{{"{name}":1,"{name}":2}}"#);
            assert_eq!(bad(&doc).what, "duplicate member name", "{doc}");
            let doc = format!(r#"{{"{name}":1,"{name}x":2}}"#);
            assert!(scan(doc.as_bytes()).is_ok(), "{doc}");
        }
    }

    #[test]
    fn fingerprints_do_not_depend_on_what_follows_the_name() {
        let body = b"\"abcdefghij\":0,\"abc\"";
        let far = body.len() - 4..body.len() - 1; // `abc` at the very end
        assert_eq!(fingerprint(body, 1..4), fingerprint(body, far));
        assert_ne!(fingerprint(body, 1..4), fingerprint(body, 1..5));
        assert_ne!(fingerprint(body, 1..8), fingerprint(body, 1..9));
        assert_eq!(fingerprint(b"", 0..0), fingerprint(b"\"\"", 1..1));
    }

    #[test]
    fn depth_is_bounded_without_recursion() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(scan(ok.as_bytes()).is_ok());
        assert!(
            serde_json::from_str::<serde_json::Value>(&ok).is_ok(),
            "serde_json must accept what the scan accepts"
        );
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(bad(&deep).what, "nesting too deep");
        let huge = "[{\"a\":".repeat(100_000);
        assert_eq!(bad(&huge).what, "nesting too deep");
    }

    fn strip(doc: &str) -> String {
        let s = scan(doc.as_bytes()).unwrap();
        let cuts = s.transcription.iter().map(|t| t.remove.clone()).collect();
        String::from_utf8(splice_out(doc.as_bytes(), cuts)).unwrap()
    }

    fn strip_text(doc: &str) -> String {
        let s = scan(doc.as_bytes()).unwrap();
        let cuts = s.texts.iter().map(|t| t.remove.clone()).collect();
        String::from_utf8(splice_out(doc.as_bytes(), cuts)).unwrap()
    }

    #[test]
    fn strip_cuts_exactly_the_member() {
        assert_eq!(
            strip(
                r#"{"assist": {"summary": 1.0, "transcription": {"content": "x"}, "z": 12345678901234567890}}"#
            ),
            r#"{"assist": {"summary": 1.0, "z": 12345678901234567890}}"#
        );
        // First member.
        assert_eq!(
            strip(r#"{"assist":{"transcription":{"content":"x"} , "summary":"\u00e9"}}"#),
            r#"{"assist":{"summary":"\u00e9"}}"#
        );
        // Last member.
        assert_eq!(
            strip(r#"{"assist":{"a":1,"transcription":[]}}"#),
            r#"{"assist":{"a":1}}"#
        );
        // Only member.
        assert_eq!(
            strip("{\"assist\":{ \"transcription\":{}\n}}"),
            "{\"assist\":{ \n}}"
        );
        // Elsewhere than assist: untouched.
        let other = r#"{"transcription":{"content":"x"},"call":{"transcription":1}}"#;
        assert_eq!(strip(other), other);
    }

    #[test]
    fn strip_text_keeps_speakers_and_timing() {
        let doc = r#"{"assist":{"transcription":{"content":"all words","chunks":[{"speaker":"caller","startTime":1,"endTime":2,"content":"hello"},{"content":"first","speaker":"callee"}]}}}"#;
        assert_eq!(
            strip_text(doc),
            r#"{"assist":{"transcription":{"chunks":[{"speaker":"caller","startTime":1,"endTime":2},{"speaker":"callee"}]}}}"#
        );
        let v: serde_json::Value = serde_json::from_str(&strip_text(doc)).unwrap();
        assert!(v["assist"]["transcription"]["chunks"][0]["content"].is_null());
    }

    #[test]
    fn texts_are_recorded_only_when_asked_for() {
        let doc = r#"{"call":{"id":"c"},"assist":{"transcription":{"content":"all","chunks":[{"speaker":"caller","content":"a"},{"content":"b"}]}}}"#;
        let with = scan_for(doc.as_bytes(), Keep::ALL).unwrap();
        let without = scan_for(
            doc.as_bytes(),
            Keep {
                tape: true,
                texts: false,
            },
        )
        .unwrap();
        assert_eq!(with.texts.len(), 3);
        assert!(without.texts.is_empty(), "{:?}", without.texts);
        // Everything else is the same scan.
        assert_eq!(with.transcription, without.transcription);
        assert_eq!(with.call_id, without.call_id);
        assert_eq!(with.tape.entries(), without.tape.entries());
        // More than the first reservation of eight.
        let chunks = vec![r#"{"content":"x"}"#; 20].join(",");
        let doc = format!(r#"{{"assist":{{"transcription":{{"chunks":[{chunks}]}}}}}}"#);
        assert_eq!(scan(doc.as_bytes()).unwrap().texts.len(), 20);
    }

    #[test]
    fn names_like_the_recorded_ones_are_not_recorded() {
        // Same first bytes or same length as the names hookgate records: the
        // fingerprint alone must not decide.
        let doc = r#"{"calls":{"id":"x"},"call":{"ID":"y","idx":"z"},"assist":{"transcriptioN":{"content":"a"},"transcriptions":1,"transcription":{"contents":"b","Content":"c","chunks":[{"content2":"d","conten":"e"}]}}}"#;
        let s = scan(doc.as_bytes()).unwrap();
        assert_eq!(s.call_id, None);
        let t = s.transcription.expect("assist.transcription is recorded");
        assert!(doc[t.value].starts_with(r#"{"contents""#));
        assert!(s.texts.is_empty(), "{:?}", s.texts);
        assert_eq!(strip_text(doc), doc);
    }

    #[test]
    fn call_id_and_null_transcription() {
        let doc = br#"{"call":{"id":"abc-1"},"assist":{"transcription":null}}"#;
        let s = scan(doc).unwrap();
        assert_eq!(&doc[s.call_id.unwrap()], b"abc-1");
        assert!(s.transcription_is_null);
    }

    #[test]
    fn special_bytes_finds_the_first_quote_backslash_or_control() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..200_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Bias towards the interesting bytes.
            let mut w = seed.to_le_bytes();
            for b in w.iter_mut() {
                match *b % 11 {
                    0 => *b = b'"',
                    1 => *b = b'\\',
                    2 => *b %= 0x20,
                    _ => {}
                }
            }
            let want = w.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
            let hit = special_bytes(u64::from_le_bytes(w));
            let got = (hit != 0).then(|| (hit.trailing_zeros() / 8) as usize);
            assert_eq!(got, want, "{w:?}");
        }
    }

    #[test]
    fn long_numbers_are_read_to_their_last_digit() {
        for ok in [
            "1703862000000",
            "[1703862000000,1]",
            "-12345678901234567.12345678901234567e+12",
            "{\"a\":123456789012345678901234567890}",
            "0.000000000000000001",
        ] {
            assert!(scan(ok.as_bytes()).is_ok(), "{ok}");
        }
        for bad in [
            "[12345678a]",
            "[1234567890123456:]",
            "[12345678/]",
            "123456789012345678.",
            "12345678901234567e",
        ] {
            assert!(scan(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn splice_out_skips_nested_cuts_and_sizes_the_result_exactly() {
        let body = b"0123456789abcdef";
        // Unsorted, one nested in another, one adjacent to it.
        let out = splice_out(body, vec![10..12, 2..6, 3..5, 6..7]);
        assert_eq!(out, b"01789cdef");
        // One that starts inside another and ends beyond it: the union goes.
        let out = splice_out(body, vec![5..9, 2..6, 12..14, 13..16]);
        assert_eq!(out, b"019ab");
        assert_eq!(out.capacity(), out.len());
        assert_eq!(out.capacity(), out.len());
        assert_eq!(splice_out(body, vec![]), body.to_vec());
        let whole = 0..body.len();
        assert_eq!(splice_out(body, vec![whole]), b"");
    }

    #[test]
    fn unescape_decodes() {
        assert_eq!(
            unescape(br#"a\"\u00e9\ud83d\ude00\n"#),
            "a\"é😀\n".as_bytes()
        );
    }
}
