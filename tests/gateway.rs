//! Integration tests of the gateway core: the real binary on free ports, in front
//! of a real recording upstream, driven by a raw HTTP/1.1 client.

mod common;

use common::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn upstream_cfg(up: &Upstream, path: &str) -> String {
    format!("\"{}\"", up.url(path))
}

// ------------------------------------------------------------ admission

#[test]
fn disallowed_peer_is_dropped_at_accept() {
    let up = Upstream::start(ok_answer());
    let cfg = config_for(&upstream_cfg(&up, "/in"), "", "").replace(
        r#"allow = ["127.0.0.1/32", "::1/128"]"#,
        r#"allow = ["203.0.113.7/32"]"#,
    );
    let gw = Gateway::start(&cfg);
    let mut s = connect(gw.addr);
    let _ = s.write_all(&post_bytes("/webhooks/crm", &payload(0), &[]));
    let mut buf = Vec::new();
    // Dropped before any HTTP: no byte of answer, just a closed connection.
    let _ = s.read_to_end(&mut buf);
    assert!(
        buf.is_empty(),
        "got an answer: {}",
        String::from_utf8_lossy(&buf)
    );
    assert_eq!(up.count(), 0);
    assert!(wait_until(Duration::from_secs(2), || gw
        .metric("hookgate_connections_rejected_total")
        >= 1.0));
}

#[test]
fn trusted_proxy_rules_for_forwarded_for() {
    let up = Upstream::start(ok_answer());
    let cfg = config_for(
        &upstream_cfg(&up, "/in"),
        "",
        r#"trusted_proxies = ["127.0.0.1/32"]"#,
    )
    .replace(
        r#"allow = ["127.0.0.1/32", "::1/128"]"#,
        r#"allow = ["217.116.118.254/32"]"#,
    );
    let gw = Gateway::start(&cfg);
    let body = payload(0);

    // The load balancer (trusted) says the client is sipgate: allowed.
    let r = gw.send(&post_bytes(
        "/webhooks/crm",
        &body,
        &["X-Forwarded-For: 217.116.118.254"],
    ));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(up.count(), 1);
    let got = &up.requests()[0];
    assert_eq!(
        got.header("x-forwarded-for"),
        Some("217.116.118.254, 127.0.0.1")
    );

    // A forged entry to the left of the real client does not help.
    let r = gw.send(&post_bytes(
        "/webhooks/crm",
        &body,
        &["X-Forwarded-For: 217.116.118.254, 198.51.100.9"],
    ));
    assert_eq!((r.status, r.error_code().as_str()), (403, "ip_not_allowed"));

    // Several headers are one list, in order: the right-most untrusted entry counts.
    let r = gw.send(&post_bytes(
        "/webhooks/crm",
        &body,
        &[
            "X-Forwarded-For: 217.116.118.254",
            "X-Forwarded-For: 198.51.100.9",
        ],
    ));
    assert_eq!(r.status, 403);

    // Garbage where the client should be: unknown client, denied.
    let r = gw.send(&post_bytes(
        "/webhooks/crm",
        &body,
        &["X-Forwarded-For: 217.116.118.254, bogus"],
    ));
    assert_eq!(r.status, 403);

    // No header: the client is the proxy itself, not allowed. Answered, not dropped.
    let r = gw.send(&post_bytes("/webhooks/crm", &body, &[]));
    assert_eq!((r.status, r.error_code().as_str()), (403, "ip_not_allowed"));
    assert_eq!(up.count(), 1, "no denied request may reach the upstream");
}

#[test]
fn forged_forwarded_for_from_untrusted_peer_changes_nothing() {
    let up = Upstream::start(ok_answer());
    // 127.0.0.1 is NOT a trusted proxy here.
    let cfg = config_for(
        &upstream_cfg(&up, "/in"),
        "",
        r#"trusted_proxies = ["10.0.0.0/8"]"#,
    )
    .replace(
        r#"allow = ["127.0.0.1/32", "::1/128"]"#,
        r#"allow = ["217.116.118.254/32"]"#,
    );
    let gw = Gateway::start(&cfg);
    let r = gw.send(&post_bytes(
        "/webhooks/crm",
        &payload(0),
        &["X-Forwarded-For: 217.116.118.254"],
    ));
    assert_eq!((r.status, r.error_code().as_str()), (403, "ip_not_allowed"));
    assert_eq!(up.count(), 0);
}

#[test]
fn forged_forwarded_for_is_not_passed_upstream() {
    let up = Upstream::start(ok_answer());
    let gw = Gateway::start(&config_for(&upstream_cfg(&up, "/in"), "", ""));
    let r = gw.send(&post_bytes(
        "/webhooks/crm",
        &payload(0),
        &["X-Forwarded-For: 217.116.118.254"],
    ));
    assert_eq!(r.status, 200);
    let got = &up.requests()[0];
    assert_eq!(got.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(got.header_count("x-forwarded-for"), 1);
    assert_eq!(got.header("x-forwarded-proto"), Some("http"));
}

#[test]
fn ipv6_peer_is_allowed_by_ipv6_entry() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("SKIP: no IPv6 loopback on this machine");
        return;
    }
    let up = Upstream::start(ok_answer());
    let cfg = config_for(&upstream_cfg(&up, "/in"), "", "").replace(
        r#"allow = ["127.0.0.1/32", "::1/128"]"#,
        r#"allow = ["::1/128"]"#,
    );
    let gw = Gateway::start_with(&cfg, &[], "::1");
    let r = gw.post("/webhooks/crm", &payload(0));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(up.requests()[0].header("x-forwarded-for"), Some("::1"));
}

#[test]
fn ipv4_mapped_peer_counts_as_ipv4() {
    if std::net::TcpListener::bind("[::]:0").is_err() {
        eprintln!("SKIP: no IPv6 on this machine");
        return;
    }
    let up = Upstream::start(ok_answer());
    // Dual-stack listener: an IPv4 client appears as ::ffff:127.0.0.1.
    let cfg = config_for(&upstream_cfg(&up, "/in"), "", "").replace(
        r#"allow = ["127.0.0.1/32", "::1/128"]"#,
        r#"allow = ["127.0.0.1/32"]"#,
    );
    let gw = Gateway::start_with(&cfg, &[], "::");
    let r = gw.post("/webhooks/crm", &payload(0));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        up.requests()[0].header("x-forwarded-for"),
        Some("127.0.0.1")
    );
}

