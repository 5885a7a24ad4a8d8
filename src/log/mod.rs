//! Logging: the subscriber (text or JSON lines), the access line, and where
//! lines go ([`output`]).
//!
//! The access line carries time, request id, peer, client, route, outcome,
//! status, bytes in/out, durations and `call.id`; never a phone number, a
//! transcript, a summary, a header value or a body.

pub mod output;

pub use output::{flush, LogOutput};

use std::net::IpAddr;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

/// Install the global subscriber writing to `out`. `RUST_LOG` overrides `level`.
pub fn init(level: &str, json: bool, out: LogOutput) {
    // pingora logs request summaries and buffers at debug level: keep it at warn
    // unless asked for explicitly through RUST_LOG.
    let directive = format!("{level},pingora_core=warn,pingora=warn,pingora_pool=warn");
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&directive))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(out);
    let res = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder.with_ansi(false).try_init()
    };
    // Already installed (embedded use, tests): keep the existing one.
    drop(res);
}

/// An address, or `-` when there is none (formatted in place, no allocation).
struct OrDash(Option<IpAddr>);

impl std::fmt::Display for OrDash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ip) => ip.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// One access-log line.
pub struct AccessRecord<'a> {
    /// Process-unique id.
    pub request_id: String,
    /// TCP peer.
    pub peer: Option<IpAddr>,
    /// Client as identified (peer or from a trusted proxy's header).
    pub client: Option<IpAddr>,
    /// Route name or `none`.
    pub route: &'a str,
    /// `forwarded` or the error code.
    pub outcome: &'a str,
    /// Status sent.
    pub status: u16,
    /// Body bytes read.
    pub bytes_in: usize,
    /// Body bytes sent.
    pub bytes_out: usize,
    /// Whole request at the gateway.
    pub duration: Duration,
    /// Upstream exchange, when there was one.
    pub upstream_duration: Option<Duration>,
    /// Upstream status, when there was one.
    pub upstream_status: Option<u16>,
    /// `call.id` of the payload, when parsed.
    pub call_id: Option<&'a str>,
}

impl AccessRecord<'_> {
    /// Whether access lines are written at all (so callers can skip building one).
    pub fn enabled() -> bool {
        tracing::enabled!(target: output::ACCESS_TARGET, tracing::Level::INFO)
    }

    /// Write the line (target `hookgate::access`, level info).
    pub fn emit(&self) {
        tracing::info!(
            target: output::ACCESS_TARGET,
            request_id = %self.request_id,
            peer = %OrDash(self.peer),
            client = %OrDash(self.client),
            route = %self.route,
            outcome = %self.outcome,
            status = self.status,
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            duration_ms = self.duration.as_secs_f64() * 1000.0,
            upstream_ms = self.upstream_duration.map(|d| d.as_secs_f64() * 1000.0),
            upstream_status = self.upstream_status,
            call_id = self.call_id,
            "access"
        );
    }
}
