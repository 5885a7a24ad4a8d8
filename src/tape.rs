//! A flat, borrowed JSON document ("tape") that the strict scanner fills in one
//! pass, and its implementation of the `jsonschema` crate's JSON representation
//! traits, so schemas validate it directly.
//!
//! Why: building a `serde_json::Value` costs an allocation per string, object
//! and array, and dominated the inspection stage's time (about as long as the
//! strict scan and ten times the validation itself). The tape is one vector of
//! fixed-size entries pointing into the request body; strings are borrowed
//! unless they hold escapes.

use crate::json::unescape;
use jsonschema::json::{Array, Json, JsonNumber, Node, NodeIdentity, Object};
use jsonschema::JsonType;
use serde_json::{Map, Value};
use std::borrow::Cow;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `null`
    Null,
    /// `true`
    True,
    /// `false`
    False,
    /// A number; `val` spans its text.
    Number,
    /// A string; `val` spans its raw content (without quotes).
    String,
    /// An array; its elements follow it.
    Array,
    /// An object; its members' values follow it, each with its `key`.
    Object,
}

/// One value of the document. Containers are followed by their children; `end`
/// is the index just past the last descendant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// What it is.
    pub kind: Kind,
    /// The member name held escapes: `key` then spans its decoded form in the
    /// tape's own name buffer instead of the body.
    pub key_escaped: bool,
    /// The string value holds escapes.
    pub str_escaped: bool,
    /// The member name (without quotes) when the value is an object member:
    /// in the body, or decoded in the tape's name buffer (`key_escaped`).
    pub key: (u32, u32),
    /// Raw value span (string content without quotes; number text).
    pub val: (u32, u32),
    /// Index just past this entry's subtree.
    pub end: u32,
    /// Number of children (containers).
    pub len: u32,
}

/// A scanned document: the body and its entries (entry 0 is the root).
#[derive(Debug, Clone, Default)]
pub struct Tape<'s> {
    /// The whole body, proven UTF-8 once by the scanner: slicing it is O(1).
    src: &'s str,
    entries: Vec<Entry>,
    /// Member names that held escapes, decoded, end to end: every name is then
    /// a plain `&str` for the validator, without a copy per lookup.
    names: String,
    /// Whether entries are kept (only needed for schema validation).
    recording: bool,
    /// Entries seen, kept or not.
    seen: u32,
}

impl<'s> Tape<'s> {
    /// An empty tape over `src` with room for `cap` entries.
    pub fn with_capacity(src: &'s str, cap: usize) -> Self {
        Tape {
            src,
            entries: Vec::with_capacity(cap),
            names: String::new(),
            recording: true,
            seen: 0,
        }
    }

    /// A tape that only counts (a scan that validates no schema).
    pub fn counting(src: &'s str) -> Self {
        Tape {
            src,
            entries: Vec::new(),
            names: String::new(),
            recording: false,
            seen: 0,
        }
    }

