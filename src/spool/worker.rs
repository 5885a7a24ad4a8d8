//! Background delivery: one loop per spooling route takes the oldest due
//! message, delivers it with the route's current settings (upstream, timeout,
//! header rules) plus the idempotency key, and records the result. A pingora
//! background service runs the loops and the once-a-second rescan.

use super::policy::{upstream_wide, Verdict};
use super::record::{self, Id};
use super::store::Layout;
use super::{FailureKind, Pick, Spool};
use crate::config::Route;
use crate::upstream::{Deliverer, Destination, Failure, Outgoing};
use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the folders are compared with the index.
pub const RESCAN_EVERY: Duration = Duration::from_secs(1);

/// One spooling route with its own delivery target (its own connection pool).
pub struct RouteWorker {
    /// The route.
    pub route: Arc<Route>,
    /// Where it delivers.
    pub dest: Destination,
}

/// The pingora background service that delivers spooled webhooks.
pub struct SpoolService {
    /// The spool.
    pub spool: Arc<Spool>,
    /// Connections for background delivery (separate from the request path's).
    pub deliverer: Arc<Deliverer>,
    /// The spooling routes.
    pub routes: Vec<Arc<RouteWorker>>,
}

#[async_trait]
impl BackgroundService for SpoolService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tasks = Vec::new();
        for w in &self.routes {
            let (spool, deliverer, w, sd) = (
                self.spool.clone(),
                self.deliverer.clone(),
                w.clone(),
                shutdown.clone(),
            );
            // Supervised: should a loop ever panic, it is logged and restarted,
            // so 202s never go on while nothing delivers.
            tasks.push(tokio::spawn(async move {
                loop {
                    let (spool, deliverer, w, sd) =
                        (spool.clone(), deliverer.clone(), w.clone(), sd.clone());
                    let run =
                        tokio::spawn(async move { run_route(&spool, &deliverer, &w, sd).await });
                    match run.await {
                        Err(e) if e.is_panic() => {
                            tracing::error!("spool: a delivery loop panicked; restarting it");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        _ => return,
                    }
                }
            }));
        }
        let spool = self.spool.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(RESCAN_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let s = spool.clone();
                let r = tokio::task::spawn_blocking(move || s.rescan()).await;
                if let Ok(Err(e)) = r {
                    tracing::error!(error = %e.kind(), "spool: rescan failed");
                }
            }
        }));
        let _ = shutdown.changed().await;
        for t in tasks {
            t.abort();
        }
    }
}

