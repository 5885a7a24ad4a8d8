//! The durable spool: routes with `delivery = "spool"` (or `"proxy_or_spool"`
//! after a failed first try) write the cleaned webhook to disk, answer 202, and
//! deliver it in the background with retries, so that an accepted webhook is
//! never lost while the internal system is down.
//!
//! - [`record`]: the file format (checksummed), ids, idempotency keys.
//! - [`store`]: the folders and the durable file operations.
//! - [`policy`]: status verdicts and backoff.
//! - [`worker`]: one delivery loop per route.
//! - [`admin`]: the `hookgate spool` commands.
//!
//! In memory the spool keeps only an index (id, route, size, attempts, next
//! try); bodies are read from disk when delivered, so memory does not grow with
//! the backlog. The index is rebuilt from the folders at start, where damaged
//! records are set aside.

pub mod admin;
pub mod policy;
pub mod record;
pub mod store;
pub mod worker;

use crate::config::SpoolSettings;
use crate::error::Rejection;
use crate::metrics::SpoolMetrics;
use record::{Id, IdGen, Meta};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use store::{Layout, State};
use tokio::sync::Notify;

/// Most keys remembered for duplicate suppression; the oldest go first.
const DEDUP_MAX_KEYS: usize = 100_000;

/// Upstream-wide failures in a row on the same oldest message before the next
/// message is tried instead, to tell an outage from one message that breaks
/// the upstream.
pub const PROBE_AFTER: u32 = 3;

/// A state file without its record is removed once it is this old (younger
/// ones may belong to a record being moved).
const ORPHAN_AGE: Duration = Duration::from_secs(60);

/// How a delivery attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The upstream refused this message for good: dead letter now.
    Permanent,
    /// The upstream answered, but not with success, for this message.
    Message,
    /// The upstream as a whole failed after the request was sent (reset,
    /// timeout, 429/502/503/504): the route pauses; repeated on the same
    /// message, the next one is tried to tell an outage from a bad message.
    UpstreamWide,
    /// Nothing was sent (no connection): the route pauses; the message cannot
    /// be the cause.
    Unreachable,
}

/// Why the spool could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A folder could not be created or read.
    #[error("spool folder {path}: {source}")]
    Io {
        /// The folder.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Another process holds the spool.
    #[error("spool folder {0} is in use by another hookgate process")]
    Locked(String),
}

/// What `accept` did with a webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Written durably under this id.
    Spooled(Id),
    /// The same webhook was accepted within the dedup window: not stored again.
    Duplicate,
}

/// What the dedup window says about a webhook.
pub enum Check {
    /// Not seen: go on, and confirm the reservation once it is durable.
    New(Reservation),
    /// Accepted (durably) within the window.
    Duplicate,
    /// The same webhook is being accepted right now: its outcome is not known yet.
    InProgress,
}

/// A webhook's place in the dedup window while it is being accepted.
pub struct Reservation {
    spool: Option<Arc<Spool>>,
    key: String,
}

impl Reservation {
    /// The webhook is durable (or delivered): repeats are duplicates from now on.
    pub fn confirm(mut self) {
        if let Some(s) = self.spool.take() {
            if let Some(seen) = s.lock().dedup.seen.get_mut(&self.key) {
                seen.durable = true;
            }
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // Not confirmed: not accepted after all, so a repeat is welcome.
        if let Some(s) = self.spool.take() {
            let mut inner = s.lock();
            if inner.dedup.seen.get(&self.key).is_some_and(|x| !x.durable) {
                inner.dedup.seen.remove(&self.key);
            }
        }
    }
}

/// What a record of `len` bytes takes on disk, as the budget counts it: whole
/// 4 KiB blocks (most filesystems' allocation unit), plus one for the state
/// file a failed message gets. Counting bytes let a spool of 1 KiB webhooks
/// use several times `max_bytes`.
pub fn disk_use(len: u64) -> u64 {
    const BLOCK: u64 = 4096;
    len.div_ceil(BLOCK).saturating_add(1).saturating_mul(BLOCK)
}

/// One waiting message.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Record size on disk.
    pub size: u64,
    /// Acceptance time (Unix ms).
    pub accepted_ms: u64,
    /// Attempts so far.
    pub attempts: u32,
    /// Not before this time (set after a failure of this message alone).
    pub next_at: Option<Instant>,
    /// Last failure.
    pub last_error: Option<String>,
    /// When it joined the index (a rescan only drops entries older than its listing).
    pub indexed: Instant,
    /// Failures of this message alone (against `max_attempts`).
    pub strikes: u32,
    /// Its age counts from here (Unix ms): acceptance, or an operator's retry.
    pub since_ms: u64,
    /// Delivered, but its file could not be removed: never delivered again.
    pub stuck: bool,
}

