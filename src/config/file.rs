//! The configuration file as written by operators: a serde model of the TOML file.
//!
//! Every table rejects unknown keys (`deny_unknown_fields`): a typo is an error, never
//! silently ignored. Values here are unchecked strings and numbers; `runtime.rs` turns
//! them into the validated model the gateway runs on.

use serde::Deserialize;
use std::collections::BTreeMap;

/// `[server]`: the public listener(s) and the process.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Public listen addresses, `host:port`.
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// Worker threads.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Serve TLS on the public listeners with this certificate and key (PEM).
    pub tls: Option<TlsSection>,
    /// On SIGTERM, how long requests in flight may take before the process exits.
    #[serde(default = "default_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// How long a client may take to send the request line and headers.
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// How long an idle keep-alive connection from a client is kept open.
    #[serde(default = "default_keepalive_ms")]
    pub keepalive_timeout_ms: u64,
    /// Most client connections open at once; beyond, new ones are closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: default_listen(),
            threads: default_threads(),
            tls: None,
            shutdown_grace_ms: default_grace_ms(),
            header_timeout_ms: default_header_timeout_ms(),
            keepalive_timeout_ms: default_keepalive_ms(),
            max_connections: default_max_connections(),
        }
    }
}

/// `tls = { cert = "...", key = "..." }`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain.
    pub cert: String,
    /// PEM private key.
    pub key: String,
}

/// `[metrics]`: where Prometheus scrapes, plus `/healthz` and `/readyz`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Listen address of the metrics listener; never the public one.
    #[serde(default = "default_metrics_listen")]
    pub listen: String,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            listen: default_metrics_listen(),
        }
    }
}

/// `[access]`: who may send webhooks.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AccessSection {
    /// Allowed client networks (CIDR or single addresses). Omitted: sipgate's
    /// documented source address, 217.116.118.254, only.
    pub allow: Option<Vec<String>>,
    /// Peers (load balancers) whose `X-Forwarded-For` header is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// A shared-secret header every request must carry (all routes).
    pub secret: Option<SecretSection>,
}

/// `secret = { header = "X-Hookgate-Secret", value = "${HOOKGATE_SECRET}" }`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecretSection {
    /// The header that carries the secret.
    #[serde(default = "default_secret_header")]
    pub header: String,
    /// The accepted value.
    pub value: Option<String>,
    /// Further accepted values, so a secret can be rotated without downtime.
    #[serde(default)]
    pub values: Vec<String>,
}

/// `[limits]`: body bounds (defaults for every route).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Largest accepted body; 413 beyond.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
    /// Time allowed for the whole body to arrive; 408 beyond.
    #[serde(default = "default_body_timeout_ms")]
    pub body_timeout_ms: u64,
    /// Most bytes of request line and headers; 431 beyond.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most header fields; 431 beyond.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Most body bytes held in memory by all requests in flight together; a
    /// request that would exceed it gets 503 `overloaded`.
    #[serde(default = "default_max_inflight_body_bytes")]
    pub max_inflight_body_bytes: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_body_bytes: default_max_body(),
            body_timeout_ms: default_body_timeout_ms(),
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            max_inflight_body_bytes: default_max_inflight_body_bytes(),
        }
    }
}

/// `[spool]`: durable delivery for routes with `delivery = "spool"` or
/// `"proxy_or_spool"`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SpoolSection {
    /// Spool folder (relative to the config file's folder).
    pub dir: Option<String>,
    /// Disk budget of the spool: queued plus dead-lettered messages (503 beyond).
    #[serde(default = "default_spool_max_bytes")]
    pub max_bytes: u64,
    /// The same webhook (call id and body hash) accepted twice within this many
    /// seconds is accepted once; 0 turns duplicate suppression off.
    #[serde(default = "default_dedup_window_s")]
    pub dedup_window_s: u64,
}

/// `[route.redelivery]`: how a spooled webhook is delivered in the background.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RedeliverySection {
    /// `proxy_or_spool`: time given to the first, synchronous attempt.
    pub first_try_ms: Option<u64>,
    /// First wait after a failed attempt; doubles each time, with jitter.
    pub backoff_initial_ms: Option<u64>,
    /// Longest wait between attempts.
    pub backoff_max_ms: Option<u64>,
    /// Attempts before the message is dead-lettered.
    pub max_attempts: Option<u32>,
    /// Age after which an undelivered message is dead-lettered.
    pub max_age_s: Option<u64>,
    /// Statuses that count as delivered (`"2xx"` or `"204"`).
    pub success: Option<Vec<String>>,
    /// Statuses that will never succeed: dead-lettered at once.
    pub permanent: Option<Vec<String>>,
    /// Statuses retried even though a class in `permanent` covers them.
    pub retry: Option<Vec<String>>,
    /// Header carrying the idempotency key.
    pub idempotency_header: Option<String>,
}