// ------------------------------------------------------------ routing

#[test]
fn routing_errors() {
    let up = Upstream::start(ok_answer());
    let gw = Gateway::start(&config_for(&upstream_cfg(&up, "/in"), "", ""));
    let body = payload(0);

    let r = gw.post("/webhooks/other", &body);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (404, "route_not_found")
    );
    // Exact match only.
    let r = gw.post("/webhooks/crm/", &body);
    assert_eq!(r.status, 404);

    let r = gw.send(b"GET /webhooks/crm HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (405, "method_not_allowed")
    );
    assert_eq!(r.header("allow"), Some("POST"));

    let mut req = post_bytes("/webhooks/crm", &body, &[]);
    let text = String::from_utf8(req.clone())
        .unwrap()
        .replace("application/json", "text/plain");
    req = text.into_bytes();
    let r = gw.send(&req);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (415, "unsupported_media_type")
    );

    let no_type = format!(
        "POST /webhooks/crm HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut req = no_type.into_bytes();
    req.extend_from_slice(&body);
    assert_eq!(gw.send(&req).status, 415);

    // Parameters are fine; the query string is not part of the path.
    let text = String::from_utf8(post_bytes("/webhooks/crm?x=1", &body, &[]))
        .unwrap()
        .replace("application/json", "application/json; charset=utf-8");
    let r = gw.send(text.as_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(up.count(), 1);

    // /metrics is never served on the public listener.
    let r = http_get(gw.addr, "/metrics").unwrap();
    assert_eq!(r.status, 404);
    assert!(!String::from_utf8_lossy(&r.body).contains("hookgate_"));
}

// ------------------------------------------------------------ bodies

#[test]
fn bodies_of_every_size_arrive_intact() {
    let up = Upstream::start(ok_answer());
    let gw = Gateway::start(&config_for(&upstream_cfg(&up, "/in"), "", ""));
    for size in [1024, 64 * 1024 + 1, 200 * 1024, 900 * 1024] {
        let body = payload(size);
        assert_eq!(body.len(), size);
        let r = gw.post("/webhooks/crm", &body);
        assert_eq!(r.status, 200, "size {size}: {r:?}");
        let got = up.requests().pop().unwrap();
        assert_eq!(got.body.len(), size);
        assert!(got.body == body, "size {size}: body changed");
        assert_eq!(
            got.header("content-length"),
            Some(size.to_string().as_str())
        );
    }
}

#[test]
fn chunked_bodies_arrive_with_content_length() {
    let up = Upstream::start(ok_answer());
    let gw = Gateway::start(&config_for(&upstream_cfg(&up, "/in"), "", ""));
    for (size, chunk) in [(1024, 100), (64 * 1024 + 1, 4096), (900 * 1024, 16 * 1024)] {
        let body = payload(size);
        let r = gw.send(&post_chunked("/webhooks/crm", &body, chunk));
        assert_eq!(r.status, 200, "size {size}: {r:?}");
        let got = up.requests().pop().unwrap();
        assert!(got.body == body, "size {size}: body changed");
        assert_eq!(
            got.header("content-length"),
            Some(size.to_string().as_str())
        );
        assert_eq!(got.header("transfer-encoding"), None);
    }
}

#[test]
fn chunk_trailers_are_read_and_not_forwarded() {
    let up = Upstream::start(ok_answer());
    let gw = Gateway::start(&config_for(&upstream_cfg(&up, "/in"), "", ""));
    let body = payload(0);
    let mut req = post_chunked("/webhooks/crm", &body, 500);
    // Replace the last chunk's empty trailer section with two trailer fields.
    assert!(req.ends_with(b"0\r\n\r\n"));
    req.truncate(req.len() - 2);
    req.extend_from_slice(b"X-Trailer: t\r\nX-Forged-For: 6.6.6.6\r\n\r\n");
    let r = gw.send(&req);
    assert_eq!(r.status, 200, "{r:?}");
    let got = &up.requests()[0];
    assert!(got.body == body, "body changed");
    assert_eq!(got.header("x-trailer"), None);
    assert_eq!(got.header("x-forged-for"), None);
    assert_eq!(
        got.header("content-length"),
        Some(body.len().to_string().as_str())
    );
}

#[test]
fn body_over_the_limit_is_413() {
    let up = Upstream::start(ok_answer());
    let cfg = config_for(&upstream_cfg(&up, "/in"), "", "")
        .replace("max_body_bytes = 1048576", "max_body_bytes = 100000");
    let gw = Gateway::start(&cfg);
    let exact = payload(100_000);
    assert_eq!(gw.post("/webhooks/crm", &exact).status, 200);
    let over = payload(100_001);
    let r = gw.post("/webhooks/crm", &over);
    assert_eq!((r.status, r.error_code().as_str()), (413, "body_too_large"));
    // Chunked: no length up front, counted while reading.
    let r = gw.send(&post_chunked("/webhooks/crm", &over, 8192));
    assert_eq!((r.status, r.error_code().as_str()), (413, "body_too_large"));
    // A huge declared length is refused before reading anything.
    let r = gw.send(b"POST /webhooks/crm HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n{");
    assert_eq!(r.status, 413);
    assert_eq!(up.count(), 1, "only the body at the limit went through");
}

#[test]
fn per_route_limit_overrides_global() {
    let up = Upstream::start(ok_answer());
    let gw = Gateway::start(&config_for(
        &upstream_cfg(&up, "/in"),
        "max_body_bytes = 2000",
        "",
    ));
    assert_eq!(gw.post("/webhooks/crm", &payload(2001)).status, 413);
    assert_eq!(gw.post("/webhooks/crm", &payload(2000)).status, 200);
}

#[test]
fn stalled_body_is_408_and_nothing_is_forwarded() {
    let up = Upstream::start(ok_answer());
    let cfg = config_for(&upstream_cfg(&up, "/in"), "", "")
        .replace("body_timeout_ms = 2000", "body_timeout_ms = 400");
    let gw = Gateway::start(&cfg);
    let mut s = connect(gw.addr);
    s.write_all(b"POST /webhooks/crm HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"version\":").unwrap();
    let t = Instant::now();
    let r = read_response(&mut s).unwrap();
    assert_eq!((r.status, r.error_code().as_str()), (408, "body_timeout"));
    assert!(
        t.elapsed() >= Duration::from_millis(350),
        "answered too early: {:?}",
        t.elapsed()
    );
    assert_eq!(r.header("connection"), Some("close"));
    // A chunked body that stops mid-way.
    let mut s = connect(gw.addr);
    s.write_all(b"POST /webhooks/crm HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"ver\r\n").unwrap();
    let r = read_response(&mut s).unwrap();
    assert_eq!(r.status, 408);
    assert_eq!(up.count(), 0);
}

#[test]
fn truncated_body_is_refused() {
    let up = Upstream::start(ok_answer());
    let gw = Gateway::start(&config_for(&upstream_cfg(&up, "/in"), "", ""));
    let mut s = connect(gw.addr);
    s.write_all(b"POST /webhooks/crm HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"version\":").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    // Either a 400 or a plain close: never a forward.
    if let Ok(r) = read_response(&mut s) {
        assert_eq!(r.status, 400, "{r:?}");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(up.count(), 0);
}

#[test]
fn expect_continue_is_answered() {
    let up = Upstream::start(ok_answer());
    let gw = Gateway::start(&config_for(&upstream_cfg(&up, "/in"), "", ""));
    let body = payload(4000);
    let head = format!(
        "POST /webhooks/crm HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    let mut s = connect(gw.addr);
    s.write_all(head.as_bytes()).unwrap();
    let mut first = [0u8; 25];
    s.read_exact(&mut first).unwrap();
    assert!(
        first.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&first)
    );
    s.write_all(&body).unwrap();
    let r = read_response(&mut s).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(up.requests()[0].header("expect"), None);
}

// ------------------------------------------------------------ forwarding

#[test]
fn forwarding_headers_path_and_answer() {
    let up = Upstream::start(Behavior::Answer {
        status: 201,
        headers: vec![
            ("X-Upstream".into(), "yes".into()),
            ("X-Empty".into(), "".into()),
            ("X-Multi".into(), "a".into()),
            ("X-Multi".into(), "b".into()),
            ("Connection".into(), "keep-alive".into()),
        ],
        body: b"{\"created\":1}".to_vec(),
    });
    let route = r#"
[route.headers]
set = { "Authorization" = "Bearer ${CRM_TOKEN}", "X-Source" = "sipgate" }
remove = ["Cookie", "X-Drop-Me"]
"#;
    let cfg = config_for(
        &format!("\"{}\"", up.url("/internal/sipgate?k=v")),
        route,
        "",
    );
    let gw = Gateway::start_with(&cfg, &[("CRM_TOKEN", "t0k3n")], "127.0.0.1");
    let r = gw.send(&post_bytes(
        "/webhooks/crm",
        &payload(0),
        &[
            "Cookie: session=1",
            "X-Drop-Me: 1",
            "Authorization: Basic forged",
            "Connection: keep-alive, X-Hop",
            "X-Hop: secret-hop",
            "Keep-Alive: timeout=5",
            "X-Custom: kept",
        ],
    ));
    assert_eq!(r.status, 201);
    assert_eq!(r.body, b"{\"created\":1}");
    assert_eq!(r.header("x-upstream"), Some("yes"));
    // Values are passed back as the upstream wrote them, empty and repeated ones too.
    assert_eq!(r.header("x-empty"), Some(""));
    let multi: Vec<&str> = r
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("x-multi"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(multi, ["a", "b"]);
    let got = &up.requests()[0];
    assert_eq!(got.method, "POST");
    assert_eq!(got.path, "/internal/sipgate?k=v");
    assert_eq!(got.header("authorization"), Some("Bearer t0k3n"));
    assert_eq!(got.header_count("authorization"), 1);
    assert_eq!(got.header("x-source"), Some("sipgate"));
    assert_eq!(got.header("cookie"), None);
    assert_eq!(got.header("x-drop-me"), None);
    assert_eq!(
        got.header("x-hop"),
        None,
        "nominated hop-by-hop header leaked"
    );
    assert_eq!(got.header("keep-alive"), None);
    assert_eq!(got.header("x-custom"), Some("kept"));
    assert_eq!(got.header("host"), Some(up.addr.to_string().as_str()));
    assert_eq!(got.header("content-type"), Some("application/json"));
    // The injected token is never logged or exported.
    assert!(wait_until(Duration::from_secs(2), || gw
        .log()
        .contains("hookgate::access")));
    assert!(!gw.log().contains("t0k3n"), "the injected token was logged");
    assert!(!gw.metrics_text().contains("t0k3n"));
}

#[test]
fn upstream_connections_are_reused() {
    let up = Upstream::start(ok_answer());
    let gw = Gateway::start(&config_for(&upstream_cfg(&up, "/in"), "", ""));
    for _ in 0..5 {
        assert_eq!(gw.post("/webhooks/crm", &payload(0)).status, 200);
    }
    assert_eq!(up.count(), 5);
    assert!(
        up.connections.load(std::sync::atomic::Ordering::SeqCst) <= 2,
        "connections not reused"
    );
}

#[test]
fn upstream_down_is_502() {
    let dead = free_port();
    let up = Upstream::start(ok_answer());
    let gw = Gateway::start(&config_for(
        &format!("\"http://127.0.0.1:{dead}/in\""),
        "",
        "",
    ));
    let r = gw.post("/webhooks/crm", &payload(0));
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (502, "upstream_unavailable")
    );
    assert_eq!(up.count(), 0);
}

#[test]
fn slow_upstream_is_504() {
    let up = Upstream::start(Behavior::Delay(Duration::from_secs(3)));
    let gw = Gateway::start(&config_for(&upstream_cfg(&up, "/in"), "", ""));
    let t = Instant::now();
    let r = gw.post("/webhooks/crm", &payload(0));
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (504, "upstream_timeout")
    );
    assert!(
        t.elapsed() < Duration::from_millis(2900),
        "timeout_ms not applied: {:?}",
        t.elapsed()
    );
}

#[test]
fn an_upstream_that_stalls_mid_body_is_504() {
    // The head and part of the body, then nothing, the connection left open.
    let up = Upstream::start(Behavior::Raw {
        bytes: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"partial\":".to_vec(),
        close: false,
    });
    let gw = Gateway::start(&config_for(&upstream_cfg(&up, "/in"), "", ""));
    let t = Instant::now();
    let r = gw.post("/webhooks/crm", &payload(0));
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (504, "upstream_timeout"),
        "{r:?}"
    );
    // The route's timeout (1.5 s) bounds the whole exchange, body included.
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(
        !r.body.windows(8).any(|w| w == b"partial\""),
        "part of a body passed on"
    );
}

#[test]
fn resetting_or_garbage_upstream_is_502() {
    let up = Upstream::start(Behavior::Reset);
    let gw = Gateway::start(&config_for(&upstream_cfg(&up, "/in"), "", ""));
    let r = gw.post("/webhooks/crm", &payload(0));
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (502, "upstream_unavailable")
    );
    up.set_behavior(Behavior::Garbage);
    let r = gw.post("/webhooks/crm", &payload(0));
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (502, "upstream_unavailable")
    );
}

