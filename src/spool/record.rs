//! The spool's on-disk record: one file per accepted webhook, written whole,
//! fsync'd and renamed into place, so a file in the queue is either complete or
//! detectably damaged.
//!
//! Layout (integers little-endian):
//!
//! ```text
//! "HGSPOOL1"  8 bytes   magic and format version
//! meta_len    u32       length of the metadata (JSON)
//! body_len    u32       length of the body
//! meta        meta_len  route, acceptance time, idempotency key, call id, headers
//! body        body_len  the cleaned body, exactly as it will be delivered
//! crc32       u32       CRC-32 (IEEE) of everything before it
//! ```

use serde::{Deserialize, Serialize};
use std::sync::Mutex;

const MAGIC: &[u8; 8] = b"HGSPOOL1";
const FIXED: usize = 8 + 4 + 4;
/// Largest metadata accepted when reading (headers are bounded far below this).
const MAX_META: usize = 1024 * 1024;

/// What is stored beside the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The route it was accepted on (delivered with that route's current settings).
    pub route: String,
    /// When it was accepted (Unix milliseconds).
    pub accepted_ms: u64,
    /// The idempotency key sent with every delivery.
    pub key: String,
    /// `call.id`, when the body has one.
    pub call_id: Option<String>,
    /// The request headers to send (client headers after hop-by-hop and secret
    /// removal, plus the forwarding headers). The route's `set`/`remove` rules
    /// are applied at delivery, so tokens they add never touch the disk.
    pub headers: Vec<(String, String)>,
}

/// Why a record could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    /// Shorter than its header says.
    #[error("truncated ({0} bytes)")]
    Truncated(usize),
    /// Not a spool record (or another format version).
    #[error("not a spool record")]
    BadMagic,
    /// The checksum does not match.
    #[error("checksum mismatch")]
    Checksum,
    /// The metadata does not parse.
    #[error("unreadable metadata")]
    Meta,
}

/// Encode a record.
pub fn encode(meta: &Meta, body: &[u8]) -> Vec<u8> {
    // Serializing plain strings and integers cannot fail.
    let m = serde_json::to_vec(meta).unwrap_or_default();
    let mut out = Vec::with_capacity(FIXED + m.len() + body.len() + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(m.len() as u32).to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&m);
    out.extend_from_slice(body);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn u32_at(b: &[u8], at: usize) -> Option<usize> {
    let s: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_le_bytes(s) as usize)
}

/// Decode and check a whole record; returns the metadata and the body's range.
pub fn decode(bytes: &[u8]) -> Result<(Meta, std::ops::Range<usize>), RecordError> {
    let short = || RecordError::Truncated(bytes.len());
    if bytes.get(..8).ok_or_else(short)? != MAGIC {
        return Err(RecordError::BadMagic);
    }
    let meta_len = u32_at(bytes, 8).ok_or_else(short)?;
    let body_len = u32_at(bytes, 12).ok_or_else(short)?;
    if meta_len > MAX_META {
        return Err(RecordError::Meta);
    }
    let end = FIXED + meta_len + body_len;
    let stored = u32_at(bytes, end).ok_or_else(short)?;
    if bytes.len() != end + 4 {
        return Err(RecordError::Truncated(bytes.len()));
    }
    let covered = bytes.get(..end).ok_or_else(short)?;
    if crc32fast::hash(covered) as usize != stored {
        return Err(RecordError::Checksum);
    }
    let meta_bytes = bytes.get(FIXED..FIXED + meta_len).ok_or_else(short)?;
    let meta: Meta = serde_json::from_slice(meta_bytes).map_err(|_| RecordError::Meta)?;
    Ok((meta, FIXED + meta_len..end))
}

/// Decode only the metadata, checking the checksum of the whole record.
pub fn decode_meta(bytes: &[u8]) -> Result<Meta, RecordError> {
    decode(bytes).map(|(m, _)| m)
}

