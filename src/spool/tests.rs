//! The spool's index on its own: ordering, stepping over a failing message,
//! route pauses, dead letters, duplicates, the budget, and the rescan.

use super::*;
use crate::config::{Redelivery, Route};
use crate::metrics::Metrics;

fn settings(dir: &std::path::Path, max_bytes: u64) -> SpoolSettings {
    SpoolSettings {
        dir: dir.to_path_buf(),
        max_bytes,
        dedup_window: Duration::from_secs(60),
    }
}

fn meta(call: &str) -> Meta {
    Meta {
        route: "r".into(),
        accepted_ms: now_ms(),
        key: record::idempotency_key(Some(call), call.as_bytes()),
        call_id: Some(call.into()),
        headers: vec![],
    }
}

fn route(max_attempts: u32) -> Route {
    let cfg = crate::config::load_str(
        r#"
[metrics]
listen = "127.0.0.1:1"
[server]
listen = ["127.0.0.1:2"]
[spool]
dir = "/nonexistent"
[[route]]
name = "r"
path = "/r"
upstream = "http://127.0.0.1:3/"
delivery = "spool"
"#,
        std::path::Path::new("/x/h.toml"),
        &std::collections::HashMap::<String, String>::new(),
    )
    .unwrap();
    let mut r = Arc::try_unwrap(cfg.routes.into_iter().next().unwrap()).unwrap();
    r.redelivery = Redelivery {
        backoff_initial: Duration::from_secs(60),
        backoff_max: Duration::from_secs(60),
        max_attempts,
        ..Redelivery::default()
    };
    r
}

fn open(dir: &std::path::Path, max: u64) -> (Arc<Spool>, Metrics) {
    let m = Metrics::new();
    let s = Spool::open(&settings(dir, max), &["r".into()], m.spool.clone()).unwrap();
    (s, m)
}

async fn put(s: &Arc<Spool>, call: &str) -> Id {
    match s.accept(meta(call), b"{}", None).await.unwrap() {
        Accepted::Spooled(id) => id,
        Accepted::Duplicate => panic!("duplicate"),
    }
}

#[tokio::test]
async fn oldest_first_and_a_failing_message_is_stepped_over() {
    let d = tempfile::tempdir().unwrap();
    let (s, _m) = open(d.path(), 1 << 30);
    let a = put(&s, "a").await;
    let b = put(&s, "b").await;
    let now = Instant::now();
    assert_eq!(s.pick("r", now), Pick::Deliver(a.clone()));
    // `a` failed on its own (the upstream answered 500): `b` goes next.
    let r = route(5);
    assert!(!s.failed(&r, &a, "HTTP 500".into(), FailureKind::Message));
    assert_eq!(s.pick("r", Instant::now()), Pick::Deliver(b.clone()));
    s.remove("r", &b);
    assert!(matches!(s.pick("r", Instant::now()), Pick::WaitUntil(_)));
    // Once its time comes, `a` is due again.
    assert_eq!(
        s.pick("r", Instant::now() + Duration::from_secs(61)),
        Pick::Deliver(a.clone())
    );
    assert_eq!(s.entry("r", &a).unwrap().attempts, 1);
    assert_eq!(
        Layout::read_state(&s.layout().queue, &a)
            .unwrap()
            .last_error,
        Some("HTTP 500".into())
    );
}

#[tokio::test]
async fn an_upstream_wide_failure_pauses_the_route_in_order() {
    let d = tempfile::tempdir().unwrap();
    let (s, _m) = open(d.path(), 1 << 30);
    let a = put(&s, "a").await;
    let _b = put(&s, "b").await;
    let r = route(5);
    assert!(!s.failed(&r, &a, "timeout".into(), FailureKind::UpstreamWide));
    let Pick::WaitUntil(t) = s.pick("r", Instant::now()) else {
        panic!("the route must wait");
    };
    // After the pause the same (oldest) message is tried first.
    assert_eq!(s.pick("r", t), Pick::Deliver(a.clone()));
    s.upstream_ok(&r, &a);
    assert_eq!(s.pick("r", Instant::now()), Pick::Deliver(a));
}