    /// The whole body, as the scanner proved it UTF-8.
    pub fn source(&self) -> &'s str {
        self.src
    }

    /// The index the next entry gets.
    pub(crate) fn next_index(&self) -> u32 {
        self.seen
    }

    /// The entries.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Keep the decoded form of a member name that held escapes; returns its
    /// span in the name buffer, for `Entry::key`.
    pub(crate) fn add_name(&mut self, decoded: &[u8]) -> (u32, u32) {
        if !self.recording {
            return (0, 0);
        }
        let start = self.names.len() as u32;
        self.names.push_str(&String::from_utf8_lossy(decoded));
        (start, self.names.len() as u32)
    }

    /// The member name of entry `e` (empty for array elements and the root).
    #[inline]
    pub fn key_name(&self, e: &Entry) -> &str {
        self.key_source(e)
            .get(e.key.0 as usize..e.key.1 as usize)
            .unwrap_or_default()
    }

    /// The text entry `e`'s member name span points into: the body, or the
    /// buffer of decoded names when the name held escapes.
    #[inline]
    fn key_source(&self, e: &Entry) -> &str {
        if e.key_escaped {
            &self.names
        } else {
            self.src
        }
    }

    /// The member name of entry `e` as bytes (empty for array elements and
    /// the root): `key_name` without the `str` slicing's boundary checks.
    #[inline]
    pub(crate) fn key_bytes(&self, e: &Entry) -> &[u8] {
        self.key_source(e)
            .as_bytes()
            .get(e.key.0 as usize..e.key.1 as usize)
            .unwrap_or_default()
    }

    /// Append an entry; returns its index.
    pub(crate) fn push(&mut self, e: Entry) -> u32 {
        if self.recording {
            self.entries.push(e);
        }
        self.seen += 1;
        self.seen - 1
    }

    /// Close the container at `idx`: its subtree ends here, with `len` children
    /// and its text ending at `val_end`.
    pub(crate) fn close(&mut self, idx: u32, len: u32, val_end: u32) {
        let end = self.seen;
        if let Some(e) = self.entries.get_mut(idx as usize) {
            e.end = end;
            e.len = len;
            e.val.1 = val_end;
        }
    }

    /// The root node.
    pub fn root(&self) -> Option<TapeNode<'_>> {
        (!self.entries.is_empty()).then_some(TapeNode::At { tape: self, idx: 0 })
    }

    #[inline]
    fn entry(&self, idx: u32) -> Option<&Entry> {
        self.entries.get(idx as usize)
    }

    /// A member name's length in bytes and its first eight bytes (fewer
    /// when it is shorter, the rest zero) as a little-endian word: with the
    /// length, it tells names of up to eight bytes apart in one compare.
    #[inline]
    pub(crate) fn key_word(&self, e: &Entry) -> (usize, u64) {
        // A name in the body is followed by at least its closing quote and a
        // colon, so eight bytes can almost always be read at once.
        let len = e.key.1.saturating_sub(e.key.0) as usize;
        (
            len,
            first_word(self.key_source(e).as_bytes(), e.key.0 as usize, len),
        )
    }

    /// A string entry's decoded text: what the schema validator sees.
    #[inline]
    pub(crate) fn string_text(&self, e: &Entry) -> Cow<'s, str> {
        self.text(e.val, e.str_escaped)
    }

    /// The first byte of the body in `span` (a number's sign).
    #[inline]
    pub(crate) fn first_byte(&self, span: (u32, u32)) -> Option<u8> {
        self.src
            .as_bytes()
            .get(span.0 as usize)
            .copied()
            .filter(|_| span.1 > span.0)
    }

    /// The body's bytes in `span` (at most eight) as a little-endian word,
    /// zero-padded: read in one load where the body goes on past them.
    #[inline]
    pub(crate) fn short_word(&self, span: (u32, u32)) -> u64 {
        let len = span.1.saturating_sub(span.0) as usize;
        first_word(self.src.as_bytes(), span.0 as usize, len)
    }

    /// The body's bytes in `span`: a number's text, or a string's raw
    /// content (escapes as written).
    #[inline]
    pub(crate) fn bytes(&self, span: (u32, u32)) -> &'s [u8] {
        self.src
            .as_bytes()
            .get(span.0 as usize..span.1 as usize)
            .unwrap_or_default()
    }

    #[inline]
    fn text(&self, span: (u32, u32), escaped: bool) -> Cow<'s, str> {
        if escaped {
            Cow::Owned(String::from_utf8_lossy(&unescape(self.bytes(span))).into_owned())
        } else {
            // Spans start and end at ASCII quotes or delimiters: always char
            // boundaries, so this never re-validates.
            Cow::Borrowed(
                self.src
                    .get(span.0 as usize..span.1 as usize)
                    .unwrap_or_default(),
            )
        }
    }
}

/// The representation marker for `jsonschema::options_for::<TapeJson>()`.
#[derive(Debug, Clone, Copy)]
pub struct TapeJson;

/// A node: an entry of a tape, or a free-standing string (member names that
/// `propertyNames` validates).
#[derive(Debug, Clone, Copy)]
pub enum TapeNode<'a> {
    /// Entry `idx` of `tape`.
    At {
        /// The document.
        tape: &'a Tape<'a>,
        /// The entry.
        idx: u32,
    },
    /// A string that is not part of a tape.
    Str(&'a str),
}

/// An object node.
#[derive(Debug, Clone, Copy)]
pub struct TapeObject<'a> {
    tape: &'a Tape<'a>,
    idx: u32,
}

