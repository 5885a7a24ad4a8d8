//! Assembling the pingora server: the public service with its accept-time
//! filter, the metrics service (`/metrics`, `/healthz`, `/readyz`), pingora's
//! own settings derived from hookgate's config, and the signal handling.

use crate::config::Config;
use crate::lifecycle::{Lifecycle, Signals};
use crate::listen::{self, Reservation};
use crate::metrics::Metrics;
use crate::proxy::{AdmissionFilter, ConnectionLimit, Gateway};
use crate::spool::worker::{RouteWorker, SpoolService};
use crate::spool::Spool;
use crate::upstream::Deliverer;
use async_trait::async_trait;
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;
use pingora::server::{ExecutionPhase, RunArgs, Server};
use pingora::services::background::{background_service, GenBackgroundService};
use pingora::services::listening::Service;
use std::sync::Arc;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A `file:` upstream could not be prepared.
    #[error("cannot prepare a file upstream: {0}")]
    FileUpstream(#[from] std::io::Error),
    /// The spool could not be opened.
    #[error("cannot open the spool: {0}")]
    Spool(#[from] crate::spool::SpoolError),
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
pub fn build(
    cfg: &Config,
    metrics: Arc<Metrics>,
    lifecycle: Arc<Lifecycle>,
    held: Reservation,
) -> Result<Server, StartError> {
    // hookgate drains itself (lifecycle::Signals) and exits when idle; pingora's
    // grace only bounds it.
    let conf = ServerConf {
        threads: cfg.server.threads,
        work_stealing: true,
        grace_period_seconds: Some(cfg.server.shutdown_grace.as_secs() + 1),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    services(cfg, metrics, lifecycle.clone())?.add_to(&mut server);

    // Ready once pingora runs and this process listens on every address.
    // pingora binds inside its service runtimes (retrying an address in use for
    // half a minute): a gateway that is not listening after a few seconds exits
    // instead of idling. The held port-0 ports are released once it listens.
    let mut phases = server.watch_execution_phase();
    let lc = lifecycle.clone();
    let public: Vec<String> = cfg.server.listen.iter().map(|a| a.to_string()).collect();
    let metrics_addr = cfg.metrics_listen;
    let mut wanted: Vec<u16> = cfg.server.listen.iter().map(|a| a.port()).collect();
    wanted.push(metrics_addr.port());
    std::thread::spawn(move || {
        while let Ok(phase) = phases.blocking_recv() {
            if matches!(phase, ExecutionPhase::Running) {
                let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
                loop {
                    let missing: Vec<u16> = match listen::own_listening_ports() {
                        Some(own) => wanted
                            .iter()
                            .copied()
                            .filter(|p| !own.contains(p))
                            .collect(),
                        None => Vec::new(),
                    };
                    if missing.is_empty() {
                        break;
                    }
                    if std::time::Instant::now() > end {
                        tracing::error!(
                            "not listening on port(s) {missing:?} after 5 s (in use by another program?); exiting"
                        );
                        crate::log::flush();
                        std::process::exit(1);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                drop(held);
                lc.set_ready();
                tracing::info!(
                    "ready; public listener(s) {}; metrics listener {metrics_addr}",
                    public.join(", ")
                );
                return;
            }
        }
    });
    Ok(server)
}

/// hookgate's pingora services.
pub struct Services {
    /// The public gateway, with its accept-time filter.
    pub public: Service<ConnectionLimit>,
    /// The metrics listener (`/metrics`, `/healthz`, `/readyz`).
    pub ops: Service<HttpServer<OpsApp>>,
    /// Background delivery of spooled webhooks, when a route spools.
    pub spool: Option<GenBackgroundService<SpoolService>>,
}

impl Services {
    /// Add every service to a pingora server.
    pub fn add_to(self, server: &mut Server) {
        server.add_service(self.public);
        server.add_service(self.ops);
        if let Some(s) = self.spool {
            server.add_service(s);
        }
    }
}

/// hookgate's pingora services: the public gateway (with its accept-time
/// filter), the metrics listener, and the spool's delivery. Add them to any
/// pingora `Server`; this is how hookgate embeds in another pingora proxy (see
/// `examples/embed_pingora.rs`). Opens the spool (and takes its lock) when a
/// route spools.
pub fn services(
    cfg: &Config,
    metrics: Arc<Metrics>,
    lifecycle: Arc<Lifecycle>,
) -> Result<Services, StartError> {
    let spooling: Vec<Arc<crate::config::Route>> = cfg
        .routes
        .iter()
        .filter(|r| r.delivery.uses_spool())
        .cloned()
        .collect();
    let (spool, spool_service) = match (&cfg.spool, spooling.is_empty()) {
        (Some(settings), false) => {
            let names: Vec<String> = spooling.iter().map(|r| r.name.clone()).collect();
            let spool = Spool::open(settings, &names, metrics.spool.clone())?;
            let mut deliverer = Deliverer::new();
            let mut routes = Vec::new();
            for r in &spooling {
                let dest = deliverer.destination(
                    &r.upstream,
                    r.timeout,
                    r.fail_timeout,
                    &r.upstream_tls,
                )?;
                routes.push(Arc::new(RouteWorker {
                    route: r.clone(),
                    dest,
                }));
            }
            let service = SpoolService {
                spool: spool.clone(),
                deliverer: Arc::new(deliverer),
                routes,
            };
            (
                Some(spool),
                Some(background_service("hookgate spool", service)),
            )
        }
        _ => (None, None),
    };
    let gateway = Arc::new(Gateway::new(
        cfg,
        metrics.clone(),
        lifecycle.clone(),
        spool,
    )?);
    let limited = ConnectionLimit {
        inner: gateway,
        permits: Arc::new(tokio::sync::Semaphore::new(cfg.server.max_connections)),
        overflow: metrics.connections_over_limit.clone(),
        open: metrics.connections_open.clone(),
    };
    let mut public = Service::new("hookgate public".to_string(), limited);
    for addr in &cfg.server.listen {
        let a = addr.to_string();
        match &cfg.server.tls {
            Some((cert, key)) => public
                .add_tls(&a, &cert.to_string_lossy(), &key.to_string_lossy())
                .map_err(|e| StartError::Listener {
                    addr: a.clone(),
                    reason: e.to_string(),
                })?,
            // No read buffer under plain HTTP: pingora reads the head and
            // then each body straight into its own buffers, instead of every
            // byte going through a 64 KiB buffer per connection and being
            // copied out of it. (TLS keeps it: rustls reads in small records.)
            None => public.add_listener(ListenerConfig::tcp(&a).l4_buffer(L4BufferSettings {
                read: Some(0),
                write: None,
            })),
        }
    }
    if !cfg.access.has_trusted_proxies() {
        public.set_connection_filter(Arc::new(AdmissionFilter {
            access: cfg.access.clone(),
            rejected: metrics.connections_rejected.clone(),
        }));
    }
    let mut ops = Service::new(
        "hookgate metrics".to_string(),
        HttpServer::new_app(OpsApp { metrics, lifecycle }),
    );
    ops.add_tcp(&cfg.metrics_listen.to_string());
    ops.threads = Some(1);
    Ok(Services {
        public,
        ops,
        spool: spool_service,
    })
}

/// Run the gateway until a signal stops it. Addresses given with port 0 get a
/// free port each, named in the log.
pub fn run(mut cfg: Config) -> Result<(), StartError> {
    let metrics = Arc::new(Metrics::new());
    let lifecycle = Arc::new(Lifecycle::new());
    let listener_error = |(addr, e): (std::net::SocketAddr, std::io::Error)| StartError::Listener {
        addr: addr.to_string(),
        reason: e.to_string(),
    };
    let held = {
        let mut addrs: Vec<&mut std::net::SocketAddr> = cfg
            .server
            .listen
            .iter_mut()
            .chain(std::iter::once(&mut cfg.metrics_listen))
            .collect();
        listen::reserve(&mut addrs).map_err(listener_error)?
    };
    listen::check_bindable(cfg.server.listen.iter().chain([&cfg.metrics_listen]))
        .map_err(listener_error)?;
    let server = build(&cfg, metrics, lifecycle.clone(), held)?;
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

/// The metrics listener's application: `/metrics`, `/healthz`, `/readyz`.
pub struct OpsApp {
    metrics: Arc<Metrics>,
    lifecycle: Arc<Lifecycle>,
}

#[async_trait]
impl ServeHttp for OpsApp {
    async fn response(&self, s: &mut ServerSession) -> http::Response<Vec<u8>> {
        let path = s.req_header().uri.path().to_string();
        let get = s.req_header().method == http::Method::GET
            || s.req_header().method == http::Method::HEAD;
        let (status, ctype, body) = match (get, path.as_str()) {
            (true, "/metrics") => (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics.render(),
            ),
            (true, "/healthz") => (200, "text/plain", b"ok\n".to_vec()),
            (true, "/readyz") if self.lifecycle.is_ready() => {
                (200, "text/plain", b"ready\n".to_vec())
            }
            (true, "/readyz") if self.lifecycle.draining() => {
                (503, "text/plain", b"draining\n".to_vec())
            }
            (true, "/readyz") => (503, "text/plain", b"starting\n".to_vec()),
            (false, _) => (405, "text/plain", b"method not allowed\n".to_vec()),
            _ => (404, "text/plain", b"not found\n".to_vec()),
        };
        let len = body.len();
        let mut answer = http::Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, ctype)
            .header(http::header::CONTENT_LENGTH, len);
        if status == 405 {
            // RFC 9110 §15.5.6: a 405 lists the methods that are allowed.
            answer = answer.header(http::header::ALLOW, "GET, HEAD");
        }
        answer
            .body(body)
            .unwrap_or_else(|_| http::Response::new(Vec::new()))
    }
}
