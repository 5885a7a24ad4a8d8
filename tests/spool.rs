//! The durable spool against the real binary and a real upstream: a dead
//! upstream that comes back, proxy_or_spool, poisoned messages and dead letters,
//! duplicate suppression, kill -9 at random moments, damaged records, a full
//! disk, and the operator commands.

mod common;

use common::*;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const ROUTE: &str = "/webhooks/crm";

/// A spooling one-route config: transcripts stripped, a token set on the way.
fn spool_config(upstream: &str, spool_dir: &Path, delivery: &str, redelivery: &str) -> String {
    spool_config_with(upstream, spool_dir, delivery, redelivery, "")
}

fn spool_config_with(
    upstream: &str,
    spool_dir: &Path,
    delivery: &str,
    redelivery: &str,
    spool_extra: &str,
) -> String {
    format!(
        r#"
[server]
listen = ["{{LISTEN}}"]
threads = 2
shutdown_grace_ms = 2000

[metrics]
listen = "{{METRICS}}"

[access]
allow = ["127.0.0.1/32", "::1/128"]

[limits]
max_body_bytes = 1048576
body_timeout_ms = 2000

[spool]
dir = "{dir}"
{spool_extra}

[[route]]
name = "crm"
path = "{ROUTE}"
upstream = "{upstream}"
schema = "{{SCHEMA}}"
validation = "enforce"
transcription = "strip"
timeout_ms = 1500
delivery = "{delivery}"
[route.headers]
set = {{ "X-Token" = "t0ken-from-config" }}
[route.redelivery]
backoff_initial_ms = 50
backoff_max_ms = 200
{redelivery}
"#,
        dir = spool_dir.display()
    )
}

/// The sample payload with its own call id.
fn webhook(call_id: &str) -> Vec<u8> {
    payload_with_call_id(call_id, 0)
}

/// What the upstream must receive for `sent`: the same document without the
/// transcription.
fn stripped(sent: &[u8]) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_slice(sent).unwrap();
    v["assist"].as_object_mut().unwrap().remove("transcription");
    v
}

/// The idempotency key, computed independently: call id, ':', first 16 bytes
/// of the body's SHA-256 in hex.
fn expected_key(call_id: &str, body: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, body);
    let hex: String = d.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{call_id}:{hex}")
}

fn call_id_of(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    v["call"]["id"].as_str().unwrap().to_string()
}

fn status_of(r: &Response) -> String {
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    v["status"].as_str().unwrap_or("").to_string()
}

fn spool_cmd(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .arg("spool")
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).to_string();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn msgs_in(dir: &Path) -> usize {
    files_in(dir).iter().filter(|f| f.ends_with(".msg")).count()
}

/// An upstream answer with only a status.
fn status_only(status: u16) -> Behavior {
    Behavior::Answer {
        status,
        headers: vec![],
        body: vec![],
    }
}

/// Whether a metric series reaches `value` within `secs` seconds.
fn settles(gw: &Gateway, series: &str, value: f64, secs: u64) -> bool {
    wait_until(Duration::from_secs(secs), || gw.metric(series) == value)
}

fn reserved_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

fn assert_private(text: &str) {
    for secret in [
        "+4921161234567",
        "+4930987654321",
        "delayed order",
        "calling about my order",
        "t0ken-from-config",
    ] {
        assert!(!text.contains(secret), "{secret:?} leaked into:\n{text}");
    }
}

