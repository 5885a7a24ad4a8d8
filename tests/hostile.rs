//! Attacks on the real gateway over raw TCP: shared-secret checks, request
//! smuggling and framing tricks, header abuse, slow clients, connection and
//! memory exhaustion, forged addresses. Every case asserts the answer (or the
//! closed connection) and that the recording upstream received nothing.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn cfg(up: &Upstream, extra_route: &str, extra_top: &str) -> String {
    config_for(&format!("\"{}\"", up.url("/in")), extra_route, extra_top)
}

/// After an answer the server must have closed: reading gives EOF (or reset),
/// not silence until the read times out.
fn assert_closed(s: &mut TcpStream, what: &str) {
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            panic!("{what}: connection left open (no EOF within 3 s)")
        }
        Err(_) => {}
        Ok(n) => panic!(
            "{what}: connection still open, got {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
    }
}

// ------------------------------------------------------------ shared secret

#[test]
fn shared_secret_is_required_rotatable_and_never_forwarded_or_logged() {
    let up = Upstream::start(ok_answer());
    let old = "old-secret-2f7c1e9a44d0";
    let new = "new-secret-93b1a07cc5e2";
    let top = r#"secret = { header = "X-Hookgate-Secret", value = "${HG_SECRET_NEW}", values = ["${HG_SECRET_OLD}"] }"#;
    let gw = Gateway::start_with(
        &cfg(&up, "", top),
        &[("HG_SECRET_NEW", new), ("HG_SECRET_OLD", old)],
        "127.0.0.1",
    );
    let body = payload(0);
    for (hdr, want) in [
        (None, 401),
        (Some("X-Hookgate-Secret: wrong-secret-xxxxxxxx"), 401),
        (Some("X-Hookgate-Secret: "), 401),
        (
            Some(&*format!("X-Hookgate-Secret: {}", &new[..new.len() - 1])),
            401,
        ),
        (Some(&*format!("X-Hookgate-Secret: {new}x")), 401),
        (Some(&*format!("X-Other: {new}")), 401),
        (Some(&*format!("X-Hookgate-Secret: {new}")), 200),
        (Some(&*format!("x-hookgate-secret: {old}")), 200),
    ] {
        let extra: Vec<&str> = hdr.into_iter().collect();
        let r = gw.send(&post_bytes("/webhooks/crm", &body, &extra));
        assert_eq!(r.status, want, "{hdr:?}");
        if want == 401 {
            assert_eq!(r.error_code(), "unauthorized");
        }
    }
    // Unknown paths ask for the secret too (nothing is revealed without it).
    assert_eq!(gw.post("/nothing-here", &body).status, 401);
    assert_eq!(up.count(), 2);
    for r in up.requests() {
        assert_eq!(
            r.header("x-hookgate-secret"),
            None,
            "the secret reached the upstream"
        );
        for (_, v) in &r.headers {
            assert!(!v.contains("secret-"), "secret value forwarded in a header");
        }
    }
    assert!(wait_until(Duration::from_secs(2), || gw
        .log()
        .matches("hookgate::access")
        .count()
        >= 9));
    let log = gw.log();
    assert!(
        !log.contains(new) && !log.contains(old) && !log.contains("wrong-secret"),
        "secret in the log"
    );
    let m = gw.metrics_text();
    assert!(
        !m.contains(new) && !m.contains(old) && !m.contains("wrong-secret"),
        "secret in the metrics"
    );
}

#[test]
fn per_route_secret_replaces_the_global_one() {
    let up = Upstream::start(ok_answer());
    let route = r#"secret = { header = "X-Route-Key", value = "route-key-0123456789" }"#;
    let top = r#"secret = { header = "X-Hookgate-Secret", value = "global-key-0123456789" }"#;
    let gw = Gateway::start(&cfg(&up, route, top));
    let body = payload(0);
    assert_eq!(
        gw.send(&post_bytes(
            "/webhooks/crm",
            &body,
            &["X-Hookgate-Secret: global-key-0123456789"]
        ))
        .status,
        401
    );
    assert_eq!(
        gw.send(&post_bytes(
            "/webhooks/crm",
            &body,
            &["X-Route-Key: route-key-0123456789"]
        ))
        .status,
        200
    );
    assert_eq!(up.requests()[0].header("x-route-key"), None);
    // A client moving to the route's secret may still send the global one:
    // neither header is forwarded.
    let r = gw.send(&post_bytes(
        "/webhooks/crm",
        &body,
        &[
            "X-Route-Key: route-key-0123456789",
            "X-Hookgate-Secret: global-key-0123456789",
        ],
    ));
    assert_eq!(r.status, 200);
    let got = &up.requests()[1];
    assert_eq!(got.header("x-route-key"), None);
    assert_eq!(got.header("x-hookgate-secret"), None);
    assert!(
        !got.headers
            .iter()
            .any(|(_, v)| v.contains("key-0123456789")),
        "a secret value reached the upstream: {:?}",
        got.headers
    );
}

