//! Delivery (pipeline stage 9): send a cleaned request to a route's upstream and
//! bring back its answer.
//!
//! - HTTP(S) upstreams go through pingora's HTTP/1 connector, which pools and
//!   reuses connections. Several targets are balanced round-robin; a request is
//!   retried on the next target only when connecting failed, i.e. when no byte of
//!   it reached the first one.
//! - `file:` upstreams append the body as one JSON line and answer 202.

use crate::config::{FileSink, HttpTarget, Upstream, UpstreamTls};
use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue};
use pingora::connectors::http::v1::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::WrappedX509;
use pingora::ErrorType;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Largest upstream response body passed back; beyond, the answer counts as garbage.
pub const MAX_RESPONSE_BODY: usize = 4 * 1024 * 1024;

/// How long an idle upstream connection stays in the pool.
pub const UPSTREAM_IDLE: Duration = Duration::from_secs(30);

/// The longest a single connect attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// Refused, reset, closed or garbage: 502.
    Unavailable(String),
    /// No answer in time: 504.
    Timeout,
}

/// The request to deliver: header list (already filtered) and body.
pub struct Outgoing {
    /// Headers for the upstream, without Host and Content-Length.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body.
    pub body: Bytes,
}

/// One route's delivery target(s), built once at start.
pub struct Destination {
    kind: Kind,
    timeout: Duration,
}

enum Kind {
    Http {
        targets: Vec<(HttpTarget, HttpPeer)>,
        next: AtomicUsize,
    },
    File(Arc<FileWriter>),
}

/// Delivery for all routes: the shared connection pool and file writers.
pub struct Deliverer {
    connector: Connector,
    files: HashMap<PathBuf, Arc<FileWriter>>,
}

/// Appends lines to one file; one writer per file even if several routes share it.
pub struct FileWriter {
    path: PathBuf,
    file: tokio::sync::Mutex<Option<tokio::fs::File>>,
}

impl Deliverer {
    /// A deliverer with an empty pool.
    pub fn new() -> Self {
        Deliverer {
            connector: Connector::new(None),
            files: HashMap::new(),
        }
    }

    /// Build a route's destination; creates the parent folder of a `file:` upstream.
    pub fn destination(
        &mut self,
        upstream: &Upstream,
        timeout: Duration,
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
                        (t.clone(), peer)
                    })
                    .collect(),
                next: AtomicUsize::new(0),
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
        path_hint: &str,
        req: Outgoing,
    ) -> Result<(Answer, u32), Failure> {
        match &dest.kind {
            Kind::File(w) => w.append(&req.body).await.map(|a| (a, 0)),
            Kind::Http { targets, next } => {
                let deadline = Instant::now() + dest.timeout;
                let start = next.fetch_add(1, Ordering::Relaxed);
                let mut last = Failure::Unavailable("no upstream".into());
                let mut retries = 0;
                for i in 0..targets.len() {
                    let Some((target, peer)) = targets.get((start + i) % targets.len()) else {
                        break;
                    };
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if remaining.is_zero() {
                        return Err(Failure::Timeout);
                    }
                    if i > 0 {
                        retries += 1;
                    }
                    match tokio::time::timeout(
                        remaining,
                        self.exchange(target, peer, path_hint, &req),
                    )
                    .await
                    {
                        Err(_) => return Err(Failure::Timeout),
                        Ok(Ok(a)) => return Ok((a, retries)),
                        Ok(Err(Attempt::Connect(f))) => last = f,
                        Ok(Err(Attempt::Exchange(f))) => return Err(f),
                    }
                }
                Err(last)
            }
        }
    }

    async fn exchange(
        &self,
        target: &HttpTarget,
        peer: &HttpPeer,
        _path_hint: &str,
        req: &Outgoing,
    ) -> Result<Answer, Attempt> {
        let (mut session, _reused) = self
            .connector
            .get_http_session(peer)
            .await
            .map_err(|e| Attempt::Connect(classify(&e)))?;
        let mut header =
            RequestHeader::build("POST", target.path.as_bytes(), Some(req.headers.len() + 2))
                .map_err(|e| Attempt::Exchange(Failure::Unavailable(e.to_string())))?;
        let ex = |e: Box<pingora::Error>| Attempt::Exchange(classify(&e));
        header
            .insert_header(http::header::HOST, &target.authority)
            .map_err(ex)?;
        for (k, v) in &req.headers {
            header.append_header(k.clone(), v.clone()).map_err(ex)?;
        }
        header
            .insert_header(http::header::CONTENT_LENGTH, req.body.len().to_string())
            .map_err(ex)?;
        session
            .write_request_header(Box::new(header))
            .await
            .map_err(ex)?;
        if !req.body.is_empty() {
            session.write_body(&req.body).await.map_err(ex)?;
        }
        session.finish_body().await.map_err(ex)?;
        session.read_response().await.map_err(ex)?;
        let resp = session
            .resp_header()
            .ok_or_else(|| Attempt::Exchange(Failure::Unavailable("no response header".into())))?;
        let status = resp.status.as_u16();
        let headers = resp.headers.clone();
        let mut body = BytesMut::new();
        while let Some(chunk) = session.read_body_bytes().await.map_err(ex)? {
            if body.len() + chunk.len() > MAX_RESPONSE_BODY {
                return Err(Attempt::Exchange(Failure::Unavailable(
                    "response body too large".into(),
                )));
            }
            body.extend_from_slice(&chunk);
        }
        self.connector
            .release_http_session(session, peer, Some(UPSTREAM_IDLE))
            .await;
        Ok(Answer {
            status,
            headers,
            body: body.freeze(),
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
        let mut line = compact_json_line(body);
        line.push(b'\n');
        let mut guard = self.file.lock().await;
        if guard.is_none() {
            let f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .await
                .map_err(|e| Failure::Unavailable(format!("archive file: {}", e.kind())))?;
            *guard = Some(f);
        }
        let Some(file) = guard.as_mut() else {
            return Err(Failure::Unavailable("archive file not open".into()));
        };
        if let Err(e) = file.write_all(&line).await.and(file.flush().await) {
            // Reopen next time: the file may have been rotated or the disk freed.
            *guard = None;
            return Err(Failure::Unavailable(format!("archive file: {}", e.kind())));
        }
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