/// `[log]`: process logging.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// `error`, `warn`, `info`, `debug` or `trace` (or an `EnvFilter` directive);
    /// `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// `text` or `json`; `--log-format` overrides it.
    #[serde(default = "default_log_format")]
    pub format: String,
    /// Buffer access lines in memory up to this many bytes (0: write each
    /// line at once), like nginx's `access_log ... buffer=`. Unset with
    /// `flush_ms` set: 65536, as in nginx.
    pub buffer_bytes: Option<u64>,
    /// Write buffered access lines at least this often (default 1000).
    pub flush_ms: Option<u64>,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            level: default_log_level(),
            format: default_log_format(),
            buffer_bytes: None,
            flush_ms: None,
        }
    }
}

/// One or several strings (`upstream = "..."` or `upstream = ["...", "..."]`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum OneOrMany {
    /// A single value.
    One(String),
    /// A list of values.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values as a list.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// `[[route]]`: a public path and where its webhooks go.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// The `route` label in metrics and logs.
    pub name: String,
    /// Exact public path.
    pub path: String,
    /// `http(s)://host:port[/path]`, a list of them (balanced), or `file:PATH`.
    pub upstream: OneOrMany,
    /// JSON Schema file the body is validated against.
    pub schema: Option<String>,
    /// `enforce`, `report` or `off`.
    pub validation: Option<String>,
    /// `keep`, `strip` or `strip_text`.
    pub transcription: Option<String>,
    /// Upstream timeout for the whole exchange.
    #[serde(default = "default_route_timeout_ms")]
    pub timeout_ms: u64,
    /// How long an upstream target whose connect failed waits behind the
    /// route's other targets (nginx's `fail_timeout`); 0: never.
    #[serde(default = "default_fail_timeout_ms")]
    pub fail_timeout_ms: u64,
    /// `proxy`, `spool` or `proxy_or_spool`.
    #[serde(default = "default_delivery")]
    pub delivery: String,
    /// Per-route override of `[limits] max_body_bytes`.
    pub max_body_bytes: Option<u64>,
    /// Per-route override of `[limits] body_timeout_ms`.
    pub body_timeout_ms: Option<u64>,
    /// Per-route shared secret; replaces the global one for this route.
    pub secret: Option<SecretSection>,
    /// Header changes on the way upstream.
    #[serde(default)]
    pub headers: HeadersSection,
    /// PEM file of the CA(s) that sign this route's `https://` upstreams
    /// (an internal CA); replaces the system roots for this route.
    pub tls_ca: Option<String>,
    /// Verify `https://` upstream certificates (default true). `false` is for
    /// tests only and is logged loudly at every start.
    #[serde(default = "default_true")]
    pub tls_verify: bool,
    /// Background delivery settings (`delivery = "spool"` / `"proxy_or_spool"`).
    pub redelivery: Option<RedeliverySection>,
}

/// `[route.headers]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HeadersSection {
    /// Headers set (replaced) on the upstream request.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Headers removed from the upstream request.
    #[serde(default)]
    pub remove: Vec<String>,
}

fn default_true() -> bool {
    true
}
fn default_listen() -> Vec<String> {
    vec!["0.0.0.0:8080".into()]
}
fn default_threads() -> usize {
    2
}
fn default_grace_ms() -> u64 {
    5_000
}
fn default_header_timeout_ms() -> u64 {
    10_000
}
fn default_keepalive_ms() -> u64 {
    60_000
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_header_bytes() -> usize {
    16 * 1024
}
fn default_max_headers() -> usize {
    64
}
/// Default of `[limits] max_inflight_body_bytes` (64 MiB).
pub const DEFAULT_MAX_INFLIGHT_BODY_BYTES: u64 = 64 * 1024 * 1024;

fn default_max_inflight_body_bytes() -> u64 {
    DEFAULT_MAX_INFLIGHT_BODY_BYTES
}
fn default_metrics_listen() -> String {
    "127.0.0.1:9464".into()
}
fn default_secret_header() -> String {
    "X-Hookgate-Secret".into()
}
fn default_max_body() -> u64 {
    1_048_576
}
fn default_body_timeout_ms() -> u64 {
    10_000
}
fn default_fail_timeout_ms() -> u64 {
    10_000
}
fn default_route_timeout_ms() -> u64 {
    8_000
}
fn default_spool_max_bytes() -> u64 {
    1024 * 1024 * 1024
}
fn default_dedup_window_s() -> u64 {
    600
}
fn default_delivery() -> String {
    "proxy".into()
}
fn default_log_level() -> String {
    "info".into()
}
fn default_log_format() -> String {
    "text".into()
}

/// The whole file, section by section. Sections are deserialized one at a time by
/// `runtime::load` so that an error in one does not hide errors in another.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileConfig {
    /// `[server]`
    pub server: ServerSection,
    /// `[metrics]`
    pub metrics: MetricsSection,
    /// `[access]`
    pub access: AccessSection,
    /// `[limits]`
    pub limits: LimitsSection,
    /// `[spool]`
    pub spool: Option<SpoolSection>,
    /// `[log]`
    pub log: LogSection,
    /// `[[route]]`
    pub routes: Vec<RouteSection>,
}

