//! A small HTTP/1.1 client for the upstream exchange, over pingora's transport
//! (TCP/TLS connect) with hookgate's own keep-alive pool.
//!
//! Why not pingora's HTTP session: it writes the request head and body in two
//! `sendto` calls and spawns a watcher task per pooled connection on every
//! request. On loopback each send runs the receiver's TCP stack in the sender's
//! CPU time, so one write per request (head and body together) and a pool that
//! checks a connection only when it is taken back out were measured to be the
//! largest per-request savings (see the README's benchmark).
//!
//! The response side accepts what HTTP/1.1 servers send: `Content-Length`,
//! `chunked`, or read-until-close bodies, 1xx interim answers, bounded sizes.

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::protocols::Stream;
use smallvec::SmallVec;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest response head accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most response header fields.
const MAX_HEADERS: usize = 100;

/// Why an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeError {
    /// Writing the request failed (reset, closed).
    Write(String),
    /// The connection closed or reset before a complete response.
    Closed,
    /// The response is not valid HTTP/1.x or breaks a limit.
    Garbage(&'static str),
}

/// A parsed response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers as sent.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// Whether the connection can carry another request.
    pub reusable: bool,
}

/// Idle connections to one upstream target.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<(Stream, Instant)>>,
}

/// Most idle connections kept per target.
const POOL_MAX: usize = 64;

impl Pool {
    /// A connection from the pool that is still open and younger than `idle`.
    pub fn take(&self, idle: Duration) -> Option<Stream> {
        loop {
            let (mut s, since) = self.idle.lock().ok()?.pop()?;
            if since.elapsed() > idle {
                continue;
            }
            // An idle connection must have nothing to read: data means the
            // upstream misbehaved, EOF that it closed. Polled exactly once, with
            // no timer (a zero-length tokio timeout still waits for the next
            // 1 ms tick, measured): tokio answers from cached readiness.
            let mut probe = [0u8; 1];
            match s.read(&mut probe).now_or_never() {
                None => return Some(s),
                Some(_) => continue,
            }
        }
    }

    /// Give a connection back for reuse.
    pub fn put(&self, s: Stream) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < POOL_MAX {
                idle.push((s, Instant::now()));
            }
        }
    }
}

/// Serialize a request head: `Host` first, then `headers`, then the body's
/// `Content-Length`.
pub fn request_head(
    method: &str,
    path: &str,
    host: &HeaderValue,
    headers: &[(HeaderName, HeaderValue)],
    body_len: usize,
) -> Vec<u8> {
    let mut h = Vec::with_capacity(256 + headers.len() * 32);
    h.extend_from_slice(method.as_bytes());
    h.push(b' ');
    h.extend_from_slice(path.as_bytes());
    h.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    h.extend_from_slice(host.as_bytes());
    h.extend_from_slice(b"\r\n");
    for (k, v) in headers {
        h.extend_from_slice(k.as_str().as_bytes());
        h.extend_from_slice(b": ");
        h.extend_from_slice(v.as_bytes());
        h.extend_from_slice(b"\r\n");
    }
    h.extend_from_slice(b"Content-Length: ");
    h.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
    h.extend_from_slice(b"\r\n\r\n");
    h
}

/// Write head and body with as few system calls as the socket allows.
pub async fn send(s: &mut Stream, head: &[u8], body: &[u8]) -> Result<(), ExchangeError> {
    let (mut a, mut b) = (head, body);
    while !a.is_empty() || !b.is_empty() {
        let n = s
            .write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
            .await
            .map_err(|e| ExchangeError::Write(e.kind().to_string()))?;
        if n == 0 {
            return Err(ExchangeError::Write("write returned 0".into()));
        }
        let from_a = n.min(a.len());
        a = a.get(from_a..).unwrap_or_default();
        b = b.get(n - from_a..).unwrap_or_default();
    }
    s.flush()
        .await
        .map_err(|e| ExchangeError::Write(e.kind().to_string()))
}

/// Room for a typical upstream answer (a short head and a small JSON body) in
/// one read. Kept within glibc's per-thread cache (requests up to 1 032 bytes),
/// so the buffer is taken and given back without a trip through the heap's
/// bins; it doubles when an answer is larger.
const FIRST_READ: usize = 1024;

async fn fill(s: &mut Stream, buf: &mut BytesMut) -> Result<usize, ExchangeError> {
    if buf.capacity() - buf.len() < FIRST_READ / 2 {
        buf.reserve(buf.capacity().max(FIRST_READ));
    }
    s.read_buf(buf).await.map_err(|_| ExchangeError::Closed)
}

