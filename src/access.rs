//! Admission: the source-IP allow list, trusted proxies and `X-Forwarded-For`.
//!
//! Owns pipeline stages 1 (admit the connection) and 2 (identify the client).
//! Plain code over addresses and header bytes; no I/O.
//!
//! Rules:
//! - An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) counts as its IPv4 address,
//!   on every side (peer, list entries, header entries).
//! - Without trusted proxies the client is the TCP peer, and a disallowed peer is
//!   dropped at accept time.
//! - With trusted proxies, `X-Forwarded-For` is believed only when the peer is a
//!   trusted proxy; the client is then the right-most entry that is not itself a
//!   trusted proxy. An entry that does not parse before that point makes the
//!   client unknown, which is denied.

use ipnet::IpNet;
use std::net::IpAddr;

/// sipgate's documented webhook source address: the allow list when none is given.
pub const SIPGATE_SOURCE: &str = "217.116.118.254/32";

/// The allow list and the trusted proxies, parsed once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessPolicy {
    allow: Vec<IpNet>,
    trusted: Vec<IpNet>,
}

/// Who the gateway believes the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// A parsed address.
    Addr(IpAddr),
    /// The address could not be established (no peer address, or a garbage
    /// `X-Forwarded-For` entry where the client should be).
    Unknown,
}

impl Client {
    /// The address, if known.
    pub fn addr(&self) -> Option<IpAddr> {
        match self {
            Client::Addr(a) => Some(*a),
            Client::Unknown => None,
        }
    }
}

/// Parse a list entry: a CIDR (`10.0.0.0/8`) or a single address (`::1`).
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(canonical_net(net));
    }
    match s.parse::<IpAddr>() {
        Ok(ip) => Ok(IpNet::from(ip.to_canonical())),
        Err(_) => Err(format!("{s:?} is not an IP address or CIDR network")),
    }
}

/// `::ffff:a.b.c.d/l` (l >= 96) is the IPv4 network `a.b.c.d/(l-96)`.
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net {
        if let Some(v4) = v6.addr().to_ipv4_mapped() {
            if v6.prefix_len() >= 96 {
                if let Ok(n) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96) {
                    return IpNet::V4(n.trunc());
                }
            }
        }
    }
    net.trunc()
}

fn contains(list: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    list.iter().any(|n| n.contains(&ip))
}

impl AccessPolicy {
    /// A policy from parsed networks.
    pub fn new(allow: Vec<IpNet>, trusted: Vec<IpNet>) -> Self {
        AccessPolicy { allow, trusted }
    }

    /// The allow list.
    pub fn allow(&self) -> &[IpNet] {
        &self.allow
    }

    /// The trusted proxies.
    pub fn trusted(&self) -> &[IpNet] {
        &self.trusted
    }

    /// Whether any trusted proxy is configured (then admission waits for the header).
    pub fn has_trusted_proxies(&self) -> bool {
        !self.trusted.is_empty()
    }

    /// Whether a client address is in the allow list.
    pub fn is_allowed(&self, ip: IpAddr) -> bool {
        contains(&self.allow, ip)
    }

    /// Whether a peer address belongs to a trusted proxy.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        contains(&self.trusted, ip)
    }

    /// Stage 1: accept a new connection? Without trusted proxies only allowed
    /// peers get in; with them, every peer gets an HTTP answer (403 when denied),
    /// because the client is only known once the header is read.
    pub fn admit_connection(&self, peer: Option<IpAddr>) -> bool {
        match peer {
            None => false,
            Some(ip) => self.has_trusted_proxies() || self.is_allowed(ip),
        }
    }

    /// Stage 2: the client behind `peer`, given every `X-Forwarded-For` header
    /// value in the order they arrived.
    pub fn identify<'a>(
        &self,
        peer: Option<IpAddr>,
        forwarded_for: impl DoubleEndedIterator<Item = &'a [u8]>,
    ) -> Client {
        let Some(peer) = peer.map(|p| p.to_canonical()) else {
            return Client::Unknown;
        };
        if !self.is_trusted(peer) {
            return Client::Addr(peer);
        }
        let mut last_trusted = peer;
        for value in forwarded_for.rev() {
            for entry in value.rsplit(|b| *b == b',') {
                let entry = trim_ascii(entry);
                if entry.is_empty() {
                    continue;
                }
                match parse_forwarded_entry(entry) {
                    Some(ip) if self.is_trusted(ip) => last_trusted = ip,
                    Some(ip) => return Client::Addr(ip),
                    None => return Client::Unknown,
                }
            }
        }
        // Every hop was a trusted proxy: the left-most one is the client.
        Client::Addr(last_trusted)
    }

    /// Stages 1 and 2 together: is this request from an allowed client?
    pub fn is_client_allowed(&self, client: Client) -> bool {
        client.addr().is_some_and(|ip| self.is_allowed(ip))
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    b.get(start..end).unwrap_or_default()
}

/// One `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:443`, `fe80::1%eth0`; optionally quoted.
/// Anything else (`unknown`, obfuscated identifiers, garbage) is `None`.
pub fn parse_forwarded_entry(entry: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(entry).ok()?.trim();
    let s = s
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s);
    if s.len() > 64 {
        return None;
    }
    let host = if let Some(rest) = s.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || is_port_suffix(after)) {
            return None;
        }
        inside
    } else if s.matches(':').count() == 1 {
        // IPv4 with a port.
        let (h, p) = s.split_once(':')?;
        if !is_port_suffix(&format!(":{p}")) {
            return None;
        }
        h
    } else {
        s
    };
    // Zone ids (`%eth0`) name a local interface; the address stays the same.
    let host = host.split_once('%').map_or(host, |(h, _)| h);
    host.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

