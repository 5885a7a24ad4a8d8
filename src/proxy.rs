//! The pingora glue: an HTTP application served on pingora's listeners that
//! runs the pipeline stages in order for each request, plus the accept-time
//! connection filter.
//!
//! Why an `HttpServerApp` rather than pingora's `ProxyHttp` phases: hookgate reads
//! and checks the whole body before any byte goes upstream, and `ProxyHttp` cannot
//! forward a body read in `request_filter` (pingora issues #349/#688) nor buffer
//! more than 64 KiB for a retry. Here the request is read, judged and then sent
//! with pingora's own connector; nothing needs working around.

use crate::access::{AccessPolicy, Client};
use crate::config::{Config, Delivery, Limits, Route};
use crate::error::Rejection;
use crate::framing::{self, FramingError, HeadLimits};
use crate::headers;
use crate::lifecycle::Lifecycle;
use crate::log::AccessRecord;
use crate::metrics::{Metrics, NO_ROUTE};
use crate::spool::policy::Verdict;
use crate::spool::record::{self, Meta};
use crate::spool::{Accepted, Check, Spool};
use crate::upstream::{Answer, Deliverer, Destination, Failure, Outgoing};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderName, HeaderValue, Method};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Most bytes of an unwanted body read and discarded after an early answer, so
/// the client sees the answer instead of a reset.
const DISCARD_MAX_BYTES: usize = 1024 * 1024;
/// Most time spent discarding an unwanted body.
const DISCARD_MAX_TIME: Duration = Duration::from_secs(1);

/// A route with its delivery target.
pub struct RouteEntry {
    /// The validated route.
    pub route: Arc<Route>,
    /// Where it delivers.
    pub dest: Destination,
    /// Its metric series.
    pub metrics: crate::metrics::RouteMetrics,
}

/// The public HTTP application.
pub struct Gateway {
    routes: HashMap<String, Arc<RouteEntry>>,
    access: AccessPolicy,
    global_secret: Option<Arc<crate::config::Secret>>,
    deliverer: Deliverer,
    metrics: Arc<Metrics>,
    lifecycle: Arc<Lifecycle>,
    header_timeout: Duration,
    keepalive_secs: u64,
    scheme: &'static str,
    head_limits: HeadLimits,
    /// Body bytes that requests in flight may hold, together.
    body_budget: Arc<Semaphore>,
    /// The durable spool, when a route uses it.
    spool: Option<Arc<Spool>>,
}

/// Marks a connection that already served a request.
struct Reused;

impl Gateway {
    /// Build the application from a validated config.
    pub fn new(
        cfg: &Config,
        metrics: Arc<Metrics>,
        lifecycle: Arc<Lifecycle>,
        spool: Option<Arc<Spool>>,
    ) -> std::io::Result<Self> {
        let mut deliverer = Deliverer::new();
        let mut routes = HashMap::new();
        for r in &cfg.routes {
            let dest =
                deliverer.destination(&r.upstream, r.timeout, r.fail_timeout, &r.upstream_tls)?;
            let mode = r.inspector.transcription();
            let removal = (mode != crate::inspect::Transcription::Keep).then(|| mode.as_str());
            routes.insert(
                r.path.clone(),
                Arc::new(RouteEntry {
                    route: r.clone(),
                    dest,
                    metrics: metrics.route(&r.name, removal),
                }),
            );
        }
        Ok(Gateway {
            routes,
            access: cfg.access.clone(),
            global_secret: cfg.secret.clone(),
            deliverer,
            metrics,
            lifecycle,
            header_timeout: cfg.server.header_timeout,
            keepalive_secs: cfg.server.keepalive_timeout.as_secs().max(1),
            scheme: if cfg.server.tls.is_some() {
                "https"
            } else {
                "http"
            },
            head_limits: cfg.server.head_limits,
            body_budget: Arc::new(Semaphore::new(
                usize::try_from(cfg.server.max_inflight_body_bytes).unwrap_or(usize::MAX >> 4),
            )),
            spool,
        })
    }
}

/// What one request produced, for the answer and the accounting.
struct Handled {
    status: u16,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
    /// The body was not (completely) read: discard what is left, then close.
    body_unread: bool,
    close: bool,
}