// ------------------------------------------------------------ smuggling and framing

#[test]
fn smuggling_and_framing_tricks_are_refused_and_close_the_connection() {
    let up = Upstream::start(ok_answer());
    let gw = Gateway::start(&cfg(&up, "", ""));
    let body = String::from_utf8(payload(0)).unwrap();
    let n = body.len();
    let head = "POST /webhooks/crm HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n";
    let cases: Vec<(&str, String)> = vec![
        ("two different Content-Length", format!("{head}Content-Length: {n}\r\nContent-Length: {}\r\n\r\n{body}", n + 1)),
        ("two equal Content-Length", format!("{head}Content-Length: {n}\r\nContent-Length: {n}\r\n\r\n{body}")),
        ("Content-Length list", format!("{head}Content-Length: {n}, {n}\r\n\r\n{body}")),
        ("Content-Length not a number", format!("{head}Content-Length: 1e3\r\n\r\n{body}")),
        ("Content-Length negative", format!("{head}Content-Length: -1\r\n\r\n{body}")),
        ("CL and TE", format!("{head}Content-Length: {n}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n", n)),
        ("TE and CL", format!("{head}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n", n)),
        ("stacked codings", format!("{head}Transfer-Encoding: gzip, chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n", n)),
        ("chunked twice", format!("{head}Transfer-Encoding: chunked, chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n", n)),
        ("unknown coding", format!("{head}Transfer-Encoding: identity\r\n\r\n{body}")),
        ("chunked not last", format!("{head}Transfer-Encoding: chunked, identity\r\n\r\n{body}")),
        ("two TE headers", format!("{head}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n", n)),
        ("TE with space trick", format!("{head}Transfer-Encoding : chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n", n)),
        ("malformed chunk size", format!("{head}Transfer-Encoding: chunked\r\n\r\nzz\r\n{body}\r\n0\r\n\r\n")),
        ("chunk size overflow", format!("{head}Transfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\n{body}\r\n0\r\n\r\n")),
        ("chunk size with sign", format!("{head}Transfer-Encoding: chunked\r\n\r\n-{:x}\r\n{body}\r\n0\r\n\r\n", n)),
        ("obsolete line folding", format!("{head}X-Folded: a\r\n b\r\nContent-Length: {n}\r\n\r\n{body}")),
        ("bare LF line ends", format!("POST /webhooks/crm HTTP/1.1\nHost: x\nContent-Type: application/json\nContent-Length: {n}\n\n{body}")),
        ("bare CR", format!("{head}X-A: 1\rX-B: 2\r\nContent-Length: {n}\r\n\r\n{body}")),
        ("HTTP/1.0 chunked", format!("POST /webhooks/crm HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n", n)),
        ("space in the request line", format!("POST /webhooks/crm HTTP/1.1 \r\nHost: x\r\nContent-Length: {n}\r\n\r\n{body}")),
        ("header without a colon", format!("{head}Garbage\r\nContent-Length: {n}\r\n\r\n{body}")),
    ];
    for (what, req) in &cases {
        let mut s = connect(gw.addr);
        s.write_all(req.as_bytes()).unwrap();
        match read_response(&mut s) {
            Ok(r) => {
                assert_eq!(r.status, 400, "{what}: {r:?}");
                assert_eq!(r.error_code(), "bad_request", "{what}");
                assert_eq!(r.header("connection"), Some("close"), "{what}");
            }
            Err(e) => panic!("{what}: no answer ({e})"),
        }
        assert_closed(&mut s, what);
    }
    assert_eq!(up.count(), 0, "a refused request reached the upstream");
    // The gateway still works.
    assert_eq!(gw.post("/webhooks/crm", &payload(0)).status, 200);
}

