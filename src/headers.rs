//! Header handling between client and upstream: hop-by-hop removal (RFC 9110
//! §7.6.1), the forwarding headers, per-route `set`/`remove`, and the response
//! headers passed back.

use crate::config::HeaderRules;
use http::header::{self, HeaderMap, HeaderName};
use std::io::Write;
use std::net::IpAddr;

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1, plus
/// the de-facto `Proxy-Connection` and `Keep-Alive`).
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TRAILER,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// The forwarding headers hookgate rebuilds (not among `http`'s standard
/// names; a `HeaderName` looks up without parsing a string first).
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// See [`X_FORWARDED_FOR`].
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

const KEEP_ALIVE: &str = "keep-alive";
const PROXY_CONNECTION: &str = "proxy-connection";
/// The `Connection` option that ends the connection after this message.
const CLOSE: &str = "close";

/// Headers hookgate writes itself on the upstream request; operators cannot set them.
pub fn is_managed(name: &HeaderName) -> bool {
    name == header::CONTENT_LENGTH
        || name == header::TRANSFER_ENCODING
        || name == header::HOST
        || name == header::CONNECTION
}

/// Is this a hop-by-hop header, given the names listed in `Connection`?
pub fn is_hop_by_hop(name: &HeaderName, nominated: &Nominated<'_>) -> bool {
    HOP_BY_HOP.contains(name)
        || name.as_str() == KEEP_ALIVE
        || name.as_str() == PROXY_CONNECTION
        || nominated.contains(name)
}

/// Whether a `Connection` token names one of the headers that are hop-by-hop
/// whatever `Connection` says (case-insensitively): the first three checks
/// of `is_hop_by_hop`, for text. Those compare `HeaderName`s, which is
/// cheaper for the every-header case.
fn is_fixed_hop_by_hop(token: &str) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| h.as_str().eq_ignore_ascii_case(token))
        || token.eq_ignore_ascii_case(KEEP_ALIVE)
        || token.eq_ignore_ascii_case(PROXY_CONNECTION)
}

/// What `Connection` nominates beyond the fixed hop-by-hop headers, read once
/// per header map. The usual values (`keep-alive`, `close`, or none) need no
/// further look; only a list naming other headers is searched again per
/// header (before, every header went through every `Connection` value).
pub struct Nominated<'a> {
    values: header::GetAll<'a, http::HeaderValue>,
    /// `Connection` names a header outside the fixed set (other than `close`).
    others: bool,
    /// `Connection` lists `close` (which a header could be named, too).
    close: bool,
}

impl Nominated<'_> {
    /// Whether `Connection` lists `name` (names compare case-insensitively;
    /// a `HeaderName` is lowercase already). For the fixed hop-by-hop names,
    /// which are dropped anyway, the answer may be `false` even when listed.
    pub fn contains(&self, name: &HeaderName) -> bool {
        if !self.others {
            return self.close && name.as_str() == CLOSE;
        }
        tokens(&self.values).any(|t| t.eq_ignore_ascii_case(name.as_str()))
    }
}

/// The elements of a comma-separated list header (`Connection`,
/// `Transfer-Encoding`) over all its fields, trimmed, empty ones left out.
/// A value that is not visible ASCII contributes none.
pub fn tokens<'a>(values: &header::GetAll<'a, http::HeaderValue>) -> impl Iterator<Item = &'a str> {
    values.iter().flat_map(value_tokens)
}

/// The elements of one list header field (see [`tokens`]).
fn value_tokens(v: &http::HeaderValue) -> impl Iterator<Item = &str> {
    v.to_str()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The header names nominated by `Connection` in `headers`.
pub fn connection_nominated(headers: &HeaderMap) -> Nominated<'_> {
    let values = headers.get_all(header::CONNECTION);
    let (mut others, mut close) = (false, false);
    for v in values.iter() {
        // The usual whole values first, without splitting the list.
        let b = v.as_bytes();
        if b.eq_ignore_ascii_case(KEEP_ALIVE.as_bytes()) {
            continue;
        }
        if b.eq_ignore_ascii_case(CLOSE.as_bytes()) {
            close = true;
            continue;
        }
        for t in value_tokens(v) {
            if t.eq_ignore_ascii_case(CLOSE) {
                close = true;
            } else if !is_fixed_hop_by_hop(t) {
                others = true;
            }
        }
    }
    Nominated {
        values,
        others,
        close,
    }
}