/// Per-request facts gathered on the way, for logs and metrics.
#[derive(Default)]
struct Facts {
    peer: Option<IpAddr>,
    client: Option<Client>,
    route: Option<Arc<RouteEntry>>,
    bytes_in: usize,
    upstream_time: Option<Duration>,
    upstream_status: Option<u16>,
    call_id: Option<String>,
    outcome: &'static str,
    /// The client sent `Expect: 100-continue` and has not been invited to
    /// send its body: after an early answer there is nothing to discard.
    awaiting_continue: bool,
}

#[async_trait]
impl HttpServerApp for Gateway {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let reused = session.take_connection_user_context().is_some();
        // A fresh connection must deliver its header in time; a kept-alive one may
        // first idle for the keep-alive time.
        let wait = if reused {
            self.header_timeout + Duration::from_secs(self.keepalive_secs)
        } else {
            self.header_timeout
        };
        match tokio::time::timeout(wait, session.read_request()).await {
            Ok(Ok(true)) => {}
            Ok(Err(e)) if matches!(e.etype(), pingora::ErrorType::InvalidHTTPHeader) => {
                // pingora refused the head itself (conflicting Content-Length,
                // a transfer coding it cannot frame, bad syntax, too many or too
                // large headers): answer, then close.
                let r = if e.to_string().contains("larger than")
                    || format!("{e:?}").contains("TooManyHeaders")
                {
                    Rejection::HeaderTooLarge
                } else {
                    Rejection::BadRequest("the request head is malformed".into())
                };
                self.reject_unparsed(&mut session, &r).await;
                return None;
            }
            // Timed out, closed by the client, or a read error: nothing to answer.
            _ => return None,
        }
        let started = Instant::now();
        let _in_flight = self.lifecycle.enter(&self.metrics);
        if *shutdown.borrow() || self.lifecycle.draining() {
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(self.keepalive_secs));
        }

        let mut facts = Facts {
            outcome: "forwarded",
            ..Facts::default()
        };
        let handled = match self.handle(&mut session, &mut facts).await {
            Ok(h) => h,
            Err(r) => {
                facts.outcome = r.code();
                Handled {
                    status: r.status(),
                    headers: error_headers(&r),
                    body: Bytes::from(r.to_json()),
                    body_unread: !session.is_body_done() && !facts.awaiting_continue,
                    // A body it may still send unasked is never read as a request.
                    close: r.closes_connection() || facts.awaiting_continue,
                }
            }
        };
        if handled.close {
            session.set_keepalive(None);
        }
        let written = respond(&mut session, &handled).await;
        if handled.body_unread {
            discard_body(&mut session).await;
            session.set_keepalive(None);
        }
        self.account(&facts, &handled, started, written);

        if !written {
            return None;
        }
        let mut persistent = HttpPersistentSettings::for_session(&session);
        persistent.set_user_context(Box::new(Reused));
        match session.finish().await {
            Ok(Some(s)) => Some(ReusedHttpStream::from_reusable_stream(s, persistent)),
            _ => None,
        }
    }
}