/// An array node.
#[derive(Debug, Clone, Copy)]
pub struct TapeArray<'a> {
    tape: &'a Tape<'a>,
    idx: u32,
}

/// The first eight bytes of the `len` bytes of `text` from `from` (fewer when
/// shorter, the rest zero) as a little-endian word.
#[inline]
fn first_word(text: &[u8], from: usize, len: usize) -> u64 {
    let word = crate::json::word_at(text, from);
    if len >= 8 {
        word
    } else {
        word & ((1u64 << (len * 8)) - 1)
    }
}

/// A number, kept as its text.
#[derive(Debug, Clone, Copy)]
pub struct TapeNumber<'a>(&'a str);

/// Iterates over the children of a container.
pub struct Children<'a> {
    tape: &'a Tape<'a>,
    next: u32,
    end: u32,
}

impl<'a> Iterator for Children<'a> {
    type Item = (&'a Entry, u32);
    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.end {
            return None;
        }
        let idx = self.next;
        let e = self.tape.entry(idx)?;
        self.next = e.end.max(idx + 1);
        Some((e, idx))
    }
}

#[inline]
pub(crate) fn children<'a>(tape: &'a Tape<'a>, idx: u32) -> Children<'a> {
    let end = tape.entry(idx).map_or(idx, |e| e.end);
    Children {
        tape,
        next: idx + 1,
        end,
    }
}

impl Json for TapeJson {
    type Node<'a> = TapeNode<'a>;
    type PreparedKey = Box<str>;
    type StringBuffer = ();
    // Objects are small and their names are compared in place: a pass over the
    // members is as cheap as a lookup.
    const KEYS_PER_LOOKUP: usize = 4;
    const ACYCLIC: bool = true;

    fn prepare_key(key: &str) -> Box<str> {
        key.into()
    }

    fn with_string_node<T>(_: &mut (), string: &str, f: impl FnOnce(TapeNode<'_>) -> T) -> T {
        f(TapeNode::Str(string))
    }
}

impl<'a> TapeNode<'a> {
    fn entry(&self) -> Option<(&'a Tape<'a>, &'a Entry, u32)> {
        match *self {
            TapeNode::At { tape, idx } => tape.entry(idx).map(|e| (tape, e, idx)),
            TapeNode::Str(_) => None,
        }
    }
}

fn number_value(text: &str) -> Value {
    serde_json::from_str::<serde_json::Number>(text)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

fn to_value(tape: &Tape<'_>, idx: u32) -> Value {
    let Some(e) = tape.entry(idx) else {
        return Value::Null;
    };
    match e.kind {
        Kind::Null => Value::Null,
        Kind::True => Value::Bool(true),
        Kind::False => Value::Bool(false),
        Kind::Number => number_value(&tape.text(e.val, false)),
        Kind::String => Value::String(tape.text(e.val, e.str_escaped).into_owned()),
        Kind::Array => Value::Array(
            children(tape, idx)
                .map(|(_, i)| to_value(tape, i))
                .collect(),
        ),
        Kind::Object => {
            let mut m = Map::new();
            for (c, i) in children(tape, idx) {
                m.insert(tape.key_name(c).to_string(), to_value(tape, i));
            }
            Value::Object(m)
        }
    }
}

impl<'a> Node<'a, TapeJson> for TapeNode<'a> {
    type Object = TapeObject<'a>;
    type Array = TapeArray<'a>;
    type Number = TapeNumber<'a>;

    #[inline]
    fn as_object(&self) -> Option<TapeObject<'a>> {
        let (tape, e, idx) = self.entry()?;
        (e.kind == Kind::Object).then_some(TapeObject { tape, idx })
    }