#[tokio::test]
async fn dead_letters_after_max_attempts_or_at_once_when_permanent() {
    let d = tempfile::tempdir().unwrap();
    let (s, m) = open(d.path(), 1 << 30);
    let a = put(&s, "a").await;
    let b = put(&s, "b").await;
    let r = route(2);
    assert!(!s.failed(&r, &a, "HTTP 500".into(), FailureKind::Message));
    assert!(s.failed(&r, &a, "HTTP 500".into(), FailureKind::Message));
    assert!(s.failed(
        &r,
        &b,
        "HTTP 400 (permanent)".into(),
        FailureKind::Permanent
    ));
    assert_eq!(s.depth(), 0);
    assert_eq!(Layout::list(&s.layout().dead).unwrap().len(), 2);
    assert_eq!(m.spool.dead_letters.with_label_values(&["r"]).get(), 2);
    let st = Layout::read_state(&s.layout().dead, &a).unwrap();
    assert_eq!((st.attempts, st.route.as_str()), (2, "r"));
    // Dead letters still count against the disk budget.
    assert!(m.spool.bytes.get() > 0);
}

#[tokio::test]
async fn duplicates_and_the_budget() {
    let d = tempfile::tempdir().unwrap();
    let (s, m) = open(d.path(), 1024 * 1024);
    put(&s, "a").await;
    assert_eq!(
        s.accept(meta("a"), b"{}", None).await.unwrap(),
        Accepted::Duplicate
    );
    // Over the budget: refused, and the key is forgotten so a retry is welcome.
    let big = vec![b' '; 1024 * 1024];
    assert_eq!(
        s.accept(meta("big"), &big, None).await,
        Err(Rejection::SpoolFull)
    );
    assert!(matches!(s.check_in("r", &meta("big").key), Check::New(_)));
    assert_eq!(s.depth(), 1);
    assert_eq!(m.spool.messages.with_label_values(&["r"]).get(), 1);
}