/// Whether `Connection` in `headers` lists `close`.
pub fn connection_close(headers: &HeaderMap) -> bool {
    tokens(&headers.get_all(header::CONNECTION)).any(|t| t.eq_ignore_ascii_case(CLOSE))
}

/// Decide which client headers go upstream: everything but hop-by-hop headers,
/// framing (`Content-Length`, recomputed), `Host` (the upstream's own), `Expect`
/// (answered here), the forwarding headers (rebuilt), and the shared-secret
/// headers: the route's and the global one (a client may send both while a
/// route moves to its own secret; neither is ever forwarded).
pub fn forwardable<'a>(
    headers: &'a HeaderMap,
    secret_headers: [Option<&'a HeaderName>; 2],
) -> impl Iterator<Item = (&'a HeaderName, &'a http::HeaderValue)> + 'a {
    let nominated = connection_nominated(headers);
    headers.iter().filter(move |(name, _)| {
        !(is_hop_by_hop(name, &nominated)
            || *name == header::CONTENT_LENGTH
            || *name == header::HOST
            || *name == header::EXPECT
            || *name == X_FORWARDED_FOR
            || *name == X_FORWARDED_PROTO
            || secret_headers.contains(&Some(*name)))
    })
}

/// A peer address as text, formatted on the stack: no heap allocation, and
/// IPv4 (the common case) without a trip through `core::fmt`.
pub struct IpText {
    buf: [u8; 45],
    len: usize,
}

impl IpText {
    /// `ip` as `Display` writes it.
    pub fn new(ip: IpAddr) -> Self {
        let mut t = IpText {
            buf: [0; 45],
            len: 0,
        };
        let rest = {
            let mut w: &mut [u8] = &mut t.buf;
            match ip {
                IpAddr::V4(v4) => {
                    for (i, octet) in v4.octets().into_iter().enumerate() {
                        if i > 0 {
                            let _ = w.write_all(b".");
                        }
                        let _ = w.write_all(itoa::Buffer::new().format(octet).as_bytes());
                    }
                }
                // At most 45 bytes (`ffff:…:255.255.255.255` is the longest form).
                IpAddr::V6(v6) => {
                    let _ = write!(w, "{v6}");
                }
            }
            w.len()
        };
        t.len = t.buf.len() - rest;
        t
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.buf.get(..self.len).unwrap_or_default()).unwrap_or_default()
    }
}

/// The `X-Forwarded-For` value sent upstream. From a trusted proxy, its chain is
/// kept and the peer appended; from anyone else, a client-sent header is dropped
/// (it is unverified) and the peer alone is sent.
/// `None` only if the text cannot be a header value, which cannot happen: a
/// chain value that is not visible ASCII is left out, and `peer` is an address.
pub fn forwarded_for(
    incoming: &HeaderMap,
    peer: &str,
    peer_trusted: bool,
) -> Option<http::HeaderValue> {
    if peer_trusted {
        let chain: Vec<&str> = incoming
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        if !chain.is_empty() {
            return http::HeaderValue::from_str(&format!("{}, {peer}", chain.join(", "))).ok();
        }
    }
    http::HeaderValue::from_str(peer).ok()
}

/// Apply a route's `remove`, then `set`, rules to a header list.
pub fn apply_rules(
    rules: &HeaderRules,
    mut set: impl FnMut(&HeaderName, Option<&http::HeaderValue>),
) {
    for name in &rules.remove {
        set(name, None);
    }
    for (name, value) in &rules.set {
        set(name, Some(value));
    }
}