/// A spool message id: `<unix ms, 13 digits>-<sequence, 6 digits>`. Ids sort in
/// acceptance order, also across restarts (the generator starts past the
/// largest id found on disk).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Id(String);

impl Id {
    /// Parse a file stem; `None` if it is not an id.
    pub fn parse(s: &str) -> Option<Id> {
        let (ms, seq) = s.split_once('-')?;
        let ok = ms.len() == 13
            && seq.len() == 6
            && ms.bytes().all(|b| b.is_ascii_digit())
            && seq.bytes().all(|b| b.is_ascii_digit());
        ok.then(|| Id(s.to_string()))
    }

    /// The text form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn parts(&self) -> (u64, u32) {
        let (ms, seq) = self.0.split_once('-').unwrap_or(("0", "0"));
        (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
    }
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Hands out strictly increasing ids.
#[derive(Debug, Default)]
pub struct IdGen {
    last: Mutex<(u64, u32)>,
}

impl IdGen {
    /// Make sure later ids sort after `id`.
    pub fn observe(&self, id: &Id) {
        let p = id.parts();
        if let Ok(mut last) = self.last.lock() {
            if p > *last {
                *last = p;
            }
        }
    }

    /// The next id, for a message accepted at `now_ms`.
    pub fn next(&self, now_ms: u64) -> Id {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let (ms, seq) = if now_ms > last.0 {
            (now_ms, 0)
        } else if last.1 < 999_999 {
            (last.0, last.1 + 1)
        } else {
            (last.0 + 1, 0)
        };
        *last = (ms, seq);
        Id(format!("{ms:013}-{seq:06}"))
    }
}

/// The idempotency key: `call.id`, a colon, and the first 128 bits of the
/// body's SHA-256 in hex; without a call id, `sha256:` and the hash.
pub fn idempotency_key(call_id: Option<&str>, body: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, body);
    let mut hex = String::with_capacity(32);
    for b in d.as_ref().iter().take(16) {
        hex.push_str(&format!("{b:02x}"));
    }
    match call_id {
        Some(c) if !c.is_empty() => format!("{c}:{hex}"),
        _ => format!("sha256:{hex}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            route: "crm".into(),
            accepted_ms: 1_764_000_000_000,
            key: "c1:00".into(),
            call_id: Some("c1".into()),
            headers: vec![("content-type".into(), "application/json".into())],
        }
    }

    #[test]
    fn round_trip() {
        let body = br#"{"a":1}"#;
        let r = encode(&meta(), body);
        let (m, range) = decode(&r).unwrap();
        assert_eq!(m, meta());
        assert_eq!(&r[range], body);
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_detected() {
        let r = encode(&meta(), br#"{"call":{"id":"c1"},"x":"yyyyyyyy"}"#);
        for n in 0..r.len() {
            assert!(decode(&r[..n]).is_err(), "truncated to {n}");
        }
        for i in 0..r.len() {
            for bit in [0x01u8, 0x80] {
                let mut c = r.clone();
                c[i] ^= bit;
                assert!(decode(&c).is_err(), "byte {i} bit {bit:#x}");
            }
        }
        let mut longer = r.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }

    #[test]
    fn ids_increase_and_parse() {
        let g = IdGen::default();
        let a = g.next(5);
        let b = g.next(5);
        let c = g.next(4); // the clock went back: still later
        let d = g.next(6);
        assert!(a < b && b < c && c < d, "{a} {b} {c} {d}");
        assert_eq!(Id::parse(a.as_str()), Some(a.clone()));
        for bad in ["", "x", "123-1", "0000000000005-00000a", "../etc-passwd"] {
            assert_eq!(Id::parse(bad), None);
        }
        let g2 = IdGen::default();
        g2.observe(&d);
        assert!(g2.next(1) > d);
    }

    #[test]
    fn idempotency_key_is_stable() {
        let k = idempotency_key(Some("c1"), b"abc");
        assert_eq!(k, "c1:ba7816bf8f01cfea414140de5dae2223");
        assert_eq!(
            idempotency_key(None, b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223"
        );
    }
}