#[tokio::test]
async fn reopening_rebuilds_the_index_and_rescan_follows_the_folders() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = {
        let (s, _m) = open(d.path(), 1 << 30);
        let a = put(&s, "a").await;
        let b = put(&s, "b").await;
        s.failed(&route(5), &a, "HTTP 500".into(), FailureKind::Message);
        (a, b)
    };
    let (s, m) = open(d.path(), 1 << 30);
    assert_eq!(s.depth(), 2);
    // Attempts survive a restart; the dedup window too.
    assert_eq!(s.entry("r", &a).unwrap().attempts, 1);
    assert!(matches!(s.check_in("r", &meta("b").key), Check::Duplicate));
    // A new id sorts after everything found on disk.
    let c = put(&s, "c").await;
    assert!(c > b);
    // An operator drops `b` behind the gateway's back.
    Layout::remove(&s.layout().queue, &b).unwrap();
    s.rescan().unwrap();
    assert_eq!(s.depth(), 2);
    assert!(s.entry("r", &b).is_none());
    // The lock: a second open fails while the first is alive.
    assert!(matches!(
        Spool::open(&settings(d.path(), 1 << 30), &["r".into()], m.spool.clone()),
        Err(SpoolError::Locked(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rescan_running_beside_accepts_never_drops_a_new_entry() {
    let d = tempfile::tempdir().unwrap();
    let (s, m) = open(d.path(), 1 << 30);
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let scans = Arc::new(AtomicUsize::new(0));
    let (s2, stop2, scans2) = (s.clone(), stop.clone(), scans.clone());
    let scanner = std::thread::spawn(move || {
        while !stop2.load(Ordering::SeqCst) {
            s2.rescan().unwrap();
            scans2.fetch_add(1, Ordering::SeqCst);
        }
    });
    // At least 300 accepts, and on until 10 rescans ran beside them, however
    // fast the file system is.
    let mut n = 0;
    while n < 300 || (scans.load(Ordering::SeqCst) < 10 && n < 100_000) {
        put(&s, &format!("c{n}")).await;
        n += 1;
    }
    stop.store(true, Ordering::SeqCst);
    scanner.join().unwrap();
    let scans = scans.load(Ordering::SeqCst);
    assert!(scans >= 10, "only {scans} rescans ran beside {n} accepts");
    // No rescan afterwards: the index must already be whole.
    assert_eq!(s.depth(), n);
    let on_disk: u64 = Layout::list(&s.layout().queue)
        .unwrap()
        .iter()
        .map(|(_, n)| super::disk_use(*n))
        .sum();
    assert_eq!(m.spool.bytes.get() as u64, on_disk);
}

#[tokio::test]
async fn whole_upstream_failures_pause_without_using_up_attempts() {
    let d = tempfile::tempdir().unwrap();
    let (s, _m) = open(d.path(), 1 << 30);
    let a = put(&s, "a").await;
    let r = route(2);
    for _ in 0..10 {
        assert!(!s.failed(&r, &a, "timeout".into(), FailureKind::UpstreamWide));
    }
    let e = s.entry("r", &a).unwrap();
    assert_eq!((e.attempts, e.strikes), (10, 0));
    // Alone in the queue, it is never stepped over: after the pause, it again.
    assert_eq!(
        s.pick("r", Instant::now() + Duration::from_secs(61)),
        Pick::Deliver(a)
    );
}

/// `id` fails the whole upstream once (a reset).
fn reset_by(s: &Spool, r: &Route, id: &Id) {
    s.failed(
        r,
        id,
        "unavailable: reset".into(),
        FailureKind::UpstreamWide,
    );
}

/// `id` fails the whole upstream `PROBE_AFTER` times in a row (so that,
/// with others waiting, it becomes the suspect).
fn fail_until_suspect(s: &Spool, r: &Route, id: &Id) {
    for _ in 0..PROBE_AFTER {
        reset_by(s, r, id);
    }
}

#[tokio::test]
async fn a_message_that_breaks_the_upstream_is_found_by_a_probe() {
    let d = tempfile::tempdir().unwrap();
    let (s, _m) = open(d.path(), 1 << 30);
    let a = put(&s, "a").await;
    let b = put(&s, "b").await;
    let c = put(&s, "c").await;
    let r = route(5);
    let later = || Instant::now() + Duration::from_secs(61);
    for _ in 0..PROBE_AFTER {
        assert_eq!(s.pick("r", later()), Pick::Deliver(a.clone()));
        reset_by(&s, &r, &a);
    }
    // Three resets in a row on `a`: the next try goes to `b`.
    assert_eq!(s.pick("r", later()), Pick::Deliver(b.clone()));
    // `b` is delivered: the upstream is fine, `a` is the problem.
    s.upstream_ok(&r, &b);
    s.remove("r", &b);
    assert_eq!(s.entry("r", &a).unwrap().strikes, 1);
    assert_eq!(s.pick("r", Instant::now()), Pick::Deliver(c.clone()));

    // Had `b` failed as well, it would have been an outage: `a` first again.
    let d2 = tempfile::tempdir().unwrap();
    let (s, _m) = open(d2.path(), 1 << 30);
    let a = put(&s, "a").await;
    let b = put(&s, "b").await;
    fail_until_suspect(&s, &r, &a);
    assert_eq!(s.pick("r", later()), Pick::Deliver(b.clone()));
    s.failed(&r, &b, "timeout".into(), FailureKind::UpstreamWide);
    assert_eq!(s.pick("r", later()), Pick::Deliver(a.clone()));
    assert_eq!(s.entry("r", &a).unwrap().strikes, 0);
}

#[tokio::test]
async fn a_repeat_waits_for_the_original_to_be_durable() {
    let d = tempfile::tempdir().unwrap();
    let (s, _m) = open(d.path(), 1 << 30);
    let key = meta("x").key;
    let Check::New(first) = s.check_in("r", &key) else {
        panic!("new");
    };
    // While the first is being written, a repeat is neither new nor a duplicate.
    assert!(matches!(s.check_in("r", &key), Check::InProgress));
    // The first failed (released): the repeat is welcome.
    drop(first);
    let Check::New(second) = s.check_in("r", &key) else {
        panic!("new again");
    };
    second.confirm();
    assert!(matches!(s.check_in("r", &key), Check::Duplicate));
}

#[tokio::test]
async fn a_suspect_left_alone_is_tried_again() {
    let d = tempfile::tempdir().unwrap();
    let (s, _m) = open(d.path(), 1 << 30);
    let a = put(&s, "a").await;
    let b = put(&s, "b").await;
    let r = route(5);
    let later = || Instant::now() + Duration::from_secs(61);
    fail_until_suspect(&s, &r, &a);
    assert_eq!(s.pick("r", later()), Pick::Deliver(b.clone()));
    // The probe goes away without telling anything (an operator dropped it).
    s.remove("r", &b);
    // `a` is all there is: it is not left waiting for a probe that never comes.
    assert_eq!(s.pick("r", later()), Pick::Deliver(a));
}

#[tokio::test]
async fn a_suspect_does_not_wait_out_the_backoff_of_a_message_set_aside() {
    let d = tempfile::tempdir().unwrap();
    let (s, _m) = open(d.path(), 1 << 30);
    let a = put(&s, "a").await;
    let b = put(&s, "b").await;
    let mut r = route(100);
    r.redelivery.backoff_initial = Duration::from_secs(1);
    r.redelivery.backoff_max = Duration::from_secs(3600);
    // `b` failed on its own twelve times: set aside for 17 to 34 minutes.
    for _ in 0..12 {
        s.failed(&r, &b, "422".into(), FailureKind::Message);
    }
    // `a` breaks the whole upstream three times: the suspect, with a route
    // pause of 2 to 4 s, and no message due to probe with.
    fail_until_suspect(&s, &r, &a);
    // Once the pause is over, `a` is tried again, not in half an hour.
    let later = || Instant::now() + Duration::from_secs(10);
    assert_eq!(s.pick("r", later()), Pick::Deliver(a.clone()));
    // It fails the upstream again and stays the suspect: a message that comes
    // in meanwhile is the probe, not held behind it for three more pauses.
    reset_by(&s, &r, &a);
    let c = put(&s, "c").await;
    assert_eq!(s.pick("r", later()), Pick::Deliver(c.clone()));
    // `c` is delivered: `a` is the problem and waits its own backoff.
    s.upstream_ok(&r, &c);
    s.remove("r", &c);
    assert_eq!(s.entry("r", &a).unwrap().strikes, 1);
}

#[tokio::test]
async fn only_messages_not_set_aside_are_a_backlog() {
    let d = tempfile::tempdir().unwrap();
    let (s, _m) = open(d.path(), 1 << 30);
    let r = route(5);
    assert!(!s.has_backlog("r"));
    let a = put(&s, "a").await;
    // A fresh message waits: a first try would overtake it.
    assert!(s.has_backlog("r"));
    // Its own failure sets it aside; the worker steps over it, and so may a
    // first try.
    s.failed(&r, &a, "422".into(), FailureKind::Message);
    assert!(!s.has_backlog("r"));
    // A long run of set-aside messages is taken as a backlog (bounded look).
    for i in 0..70 {
        let m = put(&s, &format!("m{i}")).await;
        s.failed(&r, &m, "422".into(), FailureKind::Message);
    }
    assert!(s.has_backlog("r"));
    // A paused route is one, whatever it holds.
    let d2 = tempfile::tempdir().unwrap();
    let (s, _m) = open(d2.path(), 1 << 30);
    let b = put(&s, "b").await;
    s.failed(&r, &b, "timeout".into(), FailureKind::UpstreamWide);
    assert!(s.has_backlog("r"));
}

#[test]
fn the_budget_counts_whole_blocks_and_a_state_file() {
    assert_eq!(disk_use(0), 4096);
    assert_eq!(disk_use(1), 8192);
    assert_eq!(disk_use(4096), 8192);
    assert_eq!(disk_use(4097), 12288);
}
