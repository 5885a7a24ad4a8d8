//! Delivery (pipeline stage 9): send a cleaned request to a route's upstream and
//! bring back its answer.
//!
//! - HTTP(S) upstreams: pingora's transport connects (TCP, TLS via rustls) and
//!   hookgate's small HTTP/1.1 client (`h1`) sends each request in one write
//!   and keeps connections for reuse. Several targets are balanced round-robin; a request is
//!   retried on the next target only when connecting failed, i.e. when no byte of
//!   it reached the first one. A target whose connect failed (or hung past the
//!   request's time) goes to the back of the line for the route's
//!   `fail_timeout_ms` ([`FAIL_TIMEOUT`] by default, as nginx's
//!   `max_fails=1 fail_timeout=10s`): tried only after the other targets
//!   failed too, so requests stop paying for a dead target while another is up
//!   (one in each period finds out again whether it is back), and none is
//!   refused while any target may answer. One warning per outage names it; the
//!   gateway's requests and the spool's background deliveries keep their marks
//!   apart.
//! - `file:` upstreams append the body as one JSON line and answer 202.

use crate::config::{FileSink, HttpTarget, Upstream, UpstreamTls};
use crate::h1;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::connectors::TransportConnector;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::WrappedX509;
use pingora::ErrorType;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Largest upstream response body passed back; beyond, the answer counts as garbage.
pub const MAX_RESPONSE_BODY: usize = 4 * 1024 * 1024;

/// How long an idle upstream connection stays in the pool.
pub const UPSTREAM_IDLE: Duration = Duration::from_secs(30);

/// The longest a single connect attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a target whose connect failed waits behind the others, unless
/// the route says otherwise (`fail_timeout_ms`; nginx's default
/// `fail_timeout`).
pub const FAIL_TIMEOUT: Duration = Duration::from_secs(10);

/// What the upstream answered.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Response headers (hop-by-hop ones are filtered by the caller).
    pub headers: http::HeaderMap,
    /// Whole response body.
    pub body: Bytes,
}

/// Why delivery failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Reset, closed or garbage after the request was (maybe) sent: 502.
    Unavailable(String),
    /// No answer in time: 504.
    Timeout,
    /// No target could be connected to: nothing of the request left hookgate
    /// (502).
    NotConnected(String),
}

/// The request to deliver: header list (already filtered) and body.
pub struct Outgoing {
    /// Headers for the upstream, without Host and Content-Length.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body.
    pub body: Bytes,
}

impl Outgoing {
    /// The upstream request of `route`: the base headers (client headers after
    /// hop-by-hop and secret removal, plus the forwarding headers), the route's
    /// `remove`/`set` rules, and the idempotency key when given.
    pub fn for_route(
        route: &crate::config::Route,
        mut headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
        idempotency_key: Option<&str>,
    ) -> Outgoing {
        crate::headers::apply_rules(&route.headers, |name, value| {
            headers.retain(|(k, _)| k != name);
            if let Some(v) = value {
                headers.push((name.clone(), v.clone()));
            }
        });
        if let Some(v) = idempotency_key.and_then(|k| HeaderValue::from_str(k).ok()) {
            let name = &route.redelivery.idempotency_header;
            headers.retain(|(k, _)| k != name);
            headers.push((name.clone(), v));
        }
        Outgoing { headers, body }
    }
}

/// One route's delivery target(s), built once at start.
pub struct Destination {
    kind: Kind,
    timeout: Duration,
}

enum Kind {
    Http {
        targets: Vec<Target>,
        next: AtomicUsize,
        /// Zero point of the targets' `down_until`.
        epoch: Instant,
        /// How long a target whose connect failed waits behind the others.
        fail_timeout: Duration,
    },
    File(Arc<FileWriter>),
}

/// One HTTP(S) target: where to connect, and its idle connections.
struct Target {
    http: HttpTarget,
    peer: HttpPeer,
    /// `Host` header value.
    authority: HeaderValue,
    pool: h1::Pool,
    /// Until when (ms after the destination's epoch) the target waits behind
    /// the others after a failed connect; 0 while it is up.
    down_until: AtomicU64,
}

impl Target {
    fn is_down(&self, now_ms: u64) -> bool {
        self.down_until.load(Ordering::Relaxed) > now_ms
    }