/// Keys of each table, for reporting every unknown key at once (serde stops at
/// the first). A test checks them against the structs.
pub const SERVER_KEYS: &[&str] = &[
    "listen",
    "threads",
    "tls",
    "shutdown_grace_ms",
    "header_timeout_ms",
    "keepalive_timeout_ms",
    "max_connections",
];
/// Keys of `[metrics]`.
pub const METRICS_KEYS: &[&str] = &["listen"];
/// Keys of `[access]`.
pub const ACCESS_KEYS: &[&str] = &["allow", "trusted_proxies", "secret"];
/// Keys of `[limits]`.
pub const LIMITS_KEYS: &[&str] = &[
    "max_body_bytes",
    "body_timeout_ms",
    "max_header_bytes",
    "max_headers",
    "max_inflight_body_bytes",
];
/// Keys of `[spool]`.
pub const SPOOL_KEYS: &[&str] = &["dir", "max_bytes", "dedup_window_s"];
/// Keys of `[route.redelivery]`.
pub const REDELIVERY_KEYS: &[&str] = &[
    "first_try_ms",
    "backoff_initial_ms",
    "backoff_max_ms",
    "max_attempts",
    "max_age_s",
    "success",
    "permanent",
    "retry",
    "idempotency_header",
];
/// Keys of `[log]`.
pub const LOG_KEYS: &[&str] = &["level", "format", "buffer_bytes", "flush_ms"];
/// Keys of `[[route]]`.
pub const ROUTE_KEYS: &[&str] = &[
    "name",
    "path",
    "upstream",
    "schema",
    "validation",
    "transcription",
    "timeout_ms",
    "fail_timeout_ms",
    "delivery",
    "max_body_bytes",
    "body_timeout_ms",
    "secret",
    "headers",
    "tls_ca",
    "tls_verify",
    "redelivery",
];

/// The top-level keys a file may have.
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "server", "metrics", "access", "limits", "spool", "log", "route",
];

#[cfg(test)]
mod tests {
    use super::*;

    /// serde's own list of a struct's fields, from its unknown-field error.
    fn serde_fields<T: serde::de::DeserializeOwned>() -> Vec<String> {
        let mut t = toml::Table::new();
        t.insert("__unknown__".into(), toml::Value::Integer(1));
        let e = toml::Value::Table(t)
            .try_into::<T>()
            .err()
            .expect("must fail")
            .to_string();
        let list = e
            .split("expected one of")
            .nth(1)
            .or_else(|| e.split("expected").nth(1))
            .unwrap_or("");
        list.replace(" or ", ",")
            .split(',')
            .map(|s| s.trim().trim_matches('`').to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }

    #[test]
    fn key_lists_match_the_structs() {
        assert_eq!(serde_fields::<ServerSection>(), SERVER_KEYS);
        assert_eq!(serde_fields::<MetricsSection>(), METRICS_KEYS);
        assert_eq!(serde_fields::<AccessSection>(), ACCESS_KEYS);
        assert_eq!(serde_fields::<LimitsSection>(), LIMITS_KEYS);
        assert_eq!(serde_fields::<SpoolSection>(), SPOOL_KEYS);
        assert_eq!(serde_fields::<LogSection>(), LOG_KEYS);
        assert_eq!(serde_fields::<RouteSection>(), ROUTE_KEYS);
        assert_eq!(serde_fields::<RedeliverySection>(), REDELIVERY_KEYS);
    }
}