impl Gateway {
    /// Answer a request whose head pingora could not parse, then account for it.
    async fn reject_unparsed(&self, s: &mut ServerSession, r: &Rejection) {
        let started = Instant::now();
        let handled = Handled {
            status: r.status(),
            headers: error_headers(r),
            body: Bytes::from(r.to_json()),
            body_unread: false,
            close: true,
        };
        let mut written = false;
        if let Ok(mut resp) = ResponseHeader::build_no_case(handled.status, Some(4)) {
            for (k, v) in &handled.headers {
                let _ = resp.append_header(k.clone(), v.clone());
            }
            let _ = resp.insert_header(header::CONTENT_LENGTH, handled.body.len().to_string());
            written = s
                .write_error_response(resp, handled.body.clone())
                .await
                .is_ok();
        }
        let facts = Facts {
            peer: s
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip().to_canonical()),
            outcome: r.code(),
            ..Facts::default()
        };
        self.account(&facts, &handled, started, written);
    }

    /// Stages 2 to 9 for one request.
    async fn handle(&self, s: &mut ServerSession, f: &mut Facts) -> Result<Handled, Rejection> {
        // Stage 2: identify the client.
        let peer = s
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_canonical());
        f.peer = peer;
        let req = s.req_header();
        let client = self.access.identify(
            peer,
            req.headers
                .get_all(headers::X_FORWARDED_FOR)
                .iter()
                .map(HeaderValue::as_bytes),
        );
        f.client = Some(client);
        if !self.access.is_client_allowed(client) {
            return Err(Rejection::IpNotAllowed);
        }

        // Framing: refuse what could be read two ways (request smuggling) and
        // heads over the limits, from the bytes as they came.
        // A body on another method is answered by routing (404, or 405 as
        // product.md documents) and never read: the connection closes after
        // the answer, so the unread bytes are never taken as a request.
        if let Some(h1) = s.as_http1() {
            framing::check_head(&h1.get_headers_raw_bytes(), self.head_limits).map_err(
                |e| match e {
                    FramingError::Malformed(why) => Rejection::BadRequest(why.into()),
                    FramingError::TooLarge(_) => Rejection::HeaderTooLarge,
                },
            )?;
        }
        let req = s.req_header();

        // Stages 3 and 4: route, authenticate, method, media type.
        let entry = self.routes.get(req.uri.path()).cloned();
        f.route = entry.clone();
        let secret = match &entry {
            Some(e) => e.route.secret.as_ref(),
            None => self.global_secret.as_ref(),
        };
        if let Some(secret) = secret {
            if !secret.accepts(req.headers.get(&secret.header).map(HeaderValue::as_bytes)) {
                return Err(Rejection::Unauthorized);
            }
        }
        let entry = entry.ok_or(Rejection::RouteNotFound)?;
        let route = &entry.route;
        if req.method != Method::POST {
            return Err(Rejection::MethodNotAllowed);
        }
        if !is_json_media_type(req.headers.get(header::CONTENT_TYPE)) {
            return Err(Rejection::UnsupportedMediaType);
        }

        // Stage 5: the whole body.
        let body = read_body(s, route.limits, &self.body_budget, &mut f.awaiting_continue).await;
        f.bytes_in = s.body_bytes_read();
        // The permit holds the body's share of the memory budget until the
        // request is done.
        let (body, _budget) = body?;
        let rm = &entry.metrics;
        rm.body_bytes.observe(body.len() as f64);

        // Stages 6 to 8: parse, validate, transform.
        let outcome = route.inspector.inspect(&body);
        let mut outcome = match outcome {
            Ok(o) => o,
            Err(r) => {
                if matches!(r, Rejection::SchemaViolation(_)) {
                    rm.schema_violations.inc();
                    log_violations(&route.name, &r, "enforce");
                }
                return Err(r);
            }
        };
        f.call_id = outcome.call_id.take();
        if !outcome.violations.is_empty() {
            rm.schema_violations.inc();
            log_violations(
                &route.name,
                &Rejection::SchemaViolation(outcome.violations.clone()),
                "report",
            );
        }
        if outcome.transcription_removed {
            if let Some(c) = &rm.transcriptions_removed {
                c.inc();
            }
        }
        let body = match outcome.body {
            Some(b) => Bytes::from(b),
            None => body,
        };

        // Stage 8 (headers) and 9: deliver, now or through the spool.
        let base = self.base_headers(s.req_header(), route, peer);
        let spool = match (route.delivery, &self.spool) {
            (Delivery::Proxy, _) | (_, None) => {
                let out = Outgoing::for_route(route, base, body, None);
                let result = self.deliver(&entry, out, route.timeout, f).await;
                return match result {
                    Ok(answer) => Ok(passed_back(answer)),
                    Err(Failure::Timeout) => Err(Rejection::UpstreamTimeout),
                    Err(Failure::Unavailable(why) | Failure::NotConnected(why)) => {
                        tracing::warn!(route = %route.name, reason = %why, "upstream unavailable");
                        Err(Rejection::UpstreamUnavailable)
                    }
                };
            }
            (_, Some(spool)) => spool,
        };
        let meta = Meta {
            route: route.name.clone(),
            accepted_ms: crate::spool::now_ms(),
            key: record::idempotency_key(f.call_id.as_deref(), &body),
            call_id: f.call_id.clone(),
            headers: base
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
                .collect(),
        };
        let mut reserved = None;
        if route.delivery == Delivery::ProxyOrSpool {
            let reservation = match spool.check_in(&route.name, &meta.key) {
                Check::New(r) => r,
                Check::Duplicate => {
                    f.outcome = "duplicate";
                    return Ok(accepted_answer("duplicate", None));
                }
                Check::InProgress => return Err(Rejection::DuplicateInProgress),
            };
            // With older webhooks waiting, a first try would overtake them.
            if !spool.has_backlog(&route.name) {
                let out = Outgoing::for_route(route, base, body.clone(), Some(&meta.key));
                let first_try = route.redelivery.first_try.min(route.timeout);
                match self.deliver(&entry, out, first_try, f).await {
                    Ok(answer) => match route.redelivery.statuses.verdict(answer.status) {
                        Verdict::Delivered => {
                            reservation.confirm();
                            return Ok(passed_back(answer));
                        }
                        // Refused for good: passed back, and a repeat is welcome.
                        Verdict::Permanent => return Ok(passed_back(answer)),
                        Verdict::Retry => {
                            tracing::info!(route = %route.name, status = answer.status, "first try failed; spooling");
                        }
                    },
                    Err(why) => {
                        tracing::info!(route = %route.name, reason = ?why, "first try failed; spooling");
                    }
                }
            }
            reserved = Some(reservation);
        }
        // On failure the reservation is released: a retry by the sender is welcome.
        match spool.accept(meta, &body, reserved).await? {
            Accepted::Duplicate => {
                f.outcome = "duplicate";
                Ok(accepted_answer("duplicate", None))
            }
            Accepted::Spooled(id) => {
                f.outcome = "spooled";
                Ok(accepted_answer("spooled", Some(id.as_str())))
            }
        }
    }

    /// One delivery with a time budget, with its metrics and facts.
    async fn deliver(
        &self,
        entry: &RouteEntry,
        out: Outgoing,
        budget: Duration,
        f: &mut Facts,
    ) -> Result<Answer, Failure> {
        let rm = &entry.metrics;
        let t0 = Instant::now();
        let mut retries = 0;
        let result = self
            .deliverer
            .deliver_counting(&entry.dest, out, budget, &mut retries)
            .await;
        let upstream_time = t0.elapsed();
        f.upstream_time = Some(upstream_time);
        rm.upstream_duration.observe(upstream_time.as_secs_f64());
        // Counted whatever the outcome: a retry happened even when the
        // next target failed too.
        if retries > 0 {
            rm.retries.inc_by(retries.into());
        }
        let answer = result?;
        f.upstream_status = Some(answer.status);
        rm.response(answer.status).inc();
        Ok(answer)
    }

    /// The upstream request's headers before the route's rules: the client's,
    /// minus hop-by-hop, framing and the secret, plus the forwarding headers.
    fn base_headers(
        &self,
        req: &pingora::http::RequestHeader,
        route: &Route,
        peer: Option<IpAddr>,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let secret_headers = [
            route.secret.as_ref().map(|s| &s.header),
            self.global_secret.as_ref().map(|s| &s.header),
        ];
        let mut list: Vec<(HeaderName, HeaderValue)> =
            headers::forwardable(&req.headers, secret_headers)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
        let peer_s = peer.map(headers::IpText::new);
        let peer_s = peer_s.as_ref().map_or("", headers::IpText::as_str);
        let trusted = peer.is_some_and(|p| self.access.is_trusted(p));
        if let Some(v) = headers::forwarded_for(&req.headers, peer_s, trusted) {
            list.push((headers::X_FORWARDED_FOR, v));
        }
        let proto = req
            .headers
            .get(headers::X_FORWARDED_PROTO)
            .filter(|_| trusted)
            .cloned()
            .unwrap_or(HeaderValue::from_static(self.scheme));
        list.push((headers::X_FORWARDED_PROTO, proto));
        list
    }

    fn account(&self, f: &Facts, h: &Handled, started: Instant, written: bool) {
        let route = f.route.as_ref().map_or(NO_ROUTE, |e| e.route.name.as_str());
        let elapsed = started.elapsed();
        match &f.route {
            Some(e) => {
                if f.outcome == "forwarded" {
                    e.metrics.forwarded.inc();
                } else {
                    self.metrics
                        .requests
                        .with_label_values(&[route, f.outcome])
                        .inc();
                }
                e.metrics.duration.observe(elapsed.as_secs_f64());
            }
            None => {
                self.metrics
                    .requests
                    .with_label_values(&[route, f.outcome])
                    .inc();
                self.metrics
                    .request_duration
                    .with_label_values(&[route])
                    .observe(elapsed.as_secs_f64());
            }
        }
        if !AccessRecord::enabled() {
            return;
        }
        AccessRecord {
            request_id: self.lifecycle.next_request_id(),
            peer: f.peer,
            client: f.client.and_then(|c| c.addr()),
            route,
            outcome: f.outcome,
            status: h.status,
            bytes_in: f.bytes_in,
            bytes_out: if written { h.body.len() } else { 0 },
            duration: elapsed,
            upstream_duration: f.upstream_time,
            upstream_status: f.upstream_status,
            call_id: f.call_id.as_deref(),
        }
        .emit();
    }
}

