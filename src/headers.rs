//! Header handling between client and upstream: hop-by-hop removal (RFC 9110
//! §7.6.1), the forwarding headers, per-route `set`/`remove`, and the response
//! headers passed back.

use crate::config::HeaderRules;
use http::header::{self, HeaderMap, HeaderName};

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

const KEEP_ALIVE: &str = "keep-alive";
const PROXY_CONNECTION: &str = "proxy-connection";

/// Headers hookgate writes itself on the upstream request; operators cannot set them.
pub fn is_managed(name: &HeaderName) -> bool {
    name == header::CONTENT_LENGTH
        || name == header::TRANSFER_ENCODING
        || name == header::HOST
        || name == header::CONNECTION
}

/// Is this a hop-by-hop header, given the names listed in `Connection`?
pub fn is_hop_by_hop(name: &HeaderName, nominated: &[HeaderName]) -> bool {
    HOP_BY_HOP.contains(name)
        || name.as_str() == KEEP_ALIVE
        || name.as_str() == PROXY_CONNECTION
        || nominated.contains(name)
}

/// The header names nominated by `Connection: a, b`.
pub fn connection_nominated(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect()
}

/// Decide which client headers go upstream: everything but hop-by-hop headers,
/// framing (`Content-Length`, recomputed), `Host` (the upstream's own), `Expect`
/// (answered here), the forwarding headers (rebuilt), and the shared-secret header.
pub fn forwardable<'a>(
    headers: &'a HeaderMap,
    secret_header: Option<&'a HeaderName>,
) -> impl Iterator<Item = (&'a HeaderName, &'a http::HeaderValue)> + 'a {
    let nominated = connection_nominated(headers);
    headers.iter().filter(move |(name, _)| {
        !(is_hop_by_hop(name, &nominated)
            || *name == header::CONTENT_LENGTH
            || *name == header::HOST
            || *name == header::EXPECT
            || name.as_str() == "x-forwarded-for"
            || name.as_str() == "x-forwarded-proto"
            || Some(*name) == secret_header)
    })
}

/// The `X-Forwarded-For` value sent upstream. From a trusted proxy, its chain is
/// kept and the peer appended; from anyone else, a client-sent header is dropped
/// (it is unverified) and the peer alone is sent.
pub fn forwarded_for(incoming: &HeaderMap, peer: &str, peer_trusted: bool) -> String {
    if peer_trusted {
        let chain: Vec<&str> = incoming
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        if !chain.is_empty() {
            return format!("{}, {peer}", chain.join(", "));
        }
    }
    peer.to_string()
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
        let kept: Vec<&str> = forwardable(&m, Some(&secret))
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(kept, vec!["x-call", "content-type"]);
    }

    #[test]
    fn forwarded_for_from_untrusted_peer_is_replaced() {
        let m = map(&[("x-forwarded-for", "217.116.118.254")]);
        assert_eq!(forwarded_for(&m, "203.0.113.5", false), "203.0.113.5");
        assert_eq!(
            forwarded_for(&m, "10.0.0.2", true),
            "217.116.118.254, 10.0.0.2"
        );
        assert_eq!(
            forwarded_for(&HeaderMap::new(), "10.0.0.2", true),
            "10.0.0.2"
        );
    }
}