/// Response headers from the upstream that go back to the client: all but
/// hop-by-hop and framing (hookgate sets `Content-Length` itself).
pub fn response_forwardable(
    headers: &HeaderMap,
) -> impl Iterator<Item = (&HeaderName, &http::HeaderValue)> {
    let nominated = connection_nominated(headers);
    headers.iter().filter(move |(name, _)| {
        !(is_hop_by_hop(name, &nominated) || *name == header::CONTENT_LENGTH)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn hop_by_hop_and_nominated_are_dropped() {
        let m = map(&[
            ("connection", "keep-alive, X-Private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("content-length", "10"),
            ("host", "public.example"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-hookgate-secret", "s"),
            ("x-call", "ok"),
            ("content-type", "application/json"),
        ]);
        let secret = HeaderName::from_static("x-hookgate-secret");
        let kept: Vec<&str> = forwardable(&m, [Some(&secret), None])
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(kept, vec!["x-call", "content-type"]);
        // A second `Connection` header nominates as well; names match in any case.
        let m = map(&[
            ("connection", "close"),
            ("Connection", " X-Other ,x-PRIVATE"),
            ("x-private", "1"),
            ("x-other", "2"),
            ("x-call", "ok"),
        ]);
        let kept: Vec<&str> = forwardable(&m, [None, None])
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(kept, vec!["x-call"]);
        let kept: Vec<&str> = response_forwardable(&m).map(|(k, _)| k.as_str()).collect();
        assert_eq!(kept, vec!["x-call"]);
    }

    #[test]
    fn hop_by_hop_matches_reading_every_connection_value_per_header() {
        let values = [
            "",
            "keep-alive",
            "Keep-Alive",
            "close",
            "Close, keep-alive",
            "close, X-Private",
            "TE, upgrade, Proxy-Connection",
            "x-a ,, X-B",
            " , ",
            "keep-alive, foo",
        ];
        let names = [
            "close",
            "x-private",
            "x-a",
            "x-b",
            "te",
            "keep-alive",
            "foo",
            "upgrade",
            "content-type",
            "connection",
        ];
        for v in values {
            for two in [false, true] {
                let mut pairs = vec![("connection", v)];
                if two {
                    pairs.push(("connection", "x-second"));
                }
                let m = map(&pairs);
                let nominated = connection_nominated(&m);
                for name in names.iter().chain(&["x-second"]) {
                    let listed = pairs
                        .iter()
                        .flat_map(|(_, v)| v.split(','))
                        .any(|t| t.trim().eq_ignore_ascii_case(name));
                    let h = HeaderName::from_static(name);
                    let fixed = HOP_BY_HOP.contains(&h) || *name == KEEP_ALIVE;
                    assert_eq!(
                        is_hop_by_hop(&h, &nominated),
                        fixed || listed,
                        "Connection: {v:?} (second: {two}), header {name}"
                    );
                }
            }
        }
    }

    #[test]
    fn ip_text_is_what_display_writes() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut ips: Vec<IpAddr> = vec![
            "0.0.0.0".parse().unwrap(),
            "255.255.255.255".parse().unwrap(),
            "217.116.118.254".parse().unwrap(),
            "::".parse().unwrap(),
            "::1".parse().unwrap(),
            "::ffff:255.255.255.255".parse().unwrap(),
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap(),
        ];
        for _ in 0..2000 {
            ips.push(IpAddr::from(rng.u32(..).to_be_bytes()));
            let mut v6 = rng.u128(..).to_be_bytes();
            // Runs of zero groups and mapped forms, which Display shortens.
            for b in v6.iter_mut().take(rng.usize(0..14)) {
                *b = 0;
            }
            ips.push(IpAddr::from(v6));
        }
        for ip in ips {
            assert_eq!(IpText::new(ip).as_str(), ip.to_string(), "{ip:?}");
        }
    }

    #[test]
    fn forwarded_for_from_untrusted_peer_is_replaced() {
        let m = map(&[("x-forwarded-for", "217.116.118.254")]);
        let text = |v: Option<HeaderValue>| v.unwrap().to_str().unwrap().to_string();
        assert_eq!(text(forwarded_for(&m, "203.0.113.5", false)), "203.0.113.5");
        assert_eq!(
            text(forwarded_for(&m, "10.0.0.2", true)),
            "217.116.118.254, 10.0.0.2"
        );
        assert_eq!(
            text(forwarded_for(&HeaderMap::new(), "10.0.0.2", true)),
            "10.0.0.2"
        );
    }
}