/// The upstream's answer, passed back to the client.
fn passed_back(answer: Answer) -> Handled {
    let headers = headers::response_forwardable(&answer.headers)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Handled {
        status: answer.status,
        headers,
        body: answer.body,
        body_unread: false,
        close: false,
    }
}

/// 202 for a webhook taken into the spool (or recognised as a duplicate).
fn accepted_answer(status: &str, id: Option<&str>) -> Handled {
    let body = match id {
        Some(id) => format!("{{\"status\":\"{status}\",\"id\":\"{id}\"}}"),
        None => format!("{{\"status\":\"{status}\"}}"),
    };
    Handled {
        status: 202,
        headers: vec![(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body: Bytes::from(body),
        body_unread: false,
        close: false,
    }
}

fn error_headers(r: &Rejection) -> Vec<(HeaderName, HeaderValue)> {
    let mut h = vec![(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    )];
    if matches!(r, Rejection::MethodNotAllowed) {
        h.push((header::ALLOW, HeaderValue::from_static("POST")));
    }
    if matches!(r, Rejection::DuplicateInProgress) {
        h.push((header::RETRY_AFTER, HeaderValue::from_static("1")));
    }
    h
}

/// `application/json`, with parameters (`; charset=utf-8`) allowed.
pub fn is_json_media_type(v: Option<&HeaderValue>) -> bool {
    let Some(v) = v.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = v.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// Stage 5: read the whole body within the route's size and time limits.
async fn read_body(
    s: &mut ServerSession,
    limits: Limits,
    budget: &Arc<Semaphore>,
    awaiting_continue: &mut bool,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), Rejection> {
    let max = limits.max_body_bytes;
    let req = s.req_header();
    let declared = req
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let expects_continue = req
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    *awaiting_continue = expects_continue;
    if declared.is_some_and(|n| n > max) {
        return Err(Rejection::BodyTooLarge { limit: max });
    }
    // Reserve the declared size up front, before a `100 Continue` invites the
    // body (an overloaded gateway answers 503 before the client uploads); a
    // chunked body reserves as it grows.
    let mut permit: Option<OwnedSemaphorePermit> = None;
    if let Some(n) = declared.filter(|n| *n > 0) {
        permit = Some(reserve(budget, n as usize)?);
    }
    if expects_continue {
        if s.write_continue_response().await.is_err() {
            return Err(Rejection::BadRequest("client went away".into()));
        }
        *awaiting_continue = false;
    }
    let deadline = tokio::time::Instant::now() + limits.body_timeout;
    let capacity = declared.unwrap_or(16 * 1024).min(max) as usize;
    // Taken only when the body comes in more than one piece: most arrive in
    // one, and go on as pingora gave them.
    let mut buf = BytesMut::new();
    loop {
        match tokio::time::timeout_at(deadline, s.read_request_body()).await {
            Err(_) => return Err(Rejection::BodyTimeout),
            Ok(Err(e)) => {
                return Err(match e.etype() {
                    pingora::ErrorType::ReadTimedout => Rejection::BodyTimeout,
                    _ => Rejection::BadRequest(
                        "the body is cut short or its framing is invalid".into(),
                    ),
                })
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(chunk))) => {
                if (buf.len() + chunk.len()) as u64 > max {
                    return Err(Rejection::BodyTooLarge { limit: max });
                }
                if declared.is_none() {
                    let more = reserve(budget, chunk.len())?;
                    match permit.as_mut() {
                        Some(p) => p.merge(more),
                        None => permit = Some(more),
                    }
                }
                if buf.is_empty() && s.is_body_done() {
                    // The whole body in one piece: no copy.
                    return Ok((chunk, permit));
                }
                if buf.capacity() == 0 {
                    buf.reserve(capacity.max(chunk.len()));
                }
                buf.extend_from_slice(&chunk);
            }
        }
    }
    Ok((buf.freeze(), permit))
}

/// Take `n` bytes of the in-flight body budget, or refuse with 503.
fn reserve(budget: &Arc<Semaphore>, n: usize) -> Result<OwnedSemaphorePermit, Rejection> {
    let n = u32::try_from(n).map_err(|_| Rejection::Overloaded)?;
    budget
        .clone()
        .try_acquire_many_owned(n)
        .map_err(|_| Rejection::Overloaded)
}

/// After an early answer, read (and drop) a bounded part of what the client is
/// still sending, so that closing does not reset the connection under the answer.
async fn discard_body(s: &mut ServerSession) {
    let deadline = tokio::time::Instant::now() + DISCARD_MAX_TIME;
    let mut seen = 0usize;
    while seen < DISCARD_MAX_BYTES {
        match tokio::time::timeout_at(deadline, s.read_request_body()).await {
            Ok(Ok(Some(chunk))) => seen += chunk.len(),
            _ => break,
        }
    }
}

async fn respond(s: &mut ServerSession, h: &Handled) -> bool {
    // Without pingora's header-case map, which costs a second header map per
    // answer: pingora still writes the standard names title-cased, others go
    // out in lowercase, as Envoy sends them (HTTP/1.1 names are
    // case-insensitive).
    let Ok(mut resp) = ResponseHeader::build_no_case(h.status, Some(h.headers.len() + 4)) else {
        return false;
    };
    for (k, v) in &h.headers {
        if resp.append_header(k.clone(), v.clone()).is_err() {
            return false;
        }
    }
    if resp
        .insert_header(header::CONTENT_LENGTH, h.body.len().to_string())
        .is_err()
    {
        return false;
    }
    if s.write_response_header(Box::new(resp)).await.is_err() {
        return false;
    }
    s.write_response_body(h.body.clone(), true).await.is_ok()
}

fn log_violations(route: &str, r: &Rejection, mode: &str) {
    if let Rejection::SchemaViolation(v) = r {
        // Paths and schema keywords only: never payload values.
        let paths: Vec<&str> = v.iter().map(|v| v.path.as_str()).collect();
        tracing::info!(route = %route, mode = %mode, count = v.len(), paths = ?paths, "schema violations");
    }
}

/// Caps the client connections open at once: past the cap a new connection is
/// closed at once, before any byte is read, so slow or idle clients cannot
/// exhaust the process.
pub struct ConnectionLimit {
    /// The HTTP application.
    pub inner: Arc<Gateway>,
    /// One permit per open connection.
    pub permits: Arc<Semaphore>,
    /// Counts connections closed because of the cap.
    pub overflow: prometheus::IntCounter,
    /// Connections open now.
    pub open: prometheus::IntGauge,
}

struct OpenGuard(prometheus::IntGauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[async_trait]
impl pingora::apps::ServerApp for ConnectionLimit {
    async fn process_new(
        self: &Arc<Self>,
        stream: pingora::protocols::Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<pingora::protocols::Stream> {
        let Ok(_permit) = self.permits.clone().try_acquire_owned() else {
            self.overflow.inc();
            return None;
        };
        self.open.inc();
        let _open = OpenGuard(self.open.clone());
        pingora::apps::ServerApp::process_new(&self.inner, stream, shutdown).await
    }
}

/// The accept-time filter: drops peers outside the allow list before any byte of
/// HTTP is read (only installed when no trusted proxy is configured).
#[derive(Debug)]
pub struct AdmissionFilter {
    /// The policy.
    pub access: AccessPolicy,
    /// Counts drops.
    pub rejected: prometheus::IntCounter,
}

#[async_trait]
impl pingora::listeners::ConnectionFilter for AdmissionFilter {
    async fn should_accept(&self, addr: Option<&std::net::SocketAddr>) -> bool {
        let ok = self.access.admit_connection(addr.map(|a| a.ip()));
        if !ok {
            self.rejected.inc();
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        let ok = |s: &str| is_json_media_type(Some(&HeaderValue::from_str(s).unwrap()));
        assert!(ok("application/json"));
        assert!(ok("Application/JSON; charset=utf-8"));
        assert!(!ok("text/plain"));
        assert!(!ok("application/jsonx"));
        assert!(!ok("application/x-www-form-urlencoded"));
        assert!(!is_json_media_type(None));
    }
}