/// An upstream list: a port nothing listens on, then `live`.
fn dead_then_live(dead: u16, live: &Upstream) -> String {
    format!("[\"http://127.0.0.1:{dead}/in\", \"{}\"]", live.url("/in"))
}

#[test]
fn retry_only_when_nothing_reached_the_upstream() {
    let dead = free_port();
    let live = Upstream::start(ok_answer());
    let list = dead_then_live(dead, &live);
    let gw = Gateway::start(&config_for(&list, "", ""));
    // Whichever target round-robin starts with, every request lands on the live one.
    for _ in 0..4 {
        assert_eq!(gw.post("/webhooks/crm", &payload(0)).status, 200);
    }
    assert_eq!(live.count(), 4);

    // A target that received the request and reset is not retried elsewhere.
    let resetting = Upstream::start(Behavior::Reset);
    let other = Upstream::start(ok_answer());
    let list = format!("[\"{}\", \"{}\"]", resetting.url("/in"), other.url("/in"));
    let gw = Gateway::start(&config_for(&list, "", ""));
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(gw.post("/webhooks/crm", &payload(0)).status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 502).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(resetting.count(), 2);
    assert_eq!(
        other.count(),
        2,
        "a request that reached one upstream was sent to another"
    );
}

#[test]
fn a_target_that_failed_to_connect_waits_behind_the_others() {
    let dead = free_port();
    let live = Upstream::start(ok_answer());
    let list = dead_then_live(dead, &live);
    let gw = Gateway::start(&config_for(&list, "", ""));
    // Round-robin would start at the dead target on every other request (3
    // retries in 6); after its first failed connect it goes last, so only the
    // first request pays for it.
    for _ in 0..6 {
        assert_eq!(gw.post("/webhooks/crm", &payload(0)).status, 200);
    }
    assert_eq!(live.count(), 6);
    assert_eq!(
        gw.metric("hookgate_upstream_retries_total{route=\"crm\"}"),
        1.0
    );
    // Said once, with the address and not more.
    let log = gw.log();
    let said = log
        .lines()
        .filter(|l| l.contains("upstream connect failed"))
        .collect::<Vec<_>>();
    assert_eq!(said.len(), 1, "{log}");
    assert!(said[0].contains(&format!("127.0.0.1:{dead}")), "{log}");

    // When every target failed, each is still tried: a request is never
    // refused while one may work, and one that comes back is found at once,
    // not after the timeout.
    let (a, b) = (free_port(), free_port());
    let list = format!("[\"http://127.0.0.1:{a}/in\", \"http://127.0.0.1:{b}/in\"]");
    let gw = Gateway::start(&config_for(&list, "", ""));
    for _ in 0..3 {
        let r = gw.post("/webhooks/crm", &payload(0));
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (502, "upstream_unavailable")
        );
    }
    let retries = "hookgate_upstream_retries_total{route=\"crm\"}";
    assert_eq!(gw.metric(retries), 3.0, "each request tried both targets");
    let back = Upstream::start_on(format!("127.0.0.1:{a}").parse().unwrap(), ok_answer());
    assert_eq!(gw.post("/webhooks/crm", &payload(0)).status, 200);
    // Up again: first in line from now on (at most one more retry above).
    let before = gw.metric(retries);
    assert!(before <= 4.0, "{before}");
    for _ in 0..4 {
        assert_eq!(gw.post("/webhooks/crm", &payload(0)).status, 200);
    }
    assert_eq!(back.count(), 5);
    assert_eq!(gw.metric(retries), before);
}