#[test]
fn spooled_webhooks_survive_a_dead_upstream_and_arrive_in_order() {
    let spool = tempfile::tempdir().unwrap();
    let up_addr = reserved_addr();
    let url = format!("http://{up_addr}/in");
    let gw = Gateway::start(&spool_config(&url, spool.path(), "spool", ""));

    let mut sent = Vec::new();
    for i in 0..30 {
        let body = webhook(&format!("call-{i:03}"));
        let t0 = Instant::now();
        let r = gw.post(ROUTE, &body);
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(status_of(&r), "spooled");
        assert!(t0.elapsed() < Duration::from_secs(2));
        sent.push(body);
    }
    assert_eq!(gw.metric("hookgate_spool_messages{route=\"crm\"}"), 30.0);
    assert!(wait_until(Duration::from_secs(2), || gw.metric(
        "hookgate_requests_total{outcome=\"spooled\",route=\"crm\"}"
    ) == 30.0));
    assert!(wait_until(Duration::from_secs(5), || gw.metric(
        "hookgate_spool_deliveries_total{result=\"retry\",route=\"crm\"}"
    ) >= 2.0));
    assert!(gw.metric("hookgate_spool_oldest_age_seconds{route=\"crm\"}") > 0.0);
    assert!(gw.metric("hookgate_spool_bytes") > 0.0);
    assert_eq!(msgs_in(&spool.path().join("queue")), 30);
    // What is on disk: the cleaned body, never the route's token or the transcript.
    for f in files_in(&spool.path().join("queue"))
        .into_iter()
        .filter(|f| f.ends_with(".msg"))
    {
        let bytes = std::fs::read(spool.path().join("queue").join(&f)).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("t0ken-from-config"), "{f}");
        assert!(!text.contains("calling about my order"), "{f}");
        assert!(text.contains("call-0"), "{f} is not a record of ours");
    }

    // The operator's view: ids, ages, attempts, errors; no personal data.
    let (ok, list) = spool_cmd(spool.path(), &["list"]);
    assert!(ok, "{list}");
    assert!(list.contains("30 queued, 0 dead, 0 damaged"), "{list}");
    assert!(list.contains("not connected: ConnectRefused"), "{list}");
    assert_private(&list);
    // Nothing about the payload in the log either.
    assert_private(&gw.log());

    // The upstream comes up: everything arrives, in order, as accepted.
    let up = Upstream::start_on(up_addr, ok_answer());
    assert!(
        wait_until(Duration::from_secs(15), || up.count() >= 30),
        "only {} arrived\n{}",
        up.count(),
        gw.log()
    );
    thread::sleep(Duration::from_millis(300));
    let got = up.requests();
    assert_eq!(got.len(), 30, "a message was delivered twice");
    for (r, body) in got.iter().zip(&sent) {
        let call = call_id_of(body);
        assert_eq!(call_id_of(&r.body), call, "out of order");
        assert_eq!(r.path, "/in");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v, stripped(body));
        assert_eq!(
            r.header("content-length").unwrap(),
            r.body.len().to_string()
        );
        assert_eq!(
            r.header("idempotency-key").unwrap(),
            expected_key(&call, &r.body)
        );
        assert_eq!(r.header("x-token"), Some("t0ken-from-config"));
        assert_eq!(r.header("x-forwarded-for"), Some("127.0.0.1"));
    }
    assert!(settles(
        &gw,
        "hookgate_spool_messages{route=\"crm\"}",
        0.0,
        3
    ));
    // The delivered counter rises just after the gauge falls (worker.rs).
    assert!(settles(
        &gw,
        "hookgate_spool_deliveries_total{result=\"delivered\",route=\"crm\"}",
        30.0,
        3
    ));
    assert_eq!(msgs_in(&spool.path().join("queue")), 0);
    assert!(settles(&gw, "hookgate_spool_bytes", 0.0, 3));
}