fn is_port_suffix(s: &str) -> bool {
    s.strip_prefix(':')
        .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], trusted: &[&str]) -> AccessPolicy {
        AccessPolicy::new(
            allow.iter().map(|s| parse_net(s).unwrap()).collect(),
            trusted.iter().map(|s| parse_net(s).unwrap()).collect(),
        )
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn xff<'a>(v: &'a [&'a str]) -> impl DoubleEndedIterator<Item = &'a [u8]> {
        v.iter().map(|s| s.as_bytes())
    }

    #[test]
    fn mapped_ipv6_counts_as_ipv4() {
        let p = policy(&["217.116.118.254"], &[]);
        assert!(p.is_allowed(ip("::ffff:217.116.118.254")));
        assert!(p.is_allowed(ip("217.116.118.254")));
        assert!(!p.is_allowed(ip("217.116.118.253")));
        let p = policy(&["::ffff:10.0.0.0/104"], &[]);
        assert!(p.is_allowed(ip("10.1.2.3")));
        assert!(!p.is_allowed(ip("11.1.2.3")));
    }

    #[test]
    fn ipv6_networks() {
        let p = policy(&["2001:db8::/32"], &[]);
        assert!(p.is_allowed(ip("2001:db8:1::5")));
        assert!(!p.is_allowed(ip("2001:db9::1")));
    }

    #[test]
    fn no_peer_is_denied() {
        let p = policy(&["0.0.0.0/0"], &[]);
        assert!(!p.admit_connection(None));
        assert_eq!(p.identify(None, xff(&[])), Client::Unknown);
        assert!(!p.is_client_allowed(Client::Unknown));
    }

    #[test]
    fn untrusted_peer_header_is_ignored() {
        let p = policy(&["217.116.118.254"], &["10.0.0.0/8"]);
        let c = p.identify(Some(ip("203.0.113.9")), xff(&["217.116.118.254"]));
        assert_eq!(c, Client::Addr(ip("203.0.113.9")));
        assert!(!p.is_client_allowed(c));
    }

    #[test]
    fn rightmost_untrusted_entry_is_the_client() {
        let p = policy(&["217.116.118.254"], &["10.0.0.0/8"]);
        // The forged left part is ignored: the right-most untrusted entry wins.
        let c = p.identify(
            Some(ip("10.0.0.2")),
            xff(&["217.116.118.254, 198.51.100.7", "10.0.0.3"]),
        );
        assert_eq!(c, Client::Addr(ip("198.51.100.7")));
        let c = p.identify(Some(ip("10.0.0.2")), xff(&["1.1.1.1, 217.116.118.254"]));
        assert_eq!(c, Client::Addr(ip("217.116.118.254")));
        assert!(p.is_client_allowed(c));
    }

    #[test]
    fn garbage_before_client_is_unknown() {
        let p = policy(&["217.116.118.254"], &["10.0.0.0/8"]);
        let c = p.identify(Some(ip("10.0.0.2")), xff(&["217.116.118.254, unknown"]));
        assert_eq!(c, Client::Unknown);
        // Garbage left of the client does not matter.
        let c = p.identify(Some(ip("10.0.0.2")), xff(&["garbage, 217.116.118.254"]));
        assert_eq!(c, Client::Addr(ip("217.116.118.254")));
    }

    #[test]
    fn entry_forms() {
        for (s, want) in [
            ("1.2.3.4", Some("1.2.3.4")),
            (" 1.2.3.4:8080 ", Some("1.2.3.4")),
            ("[2001:db8::1]:443", Some("2001:db8::1")),
            ("[2001:db8::1]", Some("2001:db8::1")),
            ("2001:db8::1", Some("2001:db8::1")),
            ("fe80::1%eth0", Some("fe80::1")),
            ("\"[::ffff:1.2.3.4]\"", Some("1.2.3.4")),
            ("unknown", None),
            ("1.2.3.4:99999999", None),
            ("1.2.3.4:65536", None),
            ("1.2.3.4:", None),
            ("[::1]x", None),
            ("1.2.3.4.5", None),
            ("", None),
        ] {
            assert_eq!(parse_forwarded_entry(s.as_bytes()), want.map(ip), "{s}");
        }
    }

    #[test]
    fn all_trusted_means_leftmost() {
        let p = policy(&["10.0.0.1"], &["10.0.0.0/8"]);
        let c = p.identify(Some(ip("10.0.0.2")), xff(&["10.0.0.1, 10.0.0.3"]));
        assert_eq!(c, Client::Addr(ip("10.0.0.1")));
    }

    #[test]
    fn admission_at_accept() {
        let p = policy(&["127.0.0.1"], &[]);
        assert!(p.admit_connection(Some(ip("127.0.0.1"))));
        assert!(!p.admit_connection(Some(ip("127.0.0.2"))));
        let p = policy(&["127.0.0.1"], &["10.0.0.0/8"]);
        assert!(p.admit_connection(Some(ip("127.0.0.2"))));
    }
}