    /// A connect failed: wait behind the others for `wait` (when there are
    /// others, `of` targets in all, and `wait` is not zero). Said once per
    /// outage: the mark is cleared only by an answer, so failing again after
    /// it expired is quiet.
    fn failed_to_connect(&self, epoch: Instant, wait: Duration, of: usize) {
        if of < 2 || wait.is_zero() {
            return;
        }
        // At least 1 ms: 0 means "up".
        let until = ms_since(epoch, Instant::now() + wait).max(1);
        if self.down_until.swap(until, Ordering::Relaxed) == 0 {
            tracing::warn!(
                upstream = %self.http.url,
                addr = %self.http.addr,
                "upstream connect failed; tried after the other targets until it answers again \
                 (for {} ms after each failed connect)",
                wait.as_millis()
            );
        }
    }
}

fn ms_since(epoch: Instant, t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX)
}

/// Delivery for all routes: pingora's transport (TCP/TLS connect) and file writers.
pub struct Deliverer {
    transport: TransportConnector,
    files: HashMap<PathBuf, Arc<FileWriter>>,
}

/// Appends lines to one file; one writer per file even if several routes share it.
pub struct FileWriter {
    path: PathBuf,
    file: tokio::sync::Mutex<Option<Sink>>,
}

/// The open archive file.
struct Sink {
    file: tokio::fs::File,
    /// The file may end inside a line: it was just opened (an earlier run may
    /// have stopped mid-write), or the last append failed or ran out of time
    /// part-way. Checked before the next line is written.
    torn: bool,
    /// Device and inode of the open file: when the path names another file
    /// (moved away by log rotation, or deleted), the path is opened again.
    id: (u64, u64),
}

impl Deliverer {
    /// A deliverer with an empty pool.
    pub fn new() -> Self {
        Deliverer {
            transport: TransportConnector::new(None),
            files: HashMap::new(),
        }
    }

