//! Assembling the pingora server: the public service with its accept-time
//! filter, the metrics service (`/metrics`, `/healthz`, `/readyz`), pingora's
//! own settings derived from hookgate's config, and the signal handling.

use crate::config::Config;
use crate::lifecycle::{Lifecycle, Signals};
use crate::metrics::Metrics;
use crate::proxy::{AdmissionFilter, Gateway};
use async_trait::async_trait;
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;
use pingora::server::{ExecutionPhase, RunArgs, Server};
use pingora::services::listening::Service;
use std::sync::Arc;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A `file:` upstream could not be prepared.
    #[error("cannot prepare a file upstream: {0}")]
    FileUpstream(#[from] std::io::Error),
    /// A listener could not be set up.
    #[error("cannot set up listener {addr}: {reason}")]
    Listener {
        /// The address.
        addr: String,
        /// What failed.
        reason: String,
    },
}

/// Build the pingora server for a validated config. `metrics` and `lifecycle`
/// are shared with the caller (tests and embedders read them).
pub fn build(cfg: &Config, metrics: Arc<Metrics>, lifecycle: Arc<Lifecycle>) -> Result<Server, StartError> {
    let mut conf = ServerConf::default();
    conf.threads = cfg.server.threads;
    conf.work_stealing = true;
    // hookgate drains itself (lifecycle::Signals) and exits when idle; pingora's
    // grace only bounds it.
    conf.grace_period_seconds = Some(cfg.server.shutdown_grace.as_secs() + 1);
    conf.graceful_shutdown_timeout_seconds = Some(1);
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    // The public listener(s).
    let gateway = Gateway::new(cfg, metrics.clone(), lifecycle.clone())?;
    let mut public = Service::new("hookgate public".to_string(), gateway);
    for addr in &cfg.server.listen {
        let a = addr.to_string();
        match &cfg.server.tls {
            Some((cert, key)) => public
                .add_tls(&a, &cert.to_string_lossy(), &key.to_string_lossy())
                .map_err(|e| StartError::Listener {
                    addr: a.clone(),
                    reason: e.to_string(),
                })?,
            None => public.add_tcp(&a),
        }
    }
    if !cfg.access.has_trusted_proxies() {
        public.set_connection_filter(Arc::new(AdmissionFilter {
            access: cfg.access.clone(),
            rejected: metrics.connections_rejected.clone(),
        }));
    }

    // The metrics listener.
    let mut ops = Service::new(
        "hookgate metrics".to_string(),
        HttpServer::new_app(OpsApp {
            metrics: metrics.clone(),
            lifecycle: lifecycle.clone(),
        }),
    );
    ops.add_tcp(&cfg.metrics_listen.to_string());
    ops.threads = Some(1);

    server.add_service(public);
    server.add_service(ops);

    // Ready once pingora reports it runs (listeners bound).
    let mut phases = server.watch_execution_phase();
    let lc = lifecycle.clone();
    std::thread::spawn(move || {
        while let Ok(phase) = phases.blocking_recv() {
            if matches!(phase, ExecutionPhase::Running) {
                lc.set_ready();
            }
        }
    });
    Ok(server)
}

/// Run the gateway until a signal stops it.
pub fn run(cfg: &Config) -> Result<(), StartError> {
    let metrics = Arc::new(Metrics::new());
    let lifecycle = Arc::new(Lifecycle::new());
    let server = build(cfg, metrics, lifecycle.clone())?;
    tracing::info!("hookgate {} starting", env!("CARGO_PKG_VERSION"));
    for line in cfg.summary().lines() {
        tracing::info!("{line}");
    }
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            lifecycle,
            grace: cfg.server.shutdown_grace,
        }),
    });
    Ok(())
}

/// `/metrics`, `/healthz`, `/readyz`.
struct OpsApp {
    metrics: Arc<Metrics>,
    lifecycle: Arc<Lifecycle>,
}

#[async_trait]
impl ServeHttp for OpsApp {
    async fn response(&self, s: &mut ServerSession) -> http::Response<Vec<u8>> {
        let path = s.req_header().uri.path().to_string();
        let get = s.req_header().method == http::Method::GET || s.req_header().method == http::Method::HEAD;
        let (status, ctype, body) = match (get, path.as_str()) {
            (true, "/metrics") => (200, "text/plain; version=0.0.4; charset=utf-8", self.metrics.render()),
            (true, "/healthz") => (200, "text/plain", b"ok\n".to_vec()),
            (true, "/readyz") if self.lifecycle.is_ready() => (200, "text/plain", b"ready\n".to_vec()),
            (true, "/readyz") if self.lifecycle.draining() => (503, "text/plain", b"draining\n".to_vec()),
            (true, "/readyz") => (503, "text/plain", b"starting\n".to_vec()),
            (false, _) => (405, "text/plain", b"method not allowed\n".to_vec()),
            _ => (404, "text/plain", b"not found\n".to_vec()),
        };
        let len = body.len();
        http::Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, ctype)
            .header(http::header::CONTENT_LENGTH, len)
            .body(body)
            .unwrap_or_else(|_| http::Response::new(Vec::new()))
    }
}