#[test]
fn proxy_or_spool_answers_from_the_upstream_when_it_can_and_spools_when_it_cannot() {
    let spool = tempfile::tempdir().unwrap();
    let up = Upstream::start(Behavior::Answer {
        status: 201,
        headers: vec![("X-Upstream".into(), "yes".into())],
        body: b"{\"created\":true}".to_vec(),
    });
    let cfg = spool_config(
        &up.url("/in"),
        spool.path(),
        "proxy_or_spool",
        "first_try_ms = 1000",
    );
    let gw = Gateway::start(&cfg);

    // Healthy: the upstream's own answer, with the idempotency key sent along.
    let a = webhook("pos-a");
    let r = gw.post(ROUTE, &a);
    assert_eq!(r.status, 201);
    assert_eq!(r.body, b"{\"created\":true}");
    assert_eq!(r.header("x-upstream"), Some("yes"));
    let first = up.requests();
    assert_eq!(first.len(), 1);
    assert_eq!(
        first[0].header("idempotency-key").unwrap(),
        expected_key("pos-a", &first[0].body)
    );

    // A permanent refusal is passed back, not spooled.
    up.set_behavior(Behavior::Answer {
        status: 400,
        headers: vec![],
        body: b"{\"no\":1}".to_vec(),
    });
    let r = gw.post(ROUTE, &webhook("pos-b"));
    assert_eq!(r.status, 400);
    assert_eq!(gw.metric("hookgate_spool_messages{route=\"crm\"}"), 0.0);
    // Refused for good is not "accepted": the same webhook again is tried again.
    assert_eq!(gw.post(ROUTE, &webhook("pos-b")).status, 400);
    let tries = up
        .requests()
        .iter()
        .filter(|r| call_id_of(&r.body) == "pos-b")
        .count();
    assert_eq!(tries, 2);

    // Too slow for the first try: 202 within the budget; delivered again
    // later (the slow first try had reached the upstream).
    up.set_behavior(Behavior::Delay(Duration::from_secs(2)));
    let t0 = Instant::now();
    let r = gw.post(ROUTE, &webhook("pos-d"));
    assert_eq!(r.status, 202);
    assert_eq!(status_of(&r), "spooled");
    assert!(
        t0.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t0.elapsed()
    );
    up.set_behavior(ok_answer());
    let copies = |id: &str| {
        up.requests()
            .iter()
            .filter(|r| call_id_of(&r.body) == id)
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(10), || copies("pos-d") >= 2),
        "{}",
        gw.log()
    );
    assert!(settles(
        &gw,
        "hookgate_spool_messages{route=\"crm\"}",
        0.0,
        3
    ));

    // 503: spooled, 202, delivered once the upstream is well again.
    up.set_behavior(status_only(503));
    let r = gw.post(ROUTE, &webhook("pos-c"));
    assert_eq!(r.status, 202);
    assert_eq!(status_of(&r), "spooled");
    up.set_behavior(ok_answer());
    assert!(
        wait_until(Duration::from_secs(10), || copies("pos-c") >= 2),
        "{}",
        gw.log()
    );
    // Every copy of one webhook carries the same key.
    for call in ["pos-c", "pos-d"] {
        let keys: Vec<String> = up
            .requests()
            .iter()
            .filter(|r| call_id_of(&r.body) == call)
            .map(|r| r.header("idempotency-key").unwrap().to_string())
            .collect();
        assert!(keys.len() >= 2);
        assert!(keys.iter().all(|k| k == &keys[0]), "{keys:?}");
    }
    assert!(settles(
        &gw,
        "hookgate_spool_messages{route=\"crm\"}",
        0.0,
        3
    ));
    // Request counters are bumped after the answer is written: wait for them.
    assert!(
        settles(
            &gw,
            "hookgate_requests_total{outcome=\"forwarded\",route=\"crm\"}",
            3.0,
            3
        ),
        "pos-a once, pos-b twice"
    );
    assert!(settles(
        &gw,
        "hookgate_requests_total{outcome=\"spooled\",route=\"crm\"}",
        2.0,
        3
    ));
}