impl Entry {
    /// What is kept on disk about this entry's attempts.
    fn state(&self, route: &str) -> State {
        State {
            route: route.to_string(),
            attempts: self.attempts,
            last_error: self.last_error.clone(),
            last_attempt_ms: Some(now_ms()),
            strikes: self.strikes,
            since_ms: Some(self.since_ms),
        }
    }
}

#[derive(Default)]
struct RouteQueue {
    entries: BTreeMap<Id, Entry>,
    /// The whole route waits until then (the upstream as a whole failed).
    paused_until: Option<Instant>,
    /// Consecutive upstream-wide failures, for the route's backoff.
    failures: u32,
    /// Upstream-wide failures in a row of one message.
    streak: Option<(Id, u32)>,
    /// A message stepped over for one try of the next (see [`PROBE_AFTER`]).
    suspect: Option<Id>,
    dead: i64,
}

/// A remembered webhook: when, and whether it is durable yet (a key whose
/// write or first try is still running is only reserved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    at: Instant,
    durable: bool,
}

#[derive(Default)]
struct Dedup {
    seen: HashMap<String, Seen>,
    order: VecDeque<(Instant, String)>,
}

/// A webhook's key in the dedup window: route and idempotency key.
fn dedup_key(route: &str, key: &str) -> String {
    format!("{route}\u{0}{key}")
}

impl Dedup {
    fn remember(&mut self, k: String, at: Instant, durable: bool) {
        self.seen.insert(k.clone(), Seen { at, durable });
        self.order.push_back((at, k));
    }

    fn expire(&mut self, now: Instant, window: Duration) {
        while let Some((t, _)) = self.order.front() {
            if now.duration_since(*t) < window && self.order.len() <= DEDUP_MAX_KEYS {
                break;
            }
            if let Some((t, k)) = self.order.pop_front() {
                if self.seen.get(&k).is_some_and(|s| s.at == t) {
                    self.seen.remove(&k);
                }
            }
        }
    }
}

#[derive(Default)]
struct Inner {
    used: u64,
    routes: HashMap<String, RouteQueue>,
    /// Dead letters: route, size, when indexed.
    dead: BTreeMap<Id, (String, u64, Instant)>,
    /// Ids being written by `accept` (the rescan must not take them twice).
    pending: HashSet<Id>,
    /// Records that could not be read (logged once).
    unreadable: HashSet<Id>,
    dedup: Dedup,
}

/// The spool of one gateway process.
pub struct Spool {
    layout: Layout,
    max_bytes: u64,
    dedup_window: Duration,
    ids: IdGen,
    inner: Mutex<Inner>,
    wake: HashMap<String, Arc<Notify>>,
    metrics: SpoolMetrics,
    _lock: std::fs::File,
}