#[test]
fn a_body_on_another_method_is_refused_and_closes_the_connection() {
    let up = Upstream::start(ok_answer());
    let gw = Gateway::start(&cfg(&up, "", ""));
    let body = String::from_utf8(payload(0)).unwrap();
    let n = body.len();
    for (method, path, status, code) in [
        ("GET", "/webhooks/crm", 405, "method_not_allowed"),
        ("PUT", "/webhooks/crm", 405, "method_not_allowed"),
        ("DELETE", "/webhooks/crm", 405, "method_not_allowed"),
        ("GET", "/elsewhere", 404, "route_not_found"),
    ] {
        for framing in [
            format!("Content-Length: {n}\r\n\r\n{body}"),
            format!("Transfer-Encoding: chunked\r\n\r\n{n:x}\r\n{body}\r\n0\r\n\r\n"),
        ] {
            // A second request hidden in the body must never run.
            let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{framing}");
            let mut s = connect(gw.addr);
            s.write_all(req.as_bytes()).unwrap();
            let r = read_response(&mut s).unwrap();
            assert_eq!(
                (r.status, r.error_code().as_str()),
                (status, code),
                "{method} {path}"
            );
            assert_eq!(r.header("connection"), Some("close"), "{method} {path}");
            assert_closed(&mut s, method);
        }
    }
    assert_eq!(up.count(), 0);
}

#[test]
fn a_request_smuggled_behind_a_body_is_never_processed() {
    let up = Upstream::start(ok_answer());
    let gw = Gateway::start(&cfg(&up, "", ""));
    let body = payload(0);
    let mut req = post_bytes("/webhooks/crm", &body, &[]);
    // Bytes after the declared body: a second request the client "pipelines".
    req.extend_from_slice(&post_bytes("/webhooks/crm", b"{\"smuggled\":true}", &[]));
    let mut s = connect(gw.addr);
    s.write_all(&req).unwrap();
    let r = read_response(&mut s).unwrap();
    assert_eq!(r.status, 200);
    // The extra bytes are not taken as a request: the connection is closed.
    assert_closed(&mut s, "smuggled request");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(up.count(), 1);
    assert!(up.requests()[0].body == body);
}

#[test]
fn empty_lines_before_the_request_line_are_ignored() {
    let up = Upstream::start(ok_answer());
    let gw = Gateway::start(&cfg(&up, "", ""));
    let body = payload(0);
    let mut req = b"\r\n\r\n".to_vec();
    req.extend_from_slice(&post_bytes("/webhooks/crm", &body, &[]));
    let r = raw(gw.addr, &req).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(up.count(), 1);
    assert!(up.requests()[0].body == body);
}

#[test]
fn header_limits_are_431() {
    let up = Upstream::start(ok_answer());
    let gw = Gateway::start(&cfg(&up, "", "").replace(
        "[limits]",
        "[limits]\nmax_header_bytes = 4096\nmax_headers = 32",
    ));
    let body = payload(0);
    let many: Vec<String> = (0..40).map(|i| format!("X-H{i}: v")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let r = gw.send(&post_bytes("/webhooks/crm", &body, &many));
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (431, "header_too_large")
    );
    let big = format!("X-Big: {}", "a".repeat(5000));
    let r = gw.send(&post_bytes("/webhooks/crm", &body, &[&big]));
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (431, "header_too_large")
    );
    // Past pingora's own ceiling (256 fields): still an answer, not a silent close.
    let lots: Vec<String> = (0..300).map(|i| format!("X-H{i}: v")).collect();
    let lots: Vec<&str> = lots.iter().map(String::as_str).collect();
    let r = gw.send(&post_bytes("/webhooks/crm", &body, &lots));
    assert_eq!(r.status, 431, "{r:?}");
    assert_eq!(up.count(), 0);
    let m = gw.metrics_text();
    assert!(
        m.contains(r#"hookgate_requests_total{outcome="header_too_large",route="none"}"#),
        "{m}"
    );
}

// ------------------------------------------------------------ slow and greedy clients