#[test]
fn a_poisoned_message_does_not_block_the_rest_and_ends_in_the_dead_letters() {
    let spool = tempfile::tempdir().unwrap();
    let up = Upstream::start(Behavior::FailWhenContains {
        needles: vec![b"poison-500".to_vec(), b"poison-400".to_vec()],
        status: 500,
    });
    let cfg = spool_config(&up.url("/in"), spool.path(), "spool", "max_attempts = 3");
    let gw = Gateway::start(&cfg);
    for id in ["m-1", "poison-500", "m-2", "m-3"] {
        assert_eq!(gw.post(ROUTE, &webhook(id)).status, 202);
    }
    // m-3 may be delivered after the poisoned message's last attempt, so after
    // the dead letter is counted: wait for both, then check the order.
    assert!(
        wait_until(Duration::from_secs(10), || gw
            .metric("hookgate_spool_dead_letters{route=\"crm\"}")
            == 1.0
            && up.requests().iter().any(|r| call_id_of(&r.body) == "m-3")),
        "{}",
        gw.log()
    );
    let got: Vec<String> = up.requests().iter().map(|r| call_id_of(&r.body)).collect();
    let good: Vec<&String> = got.iter().filter(|i| i.starts_with("m-")).collect();
    assert_eq!(good, ["m-1", "m-2", "m-3"], "{got:?}");
    assert_eq!(got.iter().filter(|i| *i == "poison-500").count(), 3);
    assert!(settles(
        &gw,
        "hookgate_spool_deliveries_total{result=\"dead_lettered\",route=\"crm\"}",
        1.0,
        3
    ));

    // A permanent refusal goes to the dead letters at the first answer.
    up.set_behavior(Behavior::FailWhenContains {
        needles: vec![b"poison-400".to_vec()],
        status: 400,
    });
    assert_eq!(gw.post(ROUTE, &webhook("poison-400")).status, 202);
    assert!(settles(
        &gw,
        "hookgate_spool_dead_letters{route=\"crm\"}",
        2.0,
        5
    ));
    let n400 = up
        .requests()
        .iter()
        .filter(|r| call_id_of(&r.body) == "poison-400")
        .count();
    assert_eq!(n400, 1);

    let (ok, list) = spool_cmd(spool.path(), &["list"]);
    assert!(ok, "{list}");
    assert!(list.contains("0 queued, 2 dead, 0 damaged"), "{list}");
    assert!(list.contains("HTTP 500"), "{list}");
    assert!(list.contains("HTTP 400 (permanent)"), "{list}");
    assert_private(&list);
    let dead_id = list
        .lines()
        .find(|l| l.contains("HTTP 400"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let (ok, show) = spool_cmd(spool.path(), &["show", &dead_id]);
    assert!(ok, "{show}");
    assert!(show.contains("call id:     poison-400"), "{show}");
    assert!(show.contains("attempts:    1"), "{show}");
    assert_private(&show);
    let (ok, body) = spool_cmd(spool.path(), &["show", &dead_id, "--body"]);
    assert!(
        ok && body.contains("+4921161234567"),
        "--body prints the body"
    );
    let (ok, e) = spool_cmd(spool.path(), &["show", "../../etc/passwd"]);
    assert!(!ok && e.contains("not a message id"), "{e}");

    // Fixed upstream: the operator retries the dead letters; both arrive.
    up.set_behavior(ok_answer());
    let before = up.count();
    let (ok, out) = spool_cmd(spool.path(), &["retry", "--all-dead"]);
    assert!(ok && out.matches("queued again").count() == 2, "{out}");
    assert!(
        wait_until(Duration::from_secs(5), || up.count() == before + 2),
        "{}",
        gw.log()
    );
    assert!(settles(
        &gw,
        "hookgate_spool_dead_letters{route=\"crm\"}",
        0.0,
        3
    ));

    // drop: a dead letter removed for good.
    up.set_behavior(status_only(422));
    assert_eq!(gw.post(ROUTE, &webhook("to-drop")).status, 202);
    assert!(settles(
        &gw,
        "hookgate_spool_dead_letters{route=\"crm\"}",
        1.0,
        5
    ));
    // An unknown id among those given: nothing is dropped.
    let (_, list) = spool_cmd(spool.path(), &["list"]);
    let id = list
        .lines()
        .find(|l| l.contains("HTTP 422"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no dead letter listed: {list}"))
        .to_string();
    let (ok, e) = spool_cmd(spool.path(), &["drop", &id, "0000000000001-000000"]);
    assert!(!ok, "{e}");
    let (_, list) = spool_cmd(spool.path(), &["list"]);
    assert!(list.contains(&id), "a wrong id dropped the others: {list}");
    let (ok, out) = spool_cmd(spool.path(), &["drop", "--all-dead"]);
    assert!(ok && out.contains("dropped from dead"), "{out}");
    assert!(settles(
        &gw,
        "hookgate_spool_dead_letters{route=\"crm\"}",
        0.0,
        3
    ));
    assert!(settles(&gw, "hookgate_spool_bytes", 0.0, 3));
}

#[test]
fn duplicates_within_the_window_are_accepted_once() {
    let spool = tempfile::tempdir().unwrap();
    let up = Upstream::start(ok_answer());
    let gw = Gateway::start(&spool_config(&up.url("/in"), spool.path(), "spool", ""));
    let body = webhook("dup-1");
    let r1 = gw.post(ROUTE, &body);
    let r2 = gw.post(ROUTE, &body);
    assert_eq!((r1.status, status_of(&r1)), (202, "spooled".to_string()));
    assert_eq!((r2.status, status_of(&r2)), (202, "duplicate".to_string()));
    // Same call, other content: a different webhook.
    let mut other: serde_json::Value = serde_json::from_slice(&body).unwrap();
    other["call"]["duration"] = 301.into();
    let r3 = gw.post(ROUTE, &serde_json::to_vec(&other).unwrap());
    assert_eq!(status_of(&r3), "spooled");
    assert!(wait_until(Duration::from_secs(5), || up.count() >= 2));
    thread::sleep(Duration::from_millis(500));
    assert_eq!(up.count(), 2);
    // Still a duplicate after delivery (within the window).
    assert_eq!(status_of(&gw.post(ROUTE, &body)), "duplicate");
    // Counted after the answer is written: wait for it.
    assert!(wait_until(Duration::from_secs(2), || gw.metric(
        "hookgate_requests_total{outcome=\"duplicate\",route=\"crm\"}"
    ) == 2.0));
}

/// A small deterministic generator (the seed is printed for reruns).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

#[test]
fn kill_9_at_random_moments_loses_no_accepted_webhook() {
    let seed = std::env::var("HOOKGATE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash test seed {seed} (HOOKGATE_CRASH_SEED to repeat)");
    let mut rng = Rng(seed);
    let spool = tempfile::tempdir().unwrap();
    let up = Upstream::start(ok_answer());
    let cfg = spool_config(&up.url("/in"), spool.path(), "spool", "");
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut sent_total = 0usize;
    for round in 0..8 {
        // Half the rounds with an upstream that refuses, so a backlog builds up
        // and the kill also hits redelivery.
        up.set_behavior(if round % 2 == 0 {
            status_only(503)
        } else {
            ok_answer()
        });
        let gw = Gateway::start(&cfg);
        let stop = Arc::new(AtomicBool::new(false));
        let mut senders = Vec::new();
        for t in 0..4 {
            let (stop, acked, addr) = (stop.clone(), acked.clone(), gw.addr);
            senders.push(thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let id = format!("crash-{round}-{t}-{n}");
                    n += 1;
                    let req = post_bytes(ROUTE, &webhook(&id), &[]);
                    match raw(addr, &req) {
                        Ok(r) if r.status == 202 => acked.lock().unwrap().push(id),
                        Ok(r) => panic!("unexpected answer {} {:?}", r.status, r.body),
                        // Cut off by the kill, or refused after it.
                        Err(_) => {}
                    }
                }
                n
            }));
        }
        thread::sleep(Duration::from_millis(rng.range(150, 1200)));
        let mut gw = gw;
        gw.child.kill().unwrap(); // SIGKILL
        gw.child.wait().unwrap();
        stop.store(true, Ordering::SeqCst);
        for s in senders {
            sent_total += s.join().unwrap();
        }
    }
    up.set_behavior(ok_answer());
    let gw = Gateway::start(&cfg);
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "too few webhooks accepted: {}",
        acked.len()
    );
    // Arrived = answered 2xx: a delivery refused with 503 does not count.
    let missing = |up: &Upstream| {
        let got: std::collections::HashSet<String> = up
            .requests()
            .iter()
            .filter(|r| r.answered / 100 == 2)
            .map(|r| call_id_of(&r.body))
            .collect();
        acked
            .iter()
            .filter(|id| !got.contains(*id))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(Duration::from_secs(30), || missing(&up).is_empty()),
        "{} of {} accepted webhooks never arrived, e.g. {:?}\n{}",
        missing(&up).len(),
        acked.len(),
        missing(&up).iter().take(5).collect::<Vec<_>>(),
        gw.log()
    );
    assert!(settles(
        &gw,
        "hookgate_spool_messages{route=\"crm\"}",
        0.0,
        5
    ));
    // Nothing damaged: every record in the queue was complete.
    assert_eq!(msgs_in(&spool.path().join("corrupt")), 0);
    let delivered = up.count();
    eprintln!(
        "sent {sent_total}, accepted {}, delivered {delivered} (duplicates after a crash allowed)",
        acked.len()
    );
}