/// What the worker should do next for a route.
#[derive(Debug, PartialEq, Eq)]
pub enum Pick {
    /// Deliver this message.
    Deliver(Id),
    /// Nothing is due before this time.
    WaitUntil(Instant),
    /// Nothing waits.
    Idle,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Spool {
    /// Open (or create) the spool, take its lock, clear interrupted writes and
    /// rebuild the index; damaged records go to `corrupt/`. `routes` are the
    /// names of the routes that spool.
    pub fn open(
        settings: &SpoolSettings,
        routes: &[String],
        metrics: SpoolMetrics,
    ) -> Result<Arc<Spool>, SpoolError> {
        let layout = Layout::new(&settings.dir);
        let io = |p: &std::path::Path| {
            let path = p.display().to_string();
            move |source| SpoolError::Io { path, source }
        };
        layout.create().map_err(io(&layout.root))?;
        let lock_path = layout.root.join("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        if lock.try_lock().is_err() {
            return Err(SpoolError::Locked(layout.root.display().to_string()));
        }
        let cleared = layout.clear_tmp().map_err(io(&layout.tmp))?;
        if cleared > 0 {
            tracing::info!(files = cleared, "spool: removed interrupted writes");
        }
        let spool = Spool {
            max_bytes: settings.max_bytes,
            dedup_window: settings.dedup_window,
            ids: IdGen::default(),
            inner: Mutex::new(Inner::default()),
            wake: routes
                .iter()
                .map(|r| (r.clone(), Arc::new(Notify::new())))
                .collect(),
            metrics,
            _lock: lock,
            layout,
        };
        spool.metrics.capacity.set(settings.max_bytes as i64);
        {
            let mut inner = spool.lock();
            for r in routes {
                inner.routes.entry(r.clone()).or_default();
                // Every series exists from the start, so rate() sees the first event.
                for result in ["delivered", "retry", "dead_lettered"] {
                    spool.metrics.deliveries.with_label_values(&[r, result]);
                }
            }
        }
        spool.rescan().map_err(io(&spool.layout.queue))?;
        let (queued, dead, used) = {
            let inner = spool.lock();
            let q: usize = inner.routes.values().map(|r| r.entries.len()).sum();
            (q, inner.dead.len(), inner.used)
        };
        tracing::info!(
            dir = %spool.layout.root.display(),
            queued, dead, bytes = used, "spool opened"
        );
        for (name, rq) in spool.lock().routes.iter() {
            if !rq.entries.is_empty() && !spool.wake.contains_key(name) {
                tracing::warn!(route = %name, messages = rq.entries.len(),
                    "spool: messages for a route that does not spool (or no longer exists); kept until it does");
            }
        }
        Ok(Arc::new(spool))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The folders.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Check a webhook against the dedup window. A new one is reserved: the
    /// reservation is confirmed once the webhook is durable (or delivered), and
    /// released if it is dropped unconfirmed, so a repeat is welcome again.
    pub fn check_in(self: &Arc<Self>, route: &str, key: &str) -> Check {
        if self.dedup_window.is_zero() {
            return Check::New(Reservation {
                spool: None,
                key: String::new(),
            });
        }
        let now = Instant::now();
        let mut inner = self.lock();
        let window = self.dedup_window;
        inner.dedup.expire(now, window);
        let k = dedup_key(route, key);
        match inner.dedup.seen.get(&k) {
            Some(s) if s.durable => return Check::Duplicate,
            Some(_) => return Check::InProgress,
            None => {}
        }
        inner.dedup.remember(k.clone(), now, false);
        Check::New(Reservation {
            spool: Some(self.clone()),
            key: k,
        })
    }

    /// Whether the route is paused or has messages waiting that a
    /// `proxy_or_spool` first try would overtake. Messages set aside after
    /// their own failures (or stuck, or the suspect) do not count: the worker
    /// steps over them too, and one bad message must not turn the route into
    /// spool-only for hours. Looks at a bounded number of entries; a long run
    /// of set-aside ones counts as a backlog.
    pub fn has_backlog(&self, route: &str) -> bool {
        const LOOK: usize = 64;
        self.lock().routes.get(route).is_some_and(|rq| {
            rq.paused_until.is_some() || {
                let mut set_aside = 0;
                rq.entries.iter().any(|(id, e)| {
                    let aside = e.stuck || e.strikes > 0 || rq.suspect.as_ref() == Some(id);
                    set_aside += usize::from(aside);
                    !aside || set_aside > LOOK
                })
            }
        })
    }

    /// Store a cleaned webhook durably. Returns once it is on disk (fsync'd).
    /// `reserved`: the caller already checked it in (`proxy_or_spool`).
    pub async fn accept(
        self: &Arc<Self>,
        meta: Meta,
        body: &[u8],
        reserved: Option<Reservation>,
    ) -> Result<Accepted, Rejection> {
        let route = meta.route.clone();
        let reservation = match reserved {
            Some(r) => r,
            None => match self.check_in(&route, &meta.key) {
                Check::New(r) => r,
                Check::Duplicate => return Ok(Accepted::Duplicate),
                Check::InProgress => return Err(Rejection::DuplicateInProgress),
            },
        };
        let bytes = record::encode(&meta, body);
        let size = disk_use(bytes.len() as u64);
        let id = {
            let mut inner = self.lock();
            if inner.used + size > self.max_bytes {
                drop(inner);
                drop(reservation);
                tracing::warn!(route = %route, "spool full: webhook refused");
                return Err(Rejection::SpoolFull);
            }
            inner.used += size;
            let id = self.ids.next(meta.accepted_ms);
            inner.pending.insert(id.clone());
            id
        };
        let me = self.clone();
        let wid = id.clone();
        let written = tokio::task::spawn_blocking(move || me.layout.write_durable(&wid, &bytes))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        let mut inner = self.lock();
        inner.pending.remove(&id);
        if let Err(e) = written {
            inner.used = inner.used.saturating_sub(size);
            drop(inner);
            drop(reservation);
            self.refresh();
            if store::is_disk_full(&e) {
                tracing::warn!(route = %route, "spool: disk full, webhook refused");
                return Err(Rejection::SpoolFull);
            }
            tracing::error!(route = %route, error = %e.kind(), "spool: write failed, webhook refused");
            return Err(Rejection::SpoolUnavailable);
        }
        inner
            .routes
            .entry(route.clone())
            .or_default()
            .entries
            .insert(
                id.clone(),
                Entry {
                    size,
                    accepted_ms: meta.accepted_ms,
                    attempts: 0,
                    next_at: None,
                    last_error: None,
                    indexed: Instant::now(),
                    strikes: 0,
                    since_ms: meta.accepted_ms,
                    stuck: false,
                },
            );
        drop(inner);
        reservation.confirm();
        self.refresh();
        if let Some(n) = self.wake.get(&route) {
            n.notify_one();
        }
        Ok(Accepted::Spooled(id))
    }

    /// The next thing to do for `route`: the oldest message that is due, unless
    /// the route is paused. Messages set aside after their own failure are
    /// stepped over until their time comes, so one bad message does not block
    /// the rest.
    pub fn pick(&self, route: &str, now: Instant) -> Pick {
        let mut inner = self.lock();
        let Some(rq) = inner.routes.get_mut(route) else {
            return Pick::Idle;
        };
        if let Some(p) = rq.paused_until {
            if p > now {
                return Pick::WaitUntil(p);
            }
            rq.paused_until = None;
        }
        let mut earliest: Option<Instant> = None;
        for (id, e) in &rq.entries {
            if e.stuck || rq.suspect.as_ref() == Some(id) {
                continue;
            }
            match e.next_at {
                Some(t) if t > now => earliest = Some(earliest.map_or(t, |x| x.min(t))),
                _ => return Pick::Deliver(id.clone()),
            }
        }
        // Nothing due to probe the upstream with (the others were delivered,
        // dropped or buried, or wait out a backoff of their own, maybe an hour
        // long): the suspect is tried again now, not after them. The route's
        // pause, over by now, paced it. It stays the suspect, so a message
        // that comes in meanwhile is the probe, not stuck behind it; an
        // answer (`upstream_ok`) or its own failure clears that.
        if let Some(id) = rq.suspect.clone() {
            if rq.entries.get(&id).is_some_and(|e| !e.stuck) {
                return Pick::Deliver(id);
            }
            rq.suspect = None;
        }
        earliest.map_or(Pick::Idle, Pick::WaitUntil)
    }

    /// The index entry of a waiting message.
    pub fn entry(&self, route: &str, id: &Id) -> Option<Entry> {
        self.lock().routes.get(route)?.entries.get(id).cloned()
    }

    /// Delivered: remove file and entry. A file that cannot be removed keeps
    /// its entry, marked so that it is not delivered again.
    pub fn remove(&self, route: &str, id: &Id) {
        // A state file exists only after a failed attempt (or from before a restart).
        let with_state = self
            .lock()
            .routes
            .get(route)
            .and_then(|rq| rq.entries.get(id))
            .is_none_or(|e| e.attempts > 0);
        if let Err(e) = Layout::remove_msg(&self.layout.queue, id, with_state) {
            tracing::error!(route = %route, id = %id, error = %e.kind(),
                "spool: cannot remove a delivered message; it stays on disk and is not delivered again");
            if let Some(e) = self
                .lock()
                .routes
                .get_mut(route)
                .and_then(|rq| rq.entries.get_mut(id))
            {
                e.stuck = true;
            }
            return;
        }
        self.forget_entry(route, id);
    }

    fn forget_entry(&self, route: &str, id: &Id) {
        let mut inner = self.lock();
        let removed = inner
            .routes
            .get_mut(route)
            .and_then(|rq| rq.entries.remove(id));
        if let Some(e) = removed {
            inner.used = inner.used.saturating_sub(e.size);
        }
        drop(inner);
        self.refresh();
    }

    /// The route's upstream answered to message `id`: end the route's pause and
    /// failure streak. A message stepped over for this probe is judged the
    /// problem: it waits its own backoff and takes a strike.
    pub fn upstream_ok(&self, route: &crate::config::Route, id: &Id) {
        let rd = &route.redelivery;
        let mut inner = self.lock();
        let Some(rq) = inner.routes.get_mut(&route.name) else {
            return;
        };
        rq.failures = 0;
        rq.paused_until = None;
        rq.streak = None;
        let Some(suspect) = rq.suspect.take().filter(|s| s != id) else {
            return;
        };
        let Some(e) = rq.entries.get_mut(&suspect) else {
            return;
        };
        e.strikes = e.strikes.saturating_add(1);
        e.next_at = Some(Instant::now() + rd.wait(e.strikes));
        let state = e.state(&route.name);
        drop(inner);
        tracing::warn!(route = %route.name, id = %suspect,
            "spool: the upstream takes other messages but fails on this one; it waits its own backoff");
        let _ = self
            .layout
            .write_state(&self.layout.queue, &suspect, &state);
    }

    /// Record a failed attempt. Returns true when the message was dead-lettered:
    /// refused for good, `max_attempts` failures of its own, or older than
    /// `max_age`. Failures of the whole upstream count only against the age.
    pub fn failed(
        &self,
        route: &crate::config::Route,
        id: &Id,
        error: String,
        kind: FailureKind,
    ) -> bool {
        let rd = &route.redelivery;
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(rq) = inner.routes.get_mut(&route.name) else {
            return false;
        };
        let several = rq.entries.len() > 1;
        let Some(e) = rq.entries.get_mut(id) else {
            return false;
        };
        e.attempts = e.attempts.saturating_add(1);
        e.last_error = Some(error);
        if kind == FailureKind::Message {
            e.strikes = e.strikes.saturating_add(1);
        }
        let age = Duration::from_millis(now_ms().saturating_sub(e.since_ms));
        let dead =
            kind == FailureKind::Permanent || e.strikes >= rd.max_attempts || age >= rd.max_age;
        let state = e.state(&route.name);
        if !dead {
            if kind == FailureKind::Message {
                e.next_at = Some(now + rd.wait(e.strikes));
                if rq.suspect.as_ref() == Some(id) {
                    rq.suspect = None;
                }
            } else {
                // The whole route pauses.
                rq.failures = rq.failures.saturating_add(1);
                rq.paused_until = Some(now + rd.wait(rq.failures));
            }
            if kind == FailureKind::UpstreamWide {
                if rq.suspect.as_ref().is_some_and(|s| s != id) {
                    // The probe failed too: an outage, not one bad message.
                    rq.suspect = None;
                    rq.streak = None;
                } else {
                    let n = match &rq.streak {
                        Some((s, n)) if s == id => n + 1,
                        _ => 1,
                    };
                    rq.streak = Some((id.clone(), n));
                    if n >= PROBE_AFTER && several {
                        rq.suspect = Some(id.clone());
                        rq.streak = None;
                    }
                }
            }
            drop(inner);
            if let Err(err) = self.layout.write_state(&self.layout.queue, id, &state) {
                tracing::warn!(id = %id, error = %err.kind(), "spool: cannot record an attempt");
            }
            return false;
        }
        let size = rq.entries.remove(id).map_or(0, |e| e.size);
        if rq.suspect.as_ref() == Some(id) {
            rq.suspect = None;
        }
        rq.dead += 1;
        inner
            .dead
            .insert(id.clone(), (route.name.clone(), size, Instant::now()));
        drop(inner);
        if let Err(err) = self.layout.bury(id, &state) {
            tracing::error!(id = %id, error = %err.kind(), "spool: cannot move a message to the dead letters");
        }
        tracing::warn!(route = %route.name, id = %id, attempts = state.attempts,
            reason = state.last_error.as_deref().unwrap_or(""), "spool: dead-lettered");
        self.refresh();
        true
    }

    /// A record turned out damaged at delivery: set it aside.
    pub fn corrupt(&self, route: &str, id: &Id) {
        if let Err(e) = self.layout.set_aside(&self.layout.queue, id) {
            tracing::error!(id = %id, error = %e.kind(), "spool: cannot set a damaged record aside");
        }
        self.metrics.corrupt.inc();
        tracing::warn!(route = %route, id = %id, "spool: damaged record set aside");
        self.forget_entry(route, id);
    }

    /// Wake the route's worker.
    pub fn wake(&self, route: &str) -> Option<Arc<Notify>> {
        self.wake.get(route).cloned()
    }

    /// Bring the index in line with the folders: records added by `hookgate
    /// spool retry` join, records removed by `hookgate spool drop` leave, and
    /// damaged ones are set aside. Runs at start and then every second; the
    /// folders are listed by name only, and only unknown records are read.
    pub fn rescan(&self) -> std::io::Result<()> {
        // Entries indexed after this moment may be missing from the listings
        // below without being gone.
        let listed_at = Instant::now();
        let (on_disk, states) = Layout::ids(&self.layout.queue)?;
        let (dead_on_disk, dead_states) = Layout::ids(&self.layout.dead)?;
        let disk_ids: HashSet<&Id> = on_disk.iter().collect();
        let dead_ids: HashSet<&Id> = dead_on_disk.iter().collect();
        Layout::remove_orphan_states(&self.layout.queue, &states, &disk_ids, ORPHAN_AGE);
        Layout::remove_orphan_states(&self.layout.dead, &dead_states, &dead_ids, ORPHAN_AGE);
        // Records not in the index (and not being written or buried right now).
        let (unknown, unknown_dead): (Vec<Id>, Vec<Id>) = {
            let inner = self.lock();
            let known = |id: &Id| {
                inner.pending.contains(id)
                    || inner.dead.contains_key(id)
                    || inner.routes.values().any(|rq| rq.entries.contains_key(id))
            };
            (
                on_disk.iter().filter(|id| !known(id)).cloned().collect(),
                dead_on_disk
                    .iter()
                    .filter(|id| !inner.dead.contains_key(*id))
                    .cloned()
                    .collect(),
            )
        };
        let mut found = Vec::new();
        for id in unknown {
            self.ids.observe(&id);
            let bytes = match std::fs::read(Layout::msg(&self.layout.queue, &id)) {
                Ok(b) => b,
                // Delivered or moved meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    let mut inner = self.lock();
                    if inner.unreadable.insert(id.clone()) {
                        tracing::error!(id = %id, error = %e.kind(),
                            "spool: cannot read a record; it is not delivered until it can be read");
                    }
                    continue;
                }
            };
            match record::decode_meta(&bytes) {
                Ok(meta) => {
                    let st = Layout::read_state(&self.layout.queue, &id).unwrap_or_default();
                    found.push((id, disk_use(bytes.len() as u64), meta, st));
                }
                Err(e) => {
                    tracing::warn!(id = %id, problem = %e, "spool: damaged record set aside");
                    self.metrics.corrupt.inc();
                    let _ = self.layout.set_aside(&self.layout.queue, &id);
                }
            }
        }
        let mut found_dead = Vec::new();
        for id in unknown_dead {
            self.ids.observe(&id);
            let path = Layout::msg(&self.layout.dead, &id);
            let Ok(size) = std::fs::metadata(&path).map(|m| disk_use(m.len())) else {
                continue;
            };
            let route = match Layout::read_state(&self.layout.dead, &id) {
                Some(st) if !st.route.is_empty() => st.route,
                _ => std::fs::read(&path)
                    .ok()
                    .and_then(|b| record::decode_meta(&b).ok())
                    .map_or_else(|| "unknown".to_string(), |m| m.route),
            };
            found_dead.push((id, size, route));
        }

        let mut inner = self.lock();
        let now = Instant::now();
        for (id, size, meta, st) in found {
            if inner.routes.values().any(|rq| rq.entries.contains_key(&id)) {
                continue;
            }
            inner.unreadable.remove(&id);
            inner.used += size;
            if !self.dedup_window.is_zero() {
                let age = Duration::from_millis(now_ms().saturating_sub(meta.accepted_ms));
                if age < self.dedup_window {
                    let t = now.checked_sub(age).unwrap_or(now);
                    inner
                        .dedup
                        .remember(dedup_key(&meta.route, &meta.key), t, true);
                }
            }
            let wake = self.wake.get(&meta.route).cloned();
            inner.routes.entry(meta.route).or_default().entries.insert(
                id,
                Entry {
                    size,
                    accepted_ms: meta.accepted_ms,
                    attempts: st.attempts,
                    next_at: None,
                    last_error: st.last_error,
                    indexed: now,
                    strikes: st.strikes,
                    since_ms: st.since_ms.unwrap_or(meta.accepted_ms),
                    stuck: false,
                },
            );
            if let Some(w) = wake {
                w.notify_one();
            }
        }
        // Records gone from the queue folder (dropped or moved by an operator).
        let mut gone = 0u64;
        for rq in inner.routes.values_mut() {
            rq.entries.retain(|id, e| {
                let keep = e.indexed >= listed_at || disk_ids.contains(id);
                if !keep {
                    gone += e.size;
                }
                keep
            });
            if rq
                .suspect
                .as_ref()
                .is_some_and(|s| !rq.entries.contains_key(s))
            {
                rq.suspect = None;
            }
        }
        inner.used = inner.used.saturating_sub(gone);
        // Dead letters: gone ones leave, new ones join, counted by route.
        let stale: Vec<Id> = inner
            .dead
            .iter()
            .filter(|(id, (_, _, at))| *at < listed_at && !dead_ids.contains(id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if let Some((route, size, _)) = inner.dead.remove(&id) {
                inner.used = inner.used.saturating_sub(size);
                if let Some(rq) = inner.routes.get_mut(&route) {
                    rq.dead -= 1;
                }
            }
        }
        for (id, size, route) in found_dead {
            if inner.dead.contains_key(&id) {
                continue;
            }
            inner.used += size;
            inner.routes.entry(route.clone()).or_default().dead += 1;
            inner.dead.insert(id, (route, size, now));
        }
        let dedup_window = self.dedup_window;
        inner.dedup.expire(now, dedup_window);
        drop(inner);
        self.refresh();
        Ok(())
    }

    /// Update the gauges from the index.
    pub fn refresh(&self) {
        let inner = self.lock();
        let now = now_ms();
        for (name, rq) in &inner.routes {
            let m = &self.metrics;
            m.messages
                .with_label_values(&[name])
                .set(rq.entries.len() as i64);
            // Ids sort by acceptance time: the first entry is the oldest.
            let oldest = rq.entries.values().next().map(|e| e.accepted_ms);
            m.oldest_age
                .with_label_values(&[name])
                .set(oldest.map_or(0.0, |t| now.saturating_sub(t) as f64 / 1000.0));
            m.dead_letters.with_label_values(&[name]).set(rq.dead);
        }
        self.metrics.bytes.set(inner.used as i64);
    }

    /// Messages waiting, over all routes.
    pub fn depth(&self) -> usize {
        self.lock().routes.values().map(|r| r.entries.len()).sum()
    }
}

#[cfg(test)]
mod tests;
