//! Observability end to end: the shipped Prometheus files pass promtool, the
//! real Prometheus server scrapes a running gateway and every PromQL expression
//! of the dashboard and of the alert rules returns data, the dashboard names
//! only metrics that exist, and /healthz and /readyz behave.

mod common;

use common::*;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn prometheus_available() -> bool {
    tools_present(
        &[("prometheus", "--version"), ("promtool", "--version")],
        "apt-get install prometheus",
    )
}

fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(project_root().join("conf/grafana/hookgate-dashboard.json"))
        .unwrap();
    serde_json::from_str(&text).expect("dashboard is JSON")
}

/// Every query of the dashboard, with Grafana's variables filled in.
fn dashboard_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in dashboard()["panels"].as_array().unwrap() {
        let title = p["title"].as_str().unwrap().to_string();
        for t in p["targets"].as_array().unwrap() {
            let e = t["expr"].as_str().unwrap();
            let e = e
                .replace("$__rate_interval", "1m")
                .replace("$job", "hookgate")
                .replace("$route", ".*");
            out.push((title.clone(), e));
        }
    }
    out
}

/// Every alert rule: name and expression.
fn alert_rules() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(project_root().join("conf/prometheus/hookgate-rules.yml")).unwrap();
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    let mut name = String::new();
    while let Some(l) = lines.next() {
        let t = l.trim();
        if let Some(n) = t.strip_prefix("- alert:") {
            name = n.trim().to_string();
        } else if let Some(e) = t.strip_prefix("expr:") {
            let e = e.trim();
            if e == "|" {
                let indent = lines
                    .peek()
                    .map(|l| l.len() - l.trim_start().len())
                    .unwrap_or(0);
                let mut expr = String::new();
                while let Some(n) = lines.peek() {
                    if n.trim().is_empty() || n.len() - n.trim_start().len() < indent {
                        break;
                    }
                    expr.push_str(n.trim());
                    expr.push(' ');
                    lines.next();
                }
                out.push((name.clone(), expr));
            } else {
                out.push((name.clone(), e.to_string()));
            }
        }
    }
    out
}

#[test]
fn dashboard_is_importable_and_names_real_metrics() {
    let d = dashboard();
    assert!(d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"));
    let panels = d["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for p in panels {
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("panel without targets: {p}"));
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            assert!(
                !t["expr"].as_str().unwrap_or("").is_empty(),
                "{}",
                p["title"]
            );
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}");
    }
    // Every metric the dashboard names exists on a live /metrics page.
    let up = Upstream::start(ok_answer());
    let spool = tempfile::tempdir().unwrap();
    let mut cfg = config_for(
        &format!("\"{}\"", up.url("/in")),
        "",
        &format!("[spool]\ndir = \"{}\"\n", spool.path().display()),
    )
    .replace("transcription = \"keep\"", "transcription = \"strip\"");
    cfg.push_str(&format!(
        "\n[[route]]\nname = \"queued\"\npath = \"/webhooks/queued\"\nupstream = \"{}\"\ndelivery = \"spool\"\n",
        up.url("/q")
    ));
    let gw = Gateway::start(&cfg);
    assert_eq!(gw.post("/webhooks/crm", &payload(0)).status, 200);
    assert_eq!(gw.post("/webhooks/queued", &payload(0)).status, 202);
    let page = gw.metrics_text();
    let mut names: Vec<String> = Vec::new();
    for (_, e) in dashboard_queries().into_iter().chain(alert_rules()) {
        for (i, _) in e.match_indices("hookgate_") {
            let n: String = e[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            names.push(n);
        }
    }
    names.sort();
    names.dedup();
    assert!(names.len() >= 9, "{names:?}");
    for n in names {
        assert!(
            page.contains(&format!("# TYPE {n} "))
                || page.contains(&format!("\n{n}{{"))
                || page.contains(&format!("\n{n} ")),
            "dashboard/rules name {n}, not on /metrics:\n{page}"
        );
    }
}