#[test]
fn a_set_aside_target_takes_its_turn_again_after_fail_timeout_ms() {
    let dead = free_port();
    let live = Upstream::start(ok_answer());
    let list = dead_then_live(dead, &live);
    let retries = "hookgate_upstream_retries_total{route=\"crm\"}";
    let gw = Gateway::start(&config_for(&list, "fail_timeout_ms = 1000", ""));
    let two = |gw: &Gateway| {
        for _ in 0..2 {
            assert_eq!(gw.post("/webhooks/crm", &payload(0)).status, 200);
        }
    };
    two(&gw);
    assert_eq!(gw.metric(retries), 1.0);
    // Once the mark expired, the dead target's turn comes again (one
    // retry), and it is set aside again, without another warning.
    std::thread::sleep(Duration::from_millis(1100));
    two(&gw);
    assert_eq!(gw.metric(retries), 2.0);
    two(&gw);
    assert_eq!(gw.metric(retries), 2.0);
    assert_eq!(live.count(), 6);
    let log = gw.log();
    assert_eq!(log.matches("upstream connect failed").count(), 1, "{log}");

    // 0: never set aside; every turn of the dead target costs a retry.
    let gw = Gateway::start(&config_for(&list, "fail_timeout_ms = 0", ""));
    two(&gw);
    two(&gw);
    assert_eq!(gw.metric(retries), 2.0);
    assert!(!gw.log().contains("upstream connect failed"));
}