    #[inline]
    fn as_array(&self) -> Option<TapeArray<'a>> {
        let (tape, e, idx) = self.entry()?;
        (e.kind == Kind::Array).then_some(TapeArray { tape, idx })
    }

    #[inline]
    fn as_string(&self) -> Option<Cow<'a, str>> {
        match *self {
            TapeNode::Str(s) => Some(Cow::Borrowed(s)),
            TapeNode::At { tape, idx } => {
                let e = tape.entry(idx)?;
                (e.kind == Kind::String).then(|| tape.text(e.val, e.str_escaped))
            }
        }
    }

    #[inline]
    fn as_number(&self) -> Option<TapeNumber<'a>> {
        let (tape, e, _) = self.entry()?;
        if e.kind != Kind::Number {
            return None;
        }
        tape.src
            .get(e.val.0 as usize..e.val.1 as usize)
            .map(TapeNumber)
    }

    #[inline]
    fn as_boolean(&self) -> Option<bool> {
        match self.entry()?.1.kind {
            Kind::True => Some(true),
            Kind::False => Some(false),
            _ => None,
        }
    }

    #[inline]
    fn is_null(&self) -> bool {
        self.entry().is_some_and(|(_, e, _)| e.kind == Kind::Null)
    }

    #[inline]
    fn json_type(&self) -> JsonType {
        match self.entry() {
            None => JsonType::String,
            Some((_, e, _)) => match e.kind {
                Kind::Null => JsonType::Null,
                Kind::True | Kind::False => JsonType::Boolean,
                // Like serde_json's representation: integers are told apart by
                // JsonNumber::is_integer where the schema asks for one.
                Kind::Number => JsonType::Number,
                Kind::String => JsonType::String,
                Kind::Array => JsonType::Array,
                Kind::Object => JsonType::Object,
            },
        }
    }

    fn equals_value(&self, expected: &Value) -> bool {
        // The common case (`enum` and `const` of strings) without building a Value.
        if let (Some(s), Value::String(want)) = (self.as_string(), expected) {
            return s == want.as_str();
        }
        if let Value::String(_) = expected {
            return false;
        }
        jsonschema::json::cmp::equal(&self.to_value(), expected)
    }

    fn to_value(&self) -> Cow<'a, Value> {
        match *self {
            TapeNode::Str(s) => Cow::Owned(Value::String(s.to_string())),
            TapeNode::At { tape, idx } => Cow::Owned(to_value(tape, idx)),
        }
    }

    fn identity(&self) -> Option<NodeIdentity> {
        match *self {
            TapeNode::At { tape, idx } => {
                Some(NodeIdentity::tagged(tape as *const Tape<'_> as usize, idx))
            }
            TapeNode::Str(_) => None,
        }
    }
}

impl<'a> Object<'a, TapeJson> for TapeObject<'a> {
    type Node = TapeNode<'a>;
    type MemberName = &'a str;
    type MembersIter = Members<'a>;

    #[inline]
    fn len(&self) -> usize {
        self.tape.entry(self.idx).map_or(0, |e| e.len as usize)
    }

    #[inline]
    fn get(&self, key: &Box<str>) -> Option<TapeNode<'a>> {
        let want = key.as_bytes();
        let tape = self.tape;
        children(tape, self.idx)
            .find(|(c, _)| tape.key_name(c).as_bytes() == want)
            .map(|(_, idx)| TapeNode::At { tape, idx })
    }

    #[inline]
    fn members(&self) -> Self::MembersIter {
        Members(children(self.tape, self.idx))
    }
}

impl<'a> Array<'a, TapeJson> for TapeArray<'a> {
    type Node = TapeNode<'a>;
    type ElementsIter = Elements<'a>;

    #[inline]
    fn len(&self) -> usize {
        self.tape.entry(self.idx).map_or(0, |e| e.len as usize)
    }

    #[inline]
    fn elements(&self) -> Self::ElementsIter {
        Elements(children(self.tape, self.idx))
    }
}

/// An object's members, without allocating an iterator per object.
pub struct Members<'a>(Children<'a>);

impl<'a> Iterator for Members<'a> {
    type Item = (&'a str, TapeNode<'a>);
    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let tape = self.0.tape;
        self.0
            .next()
            .map(|(c, idx)| (tape.key_name(c), TapeNode::At { tape, idx }))
    }
}

/// An array's elements, without allocating an iterator per array.
pub struct Elements<'a>(Children<'a>);

impl<'a> Iterator for Elements<'a> {
    type Item = TapeNode<'a>;
    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let tape = self.0.tape;
        self.0.next().map(|(_, idx)| TapeNode::At { tape, idx })
    }
}