#[test]
fn promtool_accepts_the_shipped_files() {
    if !prometheus_available() {
        return;
    }
    let root = project_root();
    for args in [
        vec!["check", "config", "conf/prometheus/prometheus.yml"],
        vec!["check", "rules", "conf/prometheus/hookgate-rules.yml"],
        vec!["test", "rules", "tests/prometheus/rules_test.yml"],
    ] {
        let out = Command::new("promtool")
            .current_dir(&root)
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rules = project_root().join("conf/prometheus/hookgate-rules.yml");
        let cfg = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: hookgate\n    static_configs:\n      - targets: [\"{target}\"]\n",
            rules.display()
        );
        std::fs::write(dir.path().join("prometheus.yml"), cfg).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let p = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        assert!(
            wait_until(Duration::from_secs(30), || http_get(p.addr, "/-/ready")
                .map(|r| r.status == 200)
                .unwrap_or(false)),
            "prometheus did not become ready"
        );
        p
    }

    fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let q: String = expr
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let r = http_get(self.addr, &format!("/api/v1/query?query={q}")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&r.body)));
        assert_eq!(v["status"], "success", "{expr}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

#[test]
fn real_prometheus_sees_every_dashboard_and_alert_expression() {
    if !prometheus_available() {
        return;
    }
    let good = Upstream::start(ok_answer());
    let slow = Upstream::start(Behavior::Delay(Duration::from_millis(5600)));
    let dead = free_port();
    // Refuses every webhook for good (400): its spool route fills the dead letters.
    let refusing = Upstream::start(Behavior::Answer {
        status: 400,
        headers: vec![],
        body: vec![],
    });
    // The spool: 1 MiB budget, already holding a record accepted 20 minutes
    // ago (the backlog-age alert) and a damaged one (set aside at start).
    let spool = tempfile::tempdir().unwrap();
    let queue = spool.path().join("queue");
    std::fs::create_dir_all(&queue).unwrap();
    let old_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - 20 * 60 * 1000;
    let meta = hookgate::spool::record::Meta {
        route: "spooled".into(),
        accepted_ms: old_ms,
        key: "old:0".into(),
        call_id: Some("old".into()),
        headers: vec![],
    };
    std::fs::write(
        queue.join(format!("{old_ms:013}-000000.msg")),
        hookgate::spool::record::encode(&meta, &payload(0)),
    )
    .unwrap();
    std::fs::write(queue.join(format!("{old_ms:013}-000001.msg")), b"damaged").unwrap();
    let mut cfg = config_for(
        &format!("\"{}\"", good.url("/in")),
        "",
        &format!(
            "[spool]\ndir = \"{}\"\nmax_bytes = 1048576\n",
            spool.path().display()
        ),
    )
    .replace("transcription = \"keep\"", "transcription = \"strip\"")
    .replace(
        r#"allow = ["127.0.0.1/32", "::1/128"]"#,
        r#"allow = ["127.0.0.1/32"]"#,
    )
    .replace("timeout_ms = 1500", "timeout_ms = 8000");
    for (name, up, extra) in [
        ("report", good.url("/r"), "validation = \"report\"\n"),
        ("dead", format!("http://127.0.0.1:{dead}/x"), ""),
        ("slow", slow.url("/s"), "timeout_ms = 8000\n"),
        (
            "spooled",
            format!("http://127.0.0.1:{dead}/x"),
            "delivery = \"spool\"\n",
        ),
        ("given_up", refusing.url("/g"), "delivery = \"spool\"\n"),
    ] {
        cfg.push_str(&format!(
            "\n[[route]]\nname = \"{name}\"\npath = \"/webhooks/{name}\"\nupstream = \"{up}\"\nschema = \"{{SCHEMA}}\"\n{extra}"
        ));
    }
    let mut gw = Gateway::start(&cfg);
    let prom = Prometheus::start(gw.metrics);
    assert!(
        wait_until(Duration::from_secs(20), || !prom
            .query("up{job=\"hookgate\"} == 1")
            .is_empty()),
        "target never up"
    );

    // Spool: dead letters first, then fill the budget past 80 %.
    for i in 0..3 {
        let r = gw.post(
            "/webhooks/given_up",
            &payload_with_call_id(&format!("g{i}"), 0),
        );
        assert_eq!(r.status, 202);
    }
    assert!(wait_until(Duration::from_secs(10), || gw
        .metric("hookgate_spool_dead_letters{route=\"given_up\"}")
        == 3.0));
    let mut filled = 0;
    while gw
        .post(
            "/webhooks/spooled",
            &payload_with_call_id(&format!("f{filled}"), 200_000),
        )
        .status
        == 202
    {
        filled += 1;
        assert!(filled < 10, "the spool never filled");
    }
    let big = payload_with_call_id("f0", 200_000);

    // Slow requests first (they take ~5.6 s), in the background.
    let addr = gw.addr;
    let slow_clients: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || raw(addr, &post_bytes("/webhooks/slow", &payload(0), &[])))
        })
        .collect();
    // A mix for several scrapes: forwarded, rejected for every reason we can
    // cause, report-mode violations, upstream failures, accept-time drops.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        assert_eq!(gw.post("/webhooks/crm", &payload(0)).status, 200);
        assert_eq!(gw.post("/webhooks/crm", &payload(3000)).status, 200);
        assert_eq!(gw.post("/webhooks/crm", b"{nope").status, 400);
        assert_eq!(gw.post("/webhooks/crm", br#"{"version":"v1"}"#).status, 422);
        assert_eq!(gw.post("/webhooks/crm", br#"{"version":"v1"}"#).status, 422);
        assert_eq!(gw.post("/nowhere", b"{}").status, 404);
        assert_eq!(
            gw.post("/webhooks/report", br#"{"version":"v7"}"#).status,
            200
        );
        assert_eq!(gw.post("/webhooks/dead", &payload(0)).status, 502);
        // The spool is full: refused, except a repeat of one already taken.
        let r = gw.post("/webhooks/spooled", &payload_with_call_id("late", 200_000));
        assert_eq!(r.status, 503);
        assert_eq!(gw.post("/webhooks/spooled", &big).status, 202);
        // A peer outside the allow list (127.0.0.2), dropped at accept.
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&"127.0.0.2:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let _ = sock.connect_timeout(&addr.into(), Duration::from_secs(1));
        drop(TcpStream::from(sock));
        std::thread::sleep(Duration::from_millis(100));
    }
    for c in slow_clients {
        assert_eq!(c.join().unwrap().unwrap().status, 200);
    }

    let mut queries: Vec<(String, String)> = dashboard_queries();
    queries.extend(
        alert_rules()
            .into_iter()
            .filter(|(n, _)| n != "HookgateDown"),
    );
    let mut missing = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        missing.clear();
        for (what, q) in &queries {
            if prom.query(q).is_empty() {
                missing.push(format!("{what}: {q}"));
            }
        }
        if missing.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        missing.is_empty(),
        "expressions without data:\n{}",
        missing.join("\n")
    );

    // The gateway goes away: the "down" alert's expression turns true.
    let _ = gw.child.kill();
    let _ = gw.child.wait();
    let down = alert_rules()
        .into_iter()
        .find(|(n, _)| n == "HookgateDown")
        .unwrap()
        .1;
    assert!(
        wait_until(Duration::from_secs(20), || !prom.query(&down).is_empty()),
        "{down} never true"
    );
}

#[test]
fn health_and_readiness_on_the_metrics_listener_only() {
    let up = Upstream::start(ok_answer());
    // Room for a loaded machine: the request in flight takes 2 s, well inside
    // the route's timeout and the shutdown grace.
    let mut gw = Gateway::start(
        &config_for(&format!("\"{}\"", up.url("/in")), "", "")
            .replace("timeout_ms = 1500", "timeout_ms = 6000")
            .replace("shutdown_grace_ms = 3000", "shutdown_grace_ms = 8000"),
    );
    for p in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(http_get(gw.metrics, p).unwrap().status, 200, "{p}");
        // Never on the public listener.
        let r = http_get(gw.addr, p).unwrap();
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (404, "route_not_found"),
            "{p}"
        );
    }
    assert!(http_get(gw.metrics, "/metrics")
        .unwrap()
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    // Draining: /readyz 503 while a request is still in flight, /healthz still 200.
    up.set_behavior(Behavior::Delay(Duration::from_millis(2000)));
    let addr = gw.addr;
    let t = std::thread::spawn(move || raw(addr, &post_bytes("/webhooks/crm", &payload(0), &[])));
    assert!(wait_until(Duration::from_secs(3), || up.count() == 1));
    gw.signal("TERM");
    assert!(wait_until(Duration::from_secs(3), || http_get(
        gw.metrics, "/readyz"
    )
    .map(|r| r.status == 503)
    .unwrap_or(false)));
    assert_eq!(http_get(gw.metrics, "/healthz").unwrap().status, 200);
    assert_eq!(t.join().unwrap().unwrap().status, 200);
    assert!(gw.wait_exit(Duration::from_secs(10)).is_some());
}