    /// Build a route's destination; creates the parent folder of a `file:` upstream.
    pub fn destination(
        &mut self,
        upstream: &Upstream,
        timeout: Duration,
        fail_timeout: Duration,
        tls: &UpstreamTls,
    ) -> std::io::Result<Destination> {
        // Certificates were checked when the config was loaded.
        let ca: Option<Arc<pingora::protocols::tls::CaType>> = tls.ca_der.as_ref().map(|certs| {
            let list: Vec<WrappedX509> = certs
                .iter()
                .map(|der| WrappedX509::new(der.clone(), pingora::utils::tls::parse_x509))
                .collect();
            Arc::from(list.into_boxed_slice())
        });
        let kind = match upstream {
            Upstream::Http(targets) => Kind::Http {
                targets: targets
                    .iter()
                    .map(|t| {
                        let mut peer = peer_for(t, timeout);
                        peer.options.ca = ca.clone();
                        peer.options.verify_cert = tls.verify;
                        peer.options.verify_hostname = tls.verify;
                        let authority = HeaderValue::from_str(&t.authority).map_err(|_| {
                            std::io::Error::other("upstream authority is not a header value")
                        })?;
                        Ok(Target {
                            http: t.clone(),
                            peer,
                            authority,
                            pool: h1::Pool::default(),
                            down_until: AtomicU64::new(0),
                        })
                    })
                    .collect::<std::io::Result<Vec<Target>>>()?,
                next: AtomicUsize::new(0),
                epoch: Instant::now(),
                fail_timeout,
            },
            Upstream::File(FileSink { path }) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                // Open once now so a bad path fails at start, not on the first webhook.
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?;
                let w = self
                    .files
                    .entry(path.clone())
                    .or_insert_with(|| {
                        Arc::new(FileWriter {
                            path: path.clone(),
                            file: tokio::sync::Mutex::new(None),
                        })
                    })
                    .clone();
                Kind::File(w)
            }
        };
        Ok(Destination { kind, timeout })
    }

    /// Deliver `req` to `dest` within the route's timeout.
    pub async fn deliver(
        &self,
        dest: &Destination,
        req: Outgoing,
    ) -> Result<(Answer, u32), Failure> {
        self.deliver_within(dest, req, dest.timeout).await
    }

    /// Deliver `req` to `dest` within `budget` (at most the route's timeout);
    /// with the answer, how many times it went on to another target.
    pub async fn deliver_within(
        &self,
        dest: &Destination,
        req: Outgoing,
        budget: Duration,
    ) -> Result<(Answer, u32), Failure> {
        let mut retries = 0;
        self.deliver_counting(dest, req, budget, &mut retries)
            .await
            .map(|a| (a, retries))
    }

    /// [`Self::deliver_within`], counting in `retries` each time it went on
    /// to another target, also when it failed in the end.
    pub async fn deliver_counting(
        &self,
        dest: &Destination,
        req: Outgoing,
        budget: Duration,
        retries: &mut u32,
    ) -> Result<Answer, Failure> {
        match &dest.kind {
            // The route's timeout bounds the append too (a hung disk or
            // network filesystem answers 504, as a hung upstream does).
            Kind::File(w) => {
                match tokio::time::timeout(budget.min(dest.timeout), w.append(&req.body)).await {
                    Ok(answer) => answer,
                    Err(_) => Err(Failure::Timeout),
                }
            }
            Kind::Http {
                targets,
                next,
                epoch,
                fail_timeout,
            } => {
                let now = Instant::now();
                let deadline = now + budget.min(dest.timeout);
                let start = next.fetch_add(1, Ordering::Relaxed);
                let now_ms = ms_since(*epoch, now);
                // Round-robin from `start`: first the targets that are up, then
                // those whose connect failed in the last fail_timeout (bit k of
                // `down`, taken once, so a target failing below is not tried
                // again; one target alone, or one past the 64th, is never down).
                let n = targets.len();
                let down = if n == 1 {
                    0
                } else {
                    targets
                        .iter()
                        .take(64)
                        .enumerate()
                        .fold(0u64, |m, (k, t)| m | (u64::from(t.is_down(now_ms)) << k))
                };
                // Why the last connect failed (the text is made only then).
                let mut last = None;
                let mut tried = 0;
                for i in 0..2 * n {
                    let k = start.wrapping_add(i) % n;
                    let is_down = k < 64 && down & (1 << k) != 0;
                    // The first pass takes the targets that are up.
                    if is_down != (i >= n) {
                        continue;
                    }
                    let Some(target) = targets.get(k) else {
                        break;
                    };
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if remaining.is_zero() {
                        return Err(Failure::Timeout);
                    }
                    if tried > 0 {
                        *retries += 1;
                    }
                    tried += 1;
                    let mut connected = false;
                    let exchange = self.exchange(target, &req, &mut connected);
                    match tokio::time::timeout(remaining, exchange).await {
                        Err(_) => {
                            // Still connecting when the time ran out (a host
                            // that drops packets): as good as refused.
                            if !connected {
                                target.failed_to_connect(*epoch, *fail_timeout, n);
                            }
                            return Err(Failure::Timeout);
                        }
                        Ok(Ok(a)) => {
                            if target.down_until.load(Ordering::Relaxed) != 0 {
                                target.down_until.store(0, Ordering::Relaxed);
                            }
                            return Ok(a);
                        }
                        Ok(Err(Attempt::Connect(f))) => {
                            target.failed_to_connect(*epoch, *fail_timeout, n);
                            last = Some(f);
                        }
                        Ok(Err(Attempt::Exchange(f))) => return Err(f),
                    }
                }
                Err(Failure::NotConnected(match last {
                    None => "no upstream".into(),
                    Some(Failure::Timeout) => "connect timeout".into(),
                    Some(Failure::Unavailable(why) | Failure::NotConnected(why)) => why,
                }))
            }
        }
    }

    /// One exchange with `target`; `connected` is set once a connection is
    /// there (pooled or new), so a caller that gives up can tell a connect
    /// that hung from an exchange that did.
    async fn exchange(
        &self,
        target: &Target,
        req: &Outgoing,
        connected: &mut bool,
    ) -> Result<Answer, Attempt> {
        // A reused connection that fails later is not retried elsewhere (an
        // Exchange error): the request may have reached the upstream first.
        let mut stream = match target.pool.take(UPSTREAM_IDLE) {
            Some(s) => s,
            // Boxed: pingora's connect future is 8 KB, and inline it would be
            // stored in every exchange's future, pooled connection or not, and
            // copied at each `.await` up the call chain.
            None => {
                Box::pin(self.transport.get_stream(&target.peer))
                    .await
                    .map_err(|e| Attempt::Connect(classify(&e)))?
                    .0
            }
        };
        *connected = true;
        let head = h1::request_head(
            "POST",
            &target.http.path,
            &target.authority,
            &req.headers,
            req.body.len(),
        );
        let garbage =
            |e: h1::ExchangeError| Attempt::Exchange(Failure::Unavailable(format!("{e:?}")));
        h1::send(&mut stream, &head, &req.body)
            .await
            .map_err(garbage)?;
        let resp = h1::receive(&mut stream, MAX_RESPONSE_BODY)
            .await
            .map_err(garbage)?;
        if resp.reusable {
            target.pool.put(stream);
        }
        Ok(Answer {
            status: resp.status,
            headers: resp.headers,
            body: resp.body,
        })
    }
}