#[test]
fn a_target_that_hangs_on_connect_waits_behind_the_others_too() {
    // A host that drops packets: a listener whose accept queue is full, so
    // the kernel ignores further SYNs and a connect hangs. The route's 1.5 s
    // run out before the 2 s connect timeout: the request's timeout, not the
    // connect's, ends the try.
    let hole = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    hole.bind(&any.into()).unwrap();
    hole.listen(0).unwrap();
    let hole_addr = hole.local_addr().unwrap().as_socket().unwrap();
    let mut queued = Vec::new();
    for _ in 0..3 {
        if let Ok(c) = std::net::TcpStream::connect_timeout(&hole_addr, Duration::from_millis(300))
        {
            queued.push(c);
        }
    }
    let hangs = std::net::TcpStream::connect_timeout(&hole_addr, Duration::from_millis(300));
    assert_eq!(
        hangs.map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::TimedOut,
        "the accept queue did not fill"
    );
    let live = Upstream::start(ok_answer());
    let list = format!("[\"http://{hole_addr}/in\", \"{}\"]", live.url("/in"));
    let gw = Gateway::start(&config_for(&list, "", ""));
    // Round-robin starts at the hole: that request runs out of time.
    let r = gw.post("/webhooks/crm", &payload(0));
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (504, "upstream_timeout")
    );
    // From then on the hole waits behind the live target: every other
    // request's turn would start there, and none times out.
    for _ in 0..4 {
        let r = gw.post("/webhooks/crm", &payload(0));
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(live.count(), 4);
    let log = gw.log();
    assert_eq!(log.matches("upstream connect failed").count(), 1, "{log}");
    drop(queued);
}

#[test]
fn several_upstreams_are_balanced() {
    let a = Upstream::start(ok_answer());
    let b = Upstream::start(ok_answer());
    let list = format!("[\"{}\", \"{}\"]", a.url("/a"), b.url("/b"));
    let gw = Gateway::start(&config_for(&list, "", ""));
    for _ in 0..6 {
        assert_eq!(gw.post("/webhooks/crm", &payload(0)).status, 200);
    }
    assert_eq!((a.count(), b.count()), (3, 3));
}

#[test]
fn file_upstream_appends_json_lines() {
    let gw = Gateway::start(&config_for("\"file:{DIR}/out/webhooks.jsonl\"", "", ""));
    let body = payload(3000);
    for _ in 0..2 {
        let r = gw.post("/webhooks/crm", &body);
        assert_eq!(r.status, 202, "{r:?}");
        assert_eq!(r.json()["status"], "accepted");
    }
    let text = std::fs::read_to_string(gw.dir.path().join("out/webhooks.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    let want: serde_json::Value = serde_json::from_slice(&body).unwrap();
    for l in lines {
        let got: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(got, want);
    }
}

#[test]
fn file_upstream_ends_a_torn_line_before_appending() {
    let gw = Gateway::start(&config_for("\"file:{DIR}/out/webhooks.jsonl\"", "", ""));
    // What a run stopped mid-write leaves: a line without its end.
    let path = gw.dir.path().join("out/webhooks.jsonl");
    std::fs::write(&path, b"{\"torn\":").unwrap();
    let body = payload(0);
    for _ in 0..2 {
        assert_eq!(gw.post("/webhooks/crm", &body).status, 202);
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0], "{\"torn\":");
    let want: serde_json::Value = serde_json::from_slice(&body).unwrap();
    for l in &lines[1..] {
        let got: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(got, want);
    }
}

#[test]
fn file_upstream_follows_log_rotation() {
    let gw = Gateway::start(&config_for("\"file:{DIR}/out/webhooks.jsonl\"", "", ""));
    let path = gw.dir.path().join("out/webhooks.jsonl");
    let rotated = gw.dir.path().join("out/webhooks.jsonl.1");
    let body = payload(0);
    assert_eq!(gw.post("/webhooks/crm", &body).status, 202);
    // logrotate without copytruncate: move the file away; the next record
    // starts a new file at the configured path.
    std::fs::rename(&path, &rotated).unwrap();
    assert_eq!(gw.post("/webhooks/crm", &body).status, 202);
    assert_eq!(gw.post("/webhooks/crm", &body).status, 202);
    let old = std::fs::read_to_string(&rotated).unwrap();
    let new = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        (old.lines().count(), new.lines().count()),
        (1, 2),
        "{old}\n--\n{new}"
    );
    // Removed: a new file as well.
    std::fs::remove_file(&path).unwrap();
    assert_eq!(gw.post("/webhooks/crm", &body).status, 202);
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
}

#[test]
fn a_file_upstream_that_hangs_is_a_504_within_the_route_timeout() {
    let cfg = config_for("\"file:{DIR}/out/webhooks.jsonl\"", "", "")
        .replace("timeout_ms = 1500", "timeout_ms = 500");
    assert!(cfg.contains("timeout_ms = 500"), "{cfg}");
    let gw = Gateway::start(&cfg);
    // A FIFO nobody reads: the write blocks once the pipe's buffer is full.
    let path = gw.dir.path().join("out/webhooks.jsonl");
    let _ = std::fs::remove_file(&path);
    let made = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .unwrap();
    assert!(made.success());
    let body = payload(200_000);
    for _ in 0..2 {
        let t = std::time::Instant::now();
        let r = gw.post("/webhooks/crm", &body);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (504, "upstream_timeout"),
            "{r:?}"
        );
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    }
    // The gateway still answers other requests.
    assert_eq!(gw.post("/webhooks/nope", &payload(0)).status, 404);
}

// ------------------------------------------------------------ inspection

#[test]
fn invalid_json_and_schema_violations_never_reach_upstream() {
    let up = Upstream::start(ok_answer());
    let gw = Gateway::start(&config_for(&upstream_cfg(&up, "/in"), "", ""));
    let r = gw.post("/webhooks/crm", b"{\"version\": ");
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_json"));
    let r = gw.post("/webhooks/crm", b"");
    assert_eq!(r.status, 400);
    let r = gw.post("/webhooks/crm", br#"{"version":"v1","call":{"id":"x"}}"#);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (422, "schema_violation")
    );
    let details = r.json()["details"].as_array().unwrap().clone();
    assert!(details.iter().any(|d| d["path"] == "/call"), "{details:?}");
    assert_eq!(up.count(), 0);
}