/// Read one response (skipping 1xx interim answers); bodies over `max_body`
/// are refused.
pub async fn receive(s: &mut Stream, max_body: usize) -> Result<Response, ExchangeError> {
    let mut buf = BytesMut::with_capacity(FIRST_READ);
    loop {
        // The head (after a 1xx answer, the next one may already be here).
        let (status, headers, version_11) = loop {
            if !buf.is_empty() {
                if let Some(head) = parse_head(&mut buf)? {
                    break head;
                }
            }
            if buf.len() > MAX_HEAD {
                return Err(ExchangeError::Garbage("response head too large"));
            }
            if fill(s, &mut buf).await? == 0 {
                return Err(ExchangeError::Closed);
            }
        };
        if (100..200).contains(&status) {
            if status == 101 {
                return Err(ExchangeError::Garbage("unexpected protocol switch"));
            }
            continue; // interim answer: the final one follows
        }
        let closes = crate::headers::connection_close(&headers) || !version_11;
        let no_body = status == 204 || status == 304;
        let chunked = transfer_chunked(&headers)?;
        let length = content_length(&headers)?;
        if chunked && length.is_some() {
            // RFC 9112 §6.3: a sign of smuggling; nginx refuses it too.
            return Err(ExchangeError::Garbage(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        let (body, framed) = if no_body {
            (Bytes::new(), true)
        } else if chunked {
            (read_chunked(s, &mut buf, max_body).await?, true)
        } else if let Some(n) = length {
            if n > max_body {
                return Err(ExchangeError::Garbage("response body too large"));
            }
            while buf.len() < n {
                if fill(s, &mut buf).await? == 0 {
                    return Err(ExchangeError::Closed);
                }
            }
            (buf.split_to(n).freeze(), true)
        } else {
            // Read until the upstream closes.
            loop {
                if buf.len() > max_body {
                    return Err(ExchangeError::Garbage("response body too large"));
                }
                if fill(s, &mut buf).await? == 0 {
                    break;
                }
            }
            (buf.split().freeze(), false)
        };
        // Anything left over is a protocol error by the upstream: do not reuse.
        let reusable = framed && !closes && buf.is_empty();
        return Ok(Response {
            status,
            headers,
            body,
            reusable,
        });
    }
}

/// The response head at the start of `buf`, taken out of it, or `None` while
/// it is incomplete. A plain function, not part of `receive`'s future: the
/// header slots (3.2 KB) would otherwise be stored in every exchange's future
/// and copied with it at each `.await` up the call chain.
fn parse_head(buf: &mut BytesMut) -> Result<Option<(u16, HeaderMap, bool)>, ExchangeError> {
    // Header slots that httparse fills in: left uninitialised, as pingora
    // does, instead of writing 3.2 KB of empty headers on every call.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let n = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ExchangeError::Garbage("not an HTTP/1.x response")),
    };
    // Header values become views of the head (no copy each): note where they
    // are, then take the head out of the buffer.
    // Inline room for a typical head's spans, left uninitialised: a zeroed
    // array of `MAX_HEADERS` (3.2 KB) cost a `memset` of 3.2 k instructions
    // per exchange (callgrind).
    let base = buf.as_ptr() as usize;
    let mut spans: SmallVec<[(usize, usize, usize, usize); 16]> = SmallVec::new();
    let count = resp.headers.len();
    let at = |p: *const u8, len: usize| match (p as usize).checked_sub(base) {
        Some(o) if o + len <= n => (o, o + len),
        // An empty value may point anywhere: an empty view.
        _ => (0, 0),
    };
    spans.extend(resp.headers.iter().map(|h| {
        let (ns, ne) = at(h.name.as_ptr(), h.name.len());
        let (vs, ve) = at(h.value.as_ptr(), h.value.len());
        (ns, ne, vs, ve)
    }));
    let status = resp
        .code
        .filter(|c| (100..=599).contains(c))
        .ok_or(ExchangeError::Garbage("no status, or one outside 100-599"))?;
    let version_11 = resp.version == Some(1);
    let head = buf.split_to(n).freeze();
    let mut map = HeaderMap::with_capacity(count);
    for &(ns, ne, vs, ve) in &spans {
        let name = HeaderName::from_bytes(head.get(ns..ne).unwrap_or_default())
            .map_err(|_| ExchangeError::Garbage("bad header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
            .map_err(|_| ExchangeError::Garbage("bad header value"))?;
        map.append(name, value);
    }
    Ok(Some((status, map, version_11)))
}

/// Whether the answer's body is chunked. `Transfer-Encoding` must be absent
/// or exactly `chunked`: any other coding would reach the client undecoded
/// (hookgate sends the body with a `Content-Length`), so it is refused, as
/// nginx refuses it, and so is a look-alike such as `xchunked`.
fn transfer_chunked(h: &HeaderMap) -> Result<bool, ExchangeError> {
    let values = h.get_all(http::header::TRANSFER_ENCODING);
    let mut fields = values.iter().peekable();
    if fields.peek().is_none() {
        return Ok(false);
    }
    if fields.any(|v| v.to_str().is_err()) {
        return Err(ExchangeError::Garbage("unsupported Transfer-Encoding"));
    }
    let mut codings = crate::headers::tokens(&values);
    match (codings.next(), codings.next()) {
        (Some(c), None) if c.eq_ignore_ascii_case("chunked") => Ok(true),
        _ => Err(ExchangeError::Garbage("unsupported Transfer-Encoding")),
    }
}

fn content_length(h: &HeaderMap) -> Result<Option<usize>, ExchangeError> {
    let mut found: Option<usize> = None;
    for v in h.get_all(http::header::CONTENT_LENGTH) {
        let n = v
            .to_str()
            .ok()
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse::<usize>().ok())
            .ok_or(ExchangeError::Garbage("invalid Content-Length"))?;
        if found.is_some_and(|f| f != n) {
            return Err(ExchangeError::Garbage("conflicting Content-Length"));
        }
        found = Some(n);
    }
    Ok(found)
}

/// The size on a chunk-size line (`line` ends with its `\n`), read strictly
/// (RFC 9112 §7.1): hex digits only, no sign and no whitespace in front,
/// optional extensions after `;` (their bytes are not interpreted), and a
/// CRLF ending. A size that does not fit 64 bits is refused, not wrapped.
fn chunk_size(line: &[u8]) -> Result<usize, ExchangeError> {
    let bad = ExchangeError::Garbage("bad chunk size");
    let Some(body) = line.strip_suffix(b"\r\n") else {
        return Err(ExchangeError::Garbage("chunk size line without CRLF"));
    };
    if body.contains(&b'\r') {
        return Err(bad);
    }
    let digits = body.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let (hex, rest) = body.split_at(digits);
    // After the digits: nothing, or extensions (with optional whitespace before `;`).
    let extensions = rest.is_empty() || rest.trim_ascii_start().starts_with(b";");
    if hex.is_empty() || !extensions {
        return Err(bad);
    }
    hex.iter().try_fold(0usize, |n, &b| {
        let d = (b as char).to_digit(16).unwrap_or(0) as usize;
        n.checked_mul(16)
            .and_then(|n| n.checked_add(d))
            .ok_or(bad.clone())
    })
}

/// Decode a chunked body from `buf` (refilled from `s` as needed).
async fn read_chunked(
    s: &mut Stream,
    buf: &mut BytesMut,
    max_body: usize,
) -> Result<Bytes, ExchangeError> {
    let mut out = BytesMut::new();
    loop {
        // Chunk-size line.
        let line_end = loop {
            if let Some(p) = memchr::memchr(b'\n', buf) {
                break p;
            }
            if buf.len() > 4096 {
                return Err(ExchangeError::Garbage("chunk size line too long"));
            }
            if fill(s, buf).await? == 0 {
                return Err(ExchangeError::Closed);
            }
        };
        let line = buf.split_to(line_end + 1);
        let size = chunk_size(&line)?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                let end = loop {
                    if let Some(p) = memchr::memchr(b'\n', buf) {
                        break p;
                    }
                    if buf.len() > MAX_HEAD {
                        return Err(ExchangeError::Garbage("trailers too large"));
                    }
                    if fill(s, buf).await? == 0 {
                        return Err(ExchangeError::Closed);
                    }
                };
                let l = buf.split_to(end + 1);
                if !l.ends_with(b"\r\n") {
                    return Err(ExchangeError::Garbage("trailer line without CRLF"));
                }
                if l.len() == 2 {
                    return Ok(out.freeze());
                }
            }
        }
        // Checked before any sum: a size near usize::MAX must not wrap.
        if size > max_body.saturating_sub(out.len()) {
            return Err(ExchangeError::Garbage("response body too large"));
        }
        while buf.len() < size + 2 {
            if fill(s, buf).await? == 0 {
                return Err(ExchangeError::Closed);
            }
        }
        out.extend_from_slice(buf.get(..size).unwrap_or_default());
        buf.advance(size);
        if buf.get(..2) != Some(b"\r\n") {
            return Err(ExchangeError::Garbage("chunk not followed by CRLF"));
        }
        buf.advance(2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_read_strictly() {
        for (line, size) in [
            (&b"0\r\n"[..], 0),
            (b"5\r\n", 5),
            (b"1aF\r\n", 0x1af),
            (b"5;name=value\r\n", 5),
            (b"5 ;name\r\n", 5),
            // Extension bytes are not read as text (obs-text is allowed there).
            (b"5;q=\"\xe9\"\r\n", 5),
            (b"ffffffffffffffff\r\n", usize::MAX),
            (b"0000000000000000000005\r\n", 5),
        ] {
            assert_eq!(chunk_size(line).ok(), Some(size), "{line:?}");
        }
        for line in [
            &b"\r\n"[..],
            b"+5\r\n",
            b"-5\r\n",
            b" 5\r\n",
            b"5 \r\n",
            b"5\n",
            b"5\r\r\n",
            b"0x5\r\n",
            b"5g\r\n",
            b";ext\r\n",
            // Does not fit 64 bits: refused, not wrapped.
            b"10000000000000000\r\n",
            b"fffffffffffffffff\r\n",
        ] {
            assert!(chunk_size(line).is_err(), "{line:?}");
        }
    }

    #[test]
    fn a_head_is_taken_out_of_the_buffer_only_when_complete() {
        let whole = b"HTTP/1.1 201 Created\r\nX-A: one\r\nX-A: two\r\nContent-Length: 2\r\n\r\nok";
        // Every prefix that ends before the blank line is incomplete: nothing taken.
        let head_len = whole.len() - 2;
        for cut in 0..head_len {
            let mut buf = BytesMut::from(&whole[..cut]);
            assert!(parse_head(&mut buf).unwrap().is_none(), "cut at {cut}");
            assert_eq!(buf.len(), cut);
        }
        let mut buf = BytesMut::from(&whole[..]);
        let (status, headers, v11) = parse_head(&mut buf).unwrap().unwrap();
        assert_eq!((status, v11), (201, true));
        let a: Vec<&[u8]> = headers
            .get_all("x-a")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(a, [b"one".as_slice(), b"two"]);
        assert_eq!(headers.get("content-length").unwrap(), "2");
        // The body stays in the buffer.
        assert_eq!(&buf[..], b"ok");
    }

    #[test]
    fn heads_with_more_headers_than_the_inline_room_keep_every_one() {
        // 16 spans fit inline; a head with more spills to the heap. Every
        // header, an empty value and the last one included, keeps its value.
        for count in [15usize, 16, 17, 99] {
            let mut whole = b"HTTP/1.1 200 OK\r\n".to_vec();
            for i in 0..count {
                whole.extend_from_slice(format!("X-H{i}: v{i}\r\n").as_bytes());
            }
            whole.extend_from_slice(b"X-Empty:\r\n\r\nrest");
            let mut buf = BytesMut::from(&whole[..]);
            let (status, headers, _) = parse_head(&mut buf).unwrap().unwrap();
            assert_eq!(status, 200);
            assert_eq!(headers.len(), count + 1, "{count}");
            for i in 0..count {
                assert_eq!(headers.get(format!("x-h{i}")).unwrap(), &format!("v{i}"));
            }
            assert_eq!(headers.get("x-empty").unwrap(), "");
            assert_eq!(&buf[..], b"rest");
        }
    }

    #[test]
    fn a_head_that_is_not_http_is_refused() {
        // (Empty lines before a status line are skipped, as RFC 9112 allows:
        // `\r\n\r\n` is still incomplete, and 502 once the upstream closes.)
        for bad in [&b"HTTP/1.1 2x0 OK\r\n\r\n"[..], b"SSH-2.0-x\r\n\r\n"] {
            let mut buf = BytesMut::from(bad);
            assert!(
                parse_head(&mut buf).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut buf = BytesMut::from(&b"HTTP/1.0 200 OK\r\n\r\n"[..]);
        let (_, _, v11) = parse_head(&mut buf).unwrap().unwrap();
        assert!(!v11);
    }
}