#[test]
fn slow_clients_are_cut_off_while_normal_clients_get_through() {
    let up = Upstream::start(ok_answer());
    let cfg = cfg(&up, "", "")
        .replace("[server]", "[server]\nheader_timeout_ms = 1000")
        .replace("body_timeout_ms = 2000", "body_timeout_ms = 1000");
    let gw = Gateway::start(&cfg);
    // 300 clients trickle their headers, 100 trickle their bodies.
    let mut slow = Vec::new();
    for i in 0..400 {
        let mut s = connect(gw.addr);
        if i < 300 {
            s.write_all(b"POST /webhooks/crm HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
        } else {
            s.write_all(b"POST /webhooks/crm HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{").unwrap();
        }
        slow.push(s);
    }
    let started = Instant::now();
    // Keep trickling a byte now and then while normal webhooks go through.
    let mut ok = 0;
    let mut worst = Duration::ZERO;
    while started.elapsed() < Duration::from_millis(2500) {
        for (i, s) in slow.iter_mut().enumerate() {
            let _ = s.write_all(if i < 300 { b"X" } else { b" " });
        }
        let t = Instant::now();
        let r = gw.post("/webhooks/crm", &payload(0));
        worst = worst.max(t.elapsed());
        assert_eq!(r.status, 200);
        ok += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ok >= 10, "only {ok} normal requests in 2.5 s");
    assert!(
        worst < Duration::from_secs(1),
        "a normal request took {worst:?}"
    );
    // By now every slow client has been cut off by the header or body timeout:
    // each read ends (an answer, the end, or a reset), none times out.
    let mut closed = 0;
    let mut got_408 = 0;
    for s in slow.iter_mut() {
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Ok(0) | Err(_) => closed += 1,
            Ok(n) => {
                if String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408") {
                    got_408 += 1;
                }
                closed += 1;
            }
        }
    }
    assert_eq!(closed, 400, "slow connections still open");
    assert!(
        got_408 >= 90,
        "slow bodies should get 408 body_timeout, got {got_408}"
    );
    assert_eq!(
        up.count(),
        ok,
        "only the normal requests reached the upstream"
    );
}

#[test]
fn connection_cap_closes_extra_connections_at_once() {
    let up = Upstream::start(ok_answer());
    let cfg = cfg(&up, "", "").replace(
        "[server]",
        "[server]\nmax_connections = 20\nheader_timeout_ms = 4000",
    );
    let gw = Gateway::start(&cfg);
    let mut idle: Vec<TcpStream> = (0..20).map(|_| connect(gw.addr)).collect();
    for s in &mut idle {
        s.write_all(b"POST /webhooks/crm HTTP/1.1\r\n").unwrap();
    }
    // Every idle connection holds its place before the extra one comes.
    assert!(wait_until(Duration::from_secs(5), || gw
        .metric("hookgate_connections_open")
        == 20.0));
    let mut extra = connect(gw.addr);
    let _ = extra.write_all(&post_bytes("/webhooks/crm", &payload(0), &[]));
    assert_closed(&mut extra, "connection over the cap");
    assert!(gw.metric("hookgate_connections_over_limit_total") >= 1.0);
    assert_eq!(gw.metric("hookgate_connections_open"), 20.0);
    // Once the idle ones time out, service resumes.
    assert!(wait_until(Duration::from_secs(8), || gw
        .metric("hookgate_connections_open")
        == 0.0));
    assert_eq!(gw.post("/webhooks/crm", &payload(0)).status, 200);
    drop(idle);
}