#[test]
fn damaged_records_are_set_aside_and_the_rest_delivered() {
    let spool = tempfile::tempdir().unwrap();
    let up_addr = reserved_addr();
    let cfg = spool_config(&format!("http://{up_addr}/in"), spool.path(), "spool", "");
    let mut gw = Gateway::start(&cfg);
    for i in 0..5 {
        assert_eq!(gw.post(ROUTE, &webhook(&format!("dmg-{i}"))).status, 202);
    }
    // SIGTERM with a backlog: the gateway does not wait for it.
    gw.signal("TERM");
    let took = gw.wait_exit(Duration::from_secs(5));
    assert!(took.is_some(), "did not exit with a backlog");
    drop(gw);

    let queue = spool.path().join("queue");
    let msgs: Vec<String> = files_in(&queue)
        .into_iter()
        .filter(|f| f.ends_with(".msg"))
        .collect();
    assert_eq!(msgs.len(), 5);
    // Flip one byte in the middle of record 1, cut record 3 short.
    let p1 = queue.join(&msgs[1]);
    let mut b = std::fs::read(&p1).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x20;
    std::fs::write(&p1, b).unwrap();
    let p3 = queue.join(&msgs[3]);
    let len = std::fs::metadata(&p3).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p3)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    // A leftover of an interrupted write.
    std::fs::write(spool.path().join("tmp/0000000000001-000000.msg"), b"half").unwrap();

    let up = Upstream::start_on(up_addr, ok_answer());
    let gw = Gateway::start(&cfg);
    assert!(wait_until(Duration::from_secs(10), || up.count() >= 3));
    thread::sleep(Duration::from_millis(300));
    let got: Vec<String> = up.requests().iter().map(|r| call_id_of(&r.body)).collect();
    assert_eq!(got, ["dmg-0", "dmg-2", "dmg-4"]);
    assert_eq!(gw.metric("hookgate_spool_corrupt_total"), 2.0);
    let corrupt = files_in(&spool.path().join("corrupt"));
    assert_eq!(corrupt, vec![msgs[1].clone(), msgs[3].clone()]);
    assert!(files_in(&spool.path().join("tmp")).is_empty());
    let log = gw.log();
    assert!(log.contains("damaged record set aside"), "{log}");
    assert_private(&log);
    // dmg-4's record is removed after the upstream answered.
    assert!(settles(
        &gw,
        "hookgate_spool_messages{route=\"crm\"}",
        0.0,
        5
    ));
    let (ok, list) = spool_cmd(spool.path(), &["list"]);
    assert!(ok && list.contains("0 queued, 0 dead, 2 damaged"), "{list}");
}