/// Deliver a route's messages until shutdown.
pub async fn run_route(
    spool: &Arc<Spool>,
    deliverer: &Deliverer,
    w: &RouteWorker,
    mut shutdown: ShutdownWatch,
) {
    let name = w.route.name.clone();
    let Some(wake) = spool.wake(&name) else {
        return;
    };
    loop {
        if *shutdown.borrow() {
            return;
        }
        match spool.pick(&name, Instant::now()) {
            Pick::Deliver(id) => attempt(spool, deliverer, w, &id).await,
            other => {
                let until = match other {
                    Pick::WaitUntil(t) => t,
                    _ => Instant::now() + Duration::from_secs(3600),
                };
                tokio::select! {
                    _ = tokio::time::sleep_until(until.into()) => {}
                    _ = wake.notified() => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

/// The request for a spooled message: stored headers, the route's rules, the
/// idempotency key.
pub fn outgoing(route: &Route, meta: &record::Meta, body: Bytes) -> Outgoing {
    let list: Vec<(HeaderName, HeaderValue)> = meta
        .headers
        .iter()
        .filter_map(|(k, v)| {
            Some((
                HeaderName::from_bytes(k.as_bytes()).ok()?,
                HeaderValue::from_str(v).ok()?,
            ))
        })
        .collect();
    Outgoing::for_route(route, list, body, Some(&meta.key))
}

/// Errors that say the process ran short (file descriptors, memory), not that
/// a record is bad (Linux `EMFILE`, `ENFILE`, `ENOMEM`).
fn out_of_resources(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(24 | 23 | 12)) || e.kind() == std::io::ErrorKind::OutOfMemory
}

async fn attempt(spool: &Arc<Spool>, deliverer: &Deliverer, w: &RouteWorker, id: &Id) {
    let route = &w.route;
    let path = Layout::msg(&spool.layout().queue, id);
    let read = tokio::task::spawn_blocking(move || std::fs::read(path)).await;
    let bytes = match read {
        Ok(Ok(b)) => b,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            // Dropped by an operator meanwhile.
            spool.forget_entry(&route.name, id);
            return;
        }
        Ok(Err(e)) if !out_of_resources(&e) => {
            // A failure of this message alone (a bad block, say): it backs off
            // and is dead-lettered after `max_attempts`, while the route's other
            // messages go on (as `Unreachable` it paused the whole route, and
            // never counted against the message).
            spool.failed(
                route,
                id,
                "cannot read the record".into(),
                FailureKind::Message,
            );
            return;
        }
        _ => {
            // Out of file descriptors or memory (or the read task failed): the
            // process's trouble, not the message's. The route pauses.
            spool.failed(
                route,
                id,
                "cannot read the record now".into(),
                FailureKind::Unreachable,
            );
            return;
        }
    };
    let (meta, range) = match record::decode(&bytes) {
        Ok(x) => x,
        Err(_) => {
            spool.corrupt(&route.name, id);
            return;
        }
    };
    let body = Bytes::from(bytes).slice(range);
    let out = outgoing(route, &meta, body);
    let m = &spool.metrics;
    let result = deliverer.deliver(&w.dest, out).await;
    let count = |result: &str| {
        m.deliveries
            .with_label_values(&[route.name.as_str(), result])
            .inc();
    };
    match result {
        Ok((answer, _)) => match route.redelivery.statuses.verdict(answer.status) {
            Verdict::Delivered => {
                spool.upstream_ok(route, id);
                let s = spool.clone();
                let (r, i) = (route.name.clone(), id.clone());
                let _ = tokio::task::spawn_blocking(move || s.remove(&r, &i)).await;
                count("delivered");
            }
            Verdict::Permanent => {
                spool.upstream_ok(route, id);
                let why = format!("HTTP {} (permanent)", answer.status);
                bury_or_retry(spool, route, id, why, FailureKind::Permanent).await;
                count("dead_lettered");
            }
            Verdict::Retry => {
                let kind = if upstream_wide(answer.status) {
                    FailureKind::UpstreamWide
                } else {
                    spool.upstream_ok(route, id);
                    FailureKind::Message
                };
                let why = format!("HTTP {}", answer.status);
                let dead = bury_or_retry(spool, route, id, why, kind).await;
                count(if dead { "dead_lettered" } else { "retry" });
            }
        },
        Err(f) => {
            let (why, kind) = match f {
                Failure::Timeout => ("timeout".to_string(), FailureKind::UpstreamWide),
                Failure::Unavailable(why) => {
                    (format!("unavailable: {why}"), FailureKind::UpstreamWide)
                }
                // Nothing was sent: this message cannot be the cause.
                Failure::NotConnected(why) => {
                    (format!("not connected: {why}"), FailureKind::Unreachable)
                }
            };
            let dead = bury_or_retry(spool, route, id, why, kind).await;
            count(if dead { "dead_lettered" } else { "retry" });
        }
    }
}

async fn bury_or_retry(
    spool: &Arc<Spool>,
    route: &Arc<Route>,
    id: &Id,
    why: String,
    kind: FailureKind,
) -> bool {
    let (s, r, i) = (spool.clone(), route.clone(), id.clone());
    tokio::task::spawn_blocking(move || s.failed(&r, &i, why, kind))
        .await
        .unwrap_or(false)
}