#[test]
fn transcription_strip_reaches_upstream_without_transcript() {
    let up = Upstream::start(ok_answer());
    let cfg = config_for(&upstream_cfg(&up, "/in"), "", "")
        .replace("transcription = \"keep\"", "transcription = \"strip\"");
    let gw = Gateway::start(&cfg);
    let r = gw.post("/webhooks/crm", &payload(0));
    assert_eq!(r.status, 200);
    let got: serde_json::Value = serde_json::from_slice(&up.requests()[0].body).unwrap();
    assert!(got["assist"].get("transcription").is_none());
    assert!(got["assist"]["summary"].is_object());
    assert_eq!(
        up.requests()[0].header("content-length"),
        Some(up.requests()[0].body.len().to_string().as_str())
    );
}

// ------------------------------------------------------------ accounting

#[test]
fn access_log_and_metrics_count_every_request_without_personal_data() {
    let up = Upstream::start(ok_answer());
    let gw = Gateway::start(&config_for(&upstream_cfg(&up, "/in"), "", ""));
    assert_eq!(gw.post("/webhooks/crm", &payload(0)).status, 200);
    assert_eq!(gw.post("/nope", &payload(0)).status, 404);
    assert_eq!(gw.post("/webhooks/crm", b"[").status, 400);
    assert!(wait_until(Duration::from_secs(2), || gw
        .log()
        .matches("hookgate::access")
        .count()
        >= 3));
    let log = gw.log();
    assert!(log.contains("outcome=forwarded"), "{log}");
    assert!(log.contains("outcome=route_not_found"), "{log}");
    assert_eq!(
        log.matches("peer=127.0.0.1 client=127.0.0.1 ").count(),
        3,
        "{log}"
    );
    assert!(
        log.contains("call_id=\"123e4567-e89b-12d3-a456-426614174000\""),
        "{log}"
    );
    for secret in [
        "+4921161234567",
        "4921161234567",
        "delayed order",
        "Good day",
        "B-2024-1234",
    ] {
        assert!(!log.contains(secret), "personal data {secret:?} in the log");
    }
    let m = gw.metrics_text();
    assert!(
        m.contains(r#"hookgate_requests_total{outcome="forwarded",route="crm"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"hookgate_requests_total{outcome="route_not_found",route="none"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"hookgate_requests_total{outcome="invalid_json",route="crm"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"hookgate_upstream_responses_total{route="crm",status="2xx"} 1"#),
        "{m}"
    );
    assert!(!m.contains("4921161234567"));
}

// ------------------------------------------------------------ lifecycle

#[test]
fn sigterm_finishes_requests_in_flight_then_exits() {
    // The request in flight takes 2 s, well inside the route's timeout and the
    // shutdown grace, so a loaded machine has time to see the draining.
    let up = Upstream::start(Behavior::Delay(Duration::from_millis(2000)));
    let mut gw = Gateway::start(
        &config_for(&upstream_cfg(&up, "/in"), "", "")
            .replace("timeout_ms = 1500", "timeout_ms = 6000")
            .replace("shutdown_grace_ms = 3000", "shutdown_grace_ms = 8000"),
    );
    let addr = gw.addr;
    let body = payload(0);
    let inflight = std::thread::spawn(move || raw(addr, &post_bytes("/webhooks/crm", &body, &[])));
    assert!(wait_until(Duration::from_secs(3), || up.count() == 1));
    gw.signal("TERM");
    // While draining, /readyz says 503.
    let saw_draining = wait_until(Duration::from_secs(3), || {
        http_get(gw.metrics, "/readyz").is_ok_and(|r| r.status == 503)
    });
    let r = inflight
        .join()
        .unwrap()
        .expect("the request in flight was cut");
    assert_eq!(r.status, 200);
    let took = gw
        .wait_exit(Duration::from_secs(8))
        .expect("did not exit within the grace");
    assert!(saw_draining, "readyz never reported draining");
    // It exits once the request is done, not at the end of the 8 s grace.
    assert!(took < Duration::from_secs(6), "{took:?}");
    assert!(gw.log().contains("SIGTERM"));
}

#[test]
fn sigterm_under_steady_traffic_answers_every_request_it_took() {
    // Requests keep coming, so nothing is ever idle; each takes 400 ms upstream.
    let up = Upstream::start(Behavior::Delay(Duration::from_millis(400)));
    // (The test configuration's grace is 3 s.)
    let mut gw = Gateway::start(&config_for(&upstream_cfg(&up, "/in"), "", ""));
    let addr = gw.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, answered) = (stop.clone(), answered.clone());
            std::thread::spawn(move || {
                let body = payload(0);
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    match raw(addr, &post_bytes("/webhooks/crm", &body, &[])) {
                        Ok(r) if r.status == 200 => {
                            answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        Ok(r) => panic!("unexpected answer {r:?}"),
                        // Refused, or reset in the listen backlog as the listener
                        // closes: such a request never reached the upstream.
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        })
        .collect();
    assert!(wait_until(Duration::from_secs(5), || up.count() >= 8));
    gw.signal("TERM");
    let took = gw
        .wait_exit(Duration::from_secs(10))
        .expect("did not exit within the grace");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    // Every request that reached the upstream was answered to its client:
    // none was cut when the process exited.
    let answered = answered.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(up.count(), answered, "requests cut at exit (took {took:?})");
    assert!(took < Duration::from_secs(4), "{took:?}");
}

#[test]
fn sigint_stops_at_once() {
    let up = Upstream::start(ok_answer());
    let mut gw = Gateway::start(&config_for(&upstream_cfg(&up, "/in"), "", ""));
    gw.signal("INT");
    let took = gw.wait_exit(Duration::from_secs(2)).expect("did not stop");
    assert!(took < Duration::from_secs(2));
}

#[test]
fn healthz_and_readyz() {
    let up = Upstream::start(ok_answer());
    let gw = Gateway::start(&config_for(&upstream_cfg(&up, "/in"), "", ""));
    assert_eq!(http_get(gw.metrics, "/healthz").unwrap().status, 200);
    assert_eq!(http_get(gw.metrics, "/readyz").unwrap().status, 200);
    assert_eq!(http_get(gw.metrics, "/other").unwrap().status, 404);
    // Other methods: 405, naming the allowed ones.
    let r = raw(
        gw.metrics,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .unwrap();
    assert_eq!(
        (r.status, r.header("allow")),
        (405, Some("GET, HEAD")),
        "{r:?}"
    );
}

// ------------------------------------------------------------ shipped default

#[test]
fn shipped_default_config_archives_the_sample() {
    // The shipped conf/hookgate.toml, in the same layout (conf/, schemas/), with
    // only its two ports changed so tests can run beside anything.
    let text = std::fs::read_to_string(project_root().join("conf/hookgate.toml"))
        .unwrap()
        .replace("127.0.0.1:8080", "{LISTEN}")
        .replace("127.0.0.1:9464", "{METRICS}");
    let schema =
        std::fs::read(project_root().join("schemas/sipgate-ai-agents-webhook.v1.json")).unwrap();
    let gw = Gateway::start_full(
        &text,
        &[],
        "127.0.0.1",
        "conf/hookgate.toml",
        &[("schemas/sipgate-ai-agents-webhook.v1.json", &schema)],
        &[],
    );
    let sample = std::fs::read(project_root().join("tests/payloads/sample.json")).unwrap();
    let r = gw.post("/webhooks/sipgate", &sample);
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (202, Some("accepted")),
        "{r:?}"
    );
    let archive = std::fs::read_to_string(gw.dir.path().join("var/webhooks.jsonl")).unwrap();
    assert_eq!(archive.lines().count(), 1);
    let got: serde_json::Value = serde_json::from_str(archive.lines().next().unwrap()).unwrap();
    let want: serde_json::Value = serde_json::from_slice(&sample).unwrap();
    assert_eq!(got, want);
    // Loopback is allowed by the default; the schema is enforced.
    let r = gw.post("/webhooks/sipgate", br#"{"version":"v9"}"#);
    assert_eq!(r.status, 422);
}

#[test]
fn json_log_lines() {
    let up = Upstream::start(ok_answer());
    let cfg = config_for(&upstream_cfg(&up, "/in"), "", "");
    let gw = Gateway::start_json_logs(&cfg);
    assert_eq!(gw.post("/webhooks/crm", &payload(0)).status, 200);
    assert!(
        wait_until(Duration::from_secs(2), || gw
            .log()
            .contains("\"outcome\":\"forwarded\"")),
        "{}",
        gw.log()
    );
    let mut access = 0;
    for line in gw.log().lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if v["target"] == "hookgate::access" {
            access += 1;
            assert_eq!(v["route"], "crm");
            assert_eq!(v["status"], 200);
            assert_eq!(v["call_id"], "123e4567-e89b-12d3-a456-426614174000");
            assert!(
                v["request_id"].is_string()
                    && v["duration_ms"].is_number()
                    && v["upstream_ms"].is_number()
            );
            assert!(v["bytes_in"].as_u64().unwrap() > 1000);
        }
    }
    assert_eq!(access, 1);
}

// ------------------------------------------------------------ upstream answers

#[test]
fn every_upstream_response_framing_is_passed_back() {
    let raw_up = |bytes: &[u8], close: bool| {
        Upstream::start(Behavior::Raw {
            bytes: bytes.to_vec(),
            close,
        })
    };
    // Answers larger than the client's first read (1 KiB): a long head, and
    // bodies of 300 KB sized and chunked, read over many growing reads.
    let big: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut sized = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n", big.len()).into_bytes();
    for i in 0..40 {
        sized.extend_from_slice(format!("X-Long-{i}: {}\r\n", "v".repeat(60)).as_bytes());
    }
    sized.extend_from_slice(b"\r\n");
    sized.extend_from_slice(&big);
    let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for part in big.chunks(7_000) {
        chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        chunked.extend_from_slice(part);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let cases: Vec<(&str, Upstream, u16, &[u8], bool)> = vec![
        ("large, long head", raw_up(&sized, false), 200, &big, true),
        ("large, chunked", raw_up(&chunked, false), 200, &big, true),
        (
            "chunked",
            raw_up(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nX-U: c\r\n\r\n4\r\n{\"a\"\r\n5;ext=1\r\n:true\r\n1\r\n}\r\n0\r\nX-Trailer: t\r\n\r\n", false),
            201,
            b"{\"a\":true}",
            true,
        ),
        (
            "chunked, named in another case",
            raw_up(b"HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", false),
            200,
            b"ok",
            true,
        ),
        ("read until close", raw_up(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close", true), 200, b"until close", false),
        ("interim 100 first", raw_up(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false), 200, b"ok", true),
        ("no content", raw_up(b"HTTP/1.1 204 No Content\r\n\r\n", false), 204, b"", true),
        ("connection close", raw_up(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", true), 200, b"ok", false),
        ("error status", raw_up(b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\nRetry-After: 5\r\n\r\nbusy", false), 503, b"busy", true),
    ];
    for (what, up, status, body, reuses) in cases {
        let gw = Gateway::start(&config_for(&format!("\"{}\"", up.url("/in")), "", ""));
        for _ in 0..3 {
            let r = gw.post("/webhooks/crm", &payload(0));
            assert_eq!(
                (r.status, r.body.as_slice()),
                (status, body),
                "{what}: {r:?}"
            );
            assert_eq!(r.header("transfer-encoding"), None, "{what}");
            if what == "large, long head" {
                assert_eq!(r.header("x-long-39"), Some("v".repeat(60).as_str()));
            }
        }
        let conns = up.connections.load(std::sync::atomic::Ordering::SeqCst);
        if reuses {
            assert_eq!(conns, 1, "{what}: keep-alive connection not reused");
        } else {
            assert_eq!(conns, 3, "{what}: a closed connection was reused");
        }
        if what == "error status" {
            let r = gw.post("/webhooks/crm", &payload(0));
            assert_eq!(r.header("retry-after"), Some("5"));
            let m = gw.metrics_text();
            assert!(
                m.contains(r#"hookgate_upstream_responses_total{route="crm",status="5xx"}"#),
                "{m}"
            );
        }
    }
}

#[test]
fn broken_upstream_responses_are_502() {
    let big = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
        5 * 1024 * 1024
    );
    for (what, bytes) in [
        (
            "bad chunk size",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "chunk without CRLF",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd0\r\n\r\n".to_vec(),
        ),
        (
            "conflicting lengths",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok".to_vec(),
        ),
        (
            "body cut short",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok".to_vec(),
        ),
        ("response too large", big.into_bytes()),
        (
            "protocol switch",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n".to_vec(),
        ),
        ("no status line", b"\r\n\r\n".to_vec()),
        (
            "status below 100",
            b"HTTP/1.1 000 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        ),
        // A size that would wrap the length arithmetic after a first chunk.
        (
            "chunk size near the top of usize",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\nffffffffffffffff\r\nx".to_vec(),
        ),
        (
            "chunk size with a sign",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+2\r\nok\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "chunk size line ending in a bare LF",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\nok\r\n0\r\n\r\n".to_vec(),
        ),
        // Transfer-Encoding other than exactly `chunked` (RFC 9112 §6.3; nginx
        // refuses these answers too): the body would reach the client undecoded,
        // and a look-alike must not be read as chunked.
        (
            "Transfer-Encoding and Content-Length",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "look-alike coding",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "other coding",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok".to_vec(),
        ),
        (
            "chunked after another coding",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "chunked twice",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec(),
        ),
    ] {
        let up = Upstream::start(Behavior::Raw { bytes, close: true });
        let gw = Gateway::start(&config_for(&format!("\"{}\"", up.url("/in")), "", ""));
        let r = gw.post("/webhooks/crm", &payload(0));
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (502, "upstream_unavailable"),
            "{what}"
        );
    }
}

#[test]
fn buffered_access_lines_wait_then_go_out_before_warnings_and_at_exit() {
    let up = Upstream::start(ok_answer());
    // Only access lines at info, so "draining" and "drained" are not logged and
    // the exit path's own flush is what writes the last lines. (And the
    // server's own lines: the harness reads the gateway's ports from "ready".)
    let dead = r#"
[[route]]
name = "dead"
path = "/webhooks/dead"
upstream = "http://127.0.0.1:1/in"
validation = "off"
timeout_ms = 1000
"#;
    let config = |route: &str, flush_ms: u32| {
        config_for(&upstream_cfg(&up, "/in"), route, "").replace(
            "[limits]",
            &format!("[log]\nlevel = \"warn,hookgate::access=info,hookgate::server=info\"\nbuffer_bytes = 65536\nflush_ms = {flush_ms}\n\n[limits]"),
        )
    };
    let mut gw = Gateway::start(&config(dead, 60_000));
    for _ in 0..3 {
        assert_eq!(gw.post("/webhooks/crm", &payload(0)).status, 200);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        gw.log().matches("hookgate::access").count(),
        0,
        "access lines wait in the buffer: {}",
        gw.log()
    );
    // A warning is written at once, after the access lines logged before it.
    let r = gw.post("/webhooks/dead", &payload(0));
    assert_eq!(r.status, 502);
    let log = gw.log();
    let warn_at = log
        .find("upstream unavailable")
        .expect("the warning is written at once");
    assert_eq!(log.matches("hookgate::access").count(), 3, "{log}");
    assert!(log.rfind("hookgate::access").unwrap() < warn_at, "{log}");
    assert!(!log.contains("outcome=upstream_unavailable"), "{log}");
    // The last line (the 502's) is written on the way out.
    gw.signal("TERM");
    assert!(gw.wait_exit(Duration::from_secs(10)).is_some());
    let log = gw.log();
    assert_eq!(log.matches("hookgate::access").count(), 4, "{log}");
    assert!(log.contains("outcome=upstream_unavailable"), "{log}");

    // With a short flush interval, a line is written without any other event.
    let gw = Gateway::start(&config("", 100));
    assert_eq!(gw.post("/webhooks/crm", &payload(0)).status, 200);
    assert!(
        wait_until(Duration::from_secs(5), || gw
            .log()
            .contains("outcome=forwarded")),
        "{}",
        gw.log()
    );

    // SIGINT (stop at once) writes the buffered lines too.
    let mut gw = Gateway::start(&config("", 60_000));
    assert_eq!(gw.post("/webhooks/crm", &payload(0)).status, 200);
    std::thread::sleep(Duration::from_millis(200));
    assert!(!gw.log().contains("hookgate::access"), "{}", gw.log());
    gw.signal("INT");
    assert!(gw.wait_exit(Duration::from_secs(10)).is_some());
    assert_eq!(
        gw.log().matches("outcome=forwarded").count(),
        1,
        "{}",
        gw.log()
    );
}

#[test]
fn log_level_from_config_and_rust_log() {
    let up = Upstream::start(ok_answer());
    // [log] level = "warn": no access lines. (The server's own lines at info:
    // the harness reads the gateway's ports from "ready".)
    let cfg = config_for(&upstream_cfg(&up, "/in"), "", "").replace(
        "[limits]",
        "[log]\nlevel = \"warn,hookgate::server=info\"\n\n[limits]",
    );
    let gw = Gateway::start(&cfg);
    assert_eq!(gw.post("/webhooks/crm", &payload(0)).status, 200);
    std::thread::sleep(Duration::from_millis(200));
    assert!(!gw.log().contains("hookgate::access"), "{}", gw.log());
    // RUST_LOG overrides the config.
    let gw = Gateway::start_with(&cfg, &[("RUST_LOG", "info")], "127.0.0.1");
    assert_eq!(gw.post("/webhooks/crm", &payload(0)).status, 200);
    assert!(
        wait_until(Duration::from_secs(2), || gw
            .log()
            .contains("hookgate::access")),
        "{}",
        gw.log()
    );
}

#[test]
fn a_port_taken_by_another_program_stops_the_start_with_its_address() {
    // Another program already listens on the public address: the gateway
    // names the address and exits at once, instead of calling itself ready.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let up = Upstream::start(ok_answer());
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("hookgate.toml");
    std::fs::write(
        &cfg_path,
        config_for(&upstream_cfg(&up, "/in"), "", "")
            .replace("{LISTEN}", &addr.to_string())
            .replace("{METRICS}", "127.0.0.1:0")
            .replace("{SCHEMA}", &schema_path()),
    )
    .unwrap();
    let started = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["run", "-c"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(10));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot set up listener {addr}")),
        "{err}"
    );
    assert!(!err.contains("ready;"), "{err}");
    assert_eq!(up.count(), 0);
    drop(taken);
}