/// A memory figure of a process from /proc (VmHWM: peak, VmRSS: now), in KiB.
fn proc_status_kib(pid: i32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn an_exhausted_body_budget_answers_503_before_100_continue() {
    let up = Upstream::start(ok_answer());
    let cfg = cfg(&up, "", "").replace(
        "[limits]\nmax_body_bytes = 1048576",
        "[limits]\nmax_body_bytes = 1048576\nmax_inflight_body_bytes = 1048576",
    );
    assert!(cfg.contains("max_inflight_body_bytes = 1048576"), "{cfg}");
    let gw = Gateway::start(&cfg);
    // A client that declares the whole budget and sends its body slowly.
    let mut holder = connect(gw.addr);
    holder
        .write_all(b"POST /webhooks/crm HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n{")
        .unwrap();
    // Its head is read (so its reservation made) once it is in flight.
    assert!(wait_until(Duration::from_secs(10), || gw
        .metric("hookgate_requests_in_flight")
        == 1.0));
    std::thread::sleep(Duration::from_millis(50));
    // A second client asks before uploading: it is refused without an
    // invitation to send its body.
    let mut s = connect(gw.addr);
    s.write_all(b"POST /webhooks/crm HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 12];
    s.read_exact(&mut first).unwrap();
    assert_eq!(
        &first,
        b"HTTP/1.1 503",
        "{}",
        String::from_utf8_lossy(&first)
    );
    // It closes: a body the client may still send unasked is never read as a
    // request (and is not waited for).
    let mut rest = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.read_to_end(&mut rest).expect("closed, not left open");
    drop(holder);
    assert_eq!(up.count(), 0);
}

#[test]
fn memory_for_bodies_in_flight_is_bounded() {
    let up = Upstream::start(Behavior::Delay(Duration::from_millis(300)));
    let budget_mib = 8;
    let cfg = cfg(&up, "", "").replace(
        "[limits]",
        &format!(
            "[limits]\nmax_inflight_body_bytes = {}",
            budget_mib * 1024 * 1024
        ),
    );
    let gw = Gateway::start(&cfg);
    // Warm up (allocator arenas, pools), then take the baseline.
    for _ in 0..3 {
        assert_eq!(gw.post("/webhooks/crm", &payload(900 * 1024)).status, 200);
    }
    let base = proc_status_kib(gw.pid(), "VmRSS");
    let body = payload(1024 * 1024);
    let addr = gw.addr;
    let clients: Vec<_> = (0..64)
        .map(|_| {
            let req = post_bytes("/webhooks/crm", &body, &[]);
            std::thread::spawn(move || raw(addr, &req).map(|r| r.status))
        })
        .collect();
    let statuses: Vec<u16> = clients
        .into_iter()
        .map(|c| c.join().unwrap().unwrap_or(0))
        .collect();
    let peak = proc_status_kib(gw.pid(), "VmHWM");
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let overloaded = statuses.iter().filter(|s| **s == 503).count();
    assert_eq!(ok + overloaded, 64, "{statuses:?}");
    assert!(ok >= 8, "{statuses:?}");
    assert!(
        overloaded > 0,
        "64 concurrent 1 MiB bodies must exceed an 8 MiB budget"
    );
    let grown_mib = (peak.saturating_sub(base)) as f64 / 1024.0;
    eprintln!(
        "memory: baseline RSS {:.1} MiB, peak {:.1} MiB, growth {:.1} MiB for a {budget_mib} MiB budget; {ok} accepted, {overloaded} got 503",
        base as f64 / 1024.0,
        peak as f64 / 1024.0,
        grown_mib
    );
    // Body bytes are held twice at most (read buffer, upstream write) plus
    // socket buffers and allocator slack: the stated overhead is 3x budget + 16 MiB.
    assert!(
        grown_mib < (3 * budget_mib + 16) as f64,
        "RSS grew {grown_mib:.1} MiB"
    );
    let m = gw.metrics_text();
    assert!(m.contains(r#"outcome="overloaded""#), "{m}");
}

// ------------------------------------------------------------ addresses

#[test]
fn forwarded_for_entries_in_every_spelling() {
    let up = Upstream::start(ok_answer());
    let cfg = cfg(&up, "", r#"trusted_proxies = ["127.0.0.1/32"]"#).replace(
        r#"allow = ["127.0.0.1/32", "::1/128"]"#,
        r#"allow = ["2001:db8::1/128", "fe80::1/128", "198.51.100.7/32"]"#,
    );
    let gw = Gateway::start(&cfg);
    let body = payload(0);
    for (xff, want) in [
        ("[2001:db8::1]:443", 200),
        ("2001:db8::1", 200),
        ("fe80::1%eth0", 200),
        ("198.51.100.7:51234", 200),
        ("\"[2001:db8::1]\"", 200),
        ("::ffff:198.51.100.7", 200),
        ("198.51.100.7, 203.0.113.1", 403),
        ("198.51.100.7,,", 200),
        ("unknown", 403),
        ("198.51.100.7 203.0.113.1", 403),
        ("[2001:db8::1", 403),
        ("2001:db8::1]:443", 403),
        ("198.51.100.7:99999", 403),
        ("_hidden", 403),
        ("", 403),
    ] {
        let line = format!("X-Forwarded-For: {xff}");
        let r = gw.send(&post_bytes("/webhooks/crm", &body, &[&line]));
        assert_eq!(r.status, want, "X-Forwarded-For: {xff:?}");
    }
}