impl JsonNumber for TapeNumber<'_> {
    fn as_u64(&self) -> Option<u64> {
        // Every schema bound on a number asks for this first; epoch-millisecond
        // timestamps are most of a transcript's numbers.
        plain_u64(self.0).or_else(|| self.0.parse().ok())
    }
    #[inline]
    fn as_i64(&self) -> Option<i64> {
        self.0.parse().ok()
    }
    #[inline]
    fn as_f64(&self) -> Option<f64> {
        self.0.parse().ok()
    }
    #[inline]
    fn as_str(&self) -> Cow<'_, str> {
        Cow::Borrowed(self.0)
    }
    #[inline]
    fn is_integer(&self) -> bool {
        // No fraction or exponent: an integer however long; otherwise one whose
        // value has no fractional part (1.0 and 1e3 are integers in JSON Schema).
        if !self.0.bytes().any(|c| matches!(c, b'.' | b'e' | b'E')) {
            return true;
        }
        self.0
            .parse::<f64>()
            .is_ok_and(|v| v.is_finite() && v.fract() == 0.0)
    }
    fn to_number(&self) -> Cow<'_, serde_json::Number> {
        Cow::Owned(serde_json::from_str(self.0).unwrap_or_else(|_| serde_json::Number::from(0)))
    }
}

/// `text` as a `u64` when it is at most 19 plain digits (always in range), the
/// common case, without `str::parse`'s per-digit overflow checks; `None` for
/// anything else (the caller falls back to `parse`). Eight digits at a time:
/// 9 to 16 digits (a 13-digit epoch-millisecond timestamp) are two words.
#[inline]
fn plain_u64(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.is_empty() || b.len() > 19 {
        return None;
    }
    if let (Some(first), Some(last)) = (b.first_chunk::<8>(), b.last_chunk::<8>()) {
        if b.len() > 8 && b.len() <= 16 {
            // The first len - 8 digits as the last bytes of a word, '0's before
            // them (the bytes shifted out are `last`'s); `last` holds the rest.
            let pad = 8 * (16 - b.len()) as u32;
            let first = u64::from_le_bytes(*first);
            let high = if pad == 0 {
                first
            } else {
                (first << pad) | (0x3030_3030_3030_3030 >> (64 - pad))
            };
            let low = u64::from_le_bytes(*last);
            if crate::json::non_digits(high) | crate::json::non_digits(low) != 0 {
                return None;
            }
            return Some(eight_digits(high) * 100_000_000 + eight_digits(low));
        }
    }
    let mut v = 0u64;
    let mut rest = b;
    while let Some((head, tail)) = rest.split_first_chunk::<8>() {
        let w = u64::from_le_bytes(*head);
        if crate::json::non_digits(w) != 0 {
            return None;
        }
        v = v * 100_000_000 + eight_digits(w);
        rest = tail;
    }
    for &c in rest {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v * 10 + u64::from(d);
    }
    Some(v)
}

/// The value of eight ASCII digits read as a little-endian word (the first
/// digit is the lowest byte): pairs, then quads, then all eight.
#[inline]
fn eight_digits(w: u64) -> u64 {
    let d = w - 0x3030_3030_3030_3030;
    let d = (d * 10 + (d >> 8)) & 0x00FF_00FF_00FF_00FF;
    let d = (d * 100 + (d >> 16)) & 0x0000_FFFF_0000_FFFF;
    (d * 10_000 + (d >> 32)) & 0xFFFF_FFFF
}

#[cfg(test)]
mod tests {
    use super::plain_u64;

    #[test]
    fn plain_u64_agrees_with_parse() {
        for t in [
            "0",
            "7",
            "12345678",
            "123456789",
            "1703862000000",
            "9999999999999999999",
            "18446744073709551615",
            "00000000",
            "1234567a",
            "12345678a",
            "1.5",
            "-1",
            "1e3",
            "",
            "/0123456",
            ":0123456",
            "1000000000",
            "1234567890123456",
            "9999999999999999",
            "12345678901234567",
            "170386200000x",
            "x703862000000",
            "17038620.0000",
            "1703862 00000",
            "000000000000001",
        ] {
            let want = if t.len() <= 19 {
                t.parse::<u64>().ok()
            } else {
                None
            };
            assert_eq!(plain_u64(t), want, "{t}");
        }
    }
}
