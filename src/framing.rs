//! Request framing checks on the raw request head, before anything else runs:
//! the defences against request smuggling and header abuse that pingora's
//! tolerant parser leaves to the application.
//!
//! Refused: bare LF or CR line ends, obsolete line folding, more than one
//! `Content-Length` (even identical ones) or a non-numeric one,
//! `Content-Length` together with `Transfer-Encoding`, any transfer coding other
//! than a single `chunked`, more than one `Transfer-Encoding` header, and heads
//! over the configured size or header count.

/// Why a head was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FramingError {
    /// 400: the framing is ambiguous or malformed.
    Malformed(&'static str),
    /// 431: too many header fields, or too many bytes of them.
    TooLarge(&'static str),
}

/// Limits on the request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Most bytes of request line plus headers.
    pub max_bytes: usize,
    /// Most header fields.
    pub max_headers: usize,
}

/// What the head says about the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    None,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Check a raw request head (request line, headers, final empty line).
pub fn check_head(raw: &[u8], limits: HeadLimits) -> Result<BodyFraming, FramingError> {
    if raw.len() > limits.max_bytes {
        return Err(FramingError::TooLarge("request head too large"));
    }
    // Empty lines before the request line are ignored (RFC 9112 §2.2), as
    // httparse and nginx ignore them; only CRLF ones. (pingora's raw head
    // leaves them out already; a caller of this function may not.)
    let mut raw = raw;
    while let Some(rest) = raw.strip_prefix(b"\r\n") {
        raw = rest;
    }
    // Line ends: every LF is preceded by CR, every CR followed by LF.
    for (i, &b) in raw.iter().enumerate() {
        match b {
            b'\n' if i == 0 || raw.get(i - 1) != Some(&b'\r') => {
                return Err(FramingError::Malformed("bare LF line end"));
            }
            b'\r' if raw.get(i + 1) != Some(&b'\n') => {
                return Err(FramingError::Malformed("bare CR"))
            }
            _ => {}
        }
    }
    let mut lines = raw
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let _request_line = lines.next();
    let mut count = 0usize;
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    for line in lines {
        if line.is_empty() {
            break;
        }
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            return Err(FramingError::Malformed("obsolete line folding"));
        }
        count += 1;
        if count > limits.max_headers {
            return Err(FramingError::TooLarge("too many header fields"));
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return Err(FramingError::Malformed("header line without a colon"));
        };
        let (name, value) = line.split_at(colon);
        let value = trim(value.get(1..).unwrap_or_default());
        if name.last().is_some_and(|b| b.is_ascii_whitespace()) {
            return Err(FramingError::Malformed("whitespace before a header colon"));
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            if content_length.is_some() {
                return Err(FramingError::Malformed("more than one Content-Length"));
            }
            if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
                return Err(FramingError::Malformed("invalid Content-Length"));
            }
            let n = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            content_length = Some(n.ok_or(FramingError::Malformed("invalid Content-Length"))?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if transfer_encoding {
                return Err(FramingError::Malformed("more than one Transfer-Encoding"));
            }
            if !value.eq_ignore_ascii_case(b"chunked") {
                return Err(FramingError::Malformed(
                    "unsupported transfer coding (only a single chunked)",
                ));
            }
            transfer_encoding = true;
        }
    }
    match (content_length, transfer_encoding) {
        (Some(_), true) => Err(FramingError::Malformed(
            "both Content-Length and Transfer-Encoding",
        )),
        (Some(0), false) | (None, false) => Ok(BodyFraming::None),
        (Some(n), false) => Ok(BodyFraming::Length(n)),
        (None, true) => Ok(BodyFraming::Chunked),
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| *c != b' ' && *c != b'\t')
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| *c != b' ' && *c != b'\t')
        .map_or(start, |e| e + 1);
    b.get(start..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: HeadLimits = HeadLimits {
        max_bytes: 8192,
        max_headers: 16,
    };

    fn head(lines: &[&str]) -> Vec<u8> {
        let mut s = String::from("POST /x HTTP/1.1\r\n");
        for l in lines {
            s.push_str(l);
            s.push_str("\r\n");
        }
        s.push_str("\r\n");
        s.into_bytes()
    }

    #[test]
    fn accepts_plain_framings() {
        assert_eq!(
            check_head(&head(&["Host: a", "Content-Length: 12"]), L),
            Ok(BodyFraming::Length(12))
        );
        assert_eq!(
            check_head(&head(&["Host: a", "Transfer-Encoding:  Chunked "]), L),
            Ok(BodyFraming::Chunked)
        );
        assert_eq!(check_head(&head(&["Host: a"]), L), Ok(BodyFraming::None));
        // Empty lines before the request line are skipped; headers after it
        // are still checked.
        let mut h = b"\r\n\r\n".to_vec();
        h.extend_from_slice(&head(&["Host: a", "Content-Length: 12"]));
        assert_eq!(check_head(&h, L), Ok(BodyFraming::Length(12)));
        let mut h = b"\r\n".to_vec();
        h.extend_from_slice(&head(&["Content-Length: 1", "Content-Length: 1"]));
        assert!(check_head(&h, L).is_err());
        let mut h = b"\n".to_vec();
        h.extend_from_slice(&head(&["Host: a"]));
        assert!(
            check_head(&h, L).is_err(),
            "a bare LF is not an empty line here"
        );
        assert_eq!(
            check_head(&head(&["Content-Length: 0"]), L),
            Ok(BodyFraming::None)
        );
    }

    #[test]
    fn refuses_smuggling_shapes() {
        for (lines, why) in [
            (
                &["Content-Length: 5", "Content-Length: 5"][..],
                "more than one Content-Length",
            ),
            (
                &["Content-Length: 5", "Content-Length: 6"][..],
                "more than one Content-Length",
            ),
            (&["Content-Length: 5, 5"][..], "invalid Content-Length"),
            (&["Content-Length: +5"][..], "invalid Content-Length"),
            (&["Content-Length: -1"][..], "invalid Content-Length"),
            (&["Content-Length: 0x10"][..], "invalid Content-Length"),
            (
                &["Content-Length: 99999999999999999999"][..],
                "invalid Content-Length",
            ),
            (
                &["Content-Length: 5", "Transfer-Encoding: chunked"][..],
                "both Content-Length and Transfer-Encoding",
            ),
            (
                &["Transfer-Encoding: gzip, chunked"][..],
                "unsupported transfer coding (only a single chunked)",
            ),
            (
                &["Transfer-Encoding: chunked, chunked"][..],
                "unsupported transfer coding (only a single chunked)",
            ),
            (
                &["Transfer-Encoding: identity"][..],
                "unsupported transfer coding (only a single chunked)",
            ),
            (
                &["Transfer-Encoding: xchunked"][..],
                "unsupported transfer coding (only a single chunked)",
            ),
            (
                &["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"][..],
                "more than one Transfer-Encoding",
            ),
            (&["Host: a", " folded"][..], "obsolete line folding"),
            (
                &["Content-Length : 5"][..],
                "whitespace before a header colon",
            ),
            (&["NoColon"][..], "header line without a colon"),
        ] {
            assert_eq!(
                check_head(&head(lines), L),
                Err(FramingError::Malformed(why)),
                "{lines:?}"
            );
        }
        assert_eq!(
            check_head(b"POST /x HTTP/1.1\nHost: a\r\n\r\n", L),
            Err(FramingError::Malformed("bare LF line end"))
        );
        assert_eq!(
            check_head(b"POST /x HTTP/1.1\r\nHost: a\rb\r\n\r\n", L),
            Err(FramingError::Malformed("bare CR"))
        );
    }

    #[test]
    fn limits_are_431() {
        let many: Vec<String> = (0..17).map(|i| format!("X-{i}: v")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(
            check_head(&head(&many), L),
            Err(FramingError::TooLarge("too many header fields"))
        );
        let big = format!("X-Big: {}", "a".repeat(9000));
        assert_eq!(
            check_head(&head(&[&big]), L),
            Err(FramingError::TooLarge("request head too large"))
        );
    }
}