#[test]
fn an_unreadable_record_fails_alone_and_ends_in_the_dead_letters() {
    // A record that cannot be read when its turn comes is that message's
    // failure, not the route's: it backs off and is dead-lettered after
    // max_attempts while the others are delivered. (Made unreadable as a
    // folder where the file should be: the read fails with EISDIR, where a
    // mode of 000 would not stop root.)
    let spool = tempfile::tempdir().unwrap();
    let up_addr = reserved_addr();
    let cfg = spool_config(
        &format!("http://{up_addr}/in"),
        spool.path(),
        "spool",
        "max_attempts = 2",
    );
    let gw = Gateway::start(&cfg);
    for i in 0..4 {
        assert_eq!(gw.post(ROUTE, &webhook(&format!("unr-{i}"))).status, 202);
    }
    // The upstream is down: the route waits on its first message and reads
    // no other record, so the second one can be swapped without a race.
    thread::sleep(Duration::from_millis(300));
    let queue = spool.path().join("queue");
    let msgs: Vec<String> = files_in(&queue)
        .into_iter()
        .filter(|f| f.ends_with(".msg"))
        .collect();
    assert_eq!(msgs.len(), 4);
    let p1 = queue.join(&msgs[1]);
    std::fs::remove_file(&p1).unwrap();
    std::fs::create_dir(&p1).unwrap();

    let up = Upstream::start_on(up_addr, ok_answer());
    let dead = "hookgate_spool_dead_letters{route=\"crm\"}";
    assert!(
        wait_until(Duration::from_secs(10), || up.count() >= 3
            && gw.metric(dead) == 1.0),
        "{}",
        gw.log()
    );
    let got: Vec<String> = up.requests().iter().map(|r| call_id_of(&r.body)).collect();
    assert_eq!(got, ["unr-0", "unr-2", "unr-3"]);
    // Not taken for a damaged record.
    assert_eq!(gw.metric("hookgate_spool_corrupt_total"), 0.0);
    let (ok, list) = spool_cmd(spool.path(), &["list"]);
    assert!(ok && list.contains("0 queued, 1 dead, 0 damaged"), "{list}");
    assert!(list.contains("cannot read the record"), "{list}");
    // The message's own failure, not the route's pause ("... record now").
    assert!(!list.contains("record now"), "{list}");
    assert_private(&gw.log());
}