impl Default for Deliverer {
    fn default() -> Self {
        Self::new()
    }
}

enum Attempt {
    /// Nothing reached the upstream: another target may be tried.
    Connect(Failure),
    /// The request was (maybe partly) sent: never retried.
    Exchange(Failure),
}

fn classify(e: &pingora::Error) -> Failure {
    match e.etype() {
        ErrorType::ConnectTimedout
        | ErrorType::ReadTimedout
        | ErrorType::WriteTimedout
        | ErrorType::TLSHandshakeTimedout => Failure::Timeout,
        other => Failure::Unavailable(other.as_str().to_string()),
    }
}

fn peer_for(t: &HttpTarget, timeout: Duration) -> HttpPeer {
    let mut peer = HttpPeer::new(t.addr, t.tls, t.sni.clone());
    peer.options.connection_timeout = Some(CONNECT_TIMEOUT.min(timeout));
    peer.options.total_connection_timeout = Some((CONNECT_TIMEOUT * 2).min(timeout));
    peer.options.read_timeout = Some(timeout);
    peer.options.write_timeout = Some(timeout);
    peer.options.idle_timeout = Some(UPSTREAM_IDLE);
    peer
}

impl FileWriter {
    async fn append(&self, body: &[u8]) -> Result<Answer, Failure> {
        let failed =
            |e: std::io::Error| Failure::Unavailable(format!("archive file: {}", e.kind()));
        let mut line = compact_json_line(body);
        line.push(b'\n');
        let mut guard = self.file.lock().await;
        if let Some(sink) = guard.as_ref() {
            // Rotated (`mv`, then a new file at the path) or removed: reopen, as
            // a logger does, rather than go on writing to the old file.
            let now = tokio::fs::metadata(&self.path)
                .await
                .ok()
                .map(|m| file_id(&m));
            if now != Some(sink.id) {
                *guard = None;
            }
        }
        if guard.is_none() {
            let file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .await
                .map_err(failed)?;
            let id = file_id(&file.metadata().await.map_err(failed)?);
            *guard = Some(Sink {
                file,
                torn: true,
                id,
            });
        }
        let Some(sink) = guard.as_mut() else {
            return Err(Failure::Unavailable("archive file not open".into()));
        };
        if sink.torn {
            // End the broken line first, so that this record stays whole.
            if !ends_a_line(&self.path).await {
                line.insert(0, b'\n');
            }
        }
        // Until the write is through, a cancelled or failed append may leave
        // part of the line behind.
        sink.torn = true;
        if let Err(e) = sink
            .file
            .write_all(&line)
            .await
            .and(sink.file.flush().await)
        {
            // Reopen next time: the file may have been rotated or the disk freed.
            *guard = None;
            return Err(failed(e));
        }
        sink.torn = false;
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(Answer {
            status: 202,
            headers,
            body: Bytes::from_static(b"{\"status\":\"accepted\"}"),
        })
    }
}

/// A file's device and inode.
fn file_id(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

/// Whether the file at `path` is empty or ends with a newline. A file that
/// cannot be read back (write-only for this user, a FIFO, `/dev/null`)
/// counts as ending one.
async fn ends_a_line(path: &std::path::Path) -> bool {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let Ok(mut file) = tokio::fs::File::open(path).await else {
        return true;
    };
    match file.metadata().await {
        Ok(m) if m.is_file() && m.len() > 0 => {}
        _ => return true,
    }
    let mut last = [0u8; 1];
    if file.seek(std::io::SeekFrom::End(-1)).await.is_err()
        || file.read_exact(&mut last).await.is_err()
    {
        return true;
    }
    last == *b"\n"
}

/// Remove insignificant whitespace from a valid JSON text, so it fits on one line.
/// Strings are copied byte for byte (they cannot hold raw newlines in valid JSON).
pub fn compact_json_line(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + 1);
    let mut in_string = false;
    let mut escaped = false;
    for &b in json {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
            out.push(b);
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            out.push(b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_keeps_strings() {
        let j = b"{\n  \"a\" : \"x y\\\" \\n z\",\n  \"b\": [1, 2.50]\n}\n";
        assert_eq!(
            compact_json_line(j),
            b"{\"a\":\"x y\\\" \\n z\",\"b\":[1,2.50]}".to_vec()
        );
    }
}