#[test]
fn a_full_spool_answers_503_and_keeps_what_it_accepted() {
    // The configured budget.
    let spool = tempfile::tempdir().unwrap();
    let up_addr = reserved_addr();
    let url = format!("http://{up_addr}/in");
    let cfg = spool_config_with(&url, spool.path(), "spool", "", "max_bytes = 1048576");
    let gw = Gateway::start(&cfg);
    let big = |i: usize| {
        let mut v: serde_json::Value = serde_json::from_slice(&payload(200_000)).unwrap();
        v["call"]["id"] = format!("big-{i}").into();
        // Transcripts are stripped: pad the summary so the stored body is large.
        v["assist"]["summary"]["content"] = "x".repeat(200_000).into();
        serde_json::to_vec(&v).unwrap()
    };
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..8 {
        let r = gw.post(ROUTE, &big(i));
        match r.status {
            202 => accepted.push(format!("big-{i}")),
            503 => {
                let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                assert_eq!(v["error"], "spool_full");
                refused += 1;
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(accepted.len(), 5, "1 MiB holds five 200 KB records");
    assert_eq!(refused, 3);
    assert!(wait_until(Duration::from_secs(2), || gw.metric(
        "hookgate_requests_total{outcome=\"spool_full\",route=\"crm\"}"
    ) == 3.0));
    assert!(gw.metric("hookgate_spool_bytes") <= gw.metric("hookgate_spool_capacity_bytes"));
    let up = Upstream::start_on(up_addr, ok_answer());
    assert!(wait_until(Duration::from_secs(10), || up.count() == 5));
    // Room again.
    assert!(settles(&gw, "hookgate_spool_bytes", 0.0, 3));
    assert_eq!(gw.post(ROUTE, &big(9)).status, 202);
    drop(gw);
    drop(up);

    // The disk itself full: a small tmpfs (root only; CI runs as root).
    let mnt = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=600k", "tmpfs"])
        .arg(mnt.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert!(
            std::env::var_os("CI").is_none(),
            "cannot mount a tmpfs for the disk-full test in CI"
        );
        eprintln!("SKIP: disk-full part (mounting a tmpfs needs root)");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(mnt.path());
    let up_addr = reserved_addr();
    let url = format!("http://{up_addr}/in");
    let cfg = spool_config(&url, mnt.path(), "spool", "");
    let gw = Gateway::start(&cfg);
    let mut accepted = Vec::new();
    let mut full = 0;
    for i in 0..12 {
        let r = gw.post(ROUTE, &big(100 + i));
        match r.status {
            202 => accepted.push(i),
            503 => {
                let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                assert_eq!(v["error"], "spool_full", "ENOSPC is reported as full");
                full += 1;
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert!(!accepted.is_empty() && full > 0, "{accepted:?} {full}");
    assert!(
        files_in(&mnt.path().join("tmp")).is_empty(),
        "a failed write left a partial file"
    );
    assert_eq!(msgs_in(&mnt.path().join("queue")), accepted.len());
    let up = Upstream::start_on(up_addr, ok_answer());
    assert!(
        wait_until(Duration::from_secs(10), || up.count() == accepted.len()),
        "{} of {}",
        up.count(),
        accepted.len()
    );
    assert!(gw.log().contains("disk full"));
    drop(gw);
}

#[test]
fn a_second_gateway_cannot_share_the_spool() {
    let spool = tempfile::tempdir().unwrap();
    let up = Upstream::start(ok_answer());
    let cfg = spool_config(&up.url("/in"), spool.path(), "spool", "");
    let _gw = Gateway::start(&cfg);
    let cfg_path = spool.path().join("second.toml");
    std::fs::write(
        &cfg_path,
        cfg.replace("{LISTEN}", "127.0.0.1:0")
            .replace("{METRICS}", "127.0.0.1:0")
            .replace("{SCHEMA}", &schema_path()),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["run", "-c"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another hookgate process"), "{err}");
}

#[test]
fn proxy_or_spool_does_not_overtake_webhooks_waiting_in_the_spool() {
    let spool = tempfile::tempdir().unwrap();
    let up_addr = reserved_addr();
    let cfg = spool_config(
        &format!("http://{up_addr}/in"),
        spool.path(),
        "proxy_or_spool",
        "first_try_ms = 1000",
    )
    // No retry within seconds of the last failure: the backlog cannot drain
    // before new-1 arrives, however slowly this test runs.
    .replace("backoff_initial_ms = 50", "backoff_initial_ms = 3000")
    .replace("backoff_max_ms = 200", "backoff_max_ms = 5000");
    let gw = Gateway::start(&cfg);
    for id in ["wait-1", "wait-2"] {
        assert_eq!(gw.post(ROUTE, &webhook(id)).status, 202);
    }
    // The upstream comes back; a new webhook arrives before the backlog drained.
    let up = Upstream::start_on(up_addr, ok_answer());
    let r = gw.post(ROUTE, &webhook("new-1"));
    assert_eq!(r.status, 202, "it must queue behind the backlog");
    assert!(wait_until(Duration::from_secs(15), || up.count() >= 3));
    let order: Vec<String> = up.requests().iter().map(|r| call_id_of(&r.body)).collect();
    assert_eq!(order, ["wait-1", "wait-2", "new-1"]);
    // Drained: the next one goes straight through again.
    assert!(settles(
        &gw,
        "hookgate_spool_messages{route=\"crm\"}",
        0.0,
        3
    ));
    thread::sleep(Duration::from_millis(100));
    let r = gw.post(ROUTE, &webhook("new-2"));
    assert_eq!(r.status, 200);
}

#[test]
fn a_repeat_while_the_first_copy_is_in_progress_is_told_to_retry() {
    let spool = tempfile::tempdir().unwrap();
    let up = Upstream::start(Behavior::Delay(Duration::from_secs(5)));
    // The repeat must arrive within the first copy's first try: give it 3 s.
    let cfg = spool_config(
        &up.url("/in"),
        spool.path(),
        "proxy_or_spool",
        "first_try_ms = 3000",
    )
    .replace("timeout_ms = 1500", "timeout_ms = 6000");
    let gw = Gateway::start(&cfg);
    let body = webhook("twice");
    let addr = gw.addr;
    let first = {
        let req = post_bytes(ROUTE, &body, &[]);
        thread::spawn(move || raw(addr, &req).unwrap())
    };
    // The first copy is still in its first try: the repeat is not acknowledged.
    assert!(wait_until(Duration::from_secs(2), || up.count() == 1));
    let r = gw.post(ROUTE, &body);
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["error"], "duplicate_in_progress");
    assert_eq!(r.header("retry-after"), Some("1"));
    // The first copy times out on its first try and is spooled.
    let r1 = first.join().unwrap();
    assert_eq!((r1.status, status_of(&r1)), (202, "spooled".to_string()));
    // Now it is durable: a repeat is a duplicate.
    let r = gw.post(ROUTE, &body);
    assert_eq!((r.status, status_of(&r)), (202, "duplicate".to_string()));
}
